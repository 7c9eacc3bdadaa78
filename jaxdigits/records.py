"""One record per run: the same schema for ``train``'s ``run.json`` and each line of a sweep's
``results.jsonl``, how a run ended (``ok``, ``diverged``, ``stalled``), and tables of records.

A record is flat: the config fields under their ``TrainConfig`` names (``hidden``, ``lr``,
``seed``, ...), then ``id``, ``status``, the final ``train_cost`` (the cost alone) and
``train_objective`` (with ``l2`` and the penalty, which training minimises), ``train_accuracy`` and
``test_accuracy``, ``best_test_accuracy`` and ``best_epoch``, the per-epoch ``train_cost_curve``
and ``test_accuracy_curve``; with a validation split the validation figures and what validation
chose (``selected_epoch``, ``selected_validation_accuracy``, ``selected_test_accuracy``: see
``validation_fields``); ``epochs_completed``, ``diverged_epoch``, ``seconds``, and how it trained
(group size, devices, examples per split). A history entry is ``driver``'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import types
from typing import Any, Sequence

from jaxdigits.core.config import FIELDS, TrainConfig, coerce
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.errors import ConfigError, JaxdigitsError
from jaxdigits.core.metrics import STATUSES

def config_id(config: TrainConfig) -> str:
    """A stable 16-hex-digit name for a configuration (same config, same id, any run). Your own
    cost, optimizer or penalty counts by its code as well as its name (``piece_digest``), so a
    folder resumed with another function of the same name trains it anew."""
    return hashlib.sha256(json.dumps({**config.to_dict(), **piece_codes(config)}, sort_keys=True).encode()).hexdigest()[:16]


PIECES = ("cost", "optimizer", "penalty")


def piece_codes(config: TrainConfig) -> dict[str, str]:
    """``{"cost_code": digest, ...}`` for each of your own pieces in ``config`` (none for names)."""
    return {f"{name}_code": piece_digest(getattr(config, name)) for name in PIECES
            if getattr(config, name) is not None and not isinstance(getattr(config, name), str)}


def piece_digest(piece: Any) -> str:
    """A digest of a user's function (a cost's ``per_example`` and ``output``) that is the same in
    every process: its bytecode, constants, names and the plain values it closes over."""
    digest = hashlib.sha256(str(getattr(piece, "output", "")).encode())
    _digest_value(getattr(piece, "per_example", piece), digest, depth=0)
    return digest.hexdigest()[:16]


def _contents(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not yet filled
        return None


def _digest_value(value: Any, digest, depth: int) -> None:
    code = getattr(value, "__code__", value if isinstance(value, types.CodeType) else None)
    if depth > 8 or value is None or isinstance(value, (bool, int, float, str, bytes)):
        digest.update(repr(value).encode())
    elif isinstance(value, (tuple, list)):
        for item in value:
            _digest_value(item, digest, depth + 1)
    elif code is not None:
        digest.update(code.co_code + repr((code.co_names, code.co_varnames)).encode())
        _digest_value(code.co_consts, digest, depth + 1)
        _digest_value([_contents(cell) for cell in getattr(value, "__closure__", None) or ()], digest, depth + 1)
    else:  # an object whose repr may hold a memory address: its type stands for it
        digest.update(type(value).__qualname__.encode())


def run_record(config: TrainConfig, history: Sequence[dict], status: str, **extra: Any) -> dict:
    """The record of one run from its config and per-epoch history (see the module docstring)."""
    finished = [h for h in history if not h.get("diverged")]
    tests = [h.get("test_accuracy") for h in finished]
    measured = [i for i, t in enumerate(tests) if t is not None]  # a search never reads the test set
    best = max(measured, key=tests.__getitem__) if measured else None
    last = finished[-1] if finished else {}
    diverged = next((h["epoch"] for h in history if h.get("diverged")), None)
    return {
        **config.to_dict(),
        **piece_codes(config),
        "id": config_id(config),
        "status": status,
        "train_cost": last.get("train_cost"),
        "train_objective": last.get("train_objective", last.get("train_cost")),
        "train_accuracy": last.get("train_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
        "best_test_accuracy": tests[best] if best is not None else None,
        "best_epoch": best + 1 if best is not None else None,
        "train_cost_curve": [h["train_cost"] for h in finished],
        "test_accuracy_curve": tests,
        **validation_fields(config, finished),
        "epochs_completed": len(finished),
        "diverged_epoch": diverged,
        "seconds": sum(h.get("seconds", 0.0) for h in history),
        **extra,
    }


def validation_fields(config: TrainConfig, finished: Sequence[dict]) -> dict:
    """What validation chose: ``selected_epoch`` (the best validation epoch with ``select="best"``,
    else the last), its ``selected_validation_accuracy`` and ``selected_test_accuracy`` (the test
    figure a run reports), and the validation curves; ``None`` and empty without a split."""
    scores = [h.get("validation_accuracy") for h in finished]
    if not finished or scores[-1] is None:
        selected = finished[-1] if finished else {}
        return {"validation_accuracy": None, "best_validation_accuracy": None, "validation_accuracy_curve": [],
                "validation_cost_curve": [], "selected_epoch": selected.get("epoch"),
                "selected_validation_accuracy": None, "selected_test_accuracy": selected.get("test_accuracy")}
    best = max(range(len(scores)), key=scores.__getitem__)
    selected = finished[best] if config.select == "best" else finished[-1]
    return {
        "validation_accuracy": scores[-1], "best_validation_accuracy": scores[best], "validation_accuracy_curve": scores,
        "validation_cost_curve": [h.get("validation_cost") for h in finished], "selected_epoch": selected["epoch"],
        "selected_validation_accuracy": selected["validation_accuracy"], "selected_test_accuracy": selected.get("test_accuracy"),
    }


def ranking_metric(records: Sequence[dict]) -> str:
    """What a set of records is ranked on: ``selected_validation_accuracy`` when every finished
    one has a validation split (selection never reads the test set), else ``test_accuracy``."""
    finished = [r for r in records if r.get("status") == "ok"]
    if finished and all(r.get("selected_validation_accuracy") is not None for r in finished):
        return "selected_validation_accuracy"
    return "test_accuracy"


def metric_label(metric: str) -> str:
    """``validation accuracy`` or ``test accuracy``: what a ranking says it used."""
    return "validation accuracy" if metric.startswith("selected_validation") else "test accuracy"


def record_config(record: dict) -> TrainConfig:
    """The ``TrainConfig`` a record describes (named costs and optimizers only)."""
    return TrainConfig.from_dict({name: record[name] for name in FIELDS if name in record})


def sizes_label(hidden: Sequence[int], inputs: int, classes: int) -> str:
    """``784-16-16-10`` for hidden widths ``[16, 16]`` on 784 inputs and 10 classes."""
    return "-".join(str(s) for s in (inputs, *hidden, classes))


def network_label(config: TrainConfig, data: Dataset) -> str:
    """``config``'s network on ``data`` as its sizes, ``784-16-16-10``."""
    return sizes_label(config.hidden, data.inputs, data.num_classes)


VARYING_COLUMNS = tuple(name for name in FIELDS if name not in ("hidden", "lr", "seed"))


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def ranked(records: Sequence[dict]) -> list[dict]:
    """``records`` best first by ``ranking_metric`` (stalled and diverged runs last)."""
    metric = ranking_metric(records)

    def key(record: dict):
        value = record.get(metric) if record.get("status") == "ok" else None
        return (value is None, -(value or 0.0))

    return sorted(records, key=key)


def format_table(records: Sequence[dict], limit: int | None = None) -> str:
    """A text table of ``records``, best first by validation accuracy where every run has a
    split, else by final test accuracy (stalled and diverged runs last): hidden shape, rate,
    seed, any other field that varies, the selected epoch's validation accuracy (%) where there
    is one, final and best test accuracy (%), final training accuracy (%), final cost, status."""
    metric = ranking_metric(records)
    records = ranked(records)
    validated = metric != "test_accuracy"
    varying = [c for c in VARYING_COLUMNS if len({json.dumps(r.get(c)) for r in records}) > 1]
    header = ["#", "hidden", "lr", "seed", *varying, *(["val %"] if validated else []), "test %", "best %", "train %",
              "train cost", "status"]
    rows = []
    for rank, r in enumerate(records[:limit] if limit else records, 1):
        status = f"diverged@{r['diverged_epoch']}" if r.get("status") == "diverged" else r.get("status", "ok")
        cost = "-" if r.get("train_cost") is None else f"{r['train_cost']:.4f}"
        rows.append(
            [str(rank), ",".join(map(str, r["hidden"])) or "-", f"{r['lr']:g}", str(r["seed"]),
             *(str(r.get(c)) for c in varying),
             *([_percent(r.get("selected_validation_accuracy"))] if validated else []),
             _percent(r.get("selected_test_accuracy") if validated else r.get("test_accuracy")), _percent(r.get("best_test_accuracy")),
             _percent(r.get("train_accuracy")), cost, status]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    if limit and len(records) > limit:
        lines.append(f"... and {len(records) - limit} more")
    lines.append(f"(ranked by {metric_label(metric)}" + ("; test % is the selected epoch's)" if validated else ")"))
    return "\n".join(lines)


SUMMARY_METRICS = ("test_accuracy", "best_test_accuracy", "train_accuracy", "selected_validation_accuracy",
                   "selected_test_accuracy")


def aggregate(records: Sequence[dict], by: Sequence[str] = ("hidden",)) -> list[dict]:
    """One row per distinct value of the ``by`` fields (in order of first appearance), e.g. over
    the seeds of each hidden shape: ``runs``, how many ended ``diverged`` and ``stalled``, and for
    each of ``test_accuracy``, ``best_test_accuracy`` and ``train_accuracy`` its ``_mean``,
    ``_std`` (sample standard deviation; 0 for one run), ``_min`` and ``_max`` over the runs that
    have it.
    """
    rows: dict[str, dict] = {}
    for record in records:
        key = json.dumps([record[name] for name in by])
        row = rows.setdefault(key, {**{name: record[name] for name in by}, "runs": 0, "diverged": 0, "stalled": 0, "_values": {}})
        row["runs"] += 1
        row["diverged"] += record.get("status") == "diverged"
        row["stalled"] += record.get("status") == "stalled"
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


# --- checking a stored record -----------------------------------------------------------------


class RecordError(JaxdigitsError):
    """A stored result record (a line of a sweep's ``results.jsonl``, a search trial's record)
    that breaks the record schema; the message names where it is, the field and what to do."""


ACCURACY, COST, SECONDS, EPOCH, COUNT, FLAG = "accuracy", "cost", "seconds", "epoch", "count", "flag"
# Every field ``run_record`` writes (besides the config fields), with its kind; ``[kind]`` is a
# per-epoch curve of that kind (at most ``epochs`` entries), ``None`` allowed where a number may be.
RESULT_FIELDS: dict[str, Any] = {
    "train_cost": COST, "train_accuracy": ACCURACY, "test_accuracy": ACCURACY, "best_test_accuracy": ACCURACY,
    "best_epoch": EPOCH, "train_cost_curve": [COST], "test_accuracy_curve": [ACCURACY],
    "validation_accuracy": ACCURACY, "best_validation_accuracy": ACCURACY, "validation_accuracy_curve": [ACCURACY],
    "validation_cost_curve": [COST], "selected_epoch": EPOCH, "selected_validation_accuracy": ACCURACY,
    "selected_test_accuracy": ACCURACY, "epochs_completed": EPOCH, "diverged_epoch": EPOCH, "seconds": SECONDS,
}
# Fields a record may carry besides (how it trained); any other field is ignored.
EXTRA_FIELDS: dict[str, Any] = {
    "group_size": COUNT, "group_seconds": SECONDS, "compile_seconds": SECONDS, "devices": COUNT, "exact": FLAG,
    "train_examples": COUNT, "validation_examples": COUNT, "test_examples": COUNT, "trial": COUNT, "pruned": FLAG,
    "sizes": [COUNT], "train_objective": COST,
}
COUNT_LIMIT = 2**53  # beyond this a JSON number is no longer an exact integer
KIND_TEXT = {ACCURACY: "an accuracy (a number from 0 to 1)", COST: "a finite number", SECONDS: "a number of seconds (finite, >= 0)",
             EPOCH: "a whole number of epochs (0 to the record's epochs)", COUNT: "a whole number >= 0", FLAG: "true or false"}


def _value_fits(kind: str, value: Any, epochs: int) -> bool:
    """Whether ``value`` is of ``kind`` (``None`` always is: a figure a run did not measure)."""
    if value is None:
        return True
    if kind == FLAG:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if kind in (EPOCH, COUNT):
        return isinstance(value, int) and 0 <= value <= (epochs if kind == EPOCH else COUNT_LIMIT)
    return {ACCURACY: 0 <= value <= 1, SECONDS: value >= 0}.get(kind, True)


def _field_problem(name: str, kind: Any, value: Any, epochs: int) -> str | None:
    """What is wrong with field ``name`` of kind ``kind`` (see ``RESULT_FIELDS``), or ``None``."""
    if isinstance(kind, list):
        if not isinstance(value, list) and not (value is None and name == "sizes"):
            return f"{name} is not a list"
        if name != "sizes" and len(value) > epochs:
            return f"{name} has {len(value)} entries, more than the record's {epochs} epochs"
        bad = next((v for v in value or () if not _value_fits(kind[0], v, epochs) or (v is None and name == "sizes")), _FITS)
        return None if bad is _FITS else f"{name} holds {_shown(bad)}, which is not {KIND_TEXT[kind[0]]}"
    if not _value_fits(kind, value, epochs):
        return f"{name} is {_shown(value)}, not {KIND_TEXT[kind]}"
    return None


_FITS = object()


def _shown(value: Any) -> str:
    """``value`` as a message shows it: JSON, cut to 40 characters."""
    text = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _config_problem(record: dict) -> str | None:
    """The first config field of ``record`` that is missing or not a valid value for it."""
    for name, setting in FIELDS.items():
        if name not in record:
            return f"{name} is missing"
        value = record[name]
        if setting.kind in ("int", "float", "widths"):
            try:
                coerce(name, value)
            except ConfigError as exc:
                return f"{name} {str(exc).removeprefix(f'{name}: ')}"
        elif not (isinstance(value, str) or (value is None and setting.kind == "function")):
            return f"{name} is {_shown(value)}, not a name"
    return None


def record_id(record: dict) -> str:
    """The id of the configuration a record's config fields (and your own pieces' codes)
    describe (``config_id`` of it)."""
    codes = {f"{name}_code": record[f"{name}_code"] for name in PIECES if f"{name}_code" in record}
    return hashlib.sha256(json.dumps({**{name: record[name] for name in FIELDS}, **codes}, sort_keys=True).encode()).hexdigest()[:16]


def record_problem(record: Any, configurations: dict[str, dict | None] | None = None) -> str | None:
    """What is wrong with a stored record, as ``"<field> <what>"``, or ``None`` when nothing is.

    Every field of the schema is checked: the config fields as ``TrainConfig`` checks them, the
    status, every accuracy in [0, 1], every number finite, epochs within the run's, curves no
    longer than its epochs; the ``id`` must be that of the config fields (an edited field breaks
    it). With ``configurations`` (config id -> that configuration's fields, or ``None`` where not
    known), the record's configuration must be one of them, and a field that differs is named.
    """
    if not isinstance(record, dict):
        return f"record is {_shown(record)}, not a JSON object"
    problem = _config_problem(record)
    if problem:
        return problem
    epochs = record["epochs"]
    if not (isinstance(record.get("id"), str) and len(record["id"]) == 16 and all(c in "0123456789abcdef" for c in record["id"])):
        return f"id is {_shown(record.get('id'))}, not a configuration id (16 hex digits)"
    if record.get("status") not in STATUSES:
        return f"status is {_shown(record.get('status'))}, not one of {', '.join(STATUSES)}"
    for name, kind in RESULT_FIELDS.items():
        if name not in record:
            return f"{name} is missing"
        problem = _field_problem(name, kind, record[name], epochs)
        if problem:
            return problem
    for name, kind in EXTRA_FIELDS.items():
        problem = _field_problem(name, kind, record[name], epochs) if name in record else None
        if problem:
            return problem
    return _identity_problem(record, configurations)


def _identity_problem(record: dict, configurations: dict[str, dict | None] | None) -> str | None:
    """Whether ``record``'s id is its config fields' and, given ``configurations``, one of them."""
    if configurations is not None:
        if record["id"] not in configurations:
            return f"id {record['id']} is not one of the sweep's configurations"
        expected = configurations[record["id"]] or {}
        for name, value in expected.items():
            if record[name] != value:  # (0 and 0.0 compare equal here; the id below tells them apart)
                return f"{name} {_shown(record[name])} is not its configuration's {_shown(value)}"
    if record_id(record) != record["id"]:
        return f"id {record['id']} is not the id of the record's config fields (one of them was edited)"
    return None
