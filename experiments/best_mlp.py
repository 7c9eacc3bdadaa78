"""How good can a plain MLP get? The lesson's network tuned, the best MLP without augmentation, and
784-800-10 with elastic distortions (Simard et al. 2003), each a resumable sweep, chosen honestly.

    python experiments/best_mlp.py --out results/best_mlp --data-dir path/to/mnist [--only NAME ...] [--quick]

The protocol: every run trains on the first 50,000 training images and holds out the last
10,000 for validation (``validation=10000``); each run keeps the network of its best validation
epoch (``select="best"``), so the number of epochs is chosen on validation too. Within a
setting, for each augmentation, the configuration (rate, L2, ...) with the best mean validation
accuracy over its seeds is chosen; its figure is the mean test accuracy of the epochs validation
chose, ± the spread over seeds, beside the test set's binomial standard error. The test set is
read only to report.

Each setting trains into ``OUT/NAME/`` (``jaxdigits.sweep``: run the command again and only what
is missing trains). Writes ``best_mlp.json`` and ``best_mlp.csv`` (one row per setting and
augmentation: the chosen configuration, its validation and test figures, the candidates it was
chosen from, wall time, hardware, the command) and ``best_mlp.png`` (test error against epochs).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

import jaxdigits as jd
from jaxdigits.files import environment_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import sweep_study  # noqa: E402

NAME = "best_mlp"
NO_AFFINE = {"rotation": 0.0, "scale": 0.0, "shear": 0.0, "shift": 0.0}
HONEST = {"validation": 10000, "select": "best"}
# Each setting is a sweep grid: the config fields of the runs it compares.
SETTINGS = {
    "lesson": {
        "title": "the lesson's 784-16-16-10, tuned",
        # Found by a sweep over activation (sigmoid, tanh, relu), optimizer (adam, momentum), rate,
        # l2 (0, 1e-4) and augmentation (none, mild affine): cross-entropy, Adam with a cosine
        # schedule, a little L2 and mild affine distortions lift the lesson's network by a point.
        "grid": dict(hidden=[(16, 16)], activation="sigmoid", cost="cross_entropy", optimizer="adam", lr=[1e-3, 3e-3, 1e-2],
                     batch_size=32, schedule="cosine", l2=[0.0, 1e-4], augment=["none", "affine"], rotation=5.0, scale=0.05,
                     shear=5.0, shift=1.0, epochs=40, seed=[0, 1, 2], **HONEST),
    },
    "no_augment": {
        "title": "best MLP without augmentation",
        "grid": dict(hidden=[(800, 800)], activation="relu", init="he", cost="cross_entropy", optimizer="adam",
                     lr=1e-3, batch_size=128, schedule="cosine", dropout=0.2, epochs=30, seed=[0, 1, 2], **HONEST),
    },
    "elastic": {
        "title": "784-800-10, cross-entropy, elastic distortions (Simard 2003)",
        "grid": dict(hidden=[(800,)], activation="relu", init="he", cost="cross_entropy", optimizer="momentum",
                     lr=0.05, batch_size=128, schedule="cosine", augment=["none", "elastic"], elastic_alpha=34.0,
                     elastic_sigma=4.0, epochs=60, seed=[0, 1, 2], **NO_AFFINE, **HONEST),
    },
    "elastic_long": {
        "title": "784-800-10 with elastic distortions, trained twice as long",
        "grid": dict(hidden=[(800,)], activation="relu", init="he", cost="cross_entropy", optimizer="momentum",
                     lr=[0.05, 0.1], batch_size=128, schedule="cosine", augment="elastic", elastic_alpha=34.0,
                     elastic_sigma=4.0, epochs=120, seed=[0, 1, 2], **NO_AFFINE, **HONEST),
    },
}
QUICK = {"num_train": 2000, "num_test": 500, "validation": 500, "epochs": 2, "seeds": [0], "hidden": {"lesson": [(16, 16)],
                                                                               "no_augment": [(64, 64)], "elastic": [(64,)],
                                                                               "elastic_long": [(64,)]}}
COLUMNS = ("setting", "network", "augment", "lr", "options", "runs", "candidates", "validation_accuracy_mean",
           "test_accuracy_mean", "test_accuracy_std", "test_standard_error", "selected_epochs", "epochs", "wall_seconds")


def setting_grid(name: str, quick: bool) -> jd.SweepGrid:
    grid = dict(SETTINGS[name]["grid"])
    if quick:
        grid.update(epochs=QUICK["epochs"], seed=QUICK["seeds"], hidden=QUICK["hidden"][name], validation=QUICK["validation"],
                    lr=grid["lr"][0] if isinstance(grid["lr"], list) else grid["lr"])
    return jd.SweepGrid(grid)


def options_label(record: dict, grid: jd.SweepGrid) -> str:
    """The settings that differ from the lesson's defaults, as ``name=value`` (hidden aside)."""
    defaults = jd.TrainConfig().to_dict()
    skip = {"hidden", "seed", "epochs", "augment", "dataset", "dtype", "validation", "select"}
    return " ".join(f"{k}={record[k]}" for k in jd.FIELDS if k not in skip and record.get(k) != defaults[k])


def rows_for(name: str, records: list[dict], grid: jd.SweepGrid) -> list[dict]:
    """One row per augmentation: the configuration (all fields but the seed) with the best mean
    validation accuracy over its seeds, and the test accuracy of the epochs validation chose."""
    by = [k for k in jd.FIELDS if k != "seed"]
    candidates = [row for row in jd.aggregate(records, by=by) if row["selected_validation_accuracy_mean"] is not None]
    rows = []
    for augment in dict.fromkeys(row["augment"] for row in candidates):
        options = [row for row in candidates if row["augment"] == augment]
        chosen = max(options, key=lambda row: row["selected_validation_accuracy_mean"])
        mine = [r for r in records if all(r[k] == chosen[k] for k in by)]
        test = chosen["selected_test_accuracy_mean"]
        rows.append({
            "setting": name, "network": sweep_study.shape_label(chosen["hidden"]), "augment": augment, "lr": chosen["lr"],
            "options": options_label(mine[0], grid), "runs": chosen["runs"], "candidates": len(options),
            "validation_accuracy_mean": chosen["selected_validation_accuracy_mean"],
            "test_accuracy_mean": test, "test_accuracy_std": chosen["selected_test_accuracy_std"],
            "test_standard_error": float(np.sqrt(test * (1 - test) / mine[0]["test_examples"])),
            "selected_epochs": [r["selected_epoch"] for r in mine], "epochs": chosen["epochs"],
            "wall_seconds": sum(r["seconds"] for r in records if r["augment"] == augment),
            "error_curve": list(1 - np.mean([r["test_accuracy_curve"] for r in mine], axis=0)),
        })
    return rows


def plot(rows: Sequence[dict], path: Path, title: str) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for row in rows:
        curve = 100 * np.asarray(row["error_curve"])
        style = "-" if row["augment"] == "none" else "--"
        label = f"{row['setting']}: {row['network']}" + (f", {row['augment']}" if row["augment"] != "none" else "")
        if sum(other["setting"] == row["setting"] and other["augment"] == row["augment"] for other in rows) > 1:
            label += f", lr {row['lr']:g}"
        ax.plot(range(1, len(curve) + 1), curve, style, label=f"{label} ({100 - curve[-1]:.2f} %)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%, log scale; mean over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def augmentation_figure(data: jd.Dataset, path: Path, count: int = 8) -> Path:
    """The first ``count`` training digits, then each under the affine and the
    elastic distortion the settings use, as the compiled epoch draws them (two draws each)."""
    import jax

    from jaxdigits.core import epoch as epoch_module

    rows = [("original", data.train_images[:count])]
    for augment, strengths in (("affine", {}), ("elastic", dict(elastic_alpha=34.0, elastic_sigma=4.0, **NO_AFFINE))):
        config = jd.TrainConfig(augment=augment, **strengths)
        for draw in range(2):
            key = jax.random.PRNGKey(draw)
            rows.append((f"{augment} {draw + 1}", np.asarray(epoch_module.augment_batch(config, key, data.train_images[:count]))))
    plt = common.pyplot()
    fig, axes = plt.subplots(len(rows), count, figsize=(count * 0.9, len(rows) * 0.95))
    for r, (label, images) in enumerate(rows):
        for c in range(count):
            axes[r, c].imshow(images[c].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle("affine: rotation 10°, scale 10 %, shear 10°, shift 2 px; elastic: alpha 34, sigma 4", fontsize=8)
    return common.save_figure(fig, path)


def study(args: argparse.Namespace) -> dict:
    data = common.load_data(args.data_dir)
    if args.quick:
        data = data.subset(QUICK["num_train"], QUICK["num_test"])
    names = args.only or [name for name in SETTINGS if not (args.quick and name == "elastic_long")]
    rows, commands = [], {}
    for name in names:
        grid = setting_grid(name, args.quick)
        folder = args.out / (f"{name}_quick" if args.quick else name)
        print(f"{name}: {len(grid.configs())} configurations into {folder}", file=sys.stderr)
        records = jd.sweep(grid, data, out_dir=folder, progress=True).records
        rows += rows_for(name, records, grid)
        commands[name] = shlex.join(["python", "experiments/best_mlp.py", "--out", str(args.out), "--only", name]
                                    + (["--quick"] if args.quick else []))
    sweep_study.write_csv(args.out / f"{NAME}.csv", rows, COLUMNS)
    augmentation_figure(data, args.out / "augmented_digits.png")
    env = environment_info()
    hardware = f"{env['platform']} ({env['device_kind']}, {platform.machine()}), {env['devices']} devices"
    plot(rows, args.out / f"{NAME}.png", "Test error of plain MLPs on MNIST" + (" [quick]" if args.quick else ""))
    summary = {"quick": args.quick, "num_train": len(data.train_images), "num_test": len(data.test_images),
               "hardware": hardware, "rows": rows, "commands": commands,
               "settings": {n: setting_grid(n, args.quick).to_dict() for n in names}}
    common.save_json(args.out / f"{NAME}.json", summary)
    for row in rows:
        print(f"{row['setting']:>10}  {row['network']:<14} {row['augment']:<8} chosen of {row['candidates']} on validation "
              f"{100 * row['validation_accuracy_mean']:.2f} %; test {100 * row['test_accuracy_mean']:.2f} % "
              f"± {100 * row['test_accuracy_std']:.2f} (seeds, {row['runs']}) ± {100 * row['test_standard_error']:.2f} (test SE), "
              f"epochs {row['selected_epochs']} of {row['epochs']}, {row['wall_seconds'] / 60:.1f} min  {row['options']}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    sweep_study.start_jax()
    parser = common.make_parser(__doc__.splitlines()[0], prog="best_mlp.py")
    parser.add_argument("--only", nargs="+", choices=tuple(SETTINGS), help="run only these settings")
    return common.run_main(study, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
