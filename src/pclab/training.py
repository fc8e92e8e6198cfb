"""Training runs: a typed config in, a trained model and a run folder out.

One verb, :func:`train`, used by ``pclab train``, ``pclab compare``, the lab's
experiments and the benchmarks. It loads a dataset from :mod:`pclab.data`, builds a
model from :mod:`pclab.models`, and trains it with :func:`pclab.learner` (``"bp"``
or a predictive-coding algorithm) and a ``torch.optim`` optimizer.

A run with ``out`` set writes one folder::

    runs/<name>/
        config.yaml      the resolved TrainConfig; ``pclab train --config`` reruns it
        metrics.jsonl    one JSON object per epoch (EpochRecord fields)
        metrics.csv      the same rows as CSV
        checkpoint.pt    model + optimizer + epoch + RNG state + history, every epoch
        curves.png       loss, energy and accuracy per epoch (at the end, and every 30 s)

Every file is written to a temporary file and moved into place with
``os.replace``, so a run killed at any moment leaves each file whole (the old
version or the new one). The checkpoint carries the metrics history, so a resume
rewrites the metrics files from it even if the run died between the two writes.

**Determinism.** The model is initialised from ``torch.manual_seed(seed)``; the
data order of epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)`` alone, so it does not depend on how many epochs ran in this process.
Resuming from the checkpoint of epoch ``k`` therefore ends bit-identical to an
uninterrupted run on CPU (with the same ``threads``: the thread count can change
how float sums are ordered).

**Several processes.** Under ``torchrun --nproc_per_node=N -m pclab train ...``
(or any initialised ``torch.distributed`` group) each global batch of
``batch_size`` examples is split into ``N`` shards; each process runs inference on
its shard (PC inference is per example, so shards are independent) and the weight
gradients are averaged, weighted by shard size, with one flattened ``all_reduce``
before the optimizer step. The update is that of one process on the global batch,
up to float summation order. ``"incremental"`` steps the optimizer inside
``pc.step`` at every inference tick, so there the optimizer is wrapped in
:class:`AllReduceOptimizer`, whose ``step()`` all-reduces first. Batch norm is the
exception to "per example": its batch statistics are per shard, and rank 0's
running statistics are kept. Only rank 0 writes files and shows progress. A
process that diverges tells the others through the same collectives, so all stop
with :class:`RunDiverged` instead of waiting for each other.

Example (no files: ``out`` is ``None``)::

    >>> cfg = TrainConfig(train_size=100, epochs=1, algorithm="fpa", steps=5, device="cpu")
    >>> result = train(cfg)
    >>> [r.epoch for r in result.history], 0.0 <= result.final_test_accuracy <= 1.0
    ([1], True)
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import random
import re
import sys
import tempfile
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from . import data as data_lib
from . import models as model_lib
from .algorithms import ALGORITHMS
from .engine import StepResult, learner
from .errors import DivergenceError
from .graph import ValueNodePolicy

__all__ = [
    "ALGORITHM_NAMES", "TrainConfig", "ConfigError", "RunFolderError", "RunDiverged",
    "EpochRecord", "RunResult", "Callback", "train", "evaluate", "epoch_order",
    "load_config_file", "make_config", "parse_model_option", "atomic_write", "make_optimizer",
    "sync_gradients", "AllReduceOptimizer", "CompareResult", "compare",
]

ALGORITHM_NAMES: tuple[str, ...] = ("bp", *ALGORITHMS)
"""Valid ``algorithm`` values: backprop, then the predictive-coding algorithms."""

RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "checkpoint.pt", "curves.png")
"""What a run folder holds; ``overwrite`` deletes exactly these (nothing else)."""

_CHECKPOINT_FORMAT = 1

# Keys that may differ between a run and its resumption: where things are, not
# what is computed. ``epochs`` may grow so a finished run can be trained further.
_RESUMABLE_CHANGES = frozenset({"epochs", "out", "data_dir", "device", "threads", "compile"})


class ConfigError(ValueError):
    """A configuration key is unknown or has a wrong type or value; the message names the key."""


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (exists, or has nothing to resume)."""


class RunDiverged(DivergenceError):
    """Training stopped on a non-finite value; the last good checkpoint is kept.

    A :class:`pclab.DivergenceError`, with where it happened: ``epoch`` and
    ``batch`` (1-based) and the ``checkpoint`` left on disk (``None`` if no epoch
    finished or the run writes no files).
    """

    def __init__(self, message: str, *, node: str, step: int | None, epoch: int, batch: int,
                 checkpoint: Path | None) -> None:
        super().__init__(message, node=node, step=step)
        self.epoch, self.batch, self.checkpoint = epoch, batch, checkpoint


# ----------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run; its YAML form reruns it exactly.

    Attributes:
        data: dataset name, one of :data:`pclab.data.DATASETS`.
        data_dir: folder with the dataset's files (default ``$PCLAB_DATA/<data>``).
        train_size: class-balanced seeded subset of the training set (``None``: all).
        label_noise: fraction of training labels flipped, in ``[0, 1)``.
        model: one of :data:`pclab.models.MODELS`.
        model_options: fields of ``pclab.models.OPTIONS[model]``, e.g. ``{"width": 64}``.
        algorithm: ``"bp"`` or a PC algorithm: ``"exact"``, ``"fpa"``, ``"pc"``, ``"incremental"``.
        loss: output loss, ``"ce"`` or ``"mse"``.
        steps: inference steps per batch (ignored by ``"bp"`` and ``"exact"``).
        step_size: inference step size (``None``: the algorithm's default).
        value_nodes: where PC's value nodes go: ``"layers"`` (every parametrised
            layer's output) or ``"blocks"`` (each residual or transformer block is one
            unit, with a value node on the residual stream after it; see
            :data:`pclab.models.BLOCKS`). Deep residual nets need ``"blocks"``: with
            ``"layers"`` a branch's output feeds every later block, and inference at a
            fixed step size diverges as depth grows.
        epochs: passes over the training set.
        batch_size: global batch size (split across processes when distributed).
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr: learning rate.
        weight_decay: decoupled for AdamW, L2 for SGD.
        momentum: SGD momentum (AdamW ignores it).
        seed: seeds the data subset, label noise, model init and data order.
        eval_every: evaluate on the test set every this many epochs (and after the last).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        threads: CPU threads for this run (``None``: torch's default). One by
            default: the lab's small models gain nothing from more, and when
            other processes share the cores, threads waiting on each other made
            the default run 8x slower here (367 s instead of 46 s). Raise it for
            large convolutional models.
        compile: run each training step through ``torch.compile`` (same numbers,
            faster after the first step of each batch shape); ``"tick"`` compiles
            each inference tick apart, which compiles deep models in a fraction of
            the time and memory (see :class:`pclab.PredictiveCoding`).
        out: run folder; ``None`` writes nothing.

    Construction checks every field's type and range and names the bad key:

    >>> TrainConfig(epochs="3")
    Traceback (most recent call last):
    pclab.training.ConfigError: config key 'epochs': expected an integer, got '3'
    """

    data: str = "digits"
    data_dir: str | None = None
    train_size: int | None = None
    label_noise: float = 0.0
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "pc"
    loss: Literal["ce", "mse"] = "ce"
    steps: int = 20
    step_size: float | None = None
    value_nodes: Literal["layers", "blocks"] = "layers"
    epochs: int = 30
    batch_size: int = 32
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    seed: int = 0
    eval_every: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = 1
    compile: Literal[False, True, "step", "tick"] = False
    out: str | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _checked(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        self._check_ranges()
        object.__setattr__(self, "model_options", _checked_model_options(self.model, self.model_options))

    def _check_ranges(self) -> None:
        if self.algorithm not in ALGORITHM_NAMES:
            raise ConfigError(f"config key 'algorithm': unknown algorithm {self.algorithm!r}; "
                              f"valid algorithms: {', '.join(ALGORITHM_NAMES)}")
        if self.model not in model_lib.MODELS:
            raise ConfigError(f"config key 'model': unknown model {self.model!r}; "
                              f"valid models: {', '.join(model_lib.MODELS)}")
        for key in ("steps", "epochs", "batch_size", "eval_every", "train_size", "threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key {key!r}: must be >= 1, got {value}")
        if self.seed < 0:
            raise ConfigError(f"config key 'seed': must be >= 0, got {self.seed}")
        if not 0 <= self.label_noise < 1:
            raise ConfigError(f"config key 'label_noise': must be in [0, 1), got {self.label_noise}")
        for key in ("lr", "step_size"):
            value = getattr(self, key)
            if value is not None and not (0 < value < math.inf):
                raise ConfigError(f"config key {key!r}: must be a positive finite number, got {value}")
        for key in ("weight_decay", "momentum"):
            if not 0 <= getattr(self, key) < math.inf:
                raise ConfigError(f"config key {key!r}: must be >= 0, got {getattr(self, key)}")
        if self.compile == "tick" and self.algorithm == "fpa":
            raise ConfigError("config key 'compile': 'tick' cannot compile fpa, whose ticks all differentiate "
                              "the forward pass's one graph; use compile: true (one program per step)")

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of every field (what ``config.yaml`` holds)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# PyYAML implements YAML 1.1, which reads ``1e-3`` (no dot) as a *string*; accept
# such strings for float keys rather than reject the most natural way to write a rate.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _checked(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (ints accepted as floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _checked(key, value, inner)
        except ConfigError as err:
            raise ConfigError(f"{err} (or null)") from None
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(f"config key {key!r}: expected a mapping of option names to values, got {value!r}")
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    raise TypeError(f"TrainConfig cannot check key {key!r} of type {hint}; extend _checked")


def _checked_model_options(model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``pclab.models.OPTIONS[model]``; errors name the option."""
    options_type = model_lib.OPTIONS[model]
    valid = [f.name for f in dataclasses.fields(options_type)]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ConfigError(f"config key 'model_options.{unknown[0]}': unknown option for model "
                          f"{model!r}; valid options: {', '.join(valid)}")
    try:
        options_type(**options)  # the dataclass checks each value against its annotation
    except ValueError as err:
        raise ConfigError(f"config key 'model_options': {err}") from None
    return {k: _plain(v) for k, v in options.items()}


def parse_model_option(model: str, text: str) -> tuple[str, Any]:
    """Parse a ``key=value`` model option; the value is read as YAML (``64``, ``true``, ``[8, 16]``).

    >>> parse_model_option("mlp", "width=64")
    ('width', 64)
    >>> parse_model_option("mlp", "widht=64")
    Traceback (most recent call last):
    pclab.training.ConfigError: model option 'widht': unknown for model 'mlp'; valid options: width, depth, activation, bias
    """
    if model not in model_lib.MODELS:
        raise ConfigError(f"config key 'model': unknown model {model!r}; "
                          f"valid models: {', '.join(model_lib.MODELS)}")
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    valid = [f.name for f in dataclasses.fields(model_lib.OPTIONS[model])]
    if not sep or not key:
        raise ConfigError(f"model option {text!r}: expected key=value, e.g. {valid[0]}=...")
    if key not in valid:
        raise ConfigError(f"model option {key!r}: unknown for model {model!r}; valid options: {', '.join(valid)}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"model option {key!r}: cannot read value {raw!r}: {err}") from None
    return key, value


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict (not yet checked)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, "
                          f"got a {type(loaded).__name__}")
    return loaded


def make_config(*layers: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from the defaults overridden by each layer in turn.

    Later layers win (e.g. ``make_config(file, flags)``: flags override the file);
    ``model_options`` mappings are merged key by key. Unknown keys are errors that
    list the valid ones.

    >>> make_config({"epochs": 2, "model_options": {"width": 32}}, {"model_options": {"depth": 1}}).model_options
    {'width': 32, 'depth': 1}
    >>> make_config({"epoch": 2})
    Traceback (most recent call last):
    pclab.training.ConfigError: unknown config key 'epoch'; valid keys: data, data_dir, train_size, label_noise, model, model_options, algorithm, loss, steps, step_size, value_nodes, epochs, batch_size, optimizer, lr, weight_decay, momentum, seed, eval_every, device, threads, compile, out
    """
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    merged: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in valid:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
            if key == "model_options":
                options.update(_checked(key, value, dict[str, Any]) if value is not None else {})
            else:
                merged[key] = value
    return TrainConfig(**merged, model_options=options)


# ----------------------------------------------------------------- run records


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch measured; one row of ``metrics.jsonl`` / ``metrics.csv``.

    Train metrics are means over the epoch's examples of each batch's
    feed-forward ``loss``, final inference ``energy`` and accuracy (for ``"bp"``
    the energy is the loss). Test metrics are ``None`` on epochs without
    evaluation. ``train_time_s`` is wall time of the training part alone.
    """

    epoch: int
    train_loss: float
    train_energy: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    train_time_s: float
    eval_time_s: float


@dataclass(frozen=True)
class RunResult:
    """What :func:`train` returns: the config, every epoch's record and the trained model."""

    config: TrainConfig
    history: tuple[EpochRecord, ...]
    model: nn.Module
    out: Path | None

    @property
    def final_test_accuracy(self) -> float | None:
        """Test accuracy of the last evaluated epoch."""
        return next((r.test_accuracy for r in reversed(self.history) if r.test_accuracy is not None), None)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training wall time per epoch (evaluation excluded)."""
        return sum(r.train_time_s for r in self.history) / max(len(self.history), 1)


class Callback:
    """Hooks :func:`train` calls on every process; override the ones you need.

    ``on_epoch_end`` runs after the epoch's checkpoint and metrics are on disk, so
    raising from it stops the run exactly as a kill after that epoch would.
    """

    def on_batch_end(self, epoch: int, batch: int, result: StepResult) -> None:
        """After batch ``batch`` (1-based) of ``epoch``, with this process's ``StepResult``."""

    def on_epoch_end(self, record: EpochRecord, model: nn.Module) -> None:
        """After ``record.epoch`` is evaluated and saved."""


# ------------------------------------------------------------- atomic writing


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then ``os.replace`` it.

    Readers, and a later resume, see either the old file or the complete new one,
    never a partial one; the temporary file is removed if ``write`` fails.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(p, lambda f: f.write(b"hello"))
    >>> p.read_text()
    'hello'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_config(path: Path, config: TrainConfig, device: torch.device, world_size: int) -> None:
    header = (f"# pclab train config (resolved). Rerun: pclab train --config {path.name} --out <new folder>\n"
              f"# ran with torch {torch.__version__} on {device}, {world_size} process(es)\n")
    _write_text(path, header + yaml.safe_dump(config.to_dict(), sort_keys=False))


def _write_metrics(out: Path, history: Sequence[EpochRecord]) -> None:
    rows = [dataclasses.asdict(r) for r in history]
    _write_text(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[f.name for f in dataclasses.fields(EpochRecord)],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(out / "metrics.csv", text.getvalue())


def _plot_history(path: Path, history: Sequence[EpochRecord], title: str) -> None:
    # Figure + savefig uses the Agg canvas directly: no pyplot, no global backend switch.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    epochs = [r.epoch for r in history]
    tested = [r for r in history if r.test_accuracy is not None]
    panels = [("loss", [("train", epochs, [r.train_loss for r in history]),
                        ("test", [r.epoch for r in tested], [r.test_loss for r in tested])]),
              ("energy", [("train", epochs, [r.train_energy for r in history])]),
              ("accuracy", [("train", epochs, [r.train_accuracy for r in history]),
                            ("test", [r.epoch for r in tested], [r.test_accuracy for r in tested])])]
    for ax, (name, lines) in zip(fig.subplots(1, 3), panels):
        for label, xs, ys in lines:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


class _Plotter:
    """Redraws ``curves.png`` after the last epoch and at most every ``interval_s`` before.

    Drawing takes about as long as an epoch of the default run (0.5-1 s), so
    drawing every epoch would double its time; a running plot a few epochs old
    is enough to watch a long run.
    """

    def __init__(self, path: Path | None, title: str, interval_s: float = 30.0) -> None:
        self.path, self.title, self.interval_s = path, title, interval_s
        self.last = time.monotonic()

    def maybe(self, history: Sequence[EpochRecord], *, final: bool) -> None:
        if self.path is None or not history:
            return
        if final or time.monotonic() - self.last >= self.interval_s:
            _plot_history(self.path, history, self.title)
            self.last = time.monotonic()


# ------------------------------------------------------------ data and models


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order in which epoch ``epoch`` visits ``n`` training examples.

    A function of ``(seed, epoch)`` only (numpy's ``SeedSequence`` mixes the two
    into a generator seed), so a resumed run visits the same batches as an
    uninterrupted one.

    >>> torch.equal(epoch_order(10, seed=0, epoch=3), epoch_order(10, seed=0, epoch=3))
    True
    >>> sorted(epoch_order(5, seed=0, epoch=1).tolist())
    [0, 1, 2, 3, 4]
    """
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randperm(n, generator=generator)


def _correct(output: Tensor, y: Tensor) -> Tensor:
    """Per-example accuracy: the fraction of the example's positions whose argmax is right."""
    if y.is_floating_point():  # soft targets: compare with the most likely class
        y = y.argmax(-1)
    hits = (output.argmax(-1) == y).reshape(len(y), -1).float()
    return hits.mean(1).sum()


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "ce",
             batch_size: int = 1024) -> tuple[float, float, int]:
    """Summed ``loss``, summed accuracy and example count of ``model`` on ``(x, y)``.

    Runs in ``model.eval()`` mode without autograd and restores the previous mode.
    Divide the sums by the count for means (sums add up across processes).

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> loss_sum, correct, n = evaluate(model, torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,)))
    >>> n, 0 <= correct <= n
    (8, True)
    """
    from .energy import get_loss

    output_loss = get_loss(loss)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0.0
    try:
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            out = model(xb)
            loss_sum += float(output_loss.per_example(out, output_loss.prepare(out, yb)).sum())
            correct += float(_correct(out, yb))
    finally:
        model.train(was_training)
    return loss_sum, correct, len(y)


def _load_data(config: TrainConfig) -> data_lib.Dataset:
    if config.data not in data_lib.DATASETS:
        raise ConfigError(f"config key 'data': unknown dataset {config.data!r}; "
                          f"valid datasets: {', '.join(data_lib.DATASETS)}")
    try:
        return data_lib.load(config.data, config.data_dir, train_size=config.train_size,
                             label_noise=config.label_noise, seed=config.seed)
    except data_lib.DataError:
        raise
    except ValueError as err:  # e.g. train_size larger than the dataset: the user's input
        raise ConfigError(f"data {config.data!r}: {err}") from None


def _value_nodes(config: TrainConfig, model: nn.Module) -> ValueNodePolicy:
    if config.value_nodes == "layers":
        return "layers"
    if not any(isinstance(m, model_lib.BLOCKS) for m in model.modules()):
        raise ConfigError(f"config key 'value_nodes': 'blocks' needs a model made of residual blocks, and "
                          f"model {config.model!r} has none; use 'layers' or a resnet or transformer")
    return model_lib.BLOCKS


def _build_model(config: TrainConfig, dataset: Any) -> nn.Module:
    torch.manual_seed(config.seed)  # initialisation depends on the seed alone, not on data loading
    try:
        return model_lib.build(config.model, input_shape=tuple(dataset.x_train.shape[1:]),
                               num_classes=dataset.num_classes, **config.model_options)
    except ValueError as err:
        raise ConfigError(f"model {config.model!r}: {err}") from None


def make_optimizer(name: str, params: Sequence[nn.Parameter], *, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.0) -> torch.optim.Optimizer:
    """``"adamw"`` (decoupled weight decay) or ``"sgd"`` (L2 weight decay, momentum), fused.

    The fused kernels update every parameter in one pass, where torch's CPU default
    loops over them in Python; incremental PC pays the optimizer step at every
    inference tick. Same update rule: the two agree to rounding (tested). A torch
    without fused kernels for these parameters gets the default.

        >>> import torch
        >>> opt = make_optimizer("adamw", [torch.nn.Parameter(torch.zeros(3))], lr=1e-3)
        >>> type(opt).__name__
        'AdamW'
    """
    if name not in ("adamw", "sgd"):
        raise ValueError(f"unknown optimizer {name!r}; valid: adamw, sgd")
    if name == "sgd":
        build = functools.partial(torch.optim.SGD, params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    else:
        build = functools.partial(torch.optim.AdamW, params, lr=lr, weight_decay=weight_decay)
    try:
        return build(fused=True)
    except (RuntimeError, TypeError):  # torch < 2.4 on CPU, or parameters fused kernels do not take
        return build()


# ----------------------------------------------------------------- processes


class _PeerDiverged(DivergenceError):
    """Another process diverged; raised everywhere so that no process waits forever."""


@dataclass(frozen=True)
class _Processes:
    """This process's place in a ``torch.distributed`` group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised it, so we tear it down

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def join(cls, device: str) -> "_Processes":
        import torch.distributed as dist

        if not dist.is_available():
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
        if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
            return cls()
        # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT: the env:// rendezvous.
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:  # one GPU per process; NCCL's object collectives use the current device
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()

    def all_reduce(self, tensor: Tensor) -> Tensor:
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def on_rank0(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; its result, or its exception, reaches every process."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.rank == 0:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # re-raised below, on every rank
                box[0] = ("error", err)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def broadcast_state(self, tensors: Sequence[Tensor]) -> None:
        if self.distributed:
            import torch.distributed as dist

            for t in tensors:
                dist.broadcast(t, src=0)


def sync_gradients(params: Sequence[nn.Parameter], local_batch: int, *, diverged: bool = False) -> int:
    """Average ``p.grad`` over all processes, weighted by each one's batch share.

    Each process's gradients are its shard's batch means; scaling them by
    ``local_batch / global_batch`` and summing gives the global batch mean, also
    when shards differ in size. All gradients travel in one flattened
    ``all_reduce``, preceded by a two-number one (batch size, divergence flag), so a
    process that diverged (``diverged=True``, before raising) stops the others
    instead of leaving them waiting. Parameters without a gradient are skipped (all
    processes run the same graph, so they skip the same ones). Returns the global
    batch size.

    Raises:
        DivergenceError: some process reported divergence.
    """
    import torch.distributed as dist

    device = params[0].device if params else torch.device("cpu")
    header = torch.tensor([float(local_batch), float(diverged)], dtype=torch.float64, device=device)
    dist.all_reduce(header)
    total, flagged = float(header[0]), float(header[1])
    if flagged > 0:
        raise _PeerDiverged(f"{int(flagged)} process(es) diverged; every process stops",
                            node="peer", step=None)
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return int(total)
    flat = torch.cat([p.grad.reshape(-1) for p in with_grad]).mul_(local_batch / total)
    dist.all_reduce(flat)
    offset = 0
    for p in with_grad:
        n = p.grad.numel()
        p.grad = flat[offset:offset + n].view_as(p.grad)
        offset += n
    return int(total)


class AllReduceOptimizer:
    """An optimizer whose ``step()`` first averages gradients over all processes.

    Incremental PC steps the optimizer at every inference tick from inside
    ``pc.step(x, y, optimizer=...)``; wrapping the optimizer puts the
    :func:`sync_gradients` all-reduce right before each of those steps. Set
    ``local_batch`` to this process's shard size before each ``pc.step``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.local_batch = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        sync_gradients(self._params(), self.local_batch)
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def _device(name: str, procs: _Processes) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config key 'device': 'cuda' asked for, but torch sees no CUDA device; "
                              "use 'cpu' or 'auto'")
        return torch.device("cuda", procs.local_rank)
    return torch.device("cpu")


# ------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, config: TrainConfig, epoch: int, model: nn.Module,
                     optimizer: torch.optim.Optimizer, history: Sequence[EpochRecord]) -> None:
    state = {"format": _CHECKPOINT_FORMAT, "epoch": epoch, "config": config.to_dict(),
             "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state(),
             "history": [dataclasses.asdict(r) for r in history]}
    atomic_write(path, lambda f: torch.save(state, f))


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    # weights_only: a checkpoint is data; it cannot run code when loaded.
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("format") != _CHECKPOINT_FORMAT:
        raise RunFolderError(f"{path} is not a pclab checkpoint of format {_CHECKPOINT_FORMAT}")
    # RNG states must stay CPU byte tensors whatever map_location did.
    rng = state["rng"]
    rng["torch"] = rng["torch"].cpu()
    rng["cuda"] = [s.cpu() for s in rng["cuda"]]
    return state


# ---------------------------------------------------------------- run folder


def _prepare_folder(config: TrainConfig, *, resume: bool, overwrite: bool) -> Path | None:
    """Check and create the run folder; on resume, check the config against the saved one."""
    if config.out is None:
        if resume:
            raise ConfigError("config key 'out': resume needs the run folder to continue from")
        return None
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder")
    if resume:
        if not (out / "checkpoint.pt").is_file():
            why = ("it stopped before its first epoch ended" if (out / "config.yaml").is_file()
                   else "it is not a pclab run folder")
            raise RunFolderError(f"cannot resume {out}: no checkpoint.pt ({why}); "
                                 f"start it again with --overwrite")
        saved = make_config(load_config_file(out / "config.yaml")).to_dict()
        changed = [k for k, v in config.to_dict().items() if saved[k] != v and k not in _RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                "cannot resume with a different config: " + ", ".join(
                    f"config key {k!r} is {config.to_dict()[k]!r}, the run used {saved[k]!r}" for k in changed)
                + f". Only {', '.join(sorted(_RESUMABLE_CHANGES))} may change on resume.")
    elif out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunFolderError(f"run folder {out} already exists; pass --resume to continue it "
                                 f"or --overwrite to replace it")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------- train


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          callbacks: Sequence[Callback] = (), progress: bool = False, dataset: Any = None) -> RunResult:
    """Train ``config.model`` on ``config.data`` with ``config.algorithm``; see the module docstring.

    Args:
        config: the run's settings.
        resume: continue ``config.out`` from its checkpoint; the config must match
            the saved one except for ``epochs`` (may grow), ``out``, ``data_dir``,
            ``device`` and ``threads``.
        overwrite: replace the run files of an existing ``config.out``.
        callbacks: :class:`Callback` hooks, called on every process.
        progress: show a progress bar (on a terminal, rank 0 only) and print one
            line per epoch (rank 0).
        dataset: train on this instead of loading ``config.data`` (any object with
            ``x_train, y_train, x_test, y_test, num_classes`` like
            :class:`pclab.data.Dataset`, e.g. the lab's own tasks); ``config.data``
            then only names it. Pass it again to resume.

    Like any training script, it seeds Python's, numpy's and torch's global
    generators from ``config.seed`` (a resume restores them from the checkpoint).

    Raises:
        ConfigError: a bad setting (unknown dataset, options that do not fit).
        RunFolderError: ``out`` exists (without ``resume``/``overwrite``) or has
            nothing to resume.
        pclab.data.DataError: dataset files missing or corrupt.
        RunDiverged: a non-finite value; the last good checkpoint stays on disk.
    """
    procs = _Processes.join(config.device)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, procs, resume=resume, overwrite=overwrite, callbacks=callbacks,
                    progress=progress, dataset=dataset)
    finally:
        torch.set_num_threads(threads)  # a Python caller's setting outlives the run
        procs.close()


def _run(config: TrainConfig, procs: _Processes, *, resume: bool, overwrite: bool,
         callbacks: Sequence[Callback], progress: bool, dataset: Any) -> RunResult:
    device = _device(config.device, procs)
    # Rank 0 first: it may download the dataset, which the others then only read.
    if dataset is None:
        loaded: list[Any] = []
        procs.on_rank0(lambda: loaded.append(_load_data(config)))
        dataset = loaded[0] if loaded else _load_data(config)
    model = _build_model(config, dataset).to(device)
    value_nodes = _value_nodes(config, model)
    optimizer = make_optimizer(config.optimizer, [p for p in model.parameters() if p.requires_grad],
                               lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum)
    try:
        step_fn = learner(model, config.algorithm, loss=config.loss, steps=config.steps,
                          step_size=config.step_size, compile=config.compile, value_nodes=value_nodes)
    except ValueError as err:
        raise ConfigError(f"algorithm {config.algorithm!r}: {err}") from None
    out = procs.on_rank0(lambda: _prepare_folder(config, resume=resume, overwrite=overwrite))
    writes = out is not None and procs.rank == 0

    history: list[EpochRecord] = []
    start = 1
    if resume:
        state = _load_checkpoint(out / "checkpoint.pt", device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        history = [EpochRecord(**row) for row in state["history"]]
        start = state["epoch"] + 1
    else:
        # Seeds for whatever else draws random numbers (e.g. dropout); the same in every process.
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
    # Every process starts from rank 0's weights, whatever its own initialisation did.
    procs.broadcast_state([*model.parameters(), *model.buffers()])
    if writes:
        _write_config(out / "config.yaml", config, device, procs.world_size)
        if resume:  # the checkpoint's history is the truth; the files may be an epoch ahead
            _write_metrics(out, history)

    x_train, y_train = dataset.x_train.to(device), dataset.y_train.to(device)
    x_test, y_test = dataset.x_test.to(device), dataset.y_test.to(device)
    incremental = config.algorithm == "incremental"
    step_optimizer: Any = AllReduceOptimizer(optimizer) if procs.distributed else optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    checkpoint = out / "checkpoint.pt" if out is not None and start > 1 else None
    show = _Progress(progress and procs.rank == 0, config)
    plotter = _Plotter(out / "curves.png" if writes else None,
                       f"{config.algorithm} on {config.data} ({config.model})")

    for epoch in range(start, config.epochs + 1):
        model.train()
        batches = _batches(len(y_train), config, epoch, procs)
        sums = torch.zeros(4, dtype=torch.float64)  # loss, energy, correct, examples
        tick = time.perf_counter()
        bar = show.bar(epoch, len(batches))
        for number, idx in enumerate(batches, start=1):
            x, y = x_train[idx], y_train[idx]
            try:
                optimizer.zero_grad(set_to_none=True)
                if incremental:
                    step_optimizer.local_batch = len(idx)
                    result = step_fn.step(x, y, optimizer=step_optimizer)
                else:
                    result = step_fn.step(x, y)
                    if procs.distributed:
                        sync_gradients(params, len(idx))
                    optimizer.step()
            except DivergenceError as err:
                if procs.distributed and not isinstance(err, _PeerDiverged):
                    _tell_peers_we_diverged(params, procs)
                bar.close()
                plotter.maybe(history, final=True)  # the curves up to the last good epoch
                where = (f"{checkpoint} (epoch {history[-1].epoch})" if checkpoint is not None
                         else "none (no epoch finished)" if out is not None else "none (out is not set)")
                raise RunDiverged(
                    f"training diverged at epoch {epoch}, batch {number}: {err} "
                    f"Last good checkpoint: {where}.",
                    node=err.node, step=err.step, epoch=epoch, batch=number, checkpoint=checkpoint,
                ) from err
            n = len(idx)
            sums += torch.tensor([result.loss * n, result.energy * n,
                                  float(_correct(result.output, y)), n], dtype=torch.float64)
            bar.update(sums)
            for cb in callbacks:
                cb.on_batch_end(epoch, number, result)
        train_time = time.perf_counter() - tick
        bar.close()
        if procs.distributed:
            sums = procs.all_reduce(sums.to(device)).cpu()
            # Batch-norm running statistics saw only each shard: keep rank 0's everywhere.
            procs.broadcast_state(list(model.buffers()))
        test_loss = test_accuracy = None
        tick = time.perf_counter()
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            shard = torch.arange(len(y_test), device=device).tensor_split(procs.world_size)[procs.rank]
            totals = torch.tensor(evaluate(model, x_test[shard], y_test[shard], loss=config.loss),
                                  dtype=torch.float64)
            loss_sum, correct, count = procs.all_reduce(totals.to(device)).tolist()
            test_loss, test_accuracy = loss_sum / count, correct / count
        record = EpochRecord(epoch, float(sums[0] / sums[3]), float(sums[1] / sums[3]),
                             float(sums[2] / sums[3]), test_loss, test_accuracy, train_time,
                             time.perf_counter() - tick)
        history.append(record)
        if writes:
            checkpoint = out / "checkpoint.pt"
            _save_checkpoint(checkpoint, config, epoch, model, optimizer, history)
            _write_metrics(out, history)
            plotter.maybe(history, final=epoch == config.epochs)
        elif out is not None:
            checkpoint = out / "checkpoint.pt"
        show.epoch(record)
        for cb in callbacks:
            cb.on_epoch_end(record, model)
    return RunResult(config, tuple(history), model, out)


def _batches(n: int, config: TrainConfig, epoch: int, procs: _Processes) -> list[Tensor]:
    """This process's shard of each global batch of epoch ``epoch``, as index tensors.

    Batches are cut from :func:`epoch_order` the same way whatever the number of
    processes, so N processes see exactly the batches one process would. A last
    batch smaller than the number of processes would leave one empty-handed, so
    it is skipped (only then do N processes and one differ).
    """
    order = epoch_order(n, config.seed, epoch)
    batches = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
    return [b.tensor_split(procs.world_size)[procs.rank] for b in batches if len(b) >= procs.world_size]


def _tell_peers_we_diverged(params: Sequence[nn.Parameter], procs: _Processes) -> None:
    # The others wait in sync_gradients' header all_reduce; answer it with the flag set.
    try:
        sync_gradients(params, 0, diverged=True)
    except _PeerDiverged:
        pass


class _Bar:
    """A tqdm bar over one epoch's batches, or nothing when disabled."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, total: int) -> None:
        self._tqdm = None
        if enabled:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch",
                              leave=False, dynamic_ncols=True)

    def update(self, sums: Tensor) -> None:
        if self._tqdm is not None:
            loss, energy, correct, n = sums.tolist()
            self._tqdm.set_postfix(loss=f"{loss / n:.4f}", energy=f"{energy / n:.4f}",
                                   acc=f"{correct / n:.3f}", refresh=False)
            self._tqdm.update()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


class _Progress:
    """Rank 0's view of a run: a bar per epoch on a terminal, one line per epoch always.

    The bar is left out when stderr is not a terminal (CI logs, pipes), where it
    would print a line per refresh; the epoch lines are what remains.
    """

    def __init__(self, enabled: bool, config: TrainConfig) -> None:
        self.enabled, self.epochs = enabled, config.epochs
        self.bars = enabled and sys.stderr.isatty()

    def bar(self, epoch: int, total: int) -> _Bar:
        return _Bar(self.bars, epoch, self.epochs, total)

    def epoch(self, r: EpochRecord) -> None:
        if not self.enabled:
            return
        test = (f"  test loss {r.test_loss:.4f}  test acc {r.test_accuracy:.4f}"
                if r.test_accuracy is not None else "")
        print(f"epoch {r.epoch}/{self.epochs}  loss {r.train_loss:.4f}  energy {r.train_energy:.4f}  "
              f"acc {r.train_accuracy:.4f}{test}  ({r.train_time_s:.1f} s)", flush=True)


# ------------------------------------------------------------------- compare

COMPARE_FILES = ("compare.json", "compare.csv", "compare.md", "curves.png")


@dataclass(frozen=True)
class CompareResult:
    """Runs of several algorithms over the same seeds, and their summary.

    ``summary`` has one row per algorithm (``"bp"`` first): ``algorithm``,
    ``accuracy_mean``, ``accuracy_std`` (sample standard deviation over seeds; 0
    for one seed), ``seconds_per_epoch`` (mean training time per epoch),
    ``time_ratio`` (``seconds_per_epoch`` over bp's) and ``diverged`` (the seeds
    whose run stopped on a non-finite value). The statistics are over the runs
    that finished (``nan`` if none did); ``diverged_runs`` says where the others
    stopped.
    """

    base: TrainConfig
    seeds: tuple[int, ...]
    runs: dict[str, list[RunResult]]
    summary: list[dict[str, Any]]
    diverged_runs: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def table(self) -> str:
        """The summary as aligned plain text."""
        head = ("algorithm", "test accuracy", "s/epoch", "time / bp", "diverged")
        rows = [(r["algorithm"], f"{r['accuracy_mean']:.4f} +- {r['accuracy_std']:.4f}",
                 f"{r['seconds_per_epoch']:.3f}", f"{r['time_ratio']:.2f}", _diverged_cell(r, self.seeds))
                for r in self.summary]
        widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in (head, *rows)]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The summary as a Markdown table."""
        lines = ["| algorithm | test accuracy (mean ± std) | s/epoch | time / bp | diverged |",
                 "| --- | ---: | ---: | ---: | --- |"]
        lines += [f"| {r['algorithm']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | "
                  f"{r['seconds_per_epoch']:.3f} | {r['time_ratio']:.2f} | {_diverged_cell(r, self.seeds)} |"
                  for r in self.summary]
        return "\n".join(lines) + "\n"


def _diverged_cell(row: Mapping[str, Any], seeds: Sequence[int]) -> str:
    return f"{len(row['diverged'])} of {len(seeds)}" + (
        f" (seed {', '.join(map(str, row['diverged']))})" if row["diverged"] else "")


def compare(base: TrainConfig, algorithms: Sequence[str], seeds: Sequence[int], *,
            overwrite: bool = False, progress: bool = False,
            log: Callable[[str], None] | None = None) -> CompareResult:
    """Train ``base`` with each algorithm and seed, one after the other, and summarise.

    ``"bp"`` is the reference for the time ratio and is added first if missing.
    Everything else (data, model, steps, optimizer, epochs) comes from ``base``.
    With ``base.out`` set, each run writes ``<out>/<algorithm>/seed<seed>/`` and the
    summary goes to ``<out>/compare.{json,csv,md}`` with all learning curves in
    ``<out>/curves.png``.

    >>> cfg = TrainConfig(train_size=60, epochs=1, steps=3, device="cpu")
    >>> result = compare(cfg, ["fpa"], seeds=[0])
    >>> [row["algorithm"] for row in result.summary], result.summary[0]["time_ratio"]
    (['bp', 'fpa'], 1.0)
    """
    unknown = [a for a in algorithms if a not in ALGORITHM_NAMES]
    if unknown:
        raise ConfigError(f"unknown algorithm {unknown[0]!r}; valid algorithms: {', '.join(ALGORITHM_NAMES)}")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("compare runs its trainings one after another in one process; launch it "
                          "without torchrun (use torchrun for single `pclab train` runs)")
    names = list(dict.fromkeys(["bp", *algorithms]))
    for name in names:  # a setting one algorithm refuses fails before any run, not after bp's
        dataclasses.replace(base, algorithm=name)
    seeds = tuple(seeds)
    if not seeds:
        raise ConfigError("compare needs at least one seed")
    out = Path(base.out) if base.out is not None else None
    if out is not None:
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise RunFolderError(f"compare folder {out} already exists; pass --overwrite to replace it")
        out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[RunResult]] = {name: [] for name in names}
    diverged: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    total = len(names) * len(seeds)
    for name in names:
        for seed in seeds:
            run_out = str(out / name / f"seed{seed}") if out is not None else None
            config = dataclasses.replace(base, algorithm=name, seed=seed, out=run_out)
            done = sum(map(len, runs.values())) + sum(map(len, diverged.values())) + 1
            try:
                result = train(config, overwrite=overwrite, progress=progress)
            except RunDiverged as err:
                # A diverged run is one of the comparison's results, not the end of it.
                diverged[name].append({"seed": seed, "epoch": err.epoch, "batch": err.batch, "error": str(err)})
                if log is not None:
                    log(f"[{done}/{total}] {name} seed {seed}: {err}")
                continue
            runs[name].append(result)
            if log is not None:
                log(f"[{done}/{total}] {name} seed {seed}: test accuracy "
                    f"{result.final_test_accuracy:.4f}, {result.seconds_per_epoch:.3f} s/epoch")
    summary = _summarise(runs, diverged)
    result = CompareResult(base, seeds, runs, summary, diverged)
    if out is not None:
        _write_compare(out, result)
    return result


def _summarise(runs: Mapping[str, list[RunResult]],
               diverged: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    import statistics

    rows = []
    for name, results in runs.items():
        accuracies = [r.final_test_accuracy for r in results]
        rows.append({"algorithm": name,
                     "accuracy_mean": statistics.fmean(accuracies) if accuracies else math.nan,
                     "accuracy_std": (statistics.stdev(accuracies) if len(accuracies) > 1
                                      else 0.0 if accuracies else math.nan),
                     "seconds_per_epoch": (statistics.fmean(r.seconds_per_epoch for r in results)
                                           if results else math.nan),
                     "accuracies": accuracies, "diverged": [d["seed"] for d in diverged[name]]})
    reference = rows[0]["seconds_per_epoch"]
    for row in rows:
        row["time_ratio"] = row["seconds_per_epoch"] / reference if reference > 0 else math.nan
    return rows


def _write_compare(out: Path, result: CompareResult) -> None:
    payload = {"config": result.base.to_dict(), "seeds": list(result.seeds), "summary": result.summary,
               "runs": {name: [{"seed": r.config.seed, "out": str(r.out) if r.out else None,
                                "history": [dataclasses.asdict(h) for h in r.history]} for r in rs]
                        for name, rs in result.runs.items()},
               "diverged": result.diverged_runs}
    _write_text(out / "compare.json", json.dumps(payload, indent=2) + "\n")
    text = io.StringIO()
    fields = ["algorithm", "accuracy_mean", "accuracy_std", "seconds_per_epoch", "time_ratio", "diverged"]
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.summary)
    _write_text(out / "compare.csv", text.getvalue())
    _write_text(out / "compare.md", result.markdown())
    _plot_compare(out / "curves.png", result)


def _plot_compare(path: Path, result: CompareResult) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    for name, runs in result.runs.items():
        if not runs:  # every seed diverged: the table says so
            continue
        # Every run shares the config but the algorithm, so they evaluate on the same epochs.
        tested = [r.epoch for r in runs[0].history if r.test_accuracy is not None]
        acc = np.array([[h.test_accuracy for h in r.history if h.test_accuracy is not None] for r in runs])
        loss = np.array([[h.train_loss for h in r.history] for r in runs])
        epochs = [h.epoch for h in runs[0].history]
        for ax, xs, ys in ((acc_ax, tested, acc), (loss_ax, epochs, loss)):
            mean, std = ys.mean(0), ys.std(0)
            (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=name)
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    acc_ax.set_ylabel("test accuracy")
    loss_ax.set_ylabel("train loss")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    base = result.base
    fig.suptitle(f"{base.model} on {base.data}, {len(result.seeds)} seed(s), mean ± std")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
