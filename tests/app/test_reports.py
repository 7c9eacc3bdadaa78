"""Reports (``jaxdigits.reports``): a report of a one-epoch run on the real MNIST, two networks
side by side, sweep reports (finished or still running), their one-line errors, hostile sweep
records, and Ctrl-C or SIGTERM in the middle of a report."""

from __future__ import annotations

import base64
import csv
import json
import signal

import jax
import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import cli, reports
from jaxdigits.core.transforms import ROBUSTNESS
from tests.conftest import deadline, synthetic_dataset, write_idx_folder
from tests.helpers import assert_interrupted_cleanly, interrupt_when, one_error_line, written_sweep


# A few strengths per perturbation (the identity among them) keep the tests quick.
FEW = {name: (p.strengths[0], p.identity, p.strengths[-1]) for name, p in ROBUSTNESS.items()}


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


def test_report_compare_says_whether_the_difference_is_significant():
    data = synthetic_dataset(300, 80)
    result = jd.train(jd.TrainConfig(hidden=(16,), lr=3.0, epochs=3), data)
    weak = jd.train(jd.TrainConfig(hidden=(16,), lr=1e-3, epochs=1), data)
    from jaxdigits.reports import compare_networks

    same = compare_networks(result.params, result.params, data.test_images, data.test_labels)
    assert same["only_a"] == same["only_b"] == 0 and not same["significant"]
    differ = compare_networks(result.params, weak.params, data.test_images, data.test_labels)
    assert differ["significant"] and differ["only_a"] > differ["only_b"]


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_a_report_out_that_is_no_folder_is_refused_before_anything_is_measured(tmp_path, monkeypatch, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("not a folder")
    else:
        out.symlink_to(tmp_path / "nowhere")
    monkeypatch.setattr(reports, "measure", lambda *a, **k: pytest.fail("measured before checking --out"))
    network = jd.init_mlp(jax.random.PRNGKey(0))
    data = synthetic_dataset(20, 10)
    with pytest.raises(jd.RunFolderError, match="--out (is a link to nothing|must be a folder, and this is a file); give a folder"):
        jd.report(network, data, out_dir=out)


# --- a sweep's records are checked before anything is computed -------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A sweep of 16 configurations (2 epochs each) written without training."""
    out = tmp_path_factory.mktemp("written") / "sweep"
    grid = jd.SweepGrid(hidden=[(16,), (32,)], lr=[0.1, 0.3, 1.0, 3.0], seed=[0, 1], epochs=2)
    return out, written_sweep(out, grid)


@pytest.mark.parametrize("change, expected", [
    ({"test_accuracy": -5}, "test_accuracy is -5, not an accuracy (a number from 0 to 1)"),
    ({"test_accuracy": float("nan")}, "test_accuracy is NaN, not an accuracy"),
    ({"best_test_accuracy": float("-inf")}, "best_test_accuracy is -Infinity, not an accuracy"),
    ({"test_accuracy": 1e308}, "test_accuracy is 1e+308, not an accuracy"),
    ({"lr": 42.0}, "lr 42.0 is not its configuration's 0.3"),
])
def test_sweep_report_refuses_a_bad_record_in_one_line_before_computing(change, expected, written, tmp_path, capsys):
    folder, records = written
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_bytes((folder / "sweep.json").read_bytes())
    rows = [json.dumps(r) for r in records]
    rows[2] = json.dumps({**records[2], **change})
    (sweep / "results.jsonl").write_text("\n".join(rows) + "\n")
    assert cli.main(["sweep-report", str(sweep)]) == 1
    line = one_error_line(capsys.readouterr().err, f"jaxdigits sweep-report: error: {sweep / 'results.jsonl'}, line 3: ")
    assert expected in line and "delete the bad lines, or resume the sweep" in line
    assert not (sweep / "report").exists()


def test_sweep_report_refuses_an_axis_that_is_no_field_listing_the_allowed(written, tmp_path, capsys):
    folder, _ = written
    assert cli.main(["sweep-report", str(folder), "--group", "evil", "--out", str(tmp_path / "report")]) == 2
    line = one_error_line(capsys.readouterr().err, "jaxdigits sweep-report: error: --group 'evil' is not a config field")
    assert "give one of: hidden, activation, cost" in line and "those that vary here: lr, hidden" in line
    assert not (tmp_path / "report").exists()


def test_sweep_report_of_50_mb_of_repeated_records_takes_seconds(written, tmp_path, capsys):
    folder, records = written
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_bytes((folder / "sweep.json").read_bytes())
    block = (folder / "results.jsonl").read_bytes()
    (sweep / "results.jsonl").write_bytes(block * (50_000_000 // len(block) + 1))
    with deadline(60):
        assert cli.main(["sweep-report", str(sweep)]) == 0
    printed, err = capsys.readouterr()
    assert f"{len(records)} of {len(records)} runs finished" in printed
    assert "lines repeat a configuration of an earlier line; each configuration counts once" in err


# --- Ctrl-C and SIGTERM: exit 130 in one line, no report half-made ----------------------------------


def staging(out):
    return lambda: any(out.glob(".jaxdigits-staging.*"))


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
                         ids=["ctrl-c", "sigterm", "ctrl-c twice"])
def test_an_interrupted_report_exits_130_and_leaves_its_folder_as_it_was(signals, tmp_path_factory, tmp_path):
    data_dir = write_idx_folder(tmp_path_factory.mktemp("data"), synthetic_dataset(200, 3000), compress=False)
    run = tmp_path / "run"
    jd.train(jd.TrainConfig(hidden=(8,), epochs=1), jd.load_mnist(data_dir), out_dir=run)
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("an older report")  # left exactly as it was
    returncode, stderr = interrupt_when(["report", run, "--data-dir", data_dir, "--out", out], staging(out), signals)
    first = "interrupted; no report written" if len(signals) == 1 else "interrupted"
    assert_interrupted_cleanly(returncode, stderr, first)
    assert sorted(p.name for p in out.iterdir()) == ["report.json"] and (out / "report.json").read_text() == "an older report"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_report_exits_130_and_makes_no_folder(signum, written, tmp_path):
    folder, _ = written
    out = tmp_path / "report"
    returncode, stderr = interrupt_when(["sweep-report", folder, "--out", out], staging(out), (signum,))
    assert_interrupted_cleanly(returncode, stderr, f"interrupted; no report written, {out} is as it was before")
    assert not out.exists()
