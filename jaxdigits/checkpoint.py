"""Checkpoints: safetensors arrays + JSON, written atomically, loaded with checks.

No pickle anywhere. Every array file records a format name and version, the network it holds
(sizes, activation, output function, dtype) and a SHA-256 of its tensors and metadata; loading
checks all of them and the array names, shapes and dtypes, so a truncated, corrupted or
mismatched file is refused with one clear ``CheckpointError``, and a loaded network computes as
it was trained.
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

from jaxdigits.core.errors import CheckpointError, ConfigError, InputError
from jaxdigits.files import RUN_MARKERS, check_regular_file, json_safe, open_regular_file, write_atomic
from jaxdigits.core.model import Network

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
        header = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}  # parsed once already: not too deep
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
    except (json.JSONDecodeError, RecursionError):
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
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise refuse(f"header is not JSON: {str(exc)[:200]}") from None
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
