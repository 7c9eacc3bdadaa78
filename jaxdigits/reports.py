"""Reports: what a trained network gets wrong (``report``), and what a sweep found (``sweep_report``).

``report`` measures a network on its test set, every number computed on the device by jitted
functions vmapped over the test images: the confusion matrix with per-class precision, recall
and F1, the most confused pairs and the most confident mistakes, calibration (reliability
diagram, expected calibration error), rejection (accuracy against coverage) and robustness
curves under the perturbations of ``transforms.ROBUSTNESS``. ``sweep_report`` reads a sweep's
``results.jsonl`` (finished configurations only; it takes no lock, so a running sweep can be
reported) and draws test accuracy over two axes, the curves, and the best configurations.

Both write ``report.json`` (every number), one PNG per figure (256-colour) and a single
self-contained ``report.html`` with the figures embedded as data URIs.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdigits.core.errors import ConfigError, RunFolderError
from jaxdigits.files import json_safe, staged_output, write_atomic, write_json
from jaxdigits.interrupts import check
from jaxdigits.core.metrics import analyse, mcnemar, robustness, wilson_interval
from jaxdigits.records import ranking_metric
from jaxdigits.core.transforms import ROBUSTNESS
from jaxdigits.core.model import Network, _forward, check_images, check_labels

# --- one network's report -------------------------------------------------------------------


def network_name(network: Network, source: Any) -> str:
    """``784-16-16-10 (lesson)``: the sizes, and the run folder's name when there is one."""
    from jaxdigits.checkpoint import PARAMS_FILE

    sizes = "-".join(map(str, network.sizes))
    if source is None or isinstance(source, Network):
        return sizes
    path = Path(source)
    label = path.parent.name if path.name == PARAMS_FILE else path.name
    return f"{sizes} ({label})" if label else sizes


def measure(network: Network, images: np.ndarray, labels: np.ndarray, name: str = "", seed: int = 0,
            strengths: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Every number of one network's report, as plain JSON-able values (see ``analyse``,
    ``robustness``)."""
    check_images(network, images, "report")
    check_labels(network, images, labels, "report")
    x, y = jnp.asarray(images, network.dtype), jnp.asarray(labels, jnp.int32)
    check()  # Ctrl-C or SIGTERM stops here, and before the robustness curves (see ``interrupts``)
    numbers = jax.tree.map(np.asarray, analyse(network, x, y))
    n = len(labels)
    pairs = [
        {"true": int(t), "answer": int(a), "count": int(c),
         "examples": [int(i) for i in ex if i >= 0], "confidences": [float(v) for v in conf if np.isfinite(v)]}
        for t, a, c, ex, conf in zip(*(numbers["pairs"][k] for k in ("true", "answer", "count", "examples", "confidences")))
        if c > 0
    ]
    mistakes = [
        {"index": int(i), "true": int(t), "answer": int(a), "confidence": float(c)}
        for i, t, a, c in zip(*(numbers["mistakes"][k] for k in ("index", "true", "answer", "confidence")))
        if i >= 0
    ]
    bins = len(numbers["calibration"]["counts"])
    per_class = {k: v.tolist() for k, v in numbers["per_class"].items()}
    return {
        "name": name, "sizes": list(network.sizes), "activation": network.activation, "output": network.output,
        "test_examples": n, "correct": int(numbers["correct_count"]), "accuracy": int(numbers["correct_count"]) / n,
        "accuracy_ci": list(wilson_interval(int(numbers["correct_count"]), n)),
        "confusion_matrix": numbers["confusion_matrix"].tolist(),
        "per_class": per_class, "macro_f1": float(np.mean(per_class["f1"])),
        "confused_pairs": pairs, "mistakes": mistakes,
        "calibration": {"bins": bins, "edges": np.linspace(0, 1, bins + 1).tolist(),
                        **{k: np.asarray(v).tolist() for k, v in numbers["calibration"].items()}},
        "rejection": {k: np.asarray(v).tolist() for k, v in numbers["rejection"].items()},
        "robustness": robustness_curves(network, x, y, seed, strengths),
    }


def robustness_curves(network: Network, x, y, seed: int, strengths) -> dict[str, dict]:
    """``metrics.robustness`` after a safe point (``interrupts.check``)."""
    check()
    return robustness(network, x, y, seed, strengths)


def report(run: Any, data=None, *, data_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
           compare: Any = None, seed: int = 0, strengths: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """What a trained network gets wrong, measured on the test set of ``data`` (default: the
    data set it was trained on, from ``data_dir``).

    ``run`` and ``compare`` are run folders, params files or ``Network``s; with ``compare`` both
    are measured on the same images and drawn side by side. With ``out_dir``, writes
    ``report.json``, one PNG per figure (``FIGURES``) and ``report.html``, all appearing there
    together once written (an error or Ctrl-C leaves ``out_dir`` as it was). Returns the report:
    ``{"networks": [one dict of numbers per network (see ``measure``)], "dataset", "seed",
    "figures"}``.
    """
    from jaxdigits.loader import load_run

    # --out is checked before the minutes of measuring; the files appear there together, or not at all
    with staged_output(out_dir) if out_dir is not None else contextlib.nullcontext() as stage:
        network, _, data, _ = load_run(run, data, data_dir)
        networks = [(network, run)]
        if compare is not None:
            try:
                networks.append((load_run(compare, data).network, compare))
            except ConfigError as exc:
                raise ConfigError(f"--compare: {exc}") from None
        results = [measure(n, data.test_images, data.test_labels, network_name(n, s), seed, strengths) for n, s in networks]
        result = {"dataset": data.name, "seed": seed, "networks": results, "figures": {}}
        if compare is not None:
            check()
            result["comparison"] = compare_networks(networks[0][0], networks[1][0], data.test_images, data.test_labels)
        if stage is not None:
            result["figures"] = write_report(result, data.test_images, stage)
    return result


def compare_networks(a: Network, b: Network, images: np.ndarray, labels: np.ndarray, level: float = 0.05) -> dict[str, Any]:
    """Whether two networks' accuracies differ on the same test set: McNemar's exact test on the
    examples exactly one of them gets right (``metrics.mcnemar``), significant below ``level``."""
    def correct(network: Network) -> np.ndarray:
        z = _forward(network, jnp.asarray(images, network.dtype))
        return np.asarray(jnp.argmax(z, axis=-1) == jnp.asarray(labels))

    test = mcnemar(correct(a), correct(b))
    return {**test, "level": level, "significant": test["p_value"] < level}


def summary_table(result: dict[str, Any]) -> str:
    """A short text table of a report: accuracy, macro F1, ECE, the rejection threshold for the
    target accuracy, and each robustness curve's lowest accuracy."""
    networks = result["networks"]
    rows = [("", [n["name"] for n in networks]),
            ("test accuracy", [f"{100 * n['accuracy']:.2f} %" for n in networks]),
            ("95 % interval (Wilson)", [f"{100 * n['accuracy_ci'][0]:.2f} – {100 * n['accuracy_ci'][1]:.2f} %" for n in networks]),
            ("macro F1", [f"{n['macro_f1']:.4f}" for n in networks]),
            (f"ECE ({networks[0]['calibration']['bins']} bins)", [f"{n['calibration']['ece']:.4f}" for n in networks])]
    target = networks[0]["rejection"]["target"]
    rows.append((f"{100 * target:.0f} % accuracy: threshold, answered",
                 [_rejection_text(n["rejection"]) for n in networks]))
    for name in ROBUSTNESS:
        rows.append((f"{name}: lowest accuracy (at)", [_worst_text(n["robustness"][name]) for n in networks]))
    width = max(len(label) for label, _ in rows)
    columns = [max(len(row[1][i]) for row in rows) for i in range(len(networks))]
    lines = [label.ljust(width) + "  " + "  ".join(v.rjust(w) for v, w in zip(values, columns)) for label, values in rows]
    if "comparison" in result:
        lines.append(comparison_text(result["comparison"]))
    return "\n".join(lines)


def comparison_text(comparison: dict) -> str:
    """One line on whether two networks differ (McNemar)."""
    verdict = "a significant difference" if comparison["significant"] else "no significant difference"
    return (f"McNemar: {comparison['only_a']} test images only the first gets right, {comparison['only_b']} only the "
            f"second; p = {comparison['p_value']:.3g}: {verdict} at the {comparison['level']:g} level")


def _rejection_text(rejection: dict) -> str:
    if rejection["target_threshold"] is None or not np.isfinite(rejection["target_threshold"]):
        return "not reached"
    return f"{rejection['target_threshold']:.3f}, {100 * rejection['target_coverage']:.1f} %"


def _worst_text(curve: dict) -> str:
    worst = int(np.argmin(curve["accuracy"]))
    return f"{100 * curve['accuracy'][worst]:.1f} % ({curve['strengths'][worst]:g})"


# --- figures --------------------------------------------------------------------------------


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 110, colours: int | None = 256) -> bytes:
    """``fig`` as PNG bytes (closing it); with ``colours``, a palette PNG of at most that many
    colours (a few times smaller; plots have few colours)."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, bbox_inches="tight", facecolor="white")
    pyplot().close(fig)
    if colours is None:
        return buffer.getvalue()
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colours)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def save_figure(fig, path: str | os.PathLike, dpi: int = 110, colours: int | None = 256) -> Path:
    """Save ``fig`` as a PNG at ``path`` (atomically; see ``png_bytes``) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, png_bytes(fig, dpi, colours))
    return path


COLOURS = ("tab:blue", "tab:orange")


def tile(images: np.ndarray, places: Sequence[tuple[int, int]], shape: tuple[int, int], gap: tuple[int, int] = (12, 4)) -> np.ndarray:
    """One canvas for many images ``(K, side*side)``: image ``k`` at grid cell ``places[k] =
    (row, col)`` of ``shape = (rows, cols)``, cells ``gap = (rows, cols)`` pixels apart, a
    ``gap[0]``-pixel margin on top of every row for its caption; NaN (drawn white) elsewhere."""
    side = int(round(np.sqrt(np.shape(images)[-1]))) if len(images) else 28
    rows, cols = shape
    canvas = np.full((rows * (side + gap[0]), max(cols * (side + gap[1]) - gap[1], 1)), np.nan)
    for image, (r, c) in zip(images, places):
        top, left = r * (side + gap[0]) + gap[0], c * (side + gap[1])
        canvas[top : top + side, left : left + side] = np.asarray(image).reshape(side, side)
    return canvas


def _show_tiles(ax, canvas: np.ndarray) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def confusion_figure(result: dict):
    """The confusion matrices, side by side: counts in every cell, colour on a log scale."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    networks = result["networks"]
    fig, axes = plt.subplots(1, len(networks), figsize=(6.2 * len(networks), 5.6), squeeze=False)
    for ax, n in zip(axes[0], networks):
        matrix = np.asarray(n["confusion_matrix"])
        classes = len(matrix)
        ax.imshow(np.maximum(matrix, 0.8), cmap="Blues", norm=LogNorm(vmin=0.8, vmax=max(matrix.max(), 1)))
        for i in range(classes):
            for j in range(classes):
                if matrix[i, j]:
                    dark = matrix[i, j] > matrix.max() ** 0.75
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7 if i == j else 8,
                            color="white" if dark else ("black" if i == j else "darkred"))
        ax.set_xticks(range(classes)), ax.set_yticks(range(classes))
        ax.set_xlabel("answer"), ax.set_ylabel("true digit")
        ax.set_title(f"{n['name']}: {100 * n['accuracy']:.2f} % correct", fontsize=10)
    fig.suptitle(f"Confusion matrix ({networks[0]['test_examples']:,} test images; off the diagonal: mistakes)", fontsize=11)
    return fig


def pairs_figure(result: dict, images: np.ndarray, side: int = 28):
    """The most confused pairs, one row each: ``true → answer (count)`` and its most confident
    examples with their confidence; networks side by side."""
    plt = pyplot()
    networks = result["networks"]
    rows = max(max(len(n["confused_pairs"]) for n in networks), 1)
    columns = max((len(p["examples"]) for n in networks for p in n["confused_pairs"]), default=1) or 1
    fig, axes = plt.subplots(1, len(networks), figsize=(len(networks) * (0.62 * columns + 1.3), 0.78 * rows + 0.7),
                             squeeze=False)
    for ax, n in zip(axes[0], networks):
        pairs = n["confused_pairs"]
        places = [(r, c) for r, pair in enumerate(pairs) for c in range(len(pair["examples"]))]
        chosen = [images[i] for pair in pairs for i in pair["examples"]]
        _show_tiles(ax, tile(chosen, places, (rows, columns)))
        for r, pair in enumerate(pairs):
            top = r * (side + 12) + 12
            ax.text(-6, top + side / 2, f"{pair['true']} → {pair['answer']}\n{pair['count']}×", ha="right", va="center",
                    fontsize=9)
            for c, confidence in enumerate(pair["confidences"]):
                ax.text(c * (side + 4) + side / 2, top - 1.5, f"{confidence:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{n['name']}: most confused pairs (true → answer)", fontsize=9)
    fig.suptitle("Most confused pairs, the most confident examples of each with their confidence", fontsize=10)
    fig.tight_layout()
    return fig


def mistakes_figure(result: dict, images: np.ndarray, columns: int = 8, side: int = 28):
    """The most confident mistakes: each image with ``true→answer`` and the confidence."""
    plt = pyplot()
    networks = result["networks"]
    rows = -(-max(max(len(n["mistakes"]) for n in networks), 1) // columns)
    fig, axes = plt.subplots(1, len(networks), figsize=(len(networks) * 0.75 * columns, 0.9 * rows + 0.6), squeeze=False)
    for ax, n in zip(axes[0], networks):
        places = [divmod(k, columns) for k in range(len(n["mistakes"]))]
        _show_tiles(ax, tile([images[m["index"]] for m in n["mistakes"]], places, (rows, columns)))
        for (r, c), m in zip(places, n["mistakes"]):
            ax.text(c * (side + 4) + side / 2, r * (side + 12) + 10.5, f"{m['true']}→{m['answer']} {m['confidence']:.2f}",
                    ha="center", va="bottom", fontsize=7, color="darkred")
        ax.set_title(f"{n['name']}", fontsize=9)
    fig.suptitle("The most confident mistakes (true→answer, confidence)", fontsize=10)
    fig.tight_layout()
    return fig


def calibration_figure(result: dict):
    """Reliability diagram: accuracy against mean confidence per bin (the diagonal is perfect
    calibration), ECE in the legend; below, how many answers fall in each bin."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.2, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    networks = result["networks"]
    for number, (n, colour) in enumerate(zip(networks, COLOURS)):
        c = n["calibration"]
        edges, counts = np.asarray(c["edges"]), np.asarray(c["counts"])
        used = counts > 0
        width = (edges[1] - edges[0]) / len(networks)
        left = edges[:-1] + number * width
        top.bar(left[used], np.asarray(c["accuracy"])[used], width=width, align="edge", color=colour, alpha=0.35,
                edgecolor=colour)
        top.plot(np.asarray(c["confidence"])[used], np.asarray(c["accuracy"])[used], "o-", color=colour, ms=4,
                 label=f"{n['name']}: ECE {c['ece']:.4f}")
        bottom.bar(left, counts / counts.sum(), width=width, align="edge", color=colour, alpha=0.7)
    top.set_ylabel("accuracy in the bin")
    top.set_xlim(0, 1), top.set_ylim(0, 1.02)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"Reliability ({networks[0]['calibration']['bins']} equal-width bins; "
                  f"{'sigmoid outputs normalised to sum 1' if networks[0]['output'] == 'sigmoid' else 'softmax'})", fontsize=10)
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (the answer's share of the output activations)")
    bottom.set_ylabel("share of answers")
    return fig


def rejection_figure(result: dict):
    """Accuracy of the answers given against the share answered (coverage), refusing the least
    confident first; the threshold that reaches the target accuracy is marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    target = result["networks"][0]["rejection"]["target"]
    ax.axhline(100 * target, color="grey", lw=1, ls="--")
    for n, colour in zip(result["networks"], COLOURS):
        r = n["rejection"]
        label = n["name"]
        if r["target_threshold"] is not None and np.isfinite(r["target_threshold"]):
            ax.plot(100 * r["target_coverage"], 100 * r["target_accuracy"], "o", color=colour)
            label += f": confidence ≥ {r['target_threshold']:.3f} answers {100 * r['target_coverage']:.1f} %"
        ax.plot(100 * np.asarray(r["coverage"]), 100 * np.asarray(r["accuracy"]), color=colour, label=label)
    lowest = min(min(n["rejection"]["accuracy"]) for n in result["networks"])
    ax.set_ylim(max(100 * lowest - 1, 0), 100.3)
    ax.set_xlim(0, 100)
    ax.set_xlabel("coverage: share of test images answered (%)")
    ax.set_ylabel("accuracy of the answers given (%)")
    ax.set_title(f"Rejection: refuse the least confident answers (dashed: {100 * target:.0f} %)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


ROBUSTNESS_LABELS = {
    "noise": "Gaussian pixel noise, sigma", "rotation": "rotation (degrees)", "shift": "horizontal shift (pixels)",
    "scale": "scale factor", "thickness": "stroke thickness (erode < 0 < dilate)", "occlusion": "occluding square (pixels)",
}


def robustness_figure(result: dict):
    """Accuracy under each perturbation of ``ROBUSTNESS``, one panel each (the dotted line is
    the identity setting, where the curve equals the plain accuracy)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.6))
    for ax, name in zip(axes.flat, ROBUSTNESS):
        for n, colour in zip(result["networks"], COLOURS):
            curve = n["robustness"][name]
            ax.plot(curve["strengths"], 100 * np.asarray(curve["accuracy"]), "o-", ms=3, color=colour, label=n["name"])
        ax.axvline(ROBUSTNESS[name].identity, color="grey", lw=1, ls=":")
        ax.set_xlabel(ROBUSTNESS_LABELS.get(name, name), fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Robustness: test accuracy under perturbations of every test image", fontsize=11)
    fig.tight_layout()
    return fig


FIGURES = ("confusion", "robustness", "rejection", "calibration", "pairs", "mistakes")


def figure_makers(result: dict, images: np.ndarray) -> dict[str, Callable[[], Any]]:
    """``{name: function drawing the figure}`` for every figure of ``FIGURES``."""
    return {
        "confusion": lambda: confusion_figure(result), "robustness": lambda: robustness_figure(result),
        "rejection": lambda: rejection_figure(result), "calibration": lambda: calibration_figure(result),
        "pairs": lambda: pairs_figure(result, images), "mistakes": lambda: mistakes_figure(result, images),
    }


def report_figures(result: dict, images: np.ndarray) -> dict[str, Any]:
    """``{name: matplotlib figure}`` for every figure of ``FIGURES``."""
    return {name: make() for name, make in figure_makers(result, images).items()}


def rendered(makers: dict[str, Callable[[], Any]]) -> dict[str, bytes]:
    """Each figure drawn and turned into PNG bytes (``png_bytes``) in turn, after a safe point
    (``interrupts.check``) each: Ctrl-C waits for one figure at most."""
    pngs = {}
    for name, make in makers.items():
        check()
        pngs[name] = png_bytes(make())
    return pngs


# --- pages ----------------------------------------------------------------------------------


PAGE_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: .92em; }
.bad { color: #b00020; } .warn { color: #b35900; }
"""


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:image/png;base64,...`` URI (the page needs no other file)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped text (a cell given as ``(text, css_class)`` gets the class)."""
    def cell(tag, value):
        text, css = value if isinstance(value, tuple) else (value, "")
        return f"<{tag}{f' class={css!r}' if css else ''}>{html.escape(str(text))}</{tag}>"
    head = "<tr>" + "".join(cell("th", h) for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def html_page(title: str, sections: Sequence[str]) -> str:
    """A self-contained HTML page: inline style, no scripts, no external resources."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def html_figure(png: bytes, alt: str, caption: str) -> str:
    return (f"<figure><img src=\"{data_uri(png)}\" alt=\"{html.escape(alt)}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


REPORT_CAPTIONS = {
    "confusion": "Rows: the true digit; columns: the network's answer. The diagonal counts correct answers.",
    "robustness": "Every test image perturbed at each strength; the dotted line marks the unperturbed setting.",
    "rejection": "Refusing the least confident answers: accuracy of those given against the share given.",
    "calibration": "A calibrated network is right in 80 % of the answers it gives with confidence 0.8.",
    "pairs": "The most frequent mistakes true → answer, with the most confident examples of each.",
    "mistakes": "The mistakes the network was surest of.",
}


def report_html(result: dict, pngs: dict[str, bytes]) -> str:
    """The page of a report: summary, per-class scores, every figure embedded."""
    networks = result["networks"]
    header = ["", *[n["name"] for n in networks]]
    table_rows = [["test accuracy", *[f"{100 * n['accuracy']:.2f} % ({n['correct']:,} of {n['test_examples']:,})" for n in networks]],
                  ["macro F1", *[f"{n['macro_f1']:.4f}" for n in networks]],
                  ["expected calibration error", *[f"{n['calibration']['ece']:.4f}" for n in networks]],
                  [f"threshold for {100 * networks[0]['rejection']['target']:.0f} % accuracy, share answered",
                   *[_rejection_text(n["rejection"]) for n in networks]]]
    table_rows += [[f"{name}: lowest accuracy (at strength)", *[_worst_text(n["robustness"][name]) for n in networks]]
                   for name in ROBUSTNESS]
    sections = [f"<p class=\"note\">{html.escape(result['dataset'])} test set, {networks[0]['test_examples']:,} images; "
                f"random perturbations drawn from seed {result['seed']}. Every number is in report.json.</p>",
                "<h2>Summary</h2>", html_table(header, table_rows)]
    for name in FIGURES:
        sections += [f"<h2>{html.escape(name.capitalize())}</h2>", html_figure(pngs[name], name, REPORT_CAPTIONS[name])]
        if name == "confusion":
            for n in networks:
                scores = n["per_class"]
                sections += [f"<p>Per class, {html.escape(n['name'])}:</p>", html_table(
                    ["class", "support", "precision", "recall", "F1"],
                    [[c, scores["support"][c], f"{scores['precision'][c]:.4f}", f"{scores['recall'][c]:.4f}",
                      f"{scores['f1'][c]:.4f}"] for c in range(len(scores["f1"]))])]
    return html_page("Report: " + " vs ".join(n["name"] for n in networks), sections)


def write_report(result: dict, images: np.ndarray, out: Path) -> dict[str, str]:
    """Write every figure's PNG, ``report.json`` and ``report.html`` into ``out``; returns the
    figures' file names by figure."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = rendered(figure_makers(result, np.asarray(images)))
    check()
    files = {}
    for name, png in pngs.items():
        write_atomic(out / f"{name}.png", png)
        files[name] = f"{name}.png"
    write_json(out / "report.json", {**result, "figures": files})
    write_atomic(out / "report.html", report_html(result, pngs).encode())
    return files


# --- what a sweep found ---------------------------------------------------------------------


def value_text(value: Any) -> str:
    """An axis value as text: ``16,16`` for hidden widths (``none`` for no hidden layer), ``0.3``
    (``""`` for ``None``)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value_order(value: Any):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, list):
        return (1, len(value), value)
    return (2, str(value))


def axis_values(records: Sequence[dict], axis: str) -> list:
    """The distinct values of ``axis`` over ``records``, in order (numbers ascending, hidden
    shapes by depth then widths, names alphabetically)."""
    distinct = {json.dumps(r.get(axis)): r.get(axis) for r in records}
    return sorted(distinct.values(), key=_value_order)


def varying_axes(records: Sequence[dict]) -> list[str]:
    """The config fields (seed aside) that take more than one value, most values first."""
    from jaxdigits.core.config import FIELDS

    counts = {name: len(axis_values(records, name)) for name in FIELDS if name != "seed"}
    order = list(FIELDS)
    return sorted((n for n, c in counts.items() if c > 1), key=lambda n: (-counts[n], order.index(n)))


def choose_axes(records: Sequence[dict], x: str | None = None, y: str | None = None,
                group: str | None = None) -> tuple[str, str | None, str]:
    """The heatmap's axes and the curves' colouring: ``x``, ``y`` and ``group`` as named (each
    checked to be a config field), else the varying axes with the most values (``y`` is ``None``
    when fewer than two vary; ``x`` falls back to ``hidden``; ``group`` to ``x``)."""
    for flag, name in (("--x", x), ("--y", y), ("--group", group)):
        check_axis(flag, name, records)
    if x is not None and x == y:
        raise ConfigError(f"--x and --y are both {x!r}; name two different axes")
    free = [a for a in varying_axes(records) if a not in (x, y)]
    x = x or (free.pop(0) if free else "hidden")
    if y is None and free:
        y = free.pop(0)
    return x, y, group or x


def check_axis(flag: str, name: str | None, records: Sequence[dict]) -> None:
    """Refuse an axis that is not a config field, in one line listing the allowed ones."""
    from jaxdigits.core.config import FIELDS

    if name is not None and name not in FIELDS:
        raise ConfigError(f"{flag} {name!r} is not a config field; give one of: {', '.join(FIELDS)} (those that "
                          f"vary here: {', '.join(varying_axes(records)) or 'none, only seeds'})")


def _status_marks(row: dict) -> str:
    marks = [f"{row[s]} {s}" for s in ("diverged", "stalled") if row.get(s)]
    return ", ".join(marks)


def sweep_summary(records: Sequence[dict], axes: Sequence[str], metric: str = "test_accuracy") -> list[dict]:
    """One row per configuration over the seeds (``records.aggregate`` by ``axes``), best mean
    ``metric`` first (configurations with a diverged or stalled seed after the rest), each with
    a 95 % Wilson interval for its mean (``{metric}_ci``) on the split's examples."""
    from jaxdigits.records import aggregate

    rows = aggregate(records, by=tuple(axes) or ("hidden",))
    split = "validation" if metric.startswith("selected_validation") else "test"
    examples = next((r.get(f"{split}_examples") for r in records if r.get(f"{split}_examples")), None)
    for row in rows:
        mean = row[f"{metric}_mean"]
        row[f"{metric}_ci"] = list(wilson_interval(round(mean * examples), examples)) if mean is not None and examples else None
    return sorted(rows, key=lambda r: (bool(r["diverged"] or r["stalled"]), -(r[f"{metric}_mean"] or 0.0)))


def heatmap_figure(records: Sequence[dict], x: str, y: str | None, metric: str = "test_accuracy"):
    """Mean ``metric`` (final test accuracy, or the selected epoch's validation accuracy) over the
    seeds for each (``x``, ``y``), ``± std`` in the cell;
    cells with a diverged (red frame) or stalled (orange, dashed) seed are marked and say so."""
    from jaxdigits.records import aggregate
    from matplotlib.patches import Rectangle

    plt = pyplot()
    xs = axis_values(records, x)
    ys = axis_values(records, y) if y else [None]
    cells = {(json.dumps(r[x]), json.dumps(r[y]) if y else "null"): r
             for r in aggregate(records, by=(x, y) if y else (x,))}
    grid = np.full((len(ys), len(xs)), np.nan)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.15 * len(xs) + 2.2), max(2.6, 0.8 * len(ys) + 1.8)))
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            row = cells.get((json.dumps(xv), json.dumps(yv)))
            if row is not None and row[f"{metric}_mean"] is not None:
                grid[i, j] = 100 * row[f"{metric}_mean"]
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    low, high = np.nanmin(grid) if np.isfinite(grid).any() else 0, np.nanmax(grid) if np.isfinite(grid).any() else 1
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            row = cells.get((json.dumps(xv), json.dumps(yv)))
            if row is None or row[f"{metric}_mean"] is None:
                ax.text(j, i, "not yet", ha="center", va="center", fontsize=7, color="grey")
                continue
            text = f"{100 * row[f'{metric}_mean']:.1f}"
            if row["runs"] > 1:
                text += f"\n±{100 * row[f'{metric}_std']:.1f}"
            marks = _status_marks(row)
            light = grid[i, j] > low + 0.6 * (high - low)
            ax.text(j, i, text + (f"\n{marks}" if marks else ""), ha="center", va="center", fontsize=7.5,
                    color="black" if light else "white")
            if row["diverged"] or row["stalled"]:
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, lw=2.2,
                                       ls="-" if row["diverged"] else "--",
                                       edgecolor="red" if row["diverged"] else "darkorange"))
    ax.set_xticks(range(len(xs)), [value_text(v) for v in xs])
    ax.set_yticks(range(len(ys)), [value_text(v) for v in ys] if y else [""])
    ax.set_xlabel(x), ax.set_ylabel(y or "")
    seeds = len(axis_values(records, "seed"))
    ax.set_title(f"{metric_title(metric)} (%), mean ± std over {seeds} seed{'s' * (seeds > 1)}\n"
                 "red frame: a seed diverged; orange dashed: stalled", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"{metric_title(metric).lower()} (%)")
    return fig


def curves_figure(records: Sequence[dict], group: str):
    """Test accuracy and training cost per epoch, one line per run, coloured by ``group``;
    a diverged run ends in a red ×, a stalled one is dotted and ends in an orange square."""
    plt = pyplot()
    values = axis_values(records, group)
    colours = plt.get_cmap("viridis" if len(values) > 10 else "tab10")
    colour_of = {json.dumps(v): colours(k / max(len(values) - 1, 1) if len(values) > 10 else k) for k, v in enumerate(values)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for record in records:
        colour = colour_of[json.dumps(record[group])]
        style = ":" if record.get("status") == "stalled" else "-"
        for ax, key, scale in ((left, "test_accuracy_curve", 100), (right, "train_cost_curve", 1)):
            curve = [v for v in (record.get(key) or []) if v is not None]
            epochs = np.arange(1, len(curve) + 1)
            ax.plot(epochs, scale * np.asarray(curve, float), style, color=colour, lw=1.2, alpha=0.8)
            if curve and record.get("status") in ("diverged", "stalled"):
                ax.plot(epochs[-1], scale * curve[-1], "x" if record["status"] == "diverged" else "s",
                        color="red" if record["status"] == "diverged" else "darkorange", ms=8, mew=2)
    for v in values:
        left.plot([], [], color=colour_of[json.dumps(v)], label=f"{group} {value_text(v)}")
    left.plot([], [], "x", color="red", mew=2, label="diverged (last finite epoch)")
    left.plot([], [], ":s", color="darkorange", label="stalled")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch"), left.set_ylabel("test accuracy (%)"), left.grid(alpha=0.3)
    right.set_xlabel("epoch"), right.set_ylabel("training cost"), right.grid(alpha=0.3)
    if all(v > 0 for r in records for v in (r.get("train_cost_curve") or []) if v is not None):
        right.set_yscale("log")
    left.legend(fontsize=7, ncol=1 + len(values) // 12)
    left.set_title(f"Test accuracy per epoch, by {group}", fontsize=10)
    right.set_title(f"Training cost per epoch, by {group}", fontsize=10)
    fig.tight_layout()
    return fig


def metric_title(metric: str) -> str:
    """How a figure names what it ranks on."""
    return "Validation accuracy (selected epoch)" if metric.startswith("selected_validation") else "Final test accuracy"


def best_figure(rows: Sequence[dict], records: Sequence[dict], axes: Sequence[str], top: int, metric: str = "test_accuracy"):
    """The best ``top`` configurations and every one with a failed seed: each seed's final
    test accuracy as a dot, the mean as a bar; failed ones in red (diverged) or orange (stalled)."""
    plt = pyplot()
    good = [r for r in rows if not (r["diverged"] or r["stalled"])][:top]
    failed = [r for r in rows if r["diverged"] or r["stalled"]][:top]
    shown = good + failed
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(shown) + 1.4))
    for k, row in enumerate(shown):
        runs = [r for r in records if all(json.dumps(r[a]) == json.dumps(row[a]) for a in axes)]
        colour = "red" if row["diverged"] else ("darkorange" if row["stalled"] else "tab:blue")
        ax.barh(k, 100 * (row[f"{metric}_mean"] or 0), color=colour, alpha=0.3)
        ax.plot([100 * (r[metric] or 0) for r in runs], [k] * len(runs), "o", color=colour, ms=4)
        label = f"{100 * (row[f'{metric}_mean'] or 0):.2f} ± {100 * (row[f'{metric}_std'] or 0):.2f}"
        marks = _status_marks(row)
        ax.text(1, k, label + (f"  ({marks})" if marks else ""), va="center", fontsize=7.5)
    ax.set_yticks(range(len(shown)), [" ".join(f"{a} {value_text(row[a])}" for a in axes) or "all" for row in shown],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{metric_title(metric).lower()} (%): bar the mean, dots the seeds")
    ax.set_title(f"Best configurations{' and those with failed seeds (red: diverged, orange: stalled)' if failed else ''}",
                 fontsize=10)
    return fig


SWEEP_FIGURES = ("heatmap", "curves", "best")
RUN_COLUMNS = ("status", "test_accuracy", "best_test_accuracy", "best_epoch", "train_accuracy", "train_cost",
               "epochs_completed", "diverged_epoch", "seconds", "id")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file of ``rows`` under ``header``, written atomically (``None`` as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_atomic(path, buffer.getvalue().encode())


def read_sweep(folder: Path, out_dir) -> tuple[list[dict], list[str], int | None]:
    """``(records, problems, planned)`` of the sweep in ``folder``, every line of its results
    checked first (``sweep_folder.scan_results``); refused in one line when it is no sweep, has
    nothing finished, holds a bad record, or ``out_dir`` holds a run, a sweep or a search."""
    from jaxdigits.files import KINDS, folder_kind
    from jaxdigits.records import RecordError
    from jaxdigits.sweep_folder import RESULTS_FILE, ResultsWarning, SweepFolder, scan_results

    if not folder.is_dir():
        raise RunFolderError(f"{folder}: no such sweep folder; give the --out folder of a `jaxdigits sweep`")
    if folder_kind(folder) == "run":
        raise RunFolderError(f"{folder} holds a training run, not a sweep; use `jaxdigits report` for it")
    held = folder_kind(Path(out_dir)) if out_dir is not None else None
    if held is not None:
        raise RunFolderError(f"{out_dir} holds {KINDS[held]}; give the report a folder of its own")
    path = folder / RESULTS_FILE
    if not path.is_file() or not path.stat().st_size:
        raise RunFolderError(f"{folder}: no finished configurations in {RESULTS_FILE} yet; "
                             "report again once the sweep has finished a group")
    configurations = SweepFolder(folder).configurations("sweep-report checks every result against the sweep's grid "
                                                       "in it; give the folder of a `jaxdigits sweep`")
    found = scan_results(path, configurations)
    if found.refused:
        number, problem = found.refused[0]
        more = f" ({len(found.refused) - 1} more bad lines after it)" if len(found.refused) > 1 else ""
        raise RecordError(f"{path}, line {number}: {problem}{more}; delete the bad lines, or resume the sweep "
                          f"(`jaxdigits sweep --out {folder}`), which drops them and trains their configurations again")
    problems = found.messages(path, "")
    for problem in problems:
        warnings.warn(problem, ResultsWarning, stacklevel=3)
    if not found.records:
        raise RunFolderError(f"{folder}: no finished configurations in {RESULTS_FILE} yet; "
                             "report again once the sweep has finished a group")
    return list(found.records.values()), problems, len(configurations)


def write_sweep_tables(out: Path, rows: Sequence[dict], records: Sequence[dict], axes: Sequence[str]) -> None:
    """``summary.csv`` (one row per configuration over its seeds) and ``runs.csv`` (one per run)."""
    from jaxdigits.core.config import FIELDS

    from jaxdigits.records import SUMMARY_METRICS

    metrics = [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std", "min", "max")]
    write_csv(out / "summary.csv", [*axes, "runs", "diverged", "stalled", *metrics],
              [[value_text(row[a]) for a in axes] + [row["runs"], row["diverged"], row["stalled"]] + [row[m] for m in metrics] for row in rows])
    fields = [name for name in FIELDS if any(name in r for r in records)]
    write_csv(out / "runs.csv", [*fields, *RUN_COLUMNS], [[value_text(r.get(c)) for c in fields] + [r.get(c) for c in RUN_COLUMNS] for r in records])


def sweep_report(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, x: str | None = None,
                 y: str | None = None, group: str | None = None, top: int = 10) -> dict[str, Any]:
    """What a sweep found, from the finished configurations in ``sweep_dir/results.jsonl`` (no
    lock is taken: a sweep still running is reported as far as it got).

    Writes into ``out_dir`` (default ``sweep_dir/report``): ``heatmap.png`` (final test accuracy
    over ``x`` and ``y``, mean ± std over seeds and any other axis; by default the two varying
    axes with the most values), ``curves.png`` (per-epoch curves coloured by ``group``, default
    ``x``), ``best.png``, ``summary.csv`` (one row per configuration over its seeds),
    ``runs.csv`` (one row per run), ``report.json`` and ``report.html``, appearing together once
    all are written. Diverged and stalled runs are marked on every figure. Every line of the
    results is checked first: a record that breaks the schema or is none of the sweep's
    configurations is refused in one line (``RecordError``). Returns the report (as in
    ``report.json``).
    """
    folder = Path(sweep_dir)
    records, problems, planned = read_sweep(folder, out_dir)
    x, y, group = choose_axes(records, x, y, group)
    axes = varying_axes(records)
    for axis in (x, y):
        if axis and axis not in axes:
            axes.append(axis)
    metric = ranking_metric(records)
    rows = sweep_summary(records, axes, metric)
    with staged_output(Path(out_dir) if out_dir is not None else folder / "report") as stage:
        pngs = rendered({"heatmap": lambda: heatmap_figure(records, x, y, metric),
                         "curves": lambda: curves_figure(records, group),
                         "best": lambda: best_figure(rows, records, axes, top, metric)})
        check()
        for name, png in pngs.items():
            write_atomic(stage / f"{name}.png", png)
        write_sweep_tables(stage, rows, records, axes)
        statuses = {s: sum(r.get("status") == s for r in records) for s in ("ok", "diverged", "stalled")}
        result = {
            "sweep": str(folder), "finished": len(records), "planned": planned, "statuses": statuses,
            "x": x, "y": y, "group": group, "axes": axes, "ranked_by": metric, "configurations": json_safe(rows),
            "problems": problems, "figures": {name: f"{name}.png" for name in pngs},
            "files": ["summary.csv", "runs.csv", "report.json", "report.html"],
        }
        write_json(stage / "report.json", result)
        write_atomic(stage / "report.html", sweep_html(result, pngs, top).encode())
    return result


def _row_cells(row: dict, axes: Sequence[str], metric: str) -> list:
    marks = _status_marks(row)
    percent = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    ci = row.get(f"{metric}_ci")
    return [*(value_text(row[a]) for a in axes), row["runs"],
            f"{percent(row[f'{metric}_mean'])} ± {percent(row[f'{metric}_std'])}",
            f"{percent(ci[0])} – {percent(ci[1])}" if ci else "-",
            f"{percent(row[f'{metric}_min'])} – {percent(row[f'{metric}_max'])}",
            *([percent(row["selected_test_accuracy_mean"])] if metric != "test_accuracy" else []),
            percent(row["best_test_accuracy_mean"]),
            (marks, "bad" if row["diverged"] else "warn") if marks else "ok"]


def sweep_html(result: dict, pngs: dict[str, bytes], top: int = 10) -> str:
    """The page of a sweep report: counts, the best and the failed configurations, every figure."""
    axes, rows = result["axes"], result["configurations"]
    finished = f"{result['finished']} of {result['planned']}" if result["planned"] else str(result["finished"])
    statuses = ", ".join(f"{count} {status}" for status, count in result["statuses"].items() if count)
    metric = result.get("ranked_by", "test_accuracy")
    name = "validation %" if metric != "test_accuracy" else "test %"
    header = [*axes, "seeds", f"{name} (mean ± std)", "95 % interval", "min – max",
              *(["test % (selected epoch)"] if metric != "test_accuracy" else []), "best test epoch %", "status"]
    good = [r for r in rows if not (r["diverged"] or r["stalled"])][:top]
    failed = [r for r in rows if r["diverged"] or r["stalled"]]
    sections = [f"<p class=\"note\">{finished} runs finished ({statuses}). Heatmap axes: {html.escape(result['x'])}"
                f"{' × ' + html.escape(result['y']) if result['y'] else ''}; means over seeds and any other axis. "
                f"Ranked by {html.escape(metric_title(metric).lower())}. "
                "Every number is in report.json, summary.csv and runs.csv.</p>"]
    sections += [f"<p class=\"warn\">{html.escape(p)}</p>" for p in result["problems"]]
    sections += ["<h2>Best configurations</h2>", html_table(header, [_row_cells(r, axes, metric) for r in good])]
    if failed:
        sections += ["<h2>Diverged or stalled</h2>", html_table(header, [_row_cells(r, axes, metric) for r in failed])]
    captions = {"heatmap": f"{metric_title(metric)} over two axes, mean ± std over the seeds.",
                "curves": "Every run's test accuracy and training cost per epoch.",
                "best": "The best configurations, each seed a dot."}
    for name in SWEEP_FIGURES:
        sections += [f"<h2>{name.capitalize()}</h2>", html_figure(pngs[name], name, captions[name])]
    return html_page(f"Sweep report: {Path(result['sweep']).name}", sections)
