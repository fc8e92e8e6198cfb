"""Why the depth-8 residual MLP diverges under pc at inference step 0.01, step by step.

Trains with the settings of this folder's seed-0 run (pc/seed0/config.yaml:
Fashion-MNIST, 10,000 class-balanced images, resnet depth 8 width 128,
cross-entropy, batch 64, pc with T = 20 at step 0.01, AdamW lr 1e-3), eager, in a
loop of its own (same initialisation and batch order; the trajectory is not the
``pclab compare`` run's bit for bit), and every ``--every`` steps records, on that
step's batch before the optimizer moves:

- the batch loss and whether inference raised the energy (``StepResult.energy_rose``);
- ``pclab.align``: each weight tensor's pc update against backprop's gradient;
- the step the optimizer then takes, against backprop's gradient: its cosine with
  ``-grad`` (> 0: a descent direction for the batch loss) and its size;
- the norm of the weights of each group (input layer, blocks, head), and the median
  norm of the head's input over the batch (recorded from the depth-32 runs on).

The same for other optimizers (``--variants``) and for bp, so a claim such as
"AdamW turns pc's small, misaligned updates into full-size steps" can be checked:
under SGD the step is the update times the learning rate. Run from the repository
root (needs ../shared/datasets):

    python docs/lab-results/depth8-pc-step0.01/diagnose.py
    python docs/lab-results/depth8-pc-step0.01/diagnose.py --variants pc-sgd-0.01-m0.9 --epochs 10

(diagnose.json holds the output of these two: the second replaces the first's
SGD pc row with one trained until it stopped.) Writes diagnose.json beside this file
(``--out``: elsewhere) and prints a table (``--summary``: only the table, from the
file). ``--depth 32`` measures the depth-32 net at the same settings:

    python docs/lab-results/depth8-pc-step0.01/diagnose.py --depth 32 --variants pc-adamw-0.0001,bp-adamw-0.0001 \
        --epochs 3 --out docs/lab-results/depth32-pc-step0.01-adamw1e-4/diagnose.json

and, in the same file, SGD and AdamW at lr 1e-5 there:

    python docs/lab-results/depth8-pc-step0.01/diagnose.py --depth 32 --epochs 3 \
        --variants pc-sgd-0.01-m0.9,bp-sgd-0.01-m0.9,pc-adamw-1e-05,bp-adamw-1e-05 \
        --out docs/lab-results/depth32-pc-step0.01-adamw1e-4/diagnose.json

and with a LayerNorm before each block's layers and the head (``--norm layer``), in a
file of its own since the variants' names do not say the norm:

    python docs/lab-results/depth8-pc-step0.01/diagnose.py --depth 32 --norm layer --epochs 3 \
        --variants pc-adamw-0.0001,bp-adamw-0.0001 \
        --out docs/lab-results/depth32-pc-step0.01-adamw1e-4/diagnose-layernorm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch

import pclab
from pclab import data, models
from pclab.experiments.sweep import write_json_atomic
from pclab.training import epoch_order, make_optimizer

HERE = Path(__file__).parent
# name -> (algorithm, optimizer, lr, momentum)
VARIANTS = {
    f"{algorithm}-{optimizer}-{lr:g}" + (f"-m{momentum:g}" if momentum else ""): (algorithm, optimizer, lr, momentum)
    for optimizer, lr, momentum in (("adamw", 1e-3, 0.0), ("adamw", 1e-4, 0.0), ("adamw", 1e-5, 0.0), ("sgd", 0.01, 0.9))
    for algorithm in ("pc", "bp")
}


def group(name: str) -> str:
    return name.split(".")[0]  # input, blocks, final, head


def flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].flatten().double() for n in names])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm())) if a.norm() and b.norm() else float("nan")


def run(variant: str, dataset: data.Dataset, args: argparse.Namespace) -> list[dict]:
    algorithm, optimizer_name, lr, momentum = VARIANTS[variant]
    torch.manual_seed(args.seed)
    model = models.build("resnet", input_shape=tuple(dataset.x_train.shape[1:]), num_classes=10,
                         width=128, depth=args.depth, norm=args.norm)
    optimizer = make_optimizer(optimizer_name, list(model.parameters()), lr=lr, momentum=momentum)
    step = pclab.learner(model, algorithm, loss="ce", steps=20, step_size=0.01)
    rows, number = [], 0
    for epoch in range(1, args.epochs + 1):
        for idx in epoch_order(len(dataset.y_train), args.seed, epoch).split(64):
            x, y = dataset.x_train[idx], dataset.y_train[idx]
            number += 1
            try:
                row = record(model, optimizer, step, x, y) if number % args.every == 1 else None
                if row is None:
                    optimizer.zero_grad(set_to_none=True)
                    step.step(x, y)
                    optimizer.step()
            except pclab.DivergenceError as err:  # the run is over; what led there is in the rows
                rows.append({"step": number, "epoch": epoch, "stopped": str(err)})
                return rows
            if row is not None:
                rows.append({"step": number, "epoch": epoch, **row})
    return rows


def record(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step, x: torch.Tensor,
           y: torch.Tensor) -> dict:
    """One training step on ``(x, y)``, measured against backprop's gradient of the same batch."""
    params = dict(model.named_parameters())
    weights = [n for n in params if n.endswith("weight")]
    # align restores p.grad, the RNG and the model, so the run is not disturbed.
    alignment = {a.parameter: a for a in pclab.align(model, x, y, loss="ce", algorithm="pc",
                                                     steps=20, step_size=0.01)}
    optimizer.zero_grad(set_to_none=True)
    pclab.Backprop(model, loss="ce").step(x, y)
    gradient = {n: p.grad.clone() for n, p in params.items()}
    optimizer.zero_grad(set_to_none=True)
    result = step.step(x, y)
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer.step()
    moved = {n: params[n].detach() - before[n] for n in params}
    row = {"loss": result.loss, "energy_rose": result.energy_rose, "features_norm": features_norm(model, x)}
    for g in dict.fromkeys(group(n) for n in weights):
        names = [n for n in weights if group(n) == g]
        row[g] = {
            "pc_cos_median": statistics.median(alignment[n].cosine for n in names),
            "pc_ratio_median": statistics.median(alignment[n].norm_ratio for n in names),
            "step_cos_with_minus_grad": cosine(flat(moved, names), -flat(gradient, names)),
            "step_norm": float(flat(moved, names).norm()),
            "weight_norm": float(flat({n: params[n].detach() for n in names}, names).norm()),
        }
    moved_all, grad_all = flat(moved, list(params)), flat(gradient, list(params))
    row["model_step_cos_with_minus_grad"] = cosine(moved_all, -grad_all)
    # The step's first-order change of the batch loss: what the step promises.
    row["predicted_loss_change"] = float(moved_all @ grad_all)
    return row


def features_norm(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median over the batch of the norm of what the head reads: the residual stream's
    scale, which weight norms alone do not show when many blocks add up."""
    seen = []
    handle = model.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return float(seen[0].flatten(1).norm(dim=1).median())


GROUPS = ("input", "blocks", "head")


def summarise(results: dict) -> str:
    """The table the README quotes: loss by window of steps, weight norms, early step sizes."""
    lines = ["| variant | batch loss, median per epoch | step's cosine with -gradient, median per epoch | max loss | descent steps | energy rose | weight norm input, blocks, head: first -> last "
             "| steps 1-150, median: pc update / bp gradient, input / blocks | step norm, input / blocks | head's input norm, median per epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, entry in results.items():
        rows = [r for r in entry["rows"] if "loss" in r]
        early = [r for r in rows if r["step"] <= 150]

        def med(key, within=rows):
            return statistics.median(key(r) for r in within)

        def per_epoch(field: str, spec: str) -> str:
            if field not in rows[0]:  # recorded from a later version of this script on
                return "-"
            return " / ".join(format(med(lambda r: r[field], [r for r in rows if r["epoch"] == e]), spec)
                              for e in dict.fromkeys(r["epoch"] for r in rows))
        losses, cosines = per_epoch("loss", ".3g"), per_epoch("model_step_cos_with_minus_grad", ".2f")
        features = per_epoch("features_norm", ".3g")
        norms = ", ".join(f"{rows[0][g]['weight_norm']:.1f} -> {rows[-1][g]['weight_norm']:.1f}" for g in GROUPS)
        lines.append(
            f"| {variant} | {losses} | {cosines} | {max(r['loss'] for r in rows):.3g} "
            f"| {sum(r['predicted_loss_change'] < 0 for r in rows) / len(rows):.0%} "
            f"| {sum(r['energy_rose'] for r in rows)} of {len(rows)} | {norms} "
            f"| {med(lambda r: r['input']['pc_ratio_median'], early):.2g} / {med(lambda r: r['blocks']['pc_ratio_median'], early):.2g} "
            f"| {med(lambda r: r['input']['step_norm'], early):.3g} / {med(lambda r: r['blocks']['step_norm'], early):.3g} | {features} |"
            + (f" stopped: {entry['rows'][-1]['stopped']}" if "stopped" in entry["rows"][-1] else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every", type=int, default=10, help="record every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="../shared/datasets/fashion-mnist")
    parser.add_argument("--depth", type=int, default=8, help="residual blocks (the folder's runs: 8)")
    parser.add_argument("--norm", choices=("none", "layer", "batch"), default="none",
                        help="normalisation before each block's layers and the head (the folder's runs: none)")
    parser.add_argument("--out", type=Path, default=HERE / "diagnose.json",
                        help="results file; variants already in it and not rerun are kept")
    parser.add_argument("--summary", action="store_true", help="print the table of diagnose.json; train nothing")
    args = parser.parse_args()
    out = args.out
    results = json.loads(out.read_text()) if out.exists() else {}
    if not args.summary:
        torch.set_num_threads(1)
        warnings.simplefilter("ignore", RuntimeWarning)  # energy rises are recorded per row instead
        dataset = data.load("fashion-mnist", args.data_dir, download=False, train_size=10_000, seed=args.seed)
        for variant in args.variants.split(","):
            settings = dict(zip(("algorithm", "optimizer", "lr", "momentum"), VARIANTS[variant]))
            results[variant] = {"settings": settings | {"epochs": args.epochs, "seed": args.seed, "every": args.every,
                                                             "depth": args.depth, "norm": args.norm},
                                "rows": run(variant, dataset, args)}
            write_json_atomic(out, results)  # a kill keeps the variants already done
            print(f"{variant} done", flush=True)
        print(f"wrote {out}")
    print(summarise(results))


if __name__ == "__main__":
    main()
