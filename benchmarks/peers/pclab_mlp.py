"""pclab side of the PCX peer benchmark: ``pcx_mlp.py``'s network and rule, trained with pclab.

Same model, rule, data, batch order and hyperparameters as ``pcx_mlp.py``, so the two
can be timed side by side (``compare_pcx.py`` alternates them):

    u_1 = f(W_1 x + b_1),  u_2 = f(W_2 h_1 + b_2),  u_3 = W_3 h_2 + b_3
    F   = sum_batch sum_l 1/2 ||h_l - u_l||^2,       h_3 := y (one-hot, clamped)

with f = leaky-ReLU (slope 0.01) and sizes 784-128-128-10. Per mini-batch of 64:
forward-initialise h_l = u_l, then T = 8 steps h <- h - 0.1 dF/dh on the two hidden
values (pclab's ``step_size`` acts on each example's own energy, which is what PCX's
batch-summed F gives), then one AdamW step (lr 1e-3, weight decay 1e-4 as optax's
``adamw`` default; torch's default is 1e-2) on dF/dW / batch. Prediction is the argmax
of the feed-forward output.

In pclab this is ``PredictiveCoding(model, loss="mse", algorithm="pc", steps=8,
step_size=0.1, value_nodes=<after each activation>)``: the value nodes sit where PCX
puts its Vodes, and ``"mse"`` (``1/2 ||y - u_3||^2`` per example) is the output Vode's
energy with its value clamped to the target. ``tests/test_peers_smoke.py`` checks one
step against this rule written out by hand with autograd.

Data: Fashion-MNIST IDX files from ``--data-dir`` via ``pclab.data.load`` (never
downloaded here), pixels /255 flattened; each epoch's order is
``numpy.random.default_rng(seed).permutation``, drawn exactly as ``pcx_mlp.py`` draws
it, so both see the same batches. Weights use torch's ``nn.Linear`` init, which has
the same distribution as equinox's (uniform +-1/sqrt(fan_in)), but not the same draws.

Config, flags, the timed loop and the JSON report are ``harness.py``'s, shared with
``pcx_mlp.py``, so the report has the same schema. Differences: ``compile_s`` is the wall
time of the first step (graph capture + one step; torch has nothing to compile) and
torch runs synchronously, so no sync is needed at window edges.

    python benchmarks/peers/pclab_mlp.py --smoke
    python benchmarks/peers/pclab_mlp.py --max-steps 500 --json benchmarks/peers/results/pclab_timing_500.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

import pclab
from pclab.data import load

if str(Path(__file__).resolve().parent) not in sys.path:  # also when loaded by file path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (stdlib + numpy only, shared with pcx_mlp.py)
import provenance  # noqa: E402  (benchmarks/, on the path harness set)


@dataclasses.dataclass(frozen=True)
class Config(harness.Config):
    """Benchmark hyperparameters (``pcx_mlp.py``'s defaults); every field but ``hidden`` is a CLI flag."""

    threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    compile: bool = False  # PredictiveCoding(compile=True): the step through torch.compile, as PCX jits it


# Model -----------------------------------------------------------------------


class MLP(nn.Module):
    """784-128-128-10 MLP, leaky-ReLU (slope 0.01) after the two hidden layers, linear output."""

    def __init__(self, sizes: tuple[int, int, int, int] = (784, 128, 128, 10), slope: float = 0.01):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.act1 = nn.LeakyReLU(slope)
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.act2 = nn.LeakyReLU(slope)
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def after_activations(node: fx.Node) -> bool:
    """Value nodes where PCX puts its hidden Vodes: the output of ``act1`` and ``act2``."""
    return node.op == "call_module" and str(node.target).startswith("act")


def make_learner(model: MLP, cfg: Config) -> pclab.PredictiveCoding:
    """PCX's supervised PC: T value-SGD steps of size lr_h, output clamped by ``"mse"``."""
    return pclab.PredictiveCoding(model, loss="mse", algorithm="pc", steps=cfg.T, step_size=cfg.lr_h,
                                  value_nodes=after_activations, compile=cfg.compile)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """``optax.adamw(lr_w, weight_decay=...)``: b1 0.9, b2 0.999, eps 1e-8, decay on every parameter."""
    # fused: one kernel for all parameters, as XLA fuses optax's update (same arithmetic).
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr_w, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=cfg.weight_decay, fused=True)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> float:
    """Accuracy of the feed-forward argmax over all of (x, y)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            pred = model(x[start:start + chunk]).argmax(dim=1)
            correct += int((pred == y[start:start + chunk]).sum())
    return correct / len(x)


# Run -------------------------------------------------------------------------


class PclabTrainer:
    """``harness.Trainer`` for pclab: one ``pc.step`` + AdamW step per batch (torch is synchronous)."""

    def __init__(self, cfg: Config):
        ds = load("fashion-mnist", cfg.data_dir, download=False)
        self.x_train, self.y_train, self.x_test, self.y_test = harness.smoke_subset(
            cfg, ds.x_train.flatten(1), ds.y_train, ds.x_test.flatten(1), ds.y_test)
        self.n_train, self.n_test = len(self.x_train), len(self.x_test)

        torch.manual_seed(cfg.seed)
        self.model = MLP((self.x_train.shape[1], cfg.hidden, cfg.hidden, 10))
        self.pc = make_learner(self.model, cfg)
        self.opt = make_optimizer(self.model, cfg)

    def train_step(self, idx: np.ndarray) -> float:
        index = torch.from_numpy(idx)
        self.opt.zero_grad(set_to_none=True)
        result = self.pc.step(self.x_train[index], self.y_train[index])
        self.opt.step()
        return result.energy  # batch-mean total energy after inference

    def sync(self) -> None:
        pass

    def mean_energy(self, energies: list) -> float:
        return float(np.mean(energies))

    def evaluate(self) -> float:
        return evaluate(self.model, self.x_test, self.y_test)


class PclabBenchmark(harness.Benchmark):
    config = Config
    benchmark = "pclab_mlp 784-128-128-10 leaky_relu, SE energy, supervised PC (pcx_mlp.py's rule)"
    notes = (
        "compile_s = wall time of the first train step (fx graph capture + one step), excluded "
        "from steps_per_s. steps_per_s = timed train steps / wall time (torch on CPU is "
        "synchronous). steps_per_s_windows: the same per window of `window` steps. epoch_s "
        "includes the first step in epoch 1; test evaluation is not timed. Weight decay 1e-4 "
        "(optax.adamw's default); weight gradient is the batch mean. Batch order is "
        "pcx_mlp.py's (numpy default_rng(seed).permutation per epoch)."
    )
    first_step_label = "first step (capture + step) s"

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
        p.add_argument("--compile", action="store_true", help="PredictiveCoding(compile=True)")

    def prepare(self, cfg: Config) -> None:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)

    def trainer(self, cfg: Config) -> PclabTrainer:
        return PclabTrainer(cfg)

    def versions(self) -> dict:
        # The commit as every benchmark records it: code changes mark it, results files do not.
        return {**harness.package_versions(("pclab", "torch", "numpy")), "pclab_git": provenance.commit()}

    def machine(self) -> dict:
        return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}

    def header_rows(self, report: dict) -> list[tuple[str, str]]:
        v, m = report["versions"], report["machine"]
        return [
            ("pclab / torch", f"{v['pclab']} ({v['pclab_git']}) / {v['torch']}"
                              f"{', torch.compile' if report['config'].get('compile') else ', eager'}"),
            ("CPU", f"{m['cpu_model']} ({m['nproc']} cores, {m['torch_threads']} torch threads)"),
        ]


def main(argv: list[str] | None = None) -> dict:
    return harness.main(PclabBenchmark(), __file__, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
