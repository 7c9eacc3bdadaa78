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
import statistics
import types
from typing import Any, Sequence

from jaxdigits.core.config import FIELDS, TrainConfig
from jaxdigits.core.dataset import Dataset

def config_id(config: TrainConfig) -> str:
    """A stable 16-hex-digit name for a configuration (same config, same id, any run). Your own
    cost, optimizer or penalty counts by its code as well as its name (``piece_digest``), so a
    folder resumed with another function of the same name trains it anew."""
    values = config.to_dict()
    values.update({f"{name}_code": piece_digest(getattr(config, name)) for name in ("cost", "optimizer", "penalty")
                   if getattr(config, name) is not None and not isinstance(getattr(config, name), str)})
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


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
