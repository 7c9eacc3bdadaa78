"""Honest model selection: a validation split held out of the training set, never trained on;
selection, early stopping and every ranking read it and never the test set."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits.records import format_table, ranked, validation_fields
from tests.conftest import synthetic_dataset

DATA = synthetic_dataset(300, 80)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def measured(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_the_split_is_the_last_n_training_images_and_disjoint_from_training():
    split = DATA.held_out(100)
    np.testing.assert_array_equal(split.train_images, DATA.train_images[:200])
    np.testing.assert_array_equal(split.validation_images, DATA.train_images[200:])
    np.testing.assert_array_equal(split.validation_labels, DATA.train_labels[200:])
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert not rows(split.train_images) & rows(split.validation_images)
    assert DATA.held_out(0) is DATA and split.describe()["validation_examples"] == 100


def test_the_held_out_images_are_never_trained_on():
    # Training with a split is bit for bit training on the first N - n images alone.
    config = jd.TrainConfig(hidden=(16,), lr=1.0, epochs=2, batch_size=10)
    held = jd.train(config.replace(validation=100), DATA)
    alone = jd.train(config, dataclasses.replace(DATA, train_images=DATA.train_images[:200],
                                                 train_labels=DATA.train_labels[:200]))
    for a, b in zip(leaves(held.state), leaves(alone.state)):
        np.testing.assert_array_equal(a, b)
    assert held.record["train_examples"] == 200 and held.record["validation_examples"] == 100


def test_history_and_record_carry_validation_figures():
    result = jd.train(jd.TrainConfig(hidden=(16,), lr=1.0, epochs=3, validation=100), DATA)
    assert [set(h) for h in result.history] == [{"epoch", "train_cost", "train_accuracy", "validation_accuracy",
                                                 "validation_cost", "test_accuracy", "seconds"}] * 3
    network = jd.Network(result.params.layers, result.params.activation, result.params.output)
    split = DATA.held_out(100)
    assert result.history[-1]["validation_accuracy"] == jd.evaluate(network, split.validation_images, split.validation_labels)
    cost = jd.quadratic_cost(network, split.validation_images, split.validation_labels)
    assert result.history[-1]["validation_cost"] == pytest.approx(float(cost), rel=1e-5)
    record = result.record
    assert record["validation"] == 100 and record["validation_accuracy_curve"] == [h["validation_accuracy"] for h in result.history]


def test_select_best_keeps_the_network_of_the_best_validation_epoch():
    config = jd.TrainConfig(hidden=(16,), lr=3.0, epochs=6, validation=100, select="best")
    result = jd.train(config, DATA)
    scores = [h["validation_accuracy"] for h in result.history]
    chosen = int(np.argmax(scores)) + 1  # the first epoch reaching the best
    assert result.record["selected_epoch"] == chosen
    assert result.record["selected_test_accuracy"] == result.history[chosen - 1]["test_accuracy"]
    assert jd.evaluate(result.params, DATA.test_images, DATA.test_labels) == result.record["selected_test_accuracy"]
    # the same run kept to its last epoch differs exactly when the best epoch is not the last
    last = jd.train(config.replace(select="last"), DATA)
    assert (chosen == 6) == all(np.array_equal(a, b) for a, b in zip(leaves(result.params), leaves(last.params)))


def test_resume_with_a_split_and_select_best_is_bit_identical(tmp_path):
    config = jd.TrainConfig(hidden=(16,), lr=3.0, epochs=4, validation=100, select="best")
    jd.train(config.replace(epochs=2), DATA, out_dir=tmp_path / "run")
    resumed = jd.train(config, DATA, out_dir=tmp_path / "run", resume=True)
    straight = jd.train(config, DATA)
    for a, b in zip(leaves((resumed.state, resumed.params)), leaves((straight.state, straight.params))):
        np.testing.assert_array_equal(a, b)
    assert measured(resumed.history) == measured(straight.history)
    saved, _ = jd.load_params(tmp_path / "run")
    for a, b in zip(leaves(saved), leaves(straight.params)):
        np.testing.assert_array_equal(a, b)


def test_patience_stops_a_run_that_no_longer_improves():
    config = jd.TrainConfig(hidden=(16,), lr=1e-7, epochs=8, validation=100, patience=2)
    with pytest.warns(jd.StalledWarning):
        result = jd.train(config, DATA)
    # a rate this small never improves on epoch 1: the run stops two epochs later, not diverged
    # (at chance with a flat cost it is stalled, as it is)
    assert len(result.history) == 3 and result.record["epochs_completed"] == 3
    assert result.status == "stalled" and result.record["diverged_epoch"] is None


def test_patience_stops_members_of_a_group_one_by_one():
    swept = jd.sweep(data=DATA, hidden=[(16,)], lr=[1e-7, 3.0], epochs=6, validation=100, patience=2)
    slow, fast = swept.records
    assert slow["epochs_completed"] == 3 and slow["status"] == "stalled" and slow["diverged_epoch"] is None
    alone = jd.train(jd.TrainConfig(hidden=(16,), lr=3.0, epochs=6, validation=100, patience=2), DATA)
    assert fast["epochs_completed"] == alone.record["epochs_completed"]


def test_a_sweep_ranks_by_validation_and_never_reads_the_test_set():
    grid = dict(hidden=[(16,)], lr=[0.1, 1.0, 3.0], seed=[0, 1], epochs=3, validation=100)
    honest = jd.sweep(data=DATA, **grid)
    rng = np.random.default_rng(1)
    shuffled = dataclasses.replace(DATA, test_labels=rng.permutation(DATA.test_labels))
    tampered = jd.sweep(data=shuffled, **grid)
    assert [r["id"] for r in ranked(honest.records)] == [r["id"] for r in ranked(tampered.records)]
    assert [r["selected_validation_accuracy"] for r in honest.records] == [r["selected_validation_accuracy"] for r in tampered.records]
    assert [r["test_accuracy"] for r in honest.records] != [r["test_accuracy"] for r in tampered.records]
    assert format_table(honest.records).splitlines()[-1].startswith("(ranked by validation accuracy")
    assert "best by validation accuracy" in honest.summary()


def test_validation_fields_select_from_the_history_by_hand():
    history = [{"epoch": 1, "validation_accuracy": 0.5, "test_accuracy": 0.4},
               {"epoch": 2, "validation_accuracy": 0.7, "test_accuracy": 0.6},
               {"epoch": 3, "validation_accuracy": 0.7, "test_accuracy": 0.9},
               {"epoch": 4, "validation_accuracy": 0.6, "test_accuracy": 0.95}]
    best = validation_fields(jd.TrainConfig(select="best"), history)
    assert (best["selected_epoch"], best["selected_validation_accuracy"], best["selected_test_accuracy"]) == (2, 0.7, 0.6)
    last = validation_fields(jd.TrainConfig(select="last"), history)
    assert (last["selected_epoch"], last["selected_test_accuracy"]) == (4, 0.95)


def test_selection_without_a_split_and_a_split_too_large_are_refused_in_one_line():
    with pytest.raises(jd.ConfigError, match="hold out a validation split"):
        jd.train(jd.TrainConfig(select="best", epochs=1), DATA)
    with pytest.raises(jd.ConfigError, match="hold out a validation split"):
        jd.sweep(data=DATA, patience=[2], epochs=1)
    with pytest.raises(jd.DataError, match="validation 300: hold out fewer than the 300 training images"):
        jd.train(jd.TrainConfig(validation=300, epochs=1), DATA)
    own = dataclasses.replace(DATA, validation_images=DATA.test_images, validation_labels=DATA.test_labels)
    with pytest.raises(jd.DataError, match="validation arrays of its own"):
        jd.train(jd.TrainConfig(validation=10, epochs=1), own)


def test_a_dataset_with_its_own_validation_arrays_is_used_as_it_is(tmp_path):
    own = jd.Dataset(DATA.train_images[:200], DATA.train_labels[:200], DATA.test_images, DATA.test_labels,
                     validation_images=DATA.train_images[200:], validation_labels=DATA.train_labels[200:])
    config = jd.TrainConfig(hidden=(16,), lr=1.0, epochs=2)
    mine, split = jd.train(config, own, out_dir=tmp_path / "run"), jd.train(config.replace(validation=100), DATA)
    assert [h["validation_accuracy"] for h in mine.history] == [h["validation_accuracy"] for h in split.history]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["validation_examples"] == 100


def test_wilson_interval_and_binomial_error_match_hand_computations():
    from jaxdigits.core.metrics import binomial_se, wilson_interval

    # 8 of 10: p = 0.8, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71677, half 0.22650
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94332, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert binomial_se(0.965, 10000) == pytest.approx(0.0018378, rel=1e-4)  # the 0.18 points


def test_mcnemar_matches_the_exact_binomial_by_hand():
    from jaxdigits.core.metrics import mcnemar

    a = np.array([True] * 3 + [False] * 1 + [True] * 50)
    b = np.array([False] * 3 + [True] * 1 + [True] * 50)
    # b = 3, c = 1: 2 * P(X <= 1 | n = 4) = 2 * (1 + 4) / 16 = 0.625
    test = mcnemar(a, b)
    assert (test["only_a"], test["only_b"]) == (3, 1) and test["p_value"] == pytest.approx(0.625)
    assert mcnemar(np.ones(10, bool), np.zeros(10, bool))["p_value"] == pytest.approx(2 / 1024)
    assert mcnemar(a, a)["p_value"] == 1.0
    big = mcnemar(np.r_[np.ones(3000, bool), np.zeros(2000, bool)], np.r_[np.zeros(3000, bool), np.ones(2000, bool)])
    assert 0 < big["p_value"] < 1e-40  # thousands of disagreements stay finite


def test_report_compare_says_whether_the_difference_is_significant():
    result = jd.train(jd.TrainConfig(hidden=(16,), lr=3.0, epochs=3), DATA)
    weak = jd.train(jd.TrainConfig(hidden=(16,), lr=1e-3, epochs=1), DATA)
    from jaxdigits.reports import compare_networks

    same = compare_networks(result.params, result.params, DATA.test_images, DATA.test_labels)
    assert same["only_a"] == same["only_b"] == 0 and not same["significant"]
    differ = compare_networks(result.params, weak.params, DATA.test_images, DATA.test_labels)
    assert differ["significant"] and differ["only_a"] > differ["only_b"]


@pytest.mark.parametrize("config", [jd.TrainConfig(optimizer="adam", lr=3.0, epochs=2),
                                    jd.TrainConfig(lr=1e30, epochs=2), jd.TrainConfig(lr=1e30, epochs=1)])
def test_a_short_run_that_ends_at_chance_is_not_called_ok(config):
    with pytest.warns(jd.StalledWarning):
        result = jd.train(config, DATA)
    assert result.status == "stalled"


def test_run_status_of_one_epoch_by_hand():
    assert jd.run_status([{"epoch": 1, "train_cost": 0.5, "train_accuracy": 0.12}], chance=0.1) == "stalled"
    assert jd.run_status([{"epoch": 1, "train_cost": 0.5, "train_accuracy": 0.16}], chance=0.1) == "ok"
    at_chance = lambda costs: [{"epoch": k, "train_cost": c, "train_accuracy": 0.12} for k, c in enumerate(costs, 1)]  # noqa: E731
    assert jd.run_status(at_chance([0.5, 0.4, 0.3]), chance=0.1) == "stalled"  # three epochs cannot tell
    assert jd.run_status(at_chance([0.5, 0.4, 0.3, 0.2]), chance=0.1) == "ok"  # still falling by 1 % and more
    assert jd.run_status(at_chance([0.5, 0.4, 0.3, 0.299]), chance=0.1) == "stalled"
