r"""``pclab double-descent``: model-wise double descent (Nakkiran et al. 2019), bp vs PC.

Nakkiran, Kaplun, Bansal, Yang, Barak & Sutskever (2019), "Deep double descent:
where bigger models and more data hurt"; Belkin, Hsu, Ma & Mandal (2019),
"Reconciling modern machine-learning practice and the classical bias-variance
trade-off". On a small training set with label noise, test error as a function of
model size rises to a peak at the *interpolation threshold*, the smallest model
that can fit the training set exactly, and falls again beyond it; regularisation
(weight decay, ridge) flattens the peak.

Two variants, each one sweep:

* ``"rf"``: random ReLU features :math:`\phi(x) = \operatorname{relu}(W x/\sqrt{d})`,
  :math:`W_{ij} \sim N(0, 1)`, with ``P`` features and a least-squares readout to
  one-hot targets, solved in closed form through the kernel
  :math:`K = \Phi\Phi^\top = U \Lambda U^\top`: the minimum-norm interpolant
  (:math:`\Lambda^+`) and ridge (:math:`(\Lambda + \lambda)^{-1}`) with
  :math:`\lambda` chosen by exact leave-one-out error on the training set (never
  the test set). The threshold is ``P = N``.
* ``"mlp"``: a one-hidden-layer ReLU MLP of each width trained with AdamW on the
  MSE loss by every algorithm (bp and PC alike), with and without weight decay.
  Its threshold is where the parameter count ``h (d + 1) + (h + 1) K`` reaches
  ``N K`` (one equation per training target). Images are average-pooled by
  ``downsample`` first so that the threshold lands at a width the grid covers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from torch import Tensor, nn

from . import common
from .common import fmt, require, table
from .sweep import results as flat_results
from .sweep import execution_only, run_sweep
from .training import Recipe, accuracy, load_data, mean_loss, train

VARIANTS = ("rf", "mlp")


@dataclass(frozen=True)
class DoubleDescentConfig:
    """Both sweeps; an empty ``features`` or ``widths`` grid skips that variant.

    ``train_size`` class-balanced training images with a fraction ``label_noise`` of
    labels flipped; ``test_size`` test images (0: all); ``downsample`` is the
    average-pooling factor of the images (1: none). ``relative_ridges`` is the
    grid of ridge strengths in units of ``trace(K) / N`` for the leave-one-out choice.
    """

    features: tuple[int, ...] = (10, 20, 50, 100, 200, 400, 600, 800, 900, 1000, 1100, 1250,
                                 1500, 2000, 3000, 5000, 10000, 20000)
    widths: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)
    weight_decays: tuple[float, ...] = (0.0, 0.1, 1.0)
    algorithms: tuple[str, ...] = ("bp", "pc")
    seeds: tuple[int, ...] = (0, 1, 2)
    train_size: int = 1000
    test_size: int = 0
    label_noise: float = 0.15
    downsample: int = 2
    steps: int = 10000
    lr: float = 1e-3
    eval_every: int = 500
    pc_steps: int = 20
    pc_step_size: float = 0.1
    relative_ridges: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    compile: bool = False
    device: str = "auto"

    def validate(self, available: int | None = None) -> None:
        require(self.features or self.widths, "both --features and --widths are empty: nothing to run")
        if self.features:
            common.check_positive(self.features, "features", integer=True)
        if self.widths:
            common.check_positive(self.widths, "widths", integer=True)
            common.check_algorithms(self.algorithms)
            require(len(self.weight_decays) > 0, "--weight-decays is empty: give at least one value (0: none)")
            for wd in self.weight_decays:
                require(math.isfinite(wd) and wd >= 0, f"--weight-decays: {wd} must be >= 0")
            require(len(set(self.weight_decays)) == len(self.weight_decays), "--weight-decays repeats a value")
        require(len(self.seeds) > 0, "no seeds: --num-seeds must be >= 1")
        require(self.train_size >= 10, f"--train-size must be >= 10; got {self.train_size}")
        if available is not None:
            require(self.train_size <= available, f"--train-size {self.train_size} is larger than the "
                    f"{available} training images of {self.dataset}")
        require(0 <= self.label_noise < 1, f"--label-noise must lie in [0, 1); got {self.label_noise}")
        require(self.downsample >= 1, f"--downsample must be >= 1; got {self.downsample}")
        require(self.steps >= 1 and self.eval_every >= 1, "--steps and eval_every must be >= 1")
        require(self.lr > 0 and self.test_size >= 0, "lr > 0, test_size >= 0")
        common.check_pc(self.pc_steps, self.pc_step_size)
        common.check_positive(self.relative_ridges, "relative-ridges")
        common.check_device(self.device)


FULL = DoubleDescentConfig()
QUICK = DoubleDescentConfig(
    features=(10, 50, 100, 200, 300, 400, 450, 500, 550, 700, 1000, 2000, 5000, 20000),
    widths=(4, 16, 32, 128), weight_decays=(0.0,), seeds=(0,), train_size=500, test_size=1000,
    steps=1500, eval_every=500, pc_steps=8)


@dataclass(frozen=True)
class FeaturesRun:
    """Random ReLU features: ``features`` of them, min-norm and LOO-tuned ridge readouts."""

    features: int
    seed: int
    train_size: int
    test_size: int
    label_noise: float
    downsample: int
    relative_ridges: tuple[float, ...]
    dataset: str
    data_dir: str | None

    @property
    def label(self) -> str:
        return f"rf-p{self.features}-s{self.seed}"


@dataclass(frozen=True)
class WidthRun:
    """A one-hidden-layer MLP of ``width`` units trained by ``algorithm``."""

    width: int
    weight_decay: float
    algorithm: str
    seed: int
    train_size: int
    test_size: int
    label_noise: float
    downsample: int
    steps: int
    lr: float
    eval_every: int
    pc_steps: int
    pc_step_size: float
    dataset: str
    data_dir: str | None
    compile: bool = execution_only(False)
    device: str = execution_only("auto")

    @property
    def label(self) -> str:
        return f"mlp-{self.algorithm}-w{self.width}-wd{self.weight_decay:g}-s{self.seed}"


def runs(config: DoubleDescentConfig) -> list[FeaturesRun | WidthRun]:
    data = {k: getattr(config, k) for k in ("train_size", "test_size", "label_noise", "downsample",
                                            "dataset", "data_dir")}
    out: list[FeaturesRun | WidthRun] = [
        FeaturesRun(features=p, seed=s, relative_ridges=config.relative_ridges, **data)
        for p in config.features for s in config.seeds]
    out += [WidthRun(width=w, weight_decay=wd, algorithm=a, seed=s, steps=config.steps, lr=config.lr,
                     eval_every=config.eval_every, pc_steps=config.pc_steps,
                     pc_step_size=config.pc_step_size, compile=config.compile, device=config.device,
                     **data)
            for a in config.algorithms for wd in config.weight_decays for w in config.widths
            for s in config.seeds] if config.widths else []
    return out


def _data(run: FeaturesRun | WidthRun) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    data = load_data(run.dataset, run.data_dir, run.train_size, run.label_noise, run.seed)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    if run.test_size:
        xt, yt = xt[:run.test_size], yt[:run.test_size]
    if run.downsample > 1:
        pool = nn.AvgPool2d(run.downsample, ceil_mode=True)
        x, xt = pool(x), pool(xt)
    return x.flatten(1), y, xt.flatten(1), yt, data.num_classes


def threshold_width(train_size: int, inputs: int, classes: int) -> float:
    """Width ``h`` at which a one-hidden-layer MLP has ``N K`` parameters: ``h (d+1) + (h+1) K = N K``."""
    return (train_size * classes - classes) / (inputs + 1 + classes)


def run_one(run: FeaturesRun | WidthRun) -> dict:
    return run_features(run) if isinstance(run, FeaturesRun) else run_width(run)


def run_features(run: FeaturesRun) -> dict:
    """Min-norm and ridge least squares on ``run.features`` random ReLU features (float64)."""
    x, y, xt, yt, classes = _data(run)
    x, xt = x.double(), xt.double()
    targets, test_targets = (nn.functional.one_hot(t, classes).double() for t in (y, yt))
    gen = torch.Generator().manual_seed(run.seed * 1_000_003 + run.features)
    w = torch.randn(x.shape[1], run.features, generator=gen, dtype=torch.float64) / math.sqrt(x.shape[1])
    phi, phi_test = torch.relu(x @ w), torch.relu(xt @ w)
    evals, u = torch.linalg.eigh(phi @ phi.T)
    evals = evals.clamp_min(0)
    uy = u.T @ targets
    n = len(y)
    # Numerical rank as numpy's pinv/lstsq would take it.
    cutoff = evals.max() * max(n, run.features) * torch.finfo(torch.float64).eps
    minnorm = torch.where(evals > cutoff, 1 / evals.clamp_min(1e-300), torch.zeros_like(evals))

    def fit(inverse: Tensor) -> dict:
        alpha = u @ (inverse[:, None] * uy)  # (K + lambda)^-1 Y in the kernel's eigenbasis
        beta = phi.T @ alpha
        train_pred, test_pred = phi @ beta, phi_test @ beta
        hat = (u * (evals * inverse)) @ u.T
        leave_one_out = ((targets - train_pred) / (1 - hat.diagonal()).clamp_min(1e-12)[:, None])
        return {"train_mse": float((train_pred - targets).pow(2).sum(1).mean()),
                "test_mse": float((test_pred - test_targets).pow(2).sum(1).mean()),
                "train_err": float((train_pred.argmax(1) != y).double().mean()),
                "test_err": float((test_pred.argmax(1) != yt).double().mean()),
                "loo_mse": float(leave_one_out.pow(2).sum(1).mean()),
                "weight_norm": float(beta.norm())}

    scale = float(evals.sum()) / n
    ridges = [(r, fit(1 / (evals + r * scale))) for r in run.relative_ridges]
    best_r, best = min(ridges, key=lambda rf: rf[1]["loo_mse"])
    mn = fit(minnorm)
    return {"variant": "rf", "inputs": x.shape[1], "rank": int((evals > cutoff).sum()),
            **{f"minnorm_{k}": v for k, v in mn.items()},
            **{f"ridge_{k}": v for k, v in best.items()},
            "ridge_relative": best_r, "ridge_lambda": best_r * scale,
            "ridge_grid_loo": [r[1]["loo_mse"] for r in ridges]}


def run_width(run: WidthRun) -> dict:
    device = common.device(run.device)
    *tensors, classes = _data(run)
    x, y, xt, yt = (t.to(device) for t in tensors)
    torch.manual_seed(run.seed)
    model = nn.Sequential(nn.Linear(x.shape[1], run.width), nn.ReLU(), nn.Linear(run.width, classes)).to(device)

    def evaluate(step: int) -> dict:
        return {"train_err": 1 - accuracy(model, x, y), "test_err": 1 - accuracy(model, xt, yt),
                "train_loss": mean_loss(model, "mse", x, y), "test_loss": mean_loss(model, "mse", xt, yt)}

    recipe = Recipe(algorithm=run.algorithm, loss="mse", optimizer="adamw", lr=run.lr,
                    weight_decay=run.weight_decay, steps=run.steps, pc_steps=run.pc_steps,
                    pc_step_size=run.pc_step_size, compile=run.compile)
    history = train(model, recipe, x, y, seed=run.seed,
                    eval_steps=range(run.eval_every, run.steps, run.eval_every), evaluate=evaluate)
    last = history.evals[-1] if not history.diverged else evaluate(len(history.loss))
    return {"variant": "mlp", "inputs": x.shape[1], "params": sum(p.numel() for p in model.parameters()),
            "threshold_width": threshold_width(len(y), x.shape[1], classes),
            **{k: last[k] for k in ("train_err", "test_err", "train_loss", "test_loss")},
            "evals": history.evals, "diverged": history.diverged, "reason": history.reason,
            "energy_rises": history.energy_rises, "device": common.device_name(device)}


def run(config: DoubleDescentConfig, out: Path, *, workers: int = 2, ray: bool = False,
        ray_address: str | None = None, progress: bool = True) -> list[dict]:
    config.validate()
    # Longest runs first, so that a pool never waits on one big run started last.
    plan = sorted(runs(config), key=lambda r: -(r.width * (r.pc_steps if r.algorithm != "bp" else 1)
                                                if isinstance(r, WidthRun) else 0))
    records = run_sweep(run_one, plan, out, workers=workers, ray=ray, ray_address=ray_address,
                        score=lambda r: 1 - r.get("test_err", r.get("minnorm_test_err", math.nan)),
                        desc="double descent (best test acc)", progress=progress)
    return common.write_outputs(out, config, records, summarise, plot)


# ---------------------------------------------------------------------- summary


def interior_peaks(xs: list[float], ys: list[float]) -> list[int]:
    """Indices ``i`` (not the ends) with ``ys[i]`` above both neighbours."""
    return [i for i in range(1, len(ys) - 1) if ys[i] > ys[i - 1] and ys[i] > ys[i + 1]]


def second_ascent(ys: list[float]) -> tuple[int, int] | None:
    """The double-descent peak as ``(i, j)``: the interior local maximum ``i`` that stands
    highest above ``j``, the lowest point before it (the rise after a first descent).
    A small bump while the error still falls from its start rises little and loses to
    the peak at the threshold, however high it stands. ``None`` without a local maximum."""
    best = None
    for i in interior_peaks(list(range(len(ys))), ys):
        j = min(range(i), key=ys.__getitem__)
        if best is None or ys[i] - ys[j] > ys[best[0]] - ys[best[1]]:
            best = (i, j)
    return best


def _peak(xs: list[float], ys: list[float]) -> dict | None:
    """:func:`second_ascent` of ``ys`` over ``xs``: where it peaks, how high, and the low it rose from."""
    found = second_ascent(ys)
    if found is None:
        return None
    i, j = found
    return {"x": xs[i], "value": ys[i], "rise": ys[i] - ys[j], "from_x": xs[j]}


def _curve(rows: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    by_x = common.group(rows, x)
    xs = sorted(by_x)
    return [v for (v,) in xs], [statistics.fmean(r[key] for r in by_x[v]) for v in xs]


def _spread(rows: list[dict], key: str, x: str) -> list[float]:
    """The sample standard deviation over seeds of ``key`` at each ``x`` (0 with one seed)."""
    by_x = common.group(rows, x)
    return [common.mean_std([r[key] for r in by_x[v]])[1] for v in sorted(by_x)]


def analyse(records: list[dict]) -> dict:
    rows = flat_results(records)
    rf = [r for r in rows if r["variant"] == "rf"]
    mlp = [r for r in rows if r["variant"] == "mlp"]
    out: dict = {"rf": None, "mlp": {}}
    if rf:
        xs, mn = _curve(rf, "minnorm_test_mse", "features")
        _, rd = _curve(rf, "ridge_test_mse", "features")
        _, mn_err = _curve(rf, "minnorm_test_err", "features")
        _, rd_err = _curve(rf, "ridge_test_err", "features")
        peak = max(range(len(xs)), key=mn.__getitem__)
        out["rf"] = {"train_size": rf[0]["train_size"], "features": xs, "minnorm": mn, "ridge": rd,
                     "minnorm_err": mn_err, "ridge_err": rd_err, "peak_features": xs[peak],
                     "peak_minnorm": mn[peak], "peak_ridge": rd[peak], "largest_minnorm": mn[-1],
                     "largest_ridge": rd[-1], "smallest_minnorm": mn[0], "ridge_max": max(rd),
                     "ridge_peaks": [xs[i] for i in interior_peaks(xs, rd)],
                     "minnorm_peaks": [xs[i] for i in interior_peaks(xs, mn)]}
    for key, rs in sorted(common.group(mlp, "algorithm", "weight_decay").items()):
        xs, test_err = _curve(rs, "test_err", "width")
        _, test_loss = _curve(rs, "test_loss", "width")
        _, train_err = _curve(rs, "train_err", "width")
        _, train_loss = _curve(rs, "train_loss", "width")
        interpolating = [w for w, e in zip(xs, train_err) if e <= 0.01]
        out["mlp"][key] = {
            "widths": xs, "test_err": test_err, "test_loss": test_loss, "train_err": train_err,
            "train_loss": train_loss, "test_err_std": _spread(rs, "test_err", "width"),
            "test_loss_std": _spread(rs, "test_loss", "width"), "threshold_width": rs[0]["threshold_width"],
            "first_interpolating_width": interpolating[0] if interpolating else None,
            "loss_peak": _peak(xs, test_loss), "err_peak": _peak(xs, test_err),
            # The mean curve can smear peaks that sit at different widths in each seed.
            "seed_loss_peaks": {seed: _peak(*_curve(seed_rows, "test_loss", "width"))
                                for (seed,), seed_rows in sorted(common.group(rs, "seed").items())},
            "widest": (xs[-1], test_err[-1], test_loss[-1]),
            "best_err": min(zip(test_err, xs)),
            "wall_s": statistics.fmean(r["wall_s"] for r in rs)}
    return out


def summarise(records: list[dict], config: DoubleDescentConfig) -> str:
    if not records:
        return "# Double descent\n\nNo runs.\n"
    a = analyse(records)
    rows = flat_results(records)
    inputs = rows[0]["inputs"]
    lines = ["# Model-wise double descent: backprop vs predictive coding", "",
             f"{config.train_size} class-balanced {config.dataset} training images, "
             f"{config.label_noise:.0%} of labels flipped, images average-pooled by {config.downsample} "
             f"({inputs} inputs), seeds {list(config.seeds)}; values are means over seeds.", ""]
    rf = a["rf"]
    if rf:
        lines += ["## Random ReLU features, least squares", "",
                  f"Threshold: P = N = {rf['train_size']} features.", "",
                  table(["features P", "min-norm test MSE", "ridge (LOO) test MSE", "min-norm test err",
                         "ridge test err"],
                        [[p, fmt(m, 3), fmt(r, 3), fmt(me, 3), fmt(re, 3)]
                         for p, m, r, me, re in zip(rf["features"], rf["minnorm"], rf["ridge"],
                                                    rf["minnorm_err"], rf["ridge_err"])]),
                  "",
                  f"- Min-norm test MSE peaks at P = {rf['peak_features']} (P/N = "
                  f"{fmt(rf['peak_features'] / rf['train_size'], 2)}) at {fmt(rf['peak_minnorm'], 3)}, "
                  f"against {fmt(rf['smallest_minnorm'], 3)} at P = {rf['features'][0]} and "
                  f"{fmt(rf['largest_minnorm'], 3)} at P = {rf['features'][-1]}.",
                  f"- Ridge with leave-one-out lambda: {fmt(rf['peak_ridge'], 3)} at P = {rf['peak_features']}; "
                  f"its largest test MSE over the grid is {fmt(rf['ridge_max'], 3)}; interior local maxima "
                  f"of its curve: {rf['ridge_peaks'] or 'none'}.", ""]
    if a["mlp"]:
        lines += ["## One-hidden-layer MLP trained by each algorithm", "",
                  f"AdamW lr {config.lr}, full batch, {config.steps} steps, MSE loss; PC: {config.pc_steps} "
                  f"inference steps of size {config.pc_step_size}. Threshold width (params = N K): "
                  f"{fmt(next(iter(a['mlp'].values()))['threshold_width'], 1)}.", ""]
        widths = sorted({w for v in a["mlp"].values() for w in v["widths"]})
        lines += [table(["algorithm", "weight decay", *[f"w={w}" for w in widths]],
                        [[alg, f"{wd:g}", *[fmt(dict(zip(v["widths"], v["test_err"])).get(w), 3) for w in widths]]
                         for (alg, wd), v in a["mlp"].items()]), "",
                  "Test error above; test MSE below; train error last.", "",
                  table(["algorithm", "weight decay", *[f"w={w}" for w in widths]],
                        [[alg, f"{wd:g}", *[fmt(dict(zip(v["widths"], v["test_loss"])).get(w), 3) for w in widths]]
                         for (alg, wd), v in a["mlp"].items()]), "",
                  table(["algorithm", "weight decay", *[f"w={w}" for w in widths]],
                        [[alg, f"{wd:g}", *[fmt(dict(zip(v["widths"], v["train_err"])).get(w), 3) for w in widths]]
                         for (alg, wd), v in a["mlp"].items()]), ""]
        def rise(p: dict | None) -> str:
            return f"{fmt(p['rise'], 3)} at width {p['x']}" if p else "no peak"

        def peak(p: dict | None, widest: float) -> str:
            return (f"at width {p['x']} ({fmt(p['value'], 3)}: up {fmt(p['rise'], 3)} from width {p['from_x']}, "
                    f"down {fmt(p['value'] - widest, 3)} to the widest)" if p else "none (no interior local maximum)")

        for (alg, wd), v in a["mlp"].items():
            lines.append(
                f"- {alg}, weight decay {wd:g}: first width with training error <= 1%: "
                f"{v['first_interpolating_width'] or 'none in the grid'}; test-MSE peak {peak(v['loss_peak'], v['widest'][2])}; "
                f"test-error peak {peak(v['err_peak'], v['widest'][1])}; widest ({v['widest'][0]}) test error "
                f"{fmt(v['widest'][1], 3)}; best test error {fmt(v['best_err'][0], 3)} at width "
                f"{v['best_err'][1]}; {fmt(v['wall_s'], 1)} s per run.")
        for alg in dict.fromkeys(alg for alg, _ in a["mlp"]):
            rises = [(wd, v["loss_peak"]) for (name, wd), v in a["mlp"].items() if name == alg]
            lines.append(f"- {alg}: the test-MSE peak's rise by weight decay: " + "; ".join(
                f"{wd:g}: " + rise(p) for wd, p in rises) + ".")
        if any(len(v["seed_loss_peaks"]) > 1 for v in a["mlp"].values()):
            lines += ["", "Each seed's own test-MSE peak (its rise, at width):", ""]
            lines += [f"- {alg}, weight decay {wd:g}: " + "; ".join(
                f"seed {seed} {rise(p)}" for seed, p in v["seed_loss_peaks"].items()) + "."
                for (alg, wd), v in a["mlp"].items()]
        lines.append("")
    lines += ["Plots: `random_features.png`, `mlp_width.png` (shaded: ±1 standard deviation over seeds).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------ plots


def plot(records: list[dict], config: DoubleDescentConfig, out: Path) -> list[Path]:
    plt = common.pyplot()
    a = analyse(records)
    paths = []
    rf = a["rf"]
    if rf:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        ax1.plot(rf["features"], rf["minnorm"], "o-", label="min-norm")
        ax1.plot(rf["features"], rf["ridge"], "s-", label="ridge (LOO lambda)")
        ax2.plot(rf["features"], rf["minnorm_err"], "o-", label="min-norm")
        ax2.plot(rf["features"], rf["ridge_err"], "s-", label="ridge (LOO lambda)")
        for ax, name in ((ax1, "test MSE"), (ax2, "test error")):
            ax.axvline(rf["train_size"], color="grey", ls="--", lw=1, label="P = N")
            ax.set_xscale("log")
            ax.set_xlabel("random features P")
            ax.set_ylabel(name)
            ax.legend(fontsize=8)
        ax1.set_yscale("log")
        fig.suptitle("random ReLU features, least squares", fontsize=10)
        fig.tight_layout()
        paths.append(common.save_figure(fig, out / "random_features.png"))
    if a["mlp"]:
        algorithms = [x for x in config.algorithms if any(k[0] == x for k in a["mlp"])]
        fig, axes = plt.subplots(2, len(algorithms), figsize=(5 * len(algorithms), 6.5), squeeze=False)
        for j, alg in enumerate(algorithms):
            for (name, wd), v in a["mlp"].items():
                if name != alg:
                    continue
                line, = axes[0][j].plot(v["widths"], v["test_err"], "o-", label=f"test, wd {wd:g}")
                axes[0][j].plot(v["widths"], v["train_err"], "x--", color=line.get_color(),
                                label=f"train, wd {wd:g}")
                axes[1][j].plot(v["widths"], v["test_loss"], "o-", color=line.get_color(), label=f"test, wd {wd:g}")
                for ax, mean, std in ((axes[0][j], v["test_err"], v["test_err_std"]),
                                      (axes[1][j], v["test_loss"], v["test_loss_std"])):
                    ax.fill_between(v["widths"], np.subtract(mean, std), np.add(mean, std),
                                    color=line.get_color(), alpha=0.15, lw=0)
                threshold = v["threshold_width"]
            for ax, name in ((axes[0][j], "error"), (axes[1][j], "MSE loss")):
                ax.axvline(threshold, color="grey", ls="--", lw=1, label="params = N K")
                ax.set_xscale("log")
                ax.set_xlabel("hidden width")
                ax.set_ylabel(name)
                ax.set_title(alg)
                ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(common.save_figure(fig, out / "mlp_width.png"))
    return paths


# ---------------------------------------------------------------------- command


def command(
    quick: common.Quick = False,
    algorithms: common.Algorithms = "bp,pc",
    features: Annotated[str, typer.Option(help="Comma-separated random-feature counts ('none': skip).")] = "",
    widths: Annotated[str, typer.Option(help="Comma-separated MLP widths ('none': skip).")] = "",
    weight_decays: Annotated[str, typer.Option(help="Comma-separated AdamW weight decays for the MLPs.")] = "",
    train_size: Annotated[int, typer.Option(help="Training images (0: the preset's).")] = 0,
    label_noise: Annotated[float, typer.Option(help="Fraction of flipped labels (-1: the preset's).")] = -1.0,
    steps: Annotated[int, typer.Option(help="Training steps per MLP (0: the preset's).")] = 0,
    pc_steps: common.PcSteps = 0,
    pc_step_size: common.PcStepSize = 0.0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/double-descent"),
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
    """Test error vs model size through the interpolation threshold (random features and MLPs), bp vs PC."""
    common.execute(make_config, run, **locals())


def make_config(*, quick: bool = False, algorithms: str = "bp,pc", features: str = "", widths: str = "",
                weight_decays: str = "", train_size: int = 0, label_noise: float = -1.0, steps: int = 0,
                pc_steps: int = 0, pc_step_size: float = 0.0, data_dir: Path | str | None = None, seed: int = 0,
                num_seeds: int = 0, compile: bool = False, device: str = "auto") -> DoubleDescentConfig:
    preset = QUICK if quick else FULL
    data, available = common.image_data(data_dir)

    def grid(text: str, option: str):
        if not text:
            return None
        return () if text.strip().lower() == "none" else common.parse_list(text, int, option)

    config = common.configure(
        preset, algorithms=algorithms, seed=seed, num_seeds=num_seeds, compile=compile, device=device, **data,
        features=grid(features, "features"), widths=grid(widths, "widths"),
        weight_decays=common.parse_list(weight_decays, float, "weight-decays") if weight_decays else None,
        train_size=train_size or None, label_noise=None if label_noise == -1.0 else label_noise,
        steps=steps or None, pc_steps=pc_steps or None, pc_step_size=pc_step_size or None,
        downsample=preset.downsample if data["dataset"] == "fashion-mnist" else 1)
    config.validate(available=available)
    return config
