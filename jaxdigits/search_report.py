"""What a search found, from its study: the best trials, how the best validation accuracy grew
with the model-epochs spent, which parameters mattered, and validation accuracy against each
numeric parameter (Optuna's own plots), with pruned and diverged trials counted and marked, and
the best trial's lineage where population-based training (``--pruner pbt``) made it a copy of
others."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from jaxdigits.core.errors import RunFolderError
from jaxdigits.files import json_safe, staged_output, write_atomic, write_json
from jaxdigits.interrupts import check
from jaxdigits.reports import html_page, html_table, png_bytes, pyplot, rendered
from jaxdigits.study import checked_record, lineage, optuna_module, storage_url


def load_study(out_dir: Path, storage: str | None, study: str):
    """The study of a search folder (or ``storage``), refused in one line when there is none."""
    optuna = optuna_module()
    if storage is None and not (out_dir / "study.db").is_file():
        raise RunFolderError(f"{out_dir}: no study.db; give a search's --out folder, or --storage URL")
    try:
        return optuna.load_study(study_name=study, storage=storage_url(out_dir, storage))
    except KeyError:
        raise RunFolderError(f"{out_dir}: no study named {study!r}; give --study NAME") from None


def progress_figure(records: list[dict]):
    """The best validation accuracy so far against the model-epochs spent, trial by trial."""
    plt = pyplot()
    spent, best, xs, ys = 0, 0.0, [], []
    for record in records:
        spent += record["epochs_completed"]
        best = max(best, record.get("selected_validation_accuracy") or 0.0)
        xs.append(spent), ys.append(100 * best)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(xs, ys, where="post")
    pruned = [(x, 100 * (r.get("selected_validation_accuracy") or 0)) for x, r in zip(xs, records) if r.get("pruned")]
    ax.plot(*zip(*pruned), "x", color="grey", label="a pruned trial") if pruned else None
    ax.set_xlabel("model-epochs spent"), ax.set_ylabel("best validation accuracy so far (%)"), ax.grid(alpha=0.3)
    ax.set_title("Search progress", fontsize=10)
    if pruned:
        ax.legend(fontsize=8)
    return fig


def optuna_figures(study) -> dict[str, Any]:
    """Optuna's parameter importance and slice plots (where the study has enough trials)."""
    optuna = optuna_module()
    from optuna.visualization import matplotlib as views

    figures = {}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for name, draw in (("importance", views.plot_param_importances), ("slice", views.plot_slice)):
        if len(complete) >= 2:
            try:
                axes = draw(study)
                figures[name] = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            except (ValueError, RuntimeError):  # e.g. a parameter that never varied
                continue
    return figures


def search_report(out_dir: str | os.PathLike, report_dir: str | os.PathLike, *, storage: str | None = None,
                  study: str = "jaxdigits") -> dict[str, Any]:
    """Write ``report.json``, one PNG per figure and ``report.html`` into ``report_dir`` (all
    appearing together once written; an error or Ctrl-C leaves it as it was)."""
    the_study = load_study(Path(out_dir), storage, study)
    trials = sorted(the_study.get_trials(deepcopy=False), key=lambda t: t.number)
    finished = sorted((t for t in trials if "record" in t.user_attrs), key=lambda t: (t.datetime_complete is None, t.datetime_complete))
    records = [checked_record(the_study, t) for t in finished]  # in the order they finished
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    ranked = sorted((r for r in records if not r.get("pruned")), key=lambda r: -(r.get("selected_validation_accuracy") or 0))
    with staged_output(report_dir, "--report") as stage:
        pngs = rendered({"progress": lambda: progress_figure(records)})
        check()
        pngs.update({name: png_bytes(fig) for name, fig in optuna_figures(the_study).items()})
        check()
        for name, png in pngs.items():
            write_atomic(stage / f"{name}.png", png)
        result = {"study": study, "finished": len(records), "states": states, "best": json_safe(ranked[:10]),
                  "best_test_accuracy": the_study.user_attrs.get("best_test_accuracy"),
                  "diverged": sum(r.get("status") == "diverged" for r in records),
                  "lineage": json_safe(lineage(trials, ranked[0]["trial"])) if ranked else [],
                  "figures": {name: f"{name}.png" for name in pngs}}
        write_json(stage / "report.json", result)
        write_atomic(stage / "report.html", report_html(result, pngs).encode())
    return result


def params_text(params: dict) -> str:
    """``lr=0.3, momentum=0.8``: a trial's parameters, numbers to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def report_html(result: dict, pngs: dict[str, bytes]) -> str:
    """The page: counts, the best trials on validation, the figures."""
    from jaxdigits.reports import html_figure

    percent = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    rows = [[r["trial"], r["lr"], r.get("batch_size"), ",".join(map(str, r["hidden"])), percent(r["selected_validation_accuracy"]),
             r["selected_epoch"], r["status"]] for r in result["best"]]
    counts = ", ".join(f"{n} {s}" for s, n in result["states"].items())
    test = result["best_test_accuracy"]
    sections = [f"<p class=\"note\">{result['finished']} trials finished ({html.escape(counts)}). Ranked by validation "
                "accuracy; the test set is read once, for the best trial"
                + (f": trial {test['trial']}, test accuracy {percent(test['test_accuracy'])} %" if test else "") + ".</p>",
                "<h2>Best trials</h2>",
                html_table(["trial", "lr", "batch", "hidden", "validation %", "epoch", "status"], rows)]
    if len(result["lineage"]) > 1:
        sections += ["<h2>Lineage of the best trial</h2>", "<p class=\"note\">Population-based training: each trial "
                     "continued the network of the one above from the epoch shown, with its numbers perturbed.</p>",
                     html_table(["trial", "from epoch", "epochs trained", "parameters", "validation %", "state"],
                                [[link["trial"], link["start_epoch"], link["epochs"], params_text(link["params"]),
                                  percent(link["value"]), link["state"]] for link in result["lineage"]])]
    sections += [html_figure(png, name, name) for name, png in pngs.items()]
    return html_page(f"Search {html.escape(result['study'])}", sections)
