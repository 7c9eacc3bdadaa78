"""Hyperparameter sweeps: many configurations trained together in one compiled program per shape.

    result = jaxdigits.sweep(hidden=[(16, 16), (32,)], lr=[0.3, 1, 3], seeds=[0, 1], epochs=5,
                             data_dir="path/to/mnist", out_dir="runs/sweep")

How configurations are trained together
    A grid (``SweepGrid``) expands to one ``TrainConfig`` per combination. Configurations that
    compile to the same program (same sizes, activation, cost, optimizer, batch size, epochs, l2
    and dataset: everything but the learning rate and the seed) form a *group*. A group runs the
    very functions single-run ``train`` runs: each member starts as ``train`` starts it
    (``run_keys``, ``init_state`` with its rate), and the states are stacked; then
    ``make_epoch``'s ``lax.scan`` epoch (keys ``fold_in(shuffle_key, epoch)``) and ``accuracy``
    run under ``jax.vmap``: the parameters, the learning rate (a traced value in the optimizer
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
    With ``out_dir``, each finished group appends one JSON line per configuration to
    ``results.jsonl`` (flushed and fsynced), and running the same sweep again skips every
    configuration already there: see ``jaxdigits.sweep_results``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdigits.checkpoint import describe_data
from jaxdigits.config import TrainConfig, validate_config
from jaxdigits.data import Dataset, load_mnist
from jaxdigits.errors import ConfigError
from jaxdigits.model import accuracy
from jaxdigits.train import init_state, make_epoch, run_keys

MESH_AXIS = "configs"
# Accuracy is computed over slices of this many images, so that a large group's activations
# (configs x images x width floats) stay small.
EVAL_CHUNK = 5000

_DEFAULTS = TrainConfig()


def _as_tuple(value: Any) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _hidden_tuple(value: Any) -> tuple[tuple[int, ...], ...]:
    """``(16, 16)`` or ``[(16, 16), (32,)]`` or ``"16,16"``: always a tuple of width tuples."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, (list, tuple)) and (len(value) == 0 or not isinstance(value[0], (list, tuple, str))):
        value = [value]  # one shape given as a flat list of widths
    shapes = []
    for shape in value:
        if isinstance(shape, str):
            shape = [part for part in shape.replace(" ", "").split(",") if part]
        try:
            shapes.append(tuple(int(width) for width in shape))
        except (TypeError, ValueError):
            raise ConfigError(f"hidden shape {shape!r} is not a list of integer widths, e.g. 16,16") from None
    return tuple(shapes)


@dataclasses.dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep; every combination is one configuration.

    Each field takes one value or a list of values; the names are the ``jaxdigits sweep``
    flags' (and a grid file's keys). ``hidden`` lists hidden-layer shapes: ``[(16, 16), (32,)]``
    trains 784-16-16-10 and 784-32-10; ``()`` is no hidden layer.
    """

    hidden: Any = (_DEFAULTS.sizes[1:-1],)
    lr: Any = (_DEFAULTS.learning_rate,)
    seeds: Any = (_DEFAULTS.seed,)
    activation: Any = (_DEFAULTS.activation,)
    cost: Any = (_DEFAULTS.cost,)
    optimizer: Any = (_DEFAULTS.optimizer,)
    batch_size: Any = (_DEFAULTS.batch_size,)
    epochs: Any = (_DEFAULTS.epochs,)
    l2: Any = (_DEFAULTS.l2,)
    dataset: str = _DEFAULTS.dataset

    def __post_init__(self):
        convert = {
            "hidden": _hidden_tuple,
            "lr": lambda v: tuple(float(x) for x in _as_tuple(v)),
            "seeds": lambda v: tuple(int(x) for x in _as_tuple(v)),
            "activation": lambda v: tuple(str(x) for x in _as_tuple(v)),
            "cost": lambda v: tuple(str(x) for x in _as_tuple(v)),
            "optimizer": lambda v: tuple(str(x) for x in _as_tuple(v)),
            "batch_size": lambda v: tuple(int(x) for x in _as_tuple(v)),
            "epochs": lambda v: tuple(int(x) for x in _as_tuple(v)),
            "l2": lambda v: tuple(float(x) for x in _as_tuple(v)),
        }
        for name, fn in convert.items():
            try:
                value = fn(getattr(self, name))
            except ConfigError:
                raise
            except (TypeError, ValueError):
                raise ConfigError(f"sweep axis {name}: {getattr(self, name)!r} has a value of the wrong type") from None
            if not value:
                raise ConfigError(f"sweep axis {name} is empty; give at least one value")
            object.__setattr__(self, name, value)
        if not isinstance(self.dataset, str):
            raise ConfigError(f"sweep dataset must be one name, got {self.dataset!r}")

    def configs(self) -> list[TrainConfig]:
        """Every combination as a validated ``TrainConfig``, in grid order, without duplicates."""
        seen, configs = set(), []
        for hidden, lr, seed, activation, cost, optimizer, batch_size, epochs, l2 in itertools.product(
            self.hidden, self.lr, self.seeds, self.activation, self.cost, self.optimizer,
            self.batch_size, self.epochs, self.l2,
        ):
            config = TrainConfig(
                sizes=(784, *hidden, 10), activation=activation, cost=cost, optimizer=optimizer,
                learning_rate=lr, batch_size=batch_size, epochs=epochs, seed=seed, l2=l2, dataset=self.dataset,
            )
            if config not in seen:
                seen.add(config)
                configs.append(validate_config(config))
        return configs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data (the form of a grid file)."""
        values = dataclasses.asdict(self)
        values["hidden"] = [list(shape) for shape in self.hidden]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SweepGrid":
        """A grid from a dict of axes; unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown sweep axes {unknown}; known axes: {', '.join(names)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "SweepGrid":
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def load_grid(path: str | os.PathLike) -> SweepGrid:
    """A ``SweepGrid`` from a ``.toml`` or ``.json`` file whose keys are the grid's axes, e.g.

        hidden = [[16, 16], [32], [64, 64]]
        lr = [0.3, 1.0, 3.0]
        seeds = [0, 1]
        epochs = 5
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read grid file ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"{path}: a grid file must end in .toml or .json")
    except (ValueError, TypeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{path}: not a valid grid file ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a grid file must hold a table of axes, e.g. lr = [0.3, 3.0]")
    return SweepGrid.from_dict(values)


def config_id(config: TrainConfig) -> str:
    """A stable 16-hex-digit name for a configuration (same config, same id, any run)."""
    text = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def program_key(config: TrainConfig) -> TrainConfig:
    """What decides the compiled program: the config without its learning rate and seed."""
    return config.replace(learning_rate=_DEFAULTS.learning_rate, seed=_DEFAULTS.seed)


def group_configs(configs: Sequence[TrainConfig], max_group_size: int | None = None) -> list[list[TrainConfig]]:
    """Split ``configs`` into groups that train as one program, in order of first appearance.

    A group holds configurations with the same ``program_key``, at most ``max_group_size`` of
    them (``None``: no limit), ordered by seed so that a split keeps seeds together.
    """
    if max_group_size is not None and max_group_size < 1:
        raise ConfigError(f"group size must be at least 1, got {max_group_size}")
    by_program: dict[TrainConfig, list[TrainConfig]] = {}
    for config in configs:
        by_program.setdefault(program_key(config), []).append(config)
    groups = []
    for members in by_program.values():
        seed_order = {seed: i for i, seed in enumerate(dict.fromkeys(c.seed for c in members))}
        members = sorted(members, key=lambda c: seed_order[c.seed])  # stable: rate order kept
        size = max_group_size or len(members)
        groups.extend(members[i : i + size] for i in range(0, len(members), size))
    return groups


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
            rates[r, c] = configs[member].learning_rate
            if r < rows and c < len(block):
                index[r, c] = member
    return GroupLayout(seeds, rates, index, shard_axis)


def config_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``Mesh`` named ``"configs"`` over ``devices`` (default: every device, all hosts)."""
    return Mesh(np.asarray(list(devices or jax.devices())), (MESH_AXIS,))


def use_cpu_cores(count: int | None = None) -> bool:
    """Make each CPU core a JAX device, so a sweep on a CPU-only host runs configurations in
    parallel over the cores. Must run before JAX computes anything; returns whether it did.

    ``count`` defaults to the cores this process may use, unless ``XLA_FLAGS`` already sets
    ``--xla_force_host_platform_device_count``. Harmless where an accelerator is the default
    device (the CPU devices then go unused).
    """
    if count is None and "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
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


class GroupFunctions(NamedTuple):
    """The compiled pieces of one group program, all over a (seeds, rates) rectangle."""

    epoch: Callable
    accuracy: Callable


def _over_rectangle(fn: Callable, seed_args: tuple, rate_args: tuple) -> Callable:
    """``vmap`` over seeds (outer) of ``vmap`` over the rates of a seed (inner); ``*_args``
    give each argument's role: True = has that axis, False = shared."""
    inner = jax.vmap(fn, in_axes=tuple(0 if a else None for a in rate_args))
    return jax.vmap(inner, in_axes=tuple(0 if a else None for a in seed_args))


@functools.lru_cache(maxsize=None)
def group_functions(program: TrainConfig, cells: NamedSharding) -> GroupFunctions:
    """The jitted epoch and accuracy of a group whose members share ``program``; ``cells``
    shards the rectangle's (S, L, ...) arrays over the devices."""
    epoch_fn = make_epoch(program)
    accuracy_fn = functools.partial(accuracy, activation=program.activation)

    def epoch(states, alive, shuffle_keys, epoch_number, images, labels):
        """One epoch of every member; a member whose cost turns non-finite keeps its last finite
        state and stays dead (``alive (S, L) bool``), as ``train`` stops a diverged run."""
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(shuffle_keys, epoch_number)
        run = _over_rectangle(epoch_fn, (True, True, False, False), (True, False, False, False))
        new_states, costs = run(states, keys, images, labels)
        alive = alive & jnp.isfinite(costs)

        def keep(new, old):
            return jnp.where(alive.reshape(alive.shape + (1,) * (new.ndim - 2)), new, old)

        return jax.tree_util.tree_map(keep, new_states, states), alive, costs

    def group_accuracy(params, images, labels):
        return _over_rectangle(accuracy_fn, (True, False, False), (True, False, False))(params, images, labels)

    return GroupFunctions(
        jax.jit(epoch, out_shardings=(cells, cells, cells)),
        jax.jit(group_accuracy, out_shardings=cells),
    )


def init_rectangle(program: TrainConfig, layout: GroupLayout, cells: NamedSharding, rows: NamedSharding):
    """``(states (S, L, ...), shuffle_keys (S, 2))``: each member started exactly as ``train``
    starts it (``run_keys``, then ``init_state`` with its rate), stacked and sharded."""
    keys = {int(seed): run_keys(int(seed)) for seed in dict.fromkeys(layout.seeds.tolist())}
    states = [
        init_state(program, keys[int(seed)][0], learning_rate=float(rate))
        for seed, row in zip(layout.seeds, layout.learning_rates)
        for rate in row
    ]
    shape = layout.learning_rates.shape

    def stack(*leaves):
        return _put(np.stack([np.asarray(leaf) for leaf in leaves]).reshape(shape + np.shape(leaves[0])), cells)

    shuffle_keys = np.stack([np.asarray(keys[int(seed)][1]) for seed in layout.seeds])
    return jax.tree_util.tree_map(stack, *states), _put(shuffle_keys, rows)


def _chunks(images: jax.Array, labels: jax.Array) -> list[tuple[jax.Array, jax.Array, int]]:
    n = images.shape[0]
    return [(images[s : s + EVAL_CHUNK], labels[s : s + EVAL_CHUNK], min(EVAL_CHUNK, n - s)) for s in range(0, n, EVAL_CHUNK)]


def _rectangle_accuracy(fns: GroupFunctions, params, chunks) -> np.ndarray:
    """``(S, L)`` accuracy over the chunked images: exact counts summed, then divided."""
    correct, total = 0.0, 0
    for images, labels, n in chunks:
        correct = correct + np.rint(_fetch(fns.accuracy(params, images, labels)).astype(np.float64) * n)
        total += n
    return correct / total


class DeviceData(NamedTuple):
    """A data set replicated on every device of a mesh, with its evaluation chunks."""

    train_images: jax.Array
    train_labels: jax.Array
    train_chunks: list
    test_chunks: list


def put_data(data: Dataset, mesh: Mesh) -> DeviceData:
    """Replicate ``data`` on every device of ``mesh``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    arrays = [_put(a, replicated) for a in data]
    return DeviceData(arrays[0], arrays[1], _chunks(arrays[0], arrays[1]), _chunks(arrays[2], arrays[3]))


def train_group(
    configs: Sequence[TrainConfig],
    data: DeviceData,
    mesh: Mesh,
    on_epoch: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Train ``configs`` (one program, see ``group_configs``) together; one record per config.

    Each config's numbers are those ``train(config, data)`` gives (same seed, same batches) up
    to float rounding. ``on_epoch(epoch, epochs)`` is called after each epoch.
    """
    start = time.perf_counter()
    program = program_key(configs[0])
    if any(program_key(c) != program for c in configs):
        raise ConfigError("train_group needs configurations that differ only in learning rate and seed")
    layout = plan_layout(configs, mesh.size)
    spec = (MESH_AXIS, None) if layout.shard_axis == 0 else (None, MESH_AXIS)
    cells = NamedSharding(mesh, PartitionSpec(*spec))
    rows = NamedSharding(mesh, PartitionSpec(spec[0]))
    fns = group_functions(program, cells)
    states, shuffle_keys = init_rectangle(program, layout, cells, rows)
    alive = _put(np.ones(layout.index.shape, bool), cells)
    real = [(r, c) for r, c in zip(*np.nonzero(layout.index >= 0))]
    curves = {cell: {"cost": [], "test": [], "diverged_epoch": None} for cell in real}
    compile_start = time.perf_counter()
    epoch_fn = fns.epoch.lower(states, alive, shuffle_keys, 1, data.train_images, data.train_labels).compile()
    compile_seconds = time.perf_counter() - compile_start
    train_seconds = 0.0
    for epoch in range(1, program.epochs + 1):
        epoch_start = time.perf_counter()
        states, alive, costs = epoch_fn(states, alive, shuffle_keys, epoch, data.train_images, data.train_labels)
        costs, alive_now = _fetch(costs), _fetch(alive)
        train_seconds += time.perf_counter() - epoch_start
        test = _rectangle_accuracy(fns, states.params, data.test_chunks)
        for cell in real:
            curve = curves[cell]
            if curve["diverged_epoch"] is not None:
                continue
            if alive_now[cell]:
                curve["cost"].append(float(costs[cell]))
                curve["test"].append(float(test[cell]))
            else:
                curve["diverged_epoch"] = epoch
        if on_epoch is not None:
            on_epoch(epoch, program.epochs)
        if not alive_now[tuple(np.transpose(real))].any():
            break  # every member diverged: nothing left to train
    train_accuracy = _rectangle_accuracy(fns, states.params, data.train_chunks)
    seconds = time.perf_counter() - start
    records = [None] * len(configs)
    for cell in real:
        config, curve = configs[layout.index[cell]], curves[cell]
        finished = bool(curve["test"])
        best = int(np.argmax(curve["test"])) if finished else None
        records[layout.index[cell]] = {
            "id": config_id(config),
            "hidden": list(config.sizes[1:-1]),
            "lr": config.learning_rate,
            "seed": config.seed,
            "activation": config.activation,
            "cost": config.cost,
            "optimizer": config.optimizer,
            "batch_size": config.batch_size,
            "epochs": config.epochs,
            "l2": config.l2,
            "dataset": config.dataset,
            "test_accuracy": curve["test"][-1] if finished else None,
            "best_test_accuracy": curve["test"][best] if finished else None,
            "best_epoch": best + 1 if finished else None,
            "train_accuracy": float(train_accuracy[cell]) if finished else None,
            "final_cost": curve["cost"][-1] if finished else None,
            "cost_curve": curve["cost"],
            "test_accuracy_curve": curve["test"],
            "diverged": curve["diverged_epoch"] is not None,
            "diverged_epoch": curve["diverged_epoch"],
            "epochs_completed": len(curve["cost"]),
            "seconds": seconds / len(configs),
            "group_size": len(configs),
            "group_seconds": seconds,
            "compile_seconds": compile_seconds,
            "train_seconds": train_seconds,
            "devices": mesh.size,
        }
    return records


def record_config(record: dict) -> TrainConfig:
    """The ``TrainConfig`` a results record describes."""
    return TrainConfig(
        sizes=(784, *record["hidden"], 10), activation=record["activation"], cost=record["cost"],
        optimizer=record["optimizer"], learning_rate=record["lr"], batch_size=record["batch_size"],
        epochs=record["epochs"], seed=record["seed"], l2=record["l2"], dataset=record["dataset"],
    )


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
    progress: bool = False,
    **axes: Any,
) -> SweepResult:
    """Train every configuration of a grid; return one results record per configuration.

    The grid is ``grid`` (a ``SweepGrid`` or a dict of axes) or the keyword ``axes``
    (``hidden=[(16, 16), (32,)], lr=[0.3, 3], seeds=[0, 1], epochs=5, ...``; see ``SweepGrid``).
    ``data`` defaults to ``load_mnist(data_dir, grid.dataset)``.

    With ``out_dir`` every finished group is appended to ``out_dir/results.jsonl`` and a sweep
    run again with the same (or a grown) grid trains only what is missing; a folder holding
    anything else is refused unless ``overwrite``. Configurations run as groups of at most
    ``max_group_size`` (default: all of one shape) sharded over ``devices`` (default: all).

    A record holds the config (``hidden``, ``lr``, ``seed``, ``activation``, ...),
    ``test_accuracy`` (final), ``best_test_accuracy``, ``best_epoch``, ``train_accuracy``,
    ``cost_curve`` and ``test_accuracy_curve`` (per epoch), ``diverged`` (the cost became NaN or
    infinite: the numbers are from the last finite epoch) and ``seconds``.
    """
    from jaxdigits import sweep_results

    if grid is None:
        grid = SweepGrid(**axes)
    elif axes:
        raise ConfigError("give the grid either as `grid` or as keyword axes, not both")
    elif isinstance(grid, dict):
        grid = SweepGrid.from_dict(grid)
    configs = grid.configs()
    if max_group_size is not None and max_group_size < 1:
        raise ConfigError(f"group size must be at least 1, got {max_group_size}")
    if data is None:
        data = load_mnist(data_dir, grid.dataset)
    for config in configs:
        validate_config(config, num_train=len(data.train_images))

    writer = jax.process_index() == 0  # with several hosts, only the first touches files
    folder = sweep_results.SweepFolder(out_dir) if out_dir is not None and writer else None
    done: dict[str, dict] = {}
    if folder is not None:
        done = folder.open(grid, configs, describe_data(data, grid.dataset), overwrite=overwrite)
    done = _agree_on_done(configs, done)
    todo = [c for c in configs if config_id(c) not in done]

    mesh = config_mesh(devices)
    groups = group_configs(todo, max_group_size)
    device_data = put_data(data, mesh) if groups else None
    new: dict[str, dict] = {}
    with sweep_results.progress_bar(len(configs), len(done), enabled=progress and writer) as bar:
        for number, group in enumerate(groups, 1):
            label = sweep_results.group_label(number, len(groups), group)
            bar.set_description(label)
            records = train_group(group, device_data, mesh, on_epoch=bar.epoch)
            if folder is not None:
                folder.append(records)
            new.update((r["id"], r) for r in records)
            bar.update(len(group))
            bar.group_done(label, records)
    records = [new.get(config_id(c)) or done[config_id(c)] for c in configs]
    return SweepResult(records, len(new), len(configs) - len(new))


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
