"""One way to open a saved network with the data it was trained on.

``evaluate``, ``report``, ``serve`` and the experiments all open a run folder, a params file or
a ``Network`` through ``load_run``, so they accept and refuse the same things: the data set is
the one the run recorded (``info["config"]["dataset"]``), read from ``data_dir`` or the folder
``$JAXDIGITS_DATA_DIR`` names for it, and refused in one line when it is another data set or
does not fit the network's input and output sizes.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

from jaxdigits.checkpoint import load_params
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.model import Network
from jaxdigits.data import DATA_DIR_ENV, default_data_dir, load_mnist


class SavedRun(NamedTuple):
    """A saved network, what was saved with it (``info``: its config and record, when a run
    saved it), its data (``None`` when optional and no folder was given) and, then, why not."""

    network: Network
    info: dict[str, Any]
    data: Dataset | None
    note: str = ""


def load_run(source: str | os.PathLike | Network, data: Dataset | None = None, data_dir: str | os.PathLike | None = None,
             *, data_required: bool = True) -> SavedRun:
    """``source`` (a run folder, a params file or a ``Network``) with its data: ``data`` when
    given, else the recorded data set from ``data_dir`` (default: ``$JAXDIGITS_DATA_DIR``'s,
    else a download). With ``data_required=False`` nothing is downloaded: without a folder the
    run comes back with ``data=None`` and a note saying how to give one."""
    network, info = (source, {}) if isinstance(source, Network) else load_params(source)
    dataset = (info.get("config") or {}).get("dataset", "mnist")
    if data is None:
        folder = data_dir if data_dir is not None else default_data_dir(dataset)
        if folder is None and not data_required:
            return SavedRun(network, info, None, f"no data folder; give --data-dir DIR (or set {DATA_DIR_ENV}) "
                                                 "to see test digits")
        data = load_recorded(folder, dataset)
    check_fits_network(network, data)
    return SavedRun(network, info, data)


def load_recorded(folder: str | os.PathLike | None, dataset: str) -> Dataset:
    """The data set ``dataset`` from ``folder`` (see ``load_mnist``), refused in one line when its
    files are another known data set. ``load_mnist``'s warning about that (which says the files
    are recorded as what they are) is dropped: here they are refused, not recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_mnist(folder, dataset)
    if data.name != dataset:
        raise ConfigError(f"the network was trained on {dataset} and these files are {data.name}; "
                          f"give --data-dir a folder with {dataset}")
    for warning in caught:  # any other warning still reaches the person at the terminal
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return data


def check_fits_network(network: Network, data: Dataset) -> None:
    """Refuse data whose input size or class count is not the network's."""
    if data.inputs != network.sizes[0] or data.num_classes != network.sizes[-1]:
        raise ConfigError(f"the network takes {network.sizes[0]} inputs and {network.sizes[-1]} classes; "
                          f"{data.name} has {data.inputs} and {data.num_classes}")
