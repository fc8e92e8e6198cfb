"""The benchmark scripts run end to end in seconds, and RESULTS.md shows what the JSON holds.

``benchmarks/accuracy.py --smoke`` and ``benchmarks/speed.py --smoke`` are loaded from
their files (they are scripts, not package modules) and run through ``main(argv)``.
Nothing here reads or writes ``benchmarks/results/``: results go to ``tmp_path``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def accuracy():
    return _load("accuracy")


def test_accuracy_smoke_writes_one_entry_per_run(accuracy, tmp_path):
    out = tmp_path / "accuracy_smoke.json"
    report = accuracy.main(["--smoke", "--json", str(out)])
    entry = report["suites"]["digits-mlp"]
    assert [(r["algorithm"], r["seed"]) for r in entry["runs"]] == [("bp", 0), ("pc", 0)]
    for run in entry["runs"]:
        assert 0.0 <= run["test_accuracy"] <= 1.0
        assert len(run["test_accuracy_per_epoch"]) == 1  # one epoch
    assert {r["algorithm"] for r in entry["summary"]} == {"bp", "pc"}
    assert set(entry["machine"]) >= {"cpu", "cores", "torch"}
    assert entry["command"].startswith("python benchmarks/accuracy.py --smoke")
    # the code it ran: a commit, marked when tracked files were modified (None outside a git checkout)
    assert entry["commit"] is None or re.fullmatch(r"[0-9a-f]{4,40}(\+modified)?", entry["commit"])
    assert entry["hyperparameters"]["mlp 64-128-128-10/pc"]["algorithm"] == "pc"
    on_disk = json.loads(out.read_text())
    assert on_disk["suites"]["digits-mlp"]["runs"] == entry["runs"]
    assert on_disk["suites"]["digits-mlp"]["complete"] is True


def test_accuracy_skips_a_suite_without_data(accuracy, tmp_path, capsys):
    report = accuracy.main(["--suites", "mnist-mlp", "--data-root", str(tmp_path), "--json",
                            str(tmp_path / "a.json")])
    assert "mnist-mlp" in report["skipped"] and not report["suites"]
    assert "skipping mnist-mlp" in capsys.readouterr().out
    assert not (tmp_path / "a.json").exists()


def test_speed_smoke_rows():
    report = _load("speed").main(["--smoke"])
    assert {r["algorithm"] for r in report["rows"]} == {"bp", "exact", "fpa", "pc", "incremental",
                                                        "incremental passes"}
    for row in report["rows"]:
        assert row["ms_per_step"] > 0 and row["vs_bp"] > 0
    # What each step launches is counted: plain backprop reads nothing back (the
    # optimizer's CPU step counters aside); a pclab step reads its batch check and its
    # readout, incremental PC also each tick's divergence check.
    counted = {r["algorithm"]: r for r in report["rows"] if "ops_per_step" in r}
    assert counted["bp"]["ops_vs_bp"] == 1.0 and counted["bp"]["host_reads"] == 0
    assert all(r["ops_per_step"] > counted["bp"]["ops_per_step"] for a, r in counted.items() if a != "bp")
    assert [counted[a]["host_reads"] for a in ("exact", "fpa", "pc", "incremental")] == [2, 2, 2, 2 + 2]
    assert set(report["machine"]) >= {"cpu", "cores", "torch", "heap"}
    assert report["commit"] is None or re.fullmatch(r"[0-9a-f]{4,40}(\+modified)?", report["commit"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
def test_speed_on_cuda_without_a_gpu_is_refused_with_the_fix(capsys):
    with pytest.raises(SystemExit):
        _load("speed").main(["--smoke", "--device", "cuda"])
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_speed_memory_only_counts_peaks_without_timing():
    import pclab.allocator

    if pclab.allocator.heap_info() is None:
        pytest.skip("no glibc heap counters (mallinfo2) to sample")
    report = _load("speed").main(["--smoke", "--memory-only"])
    assert {r["algorithm"] for r in report["rows"]} == {"bp", "exact", "fpa", "pc", "incremental"}
    for row in report["rows"]:
        assert "ms_per_step" not in row and row["peak_memory_vs_bp"] > 0
    bp = next(r for r in report["rows"] if r["algorithm"] == "bp")
    assert bp["peak_memory_vs_bp"] == pytest.approx(1.0, abs=0.05)  # the same step measured twice


def test_render_shows_the_numbers_of_the_json_it_is_given(accuracy, tmp_path):
    results, peers = tmp_path / "results", tmp_path / "peers"
    results.mkdir()
    peers.mkdir()
    runs = [{"variant": "m", "algorithm": "pc", "seed": s, "test_accuracy": a, "test_loss": 0.25,
             "seconds_per_epoch": 0.5, "warnings": ["inference raised the energy"] if s else []}
            for s, a in enumerate([0.8125, 0.8375])]
    entry = {"date": "2000-01-02T03:04:05+00:00", "command": "python benchmarks/accuracy.py --fabricated",
             "machine": {"cpu": "Fabricated CPU 9000", "cores": 7, "torch": "0.0.0"},
             "dataset": "digits", "train_examples": 11, "test_examples": 13, "model": "mlp",
             "note": "a fabricated suite", "seeds": [0, 1], "tuned": False, "tuning": {},
             "table_entry": {"variants": {"m": {}}},
             "hyperparameters": {"m/pc": {"epochs": 3, "batch_size": 32, "optimizer": "adamw", "lr": 0.001,
                                          "steps": 20, "step_size": None, "weight_decay": 0.0, "loss": "ce",
                                          "threads": 1}},
             "runs": runs, "summary": accuracy.summarise(runs)}
    (results / "accuracy.json").write_text(json.dumps({"suites": {"digits-mlp": entry}}))
    speed = {"command": "speed.py --fabricated", "date": "2000-01-01T00:00:00",
             "machine": {"cpu": "Fabricated CPU 9000", "cores": 7, "torch": "0.0.0", "torch_threads": 7},
             "batch": 64, "rows": [{"model": "mlp", "algorithm": "fpa", "T": 8, "ms_per_step": 1.2345,
                                    "vs_bp": 4.321, "budget": "fwd + T bwd", "vs_budget": 1.0987}]}
    (results / "speed.json").write_text(json.dumps(speed))
    again = {**speed, "rows": [{**speed["rows"][0], "model": "mlp", "vs_budget": 0.5}]}
    (results / "speed-mlp.json").write_text(json.dumps(again))
    memory = {**speed, "rows": [{"model": "cnn", "algorithm": "fpa", "T": 8, "peak_memory_vs_bp": 2.468}]}
    (results / "speed-memory.json").write_text(json.dumps(memory))
    default_heap = {**again, "machine": {**speed["machine"], "heap": "glibc defaults"}}
    (results / "speed-mlp-default-malloc.json").write_text(json.dumps(default_heap))
    counted = {**speed, "rows": [{**speed["rows"][0], "model": "tiny", "ops_vs_bp": 1.375, "host_reads": 2}]}
    (results / "speed-tiny.json").write_text(json.dumps(counted))
    gpu = {**again, "machine": {**speed["machine"], "gpu": "Fabricated GPU 1"}}
    (results / "speed-cuda.json").write_text(json.dumps(gpu))
    pcx = {"date_utc": "2000-01-03T00:00:00+00:00", "command": "python compare_pcx.py --fabricated",
           "machine": {"cpu_model": "Fabricated CPU 9000", "nproc": 7},
           "versions": {"torch_threads": 3}, "table": [["steps/s", "123.4", "567.8"]]}
    (peers / "compare_pcx.json").write_text(json.dumps(pcx))
    pinned = {**pcx, "cores": 1, "versions": {"torch_threads": 1}, "table": [["steps/s", "11.1", "22.2"]]}
    (peers / "compare_pcx_cores1.json").write_text(json.dumps(pinned))
    (peers / "compare_pcx_smoke.json").write_text(json.dumps({**pcx, "table": [["steps/s", "smoke", "smoke"]]}))
    out = tmp_path / "RESULTS.md"

    accuracy.main(["--render", "--results-dir", str(results), "--peers-dir", str(peers), "--out", str(out)])

    text = out.read_text()
    mean, std = (0.8125 + 0.8375) / 2, 0.0176777  # sample std of the two
    assert f"| m | pc | {mean:.4f} ± {std:.4f} | 0.8125, 0.8375 | 0.2500 | 2 | 0.50 |" in text
    for fact in ("Fabricated CPU 9000, 7 cores", "--fabricated", "2000-01-02T03:04:05+00:00",
                 "| 1.23 | 4.32 | 1.10 |", "| steps/s | 123.4 | 567.8 |", "2000-01-03"):
        assert fact in text
    assert "Runs in which pclab warned (the messages are in the JSON): m / pc seed 1." in text
    # A re-measured subset of speed.py's models gets its own section next to the full table.
    assert "(mlp, re-measured)" in text and "| 1.23 | 4.32 | 0.50 |" in text
    # a memory-only re-measurement says it has no timings, and shows dashes for them
    assert "(cnn, peak memory re-measured, no timings)" in text
    assert "| cnn | fpa | 8 |  | - | - | - |  | 2.47 | - |" in text
    # launches counted (speed.py since 2026-12-05) get their columns; older tables keep theirs
    assert "| tiny | fpa | 8 |  | 1.23 | 4.32 | 1.10 | fwd + T bwd | - | - | 1.38 | 2 |" in text
    assert text.count("ops × bp | host reads |") == 1
    # one re-measured without pclab's heap setting says so in its heading
    assert "(mlp, re-measured, glibc's default heap)" in text
    # one measured on a GPU names it, in its heading and its machine line
    assert "## Speed on the GPU (Fabricated GPU 1): one training step against backprop, batch 64" in text
    assert "peak memory is CUDA's allocator peak" in text
    assert "7 torch threads, GPU: Fabricated GPU 1" in text
    # Each PCX comparison gets its own section; a pinned one says on how many cores; smoke runs stay out.
    assert "| steps/s | 11.1 | 22.2 |" in text and "both on 1 core\n" in text
    assert "both pinned to cores 0-0" in text and "smoke" not in text
    # Suites without results are listed with the command that produces them.
    assert "`python benchmarks/accuracy.py --suites fmnist-depth`" in text
    assert "`python benchmarks/accuracy.py --suites digits-mlp`" not in text
    assert "incomplete" not in text

    # A suite stopped half-way (saved after every run) says so.
    entry.update(complete=False, algorithms=["pc", "bp"])
    (results / "accuracy.json").write_text(json.dumps({"suites": {"digits-mlp": entry}}))
    accuracy.main(["--render", "--results-dir", str(results), "--peers-dir", str(peers), "--out", str(out)])
    assert "**incomplete**: 2 of 4 runs finished" in out.read_text()


def test_variants_run_a_named_subset_of_a_suite_and_say_so(accuracy, capsys):
    entry = accuracy.main(["--smoke", "--variants", "mlp 64-128-128-10"])["suites"]["digits-mlp"]
    assert list(entry["table_entry"]["variants"]) == ["mlp 64-128-128-10"]
    assert entry["note"].endswith("; only mlp 64-128-128-10 here (--variants)")
    with pytest.raises(SystemExit):
        accuracy.main(["--smoke", "--variants", "mlp 1-2-3"])
    assert "'mlp 1-2-3' is not a variant of the suite; valid: mlp 64-128-128-10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        accuracy.main(["--suites", "digits-mlp,mnist-mlp", "--variants", "mlp 64-128-128-10"])
    assert "--variants picks variants of one suite" in capsys.readouterr().err


def test_tune_picks_each_algorithms_settings_from_its_grid_on_validation(accuracy):
    report = accuracy.main(["--smoke", "--tune"])
    entry = report["suites"]["digits-mlp"]
    split = entry["validation_split"]
    assert split["train"] + split["validation"] == entry["train_examples"]
    # bp has one knob, so 3 settings; pc's inference step size is a second knob: 3 x 3.
    for algorithm, size in (("bp", 3), ("pc", 9)):
        tuning = entry["tuning"][f"mlp 64-128-128-10/{algorithm}"]
        steps = entry["hyperparameters"][f"mlp 64-128-128-10/{algorithm}"]["steps"]
        base = accuracy.tuning_grid(algorithm, steps)
        assert len(base) == size and tuning["grid"][:size] == base
        assert len(tuning["validation_accuracy"]) == len(tuning["grid"]) and tuning["chosen"] in tuning["grid"]
        # the whole validation curve of each setting is kept (the final score is its last point)
        assert [c[-1] for c in tuning["validation_accuracy_per_epoch"]] == tuning["validation_accuracy"]
        # then weight decay, at the best decay-free setting: once the lr/step search
        # (and any walk past its edge) is done, the three decays follow it
        stage = [p for p in tuning["grid"] if "weight_decay" not in p]
        scores = dict(zip(map(accuracy._point, tuning["grid"]), tuning["validation_accuracy"]))
        first = max(stage, key=lambda p: (scores[accuracy._point(p)] or -1.0, -stage.index(p)))
        decay = accuracy.weight_decay_grid(first)
        at = len(stage)
        assert tuning["grid"][at:at + 3] == decay and tuning["base_grid_size"] == size + 3
        assert [p["weight_decay"] for p in decay] == list(accuracy.WEIGHT_DECAY_GRID)
        # the search stopped because the best setting is inside what it tried (or it walked its limit)
        assert accuracy.beyond_edge(base, stage, first) == []
        assert accuracy.beyond_edge(decay, tuning["grid"], tuning["chosen"]) == []
        assert len(tuning["grid"]) <= size + 3 + 4 * accuracy.MAX_EDGE_STEPS
        used = entry["hyperparameters"][f"mlp 64-128-128-10/{algorithm}"]
        assert all(used[k] == v for k, v in tuning["chosen"].items())
        # the final runs stop where the chosen setting's validation curve peaked
        curve = tuning["validation_accuracy_per_epoch"][tuning["grid"].index(tuning["chosen"])]
        assert used["epochs"] == tuning["stop_epoch"] == accuracy.stop_epoch(curve)
        assert not tuning["stop_epoch_curve_rerun"]
    assert {p["step_size"] for p in accuracy.tuning_grid("pc", 20)} == {0.01, 0.03, 0.1}
    # incremental steps the optimizer at every tick: T times smaller rates, the same count
    assert ({p["lr"] for p in accuracy.tuning_grid("incremental", 20)}
            == {round(lr / 20, 12) for lr in accuracy.LR_GRID})


def test_early_stopping_takes_the_first_epoch_of_the_validation_peak(accuracy):
    assert accuracy.stop_epoch([0.5, 0.7, 0.9, 0.8]) == 3  # overfits after epoch 3
    assert accuracy.stop_epoch([0.5, 0.9, 0.9, 0.8]) == 2  # a tie goes to the shorter run
    assert accuracy.stop_epoch([0.5, 0.6, 0.7]) == 3  # still rising: all the epochs
    assert accuracy.stop_epoch([None]) is None and accuracy.stop_epoch(None) is None  # diverged


def test_a_reused_choice_without_a_curve_is_rerun_for_its_curve(accuracy, tmp_path):
    out = tmp_path / "tuned.json"
    key = "mlp 64-128-128-10/bp"
    first = accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--epochs", "3", "--json", str(out)])
    report = json.loads(out.read_text())
    tuning = report["suites"]["digits-mlp"]["tuning"][key]
    tuning["validation_accuracy_per_epoch"] = [None] * len(tuning["grid"])  # as older results files hold
    out.write_text(json.dumps(report))
    again = accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--epochs", "3", "--json", str(out)])
    t1, t2 = first["suites"]["digits-mlp"]["tuning"][key], again["suites"]["digits-mlp"]["tuning"][key]
    assert t2["reused"] == list(range(len(t1["grid"]))) and t2["stop_epoch_curve_rerun"]
    at = t2["grid"].index(t2["chosen"])
    assert t2["validation_accuracy_per_epoch"][at] == t1["validation_accuracy_per_epoch"][at]
    assert t2["stop_epoch"] == t1["stop_epoch"]
    assert again["suites"]["digits-mlp"]["hyperparameters"][key]["epochs"] == t1["stop_epoch"]


def test_tuning_walks_past_the_edge_the_best_setting_lies_on(accuracy):
    base = [{"lr": lr, "step_size": st} for lr in (3e-4, 1e-3, 3e-3) for st in (0.01, 0.03, 0.1)]
    corner = {"lr": 3e-4, "step_size": 0.01}
    # one grid step along each knob the best point is at the edge of, the other knob held
    assert accuracy.beyond_edge(base, base, corner) == [{"lr": 9e-5, "step_size": 0.01},
                                                        {"lr": 3e-4, "step_size": 0.00333}]
    assert accuracy.beyond_edge(base, base, {"lr": 3e-3, "step_size": 0.03}) == [{"lr": 9e-3, "step_size": 0.03}]
    assert accuracy.beyond_edge(base, base, {"lr": 1e-3, "step_size": 0.03}) == []
    # the weight-decay search walks its own knob; the decay-free points it follows do not count
    decay = [{"lr": 1e-3, "weight_decay": wd} for wd in (0.1, 0.3, 1.0)]
    assert accuracy.beyond_edge(decay, [{"lr": 1e-3}, *decay], decay[-1]) == [{"lr": 1e-3, "weight_decay": 3.33}]
    assert accuracy.beyond_edge(decay, [{"lr": 1e-3}, *decay], {"lr": 1e-3}) == []  # no decay is best: done
    # at most MAX_EDGE_STEPS steps past the grid
    walked = [*base, {"lr": 9e-5, "step_size": 0.01}, {"lr": 2.7e-5, "step_size": 0.01}]
    assert accuracy.MAX_EDGE_STEPS == 2
    assert accuracy.beyond_edge(base, walked, {"lr": 2.7e-5, "step_size": 0.03}) == []
    # a setting already tried is not proposed again
    assert accuracy.beyond_edge(base, walked, {"lr": 9e-5, "step_size": 0.03}) == []


def test_a_suite_on_another_optimizer_tunes_over_its_own_grids(accuracy):
    """The SGD depth suite searches SGD's rates and decays, with its optimizer, on AdamW's models."""
    suite = accuracy.SUITES["fmnist-depth-sgd"]
    assert suite.variants == accuracy.SUITES["fmnist-depth"].variants
    assert (suite.config["optimizer"], suite.config["momentum"]) == ("sgd", 0.9)
    smoke = accuracy.SUITES["digits-mlp"]
    suite = accuracy.replace(smoke, config={"optimizer": "sgd", "momentum": 0.9},
                             lr_grid=(0.01, 0.1, 1.0), weight_decay_grid=(1e-4, 1e-3, 1e-2))
    ran = []

    def middle_is_best(configs, dataset):  # scores without training: best at the middle of both grids
        for config in configs:
            ran.append(config)
            score = 0.9 - abs(math.log10(config.lr) + 1) - abs(math.log10(config.weight_decay or 1e-6) + 3)
            yield {"test_accuracy": score, "test_accuracy_per_epoch": [score]}

    variant = next(iter(smoke.variants.values()))
    tuning = accuracy._tune(suite, "bp", variant, {}, None, None, lambda line: None, middle_is_best)
    assert [c.lr for c in ran] == [0.01, 0.1, 1.0, 0.1, 0.1, 0.1]
    assert [c.weight_decay for c in ran] == [0.0, 0.0, 0.0, 1e-4, 1e-3, 1e-2]
    assert {(c.optimizer, c.momentum) for c in ran} == {("sgd", 0.9)}
    assert tuning["chosen"] == {"lr": 0.1, "weight_decay": 1e-3}


def test_tuning_reuses_scores_from_the_results_file_unless_told_to_retune(accuracy, tmp_path):
    out = tmp_path / "tuned.json"
    first = accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--json", str(out)])
    again = accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--json", str(out)])
    key = "mlp 64-128-128-10/bp"
    t1, t2 = first["suites"]["digits-mlp"]["tuning"][key], again["suites"]["digits-mlp"]["tuning"][key]
    assert t1["reused"] == [] and t2["reused"] == list(range(len(t1["grid"])))
    assert t2["reused_from"]["date"] == first["suites"]["digits-mlp"]["date"]  # which run measured them
    assert (t2["grid"], t2["validation_accuracy"], t2["chosen"]) == (t1["grid"], t1["validation_accuracy"], t1["chosen"])
    assert t2["validation_accuracy_per_epoch"] == t1["validation_accuracy_per_epoch"]
    # a different table (here: more epochs) is a different experiment: nothing reused
    other = accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--epochs", "2", "--json", str(out)])
    assert other["suites"]["digits-mlp"]["tuning"][key]["reused"] == []
    retuned = accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--epochs", "2", "--retune",
                             "--json", str(out)])
    assert retuned["suites"]["digits-mlp"]["tuning"][key]["reused"] == []


def test_a_tuning_search_stopped_halfway_resumes_from_the_scores_it_saved(accuracy, tmp_path, monkeypatch):
    """Every tuning score is saved as its run ends: a search of hours that is killed loses one run."""
    out, key = tmp_path / "accuracy.json", "mlp 64-128-128-10/bp"

    class Stopped(Exception):
        pass

    def stopped_after_two(configs, dataset):
        for done, config in enumerate(configs):
            if done == 2:
                raise Stopped
            yield accuracy._run_one(config, dataset)

    with monkeypatch.context() as m:
        m.setattr(accuracy, "_serial", stopped_after_two)
        with pytest.raises(Stopped):
            accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--json", str(out)])
    saved = json.loads(out.read_text())["suites"]["digits-mlp"]
    partial = saved["tuning"][key]
    assert partial["partial"] and len(partial["grid"]) == 2 and saved["runs"] == [] and not saved["complete"]
    rendered = accuracy.render(tmp_path)
    assert f"{key}: tuning unfinished, 2 settings scored so far" in rendered and "**incomplete**" in rendered

    resumed = accuracy.main(["--smoke", "--tune", "--algorithms", "bp", "--json", str(out)])
    fresh = accuracy.main(["--smoke", "--tune", "--algorithms", "bp"])  # the same search, never stopped
    t, t0 = resumed["suites"]["digits-mlp"]["tuning"][key], fresh["suites"]["digits-mlp"]["tuning"][key]
    assert t["reused"] == [0, 1] and "partial" not in t
    assert (t["grid"], t["validation_accuracy"], t["chosen"]) == (t0["grid"], t0["validation_accuracy"], t0["chosen"])
    assert json.loads(out.read_text())["suites"]["digits-mlp"]["complete"] is True


def test_parallel_jobs_give_the_numbers_of_one_process(accuracy, tmp_path):
    """``--jobs 2`` runs tuning points and seeds in spawned processes: same results, same order."""
    out = tmp_path / "parallel.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "accuracy.py"), "--smoke", "--tune",
                    "--seeds", "2", "--jobs", "2", "--json", str(out)], check=True, capture_output=True)
    parallel = json.loads(out.read_text())["suites"]["digits-mlp"]
    serial = accuracy.main(["--smoke", "--tune", "--seeds", "2"])["suites"]["digits-mlp"]
    assert parallel["tuning"] == serial["tuning"]
    key = lambda r: (r["algorithm"], r["seed"], r["test_accuracy"], r["train_loss_per_epoch"])
    assert [key(r) for r in parallel["runs"]] == [key(r) for r in serial["runs"]]


def test_jobs_below_one_are_refused(accuracy, capsys):
    with pytest.raises(SystemExit):
        accuracy.main(["--smoke", "--jobs", "0"])
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_a_suite_split_over_invocations_keeps_every_algorithms_runs(accuracy, tmp_path):
    out = tmp_path / "accuracy.json"
    accuracy.main(["--smoke", "--algorithms", "bp", "--json", str(out)])
    # --threads 1 is the default: saying it does not make a different suite.
    accuracy.main(["--smoke", "--algorithms", "pc", "--threads", "1", "--json", str(out)])
    entry = json.loads(out.read_text())["suites"]["digits-mlp"]
    assert entry["algorithms"] == ["bp", "pc"] and entry["complete"] is True
    assert [r["algorithm"] for r in entry["runs"]] == ["bp", "pc"]
    assert [p["algorithms"] for p in entry["parts"]] == [["bp"], ["pc"]]
    assert {row["algorithm"] for row in entry["summary"]} == {"bp", "pc"}
    # rerunning one algorithm replaces its runs, not the other's
    accuracy.main(["--smoke", "--algorithms", "pc", "--threads", "1", "--json", str(out)])
    entry = json.loads(out.read_text())["suites"]["digits-mlp"]
    assert [r["algorithm"] for r in entry["runs"]] == ["bp", "pc"] and len(entry["parts"]) == 2


def test_runs_recorded_with_a_default_override_still_merge(accuracy, tmp_path):
    """An entry whose invocation recorded ``--threads 1`` (when 1 was not yet the
    default) is the same suite as one that leaves it out: its runs are kept."""
    out = tmp_path / "accuracy.json"
    accuracy.main(["--smoke", "--algorithms", "bp", "--json", str(out)])
    results = json.loads(out.read_text())
    results["suites"]["digits-mlp"]["table_entry"]["overrides"]["threads"] = 1
    out.write_text(json.dumps(results))
    accuracy.main(["--smoke", "--algorithms", "pc", "--json", str(out)])
    assert [r["algorithm"] for r in json.loads(out.read_text())["suites"]["digits-mlp"]["runs"]] == ["bp", "pc"]


def test_runs_of_a_changed_suite_are_dropped_with_a_note(accuracy, tmp_path, capsys):
    out = tmp_path / "accuracy.json"
    accuracy.main(["--smoke", "--algorithms", "bp", "--json", str(out)])
    accuracy.main(["--smoke", "--algorithms", "pc", "--epochs", "2", "--json", str(out)])
    assert [r["algorithm"] for r in json.loads(out.read_text())["suites"]["digits-mlp"]["runs"]] == ["pc"]
    assert "table_entry changed since its earlier runs, so those of bp no longer describe it" in capsys.readouterr().err


def test_an_algorithm_the_suite_does_not_run_is_refused(accuracy, tmp_path):
    with pytest.raises(SystemExit):
        accuracy.main(["--suites", "fmnist-depth", "--algorithms", "fpa", "--json", str(tmp_path / "a.json")])


def test_a_run_records_pclabs_warnings(accuracy):
    from pclab import data as data_lib
    from pclab.training import TrainConfig
    dataset = data_lib.load("digits", None, train_size=200)
    run = accuracy._run_one(TrainConfig(data="digits", algorithm="pc", steps=5, step_size=3.0, epochs=1,
                                        device="cpu"), dataset)
    assert any("raised the energy" in w for w in run["warnings"])
    calm = accuracy._run_one(TrainConfig(data="digits", algorithm="pc", steps=5, step_size=0.01, epochs=1,
                                         device="cpu"), dataset)
    assert calm["warnings"] == []


def test_a_result_records_its_code_modified_only_by_code_not_by_docs_or_benchmark_outputs(tmp_path, monkeypatch):
    provenance = _load("provenance")
    git = lambda *args: subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    git("init", "-q")
    for path in ("src/lib.py", "benchmarks/results/speed.json", "benchmarks/RESULTS.md", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(provenance, "_library_root", lambda: tmp_path)
    clean = provenance.commit()
    assert clean and not clean.endswith("+modified")
    # another run writing its results leaves the code as committed
    (tmp_path / "benchmarks/results/speed.json").write_text("1\n")
    (tmp_path / "benchmarks/RESULTS.md").write_text("1\n")
    (tmp_path / "README.md").write_text("1\n")  # nor does editing the docs
    assert provenance.commit() == clean
    (tmp_path / "src/lib.py").write_text("1\n")
    assert provenance.commit() == clean + "+modified"
    # pclab imported from another checkout (an older one, measured with these scripts)
    other = tmp_path / "older"
    other.mkdir()
    subprocess.run(["git", "clone", "-q", str(tmp_path), str(other)], check=True, capture_output=True)
    monkeypatch.setattr(provenance, "_library_root", lambda: other)
    assert provenance.commit() == f"{clean}+modified (pclab {clean})"
    # a copy run elsewhere names the commit it was copied from, whatever git there says
    monkeypatch.setenv("PCLAB_COMMIT", "abc1234")
    assert provenance.commit() == "abc1234"


def test_alignment_smoke_measures_exact_as_backprop_and_refuses_missing_data(tmp_path):
    alignment = _load("alignment")
    report = alignment.main(["--smoke", "--json", str(tmp_path / "alignment.json")])
    exact = next(s for s in report["summary"] if s["algorithm"] == "exact")
    assert exact["min_cosine"] == pytest.approx(1.0, abs=1e-5) and exact["max_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert {s["algorithm"] for s in report["summary"]} == {"exact", "pc"}
    assert not (tmp_path / "alignment.json").exists()  # --smoke writes nothing
    with pytest.raises(SystemExit):
        alignment.main(["--data-dir", str(tmp_path / "absent"), "--json", str(tmp_path / "a.json")])
    assert not (tmp_path / "a.json").exists()
