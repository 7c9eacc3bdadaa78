"""Plain helpers that several test modules share (the shared fixtures are in ``conftest.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits.checkpoint import HISTORY_FILE
from jaxdigits.records import record_config
from jaxdigits.sweep_folder import RESULTS_FILE
from tests.conftest import deadline, synthetic_dataset

REPO = Path(__file__).resolve().parent.parent


# --- hand-made networks (tests/core/test_model.py, tests/core/test_costs.py) ----------------------


def tiny_network():
    """784-2-10 network with hand-chosen weights on two images."""
    w1 = np.zeros((784, 2), np.float32)
    w1[0, 0], w1[1, 1] = 1.0, -2.0
    b1 = np.array([0.0, 1.0], np.float32)
    w2 = np.zeros((2, 10), np.float32)
    w2[0, 3], w2[1, 7] = 2.0, -1.0
    b2 = np.full(10, -1.0, np.float32)
    params = jd.Network([{"w": jnp.asarray(w1), "b": jnp.asarray(b1)}, {"w": jnp.asarray(w2), "b": jnp.asarray(b2)}])
    images = np.zeros((2, 784), np.float32)
    images[0, 0] = 1.0
    images[1, 1] = 0.5
    labels = np.array([3, 7], np.int32)
    return params, images, labels


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# --- run folders and their files ------------------------------------------------------------------


def params_to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def assert_same_params(a: Path, b: Path) -> None:
    """The two params (or checkpoint) files hold bit-identical parameters."""
    ta, tb = load_file(a), load_file(b)
    names = sorted(n for n in ta if n.startswith("params."))
    assert names and names == sorted(n for n in tb if n.startswith("params."))
    for name in names:
        assert ta[name].tobytes() == tb[name].tobytes(), name


def history(out: Path) -> list[dict]:
    return json.loads((out / HISTORY_FILE).read_text())


def measured(records: list[dict]) -> list[tuple]:
    """What a history says about learning (not how long it took)."""
    return [(r["epoch"], r["train_cost"], r.get("train_accuracy"), r.get("test_accuracy")) for r in records]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- hostile inputs: one line naming the file; special files where a file is expected -------------


def assert_one_line_naming(exc: BaseException, path: Path | str) -> str:
    message = str(exc)
    assert "\n" not in message and message.strip() == message
    assert str(path) in message
    return message


def assert_cli_refuses(args: list[str], path: Path, expected: str, capsys) -> None:
    """``jaxdigits ARGS`` exits 1 with one stderr line naming ``path`` and saying ``expected``."""
    with deadline(60):
        assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"jaxdigits {args[0]}: error: {path}: ")
    assert expected in captured.err


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _symlink_loop(path: Path) -> Path:
    other = path.with_name(path.name + ".other")
    os.symlink(other, path)
    os.symlink(path, other)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _dev_zero(path: Path) -> Path:
    os.symlink("/dev/zero", path)
    return path


def _dangling(path: Path) -> Path:
    os.symlink(path.with_name("nowhere"), path)
    return path


SPECIAL = {
    "named pipe": (_fifo, "not a regular file (a named pipe (FIFO))"),
    "symlink loop": (_symlink_loop, "symlink loop"),
    "folder": (_folder, "not a regular file (a folder)"),
    "/dev/zero": (_dev_zero, "not a regular file (a character device)"),
    "dangling symlink": (_dangling, "broken symlink"),
}


needs_posix = pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX only")


def one_error_line(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


def run_cli(*argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "jaxdigits", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


# --- sweeps: records against training alone, and the results file ---------------------------------


# Small, fast and learnable: 100 training images (10 steps per epoch at batch 10).
DATA = synthetic_dataset(100, 40)


def assert_matches_train(record: dict, data=DATA) -> None:
    """The record's numbers are those of training its config alone with ``train``."""
    single = jd.train(record_config(record), data)
    finished = [h for h in single.history if not h.get("diverged")]
    assert record["status"] == single.status and record["diverged_epoch"] == single.record["diverged_epoch"]
    assert record["epochs_completed"] == len(finished)
    np.testing.assert_allclose(record["train_cost_curve"], [h["train_cost"] for h in finished], rtol=2e-5)
    np.testing.assert_allclose(record["test_accuracy_curve"], [h["test_accuracy"] for h in finished], atol=1e-6)
    if finished:
        np.testing.assert_allclose(record["train_accuracy"], finished[-1]["train_accuracy"], atol=1e-6)
        np.testing.assert_allclose(record["test_accuracy"], finished[-1]["test_accuracy"], atol=1e-6)
        assert record["best_test_accuracy"] == max(record["test_accuracy_curve"])
    else:
        assert record["test_accuracy"] is None and record["train_accuracy"] is None


def numbers(records):
    """The per-configuration numbers of records, keyed by id (timings left out)."""
    keys = ("train_cost_curve", "test_accuracy_curve", "train_accuracy", "status", "epochs_completed")
    return {r["id"]: {k: r[k] for k in keys} for r in records}


def assert_same_numbers(a, b):
    a, b = numbers(a), numbers(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["status"] == b[key]["status"] and a[key]["epochs_completed"] == b[key]["epochs_completed"]
        np.testing.assert_allclose(a[key]["train_cost_curve"], b[key]["train_cost_curve"], rtol=2e-5)
        np.testing.assert_allclose(a[key]["test_accuracy_curve"], b[key]["test_accuracy_curve"], atol=1e-6)
        np.testing.assert_allclose(a[key]["train_accuracy"], b[key]["train_accuracy"], atol=1e-6)


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / RESULTS_FILE).read_text().splitlines()]


def written_sweep(out: Path, grid: "jd.SweepGrid", test_examples: int = 1000) -> list[dict]:
    """A finished sweep folder for ``grid`` written without training (made-up but valid
    records, through ``SweepFolder`` as a sweep writes them); returns the records."""
    from jaxdigits.records import run_record
    from jaxdigits.sweep_folder import SweepFolder

    records = []
    for k, config in enumerate(grid.configs()):
        history = [{"epoch": e, "train_cost": 1.0 / e, "train_accuracy": 0.5 + 0.01 * e,
                    "test_accuracy": 0.5 + 0.01 * e + 0.001 * k, "seconds": 0.1} for e in range(1, config.epochs + 1)]
        records.append(run_record(config, history, "ok", test_examples=test_examples))
    folder = SweepFolder(out, grid, {"mnist": {"sha256": "0" * 64}})
    folder.open(grid.configs())
    folder.append(records)
    folder.close()
    return records


# --- Ctrl-C and SIGTERM: tests/app/test_reports.py and test_cli.py -----------------------------------


def interrupt_when(args: list[str], working, signals: tuple[int, ...], timeout: float = 120) -> tuple[int, str]:
    """Run ``jaxdigits ARGS``, send ``signals`` (0.05 s apart) once ``working()`` is true;
    ``(exit code, stderr)``. Asserts that the command had not finished by then."""
    process = run_cli(*map(str, args))
    try:
        ends = time.monotonic() + timeout
        while not working():
            assert process.poll() is None and time.monotonic() < ends, process.communicate()
            time.sleep(0.005)
        for number, signum in enumerate(signals):
            time.sleep(0.05 if number else 0)
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return process.returncode, stderr


def assert_interrupted_cleanly(returncode: int, stderr: str, line: str) -> None:
    """Exit 130, one line starting with ``line`` that says so, no traceback, nothing swallowed."""
    said = [text for text in stderr.splitlines() if "interrupted" in text]
    assert returncode == 130, stderr
    assert len(said) == 1 and said[0].startswith(line), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
