"""Check pcx_mlp.py's PCX train step against the same step written in plain JAX.

Runs inside benchmarks/peers/.venv. One batch, same initial weights: the reference
forward-initialises h_l = u_l, takes T plain gradient steps h <- h - lr_h dF/dh on

    F = sum_batch [ 1/2 ||h_1 - f(W_1 x + b_1)||^2 + 1/2 ||h_2 - f(W_2 h_1 + b_2)||^2
                    + 1/2 ||y - (W_3 h_2 + b_3)||^2 ]

then one optax.adamw step on dF/dW / batch. Value nodes and weights after the step
must match PCX's (float32 tolerance). Exits non-zero on a mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pcx_mlp as pm  # noqa: E402


def layer_arrays(model):
    return [(np.asarray(l.nn.weight.get()), np.asarray(l.nn.bias.get())) for l in model.layers]


def reference_step(params, x, y, cfg: pm.Config):
    f = jax.nn.leaky_relu
    (W1, b1), (W2, b2), (W3, b3) = params

    def energy(params, hs):
        (W1, b1), (W2, b2), (W3, b3) = params
        us = [f(x @ W1.T + b1), f(hs[0] @ W2.T + b2), hs[1] @ W3.T + b3]
        return sum(0.5 * jnp.sum((h - u) ** 2) for h, u in zip([*hs, y], us))

    u1 = f(x @ W1.T + b1)
    hs = [u1, f(u1 @ W2.T + b2)]
    for _ in range(cfg.T):
        g = jax.grad(energy, argnums=1)(params, hs)
        hs = [h - cfg.lr_h * gh for h, gh in zip(hs, g)]
    gw = jax.tree.map(lambda a: a / x.shape[0], jax.grad(energy)(params, hs))
    opt = optax.adamw(cfg.lr_w, weight_decay=cfg.weight_decay)
    updates, _ = opt.update(gw, opt.init(params), params)
    return hs, optax.apply_updates(params, updates)


def main() -> int:
    cfg = pm.Config()
    x_all, labels = pm.load_split(Path(cfg.data_dir), "train")
    B = cfg.batch_size
    x, y = x_all[:B], np.eye(10, dtype=np.float32)[labels[:B]]

    pm.px.RKG.seed(cfg.seed)
    model = pm.PCMLP((784, cfg.hidden, cfg.hidden, 10), jax.nn.leaky_relu)
    with pm.pxu.step(model, (pm.pxc.STATUS.INIT, None), clear_params=pm.pxc.VodeParam.Cache):
        pm.forward(jnp.zeros((B, 784)), None, model=model)
    optim_h = pm.pxu.Optim(lambda: optax.sgd(cfg.lr_h))
    optim_w = pm.pxu.Optim(
        lambda: optax.adamw(cfg.lr_w, weight_decay=cfg.weight_decay),
        pm.pxu.M(pm.pxnn.LayerParam)(model),
    )
    before = layer_arrays(model)
    pm.train_on_batch(cfg.T, x, y, model=model, optim_w=optim_w, optim_h=optim_h)

    ref_h, ref_w = reference_step([tuple(map(jnp.asarray, p)) for p in before], x, y, cfg)
    ok = True
    for i, (h_pcx, h_ref) in enumerate(zip([np.asarray(v.h.get()) for v in model.vodes], ref_h)):
        err = float(np.abs(h_pcx - np.asarray(h_ref)).max())
        ok &= err < 1e-5
        print(f"h_{i + 1}: max |pcx - ref| = {err:.2e}")
    for i, ((w, b), (w_ref, b_ref), (w0, _)) in enumerate(zip(layer_arrays(model), ref_w, before)):
        err = max(float(np.abs(w - np.asarray(w_ref)).max()), float(np.abs(b - np.asarray(b_ref)).max()))
        # Adam's first step is ~lr*sign(g): entries with |g| near eps may differ, so
        # compare against the size of the update itself.
        step = float(np.abs(np.asarray(w_ref) - w0).max())
        ok &= err < 1e-2 * step
        print(f"layer {i + 1}: max |pcx - ref| = {err:.2e} (update size {step:.2e})")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
