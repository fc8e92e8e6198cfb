r"""``pclab sample-efficiency``: the catapult recipe vs the standard recipe on small data.

The question: does a hugely overparameterised network, trained with a learning
rate above the stability edge :math:`2/\lambda_0` and strong weight decay,
generalise better from few examples than a standard network trained the standard
way, and can it be distilled into a small network that keeps the gain? For each
training-set size ``N`` (class-balanced subsets, several seeds) and each algorithm
(bp and the PC algorithms, through the same loop):

* ``standard``: a ``width``-wide, ``depth``-deep sigmoid MLP (784-32-32-10, the
  network of Song et al. 2024), AdamW without weight decay, mini-batches, MSE loss;
* ``catapult``: the same depth ``width_multiplier`` times wider, with
  ``catapult_activation`` (ReLU by default: the catapult mechanism is a property of
  ReLU and linear nets; a wide sigmoid net measured here has a sharpness near 136,
  dominated by the mean direction of its all-positive hidden units, which
  forces a learning rate too small to train in the step budget), full-batch SGD
  at :math:`\eta = c \cdot 2/\lambda_0` (``c > 1``, :math:`\lambda_0` the
  training-loss sharpness at initialisation, :mod:`.sharpness`), strong decoupled
  weight decay, trained long;
* ``student``: the standard network trained as in ``standard`` but on the
  catapult net's outputs (its soft targets) for the same ``N`` inputs, plus
  ``unlabelled`` further training inputs whose labels are never read (0: none).
  Its settings are fixed, not tuned: MSE on the teacher's raw outputs (no
  temperature) at the standard learning rate; no validation split chooses them,
  and the summary says so.

Every run records test accuracy along training: the final value (the honest
number) and the best (what Song et al. report, "minimum test error"). Anchor:
Song, Millidge, Salvatori, Lukasiewicz, Xu & Bogacz (2024), "Inferring neural
activity before plasticity as a foundation for learning beyond backpropagation",
Nature Neuroscience; their Fashion-MNIST data-efficiency figure (784-32-32-10
sigmoid MLP) gives the minimum test errors in :data:`SONG_2024`. The ``song``
preset (:data:`SONG`) reproduces that row: the standard recipe only, bp and pc,
at their examples per class, headlined by the minimum test error and set next
to their values.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from torch import Tensor, nn

from . import common
from .common import fmt, require, table
from .sharpness import top_eigenvalue
from .sweep import artifact, execution_only, run_sweep
from .sweep import results as flat_results
from .training import Recipe, accuracy, load_data, loss_fn, train

RECIPES = ("standard", "catapult", "student")
# What the headline table and the plot show: the final test accuracy (the honest
# number), or the minimum test error over training (Song et al.'s measure, which
# picks its step on the test set and so flatters every method alike).
METRICS = ("final_accuracy", "min_test_error")

# Minimum test error of a 784-32-32-10 sigmoid MLP on Fashion-MNIST per examples per
# class, prospective configuration (standard PC) vs backprop, read off Song et al.
# (2024)'s figure: {examples per class: (pc, bp)}. Literature values, not measured here.
SONG_2024: dict[int, tuple[float, float]] = {
    60: (0.25, 0.27), 300: (0.178, 0.182), 600: (0.166, 0.166), 3000: (0.150, 0.138),
    6000: (0.145, 0.128)}


@dataclass(frozen=True)
class SampleEfficiencyConfig:
    """The sweep: sizes x recipes x algorithms x seeds.

    Standard recipe: AdamW ``lr``, ``batch_size``, ``max(min_steps, epochs * N /
    batch_size)`` steps, at most ``max_steps`` (0: no cap). Catapult recipe: ``width_multiplier`` times wider,
    full-batch SGD at ``catapult_c * 2 / lambda0`` with decoupled weight decay
    ``catapult_weight_decay`` for ``catapult_steps`` steps (mini-batches of
    ``catapult_batch`` when N exceeds it). Student: the standard recipe on the
    catapult net's outputs, for N + ``unlabelled`` inputs. Test accuracy is
    measured at ``eval_points`` evenly spaced steps on ``test_size`` images (0: all).
    ``loss`` is the standard recipe's (the catapult net and the student regress
    with MSE). ``metric`` (one of :data:`METRICS`) heads the summary and the plot;
    ``anchor`` sets every row of :data:`SONG_2024` in the summary, run or not.
    """

    sizes: tuple[int, ...] = (100, 300, 600, 1000, 3000, 6000)
    recipes: tuple[str, ...] = RECIPES
    algorithms: tuple[str, ...] = ("bp", "pc")
    seeds: tuple[int, ...] = (0, 1, 2)
    width: int = 32
    depth: int = 2
    activation: str = "sigmoid"
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 50
    min_steps: int = 1000
    max_steps: int = 0
    width_multiplier: int = 16
    catapult_activation: str = "relu"
    catapult_c: float = 2.0
    catapult_weight_decay: float = 0.005
    catapult_steps: int = 3000
    catapult_batch: int = 2000
    unlabelled: int = 0
    eval_points: int = 20
    test_size: int = 0
    pc_steps: int = 20
    pc_step_size: float = 0.1
    loss: str = "mse"
    metric: str = "final_accuracy"
    anchor: bool = False
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    compile: bool = False
    device: str = "auto"

    def validate(self, available: int | None = None) -> None:
        """Raise :class:`ConfigError` naming the first bad field (``available``: training images)."""
        common.check_positive(self.sizes, "sizes", integer=True)
        for n in self.sizes:
            require(n >= 10, f"--sizes: {n} is below one example per class (10)")
            if available is not None:
                require(n <= available, f"--sizes: N = {n} is larger than the {available} training "
                        f"images of {self.dataset}")
        if available is not None:
            require(self.unlabelled <= available, f"--unlabelled {self.unlabelled} is larger than the "
                    f"{available} training images")
        require(len(self.recipes) > 0, "--recipes is empty; give e.g. standard,catapult,student")
        for r in self.recipes:
            require(r in RECIPES, f"unknown recipe {r!r}; valid: {', '.join(RECIPES)}")
        common.check_algorithms(self.algorithms)
        require(len(self.seeds) > 0, "no seeds: --num-seeds must be >= 1")
        for name in ("width", "depth", "batch_size", "epochs", "width_multiplier", "catapult_steps",
                     "eval_points"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1; got {getattr(self, name)}")
        from pclab.models import Activation

        for name in ("activation", "catapult_activation"):
            require(getattr(self, name) in typing.get_args(Activation),
                    f"{name} must be one of {typing.get_args(Activation)}; got {getattr(self, name)!r}")
        require(self.catapult_c > 0 and math.isfinite(self.catapult_c), f"--catapult-c must be > 0; got {self.catapult_c}")
        require(self.catapult_weight_decay >= 0, "--catapult-weight-decay must be >= 0")
        require(self.lr > 0 and self.min_steps >= 0 and self.unlabelled >= 0 and self.test_size >= 0
                and self.catapult_batch >= 0 and self.max_steps >= 0,
                "lr > 0; min_steps, max_steps, unlabelled, test_size, catapult_batch >= 0")
        require(self.max_steps == 0 or self.max_steps >= self.min_steps,
                f"--max-steps {self.max_steps} is below --min-steps {self.min_steps}; raise it, or 0 for no cap")
        common.check_pc(self.pc_steps, self.pc_step_size)
        require(self.loss in ("mse", "ce"), f"loss must be 'mse' or 'ce'; got {self.loss!r}")
        require(self.metric in METRICS, f"metric must be one of {METRICS}; got {self.metric!r}")
        common.check_device(self.device)
        if self.anchor:
            require(self.dataset == "fashion-mnist", "the Song et al. anchor is measured on Fashion-MNIST; "
                    f"this run would use {self.dataset}. Pass --data-dir <folder with the Fashion-MNIST IDX files>")
            require("standard" in self.recipes, "the Song et al. anchor compares the standard recipe; "
                    "add 'standard' to --recipes")


FULL = SampleEfficiencyConfig()
QUICK = SampleEfficiencyConfig(sizes=(100, 300), seeds=(0,), epochs=20, min_steps=300,
                               catapult_steps=200, eval_points=10, test_size=2000, pc_steps=8)
# Song et al.'s row: their net and measure at their examples per class (N = 10 x that),
# on our recipe (AdamW, batch 32, MSE; their own tuned schedule is not reproduced).
# Dense evaluation, since the measure is a minimum over training; 4,000 steps at least
# because at 60 per class 1,000 steps (53 epochs) left the test error still falling
# (measured, docs/lab-results/song-anchor-1000-steps).
SONG = dataclasses.replace(FULL, sizes=tuple(10 * k for k in SONG_2024), recipes=("standard",),
                           min_steps=4000, eval_points=50, metric="min_test_error", anchor=True)
PRESETS = {"full": FULL, "quick": QUICK, "song": SONG}


@dataclass(frozen=True)
class _Data:
    size: int
    seed: int
    test_size: int
    dataset: str
    data_dir: str | None
    compile: bool = execution_only(False)
    device: str = execution_only("auto")


@dataclass(frozen=True)
class StandardRun(_Data):
    algorithm: str
    width: int
    depth: int
    activation: str
    lr: float
    batch_size: int
    steps: int
    eval_points: int
    pc_steps: int
    pc_step_size: float
    loss: str

    @property
    def label(self) -> str:
        return f"standard-{self.algorithm}-n{self.size}-s{self.seed}"


@dataclass(frozen=True)
class CatapultRun(_Data):
    algorithm: str
    width: int
    depth: int
    activation: str
    c: float
    weight_decay: float
    steps: int
    batch_size: int
    unlabelled: int
    eval_points: int
    pc_steps: int
    pc_step_size: float

    @property
    def label(self) -> str:
        return f"catapult-{self.algorithm}-n{self.size}-s{self.seed}"


@dataclass(frozen=True)
class StudentRun(StandardRun):
    teacher_id: str
    unlabelled: int
    # Where the teacher's outputs lie, which moves with the sweep's folder; the teacher
    # itself is pinned by teacher_id.
    teacher_file: str = execution_only("")

    @property
    def label(self) -> str:
        return f"student-{self.algorithm}-n{self.size}-u{self.unlabelled}-s{self.seed}"


def _data(config: SampleEfficiencyConfig, n: int, seed: int) -> dict:
    return {"size": n, "seed": seed, "test_size": config.test_size, "dataset": config.dataset,
            "data_dir": config.data_dir, "compile": config.compile, "device": config.device}


def standard_steps(config: SampleEfficiencyConfig, examples: int) -> int:
    """Steps of the standard recipe (and the student) on ``examples`` inputs."""
    steps = max(config.min_steps, math.ceil(config.epochs * examples / config.batch_size))
    return min(steps, config.max_steps) if config.max_steps else steps


def teacher_runs(config: SampleEfficiencyConfig) -> list[CatapultRun]:
    """The catapult runs: the recipe itself, and the teachers of the students."""
    if not {"catapult", "student"} & set(config.recipes):
        return []
    return [CatapultRun(**_data(config, n, s), algorithm=a, width=config.width * config.width_multiplier,
                        depth=config.depth, activation=config.catapult_activation, c=config.catapult_c,
                        weight_decay=config.catapult_weight_decay, steps=config.catapult_steps,
                        batch_size=config.catapult_batch,
                        unlabelled=config.unlabelled if "student" in config.recipes else 0,
                        eval_points=config.eval_points, pc_steps=config.pc_steps,
                        pc_step_size=config.pc_step_size)
            for a in config.algorithms for n in config.sizes for s in config.seeds]


def standard_runs(config: SampleEfficiencyConfig) -> list[StandardRun]:
    if "standard" not in config.recipes:
        return []
    return [StandardRun(**_data(config, n, s), algorithm=a, width=config.width, depth=config.depth,
                        activation=config.activation, lr=config.lr, batch_size=config.batch_size,
                        steps=standard_steps(config, n), eval_points=config.eval_points,
                        pc_steps=config.pc_steps, pc_step_size=config.pc_step_size, loss=config.loss)
            for a in config.algorithms for n in config.sizes for s in config.seeds]


def student_runs(config: SampleEfficiencyConfig, teachers: list[dict], out: Path) -> list[StudentRun]:
    if "student" not in config.recipes:
        return []
    students = []
    for record in teachers:
        t = record["config"]
        students.append(StudentRun(
            size=t["size"], seed=t["seed"], test_size=t["test_size"], dataset=t["dataset"],
            data_dir=t["data_dir"], compile=config.compile, device=config.device, algorithm=t["algorithm"],
            width=config.width,
            depth=config.depth, activation=config.activation, lr=config.lr, batch_size=config.batch_size,
            steps=standard_steps(config, t["size"] + config.unlabelled), eval_points=config.eval_points,
            pc_steps=config.pc_steps, pc_step_size=config.pc_step_size, loss="mse", teacher_id=record["id"],
            teacher_file=str(artifact(out, record, "outputs").resolve())
            if "artifacts" in record["result"] else "", unlabelled=config.unlabelled))
    return students


# -------------------------------------------------------------------------- runs


def _split(run: _Data) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[int, ...], int]:
    """The run's training and test tensors, on the device it trains on."""
    data = load_data(run.dataset, run.data_dir, run.size, 0.0, run.seed)
    xt, yt = data.x_test, data.y_test
    if run.test_size:
        xt, yt = xt[:run.test_size], yt[:run.test_size]
    device = common.device(run.device)
    x, y, xt, yt = (t.to(device) for t in (data.x_train, data.y_train, xt, yt))
    return x, y, xt, yt, data.input_shape, data.num_classes


def unlabelled_inputs(run: _Data, count: int) -> Tensor:
    """``count`` training images drawn at random (seeded by the run's seed); labels never read.

    Drawn from the whole training set, so a few may coincide with the labelled ones.
    """
    if count == 0:
        return torch.empty(0)
    full = load_data(run.dataset, run.data_dir)
    rng = np.random.default_rng((run.seed, 7919))
    idx = torch.from_numpy(rng.choice(len(full.y_train), size=count, replace=False))
    return full.x_train[idx]


def _mlp(shape: tuple[int, ...], classes: int, width: int, depth: int, activation: str) -> nn.Module:
    from pclab.models import build

    return build("mlp", input_shape=shape, num_classes=classes, width=width, depth=depth,
                 activation=activation)


def _fit(model: nn.Module, recipe: Recipe, x: Tensor, targets: Tensor, xt: Tensor, yt: Tensor,
         eval_points: int, seed: int) -> dict:
    every = max(1, recipe.steps // eval_points)

    def evaluate(step: int) -> dict:
        return {"test_acc": accuracy(model, xt, yt)}

    history = train(model, recipe, x, targets, seed=seed,
                    eval_steps=range(every, recipe.steps, every), evaluate=evaluate)
    accs = [e["test_acc"] for e in history.evals]
    return {"test_acc": accs[-1] if accs and not history.diverged else math.nan,
            "best_test_acc": max(accs) if accs else math.nan, "evals": history.evals,
            "final_train_loss": history.loss[-1] if history.loss else math.nan,
            "steps": len(history.loss), "diverged": history.diverged, "reason": history.reason,
            "energy_rises": history.energy_rises, "params": sum(p.numel() for p in model.parameters())}


def run_standard(run: StandardRun) -> dict:
    x, y, xt, yt, shape, classes = _split(run)
    torch.manual_seed(run.seed)
    model = _mlp(shape, classes, run.width, run.depth, run.activation).to(x.device)
    recipe = Recipe(algorithm=run.algorithm, loss=run.loss, optimizer="adamw", lr=run.lr,
                    weight_decay=0.0, steps=run.steps, batch_size=run.batch_size,
                    pc_steps=run.pc_steps, pc_step_size=run.pc_step_size, compile=run.compile)
    result = _fit(model, recipe, x, y, xt, yt, run.eval_points, run.seed)
    return {"recipe": "standard", **result, "train_acc": accuracy(model, x, y),
            "device": common.device_name(x.device)}


def run_catapult(run: CatapultRun) -> dict:
    x, y, xt, yt, shape, classes = _split(run)
    torch.manual_seed(run.seed)
    model = _mlp(shape, classes, run.width, run.depth, run.activation).to(x.device)
    lam0 = top_eigenvalue(model, loss_fn("mse"), x, y, seed=run.seed).value
    lr = run.c * 2 / lam0
    batch = 0 if run.batch_size == 0 or len(y) <= run.batch_size else run.batch_size
    recipe = Recipe(algorithm=run.algorithm, loss="mse", optimizer="sgd", lr=lr,
                    weight_decay=run.weight_decay, steps=run.steps, batch_size=batch,
                    pc_steps=run.pc_steps, pc_step_size=run.pc_step_size, compile=run.compile)
    result = _fit(model, recipe, x, y, xt, yt, run.eval_points, run.seed)
    out = {"recipe": "catapult", "lambda0": lam0, "lr": lr, **result,
           "train_acc": accuracy(model, x, y), "device": common.device_name(x.device)}
    if not result["diverged"]:
        inputs = torch.cat([x, unlabelled_inputs(run, run.unlabelled).to(x.device)]) if run.unlabelled else x
        with torch.no_grad():  # on the CPU: the file is read wherever the student runs
            out["artifacts"] = {"outputs": model(inputs).cpu()}
    return out


def run_student(run: StudentRun) -> dict:
    x, y, xt, yt, shape, classes = _split(run)
    if not run.teacher_file:
        return {"recipe": "student", "test_acc": math.nan, "best_test_acc": math.nan, "diverged": True,
                "reason": "the teacher diverged: nothing to distil", "evals": []}
    soft = torch.load(run.teacher_file).to(x.device)
    inputs = torch.cat([x, unlabelled_inputs(run, run.unlabelled).to(x.device)]) if run.unlabelled else x
    if soft.shape != (len(inputs), classes):
        raise ValueError(f"teacher outputs {run.teacher_file} have shape {tuple(soft.shape)}, expected "
                         f"{(len(inputs), classes)}: the teacher was run with other data; delete it and rerun")
    torch.manual_seed(run.seed)
    model = _mlp(shape, classes, run.width, run.depth, run.activation).to(x.device)
    recipe = Recipe(algorithm=run.algorithm, loss=run.loss, optimizer="adamw", lr=run.lr, steps=run.steps,
                    batch_size=run.batch_size, pc_steps=run.pc_steps, pc_step_size=run.pc_step_size,
                    compile=run.compile)
    result = _fit(model, recipe, inputs, soft, xt, yt, run.eval_points, run.seed)
    teacher_agreement = float((model(x).argmax(1) == soft[:len(x)].argmax(1)).double().mean())
    return {"recipe": "student", **result, "train_acc": accuracy(model, x, y),
            "teacher_agreement": teacher_agreement, "device": common.device_name(x.device)}


def run_one(run: StandardRun | CatapultRun | StudentRun) -> dict:
    if isinstance(run, StudentRun):
        return run_student(run)
    if isinstance(run, CatapultRun):
        return run_catapult(run)
    return run_standard(run)


def run(config: SampleEfficiencyConfig, out: Path, *, workers: int = 2, ray: bool = False,
        ray_address: str | None = None, progress: bool = True) -> list[dict]:
    """Phase 1: standard and catapult runs; phase 2: the students of the catapult runs."""
    config.validate()
    score = lambda r: r.get("test_acc", math.nan)  # noqa: E731
    first = sorted(teacher_runs(config), key=lambda r: -r.size) + standard_runs(config)
    records = run_sweep(run_one, first, out, workers=workers, ray=ray, ray_address=ray_address,
                        score=score, desc="sample efficiency: standard + catapult (best test acc)",
                        progress=progress)
    teachers = [r for r in records if r["config_type"] == "CatapultRun"]
    lost = [r for r in teachers if "artifacts" in r["result"] and not artifact(out, r, "outputs").exists()]
    if lost:  # a teacher's outputs went missing: run those teachers again
        for r in lost:
            (out / "runs" / f"{r['id']}.json").unlink()
        records = run_sweep(run_one, first, out, workers=workers, ray=ray, ray_address=ray_address,
                            score=score, desc="sample efficiency: lost teachers", progress=progress)
        teachers = [r for r in records if r["config_type"] == "CatapultRun"]
    students = student_runs(config, teachers, out)
    if students:
        records += run_sweep(run_one, students, out, workers=workers, ray=ray, ray_address=ray_address,
                             score=score, desc="sample efficiency: students (best test acc)",
                             progress=progress)
    if "catapult" not in config.recipes:
        records = [r for r in records if r["config_type"] != "CatapultRun"]
    return common.write_outputs(out, config, records, summarise, plot)


# ---------------------------------------------------------------------- summary


def analyse(records: list[dict]) -> dict:
    """Per (recipe, algorithm, N): final and best test accuracy and the minimum test error
    (mean, std over seeds), wall time."""
    rows = flat_results(records)
    wall = {r["id"]: r["wall_s"] for r in rows}
    out = {}
    for key, rs in sorted(common.group(rows, "recipe", "algorithm", "size").items()):
        acc, acc_std = common.mean_std([r["test_acc"] for r in rs])
        best, best_std = common.mean_std([r["best_test_acc"] for r in rs])
        min_err, min_err_std = common.mean_std([1 - r["best_test_acc"] for r in rs])
        at_end = sum(_best_step(r) == r["steps"] for r in rs)
        own = statistics.fmean(r["wall_s"] for r in rs)
        teacher = statistics.fmean(wall.get(r.get("teacher_id"), math.nan) for r in rs) \
            if key[0] == "student" else 0.0
        out[key] = {"acc": acc, "acc_std": acc_std, "best": best, "best_std": best_std,
                    "min_err": min_err, "min_err_std": min_err_std, "min_at_end": at_end,
                    "wall_s": own, "total_wall_s": own + teacher, "seeds": len(rs),
                    "finite": sum(math.isfinite(r["test_acc"]) for r in rs),
                    "params": rs[0].get("params", math.nan), "steps": max(r.get("steps", 0) for r in rs)}
    return out


def _best_step(row: dict) -> int | None:
    """The step of the best test accuracy (the first, on ties)."""
    evals = [e for e in row.get("evals", []) if math.isfinite(e["test_acc"])]
    return max(evals, key=lambda e: e["test_acc"])["step"] if evals else None


def summarise(records: list[dict], config: SampleEfficiencyConfig) -> str:
    """``summary.md``: the recipes, tables per N (``config.metric`` first), the measured
    answers and, where comparable, Song et al.'s row; every number from ``records``."""
    if not records:
        return "# Sample efficiency\n\nNo runs.\n"
    a = analyse(records)
    rows = flat_results(records)
    sizes = sorted({k[2] for k in a})
    recipes = [r for r in RECIPES if any(k[0] == r for k in a)]
    algorithms = [x for x in config.algorithms if any(k[1] == x for k in a)]
    columns = [(r, alg) for r in recipes for alg in algorithms]
    header = ["N", *[f"{r} {alg}" for r, alg in columns]]

    def grid(key: str) -> str:
        return table(header, [[n, *[_cell(a.get((r, alg, n)), key) for r, alg in columns]] for n in sizes])

    lam = [r["lambda0"] for r in rows if r["recipe"] == "catapult"]
    lines = [
        "# Sample efficiency: catapult recipe vs standard recipe, backprop vs predictive coding", "",
        f"{config.dataset}, class-balanced training subsets, seeds {list(config.seeds)}, test accuracy on "
        f"{config.test_size or 'all'} test images at {config.eval_points} evenly spaced steps; mean ± std over "
        f"seeds. PC: {config.pc_steps} inference steps of size {config.pc_step_size}.", "",
        f"- standard: {config.width}x{config.depth} {config.activation} MLP, AdamW lr {config.lr}, batch "
        f"{config.batch_size}, max({config.min_steps}, {config.epochs} epochs) steps"
        + (f" capped at {config.max_steps}" if config.max_steps else "") + f", {config.loss} loss."]
    if "catapult" in recipes or "student" in recipes:
        lines.append(
            f"- catapult: {config.width * config.width_multiplier}x{config.depth} {config.catapult_activation} "
            f"MLP (x{config.width_multiplier} wider), SGD at lr = {config.catapult_c:g} * 2/lambda0 (lambda0 "
            "measured per run" + (f", {fmt(min(lam), 3)} to {fmt(max(lam), 3)}" if lam else "")
            + f"), decoupled weight decay {config.catapult_weight_decay:g}, {config.catapult_steps} steps, "
            f"full batch up to {config.catapult_batch} examples.")
    if "student" in recipes:
        lines.append(
            "- student: the standard net on the catapult net's outputs for the N inputs"
            + (f" plus {config.unlabelled} unlabelled training inputs" if config.unlabelled else "")
            + f". Fixed, not tuned: MSE regression on the teacher's raw outputs (no temperature), the "
            f"standard lr {config.lr}, batch and step rule; no validation split chooses them.")
    final = ["## Final test accuracy", "", grid("acc"), ""]
    minimum = ["## Minimum test error over training (Song et al.'s measure: its step is chosen on the "
               "test set)", "", grid("min_err"), ""]
    lines += ["", *(minimum + final if config.metric == "min_test_error" else final + minimum),
              "## Wall time per run (s; student: own + its teacher's)", "",
              table(header, [[n, *[fmt(a[(r, alg, n)]["total_wall_s"], 1) if (r, alg, n) in a else "-"
                                   for r, alg in columns]] for n in sizes]), ""]
    answers = _answers(a, sizes, algorithms)
    if answers:
        lines += ["## Measured answers", "", *answers, ""]
    if _song_comparable(config):
        lines += _anchor(a, config)
    lines += ["Plot: `sample_efficiency.png`.", ""]
    return "\n".join(lines)


def _answers(a: dict, sizes: list[int], algorithms: list[str]) -> list[str]:
    """Catapult and student minus standard (final test accuracy), per algorithm."""
    lines = []
    for alg in algorithms:
        for other in ("catapult", "student"):
            diffs = [(n, a[(other, alg, n)], a[("standard", alg, n)]) for n in sizes
                     if (other, alg, n) in a and ("standard", alg, n) in a]
            if not diffs:
                continue
            wins = [(n, o["acc"] - s["acc"], math.hypot(o["acc_std"], s["acc_std"]), o["total_wall_s"] / s["wall_s"])
                    for n, o, s in diffs if math.isfinite(o["acc"]) and math.isfinite(s["acc"])]
            better = [w for w in wins if w[1] > 0]
            clear = [w for w in better if w[1] > w[2] > 0]
            text = "; ".join(f"N={n}: {d:+.3f}" + (f" (± {e:.3f})" if e > 0 else "")
                             + f", {c:.1f}x the wall time" for n, d, e, c in wins)
            lines.append(f"- {alg}, {other} - standard (final test accuracy): {text or 'no finite pair'}. "
                         f"Better at {len(better)} of {len(wins)} sizes"
                         + (f", by more than the seed spread at N = {[w[0] for w in clear]}." if clear else "."))
    return lines


def _song_comparable(config: SampleEfficiencyConfig) -> bool:
    """The anchor preset, or a sweep whose standard recipe is Song et al.'s net at one of their sizes."""
    if config.anchor:
        return True
    return (config.dataset == "fashion-mnist" and "standard" in config.recipes
            and (config.width, config.depth, config.activation) == (32, 2, "sigmoid")
            and any(10 * k in config.sizes for k in SONG_2024))


def _anchor(a: dict, config: SampleEfficiencyConfig) -> list[str]:
    """Song et al.'s row next to the measured minimum test errors, with what was not run."""
    rows, run, agree = [], [], []
    for per_class, (song_pc, song_bp) in SONG_2024.items():
        n = 10 * per_class  # Fashion-MNIST's ten classes
        bp, pc = a.get(("standard", "bp", n)), a.get(("standard", "pc", n))
        measured = pc["min_err"] - bp["min_err"] if bp and pc else math.nan
        if bp or pc:
            run.append(per_class)
        if math.isfinite(measured) and song_pc != song_bp:
            agree.append((per_class, (measured < 0) == (song_pc < song_bp), abs(measured), abs(song_pc - song_bp)))
        ran = [v for v in (bp, pc) if v]
        seeds = max((v["seeds"] for v in ran), default=0)
        rows.append([per_class, n, _cell(bp, "min_err") if bp else "not run", song_bp,
                     _cell(pc, "min_err") if pc else "not run", song_pc,
                     "-" if math.isnan(measured) else f"{measured:+.3f}", f"{song_pc - song_bp:+.3f}",
                     seeds or "-", standard_steps(config, n) if seeds else "-",
                     f"{sum(v['min_at_end'] for v in ran)} of {sum(v['seeds'] for v in ran)}" if ran else "-"])
    not_run = [k for k in SONG_2024 if k not in run]
    lines = ["## Anchor: Song et al. (2024), minimum test error of the 784-32-32-10 sigmoid MLP", "",
             table(["examples/class", "N", "measured bp", "Song bp", "measured pc", "Song pc",
                    "measured pc - bp", "Song pc - bp", "seeds", "steps", "runs at minimum when stopped"],
                   rows), "",
             f"Run at {run or 'no'} examples per class; not run: {not_run or 'none'}. Measured: 1 - the best "
             "test accuracy over training, mean ± std over seeds; Song et al.'s values are read off their "
             "figure and come from their own tuned schedule, which this recipe does not reproduce. A run 'at "
             "minimum when stopped' had its lowest test error at the last evaluation: it was still improving, "
             "so its minimum is an upper bound."]
    if agree:
        lines.append(f"The sign of pc - bp matches Song et al.'s at {sum(a[1] for a in agree)} of {len(agree)} "
                     f"sizes where they differ ({', '.join(f'{a[0]}/class: ' + ('yes' if a[1] else 'no') for a in agree)}); "
                     f"the measured |pc - bp| there is at most {max(a[2] for a in agree):.3f}, theirs at least "
                     f"{min(a[3] for a in agree):.3f}.")
    return lines + [""]


def _cell(v: dict | None, key: str) -> str:
    if v is None:
        return "-"
    mean, std = v[key], v[f"{key}_std"]
    note = "" if v["finite"] == v["seeds"] else f" ({v['seeds'] - v['finite']} diverged)"
    spread = f" ± {fmt(std, 3)}" if v["finite"] > 1 else ""
    return f"{fmt(mean, 3)}{spread}{note}"


# ------------------------------------------------------------------------ plots


def plot(records: list[dict], config: SampleEfficiencyConfig, out: Path) -> list[Path]:
    """``sample_efficiency.png``: ``config.metric`` and wall time vs N, every recipe and algorithm."""
    plt = common.pyplot()
    a = analyse(records)
    if not a:
        return []
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"standard": "o-", "catapult": "s--", "student": "^:"}
    key, label = (("min_err", "minimum test error over training") if config.metric == "min_test_error"
                  else ("acc", "final test accuracy"))
    for recipe in RECIPES:
        for alg in config.algorithms:
            pts = sorted((n, v) for (r, al, n), v in a.items() if r == recipe and al == alg)
            if not pts:
                continue
            ns = [p[0] for p in pts]
            ax.errorbar(ns, [p[1][key] for p in pts], yerr=[p[1][f"{key}_std"] for p in pts],
                        fmt=styles[recipe], capsize=3, label=f"{recipe} {alg}")
            ax_t.plot(ns, [p[1]["total_wall_s"] for p in pts], styles[recipe], label=f"{recipe} {alg}")
    if key == "min_err" and _song_comparable(config):
        shown = [k for k in SONG_2024 if 10 * k in config.sizes]
        for i, alg in enumerate(("pc", "bp")):
            ax.plot([10 * k for k in shown], [SONG_2024[k][i] for k in shown], "x", ms=8,
                    label=f"Song et al. {alg}")
    ax.set_xscale("log")
    ax.set_xlabel("training examples N")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    ax_t.set_xscale("log")
    ax_t.set_yscale("log")
    ax_t.set_xlabel("training examples N")
    ax_t.set_ylabel("wall time per run (s)")
    fig.tight_layout()
    return [common.save_figure(fig, out / "sample_efficiency.png")]


# ---------------------------------------------------------------------- command


def command(
    quick: common.Quick = False,
    preset: Annotated[str, typer.Option(help="full, quick (= --quick) or song: Song et al. 2024's row "
                                        "(784-32-32-10 sigmoid MLP, bp vs pc, minimum test error).")] = "",
    algorithms: common.Algorithms = "bp,pc",
    sizes: Annotated[str, typer.Option(help="Comma-separated training-set sizes N (song: 10 x examples per class).")] = "",
    recipes: Annotated[str, typer.Option(help="Comma-separated: standard, catapult, student.")] = "",
    epochs: Annotated[int, typer.Option(help="Epochs of the standard recipe (0: the preset's).")] = 0,
    min_steps: Annotated[int, typer.Option(help="Fewest steps of the standard recipe (-1: the preset's).")] = -1,
    max_steps: Annotated[int, typer.Option(help="Most steps of the standard recipe (0: no cap; -1: the preset's).")] = -1,
    unlabelled: Annotated[int, typer.Option(help="Also distil on this many unlabelled training inputs (-1: the preset's).")] = -1,
    width_multiplier: Annotated[int, typer.Option(help="How many times wider the catapult net is (0: the preset's).")] = 0,
    catapult_c: Annotated[float, typer.Option(help="Catapult lr as a multiple of 2/lambda0 (0: the preset's).")] = 0.0,
    catapult_weight_decay: Annotated[float, typer.Option(help="Decoupled weight decay of the catapult net (-1: the preset's).")] = -1.0,
    catapult_steps: Annotated[int, typer.Option(help="Steps of the catapult net (0: the preset's).")] = 0,
    pc_steps: common.PcSteps = 0,
    pc_step_size: common.PcStepSize = 0.0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/sample-efficiency"),
    compile: common.Compile = False,
    device: common.Device = "auto",
    data_dir: common.DataDir = None,
    workers: common.Workers = 2,
    ray: common.Ray = False,
    ray_address: common.RayAddress = "",
    seed: common.Seed = 0,
    num_seeds: common.NumSeeds = 0,
    progress: common.Progress = True,
) -> None:
    """Test accuracy vs N: standard net, wide catapult-recipe net, and its distilled student; bp vs PC."""
    common.execute(make_config, run, **locals())


def make_config(*, quick: bool = False, preset: str = "", algorithms: str = "bp,pc", sizes: str = "",
                recipes: str = "", epochs: int = 0, min_steps: int = -1, max_steps: int = -1,
                unlabelled: int = -1, width_multiplier: int = 0,
                catapult_c: float = 0.0, catapult_weight_decay: float = -1.0, catapult_steps: int = 0,
                pc_steps: int = 0, pc_step_size: float = 0.0, data_dir: Path | str | None = None, seed: int = 0,
                num_seeds: int = 0, compile: bool = False, device: str = "auto") -> SampleEfficiencyConfig:
    """The preset (``preset``, or ``quick``) with the command line's overrides, checked
    (raises :class:`ConfigError`)."""
    name = preset or ("quick" if quick else "full")
    require(name in PRESETS, f"--preset {preset!r} is unknown; valid: {', '.join(PRESETS)}")
    require(not (quick and name != "quick"), f"--quick and --preset {preset} disagree; give one of them")
    data, available = common.image_data(data_dir)
    config = common.configure(
        PRESETS[name], algorithms=algorithms, seed=seed, num_seeds=num_seeds, compile=compile, device=device,
        **data,
        sizes=common.parse_list(sizes, int, "sizes") if sizes else None,
        recipes=common.parse_list(recipes, str, "recipes") if recipes else None, epochs=epochs or None,
        min_steps=None if min_steps == -1 else min_steps, max_steps=None if max_steps == -1 else max_steps,
        unlabelled=None if unlabelled == -1 else unlabelled, width_multiplier=width_multiplier or None,
        catapult_c=catapult_c or None,
        catapult_weight_decay=None if catapult_weight_decay == -1.0 else catapult_weight_decay,
        catapult_steps=catapult_steps or None, pc_steps=pc_steps or None, pc_step_size=pc_step_size or None)
    config.validate(available=available)
    return config
