"""How much faster is a sweep than training the same configurations one after another?

Trains a grid of the lesson's 784-16-16-10 network (sigmoid, quadratic cost, SGD, batch 10) --
8 learning rates x (configs / 8) seeds, 64 configurations by default -- on the real MNIST three
ways, in one run, and prints the throughput of each in model-epochs per second (configurations
x epochs / seconds):

  * ``jaxdigits.sweep`` over every device (on a CPU-only host each core is made a device);
  * ``jaxdigits.sweep`` on one device (what vmap alone gains);
  * ``jaxdigits.train`` on each configuration, one after another (the single-run entry point);
  * with ``--peer torch`` (when PyTorch is importable), the same grid in PyTorch's own way of
    training many models at once: ``torch.func.stack_module_state`` and ``vmap(grad(...))`` over
    ``functional_call``, the same network, cost (quadratic, with the 1/2), plain SGD with each
    model's own rate, the same initial weights and the same mini-batches, step for step.

``--scaling 64 256 1024`` instead times sweeps of growing grids (1 epoch each by default with
``--epochs 1``), each with the group size chosen for the device and as one single group, and
prints each rate against the smallest grid's: the automatic group size is what keeps the rate
per model from falling as the grid grows.

The headline numbers are wall-clock, everything included (compiling, evaluating after each
epoch); "compile excluded" (``training_only_*`` in the JSON) leaves out the compilation (for
PyTorch, building the ensemble, and its final evaluation). Several configurations are trained one
after another (``--sequential``, default all of them) and their rate stands for the rest.

    python experiments/benchmark.py --data-dir path/to/mnist
    python experiments/benchmark.py --data-dir path/to/mnist --configs 256 --sequential 16   # a GPU
    python experiments/benchmark.py --data-dir path/to/mnist --peer torch
    python experiments/benchmark.py --data-dir path/to/mnist --scaling 64 256 1024 --epochs 1
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


import numpy as np

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
    parser.add_argument("--peer", choices=["torch"], help="also train the grid with this library (skipped if absent)")
    parser.add_argument("--scaling", type=int, nargs="+", metavar="CONFIGS",
                        help="time sweeps of these grid sizes, automatic groups against one group (multiples of 8)")
    args = parser.parse_args(argv)
    if any(n < 8 or n % 8 for n in [args.configs, *(args.scaling or [])]):
        parser.error("--configs and --scaling take positive multiples of 8 (8 learning rates x configs/8 seeds)")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def rate(configs: int, epochs: int, seconds: float) -> float:
    """Model-epochs per second."""
    return configs * epochs / seconds


def time_sweep(grid: jd.SweepGrid, data: jd.Dataset, devices, max_group_size: int | None = None) -> dict:
    """Wall seconds of one sweep of ``grid`` over ``devices``, and the part spent compiling."""
    start = time.perf_counter()
    records = jd.sweep(grid, data, devices=devices, max_group_size=max_group_size).records
    wall = time.perf_counter() - start
    # Group timings repeat in every record of the group: count each group once via its size.
    compile_seconds = sum(r["compile_seconds"] / r["group_size"] for r in records)
    return {
        "wall_seconds": wall,
        "train_seconds": wall - compile_seconds,
        "compile_seconds": compile_seconds,
        "devices": records[0]["devices"],
        "group_size": max(r["group_size"] for r in records),
        "groups": round(sum(1 / r["group_size"] for r in records)),
        "best_test_accuracy": max(r["test_accuracy"] or 0.0 for r in records),
    }


def time_sequential(configs: Sequence[jd.TrainConfig], data: jd.Dataset) -> dict:
    """Wall seconds of ``train`` on each config in turn; "train_seconds" leaves out the first
    run's extra time over the others' mean (its compilation)."""
    walls = []
    for config in configs:
        start = time.perf_counter()
        jd.train(config, data)
        walls.append(time.perf_counter() - start)
    compile_estimate = max(walls[0] - sum(walls[1:]) / len(walls[1:]), 0.0) if len(walls) > 1 else 0.0
    return {"wall_seconds": sum(walls), "train_seconds": sum(walls) - compile_estimate}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: F401
    except ImportError:
        return False
    return True


def time_torch(configs: Sequence[jd.TrainConfig], data: jd.Dataset) -> dict:
    """Train ``configs`` (one shape, sigmoid, quadratic cost, plain SGD) as one PyTorch ensemble.

    The models start from jaxdigits' initial weights for their seeds and draw jaxdigits' batches
    (``batch_order`` of each seed's shuffle key), so both libraries do the same arithmetic; each
    step is ``vmap(grad(cost))`` over ``functional_call`` of the stacked models, then
    ``p -= lr * g`` with each model's own rate.
    """
    import copy

    import jax
    import torch
    from torch import nn
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    start = time.perf_counter()
    config = configs[0]

    def module(params: jd.Network) -> nn.Module:
        layers = []
        for layer in params.layers:
            linear = nn.Linear(*np.shape(layer["w"]))
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.asarray(layer["w"]).T.copy()))
                linear.bias.copy_(torch.from_numpy(np.array(layer["b"])))
            layers += [linear, nn.Sigmoid()]
        return nn.Sequential(*layers)

    keys = {c.seed: jd.run_keys(c.seed) for c in configs}
    models = [module(jd.init_state(c, keys[c.seed][0], data.inputs, data.num_classes).params) for c in configs]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    rates = torch.tensor([c.lr for c in configs], dtype=torch.float32)
    seeds = sorted(keys)
    row = torch.tensor([seeds.index(c.seed) for c in configs])
    images, labels = torch.from_numpy(np.asarray(data.train_images, np.float32)), torch.from_numpy(np.asarray(data.train_labels, np.int64))
    targets = nn.functional.one_hot(labels, data.num_classes).float()

    def cost(p, b, x, y):
        out = functional_call(base, (p, b), (x,))
        return 0.5 * ((out - y) ** 2).sum(-1).mean()

    step_grads = vmap(grad(cost), in_dims=(0, 0, 0, 0))
    setup = time.perf_counter() - start
    for epoch in range(1, config.epochs + 1):
        # Each seed's batches for this epoch, as jaxdigits draws them: (seeds, steps, batch).
        order = np.stack([np.asarray(jd.batch_order(jax.random.fold_in(keys[s][1], epoch), len(images), config.batch_size))
                          for s in seeds])
        order = torch.from_numpy(order.astype(np.int64))[row]  # (models, steps, batch)
        with torch.no_grad():
            for step in range(order.shape[1]):
                batch = order[:, step]
                grads = step_grads(params, buffers, images[batch], targets[batch])
                for name, g in grads.items():
                    params[name].sub_(rates.view((-1,) + (1,) * (g.dim() - 1)) * g)
    train = time.perf_counter() - start - setup
    with torch.no_grad():
        test_x = torch.from_numpy(np.asarray(data.test_images, np.float32))
        out = vmap(lambda p, b: functional_call(base, (p, b), (test_x,)))(params, buffers)
        accuracy = (out.argmax(-1) == torch.from_numpy(np.asarray(data.test_labels, np.int64))).float().mean(-1)
    return {"wall_seconds": time.perf_counter() - start, "train_seconds": train, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "best_test_accuracy": float(accuracy.max()),
            "test_accuracy": [float(a) for a in accuracy]}


def scaling(args, data: jd.Dataset, devices) -> int:
    """Sweeps of growing grids: automatic groups against one group, each rate against the first."""
    numbers = {"epochs": args.epochs, "devices": len(devices), "device_kind": devices[0].device_kind,
               "platform": devices[0].platform, "load_average_before": os.getloadavg()[0], "grids": []}
    print(f"scaling: grids of {', '.join(map(str, args.scaling))} configurations of 784-{'-'.join(map(str, HIDDEN))}-10, "
          f"batch 10, {args.epochs} epoch(s) of {len(data.train_images)} images, {len(devices)} x {devices[0].device_kind}")
    for n in args.scaling:
        grid = jd.SweepGrid(hidden=[HIDDEN], lr=list(RATES), seed=list(range(n // 8)), epochs=args.epochs)
        entry = {"configs": n}
        for name, size in (("automatic", None), ("one_group", n)):
            timing = time_sweep(grid, data, devices, max_group_size=size)
            timing["model_epochs_per_second"] = rate(n, args.epochs, timing["wall_seconds"])
            timing["compile_excluded_model_epochs_per_second"] = rate(n, args.epochs, timing["train_seconds"])
            entry[name] = timing
        numbers["grids"].append(entry)
    first = numbers["grids"][0]["automatic"]["model_epochs_per_second"]
    for entry in numbers["grids"]:
        auto, one = entry["automatic"], entry["one_group"]
        entry["automatic_vs_first"] = auto["model_epochs_per_second"] / first
        entry["one_group_vs_first"] = one["model_epochs_per_second"] / first
        print(f"{entry['configs']:5d} configs: automatic groups of {auto['group_size']:4d} x{auto['groups']:<3d} "
              f"{auto['model_epochs_per_second']:7.1f} model-epochs/s ({entry['automatic_vs_first']:.2f}x the first grid); "
              f"one group {one['model_epochs_per_second']:7.1f}/s ({entry['one_group_vs_first']:.2f}x)")
    numbers["load_average_after"] = os.getloadavg()[0]
    print(f"load average {numbers['load_average_before']:.2f} before, {numbers['load_average_after']:.2f} after")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    jd.use_cpu_cores(args.cpu_devices)  # before JAX starts
    import jax

    data = jd.load_mnist(args.data_dir)
    if args.train_images:
        data = data.subset(args.train_images)
    devices = jax.devices()
    jd.sweep(jd.SweepGrid(hidden=[HIDDEN], seed=[0], lr=[RATES[0]], epochs=1), data.subset(100, 100))  # warm up JAX
    if args.scaling:
        return scaling(args, data, devices)
    seeds = list(range(args.configs // 8))
    grid = jd.SweepGrid(hidden=[HIDDEN], lr=list(RATES), seed=seeds, epochs=args.epochs)
    configs = grid.configs()
    sequential = configs[: args.sequential or len(configs)]
    load_before = os.getloadavg()
    print(f"benchmark: {len(configs)} configurations ({len(RATES)} rates x {len(seeds)} seeds) of "
          f"784-{'-'.join(map(str, HIDDEN))}-10, batch 10, {args.epochs} epochs of {len(data.train_images)} images")
    print(f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}); host {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; load average {load_before[0]:.2f}; jax {jax.__version__}")

    swept = time_sweep(grid, data, devices)
    one_device = time_sweep(grid, data, devices[:1]) if len(devices) > 1 else swept
    alone = time_sequential(sequential, data)
    peer = None
    if args.peer == "torch" and not torch_available():
        print("peer torch: PyTorch (torch.func) is not importable here; the comparison is skipped")
    elif args.peer == "torch":
        peer = time_torch(configs, data)
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
    if peer is not None:
        numbers["torch"] = {**peer, "model_epochs_per_second": rate(n, e, peer["wall_seconds"]),
                            "training_only_model_epochs_per_second": rate(n, e, peer["train_seconds"])}
        numbers["ratio_jaxdigits_torch"] = numbers["sweep"]["model_epochs_per_second"] / numbers["torch"]["model_epochs_per_second"]
        numbers["ratio_jaxdigits_torch_training_only"] = (numbers["sweep"]["training_only_model_epochs_per_second"]
                                                          / numbers["torch"]["training_only_model_epochs_per_second"])
    numbers["ratio"] = numbers["sweep"]["model_epochs_per_second"] / numbers["one_after_another"]["model_epochs_per_second"]
    numbers["ratio_training_only"] = (numbers["sweep"]["training_only_model_epochs_per_second"]
                                      / numbers["one_after_another"]["training_only_model_epochs_per_second"])

    def line(name, entry, count):
        return (f"{name:<34} {entry['model_epochs_per_second']:8.1f} model-epochs/s   "
                f"(wall {entry['wall_seconds']:.1f} s for {count} x {e} epochs; compile excluded "
                f"{entry['training_only_model_epochs_per_second']:.1f}/s)")

    print(line(f"sweep, {len(devices)} device(s)", numbers["sweep"], n))
    if len(devices) > 1:
        print(line("sweep, 1 device", numbers["sweep_one_device"], n))
    print(line("train(), one after another", numbers["one_after_another"], m))
    if peer is not None:
        print(line(f"torch.func ensemble ({peer['threads']} threads)", numbers["torch"], n))
    print(f"ratio sweep / one after another: {numbers['ratio']:.1f}x "
          f"(compile excluded: {numbers['ratio_training_only']:.1f}x); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    if peer is not None:
        print(f"ratio jaxdigits/torch: {numbers['ratio_jaxdigits_torch']:.2f}x (compile/setup excluded: "
              f"{numbers['ratio_jaxdigits_torch_training_only']:.2f}x); best test accuracy jaxdigits "
              f"{100 * swept['best_test_accuracy']:.2f}%, torch {100 * peer['best_test_accuracy']:.2f}% (torch {peer['torch']})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
