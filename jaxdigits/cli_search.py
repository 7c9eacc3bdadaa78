"""The ``search`` and ``search-report`` commands: parse, call ``search``/``search_report``, print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_search_parsers(commands) -> None:
    """``jaxdigits search`` (its flags: the base config's fields, the space, the study) and
    ``jaxdigits search-report``."""
    from jaxdigits.cli_flags import add_config_flags, add_data_flag, out_folder, positive
    from jaxdigits.search import DEFAULT_POPULATION, DEFAULT_VALIDATION
    from jaxdigits.study import PRUNERS, SAMPLERS

    search = commands.add_parser(
        "search", help="search a space of configurations: a population on the device, pruned and refilled",
        description="Draw trials from an Optuna study (sampler), train them as one population in one compiled "
        "program, prune them on validation accuracy and refill their slots; the study lives in --storage "
        "(default OUT/study.db) and running the same command again resumes it. Config flags set the fields "
        "the space leaves out.")
    add_config_flags(search)
    add_data_flag(search)
    search.add_argument("--space", type=Path, metavar="FILE", help="a TOML or JSON file: field = distribution")
    search.add_argument("--param", action="append", default=[], metavar="FIELD=SPEC",
                        help="one field's distribution: lr=log:0.01:30, l2=uniform:0:0.001, batch_size=10,32,128")
    search.add_argument("--trials", type=positive("--trials"), required=True, help="trials the study runs in all")
    search.add_argument("--population", type=positive("--population", 1 << 16), default=DEFAULT_POPULATION,
                        help=f"trials training at once (default {DEFAULT_POPULATION})")
    search.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="how trials are drawn (default tpe)")
    search.add_argument("--pruner", choices=PRUNERS, default="asha",
                        help="how trials are stopped early (default asha); pbt: population-based training, the bottom "
                        "quarter continues copies of the top quarter with perturbed numbers")
    search.add_argument("--pbt-interval", type=positive("--pbt-interval"), metavar="EPOCHS",
                        help="with --pruner pbt: epochs a trial trains between decisions (default 2)")
    search.add_argument("--out", type=out_folder, required=True, metavar="DIR", help="folder for the study and best networks")
    search.add_argument("--storage", metavar="URL", help="study database URL, e.g. postgresql://user@host/db (default: SQLite in --out)")
    search.add_argument("--study", default="jaxdigits", help="study name in the storage (default jaxdigits)")
    search.add_argument("--heartbeat", type=positive("--heartbeat", 3600), default=5,
                        help="seconds between a worker's heartbeats; a trial silent for 6 of them is failed and retried (default 5)")
    search.set_defaults(handler=run_search, validation_default=DEFAULT_VALIDATION)

    report = commands.add_parser("search-report", help="what a search found: best trials, history, importance (HTML, PNG)")
    report.add_argument("out_dir", type=Path, metavar="SEARCH_DIR", help="a search's --out folder")
    report.add_argument("--storage", metavar="URL", help="the study's database (default SEARCH_DIR/study.db)")
    report.add_argument("--study", default="jaxdigits", help="study name (default jaxdigits)")
    report.add_argument("--report", type=out_folder, metavar="DIR", help="folder for the report (default SEARCH_DIR/report)")
    report.set_defaults(handler=run_search_report)


def run_search(args: argparse.Namespace) -> int:
    from jaxdigits.cli_flags import config_overrides
    from jaxdigits.core.config import TrainConfig
    from jaxdigits.search import search
    from jaxdigits.search_space import load_space

    overrides = config_overrides(args)
    epochs, validation = overrides.pop("epochs", None), overrides.pop("validation", None)
    if epochs is None:
        from jaxdigits.core.errors import ConfigError

        raise ConfigError("search needs --epochs, the most epochs any trial trains")
    if validation is None:
        validation = args.validation_default
        print(f"search: validation {validation} (the last {validation} training images; --validation N to change)",
              file=sys.stderr)
    space = load_space(args.space, tuple(args.param))
    both = sorted(set(space) & set(overrides))
    if both:
        from jaxdigits.core.errors import ConfigError

        flags = ", ".join("--" + name.replace("_", "-") for name in both)
        raise ConfigError(f"{flags}: set by a flag and searched by the space; drop the flag or the field's range")
    result = search(space, trials=args.trials, epochs=epochs, validation=validation, population=args.population,
                    sampler=args.sampler, pruner=args.pruner, out_dir=args.out, storage=args.storage, study=args.study,
                    base=TrainConfig().replace(**overrides), data_dir=args.data_dir,
                    heartbeat=(args.heartbeat, 6 * args.heartbeat), progress=True, pbt_interval=args.pbt_interval)
    print(summary_line(result, args))
    return 0


def summary_line(result, args: argparse.Namespace) -> str:
    """How many trials ended how, the best one on validation, its test accuracy (read once)."""
    pruned = sum(bool(r.get("pruned")) for r in result.records)
    line = f"{len(result.records)} trials ({len(result.records) - pruned} complete, {pruned} pruned)"
    best = result.best
    if best is not None:
        line += (f"; best trial {best['trial']} on validation accuracy: {100 * best['selected_validation_accuracy']:.2f}% "
                 f"(epoch {best['selected_epoch']})")
        if result.best_test_accuracy is not None:
            line += f", its test accuracy {100 * result.best_test_accuracy:.2f}% (read once, after the search)"
    if len(result.lineage) > 1:
        line += f"; its lineage: {lineage_text(result.lineage)}"
    rate = result.model_epochs / result.seconds if result.seconds else 0.0
    return line + f"; this worker trained {result.model_epochs} model-epochs in {result.seconds:.1f} s ({rate:.1f}/s)"


def lineage_text(lineage: list[dict]) -> str:
    """``trial 3 -> trial 9 (from epoch 2) -> ...``: a population-based training lineage."""
    return " -> ".join(f"trial {link['trial']}" + (f" (from epoch {link['start_epoch']})" if link["start_epoch"] else "")
                       for link in lineage)


def run_search_report(args: argparse.Namespace) -> int:
    from jaxdigits.search_report import search_report

    out = args.report if args.report is not None else args.out_dir / "report"
    result = search_report(args.out_dir, out, storage=args.storage, study=args.study)
    states = ", ".join(f"{count} {state}" for state, count in result["states"].items())
    print(f"{result['finished']} trials ({states}); report in {out / 'report.html'}")
    return 0
