"""The training loop: a jit-compiled SGD step, one compiled ``lax.scan`` per epoch, evaluation.

The pieces are pure functions so that ``sweep.py`` can ``vmap`` the very same epoch over many
configurations: the learning rate lives in the optimizer state (``optax.inject_hyperparams``),
so it is a traced value, not a constant baked into the compiled program.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdigits import checkpoint
from jaxdigits.config import TrainConfig, validate_config
from jaxdigits.costs import mean_cost
from jaxdigits.data import Dataset, load_mnist
from jaxdigits.model import Params, accuracy, init_mlp


def _momentum(learning_rate: float) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=0.9)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": _momentum,
    "adam": optax.adam,
}


class TrainState(NamedTuple):
    """What one SGD step changes: the parameters and the optimizer state (learning rate inside)."""

    params: Params
    opt_state: optax.OptState


class TrainResult(NamedTuple):
    """What ``train`` returns: final params, per-epoch history and how the run ended."""

    params: Params
    history: list[dict]
    diverged: bool
    state: TrainState
    config: TrainConfig


def make_optimizer(name: str, learning_rate: float | jax.Array) -> optax.GradientTransformation:
    """The named optax optimizer with its learning rate kept in its state, where it can be traced."""
    return optax.inject_hyperparams(OPTIMIZERS[name])(learning_rate=learning_rate)


def run_keys(seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(init_key, shuffle_key)`` for a seed; epoch ``k`` shuffles with ``fold_in(shuffle_key, k)``."""
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, shuffle_key


def init_state(config: TrainConfig, init_key: jax.Array, learning_rate: float | jax.Array | None = None) -> TrainState:
    """Fresh parameters and optimizer state. ``learning_rate`` (default ``config.learning_rate``)
    may be a traced value, so one compiled program can initialise many rates under ``vmap``."""
    rate = config.learning_rate if learning_rate is None else learning_rate
    params = init_mlp(init_key, config.sizes)
    return TrainState(params, make_optimizer(config.optimizer, rate).init(params))


def make_step(config: TrainConfig) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """``step(state, images (B, 784), labels (B,)) -> (state, cost)``: one gradient-descent step.

    The cost returned is the mini-batch's cost before the update.
    """
    cost_fn = functools.partial(mean_cost, config.cost, activation=config.activation, l2=config.l2)
    # The rate given here is a placeholder: inject_hyperparams reads it from the state.
    optimizer = make_optimizer(config.optimizer, config.learning_rate)

    def step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, jax.Array]:
        cost, grads = jax.value_and_grad(cost_fn)(state.params, images, labels)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), cost

    return step


def batch_order(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """``(num_examples // batch_size, batch_size) int32``: a shuffled split into mini-batches.

    The last ``num_examples % batch_size`` examples of the permutation sit the epoch out.
    """
    num_batches = num_examples // batch_size
    order = jax.random.permutation(key, num_examples)[: num_batches * batch_size]
    return order.reshape(num_batches, batch_size)


def make_epoch(config: TrainConfig) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """``epoch(state, key, images (N, 784), labels (N,)) -> (state, mean mini-batch cost)``.

    One ``lax.scan`` over the shuffled mini-batches; the data stays on the device and each step
    gathers its batch by index.
    """
    step = make_step(config)

    def epoch(state: TrainState, key: jax.Array, images: jax.Array, labels: jax.Array):
        def body(state, batch_indices):
            return step(state, images[batch_indices], labels[batch_indices])

        state, costs = jax.lax.scan(body, state, batch_order(key, images.shape[0], config.batch_size))
        return state, jnp.mean(costs)

    return epoch


def compiled_epoch(config: TrainConfig, state: TrainState, key: jax.Array, images: jax.Array, labels: jax.Array):
    """The ahead-of-time compiled epoch for ``config`` and these argument shapes.

    Compiled once per process and program: the learning rate and the seed are values, not part
    of the program, so later runs that differ only in those (or repeat a config) reuse it.
    """
    leaves, treedef = jax.tree_util.tree_flatten((state, key, images, labels))
    shapes = tuple(jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), weak_type=getattr(x, "weak_type", False))
                   for x in leaves)
    return _compile_epoch(config.replace(learning_rate=1.0, seed=0, epochs=1), treedef, shapes)


@functools.lru_cache(maxsize=32)
def _compile_epoch(config: TrainConfig, treedef, shapes: tuple):
    return jax.jit(make_epoch(config)).lower(*jax.tree_util.tree_unflatten(treedef, shapes)).compile()


@functools.partial(jax.jit, static_argnames="activation")
def evaluate(params: Params, images: jax.Array, labels: jax.Array, activation: str = "sigmoid") -> jax.Array:
    """Accuracy (a scalar) of ``params`` on ``images (N, 784)``, ``labels (N,)``."""
    return accuracy(params, images, labels, activation)


def epoch_record(epoch: int, cost: float, params: Params, data: tuple, activation: str, seconds: float) -> dict:
    """One history entry: mean training cost, train and test accuracy, seconds of training."""
    train_x, train_y, test_x, test_y = data
    return {
        "epoch": epoch,
        "cost": cost,
        "train_accuracy": float(evaluate(params, train_x, train_y, activation)),
        "test_accuracy": float(evaluate(params, test_x, test_y, activation)),
        "seconds": seconds,
    }


def format_epoch(record: dict, epochs: int) -> str:
    """The one line printed per epoch."""
    return (
        f"epoch {record['epoch']:>3}/{epochs}  cost {record['cost']:.4f}  "
        f"train {100 * record['train_accuracy']:.2f}%  test {100 * record['test_accuracy']:.2f}%  "
        f"{record['seconds']:.2f}s"
    )


def train(
    config: TrainConfig = TrainConfig(),
    data: Dataset | None = None,
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train the network described by ``config``; return its params and per-epoch history.

    ``data`` defaults to ``load_mnist(data_dir, config.dataset)``. With ``out_dir``, a checkpoint
    is written atomically after every epoch, and ``resume=True`` continues from the last one (an
    interrupted and resumed run ends bit-identical to an uninterrupted one; resuming with another
    config, epochs aside, or other data raises ``ConfigError``). Without ``resume``, an ``out_dir``
    that holds another run raises ``RunFolderError`` unless ``overwrite``. A cost that becomes NaN
    or infinite stops training at that epoch: the result holds the last finite params, ``diverged``
    is True and the last history entry is ``{"epoch": k, "cost": nan, "diverged": True, ...}``.
    """
    if data is None:
        validate_config(config)
        data = load_mnist(data_dir, config.dataset)
    validate_config(config, num_train=len(data.train_images))
    run = checkpoint.RunFolder(out_dir) if out_dir is not None else None
    data_info = checkpoint.describe_data(data, config.dataset) if run is not None else None
    init_key, shuffle_key = run_keys(config.seed)
    state, history = init_state(config, init_key), []
    if run is not None:
        if resume:
            state, history = run.load_training(config, template=state, data_info=data_info)
        else:
            run.claim(overwrite=overwrite)
    arrays = tuple(jax.device_put(a) for a in data)
    train_x, train_y = arrays[0], arrays[1]
    epoch_fn = compiled_epoch(config, state, shuffle_key, train_x, train_y)

    diverged = False
    epochs = range(len(history) + 1, config.epochs + 1)
    with _progress_bar(epochs, progress) as bar:  # closed (and cleared) on Ctrl-C too
        for epoch in bar:
            start = time.perf_counter()
            new_state, cost = epoch_fn(state, jax.random.fold_in(shuffle_key, epoch), train_x, train_y)
            cost = float(cost)
            seconds = time.perf_counter() - start
            if not math.isfinite(cost):
                diverged = True
                history.append({"epoch": epoch, "cost": cost, "diverged": True, "seconds": seconds})
                break
            state = new_state
            history.append(epoch_record(epoch, cost, state.params, arrays, config.activation, seconds))
            if run is not None:
                run.save_training(config, state, history, data_info)
            if progress:
                bar.write(format_epoch(history[-1], config.epochs))
    if run is not None:
        run.save_result(config, state.params, history, diverged, data_info)
    return TrainResult(state.params, history, diverged, state, config)


def _progress_bar(epochs: range, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(epochs, desc="training", unit="epoch", disable=None if enabled else True, leave=False, dynamic_ncols=True)


def params_to_numpy(params: Params) -> Params:
    """A copy of ``params`` as numpy arrays (for saving or comparing)."""
    return jax.tree_util.tree_map(np.asarray, params)
