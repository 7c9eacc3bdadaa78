"""A sweep's ``--out`` folder (``jaxdigits.sweep_folder``): resume and a grown grid, half-written
or edited result lines, a broken ``sweep.json``, a hard kill, folders of another kind."""

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
from jaxdigits.sweep_folder import RESULTS_FILE, SWEEP_FILE, ResultsWarning, read_results
from tests.conftest import synthetic_dataset
from tests.helpers import DATA, REPO, assert_same_numbers, lines, one_error_line


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
