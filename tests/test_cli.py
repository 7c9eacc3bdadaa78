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

# The package exports the function ``train``, which shadows the module of the same name.
train_module = importlib.import_module("jaxdigits.train")


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
    assert run["config"]["sizes"] == [784, 16, 16, 10] and run["config"]["learning_rate"] == 3.0
    assert run["metrics"]["test_accuracy"] >= 0.9
    assert {"jax", "jaxlib", "device_kind"} <= set(run["environment"])
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["test_accuracy"] == run["metrics"]["test_accuracy"]

    evaluated = subprocess.run(
        [sys.executable, "-m", "jaxdigits", "evaluate", str(out / "params.safetensors"), "--data-dir", str(mnist_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"test accuracy {100 * run['metrics']['test_accuracy']:.2f}%" in evaluated.stdout

    # A test digit drawn dark-on-light at 5x size: the CLI reads it as the network does.
    digit = (mnist.test_images[0].reshape(28, 28) * 255).astype(np.uint8)
    png = tmp_path / "digit.png"
    Image.fromarray(255 - digit).resize((140, 140), Image.Resampling.BILINEAR).save(png)
    predicted = subprocess.run([sys.executable, "-m", "jaxdigits", "predict", str(out), str(png)],
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    params, config, _ = jd.load_params(out)
    digits, activations = jd.predict(params, jd.load_digit_image(png)[None])
    lines = predicted.stdout.splitlines()
    assert lines[0] == f"digit {int(digits[0])}" and int(digits[0]) == mnist.test_labels[0]
    printed = [float(item.split(":")[1]) for item in lines[1].split()[1:]]
    np.testing.assert_allclose(printed, np.asarray(activations[0]), atol=1e-3)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "0"], "learning rate must be > 0"),
        (["--lr", "-1"], "learning rate must be > 0"),
        (["--lr", "inf"], "learning rate must be > 0 and finite"),
        (["--batch-size", "0"], "batch size must be at least 1"),
        (["--batch-size", "201"], "larger than the 200 training images"),
        (["--sizes", "784,16,9"], "must start at 784"),
        (["--sizes", "100,16,10"], "must start at 784"),
        (["--epochs", "0"], "epochs must be at least 1"),
    ],
)
def test_invalid_flags_exit_2_before_anything_compiles(flags, message, tiny_data_dir, monkeypatch, capsys):
    monkeypatch.setattr(train_module, "compiled_epoch", lambda *args: pytest.fail("compiled despite bad flags"))
    code = cli.main(["train", "--data-dir", str(tiny_data_dir), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unparseable_flags_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--sizes", "784,x,10"])
    assert exit_info.value.code == 2
    assert "comma-separated list of integers" in capsys.readouterr().err


def test_missing_data_folder_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "data folder does not exist" in err and "--data-dir" in err


def test_train_flags_reach_the_config(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--data-dir", str(tiny_data_dir), "--out", str(out), "--sizes", "784,8,10",
                     "--activation", "tanh", "--cost", "cross_entropy", "--optimizer", "adam", "--lr", "0.01",
                     "--batch-size", "20", "--epochs", "2", "--seed", "3", "--l2", "0.001"])
    assert code == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert config == {"sizes": [784, 8, 10], "activation": "tanh", "cost": "cross_entropy", "optimizer": "adam",
                      "learning_rate": 0.01, "batch_size": 20, "epochs": 2, "seed": 3, "l2": 0.001, "dataset": "mnist"}
    out_text = capsys.readouterr().out
    assert out_text.count("epoch ") == 2 and "done: test accuracy" in out_text
