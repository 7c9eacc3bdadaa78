"""A population: a fixed number of slots that train as one compiled program, each slot holding
one configuration at its own epoch, refilled with a new configuration without recompiling.

The slots are the rows of ``core.group``'s rectangle with one member per row (``(P, 1)``), so
each row has its own seed, shuffle key, augmentation strengths, update numbers (rate, ``l2``,
dropout rate, momentum, Adam's betas: in its optimizer state) and epoch number: the group epoch
takes one epoch number per row. Placing a configuration in a row is one compiled
update with the row as a traced index, so a search refills slots for as long as it likes with
the programs it compiled for the first (the epoch, the score, the update). ``branch`` is the
same for population-based training: a row takes a copy of another row's network and optimizer
state, with new numbers written into that state, also one compiled update.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdigits.core.config import UPDATE_NUMBERS, TrainConfig, numbers, program_key
from jaxdigits.core.epoch import augment_strengths, init_state, run_keys
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.group import MESH_AXIS, fetch_global, group_epoch, group_score, put_global
from jaxdigits.core.metrics import chunked_mean
from jaxdigits.core.optimizers import state_numbers
from jaxdigits.core.programs import compiled, jitted
from jaxdigits.driver import DeviceData, keep_where


class EpochResult(NamedTuple):
    """One population epoch, per row: ``cost`` (alone) and ``objective`` (with ``l2`` and the
    penalty), ``alive`` (finite), and validation ``accuracy`` and ``cost``; ``seconds`` for the
    whole population."""

    cost: np.ndarray
    objective: np.ndarray
    alive: np.ndarray
    accuracy: np.ndarray
    validation_cost: np.ndarray
    seconds: float


@jax.jit
def _set_row(tree: Any, row: jax.Array, value: Any) -> Any:
    """``tree`` with row ``row`` (of its leading axis) replaced by ``value``."""
    return jax.tree_util.tree_map(lambda t, v: t.at[row].set(v.reshape(t.shape[1:])), tree, value)


@jax.jit
def _branch(states: Any, best: Any, source: jax.Array, row: jax.Array, held: dict) -> tuple[Any, Any]:
    """``states`` with row ``row`` a copy of row ``source`` (network and optimizer state) whose
    optimizer state holds the numbers ``held`` (``{"learning_rate": ..., ...}``), and ``best``
    with row ``row`` that copied network."""
    copied = jax.tree_util.tree_map(lambda t: t.at[row].set(t[source]), states)
    hyperparams = {name: t.at[row].set(jnp.reshape(held[name], t.shape[1:]).astype(t.dtype)) if name in held else t
                   for name, t in copied.opt_state.hyperparams.items()}
    best = jax.tree_util.tree_map(lambda b, t: b.at[row].set(t[source]), best, states.params)
    return copied._replace(opt_state=copied.opt_state._replace(hyperparams=hyperparams)), best


class Population:
    """``size`` slots of one program (``program_key``) on ``mesh``; ``place`` puts a config in a
    row, ``epoch`` trains every occupied row one epoch and scores it on the validation split."""

    def __init__(self, program: TrainConfig, size: int, data: DeviceData, mesh: Mesh):
        if "validation" not in data.chunks:
            raise ConfigError("a population is scored on a validation split; hold one out (--validation N)")
        self.program, self.size, self.data = program_key(program), size, data
        self.cells = NamedSharding(mesh, PartitionSpec(MESH_AXIS, None))
        self.rows = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
        fresh = init_state(program, run_keys(0)[0], data.inputs, data.classes)
        self.states = jax.tree_util.tree_map(lambda x: put_global(np.broadcast_to(x, (size, 1) + x.shape), self.cells), fresh)
        self.keys = put_global(np.zeros((size, 2), np.uint32), self.rows)
        self.strengths = {k: put_global(np.broadcast_to(v, (size,)), self.rows) for k, v in augment_strengths(program).items()}
        self.numbers = np.zeros(size, np.int64)  # the epoch each row runs next
        self.occupied = np.zeros(size, bool)
        self.best = self.states.params
        began = time.perf_counter()
        self._epoch = compiled(group_epoch, self.program, self.states, put_global(np.ones((size, 1), bool), self.cells),
                               self.keys, put_global(np.ones(size, np.uint32), self.rows), data.train_images,
                               data.train_labels, self.strengths, out_shardings=(self.cells, self.cells, self.cells))
        self._score = jitted(group_score, self.program, out_shardings=(self.cells, self.cells))
        self.compile_seconds = time.perf_counter() - began

    def place(self, row: int, config: TrainConfig) -> None:
        """Start ``config`` in ``row`` exactly as ``train`` starts it (its seed, its numbers)."""
        if program_key(config) != self.program:
            raise ConfigError("a population trains configurations of one program; this one differs")
        init_key, shuffle_key = run_keys(config.seed)
        state = init_state(config, init_key, self.data.inputs, self.data.classes)
        index = jnp.asarray(row, jnp.int32)
        self.states = _set_row(self.states, index, state)
        self.best = _set_row(self.best, index, state.params)
        self.keys = _set_row(self.keys, index, shuffle_key)
        self.strengths = _set_row(self.strengths, index, augment_strengths(config))
        self.numbers[row], self.occupied[row] = 1, True

    def branch(self, row: int, source: int, config: TrainConfig) -> None:
        """Population-based training's exploit and explore: ``row`` continues ``source``'s
        network and optimizer state (its step count, moments and epoch number) with
        ``config``'s update numbers written into that state, ``config``'s augmentation strengths
        and its own shuffle key (its seed), so it draws other batches than ``source``."""
        if program_key(config) != self.program:
            raise ConfigError("a population trains configurations of one program; this one differs")
        index, origin = jnp.asarray(row, jnp.int32), jnp.asarray(source, jnp.int32)
        held = {name: float(value) for name, value in state_numbers(numbers(config, UPDATE_NUMBERS)).items()}
        self.states, self.best = _branch(self.states, self.best, origin, index, held)
        self.keys = _set_row(self.keys, index, run_keys(config.seed)[1])
        self.strengths = _set_row(self.strengths, index, augment_strengths(config))
        self.numbers[row], self.occupied[row] = self.numbers[source], True

    def hyperparams(self, row: int) -> dict[str, float]:
        """Row ``row``'s update numbers as its optimizer state holds them (``learning_rate``, ...)."""
        return {name: float(fetch_global(t)[row, 0]) for name, t in self.states.opt_state.hyperparams.items()}

    def free(self, row: int) -> None:
        self.occupied[row] = False

    def epoch(self) -> EpochResult:
        """Train every occupied row one epoch (its own epoch number) and score it on validation."""
        began = time.perf_counter()
        training = put_global(self.occupied[:, None], self.cells)
        numbers = put_global(self.numbers.astype(np.uint32), self.rows)
        self.states, alive, costs = self._epoch(self.states, training, self.keys, numbers,
                                                self.data.train_images, self.data.train_labels, self.strengths)
        accuracy, validation_cost = chunked_mean(self._score, self.states.params, self.data.chunks["validation"],
                                                 fetch=fetch_global)
        self.numbers += self.occupied
        costs = fetch_global(costs)[:, 0]
        return EpochResult(costs[:, 1], costs[:, 0], fetch_global(alive)[:, 0], accuracy[:, 0], validation_cost[:, 0],
                           time.perf_counter() - began)

    def keep_best(self, improved: np.ndarray) -> None:
        """Keep the rows' networks where ``improved`` (their best validation epoch so far)."""
        self.best = keep_where(put_global(improved[:, None], self.cells), self.states.params, self.best)

    def network(self, row: int) -> Any:
        """Row ``row``'s best network so far."""
        return jax.tree_util.tree_map(lambda x: x[row, 0], self.best)
