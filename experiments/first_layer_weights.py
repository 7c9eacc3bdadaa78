"""Do the hidden neurons pick up edges and loops? Draw what the first hidden layer learned.

Trains the lesson's 784-16-16-10 network on MNIST, a wider 784-100-10 network on MNIST and the
lesson's network on Fashion-MNIST, then draws each first-hidden-layer neuron's 784 incoming
weights as a 28x28 image (red positive, blue negative, each neuron on its own scale).

How edge- or blob-like is a weight image? Three numbers, each with its white-noise value:
  * low-frequency share: the share of the image's (mean-removed) spectral energy at spatial
    frequencies up to 0.25 cycles/pixel; white noise puts about 0.19 there, smooth strokes more;
  * smoothness: the correlation of the image with its own 3x3 box blur; about 1/3 for noise;
  * half-energy pixels: how many pixels hold half the squared weight (small = localised).
The same numbers are kept for the random initial weights, for the change since initialisation,
and for that change sign-scrambled (each pixel's sign flipped at random: same per-pixel sizes, no
spatial pattern), a control for training touching only the pixels that carry ink.

    python experiments/first_layer_weights.py --out results/learned/first_layer_weights
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

import common
import jaxdigits
from jaxdigits import TrainConfig

NAME = "first_layer_weights"
LOW_FREQUENCY_CUTOFF = 0.25  # cycles per pixel; the highest representable is 0.5


def radial_frequency(side: int = 28) -> np.ndarray:
    """``(side, side)``: each 2-D FFT bin's spatial frequency in cycles per pixel."""
    f = np.fft.fftfreq(side)
    return np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def low_frequency_fraction(images: np.ndarray, cutoff: float = LOW_FREQUENCY_CUTOFF) -> np.ndarray:
    """``(K,)``: share of each ``(K, 784)`` image's non-constant spectral energy at frequencies <= ``cutoff``."""
    images = np.asarray(images, np.float64).reshape(len(images), 28, 28)
    power = np.abs(np.fft.fft2(images - images.mean(axis=(1, 2), keepdims=True))) ** 2
    low = radial_frequency() <= cutoff
    total = power.sum(axis=(1, 2))
    return power[:, low].sum(axis=1) / np.where(total > 0, total, np.nan)


def white_noise_low_frequency_fraction(cutoff: float = LOW_FREQUENCY_CUTOFF) -> float:
    """The expected ``low_frequency_fraction`` of white noise: the share of non-constant FFT bins below ``cutoff``."""
    r = radial_frequency()
    return float(((r <= cutoff) & (r > 0)).sum() / (r.size - 1))


def box_blur(images: np.ndarray) -> np.ndarray:
    """``(K, 28, 28)``: each image averaged over its 3x3 neighbourhoods (edges repeated)."""
    images = np.asarray(images, np.float64).reshape(len(images), 28, 28)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return sum(padded[:, i : i + 28, j : j + 28] for i in range(3) for j in range(3)) / 9.0


def smoothness(images: np.ndarray) -> np.ndarray:
    """``(K,)``: Pearson correlation of each ``(K, 784)`` image with its 3x3 box blur (noise: ~1/3)."""
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    y = box_blur(x).reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x**2).sum(axis=1) * (y**2).sum(axis=1))
    return (x * y).sum(axis=1) / np.where(denominator > 0, denominator, np.nan)


def half_energy_pixels(images: np.ndarray) -> np.ndarray:
    """``(K,)``: how many of the 784 pixels it takes to hold half of each image's squared weight.

    A neuron that detects one small edge or loop piece would hold its weight in a small patch
    (a 5x5 patch is 25 pixels); weight spread over the whole digit area needs hundreds.
    """
    energy = np.sort(np.asarray(images, np.float64).reshape(len(images), -1) ** 2, axis=1)[:, ::-1]
    cumulative = np.cumsum(energy, axis=1)
    return (cumulative < 0.5 * cumulative[:, -1:]).sum(axis=1) + 1


def image_measures(images: np.ndarray) -> dict:
    """Means over the rows of ``(K, 784)`` images: low-frequency fraction, smoothness, half-energy pixels."""
    return {
        "low_frequency_fraction": float(np.nanmean(low_frequency_fraction(images))),
        "smoothness": float(np.nanmean(smoothness(images))),
        "half_energy_pixels": float(np.mean(half_energy_pixels(images))),
    }


def neuron_images(params: jaxdigits.Network) -> np.ndarray:
    """``(hidden, 784)``: the first layer's incoming weights, one row per hidden neuron."""
    return np.asarray(params[0]["w"]).T


def study_network(label: str, config: TrainConfig, data: jaxdigits.Dataset, seed: int) -> dict:
    """Train one network and measure its first-layer weights, their initial values and the change."""
    start = time.perf_counter()
    result = jaxdigits.train(config, data)
    trained = neuron_images(result.params)
    initial = neuron_images(common.initial_params(config, data))
    change = trained - initial
    scrambled = change * np.random.default_rng(seed).choice([-1.0, 1.0], size=change.shape)
    never_inked = np.all(data.train_images == 0, axis=0)
    return {
        "label": label,
        "config": config.to_dict(),
        "num_train": len(data.train_images),
        "test_accuracy": result.history[-1]["test_accuracy"],
        "train_seconds": time.perf_counter() - start,
        "hidden_neurons": int(trained.shape[0]),
        "initial": image_measures(initial),
        "trained": image_measures(trained),
        "change": image_measures(change),
        "change_sign_scrambled": image_measures(scrambled),
        "relative_change": float(np.linalg.norm(change) / np.linalg.norm(initial)),
        "never_inked_pixels": int(never_inked.sum()),
        "unchanged_weight_fraction": float(np.mean(change == 0)),
        "_images": {"trained": trained, "change": change},
    }


def draw(networks: list[dict], path) -> None:
    """One panel per network: each first-layer neuron's trained incoming weights as a 28x28 tile."""
    plt = common.pyplot()
    widths = [1.5 if n["hidden_neurons"] > 16 else 1.0 for n in networks]
    fig, axes = plt.subplots(
        1, len(networks), figsize=(4.3 * sum(widths), 5.4), width_ratios=widths, layout="constrained", squeeze=False
    )
    for ax, network in zip(axes[0], networks):
        cols = int(np.ceil(np.sqrt(network["hidden_neurons"])))
        image = ax.imshow(
            common.tile_images(network["_images"]["trained"], cols), cmap="RdBu_r", vmin=-1, vmax=1,
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        m = network["trained"]
        ax.set_title(
            f"{network['label']}, test accuracy {100 * network['test_accuracy']:.1f}%\n"
            f"low-freq share {m['low_frequency_fraction']:.2f}, smoothness {m['smoothness']:.2f}, "
            f"half energy in {m['half_energy_pixels']:.0f} px",
            fontsize=9,
        )
    fig.colorbar(image, ax=axes[0, -1], shrink=0.6, label="weight / neuron's largest |weight|")
    fig.suptitle(
        "First hidden layer: each tile is one neuron's 784 incoming weights "
        "(red excites, blue inhibits; white noise: low-freq share "
        f"{white_noise_low_frequency_fraction():.2f}, smoothness about 0.33)",
        fontsize=10,
    )
    common.save_figure(fig, path)


def _texture(measures: dict, noise: float) -> str:
    """'smooth' when the low-frequency share is well above white noise's, else 'noise-like'."""
    return "smooth, spatially structured" if measures["low_frequency_fraction"] > 2 * noise else "noise-like"


def findings(results: dict) -> list[str]:
    """One sentence per finding, with its numbers, from ``results.json``."""
    nets = {n["key"]: n for n in results["networks"]}
    noise = results["white_noise_low_frequency_fraction"]
    lesson = nets["lesson"]
    grown = lesson["relative_change"]
    if grown > 2:
        moved = (
            f"training grew the weights to {grown:.0f} times the size of their random start, "
            "so the pictures show what was learned, not the initialisation"
        )
    else:
        moved = (
            f"training changed the weights by only {100 * grown:.0f}% of their random initial size, "
            "so much of each picture is still the initialisation"
        )
    lines = [
        f"The lesson network's 16 first-layer weight images are {_texture(lesson['trained'], noise)}: "
        f"{lesson['trained']['low_frequency_fraction']:.2f} of their energy lies below "
        f"{results['low_frequency_cutoff']} cycles/pixel (white noise {noise:.2f}; the learned change with "
        f"its signs scrambled {lesson['change_sign_scrambled']['low_frequency_fraction']:.2f}), their "
        f"correlation with their own 3x3 blur is {lesson['trained']['smoothness']:.2f} (noise about 0.33), "
        f"and half of each neuron's weight energy sits in {lesson['trained']['half_energy_pixels']:.0f} of the "
        f"784 pixels (random start {lesson['initial']['half_energy_pixels']:.0f}); {moved}."
    ]
    if "wide" in nets:
        wide = nets["wide"]
        lines.append(
            f"With 100 hidden neurons (test accuracy {100 * wide['test_accuracy']:.1f}%) the weights are "
            f"{_texture(wide['trained'], noise)} too: low-frequency share "
            f"{wide['trained']['low_frequency_fraction']:.2f}, smoothness {wide['trained']['smoothness']:.2f}, "
            f"half energy in {wide['trained']['half_energy_pixels']:.0f} pixels."
        )
    if "fashion" in nets:
        fashion = nets["fashion"]
        lines.append(
            f"Trained on Fashion-MNIST (test accuracy {100 * fashion['test_accuracy']:.1f}%), the same network's "
            f"weights are {_texture(fashion['trained'], noise)} and spread "
            f"{'wider' if fashion['trained']['half_energy_pixels'] > lesson['trained']['half_energy_pixels'] else 'no wider'}"
            f" than on digits: low-frequency share "
            f"{fashion['trained']['low_frequency_fraction']:.2f}, smoothness "
            f"{fashion['trained']['smoothness']:.2f}, half energy in "
            f"{fashion['trained']['half_energy_pixels']:.0f} pixels."
        )
    return lines


def run(args: argparse.Namespace) -> dict:
    mnist = common.load_data(args.data_dir)
    fashion = common.load_fashion(args)
    epochs = common.choose(args.epochs, args.quick, 2, 30)
    if args.quick:
        mnist = common.subset(mnist, 5000, 2000)
        fashion = fashion and common.subset(fashion, 5000, 2000)
    lesson = TrainConfig(epochs=epochs, seed=args.seed)
    plan = [("lesson", "784-16-16-10 on MNIST (the lesson's)", lesson, mnist)]
    if fashion is not None:
        plan.append(("fashion", "784-16-16-10 on Fashion-MNIST", lesson.replace(dataset="fashion_mnist"), fashion))
    plan.append(("wide", "784-100-10 on MNIST", lesson.replace(hidden=(100,)), mnist))
    networks = []
    for key, label, config, data in plan:
        print(f"{NAME}: training {label} for {config.epochs} epochs")
        networks.append({"key": key, **study_network(label, config, data, args.seed)})
    figure = "first_layer_weights.png"
    draw(networks, args.out / figure)
    results = {
        "experiment": NAME,
        "quick": args.quick,
        "low_frequency_cutoff": LOW_FREQUENCY_CUTOFF,
        "white_noise_low_frequency_fraction": white_noise_low_frequency_fraction(),
        "networks": [{k: v for k, v in n.items() if k != "_images"} for n in networks],
        "figures": {"weights": figure},
    }
    return common.publish(args.out, results, findings)


def build_parser() -> argparse.ArgumentParser:
    parser = common.make_parser(__doc__.splitlines()[0], prog="first_layer_weights.py")
    common.add_fashion_flag(parser)
    parser.add_argument("--epochs", type=int, help="training epochs per network (default 30; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
