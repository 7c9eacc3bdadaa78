"""``train``: one run, a group of one through the driver, into a run folder when given one."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

from jaxdigits.core.config import TrainConfig
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.epoch import TrainState, check_dtype, check_pieces, init_state, run_keys
from jaxdigits.core.model import Network
from jaxdigits.data import load_mnist
from jaxdigits.devices import check_fits, config_mesh, mesh_for
from jaxdigits.driver import NO_SINK, Start, check_selection, put_data, run_group
from jaxdigits.interrupts import Interrupted
from jaxdigits.progress import Progress
from jaxdigits.records import config_id
from jaxdigits.run_folder import RunFolder


class StalledWarning(UserWarning):
    """A run ended at chance accuracy with its cost no longer falling (e.g. saturated sigmoids)."""


class TrainInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped ``train``; ``saved_epochs`` complete epochs are in its folder.
    (A ``KeyboardInterrupt``, as every ``interrupts.Interrupted`` is.)"""

    def __init__(self, saved_epochs: int):
        super().__init__(f"interrupted with {saved_epochs} epochs saved")
        self.saved_epochs = saved_epochs


class TrainResult(NamedTuple):
    """What ``train`` returns: the final network, the per-epoch history, how the run ended
    (``status``: ``ok``, ``diverged`` or ``stalled``), the final state, the config and the
    run's record (the contents of ``run.json``)."""

    params: Network
    history: list[dict]
    status: str
    state: TrainState
    config: TrainConfig
    record: dict

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


def format_epoch(record: dict, epochs: int) -> str:
    """The one line printed per epoch."""
    validation = record.get("validation_accuracy")
    return (
        f"epoch {record['epoch']:>3}/{epochs}  cost {record['train_cost']:.4f}  "
        f"train {100 * record['train_accuracy']:.2f}%  "
        + (f"validation {100 * validation:.2f}%  " if validation is not None else "")
        + f"test {100 * record['test_accuracy']:.2f}%  {record['seconds']:.2f}s"
    )


def train(
    config: TrainConfig = TrainConfig(),
    data: Dataset | None = None,
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train the network ``config`` describes on ``data``; return it with its per-epoch history.

    ``data`` defaults to ``load_mnist(data_dir, config.dataset)``; with your own ``Dataset`` the
    network's input and output sizes follow it and ``config.dataset`` becomes its name. With
    ``out_dir``, a checkpoint is written atomically after every epoch, and ``resume=True``
    continues from the last one (bit-identical to an uninterrupted run; another config, epochs
    aside, or other data raises ``ConfigError``). An ``out_dir`` that holds another run raises
    ``RunFolderError`` unless ``overwrite``; one that another process is using, always. A cost
    that becomes NaN or infinite stops training: the result holds the last finite network and
    ``status == "diverged"``. A run that ends at chance accuracy with its cost no longer falling
    is ``"stalled"`` and warns (``StalledWarning``).
    """
    check_dtype(config)
    data = data if data is not None else load_mnist(data_dir, config.dataset)
    if config.dataset != data.name:  # your own arrays, or files that turned out to be another dataset
        config = config.replace(dataset=data.name)
    check_fits(config, data)
    check_pieces(config, data.inputs, data.num_classes)
    held = data.held_out(config.validation)
    check_selection(config, held)
    data_info = data.describe() if out_dir is not None else None
    sink = RunFolder(out_dir, resume=resume, overwrite=overwrite, data_info=data_info) if out_dir is not None else NO_SINK
    try:
        start = sink.open([config], lambda c: init_state(c, run_keys(c.seed)[0], data.inputs, data.num_classes))
        result = _run(config, held, sink, start.get(config_id(config), Start()), progress)
    except KeyboardInterrupt:
        raise TrainInterrupted(getattr(sink, "saved_epochs", 0)) from None
    finally:
        sink.close()
    if result.record["status"] == "stalled":
        warnings.warn(
            f"the run stalled: training accuracy {100 * result.record['train_accuracy']:.1f}% is at chance and the cost "
            f"stopped falling at {result.record['train_cost']:.4g}; try a smaller lr", StalledWarning, stacklevel=2,
        )
    return TrainResult(result.network(), result.history, result.record["status"], result.state(), config, result.record)


def _run(config: TrainConfig, data: Dataset, sink, start: Start, progress: bool):
    """The run through the driver (``data`` with its validation split held out), one line per epoch."""
    mesh = mesh_for(1, config_mesh())
    with Progress(config.epochs, "epoch", "training", progress, initial=len(start.history)) as bar:
        def on_epoch(epoch: int, epochs: int, histories: list[list[dict]]) -> None:
            bar.update()
            if not histories[0][-1].get("diverged"):
                bar.write(format_epoch(histories[0][-1], epochs))

        device_data = put_data(data, mesh, config.dtype)
        [result] = run_group([config], device_data, sink, mesh=mesh, start=start, on_epoch=on_epoch)
    return result
