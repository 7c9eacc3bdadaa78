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
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from jaxdigits.core.config import FIELDS, SweepGrid, TrainConfig
from jaxdigits.core.errors import ConfigError, RunFolderError
from jaxdigits.files import SWEEP_MARKERS, append_lines, claim_folder, environment_info, check_regular_file, to_json, write_atomic, write_json
from jaxdigits.core.metrics import STATUSES
from jaxdigits.records import config_id

SWEEP_FORMAT = "jaxdigits-sweep"
SWEEP_FORMAT_VERSION = 3
SWEEP_FILE, RESULTS_FILE = SWEEP_MARKERS


class ResultsWarning(UserWarning):
    """A problem in ``results.jsonl`` that resuming works around (the line is retrained)."""


def read_results(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """``(records, problems)`` of a ``results.jsonl``: every line that is a JSON object with an
    ``id``, and one message per line that is not (a half-written last line among them)."""
    path = Path(path)
    if not path.exists():
        return [], []
    check_regular_file(path, "sweep's results.jsonl", RunFolderError)
    try:
        raw = path.read_bytes()
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


def record_problem(record: dict, config: TrainConfig) -> str | None:
    """Why ``record`` is not a valid result of ``config`` (``None`` when it is)."""
    expected = config.to_dict()
    for name in FIELDS:
        if record.get(name) != expected[name]:
            return f"its {name} {record.get(name)!r} is not its configuration's {expected[name]!r}"
    if record.get("status") not in STATUSES:
        return f"its status {record.get('status')!r} is not one of {', '.join(STATUSES)}"
    for name in ("test_accuracy", "best_test_accuracy", "train_accuracy"):
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            return f"its {name} {value!r} is not an accuracy"
    for name in ("train_cost_curve", "test_accuracy_curve"):
        if not isinstance(record.get(name), list):
            return f"its {name} is not a list"
    return None


class SweepFolder:
    """The ``--out`` folder of a sweep: claims or resumes it, appends results to it."""

    def __init__(self, path: str | os.PathLike, grid: SweepGrid | None = None, fingerprints: dict | None = None,
                 overwrite: bool = False):
        self.path = Path(path)
        self.results_path = self.path / RESULTS_FILE
        self.sweep_path = self.path / SWEEP_FILE
        self.grid, self.fingerprints, self.overwrite = grid, fingerprints or {}, overwrite
        self.lock = None

    def _read_sweep_file(self) -> dict | None:
        if not self.sweep_path.exists():
            return None
        check_regular_file(self.sweep_path, "sweep's sweep.json", RunFolderError)
        try:
            info = json.loads(self.sweep_path.read_text())
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{self.sweep_path}: unreadable ({exc}); use a new --out") from None
        if not isinstance(info, dict) or info.get("format") != SWEEP_FORMAT:
            raise RunFolderError(f"{self.path} holds a {SWEEP_FILE} that is not a jaxdigits sweep's; use a new --out")
        if info.get("format_version") != SWEEP_FORMAT_VERSION:
            raise RunFolderError(
                f"{self.sweep_path}: format version {info.get('format_version')!r}; this jaxdigits "
                f"reads version {SWEEP_FORMAT_VERSION}; use a new --out (or --overwrite to start it over)"
            )
        if not isinstance(info.get("grid"), dict) or not isinstance(info.get("config_ids"), list) or not isinstance(info.get("data"), dict):
            raise RunFolderError(f"{self.sweep_path}: a field is missing or mistyped (grid, config_ids, data); use a new --out")
        return info

    def saved_grid(self) -> SweepGrid | None:
        """The ``SweepGrid`` of the sweep in this folder, or ``None`` when it holds none."""
        info = self._read_sweep_file() if self.path.is_dir() else None
        if info is None:
            return None
        try:
            return SweepGrid.from_dict(info["grid"])
        except ConfigError as exc:
            raise RunFolderError(f"{self.sweep_path}: its grid is invalid ({exc}); use a new --out") from None

    def finished_count(self) -> int:
        """How many configurations ``results.jsonl`` holds (readable lines)."""
        return len({r["id"] for r in read_results(self.results_path)[0]})

    def open(self, configs: Sequence[TrainConfig], fresh=None) -> dict[str, dict]:
        """Lock the folder for this sweep (``driver.Sink``) and claim (or resume) it; return the
        finished records by id.

        ``fingerprints`` maps each dataset name to ``Dataset.describe()``. Refuses a folder
        holding a training run, a sweep over other data, and a sweep with configurations this
        grid lacks (a grid that grew resumes). ``overwrite`` starts an existing sweep over.
        Records that do not match their configuration (edited, or of another version) are
        warned about and trained again.
        """
        self.lock = claim_folder(self.path, "sweep", SWEEP_MARKERS, resume=True, overwrite=self.overwrite)
        try:
            return self._open(self.grid, configs, self.fingerprints)
        except BaseException:
            self.close()
            raise

    def epoch_done(self, config, state, history, best) -> None:
        pass  # a sweep keeps finished configurations only

    def finish(self, results) -> None:
        """Append a finished group's records."""
        self.append(r.record for r in results)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _open(self, grid: SweepGrid, configs: Sequence[TrainConfig], fingerprints: dict) -> dict[str, dict]:
        ids = [config_id(c) for c in configs]
        info = self._read_sweep_file()
        if info is not None:
            if info["data"] != fingerprints:
                saved = ", ".join(f"{name} ({d.get('train_examples')} training images, sha256 {str(d.get('sha256'))[:12]})"
                                  for name, d in info["data"].items() if isinstance(d, dict))
                raise RunFolderError(
                    f"{self.path} holds a sweep trained on other data ({saved}); use a new --out or --overwrite"
                )
            missing = [i for i in info["config_ids"] if i not in set(ids)]
            if missing:
                raise RunFolderError(
                    f"{self.path} holds a different sweep: {len(missing)} of its configurations are not in "
                    "this grid; to resume, give its grid (or a larger one, see its sweep.json), or use a new "
                    "--out or --overwrite"
                )
        write_json(self.sweep_path, {
            "format": SWEEP_FORMAT, "format_version": SWEEP_FORMAT_VERSION, "grid": grid.to_dict(),
            "config_ids": ids, "data": fingerprints, "environment": environment_info(),
        })
        records, problems = read_results(self.results_path)
        by_id = dict(zip(ids, configs))
        kept = []
        for record in records:
            config = by_id.get(record["id"])
            problem = record_problem(record, config) if config is not None else None
            if problem:
                problems.append(f"{self.results_path}: the record of {record['id']} is invalid ({problem}); "
                                "its configuration will be trained again")
            else:
                kept.append(record)
        if problems:
            for problem in problems:
                warnings.warn(problem, ResultsWarning, stacklevel=3)
            # Rewrite without the bad lines, so that appends start on a line of their own.
            write_atomic(self.results_path, "".join(to_json(r) + "\n" for r in kept).encode())
        return {r["id"]: r for r in kept if r["id"] in by_id}

    def append(self, records: Iterable[dict]) -> None:
        """Append ``records``, one JSON line each, and make them durable before returning."""
        append_lines(self.results_path, records)
