"""A sweep's ``--out`` folder (``jaxdigits.sweep_folder``): resume and a grown grid, half-written
or edited result lines, a broken ``sweep.json``, a hard kill, folders of another kind, and hostile
result lines (every field checked, duplicates read in linear time)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits.core.config import SweepGrid
from jaxdigits.core.errors import RunFolderError
from jaxdigits.sweep_folder import RESULTS_FILE, SWEEP_FILE, ResultsWarning, SweepFolder, read_results, scan_results
from tests.conftest import deadline, synthetic_dataset
from tests.helpers import DATA, REPO, assert_same_numbers, lines, one_error_line, written_sweep


def test_resume_skips_finished_configurations_and_a_grown_grid_trains_only_the_new(tmp_path):
    out = tmp_path / "sweep"
    grid = SweepGrid(hidden=[(8,), (4,)], lr=[0.3, 3.0], seed=[0], epochs=2)
    first = jd.sweep(grid, DATA, out_dir=out)
    assert first.trained == 4 and len(lines(out)) == 4
    saved = lines(out)
    assert {"hidden", "lr", "seed", "test_accuracy", "best_test_accuracy", "train_accuracy", "train_cost_curve",
            "status", "diverged_epoch", "seconds"} <= set(saved[0])
    again = jd.sweep(grid, DATA, out_dir=out)
    assert again.trained == 0 and again.resumed == 4 and again.records == first.records
    grown = jd.sweep(grid.replace(seed=[0, 1], lr=[0.3, 1.0, 3.0]), DATA, out_dir=out)
    assert grown.trained == 12 - 4 and grown.resumed == 4 and len(lines(out)) == 12
    assert len({r["id"] for r in lines(out)}) == 12
    assert json.loads((out / SWEEP_FILE).read_text())["grid"]["seed"] == [0, 1]


def test_a_half_written_last_line_is_warned_about_and_retrained(tmp_path):
    out = tmp_path / "sweep"
    grid = SweepGrid(hidden=[(8,)], lr=[0.3, 3.0], seed=[0], epochs=2)
    complete = jd.sweep(grid, DATA, out_dir=out)
    text = (out / RESULTS_FILE).read_text()
    (out / RESULTS_FILE).write_text(text[: len(text) - 40])  # killed in the middle of the last line
    assert len(read_results(out / RESULTS_FILE)[0]) == 1 and "half-written" in read_results(out / RESULTS_FILE)[1][0]
    with pytest.warns(ResultsWarning, match="half-written"):
        resumed = jd.sweep(grid, DATA, out_dir=out)
    assert resumed.trained == 1 and resumed.resumed == 1
    assert_same_numbers(resumed.records, complete.records)
    assert len(lines(out)) == 2  # the file is whole JSON lines again


def test_an_edited_record_is_retrained_not_shown_as_the_best(tmp_path):
    data = synthetic_dataset(60, 20)
    out = tmp_path / "sweep"
    first = jd.sweep(data=data, lr=[0.3, 1.0], epochs=1, out_dir=out)
    lines = (out / "results.jsonl").read_text().splitlines()
    edited = json.loads(lines[0])
    edited.update(lr=42.0, test_accuracy=0.999)
    (out / "results.jsonl").write_text(json.dumps(edited) + "\n" + lines[1] + "\n")
    with pytest.warns(jd.ResultsWarning, match="results.jsonl, line 1: lr 42.0 is not its configuration's 0.3; ignoring the line"):
        again = jd.sweep(data=data, lr=[0.3, 1.0], epochs=1, out_dir=out)
    assert again.trained == 1 and [r["lr"] for r in again.records] == [0.3, 1.0]
    assert [r["test_accuracy"] for r in again.records] == [r["test_accuracy"] for r in first.records]


@pytest.mark.parametrize("damage", ["missing grid", "mistyped ids", "not json"])
def test_a_broken_sweep_json_is_one_line(damage, tmp_path, capsys):
    data = synthetic_dataset(40, 10)
    out = tmp_path / "sweep"
    jd.sweep(data=data, lr=[1.0], epochs=1, out_dir=out)
    info = json.loads((out / "sweep.json").read_text())
    if damage == "missing grid":
        del info["grid"]
    elif damage == "mistyped ids":
        info["config_ids"] = "abc"
    (out / "sweep.json").write_text("{" if damage == "not json" else json.dumps(info))
    assert cli.main(["sweep", "--out", str(out)]) == 2
    assert str(out / "sweep.json") in one_error_line(capsys.readouterr().err, "jaxdigits sweep: error:")


def test_out_folders_of_another_kind_are_refused(tmp_path):
    grid = SweepGrid(hidden=[(4,)], lr=[1.0], seed=[0], epochs=1)
    run = tmp_path / "run"
    jd.train(jd.TrainConfig(hidden=(4,), epochs=1), DATA, out_dir=run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunFolderError, match="holds a training run"):
        jd.sweep(grid, DATA, out_dir=run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # left untouched, lock included
    # A folder of unrelated files takes the sweep beside them, and they are left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    jd.sweep(grid, DATA, out_dir=other)
    assert (other / "notes.txt").read_text() == "mine" and len(lines(other)) == 1
    assert sorted(p.name for p in other.iterdir()) == sorted(["notes.txt", RESULTS_FILE, SWEEP_FILE])
    out = tmp_path / "sweep"
    jd.sweep(grid, DATA, out_dir=out)
    with pytest.raises(RunFolderError, match="holds a different sweep"):
        jd.sweep(grid.replace(lr=[2.0]), DATA, out_dir=out)
    with pytest.raises(RunFolderError, match="trained on other data"):
        jd.sweep(grid, synthetic_dataset(100, 40, seed=1), out_dir=out)
    restarted = jd.sweep(grid.replace(lr=[2.0]), DATA, out_dir=out, overwrite=True)
    assert restarted.trained == 1 and [r["lr"] for r in lines(out)] == [2.0]
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="must be a folder"):
        jd.sweep(grid, DATA, out_dir=tmp_path / "file")


def test_a_hard_kill_loses_only_the_unfinished_group(tiny_data_dir, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "jaxdigits", "sweep", "--hidden", "8", "7", "6", "5", "4", "--lr", "1",
               "--epochs", "3", "--data-dir", str(tiny_data_dir), "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ((out / RESULTS_FILE).exists() and (out / RESULTS_FILE).read_text()) and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.05)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
    process.wait(timeout=60)
    kept, _ = read_results(out / RESULTS_FILE)
    assert 1 <= len(kept) < 5
    done = subprocess.run([sys.executable, "-m", "jaxdigits", "sweep", "--data-dir", str(tiny_data_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"5 configurations ({5 - len(kept)} trained now, {len(kept)} from before)" in done.stdout
    assert sorted(r["hidden"][0] for r in lines(out)) == [4, 5, 6, 7, 8]


# --- hostile records: every line is checked before it is used (resume and sweep-report alike) --------


def _edit(**changes):
    return lambda record: json.dumps({**record, **changes})


def _without(name):
    return lambda record: json.dumps({k: v for k, v in record.items() if k != name})


def _other_configuration(record):  # consistent in itself, but a configuration the grid lacks
    from jaxdigits.records import record_id

    edited = {**record, "lr": 0.5}
    return json.dumps({**edited, "id": record_id(edited)})


HOSTILE_LINES = {
    "accuracy -5": (_edit(test_accuracy=-5), "test_accuracy is -5, not an accuracy (a number from 0 to 1)"),
    "NaN accuracy": (_edit(test_accuracy=float("nan")), "test_accuracy is NaN, not an accuracy"),
    "infinite accuracy": (_edit(best_test_accuracy=float("inf")), "best_test_accuracy is Infinity, not an accuracy"),
    "accuracy 1e308": (_edit(train_accuracy=1e308), "train_accuracy is 1e+308, not an accuracy"),
    "accuracy as text": (_edit(test_accuracy="0.99"), "test_accuracy is \"0.99\", not an accuracy"),
    "accuracy true": (_edit(test_accuracy=True), "test_accuracy is true, not an accuracy"),
    "NaN in a curve": (_edit(train_cost_curve=[float("nan")]), "train_cost_curve holds NaN, which is not a finite number"),
    "a curve past the epochs": (_edit(test_accuracy_curve=[0.5] * 99), "test_accuracy_curve has 99 entries, more than the record's 2 epochs"),
    "an epoch past the end": (_edit(best_epoch=3), "best_epoch is 3, not a whole number of epochs (0 to the record's epochs)"),
    "negative seconds": (_edit(seconds=-1.0), "seconds is -1.0, not a number of seconds"),
    "lr 42 (not in the grid)": (_edit(lr=42.0), "lr 42.0 is not its configuration's 0.3"),
    "seed 1.5": (_edit(seed=1.5), "seed 1.5 is not an integer"),
    "a configuration of another sweep": (_other_configuration, "is not one of the sweep's configurations"),
    "an id that is no id": (_edit(id="../../etc"), "id is \"../../etc\", not a configuration id"),
    "status great": (_edit(status="great"), "status is \"great\", not one of ok, diverged, stalled"),
    "a missing field": (_without("test_accuracy_curve"), "test_accuracy_curve is missing"),
    "a missing config field": (_without("hidden"), "hidden is missing"),
    "not an object": (lambda record: "[1, 2]", "record is list, not a JSON object"),
    "not JSON": (lambda record: '{"id": ', "the line is not a JSON record"),
    "nested 100,000 deep": (lambda record: "[" * 100_000, "the line is not a JSON record"),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A sweep folder of two configurations (lr 0.3 and 1, 2 epochs), written without training."""
    out = tmp_path_factory.mktemp("written") / "sweep"
    records = written_sweep(out, SweepGrid(hidden=[(8,)], lr=[0.3, 1.0], seed=[0], epochs=2))
    return out, records


@pytest.mark.parametrize("damage", list(HOSTILE_LINES))
def test_a_hostile_line_is_refused_naming_its_line_and_field(damage, written):
    folder, records = written
    edit, expected = HOSTILE_LINES[damage]
    path = folder.parent / f"{damage}.jsonl"
    path.write_text(json.dumps(records[1]) + "\n" + edit(records[0]) + "\n")
    found = scan_results(path, SweepFolder(folder).configurations("give a sweep folder"))
    assert list(found.records) == [records[1]["id"]]  # the good line is kept, in one pass
    [(number, problem)] = found.refused
    assert number == 2 and expected in problem, problem
    [message] = found.messages(path, "do this")
    assert message.startswith(f"{path}, line 2: ") and message.endswith("; do this") and "\n" not in message


def test_resume_warns_about_bad_and_repeated_lines_drops_them_and_trains_again(tmp_path):
    data = synthetic_dataset(60, 20)
    out = tmp_path / "sweep"
    first = jd.sweep(data=data, lr=[0.3, 1.0], epochs=1, out_dir=out)
    good, other = (out / RESULTS_FILE).read_text().splitlines()
    broken = json.dumps({**json.loads(good), "test_accuracy": float("nan")})
    (out / RESULTS_FILE).write_text("\n".join([broken, other, other, other]) + "\n")
    with pytest.warns(ResultsWarning) as warned:
        again = jd.sweep(data=data, lr=[0.3, 1.0], epochs=1, out_dir=out)
    said = [str(w.message) for w in warned]
    assert any(m.startswith(f"{out / RESULTS_FILE}, line 1: test_accuracy is NaN, not an accuracy") for m in said), said
    assert any("2 lines repeat a configuration of an earlier line" in m for m in said), said
    assert again.trained == 1 and again.resumed == 1
    assert_same_numbers(again.records, first.records)
    assert len(lines(out)) == 2  # rewritten: each configuration once, the bad line gone


def test_duplicates_are_read_in_linear_time_the_last_line_counting(written, tmp_path):
    folder, records = written
    path = tmp_path / RESULTS_FILE
    with open(path, "w") as f:  # 40,000 lines of one configuration, each a little different
        for k in range(40_000):
            f.write(json.dumps({**records[0], "seconds": float(k)}) + "\n")
    with deadline(20):
        found = scan_results(path, SweepFolder(folder).configurations("give a sweep folder"))
    assert found.refused == [] and found.duplicates == 39_999
    assert list(found.records) == [records[0]["id"]] and found.records[records[0]["id"]]["seconds"] == 39_999.0
