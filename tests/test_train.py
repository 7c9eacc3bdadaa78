"""The compiled training loop: step, scan epoch, determinism, optimizers, real-data accuracy."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import batch_order, run_keys
from tests.conftest import synthetic_dataset


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


class StepVariantsTest(chex.TestCase):
    """The SGD step gives the same result compiled and eager."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_step_matches_across_variants(self):
        data = synthetic_dataset(40, 10)
        for config in (jd.TrainConfig(), jd.TrainConfig(cost="cross_entropy", optimizer="adam", l2=1e-3, lr=0.01)):
            state = jd.init_state(config, run_keys(0)[0], data.inputs, data.num_classes)
            step = self.variant(jd.make_step(config))
            new_state, cost = step(state, data.train_images[:10], data.train_labels[:10])
            reference_state, reference_cost = jd.make_step(config)(state, data.train_images[:10], data.train_labels[:10])
            chex.assert_trees_all_close(new_state.params, reference_state.params, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(cost, reference_cost, rtol=1e-5)
            chex.assert_trees_all_equal_shapes(new_state.params, state.params)


def test_sgd_step_is_params_minus_lr_times_gradient():
    data = synthetic_dataset(20, 5)
    config = jd.TrainConfig(lr=0.5)
    state = jd.init_state(config, run_keys(1)[0], data.inputs, data.num_classes)
    x, y = data.train_images[:10], data.train_labels[:10]
    grads = jax.grad(jd.quadratic_cost)(state.params, x, y)
    new_state, cost = jax.jit(jd.make_step(config))(state, x, y)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, state.params, grads)
    assert_trees_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cost, jd.quadratic_cost(state.params, x, y), rtol=1e-6)


def test_batch_order_is_a_shuffled_partition():
    order = np.asarray(batch_order(jax.random.PRNGKey(0), 103, 10))
    assert order.shape == (10, 10)
    assert len(set(order.ravel())) == 100 and order.max() < 103
    assert not np.array_equal(order.ravel(), np.sort(order.ravel()))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_scan_epoch_equals_stepping_the_same_batches_in_python(optimizer):
    data = synthetic_dataset(60, 10)
    config = jd.TrainConfig(optimizer=optimizer, batch_size=7, lr=0.3 if optimizer != "adam" else 0.01)
    init_key, shuffle_key = run_keys(2)
    state = jd.init_state(config, init_key, data.inputs, data.num_classes)
    key = jax.random.fold_in(shuffle_key, 1)
    scanned, mean_cost = jax.jit(jd.make_epoch(config))(state, key, data.train_images, data.train_labels)

    step = jax.jit(jd.make_step(config))
    costs = []
    for indices in np.asarray(batch_order(key, 60, 7)):
        state, cost = step(state, data.train_images[indices], data.train_labels[indices])
        costs.append(float(cost))
    assert_trees_close(scanned.params, state.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean_cost, np.mean(costs), rtol=1e-5)


def test_training_is_deterministic_and_depends_on_the_seed():
    data = synthetic_dataset()
    config = jd.TrainConfig(epochs=3, lr=1.0)
    first, second = jd.train(config, data), jd.train(config, data)
    chex.assert_trees_all_equal(first.params, second.params)
    assert [h["train_cost"] for h in first.history] == [h["train_cost"] for h in second.history]
    other = jd.train(config.replace(seed=1), data)
    assert not np.array_equal(first.params[0]["w"], other.params[0]["w"])


@pytest.mark.parametrize(
    "changes",
    [{}, {"cost": "cross_entropy"}, {"optimizer": "momentum", "lr": 0.1, "cost": "cross_entropy"},
     {"optimizer": "adam", "lr": 0.003, "activation": "relu"}, {"l2": 1e-4, "activation": "tanh"}],
)
def test_every_option_learns_the_synthetic_task(changes):
    data = synthetic_dataset(1000, 200)
    result = jd.train(jd.TrainConfig(epochs=4, **changes), data)
    assert not result.diverged and result.status == "ok" and len(result.history) == 4
    assert result.history[-1]["test_accuracy"] >= 0.9, result.history
    assert set(result.history[-1]) == {"epoch", "train_cost", "train_accuracy", "test_accuracy", "seconds"}


def test_l2_shrinks_the_weights():
    data = synthetic_dataset()
    plain = jd.train(jd.TrainConfig(epochs=3), data)
    decayed = jd.train(jd.TrainConfig(epochs=3, l2=0.05), data)
    norm = lambda p: sum(float(np.sum(np.square(layer["w"]))) for layer in p)
    assert norm(decayed.params) < 0.8 * norm(plain.params)


def test_invalid_config_is_refused_before_training():
    data = synthetic_dataset(50, 10)
    # Values are checked when the config is made, so nothing can train with them.
    with pytest.raises(jd.ConfigError, match="lr: 0.0 must be > 0"):
        jd.TrainConfig(lr=0.0)
    with pytest.raises(jd.ConfigError, match="larger than the 50 training images"):
        jd.train(jd.TrainConfig(batch_size=51), data)
    # The input and output sizes follow the data; only the hidden widths are the config's.
    with pytest.raises(jd.ConfigError, match="hidden: 0 must be >= 1"):
        jd.TrainConfig(hidden=(16, 0))


def test_lesson_network_reads_mnist_after_one_epoch(mnist, tmp_path):
    """The default network, one epoch on the real MNIST: >= 90 % test accuracy, and the saved
    checkpoint predicts exactly as the params in memory."""
    result = jd.train(jd.TrainConfig(epochs=1), mnist, out_dir=tmp_path / "run")
    assert result.history[-1]["test_accuracy"] >= 0.90, result.history
    loaded, info = jd.load_params(tmp_path / "run")
    assert jd.TrainConfig.from_dict(info["config"]) == jd.TrainConfig(epochs=1)
    chex.assert_trees_all_equal(loaded, result.params)
    digits, activations = jd.predict(result.params, mnist.test_images)
    loaded_digits, loaded_activations = jd.predict(loaded, mnist.test_images)
    np.testing.assert_array_equal(digits, loaded_digits)
    np.testing.assert_array_equal(activations, loaded_activations)
    assert info["record"]["test_accuracy"] == result.history[-1]["test_accuracy"]
