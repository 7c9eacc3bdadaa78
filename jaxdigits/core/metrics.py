"""What a network gets right: exact counts, how a run ended, and what ``report`` measures.

Accuracy is counted exactly (integer counts over chunks of ``EVAL_CHUNK`` images, so
activations stay small); ``run_status`` says how a run ended from its history; ``analyse`` and
``robustness`` are the per-network measurements of a report (confusion matrix, per-class
precision and recall, calibration, rejection, accuracy under perturbations), each one compiled
program.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdigits.core.config import TrainConfig
from jaxdigits.core.costs import resolve_cost
from jaxdigits.core.epoch import as_inputs
from jaxdigits.core.model import OUTPUTS, Network, _forward, check_images, check_labels, correct_count
from jaxdigits.core.transforms import ROBUSTNESS

# Accuracy is counted over slices of this many images, so that activations stay small.
EVAL_CHUNK = 5000
STATUSES = ("ok", "diverged", "stalled")
# A run is stalled when its training accuracy ends within this much of always answering the
# most common class, and its cost did not fall over the last epochs (one epoch cannot tell).
STALL_MARGIN = 0.05
STALL_WINDOW = 3
STALL_MIN_DROP = 0.01



def count_correct(network: Network, images: jax.Array, labels: jax.Array) -> jax.Array:
    """``correct_count`` of images stored as floats or uint8 pixels (see ``as_inputs``)."""
    return correct_count(network, as_inputs(images, network.dtype), labels)


_count_correct = jax.jit(count_correct)


def make_score(config: TrainConfig) -> Callable[[Network, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """``score(network, images (N, inputs), labels (N,)) -> (correct, cost_sum)``: how many
    answers are right and ``sum_x cost.per_example(z(x), label(x))``, the config's cost without
    its penalty, in one forward pass (images as floats or uint8 pixels)."""
    cost = resolve_cost(config.cost)

    def score(network: Network, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = _forward(network, as_inputs(images, network.dtype))
        return jnp.sum(jnp.argmax(z, axis=-1) == labels), jnp.sum(cost.per_example(z, labels))

    return score


def eval_chunks(images: jax.Array, labels: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    """``images``/``labels`` in slices of ``EVAL_CHUNK``, made once and reused every epoch."""
    return [(images[s : s + EVAL_CHUNK], labels[s : s + EVAL_CHUNK]) for s in range(0, images.shape[0], EVAL_CHUNK)]


def chunked_mean(fn: Callable, params, chunks: Sequence[tuple[jax.Array, jax.Array]], fetch=np.asarray):
    """Sums of ``fn(params, images, labels)`` (a count, or a tuple of sums) over ``chunks``,
    added exactly on the host (counts as int64, sums as float64), then divided by the examples."""
    totals = None
    for images, labels in chunks:
        parts = jax.tree_util.tree_map(lambda x: fetch(x).astype(np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64),
                                       fn(params, images, labels))
        totals = parts if totals is None else jax.tree_util.tree_map(np.add, totals, parts)
    count = sum(labels.shape[0] for _, labels in chunks)
    return jax.tree_util.tree_map(lambda total: total / count, totals)


def evaluate(network: Network, images: jax.Array, labels: jax.Array) -> float:
    """Accuracy of ``network`` on ``images (N, inputs)``, ``labels (N,)``, counted in chunks."""
    check_images(network, images, "evaluate")
    check_labels(network, images, labels, "evaluate")
    return float(chunked_mean(_count_correct, network, eval_chunks(jnp.asarray(images), jnp.asarray(labels))))


def chance_level(labels: np.ndarray) -> float:
    """The accuracy of always answering the most common class."""
    return float(np.bincount(np.asarray(labels)).max() / len(labels))


def run_status(history: Sequence[dict], chance: float) -> str:
    """``diverged`` when an epoch's cost became NaN or infinite; ``stalled`` when the last
    training accuracy is within ``STALL_MARGIN`` of ``chance`` (the share of the most common
    training class) and its last cost is not ``STALL_MIN_DROP`` (relative) below the lowest of the
    ``STALL_WINDOW`` epochs before it. A run of at most ``STALL_WINDOW`` epochs that ends at
    chance is stalled whatever its cost did (a few epochs cannot tell a slow start from saturated
    units, and such a run's result is no result); else ``ok``."""
    if any(h.get("diverged") for h in history):
        return "diverged"
    finished = [h for h in history if h.get("train_cost") is not None]
    if not finished:
        return "ok"
    accuracy = finished[-1].get("train_accuracy")
    if accuracy is None or accuracy > chance + STALL_MARGIN:
        return "ok"
    costs = [h["train_cost"] for h in finished[-STALL_WINDOW - 1 :]]
    falling = len(finished) > STALL_WINDOW and costs[-1] < (1 - STALL_MIN_DROP) * min(costs[:-1])
    return "ok" if falling else "stalled"


CALIBRATION_BINS = 15
REJECTION_TARGET = 0.99
COVERAGE_LEVELS = 100  # the rejection curve at coverage 1 %, 2 %, ..., 100 %
CONFUSED_PAIRS = 6
PAIR_EXAMPLES = 8
GALLERY = 24
ROBUSTNESS_CHUNK = 500  # test images per step of a robustness curve (bounds its memory)


def probabilities(network: Network, z: jax.Array) -> jax.Array:
    """The output activations as a distribution over classes ``(..., classes)``: softmax as it
    is, sigmoid outputs ``a`` normalised to ``a / sum(a)``."""
    a = OUTPUTS[network.output](z)
    return a / a.sum(-1, keepdims=True) if network.output == "sigmoid" else a


def classify_one(network: Network, image: jax.Array, label: jax.Array) -> dict[str, jax.Array]:
    """One example ``image (inputs,)``: its ``answer`` (argmax of ``z``, as ``evaluate`` counts),
    the ``confidence`` given to that answer (see ``probabilities``) and whether it is ``correct``."""
    z = _forward(network, image[None])[0]
    answer = jnp.argmax(z).astype(jnp.int32)
    return {"answer": answer, "confidence": probabilities(network, z)[answer], "correct": answer == label}


def confusion_matrix(labels: jax.Array, answers: jax.Array, classes: int) -> jax.Array:
    """``M (classes, classes) int32``: ``M[i, j]`` = how many examples of class ``i`` were
    answered ``j``; rows sum to each class's support, the diagonal counts the correct ones."""
    return jnp.zeros((classes, classes), jnp.int32).at[labels, answers].add(1)


def class_scores(matrix: jax.Array) -> dict[str, jax.Array]:
    """Per class ``c`` (each ``(classes,)``): ``precision = M[c,c] / sum_i M[i,c]`` (of the
    answers ``c``, how many were right), ``recall = M[c,c] / sum_j M[c,j]`` (of the examples of
    ``c``, how many were found), ``f1 = 2 P R / (P + R)``; 0 where a denominator is 0."""
    diagonal = jnp.diag(matrix).astype(jnp.float32)
    answered, support = matrix.sum(0), matrix.sum(1)
    precision = jnp.where(answered > 0, diagonal / jnp.maximum(answered, 1), 0.0)
    recall = jnp.where(support > 0, diagonal / jnp.maximum(support, 1), 0.0)
    total = precision + recall
    f1 = jnp.where(total > 0, 2 * precision * recall / jnp.where(total > 0, total, 1.0), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def calibration(confidence: jax.Array, correct: jax.Array, bins: int = CALIBRATION_BINS) -> dict[str, jax.Array]:
    """Reliability over ``bins`` equal-width confidence bins ``B_b = [b/bins, (b+1)/bins)`` (the
    last one closed), for ``confidence (N,)`` and ``correct (N,)``.

    Per bin: ``count n_b``, mean ``confidence conf_b`` and ``accuracy acc_b`` (0 for an empty
    bin). The expected calibration error is
    ``ECE = sum_b (n_b / N) |acc_b - conf_b| = (1/N) sum_b |sum_{i in B_b} (correct_i - confidence_i)|``.
    """
    index = jnp.clip(jnp.floor(confidence * bins).astype(jnp.int32), 0, bins - 1)
    counts = jnp.zeros(bins, jnp.int32).at[index].add(1)
    confidence_sum = jnp.zeros(bins, jnp.float32).at[index].add(confidence.astype(jnp.float32))
    correct_sum = jnp.zeros(bins, jnp.float32).at[index].add(correct.astype(jnp.float32))
    safe = jnp.maximum(counts, 1)
    return {
        "counts": counts,
        "confidence": jnp.where(counts > 0, confidence_sum / safe, 0.0),
        "accuracy": jnp.where(counts > 0, correct_sum / safe, 0.0),
        "ece": jnp.abs(correct_sum - confidence_sum).sum() / confidence.shape[0],
    }


def rejection(confidence: jax.Array, correct: jax.Array, target: float = REJECTION_TARGET,
              levels: int = COVERAGE_LEVELS) -> dict[str, jax.Array]:
    """Accuracy against coverage when answers with confidence below a threshold are refused.

    Sorted by confidence, most confident first: answering the first ``k`` has coverage ``k/N``
    and accuracy ``(1/k) sum_{i<k} correct_i``. The curve samples ``k = ceil(c N)`` for
    coverage ``c = 1/levels .. 1`` (with the threshold, the ``k``-th confidence). ``threshold``
    is the lowest threshold ``t`` whose answers ``{confidence >= t}`` reach ``target`` accuracy
    (a cut never splits equal confidences), ``coverage`` and ``accuracy`` the share answered and
    their accuracy; with no such ``t`` all three are NaN.
    """
    n = confidence.shape[0]
    order = jnp.argsort(-confidence, stable=True)
    ranked, hits = confidence[order], correct[order].astype(jnp.int32)
    k = jnp.arange(1, n + 1)
    accuracy = jnp.cumsum(hits) / k
    cut = jnp.append(ranked[:-1] > ranked[1:], True)  # between two different confidences
    best = jnp.max(jnp.where(cut & (accuracy >= target), k, 0))
    found = best > 0
    at = jnp.maximum(best - 1, 0)
    sample = jnp.ceil(jnp.arange(1, levels + 1) / levels * n).astype(jnp.int32) - 1
    return {
        "coverage": (sample + 1) / n, "accuracy": accuracy[sample], "threshold": ranked[sample],
        "target": jnp.asarray(target, jnp.float32),
        "target_threshold": jnp.where(found, ranked[at], jnp.nan),
        "target_coverage": jnp.where(found, best / n, jnp.nan),
        "target_accuracy": jnp.where(found, accuracy[at], jnp.nan),
    }


@functools.partial(jax.jit, static_argnames=("bins", "pairs", "examples", "gallery"))
def analyse(network: Network, images: jax.Array, labels: jax.Array, bins: int = CALIBRATION_BINS,
            pairs: int = CONFUSED_PAIRS, examples: int = PAIR_EXAMPLES, gallery: int = GALLERY) -> dict[str, Any]:
    """Everything ``report`` measures but the robustness curves, for ``images (N, inputs)`` and
    ``labels (N,)``, in one compiled program (``classify_one`` vmapped over the test set).

    ``pairs``: the most frequent confusions ``true -> answer`` (by count), each with the
    ``examples`` most confident such images (index ``-1`` where there are fewer); ``mistakes``:
    the ``gallery`` most confident wrong answers (index ``-1`` where there are fewer).
    """
    classes = network.sizes[-1]
    per_example = jax.vmap(classify_one, (None, 0, 0))(network, images, labels)
    answers, confidence, correct = per_example["answer"], per_example["confidence"], per_example["correct"]
    matrix = confusion_matrix(labels, answers, classes)
    off_diagonal = jnp.where(jnp.eye(classes, dtype=bool), -1, matrix).reshape(-1)
    pair_counts, pair_index = jax.lax.top_k(off_diagonal, min(pairs, classes * (classes - 1)))
    true, answer = pair_index // classes, pair_index % classes
    in_pair = (labels[None, :] == true[:, None]) & (answers[None, :] == answer[:, None])
    pair_scores, pair_examples = jax.lax.top_k(jnp.where(in_pair, confidence[None, :], -1.0), min(examples, labels.shape[0]))
    wrong_scores, wrong = jax.lax.top_k(jnp.where(correct, -1.0, confidence), min(gallery, labels.shape[0]))
    return {
        "answers": answers, "confidence": confidence, "correct_count": correct.sum(),
        "confusion_matrix": matrix, "per_class": class_scores(matrix),
        "pairs": {"true": true, "answer": answer, "count": pair_counts,
                  "examples": jnp.where(pair_scores >= 0, pair_examples, -1),
                  "confidences": jnp.where(pair_scores >= 0, pair_scores, jnp.nan)},
        "mistakes": {"index": jnp.where(wrong_scores >= 0, wrong, -1), "true": labels[wrong], "answer": answers[wrong],
                     "confidence": jnp.where(wrong_scores >= 0, wrong_scores, jnp.nan)},
        "calibration": calibration(confidence, correct, bins),
        "rejection": rejection(confidence, correct),
    }


@functools.partial(jax.jit, static_argnames=("name", "chunk"))
def robustness_curve(network: Network, images: jax.Array, labels: jax.Array, strengths: jax.Array,
                     key: jax.Array, name: str, chunk: int = ROBUSTNESS_CHUNK) -> jax.Array:
    """Correct answers ``(S,) int32`` under ``ROBUSTNESS[name]`` at each of ``strengths (S,)``.

    One compiled program: the test set goes through in chunks of ``chunk`` images (a
    ``lax.scan``; chunk ``i`` draws its randomness from ``fold_in(key, i)``), and each chunk is
    perturbed and classified at every strength at once (``vmap`` over ``strengths``). At the
    identity strength the images are unchanged, so the count is the plain one.
    """
    apply = ROBUSTNESS[name].apply
    n, inputs = images.shape
    chunk = min(chunk, n)
    padding = -n % chunk
    images = jnp.concatenate([images, jnp.zeros((padding, inputs), images.dtype)]).reshape(-1, chunk, inputs)
    labels = jnp.concatenate([labels, jnp.full((padding,), -1, labels.dtype)]).reshape(-1, chunk)

    def step(total, batch):
        number, x, y = batch
        chunk_key = jax.random.fold_in(key, number)
        def count(strength):
            answers = jnp.argmax(_forward(network, apply(chunk_key, x, strength)), axis=-1)
            return jnp.sum(answers == y).astype(jnp.int32)
        return total + jax.vmap(count)(strengths), None

    total, _ = jax.lax.scan(step, jnp.zeros(strengths.shape, jnp.int32), (jnp.arange(images.shape[0]), images, labels))
    return total


def robustness(network: Network, images: jax.Array, labels: jax.Array, seed: int = 0,
               strengths: dict[str, Sequence[float]] | None = None) -> dict[str, dict]:
    """``{name: {"strengths", "accuracy", "identity"}}`` for every perturbation of
    ``ROBUSTNESS`` (its default strengths unless ``strengths`` names others), one compiled curve
    each; randomness from ``PRNGKey(seed)`` folded with the perturbation's position."""
    curves = {}
    key = jax.random.PRNGKey(seed)
    for number, (name, perturbation) in enumerate(ROBUSTNESS.items()):
        values = tuple((strengths or {}).get(name, perturbation.strengths))
        counts = robustness_curve(network, images, labels, jnp.asarray(values, jnp.float32),
                                  jax.random.fold_in(key, number), name)
        curves[name] = {"strengths": list(values), "identity": perturbation.identity,
                        "accuracy": (np.asarray(counts) / images.shape[0]).tolist()}
    return curves


# --- how sure a measured accuracy is ----------------------------------------------------------


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval for an accuracy of ``correct`` out of ``total`` (95 % for the
    default ``z``): ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with
    ``p = correct/n`` (Wilson 1927; Brown, Cai and DasGupta 2001)."""
    if total <= 0:
        raise ValueError("an interval needs at least one example")
    p, n = correct / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_se(accuracy: float, total: int) -> float:
    """The standard error of an accuracy measured on ``total`` examples, ``sqrt(p(1-p)/n)``."""
    return math.sqrt(accuracy * (1 - accuracy) / total)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test of two classifiers on the same examples (``(N,) bool`` each):
    ``b`` = examples only A gets right, ``c`` = only B; under "equally accurate" ``b ~
    Binomial(b + c, 1/2)``, and the two-sided p-value is ``min(1, 2 P(X <= min(b, c)))``
    (McNemar 1947; the exact form of Edwards' continuity-corrected test)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("McNemar's test compares answers on the same examples")
    b, c = int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))
    n, k = b + c, min(b, c)
    log_half = n * math.log(2.0)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - log_half) for i in range(k + 1))
    return {"only_a": b, "only_b": c, "p_value": min(1.0, 2 * tail)}
