r"""Sharpness: the top eigenvalue of the training-loss Hessian, from Hessian-vector products.

For a loss :math:`L(\theta)` the sharpness is :math:`\lambda_{\max}(\nabla^2 L)`.
Gradient descent with step :math:`\eta` on a quadratic is stable exactly when
:math:`\eta < 2/\lambda_{\max}`, which is what sorts runs into the lazy and catapult
regimes (Lewkowycz et al. 2020, "The large learning rate phase of deep learning:
the catapult mechanism") and what the edge of stability hovers at (Cohen et al.
2021).

Hessian-vector products come from ``torch.func``, reverse-over-reverse: the VJP of
:math:`\theta \mapsto \nabla L(\theta)` is :math:`v \mapsto H^\top v = Hv` (the
Hessian is symmetric), and ``vjp(grad(L), theta)`` is built once per measurement,
so each product costs one second-order backward pass (on CPU this measured about
twice as fast as forward-over-reverse ``jvp(grad(L))``, which redoes the forward
pass every time). Everything goes through ``functional_call`` on an explicit
parameter dict; the model is never modified.

Two solvers share one stopping rule, the residual :math:`\|Hv - \lambda v\| \le
\text{tol}\,|\lambda|` of the current estimate:

* ``"power"``: power iteration :math:`v \leftarrow Hv/\|Hv\|` with the Rayleigh
  quotient as the estimate. It converges like :math:`(\lambda_2/\lambda_1)^k` to the
  eigenvalue of largest magnitude.
* ``"lanczos"`` (default): Lanczos with full reorthogonalisation; the top Ritz
  value of the tridiagonal matrix estimates the largest (algebraic) eigenvalue and
  :math:`|\beta_k s_k|` is its exact residual. An MSE network at initialisation has
  about one large eigenvalue per output class, nearly equal, so power iteration
  crawls: on 1,000 Fashion-MNIST images, width 2048, it is still 0.5% low after 150
  products where Lanczos has converged in a few dozen.

The sharpness is a property of the training loss and the weights, not of how the
weights were trained, so the same function measures backprop and predictive coding
runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp

LossFn = Callable[[Tensor, Tensor], Tensor]
Method = Literal["lanczos", "power"]


@dataclass(frozen=True)
class Sharpness:
    """One measurement: the eigenvalue estimate, its unit eigenvector (flat) and convergence.

    ``vector`` can warm-start the next measurement (``init=``), which then converges
    in a few products when the weights moved little.
    """

    value: float
    vector: Tensor
    products: int
    residual: float
    converged: bool


def hvp_fn(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor
           ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The flat trainable parameters and ``v -> H v`` (flat) for ``loss_fn(model(x), y)``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model has no trainable parameter: no Hessian to measure")
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss_of(ps: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, (ps, frozen, buffers), (x,)), y)

    _, pullback = vjp(grad(loss_of), params)

    def hvp(v: Tensor) -> Tensor:
        parts = dict(zip(names, (t.view(s) for t, s in zip(v.split(sizes), shapes))))
        (hv,) = pullback(parts)
        return torch.cat([hv[n].detach().reshape(-1) for n in names])

    flat = torch.cat([params[n].reshape(-1) for n in names])
    return flat, hvp


def top_eigenvalue(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *,
                   method: Method = "lanczos", iterations: int = 100, tol: float = 1e-3,
                   seed: int = 0, init: Tensor | None = None) -> Sharpness:
    """Top Hessian eigenvalue of ``loss_fn(model(x), y)`` w.r.t. the trainable parameters.

    Stops when the residual ``|Hv - lambda v| <= tol * |lambda|`` or after
    ``iterations`` Hessian-vector products. ``init`` (a previous ``Sharpness.vector``)
    warm-starts; otherwise the start vector is Gaussian, seeded by ``seed``.

    Raises:
        ValueError: no trainable parameter, ``iterations < 1``, or an unknown method.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1; got {iterations}")
    if method not in ("lanczos", "power"):
        raise ValueError(f"unknown method {method!r}; use 'lanczos' or 'power'")
    was_training = model.training
    model.eval()  # no dropout noise in the Hessian
    try:
        params, hvp = hvp_fn(model, loss_fn, x, y)
        if init is not None and init.shape == params.shape:
            v = init.to(params)
        else:
            gen = torch.Generator().manual_seed(seed)
            v = torch.randn(params.shape, generator=gen, dtype=params.dtype).to(params.device)
        v = v / v.norm()
        solve = _lanczos if method == "lanczos" else _power
        return solve(hvp, v, iterations, tol)
    finally:
        model.train(was_training)


def _power(hvp: Callable[[Tensor], Tensor], v: Tensor, iterations: int, tol: float) -> Sharpness:
    value, residual = float("nan"), float("inf")
    for k in range(1, iterations + 1):
        hv = hvp(v)
        value = float(v @ hv)
        residual = float((hv - value * v).norm())
        norm = hv.norm()
        if residual <= tol * abs(value) or not torch.isfinite(norm) or float(norm) == 0.0:
            return Sharpness(value, v, k, residual, residual <= tol * abs(value))
        v = hv / norm
    return Sharpness(value, v, iterations, residual, False)


def _lanczos(hvp: Callable[[Tensor], Tensor], v: Tensor, iterations: int, tol: float) -> Sharpness:
    basis = [v]
    alphas: list[float] = []
    betas: list[float] = []
    value, residual, ritz = float("nan"), float("inf"), v
    for k in range(1, iterations + 1):
        w = hvp(basis[-1])
        alphas.append(float(basis[-1] @ w))
        # Full reorthogonalisation (twice is enough) keeps the basis orthonormal in
        # float32, where plain three-term Lanczos grows ghost copies of the top pair.
        q = torch.stack(basis)
        for _ in range(2):
            w = w - q.T @ (q @ w)
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        value = float(evals[-1])
        s = evecs[:, -1].to(v)
        ritz = s @ q
        residual = abs(beta * float(s[-1]))
        if residual <= tol * abs(value) or beta <= 1e-12 * max(abs(value), 1.0) or not (beta < float("inf")):
            return Sharpness(value, ritz / ritz.norm(), k, residual, residual <= tol * abs(value))
        basis.append(w / beta)
        betas.append(beta)
    return Sharpness(value, ritz / ritz.norm(), iterations, residual, False)
