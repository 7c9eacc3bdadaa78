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

# Schedules over a run of ``total`` steps, as optax schedules with peak 1: the step size at step
# ``t`` is ``lr * schedule(t)``, so the learning rate stays a traced value.
SCHEDULES: dict[str, Callable[[int], optax.Schedule] | None] = {
    "constant": None,
    "cosine": lambda total: optax.cosine_decay_schedule(1.0, decay_steps=total),
    "exponential": lambda total: optax.exponential_decay(1.0, transition_steps=total, decay_rate=0.01),
    "step": lambda total: optax.piecewise_constant_schedule(1.0, {total // 2: 0.1, (3 * total) // 4: 0.1}),
    "warmup_cosine": lambda total: optax.warmup_cosine_decay_schedule(0.0, 1.0, max(1, total // 20), total),
}


def make_optimizer(
    optimizer: str | Optimizer, learning_rate: float | jax.Array, schedule: str = "constant", total_steps: int = 1
) -> optax.GradientTransformation:
    """The optimizer (a name in ``OPTIMIZERS`` or a factory) with its learning rate in its state,
    its updates scaled by ``SCHEDULES[schedule](total_steps)`` at each step (a schedule's state is
    the same for any ``total_steps``)."""
    factory = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    scale = SCHEDULES[schedule]
    if scale is None:
        return optax.inject_hyperparams(lambda learning_rate: factory(learning_rate))(learning_rate=learning_rate)
    unit = scale(max(2, int(total_steps)))
    return optax.inject_hyperparams(lambda learning_rate: optax.chain(factory(learning_rate), optax.scale_by_schedule(unit)))(
        learning_rate=learning_rate)
