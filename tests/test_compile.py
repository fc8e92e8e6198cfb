"""``compile=True`` runs the same learning rule through torch.compile: same numbers, fewer kernels."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

import pclab
from torch._dynamo.utils import counters


class ResidualBN(nn.Module):
    """Residual block with batch norm in training mode: buffers change once per step."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.norm = nn.BatchNorm1d(16)
        self.hidden = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.norm(self.inp(x)))
        return self.out(h + torch.tanh(self.hidden(h)))


def _step(learner, model, x, y):
    model.zero_grad(set_to_none=True)
    result = learner.step(x, y)
    return result, [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("algorithm, mode", [("exact", True), ("exact", "tick"), ("fpa", True), ("pc", True),
                                             ("pc", "tick")])
def test_compiled_step_equals_the_eager_step(algorithm, mode):
    torch.manual_seed(0)
    eager_model = ResidualBN()
    compiled_model = copy.deepcopy(eager_model)
    eager = pclab.PredictiveCoding(eager_model, loss="ce", algorithm=algorithm, steps=6)
    compiled = pclab.PredictiveCoding(compiled_model, loss="ce", algorithm=algorithm, steps=6, compile=mode)
    batches = [(torch.randn(10, 12), torch.randint(0, 4, (10,)))]
    if algorithm == "pc":  # a new batch size compiles a second program
        batches.append((torch.randn(7, 12), torch.randint(0, 4, (7,))))
    for x, y in batches:
        want, want_grads, want_buffers = _step(eager, eager_model, x, y)
        got, got_grads, got_buffers = _step(compiled, compiled_model, x, y)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(got_buffers, want_buffers):  # running statistics updated once, as eager does
            torch.testing.assert_close(a, b)
        assert got.energy_trace == pytest.approx(want.energy_trace, rel=1e-4, abs=1e-6)
        assert got.energies == pytest.approx(want.energies, rel=1e-4, abs=1e-6)
        assert got.loss == pytest.approx(want.loss, rel=1e-5)


def _chain(depth: int) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), *[m for _ in range(depth) for m in (nn.Tanh(), nn.Linear(8, 8))],
                         nn.Linear(8, 3))


def _compiled_programs(model, steps, batches, monkeypatch):
    """Programs compiled for ``steps`` of per-tick pc on ``batches``; fails on any eager fallback."""
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    counters.clear()
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=steps, compile="tick")
    for batch in batches:
        pc.step(torch.randn(batch, 6), torch.randint(0, 3, (batch,)))
    assert not counters["graph_break"]
    return counters["stats"]["unique_graphs"]


def test_per_tick_compiling_grows_with_the_sweeps_not_the_steps(monkeypatch):
    # A chain's frontier moves one edge per step (with recomputed predictions, both
    # ways), so its sweeps stop changing once it spans the chain: later steps reuse
    # a program. The unrolled step would compile every step again.
    torch.manual_seed(0)
    model = _chain(4)
    graph = pclab.capture(model, (torch.randn(2, 6),))
    distinct = len(set(pclab.inference.frontier_schedule(graph, 30, predictions_move=True)[0][1:]))
    assert 3 < distinct < 10  # more than dynamo's recompile limit for one program allows
    many = _compiled_programs(model, 30, (4, 4, 3), monkeypatch)
    assert many == 2 * (distinct + 2)  # first, each sweep, last; per batch shape
    assert _compiled_programs(model, 60, (4,), monkeypatch) == distinct + 2


def test_compile_per_tick_is_refused_where_ticks_share_a_graph_and_bad_modes_are_named():
    model = _chain(1)
    with pytest.raises(ValueError, match=r"'fpa' cannot be compiled per tick.*compile=True"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", compile="tick")
    with pytest.raises(ValueError, match=r"compile must be one of .*'tick'; got 'fast'"):
        pclab.PredictiveCoding(model, loss="ce", algorithm="pc", compile="fast")
    with pytest.raises(ValueError, match=r"compile must be one of .*'tick'; got 'fast'"):
        pclab.learner(model, "bp", loss="ce", compile="fast")


def test_compile_refuses_a_forward_that_draws_random_numbers_and_names_it():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", compile=True)
    with pytest.raises(ValueError, match=r"Dropout.*\.eval\(\)"):
        pc.step(torch.randn(4, 8), torch.randint(0, 3, (4,)))
    assert all(p.grad is None for p in model.parameters())


def test_compiled_incremental_pc_follows_the_eager_one_tick_by_tick():
    # Its optimizer steps between ticks, so weights, buffers and energies after a few
    # batches show every tick was the same program.
    torch.manual_seed(0)
    eager_model = ResidualBN()
    compiled_model = copy.deepcopy(eager_model)
    counters.clear()
    runs = []
    for model, compile in ((eager_model, False), (compiled_model, True)):
        pc = pclab.PredictiveCoding(model, loss="ce", algorithm="incremental", steps=4, compile=compile)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.manual_seed(1)
        runs.append([pc.step(torch.randn(10, 12), torch.randint(0, 4, (10,)), optimizer=opt)
                     for _ in range(3)])
    for got, want in zip(runs[1], runs[0]):
        assert got.energy_trace == pytest.approx(want.energy_trace, rel=1e-4, abs=1e-6)
    for a, b in zip([*compiled_model.parameters(), *compiled_model.buffers()],
                    [*eager_model.parameters(), *eager_model.buffers()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Three whole programs (the first tick, the middle ones, the last, which moves no
    # value), no eager fallback in between.
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 3


def test_the_graph_knows_when_its_forward_draws_random_numbers():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3)).eval()
    graph = pclab.capture(model, (torch.randn(2, 8),))  # captured in eval mode: dropout still found
    assert not graph.draws_random()
    model.train()
    assert graph.draws_random()
    assert not pclab.capture(nn.Sequential(nn.Linear(8, 3)), (torch.randn(2, 8),)).draws_random()


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + 0.1 * torch.randn_like(x))


def test_a_random_op_in_forward_counts_in_every_mode():
    assert pclab.capture(Noisy().eval(), (torch.randn(2, 4),)).draws_random()


@pytest.mark.parametrize("algorithm", ["bp", "fpa"])
def test_many_compiled_learners_each_keep_their_own_program(monkeypatch, algorithm):
    # A sweep builds a learner per run; sharing one compile cache would hit dynamo's
    # recompile limit and silently fall back to eager mode.
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    for seed in range(4):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        pc = pclab.learner(model, algorithm, loss="ce", steps=3, compile=True)
        for batch in (4, 4, 2):
            pc.step(torch.randn(batch, 5), torch.randint(0, 3, (batch,)))


def test_the_collection_that_compiling_provokes_happens_in_the_compiling_step(monkeypatch):
    # Otherwise it stalls some later step for a tenth of a second (a timing artefact
    # benchmarks picked up); one collection per new batch shape, none afterwards.
    collections = []
    monkeypatch.setattr(pclab.engine, "gc", types.SimpleNamespace(collect=lambda: collections.append(1)))
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    pc = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=3, compile=True)
    for batch in (5, 5, 5, 4, 4, 5):
        pc.step(torch.randn(batch, 6), torch.randint(0, 3, (batch,)))
    assert len(collections) == 2
