"""Configurations trained together (``jaxdigits.core.group``): groups share a program, layouts
never drop a configuration, and what one member costs in memory."""

from __future__ import annotations

import numpy as np

from jaxdigits.core.config import SweepGrid, TrainConfig
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
                assert layout.learning_rates[r, c] == np.float32(members[i].lr)
    # 2 seeds x 3 rates on 4 devices: padding the rates (2 x 4) beats padding the seeds (4 x 3).
    assert plan_layout(groups[0], 4).index.shape == (2, 4) and plan_layout(groups[0], 4).shard_axis == 1


def test_member_bytes_counts_params_optimizer_state_and_batch_activations():
    state, activations = member_bytes(TrainConfig(), 784, 10)
    params = 4 * (784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10)
    assert params <= state < params + 64  # plain SGD: the rate and a step count beside the params
    assert activations == 2 * 10 * (16 + 16 + 10) * 4
    momentum, _ = member_bytes(TrainConfig(optimizer="momentum"), 784, 10)
    assert momentum >= state + params  # momentum keeps one velocity per parameter
