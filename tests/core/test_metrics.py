"""Measures (``jaxdigits.core.metrics``): hand-counted confusion matrices and scores, ECE and
rejection against their formulas, normalised outputs, and the status rules of a run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits.core import metrics


def identity_network(classes: int = 3, output: str = "softmax") -> jd.Network:
    """One layer, ``z = x``: the answer is the position of the largest input."""
    return jd.Network([{"w": jnp.eye(classes), "b": jnp.zeros(classes)}], "sigmoid", output)


def test_confusion_matrix_and_class_scores_match_hand_counts():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2], np.int32)
    answers = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2], np.int32)
    expected = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 3]])
    # The same set through a network: each image is the one-hot answer, so z's argmax is the answer.
    images = np.eye(3, dtype=np.float32)[answers] * 2.0
    numbers = metrics.analyse(identity_network(), images, labels)
    np.testing.assert_array_equal(numbers["confusion_matrix"], expected)
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, answers, 3), expected)
    assert int(numbers["correct_count"]) == 6
    scores = {k: np.asarray(v) for k, v in numbers["per_class"].items()}
    precision = np.array([2 / 3, 1 / 2, 3 / 4])  # of the answers 0, 1, 2: right / given
    recall = np.array([2 / 3, 1 / 2, 3 / 4])  # of the classes 0, 1, 2: found / present
    np.testing.assert_allclose(scores["precision"], precision, rtol=1e-6)
    np.testing.assert_allclose(scores["recall"], recall, rtol=1e-6)
    np.testing.assert_allclose(scores["f1"], 2 * precision * recall / (precision + recall), rtol=1e-6)
    np.testing.assert_array_equal(scores["support"], [3, 2, 4])
    # The most confused pair is 0 -> 1, 1 -> 2 and 2 -> 0 (once each), with their images.
    pairs = numbers["pairs"]
    assert sorted(zip(np.asarray(pairs["true"][:3]).tolist(), np.asarray(pairs["answer"][:3]).tolist())) == [(0, 1), (1, 2), (2, 0)]
    assert np.asarray(pairs["count"][:3]).tolist() == [1, 1, 1] and np.asarray(pairs["count"][3:]).max() == 0
    first = np.asarray(pairs["examples"][0])
    assert first[0] in (2, 4, 7) and np.all(first[1:] == -1)
    mistakes = np.asarray(numbers["mistakes"]["index"])
    assert sorted(mistakes[:3].tolist()) == [2, 4, 7] and np.all(mistakes[3:] == -1)


def test_class_scores_are_zero_where_a_class_is_never_answered_or_absent():
    scores = metrics.class_scores(jnp.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]]))
    np.testing.assert_allclose(scores["precision"], [2 / 3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(scores["recall"], [1, 0, 0])
    assert np.all(np.isfinite(np.asarray(scores["f1"])))


def test_ece_matches_its_formula_on_hand_made_confidences():
    confidence = jnp.array([0.95, 0.95, 0.55, 0.25, 1.0])
    correct = jnp.array([True, False, True, False, True])
    c = jax.jit(metrics.calibration, static_argnums=2)(confidence, correct, 10)
    # bins: 9 holds 0.95, 0.95, 1.0 (acc 2/3, conf 0.9667); 5 holds 0.55 (acc 1); 2 holds 0.25 (acc 0)
    by_hand = (3 / 5) * abs(2 / 3 - (0.95 + 0.95 + 1.0) / 3) + (1 / 5) * abs(1 - 0.55) + (1 / 5) * abs(0 - 0.25)
    assert float(c["ece"]) == pytest.approx(by_hand, rel=1e-6)
    np.testing.assert_array_equal(c["counts"], [0, 0, 1, 0, 0, 1, 0, 0, 0, 3])
    # and against the formula written out, on many random confidences
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, 2000).astype(np.float32)
    hits = rng.uniform(size=2000) < conf ** 2
    bins = np.minimum((conf * 15).astype(int), 14)
    formula = sum((bins == b).sum() / 2000 * abs(hits[bins == b].mean() - conf[bins == b].mean())
                  for b in range(15) if (bins == b).any())
    assert float(metrics.calibration(jnp.asarray(conf), jnp.asarray(hits), 15)["ece"]) == pytest.approx(formula, abs=1e-6)


def test_rejection_threshold_never_splits_equal_confidences():
    confidence = jnp.array([0.9, 0.8, 0.8, 0.6, 0.5])
    correct = jnp.array([True, True, False, True, False])
    r = metrics.rejection(confidence, correct, target=0.75, levels=5)
    # answering >= 0.6 gives 3 of 4 right; >= 0.5 gives 3 of 5; a cut inside the two 0.8s is no threshold
    assert float(r["target_threshold"]) == pytest.approx(0.6)
    assert float(r["target_coverage"]) == pytest.approx(0.8) and float(r["target_accuracy"]) == pytest.approx(0.75)
    np.testing.assert_allclose(r["coverage"], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(r["accuracy"], [1, 1, 2 / 3, 3 / 4, 3 / 5], rtol=1e-6)
    unreachable = metrics.rejection(confidence, correct, target=1.01)
    assert np.isnan(float(unreachable["target_threshold"]))


def test_sigmoid_outputs_are_normalised_to_sum_one():
    z = jnp.array([[2.0, 0.0, -1.0]])
    a = jax.nn.sigmoid(z)
    np.testing.assert_allclose(metrics.probabilities(identity_network(output="sigmoid"), z), a / a.sum(), rtol=1e-6)
    np.testing.assert_allclose(metrics.probabilities(identity_network(output="softmax"), z), jax.nn.softmax(z), rtol=1e-6)


def test_status_rules_by_hand():
    def history(costs, last_accuracy):
        return [{"epoch": i + 1, "train_cost": c, "train_accuracy": last_accuracy, "test_accuracy": 0.1} for i, c in enumerate(costs)]

    assert jd.run_status(history([0.5, 0.5, 0.5], 0.11), chance=0.11) == "stalled"
    assert jd.run_status(history([1.0, 0.9, 0.7, 0.5], 0.11), chance=0.11) == "ok"  # still falling
    assert jd.run_status(history([0.9, 0.7, 0.5], 0.11), chance=0.11) == "stalled"  # three epochs at chance: too short to tell
    assert jd.run_status(history([0.5, 0.5, 0.5], 0.30), chance=0.11) == "ok"  # above chance
    assert jd.run_status(history([0.5], 0.11) + [{"epoch": 2, "train_cost": float("nan"), "diverged": True}], 0.11) == "diverged"


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


def test_run_status_of_one_epoch_by_hand():
    assert jd.run_status([{"epoch": 1, "train_cost": 0.5, "train_accuracy": 0.12}], chance=0.1) == "stalled"
    assert jd.run_status([{"epoch": 1, "train_cost": 0.5, "train_accuracy": 0.16}], chance=0.1) == "ok"
    at_chance = lambda costs: [{"epoch": k, "train_cost": c, "train_accuracy": 0.12} for k, c in enumerate(costs, 1)]  # noqa: E731
    assert jd.run_status(at_chance([0.5, 0.4, 0.3]), chance=0.1) == "stalled"  # three epochs cannot tell
    assert jd.run_status(at_chance([0.5, 0.4, 0.3, 0.2]), chance=0.1) == "ok"  # still falling by 1 % and more
    assert jd.run_status(at_chance([0.5, 0.4, 0.3, 0.299]), chance=0.1) == "stalled"


def test_calibration_bins_are_left_closed_at_every_inner_edge():
    # with 5 bins the edges are 0.2, 0.4, 0.6, 0.8: a confidence on an edge belongs to the bin above
    confidence = jnp.asarray([0.2, 0.4, 0.6, 0.8, 1.0, 0.0], jnp.float32)
    correct = jnp.asarray([1, 0, 1, 1, 1, 0], bool)
    c = metrics.calibration(confidence, correct, 5)
    np.testing.assert_array_equal(c["counts"], [1, 1, 1, 1, 2])
    # ECE = (1/6) * (|0-0| + |1-0.2| + |0-0.4| + |1-0.6| + |2-1.8|) = 1.8 / 6
    assert float(c["ece"]) == pytest.approx(1.8 / 6, abs=1e-6)


def test_the_stall_margin_is_five_points_above_chance():
    def history(accuracy):
        return [{"epoch": k, "train_cost": 0.5, "train_accuracy": accuracy} for k in range(1, 6)]

    assert jd.run_status(history(0.10 + 0.049), chance=0.10) == "stalled"
    assert jd.run_status(history(0.10 + 0.051), chance=0.10) == "ok"


def test_accuracy_and_chunked_evaluation_count_every_image_of_every_chunk_and_class_zero():
    # a 2-input network whose output is its input: the answer is the larger input
    network = jd.Network([{"w": jnp.eye(2), "b": jnp.zeros(2)}], "sigmoid", "softmax")
    n = metrics.EVAL_CHUNK + 3  # the last chunk holds 3 images
    images = np.zeros((n, 2), np.float32)
    answers = np.arange(n) % 2
    images[np.arange(n), answers] = 1.0
    labels = answers.copy()
    labels[-1] = 1 - labels[-1]  # the very last image of the last chunk is wrong
    labels[0] = 1 - labels[0]  # and one image whose answer is class 0
    assert jd.evaluate(network, images, labels) == (n - 2) / n
    assert float(jd.accuracy(network, images, labels)) == pytest.approx((n - 2) / n)
