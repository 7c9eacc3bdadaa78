"""The devices a training runs on: meshes, CPU cores as devices, group sizes, memory, clusters.

Group sizes
    ``auto_group_size`` estimates what a configuration costs from its program: the bytes of its
    training state (``core.group.member_bytes``, from ``jax.eval_shape``) and of its activations.
    On a CPU a group's per-step working set (state and gradients of every member on a device) is
    kept within a quarter of that device's share of the L2 and L3 caches: one group much larger
    than that streams its weights from memory at every step, and its throughput per model falls
    (784-16-16-10 at batch 10 on 2 cores: 13.7 model-epochs/s as one group of 256 against 22.6 in
    groups of 64). On an accelerator, whose throughput grows with the group, a group is as large
    as half of the device memory (``memory_stats()["bytes_limit"]``) holds, counting the
    evaluation's activations too. Both are rounded down to a power of two per device.

Devices and hosts
    A group's configuration axis is sharded over every device in ``jax.devices()``; on a
    CPU-only host ``use_cpu_cores()`` (called by ``jaxdigits sweep`` before JAX starts) makes
    each core a device. For several hosts, ``join_cluster`` calls ``jax.distributed.initialize()``;
    every process then agrees with process 0 on what is done and on group sizes, and only
    process 0 reads and writes the results folder.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdigits.core.config import TrainConfig, program_key
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.group import MESH_AXIS, memory_estimate, member_bytes
from jaxdigits.core.metrics import EVAL_CHUNK
from jaxdigits.records import config_id, network_label

# A CPU group's working set stays within this share of the per-device L2 + L3 cache: the rest
# is left to the batches being gathered, the code and whatever else runs on the host.
CACHE_FRACTION = 0.25
# An accelerator group, evaluation included, stays within this share of the device's memory.
MEMORY_FRACTION = 0.5
# Where Linux describes the first core's caches.
CPU_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
# Used when the cache or the memory size cannot be read.
FALLBACK_CACHE_PER_CORE = 8 << 20
FALLBACK_DEVICE_MEMORY = 16 << 30
# At most this many configurations per device in one group, whatever the memory.
MAX_PER_DEVICE = 1 << 16


class GroupSize(NamedTuple):
    """What ``auto_group_size`` chose: ``size`` configurations per group (``per_device`` on each
    of ``devices`` devices) and ``reason``, one line saying why."""

    size: int
    per_device: int
    devices: int
    reason: str


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class DeviceWarning(UserWarning):
    """A sweep runs on fewer devices than the host could give it."""


def cpu_cache_per_core() -> tuple[int, str]:
    """``(bytes, source)``: the L2 and L3 cache a core has to itself (a shared cache divided by
    the cores sharing it), from ``CPU_CACHE_DIR`` (Linux sysfs), else ``os.sysconf``,
    else ``FALLBACK_CACHE_PER_CORE``."""
    total = 0
    for index in sorted(CPU_CACHE_DIR.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text())
            sharing = _cpu_count((index / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        if level >= 2 and kind in ("Unified", "Data"):
            total += size // max(sharing, 1)
    if total:
        return total, "sysfs"
    for name in ("SC_LEVEL2_CACHE_SIZE", "SC_LEVEL3_CACHE_SIZE"):
        try:
            total += max(int(os.sysconf(name)), 0)
        except (ValueError, OSError, AttributeError):
            pass
    if total:  # sysconf gives whole caches: assume the L3 is shared by every core
        return total, "sysconf"
    return FALLBACK_CACHE_PER_CORE, "assumed"


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMGB") or 0) * scale


def _cpu_count(cpu_list: str) -> int:
    count = 0
    for part in cpu_list.strip().split(","):
        if "-" in part:
            low, high = part.split("-")
            count += int(high) - int(low) + 1
        elif part:
            count += 1
    return count


def _power_of_two_below(n: float) -> int:
    n = int(max(1, min(n, MAX_PER_DEVICE)))
    return 1 << (n.bit_length() - 1)


def auto_group_size(config: TrainConfig, inputs: int, classes: int, devices: Sequence[jax.Device] | None = None) -> GroupSize:
    """How many configurations of ``config``'s program to train together on ``devices``
    (default: every device) so that throughput per model does not fall as the grid grows.

    CPU: ``per_device = 2^floor(log2(CACHE_FRACTION * cache / (2 * state + activations)))``,
    where ``cache`` is a core's L2 + L3 share times the cores per CPU device and ``state`` the
    bytes of one configuration's params and optimizer state (the 2: its gradients).
    Accelerators: ``per_device = 2^floor(log2(MEMORY_FRACTION * bytes_limit / (3 * state +
    activations + evaluation)))``, where ``evaluation`` is one configuration's activations on
    an evaluation chunk. The group is ``per_device`` times the device count.
    """
    devices = list(devices or jax.devices())
    device = devices[0]
    state, activations = member_bytes(config, inputs, classes)
    if device.platform == "cpu":
        cores = usable_cores()
        local = max(1, sum(d.process_index == device.process_index for d in devices))
        per_core, source = cpu_cache_per_core()
        cache = per_core * max(1, cores // local)
        working = 2 * state + activations
        per_device = _power_of_two_below(CACHE_FRACTION * cache / working)
        why = (f"{_mib(working * per_device)} working set per device within {CACHE_FRACTION:g} of "
               f"{_mib(cache)} L2+L3 cache ({source})")
    else:
        stats = _memory_stats(device)
        limit = stats.get("bytes_limit") or FALLBACK_DEVICE_MEMORY
        source = "memory_stats" if stats.get("bytes_limit") else "assumed"
        evaluation = EVAL_CHUNK * (sum(config.hidden) + classes) * jnp.dtype(config.dtype).itemsize
        footprint = 3 * state + activations + evaluation
        per_device = _power_of_two_below(MEMORY_FRACTION * limit / footprint)
        why = (f"{_mib(footprint * per_device)} per device within {MEMORY_FRACTION:g} of "
               f"{_mib(limit)} device memory ({source})")
    return GroupSize(per_device * len(devices), per_device, len(devices), why)


def _memory_stats(device: jax.Device) -> dict:
    try:
        return device.memory_stats() or {}
    except Exception:  # not every backend implements it
        return {}


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n < (1 << 30) else f"{n / (1 << 30):.1f} GiB"


def config_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``Mesh`` named ``"configs"`` over ``devices`` (default: every device, all hosts)."""
    return Mesh(np.asarray(list(devices or jax.devices())), (MESH_AXIS,))


def mesh_for(members: int, mesh: Mesh) -> Mesh:
    """The devices a group of ``members`` trains on: all of ``mesh``, or, on one host, only as
    many as it has members, so that a small group does not pay for filler copies on the rest."""
    if members >= mesh.size or jax.process_count() > 1:
        return mesh
    return Mesh(mesh.devices.reshape(-1)[:members], (MESH_AXIS,))


def use_cpu_cores(count: int | None = None) -> bool:
    """Make each CPU core a JAX device, so a sweep on a CPU-only host runs configurations in
    parallel over the cores. Works only before JAX starts its backend; returns whether it did.

    ``count`` defaults to the cores this process may use, unless ``XLA_FLAGS`` already sets
    ``--xla_force_host_platform_device_count``. Harmless where an accelerator is the default
    device (the CPU devices then go unused).
    """
    if count is not None and count < 1:
        raise ConfigError(f"cpu_devices must be at least 1, got {count}")
    if count is None and ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
                          or jax.config.jax_num_cpu_devices > 0):
        return False  # the device count was chosen already
    if count is None:
        count = usable_cores()
    if jax.config.jax_num_cpu_devices == count:
        return True
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # the backend already started: keep its devices
        return False
    return True


def auto_sizes(configs: Sequence[TrainConfig], datasets: dict[str, Dataset], devices: Sequence[jax.Device]) -> dict:
    """``auto_group_size`` for each program of ``configs``, keyed by ``program_key``."""
    sizes: dict[TrainConfig, GroupSize] = {}
    for config in configs:
        key = program_key(config)
        if key not in sizes:
            data = datasets[config.dataset]
            sizes[key] = auto_group_size(config, data.inputs, data.num_classes, devices)
    return sizes


def layout_line(mesh: Mesh, groups: Sequence[Sequence[TrainConfig]], sizes: dict, max_group_size: int | None,
                datasets: dict[str, Dataset]) -> str:
    """One line saying how a sweep is laid out: devices, group size, groups and why."""
    device = mesh.devices.flat[0]
    line = f"layout: {mesh.size} {device.platform} device(s) ({device.device_kind}), "
    if sizes:
        # programs that differ in anything but their sizes get the same line: say it once
        line += "; ".join(dict.fromkeys(f"group size {size.size} for {network_label(key, datasets[key.dataset])} "
                                        f"({size.per_device} per device: {size.reason})" for key, size in sizes.items()))
    else:
        line += f"group size at most {max_group_size} (given)"
    return line + f"; {len(groups)} group(s)"


def agree_on_sizes(sizes: dict) -> dict:
    """With several processes (whose caches may differ), every one uses process 0's sizes."""
    if jax.process_count() == 1 or not sizes:
        return sizes
    from jax.experimental import multihost_utils

    chosen = np.asarray(multihost_utils.broadcast_one_to_all(np.asarray([s.size for s in sizes.values()], np.int64)))
    return {key: size._replace(size=int(n), per_device=int(n) // size.devices) for (key, size), n in zip(sizes.items(), chosen)}


def agree_on_done(configs: Sequence[TrainConfig], done: dict[str, dict]) -> dict[str, dict]:
    """With several processes, every one must skip the same configurations: process 0 (which
    reads the results folder) decides and sends its records to the others."""
    if jax.process_count() == 1:
        return done
    from jax.experimental import multihost_utils

    source = jax.process_index() == 0
    payload = json.dumps([done.get(config_id(c)) for c in configs]).encode() if source else b""
    length = int(multihost_utils.broadcast_one_to_all(np.int64(len(payload))))
    buffer = np.frombuffer(payload, np.uint8) if source else np.zeros(length, np.uint8)
    records = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())
    return {config_id(c): r for c, r in zip(configs, records) if r is not None}


def available_memory() -> int | None:
    """Bytes the default device can use: an accelerator's memory limit, or the host's available
    memory (``MemAvailable``) for a CPU; ``None`` when unknown."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(config: TrainConfig, data: Dataset, members: int = 1) -> None:
    """Refuse a batch size larger than the training set, and a run whose estimated memory
    (``memory_estimate``) exceeds what the device has, before anything is allocated."""
    if config.batch_size > len(data.train_images):
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(data.train_images)} training images")
    if config.augment != "none" and math.isqrt(data.inputs) ** 2 != data.inputs:
        raise ConfigError(f"augment {config.augment!r} distorts square images; these have {data.inputs} inputs")
    needed, available = memory_estimate(config, data, members), available_memory()
    if available is not None and needed > 0.8 * available:
        what = f"{members} configurations of " if members > 1 else ""
        raise ConfigError(
            f"{what}hidden {list(config.hidden)} at batch_size {config.batch_size} need about {needed / 2**30:.1f} GiB "
            f"and {jax.devices()[0].platform} has {available / 2**30:.1f} GiB available; use a smaller batch_size or "
            "narrower hidden layers" + (" (or a smaller --group-size)" if members > 1 else "")
        )


def join_cluster(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                 timeout: int = 60) -> None:
    """``jax.distributed.initialize`` with a bounded wait; SIGTERM ends the wait at once (nothing
    is written yet), and a failure is one line."""
    import jax

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if coordinator and process_id:  # process 0 hosts the coordinator; the others first wait for it
            _wait_for_coordinator(coordinator, timeout)
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=timeout)
    except ConfigError:
        raise
    except Exception as exc:  # jax reports a missing cluster or a silent coordinator in several ways
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"--distributed: could not join a cluster within {timeout} s ({reason}); with no "
                          "cluster manager give --coordinator HOST:PORT --num-processes N --process-id I") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Wait until something listens at ``host:port`` (JAX's own wait ends in an abort, not an error)."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator {address!r} is not HOST:PORT")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ConfigError(f"--distributed: no coordinator answered at {address} within {timeout} s "
                                  f"({exc.strerror or exc}); start process 0 first, or raise --timeout") from None
            time.sleep(0.5)
