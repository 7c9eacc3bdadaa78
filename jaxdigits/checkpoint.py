"""Checkpoints and run folders: safetensors arrays + JSON, written atomically, loaded with checks.

No pickle anywhere. Every array file records a format name and version, the network it holds
(sizes, activation, output function, dtype) and a SHA-256 of its tensors and metadata; loading
checks all of them and the array names, shapes and dtypes, so a truncated, corrupted or
mismatched file is refused with one clear ``CheckpointError``, and a loaded network computes as
it was trained.

A run folder (``--out``) holds:
    params.safetensors       final network (self-describing: network and config inside)
    run.json                 the run's record: config fields, status, final metrics, curves,
                             data, library versions, device (the same record a sweep writes)
    history.json             one record per epoch
    checkpoint.safetensors   params, optimizer state, RNG key, epoch and history after the last
                             complete epoch, for ``--resume``
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdigits.config import TrainConfig
from jaxdigits.errors import CheckpointError, ConfigError, InputError, RunFolderError
from jaxdigits.files import (RUN_MARKERS, check_regular_file, claim_folder, environment_info, interrupts_deferred, json_safe,
                             open_regular_file, write_atomic, write_json)
from jaxdigits.model import Network

FORMAT_VERSION = 2
PARAMS_FORMAT = "jaxdigits-params"
TRAINING_FORMAT = "jaxdigits-training-state"
PARAMS_FILE, CHECKPOINT_FILE, RUN_FILE, HISTORY_FILE = RUN_MARKERS
RUN_FILES = RUN_MARKERS


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


def network_spec(network: Network) -> dict[str, Any]:
    """What a file records about a network besides its arrays."""
    return {"sizes": list(network.sizes), "activation": network.activation, "output": network.output,
            "dtype": str(np.dtype(network.dtype))}


def params_to_tensors(network: Network, prefix: str = "params") -> dict[str, np.ndarray]:
    """``{"params.0.w": (784, 16), "params.0.b": (16,), ...}`` numpy arrays."""
    return {f"{prefix}.{i}.{k}": np.asarray(layer[k]) for i, layer in enumerate(network.layers) for k in ("w", "b")}


def network_from_tensors(tensors: dict[str, np.ndarray], spec: Any, path: Path, prefix: str = "params") -> Network:
    """The ``Network`` from ``tensors``, checking names, shapes and dtypes against ``spec``."""
    try:
        sizes = tuple(int(s) for s in spec["sizes"])
        dtype = np.dtype(spec["dtype"])
        activation, output = spec["activation"], spec["output"]
        if len(sizes) < 2 or min(sizes) < 1 or dtype not in (np.float32, np.float64):
            raise ValueError(f"sizes {list(sizes)}, dtype {dtype}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the recorded network is unreadable ({exc})") from None
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise CheckpointError(f"{path}: holds float64 params; set JAX_ENABLE_X64=1 in the environment (or call "
                              "jax.config.update('jax_enable_x64', True) first)")
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = {}
        for key, shape in (("w", (fan_in, fan_out)), ("b", (fan_out,))):
            name = f"{prefix}.{i}.{key}"
            if name not in tensors:
                raise CheckpointError(f"{path}: missing array {name!r} for sizes {list(sizes)}")
            if tensors[name].shape != shape or tensors[name].dtype != dtype:
                raise CheckpointError(
                    f"{path}: array {name!r} is {tensors[name].dtype}{list(tensors[name].shape)}, "
                    f"expected {dtype}{list(shape)} for sizes {list(sizes)}"
                )
            layer[key] = jnp.asarray(tensors[name])
        layers.append(layer)
    if sum(name.startswith(prefix + ".") for name in tensors) != 2 * len(layers):
        raise CheckpointError(f"{path}: holds more layers than sizes {list(sizes)} describe")
    try:
        return Network(layers, activation, output)
    except (ConfigError, InputError) as exc:  # Network refuses an unknown activation with InputError
        raise CheckpointError(f"{path}: {exc}") from None


def save_params(path: str | os.PathLike, network: Network, info: dict[str, Any] | None = None) -> None:
    """Save a network (arrays, sizes, activation, output function, dtype) and any ``info`` (for
    example its config), so that the file alone can be evaluated."""
    save_arrays(path, params_to_tensors(network), PARAMS_FORMAT, {**(info or {}), "network": network_spec(network)})


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
    return check_regular_file(path, f"params file (a run's --out folder or its {PARAMS_FILE})", CheckpointError)


def load_params(path: str | os.PathLike) -> tuple[Network, dict[str, Any]]:
    """``(network, info)`` from a params file or a run folder, checked; ``info["config"]`` holds
    the run's config fields when it was saved by a run."""
    path = resolve_params_path(path)
    tensors, info = load_arrays(path, PARAMS_FORMAT)
    return network_from_tensors(tensors, info.get("network"), path), info


def run_data(network: Network, info: dict[str, Any], data_dir: str | os.PathLike | None = None):
    """The data set a saved network was trained on (``info["config"]["dataset"]``, default
    ``mnist``) from ``data_dir`` (see ``load_mnist``), refused in one line when it does not fit
    the network's input and output sizes."""
    from jaxdigits.data import load_mnist

    dataset = (info.get("config") or {}).get("dataset", "mnist")
    data = load_mnist(data_dir, dataset)
    if data.name != dataset:
        raise ConfigError(f"the network was trained on {dataset} and these files are {data.name}; "
                          f"give --data-dir a folder with {dataset}")
    if data.inputs != network.sizes[0] or data.num_classes != network.sizes[-1]:
        raise ConfigError(f"the network takes {network.sizes[0]} inputs and {network.sizes[-1]} classes; "
                          f"{dataset} has {data.inputs} and {data.num_classes}")
    return data


def _differences(saved: dict, given: dict) -> list[str]:
    """What differs; more epochs may be asked for unless a schedule spans the run's epochs."""
    free = ("epochs",) if given.get("schedule", "constant") == "constant" else ()
    return [f"{k} {saved.get(k)} (saved) vs {given[k]}" for k in given if k not in free and saved.get(k) != given[k]]


class RunFolder:
    """The ``--out`` folder of one training run: claims it, checkpoints into it, resumes from it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = None

    def claim(self, resume: bool = False, overwrite: bool = False) -> None:
        """Lock the folder for this process and make it ready: a folder holding a run is resumed
        with ``resume``, replaced with ``overwrite`` (only the run's own files), refused otherwise."""
        self.lock = claim_folder(self.path, "run", RUN_FILES, resume=resume, overwrite=overwrite)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def saved_config(self) -> dict | None:
        """The config fields of the run to resume, or None when the folder holds no checkpoint."""
        path = self.path / CHECKPOINT_FILE
        if not path.is_file():
            return None
        config = load_arrays(path, TRAINING_FORMAT)[1].get("config")
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: the recorded config is unreadable")
        return config

    def completed_epochs(self) -> int:
        """How many epochs the resume checkpoint holds (0 when there is none)."""
        path = self.path / CHECKPOINT_FILE
        return int(load_arrays(path, TRAINING_FORMAT)[1].get("epoch", 0)) if path.is_file() else 0

    def save_training(self, config: TrainConfig, state, history: list[dict], data_info: dict) -> None:
        """Atomically checkpoint everything needed to resume after the last complete epoch.

        The checkpoint and ``history.json`` are written with Ctrl-C and SIGTERM held off, so both
        always describe the same epoch.
        """
        tensors = params_to_tensors(state.params)
        tensors.update({f"opt_state.{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree_util.tree_leaves(state.opt_state))})
        tensors["rng.seed_key"] = np.asarray(jax.random.PRNGKey(config.seed))
        info = {
            "config": config.to_dict(), "network": network_spec(state.params), "epoch": len(history),
            "history": history, "data": data_info, "environment": environment_info(),
        }
        with interrupts_deferred():
            save_arrays(self.path / CHECKPOINT_FILE, tensors, TRAINING_FORMAT, info)
            write_json(self.path / HISTORY_FILE, history)

    def load_training(self, config: TrainConfig, template, data_info: dict) -> tuple[Any, list[dict]]:
        """``(state, history)`` from the checkpoint; ``template`` is a fresh state of the same config.

        Refuses a checkpoint of another config (epochs aside) or of other data.
        """
        path = self.path / CHECKPOINT_FILE
        if not path.is_file():
            if any((self.path / name).exists() for name in RUN_FILES):
                raise RunFolderError(f"{self.path} holds a run but no {CHECKPOINT_FILE} to resume from; "
                                     "pass --overwrite to start it over")
            raise RunFolderError(f"{self.path}: no run to resume; run without --resume to start one")
        tensors, info = load_arrays(path, TRAINING_FORMAT)
        saved = info.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: the recorded config is unreadable")
        differences = _differences(saved, config.to_dict())
        if differences:
            raise ConfigError(
                f"--resume with a different config ({'; '.join(differences)}); drop those flags or use a new --out"
            )
        saved_data = info.get("data")
        if isinstance(saved_data, dict) and saved_data.get("sha256") != data_info.get("sha256"):
            raise ConfigError(
                f"--resume with different data: the run trained on {saved_data.get('train_examples')} "
                f"training images with sha256 {str(saved_data.get('sha256'))[:12]}, these are "
                f"{data_info['train_examples']} with {data_info['sha256'][:12]}; "
                "use the run's --data-dir or a new --out"
            )
        if not np.array_equal(tensors.get("rng.seed_key"), np.asarray(jax.random.PRNGKey(config.seed))):
            raise CheckpointError(f"{path}: RNG key does not match seed {config.seed}")
        network = network_from_tensors(tensors, info.get("network"), path)
        if network_spec(network) != network_spec(template.params):
            raise CheckpointError(f"{path}: the saved network {network_spec(network)} is not this config's")
        leaves, treedef = jax.tree_util.tree_flatten(template.opt_state)
        restored = []
        for i, leaf in enumerate(leaves):
            array = tensors.get(f"opt_state.{i}")
            if array is None or array.shape != np.shape(leaf) or array.dtype != np.asarray(leaf).dtype:
                raise CheckpointError(f"{path}: optimizer state does not match optimizer {config.to_dict()['optimizer']!r}")
            restored.append(jnp.asarray(array))
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
        return type(template)(network, jax.tree_util.tree_unflatten(treedef, restored)), history

    def save_result(self, network: Network, record: dict, history: list[dict]) -> None:
        """Write the final network, ``run.json`` (the run's record) and ``history.json``."""
        config = {name: record[name] for name in TrainConfig.__dataclass_fields__}
        with interrupts_deferred():
            save_params(self.path / PARAMS_FILE, network, {"config": config, "record": record})
            write_json(self.path / RUN_FILE, record)
            write_json(self.path / HISTORY_FILE, history)
