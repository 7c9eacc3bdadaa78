"""The yardstick for a whole ``jaxdigits train`` run: the lesson network trained by a plain script.

What someone writes by hand in the manner of JAX's ``mnist_classifier_fromscratch.py``: read the
IDX files with numpy, a 784-16-16-10 sigmoid network with the lesson's initialisation, the
quadratic cost, plain SGD at lr 3.0 and batch 10, each epoch one ``lax.scan`` over a shuffled
permutation, and the test accuracy printed after every epoch. No checks, no checkpoints, no
records: ``jaxdigits train`` is measured against it as a whole process
(``docs/performance.md``), everything from start-up to exit included.

    python experiments/plain_train.py --data-dir path/to/mnist --epochs 12
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def read_idx(folder: Path, stem: str) -> np.ndarray:
    """One IDX file (plain or ``.gz``) as a numpy array."""
    path = next(p for p in (folder / stem, folder / f"{stem}.gz") if p.exists())
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def init(key, sizes=(784, 16, 16, 10)):
    """The lesson's initialisation: weights N(0, 1/fan_in), biases N(0, 1)."""
    params = []
    for m, n in zip(sizes[:-1], sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        params.append((jax.random.normal(kw, (m, n)) / jnp.sqrt(m), jax.random.normal(kb, (n,))))
    return params


def forward(params, x):
    """``sigmoid`` on every layer, as the lesson's network computes."""
    for w, b in params:
        x = jax.nn.sigmoid(x @ w + b)
    return x


def cost(params, x, y):
    """The quadratic cost ``(1/2n) sum ||y - a||^2``."""
    return 0.5 * jnp.mean(jnp.sum((forward(params, x) - jax.nn.one_hot(y, 10)) ** 2, axis=-1))


@jax.jit
def epoch(params, key, images, labels):
    """One epoch of SGD at lr 3.0, batch 10, as one ``lax.scan``."""
    order = jax.random.permutation(key, images.shape[0]).reshape(-1, 10)

    def step(params, batch):
        grads = jax.grad(cost)(params, images[batch], labels[batch])
        return jax.tree_util.tree_map(lambda p, g: p - 3.0 * g, params, grads), None

    return jax.lax.scan(step, params, order)[0]


@jax.jit
def accuracy(params, images, labels):
    return jnp.mean(jnp.argmax(forward(params, images), axis=-1) == labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("JAXDIGITS_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    train_x = jnp.asarray(read_idx(args.data_dir, "train-images-idx3-ubyte").reshape(-1, 784) / np.float32(255))
    train_y = jnp.asarray(read_idx(args.data_dir, "train-labels-idx1-ubyte").astype(np.int32))
    test_x = jnp.asarray(read_idx(args.data_dir, "t10k-images-idx3-ubyte").reshape(-1, 784) / np.float32(255))
    test_y = jnp.asarray(read_idx(args.data_dir, "t10k-labels-idx1-ubyte").astype(np.int32))
    key, params = jax.random.PRNGKey(0), init(jax.random.PRNGKey(1))
    for number in range(1, args.epochs + 1):
        params = epoch(params, jax.random.fold_in(key, number), train_x, train_y)
        print(f"epoch {number}: test accuracy {float(accuracy(params, test_x, test_y)):.4f}")


if __name__ == "__main__":
    main()
