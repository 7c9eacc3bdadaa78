"""Does the network understand digits, or will it confidently call random noise a "5"?

Trains the lesson's 784-16-16-10 network (sigmoid outputs, quadratic cost) and the same network
with softmax outputs (cross-entropy cost), then shows both images that are not digits:
  * uniform noise: every pixel uniform in [0, 1];
  * sparse noise: each pixel fully on with probability equal to MNIST's mean brightness;
  * shuffled digits: real test digits with their pixels put in a random order (same ink, no shape);
  * Fashion-MNIST test images (clothes), when the folder is there;
  * a blank image and an all-ones (all white) image.
For each it records the top output activation (the network's "confidence") and the predicted
digit, next to the same on the real test digits, and how well the top activation tells real digits
from each kind (AUROC: 1 = perfectly, 0.5 = not at all).

    python experiments/noise.py --out results/learned/noise
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

import common
import jaxdigits
from jaxdigits import TrainConfig

NAME = "noise"
BINS = 20  # histogram bins over [0, 1]
DISTRIBUTION_KINDS = ("test digits", "uniform noise", "sparse noise", "shuffled digits", "fashion")
SINGLE_KINDS = ("blank", "all ones")


def make_inputs(data: jaxdigits.Dataset, fashion: jaxdigits.Dataset | None, count: int, seed: int) -> dict:
    """Name -> ``(N, 784) float32`` images: the real test digits and every kind of non-digit."""
    rng = np.random.default_rng(seed)
    digits = data.test_images[:count]
    brightness = float(data.train_images.mean())
    inputs = {
        "test digits": digits,
        "uniform noise": rng.uniform(0.0, 1.0, (count, 784)).astype(np.float32),
        "sparse noise": (rng.uniform(size=(count, 784)) < brightness).astype(np.float32),
        "shuffled digits": rng.permuted(digits, axis=1).astype(np.float32),
    }
    if fashion is not None:
        inputs["fashion"] = fashion.test_images[:count]
    inputs["blank"] = np.zeros((1, 784), np.float32)
    inputs["all ones"] = np.ones((1, 784), np.float32)
    return inputs


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random ``positive`` score exceeds a random ``negative`` one (ties count half)."""
    positive = np.sort(np.asarray(positive, np.float64))
    negative = np.asarray(negative, np.float64)
    below = np.searchsorted(positive, negative, side="left")
    at_or_below = np.searchsorted(positive, negative, side="right")
    greater = len(positive) - at_or_below
    ties = at_or_below - below
    return float(np.mean((greater + 0.5 * ties) / len(positive)))


def describe(top: np.ndarray, digits: np.ndarray) -> dict:
    """Summary of top activations ``(N,)`` and predicted digits ``(N,)``: quantiles, histogram, class counts."""
    top = np.asarray(top, np.float64)
    counts = np.bincount(np.asarray(digits), minlength=10)
    return {
        "count": int(len(top)),
        "mean": float(top.mean()),
        "median": float(np.median(top)),
        "quantile_10": float(np.quantile(top, 0.1)),
        "quantile_90": float(np.quantile(top, 0.9)),
        "fraction_above_0.5": float(np.mean(top > 0.5)),
        "fraction_above_0.9": float(np.mean(top > 0.9)),
        "histogram": np.histogram(np.clip(top, 0, 1), bins=BINS, range=(0.0, 1.0))[0].tolist(),
        "predicted_counts": counts.tolist(),
        "most_common_digit": int(counts.argmax()),
        "most_common_share": float(counts.max() / len(top)),
    }


def study_network(key: str, label: str, config: TrainConfig, data: jaxdigits.Dataset, inputs: dict) -> dict:
    """Train one network and record its outputs on every kind of input."""
    print(f"{NAME}: training {label} for {config.epochs} epochs")
    result = jaxdigits.train(config, data)
    output = result.params.output  # the network carries its output function (its cost's)
    kinds, outputs = {}, {}
    for kind, images in inputs.items():
        digits, activations = (np.asarray(a) for a in jaxdigits.predict(result.params, images))
        top = activations.max(axis=1)
        outputs[kind] = {"digits": digits, "top": top}
        if kind in SINGLE_KINDS:
            kinds[kind] = {"predicted": int(digits[0]), "top": float(top[0]), "activations": activations[0].tolist()}
        else:
            kinds[kind] = describe(top, digits)
    real = outputs["test digits"]["top"]
    for kind in kinds:
        if kind != "test digits" and kind not in SINGLE_KINDS:
            kinds[kind]["auroc_vs_digits"] = auroc(real, outputs[kind]["top"])
        elif kind in SINGLE_KINDS:
            kinds[kind]["digits_below"] = float(np.mean(real < kinds[kind]["top"]))
    correct = outputs["test digits"]["digits"] == data.test_labels[: len(real)]
    kinds["test digits"]["accuracy"] = float(correct.mean())
    kinds["test digits"]["median_top_correct"] = float(np.median(real[correct]))
    kinds["test digits"]["median_top_wrong"] = float(np.median(real[~correct])) if (~correct).any() else None
    return {
        "key": key,
        "label": label,
        "output": output,
        "config": config.to_dict(),
        "test_accuracy": result.history[-1]["test_accuracy"],
        "kinds": kinds,
        "_outputs": outputs,
    }


def draw_distributions(networks: list[dict], path) -> None:
    """Per network: histograms of the top activation (top row) and predicted-digit counts (bottom row)."""
    plt = common.pyplot()
    kinds = [k for k in DISTRIBUTION_KINDS if k in networks[0]["kinds"]]
    columns = len(kinds) + 1
    fig, axes = plt.subplots(
        2 * len(networks), columns, figsize=(2.5 * columns, 2.3 * 2 * len(networks)), layout="constrained"
    )
    edges = np.linspace(0, 1, BINS + 1)
    for n, network in enumerate(networks):
        hist_row, class_row = axes[2 * n], axes[2 * n + 1]
        for c, kind in enumerate(kinds):
            stats = network["kinds"][kind]
            colour = "tab:green" if kind == "test digits" else "tab:red"
            hist_row[c].bar(edges[:-1], np.asarray(stats["histogram"]) / stats["count"], width=1 / BINS,
                            align="edge", color=colour, alpha=0.8)
            hist_row[c].set_xlim(0, 1)
            hist_row[c].set_ylim(0, 1)
            title = f"{kind}\nmedian {stats['median']:.2f}"
            if "auroc_vs_digits" in stats:
                title += f", AUROC {stats['auroc_vs_digits']:.2f}"
            hist_row[c].set_title(title, fontsize=9)
            class_row[c].bar(range(10), np.asarray(stats["predicted_counts"]) / stats["count"], color=colour, alpha=0.8)
            class_row[c].set_xticks(range(10))
            class_row[c].set_ylim(0, 1)
            class_row[c].tick_params(labelsize=7)
        hist_row[0].set_ylabel(f"{network['label']}\nshare of images", fontsize=8)
        class_row[0].set_ylabel("share predicted\nas each digit", fontsize=8)
        hist_row[len(kinds) // 2].set_xlabel("top output activation", fontsize=8)
        class_row[len(kinds) // 2].set_xlabel("predicted digit", fontsize=8)
        for ax, kind in zip((hist_row[-1], class_row[-1]), SINGLE_KINDS):
            single = network["kinds"][kind]
            ax.bar(range(10), single["activations"], color="tab:purple", alpha=0.8)
            ax.set_xticks(range(10))
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=7)
            ax.set_title(f"{kind}: sees {single['predicted']} ({single['top']:.2f})", fontsize=9)
            ax.set_ylabel("output activation", fontsize=8)
    fig.suptitle("What the trained networks answer for digits and for things that are not digits", fontsize=11)
    common.save_figure(fig, path)


def draw_gallery(networks: list[dict], inputs: dict, path, per_kind: int = 4) -> None:
    """The non-digit images each network is most confident about, with what each network sees."""
    plt = common.pyplot()
    first = networks[0]
    kinds = [k for k in DISTRIBUTION_KINDS if k in inputs and k != "test digits"]
    fig, axes = plt.subplots(len(kinds) + 1, per_kind, figsize=(2.1 * per_kind, 2.35 * (len(kinds) + 1)),
                             layout="constrained")
    rows = [(kind, np.argsort(-first["_outputs"][kind]["top"])[:per_kind]) for kind in kinds]
    rows.append(("single", None))
    for (kind, chosen), row in zip(rows, axes):
        items = [(kind, int(i)) for i in chosen] if chosen is not None else [(k, 0) for k in SINGLE_KINDS]
        items += [("test digits", int(i)) for i in range(per_kind - len(items))]
        for ax, (item_kind, index) in zip(row, items):
            ax.imshow(inputs[item_kind][index].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            lines = [item_kind]
            for network in networks:
                out = network["_outputs"][item_kind]
                lines.append(f"{network['key']}: {int(out['digits'][index])} ({float(out['top'][index]):.2f})")
            ax.set_title("\n".join(lines), fontsize=8)
    fig.suptitle("Most confident answers to non-digits (network: digit it sees, top activation)", fontsize=10)
    common.save_figure(fig, path)


def findings(results: dict) -> list[str]:
    """One sentence per finding, with its numbers, from ``results.json``."""
    names = {"uniform noise": "uniform noise", "sparse noise": "sparse noise", "shuffled digits": "shuffled digits",
             "fashion": "Fashion-MNIST clothes"}
    lines = []
    for network in results["networks"]:
        k = network["kinds"]
        digits, uniform = k["test digits"], k["uniform noise"]
        shuffled = k["shuffled digits"]["auroc_vs_digits"]
        others = ", ".join(
            f"{names[kind]} {100 * k[kind]['fraction_above_0.9']:.0f}%" for kind in names if kind in k
        )
        lines.append(
            f"{network['label']}, test accuracy {100 * digits['accuracy']:.1f}%: a top output activation above 0.9 "
            f"for {100 * digits['fraction_above_0.9']:.0f}% of real test digits, and for {others}; "
            f"uniform noise gets median {uniform['median']:.2f} with {100 * uniform['most_common_share']:.0f}% of it "
            f"called a {uniform['most_common_digit']}, a blank image is a {k['blank']['predicted']} "
            f"({k['blank']['top']:.2f}) and an all-white one a {k['all ones']['predicted']} ({k['all ones']['top']:.2f}); "
            f"the top activation tells digits from uniform noise with AUROC {uniform['auroc_vs_digits']:.2f} "
            f"{'but' if shuffled < uniform['auroc_vs_digits'] else 'and'} from shuffled digits with {shuffled:.2f}."
        )
    return lines


def run(args: argparse.Namespace) -> dict:
    mnist = common.load_data(args.data_dir)
    fashion = common.load_fashion(args)
    epochs = common.choose(args.epochs, args.quick, 2, 30)
    count = 1000 if args.quick else 10000
    if args.quick:
        mnist = common.subset(mnist, 5000, count)
    inputs = make_inputs(mnist, fashion, count, args.seed)
    lesson = TrainConfig(epochs=epochs, seed=args.seed)
    plan = [
        ("lesson", "784-16-16-10, sigmoid outputs (the lesson's)", lesson),
        ("softmax", "784-16-16-10, softmax outputs", lesson.replace(cost="cross_entropy", lr=0.5)),
    ]
    networks = [study_network(key, label, config, mnist, inputs) for key, label, config in plan]
    figures = {"distributions": "noise_confidence.png", "gallery": "noise_gallery.png"}
    draw_distributions(networks, args.out / figures["distributions"])
    draw_gallery(networks, inputs, args.out / figures["gallery"])
    results = {
        "experiment": NAME,
        "quick": args.quick,
        "num_train": len(mnist.train_images),
        "images_per_kind": count,
        "sparse_noise_on_probability": float(mnist.train_images.mean()),
        "histogram_bins": BINS,
        "networks": [{k: v for k, v in n.items() if k != "_outputs"} for n in networks],
        "figures": figures,
    }
    return common.publish(args.out, results, findings)


def build_parser() -> argparse.ArgumentParser:
    parser = common.make_parser(__doc__.splitlines()[0], prog="noise.py")
    common.add_fashion_flag(parser)
    parser.add_argument("--epochs", type=int, help="training epochs per network (default 30; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
