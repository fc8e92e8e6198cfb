"""What every lab command shares: option parsing, input checks, the run folder, plots.

Each command turns its options into a typed experiment config (:func:`configure`,
:func:`image_data`), checks it (a bad grid fails with :class:`ConfigError` before
any run starts), runs the sweep and writes ``<out>/`` (:func:`execute`,
:func:`write_outputs`):

* ``config.json``: the experiment config, every hyperparameter and seed;
* ``runs/<id>.json``: one raw record per finished run (see :mod:`.sweep`);
* ``results.json``: all records of this config, in sweep order;
* ``*.png`` plots and ``summary.md``, whose every number is computed from the
  records.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import numpy as np
import torch
import typer

from .sweep import config_dict, results, write_json_atomic, write_text_atomic
from .training import ALGORITHMS, dataset_size, resolve_data

T = TypeVar("T")


# Options every command takes, with their help text (typer reads ``Annotated``).
Quick = Annotated[bool, typer.Option(help="Small preset that finishes in about a minute on 2 cores.")]
Algorithms = Annotated[str, typer.Option(help="Comma-separated: bp and PC algorithms (exact, fpa, pc, incremental).")]
Workers = Annotated[int, typer.Option(help="Local worker processes (1: run in this process).")]
Ray = Annotated[bool, typer.Option(help="Run the sweep on a Ray cluster instead of local processes.")]
RayAddress = Annotated[str, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")]
Seed = Annotated[int, typer.Option(help="First seed; runs use seed, seed+1, ...")]
NumSeeds = Annotated[int, typer.Option(help="Seeds per grid point (0: the preset's).")]
DataDir = Annotated[Optional[Path], typer.Option(help="Fashion-MNIST folder (default: $PCLAB_DATA/fashion-mnist, "
                                                 "../shared/datasets/fashion-mnist, else digits).")]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
PcSteps = Annotated[int, typer.Option(help="PC inference steps (0: the preset's).")]
PcStepSize = Annotated[float, typer.Option(help="PC inference step size (0: the preset's).")]
Compile = Annotated[bool, typer.Option(help="Run every learner through torch.compile: the same updates to rounding, "
                                       "faster where per-op overhead dominates (small models, PC's many "
                                       "inference steps); each run compiles first.")]
Device = Annotated[str, typer.Option(help="Where each run trains: auto (CUDA if torch sees a GPU), cpu or cuda.")]


def seeds(seed: int, num_seeds: int, preset: Sequence[int]) -> tuple[int, ...]:
    """``seed, seed+1, ...``: ``num_seeds`` of them, or as many as the preset has."""
    require(seed >= 0, f"--seed must be >= 0; got {seed}")
    require(num_seeds >= 0, f"--num-seeds must be >= 0; got {num_seeds}")
    return tuple(range(seed, seed + (num_seeds or len(preset))))


def execute(make_config: Callable[..., Any], run: Callable[..., list[dict]], *, out: Path, workers: int,
            ray: bool, ray_address: str, progress: bool, **options: Any) -> None:
    """What a command does: ``make_config(**options)``, run the sweep into ``out``, print the summary.

    A command passes its ``locals()``: the run options above, and its own options,
    which are ``make_config``'s keywords. A :class:`ConfigError` becomes
    ``typer.BadParameter`` (typer prints it and exits with status 2) before any run.
    """
    try:
        config = make_config(**options)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from e
    run(config, out, workers=workers, ray=ray, ray_address=ray_address or None, progress=progress)
    print((out / "summary.md").read_text())


class ConfigError(ValueError):
    """An experiment's options cannot describe a valid sweep; raised before any run."""


def parse_list(text: str | Sequence[Any], kind: Callable[[str], T], option: str) -> tuple[T, ...]:
    """``"1,2, 4"`` -> ``(1, 2, 4)``; a sequence passes through converted. Empty is an error."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    items = [t for t in items if t != ""]
    if not items:
        raise ConfigError(f"--{option} is empty: give at least one value, e.g. --{option} 1,2")
    try:
        return tuple(kind(t) for t in items)
    except ValueError as e:
        raise ConfigError(f"--{option}: cannot read {text!r} as a comma-separated list of "
                          f"{kind.__name__}: {e}") from e


def override(preset: T, **options: Any) -> T:
    """``preset`` with every option that is not ``None``/``""`` replaced."""
    given = {k: v for k, v in options.items() if v is not None and v != ""}
    return dataclasses.replace(preset, **given)


def configure(preset: T, *, algorithms: str, seed: int, num_seeds: int, compile: bool = False,
              device: str = "auto", **options: Any) -> T:
    """``preset`` with ``--algorithms``, the seeds, ``--compile``, ``--device`` and the
    other options (:func:`override`); not yet checked."""
    return override(preset, algorithms=parse_list(algorithms, str, "algorithms"),
                    seeds=seeds(seed, num_seeds, preset.seeds), compile=compile, device=device, **options)


def check_algorithms(algorithms: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``algorithms`` is a non-empty list of distinct known names."""
    require(len(algorithms) > 0, "--algorithms is empty; give e.g. bp,pc")
    for a in algorithms:
        require(a in ALGORITHMS, f"unknown algorithm {a!r} in --algorithms; valid: {', '.join(ALGORITHMS)}")
    require(len(set(algorithms)) == len(algorithms), f"--algorithms repeats a name: {algorithms}")


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_pc(pc_steps: int, pc_step_size: float) -> None:
    """Raise :class:`ConfigError` unless PC's inference steps and step size are usable."""
    require(pc_steps >= 1, f"--pc-steps must be >= 1; got {pc_steps}")
    require(pc_step_size > 0 and math.isfinite(pc_step_size), f"--pc-step-size must be > 0; got {pc_step_size}")


def check_device(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a device this machine can train on."""
    require(name in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda; got {name!r}")
    require(name != "cuda" or torch.cuda.is_available(),
            "--device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU); use --device cpu or auto")


def device(name: str) -> torch.device:
    """The device ``--device name`` trains on (``auto``: the GPU when torch sees one)."""
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def device_name(device: torch.device) -> str:
    """What a run record says it trained on: ``cpu``, or the GPU's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def check_positive(values: Sequence[float], option: str, *, integer: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``values`` is a non-empty grid of distinct positive numbers."""
    require(len(values) > 0, f"--{option} is empty: the grid needs at least one value")
    for v in values:
        if integer:
            require(isinstance(v, int) and v >= 1, f"--{option}: {v!r} is not an integer >= 1")
        else:
            require(math.isfinite(v) and v > 0, f"--{option}: {v!r} must be a positive number")
    require(len(set(values)) == len(values), f"--{option} repeats a value: {tuple(values)}")


def image_data(data_dir: Path | str | None) -> tuple[dict[str, str | None], int]:
    """An image experiment's ``dataset``/``data_dir`` options (:func:`.training.resolve_data`) and
    its number of training images; a missing or corrupt dataset is a :class:`ConfigError`."""
    try:
        dataset, folder = resolve_data(data_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    try:
        available = dataset_size(dataset, folder)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load {dataset} from {folder}: {e}") from e
    return {"dataset": dataset, "data_dir": folder}, available


def write_outputs(out: Path, config: Any, records: list[dict],
                  summarise: Callable[[list[dict], Any], str],
                  plot: Callable[[list[dict], Any, Path], list[Path]]) -> list[dict]:
    """The plots, ``config.json``, ``results.json`` and ``summary.md`` in ``out``; returns ``records``."""
    summary = summarise(records, config)
    compiled = sum(bool(r["config"].get("compile")) for r in records)
    if compiled:  # wall times are only comparable between runs that compiled alike
        summary += (f"\n{compiled} of {len(records)} runs ran their learner through torch.compile "
                    "(`--compile`); their wall times include compiling.\n")
    summary += energy_rise_note(records)
    write_json_atomic(out / "config.json", {"experiment": type(config).__name__,
                                            **config_dict(config),
                                            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    write_json_atomic(out / "results.json", records)
    write_text_atomic(out / "summary.md", summary)
    plot(records, config, out)  # last: a plot that fails still leaves the measured answer written
    return records


def energy_rise_note(records: list[dict]) -> str:
    """The summary's word on pc's inference: in which runs some steps' inference ended
    above the energy it started at (its step size overshot, so those weight updates
    are not pc's rule; :attr:`pclab.StepResult.energy_rose`). Empty where no pc run
    recorded it (records older than the count)."""
    pc = [r for r in results(records) if r.get("algorithm") == "pc"]
    rows = [r for r in pc if "energy_rises" in r]
    if not rows:
        return ""
    older = (f" ({len(pc) - len(rows)} more pc runs were recorded before this count was kept)"
             if len(rows) < len(pc) else "")
    rose = [r for r in rows if r["energy_rises"]]
    if not rose:
        return f"\npc's inference lowered the energy at every step of all {len(rows)} pc runs{older}.\n"
    return (f"\nIn {len(rose)} of {len(rows)} pc runs{older}, inference ended above the energy it started "
            "at in some steps (the step size overshot; those steps' weight updates are not pc's rule): "
            + ", ".join(f"{r['id']} ({r['energy_rises']} steps)" for r in rose)
            + ". A smaller `--pc-step-size` keeps inference descending.\n")


# ------------------------------------------------------------------- statistics


def group(rows: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    """``rows`` grouped by their values at ``keys``, in order of first appearance."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return dict(groups)  # a plain dict: a missing key is an error, not a new empty group


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a summary table; ``-`` for missing or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (0 < abs(x) < 1e-3) else f"{x:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` (folders made as needed) and free it; returns ``path``."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
