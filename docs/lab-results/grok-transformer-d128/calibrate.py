"""Seconds per pc training step of the grok full-preset transformer on the GPU (eager)."""
import time

import torch

import pclab
from pclab.experiments.grok import FULL, build_model, modular_addition, runs

run = runs(FULL)[-1]  # a pc run of the preset
assert run.algorithm == "pc", run
dev = torch.device("cuda")
x, y, _, _ = (t.to(dev) for t in modular_addition(run.p, 0.5, 0, equals_token=True))
model = build_model(run).to(dev)
opt = torch.optim.AdamW(model.parameters(), run.lr, weight_decay=1.0)
learn = pclab.learner(model, "pc", loss="ce", steps=run.pc_steps, step_size=run.pc_step_size)
xb, yb = x[:run.batch_size], y[:run.batch_size]
def step():
    opt.zero_grad(); r = learn.step(xb, yb); opt.step(); float(r.loss)
for _ in range(3): step()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): step()
torch.cuda.synchronize()
print(f"{(time.perf_counter() - t) / 10:.4f}")
