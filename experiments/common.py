"""Plumbing shared by the experiment scripts: flags, data, JSON, figures and error reporting.

Every script runs as ``python experiments/NAME.py --out DIR [--data-dir DIR] [--quick]`` and
writes its numbers (JSON) and figures (PNG) into ``DIR``. ``--quick`` is a small, fast version
(a subset of the data, few epochs) that the test suite runs; without it the script is the real
study. Scripts use only the public ``jaxdigits`` API.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import jaxdigits
from jaxdigits import Dataset, JaxdigitsError

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
    """Write ``value`` as indented JSON, atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_plain(value), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
