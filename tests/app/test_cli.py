"""The command line (``jaxdigits.cli``): train/evaluate/predict end to end, flags validated (and
fuzzed) before compiling, the sweep command, and how a run ends: Ctrl-C, SIGTERM, divergence."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits.checkpoint import CHECKPOINT_FILE, HISTORY_FILE, PARAMS_FILE, RUN_FILE, load_params, save_params
from jaxdigits.core.config import FIELDS, TrainConfig
from jaxdigits.core.epoch import init_state, run_keys
from jaxdigits.data import load_idx_folder
from jaxdigits.run_folder import RunFolder
from jaxdigits.sweep_folder import RESULTS_FILE
from tests.conftest import jaxdigits, synthetic_dataset, write_idx_folder
from tests.helpers import REPO, assert_cli_refuses, assert_same_params, history, measured, one_error_line
from tests.helpers import lines as result_lines


driver_module = importlib.import_module("jaxdigits.driver")


def test_train_evaluate_predict_end_to_end(mnist_dir, mnist, tmp_path):
    from PIL import Image

    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "jaxdigits", "train", "--data-dir", str(mnist_dir), "--epochs", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "epoch   1/1  cost" in done.stdout and "test" in done.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["hidden"] == [16, 16] and run["lr"] == 3.0 and run["data"]["inputs"] == 784 and run["data"]["classes"] == 10
    assert run["test_accuracy"] >= 0.85 and run["status"] == "ok"  # one epoch: 0.879-0.925 over seeds 0-9
    assert {"jax", "jaxlib", "device_kind"} <= set(run["environment"])
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["test_accuracy"] == run["test_accuracy"]

    evaluated = subprocess.run(
        [sys.executable, "-m", "jaxdigits", "evaluate", str(out / "params.safetensors"), "--data-dir", str(mnist_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"test accuracy {100 * run['test_accuracy']:.2f}%" in evaluated.stdout

    # A test digit drawn dark-on-light at 5x size: the CLI reads it as the network does.
    digit = (mnist.test_images[0].reshape(28, 28) * 255).astype(np.uint8)
    png = tmp_path / "digit.png"
    Image.fromarray(255 - digit).resize((140, 140), Image.Resampling.BILINEAR).save(png)
    predicted = subprocess.run([sys.executable, "-m", "jaxdigits", "predict", str(out), str(png)],
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    params, _ = jd.load_params(out)
    digits, activations = jd.predict(params, jd.load_digit_image(png)[None])
    lines = predicted.stdout.splitlines()
    assert lines[0] == f"digit {int(digits[0])}" and int(digits[0]) == mnist.test_labels[0]
    printed = [float(item.split(":")[1]) for item in lines[1].split()[1:]]
    np.testing.assert_allclose(printed, np.asarray(activations[0]), atol=1e-3)


def exit_code(args) -> int:
    """``cli.main``'s exit code, whether it returns it or argparse exits with it."""
    try:
        return cli.main(args)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "0"], "argument --lr: 0.0 must be > 0"),
        (["--lr", "-1"], "argument --lr: -1.0 must be > 0"),
        (["--lr", "inf"], "argument --lr: inf is not a finite number"),
        (["--batch-size", "0"], "argument --batch-size: 0 must be >= 1"),
        (["--batch-size", "201"], "batch_size 201 is larger than the 200 training images"),
        (["--hidden", "16,0"], "argument --hidden: 0 must be >= 1"),
        (["--hidden", "0,16"], "argument --hidden: 0 must be >= 1"),
        (["--epochs", "0"], "argument --epochs: 0 must be >= 1"),
        (["--validation", "200"], "validation 200: hold out fewer than the 200 training images"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'; choose one of mnist, fashion_mnist"),
        (["--bogus", "3"], "unrecognized arguments: --bogus 3; see `jaxdigits train --help`"),
        (["--select", "best"], "select 'best' chooses on validation accuracy; hold out a validation split"),
        (["--patience", "2"], "patience 2 chooses on validation accuracy; hold out a validation split"),
    ],
)
def test_invalid_flags_exit_2_before_anything_compiles(flags, message, tiny_data_dir, monkeypatch, capsys):
    monkeypatch.setattr(driver_module, "compiled", lambda *args, **kwargs: pytest.fail("compiled despite bad flags"))
    code = exit_code(["train", "--data-dir", str(tiny_data_dir), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # One error line; a value refused while parsing flags also shows argparse's usage lines above it.
    *usage, error = err.strip("\n").splitlines()
    assert error.startswith("jaxdigits train: error: ") and message in error
    assert all(line.startswith(("usage:", " ")) for line in usage)


def test_unparseable_flags_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--hidden", "16,x"])
    assert exit_info.value.code == 2
    assert "'x' is not a width; give widths like 16,16, or none" in capsys.readouterr().err


def test_missing_data_folder_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "data folder does not exist" in err and "--data-dir" in err


def test_train_flags_reach_the_config(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--data-dir", str(tiny_data_dir), "--out", str(out), "--hidden", "8",
                     "--activation", "tanh", "--cost", "cross_entropy", "--optimizer", "adam", "--lr", "0.01",
                     "--batch-size", "20", "--epochs", "2", "--seed", "3", "--l2", "0.001"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    given = {"hidden": [8], "activation": "tanh", "cost": "cross_entropy", "optimizer": "adam", "lr": 0.01,
             "batch_size": 20, "epochs": 2, "seed": 3, "l2": 0.001}
    assert {name: run[name] for name in given} == given
    # every other field keeps its default (the data's name, mnist, for the dataset)
    assert {name: run[name] for name in jd.FIELDS} == {**jd.TrainConfig().to_dict(), **given, "dataset": "mnist"}
    assert jd.load_params(out)[0].sizes == (784, 8, 10)
    out_text = capsys.readouterr().out
    assert out_text.count("epoch ") == 2 and "done (ok): test accuracy" in out_text


def test_train_without_out_says_that_nothing_was_saved(tiny_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--data-dir", str(tiny_data_dir), "--epochs", "1", "--batch-size", "20"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("done (") and last.endswith("; nothing saved (give --out DIR to keep the network)")
    assert [p.name for p in tmp_path.iterdir()] == [tiny_data_dir.name]  # the data alone


# --- flag values, fuzzed, and ranges --------------------------------------------------------------


FLAGS = [name for name, setting in FIELDS.items() if setting.kind != "function"]


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


# --- how a run ends: divergence, Ctrl-C, SIGTERM --------------------------------------------------


def lines(source: str | Path) -> list:
    """Non-empty lines of a stream, counting the progress bar's carriage-return redraws as lines;
    given a sweep's folder instead, the records of its results file."""
    if isinstance(source, Path):
        return result_lines(source)
    return [line for line in re.split(r"[\r\n]+", source) if line.strip()]


def test_divergence_stops_keeps_the_last_finite_epoch_and_exits_3(tmp_path, small_dir):
    out = tmp_path / "run"
    done = jaxdigits("train", "--data-dir", small_dir, "--out", out, "--l2", 1, "--epochs", 8)
    assert done.returncode == cli.EXIT_DIVERGED == 3
    assert "Traceback" not in done.stderr
    assert lines(done.stderr)[-1] == (
        f"diverged at epoch 4; try a smaller --lr (now 3) or --l2 (now 1); epoch 3's params are saved in {out}"
    )
    assert RunFolder(out).completed_epochs() == 3
    assert_same_params(out / PARAMS_FILE, out / CHECKPOINT_FILE)
    assert all(np.isfinite(a).all() for a in load_file(out / PARAMS_FILE).values())
    run = json.loads((out / RUN_FILE).read_text())
    assert run["status"] == "diverged" and run["diverged_epoch"] == 4 and run["epochs_completed"] == 3

    def refuse(constant):
        raise ValueError(f"history.json is not strict JSON: {constant}")

    records = json.loads((out / HISTORY_FILE).read_text(), parse_constant=refuse)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    # a NaN or infinite objective is written as null (strict JSON has neither); the quadratic cost
    # alone stays finite (sigmoid outputs bound it) while the l2 term overflows
    assert records[-1]["diverged"] is True and records[-1]["train_objective"] is None
    assert np.isfinite(records[-1]["train_cost"])


def test_l2_divergence_blames_l2_too(tmp_path, capsys, tiny_data_dir):
    code = cli.main(["train", "--l2", "1e30", "--epochs", "2", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "r")])
    assert code == 3
    assert "try a smaller --lr (now 3) or --l2 (now 1e+30)" in capsys.readouterr().err


SLOW_EPOCHS = 12


@pytest.fixture(scope="module")
def slow_dir(tmp_path_factory) -> Path:
    """15000 training images: epochs long enough (a tenth of a second) to interrupt one mid-run."""
    return write_idx_folder(tmp_path_factory.mktemp("slow") / "data", synthetic_dataset(15000, 100), compress=False)


def signal_after_first_epoch(args: list[str], out: Path, signum: int) -> tuple[int, str]:
    """Run ``jaxdigits *args`` and send ``signum`` once epoch 1's checkpoint exists; ``(exit code, stderr)``."""
    process = subprocess.Popen([sys.executable, "-m", "jaxdigits", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT_FILE).exists():  # appears, complete, once epoch 1 is done
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, stderr


def test_ctrl_c_keeps_the_last_epoch_says_how_to_resume_and_exits_130(tmp_path, slow_dir):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(slow_dir), "--out", str(out), "--epochs", str(SLOW_EPOCHS)]
    returncode, stderr = signal_after_first_epoch(args, out, signal.SIGINT)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    message = lines(stderr)[-1]
    match = re.fullmatch(r"interrupted; (?:epoch 1 is|epochs 1-(\d+) are) saved, resume with `(.*)`", message)
    assert match and match.group(1) != "1", message
    completed = int(match.group(1) or 1)
    assert 1 <= completed < SLOW_EPOCHS
    assert sum("interrupted" in line for line in lines(stderr)) == 1

    # what is kept is the complete checkpoint of the last finished epoch, nothing half-written
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE, HISTORY_FILE]
    config = TrainConfig(epochs=SLOW_EPOCHS)
    folder = RunFolder(out, data_info=load_idx_folder(slow_dir).describe())
    state, saved_history, _ = folder.load_training(config, init_state(config, run_keys(0)[0], 784, 10))
    assert len(saved_history) == completed and history(out) == saved_history

    # the printed command resumes, and the result is the uninterrupted run's, bit for bit
    command = shlex.split(match.group(2))
    assert command[:2] == ["jaxdigits", "train"]
    resumed = jaxdigits(*command[1:])
    assert resumed.returncode == 0, resumed.stderr
    straight = jaxdigits(*args[:4], tmp_path / "straight", *args[5:])
    assert straight.returncode == 0, straight.stderr
    assert_same_params(out / PARAMS_FILE, tmp_path / "straight" / PARAMS_FILE)
    assert measured(history(out)) == measured(history(tmp_path / "straight"))


def test_the_interrupt_line_counts_the_saved_epochs():
    args = argparse.Namespace(out=Path("runs/a"), data_dir=Path("data"))
    resume = "resume with `jaxdigits train --out runs/a --resume --data-dir data`"
    assert cli._interrupted_message(args, 1) == f"interrupted; epoch 1 is saved, {resume}"
    assert cli._interrupted_message(args, 3) == f"interrupted; epochs 1-3 are saved, {resume}"


def test_sigterm_stops_like_ctrl_c(tmp_path, slow_dir):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(slow_dir), "--out", str(out), "--epochs", str(SLOW_EPOCHS)]
    returncode, stderr = signal_after_first_epoch(args, out, signal.SIGTERM)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert [line for line in lines(stderr) if "interrupted" in line] == [lines(stderr)[-1]]
    assert re.match(r"interrupted; (epoch 1 is|epochs 1-\d+ are) saved", lines(stderr)[-1])
    config = TrainConfig(epochs=SLOW_EPOCHS)
    folder = RunFolder(out, data_info=load_idx_folder(slow_dir).describe())
    _, saved_history, _ = folder.load_training(config, init_state(config, run_keys(0)[0], 784, 10))
    assert 1 <= len(saved_history) < SLOW_EPOCHS


def test_cli_predict_refuses_nan_weights(run_dir, tmp_path, capsys):
    network, info = load_params(run_dir)
    network[0]["w"] = network[0]["w"].at[0, 0].set(np.nan)
    path = tmp_path / PARAMS_FILE
    save_params(path, network, info)
    png = tmp_path / "digit.png"
    png.write_bytes(b"")  # never read: the params are refused first
    assert_cli_refuses(["predict", str(path), str(png)], path, "holds non-finite values in params.0.w", capsys)


# --- the sweep command ----------------------------------------------------------------------------


def test_cli_sweep_prints_a_sorted_table_and_resumes(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    flags = ["sweep", "--hidden", "8", "4,4", "--lr", "0.3", "3", "--seed", "0", "1", "--epochs", "2",
             "--data-dir", str(tiny_data_dir), "--out", str(out)]
    assert cli.main(flags) == 0
    printed = capsys.readouterr().out.splitlines()
    table = [line.split() for line in printed[1:9]]
    assert printed[0].split()[:4] == ["#", "hidden", "lr", "seed"] and len(table) == 8
    ok = [float(row[4]) for row in table if row[-1] == "ok"]  # the ok runs best first, stalled ones after
    assert ok == sorted(ok, reverse=True) and [row[-1] for row in table] == sorted((row[-1] for row in table), key=lambda s: s != "ok")
    stalled = sum(row[-1] == "stalled" for row in table)
    assert f"8 configurations (8 trained now, 0 from before{f', {stalled} stalled' if stalled else ''})" in printed[-1]
    records = lines(out)
    assert sorted((r["hidden"], r["lr"], r["seed"]) for r in records) == sorted(
        (h, lr, s) for h in ([8], [4, 4]) for lr in (0.3, 3.0) for s in (0, 1))
    assert f"{100 * max(r['test_accuracy'] for r in records if r['status'] == 'ok'):.2f}%" in printed[-1]
    # Without axis flags the sweep in --out is resumed; --seed 0 1 2 grows it.
    assert cli.main(["sweep", "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 0
    assert "(0 trained now, 8 from before" in capsys.readouterr().out
    assert cli.main(["sweep", "--seed", "0", "1", "2", "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 0
    assert "12 configurations (4 trained now, 8 from before" in capsys.readouterr().out


def test_cli_sweep_reads_a_grid_file_and_flags_override_it(tiny_data_dir, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('hidden = [[8]]\nlr = [0.3, 1.0, 3.0]\nepochs = 1\nactivation = ["sigmoid", "tanh"]\n')
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--grid", str(grid), "--lr", "1", "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 0
    assert sorted((r["lr"], r["activation"]) for r in lines(out)) == [(1.0, "sigmoid"), (1.0, "tanh")]
    assert "activation" in capsys.readouterr().out.splitlines()[0]  # a varying axis gets a column


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "0"], "argument --lr: 0.0 must be > 0"),
        (["--hidden", "16,0"], "argument --hidden: 0 must be >= 1"),
        (["--coordinator", "localhost:1234"], "need --distributed"),
        (["--group-size", "0"], "argument --group-size: 0 must be between 1 and"),
    ],
)
def test_cli_sweep_bad_flags_exit_2_with_one_line(flags, message, tiny_data_dir, tmp_path, capsys):
    try:
        code = cli.main(["sweep", *flags, "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "s")])
    except SystemExit as exc:  # a value refused while parsing flags
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # one error line (argparse shows its usage lines above a flag it refuses)
    *usage, error = err.strip("\n").splitlines()
    assert error.startswith("jaxdigits sweep: error: ") and message in error
    assert all(line.startswith(("usage:", " ")) for line in usage)
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_ctrl_c_keeps_finished_groups_prints_how_to_resume_and_exits_130(tiny_data_dir, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "jaxdigits", "sweep", "--hidden", "8", "7", "6", "5", "4", "--lr", "1",
               "--epochs", "3", "--data-dir", str(tiny_data_dir), "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / RESULTS_FILE).exists() and (out / RESULTS_FILE).read_text()) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    message = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(message) == 1 and "resume with `jaxdigits sweep --out" in message[0]
    kept = lines(out)
    assert 1 <= len(kept) < 5 and f"{len(kept)} of 5 configurations are saved" in message[0]
    resume = message[0].split("`")[1].split()[1:]  # the printed command, without the program name
    done = subprocess.run([sys.executable, "-m", "jaxdigits", *resume], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"5 configurations ({5 - len(kept)} trained now, {len(kept)} from before)" in done.stdout
    assert len(lines(out)) == 5


@pytest.mark.parametrize("seed", [str(2**70), "-1"])
def test_report_seed_is_checked_as_a_seed(seed, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["report", str(tmp_path), "--out", str(tmp_path / "report"), "--seed", seed])
    assert stop.value.code == 2 and "--seed" in capsys.readouterr().err


def test_a_cache_folder_named_in_the_environment_keeps_compiled_programs(tmp_path, small_dir):
    import os

    cache = tmp_path / "xla"
    done = jaxdigits("train", "--data-dir", small_dir, "--out", tmp_path / "run", "--epochs", 1, "--hidden", 8,
                     env={**os.environ, "JAXDIGITS_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr[-800:]
    assert any(p.name.startswith("jit_guarded") for p in cache.iterdir())  # the epoch program, for the next run
