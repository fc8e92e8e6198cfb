"""Energies: what inference lowers.

A value node ``i`` with value ``v_i`` and prediction ``mu_i = f_i(parents)`` holds the
Gaussian energy ``0.5 * |v_i - mu_i|^2`` and its error is ``e_i = v_i - mu_i``
(Millidge, Tschantz & Buckley 2020, eq. 2). The output node's energy is the task loss
of its prediction, per example, so for ``"mse"`` it is the Gaussian energy of an
output clamped to the target and for ``"ce"`` it is the cross-entropy.

Per-example losses are what inference acts on (each example lowers its own energy,
PCX's convention); their batch mean is the loss ``loss.backward()`` would use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian(value: Tensor, prediction: Tensor) -> Tensor:
    """Per-example Gaussian energy ``0.5 * sum((v - mu)^2)`` over non-batch dims."""
    return 0.5 * (value - prediction).pow(2).flatten(1).sum(1)


@dataclass(frozen=True)
class OutputLoss:
    """A per-example loss on the output prediction and a check of its target.

    ``per_example(output, target)`` returns a tensor of shape ``(batch,)`` whose mean
    is the batch loss; ``prepare(output, target)`` validates the target against the
    output and returns it in the form ``per_example`` expects.
    """

    name: str
    per_example: Callable[[Tensor, Tensor], Tensor]
    prepare: Callable[[Tensor, Tensor], Tensor]


def _check_batch(output: Tensor, target: Tensor) -> None:
    if target.ndim == 0 or target.shape[0] != output.shape[0]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not fit output shape "
            f"{tuple(output.shape)}: their batch sizes (first dimension) must match"
        )


def _prepare_mse(output: Tensor, target: Tensor) -> Tensor:
    _check_batch(output, target)
    if not target.is_floating_point():
        if target.shape != output.shape[:-1]:
            raise ValueError(
                f"class-index target shape {tuple(target.shape)} does not fit output "
                f"shape {tuple(output.shape)}: expected {tuple(output.shape[:-1])} "
                "(one index per example) or a float target of the output's shape"
            )
        num_classes = output.shape[-1]
        if target.numel():
            low, high = torch.stack(torch.aminmax(target)).tolist()  # one host read
            if low < 0 or high >= num_classes:
                raise ValueError(f"class indices must lie in [0, {num_classes}); got range [{low}, {high}]")
        # scatter_ rather than F.one_hot, which checks the range a second time (once per step).
        one_hot = torch.zeros((*target.shape, num_classes), dtype=output.dtype, device=target.device)
        return one_hot.scatter_(-1, target.long().unsqueeze(-1), 1.0)
    if target.shape != output.shape:
        raise ValueError(f"float target shape {tuple(target.shape)} does not match "
                         f"output shape {tuple(output.shape)}")
    return target.to(output.dtype)


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return gaussian(target, output)


def _prepare_ce(output: Tensor, target: Tensor) -> Tensor:
    _check_batch(output, target)
    if output.ndim < 2:
        raise ValueError(f"cross-entropy needs an output of shape (batch, classes, ...); "
                         f"got {tuple(output.shape)}")
    if target.is_floating_point():
        if target.shape != output.shape:
            raise ValueError(f"probability target shape {tuple(target.shape)} does not "
                             f"match output shape {tuple(output.shape)}")
        return target.to(output.dtype)
    if target.shape != output.shape[:-1]:
        raise ValueError(
            f"class-index target shape {tuple(target.shape)} does not fit output shape "
            f"{tuple(output.shape)}: expected {tuple(output.shape[:-1])} (classes last)"
        )
    return target.long()


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    # Classes are the last dimension (token logits (B, L, V) included); an example's
    # loss is its mean over positions so the batch mean equals F.cross_entropy(mean).
    if output.ndim == 2:
        return F.cross_entropy(output, target, reduction="none")
    logits = output.reshape(-1, output.shape[-1])
    flat_target = target.reshape(-1, *target.shape[output.ndim - 1:])
    losses = F.cross_entropy(logits, flat_target, reduction="none")
    return losses.reshape(output.shape[0], -1).mean(1)


LOSSES: dict[str, OutputLoss] = {
    "mse": OutputLoss("mse", _mse, _prepare_mse),
    "ce": OutputLoss("ce", _cross_entropy, _prepare_ce),
}


def get_loss(name: str | OutputLoss) -> OutputLoss:
    """Look up an output loss by name (``"mse"`` or ``"ce"``) or pass one through."""
    if isinstance(name, OutputLoss):
        return name
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def output_error(loss: OutputLoss, output: Tensor, target: Tensor) -> Tensor:
    """``e_out = -dL_b/d(output)`` per example: the error the output sends to its parents.

    For ``"mse"`` this is ``target - output``, the error of an output clamped to the
    target; for ``"ce"`` it is ``onehot - softmax``.
    """
    with torch.enable_grad():
        out = output.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss.per_example(out, target).sum(), out)
    return -grad
