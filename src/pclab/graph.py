"""Capture a model's computation graph and split it into predictive-coding value nodes.

A model is traced once with :func:`torch.fx.symbolic_trace` semantics. Some of its
intermediate tensors become *value nodes* ``v_i``: free variables of inference, each
with a prediction ``mu_i = f_i(v_parents, x; theta)`` computed by the ops between it
and the value nodes (or inputs) it reads. The model's output is the prediction of the
output node, whose energy is the loss (Millidge, Tschantz & Buckley 2020, Sec. 3).

Three programs are generated from the one traced graph, each as plain fx-generated
Python so that running them costs what the model's own forward costs:

- ``forward_with_values(*x) -> (output, *values)``: the ordinary forward pass that also
  returns the value-node tensors, still connected (the exact sweep backpropagates
  through it once);
- ``forward_cut(*x) -> (output, predictions, values, fixed)``: the forward pass with
  every value node cut from its consumers (``values`` are fresh leaves holding the
  forward values), so one VJP gives every node's local feedback at once; ``fixed``
  are the tensors that no value node influences but moving nodes read;
- ``predict(*x, *values) -> (output, *predictions)``: every prediction recomputed from
  given values and the current weights (incremental PC, where weights move too);
- ``predict_moving(*fixed, *values) -> (output, *predictions of moving nodes)``: only
  what values influence is recomputed, for energy-based PC within one training
  step; ``moving`` indexes those nodes in ``names``.

Example::

    >>> import torch, torch.nn as nn
    >>> from pclab.graph import capture
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> g = capture(net, (torch.randn(2, 4),))
    >>> g.names, g.parents["output"]
    (('0',), ('0',))
"""

from __future__ import annotations

import contextlib
import copy
import functools
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Union

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import GraphCaptureError

OUTPUT = "output"
"""Key of the output node in :attr:`CapturedGraph.parents` and per-node energies."""

ValueNodePolicy = Union[Literal["layers", "all"], Callable[[fx.Node], bool], tuple[type[nn.Module], ...]]

_UNIT = "pclab_unit"  # fx node meta key: the module path of the unit whose output a value node is

_INPLACE_FUNCTIONS = {
    operator.iadd: operator.add, operator.isub: operator.sub,
    operator.imul: operator.mul, operator.itruediv: operator.truediv,
}


@dataclass(frozen=True, eq=False)
class CapturedGraph:
    """A traced model split into value nodes, and the programs that evaluate it.

    ``names`` lists the value nodes in topological order. ``parents[n]`` names the
    value nodes that ``n``'s prediction reads (through value-free ops only);
    ``parents[OUTPUT]`` those of the output. ``origin[n]`` says which module or
    operation produced ``n`` in the user's model. ``output_shape`` and
    ``output_dtype`` describe one example's prediction. ``parameters`` are the
    parameters some prediction reads, each once, in the order the forward reads
    them (held, not looked up per step: a parameter assigned to the model after
    capture is not seen; build a new learner then).
    """

    names: tuple[str, ...]
    parents: dict[str, tuple[str, ...]]
    origin: dict[str, str]
    output_shape: tuple[int, ...]
    output_dtype: torch.dtype
    parameters: tuple[nn.Parameter, ...]
    forward_with_values: fx.GraphModule
    forward_cut: fx.GraphModule
    predict: fx.GraphModule
    predict_moving: fx.GraphModule
    moving: tuple[int, ...]
    random_modules: tuple[nn.Module, ...] = ()
    random_functions: tuple[str, ...] = ()

    def draws_random(self) -> bool:
        """Whether the forward pass draws random numbers in the modules' current modes
        (dropout in training mode, a random op in ``forward``)."""
        return bool(self.random_functions) or any(m.training for m in self.random_modules)

    @property
    def children(self) -> dict[str, tuple[str, ...]]:
        """Inverse of :attr:`parents`: the nodes (``OUTPUT`` included) reading each node."""
        kids: dict[str, list[str]] = {n: [] for n in self.names}
        for child, ps in self.parents.items():
            for p in ps:
                kids[p].append(child)
        return {n: tuple(k) for n, k in kids.items()}


def _alias(t: Tensor) -> Tensor:
    """A differentiable identity whose gradient counts only the graph's consumers.

    A value node can also be an internal step of a sibling inside one module (an
    LSTM cell's ``c`` is on the way to its ``h``); autograd's gradient of the raw
    tensor would include that hidden path, which no PC edge carries.
    """
    # A node fed only by the input and frozen weights becomes a leaf, so that its
    # error is still measured.
    return t.view_as(t) if t.requires_grad else t.detach().requires_grad_(True)


def _leaf(t: Tensor) -> Tensor:
    """Cut the graph here: consumers see a leaf holding the same numbers."""
    return t.detach().requires_grad_(True)


class _Tracer(fx.Tracer):
    """fx tracer that remembers which module was being traced when tracing failed."""

    def __init__(self, leaf_modules: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self._extra_leaves = leaf_modules
        self.failed_at: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._extra_leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = f"{self.path_of_module(m) or '<root>'} ({type(m).__name__})"
            raise


def _trace(model: nn.Module, leaf_modules: tuple[type[nn.Module], ...]) -> fx.Graph:
    tracer = _Tracer(leaf_modules)
    try:
        return tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError...
        where = tracer.failed_at or f"<root> ({type(model).__name__})"
        raise GraphCaptureError(
            f"could not capture module {where}: {type(exc).__name__}: {exc}\n"
            "pclab traces forward() symbolically with torch.fx, so Python control flow "
            "that depends on tensor values (if/while on a tensor, .item(), len(x) of a "
            "tensor) cannot be recorded. Fix: make the branch depend on constructor "
            "arguments only, or pass leaf_modules=[ThatModule] so the module is kept "
            "as one opaque call (its output becomes one value node)."
        ) from exc


def _functionalize(graph: fx.Graph, modules: dict[str, Any]) -> None:
    """Rewrite in-place ops out-of-place: value nodes must not be mutated by consumers.

    An in-place op on a value node would overwrite the very tensor whose error
    inference tracks; later users of the mutated tensor are pointed at the result.
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        mutated = None
        if node.op == "call_module" and getattr(modules[node.target], "inplace", False) is True:
            safe = copy.copy(modules[node.target])
            safe.inplace = False
            modules[node.target] = safe
            mutated = node.args[0]
        elif node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("__"):
            if hasattr(Tensor, node.target[:-1]):
                node.target = node.target[:-1]
                mutated = node.args[0]
        elif node.op == "call_function":
            if node.target in _INPLACE_FUNCTIONS:
                node.target = _INPLACE_FUNCTIONS[node.target]
                mutated = node.args[0]
            elif node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
                mutated = node.args[0]
            elif getattr(node.target, "__name__", "").endswith("_") and hasattr(torch, node.target.__name__[:-1]) \
                    and getattr(torch, node.target.__name__, None) is node.target:
                node.target = getattr(torch, node.target.__name__[:-1])
                mutated = node.args[0]
        if isinstance(mutated, fx.Node):
            for user in list(mutated.users):
                if user is not node and order[user] > order[node]:
                    user.replace_input_with(mutated, node)


@contextlib.contextmanager
def preserved_state(module: nn.Module) -> Iterator[None]:
    """Run extra forward passes without side effects on buffers or the global RNG.

    Norm layers update running statistics and dropout draws from the RNG at every
    call; a forward pass pclab makes for its own purposes must leave both as found.
    """
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    with torch.random.fork_rng(devices=_devices(module)):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _devices(module: nn.Module) -> list[int]:
    return sorted({t.device.index or 0 for t in module.parameters() if t.is_cuda})


class Replay:
    """Recompute a forward pass as if it were the first one of this training step.

    Energy-based PC re-runs the model's forward at every inference step; dropout
    must draw the same masks each time and norm layers must update their running
    statistics once per training step, as in backprop. Call :meth:`first_done`
    after the real forward, wrap each recomputation in :meth:`again`, and call
    :meth:`close` at the end.
    """

    def __init__(self, module: nn.Module, *, random: bool = True) -> None:
        # A forward that draws nothing needs no RNG bookkeeping (and torch.compile
        # cannot trace it).
        self._random = random
        self._devices = _devices(module)
        self._module = module
        self._rng_before = self._rng_state()

    def _rng_state(self) -> tuple[Tensor, list[Tensor]] | None:
        if not self._random:
            return None
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self._devices]

    def _set_rng_state(self, state: tuple[Tensor, list[Tensor]] | None) -> None:
        if state is None:
            return
        torch.set_rng_state(state[0])
        for d, s in zip(self._devices, state[1]):
            torch.cuda.set_rng_state(s, d)

    def first_done(self) -> None:
        self._rng_after = self._rng_state()
        self._buffers = [(b, b.detach().clone()) for b in self._module.buffers()]

    def again(self, program: Callable[..., Any], *args: Any) -> Any:
        self._set_rng_state(self._rng_before)
        return program(*args)

    def close(self) -> None:
        self._set_rng_state(self._rng_after)
        with torch.no_grad():
            for b, saved in self._buffers:
                b.copy_(saved)


class _SeededOps(TorchDispatchMode):
    """Notes whether any dispatched op draws from the random number generator."""

    def __init__(self) -> None:
        super().__init__()
        self.drew = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.drew |= torch.Tag.nondeterministic_seeded in func.tags
        return func(*args, **(kwargs or {}))


class _Probe(fx.Interpreter):
    """Runs the graph once to learn which nodes produce floating-point tensors and
    which draw random numbers."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.floating: dict[str, bool] = {}
        self.results: dict[str, Any] = {}
        self.random: list[fx.Node] = []

    def run_node(self, n: fx.Node) -> Any:
        with _SeededOps() as seeded:
            result = super().run_node(n)
        if seeded.drew:
            self.random.append(n)
        self.floating[n.name] = isinstance(result, Tensor) and result.is_floating_point()
        if n.op == "output":
            self.results[n.name] = result
        return result


@contextlib.contextmanager
def _training_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in training mode for the block, each restored to its own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _is_parameter(node: Any, modules: dict[str, Any]) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and isinstance(modules[node.target], nn.Parameter)


def _is_parametrised(node: fx.Node, modules: dict[str, Any]) -> bool:
    if node.op == "call_module":
        return any(True for _ in modules[node.target].parameters())
    if node.op in ("call_function", "call_method"):
        args = fx.node.map_arg((node.args, node.kwargs), lambda a: a)
        flat: list[Any] = []
        fx.node.map_aggregate(args, flat.append)
        return any(_is_parameter(a, modules) for a in flat)
    return False


def _select(graph: fx.Graph, modules: dict[str, Any], floating: dict[str, bool],
            policy: ValueNodePolicy, output: fx.Node) -> list[fx.Node]:
    # A tensor computed from inputs and constants alone is data, not a latent: it
    # stays clamped, as the inputs are.
    learnable: set[fx.Node] = set()
    for n in graph.nodes:
        if _is_parametrised(n, modules) or any(a in learnable for a in n.all_input_nodes):
            learnable.add(n)
    compute = [n for n in graph.nodes
               if n.op in ("call_module", "call_function", "call_method")
               and floating.get(n.name, False) and n is not output and n in learnable]
    if policy == "all":
        return compute
    if isinstance(policy, tuple) and all(isinstance(c, type) and issubclass(c, nn.Module) for c in policy):
        return _unit_outputs(compute, modules, policy)
    if callable(policy):
        return [n for n in compute if policy(n)]
    if policy != "layers":
        raise ValueError(f"unknown value_nodes policy {policy!r}; valid: 'layers', 'all', a tuple of "
                         "module classes, or a callable(node) -> bool")
    return _layer_outputs(compute, modules)


def _layer_outputs(compute: list[fx.Node], modules: dict[str, Any]) -> list[fx.Node]:
    def from_parametrised(n: fx.Node) -> bool:
        # A layer returning a tuple (LSTMCell, MultiheadAttention) gets value nodes on
        # the tensors unpacked from it.
        while n.op == "call_function" and n.target is operator.getitem:
            n = n.args[0]
            if _is_parametrised(n, modules):
                return True
        return False

    return [n for n in compute if _is_parametrised(n, modules) or from_parametrised(n)]


def _unit_outputs(compute: list[fx.Node], modules: dict[str, Any],
                  units: tuple[type[nn.Module], ...]) -> list[fx.Node]:
    """Each instance of a ``units`` class is one PC unit: a value node where its output
    leaves it and none inside; layers outside every unit get theirs as under "layers".

    Why: a value read by many later nodes (a residual stream's branch output feeds every
    later block) gives the energy a curvature that grows with that fan-out, so inference
    at a fixed step size diverges with depth; at the block outputs each value feeds one
    block and the next sum, whatever the depth.
    """
    @functools.cache  # asked once for a node itself and once for each node that reads it
    def unit(n: fx.Node) -> str | None:
        # Outermost first: a unit nested in another belongs to the outer one.
        for path, (_, cls) in n.meta.get("nn_module_stack", {}).items():
            if isinstance(cls, type) and issubclass(cls, units):
                return path
        return None

    layers = set(_layer_outputs(compute, modules))
    chosen = []
    for n in compute:
        own = unit(n)
        if own is None:
            if n in layers:
                chosen.append(n)
        elif any(user.op == "output" or unit(user) != own for user in n.users):
            n.meta[_UNIT] = own
            chosen.append(n)
    return chosen


def _origin(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    name = getattr(node.target, "__name__", str(node.target))
    return f"{node.op}:{name}"


def _display_names(chosen: list[fx.Node]) -> dict[str, str]:
    """Name value nodes after the module that made them (``"encoder.fc1"``, or the unit
    ``"blocks.3"``), numbering repeated calls of one module (``"cell"``, ``"cell#1"``,
    ...); other ops keep fx's name."""
    calls: dict[str, int] = {}
    names: dict[str, str] = {}
    for n in chosen:
        module = n.target if n.op == "call_module" else n.meta.get(_UNIT)
        if module is not None:
            k = calls.get(module, 0)
            calls[module] = k + 1
            names[n.name] = module if k == 0 else f"{module}#{k}"
        else:
            names[n.name] = n.name
    return names


def _value_parents(graph: fx.Graph, chosen: set[fx.Node]) -> dict[fx.Node, set[fx.Node]]:
    """For each node, the value nodes its computation reads through value-free ops."""
    reads: dict[fx.Node, set[fx.Node]] = {}
    for n in graph.nodes:
        acc: set[fx.Node] = set()
        for a in n.all_input_nodes:
            acc |= {a} if a in chosen else reads[a]
        reads[n] = acc
    return reads


def _static_split(graph: fx.Graph, chosen: list[fx.Node], output: fx.Node) -> tuple[set[fx.Node], list[fx.Node]]:
    """Which nodes move when values move, and the fixed tensors they read.

    During one step's inference the inputs and weights are fixed, so every node
    that depends on no value node (a first layer's ``W x``, say) is a constant: it
    is computed once by the forward pass and read from there afterwards.
    """
    chosen_set = set(chosen)
    moving: set[fx.Node] = set()
    for n in graph.nodes:
        if n.op != "output" and any(a in chosen_set or a in moving for a in n.all_input_nodes):
            moving.add(n)
    boundary = [n for n in graph.nodes
                if n not in moving and n not in chosen_set and n.op != "get_attr"
                and (any(u in moving for u in n.users) or n is output)]
    return moving, boundary


def _build(graph: fx.Graph, chosen: list[fx.Node], output: fx.Node, variant: str,
           root: dict[str, Any]) -> fx.GraphModule:
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    chosen_set = set(chosen)
    values: dict[fx.Node, fx.Node] = {}
    predictions: dict[fx.Node, fx.Node] = {}
    moving, boundary = _static_split(graph, chosen, output)
    if variant == "moving":
        for n in boundary:
            env[n] = new.placeholder(f"s_{n.name}")
    else:
        for n in graph.nodes:
            if n.op == "placeholder":
                env[n] = new.node_copy(n, env.__getitem__)
    if variant in ("predict", "moving"):
        for n in chosen:
            values[n] = new.placeholder(f"v_{n.name}")
    for n in graph.nodes:
        if n.op in ("placeholder", "output") or n in env:
            continue
        if variant == "moving" and n not in moving and n.op != "get_attr":
            if n in chosen_set:
                env[n] = values[n]
            continue
        copied = new.node_copy(n, env.__getitem__)
        env[n] = copied
        if n in chosen_set:
            predictions[n] = copied
            if variant == "cut":
                values[n] = new.call_function(_leaf, (copied,))
            elif variant == "with_values":
                values[n] = new.call_function(_alias, (copied,))
            env[n] = values[n]
    out = env[output]
    vs = tuple(values[n] for n in chosen)
    if variant == "with_values":
        new.output((out, *vs))
    elif variant == "cut":
        new.output((out, tuple(predictions[n] for n in chosen), vs, tuple(env[n] for n in boundary)))
    elif variant == "moving":
        new.output((out, *(predictions[n] for n in chosen if n in moving)))
    else:
        new.output((out, *(predictions[n] for n in chosen)))
    gm = fx.GraphModule(root, new, class_name=f"PC_{variant}")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def capture(model: nn.Module, example_inputs: tuple[Any, ...], *,
            value_nodes: ValueNodePolicy = "layers",
            leaf_modules: tuple[type[nn.Module], ...] = ()) -> CapturedGraph:
    """Trace ``model`` and split it into value nodes (see the module docstring).

    ``value_nodes="layers"`` (default) puts a value node at the output of every
    parametrised operation (a module with parameters, or an op reading a parameter,
    e.g. a tied weight), so each layer is one PC unit and parameter-free ops
    (activations, residual sums, pooling, attention's softmax) belong to the
    prediction of the next node. ``"all"`` puts one at every floating-point
    intermediate tensor. A tuple of module classes makes each instance of them one
    PC unit, with a value node at its output and none inside (layers outside every
    unit as under ``"layers"``): residual blocks as units keep values on the
    residual stream, as PCX and jpc place them. A callable ``policy(node) -> bool``
    chooses among the floating intermediates.

    ``example_inputs`` are run once (no gradient, buffers and RNG left untouched) to
    learn which intermediate values are floating-point tensors.

    Raises:
        GraphCaptureError: tracing failed, or the model does not return one tensor.
    """
    graph = _trace(model, tuple(leaf_modules))
    root: dict[str, Any] = {}
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr"):
            root[n.target] = _resolve(model, n.target)
    _functionalize(graph, root)
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()  # needs the owning module for its purity check
    gm.recompile()
    probe = _Probe(gm)
    # In training mode, so that dropout shows up even when the model is captured in eval mode.
    with torch.no_grad(), preserved_state(model), _training_mode(model):
        probe.run(*example_inputs)
    output = next(n for n in graph.nodes if n.op == "output").args[0]
    if not isinstance(output, fx.Node) or not probe.floating.get(output.name, False):
        raise GraphCaptureError(
            f"{type(model).__name__}.forward must return one floating-point tensor (the "
            f"prediction); it returned {type(output).__name__}. Fix: wrap the model so "
            "forward returns only the logits/prediction."
        )
    chosen = _select(graph, root, probe.floating, value_nodes, output)
    reads = _value_parents(graph, set(chosen))
    order = {n: i for i, n in enumerate(chosen)}
    parents = {n.name: tuple(p.name for p in sorted(reads[n], key=order.__getitem__))
               for n in (*chosen, output)}
    parents[OUTPUT] = parents.pop(output.name)
    display = _display_names(chosen)
    prediction = probe.results["output"]
    return CapturedGraph(
        names=tuple(display[n.name] for n in chosen),
        parents={display.get(k, k): tuple(display[p] for p in ps) for k, ps in parents.items()},
        origin={display[n.name]: _origin(n) for n in chosen},
        output_shape=tuple(prediction.shape[1:]),
        output_dtype=prediction.dtype,
        parameters=tuple({id(p): p for p in _parameters_read(graph, root)}.values()),
        forward_with_values=_build(graph, chosen, output, "with_values", root),
        forward_cut=_build(graph, chosen, output, "cut", root),
        predict=_build(graph, chosen, output, "predict", root),
        predict_moving=_build(graph, chosen, output, "moving", root),
        moving=tuple(i for i, n in enumerate(chosen) if n in _static_split(graph, chosen, output)[0]),
        random_modules=tuple(root[n.target] for n in probe.random if n.op == "call_module"),
        random_functions=tuple(_origin(n) for n in probe.random if n.op != "call_module"),
    )


def _parameters_read(graph: fx.Graph, modules: dict[str, Any]) -> Iterator[Tensor]:
    for n in graph.nodes:
        if n.op == "call_module":
            yield from modules[n.target].parameters()
        elif _is_parameter(n, modules):
            yield modules[n.target]


def _resolve(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
