"""The sweep runner: atomic per-run files, resume after a kill, process pool and Ray backends."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, make_dataclass
from pathlib import Path

import pytest
import torch

from pclab.experiments import sweep
from pclab.experiments.sweep import RunFailed, run_id, run_sweep


@dataclass(frozen=True)
class Square:
    x: int
    tag: str = "t"

    @property
    def label(self) -> str:
        return f"sq-x{self.x}"


def square(config: Square) -> dict:
    return {"y": config.x ** 2, "pid": os.getpid(), "threads": torch.get_num_threads()}


def square_with_artifact(config: Square) -> dict:
    return {"y": config.x ** 2, "artifacts": {"vec": torch.arange(config.x)}}


def fail_on_three(config: Square) -> dict:
    if config.x == 3:
        raise ArithmeticError("three is bad")
    return {"y": config.x}


def test_run_id_is_stable_and_changes_with_any_field():
    assert run_id(Square(2)) == run_id(Square(2))
    assert run_id(Square(2)).startswith("sq-x2-")
    assert run_id(Square(2)) != run_id(Square(2, tag="u"))


def test_how_a_run_executes_is_recorded_but_leaves_its_id_alone(tmp_path):
    # The same run config, as a later version of the code declares it (the id hashes the type's name).
    later = make_dataclass("Square", [("fast", bool, sweep.execution_only(False))], bases=(Square,), frozen=True)
    assert run_id(later(2)) == run_id(Square(2)) == run_id(later(2, fast=True))
    # so a sweep resumes runs that ran the other way, and each record says how it ran
    run_sweep(square, [later(1)], tmp_path, workers=1, progress=False)
    records = run_sweep(square, [later(1, fast=True), later(2, fast=True)], tmp_path, workers=1, progress=False)
    assert [r["config"]["fast"] for r in records] == [False, True]


def test_serial_sweep_writes_one_record_per_run_and_resumes(tmp_path):
    configs = [Square(x) for x in range(4)]
    records = run_sweep(square, configs, tmp_path, workers=1, progress=False)
    assert [r["result"]["y"] for r in records] == [0, 1, 4, 9]
    files = sorted((tmp_path / "runs").glob("*.json"))
    assert len(files) == 4
    stored = json.loads(files[0].read_text())
    assert set(stored) >= {"id", "config", "result", "wall_s", "host"}
    assert not list((tmp_path / "runs").glob(".*.tmp"))
    # A rerun with more configs computes only the new ones.
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    calls = []

    def counting(config):
        calls.append(config.x)
        return square(config)

    again = run_sweep(counting, configs + [Square(5)], tmp_path, workers=1, progress=False)
    assert calls == [5]
    assert [r["result"]["y"] for r in again] == [0, 1, 4, 9, 25]
    assert {f.name: f.stat().st_mtime_ns for f in files} == mtimes


def test_failure_keeps_finished_runs_and_names_the_run(tmp_path):
    configs = [Square(x) for x in range(5)]
    with pytest.raises(RunFailed, match=r"sq-x3-.*three is bad"):
        run_sweep(fail_on_three, configs, tmp_path, workers=1, progress=False)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 3


def test_duplicate_configs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        run_sweep(square, [Square(1), Square(1)], tmp_path, workers=1, progress=False)


def test_artifacts_are_saved_next_to_the_record(tmp_path):
    records = run_sweep(square_with_artifact, [Square(3)], tmp_path, workers=1, progress=False)
    path = sweep.artifact(tmp_path, records[0], "vec")
    assert torch.equal(torch.load(path), torch.arange(3))


KILLED_SWEEP = textwrap.dedent("""
    import sys, time
    from dataclasses import dataclass, make_dataclass
    from pathlib import Path
    from pclab.experiments.sweep import run_sweep

    @dataclass(frozen=True)
    class Slow:
        x: int

    def slow(config):
        with open(sys.argv[2], "a") as f:
            f.write(f"{config.x}\\n")
        time.sleep(0.2 if config.x < 2 else 60)
        return {"y": config.x}

    run_sweep(slow, [Slow(x) for x in range(4)], Path(sys.argv[1]), workers=1, progress=False)
""")


def test_resume_after_sigkill_skips_finished_runs(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls.txt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, str(out), str(log)])
    try:
        deadline = time.time() + 60
        while len(list((out / "runs").glob("*.json"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {f.name: f.read_bytes() for f in (out / "runs").glob("*.json")}
    assert len(finished) == 2
    # A killed write may leave a hidden temp file, but never a truncated record.
    assert all(json.loads(b)["result"]["y"] in (0, 1) for b in finished.values())

    # Rerun (fast this time) in-process with the same configs: only runs 2 and 3 execute.
    namespace: dict = {}
    exec(KILLED_SWEEP.split("run_sweep(slow")[0], namespace)
    calls = []

    def fast(config):
        calls.append(config.x)
        return {"y": config.x}

    configs = [namespace["Slow"](x) for x in range(4)]
    records = run_sweep(fast, configs, out, workers=1, progress=False)
    assert sorted(calls) == [2, 3]
    assert [r["result"]["y"] for r in records] == [0, 1, 2, 3]
    assert {f.name: f.read_bytes() for f in (out / "runs").glob("*.json") if f.name in finished} == finished


def test_process_pool_runs_in_single_threaded_workers(tmp_path):
    records = run_sweep(square, [Square(x) for x in range(3)], tmp_path, workers=2, progress=False)
    assert [r["result"]["y"] for r in records] == [0, 1, 4]
    assert all(r["result"]["pid"] != os.getpid() for r in records)
    assert all(r["result"]["threads"] == 1 for r in records)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    # Ray workers import ``square`` from this test module, so they need its folder.
    here = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([here, *sys.path])}})
    yield ray
    ray.shutdown()


def test_ray_backend(tmp_path, local_ray):
    records = run_sweep(square, [Square(x) for x in range(3)], tmp_path, ray=True, progress=False)
    assert [r["result"]["y"] for r in records] == [0, 1, 4]
    assert all(r["result"]["threads"] == 1 for r in records)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 3
    # Resumes on Ray as locally: nothing left to do.
    assert run_sweep(fail_on_three, [Square(x) for x in range(3)], tmp_path, ray=True,
                     progress=False) == records


def test_ray_runs_an_experiment_with_artifacts(tmp_path, local_ray):
    """--ray end to end: the students read the teachers' outputs that the driver saved."""
    import dataclasses

    from pclab.experiments import sample_efficiency as se

    config = dataclasses.replace(se.QUICK, sizes=(20,), width=4, width_multiplier=2, min_steps=3, epochs=1,
                                 catapult_steps=3, eval_points=1, test_size=50, pc_steps=2,
                                 dataset="digits", data_dir=None)
    records = se.run(config, tmp_path, ray=True, progress=False)
    assert sorted(r["result"]["recipe"] for r in records) == sorted(2 * list(se.RECIPES))
    assert len(list((tmp_path / "runs").glob("*.outputs.pt"))) == 2
