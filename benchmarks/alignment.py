"""How each algorithm's weight update relates to backprop's gradient, architecture by architecture.

At initialisation, on one batch of Fashion-MNIST training images, each algorithm
takes one step and :func:`pclab.align` sets every parameter's update against
backprop's gradient of the same batch: the norm ratio and the cosine. The table
summarises the weight tensors of each model (the lowest and the median cosine, the
median and the largest ratio) for the median seed, how many weight tensors got any
update at all (errors travel one value node per tick, so T ticks reach T nodes from
the output), and whether ``pc``'s inference ended with more energy than it started
(its step size overshot). Cosines are those of the updated weights.

Models: the speed table's MLP, CNN and transformer block, and residual MLPs (width
128) of depth 8, 32 and 64, the accuracy table's depth rows, each twice: with a value
node at every layer, and ("(blocks)") one per residual block, on the stream.
Settings: ``exact``; ``fpa`` at T = 20 (``--steps``), step 0.5; ``pc`` at T = 20,
steps 0.1 (the default) and 0.01.

    python benchmarks/alignment.py       # writes benchmarks/results/alignment.json
    python benchmarks/alignment.py --smoke    # seconds, random images: what the tests run
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import pclab
from pclab import data, models

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper, also when loaded by path
from provenance import commit, cpu, write_result  # noqa: E402
from speed import CASES  # noqa: E402  (the same MLP, CNN and transformer block)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
IMAGE = (1, 28, 28)

RESIDUAL: dict[str, Callable[[], nn.Module]] = {
    f"residual mlp depth {d}": (lambda d=d: models.build("resnet", input_shape=IMAGE, num_classes=10,
                                                       kind="mlp", depth=d, width=128))
    for d in (8, 32, 64)}
BLOCKS = {f"{name} (blocks)": build for name, build in RESIDUAL.items()}  # value_nodes=models.BLOCKS
MODELS: dict[str, Callable[[], nn.Module]] = {
    **{case.name: case.build for case in CASES if not case.name.startswith("residual")}, **RESIDUAL, **BLOCKS}
SETTINGS = [("exact", 1, None), ("fpa", 20, 0.5), ("pc", 20, 0.1), ("pc", 20, 0.01)]


def _batch(source: str, size: int, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if source == "random":
        g = torch.Generator().manual_seed(0)
        return torch.rand((size, *IMAGE), generator=g), torch.randint(0, 10, (size,), generator=g)
    ds = data.load("fashion-mnist", data_dir, download=False, train_size=size, seed=0)
    return ds.x_train, ds.y_train


def measure(name: str, algorithm: str, steps: int, step_size: float | None, seed: int,
            x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(seed)
    model = MODELS[name]()
    with warnings.catch_warnings(record=True) as caught:  # pc's overshoot warning, recorded instead
        warnings.simplefilter("always", RuntimeWarning)
        rows = pclab.align(model, x, y, loss="ce", algorithm=algorithm, steps=steps, step_size=step_size,
                           value_nodes=models.BLOCKS if name in BLOCKS else "layers")
    weights = [r for r in rows if r.parameter.endswith("weight") and r.gradient_norm > 0]
    # A weight whose error never arrived (PC's errors travel one value node per tick)
    # has no update and no cosine: counted apart, its ratio 0 kept in the ratios.
    cosines = [r.cosine for r in weights if r.norm_ratio > 0]
    ratios = [r.norm_ratio for r in weights]
    return {"model": name, "algorithm": algorithm, "T": steps if algorithm != "exact" else None,
            "step_size": step_size, "seed": seed,
            "energy_rose": any("inference raised the energy" in str(w.message) for w in caught),
            "updated": len(cosines), "weights": len(weights),
            "min_cosine": min(cosines), "median_cosine": statistics.median(cosines),
            "median_ratio": statistics.median(ratios), "max_ratio": max(ratios),
            "parameters": [vars(r) for r in rows]}


def summarise(rows: list[dict]) -> list[dict]:
    """Per model and setting, the seed whose median cosine is the median over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["algorithm"], r["T"], r["step_size"]), []).append(r)
    out = []
    for (model, algorithm, steps, size), runs in groups.items():
        mid = sorted(runs, key=lambda r: r["median_cosine"])[(len(runs) - 1) // 2]
        out.append({"model": model, "algorithm": algorithm, "T": steps, "step_size": size,
                    "seeds": len(runs), "energy_rose_in": sum(r["energy_rose"] for r in runs),
                    **{k: mid[k] for k in ("updated", "weights", "min_cosine", "median_cosine",
                                           "median_ratio", "max_ratio")}})
    return out


def table(summary: list[dict]) -> str:
    head = f"{'model':<32}{'algorithm':<11}{'T':>4}{'step':>7}{'cos min':>9}{'cos med':>9}" \
           f"{'ratio med':>11}{'ratio max':>11}{'updated':>9}{'energy rose':>13}"
    lines = [head, "-" * len(head)]
    for s in summary:
        lines.append(f"{s['model']:<32}{s['algorithm']:<11}{s['T'] or '':>4}{s['step_size'] or '':>7}"
                     f"{s['min_cosine']:>9.3f}{s['median_cosine']:>9.3f}{s['median_ratio']:>11.3g}"
                     f"{s['max_ratio']:>11.3g}{str(s['updated']) + '/' + str(s['weights']):>9}"
                     f"{str(s['energy_rose_in']) + '/' + str(s['seeds']):>13}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: the MLP, two settings, random images")
    parser.add_argument("--seeds", type=int, default=3, help="model initialisations 0..N-1")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="T of fpa and pc")
    parser.add_argument("--data", choices=["fashion-mnist", "random"], default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--models", default=None, help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "alignment.json")
    args = parser.parse_args(argv)
    names, seeds = list(MODELS), list(range(args.seeds))
    settings = [(a, args.steps if a != "exact" else t, s) for a, t, s in SETTINGS]
    if args.smoke:
        names, settings, seeds, args.data = names[:1], settings[:1] + settings[-1:], [0], "random"
    if args.models:
        unknown = [m for m in args.models.split(",") if m not in MODELS]
        if unknown:
            parser.error(f"unknown model {unknown[0]!r}; valid: {', '.join(MODELS)}")
        names = args.models.split(",")
    if not seeds or args.batch < 1 or args.steps < 1:
        parser.error("--seeds, --batch and --steps must be at least 1")
    if args.data == "fashion-mnist" and not args.data_dir.is_dir():
        parser.error(f"no Fashion-MNIST at {args.data_dir}: pass --data-dir, or --data random")
    torch.set_num_threads(1)
    x, y = _batch(args.data, args.batch, args.data_dir)
    rows = [measure(name, a, t, s, seed, x, y) for name in names for a, t, s in settings for seed in seeds]
    summary = summarise(rows)
    print(table(summary), flush=True)
    result = {"command": " ".join(["python benchmarks/alignment.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit(),
              "machine": {"cpu": cpu(), "cores": os.cpu_count(), "torch": torch.__version__},
              "data": args.data, "batch": args.batch, "summary": summary, "rows": rows}
    if not args.smoke:
        write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
