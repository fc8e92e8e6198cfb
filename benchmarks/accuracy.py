"""Final test accuracy of every algorithm on named suites, mean ± std over seeds.

Each suite trains one model on one dataset with ``bp`` and the predictive-coding
algorithms through :func:`pclab.training.train` (what ``pclab train`` runs), for N
seeds, and reports the last epoch's test accuracy. Every hyperparameter comes from
the one table :data:`SUITES` below and is written into the results, with the
resolved :class:`~pclab.training.TrainConfig` of every run.

``--tune`` picks each algorithm's hyperparameters from :func:`tuning_grid` by the
accuracy on a validation split carved from the training set
(:func:`pclab.data.validation_split`, seed 0), never on the test set: the
learning rate from the suite's grid (:data:`LR_GRID` for AdamW) for every
algorithm and, for those with an inference step size, that too from
:data:`STEP_SIZE_FACTORS` times its default (PC's step size decides how far inference settles, which is the difference
between approximating backprop and prospective configuration, so leaving it at
its default would tune pc less than bp). Incremental PC steps the optimizer at
each of its T ticks, so its learning rates are the grid's divided by T:
AdamW's step length is about ``lr`` whatever the gradient's scale, so a batch then
moves its weights about as far as one step at the other algorithms' rates.
Then, at the best of those settings, the weight decay from the suite's grid
(:data:`WEIGHT_DECAY_GRID` for AdamW; :func:`weight_decay_grid`), against none: an
algorithm that overfits (incremental PC takes T optimizer steps per batch) gets the same
remedy to choose as the others.
Every grid point gets the same epochs and seed; every knob three values. Where the
best point lies on the grid's edge the search walks on past it, one grid step at a
time along that knob (the others held at the best point's), up to
:data:`MAX_EDGE_STEPS` steps: an optimum at the edge says the grid was too small,
not that the edge is best. The chosen setting's validation curve then sets the
epoch count (:func:`stop_epoch`: training stops where validation accuracy peaked),
for every algorithm alike. Scores already in the results file for the same suite
table, data and split are reused rather than rerun (``--retune`` reruns them); a
reused chosen setting without a recorded curve is rerun once for it. Each score is
saved as its run finishes, so a search stopped halfway resumes from its last score.

Datasets resolve to ``<repo>/../shared/datasets/<folder>`` (``--data-root``
overrides the parent folder); a suite whose files are absent is skipped with a note.

    python benchmarks/accuracy.py --suites digits-mlp     # merges into benchmarks/results/accuracy.json
    python benchmarks/accuracy.py --render                # benchmarks/RESULTS.md from benchmarks/results/*.json
    python benchmarks/accuracy.py --smoke                 # seconds: what the test suite runs (writes nothing)
    python benchmarks/accuracy.py --suites fmnist-mlp --tune --jobs 2   # two runs at once, same numbers

``accuracy.json`` holds one entry per suite, each with its own date, machine and
command, so running one suite replaces that suite only. ``--render`` builds
``RESULTS.md`` from the JSON files alone (accuracy, ``speed.json``,
``peers/results/compare_pcx.json``): no number in it is typed by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import itertools
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from pclab import allocator
from pclab import data as data_lib
from pclab.engine import make_algorithm
from pclab.training import RunDiverged, TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper, also when loaded by path
from provenance import commit, cpu  # noqa: E402
from speed import compiled_label  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DATA_ROOT = REPO_ROOT.parent / "shared" / "datasets"
RESULTS_DIR = HERE / "results"
PEERS_RESULTS_DIR = HERE / "peers" / "results"
RESULTS_MD = HERE / "RESULTS.md"

ALGORITHMS = ("bp", "exact", "fpa", "pc", "incremental")
LR_GRID = (3e-4, 1e-3, 3e-3)
STEP_SIZE_FACTORS = (0.1, 0.3, 1.0)  # times the algorithm's default inference step size
WEIGHT_DECAY_GRID = (0.1, 0.3, 1.0)  # AdamW's decoupled decay (shrinks by lr x decay per step)
MAX_EDGE_STEPS = 2  # grid steps the tuning may walk past each edge of the grid
VALIDATION_FRACTION = 0.1
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class Suite:
    """One benchmark: a dataset, a model (one or more variants) and per-algorithm settings.

    ``config`` holds the :class:`TrainConfig` fields shared by every algorithm (anything
    left out is ``pclab train``'s default); ``per_algorithm`` overrides them for one
    algorithm. ``variants`` maps a label to the model options (several for depth sweeps).
    ``lr_grid`` and ``weight_decay_grid`` are what ``--tune`` searches: AdamW's by
    default; a suite on another optimizer needs the rates and decays that suit it.
    """

    data: str
    folder: str | None  # under the data root; None: the dataset needs no files (digits)
    model: str
    variants: dict[str, dict[str, Any]]
    algorithms: tuple[str, ...] = ALGORITHMS
    config: dict[str, Any] = field(default_factory=dict)
    per_algorithm: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""
    lr_grid: tuple[float, ...] = LR_GRID
    weight_decay_grid: tuple[float, ...] = WEIGHT_DECAY_GRID


MLP = {"width": 128, "depth": 2}  # 784-128-128-10 on 28x28 images; 64-128-128-10 on digits
RESIDUAL_MLPS = {f"residual mlp depth {d}": {"kind": "mlp", "depth": d, "width": 128} for d in (8, 32, 64)}
DEPTH = {"epochs": 10, "batch_size": 64, "train_size": 10000}
DEPTH_NOTE = ("residual MLPs of depth 8 / 32 / 64, pc against bp; a class-balanced 10,000-image subset "
              "of the training set, 10 epochs")

# The one table of hyperparameters. Empty config = `pclab train` defaults:
# AdamW lr 1e-3, batch 32, T = 20 inference steps, the algorithm's default step size, 30 epochs.
SUITES: dict[str, Suite] = {
    "digits-mlp": Suite("digits", None, "mlp", {"mlp 64-128-128-10": MLP},
                        note="scikit-learn digits, `pclab train` defaults"),
    "mnist-mlp": Suite("mnist", "mnist-10k", "mlp", {"mlp 784-128-128-10": MLP},
                       note="the MNIST subset in shared/datasets/mnist-10k"),
    "fmnist-mlp": Suite("fashion-mnist", "fashion-mnist", "mlp", {"mlp 784-128-128-10": MLP},
                        config={"epochs": 20, "batch_size": 64},
                        note="full Fashion-MNIST; 20 epochs (the per-epoch test accuracy in the "
                             "JSON shows where each algorithm plateaus)"),
    "fmnist-cnn": Suite("fashion-mnist", "fashion-mnist", "cnn",
                        {"vgg5 channels 16-32-32-32": {"variant": "vgg5", "channels": [16, 32, 32, 32]}},
                        config={"epochs": 10, "batch_size": 64, "train_size": 6000, "steps": 8},
                        note="small VGG-style CNN: pclab's vgg5 with 16-32-32-32 channels, the CNN of "
                             "speed.py; a class-balanced 6,000-image subset of the training set, 10 epochs, "
                             "T = 8 (what 2 cores allow: a full-data epoch of pc costs minutes here)"),
    "fmnist-depth": Suite("fashion-mnist", "fashion-mnist", "resnet", RESIDUAL_MLPS,
                          algorithms=("bp", "pc"), config=DEPTH, note=DEPTH_NOTE),
    # AdamW left depth-64 pc at chance on every setting tuned; SGD with momentum let it learn
    # outside the benchmark. L2 decay under momentum 0.9 shrinks weights by about
    # 10 x lr x decay a step, so these decays at lr 1e-2 shrink as AdamW's grid does at 1e-3.
    "fmnist-depth-sgd": Suite("fashion-mnist", "fashion-mnist", "resnet", RESIDUAL_MLPS,
                              algorithms=("bp", "pc"),
                              config={**DEPTH, "optimizer": "sgd", "momentum": 0.9},
                              note=DEPTH_NOTE + "; SGD with momentum 0.9 in place of AdamW",
                              lr_grid=(3e-3, 1e-2, 3e-2), weight_decay_grid=(1e-3, 3e-3, 1e-2)),
    # The suites above put pc's values at every layer, where a branch's output feeds every
    # later block and inference's stable step shrinks with depth (tests/test_value_nodes.py);
    # here each residual block is one unit, its value on the residual stream (as PCX and jpc).
    "fmnist-depth-blocks": Suite("fashion-mnist", "fashion-mnist", "resnet", RESIDUAL_MLPS,
                                 algorithms=("bp", "pc"), config={**DEPTH, "value_nodes": "blocks"},
                                 note=DEPTH_NOTE + "; pc's value nodes on the residual stream, one per block "
                                      "(`value_nodes: blocks`)"),
}
SMOKE = {"suite": "digits-mlp", "algorithms": ("bp", "pc"), "seeds": 1,
         "config": {"epochs": 1, "train_size": 200, "steps": 5}}


def suite_command(name: str) -> str:
    return f"python benchmarks/accuracy.py --suites {name}"


# --------------------------------------------------------------------------- running


def _data_dir(suite: Suite, root: Path) -> Path | None:
    return None if suite.folder is None else root / suite.folder


def _missing(suite: Suite, root: Path) -> str | None:
    folder = _data_dir(suite, root)
    if folder is None:
        return None
    absent = [f for f in _IDX_FILES if not (folder / f).is_file()]
    return f"{folder} lacks {', '.join(absent)}" if absent else None


def _config(suite: Suite, algorithm: str, variant: dict[str, Any], extra: dict[str, Any],
            data_dir: Path | None) -> TrainConfig:
    """The suite's table entry for ``algorithm``, then ``extra`` (command-line overrides) on top."""
    settings = {**suite.config, **suite.per_algorithm.get(algorithm, {}), **extra}
    return TrainConfig(data=suite.data, data_dir=str(data_dir) if data_dir else None, model=suite.model,
                       model_options=variant, algorithm=algorithm, device="cpu", **settings)


def _run_one(config: TrainConfig, dataset: data_lib.Dataset) -> dict[str, Any]:
    tick = time.perf_counter()
    # pclab's own warnings (e.g. pc's step size raising the energy) belong to the run's record.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            result = train(config, dataset=dataset)
        except RunDiverged as err:
            return {"test_accuracy": None, "diverged": str(err), "wall_s": time.perf_counter() - tick,
                    "warnings": _pclab_warnings(caught)}
    return {"warnings": _pclab_warnings(caught), "test_accuracy": result.final_test_accuracy,
            "test_loss": next((h.test_loss for h in reversed(result.history) if h.test_loss is not None), None),
            "test_accuracy_per_epoch": [h.test_accuracy for h in result.history],
            "train_loss_per_epoch": [h.train_loss for h in result.history],
            "seconds_per_epoch": result.seconds_per_epoch, "wall_s": time.perf_counter() - tick}


RunMany = Callable[[list[TrainConfig], data_lib.Dataset], Iterator[dict[str, Any]]]


def _serial(configs: list[TrainConfig], dataset: data_lib.Dataset) -> Iterator[dict[str, Any]]:
    return map(_run_one, configs, itertools.repeat(dataset))


@contextlib.contextmanager
def _runner(jobs: int) -> Iterator[RunMany]:
    """Runs configs on one dataset and yields their results in order, ``jobs`` at a time.

    Runs are independent and seeded, so a spawned process gives the numbers this one
    would (tested); with one torch thread each, ``jobs`` = cores keeps every core busy.
    """
    if jobs <= 1:
        yield _serial
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=allocator.retain_freed_memory) as pool:
        yield lambda configs, dataset: pool.map(_run_one, configs, itertools.repeat(dataset))


def _pclab_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return sorted({str(w.message) for w in caught
                   if issubclass(w.category, RuntimeWarning) and "pclab" in w.filename})


def tuning_grid(algorithm: str, steps: int, lrs: Sequence[float] = LR_GRID) -> list[dict[str, float]]:
    """The settings ``--tune`` tries for ``algorithm`` run with ``steps`` inference steps:
    lr from ``lrs``, and the step size where it has one."""
    if algorithm in ("bp", "exact"):  # exact's one sweep has step size 1 by definition
        return [{"lr": lr} for lr in lrs]
    default = make_algorithm(algorithm, 1, None).step_size
    per_update = steps if algorithm == "incremental" else 1  # optimizer steps per batch
    return [{"lr": round(lr / per_update, 12), "step_size": round(default * f, 12)}
            for lr in lrs for f in STEP_SIZE_FACTORS]


def weight_decay_grid(best: dict[str, float],
                      decays: Sequence[float] = WEIGHT_DECAY_GRID) -> list[dict[str, float]]:
    """The settings ``--tune`` tries second: ``decays`` at ``best``, the best point of
    :func:`tuning_grid` (which ran without decay).

    One knob at a time keeps the cost at three runs more per algorithm rather than three
    times as many. Decoupled decay shrinks weights by ``lr * decay`` per optimizer step,
    so incremental's T-times smaller rate over T times more steps decays a batch's
    weights as far as the other algorithms do: one grid serves all.
    """
    return [{**best, "weight_decay": wd} for wd in decays]


def _tune(suite: Suite, algorithm: str, variant: dict[str, Any], extra: dict[str, Any],
          data_dir: Path | None, val: data_lib.Dataset, log, run_many: RunMany = _serial,
          known: Scores | None = None,
          scored: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The point with the best validation accuracy (ties: the first evaluated); seed 0.

    :func:`tuning_grid` first, then :func:`weight_decay_grid` at its best point; each
    followed by :func:`beyond_edge` until the best point is inside what was evaluated
    (no decay stays the choice unless some decay scores higher). ``known`` maps
    :func:`_point` of a setting to its scores measured earlier with the same
    configuration; those settings are not rerun. ``scored`` gets an unfinished tuning
    record (``"partial": true``: every score so far, ``known``'s included) after each
    new score, so that a search of hours that stops resumes where it stopped.
    """
    known = dict(known or {})  # every score so far, by setting
    points: list[dict[str, float]] = []  # the settings in the order the search visited them
    reused: list[int] = []

    def score(point: dict[str, float]) -> float:
        accuracy = known[_point(point)][1]
        return accuracy if accuracy is not None else -1.0

    def search(base: list[dict[str, float]]) -> dict[str, float]:
        todo = base
        while todo:
            fresh = [p for p in todo if _point(p) not in known]
            configs = [_config(suite, algorithm, variant, {**extra, **p, "seed": 0}, data_dir) for p in fresh]
            results = iter(run_many(configs, val))  # in the order of ``fresh``, each as it finishes
            for point in todo:
                new = _point(point) not in known
                if new:
                    r = next(results)
                    known[_point(point)] = (point, r["test_accuracy"], r.get("test_accuracy_per_epoch"))
                else:
                    reused.append(len(points))
                points.append(point)
                log(f"  tune {algorithm} {_point(point)}: validation accuracy {_fmt(known[_point(point)][1])}"
                    + ("" if new else " (reused)"))
                if new and scored is not None:
                    scored(_partial(known))
            best = points[max(range(len(points)), key=lambda i: (score(points[i]), -i))]
            todo = beyond_edge(base, points, best)
        return best

    base = tuning_grid(algorithm, _config(suite, algorithm, variant, extra, data_dir).steps, suite.lr_grid)
    best = search(base)
    decay = weight_decay_grid(best, suite.weight_decay_grid)
    best = search(decay)
    _, accuracy, curve = known[_point(best)]
    rerun = curve is None and accuracy is not None
    if rerun:  # scored by an earlier run that kept only the final accuracy
        config = _config(suite, algorithm, variant, {**extra, **best, "seed": 0}, data_dir)
        curve = next(iter(run_many([config], val)))["test_accuracy_per_epoch"]
        known[_point(best)] = (best, accuracy, curve)
        log(f"  tune {algorithm} {_point(best)}: reran for its validation curve")
    return {"grid": points, "validation_accuracy": [known[_point(p)][1] for p in points],
            "validation_accuracy_per_epoch": [known[_point(p)][2] for p in points],
            "chosen": best, "base_grid_size": len(base) + len(decay), "reused": reused,
            "stop_epoch": stop_epoch(curve), "stop_epoch_curve_rerun": rerun}


def _partial(known: Scores) -> dict[str, Any]:
    """A tuning record of an unfinished search: its scores, in the shape :func:`_earlier_scores` reads."""
    grid, accuracy, curves = zip(*known.values())
    return {"partial": True, "grid": list(grid), "validation_accuracy": list(accuracy),
            "validation_accuracy_per_epoch": list(curves)}


def stop_epoch(curve: list[float | None] | None) -> int | None:
    """The first epoch (from 1) at which ``curve`` peaks; None for a run without one (diverged).

    Early stopping on validation: an algorithm that overfits is not charged for the
    epochs after its peak, and every algorithm gets the same rule.
    """
    scored = [acc for acc in curve or [] if acc is not None]
    return curve.index(max(scored)) + 1 if scored else None


def beyond_edge(base: list[dict[str, float]], evaluated: list[dict[str, float]],
                best: dict[str, float]) -> list[dict[str, float]]:
    """The settings one grid step past the edge ``best`` lies on, along each knob it lies
    there for, the other knobs as in ``best``; none once a knob has walked
    :data:`MAX_EDGE_STEPS` steps past ``base``'s edge or the point was evaluated.

    Grids are geometric, so a step is the ratio of the two values at that edge of ``base``.
    """
    seen = {_point(p) for p in evaluated}
    out = []
    for knob, value in best.items():
        grid = sorted({p[knob] for p in base})
        tried = sorted({p[knob] for p in evaluated if knob in p})  # the decay-free points lack weight_decay
        if len(grid) < 2:
            continue
        if value == tried[0]:
            ratio, beyond = grid[0] / grid[1], sum(v < grid[0] for v in tried)
        elif value == tried[-1]:
            ratio, beyond = grid[-1] / grid[-2], sum(v > grid[-1] for v in tried)
        else:
            continue
        point = {**best, knob: float(f"{value * ratio:.3g}")}
        if beyond < MAX_EDGE_STEPS and _point(point) not in seen:
            out.append(point)
    return out


def _point(point: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in point.items())


def run_suite(name: str, suite: Suite, *, seeds: list[int], algorithms: tuple[str, ...],
              extra: dict[str, Any], data_root: Path, tune: bool, meta: dict[str, Any] | None = None,
              save: Callable[[dict[str, Any]], None] | None = None, log=print,
              run_many: RunMany = _serial, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every (variant, algorithm, seed) of ``suite``; the entry ``accuracy.json`` holds for it.

    ``save`` gets the entry so far after every run, tuning runs included
    (``"complete": false`` until the last), so a run of hours that stops keeps what
    finished. ``earlier`` is this suite's entry from the results file: its tuning
    scores are reused where the table, data and validation split are the same.
    """
    data_dir = _data_dir(suite, data_root)
    # One class-balanced subset (data seed 0) for every run, so seeds vary only the training.
    dataset = data_lib.load(suite.data, data_dir, download=False,
                            train_size=extra.get("train_size", suite.config.get("train_size")))
    extra = {k: v for k, v in extra.items() if k != "train_size"}  # applied once, above
    val = split = None
    if tune:
        fit, val = data_lib.validation_split(dataset, VALIDATION_FRACTION, seed=0)
        split = {"fraction": VALIDATION_FRACTION, "seed": 0, "train": len(fit.y_train),
                 "validation": len(val.y_test)}
    runs: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    hyper: dict[str, Any] = {}
    entry = {**(meta or {}), "suite": name, "dataset": suite.data,
             "data_dir": str(data_dir) if data_dir else None,
             "train_examples": len(dataset.y_train), "test_examples": len(dataset.y_test),
             "model": suite.model, "note": suite.note, "seeds": seeds, "algorithms": list(algorithms),
             "tuned": tune, "tuning": tuning, "validation_split": split,
             "table_entry": {"config": suite.config, "per_algorithm": suite.per_algorithm,
                             "variants": suite.variants, "overrides": extra},
             "hyperparameters": hyper, "runs": runs, "summary": [], "complete": False}
    known = _earlier_scores(earlier, entry) if tune else {}
    for label, variant in suite.variants.items():
        for algorithm in algorithms:
            chosen = dict(extra)
            if tune:
                key = f"{label}/{algorithm}"

                def scored(partial: dict[str, Any], key: str = key) -> None:
                    tuning[key] = partial
                    if save is not None:
                        save(entry)
                tuning[key] = t = _tune(suite, algorithm, variant, extra, data_dir, val, log, run_many,
                                        known.get(key), scored)
                if t["reused"]:  # say which run measured them: it may have run older code
                    t["reused_from"] = _part_of(earlier, algorithm)
                chosen.update(t["chosen"])
                if t["stop_epoch"] is not None:
                    chosen["epochs"] = t["stop_epoch"]
            hyper[f"{label}/{algorithm}"] = _config(suite, algorithm, variant, chosen, data_dir).to_dict()
            configs = [_config(suite, algorithm, variant, {**chosen, "seed": seed}, data_dir) for seed in seeds]
            for seed, result in zip(seeds, run_many(configs, dataset)):
                run = {"variant": label, "algorithm": algorithm, "seed": seed, **result}
                runs.append(run)
                log(f"  {label:<22} {algorithm:<12} seed {seed}: test accuracy {_fmt(run['test_accuracy'])}"
                    f"  ({run['wall_s']:.1f} s)")
                entry["summary"] = summarise(runs)
                entry["complete"] = len(runs) == len(suite.variants) * len(algorithms) * len(seeds)
                if save is not None:
                    save(entry)
    return entry


# A setting's scores by its :func:`_point`: the setting, its final validation accuracy, its curve.
Scores = dict[str, tuple[dict[str, float], float | None, list[float] | None]]


def _earlier_scores(earlier: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Scores]:
    """Validation scores (final, and per epoch where recorded) per ``"<variant>/<algorithm>"``
    and setting from ``earlier``, when it was tuned on the same table, data and split
    as ``entry`` (seeds aside: tuning uses seed 0 alone)."""
    same = [k for k in _SAME_SUITE_KEYS if k != "seeds"] + ["validation_split"]
    if not earlier or any(earlier.get(k) != entry[k] for k in same):
        return {}
    return {key: {_point(p): (p, a, c) for p, a, c in
                  zip(t["grid"], t["validation_accuracy"],
                      t.get("validation_accuracy_per_epoch") or [None] * len(t["grid"]))}
            for key, t in earlier.get("tuning", {}).items()}


def _part_of(entry: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """Date, command and commit of the invocation that ran ``algorithm`` in ``entry``."""
    part = next((p for p in entry.get("parts") or [entry] if algorithm in p["algorithms"]), entry)
    return {k: part[k] for k in ("date", "command", "commit") if k in part}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std of the final test accuracy per (variant, algorithm); diverged runs counted apart."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        rows.setdefault((run["variant"], run["algorithm"]), []).append(run)
    out = []
    for (variant, algorithm), group in rows.items():
        accs = [r["test_accuracy"] for r in group if r["test_accuracy"] is not None]
        out.append({"variant": variant, "algorithm": algorithm, "n": len(accs),
                    "diverged": len(group) - len(accs),
                    "mean": statistics.fmean(accs) if accs else None,
                    "std": statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else None),
                    "test_loss_mean": statistics.fmean(r["test_loss"] for r in group
                                                       if r["test_accuracy"] is not None) if accs else None,
                    "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in group
                                                          if "seconds_per_epoch" in r) if accs else None})
    return out


def _fmt(acc: float | None) -> str:
    return "diverged" if acc is None else f"{acc:.4f}"


def _mean_std(row: dict[str, Any]) -> str:
    if row["mean"] is None:
        return f"diverged ({row['diverged']})"
    text = f"{row['mean']:.4f} ± {row['std']:.4f}"
    return text + (f" ({row['diverged']} diverged)" if row["diverged"] else "")


def table(entry: dict[str, Any]) -> str:
    head = f"{'variant':<24}{'algorithm':<13}{'test accuracy':>22}{'test loss':>11}{'n':>4}{'s/epoch':>10}"
    lines = [head, "-" * len(head)]
    for r in entry["summary"]:
        spe = f"{r['seconds_per_epoch']:.2f}" if r["seconds_per_epoch"] is not None else "-"
        loss = f"{r['test_loss_mean']:.4f}" if r["test_loss_mean"] is not None else "-"
        lines.append(f"{r['variant']:<24}{r['algorithm']:<13}{_mean_std(r).replace('±', '+-'):>22}"
                     f"{loss:>11}{r['n']:>4}{spe:>10}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"cpu": cpu(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _merge_into(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Write suite ``name``'s ``entry`` into ``path``, keeping the other suites.

    Runs of algorithms this invocation did not train are kept when the suite's table,
    seeds and tuning are unchanged, so ``--algorithms`` can split a long suite over
    several invocations (even concurrent ones: the read-merge-write holds a file lock).
    When they changed, the earlier runs no longer describe this suite and are dropped,
    with a note on stderr naming what changed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = json.loads(path.read_text()) if path.is_file() else {"suites": {}}
        merged["suites"][name] = _merge_entry(merged["suites"].get(name), entry)
        _atomic_write_text(path, json.dumps(merged, indent=1) + "\n")


_SAME_SUITE_KEYS = ("seeds", "table_entry", "tuned", "train_examples", "test_examples")
_PART_KEYS = ("algorithms", "date", "machine", "command", "commit")  # what each invocation records
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _suite_key(entry: dict[str, Any], key: str) -> Any:
    """``entry[key]``, with command-line overrides that equal ``pclab train``'s default
    left out: they change no setting, whether or not the invocation that wrote the entry
    recorded them (``--threads 1`` did while 1 was not the default)."""
    value = entry.get(key)
    if key != "table_entry" or value is None:
        return value
    overrides = {k: v for k, v in value.get("overrides", {}).items() if _DEFAULTS.get(k, MISSING) != v}
    return {**value, "overrides": overrides}


def _merge_entry(current: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any]:
    part = {k: entry[k] for k in _PART_KEYS if k in entry}
    mine = set(entry["algorithms"])
    kept = [] if current is None else [r for r in current["runs"] if r["algorithm"] not in mine]
    changed = [] if current is None else \
        [k for k in _SAME_SUITE_KEYS if _suite_key(current, k) != _suite_key(entry, k)]
    if kept and changed:
        print(f"note: suite {entry['suite']}: {', '.join(changed)} changed since its earlier runs, so those of "
              f"{', '.join(sorted({r['algorithm'] for r in kept}))} no longer describe it and are dropped; "
              "rerun them", file=sys.stderr)
    if not kept or changed:
        return {**entry, "parts": [part]}
    order = {a: i for i, a in enumerate(ALGORITHMS)}
    variants = list(entry["table_entry"]["variants"])
    runs = sorted(kept + entry["runs"], key=lambda r: (variants.index(r["variant"]), order[r["algorithm"]], r["seed"]))
    algorithms = sorted(mine | {r["algorithm"] for r in kept}, key=order.__getitem__)
    def others(table: dict[str, Any]) -> dict[str, Any]:  # keys are "<variant>/<algorithm>"
        return {k: v for k, v in table.items() if k.rsplit("/", 1)[1] not in mine}
    earlier = current.get("parts") or [{k: current[k] for k in _PART_KEYS if k in current}]
    parts = [{**p, "algorithms": [a for a in p["algorithms"] if a not in mine]}
             for p in earlier if set(p["algorithms"]) - mine]
    return {**entry, "algorithms": algorithms, "runs": runs, "summary": summarise(runs),
            "hyperparameters": {**others(current["hyperparameters"]), **entry["hyperparameters"]},
            "tuning": {**others(current["tuning"]), **entry["tuning"]},
            "complete": len(runs) == len(variants) * len(algorithms) * len(entry["seeds"]),
            "parts": [*parts, part]}


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- rendering


def render(results_dir: Path, peers_dir: Path | None = None) -> str:
    """RESULTS.md from every JSON in ``results_dir`` (and the PCX comparison in ``peers_dir``)."""
    lines = ["# Benchmark results", "",
             "Generated by `python benchmarks/accuracy.py --render` from the JSON files in "
             "`benchmarks/results/` and `benchmarks/peers/results/compare_pcx.json`; do not edit by hand. "
             "Each section names the machine, the command and the date of the run it shows.", ""]
    suites_done: set[str] = set()
    for path in sorted(results_dir.glob("accuracy*.json")):
        report = json.loads(path.read_text())
        for name, entry in report.get("suites", {}).items():
            suites_done.add(name)
            lines += _render_accuracy(name, entry, path.name)
    lines += ["## Accuracy suites not yet run here", ""]
    missing = [name for name in SUITES if name not in suites_done]
    if missing:
        lines += ["Commands to run them (from the repository root):", ""]
        lines += [f"- `{name}`: `{suite_command(name)}` ({SUITES[name].note})" for name in missing]
    else:
        lines.append("None.")
    lines.append("")
    # speed.json: the full table; speed-<name>.json: later re-measurements of a subset (--models).
    for speed in sorted(results_dir.glob("speed*.json"), key=lambda f: (f.name != "speed.json", f.name)):
        lines += _render_speed(json.loads(speed.read_text()), speed.name)
    # compare_pcx.json: unpinned; compare_pcx_cores<N>.json: both libraries on the same N cores.
    for pcx in sorted(peers_dir.glob("compare_pcx*.json")) if peers_dir is not None else []:
        if not pcx.stem.endswith("_smoke"):
            lines += _render_pcx(json.loads(pcx.read_text()), pcx.name)
    return "\n".join(lines).rstrip() + "\n"


def _machine_line(m: dict[str, Any]) -> str:
    parts = [m.get("cpu") or m.get("cpu_model"), f"{m.get('cores') or m.get('nproc')} cores"]
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    if m.get("torch_threads"):
        parts.append(f"{m['torch_threads']} torch threads")
    if m.get("gpu"):
        parts.append(f"GPU: {m['gpu']}")
    if m.get("heap"):
        parts.append(f"heap: {m['heap']}")
    if m.get("loadavg_1_5_15"):
        parts.append(f"load average at the start {' / '.join(f'{x:.2f}' for x in m['loadavg_1_5_15'])}")
    return ", ".join(str(p) for p in parts if p)


def _provenance(entry: dict[str, Any]) -> list[str]:
    parts = entry.get("parts") or [entry]
    def code(p):
        return f"; commit {p['commit']}" if p.get("commit") else ""
    if len(parts) == 1:
        return [f"- date: {entry['date']}{code(entry)}; machine: {_machine_line(entry['machine'])}",
                f"- command (from the repository root): `{entry['command']}`"]
    return ["- run in parts (from the repository root):",
            *(f"  - {', '.join(p['algorithms'])}: `{p['command']}`; date: {p['date']}{code(p)}; "
              f"machine: {_machine_line(p['machine'])}" for p in parts)]


def _render_accuracy(name: str, entry: dict[str, Any], source: str) -> list[str]:
    hyper = entry["hyperparameters"]
    any_cfg = next(iter(hyper.values()), None)  # None: every algorithm is still tuning
    shared = {k: any_cfg[k] for k in ("epochs", "batch_size", "optimizer", "lr", "steps", "step_size",
                                      "weight_decay", "loss", "threads")} if any_cfg else {}
    varying = {k for cfg in hyper.values() for k in shared if cfg[k] != shared[k]}
    shown = ", ".join(f"{k} {'the algorithm default' if v is None else v}" for k, v in shared.items()
                      if k not in varying) or "none chosen yet"
    status = [] if entry.get("complete", True) else [
        f"- **incomplete**: {len(entry['runs'])} of "
        f"{len(entry['table_entry']['variants']) * len(entry['algorithms']) * len(entry['seeds'])} runs "
        f"finished; rerun the command to complete it"]
    lines = [f"## Accuracy: `{name}`, {'tuned on validation' if entry['tuned'] else 'fixed hyperparameters'}",
             "", *status,
             f"- {entry['note']}; {entry['train_examples']} train / {entry['test_examples']} test examples, "
             f"seeds {', '.join(map(str, entry['seeds']))}",
             *_provenance(entry),
             f"- settings: {shown}" + (f"; per algorithm: {', '.join(sorted(varying))}" if varying else ""),
             *_tuning_lines(entry),
             f"- source: `benchmarks/results/{source}` (every run, full config per algorithm)", "",
             "| model | algorithm | final test accuracy (mean ± std) | per seed | final test loss (mean) "
             "| runs | s/epoch |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in entry["summary"]:
        spe = f"{r['seconds_per_epoch']:.2f}" if r["seconds_per_epoch"] is not None else "-"
        loss = f"{r['test_loss_mean']:.4f}" if r.get("test_loss_mean") is not None else "-"
        per_seed = ", ".join(_fmt(run["test_accuracy"]) for run in entry["runs"]
                             if (run["variant"], run["algorithm"]) == (r["variant"], r["algorithm"]))
        lines.append(f"| {r['variant']} | {r['algorithm']} | {_mean_std(r)} | {per_seed} | {loss} | {r['n']} "
                     f"| {spe} |")
    warned = [f"{r['variant']} / {r['algorithm']} seed {r['seed']}" for r in entry["runs"] if r.get("warnings")]
    if warned:
        lines += ["", f"Runs in which pclab warned (the messages are in the JSON): {', '.join(warned)}."]
    lines += ["", "Accuracy and loss are those of the last epoch on the test set; std is the sample standard "
              "deviation over seeds. s/epoch is the mean training time of an epoch as the machine was loaded "
              "during the run (shared machines vary); `speed.json` is the controlled timing.", ""]
    return lines


def _tuning_lines(entry: dict[str, Any]) -> list[str]:
    if not entry["tuned"]:
        return ["- hyperparameters: fixed (the table's, no tuning)"]
    split = entry["validation_split"]
    return [f"- tuned per algorithm on a validation split of the training set ({split['train']} train / "
            f"{split['validation']} validation, seed {split['seed']}); the test set was not looked at:",
            *(f"  - {key}: {_outcome(t)} (validation accuracy "
              f"{', '.join(f'{_point(p)}: {_fmt(a)}' for p, a in zip(t['grid'], t['validation_accuracy']))})"
              for key, t in entry["tuning"].items())]


def _outcome(tuning: dict[str, Any]) -> str:
    if tuning.get("partial"):
        return f"tuning unfinished, {len(tuning['grid'])} settings scored so far"
    return (f"chose {_point(tuning['chosen'])} from {len(tuning['grid'])} settings"
            f"{_searched(tuning)}{_stopped(tuning)}")


def _stopped(tuning: dict[str, Any]) -> str:
    """Where the chosen setting's validation curve peaked, for entries tuned with early stopping."""
    if tuning.get("stop_epoch") is None:
        return ""
    curve = tuning["validation_accuracy_per_epoch"][tuning["grid"].index(tuning["chosen"])]
    rerun = ", its curve from a rerun of that setting" if tuning.get("stop_epoch_curve_rerun") else ""
    return (f", and {tuning['stop_epoch']} epochs: its validation accuracy peaked there "
            f"({_fmt(curve[tuning['stop_epoch'] - 1])}, against {_fmt(curve[-1])} after all {len(curve)}{rerun})")


def _searched(tuning: dict[str, Any]) -> str:
    """How the settings were found, for entries tuned past the grid's edge or with reused scores."""
    base = tuning.get("base_grid_size", len(tuning["grid"]))
    parts = [f"the grid's {base}, then {len(tuning['grid']) - base} past its edge"] if len(tuning["grid"]) > base else []
    if tuning.get("reused"):
        source = tuning.get("reused_from", {})
        when = f" of {source['date']}" + (f", commit {source['commit']}" if source.get("commit") else "") \
            if source.get("date") else ""
        parts.append(f"{len(tuning['reused'])} scores reused from the results file's earlier run{when}")
    return f" ({'; '.join(parts)})" if parts else ""


def _render_speed(report: dict[str, Any], source: str) -> list[str]:
    models = sorted({r["model"] for r in report["rows"]})
    timed = any("ms_per_step" in r for r in report["rows"])
    counted = any("ops_vs_bp" in r for r in report["rows"])  # speed.py counts them since 2026-12-05
    subset = [", ".join(models), "re-measured" if timed else "peak memory re-measured, no timings"]
    if report["machine"].get("heap") == "glibc defaults":  # speed.py --default-malloc
        subset.append("glibc's default heap")
    gpu = report["machine"].get("gpu")  # speed.py --device cuda: a table of its own, not a re-measured subset
    heading = (f"## Speed on the GPU ({gpu}): one training step against backprop, batch {report['batch']}"
               if gpu else "## Speed: one training step against backprop"
               + ("" if source == "speed.json" else f" ({', '.join(subset)})"))
    lines = [heading, "",
             f"- date: {report['date']}" + (f"; commit {report['commit']}" if report.get("commit") else "")
             + f"; machine: {_machine_line(report['machine'])}",
             f"- command: `python benchmarks/{report['command']}`, batch {report['batch']}",
             f"- source: `benchmarks/results/{source}`",
             *(["- timings synchronize the GPU; peak memory is CUDA's allocator peak during a step beyond "
                "what was allocated before it"] if gpu else []), "",
             "| model | algorithm | T | compiled | ms/step | × bp | × budget | budget | peak memory × bp "
             "| × eager bp |" + (" ops × bp | host reads |" if counted else ""),
             "| --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |" + (" ---: | ---: |" if counted else "")]
    for r in report["rows"]:
        def num(key):
            v = r.get(key)
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
        lines.append(f"| {r['model']} | {r['algorithm']} | {r['T'] or ''} | {compiled_label(r.get('compiled'))} "
                     f"| {num('ms_per_step')} | {num('vs_bp')} | {num('vs_budget')} | {r.get('budget', '')} "
                     f"| {num('peak_memory_vs_bp')} | {num('vs_eager_bp')} |"
                     + (f" {num('ops_vs_bp')} | {r.get('host_reads', '-')} |" if counted else ""))
    lines += ["", "× bp and × budget compare with backprop and the budgets measured in the same mode "
              "(compiled rows against compiled backprop); × eager bp compares a compiled row with plain "
              "eager backprop. Budgets: `fwd + T bwd` for fpa, `T (fwd+bwd)` (+ one optimizer step) "
              "for pc, `T bp` for incremental (it steps the optimizer at each of its T ticks)."
              + (" ops × bp counts the aten ops a step dispatches (forward, backward, optimizer step, "
                 "bookkeeping) against backprop's; host reads count the values a step copies to Python "
                 "(each waits for a GPU to finish its queue), the optimizer's CPU step counters left out."
                 if counted else ""), ""]
    return lines


def _render_pcx(report: dict[str, Any], source: str) -> list[str]:
    cores = report.get("cores")
    lines = ["## PCX (JAX) against pclab: PC MLP on Fashion-MNIST"
             + (f", both on {cores} core{'s' if cores > 1 else ''}" if cores else ""), "",
             f"- date (UTC): {report['date_utc']}; machine: {_machine_line(report['machine'])}",
             f"- command: `{report['command']}`",
             f"- cores: {f'both pinned to cores 0-{cores - 1} (CPU affinity)' if cores else 'unpinned: XLA uses every core, pclab its torch threads'}; "
             f"pclab torch threads: {report['versions']['torch_threads']}",
             f"- source: `benchmarks/peers/results/{source}`", "",
             "| | PCX (JAX) | pclab (torch) |", "| --- | --- | --- |"]
    lines += [f"| {k.strip()} | {a} | {b} |" for k, a, b in report["table"]]
    lines.append("")
    return lines


# --------------------------------------------------------------------------- main


def _only_variants(suite: Suite, wanted: list[str], parser: argparse.ArgumentParser) -> Suite:
    """``suite`` with only the ``wanted`` model variants; its note says so."""
    unknown = [v for v in wanted if v not in suite.variants]
    if unknown:
        parser.error(f"--variants: {unknown[0]!r} is not a variant of the suite; valid: {', '.join(suite.variants)}")
    return replace(suite, variants={v: suite.variants[v] for v in suite.variants if v in wanted},
                   note=f"{suite.note}; only {', '.join(v for v in suite.variants if v in wanted)} here (--variants)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default="digits-mlp",
                        help=f"comma-separated, or 'all' ({', '.join(SUITES)})")
    parser.add_argument("--algorithms", default=None, help="comma-separated subset of the suite's algorithms")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of one suite's model variants (e.g. 'residual mlp depth 8'); "
                             "the entry then describes that subset (use its own --json: merged into a file "
                             "holding the whole suite, it would replace it)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=None, help="override the table's epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each in its own process (tuning points and seeds; "
                             "results are the same as with 1)")
    parser.add_argument("--compile", action="store_true",
                        help="compile=True for every algorithm with a compiled path (same numbers, faster)")
    parser.add_argument("--compile-per-tick", action="store_true",
                        help="compile='tick': each inference tick its own program (pc; compiling deep models "
                             "takes a fraction of the time and memory)")
    parser.add_argument("--tune", action="store_true",
                        help=f"pick lr per algorithm from the suite's grid ({LR_GRID} for AdamW; divided by T "
                             f"for incremental) and the inference step size from {STEP_SIZE_FACTORS} x its "
                             f"default, on a validation split of train; then the weight decay from the "
                             f"suite's grid ({WEIGHT_DECAY_GRID} for AdamW) or none at "
                             "the best of those; then the epoch count at which that setting's validation "
                             "accuracy peaked")
    parser.add_argument("--retune", action="store_true",
                        help="with --tune: rerun every setting, even those the results file already scored")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help=f"default: {DATA_ROOT}")
    parser.add_argument("--json", type=Path, default=None,
                        help="results file, merged per suite (default: benchmarks/results/accuracy.json; "
                             "--smoke writes nothing unless given)")
    parser.add_argument("--smoke", action="store_true", help="tiny run (seconds) for the test suite")
    parser.add_argument("--render", action="store_true", help="write RESULTS.md from the JSON results and stop")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where --render reads")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_RESULTS_DIR, help="where --render finds compare_pcx.json")
    parser.add_argument("--out", type=Path, default=RESULTS_MD, help="where --render writes")
    args = parser.parse_args(argv)

    if args.render:
        text = render(args.results_dir, args.peers_dir)
        _atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
        return {"markdown": text}

    allocator.retain_freed_memory()  # as `pclab train` does: same numbers, fewer page faults
    command = shlex.join(["python", "benchmarks/accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    extra: dict[str, Any] = {}
    if args.smoke:
        names, seeds = [SMOKE["suite"]], list(range(SMOKE["seeds"]))
        extra.update(SMOKE["config"])
    else:
        names = list(SUITES) if args.suites == "all" else args.suites.split(",")
        seeds = list(range(args.seeds))
    if not seeds:
        parser.error("--seeds must be at least 1")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}; valid suites: {', '.join(SUITES)}")
    if args.epochs is not None:
        extra["epochs"] = args.epochs
    if args.threads is not None and args.threads != TrainConfig.threads:
        extra["threads"] = args.threads  # the default left out, so runs with and without the flag merge
    if args.compile or args.compile_per_tick:
        extra["compile"] = "tick" if args.compile_per_tick else True

    suites = {name: SUITES[name] for name in names}
    if args.variants:
        if len(names) != 1:
            parser.error(f"--variants picks variants of one suite; --suites names {len(names)}")
        suites[names[0]] = _only_variants(suites[names[0]], args.variants.split(","), parser)
    chosen = {}  # checked for every suite before any runs
    for name in names:
        suite = suites[name]
        chosen[name] = (tuple(args.algorithms.split(",")) if args.algorithms
                        else SMOKE["algorithms"] if args.smoke else suite.algorithms)
        if not set(chosen[name]) <= set(suite.algorithms):
            parser.error(f"--algorithms {args.algorithms!r}: suite {name} runs {', '.join(suite.algorithms)}")

    json_path = args.json if args.json is not None or args.smoke else RESULTS_DIR / "accuracy.json"
    report: dict[str, Any] = {"suites": {}, "skipped": {}}
    with _runner(args.jobs) as run_many:
        for name in names:
            suite = suites[name]
            missing = _missing(suite, args.data_root)
            if missing:
                print(f"skipping {name}: {missing} (pass --data-root)", flush=True)
                report["skipped"][name] = missing
                continue
            algorithms = chosen[name]
            print(f"{name}: {', '.join(algorithms)} x {len(seeds)} seed(s)", flush=True)
            started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            meta = {"date": started, "machine": machine(), "command": command, "commit": commit()}
            save = None if json_path is None else (lambda entry, name=name: _merge_into(json_path, name, entry))
            earlier = None if args.retune or json_path is None or not json_path.is_file() else \
                json.loads(json_path.read_text())["suites"].get(name)
            entry = run_suite(name, suite, seeds=seeds, algorithms=algorithms, extra=extra,
                              data_root=args.data_root, tune=args.tune, meta=meta, save=save,
                              log=lambda s: print(s, flush=True), run_many=run_many, earlier=earlier)
            report["suites"][name] = entry
            print(table(entry), flush=True)
            if json_path is not None:
                print(f"wrote {json_path}", flush=True)
    return report


if __name__ == "__main__":
    main()
