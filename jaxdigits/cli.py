"""The ``jaxdigits`` command line: it parses arguments and calls the library, nothing more.

Exit codes: 0 success, 1 a data or checkpoint problem, 2 invalid flags or config (before anything
compiles), 3 training diverged, 130 interrupted (Ctrl-C or SIGTERM; finished work is kept).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from typing import Sequence

from jaxdigits.errors import ConfigError, JaxdigitsError

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 784,16,16,10")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that set ``TrainConfig`` fields; unset flags stay ``None`` (= keep the default)."""
    from jaxdigits.config import OPTIMIZER_NAMES
    from jaxdigits.costs import COSTS
    from jaxdigits.data import DATASETS
    from jaxdigits.model import ACTIVATIONS

    parser.add_argument("--sizes", type=_sizes, help="layer sizes, first 784 and last 10 (default 784,16,16,10)")
    parser.add_argument("--activation", choices=tuple(ACTIVATIONS), help="hidden activation (default sigmoid)")
    parser.add_argument("--cost", choices=tuple(COSTS), help="cost function (default quadratic)")
    parser.add_argument("--optimizer", choices=OPTIMIZER_NAMES, help="optax optimizer (default sgd)")
    parser.add_argument("--lr", type=float, dest="learning_rate", help="learning rate (default 3.0)")
    parser.add_argument("--batch-size", type=int, help="mini-batch size (default 10)")
    parser.add_argument("--epochs", type=int, help="epochs (default 30)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--l2", type=float, help="L2 penalty coefficient (default 0)")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset (default mnist)")


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="folder with the four IDX files (else $JAXDIGITS_DATA_DIR, else download via TFDS)"
    )


CONFIG_FIELDS = ("sizes", "activation", "cost", "optimizer", "learning_rate", "batch_size", "epochs", "seed", "l2", "dataset")


def config_overrides(args: argparse.Namespace) -> dict:
    """The config fields given explicitly on the command line."""
    return {name: getattr(args, name) for name in CONFIG_FIELDS if getattr(args, name, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxdigits", description="The lesson's digit-reading network in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a network and save it to --out")
    add_config_flags(train)
    add_data_flag(train)
    train.add_argument("--out", type=Path, help="folder for params, checkpoint, run.json and history.json")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete epoch")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("evaluate", help="print a saved network's test accuracy")
    evaluate.add_argument("checkpoint", type=Path, help="a run's --out folder or its params.safetensors")
    add_data_flag(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    predict = commands.add_parser("predict", help="read the digit in a PNG with a saved network")
    predict.add_argument("checkpoint", type=Path, help="a run's --out folder or its params.safetensors")
    predict.add_argument("image", type=Path, help="a PNG of one digit, any size, dark or light background")
    predict.set_defaults(handler=run_predict)

    add_sweep_parser(commands)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from jaxdigits.checkpoint import RunFolder
    from jaxdigits.config import TrainConfig, validate_config
    from jaxdigits.train import train

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out, the folder of the run to continue")
    base = (RunFolder(args.out).saved_config() if args.resume else None) or TrainConfig()
    config = validate_config(base.replace(**config_overrides(args)))
    try:
        result = train(config, data_dir=args.data_dir, out_dir=args.out, resume=args.resume,
                       overwrite=args.overwrite, progress=True)
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.diverged:
        epoch = result.history[-1]["epoch"]
        kept = f"; epoch {epoch - 1}'s params are saved in {args.out}" if args.out is not None and epoch > 1 else ""
        print(f"diverged at epoch {epoch}; try a smaller --lr (now {config.learning_rate}){kept}", file=sys.stderr)
        return EXIT_DIVERGED
    last = result.history[-1] if result.history else None
    if last is not None:
        print(f"done: test accuracy {100 * last['test_accuracy']:.2f}%" + (f", saved to {args.out}" if args.out else ""))
    return 0


def _interrupted_message(args: argparse.Namespace) -> str:
    """The one line printed on Ctrl-C: what is kept and the command that resumes."""
    from jaxdigits.checkpoint import RunFolder

    if args.out is None:
        return "interrupted; nothing was saved (no --out given)"
    try:
        completed = RunFolder(args.out).completed_epochs()
    except JaxdigitsError:
        completed = 0
    if completed == 0:
        return "interrupted before the first epoch finished; nothing to resume, run the same command again"
    command = ["jaxdigits", "train", "--out", str(args.out), "--resume"]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    return f"interrupted; epochs 1-{completed} are saved, resume with `{shlex.join(command)}`"


def run_evaluate(args: argparse.Namespace) -> int:
    from jaxdigits.checkpoint import load_params
    from jaxdigits.data import load_mnist
    from jaxdigits.train import evaluate

    params, config, _ = load_params(args.checkpoint)
    data = load_mnist(args.data_dir, config.dataset)
    acc = float(evaluate(params, data.test_images, data.test_labels, config.activation))
    print(f"test accuracy {100 * acc:.2f}% ({config.dataset}, {len(data.test_labels)} images)")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from jaxdigits.checkpoint import load_params
    from jaxdigits.costs import COSTS
    from jaxdigits.data import load_digit_image
    from jaxdigits.model import predict

    params, config, _ = load_params(args.checkpoint)
    image = load_digit_image(args.image)
    digit, activations = predict(params, image[None, :], config.activation, COSTS[config.cost].output)
    print(f"digit {int(digit[0])}")
    print("activations " + " ".join(f"{d}:{float(a):.3f}" for d, a in enumerate(activations[0])))
    return 0


# The sweep's grid axes: add_config_flags' flags, under the same names, taking several values.
GRID_AXES = {"--lr": "lr", "--activation": "activation", "--cost": "cost", "--optimizer": "optimizer",
             "--batch-size": "batch_size", "--epochs": "epochs", "--l2": "l2"}


def _hidden(text: str) -> tuple[int, ...]:
    if text.lower() == "none":
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hidden shape: comma-separated widths like 16,16, or none")
    return widths


def add_grid_flags(parser: argparse.ArgumentParser) -> None:
    """``--hidden``, ``--seeds`` and every ``add_config_flags`` axis as a flag taking one or more values."""
    template = argparse.ArgumentParser(add_help=False)
    add_config_flags(template)
    parser.add_argument("--hidden", nargs="+", type=_hidden, metavar="W[,W...]",
                        help="hidden-layer shapes, e.g. 16,16 32 64,64 (none: no hidden layer; default 16,16)")
    for action in template._actions:
        flag = action.option_strings[0] if action.option_strings else None
        if flag in GRID_AXES:
            parser.add_argument(flag, dest=GRID_AXES[flag], nargs="+", type=action.type, choices=action.choices,
                                metavar=None if action.choices else flag.lstrip("-").upper().replace("-", "_"),
                                help=f"one or more: {action.help}")
        elif flag == "--seed":
            parser.add_argument("--seeds", "--seed", dest="seeds", nargs="+", type=action.type, metavar="SEED",
                                help=f"one or more: {action.help}")
        elif flag == "--dataset":
            parser.add_argument(flag, choices=action.choices, help=action.help)


def add_sweep_parser(commands) -> None:
    sweep = commands.add_parser(
        "sweep", help="train a grid of configurations together (vmap, all devices); results to --out",
        description="Train every combination of the given axes; configurations of one shape train together in "
        "one compiled program, sharded over every device. Results are appended to OUT/results.jsonl group by "
        "group; running the same sweep again resumes it.",
    )
    add_grid_flags(sweep)
    add_data_flag(sweep)
    sweep.add_argument("--grid", type=Path, metavar="FILE",
                       help="a TOML or JSON file of axes (flags given override its axes)")
    sweep.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="folder for results.jsonl and sweep.json; a sweep already there is resumed, and "
                       "axis flags then change its saved axes (a grid that grows trains only what is new)")
    sweep.add_argument("--overwrite", action="store_true", help="start the sweep in --out over")
    sweep.add_argument("--group-size", type=int, help="at most this many configurations per compiled group "
                       "(default: all of one shape; smaller loses less to Ctrl-C)")
    sweep.add_argument("--cpu-devices", type=int, help="with no accelerator, split the CPU into this many devices "
                       "(default: one per core)")
    sweep.add_argument("--top", type=int, help="show only the best N configurations in the summary table")
    sweep.add_argument("--distributed", action="store_true", help="join a multi-host run through "
                       "jax.distributed.initialize() (cluster auto-detection, or the three flags below)")
    sweep.add_argument("--coordinator", help="with --distributed: host:port of process 0")
    sweep.add_argument("--num-processes", type=int, help="with --distributed: number of processes")
    sweep.add_argument("--process-id", type=int, help="with --distributed: this process's index")
    sweep.set_defaults(handler=run_sweep)


def sweep_grid(args: argparse.Namespace):
    """The grid: ``--grid``, else the sweep already in ``--out`` (to resume or grow it), else the
    defaults; with the axis flags given applied on top."""
    from jaxdigits.sweep import SweepGrid, load_grid
    from jaxdigits.sweep_results import SweepFolder

    axes = {name: getattr(args, name) for name in ("hidden", "seeds", "dataset", *GRID_AXES.values())
            if getattr(args, name, None) is not None}
    if args.grid is not None:
        base = load_grid(args.grid)
    else:
        base = (None if args.overwrite else SweepFolder(args.out).saved_grid()) or SweepGrid()
    return base.replace(**axes)


def run_sweep(args: argparse.Namespace) -> int:
    import shlex
    import warnings

    import jax

    from jaxdigits.sweep import sweep, use_cpu_cores
    from jaxdigits.sweep_results import ResultsWarning, SweepFolder, format_table, sizes_label

    if args.distributed:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.coordinator or args.num_processes or args.process_id is not None:
        raise ConfigError("--coordinator, --num-processes and --process-id need --distributed")
    use_cpu_cores(args.cpu_devices)
    grid = sweep_grid(args)
    writer = jax.process_index() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("always", ResultsWarning)
        warnings.showwarning = lambda message, *_, **__: print(f"jaxdigits sweep: warning: {message}", file=sys.stderr)
        try:
            result = sweep(grid, data_dir=args.data_dir, out_dir=args.out, overwrite=args.overwrite,
                           max_group_size=args.group_size, progress=True)
        except KeyboardInterrupt:
            if writer and SweepFolder(args.out).saved_grid() is None:
                print("interrupted before the sweep started; nothing is saved, run the same command again",
                      file=sys.stderr)
            elif writer:
                done = SweepFolder(args.out).finished_count()
                command = ["jaxdigits", "sweep", "--out", str(args.out)]
                if args.data_dir is not None:
                    command += ["--data-dir", str(args.data_dir)]
                print(f"interrupted; {done} of {len(grid.configs())} configurations are saved in "
                      f"{args.out / 'results.jsonl'}: resume with `{shlex.join(command)}`", file=sys.stderr)
            return EXIT_INTERRUPTED
    if writer:
        print(format_table(result.records, limit=args.top))
        finished = [r for r in result.records if r.get("test_accuracy") is not None]
        diverged = sum(r["diverged"] for r in result.records)
        summary = f"{len(result.records)} configurations ({result.trained} trained now, {result.resumed} from before"
        summary += f", {diverged} diverged)" if diverged else ")"
        if finished:
            best = max(finished, key=lambda r: r["test_accuracy"])
            summary += (f"; best {sizes_label(best)} lr {best['lr']:g} seed {best['seed']}: "
                        f"test accuracy {100 * best['test_accuracy']:.2f}%")
        print(summary + f"; results in {args.out / 'results.jsonl'}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxdigits`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a polite kill stops as Ctrl-C does, keeping finished work
    try:
        return args.handler(args)
    except JaxdigitsError as exc:
        print(f"jaxdigits {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
