"""The run schema (``jaxdigits.core.config``): one typed validation per field, and sweep grids
over any field."""

from __future__ import annotations

import pytest

import jaxdigits as jd
from jaxdigits.core.config import SweepGrid
from jaxdigits.core.errors import ConfigError


@pytest.mark.parametrize(
    "field, value, message",
    [("seed", 2**32, "at most"), ("seed", 1.5, "not an integer"), ("lr", True, "not a number"), ("lr", "1.5", "not a number"),
     ("epochs", float("inf"), "not an integer"), ("lr", 1e400, "finite"), ("lr", 0.0, "> 0"), ("hidden", 16, "not a list"),
     ("activation", "softsign", "not one of"), ("cost", 3, "not a name or an object"), ("batch_size", 0, ">= 1")],
)
def test_config_values_are_checked_with_one_typed_validation(field, value, message):
    with pytest.raises(jd.ConfigError, match=message):
        jd.TrainConfig(**{field: value})
    with pytest.raises(jd.ConfigError, match=f"^{field}: "):
        jd.SweepGrid({field: [value]})


def test_any_config_field_is_a_sweep_axis_and_hidden_is_never_ambiguous():
    grid = jd.SweepGrid(batch_size=[5, 10], dtype="float32", l2=[0.0, 1e-4])
    assert len(grid.configs()) == 4
    assert [c.hidden for c in jd.SweepGrid(hidden=[(16, 32)]).configs()] == [(16, 32)]
    assert [c.hidden for c in jd.SweepGrid(hidden=[(16,), (32,)]).configs()] == [(16,), (32,)]
    with pytest.raises(jd.ConfigError, match="ambiguous"):
        jd.SweepGrid(hidden=[16, 32])
    with pytest.raises(jd.ConfigError, match="unknown sweep axes"):
        jd.SweepGrid(seeds=[0, 1])


def test_grid_expands_every_combination_in_order():
    grid = SweepGrid(hidden=[(16, 16), (32,), ()], lr=[0.3, 3], seed=[0, 1], activation=["sigmoid", "relu"], epochs=5)
    configs = grid.configs()
    assert len(configs) == 3 * 2 * 2 * 2
    assert configs[0] == jd.TrainConfig(hidden=(16, 16), lr=0.3, seed=0, epochs=5)
    # Axes vary in the order of the config's fields, the last (seed) fastest.
    assert configs[1].seed == 1 and configs[2].lr == 3.0 and configs[4].activation == "relu"
    assert {c.hidden for c in configs} == {(16, 16), (32,), ()}
    assert len(SweepGrid(lr=[1, 1.0], seed=[0, 0]).configs()) == 1  # duplicates collapse
    assert SweepGrid(hidden=[(16, 16)]).values("hidden") == SweepGrid().values("hidden") == ((16, 16),)
    with pytest.raises(ConfigError, match="ambiguous"):  # one shape of two layers, or two shapes?
        SweepGrid(hidden=[16, 16])


def test_an_unhashable_cost_is_one_line_and_any_plain_dataset_name_is_taken():
    import dataclasses

    @dataclasses.dataclass
    class Mutable:
        name: str = "mine"
        output: str = "softmax"

        def per_example(self, z, labels):
            return z.sum(-1)

    with pytest.raises(ConfigError, match="cost: Mutable objects are not hashable.*frozen dataclass"):
        jd.TrainConfig(cost=Mutable())
    assert jd.TrainConfig(dataset="3-5-8").dataset == "3-5-8"
    with pytest.raises(ConfigError, match="letters, digits"):
        jd.TrainConfig(dataset="../etc")
