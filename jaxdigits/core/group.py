"""Configurations trained together: one compiled program for a group, under ``vmap``.

A group is configurations that compile to the same program (``config.program_key``: everything
but the seed, the epoch count and the numbers a program takes as values) and train for as many
epochs. Inside a group they are laid out as a (rows, members) rectangle: an outer ``vmap`` over
rows, each a stream of batches (a seed and the augmentation's strengths), and an inner one over
the members of a row, which differ in the update's numbers (rate, ``l2``, dropout rate,
momentum, Adam's betas: held in each member's optimizer state). Members of a row draw the same
mini-batches (as they would alone), so the inner ``vmap`` gathers and distorts each batch once
and its first layer becomes one wide matrix product ``x @ [W_1 ... W_L]``; on a CPU this is what
makes a sweep several times faster than training one after another. A row shorter than the
longest is filled with copies of its first member, whose results are dropped. The rectangle's configuration axis is sharded over
a 1-D ``Mesh`` (axis ``"configs"``); the axis that needs less padding is the sharded one.

A member's numbers equal those of a run alone up to float rounding (a vmapped matrix product
may round its last bit differently); ``exact_group_epoch`` shares no arithmetic between members
and gives each one's numbers bit for bit.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdigits.core.config import AUGMENT_NUMBERS, UPDATE_NUMBERS, TrainConfig, numbers, program_key
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.epoch import augment_strengths, init_state, make_guarded_epoch, run_keys
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.metrics import EVAL_CHUNK, make_score

MESH_AXIS = "configs"


def group_configs(configs: Sequence[TrainConfig],
                  max_group_size: int | Callable[[TrainConfig], int] | None = None) -> list[list[TrainConfig]]:
    """Split ``configs`` into groups that train as one program, in order of first appearance.

    A group holds configurations with the same ``program_key`` and epoch count, at most
    ``max_group_size`` of them (``None``: no limit; a function: its value for the group's first
    configuration, e.g. ``auto_group_size``'s), ordered by row (``row_key``: seed and
    augmentation strengths) so that a split keeps rows together.
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
        row_order = {key: i for i, key in enumerate(dict.fromkeys(row_key(c) for c in members))}
        members = sorted(members, key=lambda c: row_order[row_key(c)])  # stable: member order kept
        size = size or len(members)
        groups.extend(members[i : i + size] for i in range(0, len(members), size))
    return groups


def row_key(config: TrainConfig) -> tuple:
    """What a row's members share: the seed (their batches) and the augmentation's strengths."""
    return (config.seed, *(numbers(config, AUGMENT_NUMBERS).values() if config.augment != "none" else ()))


class GroupLayout(NamedTuple):
    """How a group's configurations sit in its (rows, members) rectangle.

    ``seeds (S,) int64``: each row's seed; ``members (S, L) int``: the configuration each cell
    starts as (a filler cell copies a real one); ``index (S, L) int``: the cell's position in the
    group, ``-1`` for a filler cell. ``shard_axis`` is the rectangle axis split over the devices
    (0 rows, 1 members).
    """

    seeds: np.ndarray
    members: np.ndarray
    index: np.ndarray
    shard_axis: int


def plan_layout(configs: Sequence[TrainConfig], num_devices: int = 1) -> GroupLayout:
    """The rectangle for a group, padded so that its sharded axis divides ``num_devices``."""
    blocks: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        blocks.setdefault(row_key(config), []).append(i)
    rows, cols = len(blocks), max(len(b) for b in blocks.values())
    pad = lambda n: -(-n // num_devices) * num_devices  # noqa: E731
    shard_axis = 0 if pad(rows) * cols <= rows * pad(cols) else 1
    rows_total, cols_total = (pad(rows), cols) if shard_axis == 0 else (rows, pad(cols))
    block_list = list(blocks.values())
    members = np.zeros((rows_total, cols_total), np.int64)
    index = np.full((rows_total, cols_total), -1, np.int64)
    for r in range(rows_total):
        block = block_list[r] if r < rows else block_list[0]  # filler rows copy the first row
        for c in range(cols_total):
            members[r, c] = block[c] if c < len(block) else block[0]  # filler cells copy the row's first
            if r < rows and c < len(block):
                index[r, c] = block[c]
    seeds = np.array([configs[m].seed for m in members[:, 0]], np.int64)  # seeds go up to 2**32 - 1
    return GroupLayout(seeds, members, index, shard_axis)


def init_rectangle(configs: Sequence[TrainConfig], layout: GroupLayout, sizes: tuple[int, int], cells: NamedSharding,
                   rows: NamedSharding):
    """``(states (S, L, ...), shuffle_keys (S, 2), strengths {name: (S,)})``: each member started
    exactly as ``train`` starts it (``run_keys``, then ``init_state`` with its numbers), and each
    row's augmentation strengths, stacked and sharded."""
    keys = {int(seed): run_keys(int(seed)) for seed in dict.fromkeys(layout.seeds.tolist())}
    program = program_key(configs[0])
    states = [init_state(program, keys[int(layout.seeds[r])][0], *sizes, update=numbers(configs[m], UPDATE_NUMBERS))
              for (r, _), m in np.ndenumerate(layout.members)]
    shape = layout.members.shape

    def stack(*leaves):
        return put_global(np.stack([np.asarray(leaf) for leaf in leaves]).reshape(shape + np.shape(leaves[0])), cells)

    shuffle_keys = np.stack([np.asarray(keys[int(seed)][1]) for seed in layout.seeds])
    row_strengths = [augment_strengths(configs[m]) for m in layout.members[:, 0]]
    strengths = {name: put_global(np.stack([s[name] for s in row_strengths]), rows) for name in AUGMENT_NUMBERS}
    return jax.tree_util.tree_map(stack, *states), put_global(shuffle_keys, rows), strengths


def over_rectangle(fn: Callable, row_args: tuple, member_args: tuple) -> Callable:
    """``vmap`` over rows (outer) of ``vmap`` over the members of a row (inner); ``*_args``
    give each argument's role: True = has that axis, False = shared."""
    inner = jax.vmap(fn, in_axes=tuple(0 if a else None for a in member_args))
    return jax.vmap(inner, in_axes=tuple(0 if a else None for a in row_args))


def epoch_keys(shuffle_keys: jax.Array, epoch_number: jax.Array) -> jax.Array:
    """``(S, 2)``: each row's key for its epoch, ``fold_in(shuffle_key, epoch)``; ``epoch_number``
    is one number for the group, or ``(S,)``, one per row (a search's members are at different
    epochs)."""
    numbers = jnp.broadcast_to(jnp.asarray(epoch_number, jnp.uint32), shuffle_keys.shape[:1])
    return jax.vmap(jax.random.fold_in)(shuffle_keys, numbers)


def group_epoch(program: TrainConfig) -> Callable:
    """``epoch(states, alive, shuffle_keys, epoch_number, images, labels, strengths)``:
    ``train``'s guarded epoch for every member of a (rows, members) rectangle, each with its own
    key, numbers and ``alive`` flag (a diverged member keeps its last finite state); ``strengths``
    holds each row's augmentation strengths, ``{name: (S,)}``."""
    guarded = over_rectangle(make_guarded_epoch(program), (True, True, True, False, False, True),
                             (True, True, False, False, False, False))

    def epoch(states, alive, shuffle_keys, epoch_number, images, labels, strengths):
        return guarded(states, alive, epoch_keys(shuffle_keys, epoch_number), images, labels, strengths)

    return epoch


@functools.lru_cache(maxsize=None)
def exact_group_epoch(mesh: Mesh, cells: PartitionSpec) -> Callable[[TrainConfig], Callable]:
    """A builder like ``group_epoch`` whose members never share arithmetic: each device runs its
    members one after another (``lax.map``) through ``train``'s own unbatched epoch, so every
    member's numbers are bit for bit those of ``train`` alone, whatever the group and the device
    count. The devices still run in parallel (``shard_map`` over the configuration axis)."""

    def build(program: TrainConfig) -> Callable:
        guarded = make_guarded_epoch(program)

        def members(states, alive, keys, images, labels, strengths):
            s, l = alive.shape
            flat = lambda x: x.reshape((s * l,) + x.shape[2:])  # noqa: E731
            per_row = lambda x: jnp.repeat(x, l, axis=0)  # noqa: E731
            out = jax.lax.map(lambda m: guarded(m[0], m[1], m[2], images, labels, m[3]),
                              (jax.tree_util.tree_map(flat, states), flat(alive), per_row(keys),
                               jax.tree_util.tree_map(per_row, strengths)))
            return jax.tree_util.tree_map(lambda x: x.reshape((s, l) + x.shape[1:]), out)

        def epoch(states, alive, shuffle_keys, epoch_number, images, labels, strengths):
            keys, row = epoch_keys(shuffle_keys, epoch_number), PartitionSpec(cells[0])
            run = jax.shard_map(members, mesh=mesh, in_specs=(cells, cells, row, PartitionSpec(), PartitionSpec(), row),
                                out_specs=(cells, cells, cells))
            return run(states, alive, keys, images, labels, strengths)

        return epoch

    return build


def group_score(program: TrainConfig) -> Callable:
    """``score(networks, images, labels) -> ((S, L) correct, (S, L) cost sums)`` of every member
    (``metrics.make_score`` under the rectangle's ``vmap``)."""
    return over_rectangle(make_score(program), (True, False, False), (True, False, False))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from host data every process holds in full."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def fetch_global(array: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) array as numpy."""
    if getattr(array, "is_fully_addressable", True):
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def member_bytes(config: TrainConfig, inputs: int, classes: int) -> tuple[int, int]:
    """``(state, activations)``: bytes of one configuration's training state (params and
    optimizer state) and of its activations on one mini-batch (values and their gradients)."""
    state = jax.eval_shape(lambda: init_state(config, jax.random.PRNGKey(0), inputs, classes))
    state_bytes = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state))
    units = sum(config.hidden) + classes
    return state_bytes, 2 * config.batch_size * units * jnp.dtype(config.dtype).itemsize


def memory_estimate(config: TrainConfig, data: Dataset, members: int = 1) -> int:
    """Bytes a run of ``config`` on ``data`` needs at its peak, roughly: the data on the device,
    and per member the params with their gradients, updates and optimizer state (5 copies), one
    mini-batch's gathered inputs and its activations and their gradients, and one evaluation
    chunk's activations."""
    itemsize = np.dtype(config.dtype).itemsize
    sizes = (data.inputs, *config.hidden, data.num_classes)
    params = sum(m * n + n for m, n in zip(sizes[:-1], sizes[1:]))
    widths = sum(sizes[1:])
    per_member = 5 * params + config.batch_size * (data.inputs + 2 * widths) + EVAL_CHUNK * widths
    data_bytes = (len(data.train_images) + len(data.test_images)) * data.inputs
    return itemsize * (data_bytes + members * per_member)
