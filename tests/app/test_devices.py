"""Devices (``jaxdigits.devices``): the automatic group size from the CPU cache or the accelerator
memory, the layout line, CPU cores, sizes that cannot fit, and joining a cluster."""

from __future__ import annotations

import math

import jax
import pytest

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits import devices as sweeps
from jaxdigits.core.config import TrainConfig
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.group import member_bytes
from jaxdigits.core.metrics import EVAL_CHUNK
from jaxdigits.devices import (CACHE_FRACTION, FALLBACK_CACHE_PER_CORE, MEMORY_FRACTION, GroupSize, auto_group_size,
                               cpu_cache_per_core, use_cpu_cores)
from jaxdigits.sweeps import sweep
from tests.helpers import DATA, one_error_line, run_cli


def power_of_two_floor(x: float) -> int:
    return 2 ** int(math.floor(math.log2(max(x, 1))))


def test_cpu_group_size_follows_the_cache(monkeypatch):
    cpu = jax.devices("cpu")[:1]
    cores = len(sweeps.os.sched_getaffinity(0))
    monkeypatch.setattr(sweeps, "cpu_cache_per_core", lambda: (16 << 20, "sysfs"))
    state, activations = member_bytes(TrainConfig(), 784, 10)
    chosen = auto_group_size(TrainConfig(), 784, 10, cpu)
    expected = power_of_two_floor(CACHE_FRACTION * (16 << 20) * cores / (2 * state + activations))
    assert chosen == auto_group_size(TrainConfig(), 784, 10, cpu)  # deterministic
    assert chosen.size == chosen.per_device == expected and chosen.devices == 1
    assert "L2+L3" in chosen.reason
    wide = auto_group_size(TrainConfig(hidden=(256, 256)), 784, 10, cpu)
    assert wide.size < chosen.size  # a wider network: fewer of them fit the cache
    monkeypatch.setattr(sweeps, "cpu_cache_per_core", lambda: (64 << 20, "sysfs"))
    assert auto_group_size(TrainConfig(), 784, 10, cpu).size == min(4 * expected, sweeps.MAX_PER_DEVICE)


def test_cache_size_is_read_or_assumed(monkeypatch, tmp_path):
    size, source = cpu_cache_per_core()
    assert size > 0 and source in ("sysfs", "sysconf", "assumed")
    monkeypatch.setattr(sweeps, "CPU_CACHE_DIR", tmp_path / "no-cache-here")
    monkeypatch.setattr(sweeps.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert cpu_cache_per_core() == (FALLBACK_CACHE_PER_CORE, "assumed")
    folder = tmp_path / "cache"  # a private L2 and an L3 shared by four cores
    for name, (level, kind, size, cpus) in {"index0": ("1", "Data", "32K", "0"), "index2": ("2", "Unified", "1024K", "0"),
                                            "index3": ("3", "Unified", "32768K", "0-3")}.items():
        (folder / name).mkdir(parents=True)
        for field, value in zip(("level", "type", "size", "shared_cpu_list"), (level, kind, size, cpus)):
            (folder / name / field).write_text(value + "\n")
    monkeypatch.setattr(sweeps, "CPU_CACHE_DIR", folder)
    assert cpu_cache_per_core() == ((1 << 20) + (8 << 20), "sysfs")


def test_size_parsing():
    assert sweeps._parse_size("32K\n") == 32 << 10 and sweeps._parse_size("1M") == 1 << 20
    assert sweeps._cpu_count("0-3,8,10-11") == 7


class FakeAccelerator:
    platform, device_kind, process_index = "gpu", "Fake GPU", 0

    def __init__(self, limit):
        self.limit = limit

    def memory_stats(self):
        return {"bytes_limit": self.limit} if self.limit else None


def test_accelerator_group_size_follows_the_memory():
    config = TrainConfig()
    state, activations = member_bytes(config, 784, 10)
    footprint = 3 * state + activations + EVAL_CHUNK * (16 + 16 + 10) * 4
    chosen = auto_group_size(config, 784, 10, [FakeAccelerator(8 << 30)] * 2)
    assert chosen.per_device == power_of_two_floor(MEMORY_FRACTION * (8 << 30) / footprint)
    assert chosen.size == 2 * chosen.per_device and "device memory (memory_stats)" in chosen.reason
    assert "assumed" in auto_group_size(config, 784, 10, [FakeAccelerator(None)]).reason


def test_sweep_uses_the_automatic_size_unless_given(tiny_data, monkeypatch):
    monkeypatch.setattr(sweeps, "auto_group_size", lambda config, inputs, classes, devices: GroupSize(2, 2, 1, "test"))
    grid = dict(hidden=[(4,)], lr=[0.3, 1.0], seed=[0, 1], epochs=1)
    cpu = jax.devices("cpu")[:1]
    assert {r["group_size"] for r in sweep(grid, tiny_data, devices=cpu).records} == {2}
    assert {r["group_size"] for r in sweep(grid, tiny_data, devices=cpu, max_group_size=4).records} == {4}


@pytest.mark.parametrize("flags, expected", [([], "group size 2 for 784-4-10 (2 per device: test); 2 group(s)"),
                                             (["--group-size", "4"], "group size at most 4 (given); 1 group(s)")])
def test_cli_sweep_prints_the_layout_first(flags, expected, tiny_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweeps, "auto_group_size", lambda config, inputs, classes, devices: GroupSize(2, 2, 1, "test"))
    code = cli.main(["sweep", "--hidden", "4", "--lr", "0.3", "1", "--seed", "0", "1", "--epochs", "1",
                     "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "s"), *flags])
    assert code == 0
    lines = capsys.readouterr().err.splitlines()
    layout = [line for line in lines if line.startswith("layout: ")]
    assert len(layout) == 1 and expected + "; the largest group needs about " in layout[0], lines
    assert lines.index(layout[0]) < min(i for i, line in enumerate(lines) if line.startswith("group 1/"))


def test_use_cpu_cores_is_refused_once_jax_has_started():
    jd.sweep(hidden=[(4,)], lr=[1.0], epochs=1, data=DATA)  # JAX has computed something
    devices = jax.device_count()
    assert use_cpu_cores(devices + 1) is False and jax.device_count() == devices
    with pytest.raises(ConfigError, match="JAX has already started"):
        jd.sweep(hidden=[(4,)], lr=[1.0], epochs=1, data=DATA, cpu_devices=devices + 1)


def test_sizes_that_cannot_fit_are_refused_before_anything_allocates(capsys, tiny_data_dir):
    code = cli.main(["train", "--hidden", "1000000", "--batch-size", "200", "--epochs", "1", "--data-dir", str(tiny_data_dir)])
    assert code == 2
    assert "GiB" in one_error_line(capsys.readouterr().err, "jaxdigits train: error: hidden [1000000]")


def test_distributed_without_a_cluster_or_coordinator_is_one_line_and_bounded(tmp_path):
    no_cluster = run_cli("sweep", "--out", str(tmp_path / "a"), "--distributed", "--timeout", "3")
    silent = run_cli("sweep", "--out", str(tmp_path / "b"), "--distributed", "--timeout", "3",
                     "--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "1")
    for process in (no_cluster, silent):
        code = process.wait(timeout=60)
        assert code == 2
        one_error_line(process.stderr.read(), "jaxdigits sweep: error: --distributed:")
