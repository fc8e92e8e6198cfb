"""What every benchmark result records about where it was measured: the CPU and the code."""

from __future__ import annotations

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


# Benchmark outputs: a run still writing its results does not make the next run's code modified.
OUTPUTS = ("benchmarks/results", "benchmarks/RESULTS.md", "benchmarks/peers/results")


def commit() -> str | None:
    """The checked-out commit, ``+modified`` when tracked files other than benchmark
    outputs differ from it; None without git."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", *(f":!{path}" for path in OUTPUTS)],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+modified" if dirty else "")
