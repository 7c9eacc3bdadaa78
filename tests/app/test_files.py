"""Files and folders (``jaxdigits.files``): atomic writes, appending on a full disk, regular-file
checks, and the ``--out`` lock: two processes, a lock left by a killed run, folders of the other
kind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jaxdigits as jd
from jaxdigits import files
from jaxdigits.core.errors import CheckpointError, DataError
from jaxdigits.files import check_regular_file, write_atomic
from tests.conftest import deadline, synthetic_dataset
from tests.helpers import _fifo, needs_posix, one_error_line, run_cli, temporaries


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    write_atomic(path, b"previous")
    for failing in ("fsync", "replace"):
        with monkeypatch.context() as patch:
            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            patch.setattr(os, failing, no_space)
            with pytest.raises(CheckpointError, match=f"^{path}: cannot write \\(No space left on device\\); the previous version"):
                write_atomic(path, b"next version, never complete")
        assert path.read_bytes() == b"previous"
        assert temporaries(tmp_path) == []
    write_atomic(path, b"next")
    assert path.read_bytes() == b"next" and temporaries(tmp_path) == []


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


@needs_posix
def test_check_regular_file_is_general(tmp_path):
    regular = tmp_path / "grid.json"
    regular.write_text("{}")
    assert check_regular_file(str(regular), "grid file") == regular
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'pipe'}: not a regular file .*give the grid file itself$"):
        check_regular_file(_fifo(tmp_path / "pipe"), "grid file", CheckpointError)
    with pytest.raises(DataError, match=f"^{tmp_path / 'absent.json'}: no such grid file$"):
        check_regular_file(tmp_path / "absent.json", "grid file", DataError)


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
    assert len(result.history) == 1 and (out / "run.json").is_file() and not (out / files.LOCK_FILE).exists()
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


def test_threads_of_one_process_cannot_share_a_folder():
    import tempfile
    import threading

    out, data, outcomes = tempfile.mkdtemp(), synthetic_dataset(200, 20), []
    barrier = threading.Barrier(3)

    def run():
        barrier.wait()
        try:
            jd.train(jd.TrainConfig(hidden=(8,), epochs=3), data, out_dir=out)
            outcomes.append("trained")
        except jd.RunFolderError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # exactly one thread trains there; the others are refused in one line (never a silent overwrite)
    assert outcomes.count("trained") == 1, outcomes
    refused = [o for o in outcomes if o != "trained"]
    assert all("in use by another thread of this process" in o or "holds a training run" in o or "holds a run" in o
               for o in refused), refused
    assert not (Path(out) / files.LOCK_FILE).exists()


@pytest.mark.parametrize("content", ["99999999999999999999", "-1", "0", "12abc", "\xff\xfe"])
def test_a_lock_that_names_no_process_is_stale(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / files.LOCK_FILE).write_bytes(content.encode("latin-1"))
    result = jd.train(jd.TrainConfig(hidden=(8,), epochs=1), synthetic_dataset(40, 10), out_dir=out)
    assert len(result.history) == 1 and not (out / files.LOCK_FILE).exists()


@needs_posix
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_lock_that_is_no_regular_file_is_one_line_and_never_hangs(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / files.LOCK_FILE
    if kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to("/dev/zero")
    with deadline(20):
        with pytest.raises(jd.RunFolderError, match="delete .*lock"):
            jd.train(jd.TrainConfig(hidden=(8,), epochs=1), synthetic_dataset(40, 10), out_dir=out)


def test_a_lock_whose_pid_is_alive_but_started_at_another_time_is_stale(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / files.LOCK_FILE).write_text(f"{os.getppid()} 1")  # a live pid, but not the process that wrote it
    result = jd.train(jd.TrainConfig(hidden=(8,), epochs=1), synthetic_dataset(40, 10), out_dir=out)
    assert len(result.history) == 1 and not (out / files.LOCK_FILE).exists()
    (out / files.LOCK_FILE).write_text(f"{os.getppid()} {files._process_start(os.getppid())}")  # the same, alive
    with pytest.raises(jd.RunFolderError, match="in use by another jaxdigits process"):
        jd.train(jd.TrainConfig(hidden=(8,), epochs=1), synthetic_dataset(40, 10), out_dir=out, overwrite=True)
