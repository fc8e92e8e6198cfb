"""pclab sample-efficiency: the three recipes end to end, resume, and the Song et al. anchor preset."""

import dataclasses
import gzip
import json
import shutil

import numpy as np
import pytest
import torch

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
        assert res["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name())  # the record says where it trained
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


def test_a_moved_sweep_folder_resumes_every_run(tiny_run, tmp_path, monkeypatch):
    """A student names its teacher by id; where the teacher's outputs lie moves with the
    folder and is not part of the student's identity."""
    out, records = tiny_run
    moved = shutil.copytree(out, tmp_path / "moved")
    monkeypatch.setattr(se, "run_one", lambda run: pytest.fail(f"recomputed {run.label}"))
    again = se.run(TINY, moved, workers=1, progress=False)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in records)


def _fake_fashion(folder, per_class=60, test_per_class=10):
    """Fashion-MNIST-format IDX files (4x4 images whose brightness pattern depends on the class)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def idx(path, array):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))

    for split, n in (("train", per_class), ("t10k", test_per_class)):
        y = np.repeat(np.arange(10), n)
        x = rng.integers(0, 60, (len(y), 4, 4)) + 19 * y[:, None, None] * (np.arange(16) % 2).reshape(4, 4)
        idx(folder / f"{split}-images-idx3-ubyte.gz", x)
        idx(folder / f"{split}-labels-idx1-ubyte.gz", y)
    return folder


def test_song_preset_is_their_row():
    song = se.SONG
    assert song.sizes == (600, 3000, 6000, 30000, 60000)  # 60 ... 6,000 examples per class
    assert song.recipes == ("standard",) and song.algorithms == ("bp", "pc")
    assert (song.width, song.depth, song.activation, song.loss) == (32, 2, "sigmoid", "mse")
    assert song.metric == "min_test_error" and song.anchor
    with pytest.raises(ConfigError, match="Fashion-MNIST"):
        dataclasses.replace(song, dataset="digits").validate()


@pytest.fixture(scope="module")
def song_run(tmp_path_factory):
    folder = _fake_fashion(tmp_path_factory.mktemp("fashion"))
    config = se.make_config(preset="song", sizes="600", num_seeds=1, data_dir=folder)
    assert (config.dataset, config.data_dir, config.sizes) == ("fashion-mnist", str(folder), (600,))
    config = dataclasses.replace(config, epochs=1, min_steps=6, eval_points=3, pc_steps=3)
    assert se.standard_steps(config, 600) == 19 and se.standard_steps(config, 60000) == 1875
    out = tmp_path_factory.mktemp("song")
    return out, se.run(config, out, workers=1, progress=False)


def test_song_run_reports_minimum_test_error_next_to_the_anchor(song_run):
    out, _ = song_run
    stored = json.loads((out / "results.json").read_text())
    assert sorted(r["config"]["algorithm"] for r in stored) == ["bp", "pc"]
    err = {}
    for r in stored:
        res = r["result"]
        assert (r["config"]["width"], r["config"]["activation"], r["config"]["loss"]) == (32, "sigmoid", "mse")
        assert res["best_test_acc"] == max(e["test_acc"] for e in res["evals"]) and len(res["evals"]) > 2
        err[r["config"]["algorithm"]] = 1 - res["best_test_acc"]
    summary = (out / "summary.md").read_text()
    assert summary.index("## Minimum test error") < summary.index("## Final test accuracy")
    at_end = sum(max(r["result"]["evals"], key=lambda e: e["test_acc"])["step"] == 19 for r in stored)
    assert (f"| 60 | 600 | {err['bp']:.3f} | 0.27 | {err['pc']:.3f} | 0.25 | {err['pc'] - err['bp']:+.3f} "
            f"| -0.020 | 1 | 19 | {at_end} of 2 |") in summary
    assert "| 300 | 3000 | not run | 0.182 | not run | 0.178 | - | -0.004 | - | - | - |" in summary
    assert "not run: [300, 600, 3000, 6000]" in summary
    sign = "yes" if (err["pc"] < err["bp"]) else "no"
    assert (f"matches Song et al.'s at {int(sign == 'yes')} of 1 sizes where they differ (60/class: {sign}); "
            f"the measured |pc - bp| there is at most {abs(err['pc'] - err['bp']):.3f}, theirs at least 0.020.") in summary
