"""Reports: hand-counted confusion matrices and scores, ECE and rejection against their formulas,
a report of a one-epoch run on the real MNIST, two networks side by side, and sweep reports."""

from __future__ import annotations

import base64
import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import cli, reports
from jaxdigits.core import metrics
from jaxdigits.core.transforms import ROBUSTNESS

# A few strengths per perturbation (the identity among them) keep the tests quick.
FEW = {name: (p.strengths[0], p.identity, p.strengths[-1]) for name, p in ROBUSTNESS.items()}


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


def test_report_of_a_one_epoch_run_on_real_mnist(mnist, mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    jd.train(jd.TrainConfig(epochs=1), mnist, out_dir=run)
    result = jd.report(run, mnist, out_dir=tmp_path / "report", strengths=FEW)
    network = result["networks"][0]
    matrix = np.asarray(network["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10_000
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(mnist.test_labels, minlength=10))

    assert cli.main(["evaluate", str(run), "--data-dir", str(mnist_dir)]) == 0
    printed = capsys.readouterr().out
    params, _ = jd.load_params(run)
    accuracy = jd.evaluate(params, mnist.test_images, mnist.test_labels)
    assert np.trace(matrix) / 10_000 == accuracy == network["accuracy"]
    assert f"test accuracy {100 * np.trace(matrix) / 10_000:.2f}%" in printed

    # At its identity setting every robustness curve is the plain accuracy, exactly.
    for name, curve in network["robustness"].items():
        assert curve["accuracy"][curve["strengths"].index(ROBUSTNESS[name].identity)] == accuracy, name
        assert min(curve["accuracy"]) < accuracy, name

    out = tmp_path / "report"
    saved = json.loads((out / "report.json").read_text())
    assert saved["networks"][0]["confusion_matrix"] == network["confusion_matrix"]
    assert 0 <= saved["networks"][0]["calibration"]["ece"] < 0.1
    page = (out / "report.html").read_text()
    assert set(saved["figures"]) == set(reports.FIGURES)
    for name, file in saved["figures"].items():
        assert base64.b64encode((out / file).read_bytes()).decode() in page, name
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_cli_report_compares_two_networks_side_by_side(tiny_data_dir, tmp_path, capsys, monkeypatch):
    for name, perturbation in ROBUSTNESS.items():
        monkeypatch.setitem(ROBUSTNESS, name, perturbation._replace(strengths=FEW[name]))
    data = jd.load_mnist(tiny_data_dir)
    networks = [jd.init_mlp(jax.random.PRNGKey(seed), sizes) for seed, sizes in ((0, (784, 8, 10)), (1, (784, 32, 10)))]
    for network, name in zip(networks, ("small", "wide")):
        (tmp_path / name).mkdir()
        jd.save_params(tmp_path / name / "params.safetensors", network, {"config": {"dataset": "mnist"}})
    out = tmp_path / "report"
    code = cli.main(["report", str(tmp_path / "small"), "--compare", str(tmp_path / "wide"),
                     "--data-dir", str(tiny_data_dir), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "784-8-10 (small)" in printed and "784-32-10 (wide)" in printed and "test accuracy" in printed
    saved = json.loads((out / "report.json").read_text())
    assert [n["name"] for n in saved["networks"]] == ["784-8-10 (small)", "784-32-10 (wide)"]
    for n, network in zip(saved["networks"], networks):
        assert n["accuracy"] == jd.evaluate(network, data.test_images, data.test_labels)
        assert sum(map(sum, n["confusion_matrix"])) == len(data.test_labels)
    assert (out / "robustness.png").stat().st_size > 0 and "784-32-10 (wide)" in (out / "report.html").read_text()


@pytest.fixture(scope="module")
def small_sweep(mnist, tmp_path_factory):
    """A finished sweep on a little real MNIST: lr 100 saturates the sigmoids, so it stalls."""
    data = mnist.subset(1000, 500)
    out = tmp_path_factory.mktemp("sweep")
    result = jd.sweep(data=data, lr=[1.0, 100.0], hidden=[(16,), (32,)], seed=[0, 1], epochs=2, out_dir=out)
    return out, result.records


def test_sweep_report_writes_heatmap_curves_and_csv_and_marks_stalled_runs(small_sweep, tmp_path):
    folder, records = small_sweep
    assert any(r["status"] == "stalled" for r in records)
    result = jd.sweep_report(folder, tmp_path / "report")
    assert {result["x"], result["y"]} == {"hidden", "lr"} and result["finished"] == result["planned"] == 8
    out = tmp_path / "report"
    for name in ("heatmap.png", "curves.png", "best.png", "summary.csv", "runs.csv", "report.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {row["lr"] for row in rows} == {"1", "100"}
    stalled = [row for row in rows if int(row["stalled"])]
    assert stalled and all(row["lr"] == "100" for row in stalled)
    expected = jd.aggregate(records, by=("hidden", "lr"))
    best = max((r for r in expected if not r["stalled"] and not r["diverged"]), key=lambda r: r["test_accuracy_mean"])
    assert float(rows[0]["test_accuracy_mean"]) == pytest.approx(best["test_accuracy_mean"])
    assert float(rows[0]["test_accuracy_std"]) == pytest.approx(best["test_accuracy_std"])
    page = (out / "report.html").read_text()
    assert "Diverged or stalled" in page and "stalled" in page
    for name in ("heatmap", "curves", "best"):
        assert base64.b64encode((out / f"{name}.png").read_bytes()).decode() in page


def test_sweep_report_of_a_sweep_still_running_shows_what_has_finished(small_sweep, tmp_path, capsys):
    folder, _ = small_sweep
    running = tmp_path / "running"
    running.mkdir()
    (running / "sweep.json").write_bytes((folder / "sweep.json").read_bytes())
    lines = (folder / "results.jsonl").read_bytes().splitlines(keepends=True)
    (running / "results.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:40])  # a group being written
    (running / ".jaxdigits.lock").write_text("1")  # held by the sweep: the report neither needs nor takes it
    assert cli.main(["sweep-report", str(running), "--x", "lr", "--y", "hidden"]) == 0
    printed, err = capsys.readouterr()
    assert "warning" in err and "half-written" in err
    assert "3 of 8 runs finished" in printed and "heatmap lr x hidden" in printed
    assert (running / "report" / "heatmap.png").is_file()
    assert (running / ".jaxdigits.lock").read_text() == "1"


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}/missing", "--out", "{tmp}/out"], "no such params file"),
    (["sweep-report", "{tmp}/missing"], "no such sweep folder"),
    (["sweep-report", "{tmp}"], "no finished configurations"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys):
    code = cli.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1


def test_sweep_report_refuses_an_unknown_axis(small_sweep, tmp_path):
    with pytest.raises(jd.ConfigError, match="--x 'learning_rate' is not a config field"):
        jd.sweep_report(small_sweep[0], tmp_path, x="learning_rate")
