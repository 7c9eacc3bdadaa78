"""Which weights matter most? The negative gradient's components, and the cost surface around a minimum.

The lesson reads the size of each component of the gradient as how much the cost cares about that
weight. For the lesson's 784-16-16-10 network at its random initialisation and after training,
this computes the full-batch gradient of the quadratic cost over the training images and reports
  * per layer: each layer's share of the gradient's squared length and the typical (RMS) size of
    one component, for the weights and the biases;
  * per pixel: the size of the gradient on the 16 weights leaving each input pixel (a 28x28 map),
    and per neuron the same map for each hidden neuron's 784 weights;
  * how much one mini-batch's gradient (10 images, what one SGD step sees) differs from the
    full-batch gradient.
It then draws a 2-D slice of the cost surface around the trained parameters along two random,
filter-normalised directions (Li et al. 2018, "Visualizing the loss landscape of neural nets":
each neuron's direction scaled to the length of its trained weights, biases left fixed), and on it
the path of gradient descent restricted to that plane from a few starting points: the "ball
rolling downhill" picture.

    python experiments/gradient_importance.py --out results/learned/gradient_importance
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import common
import jaxdigits
from jaxdigits import TrainConfig

NAME = "gradient_importance"
TOP_PIXEL_SHARE = 0.1  # report the gradient energy on the top 10% of pixels
PATH_STARTS = ((-0.85, 0.8), (0.9, 0.85), (0.75, -0.9), (-0.9, -0.6))


def cost_gradient(params: jaxdigits.Network, images: np.ndarray, labels: np.ndarray) -> jaxdigits.Network:
    """The full-batch gradient of the quadratic cost over ``images (N, 784)``, a pytree like ``params``
    (the network's own activation is used)."""
    return jax.jit(jax.grad(jaxdigits.quadratic_cost))(params, images, labels)


def minibatch_gradient_norms(params: jaxdigits.Network, images: np.ndarray, labels: np.ndarray, batch_size: int,
                             batches: int, seed: int) -> np.ndarray:
    """``(batches,)``: the length of the quadratic cost's gradient on random mini-batches of ``batch_size``."""
    order = np.random.default_rng(seed).permutation(len(images))[: batches * batch_size].reshape(-1, batch_size)
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    def norm(indices):
        g = jax.grad(jaxdigits.quadratic_cost)(params, images[indices], labels[indices])
        return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(g)))

    return np.asarray(jax.jit(jax.vmap(norm))(jnp.asarray(order)))


def layer_table(grads: jaxdigits.Network) -> list[dict]:
    """Per layer and kind (weights, biases): count, share of the squared gradient length, RMS component."""
    total = sum(float(jnp.sum(leaf**2)) for leaf in jax.tree_util.tree_leaves(grads))
    rows = []
    for index, layer in enumerate(grads):
        for kind, name in (("w", "weights"), ("b", "biases")):
            g = np.asarray(layer[kind], np.float64)
            rows.append({
                "layer": index + 1,
                "kind": name,
                "count": int(g.size),
                "share_of_squared_norm": float((g**2).sum() / total),
                "rms": float(np.sqrt((g**2).mean())),
                "max_abs": float(np.abs(g).max()),
            })
    return rows


def pixel_map(grads: jaxdigits.Network) -> np.ndarray:
    """``(784,)``: the length of the gradient on the first-layer weights leaving each pixel."""
    return np.sqrt((np.asarray(grads[0]["w"], np.float64) ** 2).sum(axis=1))


def pixel_stats(grads: jaxdigits.Network, images: np.ndarray) -> dict:
    """Which pixels carry the first layer's gradient: zeros, concentration, relation to the ink."""
    g = pixel_map(grads)
    energy = np.sort(g**2)[::-1]
    top = max(1, int(round(TOP_PIXEL_SHARE * len(g))))
    ink_std = images.std(axis=0)
    return {
        "zero_gradient_pixels": int(np.sum(g == 0)),
        "never_inked_pixels": int(np.sum(np.all(images == 0, axis=0))),
        "top_10pct_pixels_energy_share": float(energy[:top].sum() / energy.sum()),
        "correlation_with_pixel_mean": float(np.corrcoef(g, images.mean(axis=0))[0, 1]),
        "correlation_with_pixel_std": float(np.corrcoef(g, ink_std)[0, 1]),
        "brightest_pixel": [int(v) for v in divmod(int(np.argmax(g)), 28)],
    }


def gradient_report(params: jaxdigits.Network, data: jaxdigits.Dataset, seed: int) -> tuple[dict, jaxdigits.Network]:
    """Everything measured about the gradient at ``params``; also the gradient itself."""
    grads = cost_gradient(params, data.train_images, data.train_labels)
    full_norm = float(np.sqrt(sum(float(jnp.sum(leaf**2)) for leaf in jax.tree_util.tree_leaves(grads))))
    batch_norms = minibatch_gradient_norms(params, data.train_images, data.train_labels, 10, 500, seed)
    report = {
        "cost": float(jaxdigits.quadratic_cost(params, data.train_images, data.train_labels)),
        "gradient_norm": full_norm,
        "minibatch10_gradient_norm_mean": float(batch_norms.mean()),
        "layers": layer_table(grads),
        "pixels": pixel_stats(grads, data.train_images),
    }
    return report, grads


def random_directions(params: jaxdigits.Network, key: jax.Array) -> tuple[jaxdigits.Network, jaxdigits.Network]:
    """Two random directions shaped like ``params``, each neuron's incoming weights scaled to the
    length of that neuron's trained weights; biases get zero direction (Li et al. 2018)."""

    def direction(k):
        keys = jax.random.split(k, len(params))
        out = []
        for layer, layer_key in zip(params, keys):
            d = jax.random.normal(layer_key, layer["w"].shape)
            d = d * jnp.linalg.norm(layer["w"], axis=0) / jnp.linalg.norm(d, axis=0)
            out.append({"w": d, "b": jnp.zeros_like(layer["b"])})
        return dataclasses.replace(params, layers=out)  # a Network like params, so tree_map pairs them

    k1, k2 = jax.random.split(key)
    return direction(k1), direction(k2)


def make_slice(params: jaxdigits.Network, d1: jaxdigits.Network, d2: jaxdigits.Network, images: np.ndarray, labels: np.ndarray):
    """``f(ab (2,)) -> cost`` at ``params + ab[0] * d1 + ab[1] * d2``."""
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    def f(ab):
        moved = jax.tree_util.tree_map(lambda p, u, v: p + ab[0] * u + ab[1] * v, params, d1, d2)
        return jaxdigits.quadratic_cost(moved, images, labels)

    return f


def cost_surface(f, extent: float, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(grid (R,), costs (R, R))``: ``f`` on an R x R grid over [-extent, extent]^2 (rows: beta)."""
    grid = np.linspace(-extent, extent, resolution)
    alpha, beta = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([alpha.ravel(), beta.ravel()], axis=1), jnp.float32)
    costs = jax.jit(lambda pts: jax.lax.map(f, pts, batch_size=resolution))(points)
    return grid, np.asarray(costs).reshape(resolution, resolution)


def descent_paths(f, starts: np.ndarray, learning_rate: float, steps: int) -> np.ndarray:
    """``(S, steps + 1, 3)``: (alpha, beta, cost) along gradient descent on ``f`` from each of ``starts (S, 2)``."""
    value_and_grad = jax.value_and_grad(f)

    def step(ab, _):
        cost, g = value_and_grad(ab)
        return ab - learning_rate * g, jnp.concatenate([ab, cost[None]])

    def path(start):
        end, points = jax.lax.scan(step, start, length=steps)
        return jnp.concatenate([points, jnp.concatenate([end, f(end)[None]])[None]])

    return np.asarray(jax.jit(jax.vmap(path))(jnp.asarray(starts, jnp.float32)))


def landscape(params: jaxdigits.Network, images: np.ndarray, labels: np.ndarray, extent: float, resolution: int,
              steps: int, seed: int) -> dict:
    """The 2-D slice, the descent paths on it and their summary numbers."""
    d1, d2 = random_directions(params, jax.random.PRNGKey(seed))
    f = make_slice(params, d1, d2, images, labels)
    grid, costs = cost_surface(f, extent, resolution)
    curvature = float(np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(f))(jnp.zeros(2)), np.float64)).max())
    # Half the largest stable rate at the trained point: the path rolls down without zigzagging.
    learning_rate = 0.5 / curvature if curvature > 0 else 0.1
    paths = descent_paths(f, np.asarray(PATH_STARTS), learning_rate, steps)
    low = np.unravel_index(np.argmin(costs), costs.shape)
    return {
        "extent": extent,
        "resolution": resolution,
        "num_images": len(images),
        "grid": grid,
        "costs": costs,
        "cost_at_trained": float(jax.jit(f)(jnp.zeros(2))),
        "lowest_grid_cost": float(costs[low]),
        "lowest_grid_point": [float(grid[low[1]]), float(grid[low[0]])],
        "highest_grid_cost": float(costs.max()),
        "curvature_at_trained": curvature,
        "learning_rate": learning_rate,
        "steps": steps,
        "paths": [
            {
                "start": list(start),
                "start_cost": float(path[0, 2]),
                "end": [float(path[-1, 0]), float(path[-1, 1])],
                "end_cost": float(path[-1, 2]),
                "end_distance_from_trained": float(np.hypot(path[-1, 0], path[-1, 1])),
                "points": path,
            }
            for start, path in zip(PATH_STARTS, paths)
        ],
    }


def draw_gradients(reports: dict, grads: dict, images: np.ndarray, path) -> None:
    """Pixel maps at init and after training, the mean digit, layer shares, per-neuron maps."""
    plt = common.pyplot()
    fig = plt.figure(figsize=(15, 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 0.62])
    axes = top.subplots(1, 4, width_ratios=[1, 1, 1, 1.5])
    for ax, stage in zip(axes[:2], ("initial", "trained")):
        image = ax.imshow(pixel_map(grads[stage]).reshape(28, 28), cmap="magma", interpolation="nearest")
        top.colorbar(image, ax=ax, shrink=0.8)
        stats = reports[stage]["pixels"]
        ax.set_title(
            f"{stage}: |gradient| on each pixel's weights\ntop 10% of pixels hold "
            f"{100 * stats['top_10pct_pixels_energy_share']:.0f}%, {stats['zero_gradient_pixels']} exactly 0",
            fontsize=9,
        )
    axes[2].imshow(images.mean(axis=0).reshape(28, 28), cmap="gray", interpolation="nearest")
    axes[2].set_title("mean training image\n(for comparison)", fontsize=9)
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    rows = reports["initial"]["layers"]
    names = [f"L{r['layer']} {r['kind'][0]}\n({r['count']})" for r in rows]
    x = np.arange(len(rows))
    for offset, stage, colour in ((-0.2, "initial", "tab:blue"), (0.2, "trained", "tab:orange")):
        axes[3].bar(x + offset, [r["share_of_squared_norm"] for r in reports[stage]["layers"]], width=0.4,
                    label=stage, color=colour)
    axes[3].set_xticks(x, names, fontsize=8)
    axes[3].set_ylabel("share of |gradient|^2")
    axes[3].set_title("which layer the gradient points into\n(L = layer, w = weights, b = biases; count)", fontsize=9)
    axes[3].legend(fontsize=8)
    lower = bottom.subplots(1, 2)
    for ax, stage in zip(lower, ("initial", "trained")):
        w = np.abs(np.asarray(grads[stage][0]["w"])).T
        image = ax.imshow(common.tile_images(w, 8), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{stage}: |gradient| on each hidden neuron's 784 incoming weights (each tile on its own scale)",
                     fontsize=9)
    bottom.colorbar(image, ax=list(lower), shrink=0.7, label="|gradient| / tile's largest")
    fig.suptitle("Where the negative gradient points: the lesson's network at its random start and after training",
                 fontsize=11)
    common.save_figure(fig, path)


def draw_landscape(land: dict, path) -> None:
    """The cost over the 2-D slice as a surface and as contours, with the descent paths."""
    plt = common.pyplot()
    from matplotlib.colors import LogNorm

    grid, costs = land["grid"], land["costs"]
    alpha, beta = np.meshgrid(grid, grid)
    fig = plt.figure(figsize=(14, 6), layout="constrained")
    ax3d = fig.add_subplot(1, 2, 1, projection="3d")
    ax3d.plot_surface(alpha, beta, costs, cmap="viridis", alpha=0.75, linewidth=0, antialiased=True)
    ax2d = fig.add_subplot(1, 2, 2)
    levels = np.geomspace(max(costs.min(), 1e-4), costs.max(), 25)
    filled = ax2d.contourf(alpha, beta, costs, levels=levels, cmap="viridis", norm=LogNorm())
    ax2d.contour(alpha, beta, costs, levels=levels, colors="white", linewidths=0.3, alpha=0.5)
    fig.colorbar(filled, ax=ax2d, label="quadratic cost (log scale)", format="%.2g")
    for p in land["paths"]:
        pts = p["points"]
        ax3d.plot(pts[:, 0], pts[:, 1], pts[:, 2] + 0.003, color="red", linewidth=2)
        ax3d.scatter(*pts[0], color="red", s=25)
        ax2d.plot(pts[:, 0], pts[:, 1], color="red", linewidth=1.8)
        ax2d.plot(pts[0, 0], pts[0, 1], "o", color="red")
        ax2d.annotate("", xy=pts[-1, :2], xytext=pts[-2, :2], arrowprops={"arrowstyle": "->", "color": "red"})
    ax2d.plot(0, 0, "*", color="white", markersize=14, markeredgecolor="black", label="trained parameters")
    ax2d.legend(loc="upper right", fontsize=8)
    for ax in (ax3d, ax2d):
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    ax3d.set_zlabel("cost")
    ax3d.view_init(elev=35, azim=-60)
    fig.suptitle(
        f"The cost around the trained network along two random directions, and gradient descent on it "
        f"({land['steps']} steps, rate {land['learning_rate']:.2g})",
        fontsize=11,
    )
    common.save_figure(fig, path)


def _span(values: list[float], spec: str) -> str:
    """``"a-b"`` for the smallest and largest of ``values`` as formatted, or one number when they agree."""
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}-{high}"


def findings(results: dict) -> list[str]:
    """One sentence per finding, with its numbers, from ``results.json``."""
    init, trained = results["initial"], results["trained"]

    def rms(report, layer):
        return next(r["rms"] for r in report["layers"] if r["layer"] == layer and r["kind"] == "weights")

    noise_ratio = trained["minibatch10_gradient_norm_mean"] / trained["gradient_norm"]
    layers = sorted({r["layer"] for r in init["layers"]})
    total = sum(r["count"] for r in init["layers"])

    def layer_share(report, layer):
        return sum(r["share_of_squared_norm"] for r in report["layers"] if r["layer"] == layer)

    def layer_count(layer):
        return sum(r["count"] for r in init["layers"] if r["layer"] == layer)

    def strongest(report):
        return max(layers, key=lambda layer: layer_share(report, layer))

    def where(report):
        layer = strongest(report)
        return (
            f"layer {layer}, whose {layer_count(layer)} weights and biases ({100 * layer_count(layer) / total:.1f}% of "
            f"the parameters) hold {100 * layer_share(report, layer):.0f}% of its squared length"
        )

    lines = [
        f"At the random start the gradient points {'mostly' if layer_share(init, strongest(init)) > 0.5 else 'most'} "
        f"into {where(init)}; after training into {where(trained)}. "
        f"Per component, a layer-{layers[-1]} weight's gradient is typically "
        f"{rms(init, layers[-1]) / rms(init, 1):.0f} times a layer-1 weight's at the start "
        f"(RMS {rms(init, layers[-1]):.2g} against {rms(init, 1):.2g}) and "
        f"{rms(trained, layers[-1]) / rms(trained, 1):.1f} times after training.",
        f"Among pixels, the top 10% hold {100 * init['pixels']['top_10pct_pixels_energy_share']:.0f}% of the first layer's "
        f"gradient at the start and {100 * trained['pixels']['top_10pct_pixels_energy_share']:.0f}% after training; "
        f"{init['pixels']['zero_gradient_pixels']} pixels, those never inked in the training images "
        f"({init['pixels']['never_inked_pixels']}), get exactly zero, and the map "
        f"{'is almost' if init['pixels']['correlation_with_pixel_mean'] > 0.9 else 'is not'} the average digit "
        f"(correlation with the mean training image {init['pixels']['correlation_with_pixel_mean']:.3f} at the start, "
        f"{trained['pixels']['correlation_with_pixel_mean']:.3f} after training).",
        f"Training shrinks the full-batch gradient from length {init['gradient_norm']:.3g} to "
        f"{trained['gradient_norm']:.3g} (cost {init['cost']:.3f} to {trained['cost']:.3f}), but one 10-image "
        f"mini-batch's gradient is still {trained['minibatch10_gradient_norm_mean']:.3g} long on average, "
        f"{noise_ratio:.0f} times the full gradient"
        + (": near the minimum SGD's steps are mostly noise." if noise_ratio > 3 else "."),
    ]
    land = results["landscape"]
    starts = _span([p["start_cost"] for p in land["paths"]], ".3f")
    ends = _span([p["end_cost"] for p in land["paths"]], ".3f")
    distances = _span([p["end_distance_from_trained"] for p in land["paths"]], ".2f")
    lines.append(
        f"On a random 2-D slice through the trained parameters the cost rises from {land['cost_at_trained']:.3f} at the "
        f"trained point to {land['highest_grid_cost']:.3f} at the slice's edge (lowest grid point "
        f"{land['lowest_grid_cost']:.3f}); gradient descent on the slice rolls from starting costs of {starts} "
        f"down to {ends}, ending {distances} from the trained point (the slice spans +-{land['extent']:g})."
    )
    return lines


def run(args: argparse.Namespace) -> dict:
    config = TrainConfig(epochs=common.choose(args.epochs, args.quick, 2, 30), seed=args.seed)  # checked here
    slice_images = common.choose(args.slice_images, args.quick, 1000, 10000)
    if slice_images < 1:
        raise jaxdigits.ConfigError(f"--slice-images must be at least 1, got {slice_images}")
    data = common.load_data(args.data_dir)
    if args.quick:
        data = common.subset(data, 5000, 2000)
    print(f"{NAME}: training the lesson's network for {config.epochs} epochs")
    result = jaxdigits.train(config, data)
    params = {"initial": common.initial_params(config, data), "trained": result.params}
    reports, grads = {}, {}
    for stage, p in params.items():
        reports[stage], grads[stage] = gradient_report(p, data, args.seed)
    land = landscape(
        result.params, data.train_images[:slice_images], data.train_labels[:slice_images],
        extent=1.0, resolution=15 if args.quick else 41, steps=100 if args.quick else 400, seed=args.seed,
    )
    figures = {"gradients": "gradient_maps.png", "landscape": "cost_surface.png"}
    draw_gradients(reports, grads, data.train_images, args.out / figures["gradients"])
    draw_landscape(land, args.out / figures["landscape"])
    results = {
        "experiment": NAME,
        "quick": args.quick,
        "config": config.to_dict(),
        "num_train": len(data.train_images),
        "test_accuracy": result.history[-1]["test_accuracy"],
        "initial": reports["initial"],
        "trained": reports["trained"],
        "landscape": land,
        "first_layer_pixel_map": {stage: pixel_map(g) for stage, g in grads.items()},
        "figures": figures,
    }
    return common.publish(args.out, results, findings)


def build_parser() -> argparse.ArgumentParser:
    parser = common.make_parser(__doc__.splitlines()[0], prog="gradient_importance.py")
    parser.add_argument("--epochs", type=int, help="training epochs (default 30; 2 with --quick)")
    parser.add_argument("--slice-images", type=int, help="training images for the cost slice (default 10000; 1000 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
