"""pclab sample-efficiency: standard, catapult and student recipes end to end, resume, bad input."""

import dataclasses
import json

import pytest
import typer

from pclab.experiments import sample_efficiency as se
from pclab.experiments.common import ConfigError

TINY = dataclasses.replace(se.QUICK, sizes=(20, 40), width=8, width_multiplier=4, min_steps=10, epochs=1,
                           catapult_steps=10, eval_points=3, test_size=100, pc_steps=3, unlabelled=15,
                           dataset="digits", data_dir=None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("se")
    return out, se.run(TINY, out, workers=1, progress=False)


def test_three_recipes_two_algorithms(tiny_run):
    out, records = tiny_run
    kinds = sorted((r["result"]["recipe"], r["config"]["algorithm"], r["config"]["size"]) for r in records)
    assert kinds == sorted((rec, a, n) for rec in se.RECIPES for a in ("bp", "pc") for n in (20, 40))
    for name in ["config.json", "results.json", "summary.md", "sample_efficiency.png"]:
        assert (out / name).stat().st_size > 0, name
    teachers = {r["id"]: r for r in records if r["result"]["recipe"] == "catapult"}
    for r in records:
        res = r["result"]
        if res["recipe"] == "catapult":
            assert res["lr"] == pytest.approx(2.0 * 2 / res["lambda0"])
            assert res["params"] > 4 ** 2 * 8 * 8  # 4x wider
        if res["recipe"] == "student":
            teacher = teachers[r["config"]["teacher_id"]]
            assert (r["config"]["algorithm"], r["config"]["size"]) == (teacher["config"]["algorithm"],
                                                                      teacher["config"]["size"])
            assert r["config"]["unlabelled"] == 15 and res["steps"] >= 10
            assert 0 <= res["teacher_agreement"] <= 1


def test_summary_matches_records(tiny_run):
    out, _ = tiny_run
    summary = (out / "summary.md").read_text()
    stored = json.loads((out / "results.json").read_text())
    acc = {(r["result"]["recipe"], r["config"]["algorithm"], r["config"]["size"]): r["result"]["test_acc"]
           for r in stored}
    for n in (20, 40):
        cells = [f"{acc[(rec, a, n)]:.3f}" for rec in se.RECIPES for a in ("bp", "pc")]
        assert f"| {n} | {' | '.join(cells)} |" in summary
        diff = acc[("catapult", "bp", n)] - acc[("standard", "bp", n)]
        assert f"N={n}: {diff:+.3f}" in summary


def test_rerun_recomputes_nothing(tiny_run, monkeypatch):
    out, records = tiny_run
    monkeypatch.setattr(se, "run_one", lambda run: pytest.fail(f"recomputed {run.label}"))
    again = se.run(TINY, out, workers=1, progress=False)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in records)


@pytest.mark.parametrize("options, message", [
    ({"sizes": "100,100000000"}, "larger than"),
    ({"sizes": "5"}, "below one example per class"),
    ({"sizes": "0"}, "integer >= 1"),
    ({"recipes": "standard,magic"}, "unknown recipe"),
    ({"catapult_c": -2.0}, "catapult-c"),
])
def test_bad_input(options, message, tmp_path, monkeypatch):
    monkeypatch.setattr(se, "run_one", lambda run: pytest.fail("a run started"))
    with pytest.raises(ConfigError, match=message):
        se.make_config(quick=True, **options)
    with pytest.raises(typer.BadParameter):
        se.command(quick=True, out=tmp_path, **options)
    assert not (tmp_path / "runs").exists()
