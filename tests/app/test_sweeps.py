"""``sweep`` (``jaxdigits.sweeps``): grid files (typed, fuzzed), every configuration against
training it alone, divergence, grouping, sharding over devices and processes, and exact sweeps
equal to ``train`` bit for bit on the real MNIST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import chex
import jax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxdigits as jd
from jaxdigits.core.config import FIELDS, SweepGrid
from jaxdigits.core.errors import ConfigError
from jaxdigits.sweeps import load_grid
from tests.helpers import DATA, REPO, assert_matches_train, assert_same_numbers, lines


# --- grid files -----------------------------------------------------------------------------------


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


grid_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**66, 2**66), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8), st.sampled_from(["sgd", "relu", "cosine", "mnist", "float32"])),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grid=st.dictionaries(st.sampled_from(list(FIELDS) + ["seeds", "sizes"]), grid_value, max_size=4))
def test_fuzzed_grid_files_give_valid_configs_or_a_config_error(grid, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    try:
        configs = jd.load_grid(path).configs()
    except jd.ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        return
    for config in configs:
        assert isinstance(config, jd.TrainConfig)
        for name, values in grid.items():
            assert not isinstance(getattr(config, name), bool)  # no silent bool -> number coercion


@pytest.mark.parametrize("grid, message", [
    ({"seed": [1.5, 1.9]}, "seed: 1.5 is not an integer"),
    ({"lr": True}, "lr: True is not a number"),
    ({"lr": ["1.5"]}, "lr: '1.5' is not a number"),
    ({"hidden": []}, "sweep axis hidden is empty"),
    ({"seed": [2**32]}, "seed: 4294967296 must be at most"),
    ({"epochs": 1e400}, "epochs: inf is not an integer"),
])
def test_grid_files_are_typed_not_coerced(grid, message, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    with pytest.raises(jd.ConfigError, match=message.replace("(", r"\(")):
        jd.load_grid(path).configs()


def test_a_fifo_as_the_grid_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "grid.toml"
    os.mkfifo(fifo)
    with pytest.raises(jd.ConfigError, match="named pipe"):
        jd.load_grid(fifo)


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


# --- training -------------------------------------------------------------------------------------


def test_every_configuration_matches_training_it_alone():
    result = jd.sweep(hidden=[(12,)], lr=[0.3, 3.0], seed=[0, 1], epochs=4, data=DATA)
    assert result.trained == 4 and result.resumed == 0
    assert [(r["hidden"], r["lr"], r["seed"]) for r in result.records] == [
        ([12], 0.3, 0), ([12], 0.3, 1), ([12], 3.0, 0), ([12], 3.0, 1)]
    for record in result.records:
        assert_matches_train(record)
    assert max(r["test_accuracy"] for r in result.records) > 0.3  # it learns (chance is 0.1)


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


def test_python_sweeps_use_every_cpu_core_by_default():
    code = textwrap.dedent("""
        import jaxdigits as jd
        from tests.conftest import synthetic_dataset
        result = jd.sweep(data=synthetic_dataset(40, 10), lr=[0.3, 1.0, 3.0], epochs=1, cpu_devices=3)
        print(result.records[0]["devices"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "3", out.stderr[-2000:]


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


# --- exact sweeps: a configuration's result does not depend on the device count or its group,
# checked on the real MNIST: a full epoch at lr 3, where SGD amplifies any last-bit difference


RATES = [1.0, 2.0, 3.0, 4.0]


SCRIPT = textwrap.dedent("""
    import json, sys
    import jaxdigits as jd
    devices, data_dir, rates = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    jd.use_cpu_cores(devices)
    data = jd.load_mnist(data_dir)
    out = {}
    for group_size in ((1, 3, None) if devices == 1 else (None,)):
        result = jd.sweep(data=data, lr=rates, epochs=1, exact=True, max_group_size=group_size)
        out[str(group_size)] = [[r["train_cost"], r["test_accuracy"], r["devices"]] for r in result.records]
    if devices == 1:
        out["train"] = [[jd.train(jd.TrainConfig(lr=lr, epochs=1), data).record[k] for k in ("train_cost", "test_accuracy")]
                        for lr in rates]
    print(json.dumps(out))
""")


def run_on(devices: int, data_dir) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(devices), str(data_dir), json.dumps(RATES)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results(mnist_dir):
    return {devices: run_on(devices, mnist_dir) for devices in (1, 2, 4)}


def test_exact_sweeps_equal_train_bit_for_bit_on_1_2_and_4_devices_and_in_groups_of_1_3_and_all(results):
    expected = results[1]["train"]
    runs = [(1, "1"), (1, "3"), (1, "None"), (2, "None"), (4, "None")]
    for devices, group_size in runs:
        got = [[cost, accuracy] for cost, accuracy, _ in results[devices][group_size]]
        assert got == expected, (devices, group_size)
        assert {used for _, _, used in results[devices][group_size]} == {devices}


def test_the_epoch_at_lr_3_is_sensitive_enough_to_show_a_difference(results):
    # The four rates end at different costs: equality above is not a coincidence of a flat run.
    costs = [cost for cost, _ in results[1]["train"]]
    assert len(set(costs)) == len(RATES)


def test_seeds_beyond_int32_sweep_as_they_train():
    seed = 3_000_000_000
    record = jd.sweep(data=DATA, hidden=[(8,)], lr=[1.0], seed=[seed], epochs=1).records[0]
    alone = jd.train(jd.TrainConfig(hidden=(8,), lr=1.0, seed=seed, epochs=1), DATA)
    assert record["seed"] == seed and record["train_cost"] == alone.record["train_cost"]


def test_a_deeply_nested_grid_file_is_one_line(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="not a valid grid file"):
        load_grid(path)


def test_a_64_input_4_class_dataset_is_labelled_by_its_own_sizes(capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 120).astype(np.int32)
    images = (rng.uniform(0, 0.2, (120, 64)) + np.repeat(np.eye(4), 16, axis=1)[labels] * 0.8).astype(np.float32)
    data = jd.Dataset(images[:100], labels[:100], images[100:], labels[100:], name="blocks")
    result = jd.sweep(data=data, hidden=[(8,)], lr=[0.5, 1.0], epochs=1, progress=True)
    printed = capsys.readouterr().err
    assert {tuple(r["sizes"]) for r in result.records} == {(64, 8, 4)}
    assert "group size" in printed and "64-8-4" in printed and "784" not in printed


def test_an_exact_sweep_over_several_seeds_gives_each_member_its_own_seeds_numbers():
    import numpy as np

    result = jd.sweep(data=DATA, hidden=[(8,)], lr=[0.3, 1.0], seed=[0, 5], epochs=2, exact=True)
    for record in result.records:
        alone = jd.train(jd.TrainConfig(hidden=(8,), lr=record["lr"], seed=record["seed"], epochs=2), DATA)
        assert record["train_cost_curve"] == alone.record["train_cost_curve"]
        assert record["test_accuracy_curve"] == alone.record["test_accuracy_curve"]
    curves = {r["seed"]: r["train_cost_curve"] for r in result.records if r["lr"] == 1.0}
    assert not np.array_equal(curves[0], curves[5])


def test_a_sweep_keeps_its_best_network_or_all_of_them_as_run_folders(tmp_path):
    import numpy as np

    grid = dict(hidden=[(8,)], lr=[0.3, 3.0], seed=[0, 1], epochs=2, validation=50)
    best = jd.sweep(data=DATA, out_dir=tmp_path / "best", keep="best", **grid)
    chosen = max((r for r in best.records if r["status"] == "ok"), key=lambda r: r["selected_validation_accuracy"])
    assert list(best.networks) == [chosen["id"]]
    alone = jd.train(jd.TrainConfig(hidden=(8,), lr=chosen["lr"], seed=chosen["seed"], epochs=2, validation=50), DATA)
    assert jd.evaluate(best.networks[chosen["id"]], DATA.test_images, DATA.test_labels) == chosen["test_accuracy"]
    saved, info = jd.load_params(tmp_path / "best" / "networks" / chosen["id"])
    np.testing.assert_array_equal(saved[0]["w"], best.networks[chosen["id"]][0]["w"])
    assert info["record"]["id"] == chosen["id"] and alone.record["train_cost"] == pytest.approx(chosen["train_cost"], rel=1e-4)
    every = jd.sweep(data=DATA, keep="all", **grid)
    assert sorted(every.networks) == sorted(r["id"] for r in every.records)
    with pytest.raises(ConfigError, match="keep 'some' is not one of"):
        jd.sweep(data=DATA, keep="some", **grid)


def test_a_sweep_over_l2_dropout_momentum_and_rotation_is_one_program_whose_members_equal_train():
    grid = dict(hidden=[(8,)], optimizer=["momentum"], lr=[0.3], l2=[1e-4, 3e-2], dropout=[0.1, 0.5], momentum=[0.5, 0.9],
                augment=["affine"], rotation=[0.0, 20.0], epochs=2)
    result = jd.sweep(data=DATA, exact=True, **grid)
    assert len(result.records) == 16 and {r["group_size"] for r in result.records} == {16}
    curves = set()
    for record in result.records[::5]:
        config = jd.TrainConfig(**{k: record[k] for k in ("optimizer", "lr", "l2", "dropout", "momentum", "augment",
                                                         "rotation", "epochs")}, hidden=(8,))
        alone = jd.train(config, DATA)
        assert record["train_cost_curve"] == alone.record["train_cost_curve"]
        assert record["test_accuracy_curve"] == alone.record["test_accuracy_curve"]
        curves.add(tuple(record["train_cost_curve"]))
    assert len(curves) == 4  # each member trained with its own numbers, not the program's stand-ins


@pytest.mark.parametrize("grid", [
    dict(augment=["elastic"], elastic_alpha=[8.0, 4.0], elastic_sigma=[1.5, 3.0]),
    dict(dropout=[0.2, 0.4], optimizer=["adam"], lr=[1e-2, 3e-2]),
], ids=["elastic", "dropout"])
def test_an_exact_sweep_spread_over_devices_gives_each_member_the_numbers_of_train(grid):
    # Rows spread over the devices: the elastic field's Gaussian weights and dropout's scaling
    # must be the same bits on each device as in a run alone (they once were not, by 2e-7: XLA
    # divided their arrays through a rounded reciprocal in one program and not the other).
    grid = {"hidden": [(8,)], "lr": [1.0], "seed": [0, 1], "batch_size": [20], "epochs": 1, **grid}
    result = jd.sweep(data=DATA, exact=True, keep="all", **grid)
    assert len(result.records) == 8
    for record in result.records:
        config = jd.TrainConfig(**{k: record[k] for k in grid if k != "hidden"}, hidden=(8,))
        alone = jd.train(config, DATA)
        chex.assert_trees_all_equal(result.networks[record["id"]], alone.params)


def test_an_optax_factory_that_needs_its_rate_as_a_number_trains_in_train_and_sweep():
    import optax

    warm = lambda lr: optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, 5, 50))  # noqa: E731
    result = jd.sweep(data=DATA, hidden=[(8,)], optimizer=[warm], lr=[1e-2, 3e-2], cost=["cross_entropy"], epochs=2)
    assert {r["group_size"] for r in result.records} == {1}  # one program per rate
    for record in result.records:
        alone = jd.train(jd.TrainConfig(hidden=(8,), optimizer=warm, lr=record["lr"], cost="cross_entropy", epochs=2), DATA)
        assert alone.record["train_cost"] == pytest.approx(record["train_cost"], rel=1e-6)
    assert len({r["train_cost"] for r in result.records}) == 2


def scaled_cost(scale: float) -> jd.Cost:
    """A user's cost whose formula depends on a value it closes over."""
    return jd.Cost("scaled", lambda z, labels: scale * jd.CrossEntropyCost.per_example(z, labels), "softmax")


def test_user_pieces_are_known_by_their_code_not_only_their_name(tmp_path):
    with pytest.raises(ConfigError, match="both named 'scaled'"):
        jd.sweep(data=DATA, cost=[scaled_cost(1.0), scaled_cost(2.0)], epochs=1)
    with pytest.raises(ConfigError, match="both named '<lambda>'"):
        jd.SweepGrid(optimizer=[lambda lr: __import__("optax").sgd(lr), lambda lr: __import__("optax").adam(lr)])
    grid = dict(hidden=[(8,)], lr=[0.3], epochs=1, out_dir=tmp_path)
    first = jd.sweep(data=DATA, cost=scaled_cost(1.0), **grid)
    again = jd.sweep(data=DATA, cost=scaled_cost(1.0), **grid)  # the same definition, made anew
    assert (first.trained, again.trained) == (1, 0)
    with pytest.raises(jd.RunFolderError, match="holds a different sweep"):  # the same name, another formula
        jd.sweep(data=DATA, cost=scaled_cost(5.0), **grid)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell one device from several")
def test_a_sweep_after_jax_started_says_once_why_it_runs_on_one_device():
    code = textwrap.dedent("""
        import warnings, jax, jax.numpy as jnp, jaxdigits as jd
        from tests.conftest import synthetic_dataset
        data = synthetic_dataset(40, 10)
        %s
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jd.sweep(data=data, hidden=[(4,)], lr=[0.1, 1.0], epochs=1)
            jd.sweep(data=data, hidden=[(4,)], lr=[0.1, 1.0], epochs=1)
        said = [str(w.message) for w in caught if issubclass(w.category, jd.DeviceWarning)]
        print(jax.device_count(), len(said), said[0] if said else "")
    """)
    touched = subprocess.run([sys.executable, "-c", code % "jnp.zeros(1).block_until_ready()"], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "XLA_FLAGS": ""})
    fresh = subprocess.run([sys.executable, "-c", code % "pass"], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "XLA_FLAGS": ""})
    count, times, line = touched.stdout.split(" ", 2)
    assert (count, times) == ("1", "1") and "call jd.use_cpu_cores() before any JAX computation" in line, touched.stderr[-800:]
    assert fresh.stdout.split(" ", 2)[:2] == [str(len(os.sched_getaffinity(0))), "0"], fresh.stderr[-800:]
