"""Optimizers and schedules (``jaxdigits.core.optimizers``): each schedule's step sizes are
optax's, step by step."""

from __future__ import annotations

import chex
import jax
import optax
import pytest

import jaxdigits as jd
from tests.conftest import synthetic_dataset


OPTAX_SCHEDULES = {
    "cosine": lambda total: optax.cosine_decay_schedule(1.0, total),
    "exponential": lambda total: optax.exponential_decay(1.0, total, 0.01),
    "step": lambda total: optax.piecewise_constant_schedule(1.0, {total // 2: 0.1, 3 * total // 4: 0.1}),
    "warmup_cosine": lambda total: optax.warmup_cosine_decay_schedule(0.0, 1.0, max(1, total // 20), total),
}


@pytest.mark.parametrize("schedule", sorted(OPTAX_SCHEDULES))
def test_a_schedules_step_sizes_match_optax_step_by_step(schedule):
    data = synthetic_dataset(40, 5)
    total, lr = 40, 0.5
    config = jd.TrainConfig(schedule=schedule, lr=lr, optimizer="sgd", batch_size=10)
    state = jd.init_state(config, jd.run_keys(0)[0], 784, 10)
    step = jax.jit(jd.make_step(config, total_steps=total))
    objective = jd.make_objective("quadratic")
    reference = OPTAX_SCHEDULES[schedule](total)
    x, y = data.train_images[:10], data.train_labels[:10]
    for t in range(total):
        grads = jax.grad(objective)(state.params, x, y)
        new_state, _ = step(state, x, y)
        expected = jax.tree.map(lambda p, g: p - lr * reference(t) * g, state.params, grads)
        chex.assert_trees_all_close(new_state.params, expected, rtol=2e-5, atol=1e-6)
        state = new_state
