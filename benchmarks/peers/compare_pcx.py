"""PCX and pclab side by side: the same PC MLP step, alternated in one run on this machine.

Runs ``pcx_mlp.py`` (in the PCX venv, ``benchmarks/peers/.venv``) and ``pclab_mlp.py``
(with this Python) as subprocesses with the same flags:

1. timing: ``--rounds`` rounds of ``--max-steps`` timed steps each, alternating
   pcx, pclab, pcx, pclab, ... so that slow drifts in the machine's load hit both;
2. accuracy: ``--accuracy-seeds`` runs of ``--epochs`` epochs of each, alternating
   pcx and pclab seed by seed, unless ``--no-accuracy``. At these settings the rule is
   unstable (test accuracy can collapse between two epochs in either library), and the
   two libraries draw different initial weights from the same seed, so one run each
   says little about which is more accurate: the table gives the median and range
   over seeds, and how many runs collapsed.

Prints a table (median steps/s per library over the rounds, the ratio pclab/pcx,
seconds per epoch, test accuracy after the first and last epoch) and writes
``results/compare_pcx.json`` (every run's full report) and ``results/compare_pcx.md``
(the table with date, machine and exact command). ``--smoke`` runs each once on 512
examples in seconds and writes ``results/compare_pcx_smoke.{json,md}`` instead.

    python benchmarks/peers/compare_pcx.py                  # 3 rounds x 2 x 500 steps + 5 seeds x 2 x 5 epochs
    python benchmarks/peers/compare_pcx.py --smoke
    python benchmarks/peers/compare_pcx.py --cores 1 --pclab-compile   # both on one core: results/compare_pcx_cores1.*

Unpinned, XLA spreads its work over every core while pclab uses its torch thread
count, so the two may not get the same compute; ``--cores N`` pins both to the same
N cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when loaded by file path (tests)
    sys.path.insert(0, str(HERE))
import harness  # noqa: E402  (stdlib + numpy only)

REPO_ROOT = HERE.parents[1]
PCX_PYTHON = HERE / ".venv" / "bin" / "python"
SCRIPTS = {"pcx": HERE / "pcx_mlp.py", "pclab": HERE / "pclab_mlp.py"}
LIBS = ("pcx", "pclab")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None,
                   help="timing rounds, each one pcx run then one pclab run (default 3; 1 with --smoke)")
    p.add_argument("--max-steps", type=int, default=500, help="timed steps per timing run")
    p.add_argument("--epochs", type=int, default=5, help="epochs of the accuracy runs")
    p.add_argument("--accuracy-seeds", type=int, default=5,
                   help="accuracy runs per library, seeds --seed, --seed+1, ... (default 5; 1 with --smoke)")
    p.add_argument("--no-accuracy", action="store_true", help="timing rounds only")
    p.add_argument("--smoke", action="store_true",
                   help="every run with --smoke (512 examples, 1 epoch): checks the plumbing in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="passed to both (default: theirs, ../shared/datasets/...)")
    p.add_argument("--pclab-threads", type=int, default=None,
                   help="pclab_mlp.py --threads (default: torch's own default)")
    p.add_argument("--pclab-compile", action="store_true", help="pclab_mlp.py --compile (torch.compile path)")
    p.add_argument("--cores", type=int, default=None,
                   help="run both libraries on the same N cores (CPU affinity, cores 0..N-1) and pclab with "
                        "N torch threads unless --pclab-threads says otherwise: XLA sizes its thread pool "
                        "from the cores it may use, so this gives both the same compute")
    p.add_argument("--out-dir", default=str(HERE / "results"), help="where the .json and .md go")
    a = p.parse_args(argv)
    if a.rounds is None:
        a.rounds = 1 if a.smoke else 3
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    if a.smoke:
        a.accuracy_seeds = 1
    if a.accuracy_seeds < 1:
        p.error(f"--accuracy-seeds must be at least 1; got {a.accuracy_seeds}")
    if a.epochs < 1:
        p.error(f"--epochs must be at least 1; got {a.epochs}")
    if a.cores is not None:
        available = len(os.sched_getaffinity(0))
        if not 1 <= a.cores <= available:
            p.error(f"--cores must be between 1 and the {available} cores this process may use; got {a.cores}")
        if a.pclab_threads is None:
            a.pclab_threads = a.cores
    return a


def _command(lib: str, flags: list[str], seed: int, json_out: Path, args: argparse.Namespace) -> list[str]:
    python = str(PCX_PYTHON) if lib == "pcx" else sys.executable
    cmd = [python, str(SCRIPTS[lib]), *flags, "--seed", str(seed), "--json", str(json_out)]
    if args.data_dir is not None:
        cmd += ["--data-dir", args.data_dir]
    if lib == "pclab" and args.pclab_threads is not None:
        cmd += ["--threads", str(args.pclab_threads)]
    if lib == "pclab" and args.pclab_compile:
        cmd += ["--compile"]
    return cmd


def _run(lib: str, flags: list[str], seed: int, label: str, tmp: Path, args: argparse.Namespace) -> dict:
    """Run one benchmark subprocess, echoing its output, and return its JSON report."""
    json_out = tmp / f"{label}.json"
    cmd = _command(lib, flags, seed, json_out, args)
    print(f"\n=== {label}: {shlex.join(_relative(cmd))}", flush=True)
    t0 = time.perf_counter()
    cores = None if args.cores is None else set(range(args.cores))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores))
    assert proc.stdout is not None
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        print(f"[{lib}] {line}", end="", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{''.join(tail)}")
    report = json.loads(json_out.read_text())
    report["compare"] = {"label": label, "argv": _relative(cmd), "subprocess_wall_s": time.perf_counter() - t0}
    return report


def _relative(cmd: list[str]) -> list[str]:
    """Paths inside the repository written relative to it, so commands read as typed."""
    out = []
    for part in cmd:
        try:
            out.append(str(Path(part).relative_to(REPO_ROOT)) if Path(part).is_absolute() else part)
        except ValueError:
            out.append(Path(part).name if part == sys.executable else part)
    return out


def _median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


# A run "collapsed" when its last epoch's test accuracy is this far below its best epoch's.
COLLAPSE_DROP = 0.10


def summarise(timing: dict[str, list[dict]], accuracy: dict[str, list[dict]]) -> dict:
    # Both libraries' curves are cut to the epochs every accuracy run finished, so they compare.
    epochs = min((r["results"]["full_epochs"] for runs in accuracy.values() for r in runs), default=0)
    out: dict = {"accuracy_epochs": epochs}
    for lib in LIBS:
        runs = timing[lib]
        s = {
            "steps_per_s_rounds": [r["results"]["steps_per_s"] for r in runs],
            "steps_per_s_median_window_rounds": [r["results"]["steps_per_s_median_window"] for r in runs],
            "first_step_s_rounds": [r["results"]["compile_s"] for r in runs],
            "other_processes_avg_cores_rounds": [r["contention"]["other_processes_avg_cores"] for r in runs],
        }
        s["steps_per_s_median"] = _median(s["steps_per_s_rounds"])
        s["steps_per_s_median_window_median"] = _median(s["steps_per_s_median_window_rounds"])
        s["first_step_s_median"] = _median(s["first_step_s_rounds"])
        acc_runs = accuracy.get(lib, [])
        if epochs:
            curves = [r["results"]["test_acc"][:epochs] for r in acc_runs]
            s["accuracy_seeds"] = [r["config"]["seed"] for r in acc_runs]
            s["test_acc_per_seed"] = curves
            s["collapsed_runs"] = sum(max(c) - c[-1] >= COLLAPSE_DROP for c in curves)
            # Epoch 1 holds the first (compile/capture) step; later epochs are the steady state.
            s["epoch_1_s_median"] = _median([r["results"]["epoch_s"][0] for r in acc_runs])
            s["epoch_s_median_after_first"] = _median(
                [t for r in acc_runs for t in r["results"]["epoch_s"][1:epochs]])
            s["accuracy_runs_other_processes_avg_cores"] = [
                r["contention"]["other_processes_avg_cores"] for r in acc_runs]
        out[lib] = s
    pcx, pclab = out["pcx"]["steps_per_s_median"], out["pclab"]["steps_per_s_median"]
    out["ratio_pclab_over_pcx"] = pclab / pcx if pcx and pclab else None
    return out


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.4f} ({min(xs):.4f}-{max(xs):.4f})"


def table(summary: dict, args: argparse.Namespace, n_timed: dict[str, list[int]]) -> list[tuple[str, str, str]]:
    pcx, pclab = summary["pcx"], summary["pclab"]

    def both(key: str, spec: str = ".1f") -> tuple[str, str]:
        return _fmt(pcx.get(key), spec), _fmt(pclab.get(key), spec)

    def rounds(key: str, spec: str) -> tuple[str, str]:
        return tuple(", ".join(_fmt(v, spec) for v in s[key]) for s in (pcx, pclab))

    steps = {lib: ", ".join(str(k) for k in sorted(set(n))) for lib, n in n_timed.items()}
    rows = [
        (f"steps/s, median of {args.rounds} round(s) ({steps['pcx']} / {steps['pclab']} timed steps each)",
         *both("steps_per_s_median")),
        ("  ratio pclab / pcx", "", _fmt(summary["ratio_pclab_over_pcx"], ".3f")),
        ("  steps/s per round", *rounds("steps_per_s_rounds", ".1f")),
        ("  median 100-step window, median over rounds", *both("steps_per_s_median_window_median")),
        ("  other processes' cores per round", *rounds("other_processes_avg_cores_rounds", ".2f")),
        ("first step s (compile / capture), median", *both("first_step_s_median", ".2f")),
    ]
    last = summary["accuracy_epochs"]
    if last:
        n = len(pcx["accuracy_seeds"])
        curves = [s["test_acc_per_seed"] for s in (pcx, pclab)]
        rows += [
            (f"s per epoch after epoch 1, median over {n} run(s)", *both("epoch_s_median_after_first", ".2f")),
            ("  epoch 1 s (includes compile / capture), median", *both("epoch_1_s_median", ".2f")),
            (f"test acc after epoch 1, median (min-max) of seeds {_seeds(pcx['accuracy_seeds'])}",
             *(_spread([c[0] for c in runs]) for runs in curves)),
        ]
        if last > 1:
            rows += [
                (f"test acc after epoch {last}, median (min-max)", *(_spread([c[-1] for c in runs]) for runs in curves)),
                (f"  per seed after epoch {last}", *(", ".join(f"{c[-1]:.3f}" for c in runs) for runs in curves)),
                (f"  runs ending {COLLAPSE_DROP * 100:.0f}+ points below their best epoch",
                 *(f"{s['collapsed_runs']} of {n}" for s in (pcx, pclab))),
            ]
        rows.append(("accuracy runs: other processes' cores, median",
                     *(_fmt(_median(s["accuracy_runs_other_processes_avg_cores"]), ".2f") for s in (pcx, pclab))))
    return rows


def _seeds(seeds: list[int]) -> str:
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"


def machine() -> dict:
    return {"cpu_model": harness.cpu(), "nproc": os.cpu_count(), "platform": platform.platform(),
            "loadavg_1_5_15": list(os.getloadavg())}


def markdown(rows, meta: dict, summary: dict) -> str:
    m = meta["machine"]
    v = meta["versions"]
    lines = [
        "# PCX vs pclab: 784-128-128-10 PC MLP, T = 8, batch 64 (Fashion-MNIST)",
        "",
        f"- date (UTC): {meta['date_utc']}",
        f"- machine: {m['cpu_model']}, {m['nproc']} cores, {m['platform']}; load average before "
        f"{' / '.join(f'{x:.2f}' for x in m['loadavg_1_5_15'])}",
        f"- versions: pcx {v['pcx']} / jax {v['jax']}; pclab {v['pclab']} ({v['pclab_git']}) / "
        f"torch {v['torch']} ({v['torch_threads']} threads)",
        f"- cores: {'both on cores 0-' + str(meta['cores'] - 1) + ' (CPU affinity)' if meta.get('cores') else 'unpinned (XLA uses every core; pclab its thread count)'}",
        f"- command (from the repository root): `{meta['command']}`",
        f"- order: {', '.join(meta['order'])}",
        "",
        "| | PCX (JAX) | pclab (torch) |",
        "| --- | --- | --- |",
        *(f"| {k.strip()} | {a} | {b} |" for k, a, b in rows),
        "",
        "steps/s = timed steps / wall time, first step excluded (PCX: jit compile; pclab: fx capture); "
        "\"other processes' cores\" is the CPU other work took during a run (this machine is shared): "
        "compare rounds with similar contention. Full reports of every run: `compare_pcx"
        f"{'_smoke' if meta['smoke'] else ''}.json`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not PCX_PYTHON.is_file():
        raise SystemExit(f"PCX venv not found at {_relative([str(PCX_PYTHON)])[0]}. Create it with:\n"
                         "    bash benchmarks/peers/setup_pcx.sh")
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(REPO_ROOT)),
                          *(sys.argv[1:] if argv is None else argv)])
    started = datetime.datetime.now(datetime.timezone.utc)
    machine_before = machine()
    timing_flags = ["--smoke"] if args.smoke else ["--max-steps", str(args.max_steps)]
    accuracy_flags = ["--smoke"] if args.smoke else ["--epochs", str(args.epochs)]

    timing: dict[str, list[dict]] = {lib: [] for lib in LIBS}
    accuracy: dict[str, list[dict]] = {lib: [] for lib in LIBS}
    order = []
    with tempfile.TemporaryDirectory(prefix="compare_pcx_") as tmp_name:
        tmp = Path(tmp_name)
        for r in range(1, args.rounds + 1):
            for lib in LIBS:
                label = f"{lib}_timing_r{r}"
                timing[lib].append(_run(lib, timing_flags, args.seed, label, tmp, args))
                order.append(label)
        for seed in range(args.seed, args.seed + (0 if args.no_accuracy else args.accuracy_seeds)):
            for lib in LIBS:
                label = f"{lib}_accuracy_s{seed}"
                accuracy[lib].append(_run(lib, accuracy_flags, seed, label, tmp, args))
                order.append(label)

    summary = summarise(timing, accuracy)
    pcx_v, pclab_r = timing["pcx"][0]["versions"], timing["pclab"][0]
    meta = {
        "date_utc": started.isoformat(timespec="seconds"),
        "command": command,
        "smoke": args.smoke,
        "order": order,
        "machine": machine_before,
        "cores": args.cores,
        "loadavg_after": list(os.getloadavg()),
        "versions": {"pcx": pcx_v.get("pcx"), "jax": pcx_v.get("jax"), "pclab": pclab_r["versions"]["pclab"],
                     "pclab_git": pclab_r["versions"]["pclab_git"], "torch": pclab_r["versions"]["torch"],
                     "torch_threads": pclab_r["machine"]["torch_threads"]},
    }
    n_timed = {lib: [r["results"]["timed_steps"] for r in timing[lib]] for lib in LIBS}
    rows = table(summary, args, n_timed)

    width = max(len(k) for k, _, _ in rows)
    print(f"\n{'':<{width}}  {'PCX (JAX)':>22}  {'pclab (torch)':>22}")
    for k, a, b in rows:
        print(f"{k:<{width}}  {a:>22}  {b:>22}")

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "compare_pcx" + (f"_cores{args.cores}" if args.cores else "") + ("_smoke" if args.smoke else "")
    report = {**meta, "summary": summary, "table": [list(r) for r in rows],
              "runs": {"timing": timing, "accuracy": accuracy}}
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(rows, meta, summary))
    print(f"\nwrote {out_dir / stem}.json and .md")
    return report


if __name__ == "__main__":
    main()
