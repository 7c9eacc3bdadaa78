"""Sweeps: every configuration against single-run training, sharding, divergence, resume, CLI."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits.core.config import SweepGrid
from jaxdigits.sweeps import load_grid
from jaxdigits.core.errors import ConfigError, RunFolderError
from jaxdigits.records import record_config
from jaxdigits.sweep_folder import RESULTS_FILE, SWEEP_FILE, ResultsWarning, read_results
from jaxdigits.core.group import group_configs, plan_layout
from jaxdigits.devices import use_cpu_cores
from tests.conftest import synthetic_dataset

sweep_module = importlib.import_module("jaxdigits.sweeps")
from jaxdigits.devices import config_mesh  # noqa: E402
from jaxdigits.driver import put_data, run_group  # noqa: E402
REPO = Path(__file__).resolve().parents[1]

# Small, fast and learnable: 100 training images (10 steps per epoch at batch 10).
DATA = synthetic_dataset(100, 40)


def assert_matches_train(record: dict, data=DATA) -> None:
    """The record's numbers are those of training its config alone with ``train``."""
    single = jd.train(record_config(record), data)
    finished = [h for h in single.history if not h.get("diverged")]
    assert record["status"] == single.status and record["diverged_epoch"] == single.record["diverged_epoch"]
    assert record["epochs_completed"] == len(finished)
    np.testing.assert_allclose(record["train_cost_curve"], [h["train_cost"] for h in finished], rtol=2e-5)
    np.testing.assert_allclose(record["test_accuracy_curve"], [h["test_accuracy"] for h in finished], atol=1e-6)
    if finished:
        np.testing.assert_allclose(record["train_accuracy"], finished[-1]["train_accuracy"], atol=1e-6)
        np.testing.assert_allclose(record["test_accuracy"], finished[-1]["test_accuracy"], atol=1e-6)
        assert record["best_test_accuracy"] == max(record["test_accuracy_curve"])
    else:
        assert record["test_accuracy"] is None and record["train_accuracy"] is None


def numbers(records):
    """The per-configuration numbers of records, keyed by id (timings left out)."""
    keys = ("train_cost_curve", "test_accuracy_curve", "train_accuracy", "status", "epochs_completed")
    return {r["id"]: {k: r[k] for k in keys} for r in records}


def assert_same_numbers(a, b):
    a, b = numbers(a), numbers(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["status"] == b[key]["status"] and a[key]["epochs_completed"] == b[key]["epochs_completed"]
        np.testing.assert_allclose(a[key]["train_cost_curve"], b[key]["train_cost_curve"], rtol=2e-5)
        np.testing.assert_allclose(a[key]["test_accuracy_curve"], b[key]["test_accuracy_curve"], atol=1e-6)
        np.testing.assert_allclose(a[key]["train_accuracy"], b[key]["train_accuracy"], atol=1e-6)


# --- the grid ---------------------------------------------------------------------------------


def test_grid_expands_every_combination_in_order():
    grid = SweepGrid(hidden=[(16, 16), (32,), ()], lr=[0.3, 3], seed=[0, 1], activation=["sigmoid", "relu"], epochs=5)
    configs = grid.configs()
    assert len(configs) == 3 * 2 * 2 * 2
    assert configs[0] == jd.TrainConfig(hidden=(16, 16), lr=0.3, seed=0, epochs=5)
    # Axes vary in the order of the config's fields, the last (seed) fastest.
    assert configs[1].seed == 1 and configs[2].lr == 3.0 and configs[4].activation == "relu"
    assert {c.hidden for c in configs} == {(16, 16), (32,), ()}
    assert len(SweepGrid(lr=[1, 1.0], seed=[0, 0]).configs()) == 1  # duplicates collapse
    assert SweepGrid(hidden=[(16, 16)]).values("hidden") == SweepGrid().values("hidden") == ((16, 16),)
    with pytest.raises(ConfigError, match="ambiguous"):  # one shape of two layers, or two shapes?
        SweepGrid(hidden=[16, 16])


def test_grid_files_toml_and_json(tmp_path):
    toml = tmp_path / "grid.toml"
    toml.write_text('hidden = [[16, 16], [32]]\nlr = [0.3, 1.0]\nseed = [0, 1]\nepochs = 5\noptimizer = "momentum"\n')
    grid = load_grid(toml)
    assert grid.values("hidden") == ((16, 16), (32,)) and grid.values("lr") == (0.3, 1.0) and grid.values("epochs") == (5,)
    assert grid.values("optimizer") == ("momentum",) and grid.values("seed") == (0, 1)
    as_json = tmp_path / "grid.json"
    as_json.write_text(json.dumps(grid.to_dict()))
    assert load_grid(as_json) == grid
    (tmp_path / "bad.toml").write_text("lr = [0.3\n")
    with pytest.raises(ConfigError, match="not a valid grid file"):
        load_grid(tmp_path / "bad.toml")
    (tmp_path / "unknown.json").write_text('{"learning_rate": [1]}')
    with pytest.raises(ConfigError, match="unknown sweep axes"):
        load_grid(tmp_path / "unknown.json")


@pytest.mark.parametrize(
    "axes, message",
    [
        ({"lr": [0.3, -1]}, "lr: -1.0 must be > 0"),
        ({"hidden": ["16,x"]}, "hidden: '16,x' is not a list of widths"),
        ({"seed": []}, "sweep axis seed is empty"),
        ({"activation": ["swish"]}, "activation: 'swish' is not one of"),
        ({"hidden": [(16, 0)]}, "hidden: 0 must be >= 1"),
    ],
)
def test_bad_grids_are_config_errors(axes, message):
    with pytest.raises(ConfigError, match=message):
        jd.sweep(data=DATA, **axes)


def test_groups_share_a_program_and_layouts_never_drop_a_config():
    configs = SweepGrid(hidden=[(8,), (4, 4)], lr=[0.1, 1, 3], seed=[0, 1], optimizer=["sgd", "adam"]).configs()
    groups = group_configs(configs)
    assert len(groups) == 4 and all(len(g) == 6 for g in groups)
    assert all(len({(c.hidden, c.optimizer) for c in g}) == 1 for g in groups)
    assert sorted(map(str, (c for g in groups for c in g))) == sorted(map(str, configs))
    assert [len(g) for g in group_configs(configs, max_group_size=4)] == [4, 2] * 4
    for members, devices in [(groups[0], 1), (groups[0], 4), (groups[0][:5], 4), (groups[0][:3], 8)]:
        layout = plan_layout(members, devices)
        assert layout.index.shape[layout.shard_axis] % devices == 0
        assert sorted(layout.index[layout.index >= 0].tolist()) == list(range(len(members)))
        for (r, c), i in np.ndenumerate(layout.index):
            if i >= 0:
                assert layout.seeds[r] == members[i].seed
                assert layout.learning_rates[r, c] == np.float32(members[i].lr)
    # 2 seeds x 3 rates on 4 devices: padding the rates (2 x 4) beats padding the seeds (4 x 3).
    assert plan_layout(groups[0], 4).index.shape == (2, 4) and plan_layout(groups[0], 4).shard_axis == 1


# --- training ---------------------------------------------------------------------------------


def test_every_configuration_matches_training_it_alone():
    result = jd.sweep(hidden=[(12,)], lr=[0.3, 3.0], seed=[0, 1], epochs=4, data=DATA)
    assert result.trained == 4 and result.resumed == 0
    assert [(r["hidden"], r["lr"], r["seed"]) for r in result.records] == [
        ([12], 0.3, 0), ([12], 0.3, 1), ([12], 3.0, 0), ([12], 3.0, 1)]
    for record in result.records:
        assert_matches_train(record)
    assert max(r["test_accuracy"] for r in result.records) > 0.3  # it learns (chance is 0.1)


def test_optimizer_state_and_uneven_blocks_match_training_alone():
    # adam keeps per-parameter state; 2 rates for one seed and 1 for another make an uneven
    # rectangle with a filler cell.
    configs = SweepGrid(hidden=[(8,)], lr=[0.01, 0.1], seed=[3], optimizer="adam", epochs=2, dataset=DATA.name).configs()
    configs += SweepGrid(hidden=[(8,)], lr=[0.03], seed=[4], optimizer="adam", epochs=2, dataset=DATA.name).configs()
    mesh = config_mesh()
    (group,) = group_configs(configs)
    assert (plan_layout(group).index == [[0, 1], [2, -1]]).all()
    for result in run_group(group, put_data(DATA, mesh), mesh=mesh, every_epoch=("test",)):
        assert_matches_train(result.record)


def test_a_diverging_configuration_is_marked_and_the_others_go_on():
    # With l2 = 4 a step multiplies the weights by (1 - 4 lr): lr 1 makes them grow 3x per step
    # until the cost overflows in epoch 4; lr 0.1 shrinks them and trains normally.
    result = jd.sweep(hidden=[(8,)], lr=[0.1, 1.0], seed=[0, 1], epochs=6, l2=4.0, data=DATA)
    by_rate = {(r["lr"], r["seed"]): r for r in result.records}
    for seed in (0, 1):
        bad, good = by_rate[(1.0, seed)], by_rate[(0.1, seed)]
        assert bad["status"] == "diverged" and bad["diverged_epoch"] == 4 and bad["epochs_completed"] == 3
        assert bad["test_accuracy"] == bad["test_accuracy_curve"][-1]  # from the last finite epoch
        assert good["status"] != "diverged" and good["diverged_epoch"] is None and good["epochs_completed"] == 6
    assert_matches_train(by_rate[(1.0, 0)])
    assert_matches_train(by_rate[(0.1, 0)])
    # Diverging in the very first epoch leaves no finite epoch: the accuracies are null.
    # (lr 1e20 with l2 4 multiplies the weights by -4e20 in one step: they overflow at once.)
    first = jd.sweep(hidden=[(8,)], lr=[1e20, 0.1], seed=[0], epochs=2, l2=4.0, data=DATA).records[0]
    assert first["status"] == "diverged" and first["diverged_epoch"] == 1 and first["test_accuracy"] is None
    assert first["train_cost_curve"] == [] and first["train_accuracy"] is None and first["train_cost"] is None


def test_results_do_not_depend_on_how_configurations_are_grouped():
    grid = SweepGrid(hidden=[(8,)], lr=[0.3, 1.0, 3.0], seed=[0, 1], epochs=3)
    together = jd.sweep(grid, DATA).records
    one_by_one = jd.sweep(grid, DATA, max_group_size=1).records
    in_pairs = jd.sweep(grid, DATA, max_group_size=4).records
    assert {r["group_size"] for r in together} == {6} and {r["group_size"] for r in one_by_one} == {1}
    assert_same_numbers(together, one_by_one)
    assert_same_numbers(together, in_pairs)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import jaxdigits as jd
    from tests.conftest import synthetic_dataset
    assert len(jax.devices()) == 4, jax.devices()
    data = synthetic_dataset(100, 40)
    # 3 rates x 2 seeds: the rate axis is padded from 3 to 4; 1 rate x 3 seeds: the seeds 3 to 4.
    records = jd.sweep(hidden=[(8,)], lr=[0.3, 1.0, 3.0], seed=[0, 1], epochs=3, data=data).records
    records += jd.sweep(hidden=[(4, 4)], lr=[1.0], seed=[0, 1, 2], epochs=3, data=data).records
    json.dump(records, open(sys.argv[1], "w"))
    """
)


def test_sharded_over_four_devices_equals_one_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    out = tmp_path / "sharded.json"
    done = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads(out.read_text())
    # The 6-member group pads to 8 over 4 devices; the 3-member group takes 3 devices (no filler).
    assert sorted(r["devices"] for r in sharded) == [3] * 3 + [4] * 6 and len(sharded) == 9  # nothing dropped
    one = jax.devices()[:1]
    unsharded = jd.sweep(hidden=[(8,)], lr=[0.3, 1.0, 3.0], seed=[0, 1], epochs=3, data=DATA, devices=one).records
    unsharded += jd.sweep(hidden=[(4, 4)], lr=[1.0], seed=[0, 1, 2], epochs=3, data=DATA, devices=one).records
    assert {r["devices"] for r in unsharded} == {1}
    assert_same_numbers(sharded, unsharded)


def test_distributed_two_processes_equal_one_and_only_process_0_writes(tiny_data_dir, tmp_path):
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "sweep"
    flags = ["--hidden", "8", "--lr", "0.3", "1", "3", "--seed", "0", "--epochs", "2", "--cpu-devices", "1",
             "--data-dir", str(tiny_data_dir), "--out", str(out)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    processes = [
        subprocess.Popen([sys.executable, "-m", "jaxdigits", "sweep", "--distributed", "--coordinator",
                          f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), *flags],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "3 configurations (3 trained now" in outputs[0][0] and "configurations" not in outputs[1][0]
    records = lines(out)
    assert {r["devices"] for r in records} == {2} and len(records) == 3
    data = jd.load_mnist(tiny_data_dir)  # the IDX files hold the images rounded to bytes
    assert_same_numbers(records, jd.sweep(hidden=[(8,)], lr=[0.3, 1.0, 3.0], seed=[0], epochs=2, data=data).records)


def test_use_cpu_cores_is_refused_once_jax_has_started():
    jd.sweep(hidden=[(4,)], lr=[1.0], epochs=1, data=DATA)  # JAX has computed something
    devices = jax.device_count()
    assert use_cpu_cores(devices + 1) is False and jax.device_count() == devices
    with pytest.raises(ConfigError, match="JAX has already started"):
        jd.sweep(hidden=[(4,)], lr=[1.0], epochs=1, data=DATA, cpu_devices=devices + 1)


def test_sweep_on_the_real_mnist_learns_and_matches_training_alone(mnist):
    result = jd.sweep(hidden=[(16,)], lr=[0.3, 3.0], seed=[0], epochs=1, data=mnist)
    best = max(result.records, key=lambda r: r["test_accuracy"])
    assert best["lr"] == 3.0 and best["test_accuracy"] > 0.9
    # Over 500 steps of real images the numbers equal training alone's. (Over many thousands of
    # steps at rate 3, SGD amplifies the last-bit rounding differences between a vmapped and a
    # single matrix product until the two runs are as different as two close seeds.)
    small = jd.Dataset(mnist.train_images[:5000], mnist.train_labels[:5000], mnist.test_images, mnist.test_labels)
    for record in jd.sweep(hidden=[(16,)], lr=[0.3, 3.0], seed=[0], epochs=1, data=small).records:
        assert_matches_train(record, small)


# --- the results folder -----------------------------------------------------------------------


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / RESULTS_FILE).read_text().splitlines()]


def test_resume_skips_finished_configurations_and_a_grown_grid_trains_only_the_new(tmp_path):
    out = tmp_path / "sweep"
    grid = SweepGrid(hidden=[(8,), (4,)], lr=[0.3, 3.0], seed=[0], epochs=2)
    first = jd.sweep(grid, DATA, out_dir=out)
    assert first.trained == 4 and len(lines(out)) == 4
    saved = lines(out)
    assert {"hidden", "lr", "seed", "test_accuracy", "best_test_accuracy", "train_accuracy", "train_cost_curve",
            "status", "diverged_epoch", "seconds"} <= set(saved[0])
    again = jd.sweep(grid, DATA, out_dir=out)
    assert again.trained == 0 and again.resumed == 4 and again.records == first.records
    grown = jd.sweep(grid.replace(seed=[0, 1], lr=[0.3, 1.0, 3.0]), DATA, out_dir=out)
    assert grown.trained == 12 - 4 and grown.resumed == 4 and len(lines(out)) == 12
    assert len({r["id"] for r in lines(out)}) == 12
    assert json.loads((out / SWEEP_FILE).read_text())["grid"]["seed"] == [0, 1]


def test_a_half_written_last_line_is_warned_about_and_retrained(tmp_path):
    out = tmp_path / "sweep"
    grid = SweepGrid(hidden=[(8,)], lr=[0.3, 3.0], seed=[0], epochs=2)
    complete = jd.sweep(grid, DATA, out_dir=out)
    text = (out / RESULTS_FILE).read_text()
    (out / RESULTS_FILE).write_text(text[: len(text) - 40])  # killed in the middle of the last line
    assert len(read_results(out / RESULTS_FILE)[0]) == 1 and "half-written" in read_results(out / RESULTS_FILE)[1][0]
    with pytest.warns(ResultsWarning, match="half-written"):
        resumed = jd.sweep(grid, DATA, out_dir=out)
    assert resumed.trained == 1 and resumed.resumed == 1
    assert_same_numbers(resumed.records, complete.records)
    assert len(lines(out)) == 2  # the file is whole JSON lines again


def test_out_folders_of_another_kind_are_refused(tmp_path):
    grid = SweepGrid(hidden=[(4,)], lr=[1.0], seed=[0], epochs=1)
    run = tmp_path / "run"
    jd.train(jd.TrainConfig(hidden=(4,), epochs=1), DATA, out_dir=run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunFolderError, match="holds a training run"):
        jd.sweep(grid, DATA, out_dir=run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # left untouched, lock included
    # A folder of unrelated files takes the sweep beside them, and they are left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    jd.sweep(grid, DATA, out_dir=other)
    assert (other / "notes.txt").read_text() == "mine" and len(lines(other)) == 1
    assert sorted(p.name for p in other.iterdir()) == sorted(["notes.txt", RESULTS_FILE, SWEEP_FILE])
    out = tmp_path / "sweep"
    jd.sweep(grid, DATA, out_dir=out)
    with pytest.raises(RunFolderError, match="holds a different sweep"):
        jd.sweep(grid.replace(lr=[2.0]), DATA, out_dir=out)
    with pytest.raises(RunFolderError, match="trained on other data"):
        jd.sweep(grid, synthetic_dataset(100, 40, seed=1), out_dir=out)
    restarted = jd.sweep(grid.replace(lr=[2.0]), DATA, out_dir=out, overwrite=True)
    assert restarted.trained == 1 and [r["lr"] for r in lines(out)] == [2.0]
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="must be a folder"):
        jd.sweep(grid, DATA, out_dir=tmp_path / "file")


# --- the command line -------------------------------------------------------------------------


def test_cli_sweep_prints_a_sorted_table_and_resumes(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    flags = ["sweep", "--hidden", "8", "4,4", "--lr", "0.3", "3", "--seed", "0", "1", "--epochs", "2",
             "--data-dir", str(tiny_data_dir), "--out", str(out)]
    assert cli.main(flags) == 0
    printed = capsys.readouterr().out.splitlines()
    table = [line.split() for line in printed[1:9]]
    assert printed[0].split()[:4] == ["#", "hidden", "lr", "seed"] and len(table) == 8
    accuracies = [float(row[4]) for row in table]
    assert accuracies == sorted(accuracies, reverse=True)
    assert "8 configurations (8 trained now, 0 from before)" in printed[-1]
    records = lines(out)
    assert sorted((r["hidden"], r["lr"], r["seed"]) for r in records) == sorted(
        (h, lr, s) for h in ([8], [4, 4]) for lr in (0.3, 3.0) for s in (0, 1))
    assert f"{100 * max(r['test_accuracy'] for r in records):.2f}%" in printed[-1]
    # Without axis flags the sweep in --out is resumed; --seed 0 1 2 grows it.
    assert cli.main(["sweep", "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 0
    assert "(0 trained now, 8 from before)" in capsys.readouterr().out
    assert cli.main(["sweep", "--seed", "0", "1", "2", "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 0
    assert "12 configurations (4 trained now, 8 from before)" in capsys.readouterr().out


def test_cli_sweep_reads_a_grid_file_and_flags_override_it(tiny_data_dir, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('hidden = [[8]]\nlr = [0.3, 1.0, 3.0]\nepochs = 1\nactivation = ["sigmoid", "tanh"]\n')
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--grid", str(grid), "--lr", "1", "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 0
    assert sorted((r["lr"], r["activation"]) for r in lines(out)) == [(1.0, "sigmoid"), (1.0, "tanh")]
    assert "activation" in capsys.readouterr().out.splitlines()[0]  # a varying axis gets a column


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "0"], "argument --lr: 0.0 must be > 0"),
        (["--hidden", "16,0"], "argument --hidden: 0 must be >= 1"),
        (["--coordinator", "localhost:1234"], "need --distributed"),
        (["--group-size", "0"], "argument --group-size: 0 must be between 1 and"),
    ],
)
def test_cli_sweep_bad_flags_exit_2_with_one_line(flags, message, tiny_data_dir, tmp_path, capsys):
    try:
        code = cli.main(["sweep", *flags, "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "s")])
    except SystemExit as exc:  # a value refused while parsing flags
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # one error line (argparse shows its usage lines above a flag it refuses)
    *usage, error = err.strip("\n").splitlines()
    assert error.startswith("jaxdigits sweep: error: ") and message in error
    assert all(line.startswith(("usage:", " ")) for line in usage)
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_ctrl_c_keeps_finished_groups_prints_how_to_resume_and_exits_130(tiny_data_dir, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "jaxdigits", "sweep", "--hidden", "8", "7", "6", "5", "4", "--lr", "1",
               "--epochs", "3", "--data-dir", str(tiny_data_dir), "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / RESULTS_FILE).exists() and (out / RESULTS_FILE).read_text()) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    message = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(message) == 1 and "resume with `jaxdigits sweep --out" in message[0]
    kept = lines(out)
    assert 1 <= len(kept) < 5 and f"{len(kept)} of 5 configurations are saved" in message[0]
    resume = message[0].split("`")[1].split()[1:]  # the printed command, without the program name
    done = subprocess.run([sys.executable, "-m", "jaxdigits", *resume], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"5 configurations ({5 - len(kept)} trained now, {len(kept)} from before)" in done.stdout
    assert len(lines(out)) == 5


def test_a_hard_kill_loses_only_the_unfinished_group(tiny_data_dir, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "jaxdigits", "sweep", "--hidden", "8", "7", "6", "5", "4", "--lr", "1",
               "--epochs", "3", "--data-dir", str(tiny_data_dir), "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ((out / RESULTS_FILE).exists() and (out / RESULTS_FILE).read_text()) and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.05)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
    process.wait(timeout=60)
    kept, _ = read_results(out / RESULTS_FILE)
    assert 1 <= len(kept) < 5
    done = subprocess.run([sys.executable, "-m", "jaxdigits", "sweep", "--data-dir", str(tiny_data_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"5 configurations ({5 - len(kept)} trained now, {len(kept)} from before)" in done.stdout
    assert sorted(r["hidden"][0] for r in lines(out)) == [4, 5, 6, 7, 8]
