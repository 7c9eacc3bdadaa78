"""Hyperparameter sweeps: many configurations trained together in one compiled program per shape.

    result = jaxdigits.sweep(hidden=[(16, 16), (32,)], lr=[0.3, 1, 3], seed=[0, 1], epochs=5,
                             data_dir="path/to/mnist", out_dir="runs/sweep")

How configurations are trained together
    A grid (``SweepGrid``) expands to one ``TrainConfig`` per combination; any config field is
    an axis. Configurations that compile to the same program and train for as many epochs form a
    *group*, trained as one ``vmap``-ped program laid out as a (seeds, rates) rectangle: see
    ``core.group``. A member's numbers equal those of ``train`` alone up to float rounding; with
    ``exact`` bit for bit.

Why group by shape instead of padding different widths into one program
    Padding is exact only with masked units and the true fan-in, and every member then pays for
    the widest member of its depth. Measured on the hidden-size study (widths 4 to 256, one and
    two layers, 4 seeds, 30 epochs, a 2-core CPU): its 14 per-shape groups trained in 321 s in
    all; padded to the widest shape of each depth, the same work would have taken about 1110 s
    (each group at the 256-wide group's time), to save 12 compilations of about 0.6 s each.
    Grouping by shape is also exact by construction. So groups are by shape; within a shape
    nothing is padded but the rectangle's filler.

Where things live
    The groups, their layout and vmapped epoch are ``core.group``; group sizes, meshes and hosts
    are ``devices``; the loop that trains a group is ``driver.run_group``, the one ``train``
    runs too; the results folder is ``sweep_folder``. With ``out_dir``, each finished group
    appends one JSON line per configuration to ``results.jsonl`` (flushed and fsynced), and
    running the same sweep again skips every configuration already there.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from jaxdigits.core.config import SweepGrid, TrainConfig, program_key
from jaxdigits.core.dataset import Dataset
from jaxdigits.core.epoch import check_dtype, check_pieces
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.group import group_configs, memory_estimate
from jaxdigits.data import load_mnist
from jaxdigits.devices import (DeviceWarning, agree_on_done, agree_on_sizes, auto_sizes, check_fits, config_mesh, layout_line,
                               mesh_for, usable_cores, use_cpu_cores)
from jaxdigits.driver import NO_SINK, DeviceData, check_selection, put_data, run_group
from jaxdigits.interrupts import check
from jaxdigits.progress import Progress
from jaxdigits.records import config_id, metric_label, network_label, ranked, ranking_metric
from jaxdigits.sweep_folder import SweepFolder


class SweepResult(NamedTuple):
    """What ``sweep`` returns: one record per configuration of the grid, in grid order, and how
    many were trained now (the rest came from an earlier run's ``results.jsonl``)."""

    records: list[dict]
    trained: int
    resumed: int
    networks: dict = {}  # config id -> the network kept (``keep``), for configurations trained now

    def summary(self) -> str:
        """One line: how many configurations, how they ended, and the best, chosen on validation
        accuracy where every configuration has a split (its test accuracy then reported apart)."""
        line = f"{len(self.records)} configurations ({self.trained} trained now, {self.resumed} from before"
        for status in ("diverged", "stalled"):
            count = sum(r["status"] == status for r in self.records)
            line += f", {count} {status}" if count else ""
        line += ")"
        best = ranked(self.records)[0] if self.records else None
        if best is not None and best["status"] == "ok":
            metric = ranking_metric(self.records)
            line += (f"; best by {metric_label(metric)}: {'-'.join(map(str, best.get('sizes') or best['hidden']))} "
                     f"lr {best['lr']:g} seed {best['seed']}: " + accuracy_text(best, metric))
        return line


def sweep(
    grid: SweepGrid | dict | None = None,
    data: Dataset | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    max_group_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    cpu_devices: int | None = None,
    exact: bool = False,
    progress: bool = False,
    keep: str = "none",
    **axes: Any,
) -> SweepResult:
    """Train every configuration of a grid; return one record per configuration.

    The grid is ``grid`` (a ``SweepGrid`` or a dict of axes) or the keyword ``axes``, named as
    ``TrainConfig``'s fields (``hidden=[(16, 16), (32,)], lr=[0.3, 3], seed=[0, 1], epochs=5``).
    ``data`` defaults to ``load_mnist(data_dir, name)`` for each ``dataset`` of the grid; with your
    own ``Dataset``, the grid's dataset is its name.

    With ``out_dir`` every finished group is appended to ``out_dir/results.jsonl`` and a sweep
    run again with the same (or a grown) grid trains only what is missing; a folder holding
    anything else is refused unless ``overwrite``. Configurations run as groups of at most
    ``max_group_size`` (default: ``devices.auto_group_size``, chosen for the device) sharded over
    ``devices`` (default: every device; on a CPU-only host each core is one, or ``cpu_devices``
    of them, when JAX has not started yet). With ``exact``, members share no arithmetic: each
    configuration's numbers are bit for bit those of ``train`` alone, on any device count and in
    any group (slower); by default members of one seed share one wide first-layer product, which
    rounds differently as the group and the device count change. Each record is ``train``'s
    record for that configuration (see ``records.run_record``). ``keep="best"`` (the best trained now, on what rankings read) or ``"all"`` returns the
    networks in ``networks`` by config id and, with ``out_dir``, saves each as a run folder
    ``out_dir/networks/ID/`` that ``evaluate``, ``report`` and ``serve`` open directly.
    """
    grid = as_grid(grid, axes, data)
    _check_options(devices, cpu_devices, max_group_size, keep)
    datasets, grid = load_datasets(grid, data, data_dir)
    configs = grid.configs()
    for config in configs:
        check_dtype(config)
        check_fits(config, datasets[config.dataset])
    for config in {program_key(c): c for c in configs}.values():  # once per program
        check_pieces(config, datasets[config.dataset].inputs, datasets[config.dataset].num_classes)
        check_selection(config, datasets[config.dataset].held_out(config.validation))
    writer = jax.process_index() == 0  # with several hosts, only the first touches files
    sink = SweepFolder(out_dir, grid, {n: d.describe() for n, d in datasets.items()}, overwrite) if out_dir and writer else NO_SINK
    try:
        done = agree_on_done(configs, sink.open(configs, None))
        mesh = config_mesh(devices)
        groups, layout = plan_groups([c for c in configs if config_id(c) not in done], datasets, mesh, max_group_size)
        keeper = Keeper(keep)
        new = train_groups(groups, layout, datasets, sink, mesh, exact, progress and writer, (len(configs), len(done)), keeper)
    finally:
        sink.close()
    records = [new.get(config_id(c)) or done[config_id(c)] for c in configs]
    if out_dir is not None and writer:
        keeper.save(Path(out_dir) / "networks", new)
    return SweepResult(records, len(new), len(configs) - len(new), keeper.networks)


def as_grid(grid: SweepGrid | dict | None, axes: dict, data: Dataset | None) -> SweepGrid:
    """The sweep's grid from ``grid`` or keyword ``axes``; with ``data``, its dataset is data's name."""
    if grid is None:
        grid = SweepGrid(axes)
    elif axes:
        raise ConfigError("give the grid either as `grid` or as keyword axes, not both")
    elif isinstance(grid, dict):
        grid = SweepGrid.from_dict(grid)
    if data is not None:
        if grid.values("dataset") not in ((data.name,), (TrainConfig().dataset,)):
            raise ConfigError(f"the grid's datasets {list(grid.values('dataset'))} are not the data given ({data.name})")
        grid = grid.replace(dataset=[data.name])
    return grid


def _check_options(devices, cpu_devices: int | None, max_group_size: int | None, keep: str) -> None:
    if keep not in ("none", "best", "all"):
        raise ConfigError(f"keep {keep!r} is not one of: none, best, all")
    if max_group_size is not None and max_group_size < 1:
        raise ConfigError(f"group size must be at least 1, got {max_group_size}")
    if devices is None and not use_cpu_cores(cpu_devices):
        if cpu_devices is not None:
            raise ConfigError(f"cpu_devices={cpu_devices}: JAX has already started with {jax.device_count()} devices; "
                              "call jd.use_cpu_cores(N) before any JAX computation, or pass devices=")
        say_fewer_devices()


@functools.lru_cache(maxsize=1)
def say_fewer_devices() -> None:
    """Once per process: a CPU-only sweep that could not make each core a device says why."""
    cores = usable_cores()
    if jax.default_backend() == "cpu" and jax.device_count() < cores and jax.config.jax_num_cpu_devices <= 0 \
            and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        warnings.warn(f"jd.sweep runs on {jax.device_count()} CPU device(s) of {cores} cores: JAX started before the "
                      "sweep could make each core a device; call jd.use_cpu_cores() before any JAX computation to use "
                      "them all", DeviceWarning, stacklevel=4)


def load_datasets(grid: SweepGrid, data: Dataset | None, data_dir) -> tuple[dict[str, Dataset], SweepGrid]:
    """The grid's datasets by name (``data`` itself, or loaded); files recognised as another
    dataset than their name (Fashion-MNIST given as MNIST) rename the grid's dataset."""
    if data is not None:
        return {data.name: data}, grid
    datasets = {name: load_mnist(data_dir, name) for name in grid.values("dataset")}
    if all(name == loaded.name for name, loaded in datasets.items()):
        return datasets, grid
    if len(datasets) > 1:
        raise ConfigError("a dataset folder holds another dataset than its name says; sweep one dataset at a time")
    datasets = {loaded.name: loaded for loaded in datasets.values()}
    return datasets, grid.replace(dataset=list(datasets))


def plan_groups(configs: Sequence[TrainConfig], datasets: dict[str, Dataset], mesh,
                max_group_size: int | None) -> tuple[list[list[TrainConfig]], str]:
    """``(groups, layout)``: ``configs`` split into groups (see ``core.group.group_configs``),
    sized for the devices unless ``max_group_size`` is given, and one line saying so; a group
    that cannot fit is refused before any trains."""
    if max_group_size is None:
        sizes = agree_on_sizes(auto_sizes(configs, datasets, list(mesh.devices.flat)))
        groups = group_configs(configs, lambda c: sizes[program_key(c)].size)
    else:
        sizes, groups = {}, group_configs(configs, max_group_size)
    for group in groups:
        check_fits(group[0], datasets[group[0].dataset], members=len(group))
    if not groups:
        return groups, ""
    largest = max(groups, key=len)
    estimate = memory_estimate(largest[0], datasets[largest[0].dataset], len(largest))
    return groups, (layout_line(mesh, groups, sizes, max_group_size, datasets)
                    + f"; the largest group needs about {estimate / 2**20:.0f} MiB")


def train_groups(groups, layout: str, datasets: dict[str, Dataset], sink, mesh, exact: bool, progress: bool,
                 total: tuple[int, int], keeper: "Keeper") -> dict[str, dict]:
    """Train each group through ``driver.run_group``; the new records by config id."""
    on_device: dict[tuple, DeviceData] = {}
    new: dict[str, dict] = {}
    with Progress(total[0], "config", "sweep", progress, initial=total[1]) as bar:
        if layout:
            bar.write(layout, file=sys.stderr)
        for number, group in enumerate(groups, 1):
            check()  # Ctrl-C or SIGTERM stops here, between groups (and between epochs in run_group)
            first, group_mesh = group[0], mesh_for(len(group), mesh)
            label = f"group {number}/{len(groups)} {network_label(first, datasets[first.dataset])} x{len(group)}"
            bar.describe(label)
            key = (first.dataset, first.validation, first.dtype, group_mesh.size)
            if key not in on_device:
                on_device[key] = put_data(datasets[first.dataset].held_out(first.validation), group_mesh, first.dtype)
            results = run_group(group, on_device[key], sink, mesh=group_mesh, exact=exact, every_epoch=("validation", "test"),
                                on_epoch=lambda e, n, _: bar.status(f"epoch {e}/{n}"))
            new.update((r.record["id"], r.record) for r in results)
            keeper.add(results)
            bar.update(len(group))
            bar.write(group_line(label, [r.record for r in results]), file=sys.stderr)
    return new


class Keeper:
    """The networks a sweep keeps: none, the best trained so far (on validation where it has a
    split, else test accuracy; ``ok`` runs only), or all, as numpy arrays."""

    def __init__(self, keep: str):
        self.keep, self.networks, self.best = keep, {}, -1.0

    def add(self, results) -> None:
        for result in results if self.keep != "none" else ():
            record = result.record
            score = record["selected_validation_accuracy"] if record["selected_validation_accuracy"] is not None else record["test_accuracy"]
            if self.keep == "best" and (record["status"] != "ok" or score is None or score <= self.best):
                continue
            network = jax.tree_util.tree_map(np.asarray, result.network())
            if self.keep == "best":
                self.best, self.networks = score, {}
            self.networks[record["id"]] = network

    def save(self, folder: Path, records: dict[str, dict]) -> None:
        """Each kept network as a run folder ``folder/ID/params.safetensors`` (config and record inside)."""
        from jaxdigits.checkpoint import PARAMS_FILE, save_params

        for config_id_, network in self.networks.items():
            record = records[config_id_]
            (folder / config_id_).mkdir(parents=True, exist_ok=True)
            config = {name: record[name] for name in TrainConfig.__dataclass_fields__}
            save_params(folder / config_id_ / PARAMS_FILE, network, {"config": config, "record": record})


def accuracy_text(record: dict, metric: str) -> str:
    """``validation accuracy 95.10% (test 94.80%)``, or ``test accuracy 94.80%`` without a split."""
    if metric == "test_accuracy":
        return f"test accuracy {100 * record['test_accuracy']:.2f}%"
    return (f"validation accuracy {100 * record['selected_validation_accuracy']:.2f}% "
            f"(test {100 * record['selected_test_accuracy']:.2f}%, epoch {record['selected_epoch']})")


def group_line(label: str, records: Sequence[dict]) -> str:
    """One line for a finished group: its time, its best configuration, how many went wrong."""
    line = f"{label}: {records[0]['group_seconds']:.1f} s"
    best, metric = ranked(records)[0], ranking_metric(records)
    if best["status"] == "ok":
        line += f", best {accuracy_text(best, metric)} (lr {best['lr']:g}, seed {best['seed']})"
    for status in ("diverged", "stalled"):
        count = sum(r["status"] == status for r in records)
        line += f", {count} {status}" if count else ""
    return line


def load_grid(path: str | os.PathLike) -> SweepGrid:
    """A ``SweepGrid`` from a ``.toml`` or ``.json`` file whose keys are config fields, e.g.

        hidden = [[16, 16], [32], [64, 64]]
        lr = [0.3, 1.0, 3.0]
        seed = [0, 1]
        epochs = 5
    """
    from jaxdigits.files import read_regular_file

    path = Path(path)
    if path.suffix.lower() not in (".toml", ".json"):
        raise ConfigError(f"{path}: a grid file must end in .toml or .json")
    text = read_regular_file(path, "grid file", ConfigError).decode("utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{path}: not a valid grid file ({str(exc).splitlines()[0]})") from None
    try:
        return SweepGrid.from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
