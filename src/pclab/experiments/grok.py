r"""``pclab grok``: grokking modular addition (Power et al. 2022), backprop vs PC.

Power, Burda, Edwards, Babuschkin & Misra (2022), "Grokking: generalization beyond
overfitting on small algorithmic datasets": a small network trained on a fraction
of the table :math:`a + b \bmod p` fits its training pairs quickly and generalises
to the held-out pairs only much later, and weight decay shortens the delay (with
none, it may never come). Each run trains on a seeded random fraction of the
:math:`p^2` pairs with AdamW and records train and validation accuracy and the
weight norm; the measured answer is the number of steps until each accuracy first
reaches 99%, across a weight-decay grid, for backprop and for the PC algorithms
(through the same engine, on the same model).

Models: ``"mlp"``, an embedding of ``a`` and ``b`` concatenated into one hidden
ReLU layer (:class:`EmbedMLP`, the quick preset), and ``"transformer"``,
:class:`pclab.models.Transformer` reading the tokens ``[a, b, =]`` and classifying
from the last position (Power et al.'s setting, the full preset).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
import typer
from torch import Tensor, nn

from . import common
from .common import fmt, require, table
from .sweep import results as flat_results
from .sweep import execution_only, run_sweep
from .training import Recipe, accuracy, mean_loss, train, weight_norm

TARGET = 0.99


class EmbedMLP(nn.Module):
    r"""``[a, b] -> W_2 relu(W_1 [E a; E b] + b_1) + b_2``: embedding + one hidden layer.

    The quick grokking model: the concatenated embeddings of the two operands feed
    one hidden ReLU layer of ``width`` units. fx-traceable, so every PC algorithm
    trains it (the embedding output, the hidden layer and the logits are value nodes).
    """

    def __init__(self, p: int, embed_dim: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, embed_dim)
        self.hidden = nn.Linear(2 * embed_dim, width)
        self.act = nn.ReLU()
        self.out = nn.Linear(width, p)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.hidden(self.embed(x).flatten(1))))


@dataclass(frozen=True)
class GrokConfig:
    """The sweep: fractions x weight decays x algorithms x seeds on a + b mod p.

    ``steps`` is the budget; with ``stop_when_grokked`` a run stops once train and
    validation accuracy are both >= 99% (measured every ``eval_every`` steps).
    ``batch_size=0`` is full batch. ``width``/``embed_dim`` size the MLP,
    ``d_model``/``heads``/``layers`` the transformer.
    """

    model: Literal["mlp", "transformer"] = "transformer"
    p: int = 97
    fractions: tuple[float, ...] = (0.3, 0.5)
    weight_decays: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0)
    algorithms: tuple[str, ...] = ("bp", "pc")
    seeds: tuple[int, ...] = (0, 1)
    lr: float = 1e-3
    steps: int = 20000
    batch_size: int = 512
    eval_every: int = 100
    stop_when_grokked: bool = True
    width: int = 512
    embed_dim: int = 128
    d_model: int = 128
    heads: int = 4
    layers: int = 2
    pc_steps: int = 20
    pc_step_size: float = 0.1
    compile: bool = False
    device: str = "auto"

    def validate(self) -> None:
        require(self.model in ("mlp", "transformer"), f"--model must be mlp or transformer; got {self.model!r}")
        require(isinstance(self.p, int) and self.p >= 2, f"--p must be an integer >= 2; got {self.p}")
        common.check_positive(self.fractions, "fractions")
        for f in self.fractions:
            require(0 < f < 1, f"--fractions: {f} must lie strictly between 0 and 1")
            require(round(f * self.p ** 2) >= 1 and round(f * self.p ** 2) < self.p ** 2,
                    f"--fractions: {f} of the {self.p ** 2} pairs leaves no training or no validation pair")
        require(len(self.weight_decays) > 0, "--weight-decays is empty: give at least one value")
        for wd in self.weight_decays:
            require(math.isfinite(wd) and wd >= 0, f"--weight-decays: {wd} must be >= 0")
        require(len(set(self.weight_decays)) == len(self.weight_decays), "--weight-decays repeats a value")
        common.check_algorithms(self.algorithms)
        require(len(self.seeds) > 0, "no seeds: --num-seeds must be >= 1")
        require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive; got {self.lr}")
        require(self.steps >= 1 and self.eval_every >= 1, "--steps and --eval-every must be >= 1")
        require(self.batch_size >= 0, "--batch-size must be >= 0 (0: full batch)")
        common.check_pc(self.pc_steps, self.pc_step_size)
        for name in ("width", "embed_dim", "d_model", "heads", "layers"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1; got {getattr(self, name)}")
        require(self.d_model % self.heads == 0, f"heads={self.heads} must divide d_model={self.d_model}")
        common.check_device(self.device)


FULL = GrokConfig()
# The anchor (width 512, p = 97, lr 3e-3: 99% validation after 800 steps) takes
# ~85 s for one bp run on one core here, so the quick preset is scaled down: p = 47,
# width 128, lr 1e-2 groks in under 1,000 full-batch steps.
QUICK = GrokConfig(model="mlp", p=47, fractions=(0.5,), weight_decays=(1.0, 3.0), seeds=(0,),
                   lr=1e-2, steps=1500, batch_size=0, eval_every=50, width=128, embed_dim=32,
                   pc_steps=8)


@dataclass(frozen=True)
class GrokRun:
    model: str
    p: int
    fraction: float
    weight_decay: float
    algorithm: str
    seed: int
    lr: float
    steps: int
    batch_size: int
    eval_every: int
    stop_when_grokked: bool
    width: int
    embed_dim: int
    d_model: int
    heads: int
    layers: int
    pc_steps: int
    pc_step_size: float
    compile: bool = execution_only(False)
    device: str = execution_only("auto")

    @property
    def label(self) -> str:
        return f"{self.algorithm}-{self.model}-p{self.p}-f{self.fraction:g}-wd{self.weight_decay:g}-s{self.seed}"


def runs(config: GrokConfig) -> list[GrokRun]:
    shared = {k: getattr(config, k) for k in ("model", "p", "lr", "steps", "batch_size", "eval_every",
                                              "stop_when_grokked", "width", "embed_dim", "d_model",
                                              "heads", "layers", "pc_steps", "pc_step_size", "compile",
                                              "device")}
    return [GrokRun(fraction=f, weight_decay=wd, algorithm=a, seed=s, **shared)
            for a in config.algorithms for f in config.fractions for wd in config.weight_decays
            for s in config.seeds]


def modular_addition(p: int, fraction: float, seed: int, *, equals_token: bool
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All pairs ``(a, b)`` with label ``(a + b) mod p``, split at random: ``round(fraction p^2)`` train.

    With ``equals_token`` each input is ``[a, b, p]`` (``p`` encodes "=").
    """
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], 1)
    y = (x[:, 0] + x[:, 1]) % p
    if equals_token:
        x = torch.cat([x, torch.full((len(x), 1), p)], 1)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n = round(fraction * p * p)
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def build_model(run: GrokRun) -> nn.Module:
    if run.model == "mlp":
        return EmbedMLP(run.p, run.embed_dim, run.width)
    from pclab.models import build

    return build("transformer", input_shape=(3,), num_classes=run.p, vocab_size=run.p + 1,
                 d_model=run.d_model, heads=run.heads, layers=run.layers, pool="last")


def first_step(evals: list[dict], key: str, target: float = TARGET) -> int | None:
    """The first evaluated step at which ``key`` reached ``target``, or None."""
    return next((e["step"] for e in evals if e[key] >= target), None)


def run_one(run: GrokRun) -> dict:
    device = common.device(run.device)
    x, y, xv, yv = (t.to(device) for t in modular_addition(run.p, run.fraction, run.seed,
                                                           equals_token=run.model == "transformer"))
    torch.manual_seed(run.seed)
    model = build_model(run).to(device)

    def evaluate(step: int) -> dict:
        return {"train_acc": accuracy(model, x, y), "val_acc": accuracy(model, xv, yv),
                "train_loss": mean_loss(model, "ce", x, y), "weight_norm": weight_norm(model)}

    def grokked(history) -> bool:
        last = history.evals[-1]
        return run.stop_when_grokked and last["train_acc"] >= TARGET and last["val_acc"] >= TARGET

    recipe = Recipe(algorithm=run.algorithm, loss="ce", optimizer="adamw", lr=run.lr,
                    weight_decay=run.weight_decay, steps=run.steps, batch_size=run.batch_size,
                    pc_steps=run.pc_steps, pc_step_size=run.pc_step_size, compile=run.compile)
    history = train(model, recipe, x, y, seed=run.seed,
                    eval_steps=range(run.eval_every, run.steps + 1, run.eval_every),
                    evaluate=evaluate, stop=grokked)
    evals = history.evals
    return {
        "train_size": len(y), "val_size": len(yv),
        "steps_to_train": first_step(evals, "train_acc"), "steps_to_val": first_step(evals, "val_acc"),
        "final_train_acc": evals[-1]["train_acc"] if evals else math.nan,
        "final_val_acc": evals[-1]["val_acc"] if evals else math.nan,
        "final_weight_norm": evals[-1]["weight_norm"] if evals else math.nan,
        "steps_run": len(history.loss), "evals": evals, "diverged": history.diverged,
        "reason": history.reason, "energy_rises": history.energy_rises, "device": common.device_name(device),
    }


def run(config: GrokConfig, out: Path, *, workers: int = 2, ray: bool = False,
        ray_address: str | None = None, progress: bool = True) -> list[dict]:
    config.validate()
    records = run_sweep(run_one, runs(config), out, workers=workers, ray=ray, ray_address=ray_address,
                        score=lambda r: r.get("final_val_acc", math.nan),
                        desc="grok (best val acc)", progress=progress)
    return common.write_outputs(out, config, records, summarise, plot)


# ---------------------------------------------------------------------- summary


def analyse(records: list[dict]) -> dict[tuple, dict]:
    """Per (fraction, weight decay, algorithm): steps to 99% (mean over the seeds that got there)."""
    groups = common.group(flat_results(records), "fraction", "weight_decay", "algorithm")
    out = {}
    for key, rs in sorted(groups.items()):
        train_steps = [r["steps_to_train"] for r in rs if r["steps_to_train"] is not None]
        val_steps = [r["steps_to_val"] for r in rs if r["steps_to_val"] is not None]
        out[key] = {
            "seeds": len(rs), "train_reached": len(train_steps), "val_reached": len(val_steps),
            "steps_to_train": statistics.fmean(train_steps) if train_steps else math.nan,
            "steps_to_val": statistics.fmean(val_steps) if val_steps else math.nan,
            "final_val_acc": statistics.fmean(r["final_val_acc"] for r in rs),
            "final_weight_norm": statistics.fmean(r["final_weight_norm"] for r in rs),
            "budget": max(r["steps"] for r in rs),
            "wall_s": statistics.fmean(r["wall_s"] for r in rs),
        }
    return out


def summarise(records: list[dict], config: GrokConfig) -> str:
    if not records:
        return "# Grokking\n\nNo runs.\n"
    a = analyse(records)
    model = ("embedding + one hidden ReLU layer (width "
             f"{config.width}, embedding {config.embed_dim})" if config.model == "mlp" else
             f"{config.layers}-layer transformer (d_model {config.d_model}, {config.heads} heads)")
    batch = "full batch" if config.batch_size == 0 else f"batch {config.batch_size}"
    lines = [
        "# Grokking a + b mod p: backprop vs predictive coding",
        "",
        f"{len(records)} runs: {model} on a + b mod {config.p}; AdamW lr {config.lr}, {batch}, "
        f"budget {config.steps} steps, accuracy measured every {config.eval_every} steps, seeds "
        f"{list(config.seeds)}; PC: {config.pc_steps} inference steps of size {config.pc_step_size}. "
        "Steps to 99% are means over the seeds that reached it (reached/seeds in brackets).",
        "",
        table(["train fraction", "weight decay", "algorithm", "steps to train 99%", "steps to val 99%",
               "final val acc", "final weight norm", "wall s/run"],
              [[f"{f:g}", f"{wd:g}", alg,
                f"{fmt(v['steps_to_train'], 0)} ({v['train_reached']}/{v['seeds']})",
                f"{fmt(v['steps_to_val'], 0)} ({v['val_reached']}/{v['seeds']})",
                fmt(v["final_val_acc"], 3), fmt(v["final_weight_norm"], 1), fmt(v["wall_s"], 1)]
               for (f, wd, alg), v in a.items()]),
        "",
        "## Measured answers",
        "",
    ]
    for (f, wd, alg), v in a.items():
        if v["val_reached"] == v["seeds"] and v["train_reached"] == v["seeds"]:
            lines.append(f"- {alg}, fraction {f:g}, weight decay {wd:g}: grokked in every seed; "
                         f"validation reached 99% {fmt(v['steps_to_val'] - v['steps_to_train'], 0)} "
                         f"steps after training did ({fmt(v['steps_to_val'], 0)} vs "
                         f"{fmt(v['steps_to_train'], 0)}).")
        else:
            lines.append(f"- {alg}, fraction {f:g}, weight decay {wd:g}: validation reached 99% in "
                         f"{v['val_reached']} of {v['seeds']} seeds within {v['budget']} steps "
                         f"(final val acc {fmt(v['final_val_acc'], 3)}).")
    algorithms = sorted({k[2] for k in a})
    if "bp" in algorithms:
        for alg in [x for x in algorithms if x != "bp"]:
            for (f, wd, name), v in a.items():
                if name != alg:
                    continue
                ref = a.get((f, wd, "bp"))
                if ref and math.isfinite(v["steps_to_val"]) and math.isfinite(ref["steps_to_val"]):
                    lines.append(f"- {alg} / bp steps to val 99% at fraction {f:g}, weight decay {wd:g}: "
                                 f"{fmt(v['steps_to_val'] / ref['steps_to_val'], 2)}; wall time per "
                                 f"run {fmt(v['wall_s'] / ref['wall_s'], 1)}x.")
    lines += ["", "Plots: `curves.png` (train/val accuracy, log step axis, first seed), "
              "`weight_norm.png`, `steps_to_99.png`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------ plots


def plot(records: list[dict], config: GrokConfig, out: Path) -> list[Path]:
    plt = common.pyplot()
    rows = flat_results(records)
    if not rows:
        return []
    algorithms = [x for x in config.algorithms if any(r["algorithm"] == x for r in rows)]
    wds = sorted({r["weight_decay"] for r in rows})
    fraction, seed = min(r["fraction"] for r in rows), min(r["seed"] for r in rows)
    pick = {(r["algorithm"], r["weight_decay"]): r for r in rows
            if r["fraction"] == fraction and r["seed"] == seed}
    paths = []

    fig, axes = plt.subplots(len(algorithms), len(wds), figsize=(3.2 * len(wds), 2.8 * len(algorithms)),
                             squeeze=False, sharey=True)
    for i, alg in enumerate(algorithms):
        for j, wd in enumerate(wds):
            ax = axes[i][j]
            r = pick.get((alg, wd))
            if r is None:
                continue
            steps = [max(e["step"], 1) for e in r["evals"]]
            ax.plot(steps, [e["train_acc"] for e in r["evals"]], label="train")
            ax.plot(steps, [e["val_acc"] for e in r["evals"]], label="validation")
            ax.set_xscale("log")
            ax.set_title(f"{alg}, wd {wd:g}", fontsize=9)
            ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel("accuracy")
            ax.legend(fontsize=7)
    fig.suptitle(f"a + b mod {config.p}, train fraction {fraction:g}, seed {seed}", fontsize=10)
    fig.tight_layout()
    paths.append(common.save_figure(fig, out / "curves.png"))

    fig, axes = plt.subplots(1, len(algorithms), figsize=(4.5 * len(algorithms), 3.2), squeeze=False)
    for ax, alg in zip(axes[0], algorithms):
        for wd in wds:
            r = pick.get((alg, wd))
            if r is not None:
                ax.plot([max(e["step"], 1) for e in r["evals"]], [e["weight_norm"] for e in r["evals"]],
                        label=f"wd {wd:g}")
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("weight norm")
        ax.set_title(alg)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(common.save_figure(fig, out / "weight_norm.png"))

    a = analyse(records)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for alg in algorithms:
        for f in sorted({k[0] for k in a}):
            pts = [(wd, a[(f, wd, alg)]) for wd in wds if (f, wd, alg) in a]
            ax.plot([p[0] for p in pts], [p[1]["steps_to_val"] for p in pts], "o-", label=f"{alg} val, f={f:g}")
            ax.plot([p[0] for p in pts], [p[1]["steps_to_train"] for p in pts], "x--", label=f"{alg} train, f={f:g}")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)  # weight decays are >= 0; symlog's margin would show negative ones
    if any(math.isfinite(v[k]) for v in a.values() for k in ("steps_to_val", "steps_to_train")):
        ax.set_yscale("log")
    else:  # a log axis with no finite point cannot be drawn
        ax.text(0.5, 0.5, "no run reached 99%", transform=ax.transAxes, ha="center")
    ax.set_xlabel("weight decay")
    ax.set_ylabel("steps to 99% (missing: not reached)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(common.save_figure(fig, out / "steps_to_99.png"))
    return paths


# ---------------------------------------------------------------------- command


def command(
    quick: common.Quick = False,
    algorithms: common.Algorithms = "bp,pc",
    model: Annotated[str, typer.Option(help="mlp (embedding + hidden layer) or transformer (default: the preset's).")] = "",
    p: Annotated[int, typer.Option(help="Modulus p (0: the preset's).")] = 0,
    fractions: Annotated[str, typer.Option(help="Comma-separated training fractions of the p^2 pairs.")] = "",
    weight_decays: Annotated[str, typer.Option(help="Comma-separated AdamW weight decays.")] = "",
    lr: Annotated[float, typer.Option(help="AdamW learning rate (0: the preset's).")] = 0.0,
    steps: Annotated[int, typer.Option(help="Step budget per run (0: the preset's).")] = 0,
    eval_every: Annotated[int, typer.Option(help="Measure accuracy every this many steps (0: the preset's).")] = 0,
    pc_steps: common.PcSteps = 0,
    pc_step_size: common.PcStepSize = 0.0,
    batch_size: Annotated[Optional[int], typer.Option(help="Pairs per step, 0: full batch (default: the "
                                                      "preset's).")] = None,
    width: Annotated[int, typer.Option(help="MLP hidden units (0: the preset's).")] = 0,
    d_model: Annotated[int, typer.Option(help="Transformer width (0: the preset's).")] = 0,
    layers: Annotated[int, typer.Option(help="Transformer layers (0: the preset's).")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/grok"),
    compile: common.Compile = False,
    device: common.Device = "auto",
    workers: common.Workers = 2,
    ray: common.Ray = False,
    ray_address: common.RayAddress = "",
    seed: common.Seed = 0,
    num_seeds: common.NumSeeds = 0,
    progress: common.Progress = True,
) -> None:
    """Grokking a + b mod p: steps to 99% train and validation accuracy vs weight decay, bp vs PC."""
    common.execute(make_config, run, **locals())


def make_config(*, quick: bool = False, algorithms: str = "bp,pc", model: str = "", p: int = 0,
                fractions: str = "", weight_decays: str = "", lr: float = 0.0, steps: int = 0,
                eval_every: int = 0, pc_steps: int = 0, pc_step_size: float = 0.0,
                batch_size: int | None = None, width: int = 0,
                d_model: int = 0, layers: int = 0, seed: int = 0, num_seeds: int = 0,
                compile: bool = False, device: str = "auto") -> GrokConfig:
    config = common.configure(
        QUICK if quick else FULL, algorithms=algorithms, seed=seed, num_seeds=num_seeds, compile=compile,
        device=device, model=model or None,
        p=p or None, lr=lr or None, steps=steps or None, eval_every=eval_every or None,
        pc_steps=pc_steps or None, pc_step_size=pc_step_size or None, batch_size=batch_size, width=width or None, d_model=d_model or None,
        layers=layers or None,
        fractions=common.parse_list(fractions, float, "fractions") if fractions else None,
        weight_decays=common.parse_list(weight_decays, float, "weight-decays") if weight_decays else None)
    config.validate()
    return config
