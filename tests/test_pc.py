"""Energy-based and incremental PC: not backprop, so tested for what they are.

Inference must lower each example's energy; learning must reduce the loss.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pclab
from graphs import GRAPHS, make


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("graph", GRAPHS, ids=[g.name for g in GRAPHS])
def test_pc_inference_lowers_the_energy_at_every_step(graph, loss):
    model, x, y = make(graph, torch.float64)
    pc = pclab.PredictiveCoding(model, loss=loss, algorithm="pc", steps=15, step_size=0.05)
    trace = pc.step(x, y).energy_trace
    assert len(trace) == 16
    assert all(b <= a * (1 + 1e-12) for a, b in zip(trace, trace[1:])), trace
    assert trace[-1] < trace[0]


def test_pc_starts_from_the_feedforward_pass():
    model, x, y = make(GRAPHS[0], torch.float64)
    result = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=5).step(x, y)
    assert torch.equal(result.output, model(*x).detach())
    assert result.loss == pytest.approx(float(F.cross_entropy(model(*x), y).detach()), rel=1e-12)
    assert result.energy_trace[0] == pytest.approx(result.loss, rel=1e-12)


def _digits_loaders():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _train(algorithm, loss, epochs=5, lr=3e-3):
    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = _digits_loaders()
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    learner = pclab.learner(model, algorithm, loss=loss, steps=8)
    for _ in range(epochs):
        for i in range(0, len(xtr), 50):
            opt.zero_grad()
            if algorithm == "incremental":
                learner.step(xtr[i:i + 50], ytr[i:i + 50], optimizer=opt)
            else:
                learner.step(xtr[i:i + 50], ytr[i:i + 50])
                opt.step()
    return _accuracy(model, xte, yte)


@pytest.mark.parametrize("algorithm,loss", [("pc", "mse"), ("pc", "ce"), ("fpa", "ce")])
def test_pc_algorithms_learn_digits_about_as_well_as_backprop(algorithm, loss):
    """Same model, data, optimizer and epochs: within 3 points of backprop (chance: 10%)."""
    backprop = _train("bp", loss)
    accuracy = _train(algorithm, loss)
    assert accuracy > 0.8 and accuracy > backprop - 0.03, (accuracy, backprop)


def test_incremental_pc_learns_from_a_stream_seen_once():
    """One pass, each batch seen once; iPC steps the optimizer at each of its 8 ticks,
    so it gets a third of backprop's learning rate."""
    backprop = _train("bp", "mse", epochs=1)
    accuracy = _train("incremental", "mse", epochs=1, lr=1e-3)
    assert accuracy > 0.75 and accuracy > backprop - 0.03, (accuracy, backprop)


def test_incremental_steps_the_optimizer_every_tick():
    model, x, y = make(GRAPHS[0], torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    before = [p.detach().clone() for p in model.parameters()]
    pclab.PredictiveCoding(model, loss="mse", algorithm="incremental", steps=6).step(x, y, optimizer=opt)
    assert len(calls) == 6
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_incremental_with_one_tick_and_sgd_is_one_backprop_step_on_the_output_layer():
    """At the first tick only the output has an error: iPC's first weight step is the
    loss gradient of the layers feeding the output, and zero for the others."""
    model, x, y = make(GRAPHS[0], torch.float64)
    out = model(*x)
    (g_w3,) = torch.autograd.grad(F.cross_entropy(out, y), [model.fc3.weight])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    w1, w3 = model.fc1.weight.detach().clone(), model.fc3.weight.detach().clone()
    pclab.PredictiveCoding(model, loss="ce", algorithm="incremental", steps=1).step(x, y, optimizer=opt)
    assert torch.allclose(model.fc3.weight, w3 - g_w3, atol=1e-12)
    assert torch.equal(model.fc1.weight, w1)


def _energy(captured, x, y, values):
    """F written out in full, summed over the batch: every node's squared error plus the
    loss. Returns it and the errors."""
    out, *mus = captured.predict(*x, *values)
    errors = [v - m for v, m in zip(values, mus)]
    energy = sum(0.5 * e.pow(2).sum() for e in errors) + F.cross_entropy(out, y, reduction="sum")
    return energy, [e.detach() for e in errors]


def _reference_descent(captured, x, y, step_size):
    """Gradient descent on the values of F written out in full and differentiated by
    autograd, from the forward pass: yields, state after state, the batch-mean energy,
    the errors and dF/dtheta of the batch-mean energy; between states every value moves
    by -step_size * dF/dv of its own example's energy (computed before the caller, who
    may move the weights in place, resumes)."""
    values = [v.detach() for v in captured.forward_cut(*x)[2]]
    params, B = list(captured.parameters), y.shape[0]
    while True:
        values = [v.requires_grad_(True) for v in values]
        energy, errors = _energy(captured, x, y, values)
        grads = torch.autograd.grad(energy, [*values, *params])
        with torch.no_grad():
            values = [v - step_size * g for v, g in zip(values, grads)]
        yield energy.item() / B, errors, [g / B for g in grads[len(values):]]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("graph", GRAPHS, ids=[g.name for g in GRAPHS])
def test_pc_is_gradient_descent_on_the_energy_of_every_value_then_one_weight_step(graph, steps):
    """Each inference step moves every value by -step_size * dF/dv of its own example's
    energy, at once: in a residual block of two layers too, where moving a block's output
    changes the prediction of every later block's first layer, so that layer's error
    stops being zero before any feedback reaches it. The weights then take dF/dtheta of
    the batch-mean energy at the final values."""
    model, x, y = make(graph, torch.float64)
    model.eval()  # dropout off: the reference must see the same network
    step_size = 0.1
    captured = pclab.capture(model, x)
    states = list(itertools.islice(_reference_descent(captured, x, y, step_size), steps + 1))
    _, errors, grads = states[-1]
    want = dict(zip(captured.parameters, grads))

    learner = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=steps, step_size=step_size)
    result = learner.step(x, y)
    assert result.energy_trace == pytest.approx([e for e, _, _ in states], rel=1e-10, abs=1e-12)
    for got, e in zip(result.errors.values(), errors):
        assert torch.allclose(got, e, rtol=1e-10, atol=1e-12)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, want[p], rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("graph", GRAPHS, ids=[g.name for g in GRAPHS])
def test_incremental_pc_is_gradient_descent_on_the_energy_in_values_and_weights_at_once(graph, steps):
    """Each tick: every value moves by -step_size * dF/dv of its own example's energy, and
    SGD moves the weights by -lr * dF/dtheta of the batch-mean energy, both at the same
    state; F written out in full and differentiated by autograd is the reference."""
    model, x, y = make(graph, torch.float64)
    model.eval()  # dropout off: the reference must see the same network
    reference = make(graph, torch.float64)[0].eval()
    step_size, lr = 0.2, 0.05

    captured = pclab.capture(reference, x)
    energies = []
    for energy, errors, grads in itertools.islice(_reference_descent(captured, x, y, step_size), steps):
        energies.append(energy)
        with torch.no_grad():
            for p, g in zip(captured.parameters, grads):
                p -= lr * g

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    result = pclab.PredictiveCoding(model, loss="ce", algorithm="incremental", steps=steps,
                                    step_size=step_size).step(x, y, optimizer=opt)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), name
    # The energy at every tick, and the last tick's errors, are the reference's too.
    assert result.energy_trace == pytest.approx(energies, rel=1e-10, abs=1e-12)
    for got, want in zip(result.errors.values(), errors):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=[g.name for g in GRAPHS])
def test_recomputing_only_what_values_move_equals_recomputing_everything(graph):
    """Within a step, nodes no value influences are constants of inference (W1 x)."""
    model, x, _ = make(graph, torch.float64)
    model.eval()  # dropout off: both programs must see the same network
    captured = pclab.capture(model, x)
    out, mus, values, fixed = captured.forward_cut(*x)
    g = torch.Generator().manual_seed(0)
    moved = [v.detach() + torch.randn(v.shape, generator=g, dtype=v.dtype) for v in values]
    full_out, *full_mus = captured.predict(*x, *moved)
    part_out, *part_mus = captured.predict_moving(*fixed, *moved)
    assert torch.equal(full_out, part_out)
    assert len(part_mus) == len(captured.moving)
    for i, m in zip(captured.moving, part_mus):
        assert torch.equal(full_mus[i], m)
    for i in set(range(len(mus))) - set(captured.moving):
        assert torch.equal(full_mus[i], mus[i])
