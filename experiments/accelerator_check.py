"""What does one accelerator do for jaxdigits? One short run that records it as JSON.

On the default JAX device (a GPU or TPU when there is one) it measures, for the lesson's network
(784-16-16-10, sigmoid, quadratic cost, plain SGD, batch 10) on the real MNIST:

  * the device: kind, platform, count, memory limit;
  * one model's epoch: ``jaxdigits.make_epoch`` compiled ahead of time, then timed (median of a
    few epochs over the full training set); compile time apart;
  * sweep throughput in model-epochs per second at 64, 256, 1024 and 4096 configurations
    (8 learning rates x configs/8 seeds, one epoch each, ``jaxdigits.sweep`` with the group size
    it chooses for the device), wall and compile excluded, with the compile time apart;
  * peak device memory (``memory_stats()["peak_bytes_in_use"]`` where the backend has it);
  * the float32 matmul precision: ``jax_default_matmul_precision`` and what XLA really does on
    the device at default precision (measured: the relative error of a float32 product against
    ``Precision.HIGHEST``; about 1e-3 is TF32, as on recent NVIDIA GPUs, about 1e-7 full float32);
  * how far one configuration trained on the accelerator ends from the same configuration
    trained on the CPU (``jax.devices("cpu")``, data on the CPU): test accuracy and final cost.

The JSON is rewritten after each part, so a run cut short keeps what it measured. Data comes
only from IDX files (``--data-dir`` or ``$JAXDIGITS_DATA_DIR``); nothing from tensorflow-datasets
is imported. Under 5 minutes on one GPU; ``--quick`` is a CPU smoke run of a few seconds
(few configurations, a slice of the data).

    PYTHONPATH=. python experiments/accelerator_check.py --data-dir path/to/mnist --out accelerator.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxdigits as jd
from jaxdigits.data import DATA_DIR_ENV, load_idx_folder
from jaxdigits.files import write_json
from jaxdigits.core import epoch as epoch_module
from jaxdigits.records import sizes_label

sys.path.insert(0, str(Path(__file__).resolve().parent))
import epoch_speed  # noqa: E402

RATES = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
LESSON = jd.TrainConfig(hidden=(16, 16), activation="sigmoid", cost="quadratic", optimizer="sgd", lr=3.0, batch_size=10)
TARGET = {"configs": 1024, "model_epochs_per_second": 1000.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help=f"MNIST IDX folder (else ${DATA_DIR_ENV})")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--configs", type=int, nargs="+", help="sweep sizes, multiples of 8 (default 64 256 1024 4096)")
    parser.add_argument("--quick", action="store_true", help="a CPU smoke run: 8 and 16 configurations, 1000 training images")
    args = parser.parse_args(argv)
    args.configs = args.configs or ([8, 16] if args.quick else [64, 256, 1024, 4096])
    if any(n < 8 or n % 8 for n in args.configs):
        parser.error("--configs takes positive multiples of 8 (8 learning rates x configs/8 seeds)")
    folder = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if not folder:
        parser.error(f"give --data-dir (or set {DATA_DIR_ENV}) with the four MNIST IDX files")
    args.data_dir = Path(folder)
    return args


def peak_bytes(device: jax.Device) -> int | None:
    """The device's peak memory in use so far, where the backend reports it."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # not every backend implements memory_stats
        stats = {}
    return stats.get("peak_bytes_in_use")


def device_info() -> dict:
    devices = jax.devices()
    device = devices[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:
        stats = {}
    return {"kind": device.device_kind, "platform": device.platform, "count": len(devices),
            "memory_bytes_limit": stats.get("bytes_limit"),
            "compute_capability": getattr(device, "compute_capability", None),
            "host": f"{platform.machine()}, {os.cpu_count()} cores"}


def matmul_precision(device: jax.Device) -> dict:
    """The configured default precision and what a float32 product at that precision computes
    on ``device``: its relative error against ``Precision.HIGHEST``."""
    rng = np.random.default_rng(0)
    a, b = (jax.device_put(rng.standard_normal((512, 512)).astype(np.float32), device) for _ in range(2))
    default = np.asarray(jax.jit(lambda x, y: x @ y)(a, b), np.float64)
    highest = np.asarray(jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))(a, b), np.float64)
    error = float(np.abs(default - highest).max() / np.abs(highest).max())
    # A float32 product of 512 terms rounds at about 1e-7; TF32 (10-bit mantissa) about 1e-4 to
    # 1e-3; bfloat16 (7-bit) about 1e-2.
    used = "float32" if error < 1e-5 else "tf32" if error < 4e-3 else "bfloat16"
    return {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision or "default",
            "float32_matmul_on_device": used, "relative_error_default_vs_highest": error}


def single_model_epoch(data: jd.Dataset, repeats: int) -> dict:
    """``make_epoch`` of the lesson's network compiled ahead of time, then timed over the data
    (kept on the device as ``train`` keeps it: uint8 pixels)."""
    config = LESSON
    images = jax.device_put(epoch_module.device_images(data.train_images, config.dtype))
    labels = jax.device_put(data.train_labels)
    state = jd.init_state(config, jd.run_keys(0)[0], data.inputs, data.num_classes)
    times, compile_seconds = epoch_speed.time_epochs(jd.make_epoch(config), state, images, labels, repeats)
    return {"network": sizes_label(config.hidden, 784, 10), "batch_size": config.batch_size,
            "steps_per_epoch": len(data.train_images) // config.batch_size, "epoch_seconds": statistics.median(times),
            "epoch_seconds_all": times, "compile_seconds": compile_seconds}


def sweep_throughput(configs: int, data: jd.Dataset) -> dict:
    """One epoch of an 8-rate x configs/8-seed sweep of the lesson's network."""
    grid = jd.SweepGrid(hidden=[LESSON.hidden], activation=[LESSON.activation], cost=[LESSON.cost],
                        optimizer=[LESSON.optimizer], batch_size=[LESSON.batch_size],
                        lr=list(RATES), seed=list(range(configs // 8)), epochs=1)
    start = time.perf_counter()
    records = jd.sweep(grid, data).records
    wall = time.perf_counter() - start
    compile_seconds = sum(r["compile_seconds"] / r["group_size"] for r in records)
    return {"configs": configs, "rates": len(RATES), "seeds": configs // 8, "epochs": 1,
            "group_size": max(r["group_size"] for r in records), "groups": round(sum(1 / r["group_size"] for r in records)),
            "wall_seconds": wall, "compile_seconds": compile_seconds,
            "model_epochs_per_second": configs / wall,
            "compile_excluded_model_epochs_per_second": configs / max(wall - compile_seconds, 1e-9),
            "best_test_accuracy": max(r["test_accuracy"] or 0.0 for r in records),
            "peak_bytes_in_use": peak_bytes(jax.devices()[0])}


def cpu_agreement(data: jd.Dataset, epochs: int) -> dict:
    """The lesson's configuration trained on the default device and on the CPU, data on each."""
    config = LESSON.replace(epochs=epochs, seed=0)
    results = {}
    for name, device in (("accelerator", jax.devices()[0]), ("cpu", jax.devices("cpu")[0])):
        with jax.default_device(device):
            result = jd.train(config, data)
        leaf = jax.tree_util.tree_leaves(result.params)[0]
        results[name] = {"device": str(next(iter(leaf.devices()))), "test_accuracy": result.record["test_accuracy"],
                         "train_cost": result.record["train_cost"], "status": result.status}
    return {"config": {"network": sizes_label(config.hidden, 784, 10), "lr": config.lr, "batch_size": config.batch_size,
                       "seed": config.seed, "epochs": epochs},
            **results,
            "test_accuracy_difference": results["accelerator"]["test_accuracy"] - results["cpu"]["test_accuracy"],
            "train_cost_difference": results["accelerator"]["train_cost"] - results["cpu"]["train_cost"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        data = load_idx_folder(args.data_dir)
    except jd.JaxdigitsError as exc:
        print(f"accelerator_check: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.quick:
        data = jd.Dataset(data.train_images[:1000], data.train_labels[:1000], data.test_images[:500], data.test_labels[:500])
    report = {"quick": args.quick, "jax_version": jax.__version__, "device": device_info(),
              "data": {"train_images": len(data.train_images), "test_images": len(data.test_images)},
              "target": {**TARGET, "network": sizes_label(LESSON.hidden, 784, 10), "batch_size": LESSON.batch_size}}

    def save(stage: str) -> None:
        report["total_seconds"] = time.perf_counter() - started
        report["tensorflow_datasets_imported"] = sys.modules.get("tensorflow_datasets") is not None
        write_json(args.out, report)
        print(f"accelerator_check: {stage} ({report['total_seconds']:.0f} s)", flush=True)

    device = report["device"]
    print(f"accelerator_check: {device['count']} x {device['kind']} ({device['platform']}), "
          f"{len(data.train_images)} training images", flush=True)
    report["matmul_precision"] = matmul_precision(jax.devices()[0])
    save(f"matmul precision: float32 products at default precision compute as "
         f"{report['matmul_precision']['float32_matmul_on_device']}")
    report["single_model"] = single_model_epoch(data, repeats=1 if args.quick else 3)
    save(f"one model: {report['single_model']['epoch_seconds']:.3f} s per epoch")
    report["sweeps"] = []
    for configs in args.configs:
        entry = sweep_throughput(configs, data)
        report["sweeps"].append(entry)
        report["peak_bytes_in_use"] = peak_bytes(jax.devices()[0])
        save(f"sweep of {configs}: {entry['model_epochs_per_second']:.1f} model-epochs/s "
             f"(compile excluded {entry['compile_excluded_model_epochs_per_second']:.1f}; groups of {entry['group_size']})")
    at_target = [s for s in report["sweeps"] if s["configs"] == TARGET["configs"]]
    report["target"]["met"] = (at_target[0]["model_epochs_per_second"] >= TARGET["model_epochs_per_second"]
                               if at_target else None)
    report["cpu_agreement"] = cpu_agreement(data, epochs=1 if args.quick else 3)
    agreement = report["cpu_agreement"]
    save(f"accelerator vs CPU: test accuracy {100 * agreement['accelerator']['test_accuracy']:.2f}% vs "
         f"{100 * agreement['cpu']['test_accuracy']:.2f}%, final cost difference {agreement['train_cost_difference']:.2e}")
    print(f"accelerator_check: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
