"""experiments/accelerator_check.py --quick: runs on the CPU, without tensorflow-datasets, and
writes every field the accelerator report needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "accelerator_check.py"

# Run the script with tensorflow_datasets made unimportable: any import of it would fail.
RUNNER = ("import runpy, sys; sys.modules['tensorflow_datasets'] = None; "
          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_quick_run_writes_the_report_without_tfds(mnist_dir, tmp_path):
    out = tmp_path / "accelerator.json"
    done = subprocess.run([sys.executable, "-c", RUNNER, str(SCRIPT), "--quick", "--data-dir", str(mnist_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["tensorflow_datasets_imported"] is False
    assert {"kind", "platform", "count"} <= set(report["device"]) and report["device"]["count"] >= 1
    single = report["single_model"]
    assert single["network"] == "784-16-16-10" and single["batch_size"] == 10 and single["epoch_seconds"] > 0
    assert single["compile_seconds"] > 0
    assert [s["configs"] for s in report["sweeps"]] == [8, 16]
    for entry in report["sweeps"]:
        assert entry["model_epochs_per_second"] > 0 and entry["compile_seconds"] >= 0
        assert entry["compile_excluded_model_epochs_per_second"] >= entry["model_epochs_per_second"]
        assert "peak_bytes_in_use" in entry
    assert "peak_bytes_in_use" in report
    precision = report["matmul_precision"]
    assert precision["jax_default_matmul_precision"] and precision["float32_matmul_on_device"] in ("float32", "tf32", "bfloat16")
    agreement = report["cpu_agreement"]
    for side in ("accelerator", "cpu"):
        assert 0 <= agreement[side]["test_accuracy"] <= 1 and agreement[side]["train_cost"] > 0
    assert agreement["cpu"]["device"].startswith("cpu")
    assert abs(agreement["test_accuracy_difference"]) <= 1 and "train_cost_difference" in agreement
    assert report["target"]["configs"] == 1024 and report["target"]["model_epochs_per_second"] == 1000
