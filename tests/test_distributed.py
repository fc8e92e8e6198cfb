"""Data-parallel training: 2 processes (gloo, CPU) against one process on the global batch.

Reference: one process training on the whole batch. Two processes split each
batch (unevenly: 25 examples -> 13 + 12), run inference on their shards and
average the gradients, weighted by shard size; the weights must match the
single-process run up to float summation order.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pclab import models, training

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

BASE = dict(train_size=100, batch_size=25, epochs=2, steps=4, device="cpu", threads=1)
ALGORITHMS = ("bp", "fpa", "pc", "incremental")


class _PoisonOnRank1(training.Callback):
    """Only rank 1 goes non-finite, as when one shard holds the bad example."""

    def on_epoch_end(self, record, model) -> None:
        if dist.get_rank() == 1 and record.epoch == 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def _worker(rank: int, world: int, init_file: str, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results_dir = Path(results)
    try:
        for algorithm in ALGORITHMS:
            # Rank 1 names another folder: only rank 0's choice may be used or written.
            out = results_dir / (f"{algorithm}-run" if rank == 0 else f"{algorithm}-rank1")
            config = training.TrainConfig(**BASE, algorithm=algorithm, out=str(out))
            result = training.train(config)
            torch.save(result.model.state_dict(), results_dir / f"{algorithm}-rank{rank}.pt")
        for algorithm in ("bp", "incremental"):
            config = training.TrainConfig(**{**BASE, "epochs": 3}, algorithm=algorithm)
            try:
                training.train(config, callbacks=[_PoisonOnRank1()])
                outcome = "no error"
            except training.RunDiverged as err:
                outcome = f"diverged at epoch {err.epoch} batch {err.batch}"
            (results_dir / f"diverge-{algorithm}-rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def _spawn(world: int, tmp_path: Path, timeout_s: float = 90.0) -> None:
    context = mp.start_processes(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)),
                                 nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError("distributed workers did not finish: a collective is hanging")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _initial(config: training.TrainConfig) -> dict:
    # train() initialises from torch.manual_seed(seed) right before building the model.
    torch.manual_seed(config.seed)
    return models.build(config.model, input_shape=(1, 8, 8), num_classes=10,
                        **config.model_options).state_dict()


def _assert_matches(distributed: dict, single: dict, initial: dict) -> None:
    for key in single:
        moved = (single[key] - initial[key]).abs().max()
        gap = (distributed[key] - single[key]).abs().max()
        assert moved > 0, key
        # Summation order only: orders of magnitude below what training moved.
        assert gap <= 1e-5 + 1e-4 * moved, (key, float(gap), float(moved))


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    _spawn(2, tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_processes_match_one_process_on_the_global_batch(two_process_results, algorithm):
    path = two_process_results
    config = training.TrainConfig(**BASE, algorithm=algorithm)
    single = training.train(config).model.state_dict()
    initial = _initial(config)
    rank0 = torch.load(path / f"{algorithm}-rank0.pt", weights_only=True)
    rank1 = torch.load(path / f"{algorithm}-rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # the ranks never drift apart
    _assert_matches(rank0, single, initial)
    # Only rank 0 wrote, into its folder; rank 1's --out was never touched.
    assert sorted(p.name for p in (path / f"{algorithm}-run").iterdir()) == sorted(training.RUN_FILES)
    assert not (path / f"{algorithm}-rank1").exists()
    assert "2 process(es)" in (path / f"{algorithm}-run" / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["bp", "incremental"])
def test_divergence_on_one_rank_stops_every_rank(two_process_results, algorithm):
    # Incremental diverges inside pc.step, between the optimizer's all-reduces;
    # the others must still learn of it instead of waiting forever.
    outcomes = {(two_process_results / f"diverge-{algorithm}-rank{r}.txt").read_text() for r in (0, 1)}
    assert outcomes == {"diverged at epoch 2 batch 1"}


@pytest.mark.slow
def test_torchrun_module_entry_point(tmp_path):
    out = tmp_path / "run"
    flags = ["--train-size", "100", "--batch-size", "25", "--epochs", "2", "--steps", "4",
             "--device", "cpu", "--algorithm", "pc"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "pclab", "train", *flags, "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("epoch 1/2") == 1  # progress from rank 0 only
    config = training.make_config(training.load_config_file(out / "config.yaml"))
    single = training.train(dataclasses.replace(config, out=None)).model.state_dict()
    initial = _initial(config)
    _assert_matches(torch.load(out / "checkpoint.pt", weights_only=True)["model"], single, initial)


def test_allreduce_optimizer_steps_with_averaged_gradients(tmp_path):
    # In one process (world size 1) the wrapper must be transparent.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        layer = torch.nn.Linear(3, 2)
        opt = training.AllReduceOptimizer(torch.optim.SGD(layer.parameters(), lr=0.1))
        before = layer.weight.detach().clone()
        layer.weight.grad = torch.ones_like(layer.weight)
        layer.bias.grad = torch.ones_like(layer.bias)
        opt.local_batch = 4
        opt.step()
        assert torch.allclose(layer.weight, before - 0.1)
        assert opt.state_dict()["param_groups"][0]["lr"] == 0.1
    finally:
        dist.destroy_process_group()
