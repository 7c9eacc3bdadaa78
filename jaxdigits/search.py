"""Search: trials drawn from an Optuna study train as one population on the device, are pruned
on validation accuracy, and their slots are refilled by the next trials without recompiling.

    result = jaxdigits.search({"lr": {"log": [0.01, 30]}, "batch_size": [10, 32]}, trials=40, epochs=10,
                              data_dir="path/to/mnist", out_dir="runs/search")

The study lives in Optuna's storage: ``OUT/study.db`` (SQLite) by default, or any database URL
(``postgresql://...``) that several ``jaxdigits search`` processes share. Each trial is asked
from the sampler (``random``, ``qmc``, ``tpe``), reports its validation accuracy after every
epoch to the pruner (``none``, ``asha``: successive halving, ``hyperband``, ``pbt``), and is told
``COMPLETE`` (its value: its best validation accuracy) or ``PRUNED``; its record (the sweep
record schema) is a user attribute of the trial.

Population-based training (``pbt``, Jaderberg et al. 2017): every ``pbt_interval`` epochs of its
trial a member is due; a due member in the bottom quarter of the population's latest validation
accuracies (among members with at least ``pbt_interval`` epochs in their trial) is stopped (told
``PRUNED``, its record's ``replaced_by`` naming what follows it) and its row takes a copy of the
network and optimizer state of a member drawn from the top quarter (exploit) with the space's
traced numbers multiplied by 0.8 or 1.2 and clipped to their ranges (explore: ``perturb``). The
copy is a new trial, created running with those parameters and the user attributes ``parent``
(the trial it copied) and ``start_epoch`` (the epoch of the copied network): its lineage. It
trains until its lineage has ``epochs`` epochs; each trial counts toward ``trials`` once, and
its record counts only the epochs it trained itself. Trials whose structure (``program_key``)
matches train together; a trial of another structure waits for a population of its own.

Liveness: each worker records a heartbeat for its running trials from a thread; a worker that
finds trials whose heartbeats stopped (a worker killed with SIGKILL) fails them, and each failed
trial is asked again with the same parameters. The study counts ``COMPLETE`` and ``PRUNED``
trials toward ``trials``: running the same command again resumes the study until it has them.
The test set is read once, for the best trial, at the end.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxdigits.core.config import TrainConfig, program_key
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.metrics import evaluate
from jaxdigits.files import refuse_other_kind
from jaxdigits.interrupts import check
from jaxdigits.search_space import Dimension, config_of, load_space, parse_space, perturb, perturbable
from jaxdigits.study import SearchStudy

DEFAULT_VALIDATION = 10000
DEFAULT_POPULATION = 16
DEFAULT_PBT_INTERVAL = 2


class Slot(NamedTuple):
    """A trial training in a population row: its config, history and best validation so far."""

    trial: Any
    config: TrainConfig
    history: list
    best: list  # [accuracy, epoch]
    start: int = 0  # the epoch of the network it started from (population-based training's copy)
    parent: int | None = None  # the trial it copied that network from


class PBT(NamedTuple):
    """Population-based training: a member is due every ``interval`` epochs of its trial; a due
    member in the bottom ``quantile`` copies one of the top ``quantile`` (at least one of each
    when two members have ``interval`` epochs)."""

    interval: int = DEFAULT_PBT_INTERVAL
    quantile: float = 0.25


class SearchResult(NamedTuple):
    """What ``search`` returns: the study's finished records (complete and pruned trials, in
    trial order), the best trial's record, its test accuracy (read once) and the model-epochs
    this worker trained and their seconds, and the best trial's lineage (population-based training)."""

    records: list[dict]
    best: dict | None
    best_test_accuracy: float | None
    model_epochs: int
    seconds: float
    lineage: list = []  # the best trial's, first ancestor first (``study.lineage``)


def search(space: dict | str | os.PathLike, data: Dataset | None = None, *, trials: int, epochs: int,
           validation: int = DEFAULT_VALIDATION, population: int | None = None, sampler: str = "tpe",
           pruner: str = "asha", out_dir: str | os.PathLike, storage: str | None = None, study: str = "jaxdigits",
           base: TrainConfig = TrainConfig(), data_dir: str | os.PathLike | None = None, seed: int = 0,
           heartbeat: tuple[float, float] = (5.0, 30.0), progress: bool = False,
           pbt_interval: int | None = None) -> SearchResult:
    """Search ``space`` (a dict of field specs, or a space file: see ``search_space``) with
    ``trials`` trials of at most ``epochs`` epochs on ``data`` with a ``validation`` split,
    ``population`` trials at a time; ``pbt_interval`` (with ``pruner="pbt"``, default 2): the
    epochs between population-based training's decisions. See the module docstring."""
    from jaxdigits.data import load_mnist

    if isinstance(space, (str, os.PathLike)):
        dims = load_space(space)
    else:
        dims = space if all(isinstance(d, Dimension) for d in space.values()) else parse_space(space)
    if trials < 1 or epochs < 1 or validation < 1:
        raise ConfigError("search: --trials, --epochs and --validation must be at least 1")
    pbt = pbt_settings(pruner, pbt_interval, dims)
    refuse_other_kind(Path(out_dir), "search")  # before the data: a run's or a sweep's folder is no study's
    data = data if data is not None else load_mnist(data_dir, base.dataset)
    base = base.replace(dataset=data.name, epochs=epochs, validation=validation, select="best", patience=0)
    held = data.held_out(validation)
    the_study = SearchStudy.open(Path(out_dir), storage, study, dims, sampler, pruner, base, data.describe(), seed, heartbeat)
    began, trained = time.perf_counter(), 0
    try:
        runner = Runner(the_study, dims, base, held, trials, population or DEFAULT_POPULATION, progress, pbt, seed)
        trained = runner.run()
    finally:
        the_study.close()
    return _finish(the_study, held, trained, time.perf_counter() - began)


def pbt_settings(pruner: str, interval: int | None, dims: dict[str, Dimension]) -> PBT | None:
    """Population-based training's settings for ``pruner="pbt"``; refused in one line where
    they cannot apply."""
    if pruner != "pbt":
        if interval is not None:
            raise ConfigError("--pbt-interval is for --pruner pbt; drop it, or add --pruner pbt")
        return None
    if interval is not None and interval < 1:
        raise ConfigError("--pbt-interval must be at least 1")
    if not perturbable(dims):
        raise ConfigError("--pruner pbt perturbs ranges of lr, l2, dropout, momentum, b1, b2 or augmentation strengths; "
                          "give the space one, e.g. --param lr=log:0.01:30")
    return PBT(interval or DEFAULT_PBT_INTERVAL)


def exploit_pairs(slots: list, pbt: PBT, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``(row, source)``: the due members of the bottom quantile, each with a member of the top
    quantile to copy, among the members with ``pbt.interval`` epochs in their trial, ranked on
    their latest validation accuracy (ties: the later trial ranks lower)."""
    pool = [row for row, slot in enumerate(slots) if slot is not None and len(slot.history) >= pbt.interval]
    if len(pool) < 2:
        return []
    pool.sort(key=lambda row: (slots[row].history[-1]["validation_accuracy"], -slots[row].trial.number))
    cut = max(1, int(len(pool) * pbt.quantile))
    top = pool[-cut:]
    return [(row, int(rng.choice(top))) for row in pool[:cut] if len(slots[row].history) % pbt.interval == 0]


class Runner:
    """One worker's loop: populations by program, slots refilled from the study."""

    def __init__(self, study: "SearchStudy", dims: dict[str, Dimension], base: TrainConfig, data: Dataset,
                 trials: int, size: int, progress: bool, pbt: PBT | None = None, seed: int = 0):
        from jaxdigits.devices import config_mesh

        self.study, self.dims, self.base, self.data, self.trials = study, dims, base, data, trials
        self.mesh = config_mesh()
        self.size = -(-size // self.mesh.size) * self.mesh.size
        self.waiting: dict[TrainConfig, deque] = defaultdict(deque)  # trials of other programs, by program
        self.progress, self.model_epochs = progress, 0
        self.on_device = None
        self.pbt, self.rng = pbt, np.random.default_rng(seed)

    def next_trial(self, program: TrainConfig | None):
        """A trial of ``program`` (or of any, when ``None``): one waiting, else one asked. Asked
        trials of other programs wait for a population of their own; up to a population's width
        is asked ahead for one that fits, so a population keeps its width while trials come."""
        if program is not None and self.waiting[program]:
            return self.waiting[program].popleft()
        if program is None:
            for queue in self.waiting.values():
                if queue:
                    return queue.popleft()
        for _ in range(self.size if program is not None else 1):
            asked = self.study.ask(self.dims, self.trials)
            if asked is None:
                return None
            self.study.started(asked)  # it counts as running from now on: beat for it
            trial = (asked, config_of(asked.params, self.dims, self.base, seed=self.base.seed + asked.number))
            if program is None or program_key(trial[1]) == program:
                return trial
            self.waiting[program_key(trial[1])].append(trial)
        return None

    def run(self) -> int:
        """Train populations until the study has its trials; return the model-epochs trained."""
        while True:
            first = self.next_trial(None)
            if first is None:
                if not self.study.wait_for_others(self.trials):
                    return self.model_epochs
                continue
            self.train_population(first)

    def train_population(self, first) -> None:
        from jaxdigits.driver import put_data
        from jaxdigits.population import Population

        if self.on_device is None:
            self.on_device = put_data(self.data, self.mesh, self.base.dtype)
        program = program_key(first[1])
        population = Population(first[1], self.size, self.on_device, self.mesh)
        slots: list[Slot | None] = [None] * self.size
        self._place(population, slots, 0, first)
        while True:
            for row in range(self.size):
                if slots[row] is None:
                    trial = self.next_trial(program)
                    if trial is not None:
                        self._place(population, slots, row, trial)
            if not population.occupied.any():
                return
            self._epoch(population, slots)

    def _place(self, population, slots, row: int, trial) -> None:
        population.place(row, trial[1])
        slots[row] = Slot(trial[0], trial[1], [], [-np.inf, 0])

    def _epoch(self, population, slots) -> None:
        check()  # Ctrl-C or SIGTERM stops here, between population epochs (see ``interrupts``)
        result = population.epoch()
        occupied = [row for row, slot in enumerate(slots) if slot is not None]
        self.model_epochs += len(occupied)
        seconds = result.seconds / max(len(occupied), 1)
        improved = np.zeros(self.size, bool)
        for row in occupied:
            slot = slots[row]
            entry = _entry(slot.start + len(slot.history) + 1, result, row, seconds)
            slot.history.append(entry)
            if result.alive[row] and entry["validation_accuracy"] > slot.best[0]:
                slot.best[:], improved[row] = [entry["validation_accuracy"], entry["epoch"]], True
        population.keep_best(improved)
        for row in occupied:
            if self._judge(slots[row], result.alive[row], population, row):
                slots[row] = None
                population.free(row)
        if self.pbt is not None:
            self._exploit(population, slots)

    def _judge(self, slot: Slot, alive: bool, population, row: int) -> bool:
        """Report the epoch; end the trial when it diverged, finished or is pruned."""
        epoch = slot.start + len(slot.history)
        go_on = alive and self.study.report(slot.trial, slot.best[0], epoch)
        if go_on and epoch < slot.config.epochs:
            return False
        self._close(slot, population, row, pruned=alive and epoch < slot.config.epochs)
        return True

    def _close(self, slot: Slot, population, row: int, pruned: bool, **extra) -> None:
        """Tell the study how ``slot``'s trial ended, with its record (``extra`` added)."""
        from jaxdigits.core.metrics import run_status
        from jaxdigits.records import run_record

        status = run_status(slot.history, self.on_device.chance)
        if slot.parent is not None:
            extra.update(parent=slot.parent, start_epoch=slot.start)
        record = run_record(slot.config, slot.history, status, trial=slot.trial.number, pruned=pruned,
                            sizes=[self.data.inputs, *slot.config.hidden, self.data.num_classes],
                            train_examples=len(self.data.train_images), validation_examples=len(self.data.validation_images),
                            **extra)
        self.study.finish(slot.trial, record, slot.best[0], pruned, population.network(row))

    def _exploit(self, population, slots) -> None:
        """Population-based training's exploit and explore (see the module docstring): a due
        member of the bottom quantile ends, and its row continues a top member as a new trial."""
        for row, source in exploit_pairs(slots, self.pbt, self.rng):
            parent = slots[source]
            params, _ = perturb(dict(parent.trial.params), self.dims, self.base, self.rng)
            start = parent.start + len(parent.history)
            child = self.study.branch(params, self.dims, self.trials, parent.trial.number, start)
            if child is None:
                return  # the budget is spent: the members train on
            self._close(slots[row], population, row, pruned=True, replaced_by=child.number)
            config = config_of(child.params, self.dims, self.base, seed=self.base.seed + child.number)
            population.branch(row, source, config)
            slots[row] = Slot(child, config, [], [-np.inf, 0], start, parent.trial.number)


def _entry(epoch: int, result, row: int, seconds: float) -> dict:
    """A search's history entry: validation only (the test set is not read while searching)."""
    costs = {"train_cost": float(result.cost[row]), "train_objective": float(result.objective[row])}
    if not result.alive[row]:
        return {"epoch": epoch, **costs, "diverged": True, "seconds": seconds}
    return {"epoch": epoch, **costs, "train_accuracy": None,
            "validation_accuracy": float(result.accuracy[row]), "validation_cost": float(result.validation_cost[row]),
            "test_accuracy": None, "seconds": seconds}


def _finish(study: "SearchStudy", data: Dataset, trained: int, seconds: float) -> SearchResult:
    """The study's records, and the best trial's test accuracy, read once."""
    records, best = study.records(), study.best_record()
    test = None
    if best is not None:
        network = study.best_network(best)
        if network is not None:
            test = evaluate(network, data.test_images, data.test_labels)
            study.note_test(best, test)
    lineage = study.lineage(best["trial"]) if best is not None else []
    return SearchResult(records, best, test, trained, seconds, lineage)
