"""The one training loop (``jaxdigits.driver``): a group run with ``run_group`` gives each member
the numbers of training it alone, optimizer state and uneven blocks included."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits.core.config import SweepGrid
from jaxdigits.core.group import group_configs, plan_layout
from jaxdigits.devices import config_mesh
from jaxdigits.driver import put_data, run_group
from jaxdigits.records import format_table, ranked
from tests.conftest import synthetic_dataset
from tests.helpers import DATA, assert_matches_train


def test_optimizer_state_and_uneven_blocks_match_training_alone():
    # adam keeps per-parameter state; 2 rates for one seed and 1 for another make an uneven
    # rectangle with a filler cell.
    configs = SweepGrid(hidden=[(8,)], lr=[0.01, 0.1], seed=[3], optimizer="adam", epochs=2, dataset=DATA.name).configs()
    configs += SweepGrid(hidden=[(8,)], lr=[0.03], seed=[4], optimizer="adam", epochs=2, dataset=DATA.name).configs()
    mesh = config_mesh()
    (group,) = group_configs(configs)
    assert (plan_layout(group).index == [[0, 1], [2, -1]]).all()
    for result in run_group(group, put_data(DATA, mesh), mesh=mesh, every_epoch=("test",)):
        assert_matches_train(result.record)


# --- validation: selection, early stopping, rankings that never read the test set -------------

VALIDATION_DATA = synthetic_dataset(300, 80)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def measured(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_the_held_out_images_are_never_trained_on():
    # Training with a split is bit for bit training on the first N - n images alone.
    config = jd.TrainConfig(hidden=(16,), lr=1.0, epochs=2, batch_size=10)
    held = jd.train(config.replace(validation=100), VALIDATION_DATA)
    alone = jd.train(config, dataclasses.replace(VALIDATION_DATA, train_images=VALIDATION_DATA.train_images[:200],
                                                 train_labels=VALIDATION_DATA.train_labels[:200]))
    for a, b in zip(leaves(held.state), leaves(alone.state)):
        np.testing.assert_array_equal(a, b)
    assert held.record["train_examples"] == 200 and held.record["validation_examples"] == 100


def test_history_and_record_carry_validation_figures():
    result = jd.train(jd.TrainConfig(hidden=(16,), lr=1.0, epochs=3, validation=100), VALIDATION_DATA)
    assert [set(h) for h in result.history] == [{"epoch", "train_cost", "train_objective", "train_accuracy", "validation_accuracy",
                                                 "validation_cost", "test_accuracy", "seconds"}] * 3
    network = jd.Network(result.params.layers, result.params.activation, result.params.output)
    split = VALIDATION_DATA.held_out(100)
    assert result.history[-1]["validation_accuracy"] == jd.evaluate(network, split.validation_images, split.validation_labels)
    cost = jd.quadratic_cost(network, split.validation_images, split.validation_labels)
    assert result.history[-1]["validation_cost"] == pytest.approx(float(cost), rel=1e-5)
    record = result.record
    assert record["validation"] == 100 and record["validation_accuracy_curve"] == [h["validation_accuracy"] for h in result.history]


def test_select_best_keeps_the_network_of_the_best_validation_epoch():
    config = jd.TrainConfig(hidden=(16,), lr=3.0, epochs=6, validation=100, select="best")
    result = jd.train(config, VALIDATION_DATA)
    scores = [h["validation_accuracy"] for h in result.history]
    chosen = int(np.argmax(scores)) + 1  # the first epoch reaching the best
    assert result.record["selected_epoch"] == chosen
    assert result.record["selected_test_accuracy"] == result.history[chosen - 1]["test_accuracy"]
    assert jd.evaluate(result.params, VALIDATION_DATA.test_images, VALIDATION_DATA.test_labels) == result.record["selected_test_accuracy"]
    # the same run kept to its last epoch differs exactly when the best epoch is not the last
    last = jd.train(config.replace(select="last"), VALIDATION_DATA)
    assert (chosen == 6) == all(np.array_equal(a, b) for a, b in zip(leaves(result.params), leaves(last.params)))


def test_resume_with_a_split_and_select_best_is_bit_identical(tmp_path):
    config = jd.TrainConfig(hidden=(16,), lr=3.0, epochs=4, validation=100, select="best")
    jd.train(config.replace(epochs=2), VALIDATION_DATA, out_dir=tmp_path / "run")
    resumed = jd.train(config, VALIDATION_DATA, out_dir=tmp_path / "run", resume=True)
    straight = jd.train(config, VALIDATION_DATA)
    for a, b in zip(leaves((resumed.state, resumed.params)), leaves((straight.state, straight.params))):
        np.testing.assert_array_equal(a, b)
    assert measured(resumed.history) == measured(straight.history)
    saved, _ = jd.load_params(tmp_path / "run")
    for a, b in zip(leaves(saved), leaves(straight.params)):
        np.testing.assert_array_equal(a, b)


def test_patience_stops_a_run_that_no_longer_improves():
    config = jd.TrainConfig(hidden=(16,), lr=1e-7, epochs=8, validation=100, patience=2)
    with pytest.warns(jd.StalledWarning):
        result = jd.train(config, VALIDATION_DATA)
    # a rate this small never improves on epoch 1: the run stops two epochs later, not diverged
    # (at chance with a flat cost it is stalled, as it is)
    assert len(result.history) == 3 and result.record["epochs_completed"] == 3
    assert result.status == "stalled" and result.record["diverged_epoch"] is None


def test_patience_stops_members_of_a_group_one_by_one():
    swept = jd.sweep(data=VALIDATION_DATA, hidden=[(16,)], lr=[1e-7, 3.0], epochs=6, validation=100, patience=2)
    slow, fast = swept.records
    assert slow["epochs_completed"] == 3 and slow["status"] == "stalled" and slow["diverged_epoch"] is None
    alone = jd.train(jd.TrainConfig(hidden=(16,), lr=3.0, epochs=6, validation=100, patience=2), VALIDATION_DATA)
    assert fast["epochs_completed"] == alone.record["epochs_completed"]


def test_a_sweep_ranks_by_validation_and_never_reads_the_test_set():
    grid = dict(hidden=[(16,)], lr=[0.1, 1.0, 3.0], seed=[0, 1], epochs=3, validation=100)
    honest = jd.sweep(data=VALIDATION_DATA, **grid)
    rng = np.random.default_rng(1)
    shuffled = dataclasses.replace(VALIDATION_DATA, test_labels=rng.permutation(VALIDATION_DATA.test_labels))
    tampered = jd.sweep(data=shuffled, **grid)
    assert [r["id"] for r in ranked(honest.records)] == [r["id"] for r in ranked(tampered.records)]
    assert [r["selected_validation_accuracy"] for r in honest.records] == [r["selected_validation_accuracy"] for r in tampered.records]
    assert [r["test_accuracy"] for r in honest.records] != [r["test_accuracy"] for r in tampered.records]
    assert format_table(honest.records).splitlines()[-1].startswith("(ranked by validation accuracy")
    assert "best by validation accuracy" in honest.summary()


def test_selection_without_a_split_and_a_split_too_large_are_refused_in_one_line():
    with pytest.raises(jd.ConfigError, match="hold out a validation split"):
        jd.train(jd.TrainConfig(select="best", epochs=1), VALIDATION_DATA)
    with pytest.raises(jd.ConfigError, match="hold out a validation split"):
        jd.sweep(data=VALIDATION_DATA, patience=[2], epochs=1)
    with pytest.raises(jd.ConfigError, match="validation 300: hold out fewer than the 300 training images"):
        jd.train(jd.TrainConfig(validation=300, epochs=1), VALIDATION_DATA)
    own = dataclasses.replace(VALIDATION_DATA, validation_images=VALIDATION_DATA.test_images, validation_labels=VALIDATION_DATA.test_labels)
    with pytest.raises(jd.ConfigError, match="validation arrays of its own"):
        jd.train(jd.TrainConfig(validation=10, epochs=1), own)


def test_a_dataset_with_its_own_validation_arrays_is_used_as_it_is(tmp_path):
    own = jd.Dataset(VALIDATION_DATA.train_images[:200], VALIDATION_DATA.train_labels[:200], VALIDATION_DATA.test_images, VALIDATION_DATA.test_labels,
                     validation_images=VALIDATION_DATA.train_images[200:], validation_labels=VALIDATION_DATA.train_labels[200:])
    config = jd.TrainConfig(hidden=(16,), lr=1.0, epochs=2)
    mine, split = jd.train(config, own, out_dir=tmp_path / "run"), jd.train(config.replace(validation=100), VALIDATION_DATA)
    assert [h["validation_accuracy"] for h in mine.history] == [h["validation_accuracy"] for h in split.history]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["validation_examples"] == 100


@pytest.mark.parametrize("config", [jd.TrainConfig(optimizer="adam", lr=3.0, epochs=2),
                                    jd.TrainConfig(lr=1e30, epochs=2), jd.TrainConfig(lr=1e30, epochs=1)])
def test_a_short_run_that_ends_at_chance_is_not_called_ok(config):
    with pytest.warns(jd.StalledWarning):
        result = jd.train(config, VALIDATION_DATA)
    assert result.status == "stalled"
