r"""``pclab catapult``: learning-rate regimes of wide networks (Lewkowycz et al. 2020).

Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari (2020), "The large learning rate
phase of deep learning: the catapult mechanism". Full-batch gradient descent on the
MSE loss of a wide network with sharpness :math:`\lambda_0` (top Hessian eigenvalue
at initialisation) falls into three regimes by its learning rate
:math:`\eta = c \cdot 2/\lambda_0`:

* lazy, :math:`c < 1`: the loss falls monotonically and the network stays close to
  its linearisation;
* catapult, :math:`1 < c < c_\max`: the loss first grows, the sharpness falls
  until it is below :math:`2/\eta`, then the loss falls ("catapulted" to a flatter
  region); :math:`c_\max = 2` for their two-layer linear model, about 6 for
  ReLU networks in their experiments;
* divergent beyond.

Each run here builds a ``depth``-hidden-layer ReLU MLP (2 layers of weights for
``depth=1``), measures :math:`\lambda_0` on the training set (:mod:`.sharpness`),
trains with SGD at :math:`\eta = 2c/\lambda_0` on the full batch, records the loss
and weight norm at every step and the sharpness at steps 1, 2, 4, ... and every
``sharpness_every`` steps, and is classified by :func:`classify`. PC runs use the
same :math:`\eta` from the same training-loss Hessian: the question is whether
predictive coding's weight update, which is not the gradient, sees the same
thresholds.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import torch
import typer

from . import common
from .common import fmt, require, table
from .sharpness import top_eigenvalue
from .sweep import results as flat_results
from .sweep import execution_only, run_sweep
from .training import (Recipe, accuracy, eval_schedule, load_data, loss_fn, mean_loss,
                       train)

Regime = Literal["lazy", "catapult", "unsettled", "divergent"]
REGIMES: tuple[Regime, ...] = ("lazy", "catapult", "unsettled", "divergent")
COLOURS = {"lazy": "#4c72b0", "catapult": "#55a868", "unsettled": "#dd8452", "divergent": "#c44e52"}


@dataclass(frozen=True)
class CatapultConfig:
    """The sweep: every width x c x algorithm x seed.

    ``depth`` hidden ReLU layers of each width; ``train_size`` class-balanced
    training images; ``steps`` full-batch SGD steps at ``lr = c * 2 / lambda0``;
    ``test_size`` test images for the accuracy (0: all). With ``match_lazy_time``
    a run with ``c < 1`` takes ``round(steps / c)`` steps, so that every run
    travels at least the "physical time" ``lr * steps`` of a ``c = 1`` run:
    otherwise the lazy runs would look worse only for having moved less.
    """

    widths: tuple[int, ...] = (256, 1024, 2048)
    cs: tuple[float, ...] = (0.5, 0.9, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)
    algorithms: tuple[str, ...] = ("bp", "pc")
    seeds: tuple[int, ...] = (0, 1)
    train_size: int = 1000
    test_size: int = 0
    steps: int = 1000
    sharpness_every: int = 100
    depth: int = 1
    pc_steps: int = 20
    pc_step_size: float = 0.1
    match_lazy_time: bool = True
    compile: bool = False
    device: str = "auto"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None

    def validate(self, available: int | None = None) -> None:
        common.check_positive(self.widths, "widths", integer=True)
        common.check_positive(self.cs, "cs")
        common.check_algorithms(self.algorithms)
        require(len(self.seeds) > 0, "no seeds: --num-seeds must be >= 1")
        require(self.train_size >= 10, f"--train-size must be >= 10 (one per class); got {self.train_size}")
        if available is not None:
            require(self.train_size <= available,
                    f"--train-size {self.train_size} is larger than the {available} training "
                    f"images of {self.dataset}")
        require(self.steps >= 1, f"--steps must be >= 1; got {self.steps}")
        require(self.sharpness_every >= 1, f"--sharpness-every must be >= 1; got {self.sharpness_every}")
        require(self.depth >= 1, f"depth must be >= 1; got {self.depth}")
        common.check_pc(self.pc_steps, self.pc_step_size)
        require(self.test_size >= 0, f"--test-size must be >= 0; got {self.test_size}")
        common.check_device(self.device)


FULL = CatapultConfig()
QUICK = CatapultConfig(widths=(64, 256), cs=(0.5, 1.5, 3.0, 8.0, 24.0), seeds=(0,), train_size=400,
                       test_size=2000, steps=200, sharpness_every=50, pc_steps=8)


@dataclass(frozen=True)
class CatapultRun:
    """One run: a width, a learning-rate multiple ``c``, an algorithm and a seed."""

    width: int
    c: float
    algorithm: str
    seed: int
    train_size: int
    test_size: int
    steps: int
    sharpness_every: int
    depth: int
    pc_steps: int
    pc_step_size: float
    dataset: str
    data_dir: str | None
    compile: bool = execution_only(False)
    device: str = execution_only("auto")

    @property
    def label(self) -> str:
        return f"{self.algorithm}-w{self.width}-c{self.c:g}-s{self.seed}"


def runs(config: CatapultConfig) -> list[CatapultRun]:
    return [CatapultRun(width=w, c=c, algorithm=a, seed=s, train_size=config.train_size,
                        test_size=config.test_size,
                        steps=round(config.steps / c) if config.match_lazy_time and c < 1 else config.steps,
                        sharpness_every=config.sharpness_every, depth=config.depth,
                        pc_steps=config.pc_steps, pc_step_size=config.pc_step_size,
                        dataset=config.dataset, data_dir=config.data_dir, compile=config.compile,
                        device=config.device)
            for a in config.algorithms for w in config.widths for c in config.cs for s in config.seeds]


def classify(loss: Sequence[float], sharpness: Sequence[tuple[int, float]], lr: float, *,
             diverged: bool, baseline: float, tol: float = 0.01, settle: float = 0.25,
             collapse: float = 0.1) -> Regime:
    """The regime of one run from its loss curve and sharpness measurements.

    * ``divergent``: training stopped on a non-finite or exploding loss, or the final
      loss is above the initial loss or within ``collapse`` (relative) of
      ``baseline``, the best constant output's loss: the net learnt next to
      nothing (at huge learning rates its ReLUs die in the spike);
    * ``lazy``: the loss never rose by more than ``tol`` (relative) from one step
      to the next;
    * ``catapult``: it rose, ended below its start, and some sharpness measured at
      or after the loss peak is below ``(1 + settle) * 2 / lr``;
    * ``unsettled``: it rose and fell but the sharpness stayed above that.

    ``sharpness`` holds ``(step, value)`` pairs; ``loss[t]`` is the loss before step ``t``.
    """
    if diverged or not loss or not all(math.isfinite(v) for v in loss):
        return "divergent"
    final = loss[-1]
    if final >= loss[0] or final >= (1 - collapse) * baseline:
        return "divergent"
    if all(b <= a * (1 + tol) for a, b in zip(loss, loss[1:])):
        return "lazy"
    peak = max(range(len(loss)), key=loss.__getitem__)
    after = [v for step, v in sharpness if step >= peak and math.isfinite(v)]
    if after and min(after) <= (1 + settle) * 2 / lr:
        return "catapult"
    return "unsettled"


def constant_baseline(y: torch.Tensor, num_classes: int) -> float:
    """MSE loss (``0.5 |onehot - p|^2``, batch mean) of the best constant output ``p = class frequencies``."""
    onehot = torch.nn.functional.one_hot(y, num_classes).double()
    return float(0.5 * (onehot - onehot.mean(0)).pow(2).sum(1).mean())


def run_one(run: CatapultRun) -> dict:
    """Measure lambda0, train at ``lr = 2c/lambda0``, measure sharpness along the way."""
    from pclab.models import build

    device = common.device(run.device)
    data = load_data(run.dataset, run.data_dir, run.train_size, 0.0, run.seed)
    x_test, y_test = data.x_test, data.y_test
    if run.test_size:
        x_test, y_test = x_test[:run.test_size], y_test[:run.test_size]
    x, y, x_test, y_test = (t.to(device) for t in (data.x_train, data.y_train, x_test, y_test))
    torch.manual_seed(run.seed)
    model = build("mlp", input_shape=data.input_shape, num_classes=data.num_classes,
                  width=run.width, depth=run.depth, activation="relu").to(device)
    mse = loss_fn("mse")
    first = top_eigenvalue(model, mse, x, y, seed=run.seed)
    lam0 = first.value
    lr = run.c * 2.0 / lam0
    state = {"vector": first.vector}

    def evaluate(step: int) -> dict:
        if step == 0:
            return {"sharpness": lam0, "train_acc": accuracy(model, x, y)}
        s = top_eigenvalue(model, mse, x, y, init=state["vector"], iterations=40, tol=1e-2,
                           seed=run.seed)
        state["vector"] = s.vector
        return {"sharpness": s.value, "train_acc": accuracy(model, x, y)}

    recipe = Recipe(algorithm=run.algorithm, loss="mse", optimizer="sgd", lr=lr, steps=run.steps,
                    pc_steps=run.pc_steps, pc_step_size=run.pc_step_size, compile=run.compile)
    history = train(model, recipe, x, y, seed=run.seed,
                    eval_steps=eval_schedule(run.steps, run.sharpness_every),
                    evaluate=evaluate, blowup=1e6)
    baseline = constant_baseline(y, data.num_classes)
    sharp = [(row["step"], row["sharpness"]) for row in history.evals]
    regime = classify(history.loss, sharp, lr, diverged=history.diverged, baseline=baseline)
    final_loss = mean_loss(model, "mse", x, y) if not history.diverged else math.inf
    return {
        "lambda0": lam0, "lambda0_products": first.products, "lr": lr, "two_over_lr": 2.0 / lr,
        "regime": regime, "baseline_loss": baseline,
        "initial_loss": history.loss[0] if history.loss else math.nan,
        "peak_loss": max(history.loss) if history.loss else math.nan,
        "final_loss": final_loss,
        "final_sharpness": sharp[-1][1] if sharp and not history.diverged else math.nan,
        "min_sharpness_after_peak": _min_after_peak(history.loss, sharp),
        "train_acc": accuracy(model, x, y) if not history.diverged else math.nan,
        "test_acc": accuracy(model, x_test, y_test) if not history.diverged else math.nan,
        "dataset": data.name, "device": common.device_name(device), **history.as_dict(),
    }


def _min_after_peak(loss: Sequence[float], sharp: Sequence[tuple[int, float]]) -> float:
    if not loss:
        return math.nan
    peak = max(range(len(loss)), key=loss.__getitem__)
    after = [v for step, v in sharp if step >= peak and math.isfinite(v)]
    return min(after) if after else math.nan


def run(config: CatapultConfig, out: Path, *, workers: int = 2, ray: bool = False,
        ray_address: str | None = None, progress: bool = True) -> list[dict]:
    """Run (or resume) the sweep into ``out`` and write the plots and summary; return the records."""
    config.validate()
    records = run_sweep(run_one, runs(config), out, workers=workers, ray=ray,
                        ray_address=ray_address, score=lambda r: r.get("test_acc", math.nan),
                        desc="catapult (best test acc)", progress=progress)
    return common.write_outputs(out, config, records, summarise, plot)


# ---------------------------------------------------------------------- summary


def majority(regimes: Sequence[str]) -> str:
    """The most common regime; ties go to the earlier one in :data:`REGIMES`."""
    counts = Counter(regimes)
    return max(REGIMES, key=lambda r: (counts[r], -REGIMES.index(r)))


def analyse(records: list[dict]) -> dict:
    """The numbers the summary states, computed from the raw records."""
    rows = flat_results(records)
    out: dict = {"lambda0": {}, "regimes": {}, "spike_height": {}, "c_max": {}, "first_divergent": {},
                 "spike": {}, "settle": {}, "help": {}}
    for (w,), group in sorted(common.group(rows, "width").items()):
        out["lambda0"][w] = statistics.fmean(r["lambda0"] for r in group)
    for (a, w), group in sorted(common.group(rows, "algorithm", "width").items()):
        by_c = common.group(group, "c")
        regimes = {c: majority([r["regime"] for r in rs]) for (c,), rs in sorted(by_c.items())}
        out["regimes"][(a, w)] = regimes
        out["spike_height"][(a, w)] = {c: statistics.fmean(r["peak_loss"] / r["initial_loss"] for r in rs)
                                       for (c,), rs in sorted(by_c.items())}
        ok = [c for c, reg in regimes.items() if reg != "divergent"]
        bad = [c for c, reg in regimes.items() if reg == "divergent"]
        out["c_max"][(a, w)] = max(ok) if ok else math.nan
        out["first_divergent"][(a, w)] = min(bad) if bad else math.nan
    for (a,), group in sorted(common.group(rows, "algorithm").items()):
        above = [r for r in group if r["c"] > 1 and r["regime"] != "divergent"]
        below = [r for r in group if r["c"] < 1]
        out["spike"][a] = {
            "above": len(above), "above_rose": sum(r["regime"] in ("catapult", "unsettled") for r in above),
            "below": len(below), "below_lazy": sum(r["regime"] == "lazy" for r in below)}
        cat = [r for r in group if r["regime"] in ("catapult", "unsettled")]
        out["settle"][a] = {
            "runs": len(cat), "catapult": sum(r["regime"] == "catapult" for r in cat),
            "median_min_ratio": statistics.median([r["min_sharpness_after_peak"] * r["lr"] / 2
                                                   for r in cat]) if cat else math.nan,
            "median_final_ratio": statistics.median([r["final_sharpness"] * r["lr"] / 2
                                                     for r in cat]) if cat else math.nan}
    for (a, w), group in sorted(common.group(rows, "algorithm", "width").items()):
        acc = {c: statistics.fmean(r["test_acc"] for r in rs)
               for (c,), rs in common.group(group, "c").items() if all(math.isfinite(r["test_acc"]) for r in rs)}
        regimes = out["regimes"][(a, w)]
        lazy = {c: v for c, v in acc.items() if regimes[c] == "lazy"}
        cat = {c: v for c, v in acc.items() if regimes[c] == "catapult"}
        best_lazy = max(lazy.items(), key=lambda kv: kv[1]) if lazy else (math.nan, math.nan)
        best_cat = max(cat.items(), key=lambda kv: kv[1]) if cat else (math.nan, math.nan)
        out["help"][(a, w)] = {"best_lazy_c": best_lazy[0], "best_lazy_acc": best_lazy[1],
                               "best_catapult_c": best_cat[0], "best_catapult_acc": best_cat[1],
                               "gain": best_cat[1] - best_lazy[1]}
    return out


def summarise(records: list[dict], config: CatapultConfig) -> str:
    """``summary.md``: every number computed from ``records``."""
    if not records:
        return "# Catapult\n\nNo runs.\n"
    a = analyse(records)
    rows = flat_results(records)
    dataset = rows[0]["dataset"]
    letters = {"lazy": "L", "catapult": "C", "unsettled": "U", "divergent": "D"}
    cs = sorted({r["c"] for r in rows})
    lines = [
        "# Catapult: learning-rate regimes, backprop vs predictive coding",
        "",
        f"{len(rows)} runs: {config.depth}-hidden-layer ReLU MLP, {config.train_size} {dataset} "
        f"training images, full-batch SGD on the MSE loss for {config.steps} steps at "
        f"lr = c * 2 / lambda0, seeds {list(config.seeds)}; PC: {config.pc_steps} inference steps "
        f"of size {config.pc_step_size}. Regimes (majority over seeds): L lazy, C catapult "
        "(loss rose, fell, sharpness <= 1.25 * 2/lr after the peak), U unsettled (rose and fell, "
        "sharpness stayed above), D divergent.",
        "",
        "## Sharpness at initialisation",
        "",
        table(["width", "lambda0 (mean over seeds)", "2/lambda0"],
              [[w, fmt(v, 2), fmt(2 / v, 4)] for w, v in a["lambda0"].items()]),
        "",
        "## Regimes",
        "",
        table(["algorithm", "width", *[f"c={c:g}" for c in cs], "largest non-divergent c"],
              [[alg, w, *[letters[reg[c]] if c in reg else "" for c in cs], fmt(a["c_max"][(alg, w)], 3)]
               for (alg, w), reg in a["regimes"].items()]),
        "",
        "Spike height: the highest training loss over the initial loss (mean over seeds). A "
        "regime letter says the loss rose somewhere; above 1 it rose past where it started, "
        "the catapult's spike seen plainly.",
        "",
        table(["algorithm", "width", *[f"c={c:g}" for c in cs]],
              [[alg, w, *[fmt(h[c], 3) if c in h else "" for c in cs]]
               for (alg, w), h in a["spike_height"].items()]),
        "",
        "## Measured answers",
        "",
    ]
    for alg, s in a["spike"].items():
        st = a["settle"][alg]
        lines.append(
            f"- **{alg}**: the loss rose (was not monotone) in {s['above_rose']} of {s['above']} "
            f"non-divergent runs with c > 1, and fell monotonically in {s['below_lazy']} of "
            f"{s['below']} runs with c < 1. Of the {st['runs']} runs whose loss rose and fell, "
            f"{st['catapult']} reached a sharpness <= 1.25 * 2/lr after the peak; median "
            f"(lowest sharpness after the peak) / (2/lr) = {fmt(st['median_min_ratio'], 3)}, "
            f"median final sharpness / (2/lr) = {fmt(st['median_final_ratio'], 3)}.")
    lines += ["", "## Does the catapult help test accuracy?", "",
              table(["algorithm", "width", "best lazy c", "its test acc", "best catapult c",
                     "its test acc", "catapult - lazy"],
                    [[alg, w, fmt(h["best_lazy_c"], 3), fmt(h["best_lazy_acc"], 4),
                      fmt(h["best_catapult_c"], 3), fmt(h["best_catapult_acc"], 4), fmt(h["gain"], 4)]
                     for (alg, w), h in a["help"].items()]),
              "",
              (f"Runs with c < 1 trained for steps / c, so that lr * steps is at least that of a "
               f"c = 1 run after {config.steps} steps; runs with c > 1 still travel further "
               "(c times), so a gain here may still partly be speed."
               if config.match_lazy_time else
               f"Test accuracy after the same number of steps ({config.steps}); a larger lr also "
               "trains faster, so a gain here mixes the catapult's effect with speed."),
              "",
              "Plots: `phase_diagram.png`, `curves.png` (loss and sharpness of the widest net, "
              "first seed; dashed: 2/lr), `test_accuracy.png`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------ plots


def plot(records: list[dict], config: CatapultConfig, out: Path) -> list[Path]:
    plt = common.pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows = flat_results(records)
    if not rows:
        return []
    a = analyse(records)
    algorithms = [x for x in config.algorithms if any(r["algorithm"] == x for r in rows)]
    widths = sorted({r["width"] for r in rows})
    cs = sorted({r["c"] for r in rows})
    paths = []

    fig, axes = plt.subplots(1, len(algorithms), figsize=(1.0 + 0.6 * len(cs) * len(algorithms) + 1,
                                                          1.2 + 0.5 * len(widths)), squeeze=False)
    cmap = ListedColormap([COLOURS[r] for r in REGIMES])
    for ax, alg in zip(axes[0], algorithms):
        grid = [[REGIMES.index(a["regimes"][(alg, w)].get(c, "divergent")) for c in cs] for w in widths]
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(REGIMES) - 0.5, origin="lower", aspect="auto")
        ax.set_xticks(range(len(cs)), [f"{c:g}" for c in cs])
        ax.set_yticks(range(len(widths)), [str(w) for w in widths])
        ax.set_xlabel("c  (lr = c * 2 / lambda0)")
        ax.set_ylabel("width")
        ax.set_title(alg)
    fig.legend(handles=[Patch(color=COLOURS[r], label=r) for r in REGIMES], loc="upper center",
               ncol=len(REGIMES), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    paths.append(common.save_figure(fig, out / "phase_diagram.png"))

    widest, seed = widths[-1], min(r["seed"] for r in rows)
    fig, axes = plt.subplots(len(algorithms), 2, figsize=(11, 3.2 * len(algorithms)), squeeze=False)
    colours = plt.cm.viridis([i / max(len(cs) - 1, 1) for i in range(len(cs))])
    for (ax_loss, ax_sharp), alg in zip(axes, algorithms):
        for colour, c in zip(colours, cs):
            match = [r for r in rows if (r["algorithm"], r["width"], r["c"], r["seed"]) == (alg, widest, c, seed)]
            if not match:
                continue
            r = match[0]
            ax_loss.plot(range(len(r["loss"])), r["loss"], color=colour, label=f"c={c:g} ({r['regime']})")
            steps = [e["step"] for e in r["evals"]]
            ax_sharp.plot(steps, [e["sharpness"] for e in r["evals"]], "o-", ms=3, color=colour)
            ax_sharp.axhline(r["two_over_lr"], color=colour, ls="--", lw=0.8)
        ax_loss.set_yscale("log")
        for ax in (ax_loss, ax_sharp):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)  # steps start at 0; symlog's margin would show negative steps
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss (MSE)")
        ax_loss.set_title(f"{alg}, width {widest}, seed {seed}")
        ax_loss.legend(fontsize=7)
        ax_sharp.set_yscale("log")
        ax_sharp.set_xlabel("step")
        ax_sharp.set_ylabel("sharpness (dashed: 2/lr)")
    fig.tight_layout()
    paths.append(common.save_figure(fig, out / "curves.png"))

    fig, axes = plt.subplots(1, len(algorithms), figsize=(5 * len(algorithms), 3.5), squeeze=False)
    for ax, alg in zip(axes[0], algorithms):
        for w in widths:
            pts = []
            for c in cs:
                accs = [r["test_acc"] for r in rows if (r["algorithm"], r["width"], r["c"]) == (alg, w, c)]
                mean, std = common.mean_std(accs)
                pts.append((c, mean, std))
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=2, label=f"width {w}")
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("c")
        ax.set_ylabel("test accuracy")
        ax.set_title(alg)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(common.save_figure(fig, out / "test_accuracy.png"))
    return paths


# ---------------------------------------------------------------------- command


def command(
    quick: common.Quick = False,
    algorithms: common.Algorithms = "bp,pc",
    widths: Annotated[str, typer.Option(help="Comma-separated hidden widths (default: the preset's).")] = "",
    cs: Annotated[str, typer.Option(help="Comma-separated multiples c of 2/lambda0 (default: the preset's).")] = "",
    steps: Annotated[int, typer.Option(help="Full-batch SGD steps (0: the preset's).")] = 0,
    train_size: Annotated[int, typer.Option(help="Training images (0: the preset's).")] = 0,
    pc_steps: common.PcSteps = 0,
    pc_step_size: common.PcStepSize = 0.0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/catapult"),
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
    """Learning-rate regimes (lazy / catapult / divergent) of wide ReLU nets, bp vs PC."""
    common.execute(make_config, run, **locals())


def make_config(*, quick: bool = False, algorithms: str = "bp,pc", widths: str = "", cs: str = "",
                steps: int = 0, train_size: int = 0, pc_steps: int = 0, pc_step_size: float = 0.0,
                data_dir: Path | str | None = None,
                seed: int = 0, num_seeds: int = 0, compile: bool = False, device: str = "auto") -> CatapultConfig:
    """The preset with the command line's overrides, checked (raises :class:`ConfigError`)."""
    data, available = common.image_data(data_dir)
    config = common.configure(
        QUICK if quick else FULL, algorithms=algorithms, seed=seed, num_seeds=num_seeds, compile=compile,
        device=device, **data, widths=common.parse_list(widths, int, "widths") if widths else None,
        cs=common.parse_list(cs, float, "cs") if cs else None,
        steps=steps or None, train_size=train_size or None, pc_steps=pc_steps or None,
        pc_step_size=pc_step_size or None)
    config.validate(available=available)
    return config
