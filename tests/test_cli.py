"""The command line: train/evaluate/predict end to end, and flag validation before compiling."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import cli

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
    assert run["test_accuracy"] >= 0.9 and run["status"] == "ok"
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
