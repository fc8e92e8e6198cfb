"""The pclab side of the PCX peer benchmark (``benchmarks/peers/pclab_mlp.py``).

Needs neither JAX nor the PCX venv. The rule check derives its expectation from
PCX's update written out by hand (``pcx_mlp.py``'s docstring), never from pclab:

    F = sum_batch [ sum_{l<L} 1/2 ||h_l - u_l||^2 + 1/2 ||y - u_L||^2 ],
    h <- h - lr_h dF/dh   (T times, from h_l = u_l),   grad W = dF/dW / batch.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "peers" / "pclab_mlp.py"
DATA = REPO_ROOT.parent / "shared" / "datasets" / "fashion-mnist"


def _load_script():
    spec = importlib.util.spec_from_file_location("pclab_mlp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pclab_mlp", module)
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def _load_compare():
    spec = importlib.util.spec_from_file_location("compare_pcx", SCRIPT.with_name("compare_pcx.py"))
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    return compare


def _pcx_rule_by_hand(params, x, y_onehot, T, lr_h, slope):
    """PCX's training step in plain torch: values after T SGD steps on F, and dF/dW / batch."""
    W1, b1, W2, b2, W3, b3 = params

    def predictions(h1, h2):
        u1 = F.leaky_relu(x @ W1.T + b1, slope)
        u2 = F.leaky_relu(h1 @ W2.T + b2, slope)
        u3 = h2 @ W3.T + b3
        return u1, u2, u3

    def energy(h1, h2):  # summed over the batch, as PCX's psum
        u1, u2, u3 = predictions(h1, h2)
        return 0.5 * ((h1 - u1) ** 2).sum() + 0.5 * ((h2 - u2) ** 2).sum() + 0.5 * ((y_onehot - u3) ** 2).sum()

    with torch.no_grad():  # forward initialisation h_l = u_l
        h1 = F.leaky_relu(x @ W1.T + b1, slope)
        h2 = F.leaky_relu(h1 @ W2.T + b2, slope)
    init = (h1.clone(), h2.clone())
    for _ in range(T):
        h1, h2 = h1.detach().requires_grad_(), h2.detach().requires_grad_()
        g1, g2 = torch.autograd.grad(energy(h1, h2), [h1, h2])
        h1, h2 = h1 - lr_h * g1, h2 - lr_h * g2
    h1, h2 = h1.detach(), h2.detach()
    leaves = [p.detach().requires_grad_() for p in params]
    W1, b1, W2, b2, W3, b3 = leaves
    weight_grads = [g / x.shape[0] for g in torch.autograd.grad(energy(h1, h2), leaves)]
    return init, (h1, h2), weight_grads


def test_one_pclab_step_is_pcx_rule_written_by_hand():
    torch.manual_seed(0)
    sizes, batch = (7, 6, 5, 4), 3
    cfg = bench.Config(T=8, lr_h=0.1)
    model = bench.MLP(sizes).double()
    with torch.no_grad():  # larger weights: inference moves the values far enough to test
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.randn(batch, sizes[0], dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    params = [model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias,
              model.fc3.weight, model.fc3.bias]
    init, (h1, h2), want_grads = _pcx_rule_by_hand([p.detach() for p in params], x,
                                                   F.one_hot(y, sizes[-1]).double(), cfg.T, cfg.lr_h, 0.01)
    assert min(float((h - h0).abs().max()) for h, h0 in zip((h1, h2), init)) > 1e-2  # not vacuous
    assert bool((init[0] < 0).any())  # the leaky-ReLU's negative branch is exercised

    pc = bench.make_learner(model, cfg)
    assert pc.capture(x).names == ("act1", "act2")
    result = pc.step(x, y)

    # pclab reports errors e_l = h_l - u_l(h_{l-1}); rebuild its values from them.
    with torch.no_grad():
        got_h1 = result.errors["act1"] + model.act1(model.fc1(x))
        got_h2 = result.errors["act2"] + model.act2(model.fc2(got_h1))
    torch.testing.assert_close(got_h1, h1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_h2, h2, rtol=1e-10, atol=1e-12)
    for p, want in zip(params, want_grads):
        torch.testing.assert_close(p.grad, want, rtol=1e-10, atol=1e-12)


def test_optimizer_is_optax_adamw_default():
    """Two steps of torch's AdamW as configured equal optax.adamw's update written by hand:
    m, v moments with bias correction, update = m_hat / (sqrt(v_hat) + eps) + wd * p."""
    torch.manual_seed(0)
    cfg = bench.Config()
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = bench.make_optimizer(torch.nn.ParameterList([p]), cfg)
    want = p.detach().clone()
    m = torch.zeros_like(want)
    v = torch.zeros_like(want)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in (1, 2):
        g = torch.randn(5, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        want = want - cfg.lr_w * (m_hat / (v_hat.sqrt() + eps) + cfg.weight_decay * want)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"Fashion-MNIST IDX files not at {DATA}")
def test_smoke_run_reports_pcx_schema(tmp_path):
    out = tmp_path / "pclab_smoke.json"
    report = bench.main(["--smoke", "--data-dir", str(DATA), "--json", str(out)])
    assert out.is_file()
    res = report["results"]
    for key in ("compile_s", "timed_steps", "timed_s", "steps_per_s", "window", "steps_per_s_windows",
                "steps_per_s_best_window", "steps_per_s_median_window", "epoch_s", "full_epochs",
                "steps_per_epoch", "train_steps_done", "train_energy_per_sample", "test_acc",
                "n_train", "n_test"):
        assert key in res, key
    assert (res["steps_per_epoch"], res["timed_steps"], res["full_epochs"]) == (8, 7, 1)
    assert res["steps_per_s"] > 0
    assert res["test_acc"][0] > 0.3  # 8 steps on 512 images: well above chance (0.1)
    assert report["config"]["weight_decay"] == 1e-4


def test_compare_says_how_to_make_the_missing_pcx_venv(tmp_path, monkeypatch):
    compare = _load_compare()
    monkeypatch.setattr(compare, "PCX_PYTHON", tmp_path / "no-venv" / "bin" / "python")
    with pytest.raises(SystemExit, match=r"bash benchmarks/peers/setup_pcx\.sh"):
        compare.main(["--smoke", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.glob("compare_pcx*"))


@pytest.mark.parametrize("cores", ["0", "99999"])
def test_compare_refuses_a_core_count_this_process_cannot_use(cores):
    compare = _load_compare()
    with pytest.raises(SystemExit):
        compare.parse_args(["--cores", cores])
    assert compare.parse_args(["--cores", "1"]).pclab_threads == 1  # pclab gets the same one core


def test_the_shared_harness_imports_where_neither_pclab_nor_torch_is_installed():
    # pcx_mlp.py runs the harness in PCX's own venv, which has numpy but not pclab or torch.
    blocked = "import sys; sys.modules.update(pclab=None, torch=None); "
    code = blocked + f"sys.path.insert(0, {str(SCRIPT.parent)!r}); import harness; print(harness.cpu() != '')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def _fake_report(seed: int, test_acc: list[float]) -> dict:
    return {"config": {"seed": seed}, "contention": {"other_processes_avg_cores": 0.0},
            "results": {"full_epochs": len(test_acc), "test_acc": test_acc, "epoch_s": [3.0] + [1.0] * (len(test_acc) - 1),
                        "steps_per_s": 100.0, "steps_per_s_median_window": 100.0, "compile_s": 1.0}}


def _table_rows(compare, summary: dict) -> dict[str, tuple[str, str]]:
    """The comparison table as {row label: (pcx cell, pclab cell)}."""
    rows = compare.table(summary, compare.parse_args([]), {"pcx": [7], "pclab": [7]})
    return {k.strip(): (a, b) for k, a, b in rows}


def test_compare_reports_accuracy_over_seeds_and_counts_runs_that_collapsed():
    # One run per library is no comparison for a rule whose accuracy can collapse between two
    # epochs: the table gives the spread over seeds and the runs that ended far below their best.
    compare = _load_compare()
    timing = {lib: [_fake_report(0, [0.5])] for lib in compare.LIBS}
    accuracy = {
        "pcx": [_fake_report(0, [0.66, 0.65, 0.75, 0.79, 0.78]), _fake_report(1, [0.80, 0.84, 0.52, 0.79, 0.79]),
                _fake_report(2, [0.84, 0.85, 0.86, 0.86, 0.87])],
        # seed 2 stopped after 4 epochs: both libraries are compared over the epochs every run has
        "pclab": [_fake_report(0, [0.83, 0.83, 0.84, 0.84, 0.21]), _fake_report(1, [0.84, 0.84, 0.77, 0.82, 0.45]),
                  _fake_report(2, [0.85, 0.85, 0.70, 0.86])],
    }
    summary = compare.summarise(timing, accuracy)
    assert summary["accuracy_epochs"] == 4
    assert summary["pcx"]["collapsed_runs"] == 0  # pcx seed 1 fell by 0.32 at epoch 3 but recovered
    assert summary["pclab"]["collapsed_runs"] == 0  # pclab's collapses come at epoch 5, cut here
    rows = _table_rows(compare, summary)
    assert rows["test acc after epoch 1, median (min-max) of seeds 0-2"] == ("0.8000 (0.6600-0.8400)",
                                                                           "0.8400 (0.8300-0.8500)")
    assert rows["test acc after epoch 4, median (min-max)"] == ("0.7900 (0.7900-0.8600)", "0.8400 (0.8200-0.8600)")
    assert rows["s per epoch after epoch 1, median over 3 run(s)"] == ("1.00", "1.00")

    accuracy["pclab"][2] = _fake_report(2, [0.85, 0.85, 0.70, 0.86, 0.86])
    summary = compare.summarise(timing, accuracy)
    rows = _table_rows(compare, summary)
    assert rows["runs ending 10+ points below their best epoch"] == ("0 of 3", "2 of 3")
    assert rows["per seed after epoch 5"] == ("0.780, 0.790, 0.870", "0.210, 0.450, 0.860")
