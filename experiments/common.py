"""Plumbing shared by the experiment scripts: flags, data, JSON, figures and error reporting.

Every script runs as ``python experiments/NAME.py --out DIR [--data-dir DIR] [--quick]`` and
writes its numbers (JSON) and figures (PNG) into ``DIR``. ``--quick`` is a small, fast version
(a subset of the data, few epochs) that the test suite runs; without it the script is the real
study. Scripts use only the public ``jaxdigits`` API.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import jaxdigits
from jaxdigits import Dataset, JaxdigitsError
from jaxdigits.files import write_json

EXIT_INTERRUPTED = 130


def make_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the flags every experiment takes: ``--out``, ``--data-dir``, ``--quick``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON numbers and PNG figures")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST IDX files (else $JAXDIGITS_DATA_DIR, else download via TFDS)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small and fast (a data subset, few epochs): checks the script runs"
    )
    return parser


def load_data(data_dir: str | os.PathLike | None, name: str = "mnist") -> Dataset:
    """``jaxdigits.load_mnist``; a ``DataError`` names the folder and what to pass instead."""
    return jaxdigits.load_mnist(data_dir, name)


def subset(data: Dataset, num_train: int | None = None, num_test: int | None = None) -> Dataset:
    """The first ``num_train`` training and ``num_test`` test examples (``None`` keeps all)."""
    return Dataset(
        data.train_images[:num_train],
        data.train_labels[:num_train],
        data.test_images[:num_test],
        data.test_labels[:num_test],
    )


def _plain(value: Any) -> Any:
    """numpy and JAX scalars and arrays as plain Python numbers and lists (for ``json``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented JSON, atomically (a reader sees the old file or the new one);
    numpy values become plain numbers and NaN or infinite ones ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, _plain(value))
    return path


def publish(out: Path, results: dict, findings: Callable[[dict], list[str]]) -> dict:
    """Add ``findings(results)`` (one sentence per finding) to ``results``, save them as
    ``out/results.json`` and print the sentences; returns ``results``."""
    results["findings"] = findings(results)
    save_json(out / "results.json", results)
    for line in results["findings"]:
        print(line)
    return results


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG at ``path`` and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path


def run_main(study: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run ``study(args)``; report a ``JaxdigitsError`` as one line, return the exit code."""
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        study(args)
    except JaxdigitsError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; outputs written so far are in {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def add_fashion_flag(parser: argparse.ArgumentParser) -> None:
    """``--fashion-data-dir``: Fashion-MNIST's IDX folder (default: ``fashion_mnist`` beside the MNIST folder)."""
    parser.add_argument(
        "--fashion-data-dir",
        type=Path,
        help="folder with Fashion-MNIST's four IDX files (default: a fashion_mnist folder beside the MNIST folder)",
    )


def fashion_dir(args: argparse.Namespace) -> Path | None:
    """The Fashion-MNIST folder to use: ``--fashion-data-dir``, else ``fashion_mnist`` beside the
    MNIST folder (``--data-dir`` or ``$JAXDIGITS_DATA_DIR``); ``None`` when there is none."""
    if args.fashion_data_dir is not None:
        return args.fashion_data_dir
    mnist = args.data_dir or os.environ.get("JAXDIGITS_DATA_DIR")
    if mnist:
        candidate = Path(mnist).expanduser().resolve().parent / "fashion_mnist"
        if candidate.is_dir():
            return candidate
    return None


def load_fashion(args: argparse.Namespace) -> Dataset | None:
    """Fashion-MNIST, or ``None`` (with a note) in ``--quick`` mode when no folder is found.

    Outside quick mode a missing folder is a ``DataError``: the study needs the panel.
    """
    folder = fashion_dir(args)
    if folder is None:
        if args.quick:
            print("note: no Fashion-MNIST folder found; skipping the Fashion-MNIST part", file=sys.stderr)
            return None
        raise jaxdigits.DataError(
            "no Fashion-MNIST folder beside the MNIST folder; pass --fashion-data-dir DIR with its four IDX files"
        )
    return jaxdigits.load_mnist(folder, "fashion_mnist")


def initial_params(config: jaxdigits.TrainConfig) -> list:
    """The parameters ``jaxdigits.train(config)`` starts from (same seed, same keys)."""
    init_key, _ = jaxdigits.run_keys(config.seed)
    return jaxdigits.init_mlp(init_key, config.sizes)


def tile_images(images: np.ndarray, cols: int, side: int = 28, gap: int = 1, normalise: bool = True) -> np.ndarray:
    """``(K, side*side)`` images as one ``(rows*(side+gap)-gap, cols*(side+gap)-gap)`` mosaic.

    With ``normalise`` each image is divided by its own largest absolute value (so every tile
    spans [-1, 1] and a diverging colour map centred on zero shows its sign pattern). Gaps are NaN.
    """
    images = np.asarray(images, dtype=np.float64).reshape(len(images), side, side)
    if normalise:
        scale = np.abs(images).reshape(len(images), -1).max(axis=1)
        images = images / np.where(scale > 0, scale, 1.0)[:, None, None]
    rows = -(-len(images) // cols)
    mosaic = np.full((rows * (side + gap) - gap, cols * (side + gap) - gap), np.nan)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        mosaic[r * (side + gap) : r * (side + gap) + side, c * (side + gap) : c * (side + gap) + side] = image
    return mosaic


def choose(value: Any, quick: bool, quick_default: Any, full_default: Any) -> Any:
    """``value`` when given on the command line, else the default of the mode (``--quick`` or full)."""
    if value is not None:
        return value
    return quick_default if quick else full_default
