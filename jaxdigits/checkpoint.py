"""Checkpoints and run folders: safetensors arrays + JSON, written atomically, loaded with checks.

No pickle anywhere. Every array file records a format name and version, the config it belongs to
and a SHA-256 of its tensors and metadata; loading checks all three and the array names and
shapes, so a truncated, corrupted or mismatched file is refused with one clear ``CheckpointError``.

Every file is written atomically (temporary file in the same folder, fsync, rename), and the files
of one save are written with Ctrl-C held off, so a kill or an interrupt at any moment leaves the
folder as it was after the previous complete epoch.

A run folder (``--out``) holds:
    params.safetensors       final parameters (self-describing: config inside)
    run.json                 config, final metrics, library versions, device
    history.json             one record per epoch
    checkpoint.safetensors   params, optimizer state, RNG key, epoch and history after the last
                             complete epoch, for ``--resume``
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import signal
import tempfile
import threading
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxdigits.config import TrainConfig
from jaxdigits.errors import CheckpointError, ConfigError, RunFolderError
from jaxdigits.model import Params

FORMAT_VERSION = 1
PARAMS_FORMAT = "jaxdigits-params"
TRAINING_FORMAT = "jaxdigits-training-state"
PARAMS_FILE = "params.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
RUN_FILES = (PARAMS_FILE, CHECKPOINT_FILE, RUN_FILE, HISTORY_FILE)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over
    ``path``; a crash at any point leaves the previous file intact. A failed write (disk full,
    no permission) raises ``CheckpointError`` and leaves no temporary file behind.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path.name), suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write ({exc.strerror or exc}); the previous version, if any, is intact"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _temporary_prefix(name: str) -> str:
    return f".{name}."


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows syncing a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_deferring = threading.local()


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) off while a group of files is written; it takes effect right after.

    However often Ctrl-C is pressed, the files of one save are then all from the same epoch.
    Outside the main thread, where Python cannot catch signals, this does nothing (each file is
    still written atomically).
    """
    if threading.current_thread() is not threading.main_thread() or getattr(_deferring, "active", False):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """``write_atomic`` of ``value`` as indented, strict JSON (see ``json_safe``)."""
    write_atomic(path, (json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n").encode())


def environment_info() -> dict[str, str]:
    """Versions of the libraries that produced a result, and the device it ran on."""
    return dict(_environment())


@functools.lru_cache(maxsize=None)
def _environment() -> dict[str, str]:
    info = {}
    for package in ("jaxdigits", "jax", "jaxlib", "optax", "numpy"):
        try:
            info[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            info[package] = "unknown"
    device = jax.devices()[0]
    info.update(platform=device.platform, device_kind=device.device_kind, python=platform.python_version())
    return info


def describe_data(data, name: str) -> dict[str, Any]:
    """Name, sizes and SHA-256 of a ``Dataset``: recorded with a run, checked on ``--resume``."""
    h = hashlib.sha256()
    for array in data:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}:{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return {
        "name": name,
        "train_examples": int(len(data[0])),
        "test_examples": int(len(data[2])),
        "sha256": h.hexdigest(),
    }


def _digest(tensors: dict[str, np.ndarray], info_text: str) -> str:
    h = hashlib.sha256(info_text.encode())
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save_arrays(path: str | os.PathLike, tensors: dict[str, Any], fmt: str, info: dict[str, Any]) -> None:
    """Atomically write ``tensors`` as safetensors with ``info`` (JSON) and a digest in its header."""
    from safetensors.numpy import save

    # copy(order="C") keeps 0-d arrays 0-d, unlike np.ascontiguousarray.
    arrays = {name: np.asarray(value).copy(order="C") for name, value in tensors.items()}
    info_text = json.dumps(json_safe(info), allow_nan=False)
    header = {"format": fmt, "format_version": str(FORMAT_VERSION), "sha256": _digest(arrays, info_text), "info": info_text}
    write_atomic(path, save(arrays, metadata=header))


def load_arrays(path: str | os.PathLike, fmt: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by ``save_arrays``, checking its format, version, digest and values.

    Only the 8-byte header length, the header and the tensor bytes the header declares are read
    (see ``_read_safetensors``), so a file that is much larger than it claims costs nothing; a
    file with bytes after the declared data is refused, as is one whose float tensors hold NaN
    or infinity (even under a valid digest: such weights come from a diverged or edited run).
    """
    from safetensors.numpy import load

    path = Path(path)
    raw, header_len = _read_safetensors(path)
    try:
        tensors = load(raw)
        header = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as exc:  # safetensors reports truncation and garbage in several ways
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupted ({exc})") from None
    if header.get("format") != fmt:
        raise CheckpointError(f"{path}: format {header.get('format')!r}, expected {fmt!r}")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: format version {header.get('format_version')!r}; this jaxdigits reads version {FORMAT_VERSION}"
        )
    info_text = header.get("info")
    if not isinstance(info_text, str) or header.get("sha256") != _digest(tensors, info_text):
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupted")
    for name in sorted(tensors):
        array = tensors[name]
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            raise CheckpointError(
                f"{path}: holds non-finite values in {name}; the run diverged or the file was edited"
            )
    try:
        info = json.loads(info_text)
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: header has no readable info")
    return tensors, info


def _read_safetensors(path: Path) -> tuple[bytes, int]:
    """``(raw, header_len)``: the bytes of the safetensors file at ``path`` that its header declares.

    The file must be a regular file (a named pipe or a device is refused, never opened); the
    8-byte length, the header and then exactly the data bytes the header declares (its tensors'
    largest ``data_offsets`` end) are read, nothing more. A file that holds fewer bytes than that
    is truncated; one that holds more has a tail that is no part of any tensor (a failed write
    or another file appended) and is refused without reading it.
    """
    from jaxdigits.data import open_regular_file

    max_header_bytes = 100_000_000  # safetensors itself refuses larger headers

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupted ({problem})")

    try:
        with open_regular_file(path, "checkpoint", CheckpointError) as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            header_len = int.from_bytes(prefix, "little")
            # A header longer than the file means this is no safetensors file (or a truncated
            # one): refuse it before reading what may be gigabytes of something else.
            if len(prefix) < 8 or header_len > size - 8:
                raise refuse("header runs past the end of the file")
            if header_len > max_header_bytes:
                raise refuse(f"header of {header_len} bytes, more than any checkpoint needs")
            header_bytes = f.read(header_len)
            try:
                header = json.loads(header_bytes)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise refuse(f"header is not JSON: {exc}") from None
            if not isinstance(header, dict):
                raise refuse("header is not a JSON object")
            data_len = 0
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
                if not (
                    isinstance(offsets, list) and len(offsets) == 2
                    and all(type(o) is int and o >= 0 for o in offsets) and offsets[0] <= offsets[1]
                ):
                    raise refuse(f"tensor {name[:80]!r} has no valid data_offsets")
                data_len = max(data_len, offsets[1])
            held = size - 8 - header_len
            if data_len > held:
                raise refuse(f"header declares {data_len} data bytes, the file holds {held}")
            if data_len < held:
                raise refuse(f"{held - data_len} bytes after the {data_len} data bytes its header declares")
            data = f.read(data_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: too large to load into memory; is this a jaxdigits checkpoint?") from None
    if len(data) < data_len:  # the file shrank while being read
        raise refuse("the file ends early")
    return prefix + header_bytes + data, header_len


def params_to_tensors(params: Params, prefix: str = "params") -> dict[str, np.ndarray]:
    """``{"params.0.w": (784, 16), "params.0.b": (16,), ...}`` numpy arrays."""
    return {f"{prefix}.{i}.{k}": np.asarray(layer[k]) for i, layer in enumerate(params) for k in ("w", "b")}


def params_from_tensors(tensors: dict[str, np.ndarray], sizes: tuple[int, ...], path: Path, prefix: str = "params") -> Params:
    """The params pytree from ``tensors``, checking names and shapes against ``sizes``."""
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = {}
        for key, shape in (("w", (fan_in, fan_out)), ("b", (fan_out,))):
            name = f"{prefix}.{i}.{key}"
            if name not in tensors:
                raise CheckpointError(f"{path}: missing array {name!r} for sizes {list(sizes)}")
            if tensors[name].shape != shape or tensors[name].dtype != np.float32:
                raise CheckpointError(
                    f"{path}: array {name!r} is {tensors[name].dtype}{list(tensors[name].shape)}, "
                    f"expected float32{list(shape)} for sizes {list(sizes)}"
                )
            layer[key] = jax.numpy.asarray(tensors[name])
        params.append(layer)
    expected = 2 * len(params)
    if sum(name.startswith(prefix + ".") for name in tensors) != expected:
        raise CheckpointError(f"{path}: holds more layers than sizes {list(sizes)} describe")
    return params


def save_params(path: str | os.PathLike, params: Params, config: TrainConfig, info: dict[str, Any] | None = None) -> None:
    """Save params with their config (and any ``info``) so the file alone can be evaluated."""
    save_arrays(path, params_to_tensors(params), PARAMS_FORMAT, {"config": config.to_dict(), **(info or {})})


def resolve_params_path(path: str | os.PathLike) -> Path:
    """A params file, or the ``params.safetensors`` inside a run folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / PARAMS_FILE).is_file() and (path / CHECKPOINT_FILE).is_file():
            raise CheckpointError(
                f"{path}: the run has not finished (no {PARAMS_FILE} yet); "
                f"complete it with `jaxdigits train --out {path} --resume`"
            )
        path = path / PARAMS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such params file; give a run's --out folder or its {PARAMS_FILE}")
    return path


def _config_from_info(info: dict[str, Any], path: Path) -> TrainConfig:
    from jaxdigits.config import validate_config

    try:
        return validate_config(TrainConfig.from_dict(info["config"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"{path}: recorded config is unreadable ({exc})") from None


def load_params(path: str | os.PathLike) -> tuple[Params, TrainConfig, dict[str, Any]]:
    """``(params, config, info)`` from a params file or a run folder, validated."""
    path = resolve_params_path(path)
    tensors, info = load_arrays(path, PARAMS_FORMAT)
    config = _config_from_info(info, path)
    return params_from_tensors(tensors, config.sizes, path), config, info


def _differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    a, b = saved.to_dict(), given.to_dict()
    return [f"{k} {a[k]} (saved) vs {b[k]}" for k in a if k != "epochs" and a[k] != b[k]]


class RunFolder:
    """The ``--out`` folder of one training run: claims it, checkpoints into it, resumes from it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def holds_run(self) -> bool:
        """Whether the folder already holds files of a run."""
        return any((self.path / name).exists() for name in RUN_FILES)

    def claim(self, overwrite: bool = False) -> None:
        """Make the folder ready for a new run; refuse one that holds another run unless ``overwrite``.

        Only the run's own files are ever removed; anything else in the folder is left alone.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: --out must be a folder, and this is a file")
        try:
            if self.holds_run():
                if not overwrite:
                    raise RunFolderError(
                        f"{self.path} already holds a run; pass --resume to continue it or --overwrite to replace it"
                    )
                for name in RUN_FILES:
                    (self.path / name).unlink(missing_ok=True)
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"{self.path}: cannot use as --out ({exc.strerror or exc})") from None
        self.remove_temporaries()

    def remove_temporaries(self) -> None:
        """Delete temporary files that a run killed in the middle of a write left behind."""
        for name in RUN_FILES:
            for leftover in self.path.glob(f"{_temporary_prefix(name)}*.tmp"):
                leftover.unlink(missing_ok=True)

    def saved_config(self) -> TrainConfig | None:
        """The config of the run to resume, or None when the folder holds no checkpoint."""
        path = self.path / CHECKPOINT_FILE
        if not path.is_file():
            return None
        _, info = load_arrays(path, TRAINING_FORMAT)
        return _config_from_info(info, path)

    def completed_epochs(self) -> int:
        """How many epochs the resume checkpoint holds (0 when there is none)."""
        path = self.path / CHECKPOINT_FILE
        return int(load_arrays(path, TRAINING_FORMAT)[1].get("epoch", 0)) if path.is_file() else 0

    def save_training(self, config: TrainConfig, state, history: list[dict], data_info: dict | None = None) -> None:
        """Atomically checkpoint everything needed to resume after the last complete epoch.

        The checkpoint and ``history.json`` are written with Ctrl-C held off, so both always
        describe the same epoch.
        """
        leaves = jax.tree_util.tree_leaves(state.opt_state)
        tensors = params_to_tensors(state.params)
        tensors.update({f"opt_state.{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
        tensors["rng.seed_key"] = np.asarray(jax.random.PRNGKey(config.seed))
        info = {
            "config": config.to_dict(), "epoch": len(history), "history": history,
            "data": data_info, "environment": environment_info(),
        }
        with interrupts_deferred():
            save_arrays(self.path / CHECKPOINT_FILE, tensors, TRAINING_FORMAT, info)
            write_json_atomic(self.path / HISTORY_FILE, history)

    def load_training(self, config: TrainConfig, template, data_info: dict | None = None) -> tuple[Any, list[dict]]:
        """``(state, history)`` from the checkpoint; ``template`` is a fresh state of the same config.

        Refuses a checkpoint of another config (epochs aside) or, given ``data_info``, of other data.
        """
        path = self.path / CHECKPOINT_FILE
        if not path.is_file():
            raise RunFolderError(f"{self.path}: no checkpoint to resume from; run without --resume to start")
        tensors, info = load_arrays(path, TRAINING_FORMAT)
        saved = _config_from_info(info, path)
        differences = _differences(saved, config)
        if differences:
            raise ConfigError(
                f"--resume with a different config ({'; '.join(differences)}); drop those flags or use a new --out"
            )
        saved_data = info.get("data")
        if data_info and isinstance(saved_data, dict) and saved_data.get("sha256") != data_info.get("sha256"):
            raise ConfigError(
                f"--resume with different data: the run trained on {saved_data.get('train_examples')} "
                f"training images with sha256 {str(saved_data.get('sha256'))[:12]}, these are "
                f"{data_info['train_examples']} with {data_info['sha256'][:12]}; "
                "use the run's --data-dir or a new --out"
            )
        if not np.array_equal(tensors.get("rng.seed_key"), np.asarray(jax.random.PRNGKey(config.seed))):
            raise CheckpointError(f"{path}: RNG key does not match seed {config.seed}")
        params = params_from_tensors(tensors, config.sizes, path)
        leaves, treedef = jax.tree_util.tree_flatten(template.opt_state)
        restored = []
        for i, leaf in enumerate(leaves):
            array = tensors.get(f"opt_state.{i}")
            if array is None or array.shape != np.shape(leaf) or array.dtype != np.asarray(leaf).dtype:
                raise CheckpointError(f"{path}: optimizer state does not match optimizer {config.optimizer!r}")
            restored.append(jax.numpy.asarray(array))
        history = info.get("history")
        if (
            not isinstance(history, list)
            or len(history) != info.get("epoch")
            or any(not isinstance(h, dict) or h.get("epoch") != i + 1 for i, h in enumerate(history))
        ):
            raise CheckpointError(f"{path}: history does not match the recorded epoch")
        if len(history) > config.epochs:
            raise ConfigError(
                f"the run in {self.path} has already completed {len(history)} epochs, more than "
                f"--epochs {config.epochs}; pass --epochs {len(history)} or more"
            )
        self.remove_temporaries()
        return type(template)(params, jax.tree_util.tree_unflatten(treedef, restored)), history

    def save_result(
        self, config: TrainConfig, params: Params, history: list[dict], diverged: bool, data_info: dict | None = None
    ) -> None:
        """Write the final params, ``run.json`` (config, data, metrics, versions) and ``history.json``."""
        finished = [h for h in history if not h.get("diverged")]
        metrics = {
            "epochs_completed": len(finished),
            "diverged": diverged,
            "test_accuracy": finished[-1]["test_accuracy"] if finished else None,
            "train_accuracy": finished[-1]["train_accuracy"] if finished else None,
            "cost": finished[-1]["cost"] if finished else None,
        }
        environment = environment_info()
        extra = {"data": data_info, "metrics": metrics, "environment": environment}
        with interrupts_deferred():
            save_params(self.path / PARAMS_FILE, params, config, extra)
            write_json_atomic(self.path / RUN_FILE, {"config": config.to_dict(), **extra})
            write_json_atomic(self.path / HISTORY_FILE, history)
