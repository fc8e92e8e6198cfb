"""pc's weight update against backprop's gradient on this folder's transformer, at initialisation.

Seed 0's model and a batch of its training pairs (config.json's), one pc step of its
inference steps at each step size the two grok runs used; for each parameter the
norm ratio and cosine (`pclab.align`), and for each value node the first inference
step at which it holds an error. Run from the repository root:

    python docs/lab-results/grok-transformer-d64-pc0.01/alignment.py

Writes alignment.json beside this file and prints a table.
"""

import json
import warnings
from pathlib import Path

import torch

import pclab
from pclab.experiments.grok import GrokConfig, build_model, modular_addition, runs

STEP_SIZES = (0.1, 0.01)


def first_error_step(model, x, y, step_size, most=12):
    """Each value node's first inference step with a non-zero error (None: not within ``most``)."""
    first = {}
    for steps in range(1, most + 1):
        errors = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=steps,
                                        step_size=step_size).step(x, y).errors
        for name, e in errors.items():
            if e.abs().max() > 0:
                first.setdefault(name, steps)
    return {name: first.get(name) for name in errors}


def main():
    config = json.loads(Path(__file__).with_name("config.json").read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
              if k not in ("experiment", "written_at")}
    run = next(r for r in runs(GrokConfig(**fields)) if r.algorithm == "pc")
    x, y, _, _ = modular_addition(run.p, run.fraction, run.seed, equals_token=True)
    x, y = x[:run.batch_size], y[:run.batch_size]
    torch.manual_seed(run.seed)
    model = build_model(run)
    warnings.simplefilter("ignore", RuntimeWarning)  # the energy-rise warning, reported per row instead
    result = {"model": f"grok transformer, d_model {run.d_model}, {run.layers} layer(s), p = {run.p}, "
                       f"seed {run.seed}, at initialisation", "batch": len(x), "steps": run.pc_steps,
              "first_error_step": first_error_step(model, x, y, 0.1),
              "alignment": {str(s): [vars(a) for a in pclab.align(model, x, y, loss="ce", algorithm="pc",
                                                                  steps=run.pc_steps, step_size=s)]
                            for s in STEP_SIZES}}
    out = Path(__file__).with_name("alignment.json")
    out.write_text(json.dumps(result, indent=1))
    print("first inference step with an error:", result["first_error_step"])
    print(f"{'parameter':36s}" + "".join(f"{'ratio @' + str(s):>14s}{'cos @' + str(s):>12s}" for s in STEP_SIZES))
    rows = zip(*result["alignment"].values())
    for per_size in rows:
        print(f"{per_size[0]['parameter']:36s}"
              + "".join(f"{a['norm_ratio']:14.2e}{a['cosine']:12.3f}" for a in per_size))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
