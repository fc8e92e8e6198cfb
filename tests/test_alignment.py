"""`pclab.align`: each parameter's update against backprop's gradient, on the user's model."""

from __future__ import annotations

import math

import pytest
import torch

import pclab
from graphs import GRAPHS, make, named


@pytest.mark.parametrize("graph", GRAPHS, ids=[g.name for g in GRAPHS])
def test_exact_update_is_backprops_gradient_on_every_graph(graph):
    """Norm ratio 1 and cosine 1 for every parameter with a gradient; with dropout in
    training mode too, so both steps drew the same masks."""
    model, x, y = make(graph, torch.float64)
    rows = pclab.align(model, x, y, loss="ce", algorithm="exact")
    assert [r.parameter for r in rows] == [n for n, _ in model.named_parameters()]
    floor = 1e-6 * max(r.gradient_norm for r in rows)  # a bias feeding a batch norm has none
    for r in rows:
        if r.gradient_norm > floor:
            assert r.norm_ratio == pytest.approx(1, abs=1e-9) and r.cosine == pytest.approx(1, abs=1e-9), r


@pytest.mark.parametrize("steps", [1, 2, 3, 6])
def test_fpa_update_of_a_layer_d_edges_from_the_output_is_the_binomial_share_of_backprops(steps):
    """On a chain, FPA's error d edges from the output after t steps of size eta is
    P(Binomial(t, eta) >= d) of backprop's, and the layer predicting it inherits that
    share in the same direction. fc3 predicts the output (d = 0), fc2 the node one edge
    from it, fc1 the node two edges away."""
    model, x, y = make(named("mlp"), torch.float64)
    eta = 0.5
    rows = {r.parameter: r for r in pclab.align(model, x, y, loss="ce", algorithm="fpa", steps=steps, step_size=eta)}
    for layer, d in [("fc3", 0), ("fc2", 1), ("fc1", 2)]:
        share = sum(math.comb(steps, k) * eta**k * (1 - eta) ** (steps - k) for k in range(d, steps + 1))
        for kind in ("weight", "bias"):
            r = rows[f"{layer}.{kind}"]
            assert r.norm_ratio == pytest.approx(share, abs=1e-9), r
            if share:
                assert r.cosine == pytest.approx(1, abs=1e-9), r


def test_align_leaves_the_model_as_found():
    """Weights, gradients already accumulated, batch-norm statistics and the RNG."""
    model, x, y = make(named("norms+dropout"), torch.float32)  # batch norm and dropout, training mode
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad for p in model.parameters()]
    rng = torch.get_rng_state()
    pclab.align(model, x, y, loss="mse", algorithm="pc", steps=5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is g and torch.all(g == 0.5) for p, g in zip(model.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), rng)


def test_align_refuses_incremental_and_unknown_algorithms():
    model, x, y = make(named("mlp"), torch.float32)
    for incremental in ("incremental", pclab.Incremental(steps=3)):
        with pytest.raises(ValueError, match="incremental PC steps the weights at every tick.*algorithm='pc'"):
            pclab.align(model, x, y, loss="ce", algorithm=incremental)
    with pytest.raises(ValueError, match="unknown algorithm 'bp'"):
        pclab.align(model, x, y, loss="ce", algorithm="bp")
