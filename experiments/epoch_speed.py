"""How fast is one training epoch of the lesson's network, against a plain ``lax.scan`` epoch?

Times jaxdigits' compiled epoch (``jaxdigits.make_epoch``: optax optimizer with the learning rate
in its state, cost object, index gather) and, in the same run, a bare reference epoch written
the textbook way (sigmoid MLP, quadratic cost, ``p - lr * g``, one ``lax.scan``), both at batch
10 over the real training set, and prints the seconds per epoch of each and their ratio.

It also times augmented epochs against unaugmented ones, each augmentation drawn per image
inside the compiled epoch, for two networks: 784-100-10 at batch 64 (cosine schedule) and
784-800-10 at batch 128 (the network of the augmentation study); both ReLU, cross-entropy,
momentum. For each: no augmentation, ``affine``, ``elastic`` (with the affine, as the CLI's
``--augment elastic``) and ``elastic`` with the field as it was drawn before the noise lattice
(``previous_elastic_field``, for the comparison). The variants run in turn, round after round, so
load from other jobs falls on all of them; each ratio is the median over rounds of the epoch's
time over the unaugmented epoch's in the same round, in wall time and in this process's CPU time.
``train`` keeps the images on the device as uint8 pixels; every jaxdigits epoch here does too.

Last, the statistics of the elastic displacement for the documented settings (alpha 8, sigma 3
and Simard's alpha 34, sigma 4), for the field now and as drawn before (``field_statistics``).

    python experiments/epoch_speed.py --data-dir path/to/mnist [--repeats 5] [--skip-augment]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdigits as jd
from jaxdigits.core import epoch as epoch_module
from jaxdigits.core import transforms

NETWORKS = {
    "784-100-10, batch 64": jd.TrainConfig(hidden=(100,), activation="relu", init="he", cost="cross_entropy",
                                           optimizer="momentum", lr=0.05, batch_size=64, schedule="cosine", epochs=2),
    "784-800-10, batch 128": jd.TrainConfig(hidden=(800,), activation="relu", init="he", cost="cross_entropy",
                                            optimizer="momentum", lr=0.05, batch_size=128),
}
AUGMENTS = ("none", "affine", "elastic", "elastic, previous field")
FIELD_SETTINGS = ((8.0, 3.0), (34.0, 4.0))  # (alpha, sigma): the CLI's default and Simard's


def reference_epoch(params, key, images, labels, learning_rate=3.0, batch_size=10):
    """The plain epoch: shuffle, then one ``lax.scan`` of hand-written SGD steps."""

    def cost(params, x, y):
        a = x
        for layer in params:
            a = jax.nn.sigmoid(a @ layer["w"] + layer["b"])
        return jnp.mean(0.5 * jnp.sum((a - jax.nn.one_hot(y, 10)) ** 2, axis=-1))

    def step(params, indices):
        value, grads = jax.value_and_grad(cost)(params, images[indices], labels[indices])
        return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), value

    n = images.shape[0] // batch_size
    order = jax.random.permutation(key, images.shape[0])[: n * batch_size].reshape(n, batch_size)
    params, costs = jax.lax.scan(step, params, order)
    return params, jnp.mean(costs)


def time_epochs(epoch, state, images, labels, repeats: int) -> tuple[list[float], float]:
    """``(seconds of each of repeats compiled epochs, seconds compiling)``; a first run is untimed."""
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    compiled = jax.jit(epoch).lower(state, key, images, labels).compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(state, key, images, labels))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state, cost = compiled(state, jax.random.fold_in(key, i), images, labels)
        jax.block_until_ready(cost)
        times.append(time.perf_counter() - start)
    return times, compile_seconds


def seconds_per_epoch(epoch, state, images, labels, repeats: int) -> float:
    """Median wall time of ``repeats`` compiled epochs (compile excluded)."""
    return statistics.median(time_epochs(epoch, state, images, labels, repeats)[0])


def previous_elastic_field(key, num: int, alpha, sigma, side: int = transforms.DEFAULT_SIDE):
    """The elastic field as drawn before the noise lattice: ``2 * side**2`` uniforms per image
    from ``jax.random.uniform`` (threefry), smoothed on every pixel, ``alpha K u K^T`` with
    ``K = smoothing_matrix(sigma)``; ``(num, 2, side, side)``."""
    u = jax.random.uniform(key, (num * 2 * side * side,), jnp.float32, -1.0, 1.0).reshape(num, 2, side, side)
    k = transforms.smoothing_matrix(sigma, side)
    return alpha * jnp.einsum("ij,najk,lk->nail", k, u, k, precision=jax.lax.Precision.HIGHEST)


@contextlib.contextmanager
def previous_field():
    """While tracing inside this block, ``transforms.augment`` draws ``previous_elastic_field``."""
    current = transforms.elastic_field
    transforms.elastic_field = previous_elastic_field
    try:
        yield
    finally:
        transforms.elastic_field = current


def compile_epoch(config: jd.TrainConfig, augment: str, state, images, labels):
    """``make_epoch`` of ``config`` with ``augment`` (one of ``AUGMENTS``), compiled ahead of time."""
    previous = augment == "elastic, previous field"
    epoch = jd.make_epoch(config.replace(augment="elastic" if previous else augment))
    with previous_field() if previous else contextlib.nullcontext():
        return jax.jit(epoch).lower(state, jax.random.PRNGKey(0), images, labels).compile()


def interleaved_times(compiled: dict, state, images, labels, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(wall seconds, CPU seconds)] * repeats}``: each round runs every epoch once, in turn."""
    for epoch in compiled.values():  # a first, untimed run each
        jax.block_until_ready(epoch(state, jax.random.PRNGKey(0), images, labels))
    times = {name: [] for name in compiled}
    for i in range(repeats):
        for name, epoch in compiled.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(epoch(state, jax.random.PRNGKey(i + 1), images, labels))
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def augmentation_rows(config: jd.TrainConfig, data: jd.Dataset, pixels, labels, repeats: int) -> list[dict]:
    """One row per augmentation: median wall seconds, and median per-round ratios to ``none``."""
    state = jd.init_state(config, jd.run_keys(0)[0], data.inputs, data.num_classes)
    compiled = {augment: compile_epoch(config, augment, state, pixels, labels) for augment in AUGMENTS}
    times = interleaved_times(compiled, state, pixels, labels, repeats)

    def ratio(name: str, clock: int) -> float:
        return statistics.median(t[clock] / base[clock] for t, base in zip(times[name], times["none"]))

    return [{"augment": name, "seconds": statistics.median(t[0] for t in times[name]),
             "ratio_wall": ratio(name, 0), "ratio_cpu": ratio(name, 1)} for name in AUGMENTS]


def field_statistics(field, alpha: float, sigma: float, images: int = 4096, chunk: int = 512) -> dict:
    """Statistics of ``field(key, num, alpha, sigma)`` ``(num, 2, 28, 28)`` over ``images`` draws:
    the mean displacement, its spread (standard deviation, both axes pooled), the mean length
    ``|delta|``, the correlation of one component with itself 4 pixels along a row, and the
    excess kurtosis of the components inside the frame (pixels 9 to 18; 0 for a Gaussian)."""
    draw = jax.jit(field, static_argnums=1)
    parts = [np.asarray(draw(jax.random.fold_in(jax.random.PRNGKey(0), i), chunk, alpha, sigma), np.float64)
             for i in range(images // chunk)]
    d = np.concatenate(parts)
    lagged = np.corrcoef(d[..., :-4].ravel(), d[..., 4:].ravel())[0, 1]
    inside = d[:, :, 9:19, 9:19]
    kurtosis = ((inside - inside.mean()) ** 4).mean() / inside.var() ** 2 - 3
    return {"mean": d.mean(), "spread": d.std(), "mean_length": np.hypot(d[:, 0], d[:, 1]).mean(),
            "correlation_4px": lagged, "excess_kurtosis": kurtosis}


def print_augmentation(data: jd.Dataset, pixels, labels, repeats: int) -> None:
    load = os.getloadavg()[0]
    for name, config in NETWORKS.items():
        steps = len(data.train_images) // config.batch_size
        print(f"\n{name} ({steps} steps), augmented inside the compiled epoch, median of {repeats} interleaved rounds:")
        print(f"  {'augment':26s} {'s/epoch':>8s} {'ratio (wall)':>13s} {'ratio (CPU time)':>17s}")
        for row in augmentation_rows(config, data, pixels, labels, repeats):
            print(f"  {row['augment']:26s} {row['seconds']:8.3f} {row['ratio_wall']:13.2f} {row['ratio_cpu']:17.2f}")
    print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")


def print_field_statistics() -> None:
    print("\nelastic displacement (pixels; 4096 images), now and [as drawn before]:")

    def number(key: str, value: float) -> str:
        return f"{value:+.4f}" if key in ("mean", "excess_kurtosis") else f"{value:.4f}"

    for alpha, sigma in FIELD_SETTINGS:
        now, before = (field_statistics(f, alpha, sigma) for f in (transforms.elastic_field, previous_elastic_field))
        print(f"  alpha {alpha:g}, sigma {sigma:g}: " + ", ".join(
            f"{key.replace('_', ' ')} {number(key, now[key])} [{number(key, before[key])}]" for key in now))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX folder (else $JAXDIGITS_DATA_DIR)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-augment", action="store_true", help="time only the lesson's epoch")
    args = parser.parse_args(argv)
    try:
        data = jd.load_mnist(args.data_dir)
    except jd.JaxdigitsError as exc:
        print(f"epoch_speed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    pixels = jax.device_put(epoch_module.device_images(data.train_images, "float32"))  # uint8, as train keeps them
    images, labels = jax.device_put(data.train_images), jax.device_put(data.train_labels)
    config = jd.TrainConfig()
    state = jd.init_state(config, jd.run_keys(0)[0], data.inputs, data.num_classes)
    ours = seconds_per_epoch(jd.make_epoch(config), state, pixels, labels, args.repeats)
    plain = seconds_per_epoch(reference_epoch, state.params, images, labels, args.repeats)
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s)")
    print(f"jaxdigits epoch:       {ours:.3f} s  (784-16-16-10, batch 10, 6000 steps, uint8 data, median of {args.repeats})")
    print(f"plain lax.scan epoch:  {plain:.3f} s  (float32 data)")
    print(f"ratio jaxdigits/plain: {ours / plain:.2f}")
    if not args.skip_augment:
        print_augmentation(data, pixels, labels, args.repeats)
        print_field_statistics()
    return 0


if __name__ == "__main__":
    sys.exit(main())
