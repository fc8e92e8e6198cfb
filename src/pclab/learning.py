"""Learning rules: how weights move, from each node's error and its inputs only.

A parameter ``theta_i`` used by the prediction ``mu_i = f_i(v_parents; theta_i)``
descends the energy ``F = sum_i 0.5 |v_i - mu_i|^2 + L(mu_out)``:

    dF/dtheta_i = -(d mu_i / d theta_i)^T e_i        (Millidge et al. 2020, eq. 5)

which needs ``e_i`` and the values ``f_i`` reads, nothing else. A parameter shared
by several nodes (tied weights, an unrolled recurrent cell) sums its nodes' terms.
Errors are per example; gradients are averaged over the batch, as
``loss.backward()`` on a mean loss would do, and land in ``p.grad`` so any
``torch.optim`` optimizer, scheduler or clipping works unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .inference import connected

GradList = list[Tensor]


def weight_gradients(predictions: Sequence[Tensor], errors: Sequence[Tensor], params: Sequence[nn.Parameter],
                     batch_size: int, *, loss_sum: Tensor | None = None) -> GradList:
    """``-(1/B) sum_i (d mu_i/d theta)^T e_i`` for every parameter, in one VJP.

    ``loss_sum`` (the summed output loss, still connected to the output prediction)
    adds the output node's term when the output error is not given explicitly.
    ``params`` are the parameters the graph reads; one that no error has reached yet
    gets zeros, as ``loss.backward()`` gives a used parameter.
    """
    # The factor -1/B scales either the errors going in or the gradients coming out.
    mean = -1.0 / batch_size
    scale_errors = not activations_outnumber(errors, params)
    outputs, grad_outputs = list(predictions), scaled(errors, mean if scale_errors else 1.0)
    if loss_sum is not None:
        outputs.append(loss_sum)
        grad_outputs.append(torch.full_like(loss_sum, -mean if scale_errors else -1.0))
    outputs, grad_outputs = connected(outputs, grad_outputs)
    if not outputs:
        return [torch.zeros_like(p) for p in params]
    grads = list(torch.autograd.grad(outputs, list(params), grad_outputs, materialize_grads=True))
    return grads if scale_errors else scaled(grads, mean)


def scaled(tensors: Sequence[Tensor], factor: float) -> list[Tensor]:
    """``factor`` times each tensor, in one fused pass; no pass (the tensors themselves) for 1."""
    if factor == 1.0:
        return list(tensors)
    return list(torch._foreach_mul(list(tensors), factor)) if tensors else []


def activations_outnumber(activations: Sequence[Tensor], params: Sequence[Tensor]) -> bool:
    """Whether ``activations`` hold more numbers than ``params`` (convolutions, attention).

    A VJP that serves both errors and weight gradients needs one rescaling pass on
    one side; it belongs on the smaller side. On the activations' side it would also
    add a set of activation-sized tensors to the step's peak memory.
    """
    return sum(a.numel() for a in activations) > sum(p.numel() for p in params)


def accumulate(params: Sequence[nn.Parameter], grads: GradList) -> None:
    """Add ``grads`` (fresh tensors, owned by the caller) into ``p.grad``, as ``loss.backward()`` does."""
    existing = [(p.grad, g) for p, g in zip(params, grads) if p.grad is not None]
    if existing:
        torch._foreach_add_([a for a, _ in existing], [g for _, g in existing])
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g.detach()


def assign(params: Sequence[nn.Parameter], grads: GradList) -> None:
    """Replace ``p.grad`` by ``grads`` (incremental PC steps the optimizer each tick).

    ``grads`` come from ``torch.autograd.grad`` without ``create_graph``, so they carry
    no graph to detach from.
    """
    for p, g in zip(params, grads):
        p.grad = g
