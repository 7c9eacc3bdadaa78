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

Every line is checked before it is used (``scan_results``, for resuming and ``sweep-report``
alike): each field against the record schema and its range (``records.record_problem``), the
record's configuration against the sweep's. Resuming warns about a bad line, drops it and trains
its configuration again; ``sweep-report`` refuses it in one line. A configuration recorded on
several lines counts once (its last line), read in one pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from jaxdigits.core.config import SweepGrid, TrainConfig
from jaxdigits.core.errors import ConfigError, RunFolderError
from jaxdigits.files import SWEEP_MARKERS, append_lines, claim_folder, environment_info, check_regular_file, to_json, write_atomic, write_json
from jaxdigits.interrupts import deferred
from jaxdigits.records import config_id, record_problem

SWEEP_FORMAT = "jaxdigits-sweep"
SWEEP_FORMAT_VERSION = 3
SWEEP_FILE, RESULTS_FILE = SWEEP_MARKERS


class ResultsWarning(UserWarning):
    """A problem in ``results.jsonl`` that resuming works around (the line is retrained)."""


class Results(NamedTuple):
    """What a ``results.jsonl`` holds: the valid records by config id (the last line of each
    configuration: a dict, so any number of duplicates costs linear time), each refused line as
    ``(line number, problem)``, whether the last line is half-written, and how many valid lines
    repeat a configuration already seen."""

    records: dict[str, dict]
    refused: list[tuple[int, str]]
    unfinished: bool
    duplicates: int

    def messages(self, path: Path, advice: str) -> list[str]:
        """One line per problem, naming ``path`` and the line; ``advice`` says what happens to a
        refused line."""
        lines = [f"{path}, line {number}: {problem}; {advice}" for number, problem in self.refused]
        if self.unfinished:
            lines.append(f"{path}: the last line is half-written (the sweep is writing it, or was stopped while "
                         "writing it); ignoring it, its configuration counts as not finished")
        if self.duplicates:
            lines.append(f"{path}: {self.duplicates} lines repeat a configuration of an earlier line; each "
                         "configuration counts once, as its last line says")
        return lines


def scan_results(path: str | os.PathLike, configurations: dict[str, dict | None] | None = None) -> Results:
    """Read and check every line of a ``results.jsonl`` before anything uses it: each must be a
    record that ``records.record_problem`` finds nothing wrong with (with ``configurations``,
    config id -> fields, one of the sweep's configurations). A last line without its newline is
    half-written (a write in progress, or a hard kill) and set aside."""
    path = Path(path)
    if not path.exists():
        return Results({}, [], False, 0)
    check_regular_file(path, "sweep's results.jsonl", RunFolderError)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot read results ({exc.strerror or exc})") from None
    records: dict[str, dict] = {}
    refused, duplicates = [], 0
    judged: dict[bytes, tuple[str | None, dict | None]] = {}  # a line seen before is not parsed again
    for number, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        digest = hashlib.blake2b(line, digest_size=16).digest()
        if digest not in judged:
            judged[digest] = _judge_line(line, configurations)
        problem, record = judged[digest]
        if problem:
            refused.append((number, problem))
            continue
        duplicates += record["id"] in records
        records[record["id"]] = record
    return Results(records, refused, bool(lines[-1].strip()), duplicates)


def _judge_line(line: bytes, configurations: dict[str, dict | None] | None) -> tuple[str | None, dict | None]:
    """``(problem, record)`` of one line: what is wrong with it (``None`` if nothing), the record."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return "the line is not a JSON record", None
    return record_problem(record, configurations), record


def read_results(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """``(records, problems)`` of a ``results.jsonl``: each configuration's valid record (see
    ``scan_results``), and one message per line refused or set aside."""
    found = scan_results(path)
    return list(found.records.values()), found.messages(Path(path), "ignoring the line")


NEW_OUT = "use a new --out"
RETRAINED = "ignoring the line; its configuration, if the grid has it, is trained again"


class SweepFolder:
    """The ``--out`` folder of a sweep: claims or resumes it, appends results to it."""

    def __init__(self, path: str | os.PathLike, grid: SweepGrid | None = None, fingerprints: dict | None = None,
                 overwrite: bool = False):
        self.path = Path(path)
        self.results_path = self.path / RESULTS_FILE
        self.sweep_path = self.path / SWEEP_FILE
        self.grid, self.fingerprints, self.overwrite = grid, fingerprints or {}, overwrite
        self.lock = None

    def _read_sweep_file(self, advice: str = NEW_OUT) -> dict | None:
        """``sweep.json``, checked (``None`` when there is none); a broken one is one line ending
        in ``advice``."""
        if not self.sweep_path.exists():
            return None
        check_regular_file(self.sweep_path, "sweep's sweep.json", RunFolderError)
        try:
            info = json.loads(self.sweep_path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise RunFolderError(f"{self.sweep_path}: unreadable ({str(exc)[:200]}); {advice}") from None
        if not isinstance(info, dict) or info.get("format") != SWEEP_FORMAT:
            raise RunFolderError(f"{self.path} holds a {SWEEP_FILE} that is not a jaxdigits sweep's; {advice}")
        if info.get("format_version") != SWEEP_FORMAT_VERSION:
            raise RunFolderError(
                f"{self.sweep_path}: format version {info.get('format_version')!r}; this jaxdigits "
                f"reads version {SWEEP_FORMAT_VERSION}; {advice}" + (" (or --overwrite to start it over)" if advice == NEW_OUT else "")
            )
        ids = info.get("config_ids")
        if (not isinstance(info.get("grid"), dict) or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
                or not isinstance(info.get("data"), dict)):
            raise RunFolderError(f"{self.sweep_path}: a field is missing or mistyped (grid, config_ids, data); {advice}")
        return info

    def configurations(self, advice: str) -> dict[str, dict | None]:
        """The sweep's configurations from ``sweep.json``: config id -> its config fields (``None``
        where the grid names your own objects, which only their names describe); a missing or
        broken ``sweep.json`` is one line ending in ``advice``."""
        info = self._read_sweep_file(advice)
        if info is None:
            raise RunFolderError(f"{self.path}: no {SWEEP_FILE} (every sweep writes one first); {advice}")
        configurations: dict[str, dict | None] = dict.fromkeys(info["config_ids"])
        try:
            configs = SweepGrid.from_dict(info["grid"]).configs()
        except ConfigError:
            return configurations
        fields = {config_id(c): c.to_dict() for c in configs}
        return {i: fields.get(i) for i in configurations}

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
        """How many configurations ``results.jsonl`` holds (valid lines, see ``scan_results``)."""
        return len(scan_results(self.results_path).records)

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
        """Append a finished group's records (a second Ctrl-C waits for the append)."""
        with deferred():
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
        found = scan_results(self.results_path, {config_id(c): c.to_dict() for c in configs})
        problems = found.messages(self.results_path, RETRAINED)
        if problems:
            for problem in problems:
                warnings.warn(problem, ResultsWarning, stacklevel=3)
            # Rewrite with the valid lines alone, once each, so that appends start on a line of their own.
            write_atomic(self.results_path, "".join(to_json(r) + "\n" for r in found.records.values()).encode())
        return found.records

    def append(self, records: Iterable[dict]) -> None:
        """Append ``records``, one JSON line each, and make them durable before returning."""
        append_lines(self.results_path, records)
