"""The network: parameters as a plain pytree and the pure functions that use them.

``params`` is a list with one ``{"w": (m, n) float32, "b": (n,) float32}`` dict per layer;
layer ``l`` maps ``a -> activation(a @ w + b)``. The last layer's pre-activations ``z`` are the
network's output; the cost decides how they become output activations (see ``costs.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Params = list  # list[dict[str, jax.Array]]

LESSON_SIZES = (784, 16, 16, 10)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def init_mlp(key: jax.Array, sizes: Sequence[int] = LESSON_SIZES) -> Params:
    """Random parameters for a fully connected network of the given layer sizes.

    Weights are drawn from N(0, 1/fan_in) and biases from N(0, 1), as in the lesson's network.
    Returns a list of ``{"w": (sizes[l], sizes[l+1]), "b": (sizes[l+1],)}`` float32 dicts.
    """
    sizes = tuple(int(s) for s in sizes)
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for layer_key, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
        w_key, b_key = jax.random.split(layer_key)
        params.append(
            {
                "w": jax.random.normal(w_key, (fan_in, fan_out), jnp.float32) / jnp.sqrt(fan_in),
                "b": jax.random.normal(b_key, (fan_out,), jnp.float32),
            }
        )
    return params


def layer_sizes(params: Params) -> tuple[int, ...]:
    """The layer sizes ``(784, ..., 10)`` of a parameter pytree."""
    return (params[0]["w"].shape[-2],) + tuple(layer["w"].shape[-1] for layer in params)


def forward(params: Params, images: jax.Array, activation: str = "sigmoid") -> jax.Array:
    """Output-layer pre-activations ``z``, shape ``(N, 10)``, for ``images`` of shape ``(N, 784)``.

    Every hidden layer applies ``activation`` (``sigmoid``, ``relu`` or ``tanh``); the output
    layer is left linear so that each cost can apply its own output function.
    """
    act = ACTIVATIONS[activation]
    a = images
    for layer in params[:-1]:
        a = act(a @ layer["w"] + layer["b"])
    return a @ params[-1]["w"] + params[-1]["b"]


def accuracy(params: Params, images: jax.Array, labels: jax.Array, activation: str = "sigmoid") -> jax.Array:
    """Fraction of ``images`` ``(N, 784)`` whose largest output is the label ``(N,)`` (a scalar)."""
    return jnp.mean(jnp.argmax(forward(params, images, activation), axis=-1) == labels)


OUTPUT_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "softmax": jax.nn.softmax,
}


def predict(
    params: Params, images: jax.Array, activation: str = "sigmoid", output: str = "sigmoid"
) -> tuple[jax.Array, jax.Array]:
    """The predicted digit ``(N,) int32`` and the 10 output activations ``(N, 10) float32``.

    ``output`` is the output layer's function: ``sigmoid`` for the quadratic cost (the lesson's),
    ``softmax`` for cross-entropy; each cost names its own (``costs.COSTS[name].output``).
    """
    activations = OUTPUT_FUNCTIONS[output](forward(params, images, activation))
    return jnp.argmax(activations, axis=-1).astype(jnp.int32), activations
