"""Hyperparameter sweeps: many configurations trained together in one compiled program per shape.

    result = jaxdigits.sweep(hidden=[(16, 16), (32,)], lr=[0.3, 1, 3], seed=[0, 1], epochs=5,
                             data_dir="path/to/mnist", out_dir="runs/sweep")

How configurations are trained together
    A grid (``SweepGrid``) expands to one ``TrainConfig`` per combination; any config field is
    an axis. Configurations that compile to the same program (``config.program_key``: everything
    but the learning rate, the seed and the epoch count) and train for as many epochs form a
    *group*. A group runs the very functions single-run ``train`` runs: each member starts as
    ``train`` starts it (``run_keys``, ``init_state`` with its rate), and the states are stacked;
    then ``make_guarded_epoch``'s ``lax.scan`` epoch (keys ``fold_in(shuffle_key, epoch)``) and
    ``correct_count`` run under ``jax.vmap``: the parameters, the learning rate (a traced value in the optimizer
    state, ``optax.inject_hyperparams``) and the shuffle key have a configuration axis, so one
    compiled epoch trains the whole group, whatever its rates. A member's numbers equal those of
    ``train`` alone up to float rounding (a vmapped matrix product may round its last bit
    differently; over thousands of SGD steps at a large rate such differences grow until the
    two runs differ as two runs from nearby seeds do).

    Inside a group the configurations are laid out as a (seeds, rates) rectangle: an outer
    ``vmap`` over seeds and an inner one over the rates that share a seed. Configurations with
    the same seed draw the same mini-batches (as they would alone), so the inner ``vmap`` gathers
    each batch once and its first layer becomes one wide matrix product ``x @ [W_1 ... W_L]``;
    on a CPU this is what makes a sweep several times faster than training one after another.
    A block shorter than the longest is filled with copies of its first rate, whose results are
    dropped.

Why group by shape instead of padding different widths into one program
    Padding is exact only with masked units and the true fan-in, and every member then pays for
    the widest member of its depth. Measured on the hidden-size study (widths 4 to 256, one and
    two layers, 4 seeds, 30 epochs, a 2-core CPU): its 14 per-shape groups trained in 321 s in
    all; padded to the widest shape of each depth, the same work would have taken about 1110 s
    (each group at the 256-wide group's time), to save 12 compilations of about 0.6 s each.
    Grouping by shape is also exact by construction. So groups are by shape; within a shape
    nothing is padded but the rectangle's filler.

Group sizes
    ``sweep`` without ``max_group_size`` sizes each program's groups for the device
    (``auto_group_size``). What a configuration costs is estimated from its program: the bytes of
    its training state (params and optimizer state, from ``jax.eval_shape``) and of its
    activations. On a CPU a group's per-step working set (state and gradients of every member on
    a device) is kept within a quarter of that device's share of the L2 and L3 caches: one
    group much larger than that streams its weights from memory at every step, and its
    throughput per model falls (784-16-16-10 at batch 10 on 2 cores: 13.7 model-epochs/s as one
    group of 256 against 22.6 in groups of 64). On an accelerator, whose throughput grows with
    the group, a group is as large as half of the device memory (``memory_stats()["bytes_limit"]``)
    holds, counting the evaluation's activations too. Both are rounded down to a power of two
    per device, so the choice depends only on the program and the devices.

Devices
    The group's configuration axis is sharded over every device in ``jax.devices()`` with a 1-D
    ``Mesh`` (axis ``"configs"``) and ``NamedSharding``; the data is replicated. The axis of the
    rectangle that needs less padding (seeds or rates) is the sharded one, padded to a multiple
    of the device count with copies whose results are dropped: no configuration is ever left
    out. On a CPU-only host, ``use_cpu_cores()`` (called by ``jaxdigits sweep`` before JAX
    starts) makes each core a device, so the configurations also run in parallel over cores.
    For several hosts, call ``jax.distributed.initialize()`` first (``jaxdigits sweep
    --distributed``): ``jax.devices()`` then spans every host, each host computes its shard, and
    only process 0 reads and writes the results folder.

Results
    Each configuration gets the record ``train`` writes as ``run.json`` (``records.run_record``).
    With ``out_dir``, each finished group appends one JSON line per configuration to
    ``results.jsonl`` (flushed and fsynced), and running the same sweep again skips every
    configuration already there: see ``jaxdigits.sweep_folder``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdigits.config import SweepGrid, TrainConfig, program_key
from jaxdigits.data import Dataset, load_mnist
from jaxdigits.errors import ConfigError
from jaxdigits.progress import Progress
from jaxdigits.records import config_id, run_record, run_status, sizes_label
from jaxdigits.sweep_folder import SweepFolder
from jaxdigits.training import (EVAL_CHUNK, chance_level, check_dtype, check_fits, chunked_accuracy, compiled, count_correct,
                                device_images, eval_chunks, init_state, jitted, make_guarded_epoch, memory_estimate, run_keys)

MESH_AXIS = "configs"

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


def group_configs(configs: Sequence[TrainConfig],
                  max_group_size: int | Callable[[TrainConfig], int] | None = None) -> list[list[TrainConfig]]:
    """Split ``configs`` into groups that train as one program, in order of first appearance.

    A group holds configurations with the same ``program_key`` and epoch count, at most
    ``max_group_size`` of them (``None``: no limit; a function: its value for the group's first
    configuration, e.g. ``auto_group_size``'s), ordered by seed so that a split keeps seeds
    together.
    """
    limit = max_group_size if callable(max_group_size) else (lambda config: max_group_size)
    by_program: dict[tuple, list[TrainConfig]] = {}
    for config in configs:
        by_program.setdefault((program_key(config), config.epochs), []).append(config)
    groups = []
    for members in by_program.values():
        size = limit(members[0])
        if size is not None and size < 1:
            raise ConfigError(f"group size must be at least 1, got {size}")
        seed_order = {seed: i for i, seed in enumerate(dict.fromkeys(c.seed for c in members))}
        members = sorted(members, key=lambda c: seed_order[c.seed])  # stable: rate order kept
        size = size or len(members)
        groups.extend(members[i : i + size] for i in range(0, len(members), size))
    return groups


class GroupSize(NamedTuple):
    """What ``auto_group_size`` chose: ``size`` configurations per group (``per_device`` on each
    of ``devices`` devices) and ``reason``, one line saying why."""

    size: int
    per_device: int
    devices: int
    reason: str


def member_bytes(config: TrainConfig, inputs: int = 784, classes: int = 10) -> tuple[int, int]:
    """``(state, activations)``: bytes of one configuration's training state (params and
    optimizer state) and of its activations on one mini-batch (values and their gradients)."""
    state = jax.eval_shape(lambda: init_state(config, jax.random.PRNGKey(0), inputs, classes, learning_rate=jnp.float32(1.0)))
    state_bytes = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state))
    units = sum(config.hidden) + classes
    return state_bytes, 2 * config.batch_size * units * jnp.dtype(config.dtype).itemsize


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


def auto_group_size(config: TrainConfig, devices: Sequence[jax.Device] | None = None, inputs: int = 784,
                    classes: int = 10) -> GroupSize:
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
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
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


class GroupLayout(NamedTuple):
    """How a group's configurations sit in its (seeds, rates) rectangle.

    ``seeds (S,) int32``, ``learning_rates (S, L) float32`` and ``index (S, L) int``: the
    position of each cell's configuration in the group, ``-1`` for a filler cell. ``shard_axis``
    is the rectangle axis split over the devices (0 seeds, 1 rates).
    """

    seeds: np.ndarray
    learning_rates: np.ndarray
    index: np.ndarray
    shard_axis: int


def plan_layout(configs: Sequence[TrainConfig], num_devices: int = 1) -> GroupLayout:
    """The rectangle for a group, padded so that its sharded axis divides ``num_devices``."""
    blocks: dict[int, list[int]] = {}
    for i, config in enumerate(configs):
        blocks.setdefault(config.seed, []).append(i)
    rows, cols = len(blocks), max(len(b) for b in blocks.values())
    pad = lambda n: -(-n // num_devices) * num_devices  # noqa: E731
    shard_axis = 0 if pad(rows) * cols <= rows * pad(cols) else 1
    rows_total, cols_total = (pad(rows), cols) if shard_axis == 0 else (rows, pad(cols))
    block_list = list(blocks.values())
    seeds = np.zeros(rows_total, np.int32)
    rates = np.zeros((rows_total, cols_total), np.float32)
    index = np.full((rows_total, cols_total), -1, np.int64)
    for r in range(rows_total):
        block = block_list[r] if r < rows else block_list[0]  # filler rows copy the first block
        seeds[r] = configs[block[0]].seed
        for c in range(cols_total):
            member = block[c] if c < len(block) else block[0]  # filler cells copy the first rate
            rates[r, c] = configs[member].lr
            if r < rows and c < len(block):
                index[r, c] = member
    return GroupLayout(seeds, rates, index, shard_axis)


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
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jax.config.jax_num_cpu_devices == count:
        return True
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # the backend already started: keep its devices
        return False
    return True


def _put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from host data every process holds in full."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _fetch(array: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) array as numpy."""
    if getattr(array, "is_fully_addressable", True):
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _over_rectangle(fn: Callable, seed_args: tuple, rate_args: tuple) -> Callable:
    """``vmap`` over seeds (outer) of ``vmap`` over the rates of a seed (inner); ``*_args``
    give each argument's role: True = has that axis, False = shared."""
    inner = jax.vmap(fn, in_axes=tuple(0 if a else None for a in rate_args))
    return jax.vmap(inner, in_axes=tuple(0 if a else None for a in seed_args))


def group_epoch(program: TrainConfig) -> Callable:
    """``epoch(states, alive, shuffle_keys, epoch_number, images, labels)``: ``train``'s guarded
    epoch for every member of a (seeds, rates) rectangle, each with its own key, rate and
    ``alive`` flag (a diverged member keeps its last finite state)."""
    guarded = _over_rectangle(make_guarded_epoch(program), (True, True, True, False, False), (True, True, False, False, False))

    def epoch(states, alive, shuffle_keys, epoch_number, images, labels):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(shuffle_keys, epoch_number)
        return guarded(states, alive, keys, images, labels)

    return epoch


@functools.lru_cache(maxsize=None)
def exact_group_epoch(mesh: Mesh, cells: PartitionSpec) -> Callable[[TrainConfig], Callable]:
    """A builder like ``group_epoch`` whose members never share arithmetic: each device runs its
    members one after another (``lax.map``) through ``train``'s own unbatched epoch, so every
    member's numbers are bit for bit those of ``train`` alone, whatever the group and the device
    count. The devices still run in parallel (``shard_map`` over the configuration axis)."""

    def build(program: TrainConfig) -> Callable:
        guarded = make_guarded_epoch(program)

        def members(states, alive, keys, images, labels):
            s, l = alive.shape
            flat = lambda x: x.reshape((s * l,) + x.shape[2:])  # noqa: E731
            out = jax.lax.map(lambda m: guarded(m[0], m[1], m[2], images, labels),
                              (jax.tree_util.tree_map(flat, states), flat(alive), jnp.repeat(keys, l, axis=0)))
            return jax.tree_util.tree_map(lambda x: x.reshape((s, l) + x.shape[1:]), out)

        def epoch(states, alive, shuffle_keys, epoch_number, images, labels):
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(shuffle_keys, epoch_number)
            run = jax.shard_map(members, mesh=mesh, in_specs=(cells, cells, PartitionSpec(cells[0]), PartitionSpec(), PartitionSpec()),
                                out_specs=(cells, cells, cells))
            return run(states, alive, keys, images, labels)

        return epoch

    return build


def group_count(program: TrainConfig) -> Callable:
    """``count(networks, images, labels) -> (S, L)`` correct answers of every member."""
    return _over_rectangle(count_correct, (True, False, False), (True, False, False))


def init_rectangle(program: TrainConfig, layout: GroupLayout, sizes: tuple[int, int], cells: NamedSharding, rows: NamedSharding):
    """``(states (S, L, ...), shuffle_keys (S, 2))``: each member started exactly as ``train``
    starts it (``run_keys``, then ``init_state`` with its rate), stacked and sharded."""
    keys = {int(seed): run_keys(int(seed)) for seed in dict.fromkeys(layout.seeds.tolist())}
    states = [
        init_state(program, keys[int(seed)][0], *sizes, learning_rate=float(rate))
        for seed, row in zip(layout.seeds, layout.learning_rates)
        for rate in row
    ]
    shape = layout.learning_rates.shape

    def stack(*leaves):
        return _put(np.stack([np.asarray(leaf) for leaf in leaves]).reshape(shape + np.shape(leaves[0])), cells)

    shuffle_keys = np.stack([np.asarray(keys[int(seed)][1]) for seed in layout.seeds])
    return jax.tree_util.tree_map(stack, *states), _put(shuffle_keys, rows)


class DeviceData(NamedTuple):
    """A data set replicated on every device of a mesh, with its evaluation chunks."""

    train_images: jax.Array
    train_labels: jax.Array
    train_chunks: list
    test_chunks: list
    inputs: int
    classes: int
    chance: float


def put_data(data: Dataset, mesh: Mesh, dtype: str = "float32") -> DeviceData:
    """Replicate ``data`` on every device of ``mesh``, images as ``dtype``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    arrays = [_put(device_images(a, dtype) if a.dtype.kind == "f" else a, replicated) for a in data]
    return DeviceData(arrays[0], arrays[1], eval_chunks(arrays[0], arrays[1]), eval_chunks(arrays[2], arrays[3]),
                      data.inputs, data.num_classes, chance_level(data.train_labels))


def train_group(
    configs: Sequence[TrainConfig],
    data: DeviceData,
    mesh: Mesh,
    on_epoch: Callable[[int, int], None] | None = None,
    exact: bool = False,
) -> list[dict]:
    """Train ``configs`` (one program, see ``group_configs``) together; one record per config.

    Each config's numbers are those ``train(config, data)`` gives (same seed, same batches) up
    to float rounding; with ``exact``, bit for bit (see ``exact_group_epoch``).
    ``on_epoch(epoch, epochs)`` is called after each epoch.
    """
    start = time.perf_counter()
    program, epochs = program_key(configs[0]), configs[0].epochs
    if any((program_key(c), c.epochs) != (program, epochs) for c in configs):
        raise ConfigError("train_group needs configurations that differ only in learning rate and seed")
    layout = plan_layout(configs, mesh.size)
    spec = (MESH_AXIS, None) if layout.shard_axis == 0 else (None, MESH_AXIS)
    cells = NamedSharding(mesh, PartitionSpec(*spec))
    rows = NamedSharding(mesh, PartitionSpec(spec[0]))
    states, shuffle_keys = init_rectangle(program, layout, (data.inputs, data.classes), cells, rows)
    alive = _put(np.ones(layout.index.shape, bool), cells)
    compile_start = time.perf_counter()
    build = exact_group_epoch(mesh, cells.spec) if exact else group_epoch
    epoch_fn = compiled(build, program, states, alive, shuffle_keys, 1, data.train_images, data.train_labels,
                        out_shardings=(cells, cells, cells))
    count_fn = jitted(group_count, program, out_shardings=cells)
    compile_seconds = time.perf_counter() - compile_start
    real = [(r, c) for r, c in zip(*np.nonzero(layout.index >= 0))]
    histories: dict[tuple, list[dict]] = {cell: [] for cell in real}
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        states, alive, costs = epoch_fn(states, alive, shuffle_keys, epoch, data.train_images, data.train_labels)
        costs, alive_now = _fetch(costs), _fetch(alive)
        seconds = (time.perf_counter() - epoch_start) / len(configs)
        test = chunked_accuracy(count_fn, states.params, data.test_chunks, fetch=_fetch)
        for cell in real:
            history = histories[cell]
            if history and history[-1].get("diverged"):
                continue
            entry = {"epoch": epoch, "train_cost": float(costs[cell]), "test_accuracy": float(test[cell]), "seconds": seconds}
            history.append(entry if alive_now[cell] else {"epoch": epoch, "train_cost": float(costs[cell]),
                                                           "diverged": True, "seconds": seconds})
        if on_epoch is not None:
            on_epoch(epoch, epochs)
        if not alive_now[tuple(np.transpose(real))].any():
            break  # every member diverged: nothing left to train
    train_accuracy = chunked_accuracy(count_fn, states.params, data.train_chunks, fetch=_fetch)
    group_seconds = time.perf_counter() - start
    records = [None] * len(configs)
    for cell in real:
        history = histories[cell]
        finished = [h for h in history if not h.get("diverged")]
        if finished:
            finished[-1]["train_accuracy"] = float(train_accuracy[cell])
        records[layout.index[cell]] = run_record(
            configs[layout.index[cell]], history, run_status(history, data.chance),
            seconds=group_seconds / len(configs), group_size=len(configs), group_seconds=group_seconds,
            compile_seconds=compile_seconds, devices=mesh.size, exact=exact,
        )
    return records


class SweepResult(NamedTuple):
    """What ``sweep`` returns: one record per configuration of the grid, in grid order, and how
    many were trained now (the rest came from an earlier run's ``results.jsonl``)."""

    records: list[dict]
    trained: int
    resumed: int


def sweep(
    grid: SweepGrid | dict | None = None,
    data: Dataset | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    max_group_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    cpu_devices: int | None = None,
    exact: bool = False,
    progress: bool = False,
    **axes: Any,
) -> SweepResult:
    """Train every configuration of a grid; return one record per configuration.

    The grid is ``grid`` (a ``SweepGrid`` or a dict of axes) or the keyword ``axes``, named as
    ``TrainConfig``'s fields (``hidden=[(16, 16), (32,)], lr=[0.3, 3], seed=[0, 1], epochs=5``).
    ``data`` defaults to ``load_mnist(data_dir, name)`` for each ``dataset`` of the grid; with your
    own ``Dataset``, the grid's dataset is its name.

    With ``out_dir`` every finished group is appended to ``out_dir/results.jsonl`` and a sweep
    run again with the same (or a grown) grid trains only what is missing; a folder holding
    anything else is refused unless ``overwrite``. Configurations run as groups of at most
    ``max_group_size`` (default: ``auto_group_size``, chosen for the device) sharded over ``devices`` (default: every
    device; on a CPU-only host each core is one, or ``cpu_devices`` of them, when JAX has not
    started yet). With ``exact``, members share no arithmetic: each configuration's numbers are
    bit for bit those of ``train`` alone, on any device count and in any group (slower: see the
    README); by default members of one seed share one wide first-layer product, which rounds
    differently as the group and the device count change.

    Each record is ``train``'s record for that configuration (see ``records.run_record``):
    the config fields, ``status`` (``ok``, ``diverged``: the numbers are from the last finite
    epoch, or ``stalled``), final and best accuracies, curves and ``seconds``.
    """
    if grid is None:
        grid = SweepGrid(axes)
    elif axes:
        raise ConfigError("give the grid either as `grid` or as keyword axes, not both")
    elif isinstance(grid, dict):
        grid = SweepGrid.from_dict(grid)
    if max_group_size is not None and max_group_size < 1:
        raise ConfigError(f"group size must be at least 1, got {max_group_size}")
    if data is not None:
        if grid.values("dataset") not in ((data.name,), (TrainConfig().dataset,)):
            raise ConfigError(f"the grid's datasets {list(grid.values('dataset'))} are not the data given ({data.name})")
        grid = grid.replace(dataset=[data.name])
    configs = grid.configs()
    for config in configs:
        check_dtype(config)
    if devices is None and not use_cpu_cores(cpu_devices) and cpu_devices is not None:
        raise ConfigError(f"cpu_devices={cpu_devices}: JAX has already started with {jax.device_count()} devices; "
                          "call jd.use_cpu_cores(N) before any JAX computation, or pass devices=")
    datasets = {data.name: data} if data is not None else {name: load_mnist(data_dir, name) for name in grid.values("dataset")}
    if any(name != loaded.name for name, loaded in datasets.items()):  # files recognised as another dataset
        if len(datasets) > 1:
            raise ConfigError("a dataset folder holds another dataset than its name says; sweep one dataset at a time")
        datasets = {loaded.name: loaded for loaded in datasets.values()}
        grid = grid.replace(dataset=list(datasets))
        configs = grid.configs()
    for config in configs:
        check_fits(config, datasets[config.dataset])

    writer = jax.process_index() == 0  # with several hosts, only the first touches files
    folder = SweepFolder(out_dir) if out_dir is not None and writer else None
    done: dict[str, dict] = {}
    try:
        if folder is not None:
            done = folder.open(grid, configs, {name: d.describe() for name, d in datasets.items()}, overwrite=overwrite)
        done = _agree_on_done(configs, done)
        todo = [c for c in configs if config_id(c) not in done]
        mesh = config_mesh(devices)
        if max_group_size is None:
            sizes = _agree_on_sizes(_auto_sizes(todo, datasets, list(mesh.devices.flat)))
            groups = group_configs(todo, lambda c: sizes[program_key(c)].size)
        else:
            sizes, groups = {}, group_configs(todo, max_group_size)
        for group in groups:  # before anything trains: a group that cannot fit is refused up front
            check_fits(group[0], datasets[group[0].dataset], members=len(group))
        on_device: dict[tuple, DeviceData] = {}
        new: dict[str, dict] = {}
        with Progress(len(configs), "config", "sweep", progress and writer, initial=len(done)) as bar:
            if groups:
                largest = max(groups, key=len)
                estimate = memory_estimate(largest[0], datasets[largest[0].dataset], len(largest))
                bar.write(layout_line(mesh, groups, sizes, max_group_size) + f"; the largest group needs about "
                          f"{estimate / 2**20:.0f} MiB", file=sys.stderr)
            for number, group in enumerate(groups, 1):
                first = group[0]
                label = f"group {number}/{len(groups)} {sizes_label(first.hidden)} x{len(group)}"
                bar.describe(label)
                group_mesh = mesh_for(len(group), mesh)
                key = (first.dataset, first.dtype, group_mesh.size)
                if key not in on_device:
                    on_device[key] = put_data(datasets[first.dataset], group_mesh, first.dtype)
                records = train_group(group, on_device[key], group_mesh, exact=exact,
                                      on_epoch=lambda e, n: bar.status(f"epoch {e}/{n}"))
                if folder is not None:
                    folder.append(records)
                new.update((r["id"], r) for r in records)
                bar.update(len(group))
                bar.write(_group_line(label, records), file=sys.stderr)
    finally:
        if folder is not None:
            folder.release()
    records = [new.get(config_id(c)) or done[config_id(c)] for c in configs]
    return SweepResult(records, len(new), len(configs) - len(new))


def _auto_sizes(configs: Sequence[TrainConfig], datasets: dict[str, Dataset], devices: Sequence[jax.Device]) -> dict:
    """``auto_group_size`` for each program of ``configs``, keyed by ``program_key``."""
    sizes: dict[TrainConfig, GroupSize] = {}
    for config in configs:
        key = program_key(config)
        if key not in sizes:
            data = datasets[config.dataset]
            sizes[key] = auto_group_size(config, devices, data.inputs, data.num_classes)
    return sizes


def layout_line(mesh: Mesh, groups: Sequence[Sequence[TrainConfig]], sizes: dict, max_group_size: int | None) -> str:
    """One line saying how a sweep is laid out: devices, group size, groups and why."""
    device = mesh.devices.flat[0]
    line = f"layout: {mesh.size} {device.platform} device(s) ({device.device_kind}), "
    if sizes:
        line += "; ".join(f"group size {size.size} for {sizes_label(key.hidden)} ({size.per_device} per device: {size.reason})"
                          for key, size in sizes.items())
    else:
        line += f"group size at most {max_group_size} (given)"
    return line + f"; {len(groups)} group(s)"


def _agree_on_sizes(sizes: dict) -> dict:
    """With several processes (whose caches may differ), every one uses process 0's sizes."""
    if jax.process_count() == 1 or not sizes:
        return sizes
    from jax.experimental import multihost_utils

    chosen = np.asarray(multihost_utils.broadcast_one_to_all(np.asarray([s.size for s in sizes.values()], np.int64)))
    return {key: size._replace(size=int(n), per_device=int(n) // size.devices) for (key, size), n in zip(sizes.items(), chosen)}


def _group_line(label: str, records: Sequence[dict]) -> str:
    """One line for a finished group: its time, its best test accuracy, how many went wrong."""
    ok = [r for r in records if r["status"] == "ok"]
    line = f"{label}: {records[0]['group_seconds']:.1f} s"
    if ok:
        best = max(ok, key=lambda r: r["test_accuracy"])
        line += f", best test accuracy {100 * best['test_accuracy']:.2f}% (lr {best['lr']:g}, seed {best['seed']})"
    for status in ("diverged", "stalled"):
        count = sum(r["status"] == status for r in records)
        line += f", {count} {status}" if count else ""
    return line


def _agree_on_done(configs: Sequence[TrainConfig], done: dict[str, dict]) -> dict[str, dict]:
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
