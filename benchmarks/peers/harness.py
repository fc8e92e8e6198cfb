"""The library-agnostic half of the peer MLP benchmark: config, CLI, timed loop, report.

``pcx_mlp.py`` (JAX, in ``benchmarks/peers/.venv``) and ``pclab_mlp.py`` (torch) train
the same PC MLP on the same batches; each supplies only what is library-specific as a
:class:`Benchmark` subclass (data and model in a :class:`Trainer`, versions, machine
fields, report lines) and calls :func:`main`. Everything here uses only the standard
library and numpy, so either environment can import it (and neither imports the other).

Timing protocol (:func:`run`): the first train step (compile / graph capture + one
step) is timed alone as ``compile_s``; every later step is a *timed* step. Each epoch's
timed steps are cut into windows of ``window`` steps, with ``Trainer.sync`` (wait for
asynchronous work) at every window edge and epoch end, so

    steps_per_s = timed steps / sum of the epochs' timed wall time,

and ``steps_per_s_windows`` is the same per full window (best / median windows are less
sensitive to other load on this shared machine).
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
from typing import Any, Protocol, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared provenance helper
from provenance import cpu  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "fashion-mnist"
SMOKE_EXAMPLES = 512  # --smoke keeps this many train and test examples, and runs 1 epoch


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark hyperparameters (PCX's defaults); a peer subclasses to add its own fields."""

    epochs: int = 5
    batch_size: int = 64
    T: int = 8
    lr_h: float = 0.1  # SGD on value nodes, each example's own energy (= PCX's SGD on batch-summed F)
    lr_w: float = 1e-3  # AdamW on weights
    weight_decay: float = 1e-4  # optax.adamw default (torch.optim.AdamW's default is 1e-2)
    hidden: int = 128
    seed: int = 0
    max_steps: int | None = None  # stop after this many timed steps (timing run)
    smoke: bool = False
    window: int = 100  # timed steps per timing window
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


def smoke_subset(cfg: Config, *arrays: Any) -> tuple[Any, ...]:
    """The first SMOKE_EXAMPLES rows of each array under ``--smoke``, else the arrays unchanged."""
    return tuple(a[:SMOKE_EXAMPLES] for a in arrays) if cfg.smoke else arrays


# Machine ---------------------------------------------------------------------


def machine_info(extra: dict) -> dict:
    """This machine, with a peer's own fields (threads, XLA flags) before the load average."""
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, ValueError, subprocess.CalledProcessError):
        nproc = os.cpu_count()
    return {
        "nproc": nproc,
        "cpu_model": cpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
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


def package_versions(packages: Sequence[str]) -> dict:
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# The peer's part -------------------------------------------------------------


class Trainer(Protocol):
    """One run's data, model and optimiser, built by :meth:`Benchmark.trainer`."""

    n_train: int
    n_test: int

    def train_step(self, idx: np.ndarray) -> Any:
        """One PC step (inference + weight update) on training rows ``idx``; returns its energy."""

    def sync(self) -> None:
        """Wait until every step dispatched so far has finished (no-op if synchronous)."""

    def mean_energy(self, energies: list) -> float:
        """Mean energy per sample over one epoch's ``train_step`` results."""

    def evaluate(self) -> float:
        """Test accuracy of the feed-forward argmax."""


class Benchmark:
    """A peer library's side of the benchmark. Subclasses override the hooks below;
    :func:`run` and :func:`main` own the loop, the CLI and the report."""

    config: type[Config] = Config
    benchmark: str = ""  # the report's "benchmark" line
    notes: str = ""  # the report's "notes": what compile_s and steps_per_s mean here
    first_step_label: str = "compile (first step) s"

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        """Flags for the subclass's own Config fields (dest = field name)."""

    def prepare(self, cfg: Config) -> None:
        """Apply process-wide settings (threads) before the machine is recorded."""

    def trainer(self, cfg: Config) -> Trainer:
        raise NotImplementedError

    def versions(self) -> dict:
        raise NotImplementedError

    def machine(self) -> dict:
        """Extra fields for the report's "machine"."""
        return {}

    def report_extra(self) -> dict:
        """Extra top-level report fields, placed after "versions"."""
        return {}

    def header_rows(self, report: dict) -> list[tuple[str, str]]:
        """The summary's first rows: library versions and CPU."""
        raise NotImplementedError


# Run -------------------------------------------------------------------------


def run(cfg: Config, bench: Benchmark) -> dict:
    """Train ``bench``'s model under the timing protocol in the module docstring."""
    trainer = bench.trainer(cfg)
    rng = np.random.default_rng(cfg.seed)  # the batch order both peers share

    B = cfg.batch_size
    steps_per_epoch = trainer.n_train // B  # drop_last, as PCX's loaders do
    epochs = 1 if cfg.smoke else cfg.epochs
    compile_s = None
    n_timed = 0  # timed steps so far (all but the very first step)
    segments = []  # per epoch: [(time, n_timed)] at its start, each window edge, its end
    epoch_s, epoch_energy, test_acc = [], [], []
    done = partial = False

    for epoch in range(epochs):
        order = rng.permutation(trainer.n_train)
        energies = []
        t_epoch = time.perf_counter()
        marks = []
        for i in range(steps_per_epoch):
            idx = order[i * B : (i + 1) * B]
            if compile_s is None:
                t0 = time.perf_counter()
                e = trainer.train_step(idx)
                trainer.sync()
                compile_s = time.perf_counter() - t0
            else:
                if not marks:
                    marks.append((time.perf_counter(), n_timed))
                e = trainer.train_step(idx)
                n_timed += 1
                if n_timed % cfg.window == 0:
                    trainer.sync()
                    marks.append((time.perf_counter(), n_timed))
            energies.append(e)
            if cfg.max_steps is not None and n_timed >= cfg.max_steps:
                done = True
                partial = i + 1 < steps_per_epoch
                break
        trainer.sync()
        t_end = time.perf_counter()
        if marks:
            if marks[-1][1] != n_timed:
                marks.append((t_end, n_timed))
            segments.append(marks)
        epoch_s.append(t_end - t_epoch)
        epoch_energy.append(trainer.mean_energy(energies))
        test_acc.append(trainer.evaluate())
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
        "n_train": trainer.n_train,
        "n_test": trainer.n_test,
    }


def parse_args(bench: Benchmark, description: str, argv: list[str] | None = None) -> tuple[Config, str | None]:
    p = argparse.ArgumentParser(description=description)
    d = bench.config()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--T", type=int, default=d.T)
    p.add_argument("--lr-h", type=float, default=d.lr_h)
    p.add_argument("--lr-w", type=float, default=d.lr_w)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N timed steps")
    p.add_argument("--smoke", action="store_true",
                   help=f"{SMOKE_EXAMPLES} train/{SMOKE_EXAMPLES} test examples, 1 epoch")
    p.add_argument("--window", type=int, default=d.window,
                   help="timed steps per window; steps/s is also reported per window")
    p.add_argument("--data-dir", default=d.data_dir)
    bench.add_flags(p)
    p.add_argument("--json", default=None, metavar="OUT", help="write results JSON here")
    a = vars(p.parse_args(argv))
    out = a.pop("json")
    return bench.config(**a), out


def summary_rows(bench: Benchmark, report: dict) -> list[tuple[str, str]]:
    cfg, res = report["config"], report["results"]
    acc = res["test_acc"]
    return [
        *bench.header_rows(report),
        (bench.first_step_label, f"{res['compile_s']:.2f}"),
        ("timed steps", str(res["timed_steps"])),
        (f"train steps/s (T={cfg['T']}, B={cfg['batch_size']})",
         f"{res['steps_per_s']:.1f}" if res["steps_per_s"] else "n/a"),
        (f"  per {cfg['window']}-step window: median / best",
         f"{res['steps_per_s_median_window']:.1f} / {res['steps_per_s_best_window']:.1f}"
         if res["steps_per_s_windows"] else "n/a"),
        ("other processes' CPU during run (cores)", f"{report['contention']['other_processes_avg_cores']:.2f}"),
        ("s per epoch", ", ".join(f"{s:.1f}" for s in res["epoch_s"])),
        ("test acc after epoch 1" if res["full_epochs"] >= 1
         else f"test acc after {res['train_steps_done']} steps", f"{acc[0]:.4f}" if acc else "n/a"),
        ("test acc after epoch 5", f"{acc[4]:.4f}" if len(acc) >= 5 else "n/a"),
    ]


def main(bench: Benchmark, script: str, description: str, argv: list[str] | None = None) -> dict:
    """Parse flags, run, print a summary, write ``--json``; ``script`` is the caller's ``__file__``."""
    cfg, out = parse_args(bench, description, argv)
    bench.prepare(cfg)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine_before = machine_info(bench.machine())  # load before the run: other work skews timings
    cpu0, own0, t0 = *cpu_seconds(), time.perf_counter()
    res = run(cfg, bench)
    cpu1, own1, wall = *cpu_seconds(), time.perf_counter() - t0
    others = max(0.0, (cpu1 - cpu0) - (own1 - own0))
    contention = {"wall_s": wall, "own_cpu_s": own1 - own0, "other_processes_cpu_s": others,
                  "other_processes_avg_cores": others / wall}
    report = {
        "benchmark": bench.benchmark,
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else [script, *argv])]),
        "cwd": os.getcwd(),
        "config": dataclasses.asdict(cfg),
        "versions": bench.versions(),
        **bench.report_extra(),
        "machine": machine_before,
        "loadavg_after_run": list(os.getloadavg()),
        "contention": contention,
        "results": res,
        "notes": bench.notes,
    }
    rows = summary_rows(bench, report)
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out}")
    return report
