"""Learn the lesson network's learning rate and L2 by gradient descent on the validation cost.

Hypergradient descent (Maclaurin et al. 2015, "Gradient-based hyperparameter optimization
through reversible learning"; Baydin et al. 2018, "Online learning rate adaptation with
hypergradient descent"), online and truncated: training runs in windows of ``K`` mini-batches
(the lesson's SGD step, a ``lax.scan`` of ``jaxdigits.make_step``); after each window the
validation cost ``C_val(w_K(eta, lambda))`` on a random batch of the held-out images is
differentiated through the whole window with respect to ``log eta`` (the rate) and
``log lambda`` (``l2``) -- in forward mode (``jax.jacfwd``, Franceschi et al. 2017) by default,
or in reverse (``jax.grad``) -- an Adam step moves the log hyperparameters, and training continues
from the window's end with the new values. One pass over the data is one epoch, as in plain
training; every window also pays for its hypergradient, so the method's cost is measured against
plain training's (wall time of an epoch, alternated), and a grid sweep of the rate on the same
split is read at the same compute: as many model-epochs of plain training. Writes:

    hypergradient.json   the runs (a too small and a too large starting rate): the rate, l2,
                         validation cost and hypergradient after every window, validation
                         accuracy per epoch, final validation and test accuracy; the sweep's
                         rates with their validation accuracy at the same compute, the rate
                         validation chose and its test accuracy; the finite-difference check
                         of the hypergradient; the measured cost of a window; wall times
    hypergradient.csv    per run and epoch: compute spent, rate, l2, validation accuracy
    hypergradient.png    the learned rate and l2 against compute, and validation accuracy
                         against compute for the runs and the sweep
    sweep/               the sweep's results.jsonl (resumable)

    python experiments/hypergradient.py --out results/hypergradient --data-dir path/to/mnist
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common
import jaxdigits as jd
import sweep_study
from jaxdigits.core.epoch import as_inputs, device_images
from jaxdigits.files import environment_info

NAME = "hypergradient"
LESSON = jd.TrainConfig()  # 784-16-16-10, sigmoid, quadratic cost, SGD, batch 10
VALIDATION = 10_000
STARTS = {"too small": 0.05, "too large": 30.0}  # starting rates of the two runs
L2_START = 1e-5  # any l2 above 0 switches the penalty on; its value is then a traced number
RATES = (0.1, 0.3, 1.0, 3.0, 10.0)  # the sweep's grid
BOUNDS = {"lr": (1e-3, 1e2), "l2": (1e-8, 1e-1)}  # the learned values stay within these
FULL = {"epochs": 30, "window": 500, "validation_batch": 1000, "hyper_lr": 0.2, "mode": "forward", "sweep_epochs": 30,
        "rates": RATES, "validation": VALIDATION, "num_train": None, "num_test": None, "repeats": 5,
        "compare_modes": True}
QUICK = {"epochs": 3, "window": 50, "validation_batch": 500, "hyper_lr": 0.3, "mode": "forward", "sweep_epochs": 3,
         "rates": (0.3, 3.0), "validation": 1000, "num_train": 4000, "num_test": 1000, "repeats": 1,
         "compare_modes": False}
FD_STEP = 0.02  # central difference step in log lr and log l2
MODES = ("forward", "reverse")
VALIDATION_STREAM = 0x76616C  # validation batches: a key stream apart from the shuffle


def with_numbers(state: jd.TrainState, log_numbers: dict) -> jd.TrainState:
    """``state`` with the rate ``eta = exp(log_numbers["lr"])`` and ``lambda = exp(log_numbers["l2"])``
    in its optimizer state, where ``optax.inject_hyperparams`` holds them (``learning_rate``,
    ``l2``) and the step reads them: the way a traced hyperparameter enters training."""
    held = dict(state.opt_state.hyperparams)
    held["learning_rate"] = jnp.exp(log_numbers["lr"]).astype(held["learning_rate"].dtype)
    held["l2"] = jnp.exp(log_numbers["l2"]).astype(held["l2"].dtype)
    return state._replace(opt_state=state.opt_state._replace(hyperparams=held))


def make_window(config: jd.TrainConfig) -> Callable:
    """``window(log_numbers, state, images (K, B, inputs), labels (K, B)) -> (state, costs (K,))``:
    ``K`` steps of ``config``'s update, ``w <- w - eta * grad(C_batch(w) + lambda/2 |w|^2)``,
    in one ``lax.scan``, at the rate and ``l2`` of ``log_numbers``."""
    step = jd.make_step(config)

    def window(log_numbers, state, images, labels):
        return jax.lax.scan(lambda s, batch: step(s, *batch), with_numbers(state, log_numbers), (images, labels))

    return window


def make_validation_cost(config: jd.TrainConfig) -> Callable:
    """``after(log_numbers, state, images (K, B, inputs), labels (K, B), val_images (V, inputs),
    val_labels (V,)) -> (C_val, (state, costs (K,)))``: the cost on the validation batch after
    the window, ``C_val = (1/V) sum_v cost(w_K(eta, lambda), x_v, y_v)``, without the penalty.
    ``jax.grad`` of it with respect to ``log_numbers`` is the truncated hypergradient: reverse
    mode through all ``K`` steps (Maclaurin et al. 2015, with the window's states kept in memory)."""
    window, objective = make_window(config), jd.make_objective(config.cost)

    def after(log_numbers, state, images, labels, val_images, val_labels):
        end, costs = window(log_numbers, state, images, labels)
        return objective(end.params, val_images, val_labels), (end, costs)

    return after


def make_hypergradient(config: jd.TrainConfig, mode: str = "forward") -> Callable:
    """``hypergradient(log_numbers, state, images, labels, val_images, val_labels) -> ((C_val,
    (state, costs)), {"lr": dC_val/dlog eta, "l2": dC_val/dlog lambda})`` through the window.

    ``mode="reverse"``: ``jax.grad``, backpropagation through the ``K`` steps (Maclaurin et al.
    2015), which keeps every step's intermediates. ``mode="forward"``: ``jax.jacfwd``, one
    tangent per hyperparameter carried along the steps (forward-mode hypergradients, Franceschi
    et al. 2017, "Forward and reverse gradient-based hyperparameter optimization"): the same
    numbers in memory independent of ``K``, and cheaper when hyperparameters are few."""
    if mode not in MODES:
        raise jd.ConfigError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    after = make_validation_cost(config)

    def with_value(*args):
        cost, aux = after(*args)
        return cost, (cost, aux)

    differentiate = jax.jacfwd if mode == "forward" else jax.grad

    def hypergradient(*args):
        grads, (cost, aux) = differentiate(with_value, has_aux=True)(*args)
        return (cost, aux), grads

    return hypergradient


def clip_logs(log_numbers: dict) -> dict:
    """``log_numbers`` clipped to ``BOUNDS`` (in log space)."""
    return {k: jnp.clip(v, math.log(BOUNDS[k][0]), math.log(BOUNDS[k][1])) for k, v in log_numbers.items()}


def all_finite(*trees) -> jax.Array:
    """Whether every leaf of ``trees`` is finite: one boolean."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(trees)]))


def make_outer_step(config: jd.TrainConfig, hyper: optax.GradientTransformation, mode: str) -> Callable:
    """``outer((state, log_numbers, hyper_state), images, labels, val_images, val_labels) ->
    (carry, trace)``: train one window, take the hypergradient ``d C_val / d log(eta, lambda)``
    and one ``hyper`` (Adam) step on the logs, clipped to ``BOUNDS``; training continues from
    the window's end. A window whose numbers turn non-finite is undone and its rate halved.
    ``trace`` holds the window's rate, ``l2``, validation cost, hypergradient and training cost."""
    hypergradient = make_hypergradient(config, mode)

    def outer(carry, images, labels, val_images, val_labels):
        state, log_numbers, hyper_state = carry
        (cost, (end, costs)), grads = hypergradient(log_numbers, state, images, labels, val_images, val_labels)
        updates, new_hyper_state = hyper.update(grads, hyper_state)
        moved = (end, clip_logs(optax.apply_updates(log_numbers, updates)), new_hyper_state)
        undone = (state, clip_logs({**log_numbers, "lr": log_numbers["lr"] - math.log(2.0)}), hyper_state)
        ok = all_finite(cost, grads, end.params)
        carry = jax.tree.map(lambda new, old: jnp.where(ok, new, old), moved, undone)
        trace = {"lr": jnp.exp(log_numbers["lr"]), "l2": jnp.exp(log_numbers["l2"]), "validation_cost": cost,
                 "grad_log_lr": grads["lr"], "grad_log_l2": grads["l2"], "train_cost": jnp.mean(costs), "finite": ok}
        return carry, trace

    return outer


def make_hyper_epoch(config: jd.TrainConfig, window: int, validation_batch: int, hyper: optax.GradientTransformation,
                     mode: str = "forward"):
    """``epoch(carry, key, images (N, inputs), labels (N,), val_images (M, inputs), val_labels (M,))
    -> (carry, trace)``: one pass over the shuffled mini-batches (``jd.batch_order``, as plain
    training draws them) in windows of ``window`` steps, each followed by its hypergradient on
    ``validation_batch`` validation images drawn afresh; the ``N/B mod K`` last batches sit out.
    Images may be uint8 pixels (``as_inputs`` makes the floats). One ``lax.scan`` of windows."""
    outer = make_outer_step(config, hyper, mode)

    def epoch(carry, key, images, labels, val_images, val_labels):
        order = jd.batch_order(key, images.shape[0], config.batch_size)
        windows = order[: order.shape[0] // window * window].reshape(-1, window, config.batch_size)
        keys = jax.random.split(jax.random.fold_in(key, VALIDATION_STREAM), windows.shape[0])
        dtype = jax.tree.leaves(carry[0].params)[0].dtype

        def body(carry, inputs):
            batches, val_key = inputs
            pick = jax.random.choice(val_key, val_images.shape[0], (validation_batch,), replace=False)
            return outer(carry, as_inputs(images[batches], dtype), labels[batches],
                         as_inputs(val_images[pick], dtype), val_labels[pick])

        return jax.lax.scan(body, carry, (windows, keys))

    return epoch


def hyper_optimizer(hyper_lr: float) -> optax.GradientTransformation:
    """Adam on the log hyperparameters with a short memory of the gradient's scale (``b2 = 0.9``:
    the hypergradient's scale changes by orders of magnitude within a run), after
    clipping each component to ``[-1, 1]`` (at a rate too large the window's dynamics are chaotic
    and the hypergradient explodes: Metz et al. 2019)."""
    return optax.chain(optax.clip(1.0), optax.adam(hyper_lr, b1=0.9, b2=0.9))


def start_logs(lr: float, l2: float, dtype=jnp.float32) -> dict:
    """``{"lr": log lr, "l2": log l2}`` as arrays of ``dtype``."""
    return {"lr": jnp.log(jnp.asarray(lr, dtype)), "l2": jnp.log(jnp.asarray(l2, dtype))}


def first_window(data: jd.Dataset, config: jd.TrainConfig, window: int, validation_batch: int, seed: int = 0):
    """The first ``window`` mini-batches of a run of ``seed`` (as its first epoch draws them) and
    the first ``validation_batch`` validation images: ``(images (K, B, inputs), labels (K, B),
    val_images (V, inputs), val_labels (V,))``."""
    _, shuffle_key = jd.run_keys(seed)
    batches = np.asarray(jd.batch_order(jax.random.fold_in(shuffle_key, 1), len(data.train_images), config.batch_size))
    batches = batches[:window]
    return (jnp.asarray(data.train_images[batches]), jnp.asarray(data.train_labels[batches]),
            jnp.asarray(data.validation_images[:validation_batch]), jnp.asarray(data.validation_labels[:validation_batch]))


def finite_difference_check(data: jd.Dataset, config: jd.TrainConfig, settings: dict, lr: float, step: float = FD_STEP) -> dict:
    """Each mode's hypergradient on the first window of a run starting at ``lr`` against the
    central difference ``(C_val(log h + s) - C_val(log h - s)) / 2s`` for ``h`` = rate and ``l2``,
    in float64 (in float32 the difference in ``C_val`` that ``l2`` makes over one window is near
    the cost's rounding): ``{name: {"finite_difference": ..., "forward": ..., "reverse": ...}}``."""
    with jax.enable_x64(True):
        config = config.replace(dtype="float64")
        init_key, _ = jd.run_keys(0)
        state = jd.init_state(config, init_key, data.inputs, data.num_classes, update={"lr": lr, "l2": L2_START})
        batch = [a.astype(jnp.float64) if a.dtype.kind == "f" else a
                 for a in first_window(data, config, settings["window"], settings["validation_batch"])]
        logs = start_logs(lr, L2_START, jnp.float64)
        after = jax.jit(make_validation_cost(config))
        grads = {mode: jax.jit(make_hypergradient(config, mode))(logs, state, *batch)[1] for mode in MODES}
        out = {}
        for name in logs:
            shifted = [after({**logs, name: logs[name] + sign * step}, state, *batch)[0] for sign in (1, -1)]
            out[name] = {"finite_difference": float((shifted[0] - shifted[1]) / (2 * step)),
                         **{mode: float(grads[mode][name]) for mode in MODES}}
    return {"at": {"lr": lr, "l2": L2_START, "window": settings["window"], "log_step": step, "dtype": "float64"}, **out}


def on_device(data: jd.Dataset) -> dict:
    """The training and validation split as the epoch takes them: uint8 pixels where exact."""
    return {"images": device_images(data.train_images, LESSON.dtype), "labels": jnp.asarray(data.train_labels),
            "val_images": device_images(data.validation_images, LESSON.dtype),
            "val_labels": jnp.asarray(data.validation_labels)}


def compiled_epoch(config: jd.TrainConfig, settings: dict, arrays: dict, carry) -> Callable:
    """``make_hyper_epoch`` compiled once for ``arrays``' shapes; every run of the study reuses it."""
    epoch = make_hyper_epoch(config, settings["window"], settings["validation_batch"],
                             hyper_optimizer(settings["hyper_lr"]), settings["mode"])
    key = jax.random.PRNGKey(0)
    return jax.jit(epoch).lower(carry, key, *arrays.values()).compile()


def start_carry(config: jd.TrainConfig, data: jd.Dataset, settings: dict, lr: float, seed: int = 0):
    """``(state, log_numbers, hyper_state)`` at the start of a run: ``train``'s network of
    ``seed`` (``jd.run_keys``, ``jd.init_state``) with the rate ``lr`` and ``L2_START``."""
    init_key, _ = jd.run_keys(seed)
    state = jd.init_state(config, init_key, data.inputs, data.num_classes, update={"lr": lr, "l2": L2_START})
    logs = start_logs(lr, L2_START)
    return state, logs, hyper_optimizer(settings["hyper_lr"]).init(logs)


def hyper_run(epoch_fn: Callable, carry, data: jd.Dataset, arrays: dict, epochs: int, seed: int = 0) -> tuple:
    """Train ``epochs`` epochs of ``epoch_fn`` from ``carry``, epoch ``k`` shuffled as ``train``
    shuffles it (``fold_in(shuffle_key, k)``); returns ``(carry, run)``: per window the trace,
    per epoch the rate and ``l2`` at its end, validation accuracy and cost, wall seconds."""
    _, shuffle_key = jd.run_keys(seed)
    traces, epochs_out = [], []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        carry, trace = epoch_fn(carry, jax.random.fold_in(shuffle_key, epoch), *arrays.values())
        jax.block_until_ready(carry)
        seconds = time.perf_counter() - started
        trace = {k: np.asarray(v).tolist() for k, v in trace.items()}
        traces.append(trace)
        epochs_out.append({"epoch": epoch, "lr": float(jnp.exp(carry[1]["lr"])), "l2": float(jnp.exp(carry[1]["l2"])),
                           "validation_accuracy": jd.evaluate(carry[0].params, data.validation_images, data.validation_labels),
                           "train_cost": float(np.mean(trace["train_cost"])), "seconds": seconds,
                           "undone_windows": int(np.sum(~np.asarray(trace["finite"])))})
    windows = {k: sum((t[k] for t in traces), []) for k in traces[0]}
    return carry, {"epochs": epochs_out, "windows": windows}


def measure_cost(config: jd.TrainConfig, epoch_fn: Callable, carry, arrays: dict, repeats: int) -> dict:
    """The wall time of one hypergradient epoch against one plain epoch (``jd.make_epoch``, the
    same steps without hypergradients) on the same data, alternated ``repeats`` times after a
    warm-up; the median ratio is the method's compute per epoch in plain model-epochs."""
    plain = jax.jit(jd.make_epoch(config))
    key = jax.random.PRNGKey(1)
    times = {"plain": [], "hypergradient": []}
    for attempt in range(repeats + 1):
        for name, run in (("plain", lambda: plain(carry[0], key, arrays["images"], arrays["labels"])),
                          ("hypergradient", lambda: epoch_fn(carry, key, *arrays.values()))):
            started = time.perf_counter()
            jax.block_until_ready(run())
            if attempt:  # the first round compiles and warms up
                times[name].append(time.perf_counter() - started)
    ratios = np.asarray(times["hypergradient"]) / np.asarray(times["plain"])
    return {"plain_epoch_seconds": float(np.median(times["plain"])),
            "hypergradient_epoch_seconds": float(np.median(times["hypergradient"])),
            "ratio": float(np.median(ratios)), "repeats": repeats}


def summarise_run(start: float, run: dict, carry, data: jd.Dataset, ratio: float) -> dict:
    """A run's numbers: where the rate and ``l2`` started and ended (the last epoch's geometric
    mean too: the rate moves every window), its validation accuracy, its compute in plain
    model-epochs (epochs x ``ratio``), its training wall time, and its test accuracy, read once."""
    last = run["epochs"][-1]
    per_epoch = len(run["windows"]["lr"]) // len(run["epochs"])
    tail = {k: np.asarray(run["windows"][k][-per_epoch:]) for k in ("lr", "l2")}
    return {
        "start_lr": start, "start_l2": L2_START, "final_lr": last["lr"], "final_l2": last["l2"],
        "last_epoch_lr_geomean": float(np.exp(np.mean(np.log(tail["lr"])))),
        "last_epoch_l2_geomean": float(np.exp(np.mean(np.log(tail["l2"])))),
        "largest_lr": float(np.max(run["windows"]["lr"])), "smallest_lr": float(np.min(run["windows"]["lr"])),
        "validation_accuracy": last["validation_accuracy"],
        "best_validation_accuracy": max(e["validation_accuracy"] for e in run["epochs"]),
        "test_accuracy": jd.evaluate(carry[0].params, data.test_images, data.test_labels),
        "epochs_trained": len(run["epochs"]), "compute_model_epochs": len(run["epochs"]) * ratio,
        "undone_windows": sum(e["undone_windows"] for e in run["epochs"]),
        "train_seconds": sum(e["seconds"] for e in run["epochs"]), **run,
    }


def sweep_rates(data: jd.Dataset, rates: Sequence[float], epochs: int, validation: int, out, quick: bool) -> list[dict]:
    """The lesson network at each of ``rates`` for ``epochs`` epochs, seed 0, the last
    ``validation`` training images held out: one resumable ``jd.sweep`` under ``out``."""
    grid = jd.SweepGrid(hidden=[LESSON.hidden], lr=list(rates), seed=[0], epochs=epochs, validation=validation)
    return sweep_study.run_sweep(grid, data, out, quick)


def sweep_at(records: Sequence[dict], epochs: int) -> dict:
    """The sweep as it stood after ``epochs`` epochs of every rate (``len(records) x epochs``
    model-epochs): each rate's validation accuracy then, the rate it chooses and that rate's
    test accuracy (the only test figure read). A rate that diverged earlier has none."""
    rows = []
    for record in sorted(records, key=lambda r: r["lr"]):
        curve, tests = record["validation_accuracy_curve"], record["test_accuracy_curve"]
        done = len(curve) >= epochs
        rows.append({"lr": record["lr"], "validation_accuracy": curve[epochs - 1] if done else None,
                     "test_accuracy": tests[epochs - 1] if done else None})
    chosen = max((r for r in rows if r["validation_accuracy"] is not None), key=lambda r: r["validation_accuracy"])
    return {"epochs_per_rate": epochs, "compute_model_epochs": epochs * len(rows), "chosen_lr": chosen["lr"],
            "chosen_validation_accuracy": chosen["validation_accuracy"], "chosen_test_accuracy": chosen["test_accuracy"],
            "rates": [{"lr": r["lr"], "validation_accuracy": r["validation_accuracy"]} for r in rows]}


def sweep_curve(records: Sequence[dict]) -> list[dict]:
    """The sweep's best validation accuracy over its rates after each epoch of every rate, with
    the compute spent by then (``len(records) x epoch`` model-epochs)."""
    length = max(len(r["validation_accuracy_curve"]) for r in records)
    return [{"epoch": e, "compute_model_epochs": e * len(records),
             "best_validation_accuracy": max(r["validation_accuracy_curve"][e - 1] for r in records
                                             if len(r["validation_accuracy_curve"]) >= e)}
            for e in range(1, length + 1)]


COLOURS = {"too small": "tab:blue", "too large": "tab:red"}


def plot_numbers(ax_lr, ax_l2, runs: dict, sweep: dict) -> None:
    """The rate and ``l2`` of each run after every window, against compute (model-epochs)."""
    for role, run in runs.items():
        windows = len(run["windows"]["lr"])
        compute = np.arange(windows) * run["compute_model_epochs"] / windows
        label = f"start {run['start_lr']:g} ({role})"
        ax_lr.plot(compute, run["windows"]["lr"], color=COLOURS[role], label=label)
        ax_l2.plot(compute, run["windows"]["l2"], color=COLOURS[role], label=label)
    ax_lr.axhline(sweep["matched"]["chosen_lr"], color="tab:green", ls="--",
                  label=f"sweep's choice at equal compute ({sweep['matched']['chosen_lr']:g})")
    ax_lr.axhline(LESSON.lr, color="grey", ls=":", label=f"the lesson's rate ({LESSON.lr:g})")
    ax_lr.set_ylabel("learning rate")
    ax_l2.set_ylabel("l2")
    for ax, title in ((ax_lr, "learned learning rate"), (ax_l2, "learned l2")):
        ax.set_yscale("log")
        ax.set_title(title)


def plot_accuracy(ax, runs: dict, sweep: dict, records: Sequence[dict]) -> None:
    """Validation accuracy against compute: each run per epoch, the sweep's best rate so far,
    and the lesson's rate alone; the sweep's choice at equal compute marked."""
    for role, run in runs.items():
        per_epoch = run["compute_model_epochs"] / run["epochs_trained"]
        ax.plot([e["epoch"] * per_epoch for e in run["epochs"]], [100 * e["validation_accuracy"] for e in run["epochs"]],
                marker=".", color=COLOURS[role], label=f"hypergradient, start {run['start_lr']:g}")
    curve = sweep["curve"]
    ax.plot([c["compute_model_epochs"] for c in curve], [100 * c["best_validation_accuracy"] for c in curve],
            marker=".", color="tab:green", label=f"sweep of {len(records)} rates, best so far")
    lesson = [r for r in records if r["lr"] == LESSON.lr]
    if lesson:
        accs = lesson[0]["validation_accuracy_curve"]
        ax.plot(range(1, len(accs) + 1), 100 * np.asarray(accs), color="grey", ls=":", label=f"lr {LESSON.lr:g} alone")
    matched = sweep["matched"]
    ax.axvline(matched["compute_model_epochs"], color="tab:green", ls="--", lw=0.8)
    best = max(100 * c["best_validation_accuracy"] for c in curve)
    ax.set_ylim(max(0.0, best - 12), min(100.0, best + 2))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("validation accuracy against compute")


def plot(runs: dict, sweep: dict, records: Sequence[dict], path, title: str):
    """``hypergradient.png``: the learned rate, the learned ``l2``, validation accuracy; all
    against compute in plain model-epochs (one epoch of plain training of one network)."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    plot_numbers(axes[0], axes[1], runs, sweep)
    plot_accuracy(axes[2], runs, sweep, records)
    for ax in axes:
        ax.set_xlabel("compute (model-epochs of plain training)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return common.save_figure(fig, path)


CSV_COLUMNS = ("run", "epoch", "compute_model_epochs", "lr", "l2", "validation_accuracy", "train_cost", "seconds")


def csv_rows(runs: dict) -> list[dict]:
    """Per run and epoch: compute spent, the rate and ``l2`` at the epoch's end, validation accuracy."""
    rows = []
    for role, run in runs.items():
        per_epoch = run["compute_model_epochs"] / run["epochs_trained"]
        rows += [{"run": f"start {run['start_lr']:g} ({role})", **e, "compute_model_epochs": round(e["epoch"] * per_epoch, 3)}
                 for e in run["epochs"]]
    return rows


def percent(value) -> str:
    """``95.12 %``, or a dash for none."""
    return "–" if value is None else f"{100 * value:.2f} %"


def findings(summary: dict) -> list[str]:
    """One sentence per finding, with the numbers."""
    runs, matched, full, cost = summary["runs"], summary["sweep"]["matched"], summary["sweep"]["full"], summary["cost"]
    out = ["A hypergradient epoch costs " + "; ".join(f"{cost[mode]['ratio']:.2f} plain epochs in {mode} mode"
                                                      for mode in MODES if mode in cost) + "."]
    for role, run in runs.items():
        out.append(f"From lr {run['start_lr']:g} ({role}) the rate went to {run['largest_lr']:.3g} at most and ended at "
                   f"{run['final_lr']:.3g} (l2 {run['start_l2']:.0e} -> {run['final_l2']:.2g}): validation "
                   f"{percent(run['validation_accuracy'])}, test {percent(run['test_accuracy'])}, "
                   f"{run['compute_model_epochs']:.1f} model-epochs.")
    for label, read in (("at equal compute", matched), ("at full length", full)):
        out.append(f"The sweep {label} ({read['epochs_per_rate']} epochs x {len(read['rates'])} rates = "
                   f"{read['compute_model_epochs']} model-epochs) chose lr {read['chosen_lr']:g}: validation "
                   f"{percent(read['chosen_validation_accuracy'])}, test {percent(read['chosen_test_accuracy'])}.")
    check = summary["finite_difference_check"]
    out.append("Hypergradient against a central difference (float64): " + "; ".join(
        f"d/dlog {name}: {check[name]['forward']:.6g} vs {check[name]['finite_difference']:.6g}" for name in ("lr", "l2")) + ".")
    return out


def settings_for(args: argparse.Namespace) -> dict:
    """The study's settings: the mode's defaults, with the flags given; checked in one line."""
    settings = dict(QUICK if args.quick else FULL)
    for name in ("epochs", "window", "hyper_lr", "mode", "sweep_epochs"):
        settings[name] = common.choose(getattr(args, name), args.quick, QUICK[name], FULL[name])
    for name in ("epochs", "window", "sweep_epochs"):
        if settings[name] < 1:
            raise jd.ConfigError(f"--{name.replace('_', '-')} {settings[name]}: give at least 1")
    if not settings["hyper_lr"] > 0:
        raise jd.ConfigError(f"--hyper-lr {settings['hyper_lr']}: give a step size above 0")
    return settings


def load(args: argparse.Namespace, settings: dict) -> tuple[jd.Dataset, jd.Dataset]:
    """``(full, split)``: the data (a subset with ``--quick``) and its training/validation split."""
    full = common.subset(common.load_data(args.data_dir), settings["num_train"], settings["num_test"])
    split = full.held_out(settings["validation"])
    steps = len(split.train_images) // LESSON.batch_size
    if settings["window"] > steps:
        raise jd.ConfigError(f"--window {settings['window']}: an epoch has only {steps} mini-batches")
    return full, split


def hypergradient_runs(config: jd.TrainConfig, data: jd.Dataset, settings: dict) -> tuple[dict, dict]:
    """Compile the hypergradient epoch of the chosen mode (of each mode with ``compare_modes``)
    once, measure it against a plain epoch, and train one run per ``STARTS`` rate: ``(runs, cost)``."""
    arrays = on_device(data)
    carry = start_carry(config, data, settings, STARTS["too small"])
    cost, epochs = {}, {}
    for mode in MODES if settings["compare_modes"] else (settings["mode"],):
        started = time.perf_counter()
        epochs[mode] = compiled_epoch(config, {**settings, "mode": mode}, arrays, carry)
        cost[mode] = {"compile_seconds": time.perf_counter() - started,
                      **measure_cost(config, epochs[mode], carry, arrays, settings["repeats"])}
    ratio, runs = cost[settings["mode"]]["ratio"], {}
    for role, lr in STARTS.items():
        print(f"hypergradient run from lr {lr:g} ({role}), {settings['epochs']} epochs", file=sys.stderr)
        end, run = hyper_run(epochs[settings["mode"]], start_carry(config, data, settings, lr), data, arrays,
                             settings["epochs"])
        runs[role] = summarise_run(lr, run, end, data, ratio)
    return runs, cost


def sweep_part(full: jd.Dataset, settings: dict, budget: float, out, quick: bool) -> tuple[dict, list[dict]]:
    """The sweep of ``settings["rates"]``, read at ``budget`` model-epochs (each rate gets
    ``budget / len(rates)`` epochs, rounded, at least 1, at most the sweep's length) and at its
    full length; returns ``(sweep, records)``."""
    rates = settings["rates"]
    records = sweep_rates(full, rates, settings["sweep_epochs"], settings["validation"], out, quick)
    finished = [r for r in records if r["validation_accuracy_curve"]]
    matched = min(settings["sweep_epochs"], max(1, round(budget / len(rates))))
    return {"matched": sweep_at(finished, matched), "full": sweep_at(finished, settings["sweep_epochs"]),
            "curve": sweep_curve(finished), "seconds": sum(r["seconds"] for r in records),
            "diverged": [r["lr"] for r in records if r["status"] == "diverged"]}, records


def study(args: argparse.Namespace) -> dict:
    """The check, the two runs, the sweep, the table and the figure; returns the summary."""
    started = time.perf_counter()
    settings = settings_for(args)
    full, data = load(args, settings)
    config = LESSON.replace(l2=L2_START)
    check = finite_difference_check(data, config, settings, STARTS["too small"])
    runs, cost = hypergradient_runs(config, data, settings)
    budget = settings["epochs"] * cost[settings["mode"]]["ratio"]
    sweep, records = sweep_part(full, settings, budget, args.out, args.quick)
    sweep_study.write_csv(args.out / f"{NAME}.csv", csv_rows(runs), CSV_COLUMNS)
    title = (f"Hypergradient descent on log lr and log l2 of the lesson's 784-16-16-10 (windows of "
             f"{settings['window']} steps, {settings['mode']} mode), {len(data.train_images)} training images"
             + (" [quick]" if args.quick else ""))
    plot(runs, sweep, records, args.out / f"{NAME}.png", title)
    summary = {
        "quick": args.quick, "settings": {**settings, "rates": list(settings["rates"]), "starts": STARTS,
                                          "l2_start": L2_START, "bounds": BOUNDS},
        "num_train": len(data.train_images), "num_validation": len(data.validation_images),
        "num_test": len(data.test_images), "finite_difference_check": check, "cost": cost,
        "budget_model_epochs": budget, "runs": runs, "sweep": sweep, "environment": environment_info(),
        "seconds": time.perf_counter() - started, "figures": {"hypergradient": f"{NAME}.png"},
    }
    summary["findings"] = findings(summary)
    common.save_json(args.out / f"{NAME}.json", summary)
    for line in summary["findings"]:
        print(line)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = common.make_parser(__doc__.splitlines()[0], prog="hypergradient.py")
    parser.add_argument("--epochs", type=int, help=f"epochs of each hypergradient run (default {FULL['epochs']})")
    parser.add_argument("--window", type=int, help=f"mini-batches per window, K (default {FULL['window']})")
    parser.add_argument("--hyper-lr", type=float, help=f"Adam's step on the log hyperparameters (default {FULL['hyper_lr']})")
    parser.add_argument("--mode", choices=MODES, help=f"how the hypergradient is taken (default {FULL['mode']})")
    parser.add_argument("--sweep-epochs", type=int, help=f"epochs of each rate of the sweep (default {FULL['sweep_epochs']})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(study, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
