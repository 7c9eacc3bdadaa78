"""The open API: networks that know how they compute, checked inputs, one schema, programs keyed
by what they compute, float64 end to end, stalled runs named."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits.core import programs
from tests.conftest import synthetic_dataset


def test_a_relu_cross_entropy_network_evaluates_with_its_own_functions(tmp_path):
    data = synthetic_dataset(300, 100)
    config = jd.TrainConfig(hidden=(32,), activation="relu", cost="cross_entropy", lr=0.1, epochs=3)
    result = jd.train(config, data, out_dir=tmp_path / "run")
    network = result.params
    assert (network.activation, network.output) == ("relu", "softmax")
    # By hand: relu hidden layer, softmax output.
    w1, b1, w2, b2 = network[0]["w"], network[0]["b"], network[1]["w"], network[1]["b"]
    z = np.maximum(data.test_images @ w1 + b1, 0) @ w2 + b2
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    digits, activations = jd.predict(network, data.test_images)
    np.testing.assert_allclose(activations, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jd.accuracy(network, data.test_images, data.test_labels),
                               np.mean(z.argmax(1) == data.test_labels), atol=1e-7)
    loaded, info = jd.load_params(tmp_path / "run")
    assert (loaded.activation, loaded.output, loaded.sizes) == ("relu", "softmax", (784, 32, 10))
    chex.assert_trees_all_equal(loaded, network)
    assert info["config"]["activation"] == "relu"


def test_the_network_is_a_pytree_jax_and_optax_take_as_it_is():
    network = jd.init_mlp(jax.random.PRNGKey(0), (784, 8, 10), activation="tanh")
    doubled = jax.tree.map(lambda x: 2 * x, network)
    assert isinstance(doubled, jd.Network) and doubled.activation == "tanh"
    assert len(jax.tree.leaves(network)) == 4
    data = synthetic_dataset(20, 5)
    grads = jax.grad(jd.quadratic_cost)(network, data.train_images, data.train_labels)
    assert isinstance(grads, jd.Network) and jax.tree.structure(grads) == jax.tree.structure(network)
    import optax

    optimizer = optax.adam(1e-3)
    updates, _ = optimizer.update(grads, optimizer.init(network), network)
    assert isinstance(optax.apply_updates(network, updates), jd.Network)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((5, 784), np.float32), np.zeros((5, 1), np.int32), r"labels have shape \(5, 1\), expected \(5,\)"),
        (np.zeros((5, 784), np.float32), np.eye(10, dtype=np.int32)[:5], "one-hot"),
        (np.zeros((5, 784), np.uint8), np.zeros(5, np.int32), "uint8, expected floats"),
        (np.zeros((5, 28, 28), np.float32), np.zeros(5, np.int32), "flatten"),
        (np.zeros((5, 100), np.float32), np.zeros(5, np.int32), r"expected \(N, 784\)"),
        (np.zeros((5, 784), np.float32), np.full(5, 10, np.int32), "outside 0..9"),
        (np.zeros((5, 784), np.float32), np.zeros(5, np.float32), "expected integer classes"),
    ],
)
def test_bad_inputs_get_one_clear_error_from_every_public_function(images, labels, message):
    network = jd.init_mlp(jax.random.PRNGKey(0))
    for fn in (jd.accuracy, jd.quadratic_cost, jd.cross_entropy_cost, jd.evaluate):
        with pytest.raises(jd.InputError, match=message):
            fn(network, images, labels)


def test_user_datasets_are_checked_when_made():
    images, labels = np.zeros((4, 9), np.float32), np.zeros(4, np.int32)
    with pytest.raises(jd.DataError, match="expected floats"):
        jd.Dataset(images.astype(np.uint8), labels, images, labels)
    with pytest.raises(jd.DataError, match=r"expected \(4,\)"):
        jd.Dataset(images, labels[:, None], images, labels)
    with pytest.raises(jd.DataError, match="same input size"):
        jd.Dataset(images, labels, images[:, :5], labels)
    with pytest.raises(jd.DataError, match="labels must lie in 0..2"):
        jd.Dataset(images, labels, images, labels + 3, num_classes=3)


def test_a_redefined_cost_under_the_same_name_gets_a_new_program():
    data = synthetic_dataset(100, 20)

    def make_cost(scale):
        def per_example(z, labels):
            return scale * jnp.sum((jax.nn.sigmoid(z) - jax.nn.one_hot(labels, z.shape[-1])) ** 2, axis=-1)

        return jd.Cost("mine", per_example, output="sigmoid")

    config = jd.TrainConfig(epochs=1, lr=1.0)
    first = jd.train(config.replace(cost=make_cost(0.5)), data)
    second = jd.train(config.replace(cost=make_cost(5.0)), data)
    assert first.history[0]["train_cost"] != second.history[0]["train_cost"]
    assert not np.array_equal(first.params[0]["w"], second.params[0]["w"])
    # The built-in quadratic cost is exactly make_cost(0.5): same numbers.
    np.testing.assert_allclose(first.history[0]["train_cost"], jd.train(config, data).history[0]["train_cost"], rtol=1e-6)


def test_every_config_field_has_one_name_everywhere(tmp_path):
    fields = set(jd.FIELDS)
    cli_fields = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert fields - {"penalty"} <= cli_fields  # penalty is a function: Python only
    sweep_parser = cli.build_parser()._subparsers._group_actions[0].choices["sweep"]
    assert fields - {"penalty"} <= {a.dest for a in sweep_parser._actions}
    data = synthetic_dataset(60, 20)
    run = jd.train(jd.TrainConfig(epochs=1), data, out_dir=tmp_path / "run")
    swept = jd.sweep(data=data, epochs=1, lr=[3.0], out_dir=tmp_path / "sweep")
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    line = json.loads((tmp_path / "sweep" / "results.jsonl").read_text().splitlines()[0])
    assert fields <= set(run_json) and fields <= set(line)
    schema = set(run.record)
    assert schema <= set(run_json) and schema <= set(line) and schema <= set(swept.records[0])
    for name in jd.FIELDS:
        assert run_json[name] == line[name], name


def test_any_config_field_is_a_sweep_axis_and_hidden_is_never_ambiguous():
    grid = jd.SweepGrid(batch_size=[5, 10], dtype="float32", l2=[0.0, 1e-4])
    assert len(grid.configs()) == 4
    assert [c.hidden for c in jd.SweepGrid(hidden=[(16, 32)]).configs()] == [(16, 32)]
    assert [c.hidden for c in jd.SweepGrid(hidden=[(16,), (32,)]).configs()] == [(16,), (32,)]
    with pytest.raises(jd.ConfigError, match="ambiguous"):
        jd.SweepGrid(hidden=[16, 32])
    with pytest.raises(jd.ConfigError, match="unknown sweep axes"):
        jd.SweepGrid(seeds=[0, 1])


@pytest.mark.parametrize(
    "field, value, message",
    [("seed", 2**32, "at most"), ("seed", 1.5, "not an integer"), ("lr", True, "not a number"), ("lr", "1.5", "not a number"),
     ("epochs", float("inf"), "not an integer"), ("lr", 1e400, "finite"), ("lr", 0.0, "> 0"), ("hidden", 16, "not a list"),
     ("activation", "gelu", "not one of"), ("cost", 3, "not a name or an object"), ("batch_size", 0, ">= 1")],
)
def test_config_values_are_checked_with_one_typed_validation(field, value, message):
    with pytest.raises(jd.ConfigError, match=message):
        jd.TrainConfig(**{field: value})
    with pytest.raises(jd.ConfigError, match=f"^{field}: "):
        jd.SweepGrid({field: [value]})


def test_no_module_is_shadowed_and_the_modules_import_each_other_without_cycles():
    package = Path(jd.__file__).parent
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__"))
    for name in modules:
        module = importlib.import_module(f"jaxdigits.{name}")
        assert getattr(jd, name, module) is module, f"jaxdigits.{name} is shadowed"
    imports = {}
    for name in modules:
        tree = ast.parse((package / f"{name}.py").read_text())
        found = {n.module.split(".")[1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.startswith("jaxdigits.")}
        found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "jaxdigits" for a in n.names}
        imports[name] = found & set(modules)

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, (*seen, m))) for m in imports[start])

    assert [m for m in modules if reaches(m, m)] == []


def test_float64_trains_saves_and_loads_end_to_end(tmp_path):
    code = textwrap.dedent(f"""
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np, jaxdigits as jd
        from tests.conftest import synthetic_dataset
        data = synthetic_dataset(60, 20)
        result = jd.train(jd.TrainConfig(epochs=2, lr=1.0, dtype="float64"), data, out_dir={str(tmp_path / 'run')!r})
        network, info = jd.load_params({str(tmp_path / 'run')!r})
        assert network[0]["w"].dtype == np.float64 and info["config"]["dtype"] == "float64"
        assert float(jd.accuracy(network, data.test_images.astype(np.float64), data.test_labels)) == result.record["test_accuracy"]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
    with pytest.raises(jd.ConfigError, match="jax_enable_x64"):
        jd.train(jd.TrainConfig(epochs=1, dtype="float64"), synthetic_dataset(20, 5))
    with pytest.raises(jd.CheckpointError, match="jax_enable_x64"):
        jd.load_params(tmp_path / "run")


def test_a_saturated_run_is_named_stalled_and_warns():
    data = synthetic_dataset(200, 50)
    with pytest.warns(jd.StalledWarning, match="stalled"):
        result = jd.train(jd.TrainConfig(optimizer="adam", lr=3.0, epochs=4), data)
    assert result.status == "stalled" and result.record["status"] == "stalled"
    swept = jd.sweep(data=data, optimizer="adam", lr=[3.0, 0.003], epochs=4)
    assert [r["status"] for r in swept.records] == ["stalled", "ok"]
    assert "stalled" in jd.format_table(swept.records)


def test_status_rules_by_hand():
    def history(costs, last_accuracy):
        return [{"epoch": i + 1, "train_cost": c, "train_accuracy": last_accuracy, "test_accuracy": 0.1} for i, c in enumerate(costs)]

    assert jd.run_status(history([0.5, 0.5, 0.5], 0.11), chance=0.11) == "stalled"
    assert jd.run_status(history([0.9, 0.7, 0.5], 0.11), chance=0.11) == "ok"  # still falling
    assert jd.run_status(history([0.5, 0.5, 0.5], 0.30), chance=0.11) == "ok"  # above chance
    assert jd.run_status(history([0.5], 0.11) + [{"epoch": 2, "train_cost": float("nan"), "diverged": True}], 0.11) == "diverged"


def test_python_sweeps_use_every_cpu_core_by_default():
    code = textwrap.dedent("""
        import jaxdigits as jd
        from tests.conftest import synthetic_dataset
        result = jd.sweep(data=synthetic_dataset(40, 10), lr=[0.3, 1.0, 3.0], epochs=1, cpu_devices=3)
        print(result.records[0]["devices"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "3", out.stderr[-2000:]


def test_the_compile_cache_is_keyed_by_program_not_by_rate_seed_or_epochs():
    config = jd.TrainConfig()
    assert jd.program_key(config) == jd.program_key(config.replace(lr=0.1, seed=7, epochs=3))
    assert jd.program_key(config) != jd.program_key(config.replace(batch_size=11))
    assert jd.program_key(config) != jd.program_key(config.replace(cost=jd.Cost("q", jd.QuadraticCost.per_example, "sigmoid")))
    data = synthetic_dataset(50, 10)
    before = programs._compile.cache_info().misses
    jd.train(config.replace(epochs=1, lr=0.5, seed=3), data)
    jd.train(config.replace(epochs=2, lr=2.0, seed=4), data)
    assert programs._compile.cache_info().misses - before <= 1
