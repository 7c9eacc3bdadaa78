"""Search against a grid at the same budget: a grid sweep, random search and TPE with ASHA pruning,
on the lesson's network family with a 10,000-image validation split.

    python experiments/search_study.py --out results/search_study --data-dir path/to/mnist [--quick]

The search trains populations of 4, the size of the grid's groups (4 rates). The space: ``lr`` log-uniform 0.01–30 (the grid: 0.01, 0.1, 1, 10), ``batch_size`` {10, 32, 128},
``hidden`` {16,16 / 32 / 64,64}. The grid trains every combination for ``--epochs``; random
search draws as many trials without pruning (the same model-epochs); TPE with ASHA draws as many
trials and prunes them on validation accuracy. Writes ``results.json`` (each method's best
validation accuracy, model-epochs spent, seconds and model-epochs per second, and the curve of the
best validation accuracy against model-epochs spent) and ``search_study.png`` (the curves).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import jaxdigits as jd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import sweep_study  # noqa: E402

RATES = [0.01, 0.1, 1.0, 10.0]
SPACE = {"lr": {"log": [0.01, 30.0]}, "batch_size": [10, 32, 128], "hidden": [[16, 16], [32], [64, 64]]}
GRID = dict(lr=RATES, batch_size=[10, 32, 128], hidden=[(16, 16), (32,), (64, 64)])
QUICK = {"num_train": 3000, "num_test": 500, "validation": 500, "epochs": 2}


def curve(records: Sequence[dict]) -> list[list[float]]:
    """``[[model-epochs spent, best validation accuracy so far], ...]`` in the order given."""
    spent, best, points = 0, 0.0, []
    for record in records:
        spent += record["epochs_completed"]
        best = max(best, record["selected_validation_accuracy"] or 0.0)
        points.append([spent, best])
    return points


def summary(name: str, records: Sequence[dict], seconds: float) -> dict:
    spent = sum(r["epochs_completed"] for r in records)
    best = max(records, key=lambda r: r["selected_validation_accuracy"] or 0.0)
    return {"method": name, "trials": len(records), "model_epochs": spent, "seconds": seconds,
            "model_epochs_per_second": spent / seconds, "best_validation_accuracy": best["selected_validation_accuracy"],
            "best": {k: best[k] for k in ("lr", "batch_size", "hidden")}, "curve": curve(records)}


def run_grid(data: jd.Dataset, epochs: int, validation: int, out: Path) -> dict:
    grid = jd.SweepGrid(**GRID, epochs=epochs, validation=validation, select="best")
    began = time.perf_counter()
    records = jd.sweep(grid, data, out_dir=out / "grid", progress=True).records
    return summary("grid", records, time.perf_counter() - began)


def run_search(name: str, data: jd.Dataset, epochs: int, validation: int, out: Path, sampler: str, pruner: str) -> dict:
    trials = len(jd.SweepGrid(**GRID).configs())
    began = time.perf_counter()
    result = jd.search(SPACE, data, trials=trials, epochs=epochs, validation=validation, population=4, sampler=sampler,
                       pruner=pruner, out_dir=out / name, seed=0)
    records = sorted(result.records, key=lambda r: r["trial"])
    return summary(name, records, time.perf_counter() - began)


def plot(results: Sequence[dict], path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for result in results:
        xs, ys = zip(*result["curve"])
        ax.step(xs, [100 * y for y in ys], where="post", label=f"{result['method']} ({100 * result['best_validation_accuracy']:.2f} %)")
    ax.set_xlabel("model-epochs spent"), ax.set_ylabel("best validation accuracy so far (%)"), ax.grid(alpha=0.3)
    finals = [100 * r["curve"][-1][1] for r in results]
    ax.set_ylim(max(0, min(finals) - 3), min(100, max(finals) + 0.5))
    ax.legend(fontsize=8)
    ax.set_title("Grid, random search and TPE + ASHA at the same number of trials", fontsize=10)
    return common.save_figure(fig, path)


def study(args) -> dict:
    data = common.load_data(args.data_dir)
    epochs, validation = (QUICK["epochs"], QUICK["validation"]) if args.quick else (args.epochs, 10000)
    if args.quick:
        data = data.subset(QUICK["num_train"], QUICK["num_test"])
    results = [run_grid(data, epochs, validation, args.out),
               run_search("random", data, epochs, validation, args.out, "random", "none"),
               run_search("tpe_asha", data, epochs, validation, args.out, "tpe", "asha")]
    plot(results, args.out / "search_study.png")
    grid, tpe = results[0], results[2]
    reach = next((spent for spent, best in tpe["curve"] if best >= grid["best_validation_accuracy"] - 0.001), None)

    def findings(_):
        lines = [f"{r['method']}: best validation {100 * r['best_validation_accuracy']:.2f} % in {r['model_epochs']} "
                 f"model-epochs, {r['seconds']:.0f} s ({r['model_epochs_per_second']:.2f} model-epochs/s)" for r in results]
        lines.append(f"TPE + ASHA reached the grid's best within 0.1 point after "
                     f"{reach} model-epochs ({reach / grid['model_epochs']:.2f} of the grid's)" if reach else
                     "TPE + ASHA did not reach the grid's best within 0.1 point")
        lines.append(f"throughput of TPE + ASHA against the grid: {tpe['model_epochs_per_second'] / grid['model_epochs_per_second']:.2f}x")
        return lines

    return common.publish(args.out, {"quick": args.quick, "epochs": epochs, "validation": validation, "methods": results,
                                     "tpe_reaches_grid_best_at": reach}, findings)


def main(argv: Sequence[str] | None = None) -> int:
    sweep_study.start_jax()
    parser = common.make_parser(__doc__.splitlines()[0], prog="search_study.py")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per configuration and the most per trial (default 4)")
    return common.run_main(study, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
