"""How does the lesson's network do as its hidden layers grow?

The lesson's setup (sigmoid, quadratic cost, SGD, batch 10, learning rate 3.0) with one and with
two hidden layers of 4 to 256 neurons each (two layers: both of the same width), several seeds
each, trained together as one ``jaxdigits.sweep``. Writes:

    hidden_sizes.csv   per shape: layers, width, runs, and the mean, spread (sample standard
                       deviation), min and max over seeds of final test accuracy, plus the mean
                       best-epoch test accuracy and final training accuracy
    hidden_sizes.json  the same rows, the best single run and the best shape on average
    hidden_sizes.png   test error against width (log scales), one line per depth, every seed
                       shown; and training against test error (the generalisation gap)
    sweep/             the sweep's results.jsonl (resumable: run the study again to continue)

    python experiments/hidden_sizes.py --out results/hidden_sizes --data-dir path/to/mnist
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

import common
import jaxdigits as jd
import sweep_study

NAME = "hidden_sizes"
WIDTHS = (4, 8, 16, 32, 64, 128, 256)
QUICK_WIDTHS = (4, 16)
SEEDS, EPOCHS = 4, 30
QUICK = {"seeds": 2, "epochs": 2, "num_train": 3000, "num_test": 1000}
LESSON_RATE = 3.0
COLUMNS = ("layers", "width", "hidden", "runs", "diverged", "test_accuracy_mean", "test_accuracy_std",
           "test_accuracy_min", "test_accuracy_max", "best_test_accuracy_mean", "train_accuracy_mean")


def study_grid(widths: Sequence[int], seeds: int, epochs: int) -> jd.SweepGrid:
    """One and two hidden layers of each width, the lesson's everything else."""
    hidden = [(w,) for w in widths] + [(w, w) for w in widths]
    return jd.SweepGrid(hidden=hidden, lr=LESSON_RATE, seed=list(range(seeds)), epochs=epochs)


def table(records: Sequence[dict]) -> list[dict]:
    """``jaxdigits.aggregate`` over the seeds of each shape, with its depth and width."""
    rows = jd.aggregate(records, by=("hidden",))
    for row in rows:
        row["layers"], row["width"] = len(row["hidden"]), row["hidden"][0]
    return sorted(rows, key=lambda r: (r["layers"], r["width"]))


CHANCE_LEVEL = 0.2  # a run below this test accuracy is stuck (saturated sigmoids), not learning


def plot(records: Sequence[dict], rows: Sequence[dict], path, title: str):
    """Test error (log scale: 90% is chance, the best are near 2%) against width, per depth."""
    plt = common.pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullFormatter, ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    widths_all = sorted({r["width"] for r in rows})
    for layers, colour in ((1, "tab:blue"), (2, "tab:orange")):
        mine = [r for r in rows if r["layers"] == layers]
        widths = [r["width"] for r in mine]
        error = 100 - 100 * np.array([r["test_accuracy_mean"] for r in mine])
        std = 100 * np.array([r["test_accuracy_std"] for r in mine])
        label = "1 hidden layer" if layers == 1 else "2 hidden layers (same width)"
        left.errorbar(widths, error, yerr=np.minimum(std, error * 0.95), color=colour, marker="o", capsize=3,
                      label=f"{label}: mean ± sd")
        runs = [r for r in records if len(r["hidden"]) == layers and r["test_accuracy"] is not None]
        left.scatter([r["hidden"][0] * (0.94 if layers == 1 else 1.06) for r in runs],
                     [100 - 100 * r["test_accuracy"] for r in runs], s=10, color=colour, alpha=0.5)
        for row in mine:
            stuck = sum(1 for r in runs if r["hidden"] == row["hidden"] and r["test_accuracy"] < CHANCE_LEVEL)
            if stuck:
                left.annotate(f"{stuck}/{row['runs']} stuck", (row["width"], 92 if layers == 1 else 60),
                              color=colour, fontsize=8, ha="right")
        right.plot(widths, 100 - 100 * np.array([r["train_accuracy_mean"] for r in mine]), color=colour,
                   marker="o", label=f"{label}: training")
        right.plot(widths, error, color=colour, marker="s", linestyle="--", label=f"{label}: test")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(widths_all)
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.set_yticks([0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 90])
        ax.get_yaxis().set_major_formatter(FormatStrFormatter("%g"))
        ax.get_yaxis().set_minor_formatter(NullFormatter())
        ax.set_xlabel("neurons per hidden layer")
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel("final test error (%, log scale)")
    left.set_title("test error: mean ± sd over seeds, dots: each seed")
    right.set_ylabel("error (%, log scale; means over seeds)")
    right.set_title("training vs test error")
    left.legend(loc="lower left", fontsize=8)
    right.legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    return common.save_figure(fig, path)


def study(args: argparse.Namespace) -> dict:
    data = common.load_data(args.data_dir)
    if args.quick:
        data = common.subset(data, QUICK["num_train"], QUICK["num_test"])
        grid = study_grid(QUICK_WIDTHS, QUICK["seeds"], QUICK["epochs"])
    else:
        grid = study_grid(WIDTHS, args.seeds, args.epochs)
    records = sweep_study.run_sweep(grid, data, args.out, args.quick)
    rows = table(records)
    sweep_study.write_csv(args.out / f"{NAME}.csv", rows, COLUMNS)
    best_run = sweep_study.best_record(records)
    best_shape = max(rows, key=lambda r: r["test_accuracy_mean"] or 0.0)
    epochs, seeds = grid.values("epochs")[0], len(grid.values("seed"))
    title = (f"Lesson's setup (sigmoid, quadratic, SGD, batch 10, lr {LESSON_RATE:g}), {epochs} epochs, "
             f"{seeds} seeds, {len(data.train_images)} training images" + (" [quick]" if args.quick else ""))
    plot(records, rows, args.out / f"{NAME}.png", title)
    summary = {
        "quick": args.quick,
        "grid": grid.to_dict(),
        "num_train": len(data.train_images),
        "num_test": len(data.test_images),
        "rows": rows,
        "best_run": {k: best_run[k] for k in ("hidden", "lr", "seed", "epochs", "test_accuracy",
                                              "best_test_accuracy", "best_epoch", "train_accuracy")},
        "best_shape": best_shape,
        "seconds": sum(r["seconds"] for r in records),  # each record holds its share of its group
    }
    common.save_json(args.out / f"{NAME}.json", summary)
    print(jd.format_table(records, limit=10))
    print(f"best run: {sweep_study.shape_label(best_run['hidden'])} seed {best_run['seed']}: test accuracy "
          f"{100 * best_run['test_accuracy']:.2f}%; best shape on average: {sweep_study.shape_label(best_shape['hidden'])} "
          f"{100 * best_shape['test_accuracy_mean']:.2f}% ± {100 * best_shape['test_accuracy_std']:.2f}%")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    sweep_study.start_jax()
    parser = common.make_parser(__doc__.splitlines()[0], prog="hidden_sizes.py")
    sweep_study.add_sweep_flags(parser, SEEDS, EPOCHS)
    return common.run_main(study, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
