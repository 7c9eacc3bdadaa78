"""Do networks memorise or learn structure? Train on true, corrupted and random labels.

After Zhang et al. 2017 ("Understanding deep learning requires rethinking generalization") and
Arpit et al. 2017 ("A closer look at memorization in deep networks"). One MLP, trained the same
way (same initialisation, same batch order) on the same training images with:
  * a fraction p of the labels corrupted, p in 0 (the true labels), 0.2, 0.5, 0.8, 1.0: each
    label is replaced with probability p by a class drawn uniformly at random;
  * the labels randomly permuted among the images (the class counts stay the same).
Train accuracy is measured against the labels the network was trained on, test accuracy against
the true test labels; chance is 10%.

To make memorising visible on a small CPU, the study trains a wide 784-512-10 ReLU network with
cross-entropy and Adam on the first 10000 training images (``--quick``: 784-256-10 on 1000).

    python experiments/random_labels.py --out results/learned/random_labels
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

import common
import jaxdigits
from jaxdigits import Dataset, TrainConfig

NAME = "random_labels"
CORRUPTIONS = (0.0, 0.2, 0.5, 0.8, 1.0)
FIT_LEVELS = (0.5, 0.9, 0.99)
CHANCE = 0.1


def corrupt_labels(labels: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """``(N,) int32``: each label replaced with probability ``p`` by a uniformly random class 0..9."""
    replace = rng.uniform(size=labels.shape) < p
    return np.where(replace, rng.integers(0, 10, labels.shape), labels).astype(np.int32)


def label_settings(labels: np.ndarray, seed: int) -> list[tuple[str, str, float | None, np.ndarray]]:
    """``(key, label, p, training labels)`` for each setting: corruption levels, then a permutation."""
    settings = []
    for i, p in enumerate(CORRUPTIONS):
        name = "true labels" if p == 0 else ("random labels" if p == 1 else f"{100 * p:.0f}% corrupted")
        new = labels if p == 0 else corrupt_labels(labels, p, np.random.default_rng([seed, i]))
        settings.append((f"p={p:g}", f"{name} (p={p:g})", p, new))
    permuted = np.random.default_rng([seed, len(CORRUPTIONS)]).permutation(labels).astype(np.int32)
    settings.append(("permuted", "permuted labels", None, permuted))
    return settings


def first_epoch_reaching(history: list[dict], level: float) -> int | None:
    """The first epoch whose train accuracy is at least ``level``, or ``None``."""
    return next((h["epoch"] for h in history if h.get("train_accuracy", 0.0) >= level), None)


def study_setting(key: str, label: str, p: float | None, labels: np.ndarray, data: Dataset, config: TrainConfig) -> dict:
    """Train on ``labels`` and summarise the learning curves and what was memorised."""
    print(f"{NAME}: training on {label} for {config.epochs} epochs")
    start = time.perf_counter()
    relabelled = Dataset(data.train_images, labels, data.test_images, data.test_labels, name=data.name,
                         num_classes=data.num_classes)
    result = jaxdigits.train(config, relabelled)
    history = [h for h in result.history if "train_accuracy" in h]
    test = [h["test_accuracy"] for h in history]
    changed = labels != data.train_labels
    true_train = np.asarray(jaxdigits.accuracy(result.params, data.train_images, data.train_labels))
    summary = {
        "key": key,
        "label": label,
        "p": p,
        "changed_fraction": float(changed.mean()),
        "diverged": result.diverged,
        "seconds": time.perf_counter() - start,
        "epochs": [h["epoch"] for h in history],
        "train_accuracy": [h["train_accuracy"] for h in history],
        "test_accuracy": test,
        "cost": [h["train_cost"] for h in history],
        "final_train_accuracy": history[-1]["train_accuracy"],
        "final_test_accuracy": test[-1],
        "best_test_accuracy": max(test),
        "best_test_epoch": history[int(np.argmax(test))]["epoch"],
        "train_accuracy_on_true_labels": float(true_train),
        "epochs_to_fit": {f"{level:g}": first_epoch_reaching(history, level) for level in FIT_LEVELS},
    }
    if 0 < changed.mean() < 1:
        predicted = np.asarray(jaxdigits.predict(result.params, data.train_images[changed])[0])
        summary["corrupted_memorised"] = float(np.mean(predicted == labels[changed]))
        summary["corrupted_true_label_predicted"] = float(np.mean(predicted == data.train_labels[changed]))
    return summary


def draw(results: dict, path) -> None:
    """Train and test accuracy per epoch for every setting, and the final numbers against p."""
    plt = common.pyplot()
    settings = results["settings"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(CORRUPTIONS)))
    style = {}
    for s in settings:
        if s["p"] is None:
            style[s["key"]] = {"color": "tab:red", "linestyle": "--"}
        else:
            style[s["key"]] = {"color": colours[CORRUPTIONS.index(s["p"])], "linestyle": "-"}
    for ax, field, title in zip(axes[:2], ("train_accuracy", "test_accuracy"),
                                ("train accuracy (on the labels trained on)", "test accuracy (true test labels)")):
        for s in settings:
            ax.plot(s["epochs"], s[field], label=s["label"], linewidth=1.6, **style[s["key"]])
        ax.axhline(CHANCE, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    corrupted = [s for s in settings if s["p"] is not None]
    ps = [s["p"] for s in corrupted]
    axes[2].plot(ps, [s["final_train_accuracy"] for s in corrupted], "o-", label="final train")
    axes[2].plot(ps, [s["best_test_accuracy"] for s in corrupted], "s--", label="best test (any epoch)")
    axes[2].plot(ps, [s["final_test_accuracy"] for s in corrupted], "o-", label="final test")
    axes[2].axhline(CHANCE, color="grey", linewidth=0.8, linestyle=":")
    axes[2].set_xlabel("fraction p of labels corrupted")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_title(f"after {results['config']['epochs']} epochs", fontsize=10)
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    sizes = "-".join(map(str, results["sizes"]))
    fig.suptitle(
        f"{sizes} {results['config']['activation']}, {results['config']['cost']}, {results['config']['optimizer']}, "
        f"{results['num_train']} training images: memorising labels",
        fontsize=11,
    )
    common.save_figure(fig, path)


def _fit_phrase(setting: dict, level: str = "0.99") -> str:
    epoch = setting["epochs_to_fit"][level]
    return f"at epoch {epoch}" if epoch is not None else "not within the run"


def findings(results: dict) -> list[str]:
    """One sentence per finding, with its numbers, from ``results.json``."""
    by_key = {s["key"]: s for s in results["settings"]}
    true, rand, perm = by_key["p=0"], by_key["p=1"], by_key["permuted"]
    epochs = results["config"]["epochs"]
    net = "-".join(map(str, results["sizes"]))
    lines = [
        f"A {net} network trained on {results['num_train']} MNIST images with random labels reaches "
        f"{100 * rand['final_train_accuracy']:.1f}% training accuracy after {epochs} epochs "
        f"(99% {_fit_phrase(rand)}; with the true labels 99% {_fit_phrase(true)}) while its test accuracy "
        f"is {100 * rand['final_test_accuracy']:.1f}% (chance 10%); with the true labels it reaches "
        f"{100 * true['final_train_accuracy']:.1f}% train and {100 * true['final_test_accuracy']:.1f}% test."
    ]
    alike = (
        abs(perm["final_train_accuracy"] - rand["final_train_accuracy"]) < 0.1
        and abs(perm["final_test_accuracy"] - rand["final_test_accuracy"]) < 0.05
    )
    lines.append(
        f"Permuted labels {'behave like random ones' if alike else 'differ from random ones'}: "
        f"{100 * perm['final_train_accuracy']:.1f}% train (99% {_fit_phrase(perm)}), "
        f"{100 * perm['final_test_accuracy']:.1f}% test."
    )
    partial = [s for s in results["settings"] if s["p"] is not None and 0 < s["p"] < 1]
    if partial:
        parts = "; ".join(
            f"p={s['p']:g}: train {100 * s['final_train_accuracy']:.0f}%, "
            f"{100 * s.get('corrupted_memorised', float('nan')):.0f}% of the corrupted labels memorised, "
            f"test {100 * s['best_test_accuracy']:.0f}% at best (epoch {s['best_test_epoch']}) and "
            f"{100 * s['final_test_accuracy']:.0f}% at the end"
            for s in partial
        )
        peaked = all(s["best_test_accuracy"] - s["final_test_accuracy"] > 0.02 for s in partial)
        lead = (
            "With part of the labels corrupted, test accuracy peaks early and then falls as the network "
            "memorises the wrong labels"
            if peaked
            else "With part of the labels corrupted"
        )
        lines.append(f"{lead} ({parts}).")
    return lines


def run(args: argparse.Namespace) -> dict:
    data = common.load_data(args.data_dir)
    num_train = common.choose(args.num_train, args.quick, 1000, 10000)
    if num_train < 1:
        raise jaxdigits.ConfigError(f"--num-train must be at least 1, got {num_train}")
    data = common.subset(data, num_train, 2000 if args.quick else None)
    hidden = common.choose(args.hidden, args.quick, 256, 512)
    config = TrainConfig(  # checked here, before anything trains
        hidden=(hidden,), activation="relu", cost="cross_entropy", optimizer="adam",
        lr=1e-3, batch_size=100, epochs=common.choose(args.epochs, args.quick, 30, 150), seed=args.seed,
    )
    if config.batch_size > len(data.train_images):
        raise jaxdigits.ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(data.train_images)} training images"
        )
    settings = [
        study_setting(key, label, p, labels, data, config)
        for key, label, p, labels in label_settings(data.train_labels, args.seed)
    ]
    figure = "random_labels.png"
    results = {
        "experiment": NAME,
        "quick": args.quick,
        "num_train": len(data.train_images),
        "num_test": len(data.test_images),
        "config": config.to_dict(),
        "sizes": [data.inputs, *config.hidden, data.num_classes],
        "chance": CHANCE,
        "settings": settings,
        "figures": {"curves": figure},
    }
    draw(results, args.out / figure)
    return common.publish(args.out, results, findings)


def build_parser() -> argparse.ArgumentParser:
    parser = common.make_parser(__doc__.splitlines()[0], prog="random_labels.py")
    parser.add_argument("--num-train", type=int, help="training images used (default 10000; 1000 with --quick)")
    parser.add_argument("--hidden", type=int, help="hidden neurons of the 784-H-10 network (default 512; 256 with --quick)")
    parser.add_argument("--epochs", type=int, help="epochs per setting (default 150; 30 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
