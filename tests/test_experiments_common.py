"""What every lab command shares: bad input fails before any run, with a message naming it."""

import pytest
import torch
import typer

from pclab.experiments import catapult, double_descent, grok, sample_efficiency
from pclab.experiments.common import ConfigError, group
from pclab.experiments.sweep import run_id


LABS = [catapult, double_descent, grok, sample_efficiency]


def _planned_training_runs(module, config) -> list:
    """Every run of ``config`` that trains a learner (random-feature runs have none)."""
    planned = (module.teacher_runs(config) + module.standard_runs(config)
               if module is sample_efficiency else module.runs(config))
    return [r for r in planned if hasattr(r, "algorithm")]


@pytest.mark.parametrize("module, options, message", [
    (catapult, {"cs": "0.5,0"}, "positive"),
    (catapult, {"cs": "-1"}, "positive"),
    (catapult, {"cs": ","}, "empty"),
    (catapult, {"widths": "16,0"}, "integer >= 1"),
    (catapult, {"widths": ""}, None),  # empty means the preset's: fine
    (catapult, {"train_size": 10 ** 7}, "larger than"),
    (catapult, {"algorithms": "bp,backprop"}, "unknown algorithm"),
    (double_descent, {"widths": "0,4"}, "integer >= 1"),
    (double_descent, {"features": "10,-5"}, "integer >= 1"),
    (double_descent, {"features": "none", "widths": "none"}, "nothing to run"),
    (double_descent, {"train_size": 10 ** 6}, "larger than"),
    (double_descent, {"label_noise": 1.5}, "label-noise"),
    (grok, {"fractions": "0.5,1.0"}, "strictly between"),
    (grok, {"fractions": ""}, None),
    (grok, {"weight_decays": "1,-1"}, ">= 0"),
    (grok, {"p": 1}, "p must be"),
    (grok, {"algorithms": "pc,nope"}, "unknown algorithm"),
    (grok, {"model": "lstm"}, "mlp or transformer"),
    (grok, {"batch_size": -1}, "batch-size must be >= 0"),
    (grok, {"width": -4}, "width must be >= 1"),
    (grok, {"d_model": 30}, "must divide d_model=30"),
    (sample_efficiency, {"sizes": "100,100000000"}, "larger than"),
    (sample_efficiency, {"sizes": "5"}, "below one example per class"),
    (sample_efficiency, {"sizes": "0"}, "integer >= 1"),
    (sample_efficiency, {"recipes": "standard,magic"}, "unknown recipe"),
    (sample_efficiency, {"catapult_c": -2.0}, "catapult-c"),
    (sample_efficiency, {"preset": "song"}, "disagree"),
    (sample_efficiency, {"epochs": -3}, "epochs must be >= 1"),
    (sample_efficiency, {"max_steps": 10}, "below --min-steps"),
    (sample_efficiency, {"pc_step_size": -0.1}, "pc-step-size must be > 0"),
    (catapult, {"pc_step_size": -0.1}, "pc-step-size must be > 0"),
    (double_descent, {"pc_step_size": float("inf")}, "pc-step-size must be > 0"),
    (grok, {"pc_step_size": -1.0}, "pc-step-size must be > 0"),
    (grok, {"pc_steps": -2}, "pc-steps must be >= 1"),
    (catapult, {"device": "gpu"}, "device must be auto, cpu or cuda"),
    (double_descent, {"device": "gpu"}, "device must be auto, cpu or cuda"),
    (grok, {"device": "gpu"}, "device must be auto, cpu or cuda"),
    (sample_efficiency, {"device": "gpu"}, "device must be auto, cpu or cuda"),
], ids=lambda v: v.__name__.rsplit(".", 1)[-1] if hasattr(v, "__name__") else None)
def test_bad_input_fails_before_any_run(module, options, message, tmp_path, monkeypatch):
    monkeypatch.setattr(module, "run_one", lambda run: pytest.fail("a run started"))
    if message is None:
        module.make_config(quick=True, **options)
        return
    with pytest.raises(ConfigError, match=message):
        module.make_config(quick=True, **options)
    with pytest.raises(typer.BadParameter, match=message):
        module.command(quick=True, out=tmp_path, **options)
    assert not (tmp_path / "runs").exists()


def test_group_keeps_first_appearance_order():
    rows = [{"a": 2, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}]
    assert list(group(rows, "a", "b")) == [(2, "x"), (1, "y")]
    assert group(rows, "a")[(2,)] == [rows[0], rows[2]]


@pytest.mark.parametrize("module", LABS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_compile_reaches_every_training_run(module, monkeypatch):
    """``--compile`` goes from the command line to every run that trains a learner
    (random-feature runs solve least squares and have no learner)."""
    monkeypatch.setattr(module, "run_one", lambda run: pytest.fail("a run started"))
    config = module.make_config(quick=True, compile=True)
    trained = _planned_training_runs(module, config)
    assert config.compile and trained and all(r.compile for r in trained)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
@pytest.mark.parametrize("module", LABS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_cuda_without_a_gpu_is_refused_before_any_run(module, monkeypatch):
    monkeypatch.setattr(module, "run_one", lambda run: pytest.fail("a run started"))
    with pytest.raises(ConfigError, match="torch sees no CUDA device.*use --device cpu or auto"):
        module.make_config(quick=True, device="cuda")


@pytest.mark.parametrize("module", LABS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_device_reaches_every_run_and_keeps_its_id(module):
    """``--device`` goes to every run that trains; it says how a run executes, not what
    it computes, so a run keeps its id (and a sweep resumes) whichever device it ran on."""
    on_cpu = _planned_training_runs(module, module.make_config(quick=True, device="cpu"))
    anywhere = _planned_training_runs(module, module.make_config(quick=True, device="auto"))
    assert on_cpu and all(r.device == "cpu" for r in on_cpu)
    assert [run_id(r) for r in on_cpu] == [run_id(r) for r in anywhere]


def test_the_energy_rise_note_counts_only_runs_that_recorded_it():
    """Records written before the count was kept say nothing either way; the note says how many."""
    from pclab.experiments.common import energy_rise_note

    def record(i, algorithm, **result):
        return {"id": f"r{i}", "config": {"algorithm": algorithm}, "result": result, "wall_s": 1.0}

    assert energy_rise_note([record(0, "pc"), record(1, "bp")]) == ""
    note = energy_rise_note([record(0, "pc"), record(1, "pc", energy_rises=0), record(2, "bp", energy_rises=0)])
    assert "lowered the energy at every step of all 1 pc runs (1 more pc runs were recorded before" in note
    note = energy_rise_note([record(0, "pc", energy_rises=3), record(1, "pc", energy_rises=0)])
    assert "In 1 of 2 pc runs, inference ended above" in note and "r0 (3 steps)" in note and "r1" not in note
