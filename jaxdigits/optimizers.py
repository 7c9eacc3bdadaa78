"""Optimizers: named optax factories, and the one way a run builds its optimizer.

An optimizer is a function ``learning_rate -> optax.GradientTransformation``, like optax's own
``optax.sgd`` or ``optax.adam``; your own is any such function, e.g.
``lambda learning_rate: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))``,
schedules included (``optax.sgd(optax.cosine_decay_schedule(learning_rate, 6000))``).
``make_optimizer`` keeps the learning rate in the optimizer state (``optax.inject_hyperparams``),
so it is a traced value: one compiled program trains every rate.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

Optimizer = Callable[..., optax.GradientTransformation]


def momentum(learning_rate) -> optax.GradientTransformation:
    """SGD with momentum 0.9."""
    return optax.sgd(learning_rate, momentum=0.9)


OPTIMIZERS: dict[str, Optimizer] = {"sgd": optax.sgd, "momentum": momentum, "adam": optax.adam}


def make_optimizer(optimizer: str | Optimizer, learning_rate: float | jax.Array) -> optax.GradientTransformation:
    """The optimizer (a name in ``OPTIMIZERS`` or a factory) with its learning rate in its state."""
    factory = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    return optax.inject_hyperparams(lambda learning_rate: factory(learning_rate))(learning_rate=learning_rate)
