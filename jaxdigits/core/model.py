"""The network: a pytree of layer parameters that carries how it computes.

A ``Network`` holds one ``{"w": (m, n), "b": (n,)}`` dict per layer (its only pytree leaves) and,
as static metadata, its hidden ``activation`` and its ``output`` function. ``jax.grad``, optax and
``jax.tree`` take it as it is, and every evaluation reads the activation from the network itself,
so none can silently use the wrong one. Layer ``l`` maps ``a -> activation(a @ w + b)``; the last
layer's pre-activations ``z`` are the output, and ``output(z)`` its activations (``sigmoid`` for
the quadratic cost, ``softmax`` for cross-entropy).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdigits.core.errors import InputError

LESSON_SIZES = (784, 16, 16, 10)

# Hidden-layer activations by name: a network records its activation's name, so a checkpoint
# computes as it was trained. Add your own with ``register_activation``.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
    "identity": lambda x: x,
}


def register_activation(name: str, function: Callable[[jax.Array], jax.Array]) -> None:
    """Make ``function`` (elementwise, ``jax``-traceable) the activation called ``name``: usable
    in ``init_mlp``, ``TrainConfig(activation=name)``, sweeps and searches, and recorded by name
    in checkpoints (load them in a process that registered it too). Names are never rebound."""
    if not (isinstance(name, str) and name.isidentifier()):
        raise InputError(f"activation name {name!r}: use a plain identifier, e.g. 'my_gelu'")
    if not callable(function):
        raise InputError(f"activation {name!r}: {function!r} is not a function of an array")
    if name in ACTIVATIONS and ACTIVATIONS[name] is not function:
        raise InputError(f"activation {name!r} is taken; register yours under another name")
    ACTIVATIONS[name] = function


def _lesson_init(w, b, fan_in, fan_out):
    return w / jnp.sqrt(jnp.asarray(fan_in, w.dtype)), b


def _he_init(w, b, fan_in, fan_out):
    return w * jnp.sqrt(jnp.asarray(2.0 / fan_in, w.dtype)), jnp.zeros_like(b)


def _glorot_init(w, b, fan_in, fan_out):
    return w * jnp.sqrt(jnp.asarray(6.0 / (fan_in + fan_out), w.dtype)), jnp.zeros_like(b)


def _uniform_pm1(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


# name -> (the draw, (w, b, fan_in, fan_out) -> the layer's (w, b) from its share of the draw).
# lesson: w ~ N(0, 1/fan_in), b ~ N(0, 1) (the lesson's); he: w ~ N(0, 2/fan_in), b = 0;
# glorot: w ~ U(+-sqrt(6/(fan_in+fan_out))), b = 0.
INITS = {"lesson": (jax.random.normal, _lesson_init), "he": (jax.random.normal, _he_init),
         "glorot": (_uniform_pm1, _glorot_init)}

OUTPUTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "softmax": jax.nn.softmax,
}


@functools.partial(jax.tree_util.register_dataclass, data_fields=["layers"], meta_fields=["activation", "output"])
@dataclasses.dataclass(frozen=True)
class Network:
    """A fully connected network: ``layers`` (the parameters) plus how it computes.

    ``network[l]`` is layer ``l``'s ``{"w", "b"}`` dict and ``len(network)`` its number of layers.
    """

    layers: list
    activation: str = "sigmoid"
    output: str = "sigmoid"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation {self.activation!r} is not one of: {', '.join(ACTIVATIONS)}; "
                             "a function of your own needs jd.register_activation(name, function) first")
        if self.output not in OUTPUTS:
            raise InputError(f"output {self.output!r} is not one of: {', '.join(OUTPUTS)}")

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer sizes ``(inputs, hidden..., classes)``."""
        return (self.layers[0]["w"].shape[-2],) + tuple(layer["w"].shape[-1] for layer in self.layers)

    @property
    def dtype(self):
        return jnp.result_type(self.layers[0]["w"])


Params = Network  # the parameters of a network are the network


def init_mlp(
    key: jax.Array,
    sizes: Sequence[int] = LESSON_SIZES,
    activation: str = "sigmoid",
    output: str = "sigmoid",
    dtype=jnp.float32,
    init: str = "lesson",
) -> Network:
    """Random parameters for a fully connected network of the given layer sizes.

    ``init`` (see ``INITS``): ``lesson`` draws weights from N(0, 1/fan_in) and biases from
    N(0, 1), as in the lesson's network. Layer ``l`` holds ``{"w": (sizes[l], sizes[l+1]),
    "b": (sizes[l+1],)}`` of ``dtype``. The whole network is one draw from ``key``, cut in the
    order ``w0, b0, w1, b1, ...``: one sampler to compile, not two per layer (0.25 s against
    1.4 s for the lesson network on a CPU).
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise InputError(f"sizes {list(sizes)}: need an input and an output size, every layer at least 1 neuron")
    draw, scale = INITS[init]
    noise = draw(key, (sum(m * n + n for m, n in zip(sizes[:-1], sizes[1:])),), dtype)
    layers, start = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = noise[start : start + fan_in * fan_out].reshape(fan_in, fan_out)
        b = noise[start + fan_in * fan_out : start + fan_in * fan_out + fan_out]
        w, b = scale(w, b, fan_in, fan_out)
        layers.append({"w": w, "b": b})
        start += fan_in * fan_out + fan_out
    return Network(layers, activation, output)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_images(network: Network, images, where: str = "images") -> None:
    """Refuse images that are not ``(N, inputs)`` (or one example, ``(inputs,)``) floats for
    ``network``, in one line."""
    if not isinstance(network, Network):
        raise InputError(
            f"{where}: expected a jaxdigits Network (from init_mlp or load_params), got {type(network).__name__}"
        )
    shape, dtype = np.shape(images), jnp.result_type(images)
    inputs = network.sizes[0]
    if len(shape) not in (1, 2) or shape[-1] != inputs:
        hint = "; flatten them with images.reshape(len(images), -1)" if len(shape) > 2 else ""
        raise InputError(f"{where}: images have shape {shape}, expected (N, {inputs}) or one image ({inputs},) "
                         f"for this network{hint}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(f"{where}: images are {dtype}, expected floats in [0, 1] (e.g. images / 255)")


def check_labels(network: Network, images, labels, where: str = "labels") -> None:
    """Refuse labels that are not ``(N,)`` integer classes ``0..classes-1`` matching ``images``."""
    shape, dtype = np.shape(labels), jnp.result_type(labels)
    classes = network.sizes[-1]
    if len(shape) == 2 and shape[1] == classes:
        raise InputError(f"{where}: labels look one-hot {shape}; give class indices (N,), e.g. labels.argmax(-1)")
    one = len(np.shape(images)) == 1  # one example: one label, a scalar
    if (one and shape != ()) or (not one and (len(shape) != 1 or shape[0] != np.shape(images)[0])):
        expected = "(), one class" if one else f"({np.shape(images)[0]},): one class per image"
        raise InputError(f"{where}: labels have shape {shape}, expected {expected}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise InputError(f"{where}: labels are {dtype}, expected integer classes 0..{classes - 1}")
    if _is_concrete(labels) and (one or shape[0]):
        # numpy, not jnp: inside a trace (jit, scan, vmap) jnp.min of a concrete array is a tracer
        values = np.asarray(labels)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= classes:
            raise InputError(f"{where}: label {high if high >= classes else low} is outside 0..{classes - 1}")


def forward(network: Network, images: jax.Array) -> jax.Array:
    """Output-layer pre-activations ``z (N, classes)`` for ``images (N, inputs)`` (one image
    ``(inputs,)`` gives ``(classes,)``, so ``jax.vmap``, ``jax.jacrev`` and per-example
    gradients work over single images).

    Every hidden layer applies ``network.activation``; the output layer is left linear so that
    each cost can apply its own output function.
    """
    check_images(network, images, "forward")
    return _forward(network, images)


def _forward(network: Network, images: jax.Array, dropout: float = 0.0, key: jax.Array | None = None) -> jax.Array:
    """``z``; with ``dropout`` (a number, possibly traced) and a ``key`` (training only), each
    hidden activation is zeroed with probability ``dropout`` and the rest scaled by ``1 / (1 - dropout)``."""
    act = ACTIVATIONS[network.activation]
    a = images
    dropping = key is not None and not (isinstance(dropout, (int, float)) and dropout == 0)
    for number, layer in enumerate(network.layers[:-1]):
        a = act(a @ layer["w"] + layer["b"])
        if dropping:
            keep = jax.random.bernoulli(jax.random.fold_in(key, number), 1.0 - dropout, a.shape)
            a = jnp.where(keep, a * (1.0 / (1.0 - dropout)), 0.0)  # a scalar division (see lattice_kernel)
    return a @ network.layers[-1]["w"] + network.layers[-1]["b"]


def layer_activations(network: Network, images: jax.Array) -> list[jax.Array]:
    """Every layer's activations for ``images (N, inputs)``: the input, each hidden layer's
    ``(N, width)``, and the output activations ``output(z) (N, classes)``."""
    check_images(network, images, "layer_activations")
    act = ACTIVATIONS[network.activation]
    values = [images]
    for layer in network.layers[:-1]:
        values.append(act(values[-1] @ layer["w"] + layer["b"]))
    values.append(OUTPUTS[network.output](values[-1] @ network.layers[-1]["w"] + network.layers[-1]["b"]))
    return values


def predict(network: Network, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The predicted class ``(N,) int32`` and the output activations ``(N, classes)`` (one image
    ``(inputs,)``: a scalar class and ``(classes,)``)."""
    check_images(network, images, "predict")
    activations = OUTPUTS[network.output](_forward(network, images))
    return jnp.argmax(activations, axis=-1).astype(jnp.int32), activations


def correct_count(network: Network, images: jax.Array, labels: jax.Array) -> jax.Array:
    """How many of ``images (N, inputs)`` have their largest output at the label ``(N,)``."""
    return jnp.sum(jnp.argmax(_forward(network, images), axis=-1) == labels)


def accuracy(network: Network, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of ``images (N, inputs)`` whose largest output is the label ``(N,)`` (a scalar)."""
    check_images(network, images, "accuracy")
    check_labels(network, images, labels, "accuracy")
    return correct_count(network, images, labels) / np.shape(labels)[0]
