"""Training as pure functions of a ``TrainConfig``: the SGD step, one compiled epoch, a whole run.

``make_step`` is one gradient-descent step on the config's objective with its optimizer;
``make_epoch`` runs every mini-batch of a shuffled epoch inside one ``lax.scan``, with the data
on the device; ``make_guarded_epoch`` keeps a run's last finite state once its cost turns
non-finite (how divergence is detected, alone or under ``vmap``); ``make_train`` is a whole run
as one pure function, in the manner of PureJaxRL's ``make_train(config)``. The learning rate
lives in the optimizer state (``optax.inject_hyperparams``), so it is a traced value and one
compiled program trains every rate; so do ``l2``, ``dropout``, ``momentum``, ``b1`` and ``b2``
(``config.UPDATE_NUMBERS``), while the augmentation's strengths (``config.AUGMENT_NUMBERS``)
are values the epoch takes. Inside a program the config stands for its ``program_key``: the
numbers are read from the state and the arguments, never from the config.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdigits.core import transforms
from jaxdigits.core.config import AUGMENT_NUMBERS, UPDATE_NUMBERS, TrainConfig, numbers, program_key, switched_on
from jaxdigits.core.costs import make_objective_parts, resolve_cost
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.model import Network, init_mlp
from jaxdigits.core.optimizers import make_optimizer, takes_traced_rate


class TrainState(NamedTuple):
    """What one SGD step changes: the network and the optimizer state (learning rate inside)."""

    params: Network
    opt_state: optax.OptState


def run_keys(seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(init_key, shuffle_key)`` for a seed; epoch ``k`` shuffles with ``fold_in(shuffle_key, k)``."""
    if isinstance(seed, (int, np.integer)):
        if not 0 <= seed < 2**32:
            return _split_seed(seed)  # whatever JAX makes of other integers, op by op
        seed = np.uint32(seed)  # the same key as the Python int, up to 2**32 - 1
    return _compiled_split_seed(seed)


def _split_seed(seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, shuffle_key


_compiled_split_seed = jax.jit(_split_seed)  # one small program; op by op the seeding, split and unstacking compile five


def check_dtype(config: TrainConfig) -> None:
    """float64 needs JAX's 64-bit mode; refuse it at the start rather than train in float32."""
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("dtype float64 needs JAX's 64-bit mode: set JAX_ENABLE_X64=1 in the environment (or call "
                          "jax.config.update('jax_enable_x64', True) before anything runs)")


def check_pieces(config: TrainConfig, inputs: int, classes: int) -> None:
    """Refuse, in one line naming it, a cost whose ``per_example`` is not one number per example,
    a penalty that is not one number, or an optimizer factory that gives no optax
    ``GradientTransformation``: checked from shapes alone (``jax.eval_shape``) before anything
    compiles, instead of failing deep inside JAX or averaging a wrong shape silently."""
    cost, dtype = resolve_cost(config.cost), jnp.dtype(config.dtype)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    shape = _shape_of(f"cost {cost.name!r}", cost.per_example, jax.ShapeDtypeStruct((2, classes), dtype), labels)
    if shape != (2,):
        raise ConfigError(f"cost {cost.name!r}: per_example gave shape {shape} for 2 examples; it must give one number "
                          "per example, (N,)")
    if config.penalty is not None:
        sizes = (inputs, *config.hidden, classes)
        network = jax.eval_shape(lambda: init_mlp(jax.random.PRNGKey(0), sizes, config.activation, cost.output, dtype))
        name = getattr(config.penalty, "__name__", type(config.penalty).__name__)
        shape = _shape_of(f"penalty {name!r}", config.penalty, network, jax.ShapeDtypeStruct((2, inputs), dtype), labels)
        if shape != ():
            raise ConfigError(f"penalty {name!r} gave shape {shape}; it must give one number, e.g. a sum")
    if not isinstance(config.optimizer, str):
        made = config.optimizer(0.1)
        if not (callable(getattr(made, "init", None)) and callable(getattr(made, "update", None))):
            raise ConfigError(f"optimizer {getattr(config.optimizer, '__name__', config.optimizer)!r} returned "
                              f"{type(made).__name__}; a function of the learning rate must return an optax GradientTransformation")


def _shape_of(what: str, function: Callable, *args) -> tuple:
    try:
        return tuple(getattr(jax.eval_shape(function, *args), "shape", ()))
    except Exception as exc:  # the user's piece failing on arrays of the right shapes
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{what} fails on arrays of the shapes training gives it ({reason})") from None


def init_state(
    config: TrainConfig, init_key: jax.Array, inputs: int, classes: int, update: dict[str, float | jax.Array] | None = None,
) -> TrainState:
    """A fresh network of ``inputs``-``config.hidden``-``classes`` (computing with the config's
    activation and its cost's output function) and its optimizer state, which holds the update's
    numbers: the config's, or those in ``update`` (``{"lr": ..., "l2": ...}``). Any of them may
    be a traced value, so one compiled program can start many."""
    values = {**numbers(config, UPDATE_NUMBERS), **(update or {})}
    if not takes_traced_rate(config.optimizer):  # its rate must stay a Python number
        return _fresh_state(config, inputs, classes, init_key, values)
    # One compiled program per structure: drawn op by op, the initial weights cost a compilation each.
    return _init_program(program_key(config), inputs, classes)(init_key, values)


def _fresh_state(config: TrainConfig, inputs: int, classes: int, init_key: jax.Array, values: dict) -> TrainState:
    sizes = (inputs, *config.hidden, classes)
    network = init_mlp(init_key, sizes, config.activation, resolve_cost(config.cost).output, jnp.dtype(config.dtype), config.init)
    return TrainState(network, make_optimizer(config.optimizer, values["lr"], config.schedule, numbers=values).init(network))


@functools.lru_cache(maxsize=64)
def _init_program(program: TrainConfig, inputs: int, classes: int) -> Callable[[jax.Array, dict], TrainState]:
    return jax.jit(functools.partial(_fresh_state, program, inputs, classes))


def make_step(config: TrainConfig, total_steps: int = 1, parts: bool = False) -> Callable[..., tuple[TrainState, jax.Array]]:
    """``step(state, images (B, inputs), labels (B,), key=None) -> (state, objective)``: one
    gradient-descent step on the config's objective (cost, ``l2``, ``penalty``, dropout with
    ``key``) with its optimizer; ``total_steps`` is the run's length for a ``schedule``. The
    rate, ``l2``, the dropout rate and the optimizer's numbers are read from the state. The
    value returned is the mini-batch's objective before the update; with ``parts``, ``(2,)``:
    the objective and the cost alone."""
    # The numbers given here are placeholders: inject_hyperparams reads them from the state.
    optimizer = make_optimizer(config.optimizer, config.lr, config.schedule, total_steps, numbers(config, UPDATE_NUMBERS))

    def step(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array | None = None) -> tuple[TrainState, jax.Array]:
        held = state.opt_state.hyperparams
        objective = make_objective_parts(config.cost, held["l2"] if config.l2 else 0.0, config.penalty,
                                         held["dropout"] if config.dropout else 0.0)
        (value, cost), grads = jax.value_and_grad(objective, has_aux=True)(state.params, images, labels, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), jnp.stack([value, cost]) if parts else value

    return step


def batch_order(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """``(num_examples // batch_size, batch_size) int32``: a shuffled split into mini-batches.

    The last ``num_examples % batch_size`` examples of the permutation sit the epoch out.
    """
    num_batches = num_examples // batch_size
    order = jax.random.permutation(key, num_examples)[: num_batches * batch_size]
    return order.reshape(num_batches, batch_size)


def pixel_values(dtype) -> np.ndarray:
    """``(256,)``: pixel byte ``u`` as the float ``load_mnist`` makes of it, ``dtype(u) / 255``."""
    dtype = np.dtype(dtype)
    return np.arange(256, dtype=np.uint8).astype(dtype) / dtype.type(255)


def byte_fractions(values: jax.Array) -> jax.Array:
    """``values / 255`` as float32, for byte values ``values`` (float32 in [0, 255]); whole
    values give exactly numpy's ``float32(u) / 255``, blends of them agree to an ulp.

    In binary ``u / 255 = 0.uuu...``, the byte ``u`` repeated. ``q = u * 0x010101 * 2^-24`` is
    its first 24 bits, exact, and the rest lies strictly between half an ulp of ``q`` and one,
    so the nearest float32 is ``q + ulp(q)``: ``q + q * 2^-24`` rounds there (its addend is
    ``m / 2`` ulps for the mantissa ``m`` in (1, 2) of ``q``). No table and no division: XLA
    divides by multiplying with a rounded 1/255, which is off in 126 of the 256 values.
    """
    q = values.astype(jnp.float32) * jnp.float32(0x010101) * jnp.float32(2.0**-24)
    return q + q * jnp.float32(2.0**-24)


def as_inputs(images: jax.Array, dtype) -> jax.Array:
    """Images as the network's floats: uint8 pixels (how the data can sit on the device, a
    quarter of float32's memory) become exactly the floats ``load_mnist`` makes of them."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        if np.dtype(dtype) == np.float32:
            return byte_fractions(images)
        return jnp.asarray(pixel_values(dtype))[images]  # a table: other floats' own rounding
    return images.astype(dtype)


def device_images(images: np.ndarray, dtype: str) -> np.ndarray:
    """What to put on the device: uint8 when every value is a pixel byte's float (MNIST's are),
    else ``images`` as ``dtype``. ``as_inputs`` turns either into the same floats."""
    images = np.asarray(images)
    pixels, table = np.empty(images.shape, np.uint8), pixel_values(dtype)
    flat, out = images.reshape(-1), pixels.reshape(-1)
    for start in range(0, flat.size, 1 << 20):  # in slices that stay in cache: no big temporaries
        part, chunk = flat[start : start + (1 << 20)], out[start : start + (1 << 20)]
        if not (part.min() >= 0 and part.max() <= 1):
            return images.astype(dtype, copy=False)
        chunk[...] = np.rint(part * images.dtype.type(255))
        if not np.array_equal(table[chunk], part.astype(dtype, copy=False)):
            return images.astype(dtype, copy=False)
    return pixels


# Noise keys (augmentation, dropout) come from fold_in(epoch_key, NOISE_STREAM): a stream apart
# from the shuffle, so a run without noise draws exactly the same batches.
NOISE_STREAM = 0x6E6F6973


def augment_strengths(config: TrainConfig) -> dict[str, np.ndarray]:
    """The config's augmentation strengths as the values an epoch takes: ``{name: () dtype}``."""
    return {name: np.asarray(value, config.dtype) for name, value in numbers(config, AUGMENT_NUMBERS).items()}


def augment_batch(config: TrainConfig, key: jax.Array, images: jax.Array, strengths: dict | None = None,
                  dtype=None) -> jax.Array:
    """The config's augmentation of ``images (B, side*side)`` (floats, or uint8 pixels that
    become ``dtype``, default float32, as ``as_inputs`` makes them): a fresh distortion per
    image, of ``strengths`` (``AUGMENT_NUMBERS``, possibly traced; default the config's).

    float32 from pixels resamples the bytes themselves, then ``byte_fractions``: on this CPU
    a bilinear tap of a byte costs a third of a tap of a float from a table. Zero strengths
    still give exactly ``as_inputs``.
    """
    dtype = np.dtype(dtype or (images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else np.float32))
    bytes_ = jnp.issubdtype(images.dtype, jnp.integer) and dtype == np.float32
    images = images if bytes_ else as_inputs(images, dtype)
    s = numbers(config, AUGMENT_NUMBERS) if strengths is None else strengths
    affine = (s["rotation"], s["scale"], s["shear"], s["shift"])
    if config.augment == "affine":
        out = transforms.random_affine(key, images, *affine)
    else:
        out = transforms.augment(key, images, *affine, s["elastic_alpha"], s["elastic_sigma"])
    # A blend of equal bytes can round a hair above them (255.00003): clipped, floats stay in [0, 1].
    return byte_fractions(jnp.clip(out, 0, 255)) if bytes_ else out.astype(dtype)


def make_epoch(config: TrainConfig, parts: bool = False) -> Callable[..., tuple[TrainState, jax.Array]]:
    """``epoch(state, key, images (N, inputs), labels (N,), strengths=None) -> (state, mean
    mini-batch objective)`` (with ``parts``, ``(2,)``: the objective's mean and the cost's alone).

    One ``lax.scan`` over the shuffled mini-batches; the data stays on the device (floats or
    uint8 pixels) and each step gathers its batch by index, converts it to floats and, with
    ``augment``, distorts it by ``strengths`` (``{"rotation": ..., ...}``, possibly traced;
    default the config's); with ``dropout`` each step gets its own dropout key.
    """
    noisy = config.augment != "none" or config.dropout > 0

    def epoch(state: TrainState, key: jax.Array, images: jax.Array, labels: jax.Array, strengths: dict | None = None):
        images, labels = jnp.asarray(images), jnp.asarray(labels)  # numpy arrays too, outside jit
        order = batch_order(key, images.shape[0], config.batch_size)
        step = make_step(config, total_steps=config.epochs * order.shape[0], parts=parts)
        dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
        noise = jax.random.fold_in(key, NOISE_STREAM)

        def body(state, inputs):
            batch_indices, number = inputs if noisy else (inputs, None)
            x = images[batch_indices]
            augment_key = dropout_key = None
            if noisy:
                augment_key, dropout_key = jax.random.split(jax.random.fold_in(noise, number))
            if config.augment != "none":
                x = augment_batch(config, augment_key, x, strengths, dtype)
            else:
                x = as_inputs(x, dtype)
            return step(state, x, labels[batch_indices], dropout_key if config.dropout else None)

        state, costs = jax.lax.scan(body, state, (order, jnp.arange(order.shape[0])) if noisy else order)
        return state, jnp.mean(costs, axis=0)

    return epoch


def make_guarded_epoch(config: TrainConfig):
    """``epoch(state, alive, key, images, labels, strengths=None) -> (state, alive, costs (2,))``:
    ``make_epoch`` (with ``parts``: the mean objective and the mean cost alone) that keeps the
    last finite state once either turns NaN or infinite (``alive`` turns False and stays so).
    ``train`` runs it as it is; a sweep runs it under ``vmap``."""
    epoch_fn = make_epoch(config, parts=True)

    def guarded(state: TrainState, alive: jax.Array, key: jax.Array, images: jax.Array, labels: jax.Array,
                strengths: dict | None = None):
        new_state, cost = epoch_fn(state, key, images, labels, strengths)
        alive = alive & jnp.all(jnp.isfinite(cost))
        state = jax.tree_util.tree_map(lambda new, old: jnp.where(alive, new, old), new_state, state)
        return state, alive, cost

    return guarded


def make_train(config: TrainConfig) -> Callable[..., tuple[TrainState, jax.Array, jax.Array]]:
    """``train(seed, numbers, images (N, inputs), labels (N,), num_classes) -> (state, alive,
    objectives (epochs,))``: the config's whole run as one pure function, every epoch inside one
    ``lax.scan``, so it can be ``jit``-ted, ``vmap``-ped over seeds and numbers, or
    differentiated with respect to them. ``numbers`` is the learning rate, or a dict of any of
    ``UPDATE_NUMBERS`` and ``AUGMENT_NUMBERS`` (``{"lr": 0.1, "l2": 1e-4}``; the rest are the
    config's). It starts as ``train`` starts a run (``run_keys``, ``init_state``) and draws the
    same batches, epoch ``k`` with ``fold_in(shuffle_key, k)``; ``num_classes`` is a Python int.
    An ``l2`` or ``dropout`` given here is used even where the config has it off (0)."""

    def train(seed, numbers_or_rate, images, labels, num_classes: int):
        given = dict(numbers_or_rate) if isinstance(numbers_or_rate, dict) else {"lr": numbers_or_rate}
        unknown = sorted(set(given) - set(UPDATE_NUMBERS + AUGMENT_NUMBERS))
        if unknown:
            raise ConfigError(f"make_train: {unknown} are not numbers a run takes as values; give any of "
                              f"{', '.join(UPDATE_NUMBERS + AUGMENT_NUMBERS)}")
        guarded = make_guarded_epoch(switched_on(config, given))
        strengths = {**augment_strengths(config), **{k: v for k, v in given.items() if k in AUGMENT_NUMBERS}}
        init_key, shuffle_key = run_keys(seed)
        update = {k: v for k, v in given.items() if k in UPDATE_NUMBERS}  # the strengths go to the epochs
        state = init_state(config, init_key, images.shape[1], num_classes, update=update)

        def one_epoch(carry, epoch):
            state, alive = carry
            state, alive, cost = guarded(state, alive, jax.random.fold_in(shuffle_key, epoch), images, labels, strengths)
            return (state, alive), cost[0]

        (state, alive), costs = jax.lax.scan(one_epoch, (state, jnp.asarray(True)), jnp.arange(1, config.epochs + 1))
        return state, alive, costs

    return train
