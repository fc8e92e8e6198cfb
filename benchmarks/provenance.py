"""What every benchmark result records about where it was measured (the CPU and the code),
and how it is written."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# What a benchmark runs: the library, the scripts and the pinned dependencies. Edits
# elsewhere (the README, docs) and benchmark outputs (a run still writing its results)
# do not make a run's code modified.
CODE = ("src", "benchmarks", "pyproject.toml", "constraints.txt")
OUTPUTS = ("benchmarks/results", "benchmarks/RESULTS.md", "benchmarks/peers/results")


def commit() -> str | None:
    """The checked-out commit, ``+modified`` when tracked code (:data:`CODE`, less
    :data:`OUTPUTS`) differs from it; None without git.

    When the pclab that gets imported comes from another checkout (``PYTHONPATH`` at
    an older one, to measure it with these scripts), that checkout's commit follows:
    ``"<scripts' commit> (pclab <its commit>)"``. ``$PCLAB_COMMIT``, when set, is
    reported instead: the commit a tree copied to another machine was copied from,
    where git there cannot tell (no ``.git``, or one that stands at another commit).
    """
    named = os.environ.get("PCLAB_COMMIT")
    if named:  # a tree copied to another machine, whose .git is absent or not the tree's, names its commit
        return named
    scripts = _commit(REPO_ROOT)
    library = _library_root()
    if scripts is None or library is None or library == REPO_ROOT:
        return scripts
    return f"{scripts} (pclab {_commit(library)})"


def _library_root() -> Path | None:
    """The git checkout the importable pclab package lies in (``src/pclab``), if any."""
    spec = importlib.util.find_spec("pclab")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).resolve().parents[2]
    return root if (root / ".git").exists() else None


def _commit(root: Path) -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "--", *CODE, *(f":!{path}" for path in OUTPUTS)],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+modified" if dirty else "")


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` as JSON to ``path`` whole or not at all (a run killed while
    writing leaves the previous results file intact), and say so."""
    # Imported here, not at the top: the peer harness imports this module in PCX's own
    # virtual environment, which has no pclab.
    from pclab.experiments.sweep import write_json_atomic

    write_json_atomic(path, result)
    print(f"wrote {path}")
