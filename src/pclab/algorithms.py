"""Predictive-coding algorithms: schedules that combine the inference and learning rules.

Each algorithm is a small frozen dataclass with one method, ``run(problem,
optimizer) -> Outcome``. They differ only in *when* predictions are computed and
*which* rule moves what:

======================  =====================  =========================================
algorithm               predictions            what it computes
======================  =====================  =========================================
:class:`Exact`          forward values (FPA)   one reverse-topological sweep, step 1 (Z-IL):
                                               errors equal backprop's gradients exactly
:class:`FPA`            forward values (FPA)   ``steps`` Jacobi steps of size ``step_size``;
                                               converges to backprop (Millidge et al. 2020)
:class:`PC`             recomputed every step  energy descent on values, then one weight
                                               step (prospective configuration, Song 2024)
:class:`Incremental`    recomputed every step  values and weights move together at every
                                               tick (iPC, Salvatori et al. ICLR 2024)
======================  =====================  =========================================
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, Sequence

import torch
from torch import Tensor, nn

from . import inference, learning
from .energy import OutputLoss, output_error
from .errors import DivergenceError
from .graph import OUTPUT, CapturedGraph, Replay


@dataclass(frozen=True)
class Problem:
    """One batch, ready for inference: the captured graph, inputs and prepared target."""

    graph: CapturedGraph
    model: nn.Module
    inputs: tuple[Any, ...]
    target: Tensor
    loss: OutputLoss
    params: list[nn.Parameter]

    @property
    def batch_size(self) -> int:
        return self.target.shape[0]


@dataclass
class Outcome:
    """What an algorithm leaves behind; the engine checks it and writes the gradients.

    ``packed`` holds, on the device, all the engine reads on the host (one transfer,
    :meth:`read`): the batch energies of every evaluation, the initial state first,
    the feed-forward loss and the gradients' norms (whose finiteness is the
    divergence check). ``grads`` is ``None`` when the algorithm already applied its
    gradients (incremental PC).
    """

    output: Tensor
    errors: list[Tensor]
    grads: learning.GradList | None
    packed: Tensor
    evaluations: int

    @classmethod
    def of(cls, output: Tensor, loss_sum: Tensor, errors: list[Tensor], trace: inference.EnergyTrace,
           grads: learning.GradList | None) -> "Outcome":
        # Packed where the outcome is made, so that a compiled step fuses it.
        packed = trace.packed(loss_sum.detach(), *inference.norms(grads or []))
        return cls(output, errors, grads, packed, trace.evaluations)

    def read(self, batch_size: int) -> Readout:
        host = self.packed.tolist()
        # A sum is finite exactly when its terms are: NaN and inf survive it, and
        # float32 norms cannot add up past float64's range.
        rows, (loss_sum, *_) = inference.unpack(host, self.evaluations, len(self.errors), batch_size)
        return Readout(rows, loss_sum, math.isfinite(sum(host)))


@dataclass(frozen=True)
class Readout:
    """An :class:`Outcome`'s scalars on the host: ``trace[t]`` holds the batch-mean
    energy of every value node (the output's loss last) at evaluation ``t``."""

    trace: list[list[float]]
    loss_sum: float
    finite: bool


class Algorithm(Protocol):
    """``run`` does inference (and, for incremental PC, learning) on one problem.

    Two optional hooks the engine looks for: a class attribute ``descends_energy =
    True`` where inference is gradient descent on the energy (the engine then warns
    when a step ends with more energy than it started with: a step size above the
    stable range), and a method ``compiled(compile, *, per_tick)`` returning ``run``
    with only some parts compiled (incremental PC: its ticks; PC: its ticks where
    ``per_tick``), or ``None`` where the whole ``run`` is one program, as it is
    without the method.
    """

    name: ClassVar[str]

    def run(self, problem: Problem, optimizer: torch.optim.Optimizer | None) -> Outcome: ...


def finite(scalar: Tensor) -> bool:
    """Whether a one-element tensor is finite; read on the host, since the answer is
    needed there anyway (``torch.isfinite`` would add four small ops per check)."""
    return math.isfinite(scalar.item())


def raise_divergence(graph: CapturedGraph, trace: list[list[float]]) -> None:
    """Raise :class:`DivergenceError` for a step found non-finite: naming the first
    node and step whose energy went non-finite, else the weight gradients."""
    names = [*graph.names, OUTPUT]
    for step, row in enumerate(trace):
        for node, energy in zip(names, row):
            if not math.isfinite(energy):
                raise DivergenceError(
                    f"non-finite energy at node {node!r} ({graph.origin.get(node, 'loss')}) "
                    f"at inference step {step}; no gradient was written. Fix: lower step_size or the "
                    "learning rate, or check the model for overflow.", node=node, step=step)
    step = len(trace) - 1
    raise DivergenceError(f"a weight gradient went non-finite (or its norm past float's range) at inference "
                          f"step {step}; no gradient was written. Fix: lower the learning rate or step_size.",
                          node="parameters", step=step)


_schedule = functools.lru_cache(maxsize=128)(inference.frontier_schedule)


def _check_steps(steps: int, step_size: float) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if not (isinstance(step_size, (int, float)) and 0 < step_size < float("inf")):
        raise ValueError(f"step_size must be a positive finite number; got {step_size!r}")


@dataclass(frozen=True)
class Exact:
    """Z-IL: errors swept from the output to the inputs once, with unit step.

    Processing nodes in reverse topological order with ``eta = 1`` sets every error
    to ``e_i = sum_j J_ji^T e_j`` from already-final children, which is the chain
    rule; autograd's engine runs exactly this sweep, so one VJP through the
    uncut forward graph gives every node's error and every weight's update.
    """

    name: ClassVar[str] = "exact"

    def run(self, problem: Problem, optimizer: torch.optim.Optimizer | None = None) -> Outcome:
        g, B = problem.graph, problem.batch_size
        out, *values = g.forward_with_values(*problem.inputs)
        loss_sum = problem.loss.per_example(out, problem.target).sum()
        # Cotangent 1/B gives the weights their batch-mean update directly, -1 gives
        # the values their per-example errors: the smaller side takes the rescaling.
        s = -1.0 if learning.activations_outnumber(values, problem.params) else 1.0 / B
        grads = torch.autograd.grad(loss_sum, [*values, *problem.params], torch.full_like(loss_sum, s),
                                    materialize_grads=True)
        errors = learning.scaled(grads[:len(values)], -1.0 / s)
        weight_grads = learning.scaled(grads[len(values):], 1.0 / (s * B))
        trace = inference.EnergyTrace()
        trace.record_at_rest(len(errors), loss_sum)
        trace.record(errors, loss_sum)
        return Outcome.of(out.detach(), loss_sum, errors, trace, weight_grads)


@dataclass(frozen=True)
class FPA:
    """Fixed-prediction assumption (Millidge, Tschantz & Buckley 2020).

    Predictions and Jacobians stay at their forward values, so each step is one VJP
    of the cut forward graph: ``e_i <- e_i + eta (-e_i + sum_j J_ji^T e_j)``. The
    errors converge to backprop's (negative) gradients; a node ``d`` edges from the
    output of a chain has reached ``P(Binomial(t, eta) >= d)`` of its final error
    after ``t`` steps.
    """

    steps: int = 20
    step_size: float = 0.5
    name: ClassVar[str] = "fpa"

    def __post_init__(self) -> None:
        _check_steps(self.steps, self.step_size)

    def compiled(self, compile: Callable[[Callable[..., Any]], Callable[..., Any]], *, per_tick: bool) -> None:
        """The whole ``run`` is one program: every tick differentiates the forward
        pass's one graph (predictions fixed), which cannot leave a program."""
        if per_tick:
            raise ValueError("algorithm 'fpa' cannot be compiled per tick: every tick differentiates the "
                             "forward pass's one graph. Use compile=True (one program per step) or "
                             "compile=False")

    def run(self, problem: Problem, optimizer: torch.optim.Optimizer | None = None) -> Outcome:
        g, B = problem.graph, problem.batch_size
        out, mus, values, _ = g.forward_cut(*problem.inputs)
        e_out = output_error(problem.loss, out, problem.target)
        with torch.no_grad():
            loss_sum = problem.loss.per_example(out, problem.target).sum()
        errors = [torch.zeros_like(m, requires_grad=False) for m in mus]
        trace = inference.EnergyTrace()
        trace.record_at_rest(len(errors), loss_sum)
        sweeps, active = _schedule(g, self.steps)
        for sweep in sweeps:
            self._step(sweep, out, mus, values, e_out, errors)
            trace.record(errors, loss_sum)
        grads = learning.weight_gradients([*(mus[j] for j in active), out],
                                          [*(errors[j] for j in active), e_out], problem.params, B)
        return Outcome.of(out.detach(), loss_sum, errors, trace, grads)

    def _step(self, sweep: inference.Sweep, out: Tensor, mus: list[Tensor], values: list[Tensor],
              e_out: Tensor, errors: list[Tensor]) -> None:
        """One Jacobi step, replacing the receivers' entries of ``errors``. A function of
        its own so that its feedback is freed on return, before the next step's VJP."""
        fb = inference.feedback([*(mus[j] for j in sweep.senders), out],
                                [*(errors[j] for j in sweep.senders), e_out],
                                [values[i] for i in sweep.receivers], retain_graph=True)
        updated = inference.fpa_error_update([errors[i] for i in sweep.receivers], fb, self.step_size)
        for i, e in zip(sweep.receivers, updated):
            errors[i] = e


def _evaluate(problem: Problem, values: list[Tensor], replay: Replay) -> tuple[Tensor, list[Tensor]]:
    """Every prediction from ``values`` and the current weights."""
    out, *mus = replay.again(problem.graph.predict, *problem.inputs, *values)
    return out, mus


def _evaluate_moving(problem: Problem, values: list[Tensor], replay: Replay, fixed: tuple[Tensor, ...],
                     mus: list[Tensor]) -> Tensor:
    """Recompute only the predictions values can change, in place in ``mus``; returns the output."""
    out, *moved = replay.again(problem.graph.predict_moving, *fixed, *values)
    for i, m in zip(problem.graph.moving, moved):
        mus[i] = m
    return out


def _errors(values: list[Tensor], mus: list[Tensor]) -> list[Tensor]:
    if not values:
        return []
    with torch.no_grad():  # errors are signals, outside every graph (and no detach op per tensor)
        return torch._foreach_sub(list(values), list(mus))


def _leaves(tensors: list[Tensor]) -> list[Tensor]:
    """Fresh tensors (the value rules compute without recording) made leaves to differentiate at."""
    return [t.requires_grad_(True) for t in tensors]


@dataclass(frozen=True)
class PC:
    """Standard energy-based PC: predictions recomputed at every inference step.

    Values start at the forward pass; each step lowers every example's energy
    ``F = sum_i 0.5|v_i - mu_i(v)|^2 + L(mu_out(v), y)`` by a gradient step of size
    ``step_size`` on the values (the output clamped to the target for ``"mse"``,
    driven by the loss gradient for ``"ce"``); the weights then take
    ``dF/dtheta`` at the final values. This is not backprop: it is the rule Song et
    al. (2024) call prospective configuration.
    """

    steps: int = 20
    step_size: float = 0.1
    name: ClassVar[str] = "pc"
    descends_energy: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_steps(self.steps, self.step_size)

    def run(self, problem: Problem, optimizer: torch.optim.Optimizer | None = None) -> Outcome:
        return self._ticks(problem, self._first, self._tick, self._last, apart=False)

    def compiled(self, compile: Callable[[Callable[..., Any]], Callable[..., Any]], *,
                 per_tick: bool) -> Callable[..., Outcome] | None:
        """With ``per_tick``, ``run`` with each tick a program of its own: the first
        (with the forward pass), one per distinct sweep, the last (with the weight
        gradients). The unrolled step's program grows with depth x steps, and so do
        inductor's compile time and memory; these grow with depth only. Otherwise
        ``None``: the whole ``run`` is one program."""
        if not per_tick:
            return None
        first, last = compile(self._first), compile(self._last)
        programs: dict[inference.Sweep, Callable[..., Any]] = {}

        def tick(sweep: inference.Sweep, *args: Any) -> Any:
            # One program per sweep, each with code of its own (compile copies it): a
            # deep chain has a distinct sweep per step until the frontier spans it,
            # more than one program's recompile limit allows.
            if sweep not in programs:
                programs[sweep] = compile(lambda *a: self._tick(sweep, *a))
            return programs[sweep](*args)

        return lambda problem, optimizer=None: self._ticks(problem, first, tick, last, apart=True)

    def _ticks(self, problem: Problem, first: Callable[..., Any], tick: Callable[..., Any],
               last: Callable[..., Any], *, apart: bool) -> Outcome:
        """Inference then learning, from three parts; ``apart`` says they run as
        separate programs, between which no autograd graph may pass."""
        replay = Replay(problem.model, random=problem.graph.draws_random())
        sweeps, _ = _schedule(problem.graph, self.steps, predictions_move=True)
        trace = inference.EnergyTrace()
        try:
            feedforward, feedforward_loss, fixed, mus, values, norms = first(problem, replay, apart)
            trace.record_norms(norms, feedforward_loss)
            for sweep in sweeps[1:]:
                values, loss_sum, norms = tick(sweep, problem, replay, fixed, mus, _leaves(values))
                trace.record_norms(norms, loss_sum)
            errors, loss_sum, norms, grads = last(problem, replay, fixed, mus, values, apart)
            trace.record_norms(norms, loss_sum)
        finally:
            replay.close()
        return Outcome.of(feedforward, feedforward_loss, errors, trace, grads)

    def _first(self, problem: Problem, replay: Replay, apart: bool) -> tuple[Any, ...]:
        """The forward pass and the first step at its values. Returns the feed-forward
        output and loss, the tensors later steps read but values do not change
        (``fixed``, and the predictions of the nodes values do not move, ``None`` for
        the others), the moved values and the error norms."""
        g = problem.graph
        out, mus, values, fixed = g.forward_cut(*problem.inputs)
        replay.first_done()
        sweep = _schedule(g, self.steps, predictions_move=True)[0][0]
        mus = list(mus)
        moved, loss_sum, norms = self._descend(sweep, problem, out, mus, list(values))
        # The last step reuses the forward's graph of the unmoved predictions for their
        # weight gradients, unless it is another program, which recomputes them.
        keep = (lambda t: t.detach()) if apart else (lambda t: t)
        unmoved = [None if i in g.moving else keep(m) for i, m in enumerate(mus)]
        return out.detach(), loss_sum, [keep(t) for t in fixed], unmoved, moved, norms

    def _tick(self, sweep: inference.Sweep, problem: Problem, replay: Replay, fixed: Sequence[Tensor],
              unmoved: Sequence[Tensor | None], values: list[Tensor]) -> tuple[Any, ...]:
        """A later step: the predictions values move, recomputed, then one descent step."""
        mus = list(unmoved)
        out = _evaluate_moving(problem, values, replay, tuple(fixed), mus)
        return self._descend(sweep, problem, out, mus, values)

    def _last(self, problem: Problem, replay: Replay, fixed: Sequence[Tensor], unmoved: Sequence[Tensor | None],
              values: list[Tensor], apart: bool) -> tuple[Any, ...]:
        """The energy at the final values and each weight's ``dF/dtheta`` there."""
        _, active = _schedule(problem.graph, self.steps, predictions_move=True)
        if apart:
            out, mus = _evaluate(problem, values, replay)
        else:
            mus = list(unmoved)
            out = _evaluate_moving(problem, values, replay, tuple(fixed), mus)
        errors = _errors(values, mus)
        loss_sum = problem.loss.per_example(out, problem.target).sum()
        grads = learning.weight_gradients([mus[j] for j in active], [errors[j] for j in active],
                                          problem.params, problem.batch_size, loss_sum=loss_sum)
        return errors, loss_sum.detach(), inference.norms(errors), grads

    def _descend(self, sweep: inference.Sweep, problem: Problem, out: Tensor, mus: list[Tensor],
                 values: list[Tensor]) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        """One step down the energy at ``values``: the values with the receivers'
        moved (outside autograd's graph), the summed loss and the error norms there."""
        errors = _errors(values, mus)
        loss_sum = problem.loss.per_example(out, problem.target).sum()
        receivers = [values[i] for i in sweep.receivers]
        # Eager mode frees each step's graph at once; torch.compile refuses a graph
        # freed and then read again, which the final weight step does for the
        # predictions no value moves when the whole step is one program.
        fb = inference.feedback([loss_sum, *(mus[j] for j in sweep.senders)],
                                [-torch.ones_like(loss_sum), *(errors[j] for j in sweep.senders)],
                                receivers, retain_graph=torch.compiler.is_compiling())
        for i in problem.graph.moving:  # spent once their errors are sent; the next step recomputes them
            mus[i] = None
        # A compiled program must not return a tensor autograd tracks (it would compile
        # a backward for it); eager mode keeps the unmoved leaves as they are.
        moved = [v.detach() for v in values] if torch.compiler.is_compiling() else list(values)
        stepped = inference.value_update(receivers, [errors[i] for i in sweep.receivers], fb, self.step_size)
        for i, v in zip(sweep.receivers, stepped):
            moved[i] = v
        return moved, loss_sum.detach(), inference.norms(errors)


@dataclass(frozen=True)
class Incremental:
    """Incremental PC (Salvatori et al., ICLR 2024): values and weights step together.

    At every tick the energy gradient is taken once, for the values and the weights
    alike; the values move by ``step_size`` and the given optimizer steps the weights.
    Each batch can therefore be seen once, as in a stream. ``p.grad`` holds the
    current tick's gradient when the optimizer steps (it is replaced, not added to).
    """

    steps: int = 20
    step_size: float = 0.1
    name: ClassVar[str] = "incremental"

    def __post_init__(self) -> None:
        _check_steps(self.steps, self.step_size)

    def run(self, problem: Problem, optimizer: torch.optim.Optimizer | None = None) -> Outcome:
        return self._ticks(problem, optimizer, self._first, self._next)

    def compiled(self, compile: Callable[[Callable[..., Any]], Callable[..., Any]], *,
                 per_tick: bool) -> Callable[..., Outcome]:
        """``run`` with each tick through ``compile`` (its errors, VJP, norms and value
        move fused), ``per_tick`` or not: the optimizer steps between ticks stay
        outside the compiled programs (one for the first tick, one for the middle
        ones, one for the last)."""
        first, following = compile(self._first), compile(self._next)
        return lambda problem, optimizer=None: self._ticks(problem, optimizer, first, following)

    def _ticks(self, problem: Problem, optimizer: torch.optim.Optimizer | None,
               first: Callable[..., Any], following: Callable[..., Any]) -> Outcome:
        if optimizer is None:
            raise ValueError("algorithm 'incremental' steps the weights at every inference tick: "
                             "call pc.step(x, y, optimizer=opt)")
        g, B = problem.graph, problem.batch_size
        replay = Replay(problem.model, random=g.draws_random())
        trace = inference.EnergyTrace()
        try:
            for t in range(self.steps):
                # Last tick's gradients and errors are spent: free them before this tick
                # allocates its own, or a tick holds two sets at its peak.
                grads = neg_errors = None
                for p in problem.params:
                    p.grad = None
                # The last tick's moved values would go unused: it takes no VJP at the values.
                move = t < self.steps - 1
                if t == 0:
                    feedforward, values, neg_errors, loss_sum, grads, norms = first(problem, replay, move)
                    feedforward_loss = loss_sum
                else:
                    values, neg_errors, loss_sum, grads, norms = following(problem, _leaves(values), replay, move)
                trace.record_norms(norms[:len(values)].unbind(), loss_sum)  # norms: the sign does not matter
                # Finite exactly when this tick's energies and gradients are (a gradient
                # whose norm passes float's range counts as diverged); earlier ticks passed.
                tick = norms.sum() + loss_sum
                if not finite(tick):
                    raise_divergence(g, inference.unpack(trace.packed().tolist(), trace.evaluations,
                                                         len(values), B)[0])
                learning.assign(problem.params, grads)
                optimizer.step()
        finally:
            replay.close()
        errors = [torch.zeros_like(v) for v in values] if neg_errors is None else learning.scaled(neg_errors, -1.0)
        return Outcome.of(feedforward, feedforward_loss, errors, trace, None)

    def _first(self, problem: Problem, replay: Replay, move: bool) -> tuple[Any, ...]:
        """The forward pass, then the first tick at its values.

        Every value sits at its prediction there, so only the output has an error:
        the energy's VJP starts from the loss alone and reaches only the output's
        parents and their weights (every other gradient is exactly zero), a fraction
        of the backward pass a tick otherwise takes.
        """
        out, mus, values, _ = problem.graph.forward_cut(*problem.inputs)
        replay.first_done()
        del mus  # all equal to their values
        # The first sweep's receivers: the output's parents, the only values the loss reaches.
        receivers = _schedule(problem.graph, 1)[0][0].receivers if move else ()
        signals = self._signals(problem, list(values), receivers, out)
        feedforward = out.detach()
        del out  # spent: freed before the value move allocates (eager mode's peak)
        return (feedforward, *self._move(list(values), receivers, *signals))

    def _next(self, problem: Problem, values: list[Tensor], replay: Replay, move: bool) -> tuple[Any, ...]:
        """A later tick: predictions recomputed from the moved values and new weights."""
        out, mus = _evaluate(problem, values, replay)
        receivers = tuple(range(len(values))) if move else ()
        signals = self._signals(problem, values, receivers, out, mus)
        del out, mus  # as in _first
        return self._move(values, receivers, *signals)

    @staticmethod
    def _signals(problem: Problem, values: list[Tensor], receivers: tuple[int, ...], out: Tensor,
                 mus: list[Tensor] | None = None) -> tuple[Any, ...]:
        """``-e`` (``None`` when every value sits at its prediction, ``mus`` not given),
        the summed loss, the energy's VJP at the receivers' values, each weight's
        ``dF/dtheta``, and the VJP's cotangent scale (what :meth:`_move` takes)."""
        B = problem.batch_size
        loss_sum = problem.loss.per_example(out, problem.target).sum()
        # One VJP for values and weights. Its cotangents' scale s scales both results:
        # the weights want the batch mean (s = 1/B), the values per-example signals
        # (s = 1). Whichever side is not served gets one rescaling pass, so the
        # smaller side takes it.
        s = _cotangent_scale(problem, values)
        roots, cotangents = [loss_sum], [torch.full_like(loss_sum, s)]
        neg_errors = None
        if mus is not None:
            neg_errors = _errors(mus, values)
            roots += mus
            cotangents += learning.scaled(neg_errors, s)
        at = [values[i] for i in receivers]
        d = torch.autograd.grad(roots, [*at, *problem.params], cotangents, materialize_grads=True)
        return neg_errors, loss_sum.detach(), list(d[:len(at)]), learning.scaled(d[len(at):], 1.0 / (s * B)), s

    def _move(self, values: list[Tensor], receivers: tuple[int, ...], neg_errors: list[Tensor] | None,
              loss_sum: Tensor, vjp: list[Tensor], grads: list[Tensor], scale: float) -> tuple[Any, ...]:
        """The values with the receivers' moved, ``-e``, the summed loss, the weight
        gradients, and the norms of the errors then the gradients (the trace's, and the
        divergence check's).

        The value move does not wait for the optimizer: it uses this tick's VJP only,
        so it is computed inside the tick, fused with the rest when compiled. Values
        leave without autograd history (a returned tensor autograd still tracks would
        split the compiled program); the caller makes them leaves for the next tick.
        """
        moved = [v.detach() for v in values]
        stepped = inference.energy_descent([values[i] for i in receivers],
                                           None if neg_errors is None else [neg_errors[i] for i in receivers],
                                           vjp, self.step_size, scale)
        for i, v in zip(receivers, stepped):
            moved[i] = v
        if neg_errors is None:
            norms = torch.cat([loss_sum.new_zeros(len(values)), torch.stack(inference.norms(grads))])
        else:
            norms = torch.stack(inference.norms([*neg_errors, *grads]))
        return moved, neg_errors, loss_sum, grads, norms


def _cotangent_scale(problem: Problem, values: Sequence[Tensor]) -> float:
    """1 where the values outnumber the weights (convolutions, attention), else 1/B."""
    return 1.0 if learning.activations_outnumber(values, problem.params) else 1.0 / problem.batch_size


ALGORITHMS: dict[str, type] = {a.name: a for a in (Exact, FPA, PC, Incremental)}
