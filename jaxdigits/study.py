"""A search's study in Optuna's storage: opened or resumed, asked within its budget, told, kept
alive by heartbeats, and read back (records, the best trial and its network).

SQLite (``OUT/study.db``) by default; any SQLAlchemy database URL, ``postgresql://...`` through
psycopg, for studies that several workers share. ``optuna.load_study`` and Optuna's dashboard
open the same store as it is.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from jaxdigits.core.config import TrainConfig
from jaxdigits.core.errors import ConfigError
from jaxdigits.interrupts import wait
from jaxdigits.search_space import Dimension, distributions, space_json

SAMPLERS = ("random", "qmc", "tpe")
PRUNERS = ("none", "asha", "hyperband", "pbt")
STUDY_FILE = "study.db"
BEST_DIR = "trials"


def optuna_module():
    """``optuna``, quiet, or one line saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("search needs optuna: pip install optuna (it comes with jaxdigits' own install)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def storage_url(out: Path, storage: str | None) -> str:
    """``storage`` (``postgresql://`` meaning psycopg's driver), else SQLite in ``out``."""
    if storage is None:
        return f"sqlite:///{(out / STUDY_FILE).resolve()}"
    if storage.startswith("postgresql://") or storage.startswith("postgres://"):
        return "postgresql+psycopg://" + storage.split("://", 1)[1]
    return storage


def open_storage(url: str, heartbeat: tuple[float, float]):
    """Optuna's ``RDBStorage`` with heartbeats; a database that cannot be reached (a few
    seconds at most) or a URL that is no database is one line naming ``--storage``."""
    optuna = optuna_module()
    shown = url.split("@")[-1]  # no password in a message
    connect = {"connect_timeout": 5} if url.startswith("postgresql") else {"timeout": 30} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": connect}, heartbeat_interval=max(1, int(heartbeat[0])),
                grace_period=max(2, int(heartbeat[1])),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            racing = ("already exists", "duplicate key", "database is locked", "UNIQUE constraint", "UniqueViolation")
            if attempt < 4 and any(s in reason for s in racing):
                time.sleep(0.5 + attempt)  # another worker is creating the same tables: they will be there
                continue
            raise ConfigError(f"--storage {shown}: cannot open the study database ({reason}); check the URL and that "
                              "the database server runs") from None


def make_sampler(name: str, seed: int):
    optuna = optuna_module()
    samplers = {"random": optuna.samplers.RandomSampler, "qmc": optuna.samplers.QMCSampler, "tpe": optuna.samplers.TPESampler}
    if name not in samplers:
        raise ConfigError(f"--sampler {name!r} is not one of: {', '.join(SAMPLERS)}")
    return samplers[name](seed=seed)


def make_pruner(name: str, epochs: int):
    optuna = optuna_module()
    pruners = {"none": lambda: optuna.pruners.NopPruner(),
               "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3),
               "pbt": lambda: optuna.pruners.NopPruner()}  # population-based training stops trials itself
    if name not in pruners:
        raise ConfigError(f"--pruner {name!r} is not one of: {', '.join(PRUNERS)}")
    return pruners[name]()


class SearchStudy:
    """One worker's hold on a study (see the module docstring)."""

    def __init__(self, study, storage, out: Path, heartbeat: tuple[float, float]):
        self.study, self.storage, self.out, self.heartbeat = study, storage, out, heartbeat
        self.running: list = []
        self.best_value = -float("inf")
        self.stop = threading.Event()
        self.beat = threading.Thread(target=run_heartbeats, args=(storage, self.running, heartbeat[0], self.stop), daemon=True)
        self.beat.start()

    @classmethod
    def open(cls, out: Path, storage: str | None, name: str, dims: dict[str, Dimension], sampler: str, pruner: str,
             base: TrainConfig, data_info: dict, seed: int, heartbeat: tuple[float, float]) -> "SearchStudy":
        """Create the study, or resume it when its space, base config and data are these."""
        optuna = optuna_module()
        sampler_obj, pruner_obj = make_sampler(sampler, seed), make_pruner(pruner, base.epochs)
        out.mkdir(parents=True, exist_ok=True)
        rdb = open_storage(storage_url(out, storage), heartbeat)
        study = optuna.create_study(storage=rdb, study_name=name, direction="maximize", sampler=sampler_obj,
                                    pruner=pruner_obj, load_if_exists=True)
        identity = {"space": space_json(dims), "base": base.to_dict(), "data": data_info.get("sha256")}
        for key, value in identity.items():
            saved = study.user_attrs.get(key)
            if saved is None:
                study.set_user_attr(key, value)
            elif saved != value:
                raise ConfigError(f"study {name!r} was created with another {key}; resume it with the same space, "
                                  "flags and data, or give a new --study")
        return cls(study, rdb, out, heartbeat)

    def counts(self) -> dict[str, int]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        return {state.name: sum(t.state == state for t in trials) for state in TrialState}

    def fail_stale(self) -> None:
        """Fail the trials whose worker stopped beating (and ask them again), including those
        whose worker died between asking a trial and its first heartbeat (Optuna skips those)."""
        optuna = optuna_module()
        optuna.storages.fail_stale_trials(self.study)
        for trial_id in self._never_beaten():
            try:
                if self.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(self.study, self.storage.get_trial(trial_id))
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # another worker got there first

    def _never_beaten(self) -> list[int]:
        """Running trials of this study with no heartbeat at all, started over a grace period ago."""
        import datetime

        import sqlalchemy

        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=self.heartbeat[1])
        mine = {t._trial_id for t in self.running}
        query = sqlalchemy.text(
            "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
            "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL AND t.datetime_start < :cutoff")
        try:
            with self.storage.engine.connect() as connection:
                rows = connection.execute(query, {"study": self.study._study_id, "cutoff": cutoff}).fetchall()
        except sqlalchemy.exc.SQLAlchemyError:
            return []  # a schema of another Optuna version: leave it to Optuna's own check
        return [row[0] for row in rows if row[0] not in mine]

    def ask(self, dims: dict[str, Dimension], budget: int):
        """A new trial (a retried one first), or ``None`` when the study's ``budget`` of complete,
        pruned and running trials is reached; a trial asked by two workers at once beyond the
        budget is failed as surplus, so the study never ends with more than ``budget``. A
        retried branch of population-based training starts afresh (its copied network died with
        its worker): its ``parent`` becomes ``None``, ``start_epoch`` 0, ``lost_parent`` the old one."""
        self.fail_stale()
        if not self.has_room(budget):
            return None
        trial = self.study.ask(distributions(dims))
        if not self._within(trial, budget):
            return None
        if trial.user_attrs.get("parent") is not None:
            trial.set_user_attr("lost_parent", trial.user_attrs["parent"])
            trial.set_user_attr("parent", None), trial.set_user_attr("start_epoch", 0)
        return trial

    def has_room(self, budget: int) -> bool:
        """Whether the study's complete, pruned and running trials are fewer than ``budget``."""
        counts = self.counts()
        return counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] < budget

    def _within(self, trial, budget: int) -> bool:
        """Whether ``trial`` is within ``budget`` in trial order; a surplus one is failed."""
        from optuna.trial import TrialState

        ahead = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                 if t.number <= trial.number]
        if len(ahead) > budget:
            trial.set_user_attr("surplus", True)
            self.study.tell(trial, state=TrialState.FAIL)
            return False
        return True

    def branch(self, params: dict, dims: dict[str, Dimension], budget: int, parent: int, start_epoch: int):
        """A trial with ``params`` fixed that continues trial ``parent``'s network from its epoch
        ``start_epoch`` (population-based training), running here from now on (heartbeats and
        all), or ``None`` when the ``budget`` has no room. Its user attributes ``parent`` and
        ``start_epoch`` are its lineage. It is made running at once, never waiting, so no other
        worker can take it: only this one holds the network it continues."""
        optuna = optuna_module()
        if not self.has_room(budget):
            return None
        frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params=params,
                                           distributions=distributions(dims),
                                           user_attrs={"parent": parent, "start_epoch": start_epoch})
        trial = optuna.trial.Trial(self.study, self.storage.create_new_trial(self.study._study_id, template_trial=frozen))
        if not self._within(trial, budget):
            return None
        self.started(trial)
        return trial

    def started(self, trial) -> None:
        """A trial starts training here: beat for it at once, and from the thread from now on."""
        self.storage.record_heartbeat(trial._trial_id)
        self.running.append(trial)

    def report(self, trial, value: float, epoch: int) -> bool:
        """Report a finished epoch's best validation accuracy; whether the trial should go on."""
        trial.report(float(value), epoch)
        return not trial.should_prune()

    def lineage(self, number: int) -> list[dict]:
        """Trial ``number``'s lineage, see ``lineage``."""
        return lineage(self.study.get_trials(deepcopy=False), number)

    def finish(self, trial, record: dict, value: float, pruned: bool, network) -> None:
        """Keep the trial's record and tell the study; save its network if it is this worker's best."""
        from optuna.trial import TrialState

        from jaxdigits.files import json_safe

        value = float(value) if value > -float("inf") else 0.0
        trial.set_user_attr("record", json_safe(record))
        if not pruned and value > self.best_value:
            from jaxdigits.checkpoint import save_params

            self.best_value = value
            (self.out / BEST_DIR).mkdir(exist_ok=True)
            save_params(self.out / BEST_DIR / f"trial-{trial.number}.safetensors", network, {"config": record, "record": record})
        self.study.tell(trial, state=TrialState.PRUNED) if pruned else self.study.tell(trial, value)
        self.running.remove(trial)

    def wait_for_others(self, budget: int) -> bool:
        """With nothing to ask: wait while other workers' trials run; ``True`` once there is
        something to ask again (a failed trial to retry, budget freed), ``False`` when done."""
        while True:
            self.fail_stale()
            counts = self.counts()
            if counts["COMPLETE"] + counts["PRUNED"] >= budget:
                return False
            if counts["WAITING"] or counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] < budget:
                return True
            wait(self.heartbeat[0])  # wakes at once on Ctrl-C or SIGTERM

    def records(self) -> list[dict]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return [checked_record(self.study, t) for t in sorted(trials, key=lambda t: t.number) if "record" in t.user_attrs]

    def best_record(self) -> dict | None:
        from optuna.trial import TrialState

        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = self.study.best_trial if complete else None
        return checked_record(self.study, best) if best is not None and "record" in best.user_attrs else None

    def best_network(self, record: dict) -> Any:
        from jaxdigits.checkpoint import load_params

        path = self.out / BEST_DIR / f"trial-{record['trial']}.safetensors"
        return load_params(path)[0] if path.is_file() else None

    def note_test(self, record: dict, test: float) -> None:
        self.study.set_user_attr("best_test_accuracy", {"trial": record["trial"], "test_accuracy": test})

    def close(self) -> None:
        self.stop.set()
        self.beat.join(timeout=5)


def lineage(trials: Sequence, number: int) -> list[dict]:
    """The chain of population-based training parents of trial ``number``, first ancestor first:
    per trial its ``trial`` number, ``start_epoch`` (the epoch of the network it copied, 0 for
    one that started afresh), ``epochs`` (those it trained itself), ``params`` and ``value``."""
    by_number = {t.number: t for t in trials}
    chain: list[dict] = []
    while number is not None and number in by_number and all(link["trial"] != number for link in chain):
        t = by_number[number]
        chain.append({"trial": number, "start_epoch": t.user_attrs.get("start_epoch", 0) or 0,
                      "epochs": t.user_attrs.get("record", {}).get("epochs_completed"), "params": dict(t.params),
                      "value": t.value, "state": t.state.name.lower()})
        number = t.user_attrs.get("parent")
    return chain[::-1]


def checked_record(study, trial) -> dict:
    """``trial``'s record, checked (``records.record_problem``) before anything uses it; a bad
    one (an edited storage) is one line naming the study, the trial and the field."""
    from jaxdigits.records import RecordError, record_problem

    record = trial.user_attrs["record"]
    problem = record_problem(record)
    if problem:
        raise RecordError(f"study {study.study_name!r}, trial {trial.number}: its record's {problem}; the study's "
                          "storage was edited: restore it, or search again with a new --study")
    return record


def run_heartbeats(storage, running: Sequence, interval: float, stop: threading.Event) -> None:
    """Record a heartbeat for each running trial every ``interval`` seconds until ``stop``."""
    while not stop.wait(interval):
        for trial in list(running):
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # a trial told meanwhile, or the database briefly away: next time
                pass
