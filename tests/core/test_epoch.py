"""The compiled step and epoch (``jaxdigits.core.epoch``): jit and eager agree, an SGD step by
hand, the batch order, the scanned epoch against stepping in Python, uint8 images on the device."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import batch_order, run_keys
from jaxdigits.core import epoch as epoch_module
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


def test_mnist_sits_on_the_device_as_uint8_and_becomes_exactly_the_same_floats(mnist):
    images = mnist.test_images[:2000]
    stored = epoch_module.device_images(images, "float32")
    assert stored.dtype == np.uint8 and stored.nbytes * 4 == images.nbytes
    np.testing.assert_array_equal(np.asarray(epoch_module.as_inputs(jnp.asarray(stored), jnp.float32)), images)
    noisy = images + np.float32(1e-3)
    assert epoch_module.device_images(noisy, "float32").dtype == np.float32  # not whole 255ths: kept as floats


@pytest.mark.parametrize("seed", [0, 7, 2**31, 2**32 - 1, -1])
def test_run_keys_are_the_split_of_the_seeds_key_for_every_32_bit_seed(seed):
    init_key, shuffle_key = run_keys(seed)
    expected = jax.random.split(jax.random.PRNGKey(seed))
    np.testing.assert_array_equal(np.stack([init_key, shuffle_key]), expected)


def test_byte_fractions_are_numpys_division_for_every_byte_jitted_and_eager():
    values = np.arange(256, dtype=np.float32)
    expected = values / np.float32(255)
    for fractions in (epoch_module.byte_fractions, jax.jit(epoch_module.byte_fractions)):
        np.testing.assert_array_equal(np.asarray(fractions(jnp.asarray(values))), expected)  # bit for bit
    blends = np.random.default_rng(0).uniform(0, 255, 10_000).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(epoch_module.byte_fractions)(blends)), blends / np.float32(255),
                               rtol=1.2e-7, atol=0)  # within an ulp


@pytest.mark.parametrize("augment", ["affine", "elastic"])
def test_augmenting_bytes_gives_the_floats_path_and_zero_strengths_give_the_inputs_exactly(augment):
    pixels = np.random.default_rng(1).integers(0, 256, (16, 784), dtype=np.uint8)
    floats = epoch_module.pixel_values(np.float32)[pixels]
    config = jd.TrainConfig(augment=augment, rotation=12.0, shear=8.0, elastic_alpha=30.0)
    key = jax.random.PRNGKey(3)
    from_bytes = jax.jit(lambda x: epoch_module.augment_batch(config, key, x))(pixels)
    from_floats = jax.jit(lambda x: epoch_module.augment_batch(config, key, x))(floats)
    assert from_bytes.dtype == np.float32 and not np.array_equal(from_bytes, floats)
    np.testing.assert_allclose(from_bytes, from_floats, rtol=1e-6, atol=1e-6)
    zero = config.replace(rotation=0.0, scale=0.0, shear=0.0, shift=0.0, elastic_alpha=0.0)
    np.testing.assert_array_equal(jax.jit(lambda x: epoch_module.augment_batch(zero, key, x))(pixels), floats)


@pytest.mark.parametrize("augment", ["affine", "elastic"])
def test_augmented_white_bytes_never_come_out_above_one(augment):
    white = np.full((4096, 4), 255, np.uint8)  # 2 x 2 images: blends of 255 with weights like 0.198 round up
    config = jd.TrainConfig(augment=augment, rotation=1.0, scale=0.0, shear=0.0, shift=0.3, elastic_alpha=0.5)
    out = jax.jit(lambda x, key: epoch_module.augment_batch(config, key, x))(white, jax.random.PRNGKey(0))
    assert float(out.max()) == 1.0 and float(out.min()) >= 0.0


def test_make_epoch_takes_numpy_arrays_outside_jit_and_gives_the_jitted_numbers():
    data = synthetic_dataset(100, 10)
    config = jd.TrainConfig(hidden=(16,), epochs=1)
    state = jd.init_state(config, jax.random.PRNGKey(0), 784, 10)
    eager = jd.make_epoch(config)(state, jax.random.PRNGKey(1), data.train_images, data.train_labels)
    jitted = jax.jit(jd.make_epoch(config))(state, jax.random.PRNGKey(1), data.train_images, data.train_labels)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_user_pieces_are_checked_by_their_shapes_where_they_enter():
    import optax

    data = synthetic_dataset(40, 10)
    wide = jd.Cost("wide", lambda z, labels: z - jax.nn.one_hot(labels, z.shape[-1]), output="softmax")
    with pytest.raises(jd.ConfigError, match="cost 'wide': per_example gave shape \\(2, 10\\).*one number per example"):
        jd.train(jd.TrainConfig(cost=wide, epochs=1), data)

    def vector_penalty(network, images, labels):
        return network[0]["w"].sum(0)

    with pytest.raises(jd.ConfigError, match="penalty 'vector_penalty' gave shape \\(16,\\); it must give one number"):
        jd.train(jd.TrainConfig(penalty=vector_penalty, epochs=1), data)
    with pytest.raises(jd.ConfigError, match="must return an optax GradientTransformation"):
        jd.train(jd.TrainConfig(optimizer=lambda lr: optax.sgd, epochs=1), data)
    with pytest.raises(jd.ConfigError, match="fails on arrays of the shapes"):
        jd.sweep(data=data, cost=[jd.Cost("bad", lambda z, labels: z @ jnp.ones((3, 3)), output="softmax")], epochs=1)


def test_the_shuffle_is_a_fixed_keys_permutation_and_batches_are_its_slices():
    key = jax.random.PRNGKey(7)
    order = np.asarray(batch_order(key, 23, 5))
    permutation = np.asarray(jax.random.permutation(key, 23))
    np.testing.assert_array_equal(order, permutation[:20].reshape(4, 5))  # the last 3 sit the epoch out
    assert not np.array_equal(order, np.asarray(batch_order(jax.random.fold_in(key, 1), 23, 5)))


def test_momentum_and_adam_steps_are_optax_steps():
    import optax

    data = synthetic_dataset(30, 5)
    x, y = jnp.asarray(data.train_images[:10]), jnp.asarray(data.train_labels[:10])
    # The betas are float32 values in the optimizer state (traced), so 1 - b2 is float32's.
    for name, reference in (("momentum", optax.sgd(0.1, momentum=0.9)),
                            ("adam", optax.adam(0.1, b1=jnp.float32(0.9), b2=jnp.float32(0.999)))):
        config = jd.TrainConfig(hidden=(8,), optimizer=name, lr=0.1)
        state = jd.init_state(config, jax.random.PRNGKey(0), 784, 10)
        params, opt = state.params, reference.init(state.params)
        step = jax.jit(jd.make_step(config))
        for _ in range(3):
            state, _ = step(state, x, y)
            grads = jax.grad(jd.quadratic_cost)(params, x, y)
            updates, opt = reference.update(grads, opt, params)
            params = optax.apply_updates(params, updates)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_the_schedule_spans_the_whole_run_as_train_computes_it():
    # cosine over 2 epochs of 3 batches: the rate scale at steps 0..5 is (1 + cos(pi t / 6)) / 2
    data = synthetic_dataset(30, 5)
    config = jd.TrainConfig(hidden=(8,), batch_size=10, epochs=2, schedule="cosine", lr=1.0)
    run = jd.train(config, data)
    scales = [(1 + np.cos(np.pi * t / 6)) / 2 for t in range(6)]
    state = jd.init_state(config, jd.run_keys(0)[0], 784, 10)
    _, shuffle_key = jd.run_keys(0)
    params = state.params
    for epoch in (1, 2):
        order = np.asarray(batch_order(jax.random.fold_in(shuffle_key, epoch), 30, 10))
        for number, batch in enumerate(order):
            grads = jax.grad(jd.quadratic_cost)(params, jnp.asarray(data.train_images[batch]), jnp.asarray(data.train_labels[batch]))
            scale = scales[(epoch - 1) * 3 + number]
            params = jax.tree.map(lambda p, g: p - scale * g, params, grads)
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_cost_without_a_dropout_key_is_the_cost_without_dropout():
    data = synthetic_dataset(20, 5)
    network = jd.init_mlp(jax.random.PRNGKey(0), (784, 32, 10))
    x, y = data.train_images, data.train_labels
    assert float(jd.make_objective("quadratic", dropout=0.5)(network, x, y)) == float(jd.make_objective("quadratic")(network, x, y))
    assert float(jd.make_objective("quadratic", dropout=0.5)(network, x, y, jax.random.PRNGKey(1))) != float(
        jd.make_objective("quadratic")(network, x, y))


def test_the_gradient_of_a_whole_run_with_respect_to_l2_and_dropout_matches_finite_differences():
    data = synthetic_dataset(40, 4)
    config = jd.TrainConfig(hidden=(6,), lr=0.5, l2=1e-2, dropout=0.2, epochs=2, batch_size=10, cost="cross_entropy")
    run = jd.make_train(config)
    images, labels = jnp.asarray(data.train_images, jnp.float32), jnp.asarray(data.train_labels)

    def final_cost(l2):
        state, _, _ = run(0, {"lr": 0.5, "l2": l2}, images, labels, 10)
        return jd.make_objective("cross_entropy")(state.params, images, labels)

    grad = jax.jit(jax.grad(final_cost))(jnp.float32(1e-2))
    h, cost_at = 1e-3, jax.jit(final_cost)
    fd = (cost_at(jnp.float32(1e-2 + h)) - cost_at(jnp.float32(1e-2 - h))) / (2 * h)
    assert grad != 0 and float(grad) == pytest.approx(float(fd), rel=2e-2)
    with pytest.raises(jd.ConfigError, match="not numbers a run takes"):
        run(0, {"lr": 0.5, "hidden": 3}, images, labels, 10)


def test_make_train_uses_l2_and_dropout_given_as_numbers_where_the_config_has_them_off():
    data = synthetic_dataset(40, 4)
    images, labels = jnp.asarray(data.train_images, jnp.float32), jnp.asarray(data.train_labels)
    off = jd.TrainConfig(hidden=(6,), lr=0.5, epochs=2, batch_size=10, cost="cross_entropy")
    given = {"lr": 0.5, "l2": 1e-2, "dropout": 0.2}
    taken = jd.make_train(off)(0, given, images, labels, 10)[0]
    on = jd.make_train(off.replace(l2=1e-2, dropout=0.2))(0, given, images, labels, 10)[0]
    plain = jd.make_train(off)(0, {"lr": 0.5}, images, labels, 10)[0]
    chex.assert_trees_all_equal(taken.params, on.params)
    assert not np.array_equal(taken.params[0]["w"], plain.params[0]["w"])


def test_make_train_takes_augmentation_strengths_as_numbers_and_uses_them():
    data = synthetic_dataset(40, 4)
    config = jd.TrainConfig(hidden=(6,), lr=0.5, epochs=1, batch_size=10, augment="affine", rotation=0.0, scale=0.0,
                            shear=0.0, shift=0.0)
    run = jax.jit(jd.make_train(config), static_argnums=4)
    images, labels = jnp.asarray(data.train_images), jnp.asarray(data.train_labels)
    still, _, _ = run(0, {"lr": 0.5, "rotation": 0.0}, images, labels, 10)
    turned, _, _ = run(0, {"lr": 0.5, "rotation": 20.0}, images, labels, 10)
    plain = jd.make_train(config.replace(augment="none"))(0, 0.5, images, labels, 10)[0]
    chex.assert_trees_all_equal(still.params, plain.params)  # zero strength: the unaugmented run
    assert not np.array_equal(turned.params[0]["w"], still.params[0]["w"])


@pytest.mark.parametrize("init", ["lesson", "he", "glorot"])
def test_the_initial_state_is_the_same_from_its_own_program_and_inside_a_users_jit(init):
    config = jd.TrainConfig(init=init, optimizer="adam", hidden=(16, 16))
    key = jd.run_keys(3)[0]
    cheap = jd.init_state(config, key, 784, 10)  # its own compiled program, one per structure
    values = {name: getattr(config, name) for name in ("lr", "l2", "dropout", "momentum", "b1", "b2")}
    inside = jax.jit(lambda k: epoch_module._fresh_state(config, 784, 10, k, values))(key)
    for a, b in zip(jax.tree.leaves(cheap), jax.tree.leaves(inside)):
        np.testing.assert_array_equal(a, b)
