"""Optimizers: named optax factories, and the one way a run builds its optimizer.

An optimizer is a function ``learning_rate -> optax.GradientTransformation``, like optax's own
``optax.sgd`` or ``optax.adam``; your own is any such function, e.g.
``lambda learning_rate: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))``,
schedules included (``optax.sgd(optax.cosine_decay_schedule(learning_rate, 6000))``).
``make_optimizer`` keeps the learning rate, and every other number of the update (``l2``,
``dropout``, ``momentum``, ``b1``, ``b2``), in the optimizer state (``optax.inject_hyperparams``),
so they are traced values: one compiled program trains every rate. A factory that needs its rate
as a Python number (``float(learning_rate)``, or an optax schedule that compares its peak, such
as ``optax.warmup_cosine_decay_schedule``) works too: it is given the rate as a number, and each
rate compiles a program of its own (``takes_traced_rate``).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxdigits.core.errors import ConfigError

Optimizer = Callable[..., optax.GradientTransformation]


def momentum(learning_rate, momentum=0.9) -> optax.GradientTransformation:
    """SGD with momentum: ``v <- momentum * v + g``, ``w <- w - learning_rate * v``."""
    return optax.sgd(learning_rate, momentum=momentum)


def adam(learning_rate, b1=0.9, b2=0.999) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) with moment decays ``b1`` and ``b2``: ``optax.adam``."""
    return optax.adam(learning_rate, b1=b1, b2=b2)


OPTIMIZERS: dict[str, Optimizer] = {"sgd": optax.sgd, "momentum": momentum, "adam": adam}
# The config fields a named optimizer takes besides the rate (all traced values).
OPTIMIZER_NUMBERS: dict[str, tuple[str, ...]] = {"sgd": (), "momentum": ("momentum",), "adam": ("b1", "b2")}
# Every number of the update, as the optimizer state holds it (``learning_rate`` is ``lr``).
STATE_NUMBERS = {"learning_rate": 0.1, "l2": 0.0, "dropout": 0.0, "momentum": 0.9, "b1": 0.9, "b2": 0.999}


def state_numbers(numbers: Mapping[str, float | jax.Array]) -> dict[str, float | jax.Array]:
    """The update's numbers, named as in the config (``lr``, ``l2``, ...), by the names the
    optimizer state holds them under (``learning_rate``, ``l2``, ...)."""
    return {("learning_rate" if name == "lr" else name): value for name, value in numbers.items()}

# Schedules over a run of ``total`` steps, as optax schedules with peak 1: the step size at step
# ``t`` is ``lr * schedule(t)``, so the learning rate stays a traced value.
SCHEDULES: dict[str, Callable[[int], optax.Schedule] | None] = {
    "constant": None,
    "cosine": lambda total: optax.cosine_decay_schedule(1.0, decay_steps=total),
    "exponential": lambda total: optax.exponential_decay(1.0, transition_steps=total, decay_rate=0.01),
    "step": lambda total: optax.piecewise_constant_schedule(1.0, {total // 2: 0.1, (3 * total) // 4: 0.1}),
    "warmup_cosine": lambda total: optax.warmup_cosine_decay_schedule(0.0, 1.0, max(1, total // 20), total),
}


@functools.lru_cache(maxsize=256)
def takes_traced_rate(optimizer: str | Optimizer) -> bool:
    """Whether ``optimizer`` builds and updates with its learning rate a traced value (found
    from shapes alone with ``jax.eval_shape``); a name always does."""
    if isinstance(optimizer, str):
        return True

    def one_update(rate):
        transformation = optimizer(rate)
        params = jnp.zeros(2)
        return transformation.update(params, transformation.init(params), params)[0]

    try:
        jax.eval_shape(one_update, jnp.float32(0.1))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, jax.errors.TracerIntegerConversionError):
        return False
    except Exception:  # any other failure is the factory's own; check_pieces names it
        return True
    return True


def _python_rate(optimizer, learning_rate) -> float:
    try:
        return float(learning_rate)
    except jax.errors.ConcretizationTypeError:
        name = getattr(optimizer, "__name__", type(optimizer).__name__)
        raise ConfigError(f"optimizer {name!r} needs its learning rate as a Python number, so the rate cannot be traced "
                          "(differentiated or vmapped); scale a traced rate yourself, e.g. lambda lr: "
                          "optax.adam(lambda t: lr * unit_schedule(t))") from None


def make_optimizer(
    optimizer: str | Optimizer, learning_rate: float | jax.Array, schedule: str = "constant", total_steps: int = 1,
    numbers: Mapping[str, float | jax.Array] | None = None,
) -> optax.GradientTransformation:
    """The optimizer (a name in ``OPTIMIZERS`` or a factory) with its learning rate and the
    update's other ``numbers`` (``l2``, ``dropout``, ``momentum``, ``b1``, ``b2``; defaults from
    ``STATE_NUMBERS``) in its state, ``state.hyperparams``, its updates scaled by
    ``SCHEDULES[schedule](total_steps)`` at each step (a schedule's state is the same for any
    ``total_steps``). A named optimizer takes the numbers it uses (``OPTIMIZER_NUMBERS``)."""
    factory = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    takes = OPTIMIZER_NUMBERS.get(optimizer, ()) if isinstance(optimizer, str) else ()
    fixed_rate = None if takes_traced_rate(optimizer) else _python_rate(optimizer, learning_rate)
    scale = SCHEDULES[schedule]
    unit = None if scale is None else scale(max(2, int(total_steps)))

    def build(learning_rate, l2, dropout, momentum, b1, b2):  # l2 and dropout are carried for the step
        given = {"momentum": momentum, "b1": b1, "b2": b2}
        inner = factory(learning_rate if fixed_rate is None else fixed_rate, **{name: given[name] for name in takes})
        return inner if unit is None else optax.chain(inner, optax.scale_by_schedule(unit))

    values = {**STATE_NUMBERS, **state_numbers({**(numbers or {}), "lr": learning_rate})}
    return optax.inject_hyperparams(build)(**values)
