"""A sweep's results folder: ``results.jsonl`` appended group by group, resumed, never mixed.

    sweep.json      what the folder holds: the grid, the ids of its configurations, a digest of
                    the training data and the library versions; written atomically
    results.jsonl   one JSON object per finished configuration, appended (flushed and fsynced)
                    as each group finishes

Running a sweep again with the same ``--out`` resumes it: configurations already in
``results.jsonl`` are not retrained, and a grid that grew trains only its new configurations.
A folder holding anything else (a training run, another sweep, other data) is refused. A last
line half-written by a hard kill is reported with a warning and dropped; its configuration is
trained again.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence


from jaxdigits.checkpoint import RUN_FILES, environment_info, write_atomic, write_json_atomic
from jaxdigits.config import TrainConfig
from jaxdigits.errors import RunFolderError

SWEEP_FORMAT = "jaxdigits-sweep"
SWEEP_FORMAT_VERSION = 1
SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.jsonl"


class ResultsWarning(UserWarning):
    """A problem in ``results.jsonl`` that resuming works around (the line is retrained)."""


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_results(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """``(records, problems)`` of a ``results.jsonl``: every line that is a JSON object with an
    ``id``, and one message per line that is not (a half-written last line among them)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot read results ({exc.strerror or exc})") from None
    lines = raw.split(b"\n")
    records, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = number == len(lines)  # no newline after it: the write did not finish
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ValueError("not a result")
            if last:
                raise ValueError("unterminated")
        except ValueError:
            if last:
                problems.append(
                    f"{path}: the last line is half-written (the sweep was stopped while writing it); "
                    "ignoring it, its configuration will be trained again"
                )
            else:
                problems.append(f"{path}: line {number} is not a result record; ignoring it")
            continue
        records.append(record)
    return records, problems


class SweepFolder:
    """The ``--out`` folder of a sweep: claims or resumes it, appends results to it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.results_path = self.path / RESULTS_FILE
        self.sweep_path = self.path / SWEEP_FILE

    def _read_sweep_file(self) -> dict | None:
        if not self.sweep_path.exists():
            return None
        try:
            info = json.loads(self.sweep_path.read_text())
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{self.sweep_path}: unreadable ({exc}); use a new --out") from None
        if not isinstance(info, dict) or info.get("format") != SWEEP_FORMAT:
            raise RunFolderError(f"{self.path} holds a {SWEEP_FILE} that is not a jaxdigits sweep's; use a new --out")
        if info.get("format_version") != SWEEP_FORMAT_VERSION:
            raise RunFolderError(
                f"{self.sweep_path}: format version {info.get('format_version')!r}; this jaxdigits "
                f"reads version {SWEEP_FORMAT_VERSION}; use a new --out"
            )
        return info

    def saved_grid(self):
        """The ``SweepGrid`` of the sweep in this folder, or ``None`` when it holds none."""
        from jaxdigits.sweep import SweepGrid

        info = self._read_sweep_file() if self.path.is_dir() else None
        return SweepGrid.from_dict(info["grid"]) if info is not None else None

    def finished_count(self) -> int:
        """How many configurations ``results.jsonl`` holds (readable lines)."""
        return len({r["id"] for r in read_results(self.results_path)[0]})

    def open(self, grid, configs: Sequence[TrainConfig], fingerprint: dict, overwrite: bool = False) -> dict[str, dict]:
        """Claim the folder for this sweep (or resume it); return the finished records by id.

        ``fingerprint`` is ``checkpoint.describe_data`` of the training data. Refuses a folder
        holding a training run or other files, a sweep over other data, and a sweep with
        configurations this grid lacks (a grid that grew resumes). ``overwrite`` starts an
        existing sweep over.
        """
        from jaxdigits.sweep import config_id  # sweep imports this module lazily

        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: --out must be a folder, and this is a file")
        ids = [config_id(c) for c in configs]
        info = self._read_sweep_file()
        if info is None and self.path.is_dir():
            training = [name for name in RUN_FILES if (self.path / name).exists()]
            if training:
                raise RunFolderError(
                    f"{self.path} holds a training run ({training[0]}), not a sweep; give the sweep a new --out"
                )
            others = sorted(p.name for p in self.path.iterdir() if not p.name.startswith("."))
            if others:
                raise RunFolderError(
                    f"{self.path} is not empty and holds no sweep ({', '.join(others[:3])}); "
                    "give the sweep a new or empty --out"
                )
        if info is not None and overwrite:
            self.results_path.unlink(missing_ok=True)
            info = None
        if info is not None:
            if info.get("data") != fingerprint:
                saved = info.get("data") or {}
                raise RunFolderError(
                    f"{self.path} holds a sweep trained on other data ({saved.get('name')}, "
                    f"{saved.get('train_examples')} training images, sha256 {str(saved.get('sha256'))[:12]}); "
                    "use a new --out or --overwrite"
                )
            missing = [i for i in info.get("config_ids", []) if i not in set(ids)]
            if missing:
                raise RunFolderError(
                    f"{self.path} holds a different sweep: {len(missing)} of its configurations are not in "
                    "this grid; to resume, give its grid (or a larger one, see its sweep.json), or use a new "
                    "--out or --overwrite"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.sweep_path,
            {
                "format": SWEEP_FORMAT,
                "format_version": SWEEP_FORMAT_VERSION,
                "grid": grid.to_dict(),
                "config_ids": ids,
                "data": fingerprint,
                "environment": environment_info(),
            },
        )
        records, problems = read_results(self.results_path)
        if problems:
            for problem in problems:
                warnings.warn(problem, ResultsWarning, stacklevel=3)
            # Rewrite without the bad lines, so that appends start on a line of their own.
            write_atomic(self.results_path, "".join(json.dumps(r) + "\n" for r in records).encode())
        wanted = set(ids)
        return {r["id"]: r for r in records if r["id"] in wanted}

    def append(self, records: Iterable[dict]) -> None:
        """Append ``records``, one JSON line each, and make them durable before returning."""
        text = "".join(json.dumps(_json_safe(r)) + "\n" for r in records)
        with open(self.results_path, "ab") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())


def sizes_label(record_or_config) -> str:
    """``784-16-16-10`` for a record (``hidden``) or a ``TrainConfig`` (``sizes``)."""
    if isinstance(record_or_config, TrainConfig):
        sizes = record_or_config.sizes
    else:
        sizes = (784, *record_or_config["hidden"], 10)
    return "-".join(str(s) for s in sizes)


def group_label(number: int, total: int, group: Sequence[TrainConfig]) -> str:
    """The progress bar's description of the group being trained."""
    return f"group {number}/{total} {sizes_label(group[0])} x{len(group)}"


class _Progress:
    """A tqdm bar over configurations (drawn only on a terminal); the postfix shows the running
    group's epoch, and a line per finished group is printed (in logs too)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, unit="config", desc="sweep", disable=None if enabled else True,
                        dynamic_ncols=True, leave=False)

    def set_description(self, text: str) -> None:
        self.bar.set_description_str(text)

    def epoch(self, epoch: int, epochs: int) -> None:
        self.bar.set_postfix_str(f"epoch {epoch}/{epochs}")

    def update(self, count: int) -> None:
        self.bar.update(count)

    def group_done(self, label: str, records: Sequence[dict]) -> None:
        """Print one line for a finished group: its time and its best test accuracy."""
        if not self.enabled:
            return
        finished = [r for r in records if r.get("test_accuracy") is not None]
        best = max(finished, key=lambda r: r["test_accuracy"]) if finished else None
        diverged = sum(bool(r.get("diverged")) for r in records)
        line = f"{label}: {records[0]['group_seconds']:.1f} s"
        if best is not None:
            line += f", best test accuracy {100 * best['test_accuracy']:.2f}% (lr {best['lr']:g}, seed {best['seed']})"
        self.bar.write(line + (f", {diverged} diverged" if diverged else ""), file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def progress_bar(total: int, initial: int, enabled: bool = True) -> _Progress:
    """A progress bar over a sweep's ``total`` configurations, ``initial`` of them done."""
    return _Progress(total, initial, enabled)


VARYING_COLUMNS = ("activation", "cost", "optimizer", "batch_size", "epochs", "l2")


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _sort_key(record: dict):
    accuracy = record.get("test_accuracy")
    return (accuracy is None, -(accuracy or 0.0))


def format_table(records: Sequence[dict], limit: int | None = None) -> str:
    """A text table of ``records`` sorted by final test accuracy, best first.

    Shows the hidden shape, rate and seed, any other axis that varies, the final and best test
    accuracy (%), the final training accuracy (%), the final cost and whether it diverged.
    """
    records = sorted(records, key=_sort_key)
    varying = [c for c in VARYING_COLUMNS if len({json.dumps(r.get(c)) for r in records}) > 1]
    header = ["#", "hidden", "lr", "seed", *varying, "test %", "best %", "train %", "cost", "status"]
    rows = []
    for rank, r in enumerate(records[:limit] if limit else records, 1):
        status = f"diverged@{r['diverged_epoch']}" if r.get("diverged") else "ok"
        cost = "-" if r.get("final_cost") is None else f"{r['final_cost']:.4f}"
        rows.append(
            [str(rank), ",".join(map(str, r["hidden"])) or "-", f"{r['lr']:g}", str(r["seed"]),
             *(str(r.get(c)) for c in varying),
             _percent(r.get("test_accuracy")), _percent(r.get("best_test_accuracy")),
             _percent(r.get("train_accuracy")), cost, status]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    if limit and len(records) > limit:
        lines.append(f"... and {len(records) - limit} more")
    return "\n".join(lines)


SUMMARY_METRICS = ("test_accuracy", "best_test_accuracy", "train_accuracy")


def aggregate(records: Sequence[dict], by: Sequence[str] = ("hidden",)) -> list[dict]:
    """One row per distinct value of the ``by`` fields (in order of first appearance), e.g. over
    the seeds of each hidden shape: ``runs``, ``diverged`` (how many), and for each of
    ``test_accuracy``, ``best_test_accuracy`` and ``train_accuracy`` its ``_mean``, ``_std``
    (sample standard deviation; 0 for one run), ``_min`` and ``_max`` over the runs that have it.
    """
    rows: dict[str, dict] = {}
    for record in records:
        key = json.dumps([record[name] for name in by])
        row = rows.setdefault(key, {**{name: record[name] for name in by}, "runs": 0, "diverged": 0, "_values": {}})
        row["runs"] += 1
        row["diverged"] += bool(record.get("diverged"))
        for metric in SUMMARY_METRICS:
            if record.get(metric) is not None:
                row["_values"].setdefault(metric, []).append(record[metric])
    for row in rows.values():
        values = row.pop("_values")
        for metric in SUMMARY_METRICS:
            v = values.get(metric, [])
            row[f"{metric}_mean"] = statistics.fmean(v) if v else None
            row[f"{metric}_std"] = statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)
            row[f"{metric}_min"] = min(v) if v else None
            row[f"{metric}_max"] = max(v) if v else None
    return list(rows.values())
