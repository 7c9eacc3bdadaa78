"""The network (``jaxdigits.core.model``): inits, the forward pass of each activation, dropout,
predict and accuracy against hand computations, a pytree jax and optax take as it is, and one
clear error for bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdigits as jd
from tests.conftest import synthetic_dataset
from tests.helpers import sigmoid, tiny_network


def test_init_mlp_shapes_dtypes_and_scales():
    params = jd.init_mlp(jax.random.PRNGKey(0), (784, 400, 300, 10))
    assert params.sizes == (784, 400, 300, 10)
    assert [p["w"].shape for p in params] == [(784, 400), (400, 300), (300, 10)]
    assert all(p["w"].dtype == jnp.float32 and p["b"].dtype == jnp.float32 for p in params)
    # Weights N(0, 1/fan_in), biases N(0, 1): check the sample standard deviations.
    np.testing.assert_allclose(np.std(params[0]["w"]), 1 / np.sqrt(784), rtol=0.02)
    np.testing.assert_allclose(np.std(params[1]["w"]), 1 / np.sqrt(400), rtol=0.02)
    np.testing.assert_allclose(np.std(np.concatenate([params[0]["b"], params[1]["b"]])), 1.0, rtol=0.1)


@pytest.mark.parametrize("init, check", [
    ("lesson", lambda w, b, n: abs(w.std() * np.sqrt(n) - 1) < 0.05 and abs(b.std() - 1) < 0.1),
    ("he", lambda w, b, n: abs(w.std() * np.sqrt(n / 2) - 1) < 0.05 and not b.any()),
    ("glorot", lambda w, b, n: np.abs(w).max() <= np.sqrt(6 / (n + 300)) and abs(w.std() - np.sqrt(2 / (n + 300))) < 0.01 and not b.any()),
])
def test_inits_draw_their_formulas(init, check):
    network = jd.init_mlp(jax.random.PRNGKey(0), (784, 300, 10), init=init)
    assert check(np.asarray(network[0]["w"]), np.asarray(network[0]["b"]), 784)


def test_init_mlp_is_one_draw_cut_into_w0_b0_w1_b1_in_order():
    key = jax.random.PRNGKey(4)
    network = jd.init_mlp(key, (5, 3, 2))  # lesson: w = z / sqrt(fan_in), b = z
    z = np.asarray(jax.random.normal(key, (5 * 3 + 3 + 3 * 2 + 2,)))
    pieces = [np.asarray(network[0]["w"]).ravel() * np.sqrt(5), network[0]["b"],
              np.asarray(network[1]["w"]).ravel() * np.sqrt(3), network[1]["b"]]
    np.testing.assert_allclose(np.concatenate(pieces), z, rtol=1e-6)


def test_forward_is_the_layer_formula_for_each_activation():
    params = jd.init_mlp(jax.random.PRNGKey(1), (784, 5, 3, 10))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (4, 784)))
    for name, act in {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}.items():
        a = x
        for layer in params[:-1]:
            a = act(a @ np.asarray(layer["w"]) + np.asarray(layer["b"]))
        expected = a @ np.asarray(params[-1]["w"]) + np.asarray(params[-1]["b"])
        network = jd.Network(params.layers, activation=name)
        np.testing.assert_allclose(jd.forward(network, x), expected, rtol=1e-5, atol=1e-5)


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


def test_predict_gives_digit_and_output_activations():
    params, images, _ = tiny_network()
    digits, activations = jd.predict(params, images)
    z = np.asarray(jd.forward(params, images))
    np.testing.assert_allclose(activations, sigmoid(z), rtol=1e-6)
    np.testing.assert_array_equal(digits, np.argmax(z, axis=1))
    _, softmax = jd.predict(jd.Network(params.layers, output="softmax"), images)
    np.testing.assert_allclose(np.sum(softmax, axis=1), 1.0, rtol=1e-6)
    assert jd.COSTS["quadratic"].output == "sigmoid" and jd.COSTS["cross_entropy"].output == "softmax"


def test_accuracy_counts_argmax_matches():
    params, images, labels = tiny_network()
    digits, _ = jd.predict(params, images)
    expected = np.mean(np.asarray(digits) == labels)
    assert float(jd.accuracy(params, images, labels)) == pytest.approx(expected)


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


def test_one_example_is_an_image_of_its_own_and_vmap_jacrev_and_per_example_gradients_work():
    network = jd.init_mlp(jax.random.PRNGKey(0))
    images = jnp.asarray(synthetic_dataset(6, 1).train_images)
    labels = jnp.asarray(synthetic_dataset(6, 1).train_labels)
    digits, activations = jd.predict(network, images)
    one_digit, one_activation = jd.predict(network, images[2])
    assert one_digit.shape == () and int(one_digit) == int(digits[2])
    np.testing.assert_allclose(one_activation, activations[2], rtol=1e-6)
    mapped = jax.vmap(lambda x: jd.predict(network, x))(images)  # the Equinox habit
    np.testing.assert_array_equal(mapped[0], digits)
    assert jax.jacrev(lambda x: jd.forward(network, x))(images[0]).shape == (10, 784)
    per_example = jax.vmap(jax.grad(jd.quadratic_cost), in_axes=(None, 0, 0))(network, images, labels)
    mean = jax.grad(jd.quadratic_cost)(network, images, labels)
    for a, b in zip(jax.tree.leaves(per_example), jax.tree.leaves(mean)):
        np.testing.assert_allclose(a.mean(0), b, rtol=2e-5, atol=1e-7)  # the batch gradient is their mean
    assert [a.shape for a in jd.layer_activations(network, images[0])] == [(784,), (16,), (16,), (10,)]
    with pytest.raises(jd.InputError, match="expected \\(N, 784\\) or one image"):
        jd.forward(network, images[0, :100])


@pytest.mark.parametrize("name", ["gelu", "silu", "elu", "softplus", "leaky_relu", "identity"])
def test_activations_by_name_from_jax_nn(name):
    network = jd.init_mlp(jax.random.PRNGKey(0), (3, 4, 2), activation=name)
    x = jnp.asarray([[0.5, -1.0, 2.0]])
    expected = {"gelu": jax.nn.gelu, "silu": jax.nn.silu, "elu": jax.nn.elu, "softplus": jax.nn.softplus,
                "leaky_relu": jax.nn.leaky_relu, "identity": lambda v: v}[name]
    hidden = expected(x @ network[0]["w"] + network[0]["b"])
    np.testing.assert_allclose(jd.forward(network, x), hidden @ network[1]["w"] + network[1]["b"], rtol=1e-6)
    assert jd.TrainConfig(activation=name).activation == name


def test_a_registered_activation_is_a_name_like_the_others():
    cube = lambda v: v ** 3  # noqa: E731
    jd.register_activation("cube_for_test", cube)
    network = jd.init_mlp(jax.random.PRNGKey(1), (3, 4, 2), activation="cube_for_test")
    x = jnp.asarray([[0.5, -1.0, 2.0]])
    np.testing.assert_allclose(jd.forward(network, x), cube(x @ network[0]["w"] + network[0]["b"]) @ network[1]["w"] + network[1]["b"], rtol=1e-6)
    assert jd.TrainConfig(activation="cube_for_test").activation == "cube_for_test"
    with pytest.raises(jd.InputError, match="is taken"):
        jd.register_activation("relu", cube)
    with pytest.raises(jd.ConfigError, match="not one of"):
        jd.TrainConfig(activation="not_registered")
