"""Sharpness against its reference: the top eigenvalue of an explicitly computed Hessian."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from pclab.experiments.sharpness import top_eigenvalue
from pclab.experiments.training import loss_fn


def tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    return model, x, y


def explicit_spectrum(model, loss, x, y) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(theta):
        parts = theta.split([s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return loss(functional_call(model, params, (x,)), y)

    return torch.linalg.eigvalsh(hessian(f)(flat))


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_eigenvalue_matches_explicit_hessian(method, loss, seed):
    model, x, y = tiny_problem(seed)
    evals = explicit_spectrum(model, loss_fn(loss), x, y)
    # Power iteration finds the eigenvalue of largest magnitude, Lanczos the largest.
    expected = evals[-1] if method == "lanczos" else evals[evals.abs().argmax()]
    result = top_eigenvalue(model, loss_fn(loss), x, y, method=method, iterations=2000, tol=1e-7)
    assert result.converged
    assert result.value == pytest.approx(float(expected), rel=1e-5)
    # The returned vector is a unit eigenvector: H v = lambda v.
    assert float(result.vector.norm()) == pytest.approx(1.0, rel=1e-9)


def test_warm_start_converges_at_once_and_model_is_untouched():
    model, x, y = tiny_problem()
    before = [p.detach().clone() for p in model.parameters()]
    first = top_eigenvalue(model, loss_fn("mse"), x, y, tol=1e-8, iterations=500)
    again = top_eigenvalue(model, loss_fn("mse"), x, y, tol=1e-6, init=first.vector)
    assert again.products <= 2
    assert again.value == pytest.approx(first.value, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments():
    model, x, y = tiny_problem()
    with pytest.raises(ValueError, match="iterations"):
        top_eigenvalue(model, loss_fn("mse"), x, y, iterations=0)
    with pytest.raises(ValueError, match="method"):
        top_eigenvalue(model, loss_fn("mse"), x, y, method="qr")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        top_eigenvalue(model, loss_fn("mse"), x, y)
