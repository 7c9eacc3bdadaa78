"""How much faster is a sweep than training the same configurations one after another?

Trains a grid of the lesson's 784-16-16-10 network (sigmoid, quadratic cost, SGD, batch 10) --
8 learning rates x (configs / 8) seeds, 64 configurations by default -- on the real MNIST three
ways, in one run, and prints the throughput of each in model-epochs per second (configurations
x epochs / seconds):

  * ``jaxdigits.sweep`` over every device (on a CPU-only host each core is made a device);
  * ``jaxdigits.sweep`` on one device (what vmap alone gains);
  * ``jaxdigits.train`` on each configuration, one after another (the single-run entry point).

The headline numbers are wall-clock, everything included (compiling, evaluating after each
epoch); "training only" counts just the compiled epochs (for a sweep: its groups' time less
their compilation, so the evaluation after each epoch is still in). Several configurations are trained one
after another (``--sequential``, default all of them) and their rate stands for the rest.

    python experiments/benchmark.py --data-dir ../shared/mnist
    python experiments/benchmark.py --data-dir ../shared/mnist --configs 256 --sequential 16   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence


import jaxdigits as jd

RATES = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
HIDDEN = (16, 16)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX folder (else $JAXDIGITS_DATA_DIR)")
    parser.add_argument("--configs", type=int, default=64, help="configurations, a multiple of 8 (default 64)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per configuration (default 2)")
    parser.add_argument("--sequential", type=int, help="train this many one after another (default: all)")
    parser.add_argument("--cpu-devices", type=int, help="with no accelerator, CPU devices (default: one per core)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--train-images", type=int, help="use only the first N training images (a smoke test)")
    args = parser.parse_args(argv)
    if args.configs < 8 or args.configs % 8:
        parser.error("--configs must be a positive multiple of 8 (8 learning rates x configs/8 seeds)")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def rate(configs: int, epochs: int, seconds: float) -> float:
    """Model-epochs per second."""
    return configs * epochs / seconds


def time_sweep(grid: jd.SweepGrid, data: jd.Dataset, devices) -> dict:
    """Wall and training-only seconds of one sweep of ``grid`` over ``devices``."""
    start = time.perf_counter()
    records = jd.sweep(grid, data, devices=devices).records
    wall = time.perf_counter() - start
    # Group timings repeat in every record of the group: count each group once via its size.
    return {
        "wall_seconds": wall,
        "train_seconds": sum((r["group_seconds"] - r["compile_seconds"]) / r["group_size"] for r in records),
        "compile_seconds": sum(r["compile_seconds"] / r["group_size"] for r in records),
        "devices": records[0]["devices"],
        "best_test_accuracy": max(r["test_accuracy"] or 0.0 for r in records),
    }


def time_sequential(configs: Sequence[jd.TrainConfig], data: jd.Dataset) -> dict:
    """Wall and training-only seconds of ``train`` on each config in turn."""
    start, train_seconds = time.perf_counter(), 0.0
    for config in configs:
        result = jd.train(config, data)
        train_seconds += sum(h["seconds"] for h in result.history)
    return {"wall_seconds": time.perf_counter() - start, "train_seconds": train_seconds}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    jd.use_cpu_cores(args.cpu_devices)  # before JAX starts
    import jax

    data = jd.load_mnist(args.data_dir)
    if args.train_images:
        data = data.subset(args.train_images)
    seeds = list(range(args.configs // 8))
    grid = jd.SweepGrid(hidden=[HIDDEN], lr=list(RATES), seed=seeds, epochs=args.epochs)
    configs = grid.configs()
    sequential = configs[: args.sequential or len(configs)]
    devices = jax.devices()
    load_before = os.getloadavg()
    print(f"benchmark: {len(configs)} configurations ({len(RATES)} rates x {len(seeds)} seeds) of "
          f"784-{'-'.join(map(str, HIDDEN))}-10, batch 10, {args.epochs} epochs of {len(data.train_images)} images")
    print(f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}); host {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; load average {load_before[0]:.2f}; jax {jax.__version__}")

    jd.sweep(grid.replace(seed=[0], lr=[RATES[0]], epochs=1), data.subset(100, 100))  # warm up JAX
    swept = time_sweep(grid, data, devices)
    one_device = time_sweep(grid, data, devices[:1]) if len(devices) > 1 else swept
    alone = time_sequential(sequential, data)
    load_after = os.getloadavg()

    n, e, m = len(configs), args.epochs, len(sequential)
    numbers = {
        "configs": n, "epochs": e, "sequential_configs": m, "devices": len(devices),
        "device_kind": devices[0].device_kind, "platform": devices[0].platform,
        "load_average_before": load_before[0], "load_average_after": load_after[0],
        "sweep": {**swept, "model_epochs_per_second": rate(n, e, swept["wall_seconds"]),
                  "training_only_model_epochs_per_second": rate(n, e, swept["train_seconds"])},
        "sweep_one_device": {**one_device, "model_epochs_per_second": rate(n, e, one_device["wall_seconds"]),
                             "training_only_model_epochs_per_second": rate(n, e, one_device["train_seconds"])},
        "one_after_another": {**alone, "model_epochs_per_second": rate(m, e, alone["wall_seconds"]),
                              "training_only_model_epochs_per_second": rate(m, e, alone["train_seconds"])},
    }
    numbers["ratio"] = numbers["sweep"]["model_epochs_per_second"] / numbers["one_after_another"]["model_epochs_per_second"]
    numbers["ratio_training_only"] = (numbers["sweep"]["training_only_model_epochs_per_second"]
                                      / numbers["one_after_another"]["training_only_model_epochs_per_second"])

    def line(name, entry, count):
        return (f"{name:<34} {entry['model_epochs_per_second']:8.1f} model-epochs/s   "
                f"(wall {entry['wall_seconds']:.1f} s for {count} x {e} epochs; training only "
                f"{entry['training_only_model_epochs_per_second']:.1f}/s)")

    print(line(f"sweep, {len(devices)} device(s)", numbers["sweep"], n))
    if len(devices) > 1:
        print(line("sweep, 1 device", numbers["sweep_one_device"], n))
    print(line("train(), one after another", numbers["one_after_another"], m))
    print(f"ratio sweep / one after another: {numbers['ratio']:.1f}x "
          f"(training only: {numbers['ratio_training_only']:.1f}x); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
