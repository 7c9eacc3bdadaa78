"""Configurations trained together (``jaxdigits.core.group``): groups share a program, layouts
never drop a configuration, and what one member costs in memory."""

from __future__ import annotations

import numpy as np

from jaxdigits.core.config import SweepGrid, TrainConfig, program_key
from jaxdigits.core.group import group_configs, member_bytes, plan_layout


def test_groups_share_a_program_and_layouts_never_drop_a_config():
    configs = SweepGrid(hidden=[(8,), (4, 4)], lr=[0.1, 1, 3], seed=[0, 1], optimizer=["sgd", "adam"]).configs()
    groups = group_configs(configs)
    assert len(groups) == 4 and all(len(g) == 6 for g in groups)
    assert all(len({(c.hidden, c.optimizer) for c in g}) == 1 for g in groups)
    assert sorted(map(str, (c for g in groups for c in g))) == sorted(map(str, configs))
    assert [len(g) for g in group_configs(configs, max_group_size=4)] == [4, 2] * 4
    for members, devices in [(groups[0], 1), (groups[0], 4), (groups[0][:5], 4), (groups[0][:3], 8)]:
        layout = plan_layout(members, devices)
        assert layout.index.shape[layout.shard_axis] % devices == 0
        assert sorted(layout.index[layout.index >= 0].tolist()) == list(range(len(members)))
        for (r, c), i in np.ndenumerate(layout.index):
            if i >= 0:
                assert layout.seeds[r] == members[i].seed
                assert layout.members[r, c] == i
    # 2 seeds x 3 rates on 4 devices: padding the rates (2 x 4) beats padding the seeds (4 x 3).
    assert plan_layout(groups[0], 4).index.shape == (2, 4) and plan_layout(groups[0], 4).shard_axis == 1


def test_member_bytes_counts_params_optimizer_state_and_batch_activations():
    state, activations = member_bytes(TrainConfig(), 784, 10)
    params = 4 * (784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10)
    assert params <= state < params + 64  # plain SGD: the rate and a step count beside the params
    assert activations == 2 * 10 * (16 + 16 + 10) * 4
    momentum, _ = member_bytes(TrainConfig(optimizer="momentum"), 784, 10)
    assert momentum >= state + params  # momentum keeps one velocity per parameter


def test_every_number_of_the_update_is_a_value_of_one_program():
    base = TrainConfig(hidden=(8,), optimizer="adam", l2=1e-4, dropout=0.2, augment="affine")
    same = [base.replace(lr=0.5, l2=3e-3, dropout=0.5, momentum=0.5, b1=0.8, b2=0.99, rotation=3.0, scale=0.0, shear=1.0,
                         shift=0.5, elastic_sigma=2.0, elastic_alpha=1.0, seed=9, epochs=7)]
    assert all(program_key(c) == program_key(base) for c in same)
    # Off costs nothing, so off and on are two programs; a structural field is one too.
    for other in (base.replace(l2=0.0), base.replace(dropout=0.0), base.replace(augment="elastic"), base.replace(hidden=(9,))):
        assert program_key(other) != program_key(base)


def test_rows_share_a_seed_and_the_augmentations_strengths_and_members_differ_in_the_update():
    configs = [TrainConfig(augment="affine", seed=s, rotation=r, lr=lr, l2=1e-3) for s in (0, 1) for r in (5.0, 10.0)
               for lr in (0.1, 1.0)]
    layout = plan_layout(configs)
    assert layout.index.shape == (4, 2)
    for row in layout.members:
        assert len({(configs[m].seed, configs[m].rotation) for m in row}) == 1
        assert [configs[m].lr for m in row] == [0.1, 1.0]
    plain = [c.replace(augment="none") for c in configs]  # strengths that are not used do not split rows
    assert plan_layout(plain).index.shape == (2, 4)


def test_a_factory_that_needs_a_python_rate_compiles_per_rate_and_a_traced_one_does_not():
    import optax

    from jaxdigits.core.optimizers import takes_traced_rate

    warm = lambda lr: optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, 10, 100))  # noqa: E731
    fixed = lambda lr: optax.sgd(float(lr))  # noqa: E731
    scaled = lambda lr: optax.adam(lambda t: lr * optax.cosine_decay_schedule(1.0, 100)(t))  # noqa: E731
    assert [takes_traced_rate(f) for f in (warm, fixed, scaled, "adam")] == [False, False, True, True]
    for factory, separate in ((warm, True), (fixed, True), (scaled, False)):
        a, b = TrainConfig(optimizer=factory, lr=0.1), TrainConfig(optimizer=factory, lr=0.3)
        assert (program_key(a) != program_key(b)) == separate
