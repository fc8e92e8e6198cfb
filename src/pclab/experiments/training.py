"""The one training loop the experiments share: this model, this learner, K steps.

A :class:`Recipe` says how to train (algorithm, loss, optimizer, learning rate,
decoupled weight decay, batch size, steps, PC inference settings); :func:`train`
runs it on tensors and returns a :class:`History` of per-step losses plus whatever
the experiment's ``evaluate`` callback measured every ``eval_every`` steps. Backprop
and every PC algorithm go through :func:`pclab.learner`, so each experiment
compares them on exactly the same loop:

* ``"bp"``, ``"exact"``, ``"fpa"``, ``"pc"``: ``learner.step(x, y)`` writes
  ``p.grad``, then the optimizer steps;
* ``"incremental"``: the learner steps the optimizer at every inference tick.

This is deliberately not :func:`pclab.training.train`, the epoch-level trainer
behind ``pclab train`` (run folders, checkpoints, named datasets and models): the
experiments need step-level control instead (full-batch gradient descent, the
loss at every step, measurements such as the sharpness at chosen steps, soft
targets, lab-defined models, stopping once a target is met).

A run that produces a non-finite loss or energy (or whose loss grows past
``blowup`` times its first value) stops early and is marked ``diverged``: a
divergent learning rate is a result, not a crash.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn

from pclab import DivergenceError, learner
from pclab import training as training_lib
from pclab.energy import get_loss

ALGORITHMS = ("bp", "exact", "fpa", "pc", "incremental")
Optimizer = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class Recipe:
    """How to train.

    ``weight_decay`` is decoupled (Loshchilov & Hutter 2019): every step multiplies
    the weights by ``1 - lr * weight_decay`` apart from the gradient step, for SGD as
    for AdamW (for plain SGD this equals an L2 penalty). ``batch_size=0`` is full
    batch. ``pc_steps``/``pc_step_size`` are the inference steps of the PC
    algorithms (ignored by ``"bp"``; ``None`` takes the engine's default size).
    ``compile`` runs the learner through ``torch.compile`` (bp as well, so that
    wall times compare like with like): the same updates to rounding, faster where
    per-op overhead dominates (small models, PC's many inference steps), after a
    first step that compiles.
    """

    algorithm: str = "bp"
    loss: Literal["ce", "mse"] = "ce"
    optimizer: Optimizer = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    steps: int = 100
    batch_size: int = 0
    pc_steps: int = 20
    pc_step_size: float | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        check_algorithm(self.algorithm)
        if self.loss not in ("ce", "mse"):
            raise ValueError(f"loss must be 'ce' or 'mse'; got {self.loss!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw'; got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be positive and finite; got {self.lr!r}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ValueError("weight_decay and momentum must be >= 0")
        if self.steps < 0 or self.batch_size < 0 or self.pc_steps < 1:
            raise ValueError("steps and batch_size must be >= 0 and pc_steps >= 1")


def check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")
    return name


@dataclass
class History:
    """What a run measured: the loss at every step (before it), the weight norm after
    every step, and the rows ``evaluate`` returned. ``energy_rises`` counts the steps
    whose inference ended above the energy it started at (``pc`` only: its step
    size overshot there, :attr:`pclab.StepResult.energy_rose`)."""

    loss: list[float] = field(default_factory=list)
    weight_norm: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    diverged_at: int | None = None
    reason: str = ""
    stopped_at: int | None = None
    energy_rises: int = 0

    def column(self, key: str) -> list[Any]:
        return [row.get(key) for row in self.evals]

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "weight_norm": self.weight_norm, "evals": self.evals, "diverged": self.diverged,
                "diverged_at": self.diverged_at, "reason": self.reason,
                "stopped_at": self.stopped_at, "energy_rises": self.energy_rises}


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # SGD's weight decay is applied apart, decoupled (see train), so SGD gets none here.
    decay = recipe.weight_decay if recipe.optimizer == "adamw" else 0.0
    return training_lib.make_optimizer(recipe.optimizer, params, lr=recipe.lr, weight_decay=decay,
                                       momentum=recipe.momentum)


def train(model: nn.Module, recipe: Recipe, x: Tensor, y: Tensor, *, seed: int = 0,
          eval_steps: Iterable[int] = (), evaluate: Callable[[int], dict[str, Any]] | None = None,
          blowup: float = 1e4, stop: Callable[[History], bool] | None = None) -> History:
    """Train ``model`` in place on ``(x, y)`` by ``recipe``; return its :class:`History`.

    ``evaluate(step)`` runs before step 0, after each step count in ``eval_steps``
    and after the last step; its rows carry ``"step"`` (the number of optimizer
    steps taken). ``stop(history)``, checked after each evaluation, ends training
    early when true (e.g. once a target accuracy is reached). Mini-batches are
    drawn without replacement, reshuffled each epoch, seeded by ``seed``.
    """
    learn = learner(model, recipe.algorithm, loss=recipe.loss, steps=recipe.pc_steps,
                    step_size=recipe.pc_step_size, compile=recipe.compile)
    opt = make_optimizer(model, recipe)
    decay = recipe.weight_decay if recipe.optimizer == "sgd" else 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    history = History()
    n = len(y)
    batch = n if recipe.batch_size in (0, None) or recipe.batch_size >= n else recipe.batch_size
    gen = torch.Generator().manual_seed(seed)
    order, cursor = torch.arange(n), n

    wanted = set(eval_steps)

    def log(step: int) -> None:
        if evaluate is not None:
            with torch.no_grad():
                history.evals.append({"step": step, **evaluate(step)})

    log(0)
    for step in range(recipe.steps):
        if batch == n:
            xb, yb = x, y
        else:
            if cursor + batch > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor:cursor + batch]
            cursor += batch
            xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        try:
            if recipe.algorithm == "incremental":
                _decay(params, recipe.lr * decay)  # once per batch; the learner steps per tick
                result = learn.step(xb, yb, optimizer=opt)
            else:
                result = learn.step(xb, yb)
        except DivergenceError as e:
            history.diverged, history.diverged_at, history.reason = True, step, str(e).split("\n")[0]
            break
        loss = result.loss
        history.loss.append(loss)
        history.energy_rises += result.energy_rose
        if not math.isfinite(loss) or (history.loss[0] > 0 and loss > blowup * history.loss[0]):
            history.diverged, history.diverged_at = True, step
            history.reason = f"loss {loss:.3g} at step {step} (first {history.loss[0]:.3g})"
            break
        if recipe.algorithm != "incremental":
            _decay(params, recipe.lr * decay)
            opt.step()
        with torch.no_grad():
            history.weight_norm.append(float(torch.stack(torch._foreach_norm(params)).norm()))
        if step + 1 in wanted and step + 1 < recipe.steps:
            log(step + 1)
            if stop is not None and stop(history):
                history.stopped_at = step + 1
                return history
    if not history.diverged and recipe.steps > 0:
        log(len(history.loss))
    return history


def eval_schedule(steps: int, every: int) -> list[int]:
    """Steps 1, 2, 4, 8, ... (early dynamics are fast) and every ``every``-th step, up to ``steps``."""
    grid = {2**k for k in range(max(steps, 1).bit_length()) if 2**k <= steps}
    if every > 0:
        grid |= set(range(every, steps + 1, every))
    return sorted(grid | {steps})


@torch.no_grad()
def _decay(params: list[Tensor], rate: float) -> None:
    if rate:
        torch._foreach_mul_(params, 1.0 - rate)


# --------------------------------------------------------------------- measures


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 4096) -> float:
    """Fraction of ``x`` classified as ``y`` (argmax of the last dimension)."""
    if len(y) == 0:
        return float("nan")
    correct = sum(int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
                  for i in range(0, len(y), batch))
    return correct / len(y)


@torch.no_grad()
def mean_loss(model: nn.Module, loss: str, x: Tensor, y: Tensor) -> float:
    fn = get_loss(loss)
    out = model(x)
    return float(fn.per_example(out, fn.prepare(out, y)).mean())


def loss_fn(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``(output, target) -> batch-mean loss``, the loss the learners train on."""
    fn = get_loss(name)
    return lambda out, y: fn.per_example(out, fn.prepare(out, y)).mean()


@torch.no_grad()
def weight_norm(model: nn.Module) -> float:
    """``sqrt(sum ||p||^2)`` over the trainable parameters."""
    return math.sqrt(sum(float(p.pow(2).sum()) for p in model.parameters() if p.requires_grad))


# ------------------------------------------------------------------------- data


SHARED_FASHION = Path("..") / "shared" / "datasets" / "fashion-mnist"


def resolve_data(data_dir: Path | str | None, *, quiet: bool = False) -> tuple[str, str | None]:
    """``(dataset name, absolute folder)`` for the image experiments.

    ``data_dir`` if given (Fashion-MNIST IDX files; it must exist); else
    ``$PCLAB_DATA/fashion-mnist`` or ``../shared/datasets/fashion-mnist`` if either
    holds the files; else scikit-learn's ``digits`` (offline), with a printed note.
    """
    if data_dir not in (None, ""):
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--data-dir {folder} is not a folder; point it at the Fashion-MNIST "
                             "IDX files, or leave it out to use the default")
        return "fashion-mnist", str(folder.resolve())
    candidates = []
    if os.environ.get("PCLAB_DATA"):
        candidates.append(Path(os.environ["PCLAB_DATA"]).expanduser() / "fashion-mnist")
    candidates.append(SHARED_FASHION)
    for folder in candidates:
        if any(folder.glob("train-images-idx3-ubyte*")):
            return "fashion-mnist", str(folder.resolve())
    if not quiet:
        print("note: no Fashion-MNIST found ($PCLAB_DATA/fashion-mnist, ../shared/datasets/"
              "fashion-mnist); using scikit-learn's digits (8x8) instead. Pass --data-dir to "
              "use Fashion-MNIST.", file=sys.stderr)
    return "digits", None


@functools.lru_cache(maxsize=8)
def load_data(name: str, folder: str | None, train_size: int | None = None,
              label_noise: float = 0.0, seed: int = 0):
    """:func:`pclab.data.load`, cached per process (sweeps reload the same subsets)."""
    from pclab.data import load

    return load(name, folder, download=False, train_size=train_size, label_noise=label_noise,
                seed=seed)


@functools.lru_cache(maxsize=4)
def dataset_size(name: str, folder: str | None) -> int:
    return len(load_data(name, folder).y_train)
