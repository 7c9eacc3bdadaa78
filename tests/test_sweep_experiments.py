"""The sweep studies' --quick modes on the real MNIST, and the benchmark script's smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))

import best_mlp  # noqa: E402
import hidden_sizes  # noqa: E402
import learning_rates  # noqa: E402
import sweep_study  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def hidden_quick(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("hidden_sizes")
    assert hidden_sizes.main(["--quick", "--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    return out


@pytest.fixture(scope="module")
def rates_quick(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("learning_rates")
    assert learning_rates.main(["--quick", "--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    return out


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def test_hidden_sizes_quick_table_matches_its_sweep(hidden_quick):
    records = jsonl(hidden_quick / "sweep_quick" / "results.jsonl")
    shapes = [(w,) for w in hidden_sizes.QUICK_WIDTHS] + [(w, w) for w in hidden_sizes.QUICK_WIDTHS]
    assert len(records) == len(shapes) * hidden_sizes.QUICK["seeds"]
    rows = sweep_study.read_csv(hidden_quick / "hidden_sizes.csv")
    assert [r["hidden"] for r in rows] == [",".join(map(str, s)) for s in shapes]  # 1 layer, then 2; by width
    for row in rows:
        seeds = [r["test_accuracy"] for r in records if ",".join(map(str, r["hidden"])) == row["hidden"]]
        assert int(row["runs"]) == len(seeds) == hidden_sizes.QUICK["seeds"]
        assert int(row["layers"]) == len(row["hidden"].split(","))
        np.testing.assert_allclose(float(row["test_accuracy_mean"]), np.mean(seeds), rtol=1e-12)
        np.testing.assert_allclose(float(row["test_accuracy_std"]), np.std(seeds, ddof=1), rtol=1e-9)
        assert float(row["test_accuracy_min"]) == min(seeds) and float(row["test_accuracy_max"]) == max(seeds)
    summary = json.loads((hidden_quick / "hidden_sizes.json").read_text())
    best = max(records, key=lambda r: r["test_accuracy"])
    assert summary["quick"] is True and summary["best_run"]["test_accuracy"] == best["test_accuracy"]
    # Even 2 epochs on 3000 images: 16 neurons beat 4, and well above chance (10%).
    by_shape = {tuple(r["hidden"]): r["test_accuracy_mean"] for r in summary["rows"]}
    assert by_shape[(16,)] > by_shape[(4,)] and best["test_accuracy"] > 0.6
    assert_png(hidden_quick / "hidden_sizes.png")


def test_learning_rates_quick_heatmap_table_and_curves(rates_quick):
    records = jsonl(rates_quick / "sweep_quick" / "results.jsonl")
    rates, shapes = learning_rates.QUICK_RATES, learning_rates.QUICK_SHAPES
    assert len(records) == len(rates) * len(shapes) * learning_rates.QUICK["seeds"]
    rows = sweep_study.read_csv(rates_quick / "learning_rates.csv")
    assert len(rows) == len(rates) * len(shapes)
    summary = json.loads((rates_quick / "learning_rates.json").read_text())
    lesson = {r["lr"]: r["test_accuracy_mean"] for r in summary["rows"] if tuple(r["hidden"]) == (16, 16)}
    # The lesson's rate 3 works; 100x smaller barely moves in 2 epochs; 100 saturates the sigmoids.
    assert max(lesson, key=lesson.get) == 3.0 and lesson[3.0] > 0.5
    assert lesson[0.03] < lesson[3.0] - 0.2 and lesson[100.0] < lesson[3.0] - 0.2
    curves = summary["curves"]
    assert curves["hidden"] == [16, 16] and [curves[k]["lr"] for k in ("too small", "best", "too large")] == [0.03, 3.0, 100.0]
    good = [r for r in records if r["hidden"] == [16, 16] and r["lr"] == 3.0]
    np.testing.assert_allclose(curves["best"]["cost"], np.mean([r["train_cost_curve"] for r in good], axis=0))
    assert_png(rates_quick / "learning_rates.png")


def test_a_study_run_again_resumes_instead_of_retraining(rates_quick, mnist_dir, capsys):
    results = rates_quick / "sweep_quick" / "results.jsonl"
    before = results.read_text()
    assert learning_rates.main(["--quick", "--out", str(rates_quick), "--data-dir", str(mnist_dir)]) == 0
    assert results.read_text() == before  # nothing retrained, nothing appended


def test_benchmark_smoke_run(mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(EXPERIMENTS_DIR / "benchmark.py"), "--data-dir", str(mnist_dir), "--configs", "8",
         "--epochs", "1", "--sequential", "2", "--train-images", "500", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = json.loads(out.read_text())
    assert numbers["configs"] == 8 and numbers["sequential_configs"] == 2
    for key in ("sweep", "sweep_one_device", "one_after_another"):
        assert numbers[key]["model_epochs_per_second"] > 0
    assert "ratio sweep / one after another" in done.stdout
    np.testing.assert_allclose(numbers["ratio"], numbers["sweep"]["model_epochs_per_second"]
                               / numbers["one_after_another"]["model_epochs_per_second"])


def test_best_mlp_quick_runs_every_setting_with_and_without_augmentation(mnist_dir, tmp_path):
    assert best_mlp.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir)]) == 0
    summary = json.loads((tmp_path / "best_mlp.json").read_text())
    rows = summary["rows"]
    assert {r["setting"] for r in rows} == {"lesson", "no_augment", "elastic"}
    assert {(r["setting"], r["augment"]) for r in rows} >= {("lesson", "affine"), ("elastic", "none"), ("elastic", "elastic")}
    for row in rows:  # each row is the configuration validation chose, averaged over its seeds
        records = jsonl(tmp_path / f"{row['setting']}_quick" / "results.jsonl")
        candidates = [r for r in records if r["augment"] == row["augment"]]
        assert all(r["validation"] == 500 and r["select"] == "best" for r in candidates)
        mine = [r for r in candidates if r["lr"] == row["lr"] and best_mlp.options_label(r, None) == row["options"]]
        assert row["runs"] == len(mine) >= 1
        assert row["validation_accuracy_mean"] == max(r["selected_validation_accuracy"] for r in candidates) or len(mine) > 1
        assert row["test_accuracy_mean"] == pytest.approx(np.mean([r["selected_test_accuracy"] for r in mine]))
        assert row["test_standard_error"] == pytest.approx(np.sqrt(row["test_accuracy_mean"] * (1 - row["test_accuracy_mean"]) / 500))
        assert len(row["error_curve"]) == row["epochs"] == 2
    assert len(sweep_study.read_csv(tmp_path / "best_mlp.csv")) == len(rows)
    assert_png(tmp_path / "best_mlp.png")
    assert_png(tmp_path / "augmented_digits.png")
