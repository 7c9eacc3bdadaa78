"""A training run's ``--out`` folder (``jaxdigits.run_folder``): kills and Ctrl-C during a
checkpoint write, a full disk, occupied or mismatched folders refused and left untouched, and
nothing written outside the folder.

The command-line cases run ``python -m jaxdigits`` in a subprocess on small synthetic IDX data,
so signals, exit codes and the files left behind are exactly what a user gets.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from jaxdigits import cli
from jaxdigits.checkpoint import CHECKPOINT_FILE, HISTORY_FILE, PARAMS_FILE, RUN_FILES, load_params
from jaxdigits.core.config import TrainConfig
from jaxdigits.core.epoch import init_state, run_keys
from jaxdigits.run_folder import RunFolder
from jaxdigits.training import train
from tests.conftest import EPOCHS, jaxdigits, synthetic_dataset, tree, write_idx_folder
from tests.helpers import assert_same_params, history, measured, temporaries


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
    state, saved, _ = folder.load_training(config, init_state(config, run_keys(0)[0], 784, 10))
    assert len(saved) == 2 and history(tmp_path / "run") == saved
    assert np.asarray(state.params[0]["w"]).tobytes() == np.asarray(second.params[0]["w"]).tobytes()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())
    assert measured(saved) == measured(second.history) and measured(saved[:1]) == measured(first.history)


def test_a_full_disk_during_training_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    data_dir = write_idx_folder(tmp_path / "data", synthetic_dataset(), compress=False)
    out = tmp_path / "run"
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync
    checkpoints, doomed = [], set()

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if Path(name).name.startswith(f".{CHECKPOINT_FILE}."):
            checkpoints.append(name)
            if len(checkpoints) == 3:
                doomed.add(fd)
        return fd, name

    def fsync(fd):
        if fd in doomed:  # the disk fills while epoch 3's checkpoint is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)
    args = ["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "4"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"jaxdigits train: error: {out / CHECKPOINT_FILE}: cannot write (No space left on device); "
        "the previous version, if any, is intact"
    )
    assert RunFolder(out).completed_epochs() == 2 and len(json.loads((out / "history.json").read_text())) == 2
    assert temporaries(out) == []
    monkeypatch.undo()
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), "--resume"]) == 0
    uninterrupted = train(TrainConfig(epochs=4), write_and_load(data_dir))
    for resumed, straight in zip(load_params(out)[0], uninterrupted.params):
        assert np.asarray(resumed["w"]).tobytes() == np.asarray(straight["w"]).tobytes()


def write_and_load(folder: Path):
    from jaxdigits.data import load_idx_folder

    return load_idx_folder(folder)


# --- no clobbering, nothing outside --out ---------------------------------------------------------


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


def test_a_scheduled_run_cannot_be_extended_and_the_refusal_says_why(tmp_path):
    data = synthetic_dataset(60, 10)
    config = TrainConfig(hidden=(8,), epochs=1, schedule="cosine")
    train(config, data, out_dir=tmp_path / "run")
    with pytest.raises(cli.ConfigError, match="cosine schedule spans the run's 1 epochs, so a scheduled run cannot be extended"):
        train(config.replace(epochs=2), data, out_dir=tmp_path / "run", resume=True)
    train(config.replace(schedule="constant"), data, out_dir=tmp_path / "constant")
    longer = train(config.replace(schedule="constant", epochs=2), data, out_dir=tmp_path / "constant", resume=True)
    assert len(longer.history) == 2  # a constant rate can be extended
