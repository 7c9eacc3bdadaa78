"""How fast is one training epoch of the lesson's network, against a plain ``lax.scan`` epoch?

Times jaxdigits' compiled epoch (``jaxdigits.make_epoch``: optax optimizer with the learning rate
in its state, cost object, index gather) and, in the same run, a bare reference epoch written
the textbook way (sigmoid MLP, quadratic cost, ``p - lr * g``, one ``lax.scan``), both at batch
10 over the real training set, and prints the seconds per epoch of each and their ratio.

It also times an augmented epoch against an unaugmented one for 784-800-10 at batch 128 (the
network of the augmentation study), each augmentation drawn per image inside the compiled epoch.
``train`` keeps the images on the device as uint8 pixels; both jaxdigits epochs here do too.

    python experiments/epoch_speed.py --data-dir path/to/mnist [--repeats 5] [--skip-augment]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxdigits as jd
from jaxdigits.core import epoch as epoch_module


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
        base = jd.TrainConfig(hidden=(800,), activation="relu", init="he", cost="cross_entropy", optimizer="momentum",
                              lr=0.05, batch_size=128)
        state = jd.init_state(base, jd.run_keys(0)[0], data.inputs, data.num_classes)
        times = {augment: seconds_per_epoch(jd.make_epoch(base.replace(augment=augment)), state, pixels, labels, args.repeats)
                 for augment in ("none", "affine", "elastic")}
        print(f"784-800-10, batch 128, 468 steps: no augmentation {times['none']:.3f} s, affine {times['affine']:.3f} s, "
              f"elastic {times['elastic']:.3f} s per epoch")
        print(f"ratio augmented/unaugmented: affine {times['affine'] / times['none']:.2f}, "
              f"elastic {times['elastic'] / times['none']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
