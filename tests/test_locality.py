"""Every update is local: it reads a node's own signals and its neighbours', nothing else.

For energy-based PC the update of value ``v_i`` is ``-e_i + sum_j J_ji^T e_j`` (plus the
output's loss gradient when ``i`` feeds the output), which reads ``v_i``, its parents,
its children and its children's other parents: its Markov blanket. On a chain that
is exactly the nodes one edge away. Under FPA the error update reads only ``e_i`` and
its children's errors. A weight update reads its node's error and the node's inputs.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pclab
from pclab import inference, learning
from graphs import Residual, TwoInputs


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(5))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


def _setup(model_cls, seed=0):
    torch.manual_seed(seed)
    model = model_cls().double()
    x = (torch.randn(4, 6, dtype=torch.float64),) if model_cls is Chain else \
        (torch.randn(4, 12, dtype=torch.float64),) if model_cls is Residual else \
        (torch.randn(4, 12, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))
    y = torch.randint(0, model(*x).shape[-1], (4,))
    return model, pclab.capture(model, x), x, y


def _pc_update(graph, x, y, values):
    """One energy-descent direction for every value node: -dF/dv."""
    values = [v.detach().requires_grad_(True) for v in values]
    out, *mus = graph.predict(*x, *values)
    errors = [v.detach() - m.detach() for v, m in zip(values, mus)]
    loss_sum = F.cross_entropy(out, y, reduction="sum")
    fb = inference.feedback([loss_sum, *mus], [-torch.ones_like(loss_sum), *errors], values, retain_graph=False)
    return [f - e for f, e in zip(fb, errors)]


def _blanket(graph, name):
    children = graph.children[name]
    near = set(graph.parents[name]) | set(children)
    for c in children:
        near |= set(graph.parents[c])
    return (near - {name}) & set(graph.names)


def _values(graph, x, seed):
    """A generic state: values away from their predictions, so every error is non-zero."""
    g = torch.Generator().manual_seed(seed)
    _, *mus = graph.forward_with_values(*x)
    return [m.detach() + 0.3 * torch.randn(m.shape, generator=g, dtype=m.dtype) for m in mus]


@pytest.mark.parametrize("model_cls", [Chain, Residual, TwoInputs])
def test_value_update_reads_only_the_markov_blanket(model_cls):
    model, graph, x, y = _setup(model_cls)
    values = _values(graph, x, seed=1)
    base = _pc_update(graph, x, y, values)
    for (i, name), (k, other) in itertools.product(enumerate(graph.names), repeat=2):
        if i == k:
            continue
        moved = list(values)
        moved[k] = values[k] + 0.5 * torch.randn_like(values[k])
        changed = not torch.allclose(_pc_update(graph, x, y, moved)[i], base[i], rtol=0, atol=1e-12)
        assert changed == (other in _blanket(graph, name)), (name, other)


def test_on_a_chain_a_node_two_edges_away_never_changes_the_update():
    model, graph, x, y = _setup(Chain)
    assert graph.names == ("layers.0", "layers.1", "layers.2", "layers.3")
    values = _values(graph, x, seed=2)
    base = _pc_update(graph, x, y, values)
    for i, k in itertools.product(range(4), repeat=2):
        moved = list(values)
        moved[k] = values[k] * 3.0
        changed = not torch.allclose(_pc_update(graph, x, y, moved)[i], base[i], rtol=0, atol=1e-12)
        assert changed == (abs(i - k) <= 1), (i, k)


@pytest.mark.parametrize("model_cls", [Chain, Residual, TwoInputs])
def test_fpa_error_update_reads_only_own_and_children_errors(model_cls):
    model, graph, x, y = _setup(model_cls)
    out, mus, leaves, _ = graph.forward_cut(*x)
    g = torch.Generator().manual_seed(3)
    errors = [torch.randn(m.shape, generator=g, dtype=m.dtype) for m in mus]
    e_out = torch.randn(out.shape, generator=g, dtype=out.dtype)

    def update(errs):
        fb = inference.feedback([*mus, out], [*errs, e_out], leaves, retain_graph=True)
        return inference.fpa_error_update([e.clone() for e in errs], fb, 0.5)  # it updates in place

    base = update(errors)
    for (i, name), (k, other) in itertools.product(enumerate(graph.names), repeat=2):
        moved = list(errors)
        moved[k] = errors[k] + 1.0
        changed = not torch.allclose(update(moved)[i], base[i], rtol=0, atol=1e-12)
        assert changed == (k == i or other in graph.children[name]), (name, other)


def test_weight_update_reads_only_its_node_error_and_inputs():
    model, graph, x, y = _setup(Chain)
    values = _values(graph, x, seed=4)
    params = list(model.parameters())

    def grads(vals):
        vals = [v.detach().requires_grad_(True) for v in vals]
        out, *mus = graph.predict(*x, *vals)
        errors = [v.detach() - m.detach() for v, m in zip(vals, mus)]
        loss_sum = F.cross_entropy(out, y, reduction="sum")
        return learning.weight_gradients(mus, errors, params, 4, loss_sum=loss_sum)

    base = grads(values)
    # layers.2's weight predicts node 2 from node 1: it reads v_1 and v_2 only.
    w2 = [n for n, _ in model.named_parameters()].index("layers.2.weight")
    for k in range(4):
        moved = list(values)
        moved[k] = values[k] * 2.0
        changed = not torch.allclose(grads(moved)[w2], base[w2], rtol=0, atol=1e-12)
        assert changed == (k in (1, 2)), k


def _pc_errors(steps: int, step_size: float) -> list[float]:
    """Norms of pc's final errors on the chain, ordered from the input side."""
    model, _, x, y = _setup(Chain)
    learner = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=steps, step_size=step_size)
    result = learner.step(*x, y)
    return [float(result.errors[f"layers.{i}"].norm()) for i in range(4)]


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_pc_errors_cascade_one_node_per_inference_step(steps):
    """A node d edges from the output (layers.3 is 1, layers.0 is 4) holds no error
    until inference has run d steps: the output's error spreads one node per step."""
    norms = _pc_errors(steps, 0.1)
    for i, norm in enumerate(norms):
        distance = 4 - i
        assert (norm > 0) == (distance <= steps), (i, norms)


def test_pc_error_at_distance_d_scales_as_step_size_to_the_d():
    """For small steps the first error to reach a node d edges away is of order
    step_size**d: halving the step divides it by about 2**d. So a deep graph run with
    a small step leaves its far nodes almost no error to learn from."""
    coarse, fine = _pc_errors(4, 1e-3), _pc_errors(4, 5e-4)
    for i in range(4):
        assert coarse[i] / fine[i] == pytest.approx(2.0 ** (4 - i), rel=0.02), (i, coarse, fine)
