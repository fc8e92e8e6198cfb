"""pclab double-descent: closed forms of the random-features solver, a tiny sweep end to end."""

import dataclasses
import json

import pytest
import torch

from pclab.experiments import double_descent as dd


def test_threshold_width_counts_parameters():
    h = dd.threshold_width(100, 20, 10)
    params = h * (20 + 1) + (h + 1) * 10
    assert params == pytest.approx(100 * 10)


def test_interior_peaks():
    assert dd.interior_peaks([1, 2, 3, 4, 5], [1.0, 3.0, 2.0, 2.5, 1.0]) == [1, 3]
    assert dd.interior_peaks([1, 2, 3], [3.0, 2.0, 1.0]) == []


def test_the_peak_is_the_local_maximum_that_rises_most_after_a_first_descent():
    """A bump while the error still falls (index 2, 0.01 above index 1) loses to the
    rise at the threshold (index 5, 0.2 above index 3), though it stands higher."""
    ys = [0.9, 0.79, 0.8, 0.4, 0.45, 0.6, 0.3]
    assert dd.second_ascent(ys) == (5, 3)
    assert dd.second_ascent([3.0, 2.0, 1.0]) is None
    assert dd._peak([1, 2, 4, 8, 16, 32, 64], ys) == {"x": 32, "value": 0.6, "rise": pytest.approx(0.2),
                                                     "from_x": 8}


def feature_run(p, **kw):
    base = dict(features=p, seed=0, train_size=60, test_size=100, label_noise=0.1, downsample=1,
                relative_ridges=(1e-4, 1e-2, 1.0), dataset="digits", data_dir=None)
    return dd.FeaturesRun(**{**base, **kw})


def test_min_norm_interpolates_beyond_the_threshold_and_matches_lstsq():
    over = dd.run_features(feature_run(200))
    assert over["rank"] == 60 and over["minnorm_train_mse"] < 1e-12  # P > N: interpolates
    under = dd.run_features(feature_run(20))
    assert under["rank"] <= 20 and under["minnorm_train_mse"] > 0.1  # P < N: least squares
    # Reference: the same features solved by torch.linalg.lstsq (min-norm for P > N).
    x, y, xt, yt, classes = dd._data(feature_run(200))
    x = x.double()
    gen = torch.Generator().manual_seed(0 * 1_000_003 + 200)
    w = torch.randn(x.shape[1], 200, generator=gen, dtype=torch.float64) / x.shape[1] ** 0.5
    phi = torch.relu(x @ w)
    targets = torch.nn.functional.one_hot(y, classes).double()
    beta = torch.linalg.pinv(phi) @ targets
    assert over["minnorm_weight_norm"] == pytest.approx(float(beta.norm()), rel=1e-6)


def test_ridge_choice_uses_leave_one_out():
    r = dd.run_features(feature_run(80))
    assert r["ridge_relative"] in (1e-4, 1e-2, 1.0)
    assert r["ridge_loo_mse"] == min(r["ridge_grid_loo"])


TINY = dataclasses.replace(dd.QUICK, features=(20, 60, 200), widths=(2, 16), train_size=60, test_size=200,
                           steps=40, eval_every=20, pc_steps=3, dataset="digits", data_dir=None,
                           downsample=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dd")
    return out, dd.run(TINY, out, workers=1, progress=False)


def test_tiny_sweep_end_to_end(tiny_run):
    out, records = tiny_run
    assert len(records) == 3 + 2 * 2
    for name in ["config.json", "results.json", "summary.md", "random_features.png", "mlp_width.png"]:
        assert (out / name).stat().st_size > 0, name
    assert {r["config"].get("algorithm") for r in records} == {None, "bp", "pc"}
    assert all(r["config"]["label_noise"] == dd.QUICK.label_noise for r in records)
    # each MLP run's record says where it trained (random features solve on the CPU)
    assert all(r["result"]["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()) for r in records if r["config"].get("algorithm"))


def test_summary_matches_records(tiny_run):
    out, _ = tiny_run
    summary = (out / "summary.md").read_text()
    stored = json.loads((out / "results.json").read_text())
    rf = {r["config"]["features"]: r["result"] for r in stored if r["result"]["variant"] == "rf"}
    for p, res in rf.items():
        assert f"| {p} | {res['minnorm_test_mse']:.3f} | {res['ridge_test_mse']:.3f} |" in summary
    peak = max(rf, key=lambda p: rf[p]["minnorm_test_mse"])
    assert f"peaks at P = {peak} " in summary
    for alg in ("bp", "pc"):
        errs = [r["result"]["test_err"] for r in sorted(
            (r for r in stored if r["config"].get("algorithm") == alg), key=lambda r: r["config"]["width"])]
        assert f"| {alg} | 0 | {errs[0]:.3f} | {errs[1]:.3f} |" in summary
        assert f"- {alg}: the test-MSE peak's rise by weight decay: 0: no peak." in summary  # two widths


def test_each_seeds_peak_is_found_on_its_own_curve():
    """Two seeds peak at different widths; the mean curve would show one blurred peak,
    the per-seed analysis keeps both, and the spread is each width's std over seeds."""
    losses = {0: [0.9, 0.5, 0.8, 0.4, 0.3], 1: [0.9, 0.5, 0.45, 0.7, 0.3]}
    widths = [1, 2, 4, 8, 16]
    records = [{"config": {"algorithm": "bp", "weight_decay": 0.0, "width": w, "seed": seed},
                "result": {"variant": "mlp", "inputs": 64, "test_err": loss / 2, "test_loss": loss, "train_err": 0.0,
                           "train_loss": 0.0, "threshold_width": 4.0},
                "wall_s": 1.0, "id": f"w{w}-s{seed}"}
               for seed, ys in losses.items() for w, loss in zip(widths, ys)]
    v = dd.analyse(records)["mlp"][("bp", 0.0)]
    assert v["seed_loss_peaks"][0] == {"x": 4, "value": 0.8, "rise": pytest.approx(0.3), "from_x": 2}
    assert v["seed_loss_peaks"][1] == {"x": 8, "value": 0.7, "rise": pytest.approx(0.25), "from_x": 4}
    assert v["test_loss_std"][2] == pytest.approx(torch.tensor([0.8, 0.45]).std().item())
    config = dataclasses.replace(TINY, seeds=(0, 1))
    summary = dd.summarise(records, config)
    assert "- bp, weight decay 0: seed 0 0.300 at width 4; seed 1 0.250 at width 8." in summary
