"""How an algorithm's weight update relates to backprop's gradient, parameter by parameter.

``exact`` gives backprop's gradient; ``fpa`` approaches it as its steps grow; ``pc``
follows another rule whose update can differ in size and direction, most where a
layer lies many value nodes from the output. :func:`align` measures that on one
batch of the user's own model: for each parameter, the norm of the algorithm's
update over backprop's and the cosine between them.

    >>> import torch, torch.nn as nn, pclab
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> [round(a.cosine, 6) for a in pclab.align(model, x, y, loss="ce", algorithm="exact")]
    [1.0, 1.0, 1.0, 1.0]
    >>> first, *_, last = pclab.align(model, x, y, loss="ce", algorithm="pc", steps=20, step_size=0.01)
    >>> first.parameter, first.norm_ratio < 0.5 < last.norm_ratio  # pc's errors fade with distance
    ('0.weight', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .algorithms import Algorithm
from .energy import OutputLoss
from .engine import Backprop, PredictiveCoding
from .graph import preserved_state


@dataclass(frozen=True)
class Alignment:
    """One parameter's update against backprop's gradient of the batch-mean loss.

    Attributes:
        parameter: its name in ``model.named_parameters()``.
        norm_ratio: ``|update| / |gradient|`` (``inf`` where the gradient is zero
            and the update is not, ``nan`` where both are).
        cosine: cosine between the two (``nan`` where either is zero).
        gradient_norm: ``|gradient|``, to tell a small ratio from a tiny gradient (a
            bias feeding a batch norm has none).
    """

    parameter: str
    norm_ratio: float
    cosine: float
    gradient_norm: float


def align(model: nn.Module, x: Tensor | tuple[Tensor, ...], y: Tensor, *, loss: str | OutputLoss,
          algorithm: str | Algorithm, steps: int = 20, step_size: float | None = None,
          **options: Any) -> list[Alignment]:
    """One ``algorithm`` step on ``(x, y)`` against one backprop step, per trainable parameter.

    Both steps see the same random numbers (dropout masks) and leave the model as
    they found it: weights, ``p.grad``, norm-layer statistics and the RNG.
    ``options`` go to :class:`~pclab.PredictiveCoding` (``value_nodes``,
    ``leaf_modules``, ``compile``).

    Raises:
        ValueError: ``algorithm`` is ``"incremental"``, whose weights move at every
            tick (there is no one update to compare), or an unknown name.
    """
    if getattr(algorithm, "name", algorithm) == "incremental":
        raise ValueError("align compares one step's gradient with backprop's, but incremental PC "
                         "steps the weights at every tick; compare algorithm='pc', the same rule "
                         "with one weight step at the end of inference")
    pc = PredictiveCoding(model, loss=loss, algorithm=algorithm, steps=steps, step_size=step_size, **options)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    kept = {n: p.grad for n, p in params.items()}
    try:
        reference = _gradients(Backprop(model, loss=loss), params, x, y)
        update = _gradients(pc, params, x, y)
    finally:
        for n, p in params.items():
            p.grad = kept[n]
    return [_compare(n, update[n], reference[n]) for n in params]


def _gradients(learner: Backprop | PredictiveCoding, params: dict[str, nn.Parameter],
               x: Tensor | tuple[Tensor, ...], y: Tensor) -> dict[str, Tensor]:
    for p in params.values():
        p.grad = None
    # Each step forks the RNG from the same state, so both draw the same dropout masks.
    with preserved_state(learner.model):
        learner.step(x, y)
    return {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in params.items()}


def _compare(name: str, update: Tensor, gradient: Tensor) -> Alignment:
    u, g = update.detach().flatten().double(), gradient.detach().flatten().double()
    nu, ng = float(u.norm()), float(g.norm())
    ratio = nu / ng if ng else (math.inf if nu else math.nan)
    cosine = float(u @ g) / (nu * ng) if nu and ng else math.nan
    return Alignment(name, ratio, cosine, ng)
