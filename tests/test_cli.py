"""The ``pclab`` command line, driven in-process through ``main([...])``."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from pclab import cli, training

SMALL = ["--train-size", "60", "--batch-size", "16", "--steps", "3", "--device", "cpu", "--quiet"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def saved_config(out: Path) -> training.TrainConfig:
    return training.make_config(training.load_config_file(out / "config.yaml"))


def test_help_lists_the_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "train" in out and "compare" in out


def test_train_writes_a_run_folder(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", *SMALL, "--epochs", "2", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(training.RUN_FILES)
    assert "test accuracy" in stdout and str(out) in stdout
    config = saved_config(out)
    assert (config.algorithm, config.model, config.data, config.epochs) == ("pc", "mlp", "digits", 2)


def test_compile_per_tick_reaches_the_saved_config(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", *SMALL, "--epochs", "1", "--compile-per-tick", "--out", out)
    assert code == 0, err
    assert saved_config(out).compile == "tick"


def test_default_out_folder_is_under_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", *SMALL, "--epochs", "1", "--algorithm", "bp")
    assert code == 0, err
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("digits-mlp-bp-")


def test_flags_override_the_config_file(capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("epochs: 3\nalgorithm: fpa\nlr: 1e-2\nmodel_options:\n  width: 16\n")
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--config", tmp_path / "run.yaml", *SMALL,
                       "--epochs", "1", "--depth", "1", "--out", out)
    assert code == 0, err
    config = saved_config(out)
    assert (config.epochs, config.algorithm, config.lr) == (1, "fpa", 1e-2)
    assert config.model_options == {"width": 16, "depth": 1}


def test_saved_config_reruns_the_same_run(capsys, tmp_path):
    assert run(capsys, "train", *SMALL, "--epochs", "1", "--out", tmp_path / "a")[0] == 0
    assert run(capsys, "train", "--config", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b")[0] == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("content, needle", [
    ("epoch: 3\n", "unknown config key 'epoch'; valid keys: data,"),
    ("epochs: three\n", "config key 'epochs': expected an integer"),
    ("model_options:\n  widht: 3\n", "model_options.widht.*valid options: width, depth"),
    ("- 1\n", "must hold a mapping"),
])
def test_bad_config_files_name_the_key(capsys, tmp_path, content, needle):
    (tmp_path / "bad.yaml").write_text(content)
    code, _, err = run(capsys, "train", "--config", tmp_path / "bad.yaml", "--out", tmp_path / "run")
    assert code == cli.EXIT_BAD_INPUT
    assert re.search(needle, err), err
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


@pytest.mark.parametrize("flags, needle", [
    (["--data", "imagenet"], "valid datasets: digits, mnist, fashion-mnist, cifar10"),
    (["--model", "vit"], "valid models: mlp, cnn, resnet, transformer, rnn"),
    (["--algorithm", "ipc"], "valid algorithms: bp, exact, fpa, pc, incremental"),
    (["--model", "transformer", "--width", "8"], "'width': unknown for model 'transformer'; valid options: d_model"),
    (["-o", "widht=3"], "valid options: width, depth, activation, bias"),
    (["-o", "width=wide"], "width='wide'"),
    (["--train-size", "5000"], "train_size"),
    (["--value-nodes", "units"], "expected one of 'layers', 'blocks'"),
    (["--value-nodes", "blocks"], "'blocks' needs a model made of residual blocks"),
    (["--model", "resnet", "-o", "parametrization=mup"], "one of 'standard', 'mupc'"),
])
def test_bad_names_and_values_list_valid_ones(capsys, tmp_path, flags, needle):
    code, _, err = run(capsys, "train", *SMALL, *flags, "--out", tmp_path / "run")
    assert code == cli.EXIT_BAD_INPUT
    assert needle in err, err


def test_model_option_flags_reach_the_model(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", *SMALL, "--epochs", "1", "--model", "cnn",
                       "-o", "channels=[4, 4, 8, 8]", "-o", "norm=layer", "--out", out)
    assert code == 0, err
    assert saved_config(out).model_options == {"channels": [4, 4, 8, 8], "norm": "layer"}
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert weights["features.0.weight"].shape[0] == 4


def test_existing_out_is_refused_then_overwritten_or_resumed(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "train", *SMALL, "--epochs", "1", "--out", out)[0] == 0
    code, _, err = run(capsys, "train", *SMALL, "--epochs", "1", "--out", out)
    assert code == cli.EXIT_BAD_INPUT and "--resume" in err and "--overwrite" in err
    assert run(capsys, "train", *SMALL, "--epochs", "1", "--out", out, "--overwrite")[0] == 0
    # Resume needs only the folder; --epochs may grow. It equals a 2-epoch run.
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--epochs", "2", "--quiet")
    assert code == 0, err
    assert run(capsys, "train", *SMALL, "--epochs", "2", "--out", tmp_path / "whole")[0] == 0
    a = torch.load(out / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--lr", "0.5")
    assert code == cli.EXIT_BAD_INPUT and "'lr'" in err
    code, _, err = run(capsys, "train", "--resume", "--out", tmp_path / "nothing")
    assert code == cli.EXIT_BAD_INPUT and "cannot resume" in err
    code, _, err = run(capsys, "train", "--resume")
    assert code == cli.EXIT_BAD_INPUT and "--out" in err


def test_divergence_exits_nonzero_with_a_message(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", *SMALL, "--algorithm", "bp", "--optimizer", "sgd",
                       "--lr", "1e30", "--epochs", "2", "--out", out)
    assert code == cli.EXIT_DIVERGED
    assert "diverged at epoch 1" in err and "Last good checkpoint: none" in err


def test_progress_prints_one_line_per_epoch_when_not_a_terminal(capsys, tmp_path):
    code, stdout, err = run(capsys, "train", *SMALL[:-1], "--epochs", "2", "--out", tmp_path / "run")
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "\r" not in stdout + err  # no bar redraws in logs


def test_usage_errors_return_their_exit_code(capsys):
    code, _, err = run(capsys, "train", "--epochs", "many")
    assert code == 2 and "--epochs" in err


def test_compare_prints_and_saves_a_table(capsys, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, err = run(capsys, "compare", *SMALL, "--epochs", "1", "--algorithms", "fpa,exact",
                            "--seeds", "2", "--out", out)
    assert code == 0, err
    table = stdout[stdout.index("algorithm"):].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["bp", "fpa", "exact"]
    assert "+-" in table[1]
    for name in training.COMPARE_FILES:
        assert (out / name).is_file()
    summary = json.loads((out / "compare.json").read_text())["summary"]
    assert [len(row["accuracies"]) for row in summary] == [2, 2, 2]
    code, _, err = run(capsys, "compare", "--algorithms", "fpa,foo", "--out", tmp_path / "x")
    assert code == cli.EXIT_BAD_INPUT and "valid algorithms" in err


# ------------------------------------------------------ experiment commands


def _fake_experiments(monkeypatch, module):
    real = cli.importlib.import_module

    def import_module(name, *args):
        if name == "pclab.experiments":
            if isinstance(module, BaseException):
                raise module
            return module
        return real(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)


def test_experiment_commands_are_registered(monkeypatch):
    def hello(name: str = "world") -> None:
        typer.echo(f"hello {name}")

    module = types.ModuleType("pclab.experiments")
    module.__file__ = "experiments/__init__.py"
    module.COMMANDS = {"hello": hello}
    _fake_experiments(monkeypatch, module)
    app = typer.Typer()
    app.command("noop")(lambda: None)  # two commands, so typer keeps subcommands
    cli._register_experiments(app)
    result = CliRunner().invoke(app, ["hello", "--name", "lab"])
    assert result.exit_code == 0 and result.output == "hello lab\n"


def test_missing_experiments_package_is_fine_but_its_import_errors_surface(monkeypatch):
    missing = ModuleNotFoundError("No module named 'pclab.experiments'", name="pclab.experiments")
    _fake_experiments(monkeypatch, missing)
    cli._register_experiments(typer.Typer())  # nothing to add, no error
    broken = ModuleNotFoundError("No module named 'scipyy'", name="scipyy")
    _fake_experiments(monkeypatch, broken)
    with pytest.raises(ModuleNotFoundError, match="scipyy"):
        cli._register_experiments(typer.Typer())
