"""One record per run: the same schema for ``train``'s ``run.json`` and each line of a sweep's
``results.jsonl``, how a run ended (``ok``, ``diverged``, ``stalled``), and tables of records.

A record is flat: the config fields under their ``TrainConfig`` names (``hidden``, ``lr``,
``seed``, ...), then ``id``, ``status``, the final ``train_cost``, ``train_accuracy`` and
``test_accuracy``, ``best_test_accuracy`` and ``best_epoch``, the per-epoch ``train_cost_curve``
and ``test_accuracy_curve``, ``epochs_completed``, ``diverged_epoch`` and ``seconds``. A history
entry (one per epoch) has ``epoch``, ``train_cost``, ``test_accuracy``, ``seconds`` and, where
measured, ``train_accuracy``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from typing import Any, Sequence

from jaxdigits.core.config import FIELDS, TrainConfig
from jaxdigits.core.dataset import Dataset

def config_id(config: TrainConfig) -> str:
    """A stable 16-hex-digit name for a configuration (same config, same id, any run)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def run_record(config: TrainConfig, history: Sequence[dict], status: str, **extra: Any) -> dict:
    """The record of one run from its config and per-epoch history (see the module docstring)."""
    finished = [h for h in history if not h.get("diverged")]
    tests = [h["test_accuracy"] for h in finished]
    best = max(range(len(tests)), key=tests.__getitem__) if tests else None
    last = finished[-1] if finished else {}
    diverged = next((h["epoch"] for h in history if h.get("diverged")), None)
    return {
        **config.to_dict(),
        "id": config_id(config),
        "status": status,
        "train_cost": last.get("train_cost"),
        "train_accuracy": last.get("train_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
        "best_test_accuracy": tests[best] if tests else None,
        "best_epoch": best + 1 if tests else None,
        "train_cost_curve": [h["train_cost"] for h in finished],
        "test_accuracy_curve": tests,
        "epochs_completed": len(finished),
        "diverged_epoch": diverged,
        "seconds": sum(h.get("seconds", 0.0) for h in history),
        **extra,
    }


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


def _sort_key(record: dict):
    accuracy = record.get("test_accuracy") if record.get("status") == "ok" else None
    return (accuracy is None, -(record.get("test_accuracy") or 0.0))


def format_table(records: Sequence[dict], limit: int | None = None) -> str:
    """A text table of ``records``, best final test accuracy first (stalled and diverged runs
    last): hidden shape, rate, seed, any other field that varies, final and best test accuracy
    (%), final training accuracy (%), final cost and status."""
    records = sorted(records, key=_sort_key)
    varying = [c for c in VARYING_COLUMNS if len({json.dumps(r.get(c)) for r in records}) > 1]
    header = ["#", "hidden", "lr", "seed", *varying, "test %", "best %", "train %", "train cost", "status"]
    rows = []
    for rank, r in enumerate(records[:limit] if limit else records, 1):
        status = f"diverged@{r['diverged_epoch']}" if r.get("status") == "diverged" else r.get("status", "ok")
        cost = "-" if r.get("train_cost") is None else f"{r['train_cost']:.4f}"
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
