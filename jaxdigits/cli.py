"""The ``jaxdigits`` command line: it parses arguments and calls the library, nothing more.

Exit codes: 0 success, 1 a data or checkpoint problem, 2 invalid flags or config (before anything
compiles), 3 training diverged, 130 interrupted (Ctrl-C; finished work is kept).
"""

from __future__ import annotations

import argparse
import shlex
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxdigits`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
