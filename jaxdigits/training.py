"""The training loop: a jit-compiled SGD step, one compiled ``lax.scan`` per epoch, evaluation.

The pieces are pure functions of a ``TrainConfig`` so that ``sweeps.py`` runs the very same
epoch under ``vmap``: the learning rate lives in the optimizer state (``optax.inject_hyperparams``),
so it is a traced value, and ``make_guarded_epoch`` keeps a run's last finite state when its cost
turns non-finite, which is how both ``train`` and a sweep detect divergence. Compiled programs
are cached by what they compute (``config.program_key`` and the arguments' shapes, dtypes and
shardings), never by names.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdigits.checkpoint import RunFolder
from jaxdigits.config import TrainConfig, program_key
from jaxdigits.costs import make_objective, resolve_cost
from jaxdigits.data import Dataset, load_mnist
from jaxdigits.errors import ConfigError
from jaxdigits.files import environment_info
from jaxdigits.model import Network, check_images, check_labels, correct_count, init_mlp
from jaxdigits.optimizers import make_optimizer
from jaxdigits.progress import Progress
from jaxdigits.records import run_record, run_status

# Accuracy is counted over slices of this many images, so that activations stay small.
EVAL_CHUNK = 5000


class StalledWarning(UserWarning):
    """A run ended at chance accuracy with its cost no longer falling (e.g. saturated sigmoids)."""


class TrainState(NamedTuple):
    """What one SGD step changes: the network and the optimizer state (learning rate inside)."""

    params: Network
    opt_state: optax.OptState


class TrainResult(NamedTuple):
    """What ``train`` returns: the final network, the per-epoch history, how the run ended
    (``status``: ``ok``, ``diverged`` or ``stalled``), the final state, the config and the
    run's record (the contents of ``run.json``)."""

    params: Network
    history: list[dict]
    status: str
    state: TrainState
    config: TrainConfig
    record: dict

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


def run_keys(seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(init_key, shuffle_key)`` for a seed; epoch ``k`` shuffles with ``fold_in(shuffle_key, k)``."""
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, shuffle_key


def check_dtype(config: TrainConfig) -> None:
    """float64 needs JAX's 64-bit mode; refuse it at the start rather than train in float32."""
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("dtype float64 needs JAX's 64-bit mode: set JAX_ENABLE_X64=1 in the environment (or call "
                          "jax.config.update('jax_enable_x64', True) before anything runs)")


def init_state(
    config: TrainConfig, init_key: jax.Array, inputs: int, classes: int, learning_rate: float | jax.Array | None = None
) -> TrainState:
    """A fresh network of ``inputs``-``config.hidden``-``classes`` (computing with the config's
    activation and its cost's output function) and its optimizer state. ``learning_rate``
    (default ``config.lr``) may be a traced value, so one compiled program can start many rates."""
    sizes = (inputs, *config.hidden, classes)
    network = init_mlp(init_key, sizes, config.activation, resolve_cost(config.cost).output, jnp.dtype(config.dtype), config.init)
    rate = config.lr if learning_rate is None else learning_rate
    return TrainState(network, make_optimizer(config.optimizer, rate, config.schedule).init(network))


def make_step(config: TrainConfig, total_steps: int = 1) -> Callable[..., tuple[TrainState, jax.Array]]:
    """``step(state, images (B, inputs), labels (B,), key=None) -> (state, cost)``: one
    gradient-descent step on the config's objective (cost, ``l2``, ``penalty``, dropout with
    ``key``) with its optimizer; ``total_steps`` is the run's length for a ``schedule``. The
    cost returned is the mini-batch's cost before the update."""
    objective = make_objective(config.cost, config.l2, config.penalty, config.dropout)
    # The rate given here is a placeholder: inject_hyperparams reads it from the state.
    optimizer = make_optimizer(config.optimizer, config.lr, config.schedule, total_steps)

    def step(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array | None = None) -> tuple[TrainState, jax.Array]:
        cost, grads = jax.value_and_grad(objective)(state.params, images, labels, key)
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


def pixel_values(dtype) -> np.ndarray:
    """``(256,)``: pixel byte ``u`` as the float ``load_mnist`` makes of it, ``dtype(u) / 255``."""
    dtype = np.dtype(dtype)
    return np.arange(256, dtype=np.uint8).astype(dtype) / dtype.type(255)


def as_inputs(images: jax.Array, dtype) -> jax.Array:
    """Images as the network's floats: uint8 pixels (how the data can sit on the device, a
    quarter of float32's memory) become exactly the floats ``load_mnist`` makes of them."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        # A table, not a division: XLA divides by multiplying with 1/255, which rounds 126 of
        # the 256 values differently from numpy's division.
        return jnp.asarray(pixel_values(dtype))[images]
    return images.astype(dtype)


def device_images(images: np.ndarray, dtype: str) -> np.ndarray:
    """What to put on the device: uint8 when every value is a pixel byte's float (MNIST's are),
    else ``images`` as ``dtype``. ``as_inputs`` turns either into the same floats."""
    images = np.asarray(images)
    pixels = np.clip(np.rint(images * np.float32(255)), 0, 255).astype(np.uint8)
    if np.array_equal(pixel_values(dtype)[pixels], images.astype(dtype, copy=False)):
        return pixels
    return images.astype(dtype, copy=False)


# Noise keys (augmentation, dropout) come from fold_in(epoch_key, NOISE_STREAM): a stream apart
# from the shuffle, so a run without noise draws exactly the same batches.
NOISE_STREAM = 0x6E6F6973


def augment_batch(config: TrainConfig, key: jax.Array, images: jax.Array) -> jax.Array:
    """The config's augmentation of ``images (B, side*side)``: a fresh distortion per image."""
    from jaxdigits import transforms

    affine = (config.rotation, config.scale, config.shear, config.shift)
    if config.augment == "affine":
        out = transforms.random_affine(key, images, *affine)
    else:
        out = transforms.augment(key, images, *affine, config.elastic_alpha, config.elastic_sigma)
    return out.astype(images.dtype)


def make_epoch(config: TrainConfig) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """``epoch(state, key, images (N, inputs), labels (N,)) -> (state, mean mini-batch cost)``.

    One ``lax.scan`` over the shuffled mini-batches; the data stays on the device (floats or
    uint8 pixels) and each step gathers its batch by index, converts it to floats and, with
    ``augment``, distorts it; with ``dropout`` each step gets its own dropout key.
    """
    noisy = config.augment != "none" or config.dropout > 0

    def epoch(state: TrainState, key: jax.Array, images: jax.Array, labels: jax.Array):
        order = batch_order(key, images.shape[0], config.batch_size)
        step = make_step(config, total_steps=config.epochs * order.shape[0])
        dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
        noise = jax.random.fold_in(key, NOISE_STREAM)

        def body(state, inputs):
            batch_indices, number = inputs if noisy else (inputs, None)
            x = as_inputs(images[batch_indices], dtype)
            augment_key = dropout_key = None
            if noisy:
                augment_key, dropout_key = jax.random.split(jax.random.fold_in(noise, number))
            if config.augment != "none":
                x = augment_batch(config, augment_key, x)
            return step(state, x, labels[batch_indices], dropout_key if config.dropout else None)

        state, costs = jax.lax.scan(body, state, (order, jnp.arange(order.shape[0])) if noisy else order)
        return state, jnp.mean(costs)

    return epoch


def make_guarded_epoch(config: TrainConfig):
    """``epoch(state, alive, key, images, labels) -> (state, alive, cost)``: ``make_epoch`` that
    keeps the last finite state once the cost turns NaN or infinite (``alive`` turns False and
    stays so). ``train`` runs it as it is; a sweep runs it under ``vmap``."""
    epoch_fn = make_epoch(config)

    def guarded(state: TrainState, alive: jax.Array, key: jax.Array, images: jax.Array, labels: jax.Array):
        new_state, cost = epoch_fn(state, key, images, labels)
        alive = alive & jnp.isfinite(cost)
        state = jax.tree_util.tree_map(lambda new, old: jnp.where(alive, new, old), new_state, state)
        return state, alive, cost

    return guarded


def compiled(build: Callable[[TrainConfig], Callable], config: TrainConfig, *args, **jit_options) -> Callable:
    """``jax.jit(build(config))`` compiled ahead of time for ``args``' shapes, dtypes and shardings.

    Compiled once per process and program: the key is ``build``, ``program_key(config)`` (your
    own cost, optimizer and penalty as the objects they are) and the arguments' specs, so runs
    that differ only in learning rate, seed or epochs reuse it, and a redefined cost does not.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    specs = tuple(
        jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), weak_type=getattr(x, "weak_type", False),
                             sharding=getattr(x, "sharding", None) if isinstance(x, jax.Array) else None)
        for x in leaves
    )
    return _compile(build, program_key(config), treedef, specs, tuple(sorted(jit_options.items())))


@functools.lru_cache(maxsize=64)
def _compile(build, program: TrainConfig, treedef, specs: tuple, jit_options: tuple):
    return _jitted(build, program, jit_options).lower(*jax.tree_util.tree_unflatten(treedef, specs)).compile()


def jitted(build: Callable[[TrainConfig], Callable], config: TrainConfig, **jit_options) -> Callable:
    """``jax.jit(build(config))``, one per program (the same key as ``compiled``); it compiles
    for each new argument shape, as ``jax.jit`` does (evaluation chunks of several sizes)."""
    return _jitted(build, program_key(config), tuple(sorted(jit_options.items())))


@functools.lru_cache(maxsize=64)
def _jitted(build, program: TrainConfig, jit_options: tuple):
    return jax.jit(build(program), **dict(jit_options))


def count_correct(network: Network, images: jax.Array, labels: jax.Array) -> jax.Array:
    """``correct_count`` of images stored as floats or uint8 pixels (see ``as_inputs``)."""
    return correct_count(network, as_inputs(images, network.dtype), labels)


_count_correct = jax.jit(count_correct)


def eval_chunks(images: jax.Array, labels: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    """``images``/``labels`` in slices of ``EVAL_CHUNK``, made once and reused every epoch."""
    return [(images[s : s + EVAL_CHUNK], labels[s : s + EVAL_CHUNK]) for s in range(0, images.shape[0], EVAL_CHUNK)]


def chunked_accuracy(count: Callable, params, chunks: Sequence[tuple[jax.Array, jax.Array]], fetch=np.asarray) -> np.ndarray:
    """Exact counts of ``count(params, images, labels)`` summed over ``chunks``, then divided."""
    correct = sum(fetch(count(params, images, labels)).astype(np.int64) for images, labels in chunks)
    return correct / sum(labels.shape[0] for _, labels in chunks)


def evaluate(network: Network, images: jax.Array, labels: jax.Array) -> float:
    """Accuracy of ``network`` on ``images (N, inputs)``, ``labels (N,)``, counted in chunks."""
    check_images(network, images, "evaluate")
    check_labels(network, images, labels, "evaluate")
    return float(chunked_accuracy(_count_correct, network, eval_chunks(jnp.asarray(images), jnp.asarray(labels))))


def chance_level(labels: np.ndarray) -> float:
    """The accuracy of always answering the most common class."""
    return float(np.bincount(np.asarray(labels)).max() / len(labels))


def format_epoch(record: dict, epochs: int) -> str:
    """The one line printed per epoch."""
    return (
        f"epoch {record['epoch']:>3}/{epochs}  cost {record['train_cost']:.4f}  "
        f"train {100 * record['train_accuracy']:.2f}%  test {100 * record['test_accuracy']:.2f}%  "
        f"{record['seconds']:.2f}s"
    )


def memory_estimate(config: TrainConfig, data: Dataset, members: int = 1) -> int:
    """Bytes a run of ``config`` on ``data`` needs at its peak, roughly: the data on the device,
    and per member the params with their gradients, updates and optimizer state (5 copies), one
    mini-batch's gathered inputs and its activations and their gradients, and one evaluation
    chunk's activations."""
    itemsize = np.dtype(config.dtype).itemsize
    sizes = (data.inputs, *config.hidden, data.num_classes)
    params = sum(m * n + n for m, n in zip(sizes[:-1], sizes[1:]))
    widths = sum(sizes[1:])
    per_member = 5 * params + config.batch_size * (data.inputs + 2 * widths) + EVAL_CHUNK * widths
    data_bytes = (len(data.train_images) + len(data.test_images)) * data.inputs
    return itemsize * (data_bytes + members * per_member)


def available_memory() -> int | None:
    """Bytes the default device can use: an accelerator's memory limit, or the host's available
    memory (``MemAvailable``) for a CPU; ``None`` when unknown."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(config: TrainConfig, data: Dataset, members: int = 1) -> None:
    """Refuse a batch size larger than the training set, and a run whose estimated memory
    (``memory_estimate``) exceeds what the device has, before anything is allocated."""
    if config.batch_size > len(data.train_images):
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(data.train_images)} training images")
    if config.augment != "none" and math.isqrt(data.inputs) ** 2 != data.inputs:
        raise ConfigError(f"augment {config.augment!r} distorts square images; these have {data.inputs} inputs")
    needed, available = memory_estimate(config, data, members), available_memory()
    if available is not None and needed > 0.8 * available:
        what = f"{members} configurations of " if members > 1 else ""
        raise ConfigError(
            f"{what}hidden {list(config.hidden)} at batch_size {config.batch_size} need about {needed / 2**30:.1f} GiB "
            f"and {jax.devices()[0].platform} has {available / 2**30:.1f} GiB available; use a smaller batch_size or "
            "narrower hidden layers" + (" (or a smaller --group-size)" if members > 1 else "")
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
    """Train the network ``config`` describes on ``data``; return it with its per-epoch history.

    ``data`` defaults to ``load_mnist(data_dir, config.dataset)``; with your own ``Dataset`` the
    network's input and output sizes follow it and ``config.dataset`` becomes its name. With
    ``out_dir``, a checkpoint is written atomically after every epoch, and ``resume=True``
    continues from the last one (bit-identical to an uninterrupted run; another config, epochs
    aside, or other data raises ``ConfigError``). An ``out_dir`` that holds another run raises
    ``RunFolderError`` unless ``overwrite``; one that another process is using, always. A cost
    that becomes NaN or infinite stops training: the result holds the last finite network and
    ``status == "diverged"``. A run that ends at chance accuracy with its cost no longer falling
    is ``"stalled"`` and warns (``StalledWarning``).
    """
    check_dtype(config)
    if data is None:
        data = load_mnist(data_dir, config.dataset)
    if config.dataset != data.name:  # your own arrays, or files that turned out to be another dataset
        config = config.replace(dataset=data.name)
    check_fits(config, data)
    folder = RunFolder(out_dir) if out_dir is not None else None
    data_info = data.describe() if folder is not None else None
    init_key, shuffle_key = run_keys(config.seed)
    state, history = init_state(config, init_key, data.inputs, data.num_classes), []
    if folder is not None:
        folder.claim(resume=resume, overwrite=overwrite)
    try:
        if folder is not None and resume:
            state, history = folder.load_training(config, template=state, data_info=data_info)
        return _train_loop(config, data, state, history, shuffle_key, folder, data_info, progress)
    finally:
        if folder is not None:
            folder.release()


def _train_loop(config, data, state, history, shuffle_key, folder, data_info, progress) -> TrainResult:
    train_x, train_y = jnp.asarray(device_images(data.train_images, config.dtype)), jnp.asarray(data.train_labels)
    chunks = {"train": eval_chunks(train_x, train_y),
              "test": eval_chunks(jnp.asarray(device_images(data.test_images, config.dtype)), jnp.asarray(data.test_labels))}
    alive = jnp.asarray(True)
    epoch_fn = compiled(make_guarded_epoch, config, state, alive, shuffle_key, train_x, train_y)
    with Progress(config.epochs, "epoch", "training", progress, initial=len(history)) as bar:
        for epoch in range(len(history) + 1, config.epochs + 1):
            start = time.perf_counter()
            state, alive, cost = epoch_fn(state, alive, jax.random.fold_in(shuffle_key, epoch), train_x, train_y)
            cost = float(cost)
            seconds = time.perf_counter() - start
            if not math.isfinite(cost):
                history.append({"epoch": epoch, "train_cost": cost, "diverged": True, "seconds": seconds})
                break
            history.append({
                "epoch": epoch, "train_cost": cost,
                "train_accuracy": float(chunked_accuracy(_count_correct, state.params, chunks["train"])),
                "test_accuracy": float(chunked_accuracy(_count_correct, state.params, chunks["test"])),
                "seconds": seconds,
            })
            if folder is not None:
                folder.save_training(config, state, history, data_info)
            bar.update()
            bar.write(format_epoch(history[-1], config.epochs))
    status = run_status(history, chance_level(data.train_labels))
    record = run_record(config, history, status)
    if status == "stalled":
        warnings.warn(
            f"the run stalled: training accuracy {100 * record['train_accuracy']:.1f}% is at chance and the cost "
            f"stopped falling at {record['train_cost']:.4g}; try a smaller lr", StalledWarning, stacklevel=3,
        )
    if folder is not None:
        folder.save_result(state.params, {**record, "data": data_info, "environment": environment_info()}, history)
    return TrainResult(state.params, history, status, state, config, record)


def params_to_numpy(network: Network) -> Network:
    """A copy of ``network`` with numpy arrays (for saving or comparing)."""
    return jax.tree_util.tree_map(np.asarray, network)
