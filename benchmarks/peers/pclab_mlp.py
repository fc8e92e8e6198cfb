"""pclab side of the PCX peer benchmark: ``pcx_mlp.py``'s network and rule, trained with pclab.

Same model, rule, data, batch order and hyperparameters as ``pcx_mlp.py``, so the two
can be timed side by side (``compare_pcx.py`` alternates them):

    u_1 = f(W_1 x + b_1),  u_2 = f(W_2 h_1 + b_2),  u_3 = W_3 h_2 + b_3
    F   = sum_batch sum_l 1/2 ||h_l - u_l||^2,       h_3 := y (one-hot, clamped)

with f = leaky-ReLU (slope 0.01) and sizes 784-128-128-10. Per mini-batch of 64:
forward-initialise h_l = u_l, then T = 8 steps h <- h - 0.1 dF/dh on the two hidden
values (pclab's ``step_size`` acts on each example's own energy, which is what PCX's
batch-summed F gives), then one AdamW step (lr 1e-3, weight decay 1e-4 as optax's
``adamw`` default; torch's default is 1e-2) on dF/dW / batch. Prediction is the argmax
of the feed-forward output.

In pclab this is ``PredictiveCoding(model, loss="mse", algorithm="pc", steps=8,
step_size=0.1, value_nodes=<after each activation>)``: the value nodes sit where PCX
puts its Vodes, and ``"mse"`` (``1/2 ||y - u_3||^2`` per example) is the output Vode's
energy with its value clamped to the target. ``tests/test_peers_smoke.py`` checks one
step against this rule written out by hand with autograd.

Data: Fashion-MNIST IDX files from ``--data-dir`` via ``pclab.data.load`` (never
downloaded here), pixels /255 flattened; each epoch's order is
``numpy.random.default_rng(seed).permutation``, drawn exactly as ``pcx_mlp.py`` draws
it, so both see the same batches. Weights use torch's ``nn.Linear`` init, which has
the same distribution as equinox's (uniform +-1/sqrt(fan_in)), but not the same draws.

The JSON report has ``pcx_mlp.py``'s schema. Differences: ``compile_s`` is the wall
time of the first step (graph capture + one step; torch has nothing to compile) and
torch runs synchronously, so no sync is needed at window edges.

    python benchmarks/peers/pclab_mlp.py --smoke
    python benchmarks/peers/pclab_mlp.py --max-steps 500 --json benchmarks/peers/results/pclab_timing_500.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

import pclab
from pclab.data import load

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "fashion-mnist"


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark hyperparameters (``pcx_mlp.py``'s defaults); every field is a CLI flag."""

    epochs: int = 5
    batch_size: int = 64
    T: int = 8
    lr_h: float = 0.1  # value step on each example's energy (= PCX's SGD on batch-summed F)
    lr_w: float = 1e-3  # AdamW on weights
    weight_decay: float = 1e-4  # optax.adamw default (torch.optim.AdamW's default is 1e-2)
    hidden: int = 128
    seed: int = 0
    max_steps: int | None = None  # stop after this many timed steps (timing run)
    smoke: bool = False
    window: int = 100  # timed steps per timing window
    data_dir: str = str(DEFAULT_DATA)
    threads: int | None = None  # torch.set_num_threads; None keeps torch's default


# Model -----------------------------------------------------------------------


class MLP(nn.Module):
    """784-128-128-10 MLP, leaky-ReLU (slope 0.01) after the two hidden layers, linear output."""

    def __init__(self, sizes: tuple[int, int, int, int] = (784, 128, 128, 10), slope: float = 0.01):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.act1 = nn.LeakyReLU(slope)
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.act2 = nn.LeakyReLU(slope)
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def after_activations(node: fx.Node) -> bool:
    """Value nodes where PCX puts its hidden Vodes: the output of ``act1`` and ``act2``."""
    return node.op == "call_module" and str(node.target).startswith("act")


def make_learner(model: MLP, cfg: Config) -> pclab.PredictiveCoding:
    """PCX's supervised PC: T value-SGD steps of size lr_h, output clamped by ``"mse"``."""
    return pclab.PredictiveCoding(model, loss="mse", algorithm="pc", steps=cfg.T, step_size=cfg.lr_h,
                                  value_nodes=after_activations)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """``optax.adamw(lr_w, weight_decay=...)``: b1 0.9, b2 0.999, eps 1e-8, decay on every parameter."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr_w, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=cfg.weight_decay)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> float:
    """Accuracy of the feed-forward argmax over all of (x, y)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            pred = model(x[start:start + chunk]).argmax(dim=1)
            correct += int((pred == y[start:start + chunk]).sum())
    return correct / len(x)


# Machine ---------------------------------------------------------------------
# The same measurements as pcx_mlp.py (which cannot be imported here: it imports jax).


def machine_info() -> dict:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, ValueError, subprocess.CalledProcessError):
        nproc = os.cpu_count()
    return {
        "nproc": nproc,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "loadavg_1_5_15": list(os.getloadavg()),
    }


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process) so far; their difference
    over a run is the CPU time other processes took (this machine is shared)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return machine, own.user + own.system


def versions() -> dict:
    out = {}
    for pkg in ("pclab", "torch", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        out["pclab_git"] = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                                          capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["pclab_git"] = None
    return out


# Run -------------------------------------------------------------------------


def run(cfg: Config) -> dict:
    ds = load("fashion-mnist", cfg.data_dir, download=False)
    x_train, y_train = ds.x_train.flatten(1), ds.y_train
    x_test, y_test = ds.x_test.flatten(1), ds.y_test
    if cfg.smoke:
        x_train, y_train = x_train[:512], y_train[:512]
        x_test, y_test = x_test[:512], y_test[:512]

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # same shuffling stream as pcx_mlp.py
    model = MLP((x_train.shape[1], cfg.hidden, cfg.hidden, 10))
    pc = make_learner(model, cfg)
    opt = make_optimizer(model, cfg)

    B = cfg.batch_size
    steps_per_epoch = len(x_train) // B  # drop_last, as pcx_mlp.py
    epochs = 1 if cfg.smoke else cfg.epochs
    compile_s = None
    n_timed = 0
    segments = []  # per epoch: [(time, n_timed)] at its start, each window edge, its end
    epoch_s, epoch_energy, test_acc = [], [], []
    done = partial = False

    def train_step(idx: np.ndarray) -> float:
        index = torch.from_numpy(idx)
        opt.zero_grad(set_to_none=True)
        result = pc.step(x_train[index], y_train[index])
        opt.step()
        return result.energy  # batch-mean total energy after inference

    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        energies = []
        t_epoch = time.perf_counter()
        marks = []
        for i in range(steps_per_epoch):
            idx = order[i * B:(i + 1) * B]
            if compile_s is None:
                t0 = time.perf_counter()
                e = train_step(idx)
                compile_s = time.perf_counter() - t0
            else:
                if not marks:
                    marks.append((time.perf_counter(), n_timed))
                e = train_step(idx)
                n_timed += 1
                if n_timed % cfg.window == 0:
                    marks.append((time.perf_counter(), n_timed))
            energies.append(e)
            if cfg.max_steps is not None and n_timed >= cfg.max_steps:
                done = True
                partial = i + 1 < steps_per_epoch
                break
        t_end = time.perf_counter()
        if marks:
            if marks[-1][1] != n_timed:
                marks.append((t_end, n_timed))
            segments.append(marks)
        epoch_s.append(t_end - t_epoch)
        epoch_energy.append(float(np.mean(energies)))
        test_acc.append(evaluate(model, x_test, y_test))
        print(f"epoch {epoch + 1}: {epoch_s[-1]:.2f} s, mean energy/sample {epoch_energy[-1]:.4f}, "
              f"test acc {test_acc[-1]:.4f}", flush=True)
        if done:
            break

    timed_s = sum(seg[-1][0] - seg[0][0] for seg in segments)
    window_rates = [(n1 - n0) / (t1 - t0) for seg in segments
                    for (t0, n0), (t1, n1) in zip(seg, seg[1:]) if n1 - n0 == cfg.window]
    return {
        "compile_s": compile_s,
        "timed_steps": n_timed,
        "timed_s": timed_s,
        "steps_per_s": n_timed / timed_s if timed_s > 0 else None,
        "window": cfg.window,
        "steps_per_s_windows": window_rates,
        "steps_per_s_best_window": max(window_rates) if window_rates else None,
        "steps_per_s_median_window": float(np.median(window_rates)) if window_rates else None,
        "epoch_s": epoch_s,
        "full_epochs": len(epoch_s) - int(partial),
        "steps_per_epoch": steps_per_epoch,
        "train_steps_done": n_timed + 1,
        "train_energy_per_sample": epoch_energy,
        "test_acc": test_acc,
        "n_train": len(x_train),
        "n_test": len(x_test),
    }


def parse_args(argv: list[str] | None = None) -> tuple[Config, str | None]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Config()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--T", type=int, default=d.T)
    p.add_argument("--lr-h", type=float, default=d.lr_h)
    p.add_argument("--lr-w", type=float, default=d.lr_w)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N timed steps")
    p.add_argument("--smoke", action="store_true", help="512 train/512 test examples, 1 epoch")
    p.add_argument("--window", type=int, default=d.window,
                   help="timed steps per window; steps/s is also reported per window")
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="OUT", help="write results JSON here")
    a = p.parse_args(argv)
    cfg = Config(epochs=a.epochs, batch_size=a.batch_size, T=a.T, lr_h=a.lr_h, lr_w=a.lr_w,
                 weight_decay=a.weight_decay, seed=a.seed, max_steps=a.max_steps, smoke=a.smoke,
                 window=a.window, data_dir=a.data_dir, threads=a.threads)
    return cfg, a.json


def main(argv: list[str] | None = None) -> dict:
    cfg, out = parse_args(argv)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine_before = machine_info()
    cpu0, own0, t0 = *cpu_seconds(), time.perf_counter()
    res = run(cfg)
    cpu1, own1, wall = *cpu_seconds(), time.perf_counter() - t0
    others = max(0.0, (cpu1 - cpu0) - (own1 - own0))
    contention = {"wall_s": wall, "own_cpu_s": own1 - own0, "other_processes_cpu_s": others,
                  "other_processes_avg_cores": others / wall}
    report = {
        "benchmark": "pclab_mlp 784-128-128-10 leaky_relu, SE energy, supervised PC (pcx_mlp.py's rule)",
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else [__file__, *argv])]),
        "cwd": os.getcwd(),
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "machine": machine_before,
        "loadavg_after_run": list(os.getloadavg()),
        "contention": contention,
        "results": res,
        "notes": (
            "compile_s = wall time of the first train step (fx graph capture + one step), excluded "
            "from steps_per_s. steps_per_s = timed train steps / wall time (torch on CPU is "
            "synchronous). steps_per_s_windows: the same per window of `window` steps. epoch_s "
            "includes the first step in epoch 1; test evaluation is not timed. Weight decay 1e-4 "
            "(optax.adamw's default); weight gradient is the batch mean. Batch order is "
            "pcx_mlp.py's (numpy default_rng(seed).permutation per epoch)."
        ),
    }
    acc = res["test_acc"]
    rows = [
        ("pclab / torch", f"{report['versions']['pclab']} ({report['versions']['pclab_git']}) / "
                          f"{report['versions']['torch']}"),
        ("CPU", f"{machine_before['cpu_model']} ({machine_before['nproc']} cores, "
                f"{machine_before['torch_threads']} torch threads)"),
        ("first step (capture + step) s", f"{res['compile_s']:.2f}"),
        ("timed steps", str(res["timed_steps"])),
        (f"train steps/s (T={cfg.T}, B={cfg.batch_size})",
         f"{res['steps_per_s']:.1f}" if res["steps_per_s"] else "n/a"),
        (f"  per {cfg.window}-step window: median / best",
         f"{res['steps_per_s_median_window']:.1f} / {res['steps_per_s_best_window']:.1f}"
         if res["steps_per_s_windows"] else "n/a"),
        ("other processes' CPU during run (cores)", f"{contention['other_processes_avg_cores']:.2f}"),
        ("s per epoch", ", ".join(f"{s:.1f}" for s in res["epoch_s"])),
        ("test acc after epoch 1" if res["full_epochs"] >= 1
         else f"test acc after {res['train_steps_done']} steps", f"{acc[0]:.4f}" if acc else "n/a"),
        ("test acc after epoch 5", f"{acc[4]:.4f}" if len(acc) >= 5 else "n/a"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
