"""Which learning rates work for the lesson's network, and does the answer depend on its shape?

The lesson's setup (sigmoid, quadratic cost, SGD, batch 10) at nine learning rates from 0.01 to
100 for four hidden shapes (784-16-10, 784-16-16-10 -- the lesson's -- 784-64-64-10 and
784-256-10), two seeds each, trained together as one ``jaxdigits.sweep``. Writes:

    learning_rates.csv   per shape and rate: runs, diverged (NaN/inf cost), and the mean, spread
                         (sample standard deviation), min and max over seeds of final test accuracy
    learning_rates.json  the same rows, the best rate per shape, the rates within one point of
                         each shape's best, and the curves plotted
    learning_rates.png   the heatmap of mean final test accuracy (shape x rate); and, for the
                         lesson's shape, the cost and test accuracy per epoch at a rate too small,
                         the best rate and a rate too large
    sweep/               the sweep's results.jsonl (resumable: run the study again to continue)

    python experiments/learning_rates.py --out results/learning_rates --data-dir path/to/mnist
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

import common
import jaxdigits as jd
import sweep_study

NAME = "learning_rates"
RATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SHAPES = ((16,), (16, 16), (64, 64), (256,))
LESSON_SHAPE = (16, 16)
QUICK_RATES = (0.03, 0.3, 3.0, 100.0)
QUICK_SHAPES = ((8,), (16, 16))
SEEDS, EPOCHS = 2, 20
QUICK = {"seeds": 1, "epochs": 2, "num_train": 2000, "num_test": 1000}
NEAR_BEST = 0.01  # "good" rates: mean test accuracy within one percentage point of the shape's best
COLUMNS = ("hidden", "lr", "runs", "diverged", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_min",
           "test_accuracy_max", "best_test_accuracy_mean", "train_accuracy_mean")


def study_grid(shapes, rates, seeds: int, epochs: int) -> jd.SweepGrid:
    return jd.SweepGrid(hidden=list(shapes), lr=list(rates), seed=list(range(seeds)), epochs=epochs)


def mean_curve(records: Sequence[dict], key: str) -> list[float]:
    """The per-epoch mean over ``records`` of a curve, as long as the shortest (a diverged run stops early)."""
    length = min(len(r[key]) for r in records)
    return np.mean([r[key][:length] for r in records], axis=0).tolist() if length else []


def curves_for(records: Sequence[dict], shape: Sequence[int], rows: Sequence[dict]) -> dict:
    """Mean cost and test-accuracy curves of ``shape`` at its smallest, best and largest rate."""
    mine = [r for r in rows if tuple(r["hidden"]) == tuple(shape)]
    best = max(mine, key=lambda r: r["test_accuracy_mean"] or 0.0)["lr"]
    rates = min(r["lr"] for r in mine), best, max(r["lr"] for r in mine)
    curves = {}
    for role, rate in zip(("too small", "best", "too large"), rates):
        runs = [r for r in records if tuple(r["hidden"]) == tuple(shape) and r["lr"] == rate]
        curves[role] = {"lr": rate, "cost": mean_curve(runs, "train_cost_curve"),
                        "test_accuracy": mean_curve(runs, "test_accuracy_curve"),
                        "diverged": sum(r["status"] == "diverged" for r in runs)}
    return curves


def findings(rows: Sequence[dict]) -> list[dict]:
    """Per shape: the best rate, its mean accuracy, and the rates within ``NEAR_BEST`` of it."""
    out = []
    for shape in dict.fromkeys(tuple(r["hidden"]) for r in rows):
        mine = [r for r in rows if tuple(r["hidden"]) == shape]
        best = max(mine, key=lambda r: r["test_accuracy_mean"] or 0.0)
        good = [r["lr"] for r in mine if (r["test_accuracy_mean"] or 0.0) >= best["test_accuracy_mean"] - NEAR_BEST]
        out.append({"hidden": list(shape), "best_lr": best["lr"], "best_test_accuracy_mean": best["test_accuracy_mean"],
                    "good_rates": good, "worst_test_accuracy_mean": min(r["test_accuracy_mean"] or 0.0 for r in mine)})
    return out


def plot(rows: Sequence[dict], curves: dict, shapes, rates, path, title: str):
    plt = common.pyplot()
    fig = plt.figure(figsize=(13, 4.4))
    heat_ax = fig.add_subplot(1, 3, 1)
    cost_ax, acc_ax = fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)
    grid = np.full((len(shapes), len(rates)), np.nan)
    for row in rows:
        grid[list(map(tuple, shapes)).index(tuple(row["hidden"])), list(rates).index(row["lr"])] = (
            np.nan if row["test_accuracy_mean"] is None else 100 * row["test_accuracy_mean"])
    image = heat_ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        text = "NaN" if np.isnan(value) else f"{value:.0f}" if value < 99.5 else "100"
        heat_ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if value < 60 else "black")
    heat_ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates], fontsize=8)
    heat_ax.set_yticks(range(len(shapes)), [sweep_study.shape_label(s) for s in shapes], fontsize=8)
    heat_ax.set_xlabel("learning rate")
    heat_ax.set_title("mean final test accuracy (%)")
    fig.colorbar(image, ax=heat_ax, fraction=0.046, pad=0.04)
    colours = {"too small": "tab:blue", "best": "tab:green", "too large": "tab:red"}
    for role, curve in curves.items():
        epochs = range(1, len(curve["cost"]) + 1)
        label = f"lr {curve['lr']:g} ({role})" + (" diverged" if curve["diverged"] else "")
        cost_ax.plot(epochs, curve["cost"], marker=".", color=colours[role], label=label)
        acc_ax.plot(epochs, 100 * np.asarray(curve["test_accuracy"]), marker=".", color=colours[role], label=label)
    shape = sweep_study.shape_label(LESSON_SHAPE if LESSON_SHAPE in map(tuple, shapes) else shapes[-1])
    cost_ax.set_title(f"{shape}: mean training cost per epoch")
    cost_ax.set_xlabel("epoch")
    cost_ax.set_ylabel("quadratic cost")
    cost_ax.set_yscale("log")
    acc_ax.set_title(f"{shape}: test accuracy per epoch")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy (%)")
    for ax in (cost_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return common.save_figure(fig, path)


def study(args: argparse.Namespace) -> dict:
    data = common.load_data(args.data_dir)
    if args.quick:
        data = common.subset(data, QUICK["num_train"], QUICK["num_test"])
        shapes, rates, seeds, epochs = QUICK_SHAPES, QUICK_RATES, QUICK["seeds"], QUICK["epochs"]
    else:
        shapes, rates, seeds, epochs = SHAPES, RATES, args.seeds, args.epochs
    grid = study_grid(shapes, rates, seeds, epochs)
    records = sweep_study.run_sweep(grid, data, args.out, args.quick)
    rows = jd.aggregate(records, by=("hidden", "lr"))
    sweep_study.write_csv(args.out / f"{NAME}.csv", rows, COLUMNS)
    curve_shape = LESSON_SHAPE if LESSON_SHAPE in map(tuple, shapes) else shapes[-1]
    curves = curves_for(records, curve_shape, rows)
    title = (f"Lesson's setup (sigmoid, quadratic, SGD, batch 10), {epochs} epochs, {seeds} seed(s), "
             f"{len(data.train_images)} training images" + (" [quick]" if args.quick else ""))
    plot(rows, curves, shapes, rates, args.out / f"{NAME}.png", title)
    summary = {
        "quick": args.quick,
        "grid": grid.to_dict(),
        "num_train": len(data.train_images),
        "num_test": len(data.test_images),
        "rows": rows,
        "findings": findings(rows),
        "curves": {"hidden": list(curve_shape), **curves},
        "diverged_runs": sum(r["status"] == "diverged" for r in records),
        "seconds": sum(r["seconds"] for r in records),  # each record holds its share of its group
    }
    common.save_json(args.out / f"{NAME}.json", summary)
    for finding in summary["findings"]:
        print(f"{sweep_study.shape_label(finding['hidden'])}: best lr {finding['best_lr']:g} "
              f"({100 * finding['best_test_accuracy_mean']:.2f}% mean test accuracy); within one point: "
              f"{', '.join(f'{r:g}' for r in finding['good_rates'])}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    sweep_study.start_jax()
    parser = common.make_parser(__doc__.splitlines()[0], prog="learning_rates.py")
    sweep_study.add_sweep_flags(parser, SEEDS, EPOCHS)
    return common.run_main(study, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
