"""The entry point: train an ordinary PyTorch model with predictive coding.

Example::

    >>> import torch, torch.nn as nn, pclab
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> pc = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=20, step_size=0.5)
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    >>> opt.zero_grad()
    >>> result = pc.step(x, y)     # inference + local learning; gradients land in p.grad
    >>> opt.step()
    >>> sorted(result.energies)
    ['1', 'output']
"""

from __future__ import annotations

import contextlib
import gc
import math
import types
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from . import learning
from .algorithms import ALGORITHMS, FPA, PC, Algorithm, Exact, Incremental, Problem, raise_divergence
from .energy import OutputLoss, get_loss
from .errors import DivergenceError
from .graph import OUTPUT, CapturedGraph, ValueNodePolicy, capture

_DEFAULT_STEP_SIZE = {"fpa": 0.5, "pc": 0.1, "incremental": 0.1}
_COMPILE_MODES = (False, True, "step", "tick")


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`PredictiveCoding.step` measured.

    Attributes:
        loss: batch-mean loss of the feed-forward prediction (what backprop reports).
        energy: batch-mean total energy at the end of inference.
        output: the feed-forward output (detached).
        energies: batch-mean energy of each value node at the end, ``"output"`` last
            (its loss term).
        energy_trace: total energy at each evaluation, the initial state first.
        errors: each value node's final per-example error ``e_i = v_i - mu_i``.
        energy_rose: whether inference, where it is descent on the energy (``pc``),
            ended above where it started: the step size overshot, so the weight
            update is not the rule's. Always ``False`` for the other algorithms.
    """

    loss: float
    energy: float
    output: Tensor
    energies: dict[str, float]
    energy_trace: list[float]
    errors: dict[str, Tensor]
    energy_rose: bool = False


def make_algorithm(algorithm: str | Algorithm, steps: int, step_size: float | None) -> Algorithm:
    """Build an algorithm from its name (``"exact"``, ``"fpa"``, ``"pc"``, ``"incremental"``)."""
    if not isinstance(algorithm, str):
        return algorithm
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    if algorithm == "exact":
        return Exact()
    size = _DEFAULT_STEP_SIZE[algorithm] if step_size is None else step_size
    return ALGORITHMS[algorithm](steps=steps, step_size=size)


class PredictiveCoding:
    """Train ``model`` with predictive coding; gradients go into ``p.grad``.

    Args:
        model: any ``nn.Module`` whose ``forward`` torch.fx can trace and which
            returns one tensor. It is not modified.
        loss: ``"mse"`` (``0.5 * sum((out - target)^2) / batch``, class-index targets
            one-hot encoded) or ``"ce"`` (``F.cross_entropy``, mean), or an
            :class:`~pclab.energy.OutputLoss`.
        algorithm: ``"exact"``, ``"fpa"``, ``"pc"``, ``"incremental"`` (see
            :mod:`pclab.algorithms`) or an algorithm object.
        steps: inference steps (ignored by ``"exact"``).
        step_size: inference step on each example's own energy; defaults to 0.5 for
            ``"fpa"`` and 0.1 for ``"pc"``/``"incremental"`` (PCX's value SGD rate).
        value_nodes: where value nodes go: ``"layers"`` (each parametrised layer's
            output), ``"all"`` (every floating intermediate), a tuple of module
            classes (each instance one unit, its output the value node: residual
            blocks, e.g. :data:`pclab.models.BLOCKS`, put values on the residual
            stream) or a predicate on fx nodes.
        leaf_modules: module classes kept opaque (one node each) instead of traced.
        compile: run inference and learning through ``torch.compile``. ``True`` (or
            ``"step"``): each step is one fused program per input shape; the first
            step of each shape compiles, taking seconds to minutes, since the
            program unrolls every inference step through the whole model (its
            compile time and memory grow with depth x ``steps``). ``"tick"``: one
            program per kind of inference step (``"pc"``: the first, one per
            distinct sweep, the last), so compiling grows with depth only, and a
            step calls ``steps`` programs instead of one. ``"incremental"`` always
            compiles per tick (its optimizer steps between ticks, eagerly);
            ``"exact"`` has one tick, so both modes are one program; ``"fpa"``
            compiles only whole steps (every tick differentiates the forward's
            one graph). Needs a forward that draws no random numbers (dropout in
            eval mode or absent).

    The graph is captured once per input signature (dtypes and non-batch shapes)
    and reused. See the module docstring for an example.
    """

    def __init__(self, model: nn.Module, *, loss: str | OutputLoss, algorithm: str | Algorithm,
                 steps: int = 20, step_size: float | None = None,
                 value_nodes: ValueNodePolicy = "layers",
                 leaf_modules: Sequence[type[nn.Module]] = (), compile: bool | Literal["step", "tick"] = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        self.model = model
        self.loss = get_loss(loss)
        self.algorithm = make_algorithm(algorithm, steps, step_size)
        self.algorithm_name = self.algorithm.name
        self.value_nodes = value_nodes
        self.leaf_modules = tuple(leaf_modules)
        self._graphs: dict[tuple, CapturedGraph] = {}
        self._warned = False  # the energy-rise warning, said once
        self._run = self.algorithm.run
        _check_compile_mode(compile)
        if compile:
            # An algorithm may say which parts compile (incremental: its ticks, between
            # which the optimizer steps; pc: its ticks, if asked); otherwise its whole
            # run is one program.
            parts = getattr(self.algorithm, "compiled", None)
            run = parts(_compiled, per_tick=compile == "tick") if parts else None
            self._run = run or _compiled(self.algorithm.run)

    def capture(self, x: Tensor | tuple[Tensor, ...]) -> CapturedGraph:
        """The captured graph for inputs like ``x`` (traced on first use)."""
        inputs = _as_tuple(x)
        key = tuple((t.dtype, tuple(t.shape[1:]), t.device) if isinstance(t, Tensor) else type(t)
                    for t in inputs)
        if key not in self._graphs:
            self._graphs[key] = capture(self.model, inputs, value_nodes=self.value_nodes,
                                        leaf_modules=self.leaf_modules)
        return self._graphs[key]

    def step(self, x: Tensor | tuple[Tensor, ...], y: Tensor, *,
             optimizer: torch.optim.Optimizer | None = None) -> StepResult:
        """Run inference on one batch and accumulate the learning rule into ``p.grad``.

        Raises:
            ValueError: the target does not fit the output, or ``"incremental"``
                was called without ``optimizer``.
            DivergenceError: a non-finite value in the input or during inference
                (no gradient is written).
        """
        inputs = _as_tuple(x)
        graph = self.capture(inputs)
        params = [p for p in graph.parameters if p.requires_grad]
        if not params:
            raise ValueError("no parameter with requires_grad=True is used by the model's forward: "
                             "nothing to learn")
        batch = _batch_size(inputs)
        like = torch.empty((batch, *graph.output_shape), dtype=graph.output_dtype, device="meta")
        target = self.loss.prepare(like, y)
        _check_finite(inputs, target if y.is_floating_point() else None)  # targets from class indices are finite
        problem = Problem(graph, self.model, inputs, target, self.loss, params)
        with torch.enable_grad():
            outcome = self._run(problem, optimizer)
        readout = outcome.read(batch)
        if outcome.grads is not None:
            if not readout.finite:
                raise_divergence(graph, readout.trace)
            learning.accumulate(params, outcome.grads)
        trace = [sum(row) for row in readout.trace]
        rose = getattr(self.algorithm, "descends_energy", False) and _energy_rose(trace[0], trace[-1])
        if rose and not self._warned:
            _warn_energy_rose(trace[0], trace[-1], self.algorithm)
            self._warned = True
        return StepResult(
            loss=readout.loss_sum / batch,
            energy=trace[-1],
            output=outcome.output,
            energies=dict(zip([*graph.names, OUTPUT], readout.trace[-1])),
            energy_trace=trace,
            errors={n: e.detach() for n, e in zip(graph.names, outcome.errors)},
            energy_rose=rose,
        )


class Backprop:
    """Plain backpropagation behind the same ``step(x, y)`` interface, as the reference.

    ``loss.backward()`` on the batch-mean loss; ``energy`` equals ``loss`` and
    ``energies`` holds only ``"output"``. Lets training loops and experiments treat
    ``"bp"`` as one more algorithm.
    """

    algorithm_name = "bp"

    def __init__(self, model: nn.Module, *, loss: str | OutputLoss,
                 compile: bool | Literal["step", "tick"] = False) -> None:
        _check_compile_mode(compile)
        self.model = model
        self.loss = get_loss(loss)
        # The same switch as PredictiveCoding's, so that speed comparisons compare like with like.
        self._forward = torch.compile(_own_code(lambda *inputs: model(*inputs)), dynamic=False) if compile else model

    def step(self, x: Tensor | tuple[Tensor, ...], y: Tensor, *,
             optimizer: torch.optim.Optimizer | None = None) -> StepResult:
        inputs = _as_tuple(x)
        with torch.enable_grad():
            out = self._forward(*inputs)
            target = self.loss.prepare(out, y)
            value = self.loss.per_example(out, target).mean()
            loss = value.item()  # one host read serves the check and the result
            if not math.isfinite(loss):
                raise DivergenceError("non-finite loss; no gradient was written", node=OUTPUT, step=0)
            value.backward()
        return StepResult(loss=loss, energy=loss, output=out.detach(), energies={OUTPUT: loss},
                          energy_trace=[loss], errors={})


def learner(model: nn.Module, algorithm: str, *, loss: str | OutputLoss, steps: int = 20,
            step_size: float | None = None, compile: bool | Literal["step", "tick"] = False,
            **options: Any) -> PredictiveCoding | Backprop:
    """``Backprop`` for ``algorithm="bp"``, else :class:`PredictiveCoding` (same ``step``).

    Backprop has no inference ticks to compile apart, so every ``compile`` mode but
    ``False`` compiles its forward pass."""
    if algorithm == "bp":
        return Backprop(model, loss=loss, compile=compile)
    return PredictiveCoding(model, loss=loss, algorithm=algorithm, steps=steps, step_size=step_size,
                            compile=compile, **options)


def _check_compile_mode(compile: Any) -> None:
    if compile not in _COMPILE_MODES:
        raise ValueError(f"compile must be one of False, True, 'step' or 'tick'; got {compile!r}")


def _compiled(run: Any) -> Any:
    """``run`` (an algorithm's) through torch.compile, refusing forwards that draw random numbers."""
    # dynamic=False: each batch shape gets its own specialised program (a training
    # run sees two, the full batches and the last one).
    program = torch.compile(_own_code(run), dynamic=False)
    shapes_seen: set[tuple] = set()

    def call(problem: Problem, *args: Any) -> Any:
        if problem.graph.draws_random():
            raise ValueError(
                "compile=True needs a forward that draws no random numbers, but "
                f"{_random_origin(problem.graph)} does in its current mode; call .eval() on "
                "the dropout modules or use compile=False")
        # Dynamo leaves autograd.grad calls out of the graph unless told to trace
        # them; the schedule's cache is a pure function, so tracing through it is safe.
        with _tracing_autograd(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
            result = program(problem, *args)
        shapes = tuple(tuple(t.shape) for t in problem.inputs if isinstance(t, Tensor))
        if shapes not in shapes_seen:  # this call compiled a program
            shapes_seen.add(shapes)
            # Compiling leaves many Python objects behind; the full garbage collection
            # they provoke would otherwise stall a later step (0.17 s measured on the
            # PCX benchmark's MLP), so it happens here, inside the compiling step.
            gc.collect()
        return result
    return call


@contextlib.contextmanager
def _tracing_autograd() -> Iterator[None]:
    """Dynamo's ``trace_autograd_ops`` on for the block.

    Set and restored by hand: ``torch._dynamo.config.patch`` took 0.2-0.3 ms a call
    here, paid at every call of a compiled program (T times a step with
    ``compile="tick"``), against microseconds for the attribute.
    """
    config = torch._dynamo.config
    before = config.trace_autograd_ops
    config.trace_autograd_ops = True
    try:
        yield
    finally:
        config.trace_autograd_ops = before


def _own_code(fn: Any) -> Any:
    """``fn`` (a function or bound method) with a code object of its own.

    torch.compile keeps compiled programs per code object, with a limit of a few
    per object: learners sharing ``run``'s code would evict each other (a sweep
    builds many) and fall back to eager mode. A copy gives each learner its own.
    """
    f = getattr(fn, "__func__", fn)
    own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return types.MethodType(own, fn.__self__) if hasattr(fn, "__func__") else own


def _energy_rose(start: float, end: float) -> bool:
    """Whether inference ended above where it started."""
    # Descent on the energy cannot end above its start unless the step overshoots
    # the energy's curvature (2 / largest eigenvalue; residual chains have large
    # ones). The gradients are then not the rule's, so say so instead of training on.
    # The absolute floor: a batch fitted to float precision starts at energy 0, and
    # inference's rounding then "raises" it to ~1e-20.
    return end > start * (1 + 1e-3) + 1e-9


def _warn_energy_rose(start: float, end: float, algorithm: Any) -> None:
    warnings.warn(
        f"inference raised the energy from {start:.4g} to {end:.4g}: step_size "
        f"{algorithm.step_size:g} is too large for this model, so inference moved away from the "
        f"equilibrium {algorithm.name}'s update assumes. Lower step_size (e.g. "
        f"{algorithm.step_size / 10:g}). Said once per learner; "
        "StepResult.energy_rose and energy_trace tell every step.", RuntimeWarning, stacklevel=3)


def _random_origin(graph: CapturedGraph) -> str:
    active = [type(m).__name__ for m in graph.random_modules if m.training]
    return ", ".join([*active, *graph.random_functions]) or "the model"


def _check_finite(inputs: tuple[Any, ...], target: Tensor | None) -> None:
    """Refuse a batch with NaN or inf before inference runs: a forward in training mode
    would write them into batch-norm statistics. One host read for all of it."""
    checked = [(f"input {i}", "input", t) for i, t in enumerate(inputs)
               if isinstance(t, Tensor) and t.is_floating_point() and t.numel()]
    if target is not None and target.numel():
        checked.append(("target", "target", target))
    if not checked:
        return
    # A sum is finite when every term is (one that overflows is then checked term by
    # term): a single pass over the data, cheaper than isfinite's mask. Half-precision
    # data is summed in float32, past whose range float16 sums cannot go.
    sums = torch.stack([t.detach().sum(dtype=torch.promote_types(t.dtype, torch.float32))
                        for _, _, t in checked]).tolist()
    for (what, node, t), total in zip(checked, sums):
        if not math.isfinite(total) and not bool(torch.isfinite(t).all()):
            raise DivergenceError(f"{what} contains NaN or inf; no inference was run", node=node, step=None)


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _batch_size(inputs: tuple[Any, ...]) -> int:
    for t in inputs:
        if isinstance(t, Tensor) and t.ndim:
            return t.shape[0]
    raise ValueError("no batched tensor among the inputs: pass x as a tensor of shape (batch, ...)")
