"""Cost functions: one named object per cost, each with its formula, as pure functions.

A cost object maps the output pre-activations ``z (N, classes)`` and integer ``labels (N,)`` to
one number per example (``per_example``) and names the output function that turns ``z`` into the
network's output activations (``output``). ``make_objective`` averages it over the examples and
adds penalties, as a pure function of ``(network, images, labels)``: ``jax.grad`` of it is the
gradient, a pytree shaped like the network.

Your own cost is any object with ``name``, ``output`` and ``per_example(z, labels)``, e.g.
``Cost("hinge", hinge_per_example, output="softmax")``; a penalty is any function of
``(network, images, labels)`` returning a scalar.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import optax

from jaxdigits.core.model import Network, _forward, check_images, check_labels


class CostLike(Protocol):
    name: str
    output: str

    def per_example(self, z: jax.Array, labels: jax.Array) -> jax.Array: ...


class QuadraticCost:
    """The lesson's cost, in the convention of the lesson's code (Nielsen's ``network.py``).

        C = (1/N) sum_x (1/2) sum_j (a_j(x) - y_j(x))^2,   a = sigmoid(z),   y = one_hot(label)

    For each example, half the sum over the output neurons of the squared difference between
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


@dataclasses.dataclass(frozen=True)
class Cost:
    """A user's cost: ``per_example(z (N, classes), labels (N,)) -> (N,)`` and its output function."""

    name: str
    per_example: Callable[[jax.Array, jax.Array], jax.Array]
    output: str = "softmax"


COSTS: dict[str, CostLike] = {cost.name: cost for cost in (QuadraticCost, CrossEntropyCost)}


def resolve_cost(cost: str | CostLike) -> CostLike:
    """The cost object for a name in ``COSTS`` or a cost object itself."""
    if isinstance(cost, str):
        return COSTS[cost]
    return cost


def l2_penalty(network: Network) -> jax.Array:
    """``(1/2) sum_w w^2`` over every weight matrix (biases are not penalised)."""
    return 0.5 * sum(jnp.sum(layer["w"] ** 2) for layer in network.layers)


def make_objective(
    cost: str | CostLike,
    l2: float = 0.0,
    penalty: Callable[[Network, jax.Array, jax.Array], jax.Array] | None = None,
    dropout: float = 0.0,
) -> Callable[..., jax.Array]:
    """``objective(network, images (N, inputs), labels (N,), key=None) -> scalar``:

        C = (1/N) sum_x cost.per_example(z(x), label(x)) + l2 * (1/2) sum_w w^2 + penalty(network, images, labels)

    With ``dropout`` and a ``key`` (training), ``z`` comes from the network with dropout on its
    hidden layers; without a key the network computes as at evaluation. ``l2`` and ``dropout``
    may be traced values.
    """
    parts = make_objective_parts(cost, l2, penalty, dropout)
    return lambda network, images, labels, key=None: parts(network, images, labels, key)[0]


def make_objective_parts(cost, l2=0.0, penalty=None, dropout=0.0) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``parts(network, images, labels, key=None) -> (objective, cost)``: ``make_objective``'s
    value and, apart, its first term, the cost alone (what a record calls ``train_cost``)."""
    cost = resolve_cost(cost)

    def parts(network: Network, images: jax.Array, labels: jax.Array, key: jax.Array | None = None):
        check_images(network, images, cost.name)
        check_labels(network, images, labels, cost.name)
        alone = jnp.mean(cost.per_example(_forward(network, images, dropout, key), labels))
        value = alone
        if not (isinstance(l2, (int, float)) and l2 == 0):  # XLA cannot drop 0 * x (x may be NaN)
            value = value + l2 * l2_penalty(network)
        if penalty is not None:
            value = value + penalty(network, images, labels)
        return value, alone

    return parts


def quadratic_cost(network: Network, images: jax.Array, labels: jax.Array, l2: float = 0.0) -> jax.Array:
    """The lesson's quadratic cost (see ``QuadraticCost``) as a scalar."""
    return make_objective(QuadraticCost, l2)(network, images, labels)


def cross_entropy_cost(network: Network, images: jax.Array, labels: jax.Array, l2: float = 0.0) -> jax.Array:
    """Softmax cross-entropy (see ``CrossEntropyCost``) as a scalar."""
    return make_objective(CrossEntropyCost, l2)(network, images, labels)
