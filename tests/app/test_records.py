"""Records (``jaxdigits.records``): every config field has one name in the flags, ``run.json``,
the sweep's result lines and the records, with the same values."""

from __future__ import annotations

import json

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits.records import validation_fields
from tests.conftest import synthetic_dataset


def test_every_config_field_has_one_name_everywhere(tmp_path):
    fields = set(jd.FIELDS)
    cli_fields = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert fields - {"penalty"} <= cli_fields  # penalty is a function: Python only
    sweep_parser = cli.build_parser()._subparsers._group_actions[0].choices["sweep"]
    assert fields - {"penalty"} <= {a.dest for a in sweep_parser._actions}
    data = synthetic_dataset(60, 20)
    run = jd.train(jd.TrainConfig(epochs=1), data, out_dir=tmp_path / "run")
    swept = jd.sweep(data=data, epochs=1, lr=[3.0], out_dir=tmp_path / "sweep")
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    line = json.loads((tmp_path / "sweep" / "results.jsonl").read_text().splitlines()[0])
    assert fields <= set(run_json) and fields <= set(line)
    schema = set(run.record)
    assert schema <= set(run_json) and schema <= set(line) and schema <= set(swept.records[0])
    for name in jd.FIELDS:
        assert run_json[name] == line[name], name


def test_validation_fields_select_from_the_history_by_hand():
    history = [{"epoch": 1, "validation_accuracy": 0.5, "test_accuracy": 0.4},
               {"epoch": 2, "validation_accuracy": 0.7, "test_accuracy": 0.6},
               {"epoch": 3, "validation_accuracy": 0.7, "test_accuracy": 0.9},
               {"epoch": 4, "validation_accuracy": 0.6, "test_accuracy": 0.95}]
    best = validation_fields(jd.TrainConfig(select="best"), history)
    assert (best["selected_epoch"], best["selected_validation_accuracy"], best["selected_test_accuracy"]) == (2, 0.7, 0.6)
    last = validation_fields(jd.TrainConfig(select="last"), history)
    assert (last["selected_epoch"], last["selected_test_accuracy"]) == (4, 0.95)
