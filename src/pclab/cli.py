"""The lab's command line: ``pclab train``, ``pclab compare`` and the experiments.

::

    pclab train                                   # digits, MLP, predictive coding
    pclab train --algorithm fpa --steps 20 --epochs 5 --out runs/digits-fpa
    pclab train --config run.yaml --lr 3e-4       # flags override the file
    pclab train --resume --out runs/digits-fpa --epochs 10
    pclab compare --data digits --algorithms bp,exact,fpa,pc,incremental --seeds 3
    torchrun --nproc_per_node=2 -m pclab train --algorithm pc --out runs/ddp

Every ``train`` flag is a :class:`pclab.training.TrainConfig` key (``--batch-size``
is ``batch_size``); a flag left out keeps the config file's value, then the
default. Model options come from ``--width``/``--depth``/``--activation`` or
``--model-option key=value`` (repeatable), checked against
``pclab.models.OPTIONS[model]``. The commands themselves live in
:mod:`pclab.training`; this module only turns flags into configs and errors into
messages and exit codes (2: bad input, 3: divergence).

From Python, ``main(["train", "--epochs", "1"])`` runs a command and returns its
exit code.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from . import allocator, training
from .data import DataError
from .errors import DivergenceError

app = typer.Typer(
    name="pclab",
    help="Train neural networks with predictive coding.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # plain tracebacks: they name pclab's frames, not rich's
    rich_markup_mode=None,
)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3

# One annotated type per flag, shared by ``train`` and ``compare``. Every default
# is None so that "not given" is visible and the config file's value survives.
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="YAML or JSON config file; flags override it.")]
Data = Annotated[Optional[str], typer.Option(help="Dataset: digits (offline), mnist, fashion-mnist, cifar10.")]
DataDir = Annotated[Optional[str], typer.Option(help="Folder with the dataset files [default: $PCLAB_DATA/<data>].")]
TrainSize = Annotated[Optional[int], typer.Option(help="Class-balanced seeded training subset size.")]
LabelNoise = Annotated[Optional[float], typer.Option(help="Fraction of training labels flipped, in [0, 1).")]
Model = Annotated[Optional[str], typer.Option(help="Model: mlp, cnn, resnet, transformer, rnn.")]
Width = Annotated[Optional[int], typer.Option(help="Model option 'width' (mlp, resnet).")]
Depth = Annotated[Optional[int], typer.Option(help="Model option 'depth' (mlp, resnet).")]
Activation = Annotated[Optional[str], typer.Option(help="Model option 'activation'.")]
ModelOption = Annotated[Optional[list[str]], typer.Option(
    "--model-option", "-o", help="Model option key=value (repeatable), e.g. -o norm=batch.")]
Algorithm = Annotated[Optional[str], typer.Option(help="bp, exact, fpa, pc or incremental.")]
Loss = Annotated[Optional[str], typer.Option(help="Output loss: ce or mse.")]
Steps = Annotated[Optional[int], typer.Option(help="Inference steps per batch.")]
StepSize = Annotated[Optional[float], typer.Option(help="Inference step size [default: per algorithm].")]
ValueNodes = Annotated[Optional[str], typer.Option(
    help="Where value nodes go: layers (each layer's output) or blocks (the residual stream after each "
    "block; deep resnets need it) [default: layers].")]
Epochs = Annotated[Optional[int], typer.Option(help="Passes over the training set.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Global batch size.")]
Optimizer = Annotated[Optional[str], typer.Option(help="adamw or sgd.")]
Lr = Annotated[Optional[float], typer.Option(help="Learning rate.")]
WeightDecay = Annotated[Optional[float], typer.Option(help="Weight decay.")]
Momentum = Annotated[Optional[float], typer.Option(help="SGD momentum.")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of data subset, noise, init and order.")]
EvalEvery = Annotated[Optional[int], typer.Option(help="Evaluate on the test set every N epochs.")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads [default: 1; raise it for large conv nets].")]
Compile = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="Run each step through torch.compile (incremental: each tick).")]
CompilePerTick = Annotated[bool, typer.Option(
    "--compile-per-tick", help="Compile each inference tick apart (pc): compiling grows with depth, "
    "not depth x steps; steps call more programs.")]
Out = Annotated[Optional[str], typer.Option(help="Run folder [default: runs/<data>-<model>-<algorithm>-<time>].")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the run files in an existing --out.")]
Progress = Annotated[bool, typer.Option("--progress/--quiet", help="Progress bar and one line per epoch.")]


def _overrides(flags: dict[str, Any], model_flags: dict[str, Any], model_option: list[str] | None,
               base: dict[str, Any]) -> dict[str, Any]:
    """The config keys given as flags, with model options parsed against the chosen model."""
    given = {k: v for k, v in flags.items() if v is not None}
    model = given.get("model", base.get("model", training.TrainConfig.model))
    texts = [f"{k}={v}" for k, v in model_flags.items() if v is not None] + list(model_option or [])
    options = dict(training.parse_model_option(model, text) for text in texts)
    if options:
        given["model_options"] = options
    return given


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _guarded(run: Callable[[], None]) -> None:
    """Run a command body, turning expected failures into a message and an exit code."""
    try:
        run()
    except DivergenceError as err:
        raise _fail(str(err), EXIT_DIVERGED) from None
    except (training.ConfigError, training.RunFolderError, DataError) as err:
        raise _fail(str(err), EXIT_BAD_INPUT) from None


@app.command()
def train(
    config: ConfigFile = None, data: Data = None, data_dir: DataDir = None, train_size: TrainSize = None,
    label_noise: LabelNoise = None, model: Model = None, width: Width = None, depth: Depth = None,
    activation: Activation = None, model_option: ModelOption = None, algorithm: Algorithm = None,
    loss: Loss = None, steps: Steps = None, step_size: StepSize = None, value_nodes: ValueNodes = None,
    epochs: Epochs = None, batch_size: BatchSize = None, optimizer: Optimizer = None, lr: Lr = None,
    weight_decay: WeightDecay = None, momentum: Momentum = None, seed: Seed = None,
    eval_every: EvalEvery = None, device: Device = None, threads: Threads = None,
    compile: Compile = None, compile_per_tick: CompilePerTick = False, out: Out = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --out from its last checkpoint.")] = False,
    overwrite: Overwrite = False, progress: Progress = True,
) -> None:
    """Train one network; writes config, metrics, checkpoints and curves to --out.

    \b
    Examples:
      pclab train                                # digits, MLP, pc, 30 epochs
      pclab train --algorithm fpa --steps 20 --epochs 5 --out runs/fpa
      pclab train --model cnn -o channels=[8,8,16,16] -o norm=layer
      pclab train --config run.yaml --lr 3e-4    # flags override the file
      pclab train --resume --out runs/fpa --epochs 10
      torchrun --nproc_per_node=2 -m pclab train --out runs/ddp
    """
    flags = dict(data=data, data_dir=data_dir, train_size=train_size, label_noise=label_noise,
                 model=model, algorithm=algorithm, loss=loss, steps=steps, step_size=step_size,
                 value_nodes=value_nodes, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                 weight_decay=weight_decay, momentum=momentum, seed=seed, eval_every=eval_every,
                 device=device, threads=threads, compile="tick" if compile_per_tick else compile, out=out)
    model_flags = dict(width=width, depth=depth, activation=activation)

    def run() -> None:
        layers: list[dict[str, Any]] = []
        if resume:
            if out is None:
                raise training.ConfigError("--resume needs --out, the run folder to continue")
            saved = Path(out) / "config.yaml"
            if not saved.is_file():
                raise training.RunFolderError(f"cannot resume {out}: it has no config.yaml "
                                              f"(not a pclab run folder)")
            layers.append(training.load_config_file(saved))
        if config is not None:
            layers.append(training.load_config_file(config))
        base = {k: v for layer in layers for k, v in layer.items()}
        layers.append(_overrides(flags, model_flags, model_option, base))
        resolved = training.make_config(*layers)
        if resolved.out is None:
            resolved = training.make_config(
                resolved.to_dict(),
                {"out": f"runs/{resolved.data}-{resolved.model}-{resolved.algorithm}-{_stamp()}"})
        result = training.train(resolved, resume=resume, overwrite=overwrite, progress=progress)
        if result.out is not None and _is_rank0():
            accuracy = result.final_test_accuracy
            typer.echo(f"done: test accuracy {accuracy:.4f}; run folder {result.out} "
                       f"(config.yaml, metrics.jsonl, metrics.csv, checkpoint.pt, curves.png)")

    _guarded(run)


@app.command()
def compare(
    algorithms: Annotated[str, typer.Option(help="Comma-separated algorithms; bp is always the reference.")]
    = "bp,exact,fpa,pc,incremental",
    seeds: Annotated[int, typer.Option(help="Number of seeds: --seed, --seed+1, ...")] = 3,
    config: ConfigFile = None, data: Data = None, data_dir: DataDir = None, train_size: TrainSize = None,
    label_noise: LabelNoise = None, model: Model = None, width: Width = None, depth: Depth = None,
    activation: Activation = None, model_option: ModelOption = None, loss: Loss = None,
    steps: Steps = None, step_size: StepSize = None, value_nodes: ValueNodes = None, epochs: Epochs = None,
    batch_size: BatchSize = None, optimizer: Optimizer = None, lr: Lr = None,
    weight_decay: WeightDecay = None, momentum: Momentum = None, seed: Seed = None,
    eval_every: EvalEvery = None, device: Device = None, threads: Threads = None,
    compile: Compile = None, compile_per_tick: CompilePerTick = False,
    out: Annotated[Optional[str], typer.Option(help="Folder [default: runs/compare-<data>-<model>-<time>].")] = None,
    overwrite: Overwrite = False, progress: Progress = False,
) -> None:
    """Train several algorithms on the same data, model and seeds; print and save a table.

    \b
    Prints final test accuracy (mean +- std over seeds), seconds per epoch, the
    time ratio to bp and the seeds whose run diverged (the others still count);
    writes compare.json, compare.csv, compare.md, curves.png and one run folder
    per algorithm and seed into --out.
    Example:
      pclab compare --data digits --algorithms bp,exact,fpa,pc,incremental --seeds 3
    """
    flags = dict(data=data, data_dir=data_dir, train_size=train_size, label_noise=label_noise,
                 model=model, loss=loss, steps=steps, step_size=step_size, value_nodes=value_nodes, epochs=epochs,
                 batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                 momentum=momentum, seed=seed, eval_every=eval_every, device=device,
                 threads=threads, compile="tick" if compile_per_tick else compile, out=out)
    model_flags = dict(width=width, depth=depth, activation=activation)

    def run() -> None:
        layers = [training.load_config_file(config)] if config is not None else []
        base = {k: v for layer in layers for k, v in layer.items()}
        layers.append(_overrides(flags, model_flags, model_option, base))
        resolved = training.make_config(*layers)
        if resolved.out is None:
            resolved = training.make_config(
                resolved.to_dict(), {"out": f"runs/compare-{resolved.data}-{resolved.model}-{_stamp()}"})
        names = [a.strip() for a in algorithms.split(",") if a.strip()]
        if seeds < 1:
            raise training.ConfigError(f"--seeds must be >= 1, got {seeds}")
        result = training.compare(resolved, names, range(resolved.seed, resolved.seed + seeds),
                                  overwrite=overwrite, progress=progress, log=typer.echo)
        typer.echo("")
        typer.echo(result.table())
        typer.echo(f"\nsaved {', '.join(training.COMPARE_FILES)} and one run folder per "
                   f"algorithm and seed in {resolved.out}")

    _guarded(run)


def _is_rank0() -> bool:
    import os

    return int(os.environ.get("RANK", 0)) == 0


def _register_experiments(target: typer.Typer = app) -> None:
    """Add the lab's experiment commands (``pclab.experiments.COMMANDS``), once that package exists.

    Only the package's own absence is tolerated; an import error *inside* it is a
    bug to see, so it propagates.
    """
    name = f"{__package__}.experiments"
    try:
        # import_module, not ``from . import``: only it says *which* module is missing.
        experiments = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return
    if getattr(experiments, "__file__", None) is None:
        return  # a folder without __init__.py yet (a namespace package): not written yet
    for command_name, command in experiments.COMMANDS.items():
        target.command(command_name)(command)


_register_experiments()


def _usage_errors() -> tuple[type[Exception], ...]:
    # Recent typer vendors its own click (typer.TyperException); older typer raises
    # click's ClickException. Both carry ``show()`` and ``exit_code``.
    kinds: list[type[Exception]] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return tuple(kinds)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    allocator.retain_freed_memory()  # the lab's processes train for their whole life
    try:
        # standalone_mode=False: return instead of sys.exit, so tests and callers get the code.
        result = app(args=argv, prog_name="pclab", standalone_mode=False)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 130
    except _usage_errors() as err:  # unknown flag, a value that is not an int, ...
        err.show()
        return err.exit_code
    return result if isinstance(result, int) else 0
