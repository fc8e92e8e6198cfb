"""Inference rules: how value nodes and their errors move, from local signals only.

Every rule here is a small pure function of a node's own error ``e_i``, value ``v_i``
and its *feedback* ``sum_j J_ji^T e_j``: the errors of its children ``j`` sent back
through the Jacobians of their predictions (Millidge, Tschantz & Buckley 2020, eq. 4):

    dv_i/dt = -e_i + sum_j (d mu_j / d v_i)^T e_j

Rules act on whole lists of nodes at once with ``torch._foreach_*`` kernels, so an
inference step is one VJP call plus a few fused updates, never a Python loop over
nodes.

Which nodes take part in a step is also local: at initialisation every value equals
its prediction, so only the output has an error; an error can travel one edge per
step, so step ``t`` only touches nodes within ``t`` edges of the output
(:func:`frontier_schedule`). Feedback carries errors towards the inputs; where
predictions are recomputed (``pc``), a moved value also changes its children's
predictions, so errors spread one edge per step towards the outputs too. This is
exact bookkeeping, not an approximation: the errors of the other nodes are exactly
zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .graph import OUTPUT, CapturedGraph

TensorList = list[Tensor]


def fpa_error_update(errors: Sequence[Tensor], feedback: Sequence[Tensor], step_size: float) -> TensorList:
    """Fixed-prediction update: ``e_i <- e_i + eta * (-e_i + feedback_i)``, in place.

    With predictions held at their forward values, ``v_i`` moves by the same amount
    as ``e_i = v_i - mu_i``; the fixed point ``e_i = sum_j J_ji^T e_j`` is backprop's
    (negative) gradient. ``step_size = 1`` makes one step copy the feedback.

    Returns ``errors``, updated in place: a step then holds the errors and the
    feedback, not a third set of activation-sized tensors. A feedback that shares
    memory with one of the errors (a reshape's VJP is a view of the child's error,
    an addition's passes it on unchanged) is copied first, or the update of that
    error would reach it before it is read. Under ``torch.compile`` the update is
    out of place; the compiler plans its buffers itself.
    """
    if not errors:  # a model with no hidden value node (a linear readout)
        return []
    errors, feedback = list(errors), list(feedback)
    if torch.compiler.is_compiling():
        return torch._foreach_lerp(errors, feedback, step_size)
    updated = {e.untyped_storage().data_ptr() for e in errors}
    feedback = [f.clone() if f.untyped_storage().data_ptr() in updated else f for f in feedback]
    torch._foreach_lerp_(errors, feedback, step_size)
    return errors


def value_update(values: Sequence[Tensor], errors: Sequence[Tensor], feedback: Sequence[Tensor],
                 step_size: float) -> TensorList:
    """Energy descent on values: ``v_i <- v_i + eta * (-e_i + feedback_i)``.

    ``feedback`` here already carries the output's loss gradient (with a minus sign),
    so ``-e_i + feedback_i = -dF/dv_i`` for the per-example energy ``F``. Computed
    without recording: the moved values are new leaves, not functions of the old.
    """
    if not values:
        return []
    with torch.no_grad():  # the second pass adds into the first's fresh result: no step tensors apart
        moved = torch._foreach_add(list(values), list(feedback), alpha=step_size)
        torch._foreach_add_(moved, list(errors), alpha=-step_size)
        return moved


def energy_descent(values: Sequence[Tensor], neg_errors: Sequence[Tensor] | None, vjp: Sequence[Tensor],
                   step_size: float, scale: float) -> TensorList:
    """``v_i <- v_i - eta * dF/dv_i``, the same move as :func:`value_update`, from the VJP
    that also gives the weights their gradients.

    ``vjp_i = scale * (dL/dv_i - sum_j J_ji^T e_j)`` is the energy's VJP with
    cotangent ``scale`` for the loss and ``-scale * e_j`` for each prediction, so
    ``dF/dv_i = e_i + vjp_i / scale``. Two fused passes over the values whatever the
    scale, so the caller picks the scale that saves it a rescaling pass elsewhere;
    one where ``neg_errors`` is ``None``, which says every value sits at its
    prediction (``e_i = 0``). The second pass adds into the first's fresh result
    rather than allocating ``dF/dv`` apart: one set of activation-sized tensors
    fewer at the step's peak.
    """
    if not values:
        return []
    with torch.no_grad():  # as in value_update
        moved = torch._foreach_add(list(values), list(vjp), alpha=-step_size / scale)
        if neg_errors is not None:
            torch._foreach_add_(moved, list(neg_errors), alpha=step_size)  # v - eta * (vjp / scale - (-e))
        return moved


def feedback(sent: Sequence[Tensor], errors_sent: Sequence[Tensor], receivers: Sequence[Tensor], *,
             retain_graph: bool) -> TensorList:
    """``sum_j J_ji^T e_j`` for every receiver ``i`` at once: one vector-Jacobian product.

    ``sent`` are predictions ``mu_j`` (graph-connected to the ``receivers`` values),
    ``errors_sent`` the errors they send back. A receiver no prediction depends on
    gets zero.
    """
    sent, errors_sent = connected(sent, errors_sent)
    if not sent or not receivers:
        return [torch.zeros_like(r) for r in receivers]
    grads = torch.autograd.grad(sent, list(receivers), errors_sent,
                                retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(r) if g is None else g for g, r in zip(grads, receivers)]


def connected(outputs: Sequence[Tensor], grad_outputs: Sequence[Tensor]) -> tuple[TensorList, TensorList]:
    """Drop the outputs that depend on nothing trainable (a node computed from the
    input and frozen weights only): they send no signal anywhere."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    return [o for o, _ in pairs], [g for _, g in pairs]


@dataclass(frozen=True)
class Sweep:
    """One inference step's participants, as indices into ``CapturedGraph.names``.

    ``senders`` are the value nodes whose errors are non-zero before the step (the
    output always sends); ``receivers`` are the nodes they send feedback to.
    """

    senders: tuple[int, ...]
    receivers: tuple[int, ...]


def frontier_schedule(graph: CapturedGraph, steps: int, *,
                      predictions_move: bool = False) -> tuple[list[Sweep], tuple[int, ...]]:
    """The sweeps of ``steps`` inference steps, and the nodes whose errors can be
    non-zero after the last.

    A node's error ``v_i - mu_i`` stops being zero when its value moves or, with
    ``predictions_move``, when a parent's value moves and so its prediction. A node
    moves once its own error or a child's is non-zero, or the output's loss reaches it.
    Without ``predictions_move`` (predictions fixed at their forward values) errors
    spread from the output towards the inputs only; with it, they also spread
    forwards: in a residual block of two layers, the block's second layer moves at the
    first step (it feeds the output through the skip), which changes the prediction of
    every later block's first layer, two edges from the output.
    """
    index = {name: i for i, name in enumerate(graph.names)}
    parents = [tuple(index[p] for p in graph.parents[n]) for n in graph.names]
    kids = graph.children
    children = [tuple(index[c] for c in kids[n] if c != OUTPUT) for n in graph.names]
    moved: set[int] = set()
    erring: set[int] = set()
    sweeps = []
    for _ in range(steps):
        receivers = {index[p] for p in graph.parents[OUTPUT]} | erring
        for i in erring:
            receivers.update(parents[i])
        sweeps.append(Sweep(tuple(sorted(erring)), tuple(sorted(receivers))))
        moved |= receivers
        erring = (moved | {c for i in moved for c in children[i]}) if predictions_move else set(moved)
    return sweeps, tuple(sorted(erring))


class EnergyTrace:
    """Per-node error norms and the summed loss at each evaluation, kept on the device.

    Recording costs one fused norm per evaluation. Everything a step reports to the
    host, these and what :meth:`packed` is given, is stacked once and crosses in one
    transfer (a host read waits for the device: on a GPU each one stalls the step);
    the squares and batch means are taken there, on a few numbers, by :func:`unpack`.
    """

    def __init__(self) -> None:
        self._norms: list[Tensor] = []  # one-element tensors, evaluation after evaluation
        self._losses: list[Tensor] = []
        self.evaluations = 0

    def record(self, errors: Sequence[Tensor], loss_sum: Tensor) -> None:
        self.record_norms(norms(errors), loss_sum.detach())

    def record_norms(self, error_norms: Sequence[Tensor], loss_sum: Tensor) -> None:
        """Record an evaluation from its errors' :func:`norms`, taken where they were
        computed (inside a compiled tick, fused with the errors), and its summed loss,
        detached there too (a compiled program returns nothing autograd tracks)."""
        self._norms.extend(error_norms)
        self._losses.append(loss_sum)
        self.evaluations += 1

    def record_at_rest(self, nodes: int, loss_sum: Tensor) -> None:
        """Record an evaluation where every value sits at its prediction (all errors zero)."""
        self.record_norms([loss_sum.new_zeros(())] * nodes, loss_sum.detach())

    def packed(self, *tails: Tensor) -> Tensor:
        """One flat tensor: every evaluation's error norms, then each evaluation's
        summed loss, then the one-element ``tails`` (outside autograd's graph);
        :func:`unpack` reads it on the host."""
        # stack promotes: a low-precision model's norms do not round the losses.
        return torch.stack([*self._norms, *self._losses, *tails])


def unpack(host: Sequence[float], evaluations: int, nodes: int,
           batch_size: int) -> tuple[list[list[float]], list[float]]:
    """:meth:`EnergyTrace.packed` of ``evaluations`` evaluations of ``nodes`` nodes, read
    to the host, as the energy trace and the tails' numbers.

    The trace has one row per evaluation: ``0.5 |e_i|^2`` per node, then the loss,
    all batch means (non-finite where the norms were).
    """
    host = list(host)
    norms, losses = host[:evaluations * nodes], host[evaluations * nodes:evaluations * (nodes + 1)]
    rows = [[0.5 * n * n / batch_size for n in norms[k * nodes:(k + 1) * nodes]] + [losses[k] / batch_size]
            for k in range(evaluations)]
    return rows, host[evaluations * (nodes + 1):]


def norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The 2-norm of each tensor, one fused pass (one reduction each under compile)."""
    if torch.compiler.is_compiling():
        # Inductor has no fused lowering of _foreach_norm (it would run one kernel
        # per tensor, outside the fused code); plain reductions fuse.
        return [torch.linalg.vector_norm(t) for t in tensors]
    return list(torch._foreach_norm(list(tensors))) if tensors else []
