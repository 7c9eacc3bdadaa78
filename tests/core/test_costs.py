"""The costs (``jaxdigits.core.costs``) against hand computations and finite differences."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdigits as jd
from tests.helpers import sigmoid, tiny_network


def test_quadratic_cost_matches_hand_computation():
    params, images, labels = tiny_network()
    # Image 0: hidden = sigmoid([1, 1]); image 1: hidden = sigmoid([0, 1 - 2*0.5]) = sigmoid([0, 0]).
    total = 0.0
    for hidden, label in ((sigmoid(np.array([1.0, 1.0])), 3), (sigmoid(np.array([0.0, 0.0])), 7)):
        z = np.full(10, -1.0)
        z[3] += 2.0 * hidden[0]
        z[7] += -1.0 * hidden[1]
        target = np.eye(10)[label]
        total += 0.5 * np.sum((sigmoid(z) - target) ** 2)
    expected = total / 2
    np.testing.assert_allclose(jd.quadratic_cost(params, images, labels), expected, rtol=1e-6)
    # The L2 term adds l2 * (1/2) * sum of squared weights (1 + 4 + 4 + 1 = 10).
    np.testing.assert_allclose(jd.quadratic_cost(params, images, labels, l2=0.1), expected + 0.1 * 0.5 * 10, rtol=1e-6)


def test_cross_entropy_cost_matches_hand_computation():
    params, images, labels = tiny_network()
    z = np.asarray(jd.forward(params, images))
    log_probs = z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(2), labels])
    np.testing.assert_allclose(jd.cross_entropy_cost(params, images, labels), expected, rtol=1e-6)


@pytest.mark.parametrize("cost", [jd.quadratic_cost, jd.cross_entropy_cost])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_gradient_matches_central_finite_differences(cost, activation):
    """jax.grad of each cost against (C(p + h e) - C(p - h e)) / 2h, in float64."""
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(3)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), jd.init_mlp(key, (784, 4, 3, 10), activation))
        images = jax.random.uniform(jax.random.PRNGKey(4), (5, 784), jnp.float64)
        labels = jnp.array([0, 3, 9, 3, 5])

        def f(p):
            return cost(p, images, labels, l2=0.01)

        grads = jax.grad(f)(params)
        assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        flat_grad, _ = jax.flatten_util.ravel_pytree(grads)
        rng = np.random.default_rng(0)
        # Every bias and output weight, plus a random sample of first-layer weights.
        first_w = params[0]["w"].size
        chosen = np.concatenate([rng.choice(first_w, 40, replace=False), np.arange(first_w, flat.size)])
        h = 1e-6
        for i in chosen:
            e = jnp.zeros_like(flat).at[i].set(h)
            numeric = (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * h)
            np.testing.assert_allclose(flat_grad[i], numeric, rtol=1e-5, atol=1e-9)


def test_costs_are_pure_and_differentiable_under_jit():
    params = jd.init_mlp(jax.random.PRNGKey(5))
    images = jax.random.uniform(jax.random.PRNGKey(6), (8, 784))
    labels = jnp.arange(8) % 10
    eager = jax.grad(jd.quadratic_cost)(params, images, labels)
    jitted = jax.jit(jax.grad(jd.quadratic_cost))(params, images, labels)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), eager, jitted)
