"""Cost functions: one named object per cost, each with its formula, as pure functions.

A cost object maps the output pre-activations ``z (N, 10)`` and integer ``labels (N,)`` to one
number per example; ``quadratic_cost`` and ``cross_entropy_cost`` average that over the examples
and add an optional L2 penalty, as pure functions of ``(params, images, labels)`` so that
``jax.grad(quadratic_cost)(params, images, labels)`` is the gradient, a pytree shaped like params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxdigits.model import Params, forward


class QuadraticCost:
    """The lesson's cost, in the convention of the lesson's code (Nielsen's ``network.py``).

        C = (1/N) sum_x (1/2) sum_j (a_j(x) - y_j(x))^2,   a = sigmoid(z),   y = one_hot(label)

    For each example, half the sum over the 10 output neurons of the squared difference between
    the output activation and the one-hot target, averaged over the examples. The factor 1/2
    (which the lesson's video leaves out) makes dC/da = a - y, so the default learning rate 3.0
    takes exactly the lesson's steps; without it the same rate would take steps twice as large.
    """

    name = "quadratic"
    output = "sigmoid"

    @staticmethod
    def per_example(z: jax.Array, labels: jax.Array) -> jax.Array:
        """``(N,)``: half the summed squared error of ``sigmoid(z)`` against the one-hot label."""
        targets = jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)
        return 0.5 * jnp.sum((jax.nn.sigmoid(z) - targets) ** 2, axis=-1)


class CrossEntropyCost:
    """Softmax cross-entropy.

        C = -(1/N) sum_x log softmax(z(x))_label(x)
    """

    name = "cross_entropy"
    output = "softmax"

    @staticmethod
    def per_example(z: jax.Array, labels: jax.Array) -> jax.Array:
        """``(N,)`` negative log-probability of the true label."""
        return optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)


COSTS = {cost.name: cost for cost in (QuadraticCost, CrossEntropyCost)}


def l2_penalty(params: Params) -> jax.Array:
    """``(1/2) sum_w w^2`` over every weight matrix (biases are not penalised)."""
    return 0.5 * sum(jnp.sum(layer["w"] ** 2) for layer in params)


def mean_cost(
    cost: str,
    params: Params,
    images: jax.Array,
    labels: jax.Array,
    activation: str = "sigmoid",
    l2: float = 0.0,
) -> jax.Array:
    """Scalar: the named cost averaged over ``images (N, 784)`` plus ``l2 * l2_penalty(params)``."""
    z = forward(params, images, activation)
    value = jnp.mean(COSTS[cost].per_example(z, labels))
    if isinstance(l2, (int, float)) and l2 == 0:
        return value  # skip the penalty's work: XLA cannot drop 0 * x (x may be NaN)
    return value + l2 * l2_penalty(params)


def quadratic_cost(
    params: Params, images: jax.Array, labels: jax.Array, activation: str = "sigmoid", l2: float = 0.0
) -> jax.Array:
    """The lesson's quadratic cost (see ``QuadraticCost``) as a scalar."""
    return mean_cost("quadratic", params, images, labels, activation, l2)


def cross_entropy_cost(
    params: Params, images: jax.Array, labels: jax.Array, activation: str = "sigmoid", l2: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy (see ``CrossEntropyCost``) as a scalar."""
    return mean_cost("cross_entropy", params, images, labels, activation, l2)
