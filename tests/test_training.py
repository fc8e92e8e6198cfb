"""pclab.training: configs, run folders, exact resume, divergence, compare.

Expectations come from what the code promises: a resumed run equals an
uninterrupted one bit for bit (``torch.equal``), evaluation equals a direct
computation with ``F.cross_entropy``, a saved config reruns the same run, a
killed process leaves whole files.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import tqdm
import yaml

import pclab
from pclab import data as data_lib
from pclab import models
from pclab import training
from pclab.training import ConfigError, RunDiverged, RunFolderError, TrainConfig

# Small enough for a fraction of a second per epoch on one core.
TINY = dict(train_size=60, batch_size=16, steps=4, device="cpu", threads=1)


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "epochs": 2, **changes})


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def same_records(a, b) -> bool:
    """Equal up to the wall-time fields."""
    strip = lambda r: {k: v for k, v in dataclasses.asdict(r).items() if not k.endswith("time_s")}
    return [strip(r) for r in a] == [strip(r) for r in b]


class Crash(RuntimeError):
    pass


class CrashAfterEpoch(training.Callback):
    """Stands in for a kill right after epoch ``k`` was saved."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_epoch_end(self, record, model) -> None:
        if record.epoch == self.k:
            raise Crash(f"killed after epoch {self.k}")


# ------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, key", [
    ({"epochs": "3"}, "epochs"),
    ({"epochs": 2.0}, "epochs"),
    ({"epochs": True}, "epochs"),
    ({"lr": "fast"}, "lr"),
    ({"lr": 0.0}, "lr"),
    ({"loss": "l1"}, "loss"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"train_size": 0}, "train_size"),
    ({"label_noise": 1.0}, "label_noise"),
    ({"model_options": [1, 2]}, "model_options"),
    ({"data_dir": 3}, "data_dir"),
    ({"device": "tpu"}, "device"),
    ({"compile": "yes"}, "compile"),
    ({"compile": "tick", "algorithm": "fpa"}, "compile"),
    ({"step_size": -1.0}, "step_size"),
])
def test_wrong_types_and_values_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig(**changes)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="valid algorithms: bp, exact, fpa, pc, incremental"):
        TrainConfig(algorithm="backprop")
    with pytest.raises(ConfigError, match="valid models: mlp, cnn, resnet, transformer, rnn"):
        TrainConfig(model="vit")
    with pytest.raises(ConfigError, match="valid options: width, depth, activation, bias"):
        TrainConfig(model_options={"widht": 3})
    with pytest.raises(ConfigError, match="valid keys: data, data_dir"):
        training.make_config({"epoch": 3})
    with pytest.raises(ConfigError, match="valid datasets: digits, mnist"):
        training.train(tiny(data="digitz"))


def test_model_options_are_checked_against_the_models_dataclass():
    assert TrainConfig(model="cnn", model_options={"channels": [4, 4, 8, 8]}).model_options == {
        "channels": [4, 4, 8, 8]}
    with pytest.raises(ConfigError, match="width=0"):
        TrainConfig(model_options={"width": 0})
    with pytest.raises(ConfigError, match="model_options.width.*valid options: d_model"):
        TrainConfig(model="transformer", model_options={"width": 8})
    assert training.parse_model_option("cnn", "channels=[4, 4, 8, 8]") == ("channels", [4, 4, 8, 8])
    assert training.parse_model_option("mlp", "bias=false") == ("bias", False)
    with pytest.raises(ConfigError, match="key=value"):
        training.parse_model_option("mlp", "width")


def test_layers_override_in_order_and_merge_model_options():
    config = training.make_config({"epochs": 5, "lr": "1e-3", "model_options": {"width": 32}},
                                  {"epochs": 2, "model_options": {"depth": 1}})
    assert config.epochs == 2
    assert config.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; accepted for float keys
    assert config.model_options == {"width": 32, "depth": 1}


def test_config_files_yaml_and_json(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\nmodel_options:\n  width: 16\n")
    (tmp_path / "a.json").write_text(json.dumps({"epochs": 3, "model_options": {"width": 16}}))
    assert training.load_config_file(tmp_path / "a.yaml") == training.load_config_file(tmp_path / "a.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        training.load_config_file(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        training.load_config_file(tmp_path / "missing.yaml")


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = training.epoch_order(50, seed=3, epoch=2)
    assert sorted(a.tolist()) == list(range(50))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, training.epoch_order(50, seed=3, epoch=2))
    assert not torch.equal(a, training.epoch_order(50, seed=3, epoch=3))
    assert not torch.equal(a, training.epoch_order(50, seed=4, epoch=2))


# --------------------------------------------------------------- training


def test_evaluate_matches_a_direct_computation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(10, 1, 2, 2), torch.randint(0, 3, (10,))
    loss_sum, correct, n = training.evaluate(model, x, y, loss="ce", batch_size=3)
    with torch.no_grad():
        out = model(x)
    assert n == 10
    assert loss_sum == pytest.approx(float(F.cross_entropy(out, y, reduction="sum")), rel=1e-6)
    assert correct == float((out.argmax(1) == y).sum())
    assert model.training  # mode restored


@pytest.mark.parametrize("algorithm", training.ALGORITHM_NAMES)
def test_every_algorithm_trains_and_records_finite_metrics(algorithm):
    config = tiny(algorithm=algorithm, epochs=1)
    torch.manual_seed(config.seed)  # train() initialises the model from the seed alone
    before = models.build("mlp", input_shape=(1, 8, 8), num_classes=10).state_dict()
    result = training.train(config)
    (record,) = result.history
    values = [record.train_loss, record.train_energy, record.train_accuracy, record.test_loss,
              record.test_accuracy]
    assert all(v is not None and v == v and abs(v) < float("inf") for v in values)
    assert 0 <= record.train_accuracy <= 1 and 0 <= record.test_accuracy <= 1
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something
    assert result.out is None


def test_training_reaches_backprops_accuracy_on_digits():
    # Reference: backprop on the same data, model and seed. PC with enough
    # inference steps should learn the task about as well.
    common = dict(train_size=300, batch_size=32, epochs=4, device="cpu", threads=1, lr=3e-3)
    bp = training.train(TrainConfig(algorithm="bp", **common)).final_test_accuracy
    pc = training.train(TrainConfig(algorithm="pc", steps=10, **common)).final_test_accuracy
    assert bp > 0.8
    assert pc > bp - 0.1


def test_eval_every_skips_epochs_but_not_the_last():
    result = training.train(tiny(epochs=3, eval_every=2, algorithm="bp"))
    assert [r.test_accuracy is not None for r in result.history] == [False, True, True]


def test_dataset_argument_replaces_loading():
    ds = data_lib.load("digits", train_size=40, seed=1)
    result = training.train(tiny(data="my-task", epochs=1, algorithm="bp"), dataset=ds)
    assert len(result.history) == 1


def test_progress_bar_on_a_terminal_shows_epoch_batches_loss_energy_accuracy(monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    # Redraw at every batch, however fast (the bar is built with `from tqdm import tqdm`).
    monkeypatch.setattr(tqdm, "tqdm", functools.partial(tqdm.tqdm, mininterval=0))
    training.train(tiny(epochs=1), progress=True)
    bar = terminal.getvalue()
    assert "epoch 1/1" in bar and "4/4" in bar  # 60 examples in batches of 16
    assert all(f"{name}=" in bar for name in ("loss", "energy", "acc"))
    assert capsys.readouterr().out.startswith("epoch 1/1  loss ")  # the epoch line, on stdout


def test_threads_setting_is_restored():
    before = torch.get_num_threads()
    training.train(tiny(epochs=1, algorithm="bp", threads=1))
    assert torch.get_num_threads() == before


# --------------------------------------------------------------- run folder


def test_run_folder_holds_a_rerunnable_config_metrics_checkpoint_and_plot(tmp_path):
    out = tmp_path / "run"
    result = training.train(tiny(out=str(out), epochs=2))
    assert sorted(p.name for p in out.iterdir()) == sorted(training.RUN_FILES)
    saved = training.make_config(training.load_config_file(out / "config.yaml"))
    assert saved == result.config
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [dataclasses.asdict(r) for r in result.history]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == [f.name for f in dataclasses.fields(training.EpochRecord)]
    assert len(csv_lines) == 3
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and {"model", "optimizer", "rng", "history", "config"} <= state.keys()
    assert_same_state(state["model"], result.model.state_dict())
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Rerunning the saved config elsewhere gives the same run.
    again = training.train(dataclasses.replace(saved, out=str(tmp_path / "again")))
    assert_same_state(again.model.state_dict(), result.model.state_dict())
    assert same_records(again.history, result.history)


def test_existing_folder_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    training.train(tiny(out=str(out), epochs=1, algorithm="bp"))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="--resume.*--overwrite"):
        training.train(tiny(out=str(out), epochs=1, algorithm="bp"))
    training.train(tiny(out=str(out), epochs=1, algorithm="fpa"), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # only run files are replaced
    assert "algorithm: fpa" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("algorithm", ["pc", "incremental"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, algorithm):
    config = tiny(algorithm=algorithm, epochs=3, optimizer="adamw")
    whole = training.train(dataclasses.replace(config, out=str(tmp_path / "whole")))
    stopped = dataclasses.replace(config, out=str(tmp_path / "stopped"))
    with pytest.raises(Crash):
        training.train(stopped, callbacks=[CrashAfterEpoch(1)])
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = training.train(stopped, resume=True)
    assert_same_state(resumed.model.state_dict(), whole.model.state_dict())
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        assert_same_state(state, b["optimizer"]["state"][key])
    assert same_records(resumed.history, whole.history)


def test_resume_rewrites_metrics_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        training.train(tiny(out=str(out), epochs=3), callbacks=[CrashAfterEpoch(1)])
    # As if killed after writing metrics of an epoch whose checkpoint never landed:
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_loss": 9}\n')
    training.train(tiny(out=str(out), epochs=3), resume=True)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_resume_checks_the_config_and_may_extend_epochs(tmp_path):
    out = tmp_path / "run"
    training.train(tiny(out=str(out), epochs=1))
    with pytest.raises(ConfigError, match="'lr'"):
        training.train(tiny(out=str(out), epochs=2, lr=0.1), resume=True)
    result = training.train(tiny(out=str(out), epochs=2), resume=True)
    assert [r.epoch for r in result.history] == [1, 2]
    whole = training.train(tiny(epochs=2))
    assert_same_state(result.model.state_dict(), whole.model.state_dict())
    assert "epochs: 2" in (out / "config.yaml").read_text()


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(RunFolderError, match="no checkpoint.pt"):
        training.train(tiny(out=str(tmp_path / "empty")), resume=True)
    with pytest.raises(ConfigError, match="out"):
        training.train(tiny(), resume=True)


class PoisonAfterEpoch(training.Callback):
    def __init__(self, k: int) -> None:
        self.k = k

    def on_epoch_end(self, record, model) -> None:
        if record.epoch == self.k:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


@pytest.mark.parametrize("algorithm", ["bp", "pc", "incremental"])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, algorithm):
    out = tmp_path / "run"
    with pytest.raises(RunDiverged) as caught:
        training.train(tiny(out=str(out), epochs=3, algorithm=algorithm), callbacks=[PoisonAfterEpoch(1)])
    err = caught.value
    assert isinstance(err, pclab.DivergenceError)
    assert (err.epoch, err.batch, err.checkpoint) == (2, 1, out / "checkpoint.pt")
    assert "epoch 2, batch 1" in str(err) and "checkpoint.pt (epoch 1)" in str(err)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    def half_then_die(f):
        f.write(b"partial")
        raise Crash("killed mid-write")

    with pytest.raises(Crash):
        training.atomic_write(path, half_then_die)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pclab import training
    config = training.make_config(__import__("json").loads(sys.argv[1]))

    class Kill(training.Callback):
        def on_batch_end(self, epoch, batch, result):
            if epoch == 2 and batch == 2:  # mid-epoch, after checkpoint 1 landed
                os.kill(os.getpid(), signal.SIGKILL)

    training.train(config, callbacks=[Kill()])
""")


@pytest.mark.slow
def test_sigkilled_run_leaves_whole_files_and_resumes_exactly(tmp_path):
    out = tmp_path / "killed"
    config = tiny(epochs=3, out=str(out))
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, json.dumps(config.to_dict())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    yaml.safe_load((out / "config.yaml").read_text())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    resumed = training.train(config, resume=True)
    whole = training.train(dataclasses.replace(config, out=None))
    assert_same_state(resumed.model.state_dict(), whole.model.state_dict())


# ------------------------------------------------------------------ compare


def test_compare_summarises_every_algorithm_against_bp(tmp_path):
    base = tiny(epochs=1, out=str(tmp_path / "cmp"))
    result = training.compare(base, ["fpa", "pc"], seeds=[0, 1])
    assert [row["algorithm"] for row in result.summary] == ["bp", "fpa", "pc"]
    for row in result.summary:
        accuracies = [r.final_test_accuracy for r in result.runs[row["algorithm"]]]
        assert row["accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
        assert row["accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)
        assert [r.config.seed for r in result.runs[row["algorithm"]]] == [0, 1]
    assert result.summary[0]["time_ratio"] == 1.0
    out = tmp_path / "cmp"
    for name in training.COMPARE_FILES:
        assert (out / name).is_file()
    assert (out / "pc" / "seed1" / "checkpoint.pt").is_file()
    saved = json.loads((out / "compare.json").read_text())
    assert [row["algorithm"] for row in saved["summary"]] == ["bp", "fpa", "pc"]
    table = result.table().splitlines()
    assert table[0].split()[0] == "algorithm" and [line.split()[0] for line in table[1:]] == ["bp", "fpa", "pc"]
    with pytest.raises(RunFolderError):
        training.compare(base, ["fpa"], seeds=[0])


def test_a_diverged_run_is_a_result_of_the_comparison_not_its_end(tmp_path, monkeypatch):
    # pc's seed-1 run gets a learning rate that overflows; the other runs are untouched.
    real_train = training.train

    def train(config, **kwargs):
        blowup = config.algorithm == "pc" and config.seed == 1
        return real_train(dataclasses.replace(config, optimizer="sgd", lr=1e6) if blowup else config, **kwargs)

    monkeypatch.setattr(training, "train", train)
    lines = []
    with pytest.warns(RuntimeWarning, match="inference raised the energy"):
        result = training.compare(tiny(epochs=1, out=str(tmp_path / "cmp")), ["pc"], seeds=[0, 1], log=lines.append)
    bp, pc = result.summary
    assert bp["diverged"] == [] and len(bp["accuracies"]) == 2
    assert pc["diverged"] == [1] and pc["accuracies"] == [result.runs["pc"][0].final_test_accuracy]
    assert pc["accuracy_mean"] == pc["accuracies"][0] and pc["accuracy_std"] == 0.0
    assert [d["seed"] for d in result.diverged_runs["pc"]] == [1] and result.diverged_runs["pc"][0]["epoch"] == 1
    assert "pc seed 1: training diverged at epoch 1" in lines[-1]
    assert "1 of 2 (seed 1)" in result.table().splitlines()[2]
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["diverged"]["pc"][0]["seed"] == 1 and saved["summary"][1]["diverged"] == [1]
    assert (tmp_path / "cmp" / "curves.png").is_file()


def test_a_comparison_whose_every_run_diverged_still_writes_its_table(tmp_path):
    with pytest.warns(RuntimeWarning):
        result = training.compare(tiny(epochs=1, optimizer="sgd", lr=1e6, out=str(tmp_path / "cmp")), ["pc"], seeds=[0])
    assert [row["diverged"] for row in result.summary] == [[0], [0]]
    assert all(math.isnan(row["accuracy_mean"]) and math.isnan(row["time_ratio"]) for row in result.summary)
    assert "| 1 of 1 (seed 0) |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_refuses_a_setting_one_of_its_algorithms_refuses_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="'tick' cannot compile fpa"):
        training.compare(tiny(compile="tick", out=str(tmp_path / "cmp")), ["pc", "fpa"], seeds=[0])
    assert not any((tmp_path / "cmp").glob("*/seed0"))


def test_compare_rejects_unknown_algorithms():
    with pytest.raises(ConfigError, match="valid algorithms"):
        training.compare(tiny(), ["fpa", "ipc"], seeds=[0])


@pytest.mark.parametrize("algorithm, mode", [("pc", True), ("pc", "tick"), ("incremental", True)])
def test_a_compiled_run_follows_the_eager_run(algorithm, mode):
    # 64 examples in batches of 16: one batch shape, so one compilation.
    eager = training.train(tiny(train_size=64, epochs=1, algorithm=algorithm))
    compiled = training.train(tiny(train_size=64, epochs=1, algorithm=algorithm, compile=mode))
    for a, b in zip(eager.history, compiled.history):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)
        assert b.test_accuracy == pytest.approx(a.test_accuracy, abs=1e-3)


@pytest.mark.parametrize("name,reference", [
    ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)),
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-2, weight_decay=0.1, momentum=0.9)),
])
def test_make_optimizer_follows_torchs_default_update_rule(name, reference):
    """The fused optimizer `pclab train` uses takes the same steps as torch's default loop."""
    torch.manual_seed(0)
    shapes = [(7, 5), (7,), (3, 7)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = training.make_optimizer(name, ours, lr=1e-2, weight_decay=0.1, momentum=0.9)
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):  # fused kernels on CPU
        assert opt.defaults["fused"] is True
    ref = reference(theirs)
    for _ in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_make_optimizer_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; valid: adamw, sgd"):
        training.make_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
