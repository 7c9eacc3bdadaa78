"""Options inside the compiled epoch: schedules, dropout, inits, augmentation, uint8 data on the device."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdigits as jd
from jaxdigits.core import epoch as epoch_module
from jaxdigits import run_folder
from tests.conftest import synthetic_dataset

OPTAX_SCHEDULES = {
    "cosine": lambda total: optax.cosine_decay_schedule(1.0, total),
    "exponential": lambda total: optax.exponential_decay(1.0, total, 0.01),
    "step": lambda total: optax.piecewise_constant_schedule(1.0, {total // 2: 0.1, 3 * total // 4: 0.1}),
    "warmup_cosine": lambda total: optax.warmup_cosine_decay_schedule(0.0, 1.0, max(1, total // 20), total),
}


@pytest.mark.parametrize("schedule", sorted(OPTAX_SCHEDULES))
def test_a_schedules_step_sizes_match_optax_step_by_step(schedule):
    data = synthetic_dataset(40, 5)
    total, lr = 40, 0.5
    config = jd.TrainConfig(schedule=schedule, lr=lr, optimizer="sgd", batch_size=10)
    state = jd.init_state(config, jd.run_keys(0)[0], 784, 10)
    step = jax.jit(jd.make_step(config, total_steps=total))
    objective = jd.make_objective("quadratic")
    reference = OPTAX_SCHEDULES[schedule](total)
    x, y = data.train_images[:10], data.train_labels[:10]
    for t in range(total):
        grads = jax.grad(objective)(state.params, x, y)
        new_state, _ = step(state, x, y)
        expected = jax.tree.map(lambda p, g: p - lr * reference(t) * g, state.params, grads)
        chex.assert_trees_all_close(new_state.params, expected, rtol=2e-5, atol=1e-6)
        state = new_state


def test_the_constant_schedule_takes_plain_steps_and_any_optimizer_composes_with_a_schedule():
    data = synthetic_dataset(60, 10)
    for optimizer in ("sgd", "momentum", "adam"):
        result = jd.train(jd.TrainConfig(optimizer=optimizer, schedule="cosine", lr=0.3 if optimizer != "adam" else 3e-3,
                                         epochs=2), data)
        assert result.status == "ok"


def test_dropout_is_on_in_training_and_off_at_evaluation():
    data = synthetic_dataset(50, 20)
    config = jd.TrainConfig(hidden=(64,), dropout=0.5, cost="cross_entropy", lr=0.5, epochs=2)
    result = jd.train(config, data)
    network = result.params
    # Evaluation uses every neuron: predict and accuracy are deterministic and equal the plain forward.
    z = np.asarray(jd.forward(network, data.test_images))
    np.testing.assert_array_equal(jd.predict(network, data.test_images)[0], z.argmax(1))
    assert float(jd.accuracy(network, data.test_images, data.test_labels)) == pytest.approx(result.record["test_accuracy"], abs=1e-6)
    # Training with a key drops units: the cost differs from the evaluation cost and between keys.
    objective = jd.make_objective("cross_entropy", dropout=0.5)
    x, y = data.train_images, data.train_labels
    plain = objective(network, x, y)
    dropped = [objective(network, x, y, jax.random.PRNGKey(k)) for k in (1, 2)]
    assert plain != dropped[0] and dropped[0] != dropped[1]
    assert objective(network, x, y, jax.random.PRNGKey(1)) == dropped[0]


def test_dropout_scales_kept_units_by_one_over_keep_probability():
    network = jd.init_mlp(jax.random.PRNGKey(0), (4, 1000, 2), activation="relu")
    network = jax.tree.map(lambda x: x, network)
    x = jnp.ones((1, 4))
    hidden = jax.nn.relu(x @ network[0]["w"] + network[0]["b"])
    from jaxdigits.core.model import _forward

    z = _forward(network, x, dropout=0.25, key=jax.random.PRNGKey(3))
    # z = (kept hidden / 0.75) @ w2 + b2: recover the mask by least squares on the 1000 units.
    kept = jax.random.bernoulli(jax.random.fold_in(jax.random.PRNGKey(3), 0), 0.75, hidden.shape)
    expected = jnp.where(kept, hidden / 0.75, 0.0) @ network[1]["w"] + network[1]["b"]
    np.testing.assert_allclose(z, expected, rtol=1e-5)
    assert 0.7 < float(kept.mean()) < 0.8


@pytest.mark.parametrize("init, check", [
    ("lesson", lambda w, b, n: abs(w.std() * np.sqrt(n) - 1) < 0.05 and abs(b.std() - 1) < 0.1),
    ("he", lambda w, b, n: abs(w.std() * np.sqrt(n / 2) - 1) < 0.05 and not b.any()),
    ("glorot", lambda w, b, n: np.abs(w).max() <= np.sqrt(6 / (n + 300)) and abs(w.std() - np.sqrt(2 / (n + 300))) < 0.01 and not b.any()),
])
def test_inits_draw_their_formulas(init, check):
    network = jd.init_mlp(jax.random.PRNGKey(0), (784, 300, 10), init=init)
    assert check(np.asarray(network[0]["w"]), np.asarray(network[0]["b"]), 784)


def test_mnist_sits_on_the_device_as_uint8_and_becomes_exactly_the_same_floats(mnist):
    images = mnist.test_images[:2000]
    stored = epoch_module.device_images(images, "float32")
    assert stored.dtype == np.uint8 and stored.nbytes * 4 == images.nbytes
    np.testing.assert_array_equal(np.asarray(epoch_module.as_inputs(jnp.asarray(stored), jnp.float32)), images)
    noisy = images + np.float32(1e-3)
    assert epoch_module.device_images(noisy, "float32").dtype == np.float32  # not whole 255ths: kept as floats


def test_resume_is_bit_identical_with_augmentation_a_schedule_and_dropout(tmp_path, monkeypatch):
    data = synthetic_dataset(80, 20)
    config = jd.TrainConfig(hidden=(32,), augment="elastic", schedule="warmup_cosine", dropout=0.2,
                            optimizer="momentum", lr=0.3, epochs=3)
    whole = jd.train(config, data)
    saves = []
    original = run_folder.RunFolder.save_training

    def interrupt_after_first(self, *args, **kwargs):
        original(self, *args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder.RunFolder, "save_training", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        jd.train(config, data, out_dir=tmp_path / "run")
    resumed = jd.train(config, data, out_dir=tmp_path / "run", resume=True)
    chex.assert_trees_all_equal(resumed.params, whole.params)
    assert [h["train_cost"] for h in resumed.history] == [h["train_cost"] for h in whole.history]
    with pytest.raises(jd.ConfigError, match="epochs"):
        jd.train(config.replace(epochs=4), data, out_dir=tmp_path / "run", resume=True)


def test_augmentation_changes_training_but_not_the_batches():
    data = synthetic_dataset(100, 20)
    plain = jd.train(jd.TrainConfig(epochs=1, lr=1.0), data)
    augmented = jd.train(jd.TrainConfig(epochs=1, lr=1.0, augment="affine"), data)
    zero = jd.train(jd.TrainConfig(epochs=1, lr=1.0, augment="affine", rotation=0, scale=0, shear=0, shift=0), data)
    chex.assert_trees_all_equal(zero.params, plain.params)  # zero strength: the very same steps
    assert not np.array_equal(augmented.params[0]["w"], plain.params[0]["w"])
    with pytest.raises(jd.ConfigError, match="square images"):
        jd.train(jd.TrainConfig(augment="affine"), jd.Dataset(np.zeros((20, 10), np.float32), np.arange(20) % 2,
                                                                np.zeros((4, 10), np.float32), np.arange(4) % 2))


def test_elastic_training_on_real_mnist_stays_above_a_floor(mnist):
    data = mnist.subset(20000, 5000)
    config = jd.TrainConfig(hidden=(100,), activation="relu", cost="cross_entropy", optimizer="momentum", lr=0.05,
                            batch_size=32, epochs=2, augment="elastic", init="he")
    result = jd.train(config, data)
    assert result.record["test_accuracy"] >= 0.93, result.history
