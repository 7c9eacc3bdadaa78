"""The one training loop: every run, alone or with others, trains through ``run_group``.

A single ``train`` is a group of one (it runs the unbatched compiled epoch, so its speed and
bit-identical resume stay); a sweep is many groups, each one compiled ``vmap``-ped program (see
``core.group``). The loop owns the epochs, the evaluation, divergence and status, and the
per-epoch history, whose entries have the same keys whichever program made them:

    {"epoch", "train_cost", "train_accuracy", "test_accuracy", "seconds"}
    {"epoch", "train_cost", "diverged": True, "seconds"}       (the epoch whose cost was not finite)

An accuracy a run does not measure at every epoch (a sweep measures the training set's only at
the end) is ``None`` until it is measured. What happens to the results is the sink's business,
through one protocol (``Sink``): ``open`` says what is already done, ``epoch_done`` sees each
epoch, ``finish`` takes each group's results, ``close`` lets go.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdigits.core.config import TrainConfig, program_key
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.epoch import TrainState, device_images, init_state, make_guarded_epoch, run_keys
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.group import (MESH_AXIS, exact_group_epoch, fetch_global, group_count, group_epoch, init_rectangle,
                                  plan_layout, put_global)
from jaxdigits.core.metrics import chance_level, chunked_accuracy, count_correct, eval_chunks, run_status
from jaxdigits.core.programs import compiled, jitted
from jaxdigits.records import run_record

# The splits whose accuracy a history entry holds, in its key order.
SPLITS = ("train", "test")
_count_correct = jax.jit(count_correct)


class DeviceData(NamedTuple):
    """A data set on the devices of a mesh (replicated): the training arrays, and each split's
    evaluation chunks by name."""

    train_images: jax.Array
    train_labels: jax.Array
    chunks: dict[str, list]
    inputs: int
    classes: int
    chance: float


def put_data(data: Dataset, mesh: Mesh, dtype: str = "float32") -> DeviceData:
    """``data`` replicated on every device of ``mesh``; images as uint8 pixels where they are
    pixel bytes' floats (a quarter of the memory), else as ``dtype``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    train_x, train_y, test_x, test_y = (put_global(device_images(a, dtype) if a.dtype.kind == "f" else a, replicated)
                                        for a in data)
    chunks = {"train": eval_chunks(train_x, train_y), "test": eval_chunks(test_x, test_y)}
    return DeviceData(train_x, train_y, chunks, data.inputs, data.num_classes, chance_level(data.train_labels))


class Start(NamedTuple):
    """Where a configuration starts: a saved ``state`` after ``len(history)`` epochs, or fresh."""

    state: TrainState | None = None
    history: tuple = ()


class MemberResult(NamedTuple):
    """One configuration's outcome: its record (``records.run_record``), its history, and its
    final state, fetched from the group's ``states`` by ``state()``."""

    config: TrainConfig
    record: dict
    history: list[dict]
    states: Any
    cell: tuple

    def state(self) -> TrainState:
        return member_state(self.states, self.cell)


class Sink(Protocol):
    """Where a training's results go: a run folder, a sweep folder, or nowhere (``NO_SINK``)."""

    def open(self, configs: Sequence[TrainConfig], fresh: Callable[[TrainConfig], TrainState]) -> dict[str, Any]:
        """Claim the place; return what is done, by config id: a finished record, or a ``Start``."""

    def epoch_done(self, config: TrainConfig, state: Callable[[], TrainState], history: list[dict]) -> None:
        """After every epoch, for each configuration still training; ``state()`` fetches its state."""

    def finish(self, results: Sequence[MemberResult]) -> None:
        """A group has finished: keep its results."""

    def close(self) -> None:
        """Let go of the place (also after an error)."""


class NoSink:
    """Keeps nothing: ``jd.train``/``jd.sweep`` without an ``out_dir``."""

    def open(self, configs, fresh):
        return {}

    def epoch_done(self, config, state, history):
        pass

    def finish(self, results):
        pass

    def close(self):
        pass


NO_SINK = NoSink()


class Trainer(NamedTuple):
    """A group made ready to train: its stacked ``states`` and ``alive`` flags, ``epoch(states,
    alive, number) -> (states, alive, costs)``, ``count(params, images, labels)`` (correct answers
    per member), each configuration's ``cells`` (its index into the member axes: ``()`` for a
    single run) and the seconds compiling took."""

    states: Any
    alive: jax.Array
    epoch: Callable
    count: Callable
    cells: list[tuple]
    devices: int
    compile_seconds: float


def single_trainer(config: TrainConfig, data: DeviceData, start: Start) -> Trainer:
    """One configuration, with ``train``'s unbatched compiled epoch (bit-identical resume)."""
    init_key, shuffle_key = run_keys(config.seed)
    state = start.state if start.state is not None else init_state(config, init_key, data.inputs, data.classes)
    alive, began = jnp.asarray(True), time.perf_counter()
    epoch_fn = compiled(make_guarded_epoch, config, state, alive, shuffle_key, data.train_images, data.train_labels)

    def epoch(state, alive, number):
        return epoch_fn(state, alive, jax.random.fold_in(shuffle_key, number), data.train_images, data.train_labels)

    return Trainer(state, alive, epoch, _count_correct, [()], 1, time.perf_counter() - began)


def group_trainer(configs: Sequence[TrainConfig], data: DeviceData, mesh: Mesh, exact: bool) -> Trainer:
    """Configurations of one program as a (seeds, rates) rectangle sharded over ``mesh``."""
    program = program_key(configs[0])
    layout = plan_layout(configs, mesh.size)
    spec = (MESH_AXIS, None) if layout.shard_axis == 0 else (None, MESH_AXIS)
    cells, rows = NamedSharding(mesh, PartitionSpec(*spec)), NamedSharding(mesh, PartitionSpec(spec[0]))
    states, shuffle_keys = init_rectangle(program, layout, (data.inputs, data.classes), cells, rows)
    alive, began = put_global(np.ones(layout.index.shape, bool), cells), time.perf_counter()
    build = exact_group_epoch(mesh, cells.spec) if exact else group_epoch
    epoch_fn = compiled(build, program, states, alive, shuffle_keys, 1, data.train_images, data.train_labels,
                        out_shardings=(cells, cells, cells))
    count = jitted(group_count, program, out_shardings=cells)

    def epoch(states, alive, number):
        return epoch_fn(states, alive, shuffle_keys, number, data.train_images, data.train_labels)

    where = {int(layout.index[cell]): cell for cell in zip(*np.nonzero(layout.index >= 0))}
    return Trainer(states, alive, epoch, count, [tuple(map(int, where[i])) for i in range(len(configs))], mesh.size,
                   time.perf_counter() - began)


def make_trainer(configs: Sequence[TrainConfig], data: DeviceData, mesh: Mesh, exact: bool, start: Start) -> Trainer:
    """A lone configuration on one host trains unbatched; more train as one vmapped group."""
    first = configs[0]
    if any((program_key(c), c.epochs) != (program_key(first), first.epochs) for c in configs):
        raise ConfigError("a group needs configurations that differ only in learning rate and seed")
    if len(configs) == 1 and jax.process_count() == 1:
        return single_trainer(first, data, start)
    if start.history:
        raise ConfigError("only a single run resumes from a checkpoint mid-way")
    return group_trainer(configs, data, mesh, exact)


def member_state(states: Any, cell: tuple) -> TrainState:
    """One member's state out of a group's stacked states (a single run's as it is)."""
    return jax.tree_util.tree_map(lambda x: x[cell], states) if cell else states


def measure(trainer: Trainer, params: Any, data: DeviceData, splits: Sequence[str]) -> dict[str, np.ndarray]:
    """Accuracy on each named split, with the member axes."""
    return {split: chunked_accuracy(trainer.count, params, data.chunks[split], fetch=fetch_global) for split in splits}


def epoch_entry(epoch: int, cost: float, alive: bool, accuracies: dict[str, float], seconds: float) -> dict:
    """One history entry (see the module docstring)."""
    if not alive:
        return {"epoch": epoch, "train_cost": cost, "diverged": True, "seconds": seconds}
    return {"epoch": epoch, "train_cost": cost, **{f"{s}_accuracy": accuracies.get(s) for s in SPLITS}, "seconds": seconds}


def run_group(configs: Sequence[TrainConfig], data: DeviceData, sink: Sink = NO_SINK, *, mesh: Mesh,
              exact: bool = False, every_epoch: Sequence[str] = SPLITS, start: Start = Start(),
              on_epoch: Callable[[int, int, list[list[dict]]], None] | None = None) -> list[MemberResult]:
    """Train ``configs`` (one program, same epochs) together and hand their results to ``sink``.

    ``every_epoch`` names the splits measured after every epoch; the others are measured once,
    at the end, into each configuration's last finished entry. ``start`` resumes a single run.
    ``on_epoch(epoch, epochs, histories)`` is called after each epoch.
    """
    began, epochs = time.perf_counter(), configs[0].epochs
    trainer = make_trainer(configs, data, mesh, exact, start)
    histories = [list(start.history) for _ in configs]
    states, alive = trainer.states, trainer.alive
    for epoch in range(len(start.history) + 1, epochs + 1):
        epoch_began = time.perf_counter()
        states, alive, costs = trainer.epoch(states, alive, epoch)
        costs, alive_now = fetch_global(costs), fetch_global(alive)
        seconds = (time.perf_counter() - epoch_began) / len(configs)
        measured = measure(trainer, states.params, data, every_epoch)
        for config, cell, history in zip(configs, trainer.cells, histories):
            if not (history and history[-1].get("diverged")):
                history.append(epoch_entry(epoch, float(costs[cell]), bool(alive_now[cell]),
                                           {s: float(v[cell]) for s, v in measured.items()}, seconds))
                if alive_now[cell]:
                    sink.epoch_done(config, lambda cell=cell: member_state(states, cell), history)
        if on_epoch is not None:
            on_epoch(epoch, epochs, histories)
        if not any(alive_now[cell] for cell in trainer.cells):
            break  # every member diverged: nothing left to train
    _measure_at_end(trainer, states.params, data, [s for s in SPLITS if s not in every_epoch], histories)
    results = _results(configs, trainer, data, states, histories, time.perf_counter() - began, exact)
    sink.finish(results)
    return results


def _measure_at_end(trainer: Trainer, params: Any, data: DeviceData, splits: Sequence[str], histories) -> None:
    """Fill ``splits``' accuracy of the final networks into each last finished entry."""
    for split, values in measure(trainer, params, data, splits).items():
        for cell, history in zip(trainer.cells, histories):
            finished = [h for h in history if not h.get("diverged")]
            if finished:
                finished[-1][f"{split}_accuracy"] = float(values[cell])


def _results(configs, trainer: Trainer, data: DeviceData, states, histories, seconds: float, exact: bool) -> list[MemberResult]:
    """Each configuration's record, history and final state."""
    chance = data.chance
    sizes = lambda config: [data.inputs, *config.hidden, data.classes]  # noqa: E731
    extra = dict(seconds=seconds / len(configs), group_size=len(configs), group_seconds=seconds,
                 compile_seconds=trainer.compile_seconds, devices=trainer.devices, exact=exact)
    return [MemberResult(config, run_record(config, history, run_status(history, chance), sizes=sizes(config), **extra),
                         history, states, cell)
            for config, cell, history in zip(configs, trainer.cells, histories)]
