"""Exact and FPA predictive coding equal backprop, on every graph of the table.

References are autograd on the user's own model (never pclab's previous output).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

import pclab
from pclab import inference
from graphs import GRAPHS, MLP, make, pc_grads, reference_grads, relative_error

DTYPES = {torch.float64: 1e-8, torch.float32: 1e-4}
GRAPH_IDS = [g.name for g in GRAPHS]


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("graph", GRAPHS, ids=GRAPH_IDS)
def test_exact_mode_equals_autograd(graph, dtype, loss):
    model, x, y = make(graph, dtype)
    reference = reference_grads(model, x, y, loss)
    pc = pclab.PredictiveCoding(model, loss=loss, algorithm="exact")
    grads, _ = pc_grads(pc, x, y)
    assert relative_error(grads, reference) < DTYPES[dtype]


@pytest.mark.parametrize("policy", ["layers", "all"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("graph", GRAPHS, ids=GRAPH_IDS)
def test_fpa_converges_to_autograd_after_200_steps(graph, dtype, policy):
    model, x, y = make(graph, dtype)
    reference = reference_grads(model, x, y, "ce")
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=200, step_size=0.5,
                                value_nodes=policy)
    grads, _ = pc_grads(pc, x, y)
    assert relative_error(grads, reference) < 1e-3


@pytest.mark.parametrize("graph", GRAPHS, ids=GRAPH_IDS)
def test_fpa_error_falls_as_steps_grow(graph):
    model, x, y = make(graph, torch.float64)
    reference = reference_grads(model, x, y, "mse")
    errors = []
    for steps in (2, 8, 32, 128):
        pc = pclab.PredictiveCoding(model, loss="mse", algorithm="fpa", steps=steps, step_size=0.5)
        errors.append(relative_error(pc_grads(pc, x, y)[0], reference))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors


def _depth(graph: pclab.CapturedGraph) -> int:
    """Longest path, in edges, from any value node to the output."""
    dist = {"output": 0}
    for name in reversed(graph.names):
        dist[name] = 1 + max(dist[c] for c in graph.children[name])
    return max(dist.values())


@pytest.mark.parametrize("graph", GRAPHS, ids=GRAPH_IDS)
def test_fpa_with_unit_step_is_exact_after_depth_steps(graph):
    """Z-IL: with step size 1, errors are final once they have crossed the longest path."""
    model, x, y = make(graph, torch.float64)
    reference = reference_grads(model, x, y, "ce")
    depth = _depth(pclab.PredictiveCoding(model, loss="ce", algorithm="fpa").capture(x))
    fpa = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=depth, step_size=1.0)
    assert relative_error(pc_grads(fpa, x, y)[0], reference) < 1e-10
    if depth > 1:
        short = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=depth - 1, step_size=1.0)
        assert relative_error(pc_grads(short, x, y)[0], reference) > 1e-6


@pytest.mark.parametrize("graph", GRAPHS, ids=GRAPH_IDS)
def test_exact_errors_are_a_fixed_point_of_fpa(graph):
    """The exact sweep's errors do not move under one more FPA step: e_i = sum_j J_ji^T e_j."""
    model, x, y = make(graph, torch.float64)
    _, exact = pc_grads(pclab.PredictiveCoding(model, loss="mse", algorithm="exact"), x, y)
    _, fpa = pc_grads(pclab.PredictiveCoding(model, loss="mse", algorithm="fpa", steps=300, step_size=0.5), x, y)
    for name, e in exact.errors.items():
        assert torch.allclose(fpa.errors[name], e, rtol=1e-7, atol=1e-12), name


@pytest.mark.parametrize("steps", [1, 2, 5, 12])
@pytest.mark.parametrize("step_size", [0.2, 0.5, 0.9])
def test_fpa_errors_cascade_by_binomial_law_on_a_chain(steps, step_size):
    """On a chain, a node d edges from the output holds P(Binomial(t, eta) >= d) of its
    exact error after t steps: each step carries the error one edge with weight eta."""
    model, x, y = make(GRAPHS[0], torch.float64)
    _, exact = pc_grads(pclab.PredictiveCoding(model, loss="ce", algorithm="exact"), x, y)
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=steps, step_size=step_size)
    _, result = pc_grads(pc, x, y)
    graph = pc.capture(x)
    for name in graph.names:
        d, node = 0, name
        while node != "output":
            (node,) = graph.children[node]
            d += 1
        fraction = binom.sf(d - 1, steps, step_size)
        assert torch.allclose(result.errors[name], fraction * exact.errors[name], rtol=1e-9, atol=1e-14)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), step_size=st.floats(0.05, 1.0), data=st.data())
def test_fpa_update_in_place_equals_the_rule_when_feedback_aliases_errors(n, step_size, data):
    """The in-place update reads every feedback before it writes any error, whether a
    feedback is fresh, another node's error itself (an addition's VJP) or a view of it
    (a reshape's)."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    errors = [torch.randn(2, 6, generator=g, dtype=torch.float64) for _ in range(n)]
    feedback = []
    for i in range(n):
        kind, j = data.draw(st.sampled_from(["fresh", "same", "view"])), data.draw(st.integers(0, n - 1))
        feedback.append({"fresh": lambda: torch.randn(2, 6, generator=g, dtype=torch.float64),
                         "same": lambda: errors[j],
                         "view": lambda: errors[j].view(12).view(2, 6)}[kind]())
    expected = [e + step_size * (f - e) for e, f in zip(errors, feedback)]
    updated = inference.fpa_error_update(errors, feedback, step_size)
    assert all(u is e for u, e in zip(updated, errors))  # in place: no third set of tensors
    for u, want in zip(updated, expected):
        torch.testing.assert_close(u, want, rtol=1e-12, atol=1e-12)


def test_gradients_accumulate_like_backward():
    model, x, y = make(GRAPHS[0], torch.float64)
    reference = reference_grads(model, x, y, "ce")
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="exact")
    model.zero_grad(set_to_none=True)
    pc.step(x, y)
    pc.step(x, y)
    doubled = {n: p.grad for n, p in model.named_parameters()}
    assert relative_error(doubled, {n: 2 * r for n, r in reference.items()}) < 1e-12


def test_inference_is_per_example():
    """An example's errors and energy do not depend on the rest of its batch."""
    torch.manual_seed(0)
    model = MLP().double()
    x, y = torch.randn(8, 12, dtype=torch.float64), torch.randint(0, 5, (8,))
    for algorithm in ("fpa", "pc"):
        pc = pclab.PredictiveCoding(model, loss="ce", algorithm=algorithm, steps=7, step_size=0.3)
        full = pc.step(x, y)
        alone = pc.step(x[:3], y[:3])
        model.zero_grad(set_to_none=True)
        for name, e in alone.errors.items():
            assert torch.allclose(full.errors[name][:3], e, atol=1e-12), (algorithm, name)


@pytest.mark.parametrize("graph", GRAPHS, ids=GRAPH_IDS)
def test_exact_weight_gradients_are_bitwise_backprops_at_a_power_of_two_batch(graph):
    """Exact runs autograd's own sweep; where it rescales (the batch mean on the smaller
    side of its VJP), a power-of-two batch makes the rescaling exact in floating point."""
    model, x, y = make(graph, torch.float32)
    x = tuple(torch.cat([t, t[:2]]) for t in x)  # 6 + 2 = 8 examples
    y = torch.cat([y, y[:2]])
    reference = reference_grads(model, x, y, "ce")
    grads, _ = pc_grads(pclab.PredictiveCoding(model, loss="ce", algorithm="exact"), x, y)
    assert all(torch.equal(grads[k], reference[k]) for k in reference)
