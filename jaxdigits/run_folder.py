"""The ``--out`` folder of one training run, as the driver's sink: claimed, checkpointed after
every epoch, resumed, finished.

A run folder (``--out``) holds:
    params.safetensors       final network (self-describing: network and config inside)
    run.json                 the run's record: config fields, status, final metrics, curves,
                             data, library versions, device (the same record a sweep writes)
    history.json             one record per epoch
    checkpoint.safetensors   params, optimizer state, RNG key, epoch and history after the last
                             complete epoch, for ``--resume``
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdigits.checkpoint import (CHECKPOINT_FILE, HISTORY_FILE, PARAMS_FILE, RUN_FILE, RUN_FILES, TRAINING_FORMAT,
                                  load_arrays, network_from_tensors, network_spec, params_to_tensors, save_arrays,
                                  save_params)
from jaxdigits.core.config import TrainConfig
from jaxdigits.core.errors import CheckpointError, ConfigError, RunFolderError
from jaxdigits.files import claim_folder, environment_info, write_json
from jaxdigits.interrupts import deferred
from jaxdigits.records import config_id


def _differences(saved: dict, given: dict) -> list[str]:
    """What differs; more epochs may be asked for unless a schedule spans the run's epochs."""
    free = ("epochs",) if given.get("schedule", "constant") == "constant" else ()
    return [f"{k} {saved.get(k)} (saved) vs {given[k]}" for k in given if k not in free and saved.get(k) != given[k]]


class RunFolder:
    """The ``--out`` folder of one training run, as a ``driver.Sink``: ``open`` claims it (and,
    with ``resume``, returns where the run stopped), ``epoch_done`` checkpoints, ``finish`` writes
    the final network, ``run.json`` and ``history.json``, ``close`` lets go of the lock."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, data_info: dict | None = None):
        self.path = Path(path)
        self.resume, self.overwrite, self.data_info = resume, overwrite, data_info or {}
        self.lock, self.saved_epochs = None, 0

    def open(self, configs, fresh) -> dict[str, Any]:
        """Lock the folder and make it ready: a folder holding a run is resumed with ``resume``,
        replaced with ``overwrite`` (only the run's own files), refused otherwise."""
        from jaxdigits.driver import Start

        self.lock = claim_folder(self.path, "run", RUN_FILES, resume=self.resume, overwrite=self.overwrite)
        if not self.resume:
            return {}
        [config] = configs
        state, history, best = self.load_training(config, fresh(config))
        self.saved_epochs = len(history)
        return {config_id(config): Start(state, tuple(history), best)}

    def epoch_done(self, config: TrainConfig, state, history: list[dict], best) -> None:
        self.save_training(config, state(), history, best() if config.select == "best" else None)

    def finish(self, results) -> None:
        [result] = results
        record = {**result.record, "data": self.data_info, "environment": environment_info()}
        self.save_result(result.network(), record, result.history)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def saved_config(self) -> dict | None:
        """The config fields of the run to resume, or None when the folder holds no checkpoint."""
        path = self.path / CHECKPOINT_FILE
        if not path.is_file():
            return None
        config = load_arrays(path, TRAINING_FORMAT)[1].get("config")
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: the recorded config is unreadable")
        return config

    def completed_epochs(self) -> int:
        """How many epochs the resume checkpoint holds (0 when there is none)."""
        path = self.path / CHECKPOINT_FILE
        return int(load_arrays(path, TRAINING_FORMAT)[1].get("epoch", 0)) if path.is_file() else 0

    def save_training(self, config: TrainConfig, state, history: list[dict], best=None) -> None:
        """Atomically checkpoint everything needed to resume after the last complete epoch (with
        ``best``, the best network on validation so far too).

        The checkpoint and ``history.json`` are written with Ctrl-C and SIGTERM held off, so both
        always describe the same epoch.
        """
        tensors = params_to_tensors(state.params)
        tensors.update({f"opt_state.{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree_util.tree_leaves(state.opt_state))})
        tensors["rng.seed_key"] = np.asarray(jax.random.PRNGKey(config.seed))
        if best is not None:
            tensors.update(params_to_tensors(best, "best"))
        info = {
            "config": config.to_dict(), "network": network_spec(state.params), "epoch": len(history),
            "history": history, "data": self.data_info, "environment": environment_info(),
        }
        with deferred():
            save_arrays(self.path / CHECKPOINT_FILE, tensors, TRAINING_FORMAT, info)
            write_json(self.path / HISTORY_FILE, history)
            self.saved_epochs = len(history)

    def load_training(self, config: TrainConfig, template) -> tuple[Any, list[dict], Any]:
        """``(state, history, best)`` from the checkpoint (``best``: the best network on validation
        so far, with ``select="best"``, else ``None``); ``template`` is a fresh state of the same config.

        Refuses a checkpoint of another config (epochs aside) or of other data.
        """
        path = self._checkpoint_path()
        tensors, info = load_arrays(path, TRAINING_FORMAT)
        self._check_same_run(path, info, config)
        if not np.array_equal(tensors.get("rng.seed_key"), np.asarray(jax.random.PRNGKey(config.seed))):
            raise CheckpointError(f"{path}: RNG key does not match seed {config.seed}")
        history = _saved_history(path, info)
        if len(history) > config.epochs:
            raise ConfigError(
                f"the run in {self.path} has already completed {len(history)} epochs, more than "
                f"--epochs {config.epochs}; pass --epochs {len(history)} or more"
            )
        opt_state = _restore_opt_state(path, tensors, template.opt_state, config)
        best = network_from_tensors(tensors, info.get("network"), path, "best") if config.select == "best" else None
        network = network_from_tensors(tensors, info.get("network"), path)
        if network_spec(network) != network_spec(template.params):
            raise CheckpointError(f"{path}: the saved network {network_spec(network)} is not this config's")
        return type(template)(network, opt_state), history, best

    def _checkpoint_path(self) -> Path:
        path = self.path / CHECKPOINT_FILE
        if not path.is_file():
            if any((self.path / name).exists() for name in RUN_FILES):
                raise RunFolderError(f"{self.path} holds a run but no {CHECKPOINT_FILE} to resume from; "
                                     "pass --overwrite to start it over")
            raise RunFolderError(f"{self.path}: no run to resume; run without --resume to start one")
        return path

    def _check_same_run(self, path: Path, info: dict, config: TrainConfig) -> None:
        """Refuse a checkpoint of another config (epochs aside) or of other data."""
        saved = info.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: the recorded config is unreadable")
        differences = _differences(saved, config.to_dict())
        if differences:
            scheduled = saved.get("schedule", "constant") != "constant" and saved.get("epochs") != config.epochs
            why = (f"; a {saved.get('schedule')} schedule spans the run's {saved.get('epochs')} epochs, so a scheduled "
                   "run cannot be extended (only a constant rate can)" if scheduled else "")
            raise ConfigError(
                f"--resume with a different config ({'; '.join(differences)}){why}; drop those flags or use a new --out"
            )
        saved_data, data_info = info.get("data"), self.data_info
        if isinstance(saved_data, dict) and saved_data.get("sha256") != data_info.get("sha256"):
            raise ConfigError(
                f"--resume with different data: the run trained on {saved_data.get('train_examples')} "
                f"training images with sha256 {str(saved_data.get('sha256'))[:12]}, these are "
                f"{data_info.get('train_examples')} with {str(data_info.get('sha256'))[:12]}; "
                "use the run's --data-dir or a new --out"
            )

    def save_result(self, network, record: dict, history: list[dict]) -> None:
        """Write the final network, ``run.json`` (the run's record) and ``history.json``."""
        config = {name: record[name] for name in TrainConfig.__dataclass_fields__}
        with deferred():
            save_params(self.path / PARAMS_FILE, network, {"config": config, "record": record})
            write_json(self.path / RUN_FILE, record)
            write_json(self.path / HISTORY_FILE, history)


def _saved_history(path: Path, info: dict) -> list[dict]:
    history = info.get("history")
    if (
        not isinstance(history, list)
        or len(history) != info.get("epoch")
        or any(not isinstance(h, dict) or h.get("epoch") != i + 1 for i, h in enumerate(history))
    ):
        raise CheckpointError(f"{path}: history does not match the recorded epoch")
    return history


def _restore_opt_state(path: Path, tensors: dict, template, config: TrainConfig):
    leaves, treedef = jax.tree_util.tree_flatten(template)
    stored = sum(1 for name in tensors if name.startswith("opt_state."))
    if stored != len(leaves):  # e.g. written before the update's numbers joined the rate in the state
        raise CheckpointError(f"{path}: its optimizer state holds {stored} arrays where this jaxdigits keeps {len(leaves)} "
                              f"for optimizer {config.to_dict()['optimizer']!r}; start the run again without --resume")
    restored = []
    for i, leaf in enumerate(leaves):
        array = tensors.get(f"opt_state.{i}")
        if array is None or array.shape != np.shape(leaf) or array.dtype != np.asarray(leaf).dtype:
            raise CheckpointError(f"{path}: optimizer state does not match optimizer {config.to_dict()['optimizer']!r}")
        restored.append(jnp.asarray(array))
    return jax.tree_util.tree_unflatten(treedef, restored)
