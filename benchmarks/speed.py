"""Time and peak memory of one training step, each algorithm against plain backprop.

Every number is a ratio measured in this one run on this machine, so machine noise
and speed cancel:

- ``bp``: ``zero_grad(); loss.backward(); opt.step()`` on the same model and batch;
- ``fwd + T bwd``: one forward and T backward passes of the plain model plus the
  optimizer step (the cost FPA's T steps should stay within 1.1x of);
- ``T (fwd+bwd)``: T forward+backward passes plus the optimizer step (PC's budget);
- ``T bp``: T backprop steps, optimizer included (incremental PC's budget: it steps
  the optimizer at every one of its T ticks);
- ``incremental passes`` (eager): what an incremental tick computes beyond a backprop
  step's forward, backward and optimizer step (its errors, value move and error
  norms), timed alone over tensors shaped as the model's value nodes. Eager PyTorch
  cannot fuse them, so per tick they are a floor under eager incremental's ratio to
  its budget.

``--compile`` adds the same table with ``compile=True`` (pclab's torch.compile path;
backprop and the references compiled too, with ``torch.compile(model)``), its
ratios taken against compiled backprop, plus ``x eager bp`` (incremental PC compiles
its ticks, not its optimizer steps). ``--compile-per-tick`` adds it again with
``compile="tick"`` (each inference tick a program of its own; fpa, which cannot, left
out): what calling T programs a step costs against one unrolled program. On the CPU
peak memory is not sampled for compiled rows (fused kernels bypass the op-level
sampling).

Timings interleave all configurations over several rounds and keep each one's
median. Peak memory is the largest heap growth (glibc ``mallinfo2``: in-use bytes,
sampled after every aten op, backward included) during a step that starts with no
gradients allocated: what the step needs beyond the parameters and optimizer state.
The process keeps freed heap memory for reuse (:mod:`pclab.allocator`, as ``pclab
train`` does) unless ``--default-malloc`` is given; both sides of every ratio run
in the same process, under the same setting.

    python benchmarks/speed.py                 # full table, writes benchmarks/results/speed.json
    python benchmarks/speed.py --models "mlp 784-128-128-10" --json benchmarks/results/speed-mlp.json  # a subset, rendered beside it
    python benchmarks/speed.py --memory-only --json benchmarks/results/speed-memory.json
    python benchmarks/speed.py --smoke         # seconds: what the test suite runs

``--memory-only`` skips the timings: the heap peaks are counted, not timed, so they
come out the same on a busy machine, where timings would not.

Every eager row also counts what its step launches: the aten ops it dispatches
(forward, backward, optimizer and bookkeeping, against backprop's as ``ops x bp``)
and its host reads (``item``, ``tolist``, ``float()``... each a wait for a GPU to
drain its queue). Counted, not timed, they are the same on any machine, and on a
small model they are what a GPU's step time follows (launch cost, not arithmetic).
Batch 1 on the CPU is the same regime: ``--batch 1``.

``--device cuda`` runs every step on the GPU: timings synchronize the device around
each timed loop, and peak memory is CUDA's allocator peak
(``torch.cuda.max_memory_allocated``) during a step beyond what was allocated before
it, so compiled rows get it too. The heap settings do not apply there.

    python benchmarks/speed.py --device cuda --compile --json benchmarks/results/speed-cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import pclab
import pclab.allocator
from pclab import inference, models
from pclab.algorithms import _errors

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper, also when loaded by path
from provenance import commit, cpu, write_result  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def _images(shape):
    def make(batch):
        g = torch.Generator().manual_seed(0)
        return torch.rand((batch, *shape), generator=g), torch.randint(0, 10, (batch,), generator=g)
    return make


CASES = [
    Case("mlp 784-128-128-10", lambda: models.build("mlp", input_shape=(1, 28, 28), num_classes=10,
                                                   activation="leaky_relu"), _images((1, 28, 28))),
    Case("cnn (2 conv + pool)", lambda: models.build("cnn", input_shape=(1, 28, 28), num_classes=10,
                                                    channels=(16, 32, 32, 32)), _images((1, 28, 28))),
    Case("transformer block", lambda: models.build("transformer", input_shape=(1, 28, 28), num_classes=10,
                                                  d_model=64, heads=4, layers=1), _images((1, 28, 28))),
    Case("residual mlp x16", lambda: models.build("resnet", input_shape=(1, 28, 28), num_classes=10,
                                                 kind="mlp", depth=16, width=128), _images((1, 28, 28))),
]


def _heap_in_use() -> int:
    info = pclab.allocator.heap_info()
    return info.uordblks + info.hblkhd


class _PeakHeap(TorchDispatchMode):
    """Samples the heap after every aten op (forward and backward) and keeps the peak."""

    def __enter__(self):
        self.base = self.peak = _heap_in_use()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _heap_in_use())
        return out


def _peak_bytes(step: Callable[[], None], model: nn.Module, device: torch.device) -> float:
    """Peak memory (heap, or CUDA's allocator on a GPU) a step needs beyond the
    parameters and the optimizer state.

    The last step's gradients are freed first: left in place, backprop's
    ``zero_grad`` would free them inside the measured step and its new ones would
    refill the hole, so its peak would count only its activations and a 2x
    difference in activations would read as 10x.
    """
    step()  # optimizer state and caches exist before measuring, as in training
    for p in model.parameters():
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    with _PeakHeap() as mode:
        step()
    return float(mode.peak - mode.base)


class _OpCount(TorchDispatchMode):
    """Counts the aten ops a step dispatches, backward and optimizer step included. On
    a GPU each is a kernel launch or a view, and on a small model their fixed cost,
    not their arithmetic, sets the step time."""

    def __enter__(self):
        self.ops = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


_READS = ("item", "tolist", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def _host_reads() -> Iterator[list[str]]:
    """Counts the calls that copy a tensor's value to Python: on a GPU each one waits
    for every kernel queued before it, so the host stops queueing ahead. Left out:
    the optimizer's reads of its step counters, which torch keeps on the CPU even
    for a model on a GPU, so they wait for nothing."""
    reads: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def counting(name, method):
        def read(tensor, *args, **kwargs):
            if not sys._getframe(1).f_globals.get("__name__", "").startswith("torch.optim"):
                reads.append(name)
            return method(tensor, *args, **kwargs)
        return read
    try:
        for name, method in originals.items():
            setattr(torch.Tensor, name, counting(name, method))
        yield reads
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def _launches(step: Callable[[], None]) -> tuple[int, int]:
    """Aten ops and host reads of one step, after a step that captures and warms up."""
    step()
    with _host_reads() as reads, _OpCount() as count:
        step()
    return count.ops, len(reads)


def _training_step(model, x, y, algorithm: str, steps: int, compiled: bool | str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if algorithm == "bp":
        forward = _forward(model, compiled)

        def step():
            opt.zero_grad()
            F.cross_entropy(forward(x), y).backward()
            opt.step()
        return step
    learner = pclab.learner(model, algorithm, loss="ce", steps=steps, compile=compiled)
    if algorithm == "incremental":
        return lambda: learner.step(x, y, optimizer=opt)

    def step():
        opt.zero_grad()
        learner.step(x, y)
        opt.step()
    return step


def _forward(model: nn.Module, compiled: bool | str) -> Callable[..., torch.Tensor]:
    return torch.compile(model, dynamic=False) if compiled else model


def _reference_steps(model, x, y, compiled: bool | str) -> dict[str, Callable[[], None]]:
    """Plain forward, forward+backward and optimizer step, to time separately."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model_forward = _forward(model, compiled)

    def forward():
        with torch.no_grad():
            model_forward(x)

    def forward_backward():
        F.cross_entropy(model_forward(x), y).backward()

    def optimizer():
        opt.zero_grad(set_to_none=False)
        opt.step()

    return {"fwd": forward, "fwd+bwd": forward_backward, "opt": optimizer}


def _time(fn: Callable[[], None], repeat: int, device: torch.device) -> float:
    """Mean wall time of ``fn`` over ``repeat`` calls; on a GPU, the kernels they queued included."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - start) / repeat


PASSES = "incremental passes"


def _incremental_passes(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One tick's errors, value move and error norms, the library's own functions on
    the model's value shapes (its predictions stand in for the VJP, which has their
    shapes). At least what an eager tick adds to a backprop step: models whose
    weights outnumber their activations also pay a pass scaling the errors."""
    _, mus, values, _ = pclab.capture(model, (x,)).forward_cut(x)
    mus, values = [m.detach() for m in mus], [v.detach() for v in values]

    def passes():
        neg_errors = _errors(mus, values)
        inference.energy_descent(values, neg_errors, mus, 0.1, 1.0)
        torch.stack(inference.norms(neg_errors))
    return passes


def measure(case: Case, algorithms: list[tuple[str, int]], batch: int, rounds: int, repeat: int,
            memory: bool, compiled: bool | str = False, timed: bool = True,
            device: torch.device = torch.device("cpu")) -> list[dict]:
    if compiled == "tick":
        algorithms = [(a, t) for a, t in algorithms if a != "fpa"]  # compiles whole steps only
    torch.manual_seed(0)
    model = case.build().to(device)
    x, y = (t.to(device) for t in case.batch(batch))
    configs = {f"{a}:{t}": _training_step(model, x, y, a, t, compiled) for a, t in algorithms}
    rows = [{"model": case.name, "algorithm": a, "T": t if a != "bp" else None, "compiled": compiled}
            for a, t in algorithms]
    if memory and (device.type == "cuda" or not compiled):  # the heap sampling misses fused kernels
        peak_bp = _peak_bytes(configs["bp:1"], model, device)
        for row, step in zip(rows, configs.values()):
            row["peak_memory_vs_bp"] = _peak_bytes(step, model, device) / max(peak_bp, 1.0)
    if not compiled:  # a compiled step's ops are fused kernels, which a dispatch mode does not see
        for row, step in zip(rows, configs.values()):
            row["ops_per_step"], row["host_reads"] = _launches(step)
            row["ops_vs_bp"] = row["ops_per_step"] / rows[0]["ops_per_step"]
    if timed and not compiled and any(a == "incremental" for a, _ in algorithms):
        configs[PASSES] = _incremental_passes(model, x)
        rows.append({"model": case.name, "algorithm": PASSES, "T": None, "compiled": False})
    if timed:
        _add_timings(rows, configs, _reference_steps(model, x, y, compiled), rounds, repeat, device)
    return rows


def _add_timings(rows: list[dict], configs: dict[str, Callable[[], None]],
                 refs: dict[str, Callable[[], None]], rounds: int, repeat: int, device: torch.device) -> None:
    """Each row's median step time, against backprop and against its algorithm's budget."""
    timings: dict[str, list[float]] = {k: [] for k in [*configs, *refs]}
    for fn in [*configs.values(), *refs.values()]:
        fn()  # warm up: graph capture, optimizer state
    for _ in range(rounds):
        for key, fn in [*configs.items(), *refs.items()]:
            timings[key].append(_time(fn, repeat, device))
    med = {k: statistics.median(v) for k, v in timings.items()}
    t_fwd, t_fb, t_opt = med["fwd"], med["fwd+bwd"], med["opt"]
    t_bwd = max(t_fb - t_fwd, 1e-9)
    t_bp = med["bp:1"]
    for row, key in zip(rows, configs):
        t, steps = med[key], row["T"]
        row.update({"ms_per_step": 1e3 * t, "steps_per_s": 1.0 / t, "vs_bp": t / t_bp})
        if row["algorithm"] == "fpa":
            row.update(budget="fwd + T bwd", vs_budget=t / (t_fwd + steps * t_bwd + t_opt))
        elif row["algorithm"] == "pc":
            row.update(budget="T (fwd+bwd)", vs_budget=t / (steps * t_fb + t_opt))
        elif row["algorithm"] == "incremental":
            row.update(budget="T bp", vs_budget=t / (steps * t_bp))
        elif row["algorithm"] == "exact":
            row.update(budget="bp", vs_budget=t / t_bp)


TARGETS = {"exact": 1.3, "fpa": 1.1, "pc": 1.1, "incremental": 1.1}


def _table(rows: list[dict]) -> str:
    head = f"{'model':<22}{'algorithm':<20}{'T':>4}{'compiled':>9}{'ms/step':>10}{'steps/s':>10}{'x bp':>8}" \
           f"{'x budget':>10}{'budget':>14}{'mem x bp':>10}{'x eager bp':>12}{'ops x bp':>10}{'reads':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<22}{r['algorithm']:<20}{r['T'] or '':>4}{compiled_label(r.get('compiled')):>9}"
            f"{r.get('ms_per_step', math.nan):>10.2f}{r.get('steps_per_s', math.nan):>10.0f}"
            f"{r.get('vs_bp', math.nan):>8.2f}"
            f"{r.get('vs_budget', float('nan')):>10.2f}{r.get('budget', ''):>14}"
            f"{r.get('peak_memory_vs_bp', float('nan')):>10.2f}{r.get('vs_eager_bp', float('nan')):>12.2f}"
            f"{r.get('ops_vs_bp', float('nan')):>10.2f}{r.get('host_reads', ''):>7}")
    return "\n".join(lines)


def compiled_label(compiled: bool | str | None) -> str:
    """A row's ``compiled`` field as the tables show it: ``yes`` (whole steps), ``tick`` or blank."""
    return "yes" if compiled is True else compiled or ""


def _against_eager(rows: list[dict]) -> None:
    """``vs_eager_bp`` on compiled rows: the speed-up a user gets over plain eager backprop."""
    eager_bp = {r["model"]: r["ms_per_step"] for r in rows if r["algorithm"] == "bp" and not r["compiled"]}
    for r in rows:
        if r["compiled"] and r["model"] in eager_bp:
            r["vs_eager_bp"] = r["ms_per_step"] / eager_bp[r["model"]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (seconds) for the test suite")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--steps", default="1,8,20", help="inference steps T to measure")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also measure every step with compile=True")
    parser.add_argument("--compile-per-tick", action="store_true",
                        help="also measure every step with compile='tick' (fpa left out)")
    parser.add_argument("--memory-only", action="store_true",
                        help="peak memory alone, no timings (the same on a busy machine)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the steps run (cuda: the current GPU)")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of: {', '.join(c.name for c in CASES)}")
    parser.add_argument("--json", type=Path, default=None,
                        help="results file (default: benchmarks/results/speed.json, speed-cuda.json on a GPU)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's heap settings alone (by default the process keeps freed memory "
                             "for reuse, as `pclab train` does: pclab.allocator.retain_freed_memory)")
    args = parser.parse_args(argv)
    if args.memory_only and (args.compile or args.compile_per_tick) and args.device == "cpu":
        parser.error("--memory-only on the CPU measures eager steps only (compiled rows sample no memory); "
                     "drop --compile")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU); "
                     "drop --device or install a CUDA build of torch")
    on_gpu = device.type == "cuda"
    retained = not on_gpu and not args.default_malloc and pclab.allocator.retain_freed_memory()
    # CUDA's allocator counts its own peak; on the CPU, glibc's counters must be there to sample
    sample_memory = on_gpu or pclab.allocator.heap_info() is not None
    if args.memory_only and not sample_memory:
        parser.error("--memory-only needs glibc's heap counters (mallinfo2), which this C library lacks")
    code = commit()  # the code this process imports now, not what the tree holds when it ends
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    cases = CASES
    if args.smoke:
        args.rounds, args.repeat, steps, cases = 1, 1, [2], CASES[:1]
    algorithms = [("bp", 1), ("exact", 1)] + [(a, t) for t in steps for a in ("fpa", "pc", "incremental")]
    if args.models:
        wanted = args.models.split(",")
        unknown = [m for m in wanted if m not in {c.name for c in CASES}]
        if unknown:
            parser.error(f"unknown model {unknown[0]!r}; valid: {', '.join(c.name for c in CASES)}")
        cases = [c for c in cases if c.name in wanted]
    rows = []
    for case in cases:
        modes = [False, *([True] if args.compile else []), *(["tick"] if args.compile_per_tick else [])]
        for compiled in modes:
            rows += measure(case, algorithms, args.batch, args.rounds, args.repeat,
                            memory=sample_memory, compiled=compiled, timed=not args.memory_only,
                            device=device)
        if len(modes) > 1:
            _against_eager(rows)
        print(_table([r for r in rows if r["model"] == case.name]), flush=True)
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    **({"gpu": torch.cuda.get_device_name(device)} if on_gpu else
                       {"heap": "freed memory retained (pclab.allocator)" if retained else "glibc defaults"})},
        "commit": code, "batch": args.batch, "targets_vs_budget": TARGETS, "rows": rows,
    }
    if not args.smoke:
        default = Path(__file__).parent / "results" / ("speed-cuda.json" if on_gpu else "speed.json")
        write_result(args.json or default, result)
    return result


if __name__ == "__main__":
    main()
