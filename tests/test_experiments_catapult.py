"""pclab catapult: regime classification on synthetic curves, a tiny sweep end to end."""

import dataclasses
import json
import math
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from pclab.experiments import COMMANDS, catapult
from pclab.experiments.catapult import classify
from pclab.experiments.common import ConfigError, fmt

LR = 0.1  # 2 / lr = 20


@pytest.mark.parametrize("loss, sharpness, diverged, expected", [
    # falls monotonically
    ([1.0, 0.8, 0.6, 0.5, 0.45], [(0, 15.0), (4, 16.0)], False, "lazy"),
    # tiny noise below the tolerance is still monotone
    ([1.0, 0.8, 0.805, 0.5], [(0, 15.0)], False, "lazy"),
    # spikes, falls, sharpness drops below 2/lr after the peak
    ([1.0, 3.0, 30.0, 2.0, 0.5, 0.3], [(0, 40.0), (2, 35.0), (4, 12.0), (5, 18.0)], False, "catapult"),
    # spikes and falls but the sharpness stays above 1.25 * 2/lr
    ([1.0, 3.0, 0.9, 0.5], [(0, 40.0), (2, 30.0), (3, 26.0)], False, "unsettled"),
    # a low sharpness before the peak does not count
    ([1.0, 1.5, 4.0, 0.5], [(0, 40.0), (1, 10.0), (2, 30.0), (3, 30.0)], False, "unsettled"),
    # explodes
    ([1.0, 10.0, 1e3], [(0, 40.0)], True, "divergent"),
    ([1.0, 10.0, math.inf], [(0, 40.0)], False, "divergent"),
    # spikes and comes back near the constant predictor's loss (0.8): learnt next to nothing
    ([1.0, 50.0, 0.8, 0.75], [(0, 40.0), (3, 1.0)], False, "divergent"),
    # ends above its start
    ([1.0, 2.0, 1.5, 1.2], [(0, 40.0), (3, 5.0)], False, "divergent"),
])
def test_classify_synthetic_curves(loss, sharpness, diverged, expected):
    assert classify(loss, sharpness, LR, diverged=diverged, baseline=0.8) == expected


TINY = dataclasses.replace(catapult.QUICK, widths=(16,), cs=(0.5, 2.0, 200.0), train_size=100,
                           test_size=200, steps=30, sharpness_every=10, pc_steps=4,
                           dataset="digits", data_dir=None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("catapult")
    records = catapult.run(TINY, out, workers=1, progress=False)
    return out, records


def test_tiny_sweep_writes_everything(tiny_run):
    out, records = tiny_run
    assert len(records) == 2 * 3
    for name in ["config.json", "results.json", "summary.md", "phase_diagram.png", "curves.png",
                 "test_accuracy.png"]:
        assert (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert config["cs"] == [0.5, 2.0, 200.0] and config["seeds"] == [0]
    for r in records:
        res = r["result"]
        assert r["config"]["seed"] == 0 and "pc_steps" in r["config"]
        assert res["lr"] == pytest.approx(r["config"]["c"] * 2 / res["lambda0"])
        assert res["regime"] in catapult.REGIMES
        assert res["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name())  # the record says where it trained
        assert res["evals"][0]["sharpness"] == res["lambda0"] > 0
        # lazy runs train for steps / c ("physical time" matched)
        assert len(res["loss"]) == (60 if r["config"]["c"] == 0.5 else 30) or res["diverged"]
    # The giant learning rate is divergent for both algorithms.
    assert all(r["result"]["regime"] == "divergent" for r in records if r["config"]["c"] == 200.0)


def test_summary_numbers_come_from_the_records(tiny_run):
    out, records = tiny_run
    summary = (out / "summary.md").read_text()
    stored = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in stored] == [r["id"] for r in records]
    lam = {r["config"]["width"]: r["result"]["lambda0"] for r in stored}
    assert f"| 16 | {lam[16]:.2f} |" in summary
    letters = {"lazy": "L", "catapult": "C", "unsettled": "U", "divergent": "D"}
    for alg in ("bp", "pc"):
        regimes = [letters[r["result"]["regime"]] for r in stored if r["config"]["algorithm"] == alg]
        assert f"| {alg} | 16 | {' | '.join(regimes)} |" in summary
        heights = [fmt(r["result"]["peak_loss"] / r["result"]["initial_loss"], 3)
                   for r in stored if r["config"]["algorithm"] == alg]
        assert f"| {alg} | 16 | {' | '.join(heights)} |" in summary
        lazy = [r for r in stored if r["config"]["algorithm"] == alg and r["result"]["regime"] == "lazy"]
        if lazy:
            acc = max(r["result"]["test_acc"] for r in lazy)
            assert re.search(rf"\| {alg} \| 16 \| [0-9.]+ \| {acc:.4f} \|", summary)


def test_rerun_resumes_without_recomputing(tiny_run, monkeypatch):
    out, records = tiny_run

    def boom(run):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(catapult, "run_one", boom)
    again = catapult.run(TINY, out, workers=1, progress=False)
    assert json.dumps(again) == json.dumps(records)


def test_typer_app_runs_the_command(tmp_path):
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group even while it holds one command, as in the real CLI
        pass

    for name, fn in COMMANDS.items():
        app.command(name)(fn)
    result = CliRunner().invoke(app, ["catapult", "--quick", "--widths", "8", "--cs", "0.5,2",
                                      "--steps", "5", "--train-size", "50", "--pc-steps", "2",
                                      "--workers", "1", "--no-progress", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Catapult" in result.output
    assert len(json.loads((tmp_path / "results.json").read_text())) == 4
    bad = CliRunner().invoke(app, ["catapult", "--cs", "0", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "positive" in bad.output


def test_missing_data_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load fashion-mnist"):
        catapult.make_config(quick=True, data_dir=tmp_path)  # an empty folder
    with pytest.raises(ConfigError, match="not a folder"):
        catapult.make_config(quick=True, data_dir=tmp_path / "absent")
