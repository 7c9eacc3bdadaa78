"""Runs that survive: resume, Ctrl-C, kills, divergence, occupied --out folders, determinism.

The command-line cases run ``python -m jaxdigits`` in a subprocess on small synthetic IDX data,
so signals, exit codes and the files left behind are exactly what a user gets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxdigits import checkpoint, cli
from jaxdigits.checkpoint import CHECKPOINT_FILE, HISTORY_FILE, PARAMS_FILE, RUN_FILE, RUN_FILES
from jaxdigits.run_folder import RunFolder
from jaxdigits.core.config import TrainConfig
from jaxdigits.data import load_idx_folder
from jaxdigits.core.epoch import init_state, run_keys
from jaxdigits.training import train


def params_to_numpy(tree):
    return jax.tree.map(np.asarray, tree)

from tests.conftest import synthetic_dataset, write_idx_folder

EPOCHS = 6


def jaxdigits(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m jaxdigits ARGS`` in a subprocess; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "jaxdigits", *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs
    )


def lines(text: str) -> list[str]:
    """Non-empty lines of a stream, counting the progress bar's carriage-return redraws as lines."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


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


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """200 training and 50 test images as raw IDX files: an epoch takes milliseconds."""
    return write_idx_folder(tmp_path_factory.mktemp("small") / "data", synthetic_dataset(200, 50), compress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_dir) -> Path:
    """An uninterrupted ``EPOCHS``-epoch command-line run on ``small_dir``."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = jaxdigits("train", "--data-dir", small_dir, "--out", out, "--epochs", EPOCHS)
    assert done.returncode == 0, done.stderr
    return out


# -- 1. resumable training ---------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_library_resume_continues_bit_identically(tmp_path, optimizer):
    data = synthetic_dataset()
    config = TrainConfig(optimizer=optimizer, lr=0.05 if optimizer == "adam" else 0.5, epochs=5)
    straight = train(config, data)
    train(config.replace(epochs=2), data, out_dir=tmp_path / "run")
    resumed = train(config, data, out_dir=tmp_path / "run", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]
    assert measured(resumed.history) == measured(straight.history)
    # the optimizer state (momentum, Adam moments) is restored too, not only the params
    for a, b in zip(params_to_numpy(resumed.state), params_to_numpy(straight.state)):
        for x, y in zip(jax_leaves(a), jax_leaves(b)):
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


KILL_DURING_WRITE = """
import os, signal, sys, tempfile
from jaxdigits import cli

# Die like `kill -9` in the middle of writing checkpoint number N: half of the temporary
# file is on disk, the rename never happens.
doomed_write = int(sys.argv[1])
real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync
checkpoints, doomed = [], set()

def mkstemp(*args, **kwargs):
    fd, name = real_mkstemp(*args, **kwargs)
    if os.path.basename(name).startswith(".checkpoint.safetensors."):
        checkpoints.append(name)
        if len(checkpoints) == doomed_write:
            doomed.add(fd)
    return fd, name

def fsync(fd):
    if fd in doomed:
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)

tempfile.mkstemp, os.fsync = mkstemp, fsync
sys.exit(cli.main(sys.argv[2:]))
"""


def test_a_run_killed_mid_checkpoint_resumes_bit_identically(tmp_path, small_dir, reference):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE, "3", "train", "--data-dir", str(small_dir), "--out", str(out),
         "--epochs", str(EPOCHS)],
        capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # the half-written epoch-3 checkpoint never replaced the complete epoch-2 one
    leftovers = [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".{CHECKPOINT_FILE}.")
    assert RunFolder(out).completed_epochs() == 2
    assert measured(history(out)) == measured(history(reference)[:2])

    resumed = jaxdigits("train", "--data-dir", small_dir, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)  # the leftover is cleaned up
    assert_same_params(out / PARAMS_FILE, reference / PARAMS_FILE)
    assert_same_params(out / CHECKPOINT_FILE, reference / CHECKPOINT_FILE)
    assert measured(history(out)) == measured(history(reference))


# -- 2. Ctrl-C ---------------------------------------------------------------------------------

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
    assert "Traceback" not in stderr
    message = lines(stderr)[-1]
    match = re.fullmatch(r"interrupted; epochs 1-(\d+) are saved, resume with `(.*)`", message)
    assert match, message
    completed = int(match.group(1))
    assert 1 <= completed < SLOW_EPOCHS
    assert sum("interrupted" in line for line in lines(stderr)) == 1

    # what is kept is the complete checkpoint of the last finished epoch, nothing half-written
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE, HISTORY_FILE]
    config = TrainConfig(epochs=SLOW_EPOCHS)
    folder = RunFolder(out, data_info=load_idx_folder(slow_dir).describe())
    state, saved_history = folder.load_training(config, init_state(config, run_keys(0)[0], 784, 10))
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


def test_sigterm_stops_like_ctrl_c(tmp_path, slow_dir):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(slow_dir), "--out", str(out), "--epochs", str(SLOW_EPOCHS)]
    returncode, stderr = signal_after_first_epoch(args, out, signal.SIGTERM)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and lines(stderr)[-1].startswith("interrupted; epochs 1-")
    config = TrainConfig(epochs=SLOW_EPOCHS)
    folder = RunFolder(out, data_info=load_idx_folder(slow_dir).describe())
    _, saved_history = folder.load_training(config, init_state(config, run_keys(0)[0], 784, 10))
    assert 1 <= len(saved_history) < SLOW_EPOCHS


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_write(tmp_path, monkeypatch):
    data = synthetic_dataset()
    config = TrainConfig(epochs=3, dataset=data.name)  # a run on your own arrays records their name
    first = train(config.replace(epochs=1), data, out_dir=tmp_path / "run")
    second = train(config.replace(epochs=2), data)
    folder = RunFolder(tmp_path / "run", data_info=data.describe())
    real_fsync = os.fsync

    def ctrl_c_twice(fd):  # the user presses Ctrl-C twice while each file is being written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt):
        folder.save_training(config, second.state, second.history)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the interrupt came after both files were complete: checkpoint and history agree on epoch 2
    state, saved = folder.load_training(config, init_state(config, run_keys(0)[0], 784, 10))
    assert len(saved) == 2 and history(tmp_path / "run") == saved
    assert np.asarray(state.params[0]["w"]).tobytes() == np.asarray(second.params[0]["w"]).tobytes()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())
    assert measured(saved) == measured(second.history) and measured(saved[:1]) == measured(first.history)


# -- 3. divergence -----------------------------------------------------------------------------

# With L2 coefficient 1 and rate 3 every step multiplies the weights by 1 - 3 = -2: they
# overflow float32 during epoch 4 of 20 steps each, while epochs 1-3 stay finite.
DIVERGING = TrainConfig(l2=1.0, epochs=8)


def test_library_reports_divergence_with_the_last_finite_params():
    data = synthetic_dataset()
    result = train(DIVERGING, data)
    assert result.diverged and result.status == "diverged"
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["diverged"] and not np.isfinite(result.history[-1]["train_cost"])
    assert result.record["diverged_epoch"] == 4 and result.record["epochs_completed"] == 3
    three = train(DIVERGING.replace(epochs=3), data)
    assert not three.diverged
    for layer, expected in zip(result.params, three.params):
        assert np.isfinite(np.asarray(layer["w"])).all()
        assert np.asarray(layer["w"]).tobytes() == np.asarray(expected["w"]).tobytes()


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
    # a NaN or infinite cost is written as null (strict JSON has neither)
    assert records[-1]["diverged"] is True and records[-1]["train_cost"] is None


# -- 4. no clobbering, nothing outside --out -------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_out_folder_holding_a_run_is_refused_and_left_untouched(tmp_path, small_dir, capsys):
    out = tmp_path / "run"
    base = ["train", "--data-dir", str(small_dir), "--out", str(out)]
    assert cli.main([*base, "--epochs", "1"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    refusals = {
        (): f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it",
        ("--epochs", "2", "--lr", "0.1"): f"{out} already holds a run; pass --resume",
        ("--resume", "--overwrite"): "--resume and --overwrite contradict each other",
        ("--resume", "--lr", "1"): "--resume with a different config (lr 3.0 (saved) vs 1.0)",
        ("--resume", "--hidden", "30"): "--resume with a different config (hidden [16, 16] (saved) vs [30])",
        ("--resume", "--epochs", "0"): "argument --epochs: 0 must be >= 1",
    }
    for flags, message in refusals.items():
        try:
            code = cli.main([*base, *flags])
        except SystemExit as exc:  # a value refused while parsing flags
            code = exc.code
        assert code == 2, flags
        err = capsys.readouterr().err
        # one error line (argparse shows its usage lines above a flag it refuses)
        *usage, error = err.strip("\n").splitlines()
        assert message in error and all(line.startswith(("usage:", " ")) for line in usage), err
        assert snapshot(out) == before
    (out / "notes.txt").write_text("mine")
    assert cli.main([*base, "--epochs", "2", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the run's files only
    assert len(history(out)) == 2


def test_resume_refuses_other_data_and_an_empty_folder(tmp_path, small_dir, capsys):
    out = tmp_path / "run"
    other = write_idx_folder(tmp_path / "other", synthetic_dataset(200, 50, seed=1), compress=False)
    assert cli.main(["train", "--data-dir", str(small_dir), "--out", str(out), "--epochs", "2"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert cli.main(["train", "--data-dir", str(other), "--out", str(out), "--resume", "--epochs", "3"]) == 2
    assert "--resume with different data: the run trained on 200 training images" in capsys.readouterr().err
    assert cli.main(["train", "--data-dir", str(small_dir), "--out", str(out), "--resume", "--epochs", "1"]) == 2
    assert "has already completed 2 epochs, more than --epochs 1" in capsys.readouterr().err
    assert snapshot(out) == before
    assert cli.main(["train", "--data-dir", str(small_dir), "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "no run to resume; run without --resume to start one" in capsys.readouterr().err
    assert cli.main(["train", "--data-dir", str(small_dir), "--out", str(out / HISTORY_FILE)]) == 2
    assert "--out must be a folder, and this is a file" in capsys.readouterr().err


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def isolated(tmp_path_factory, small_dir):
    """A fresh ``EPOCHS``-epoch run with an empty working folder, HOME and TMPDIR: returns the
    root, the environment, the tree before the run, the run's --out folder and a copy of it."""
    root = tmp_path_factory.mktemp("isolated")
    for name in ("cwd", "home", "tmp"):
        (root / name).mkdir()
    env = {**os.environ, "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
           "XDG_CACHE_HOME": str(root / "home" / ".cache")}
    out = root / "results" / "deep" / "run"
    before = tree(root)
    done = jaxdigits("train", "--data-dir", small_dir, "--out", out, "--epochs", EPOCHS, cwd=root / "cwd", env=env)
    assert done.returncode == 0, done.stderr
    return root, env, before, out, shutil.copytree(out, tmp_path_factory.mktemp("copy") / "run")


def test_nothing_is_written_outside_out(isolated, small_dir):
    root, env, before, out, _ = isolated
    data_before = tree(small_dir)
    resumed = jaxdigits("train", "--data-dir", small_dir, "--out", out, "--epochs", EPOCHS + 1, "--resume",
                        cwd=root / "cwd", env=env)
    assert resumed.returncode == 0, resumed.stderr
    after = tree(root)
    assert set(after) - set(before) == {
        "results", "results/deep", "results/deep/run", *(f"results/deep/run/{name}" for name in RUN_FILES)
    }
    assert {k: v for k, v in after.items() if k in before} == before  # cwd, HOME, TMPDIR untouched
    assert tree(small_dir) == data_before
    assert len(history(out)) == EPOCHS + 1


# -- 8. determinism ----------------------------------------------------------------------------


def test_same_seed_and_config_give_identical_runs_across_processes(isolated, small_dir, reference):
    again = isolated[4]  # another process, another folder, another HOME: the same run
    assert_same_params(again / PARAMS_FILE, reference / PARAMS_FILE)
    assert_same_params(again / CHECKPOINT_FILE, reference / CHECKPOINT_FILE)
    assert measured(history(again)) == measured(history(reference))
    # and in this process, through the library, from the same files
    result = train(TrainConfig(epochs=EPOCHS), load_idx_folder(small_dir))
    assert measured(result.history) == measured(history(reference))
    saved = load_file(reference / PARAMS_FILE)
    for name, array in checkpoint.params_to_tensors(params_to_numpy(result.params)).items():
        assert array.tobytes() == saved[name].tobytes()
