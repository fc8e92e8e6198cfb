"""The engine's contract with its users: side effects, optimizers, and bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch import nn

import pclab
from graphs import GRAPHS, MLP, Norms, make, named, reference_grads, relative_error

ALGORITHMS = ["exact", "fpa", "pc"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("training", [True, False])
# pc's default step overshoots this net in eval mode (and says so); the test is about state, not gradients.
@pytest.mark.filterwarnings("ignore:inference raised the energy:RuntimeWarning")
def test_step_leaves_weights_mode_buffers_and_rng_as_one_forward_would(algorithm, training):
    torch.manual_seed(0)
    model = Norms().double().train(training)
    twin = copy.deepcopy(model)
    x, y = torch.randn(6, 12, dtype=torch.float64), torch.randint(0, 5, (6,))
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm=algorithm, steps=6)
    pc.capture(x)  # the one-off trace must not count either
    torch.manual_seed(7)
    pc.step(x, y)
    after_step = torch.rand(3)
    torch.manual_seed(7)
    twin(x)
    after_forward = torch.rand(3)
    assert model.training is training and all(m.training is training for m in model.modules())
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name  # parameters untouched, running stats moved once
    assert torch.equal(after_step, after_forward)


@pytest.mark.parametrize("algorithm", ["exact", "fpa"])
def test_gradients_drive_any_torch_optimizer_as_backward_does(algorithm):
    model, x, y = make(GRAPHS[0], torch.float64)
    twin = copy.deepcopy(model)
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm=algorithm, steps=300)
    for m, learn in ((model, lambda: pc.step(x, y)),
                     (twin, lambda: F.cross_entropy(twin(*x), y).backward())):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        for _ in range(3):
            opt.zero_grad()
            learn()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05)
            opt.step()
            sched.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-9)


def test_graph_is_captured_once_per_input_signature(monkeypatch):
    import pclab.graph as graph_module

    calls = []
    real = graph_module._trace
    monkeypatch.setattr(graph_module, "_trace", lambda *a: calls.append(1) or real(*a))
    model, x, y = make(GRAPHS[0], torch.float32)
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=3)
    pc.step(x, y)
    pc.step(x[0][:3], y[:3])  # another batch size: same signature
    assert len(calls) == 1
    model.double()
    pc.step(x[0].double(), y)  # another dtype: captured again
    assert len(calls) == 2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_frozen_parameters_get_no_gradient_and_the_rest_stays_exact(algorithm):
    model, x, y = make(GRAPHS[0], torch.float64)
    model.fc1.requires_grad_(False)
    reference = reference_grads(model, x, y, "ce")
    pclab.PredictiveCoding(model, loss="ce", algorithm=algorithm, steps=200).step(x, y)
    assert model.fc1.weight.grad is None
    if algorithm != "pc":
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert relative_error(grads, reference) < 1e-6


# Bad input ------------------------------------------------------------------

class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x):
        return self.fc(self.gate(x))


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.lin(x)
        return -self.lin(x)


def test_untraceable_model_names_module_reason_and_fix():
    pc = pclab.PredictiveCoding(Branchy(), loss="ce", algorithm="exact")
    with pytest.raises(pclab.GraphCaptureError) as info:
        pc.step(torch.randn(3, 4), torch.randint(0, 4, (3,)))
    message = str(info.value)
    assert "gate (Gate)" in message and "control flow" in message and "leaf_modules" in message


def test_leaf_modules_make_an_untraceable_module_one_node():
    torch.manual_seed(0)
    model = Branchy().double()
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randint(0, 4, (3,))
    reference = reference_grads(model, (x,), y, "ce")
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=50, leaf_modules=[Gate])
    pc.step(x, y)
    assert pc.capture(x).names == ("gate",)
    assert relative_error({n: p.grad for n, p in model.named_parameters()}, reference) < 1e-10


def test_model_returning_a_tuple_is_refused():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x), x

    with pytest.raises(pclab.GraphCaptureError, match="one floating-point tensor"):
        pclab.PredictiveCoding(Pair(), loss="ce", algorithm="fpa").step(torch.randn(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("algorithm", ["exact", "fpa", "pc", "incremental"])
def test_a_non_finite_batch_is_named_and_changes_no_weight(algorithm):
    model, x, y = make(GRAPHS[0], torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pc = pclab.PredictiveCoding(model, loss="mse", algorithm=algorithm, steps=3)
    bad = x[0].clone()
    bad[2, 3] = float("nan")
    with pytest.raises(pclab.DivergenceError, match="input 0 contains NaN") as info:
        pc.step(bad, y, optimizer=opt)
    assert info.value.node == "input"
    target = torch.nn.functional.one_hot(y, GRAPHS[0].classes).float()
    target[1, 0] = float("inf")
    with pytest.raises(pclab.DivergenceError, match="target contains NaN or inf") as info:
        pc.step(x[0], target, optimizer=opt)
    assert info.value.node == "target"
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_a_non_finite_batch_leaves_batch_norm_statistics_alone():
    model, x, y = make(named("norms+dropout"), torch.float32)  # batch norm in training mode
    stats = [b.clone() for b in model.buffers()]
    bad = x[0].clone()
    bad[0, 0] = float("inf")
    with pytest.raises(pclab.DivergenceError, match="input 0"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="pc").step(bad, y)
    assert stats and all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


@pytest.mark.parametrize("algorithm,step_size", [("fpa", 3.5), ("pc", 40.0)])
def test_divergence_during_inference_names_node_and_step(algorithm, step_size):
    model, x, y = make(GRAPHS[0], torch.float32)
    pc = pclab.PredictiveCoding(model, loss="mse", algorithm=algorithm, steps=400, step_size=step_size)
    with pytest.raises(pclab.DivergenceError) as info:
        pc.step(x, y)
    assert info.value.node in pc.capture(x).names + ("output",)
    assert 0 < info.value.step <= 400
    assert f"{info.value.node!r}" in str(info.value) and f"step {info.value.step}" in str(info.value)
    assert all(p.grad is None for p in model.parameters())


def test_incremental_divergence_stops_before_the_optimizer_steps():
    model, x, y = make(GRAPHS[0], torch.float32)
    ticks = []

    class Counting(torch.optim.SGD):
        def step(self, closure=None):
            ticks.append(all(torch.isfinite(p.grad).all() for p in model.parameters()))
            return super().step(closure)

    opt = Counting(model.parameters(), lr=0.0)
    pc = pclab.PredictiveCoding(model, loss="mse", algorithm="incremental", steps=400, step_size=40.0)
    with pytest.raises(pclab.DivergenceError) as info:
        pc.step(x, y, optimizer=opt)
    # Every tick before the divergent one stepped on finite gradients; that one did not step.
    assert 0 < info.value.step < 400 and len(ticks) == info.value.step and all(ticks)
    # The message names the step, and the node whose energy went non-finite, or the
    # weight gradients when they overflowed first (they are checked before each optimizer step).
    named = "weight gradient" if info.value.node == "parameters" else f"{info.value.node!r}"
    assert f"step {info.value.step}" in str(info.value) and named in str(info.value)


@pytest.mark.parametrize("loss,target,match", [
    ("ce", torch.zeros(5, dtype=torch.long), r"\(5,\).*\(6, 5\)"),
    ("ce", torch.zeros(6, 2, dtype=torch.long), r"\(6, 2\).*\(6, 5\)"),
    ("mse", torch.zeros(6, 4), r"\(6, 4\).*\(6, 5\)"),
    ("mse", torch.full((6,), 9), r"\[0, 5\)"),
])
def test_target_that_does_not_fit_the_output_names_both_shapes(loss, target, match):
    model, x, _ = make(GRAPHS[0], torch.float32)
    with pytest.raises(ValueError, match=match):
        pclab.PredictiveCoding(model, loss=loss, algorithm="pc").step(x, target)
    assert all(p.grad is None for p in model.parameters())


def test_unknown_names_and_bad_settings_list_the_valid_ones():
    model = MLP()
    with pytest.raises(ValueError, match="exact, fpa, pc, incremental"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="backprop")
    with pytest.raises(ValueError, match="mse, ce"):
        pclab.PredictiveCoding(model, loss="l1", algorithm="fpa")
    with pytest.raises(ValueError, match="steps"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=0)
    with pytest.raises(ValueError, match="step_size"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", step_size=-0.1)
    with pytest.raises(ValueError, match="value_nodes"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", value_nodes="some").step(
            torch.randn(2, 12), torch.tensor([0, 1]))


def test_incremental_without_optimizer_says_how_to_call_it():
    model, x, y = make(GRAPHS[0], torch.float32)
    with pytest.raises(ValueError, match="optimizer=opt"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="incremental").step(x, y)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("algorithm", ["exact", "fpa", "pc", "incremental"])
def test_a_linear_readout_has_no_hidden_node_and_learns_by_the_delta_rule(algorithm, loss):
    # With no value node there is nothing to infer: every rule is the output error times
    # the input, which is autograd's gradient of the batch-mean loss.
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    model.zero_grad()
    out = model(x)
    want = F.cross_entropy(out, y) if loss == "ce" else 0.5 * (out - F.one_hot(y, 3)).pow(2).sum() / 5
    want = torch.autograd.grad(want, list(model.parameters()))
    pc = pclab.PredictiveCoding(model, loss=loss, algorithm=algorithm, steps=3)
    assert pc.capture(x).names == ()
    pc.step(x, y, optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g)


def test_pc_warns_when_its_step_size_makes_inference_raise_the_energy():
    model, x, y = make(named("residual"), torch.float32)  # large energy curvature
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=5, step_size=2.5)
    with pytest.warns(RuntimeWarning, match=r"raised the energy.*step_size 2.5 is too large.*e\.g\. 0\.25"):
        pc.step(x, y)
    with warnings.catch_warnings():  # once per learner, not once per batch; every step still says so
        warnings.simplefilter("error")
        result = pc.step(x, y)
    assert result.energy_rose and result.energy_trace[-1] > result.energy_trace[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=5, step_size=0.1).step(x, y)
    assert result.energy_trace[-1] < result.energy_trace[0] and not result.energy_rose


def test_energy_rose_is_only_said_of_energy_descent():
    """FPA's errors grow from zero by design and incremental PC's weights move between
    its ticks: a higher last energy is no overshoot there."""
    model, x, y = make(named("residual"), torch.float32)
    fpa = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=5, step_size=0.5).step(x, y)
    assert fpa.energy_trace[-1] > fpa.energy_trace[0] and not fpa.energy_rose


@pytest.mark.parametrize("start,end,rose", [(1.0, 1.01, True), (1.0, 1.0005, False), (2.0, 1.0, False),
                                            (0.0, 7e-20, False), (0.0, 1e-3, True)])
def test_the_energy_rise_warning_ignores_rounding_of_a_fitted_batch(start, end, rose):
    """A batch fitted to float precision starts at energy 0; rounding is not a rise."""
    from pclab.engine import _energy_rose
    assert _energy_rose(start, end) is rose


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-2.0**60, max_value=2.0**60, width=32)  # 12 squares cannot overflow float32
                | st.sampled_from([float("nan"), float("inf"), -float("inf")]), min_size=1, max_size=12),
       st.integers(0, 3), st.floats(min_value=0.0, max_value=1e3) | st.just(float("nan")))
def test_a_step_reads_as_finite_exactly_when_every_gradient_and_energy_is(values, split, error):
    """The divergence check is the one host read of the step: gradients' norms, energies and loss."""
    from pclab.algorithms import Outcome
    from pclab.inference import EnergyTrace
    data = torch.tensor(values, dtype=torch.float32)
    grads = [data[:split], data[split:]] if 0 < split < len(values) else [data]
    trace, loss_sum = EnergyTrace(), torch.tensor(3.0)
    trace.record_at_rest(2, loss_sum)
    trace.record([torch.full((4, 3), error), torch.zeros(4, 5)], loss_sum)
    readout = Outcome.of(torch.zeros(4, 2), loss_sum, [torch.zeros(4, 3)] * 2, trace, grads).read(batch_size=4)
    assert readout.finite == (bool(torch.isfinite(data).all()) and error == error)
    assert readout.loss_sum == 3.0 and readout.trace[0] == [0.0, 0.0, 0.75]
    assert readout.trace[1][0] == pytest.approx(0.5 * 12 * error ** 2 / 4, nan_ok=True)


@pytest.mark.parametrize("algorithm,steps", [("exact", 1), ("fpa", 8), ("pc", 8), ("incremental", 4)])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_a_step_waits_for_the_device_once_after_inference(monkeypatch, algorithm, steps, loss):
    """A host read stalls a GPU step until the device catches up, so a step makes as few
    as it can: one for the batch check, one for mse's class-index range, one after
    inference (the trace, loss and divergence check), and one per tick where incremental
    PC must check its gradients before each optimizer step. Counted on the CPU, where
    the same reads happen."""
    model, x, y = make(GRAPHS[0], torch.float32)
    pc = pclab.PredictiveCoding(model, loss=loss, algorithm=algorithm, steps=steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pc.step(x, y, optimizer=opt)  # capture the graph first: its trace reads values freely
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _f=original, _n=name: reads.append(_n) or _f(t, *a))
    pc.step(x, y, optimizer=opt)
    monkeypatch.undo()
    ticks = steps if algorithm == "incremental" else 0
    assert len(reads) == 1 + (loss == "mse") + 1 + ticks, reads
