"""Checkpoints (``jaxdigits.checkpoint``): safetensors only (never pickle), full metadata, and one
clear ``CheckpointError`` for any file that is truncated, corrupted, tampered with, unsafe, of
another network, holds non-finite weights or is a special file."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import jax
import jaxlib
import numpy as np
import pytest

from jaxdigits import checkpoint, cli
from jaxdigits.checkpoint import (
    CHECKPOINT_FILE, PARAMS_FILE, PARAMS_FORMAT, RUN_FILE, TRAINING_FORMAT,
    load_arrays, load_params, network_spec, params_to_tensors, save_arrays,
)
from jaxdigits.core.config import FIELDS, TrainConfig
from jaxdigits.core.epoch import init_state, run_keys
from jaxdigits.core.errors import CheckpointError
from jaxdigits.run_folder import RunFolder
from jaxdigits.training import train
from tests.conftest import deadline, synthetic_dataset
from tests.helpers import SPECIAL, assert_one_line_naming, needs_posix, params_to_numpy

PACKAGE = Path(checkpoint.__file__).parent
CONFIG = TrainConfig(epochs=2)
# A run on your own arrays records the data's name as its dataset.
RUN_CONFIG = CONFIG.replace(dataset="custom")
LESSON_NETWORK = {"sizes": [784, 16, 16, 10], "activation": "sigmoid", "output": "sigmoid", "dtype": "float32"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch run on synthetic data: ``(folder, result, data)``."""
    data = synthetic_dataset()
    out = tmp_path_factory.mktemp("finished") / "run"
    return out, train(CONFIG, data, out_dir=out), data


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A private copy of the finished run's folder."""
    return Path(shutil.copytree(finished[0], tmp_path / "run"))


def test_params_round_trip_with_full_metadata(finished):
    out, result, data = finished
    params, info = load_params(out)
    assert TrainConfig.from_dict(info["config"]) == RUN_CONFIG == result.config
    assert info["network"] == LESSON_NETWORK == network_spec(params)
    for saved, trained in zip(params, result.params):
        for key in ("w", "b"):
            assert np.asarray(saved[key]).tobytes() == np.asarray(trained[key]).tobytes()
    run = json.loads((out / RUN_FILE).read_text())
    assert info["record"] == run
    for record in (info["record"], run):
        assert record["data"] == data.describe()
        assert record["data"]["train_examples"] == 200 and record["data"]["test_examples"] == 50
        assert record["epochs_completed"] == 2 and record["status"] != "diverged" and record["diverged_epoch"] is None
        assert record["test_accuracy"] == result.history[-1]["test_accuracy"]
        environment = record["environment"]
        assert environment["jax"] == jax.__version__ and environment["jaxlib"] == jaxlib.__version__
        assert environment["device_kind"] == jax.devices()[0].device_kind
    assert {name: run[name] for name in FIELDS} == RUN_CONFIG.to_dict()
    _, training = load_arrays(out / CHECKPOINT_FILE, TRAINING_FORMAT)
    assert training["config"] == RUN_CONFIG.to_dict() and training["epoch"] == 2
    assert training["history"] == json.loads((out / "history.json").read_text())
    assert training["environment"]["jax"] == jax.__version__ and training["data"] == run["data"]


def flipped(raw: bytes, position: int, mask: int) -> bytes:
    return raw[:position] + bytes([raw[position] ^ mask]) + raw[position + 1 :]


@pytest.mark.parametrize("name, fmt", [(PARAMS_FILE, PARAMS_FORMAT), (CHECKPOINT_FILE, TRAINING_FORMAT)])
def test_every_corrupted_header_byte_and_sampled_data_byte_is_refused(run_dir, name, fmt):
    path = run_dir / name
    raw = path.read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little")
    data_positions = np.random.default_rng(0).choice(np.arange(header_end, len(raw)), 100, replace=False)
    bad = run_dir / "bad.safetensors"
    loaded = []
    # 0x01 turns a character of the JSON header into its neighbour ('3' -> '2', '"' -> '#'), the
    # subtle kind of damage; in the tensor data a high bit flip is as likely
    for position in [*range(header_end), *data_positions.tolist(), len(raw) - 1]:
        for mask in (0x01,) if position < header_end else (0x01, 0x80):
            bad.write_bytes(flipped(raw, position, mask))
            try:
                load_arrays(bad, fmt)
            except CheckpointError as exc:
                assert str(exc).startswith(f"{bad}: ")
            else:
                loaded.append((position, mask))
    assert not loaded, f"corrupted files loaded without error (byte, bit mask): {loaded[:10]}"


@pytest.mark.parametrize("name", [PARAMS_FILE, CHECKPOINT_FILE])
def test_truncated_files_are_refused(finished, run_dir, name):
    path = run_dir / name
    raw = path.read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for cut in sorted({0, 1, 7, 8, 9, header_end // 2, header_end - 1, header_end, header_end + 1, len(raw) // 2, len(raw) - 1}):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: not a readable safetensors file"):
            if name == PARAMS_FILE:
                load_params(path)
            else:
                RunFolder(run_dir, data_info=finished[2].describe()).load_training(RUN_CONFIG, template())


def template():
    """A fresh training state of the finished run's config (784 inputs, 10 classes)."""
    return init_state(RUN_CONFIG, run_keys(0)[0], 784, 10)


def save_params_file(path: Path, tensors: dict, network: dict, fmt: str = PARAMS_FORMAT) -> Path:
    """Save ``tensors`` as a params file whose header records ``network`` (sizes, activation, ...)."""
    save_arrays(path, tensors, fmt, {"config": RUN_CONFIG.to_dict(), "network": network})
    return path


MISMATCHES = {
    "other sizes": (lambda t: t, {"sizes": [784, 30, 10]}, r"array 'params.0.w' is float32\[784, 16\], expected float32\[784, 30\]"),
    "missing array": (lambda t: {k: v for k, v in t.items() if k != "params.1.b"}, {}, "missing array 'params.1.b'"),
    "extra layer": (lambda t: {**t, "params.3.w": np.zeros((10, 10), np.float32)}, {}, "holds more layers than sizes"),
    "float64": (lambda t: {**t, "params.0.b": t["params.0.b"].astype(np.float64)}, {}, r"is float64\[16\], expected float32\[16\]"),
    "invalid recorded sizes": (lambda t: t, {"sizes": [784, 16, 0, 10]}, "recorded network is unreadable"),
    "missing recorded field": (lambda t: t, {"activation": None}, "recorded network is unreadable"),
    "unknown activation": (lambda t: t, {"activation": "swish"}, "activation 'swish' is not one of"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_arrays_that_do_not_match_the_recorded_network_are_refused(finished, tmp_path, case):
    change, network_change, message = MISMATCHES[case]
    tensors = change(params_to_tensors(params_to_numpy(finished[1].params)))
    network = {k: v for k, v in {**LESSON_NETWORK, **network_change}.items() if v is not None}
    path = save_params_file(tmp_path / "p.safetensors", tensors, network)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: .*{message}"):
        load_params(path)


def test_format_and_version_are_checked(run_dir, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="format 'jaxdigits-training-state', expected 'jaxdigits-params'"):
        load_params(run_dir / CHECKPOINT_FILE)
    params = params_to_tensors(params_to_numpy(load_params(run_dir)[0]))
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 3)
    future = save_params_file(tmp_path / "future.safetensors", params, LESSON_NETWORK)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="format version '3'; this jaxdigits reads version 2"):
        load_params(future)


def test_a_tampered_resume_checkpoint_is_refused(finished, run_dir):
    tensors, info = load_arrays(run_dir / CHECKPOINT_FILE, TRAINING_FORMAT)
    folder = RunFolder(run_dir, data_info=finished[2].describe())
    cases = {
        "its optimizer state holds 6 arrays where this jaxdigits keeps 7": (
            {k: v for k, v in tensors.items() if k != "opt_state.0"}, info),
        "optimizer state does not match": ({**tensors, "opt_state.1": np.zeros(3, np.float32)}, info),
        "history does not match the recorded epoch": (tensors, {**info, "epoch": 3}),
        "RNG key does not match seed 0": ({**tensors, "rng.seed_key": np.array([0, 1], np.uint32)}, info),
    }
    for message, (changed_tensors, changed_info) in cases.items():
        save_arrays(run_dir / CHECKPOINT_FILE, changed_tensors, TRAINING_FORMAT, changed_info)
        with pytest.raises(CheckpointError, match=message):
            folder.load_training(RUN_CONFIG, template())


def test_a_large_file_of_another_kind_is_refused_without_reading_it(tmp_path):
    import tracemalloc

    path = tmp_path / "dataset.tar"
    with open(path, "wb") as f:  # 256 MiB (sparse) whose first bytes are no safetensors header
        f.write(b"ustar\x00\x00\x00")
        f.truncate(256 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=f"^{path}: not a readable safetensors file.*header runs past"):
            load_params(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


class Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_loaded(tmp_path):
    marker = tmp_path / "pickle-was-executed"
    attempts = {
        "pickle.safetensors": pickle.dumps(Payload(marker)),
        "npy-with-objects.safetensors": None,
    }
    np.save(tmp_path / "objects.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    attempts["npy-with-objects.safetensors"] = (tmp_path / "objects.npy").read_bytes()
    for name, raw in attempts.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load_params(tmp_path / name)
    assert not marker.exists()


def test_the_package_never_uses_pickle():
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle)\b|allow_pickle\s*=\s*True|torch\.load", re.M)
    offenders = [p.name for p in PACKAGE.glob("*.py") if pattern.search(p.read_text())]
    assert not offenders


# --- special files, huge sparse tails, impossible headers, non-finite weights ---------------------


@needs_posix
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_as_a_checkpoint_is_named_for_what_it_is(tmp_path, kind):
    make, expected = SPECIAL[kind]
    path = make(tmp_path / PARAMS_FILE)
    with deadline(5), pytest.raises(CheckpointError) as raised:
        load_arrays(path, PARAMS_FORMAT)
    assert expected in assert_one_line_naming(raised.value, path)
    with deadline(5), pytest.raises(CheckpointError) as raised:  # through the public loader too
        load_params(path)
    assert_one_line_naming(raised.value, path)


def _tensors(value: float = 0.5) -> dict[str, np.ndarray]:
    return {"params.0.w": np.full((784, 16), value, np.float32), "params.0.b": np.zeros(16, np.float32)}


def test_a_checkpoint_with_a_huge_sparse_tail_is_refused_without_reading_it(tmp_path):
    path = tmp_path / PARAMS_FILE
    save_arrays(path, _tensors(), PARAMS_FORMAT, {"note": "valid"})
    load_arrays(path, PARAMS_FORMAT)  # valid before the tail is added
    with open(path, "r+b") as f:
        f.truncate(40 * 2**30)  # 40 GiB, sparse: costs no disk
    tracemalloc.start()
    start = time.monotonic()
    try:
        with deadline(10), pytest.raises(CheckpointError) as raised:
            load_arrays(path, PARAMS_FORMAT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 2 and peak < 1 << 20
    assert "bytes after the" in assert_one_line_naming(raised.value, path)


def test_a_checkpoint_header_declaring_more_data_than_the_file_holds_is_refused(tmp_path):
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}).encode()
    path = tmp_path / PARAMS_FILE
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="header declares 4294967296 data bytes, the file holds 64") as raised:
            load_arrays(path, PARAMS_FORMAT)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    assert_one_line_naming(raised.value, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_under_a_valid_digest_are_refused(tmp_path, bad):
    path = tmp_path / PARAMS_FILE
    tensors = _tensors()
    tensors["params.0.w"][3, 7] = bad
    save_arrays(path, tensors, PARAMS_FORMAT, {"note": "digest is valid"})
    with pytest.raises(CheckpointError) as raised:
        load_arrays(path, PARAMS_FORMAT)
    message = assert_one_line_naming(raised.value, path)
    assert message == f"{path}: holds non-finite values in params.0.w; the run diverged or the file was edited"
    # training state too (optimizer moments), and integer tensors are not checked for finiteness
    save_arrays(path, {"opt_state.1": np.array([1.0, bad], np.float32), "rng.seed_key": np.arange(2, dtype=np.uint32)},
                TRAINING_FORMAT, {})
    with pytest.raises(CheckpointError, match="non-finite values in opt_state.1"):
        load_arrays(path, TRAINING_FORMAT)


# -- evaluate and predict on files they cannot use: one line, exit 1 -------------------------------


def _truncate(run):
    path = run / PARAMS_FILE
    path.write_bytes(path.read_bytes()[:5000])
    return path


def _flip(run):
    path = run / PARAMS_FILE
    raw = path.read_bytes()
    path.write_bytes(flipped(raw, len(raw) - 3, 0x10))
    return path


def _other_network(run):
    params = init_state(TrainConfig(hidden=(30,)), run_keys(0)[0], 784, 10).params
    tensors = params_to_tensors(params_to_numpy(params))
    return save_params_file(run / PARAMS_FILE, tensors, LESSON_NETWORK)


def _pickle(run):
    path = run / PARAMS_FILE
    path.write_bytes(pickle.dumps({"w": np.zeros(3)}))
    return path


def _empty(run):
    (run / PARAMS_FILE).write_bytes(b"")
    return run / PARAMS_FILE


def _unfinished(run):
    (run / PARAMS_FILE).unlink()
    return run


def _no_run(run):
    shutil.rmtree(run)
    run.mkdir()
    return run / PARAMS_FILE


UNUSABLE = {
    "truncated": (_truncate, "not a readable safetensors file"),
    "corrupted": (_flip, "checksum mismatch, the file is corrupted"),
    "another network": (_other_network, "expected float32[784, 16]"),
    "a pickle": (_pickle, "not a readable safetensors file"),
    "empty": (_empty, "not a readable safetensors file"),
    "unfinished run": (_unfinished, "the run has not finished"),
    "no run": (_no_run, "no such params file"),
}


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("png") / "digit.png"
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = 255
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case", UNUSABLE)
def test_evaluate_and_predict_refuse_unusable_params_in_one_line(run_dir, digit_png, command, case, capsys):
    breaker, message = UNUSABLE[case]
    named = breaker(run_dir)
    args = [command, str(run_dir)] + (["--data-dir", str(run_dir)] if command == "evaluate" else [str(digit_png)])
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"jaxdigits {command}: error: {named}: ") and message in captured.err


def test_a_corrupted_params_file_is_one_line_without_traceback_from_the_shell(run_dir, digit_png):
    _flip(run_dir)
    done = subprocess.run(
        [sys.executable, "-m", "jaxdigits", "predict", str(run_dir / PARAMS_FILE), str(digit_png)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == f"jaxdigits predict: error: {run_dir / PARAMS_FILE}: checksum mismatch, the file is corrupted\n"


def test_a_registered_activation_is_saved_by_name_and_refused_where_it_is_not_registered(tmp_path):
    import jaxdigits as jd

    jd.register_activation("swish_for_test", lambda v: v * jax.nn.sigmoid(2 * v))
    result = train(TrainConfig(activation="swish_for_test", hidden=(8,), epochs=1, lr=1.0), synthetic_dataset(60, 10),
                   out_dir=tmp_path / "run")
    network, _ = load_params(tmp_path / "run")
    assert network.activation == "swish_for_test"
    np.testing.assert_array_equal(network[0]["w"], result.params[0]["w"])
    elsewhere = subprocess.run([sys.executable, "-m", "jaxdigits", "evaluate", str(tmp_path / "run")], capture_output=True, text=True)
    assert elsewhere.returncode == 1 and "register_activation" in elsewhere.stderr and "Traceback" not in elsewhere.stderr
