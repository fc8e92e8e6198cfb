"""PCX peer benchmark: the pclab benchmark MLP trained with PCX (JAX) on this CPU.

Runs inside ``benchmarks/peers/.venv`` (made by ``setup_pcx.sh``) and imports only
pcx, jax, optax, numpy and the standard library; it never imports pclab (the lab
stays apart from the library, and this file stays apart from both).

Model and rule (standard PCX supervised predictive coding, as in PCX's own
two-moons / Fashion-MNIST MLP examples, written here from scratch against the
pcx 0.6.3 API):

    u_1 = f(W_1 x + b_1),  u_2 = f(W_2 h_1 + b_2),  u_3 = W_3 h_2 + b_3
    F   = sum_batch sum_l 1/2 ||h_l - u_l||^2,       h_3 := y (one-hot, frozen)

with f = leaky-ReLU (slope 0.01, ``jax.nn.leaky_relu``) and sizes 784-128-128-10.
Per mini-batch: forward-initialise h_l = u_l, clamp h_3 to the target, then T
inference steps h <- h - lr_h * dF/dh (SGD, h_3 excluded), then one weight step
with AdamW on dF/dW scaled by 1/batch (i.e. the batch-mean gradient; Adam is
nearly invariant to that scale). Prediction = argmax of the feed-forward u_3.

The whole train step (init + T inference steps + weight step) is one
``pxf.jit``-compiled function with T static, as PCX's examples do.

This file holds only the PCX part; config, flags, the timed loop and the JSON report
are ``harness.py``'s (stdlib + numpy, shared with ``pclab_mlp.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

import pcx as px
import pcx.functional as pxf
import pcx.nn as pxnn
import pcx.predictive_coding as pxc
import pcx.utils as pxu

if str(Path(__file__).resolve().parent) not in sys.path:  # also when loaded by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (stdlib + numpy only)
from harness import load_split  # noqa: E402,F401  (check_pcx_step.py uses pm.load_split)


@dataclasses.dataclass(frozen=True)
class Config(harness.Config):
    """Benchmark hyperparameters; every field but ``hidden`` is a CLI flag."""

    sync_each_step: bool = False  # block_until_ready after every step, not only per window


# Model -----------------------------------------------------------------------


class PCMLP(pxc.EnergyModule):
    """784-128-128-10 predictive-coding MLP: one value node (Vode) after each layer.

    Hidden Vodes use PCX's default squared-error energy 1/2 ||h - u||^2; the output
    Vode uses the same energy with its value h frozen to the one-hot target.
    """

    def __init__(self, sizes: tuple[int, ...], act_fn: Callable[[jax.Array], jax.Array]):
        super().__init__()
        self.act_fn = px.static(act_fn)
        self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.vodes = [pxc.Vode(pxc.se_energy) for _ in sizes[1:]]
        # Output value node is clamped, not inferred: inference masks it out by this flag.
        self.vodes[-1].h.frozen = True

    def __call__(self, x: jax.Array, y: jax.Array | None) -> jax.Array:
        for vode, layer in zip(self.vodes[:-1], self.layers[:-1]):
            x = vode(self.act_fn(layer(x)))
        self.vodes[-1](self.layers[-1](x))
        if y is not None:
            self.vodes[-1].set("h", y)
        return self.vodes[-1].get("u")


# Per-sample state (Vode values and caches) is vmapped over the batch axis; weights are shared.
_PER_SAMPLE = pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0))
_INFERRED = pxu.M_hasnot(pxc.VodeParam, frozen=True)


@pxf.vmap(_PER_SAMPLE, in_axes=(0, 0), out_axes=0)
def forward(x, y, *, model: PCMLP):
    return model(x, y)


@pxf.vmap(_PER_SAMPLE, in_axes=(0,), out_axes=(None, 0), axis_name="batch")
def energy(x, *, model: PCMLP):
    """Total energy F summed over the batch (so dF/dh_i is sample i's own gradient)."""
    u_out = model(x, None)
    return jax.lax.psum(model.energy(), "batch"), u_out


@pxf.jit(static_argnums=0)
def train_on_batch(T: int, x, y, *, model: PCMLP, optim_w: pxu.Optim, optim_h: pxu.Optim):
    """One PC training step: forward init, T value-node SGD steps, one AdamW weight step."""
    model.train()
    with pxu.step(model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
        forward(x, y, model=model)
    optim_h.init(_INFERRED(model))

    inference_grad = pxf.value_and_grad(_INFERRED.to([False, True]), has_aux=True)(energy)
    for _ in range(T):
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = inference_grad(x, model=model)
        optim_h.step(model, g["model"])
    optim_h.clear()

    learning_grad = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)
    with pxu.step(model, clear_params=pxc.VodeParam.Cache):
        (e, _), g = learning_grad(x, model=model)
    optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])
    return e


@pxf.jit()
def predict_on_batch(x, *, model: PCMLP):
    """Feed-forward prediction (Vodes forward-initialised, no inference, nothing clamped)."""
    model.eval()
    with pxu.step(model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
        return forward(x, None, model=model).argmax(axis=-1)


def sync(model: PCMLP) -> None:
    """Wait for every array in the model (weights and value nodes): JAX dispatch is async."""
    jax.block_until_ready([a for a in jtu.tree_leaves(model) if isinstance(a, jax.Array)])


def evaluate(x: np.ndarray, y: np.ndarray, batch_size: int, *, model: PCMLP) -> float:
    """Accuracy over all of (x, y). The last batch is zero-padded to batch_size so the
    Vode shapes never change (a new shape would retrace the jitted train step)."""
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - n, x.shape[1]), x.dtype)])
        pred = np.asarray(predict_on_batch(xb, model=model))[:n]
        correct += int((pred == y[start : start + n]).sum())
    return correct / len(x)


# Run -------------------------------------------------------------------------


class PCXTrainer:
    """``harness.Trainer`` for PCX: the jitted step on numpy batches, one-hot targets."""

    def __init__(self, cfg: Config):
        data_dir = Path(cfg.data_dir)
        self.x_train, y_train, self.x_test, self.y_test = harness.smoke_subset(
            cfg, *load_split(data_dir, "train"), *load_split(data_dir, "t10k"))
        self.y_train_1h = np.eye(10, dtype=np.float32)[y_train]
        self.n_train, self.n_test = len(self.x_train), len(self.x_test)
        self.cfg = cfg

        px.RKG.seed(cfg.seed)
        self.model = PCMLP((self.x_train.shape[1], cfg.hidden, cfg.hidden, 10), jax.nn.leaky_relu)
        # Give the Vodes their (batch, dim) values before the first jitted call, so the
        # model pytree has the same structure on every call and compiles exactly once.
        with pxu.step(self.model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
            forward(jnp.zeros((cfg.batch_size, self.x_train.shape[1])), None, model=self.model)
        self.optim_h = pxu.Optim(lambda: optax.sgd(cfg.lr_h))
        self.optim_w = pxu.Optim(
            lambda: optax.adamw(cfg.lr_w, weight_decay=cfg.weight_decay), pxu.M(pxnn.LayerParam)(self.model)
        )

    def train_step(self, idx: np.ndarray) -> jax.Array:
        e = train_on_batch(self.cfg.T, self.x_train[idx], self.y_train_1h[idx], model=self.model,
                           optim_w=self.optim_w, optim_h=self.optim_h)
        if self.cfg.sync_each_step:
            sync(self.model)
        return e

    def sync(self) -> None:
        sync(self.model)

    def mean_energy(self, energies: list) -> float:
        return float(jnp.mean(jnp.stack(energies))) / self.cfg.batch_size

    def evaluate(self) -> float:
        return evaluate(self.x_test, self.y_test, self.cfg.batch_size, model=self.model)


class PCXBenchmark(harness.Benchmark):
    config = Config
    benchmark = "pcx_mlp 784-128-128-10 leaky_relu, SE energy, supervised PC"
    notes = (
        "compile_s = wall time of the first train step (trace + XLA compile + one step), "
        "excluded from steps_per_s. steps_per_s = timed train steps / wall time, with "
        "block_until_ready at every window edge and epoch end (dispatch is async; with "
        "--sync-each-step also after every step). steps_per_s_windows: the same per window of "
        "`window` steps; best/median windows are less sensitive to other load on the machine. "
        "epoch_s includes the first (compile) step in epoch 1; test evaluation is not timed. Weight decay "
        "is optax.adamw's default 1e-4; weight gradient is the batch mean."
    )

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--sync-each-step", action="store_true",
                       help="block_until_ready after every train step (latency-bound timing)")

    def trainer(self, cfg: Config) -> PCXTrainer:
        return PCXTrainer(cfg)

    def versions(self) -> dict:
        return harness.package_versions(("pcx", "jax", "jaxlib", "optax", "equinox", "numpy"))

    def machine(self) -> dict:
        return {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}

    def report_extra(self) -> dict:
        return {"jax_devices": [str(d) for d in jax.devices()]}

    def header_rows(self, report: dict) -> list[tuple[str, str]]:
        v, m = report["versions"], report["machine"]
        return [("pcx / jax", f"{v['pcx']} / {v['jax']}"), ("CPU", f"{m['cpu_model']} ({m['nproc']} cores)")]


def main(argv: list[str] | None = None) -> dict:
    return harness.main(PCXBenchmark(), __file__, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
