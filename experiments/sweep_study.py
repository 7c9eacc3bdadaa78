"""Plumbing shared by the sweep studies (``hidden_sizes.py``, ``learning_rates.py``).

A study runs one ``jaxdigits.sweep`` into a folder under its ``--out`` (``sweep/``, or
``sweep_quick/`` with ``--quick``, so the two never mix), which makes it resumable: run an
interrupted study again and only the missing configurations train. Its tables are CSV files
written atomically; its figures go through ``common.save_figure``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jaxdigits as jd
from jaxdigits.records import sizes_label


def add_sweep_flags(parser: argparse.ArgumentParser, seeds: int, epochs: int) -> None:
    """``--seeds N`` and ``--epochs N``: the full study's size (``--quick`` sets its own)."""
    parser.add_argument("--seeds", type=int, default=seeds, help=f"seeds per configuration (default {seeds})")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"epochs per configuration (default {epochs})")


def start_jax() -> None:
    """Use every CPU core as a device when there is no accelerator (a no-op once JAX has started)."""
    jd.use_cpu_cores()


def run_sweep(grid: jd.SweepGrid, data: jd.Dataset, out: Path, quick: bool) -> list[dict]:
    """Train ``grid`` into ``out/sweep`` (``out/sweep_quick``), resuming what is there."""
    folder = out / ("sweep_quick" if quick else "sweep")
    print(f"{len(grid.configs())} configurations, results in {folder / 'results.jsonl'}", file=sys.stderr)
    return jd.sweep(grid, data, out_dir=folder, progress=True).records


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (``columns`` of each, in order) as CSV, atomically; floats as written by repr."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else (",".join(map(str, row[c])) if isinstance(row[c], list) else row[c])
                         for c in columns])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV written by ``write_csv``, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def best_record(records: Sequence[dict]) -> dict:
    """The record with the highest final test accuracy (ties: the first)."""
    finished = [r for r in records if r.get("test_accuracy") is not None]
    return max(finished, key=lambda r: r["test_accuracy"])


def shape_label(hidden) -> str:
    """``784-16-16-10`` for hidden widths ``[16, 16]``: the studies here are on MNIST."""
    return sizes_label(hidden, 784, 10)
