"""The one training loop: every run, alone or with others, trains through ``run_group``.

A single ``train`` is a group of one (it runs the unbatched compiled epoch, so its speed and
bit-identical resume stay); a sweep is many groups, each one compiled ``vmap``-ped program (see
``core.group``). The loop owns the epochs, the evaluation, divergence, early stopping, the
network each configuration keeps (``select``) and the per-epoch history, whose entries have
the same keys whichever program made them:

    {"epoch", "train_cost", "train_objective", "train_accuracy", ["validation_accuracy",
     "validation_cost",] "test_accuracy", "seconds"}        (validation keys with a split)
    {"epoch", "train_cost", "train_objective", "diverged": True, "seconds"}
                                                            (the epoch whose cost was not finite)

``train_cost`` is the epoch's mean mini-batch cost alone; ``train_objective`` what training
minimises, the cost plus ``l2 * (1/2) sum w^2`` and the penalty (equal without them).

An accuracy a run does not measure at every epoch (a sweep measures the training set's only at
the end) is ``None`` until it is measured. What happens to the results is the sink's business,
through one protocol (``Sink``): ``open`` says what is already done, ``epoch_done`` sees each
epoch, ``finish`` takes each group's results, ``close`` lets go.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdigits.core.config import TrainConfig, program_key
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.epoch import TrainState, augment_strengths, device_images, init_state, make_guarded_epoch, run_keys
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.group import (MESH_AXIS, exact_group_epoch, fetch_global, group_epoch, group_score, init_rectangle,
                                  plan_layout, put_global)
from jaxdigits.core.metrics import chance_level, chunked_mean, eval_chunks, make_score, run_status
from jaxdigits.core.model import Network
from jaxdigits.core.programs import compiled, jitted
from jaxdigits.interrupts import check
from jaxdigits.records import run_record

# The splits whose accuracy a history entry holds, in its key order.
SPLITS = ("train", "validation", "test")


class DeviceData(NamedTuple):
    """A data set on the devices of a mesh (replicated): the training arrays, each split's
    evaluation chunks by name, and its sizes."""

    train_images: jax.Array
    train_labels: jax.Array
    chunks: dict[str, list]
    inputs: int
    classes: int
    chance: float
    examples: dict[str, int]


def put_data(data: Dataset, mesh: Mesh, dtype: str = "float32") -> DeviceData:
    """``data`` replicated on every device of ``mesh``; images as uint8 pixels where they are
    pixel bytes' floats (a quarter of the memory), else as ``dtype``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    splits = [s for s in SPLITS if getattr(data, f"{s}_images") is not None]
    arrays = {s: [put_global(device_images(a, dtype) if a.dtype.kind == "f" else a, replicated)
                  for a in (getattr(data, f"{s}_images"), getattr(data, f"{s}_labels"))] for s in splits}
    return DeviceData(*arrays["train"], {s: eval_chunks(*arrays[s]) for s in splits}, data.inputs, data.num_classes,
                      chance_level(data.train_labels), {s: int(arrays[s][1].shape[0]) for s in splits})


def check_selection(config: TrainConfig, data: Dataset) -> None:
    """``select="best"`` and ``patience`` choose on validation accuracy: refuse them without a split."""
    if (config.select == "best" or config.patience) and not data.has_validation:
        chooser = f"select {config.select!r}" if config.select == "best" else f"patience {config.patience}"
        raise ConfigError(f"{chooser} chooses on validation accuracy; hold out a validation split (--validation N)")


class Start(NamedTuple):
    """Where a configuration starts: a saved ``state`` after ``len(history)`` epochs (and, with
    ``select="best"``, the ``best`` network so far), or fresh."""

    state: TrainState | None = None
    history: tuple = ()
    best: Network | None = None


class MemberResult(NamedTuple):
    """One configuration's outcome: its record (``records.run_record``), its history, and its
    final state and kept network, fetched from the group's arrays by ``state()``/``network()``."""

    config: TrainConfig
    record: dict
    history: list[dict]
    states: Any
    best: Any
    cell: tuple

    def state(self) -> TrainState:
        return member(self.states, self.cell)

    def network(self) -> Network:
        """The network the run keeps: the best on validation with ``select="best"``, else the last."""
        return member(self.best, self.cell) if self.config.select == "best" else self.state().params


class Sink(Protocol):
    """Where a training's results go: a run folder, a sweep folder, or nowhere (``NO_SINK``)."""

    def open(self, configs: Sequence[TrainConfig], fresh: Callable[[TrainConfig], TrainState]) -> dict[str, Any]:
        """Claim the place; return what is done, by config id: a finished record, or a ``Start``."""

    def epoch_done(self, config: TrainConfig, state: Callable[[], TrainState], history: list[dict],
                   best: Callable[[], Network]) -> None:
        """After every epoch, for each configuration still training; ``state()``/``best()`` fetch."""

    def finish(self, results: Sequence[MemberResult]) -> None:
        """A group has finished: keep its results."""

    def close(self) -> None:
        """Let go of the place (also after an error)."""


class NoSink:
    """Keeps nothing: ``jd.train``/``jd.sweep`` without an ``out_dir``."""

    def open(self, configs, fresh):
        return {}

    def epoch_done(self, config, state, history, best):
        pass

    def finish(self, results):
        pass

    def close(self):
        pass


NO_SINK = NoSink()


class Trainer(NamedTuple):
    """A group made ready to train: its stacked ``states``, ``epoch(states, training, number) ->
    (states, alive, costs)``, ``score(params, images, labels)`` (correct answers and cost sums per
    member), each configuration's ``cells`` (its index into the member axes: ``()`` for a single
    run), the sharding of a per-member flag, the device count and the seconds compiling took."""

    states: Any
    epoch: Callable
    score: Callable
    cells: list[tuple]
    flags: Any
    devices: int
    compile_seconds: float


def single_trainer(config: TrainConfig, data: DeviceData, start: Start) -> Trainer:
    """One configuration, with ``train``'s unbatched compiled epoch (bit-identical resume)."""
    init_key, shuffle_key = run_keys(config.seed)
    alive, began, strengths = jnp.asarray(True), time.perf_counter(), augment_strengths(config)
    fresh = lambda: init_state(config, init_key, data.inputs, data.classes)  # noqa: E731
    shapes = start.state if start.state is not None else jax.eval_shape(fresh)
    score = jitted(make_score, config)
    with ThreadPoolExecutor(1) as pool:  # the epoch compiles while the initial state and the scoring do
        compiling = pool.submit(compiled, make_guarded_epoch, config, shapes, alive, shuffle_key, data.train_images,
                                data.train_labels, strengths)
        state = start.state if start.state is not None else fresh()
        jax.block_until_ready(score(state.params, *data.chunks["train"][0]))  # compiled here, not after epoch 1
        epoch_fn = compiling.result()

    def epoch(state, alive, number):
        return epoch_fn(state, alive, jax.random.fold_in(shuffle_key, number), data.train_images, data.train_labels, strengths)

    return Trainer(state, epoch, score, [()], alive.sharding, 1, time.perf_counter() - began)


def group_trainer(configs: Sequence[TrainConfig], data: DeviceData, mesh: Mesh, exact: bool) -> Trainer:
    """Configurations of one program as a (rows, members) rectangle sharded over ``mesh``."""
    program = program_key(configs[0])
    layout = plan_layout(configs, mesh.size)
    spec = (MESH_AXIS, None) if layout.shard_axis == 0 else (None, MESH_AXIS)
    cells, rows = NamedSharding(mesh, PartitionSpec(*spec)), NamedSharding(mesh, PartitionSpec(spec[0]))
    states, shuffle_keys, strengths = init_rectangle(configs, layout, (data.inputs, data.classes), cells, rows)
    alive, began = put_global(np.ones(layout.index.shape, bool), cells), time.perf_counter()
    build = exact_group_epoch(mesh, cells.spec) if exact else group_epoch
    epoch_fn = compiled(build, program, states, alive, shuffle_keys, 1, data.train_images, data.train_labels, strengths,
                        out_shardings=(cells, cells, cells))
    score = jitted(group_score, program, out_shardings=(cells, cells))

    def epoch(states, alive, number):
        return epoch_fn(states, alive, shuffle_keys, number, data.train_images, data.train_labels, strengths)

    where = {int(layout.index[cell]): cell for cell in zip(*np.nonzero(layout.index >= 0))}
    return Trainer(states, epoch, score, [tuple(map(int, where[i])) for i in range(len(configs))], cells, mesh.size,
                   time.perf_counter() - began)


def make_trainer(configs: Sequence[TrainConfig], data: DeviceData, mesh: Mesh, exact: bool, start: Start) -> Trainer:
    """A lone configuration on one host trains unbatched; more train as one vmapped group."""
    first = configs[0]
    if any((program_key(c), c.epochs) != (program_key(first), first.epochs) for c in configs):
        raise ConfigError("a group needs configurations of one program (program_key) and as many epochs")
    if len(configs) == 1 and jax.process_count() == 1:
        return single_trainer(first, data, start)
    if start.history:
        raise ConfigError("only a single run resumes from a checkpoint mid-way")
    return group_trainer(configs, data, mesh, exact)


def member(tree: Any, cell: tuple) -> Any:
    """One member's part of a group's stacked arrays (a single run's as it is)."""
    return jax.tree_util.tree_map(lambda x: x[cell], tree) if cell else tree


@jax.jit
def keep_where(mask: jax.Array, new: Any, old: Any) -> Any:
    """``new`` for the members where ``mask`` (the member axes) is true, else ``old``."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - mask.ndim)), n, o), new, old)


class Standing(NamedTuple):
    """Where each member stands, on the host, with the member axes: ``diverged``, ``stopped``
    (early, by patience), and its best validation accuracy and the epoch it came at."""

    diverged: np.ndarray
    stopped: np.ndarray
    best_accuracy: np.ndarray
    best_epoch: np.ndarray

    @classmethod
    def start(cls, shape: tuple, history: Sequence[dict]) -> "Standing":
        scores = [(h["validation_accuracy"], h["epoch"]) for h in history if h.get("validation_accuracy") is not None]
        best = max(scores, key=lambda s: s[0], default=(-np.inf, 0))
        return cls(np.zeros(shape, bool), np.zeros(shape, bool), np.full(shape, best[0]), np.full(shape, best[1]))

    def training(self) -> np.ndarray:
        return ~(self.diverged | self.stopped)

    def update(self, epoch: int, alive: np.ndarray, training: np.ndarray, validation, patience: int) -> np.ndarray:
        """Mark members that diverged this epoch and those whose patience ran out; return the
        members whose validation accuracy improved."""
        self.diverged[...] |= training & ~alive
        if validation is None:
            return np.zeros_like(training)
        improved = training & alive & (validation > self.best_accuracy)
        self.best_accuracy[...] = np.where(improved, validation, self.best_accuracy)
        self.best_epoch[...] = np.where(improved, epoch, self.best_epoch)
        if patience:
            self.stopped[...] |= training & alive & (epoch - self.best_epoch >= patience)
        return improved


def measure(trainer: Trainer, params: Any, data: DeviceData, splits: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(accuracy, mean cost)`` on each named split the data has, with the member axes."""
    return {s: chunked_mean(trainer.score, params, data.chunks[s], fetch=fetch_global) for s in splits if s in data.chunks}


def epoch_entry(epoch: int, costs: np.ndarray, alive: bool, measured: dict[str, tuple], cell: tuple, splits: Sequence[str],
                seconds: float) -> dict:
    """One member's history entry (see the module docstring); ``costs (2,)``: the epoch's mean
    mini-batch objective and its mean cost alone."""
    objective, cost = float(costs[0]), float(costs[1])
    if not alive:
        return {"epoch": epoch, "train_cost": cost, "train_objective": objective, "diverged": True, "seconds": seconds}
    entry = {"epoch": epoch, "train_cost": cost, "train_objective": objective}
    for split in splits:
        entry[f"{split}_accuracy"] = float(measured[split][0][cell]) if split in measured else None
        if split == "validation":
            entry["validation_cost"] = float(measured[split][1][cell]) if split in measured else None
    return {**entry, "seconds": seconds}


def run_group(configs: Sequence[TrainConfig], data: DeviceData, sink: Sink = NO_SINK, *, mesh: Mesh,
              exact: bool = False, every_epoch: Sequence[str] = SPLITS, start: Start = Start(),
              on_epoch: Callable[[int, int, list[list[dict]]], None] | None = None) -> list[MemberResult]:
    """Train ``configs`` (one program, same epochs) together and hand their results to ``sink``.

    ``every_epoch`` names the splits measured after every epoch; the others are measured once,
    at the end, into each configuration's last finished entry. ``start`` resumes a single run.
    ``on_epoch(epoch, epochs, histories)`` is called after each epoch.
    """
    began, first = time.perf_counter(), configs[0]
    trainer = make_trainer(configs, data, mesh, exact, start)
    splits = [s for s in SPLITS if s in data.chunks]
    histories = [list(start.history) for _ in configs]
    states, progress = trainer.states, Standing.start(np.shape(put_flags(trainer, True)), start.history)
    best = start.best if start.best is not None else states.params
    for epoch in range(len(start.history) + 1, first.epochs + 1):
        check()  # Ctrl-C or SIGTERM stops here, between epochs (see ``interrupts``)
        training = progress.training()
        epoch_began = time.perf_counter()
        states, alive, costs = trainer.epoch(states, put_flags(trainer, training), epoch)
        costs, alive = fetch_global(costs), fetch_global(alive)
        seconds = (time.perf_counter() - epoch_began) / len(configs)
        measured = measure(trainer, states.params, data, every_epoch)
        improved = progress.update(epoch, alive, training, measured.get("validation", (None,))[0], first.patience)
        if first.select == "best":
            best = keep_where(put_flags(trainer, improved), states.params, best)
        for config, cell, history in zip(configs, trainer.cells, histories):
            if training[cell]:
                history.append(epoch_entry(epoch, costs[cell], bool(alive[cell]), measured, cell, splits, seconds))
            if training[cell] and alive[cell]:
                sink.epoch_done(config, lambda c=cell: member(states, c), history, lambda c=cell: member(best, c))
        if on_epoch is not None:
            on_epoch(epoch, first.epochs, histories)
        if not any(progress.training()[cell] for cell in trainer.cells):
            break  # every member diverged or stopped: nothing left to train
    _measure_at_end(trainer, states.params, data, [s for s in splits if s not in every_epoch], histories)
    results = _results(configs, trainer, data, states, best, histories, time.perf_counter() - began, exact)
    sink.finish(results)
    return results


def put_flags(trainer: Trainer, flags) -> jax.Array:
    """One flag per member, placed as the group's members are."""
    shape = np.shape(trainer.states.params.layers[0]["b"])[:-1]
    return put_global(np.broadcast_to(np.asarray(flags, bool), shape), trainer.flags)


def _measure_at_end(trainer: Trainer, params: Any, data: DeviceData, splits: Sequence[str], histories) -> None:
    """Fill ``splits``' accuracy of the final networks into each last finished entry."""
    for split, (accuracy, _) in measure(trainer, params, data, splits).items():
        for cell, history in zip(trainer.cells, histories):
            finished = [h for h in history if not h.get("diverged")]
            if finished:
                finished[-1][f"{split}_accuracy"] = float(accuracy[cell])


def _results(configs, trainer: Trainer, data: DeviceData, states, best, histories, seconds: float,
             exact: bool) -> list[MemberResult]:
    """Each configuration's record, history and final state."""
    extra = dict(seconds=seconds / len(configs), group_size=len(configs), group_seconds=seconds,
                 compile_seconds=trainer.compile_seconds, devices=trainer.devices, exact=exact,
                 **{f"{split}_examples": count for split, count in data.examples.items()})
    return [MemberResult(config, run_record(config, history, run_status(history, data.chance),
                                            sizes=[data.inputs, *config.hidden, data.classes], **extra),
                         history, states, best, cell)
            for config, cell, history in zip(configs, trainer.cells, histories)]
