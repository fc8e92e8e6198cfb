"""PCX peer benchmark: the pclab benchmark MLP trained with PCX (JAX) on this CPU.

Runs inside ``benchmarks/peers/.venv`` (made by ``setup_pcx.sh``) and imports only
pcx, jax, optax, numpy and the standard library; it never imports pclab (the lab
stays apart from the library, and this file stays apart from both).

Model and rule (standard PCX supervised predictive coding, as in PCX's own
two-moons / Fashion-MNIST MLP examples, written here from scratch against the
pcx 0.6.3 API):

    u_1 = f(W_1 x + b_1),  u_2 = f(W_2 h_1 + b_2),  u_3 = W_3 h_2 + b_3
    F   = sum_batch sum_l 1/2 ||h_l - u_l||^2,       h_3 := y (one-hot, frozen)

with f = leaky-ReLU (slope 0.01, ``jax.nn.leaky_relu``) and sizes 784-128-128-10.
Per mini-batch: forward-initialise h_l = u_l, clamp h_3 to the target, then T
inference steps h <- h - lr_h * dF/dh (SGD, h_3 excluded), then one weight step
with AdamW on dF/dW scaled by 1/batch (i.e. the batch-mean gradient; Adam is
nearly invariant to that scale). Prediction = argmax of the feed-forward u_3.

The whole train step (init + T inference steps + weight step) is one
``pxf.jit``-compiled function with T static, as PCX's examples do.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import importlib.metadata
import json
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

import pcx as px
import pcx.functional as pxf
import pcx.nn as pxnn
import pcx.predictive_coding as pxc
import pcx.utils as pxu

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "fashion-mnist"


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark hyperparameters; every field can be overridden from the CLI."""

    epochs: int = 5
    batch_size: int = 64
    T: int = 8
    lr_h: float = 0.1  # SGD on value nodes
    lr_w: float = 1e-3  # AdamW on weights
    weight_decay: float = 1e-4  # optax.adamw default
    hidden: int = 128
    seed: int = 0
    max_steps: int | None = None  # stop after this many timed steps (timing run)
    smoke: bool = False
    sync_each_step: bool = False  # block_until_ready after every step, not only per window
    window: int = 100  # timed steps per timing window (block_until_ready at each edge)
    data_dir: str = str(DEFAULT_DATA)


# Data ------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped big-endian IDX file (magic 0x0000 08 NDIM, then NDIM uint32 sizes)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {raw[:4]!r})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {data.size} bytes")
    return data.reshape(dims)


def load_split(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images flattened to float32 in [0, 1] and int32 labels."""
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{prefix}: {len(images)} images but {len(labels)} labels")
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x, labels.astype(np.int32)


# Model -----------------------------------------------------------------------


class PCMLP(pxc.EnergyModule):
    """784-128-128-10 predictive-coding MLP: one value node (Vode) after each layer.

    Hidden Vodes use PCX's default squared-error energy 1/2 ||h - u||^2; the output
    Vode uses the same energy with its value h frozen to the one-hot target.
    """

    def __init__(self, sizes: tuple[int, ...], act_fn: Callable[[jax.Array], jax.Array]):
        super().__init__()
        self.act_fn = px.static(act_fn)
        self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.vodes = [pxc.Vode(pxc.se_energy) for _ in sizes[1:]]
        # Output value node is clamped, not inferred: inference masks it out by this flag.
        self.vodes[-1].h.frozen = True

    def __call__(self, x: jax.Array, y: jax.Array | None) -> jax.Array:
        for vode, layer in zip(self.vodes[:-1], self.layers[:-1]):
            x = vode(self.act_fn(layer(x)))
        self.vodes[-1](self.layers[-1](x))
        if y is not None:
            self.vodes[-1].set("h", y)
        return self.vodes[-1].get("u")


# Per-sample state (Vode values and caches) is vmapped over the batch axis; weights are shared.
_PER_SAMPLE = pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0))
_INFERRED = pxu.M_hasnot(pxc.VodeParam, frozen=True)


@pxf.vmap(_PER_SAMPLE, in_axes=(0, 0), out_axes=0)
def forward(x, y, *, model: PCMLP):
    return model(x, y)


@pxf.vmap(_PER_SAMPLE, in_axes=(0,), out_axes=(None, 0), axis_name="batch")
def energy(x, *, model: PCMLP):
    """Total energy F summed over the batch (so dF/dh_i is sample i's own gradient)."""
    u_out = model(x, None)
    return jax.lax.psum(model.energy(), "batch"), u_out


@pxf.jit(static_argnums=0)
def train_on_batch(T: int, x, y, *, model: PCMLP, optim_w: pxu.Optim, optim_h: pxu.Optim):
    """One PC training step: forward init, T value-node SGD steps, one AdamW weight step."""
    model.train()
    with pxu.step(model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
        forward(x, y, model=model)
    optim_h.init(_INFERRED(model))

    inference_grad = pxf.value_and_grad(_INFERRED.to([False, True]), has_aux=True)(energy)
    for _ in range(T):
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = inference_grad(x, model=model)
        optim_h.step(model, g["model"])
    optim_h.clear()

    learning_grad = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)
    with pxu.step(model, clear_params=pxc.VodeParam.Cache):
        (e, _), g = learning_grad(x, model=model)
    optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])
    return e


@pxf.jit()
def predict_on_batch(x, *, model: PCMLP):
    """Feed-forward prediction (Vodes forward-initialised, no inference, nothing clamped)."""
    model.eval()
    with pxu.step(model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
        return forward(x, None, model=model).argmax(axis=-1)


def sync(model: PCMLP) -> None:
    """Wait for every array in the model (weights and value nodes): JAX dispatch is async."""
    jax.block_until_ready([a for a in jtu.tree_leaves(model) if isinstance(a, jax.Array)])


def evaluate(x: np.ndarray, y: np.ndarray, batch_size: int, *, model: PCMLP) -> float:
    """Accuracy over all of (x, y). The last batch is zero-padded to batch_size so the
    Vode shapes never change (a new shape would retrace the jitted train step)."""
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - n, x.shape[1]), x.dtype)])
        pred = np.asarray(predict_on_batch(xb, model=model))[:n]
        correct += int((pred == y[start : start + n]).sum())
    return correct / len(x)


# Run -------------------------------------------------------------------------


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
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "loadavg_1_5_15": list(os.getloadavg()),
    }


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process) so far.

    Their difference over a run is the CPU time other processes took meanwhile, a
    direct measure of how much the timings were contended (this machine is shared).
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return machine, own.user + own.system


def versions() -> dict:
    out = {}
    for pkg in ("pcx", "jax", "jaxlib", "optax", "equinox", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def run(cfg: Config) -> dict:
    data_dir = Path(cfg.data_dir)
    x_train, y_train = load_split(data_dir, "train")
    x_test, y_test = load_split(data_dir, "t10k")
    if cfg.smoke:
        x_train, y_train = x_train[:512], y_train[:512]
        x_test, y_test = x_test[:512], y_test[:512]
    y_train_1h = np.eye(10, dtype=np.float32)[y_train]

    px.RKG.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = PCMLP((x_train.shape[1], cfg.hidden, cfg.hidden, 10), jax.nn.leaky_relu)

    B = cfg.batch_size
    # Give the Vodes their (batch, dim) values before the first jitted call, so the
    # model pytree has the same structure on every call and compiles exactly once.
    with pxu.step(model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
        forward(jnp.zeros((B, x_train.shape[1])), None, model=model)
    optim_h = pxu.Optim(lambda: optax.sgd(cfg.lr_h))
    optim_w = pxu.Optim(
        lambda: optax.adamw(cfg.lr_w, weight_decay=cfg.weight_decay), pxu.M(pxnn.LayerParam)(model)
    )

    steps_per_epoch = len(x_train) // B  # drop_last, as PCX's loaders do
    epochs = 1 if cfg.smoke else cfg.epochs
    compile_s = None
    n_timed = 0  # timed steps so far (all but the very first step)
    segments = []  # per epoch: [(time, n_timed)] at its start, each window edge, its end
    epoch_s, epoch_energy, test_acc = [], [], []
    done = partial = False

    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        energies = []
        t_epoch = time.perf_counter()
        marks = []
        for i in range(steps_per_epoch):
            idx = order[i * B : (i + 1) * B]
            xb, yb = x_train[idx], y_train_1h[idx]
            if compile_s is None:
                t0 = time.perf_counter()
                e = train_on_batch(cfg.T, xb, yb, model=model, optim_w=optim_w, optim_h=optim_h)
                sync(model)
                compile_s = time.perf_counter() - t0
            else:
                if not marks:
                    marks.append((time.perf_counter(), n_timed))
                e = train_on_batch(cfg.T, xb, yb, model=model, optim_w=optim_w, optim_h=optim_h)
                n_timed += 1
                if cfg.sync_each_step:
                    sync(model)
                if n_timed % cfg.window == 0:
                    sync(model)
                    marks.append((time.perf_counter(), n_timed))
            energies.append(e)
            if cfg.max_steps is not None and n_timed >= cfg.max_steps:
                done = True
                partial = i + 1 < steps_per_epoch
                break
        sync(model)
        t_end = time.perf_counter()
        if marks:
            if marks[-1][1] != n_timed:
                marks.append((t_end, n_timed))
            segments.append(marks)
        epoch_s.append(t_end - t_epoch)
        epoch_energy.append(float(jnp.mean(jnp.stack(energies))) / B)
        test_acc.append(evaluate(x_test, y_test, B, model=model))
        print(
            f"epoch {epoch + 1}: {epoch_s[-1]:.2f} s, mean energy/sample {epoch_energy[-1]:.4f}, "
            f"test acc {test_acc[-1]:.4f}",
            flush=True,
        )
        if done:
            break

    timed_s = sum(seg[-1][0] - seg[0][0] for seg in segments)
    window_rates = [
        (n1 - n0) / (t1 - t0)
        for seg in segments
        for (t0, n0), (t1, n1) in zip(seg, seg[1:])
        if n1 - n0 == cfg.window
    ]
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
    p.add_argument("--sync-each-step", action="store_true",
                   help="block_until_ready after every train step (latency-bound timing)")
    p.add_argument("--window", type=int, default=d.window,
                   help="timed steps per window; steps/s is also reported per window")
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--json", default=None, metavar="OUT", help="write results JSON here")
    a = p.parse_args(argv)
    cfg = Config(
        epochs=a.epochs, batch_size=a.batch_size, T=a.T, lr_h=a.lr_h, lr_w=a.lr_w,
        weight_decay=a.weight_decay, seed=a.seed, max_steps=a.max_steps, smoke=a.smoke,
        sync_each_step=a.sync_each_step, window=a.window, data_dir=a.data_dir,
    )
    return cfg, a.json


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine_before = machine_info()  # load average before the run: other work skews timings
    cpu0, own0, t0 = *cpu_seconds(), time.perf_counter()
    res = run(cfg)
    cpu1, own1, wall = *cpu_seconds(), time.perf_counter() - t0
    contention = {
        "wall_s": wall,
        "own_cpu_s": own1 - own0,
        "other_processes_cpu_s": max(0.0, (cpu1 - cpu0) - (own1 - own0)),
        "other_processes_avg_cores": max(0.0, (cpu1 - cpu0) - (own1 - own0)) / wall,
    }
    report = {
        "benchmark": "pcx_mlp 784-128-128-10 leaky_relu, SE energy, supervised PC",
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cwd": os.getcwd(),
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "jax_devices": [str(d) for d in jax.devices()],
        "machine": machine_before,
        "loadavg_after_run": list(os.getloadavg()),
        "contention": contention,
        "results": res,
        "notes": (
            "compile_s = wall time of the first train step (trace + XLA compile + one step), "
            "excluded from steps_per_s. steps_per_s = timed train steps / wall time, with "
            "block_until_ready at every window edge and epoch end (dispatch is async; with "
            "--sync-each-step also after every step). steps_per_s_windows: the same per window of "
            "`window` steps; best/median windows are less sensitive to other load on the machine. "
            "epoch_s includes the first (compile) step in epoch 1; test evaluation is not timed. Weight decay "
            "is optax.adamw's default 1e-4; weight gradient is the batch mean."
        ),
    }
    acc = res["test_acc"]
    rows = [
        ("pcx / jax", f"{report['versions']['pcx']} / {report['versions']['jax']}"),
        ("CPU", f"{report['machine']['cpu_model']} ({report['machine']['nproc']} cores)"),
        ("compile (first step) s", f"{res['compile_s']:.2f}"),
        ("timed steps", str(res["timed_steps"])),
        ("train steps/s (T=%d, B=%d)" % (cfg.T, cfg.batch_size),
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


if __name__ == "__main__":
    main()
