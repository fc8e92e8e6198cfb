r"""Sharpness: the top eigenvalue of the training-loss Hessian, by power iteration.

For a loss :math:`L(\theta)` the sharpness is :math:`\lambda_{\max}(\nabla^2 L)`.
Gradient descent with step :math:`\eta` on a quadratic is stable exactly when
:math:`\eta < 2/\lambda_{\max}`, which is what sorts runs into the lazy and catapult
regimes (Lewkowycz et al. 2020, "The large learning rate phase of deep learning:
the catapult mechanism") and what the edge of stability hovers at (Cohen et al.
2021).

Power iteration :math:`v \leftarrow Hv / \|Hv\|` needs only Hessian-vector
products, here forward-over-reverse with ``torch.func``:
:math:`Hv = \partial_\epsilon \nabla L(\theta + \epsilon v)|_{\epsilon=0}`
(``jvp`` of ``grad``), through ``functional_call`` on an explicit parameter dict,
so the model itself is never modified. Power iteration converges to the
eigenvalue of largest *magnitude*; near a minimum and at initialisation of an
MSE-trained network that is the top (positive) one, which is what we report.

The sharpness is a property of the training loss and the weights, not of how the
weights were trained, so the same function measures backprop and predictive
coding runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Sharpness:
    """A power-iteration result: the eigenvalue estimate, its eigenvector and convergence.

    ``vector`` (a parameter-shaped dict, unit norm overall) can warm-start the next
    measurement, which then converges in a few iterations when the weights moved
    little.
    """

    value: float
    vector: dict[str, Tensor]
    iterations: int
    converged: bool


def hvp_fn(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor
           ) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor]], dict[str, Tensor]]]:
    """The trainable parameters (detached) and ``v -> H v`` for ``loss_fn(model(x), y)``."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_of(ps: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, (ps, buffers), (x,)), y)

    grad_fn = grad(loss_of)

    def hvp(v: dict[str, Tensor]) -> dict[str, Tensor]:
        return jvp(grad_fn, (params,), (v,))[1]

    return params, hvp


def _dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def top_eigenvalue(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *,
                   iterations: int = 50, tol: float = 1e-4, seed: int = 0,
                   init: dict[str, Tensor] | None = None) -> Sharpness:
    """Top Hessian eigenvalue of ``loss_fn(model(x), y)`` w.r.t. the trainable parameters.

    Iterates :math:`v_{k+1} = H v_k / \\|H v_k\\|` with the Rayleigh quotient
    :math:`\\lambda_k = v_k^\\top H v_k` as the estimate, and stops when it changes
    by less than ``tol`` (relative) or after ``iterations`` HVPs. ``init`` warm-starts
    from a previous eigenvector; otherwise ``v_0`` is Gaussian, seeded by ``seed``.

    Raises:
        ValueError: the model has no trainable parameter, or ``iterations < 1``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1; got {iterations}")
    was_training = model.training
    model.eval()  # no dropout noise in the Hessian; none of the lab's models has any
    try:
        params, hvp = hvp_fn(model, loss_fn, x, y)
        if not params:
            raise ValueError("the model has no trainable parameter: no Hessian to measure")
        if init is not None and init.keys() == params.keys():
            v = {k: init[k].to(params[k]) for k in params}
        else:
            gen = torch.Generator().manual_seed(seed)
            v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
                 for k, p in params.items()}
        norm = _dot(v, v).sqrt()
        v = {k: t / norm for k, t in v.items()}
        estimate, converged, k = float("nan"), False, 0
        for k in range(1, iterations + 1):
            hv = hvp(v)
            new = float(_dot(v, hv))
            norm = _dot(hv, hv).sqrt()
            if not torch.isfinite(norm) or float(norm) == 0.0:
                estimate = new
                break
            v = {key: t / norm for key, t in hv.items()}
            if abs(new - estimate) <= tol * abs(new):
                estimate, converged = new, True
                break
            estimate = new
        return Sharpness(estimate, v, k, converged)
    finally:
        model.train(was_training)
