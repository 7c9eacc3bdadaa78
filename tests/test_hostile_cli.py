"""Hostile input at the command line and in run folders: typed flags and grid files (fuzzed),
two processes in one --out, edited or broken sweep folders, data that is not what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxdigits as jd
from jaxdigits import cli, files
from jaxdigits.core.config import FIELDS
from tests.conftest import synthetic_dataset

REPO = Path(__file__).resolve().parent.parent
FLAGS = [name for name, setting in FIELDS.items() if setting.kind != "function"]


def one_error_line(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


flag_text = st.one_of(
    st.text(max_size=12),
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e400", "-0", "nan", "inf", "1.5", "0x10", "16,16", "none", "16,-1", "", " ", "true"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(FLAGS), value=flag_text)
def test_fuzzed_flag_values_give_a_valid_config_or_one_line_and_exit_2(flag, value, capsys):
    argv = ["train", "--" + flag.replace("_", "-"), value]
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        one_error_line(capsys.readouterr().err, f"jaxdigits train: error: argument --{flag.replace('_', '-')}")
        return
    config = jd.TrainConfig(**cli.config_overrides(args))  # accepted values make a valid config
    assert getattr(config, flag) == getattr(args, flag)


grid_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**66, 2**66), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8), st.sampled_from(["sgd", "relu", "cosine", "mnist", "float32"])),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grid=st.dictionaries(st.sampled_from(list(FIELDS) + ["seeds", "sizes"]), grid_value, max_size=4))
def test_fuzzed_grid_files_give_valid_configs_or_a_config_error(grid, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    try:
        configs = jd.load_grid(path).configs()
    except jd.ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        return
    for config in configs:
        assert isinstance(config, jd.TrainConfig)
        for name, values in grid.items():
            assert not isinstance(getattr(config, name), bool)  # no silent bool -> number coercion


@pytest.mark.parametrize("grid, message", [
    ({"seed": [1.5, 1.9]}, "seed: 1.5 is not an integer"),
    ({"lr": True}, "lr: True is not a number"),
    ({"lr": ["1.5"]}, "lr: '1.5' is not a number"),
    ({"hidden": []}, "sweep axis hidden is empty"),
    ({"seed": [2**32]}, "seed: 4294967296 must be at most"),
    ({"epochs": 1e400}, "epochs: inf is not an integer"),
])
def test_grid_files_are_typed_not_coerced(grid, message, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    with pytest.raises(jd.ConfigError, match=message.replace("(", r"\(")):
        jd.load_grid(path).configs()


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--out", "x", "--cpu-devices", "0"], "--cpu-devices: 0 must be between 1 and 256"),
    (["sweep", "--out", "x", "--cpu-devices", "4096"], "--cpu-devices: 4096 must be between 1 and 256"),
    (["sweep", "--out", "x", "--top", "-1"], "--top: -1 must be between"),
    (["sweep", "--out", ""], "--out must name a folder"),
    (["train", "--out", "/"], "is the root folder"),
])
def test_other_flags_have_ranges(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in one_error_line(capsys.readouterr().err, "jaxdigits")


def test_a_fifo_as_the_grid_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "grid.toml"
    os.mkfifo(fifo)
    with pytest.raises(jd.ConfigError, match="named pipe"):
        jd.load_grid(fifo)


def run_cli(*argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "jaxdigits", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_two_processes_into_one_out_one_runs_and_the_other_is_refused(command, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    flags = ["--epochs", "4", "--data-dir", str(tiny_data_dir), "--out", str(out)]
    if command == "sweep":
        flags += ["--lr", "1", "3", "--cpu-devices", "1"]
    processes = [run_cli(command, *flags) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    line = one_error_line(refused, f"jaxdigits {command}: error:")
    assert "in use by another jaxdigits process" in line or "already holds" in line or "is not empty" in line
    assert not (out / files.LOCK_FILE).exists()  # released by the run that finished
    if command == "sweep":
        lines = (out / "results.jsonl").read_text().splitlines()
        assert len(lines) == 2  # each configuration recorded once


def test_a_lock_left_by_a_killed_run_is_recovered(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / files.LOCK_FILE).write_text(str(dead.pid))
    result = jd.train(jd.TrainConfig(epochs=1), synthetic_dataset(40, 10), out_dir=out)
    assert result.status == "ok" and not (out / files.LOCK_FILE).exists()
    (out / files.LOCK_FILE).write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(jd.RunFolderError, match="in use by another jaxdigits process"):
        jd.train(jd.TrainConfig(epochs=1), synthetic_dataset(40, 10), out_dir=out, overwrite=True)


def test_a_sweep_folder_is_not_a_training_folder_and_the_reverse(tmp_path):
    data = synthetic_dataset(40, 10)
    jd.sweep(data=data, lr=[1.0], epochs=1, out_dir=tmp_path / "sweep")
    with pytest.raises(jd.RunFolderError, match="holds a sweep, not a training run"):
        jd.train(jd.TrainConfig(epochs=1), data, out_dir=tmp_path / "sweep", overwrite=True)
    jd.train(jd.TrainConfig(epochs=1), data, out_dir=tmp_path / "run")
    with pytest.raises(jd.RunFolderError, match="holds a training run, not a sweep"):
        jd.sweep(data=data, lr=[1.0], epochs=1, out_dir=tmp_path / "run", overwrite=True)


def test_an_edited_record_is_retrained_not_shown_as_the_best(tmp_path):
    data = synthetic_dataset(60, 20)
    out = tmp_path / "sweep"
    first = jd.sweep(data=data, lr=[0.3, 1.0], epochs=1, out_dir=out)
    lines = (out / "results.jsonl").read_text().splitlines()
    edited = json.loads(lines[0])
    edited.update(lr=42.0, test_accuracy=0.999)
    (out / "results.jsonl").write_text(json.dumps(edited) + "\n" + lines[1] + "\n")
    with pytest.warns(jd.ResultsWarning, match="its lr 42.0 is not its configuration's 0.3"):
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


def test_a_full_disk_while_appending_keeps_earlier_results_and_is_one_line(tmp_path, monkeypatch, capsys):
    data = synthetic_dataset(40, 10)
    out = tmp_path / "sweep"
    jd.sweep(data=data, lr=[1.0], epochs=1, out_dir=out)
    before = (out / "results.jsonl").read_text()

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            self.f.write(data[:10])  # part of a line gets out, then the disk is full
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open
    monkeypatch.setattr(files, "open", lambda path, mode="r", *a, **k: FullDisk(real_open(path, mode, *a, **k))
                        if str(path).endswith("results.jsonl") and "a" in mode else real_open(path, mode, *a, **k),
                        raising=False)
    with pytest.raises(jd.CheckpointError, match="No space left on device.*earlier lines are kept"):
        jd.sweep(data=data, lr=[1.0, 3.0], epochs=1, out_dir=out)
    assert (out / "results.jsonl").read_text() == before  # the partial line was cut off again
    assert not (out / files.LOCK_FILE).exists()


def test_l2_divergence_blames_l2_too(tmp_path, capsys, tiny_data_dir):
    code = cli.main(["train", "--l2", "1e30", "--epochs", "2", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "r")])
    assert code == 3
    assert "try a smaller --lr (now 3) or --l2 (now 1e+30)" in capsys.readouterr().err


def test_fashion_files_given_as_mnist_are_recorded_as_fashion(fashion_mnist_dir, tmp_path, capsys):
    code = cli.main(["train", "--epochs", "1", "--hidden", "8", "--batch-size", "100", "--data-dir", str(fashion_mnist_dir),
                     "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0
    assert "these files are fashion_mnist, not mnist" in captured.err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["dataset"] == "fashion_mnist"
    mnist_dir = fashion_mnist_dir.parent / "mnist"
    assert cli.main(["evaluate", str(tmp_path / "run"), "--data-dir", str(mnist_dir)]) == 2
    assert "trained on fashion_mnist and these files are mnist" in capsys.readouterr().err


def test_sizes_that_cannot_fit_are_refused_before_anything_allocates(capsys, tiny_data_dir):
    code = cli.main(["train", "--hidden", "1000000", "--batch-size", "200", "--epochs", "1", "--data-dir", str(tiny_data_dir)])
    assert code == 2
    assert "GiB" in one_error_line(capsys.readouterr().err, "jaxdigits train: error: hidden [1000000]")


def test_distributed_without_a_cluster_or_coordinator_is_one_line_and_bounded(tmp_path):
    no_cluster = run_cli("sweep", "--out", str(tmp_path / "a"), "--distributed", "--timeout", "3")
    silent = run_cli("sweep", "--out", str(tmp_path / "b"), "--distributed", "--timeout", "3",
                     "--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "1")
    for process in (no_cluster, silent):
        code = process.wait(timeout=60)
        assert code == 2
        one_error_line(process.stderr.read(), "jaxdigits sweep: error: --distributed:")
