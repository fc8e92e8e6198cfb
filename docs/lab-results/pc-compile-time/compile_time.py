"""How long ``compile=True`` takes to compile pc's step, by residual-MLP depth and T.

With ``--mode step`` (``compile=True``) the compiled program unrolls all T inference
ticks through every block, so its size, and inductor's compile time and memory, grow
with depth x T; ``--mode tick`` (``compile="tick"``) compiles one program per kind of
tick, which grows with depth only. This measures the first
step (compile included) and the second (compiled) on one batch of 64 random 28x28
inputs, one torch thread, and appends one JSON line per run to ``--out``. Inductor's
on-disk caches are off, so a rerun measures a cold compile, not a cache hit.

    python docs/lab-results/pc-compile-time/compile_time.py --depth 16 --steps 20 --mode tick
"""
import argparse
import json
import os
import resource
import time

os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"  # read at import: a warm cache hides the cost
import torch  # noqa: E402

import pclab  # noqa: E402
from pclab.models import build  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--depth", type=int, required=True)
parser.add_argument("--steps", type=int, required=True, help="T, pc's inference ticks")
parser.add_argument("--mode", choices=("step", "tick"), default="step", help="what compile= is given")
parser.add_argument("--out", default="docs/lab-results/pc-compile-time/results.jsonl")
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
model = build("resnet", input_shape=(1, 28, 28), num_classes=10, kind="mlp", depth=args.depth, width=128)
pc = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=args.steps, step_size=0.03, compile=args.mode)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
times = []
for _ in range(2):
    start = time.perf_counter()
    pc.step(x, y)
    times.append(time.perf_counter() - start)
row = {"depth": args.depth, "T": args.steps, "mode": args.mode, "first_step_s": round(times[0], 1),
       "compiled_step_ms": round(times[1] * 1e3, 1),
       "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),  # Linux: KiB
       "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
print(json.dumps(row), flush=True)
with open(args.out, "a") as f:
    f.write(json.dumps(row) + "\n")
