"""The "what the network learned" experiments: their measures on hand-made inputs, and each
script's ``--quick`` run on the real MNIST producing well-formed numbers and figures."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))

import common  # noqa: E402
import first_layer_weights  # noqa: E402
import gradient_importance  # noqa: E402
import noise  # noqa: E402
import random_labels  # noqa: E402
import run_all  # noqa: E402

import jaxdigits  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- the quick runs, once per session ---------------------------------------------------------


@pytest.fixture(scope="session")
def learned_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("learned")


def quick_run(name: str, learned_dir: Path, mnist_dir: Path) -> dict:
    folder = learned_dir / name
    if not (folder / "results.json").exists():
        module = run_all.EXPERIMENTS[name][0]
        assert module.main(["--quick", "--out", str(folder), "--data-dir", str(mnist_dir)]) == 0
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="session")
def weights_results(learned_dir, mnist_dir):
    return quick_run("first_layer_weights", learned_dir, mnist_dir)


@pytest.fixture(scope="session")
def noise_results(learned_dir, mnist_dir):
    return quick_run("noise", learned_dir, mnist_dir)


@pytest.fixture(scope="session")
def labels_results(learned_dir, mnist_dir):
    return quick_run("random_labels", learned_dir, mnist_dir)


@pytest.fixture(scope="session")
def gradient_results(learned_dir, mnist_dir):
    return quick_run("gradient_importance", learned_dir, mnist_dir)


def assert_figures(results: dict, folder: Path) -> None:
    assert results["figures"], "no figures listed"
    for name in results["figures"].values():
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name


def assert_probability(value) -> None:
    assert value is not None and 0.0 <= value <= 1.0, value


# --- first_layer_weights ------------------------------------------------------------------------


def test_low_frequency_fraction_of_known_images():
    rng = np.random.default_rng(0)
    noise_images = rng.normal(size=(400, 784))
    expected = first_layer_weights.white_noise_low_frequency_fraction()
    assert np.mean(first_layer_weights.low_frequency_fraction(noise_images)) == pytest.approx(expected, abs=0.01)
    ys, xs = np.mgrid[:28, :28]
    blob = np.exp(-((ys - 14) ** 2 + (xs - 12) ** 2) / (2 * 3.0**2)).reshape(1, 784)
    assert first_layer_weights.low_frequency_fraction(blob)[0] > 0.99
    checkerboard = ((-1.0) ** (ys + xs)).reshape(1, 784)  # all energy at (0.5, 0.5) cycles/pixel
    assert first_layer_weights.low_frequency_fraction(checkerboard)[0] == pytest.approx(0.0, abs=1e-12)


def test_smoothness_and_half_energy_of_known_images():
    rng = np.random.default_rng(1)
    assert np.mean(first_layer_weights.smoothness(rng.normal(size=(400, 784)))) == pytest.approx(1 / 3, abs=0.03)
    ys, xs = np.mgrid[:28, :28]
    # Rows alternating in sign: a 3x3 average away from the edges is -1/3 of the centre row.
    stripes = ((-1.0) ** ys + 0 * xs).reshape(1, 784)
    assert first_layer_weights.smoothness(stripes)[0] < -0.8
    one_pixel = np.zeros((1, 784))
    one_pixel[0, 300] = -2.0
    assert first_layer_weights.half_energy_pixels(one_pixel).tolist() == [1]
    assert first_layer_weights.half_energy_pixels(np.ones((1, 784))).tolist() == [392]


def test_first_layer_weights_quick(weights_results, learned_dir, mnist_dir):
    results = weights_results
    networks = {n["key"]: n for n in results["networks"]}
    expected = {"lesson", "wide"} | ({"fashion"} if (mnist_dir.parent / "fashion_mnist").is_dir() else set())
    assert set(networks) == expected
    noise_share = results["white_noise_low_frequency_fraction"]
    assert 0.1 < noise_share < 0.3
    for key, network in networks.items():
        assert network["test_accuracy"] > (0.6 if key == "fashion" else 0.75), key
        for stage in ("initial", "trained", "change", "change_sign_scrambled"):
            m = network[stage]
            assert_probability(m["low_frequency_fraction"])
            assert -1 <= m["smoothness"] <= 1
            assert 1 <= m["half_energy_pixels"] <= 784
        # The random start is white noise; training adds smooth structure, which scrambling the
        # signs of the change (same per-pixel sizes) destroys.
        assert network["initial"]["low_frequency_fraction"] == pytest.approx(noise_share, abs=0.03)
        assert network["trained"]["low_frequency_fraction"] > 2 * noise_share
        assert network["change_sign_scrambled"]["low_frequency_fraction"] == pytest.approx(noise_share, abs=0.05)
        assert network["relative_change"] > 0
    assert networks["lesson"]["hidden_neurons"] == 16 and networks["wide"]["hidden_neurons"] == 100
    # Pixels no training image inks get no gradient, so their weights never move.
    assert networks["lesson"]["never_inked_pixels"] > 0
    assert networks["lesson"]["unchanged_weight_fraction"] == pytest.approx(
        networks["lesson"]["never_inked_pixels"] / 784, abs=1e-6
    )
    assert len(results["findings"]) == len(networks)
    assert_figures(results, learned_dir / "first_layer_weights")


# --- noise ----------------------------------------------------------------------------------------


def test_auroc_by_hand():
    # Negative 0 is below all three positives (1); negative 2 is below one and ties one: 1.5/3.
    assert noise.auroc(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0])) == pytest.approx(0.75)
    assert noise.auroc(np.array([5.0, 6.0]), np.array([1.0, 2.0])) == 1.0
    assert noise.auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5


def test_noise_quick(noise_results, learned_dir):
    results = noise_results
    assert [n["key"] for n in results["networks"]] == ["lesson", "softmax"]
    for network in results["networks"]:
        kinds = network["kinds"]
        assert {"test digits", "uniform noise", "sparse noise", "shuffled digits", "blank", "all ones"} <= set(kinds)
        assert kinds["test digits"]["accuracy"] > 0.75
        for kind, stats in kinds.items():
            if kind in noise.SINGLE_KINDS:
                assert stats["predicted"] in range(10)
                assert stats["top"] == pytest.approx(max(stats["activations"]))
                if network["output"] == "softmax":
                    assert sum(stats["activations"]) == pytest.approx(1.0, abs=1e-5)
                continue
            assert stats["count"] == results["images_per_kind"]
            assert sum(stats["histogram"]) == stats["count"] == sum(stats["predicted_counts"])
            assert len(stats["histogram"]) == noise.BINS
            for field in ("mean", "median", "quantile_10", "quantile_90", "fraction_above_0.5", "fraction_above_0.9"):
                assert_probability(stats[field])
            assert stats["quantile_10"] <= stats["median"] <= stats["quantile_90"]
            if kind != "test digits":
                assert_probability(stats["auroc_vs_digits"])
        # Softmax outputs always sum to one, so its top activation is at least 1/10.
        if network["output"] == "softmax":
            assert kinds["uniform noise"]["quantile_10"] >= 0.1
        # The network is more confident on digits than on shuffled digits, on the whole.
        assert kinds["shuffled digits"]["auroc_vs_digits"] > 0.6
    assert len(results["findings"]) == 2
    assert_figures(results, learned_dir / "noise")


# --- random_labels --------------------------------------------------------------------------------


def test_corrupt_labels_rates():
    labels = np.arange(20000, dtype=np.int32) % 10
    rng = np.random.default_rng(0)
    assert np.array_equal(random_labels.corrupt_labels(labels, 0.0, rng), labels)
    # A replaced label keeps its class one time in ten, so a fraction 0.9 p changes.
    for p in (0.2, 0.5, 1.0):
        changed = np.mean(random_labels.corrupt_labels(labels, p, rng) != labels)
        assert changed == pytest.approx(0.9 * p, abs=0.015)
    settings = random_labels.label_settings(labels, seed=0)
    assert [key for key, *_ in settings] == ["p=0", "p=0.2", "p=0.5", "p=0.8", "p=1", "permuted"]
    permuted = settings[-1][3]
    assert np.array_equal(np.bincount(permuted), np.bincount(labels)) and not np.array_equal(permuted, labels)


def test_random_labels_quick(labels_results, learned_dir):
    results = labels_results
    settings = {s["key"]: s for s in results["settings"]}
    assert list(settings) == ["p=0", "p=0.2", "p=0.5", "p=0.8", "p=1", "permuted"]
    epochs = results["config"]["epochs"]
    for s in settings.values():
        assert len(s["train_accuracy"]) == len(s["test_accuracy"]) == epochs
        for value in s["train_accuracy"] + s["test_accuracy"]:
            assert_probability(value)
        assert not s["diverged"]
    true, random = settings["p=0"], settings["p=1"]
    assert true["changed_fraction"] == 0 and true["final_train_accuracy"] > 0.99
    assert true["final_test_accuracy"] > 0.75
    # Random labels carry no information about the test set: near chance, far below true labels.
    assert abs(random["final_test_accuracy"] - 0.1) < 0.06
    assert true["final_test_accuracy"] > random["final_test_accuracy"] + 0.5
    # ...yet the network fits a good part of them, and fits them more slowly than the true ones.
    assert random["final_train_accuracy"] > 0.4
    assert true["epochs_to_fit"]["0.5"] < random["epochs_to_fit"]["0.5"]
    assert settings["p=0.5"]["changed_fraction"] == pytest.approx(0.45, abs=0.06)
    assert 0 <= settings["p=0.5"]["corrupted_memorised"] <= 1
    assert len(results["findings"]) == 3
    assert_figures(results, learned_dir / "random_labels")


def test_random_labels_refuses_bad_flags_before_training(tmp_path, mnist_dir, capsys):
    code = random_labels.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--epochs", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epochs: 0 must be >= 1" in err
    assert not (tmp_path / "results.json").exists()


# --- gradient_importance ------------------------------------------------------------------------


def test_descent_paths_on_a_bowl_by_hand():
    # f(a, b) = a^2 + b^2 has gradient 2(a, b): with rate 0.25 each step halves the point.
    f = lambda ab: jnp.sum(ab**2)  # noqa: E731
    paths = gradient_importance.descent_paths(f, np.array([[1.0, -2.0], [0.5, 0.5]]), 0.25, 6)
    assert paths.shape == (2, 7, 3)
    np.testing.assert_allclose(paths[0, :, :2], np.array([[1.0, -2.0]]) * 0.5 ** np.arange(7)[:, None], rtol=1e-6)
    np.testing.assert_allclose(paths[0, :, 2], 5.0 * 0.25 ** np.arange(7), rtol=1e-5)


def test_random_directions_are_filter_normalised():
    params = jaxdigits.init_mlp(jax.random.PRNGKey(3), (784, 16, 16, 10))
    d1, d2 = gradient_importance.random_directions(params, jax.random.PRNGKey(4))
    for p, u, v in zip(params, d1, d2):
        np.testing.assert_allclose(np.linalg.norm(u["w"], axis=0), np.linalg.norm(p["w"], axis=0), rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(v["w"], axis=0), np.linalg.norm(p["w"], axis=0), rtol=1e-5)
        assert not np.any(u["b"]) and not np.any(v["b"])
        assert not np.allclose(u["w"], v["w"])


def test_gradient_importance_quick(gradient_results, learned_dir):
    results = gradient_results
    for stage in ("initial", "trained"):
        report = results[stage]
        shares = [r["share_of_squared_norm"] for r in report["layers"]]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5) and all(0 <= s <= 1 for s in shares)
        assert sum(r["count"] for r in report["layers"]) == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
        pixels = report["pixels"]
        # A pixel that is 0 in every training image contributes nothing to any first-layer gradient.
        assert pixels["zero_gradient_pixels"] == pixels["never_inked_pixels"] > 0
        assert_probability(pixels["top_10pct_pixels_energy_share"])
        assert pixels["top_10pct_pixels_energy_share"] > 0.1
        assert len(results["first_layer_pixel_map"][stage]) == 784
    assert results["trained"]["gradient_norm"] < results["initial"]["gradient_norm"]
    assert results["trained"]["cost"] < results["initial"]["cost"]
    assert results["test_accuracy"] > 0.75
    land = results["landscape"]
    costs = np.asarray(land["costs"])
    assert costs.shape == (land["resolution"], land["resolution"]) and np.all(np.isfinite(costs))
    centre = land["resolution"] // 2
    assert costs[centre, centre] == pytest.approx(land["cost_at_trained"], rel=1e-4)
    assert land["cost_at_trained"] < np.mean([costs[0, 0], costs[0, -1], costs[-1, 0], costs[-1, -1]])
    for path in land["paths"]:
        costs_along = np.asarray(path["points"])[:, 2]
        assert path["end_cost"] < path["start_cost"]
        assert np.all(np.diff(costs_along) <= 1e-6), "gradient descent with half the stable rate went uphill"
    assert len(results["findings"]) == 4
    assert_figures(results, learned_dir / "gradient_importance")


# --- run_all ----------------------------------------------------------------------------------


def test_run_all_summarises_finished_experiments_without_rerunning(
    weights_results, noise_results, labels_results, gradient_results, learned_dir, mnist_dir
):
    before = {name: (learned_dir / name / "results.json").stat().st_mtime_ns for name in run_all.EXPERIMENTS}
    assert run_all.main(["--quick", "--out", str(learned_dir), "--data-dir", str(mnist_dir)]) == 0
    after = {name: (learned_dir / name / "results.json").stat().st_mtime_ns for name in run_all.EXPERIMENTS}
    assert before == after
    summary = (learned_dir / run_all.SUMMARY).read_text()
    for name, (module, question) in run_all.EXPERIMENTS.items():
        results = json.loads((learned_dir / name / "results.json").read_text())
        assert question in summary
        for figure in results["figures"].values():
            assert f"]({name}/{figure})" in summary
            assert (learned_dir / name / figure).is_file()
        for sentence in module.findings(results):
            assert f"- {sentence}" in summary
            assert any(ch.isdigit() for ch in sentence)
    assert "nan" not in summary.lower()


def test_run_all_does_not_take_quick_results_for_a_full_run(weights_results, learned_dir):
    folder = learned_dir / "first_layer_weights"
    assert run_all.completed(folder, quick=True) is not None
    assert run_all.completed(folder, quick=False) is None
    assert run_all.completed(learned_dir / "missing", quick=True) is None


def test_experiment_reports_missing_data_in_one_line(tmp_path, capsys):
    code = noise.main(["--quick", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "nowhere")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("noise.py: error:") and "nowhere" in err


def test_save_json_writes_plain_numbers(tmp_path):
    path = common.save_json(tmp_path / "x.json", {"a": np.float32(0.5), "b": np.arange(3), "c": math.nan})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": None}


# --- hypergradient ------------------------------------------------------------------------------

import hypergradient  # noqa: E402

from tests.conftest import synthetic_dataset  # noqa: E402


@pytest.fixture(scope="session")
def hypergradient_results(learned_dir, mnist_dir):
    folder = learned_dir / "hypergradient"
    if not (folder / "hypergradient.json").exists():
        assert hypergradient.main(["--quick", "--out", str(folder), "--data-dir", str(mnist_dir)]) == 0
    return json.loads((folder / "hypergradient.json").read_text())


def test_hypergradient_window_trains_at_the_rate_and_l2_it_is_given():
    data = synthetic_dataset(40, 4)
    config = jaxdigits.TrainConfig(hidden=(6,), l2=1e-3)
    state = jaxdigits.init_state(config, jax.random.PRNGKey(0), 784, 10, update={"lr": 3.0, "l2": 1e-3})
    x, y = jnp.asarray(data.train_images).reshape(4, 10, 784), jnp.asarray(data.train_labels).reshape(4, 10)
    end, _ = hypergradient.make_window(config)(hypergradient.start_logs(0.5, 0.01), state, x, y)
    params = state.params
    for images, labels in zip(x, y):
        grads = jax.grad(jaxdigits.make_objective("quadratic", 0.01))(params, images, labels)
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    for a, b in zip(jax.tree.leaves(end.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hypergradient_forward_and_reverse_match_finite_differences_on_synthetic_data():
    data = synthetic_dataset(300, 10).held_out(100)
    settings = {"window": 15, "validation_batch": 100}
    check = hypergradient.finite_difference_check(data, jaxdigits.TrainConfig(hidden=(8,), l2=1e-3), settings, 0.3)
    for name in ("lr", "l2"):
        expected = check[name]["finite_difference"]
        assert expected != 0
        for mode in hypergradient.MODES:
            assert check[name][mode] == pytest.approx(expected, rel=1e-3), (name, mode)


def test_hypergradient_window_that_turns_non_finite_is_undone_and_its_rate_halved():
    config = jaxdigits.TrainConfig(hidden=(4,), l2=1e-3)
    state = jaxdigits.init_state(config, jax.random.PRNGKey(0), 784, 10, update={"lr": 1.0, "l2": 1e-3})
    hyper = hypergradient.hyper_optimizer(0.1)
    logs = hypergradient.start_logs(1.0, 1e-3)
    outer = jax.jit(hypergradient.make_outer_step(config, hyper, "forward"))
    x, y = jnp.full((3, 10, 784), jnp.nan), jnp.zeros((3, 10), jnp.int32)
    (end, new_logs, _), trace = outer((state, logs, hyper.init(logs)), x, y, jnp.ones((5, 784)), jnp.zeros(5, jnp.int32))
    assert not bool(trace["finite"])
    assert float(jnp.exp(new_logs["lr"])) == pytest.approx(0.5) and float(new_logs["l2"]) == float(logs["l2"])
    for a, b in zip(jax.tree.leaves(end.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_hypergradient_quick(hypergradient_results, learned_dir):
    results = hypergradient_results
    check = results["finite_difference_check"]
    for name in ("lr", "l2"):  # on the real MNIST, the first window of the run from the too-small rate
        for mode in hypergradient.MODES:
            assert check[name][mode] == pytest.approx(check[name]["finite_difference"], rel=1e-2), (name, mode)
    assert check["lr"]["forward"] < 0, "at a too-small rate a larger one must lower the validation cost"
    small = results["runs"]["too small"]
    rates = np.asarray(small["windows"]["lr"])
    assert rates[0] == pytest.approx(hypergradient.STARTS["too small"])
    assert small["final_lr"] > 3 * hypergradient.STARTS["too small"], "the too-small rate did not grow"
    for run in results["runs"].values():
        low, high = hypergradient.BOUNDS["lr"]
        assert np.all((np.asarray(run["windows"]["lr"]) >= low * 0.999) & (np.asarray(run["windows"]["lr"]) <= high * 1.001))
        assert len(run["epochs"]) == run["epochs_trained"] == results["settings"]["epochs"]
        assert_probability(run["validation_accuracy"])
        assert_probability(run["test_accuracy"])
        assert run["compute_model_epochs"] == pytest.approx(run["epochs_trained"] * results["cost"]["forward"]["ratio"])
    assert results["cost"]["forward"]["ratio"] > 0
    matched = results["sweep"]["matched"]
    assert matched["chosen_lr"] in results["settings"]["rates"]
    assert matched["chosen_validation_accuracy"] == max(r["validation_accuracy"] for r in matched["rates"])
    assert_probability(matched["chosen_test_accuracy"])
    assert matched["compute_model_epochs"] == matched["epochs_per_rate"] * len(results["settings"]["rates"])
    folder = learned_dir / "hypergradient"
    assert_figures(results, folder)
    rows = (folder / "hypergradient.csv").read_text().splitlines()
    assert rows[0].split(",") == list(hypergradient.CSV_COLUMNS) and len(rows) == 1 + 2 * results["settings"]["epochs"]
    assert len(results["findings"]) == 6 and all(any(ch.isdigit() for ch in s) for s in results["findings"])


def test_hypergradient_refuses_a_window_longer_than_an_epoch_in_one_line(tmp_path, mnist_dir, capsys):
    code = hypergradient.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--window", "100000"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hypergradient.py: error: --window 100000")
