"""One sweep runner for every experiment: independent runs, resumable, local or on Ray.

A sweep is a list of run configs (small frozen dataclasses) and a module-level
function ``fn(config) -> dict`` that performs one run. :func:`run_sweep` gives each
config a stable id, ``<label>-<hash of every field>`` (but those declared with
:func:`execution_only`: how a run executes, not what it computes), and keeps each
finished run as ``<out>/runs/<id>.json`` holding the config, the result, its wall
time and the host. Files are written atomically (temporary file, fsync, rename), so
a killed sweep leaves only whole files, and a rerun skips every run whose file
exists: it resumes where it stopped. Changing any hyperparameter changes the hash, so stale
results are never reused for a different config.

Backends, chosen per call:

* ``workers <= 1``: in this process, one run after another (what tests and
  debuggers want);
* ``workers >= 2``: a local ``ProcessPoolExecutor`` (spawn context, one torch
  thread per worker so runs do not fight over cores);
* ``ray=True``: one Ray task per run (``num_cpus=1``) on the cluster at
  ``ray_address`` (default: ``$RAY_ADDRESS``, else a local Ray). The driver
  writes the files, so only ``fn`` and its data must be reachable from the nodes.

A result may carry tensors under ``"artifacts"`` (``{name: tensor}``); they are
saved next to the JSON as ``<id>.<name>.pt`` before it, and the JSON records
their file names. Progress is a tqdm bar: runs done / total and the best score
so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import socket
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

RunFn = Callable[[Any], dict]
Score = Callable[[dict], float]


class RunFailed(RuntimeError):
    """A run raised; the message names it and its config. Finished runs are kept."""


# Field metadata for how a run executes (e.g. through torch.compile) or where it finds an
# input another run wrote, rather than what it computes: recorded with the config but left
# out of the hash, so a sweep resumes its runs whichever way each ran, in whatever folder
# it now lies, and one folder can hold runs that ran differently.
EXECUTION_ONLY = {"id": "omit"}


def execution_only(default: Any) -> Any:
    """A keyword-only dataclass field with :data:`EXECUTION_ONLY` metadata."""
    return dataclasses.field(default=default, kw_only=True, metadata=EXECUTION_ONLY)


def config_dict(config: Any) -> dict:
    """A run config as a JSON-ready dict (dataclass fields, tuples as lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"a run config must be a dataclass instance; got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def run_id(config: Any) -> str:
    """``<label>-<10 hex digits of the config's hash>``; the label is ``config.label`` if any."""
    fields = config_dict(config)
    for f in dataclasses.fields(config):
        if f.metadata == EXECUTION_ONLY:
            del fields[f.name]
    payload = json.dumps({"type": type(config).__name__, **fields}, sort_keys=True)
    digest = hashlib.sha1(payload.encode()).hexdigest()[:10]
    label = getattr(config, "label", "")
    label = "".join(c if c.isalnum() or c in "._=+-" else "_" for c in str(label))
    return f"{label}-{digest}" if label else digest


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that ``path`` holds either the old or the whole new file."""
    _write_atomic(path, lambda f: f.write(json.dumps(data, indent=1, allow_nan=True).encode()))


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode()))


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_record(path: Path) -> dict | None:
    """A finished run's record, or None if the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def run_sweep(fn: RunFn, configs: Sequence[Any], out: Path, *, workers: int = 2,
              ray: bool = False, ray_address: str | None = None, score: Score | None = None,
              desc: str = "runs", progress: bool = True) -> list[dict]:
    """Run every config not finished yet; return all records, in the order of ``configs``.

    ``score(result)`` (higher is better) feeds the progress bar's "best". Raises
    :class:`RunFailed` for the first run that raises, after the runs that finished
    before it were written.
    """
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    ids = [run_id(c) for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError("the sweep holds duplicate configs; each run must differ in some field")
    records: dict[str, dict] = {}
    for i in ids:
        record = load_record(runs_dir / f"{i}.json")
        if record is not None:
            records[i] = record
    todo = [(i, c) for i, c in zip(ids, configs) if i not in records]
    bar = tqdm(total=len(configs), initial=len(records), desc=desc, disable=not progress,
               dynamic_ncols=True, leave=True)
    best = _Best(score)
    for record in records.values():
        best.update(record["result"])
    bar.set_postfix_str(best.text())

    def finish(i: str, config: Any, result: dict, wall: float, host: str) -> None:
        result = _save_artifacts(runs_dir, i, dict(result))
        record = {"id": i, "config": config_dict(config), "config_type": type(config).__name__,
                  "result": result, "wall_s": wall, "host": host,
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(runs_dir / f"{i}.json", record)
        records[i] = record
        best.update(result)
        bar.update(1)
        bar.set_postfix_str(best.text())

    try:
        if todo:
            if ray:
                _run_ray(fn, todo, finish, ray_address)
            elif workers <= 1:
                for i, config in todo:
                    try:
                        result, wall, host = _timed(fn, config)
                    except Exception as e:
                        raise RunFailed(f"run {i} failed: {type(e).__name__}: {e}\n"
                                        f"config: {config!r}") from e
                    finish(i, config, result, wall, host)
            else:
                _run_pool(fn, todo, finish, workers)
    finally:
        bar.close()
    return [records[i] for i in ids]


class _Best:
    def __init__(self, score: Score | None) -> None:
        self.score, self.value = score, -math.inf

    def update(self, result: dict) -> None:
        if self.score is None:
            return
        try:
            v = float(self.score(result))
        except (KeyError, TypeError, ValueError):
            return
        if math.isfinite(v) and v > self.value:
            self.value = v

    def text(self) -> str:
        return f"best={self.value:.4g}" if self.score is not None and self.value > -math.inf else ""


def _timed(fn: RunFn, config: Any) -> tuple[dict, float, str]:
    start = time.perf_counter()
    result = fn(config)
    if not isinstance(result, dict):
        raise TypeError(f"a run function must return a dict; {fn.__name__} returned {type(result).__name__}")
    return result, time.perf_counter() - start, socket.gethostname()


def _init_worker() -> None:
    torch.set_num_threads(1)


def _single_threaded(fn: RunFn, config: Any) -> tuple[dict, float, str]:
    _init_worker()
    return _timed(fn, config)


def _run_pool(fn: RunFn, todo: list[tuple[str, Any]], finish: Callable, workers: int) -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                             initializer=_init_worker) as pool:
        pending = {pool.submit(_timed, fn, config): (i, config) for i, config in todo}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i, config = pending.pop(future)
                    try:
                        result, wall, host = future.result()
                    except Exception as e:
                        raise RunFailed(f"run {i} failed: {type(e).__name__}: {e}\n"
                                        f"config: {config!r}") from e
                    finish(i, config, result, wall, host)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _run_ray(fn: RunFn, todo: list[tuple[str, Any]], finish: Callable, address: str | None) -> None:
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--ray needs Ray: pip install 'pclab[ray]'") from e
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(_single_threaded)
    pending = {remote.remote(fn, config): (i, config) for i, config in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i, config = pending.pop(ref)
                try:
                    result, wall, host = ray.get(ref)
                except Exception as e:
                    raise RunFailed(f"run {i} failed: {type(e).__name__}: {e}\n"
                                    f"config: {config!r}") from e
                finish(i, config, result, wall, host)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


def _save_artifacts(runs_dir: Path, i: str, result: dict) -> dict:
    artifacts = result.pop("artifacts", None)
    if not artifacts:
        return result
    names = {}
    for name, tensor in artifacts.items():
        path = runs_dir / f"{i}.{name}.pt"
        _write_atomic(path, lambda f, t=tensor: torch.save(t, f))
        names[name] = path.name
    result["artifacts"] = names
    return result


def artifact(out: Path, record: dict, name: str) -> Path:
    """Path of artefact ``name`` saved with ``record`` in the sweep at ``out``."""
    return Path(out) / "runs" / record["result"]["artifacts"][name]


def results(records: Iterable[dict]) -> list[dict]:
    """Each record's config and result merged into one flat dict (result wins on clashes)."""
    return [{**r["config"], **r["result"], "wall_s": r["wall_s"], "id": r["id"]} for r in records]
