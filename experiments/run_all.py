"""Run every "what the network learned" experiment and write ``summary.md`` with their findings.

    python experiments/run_all.py --out results/learned --data-dir path/to/mnist

Each experiment writes into ``OUT/<name>/`` (``results.json`` and its figures). An experiment whose
``results.json`` is already there from a run in the same mode (quick or full) is not run again, so
an interrupted run picks up where it stopped; ``--force`` reruns everything. ``summary.md`` embeds
every figure and states each finding in one sentence, with the numbers read from the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import common
import first_layer_weights
import gradient_importance
import noise
import random_labels
from jaxdigits import JaxdigitsError

EXPERIMENTS = {
    "first_layer_weights": (first_layer_weights, "Do the hidden neurons pick up edges and loops?"),
    "noise": (noise, 'Does the network understand digits, or will it confidently call noise a "5"?'),
    "random_labels": (random_labels, "Do networks memorise, or learn structure?"),
    "gradient_importance": (gradient_importance, "Which weights matter most, as the gradient's components suggest?"),
}
TAKES_FASHION = ("first_layer_weights", "noise")
SUMMARY = "summary.md"


def completed(folder: Path, quick: bool) -> dict | None:
    """The experiment's results if ``folder`` holds a readable ``results.json`` from a run in the same mode."""
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("quick") == quick else None


def experiment_argv(name: str, args: argparse.Namespace) -> list[str]:
    """The command line ``run_all`` gives one experiment."""
    argv = ["--out", str(args.out / name)]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    if args.fashion_data_dir is not None and name in TAKES_FASHION:
        argv += ["--fashion-data-dir", str(args.fashion_data_dir)]
    if args.quick:
        argv.append("--quick")
    return argv


def summary_markdown(out: Path, quick: bool, failed: dict[str, int]) -> str:
    """``summary.md``: per experiment its question, figures (relative paths) and findings."""
    mode = "quick check (small subsets, few epochs; not the study's numbers)" if quick else "full study"
    lines = [
        "# What the network learned",
        "",
        f"Mode: {mode}. Each section's numbers are in `<experiment>/results.json`; "
        f"regenerate with `python experiments/run_all.py --out DIR --data-dir MNIST_DIR{' --quick' if quick else ''}`.",
        "",
    ]
    for name, (module, question) in EXPERIMENTS.items():
        lines += [f"## {question}", "", f"`experiments/{name}.py`", ""]
        results = completed(out / name, quick)
        if results is None:
            reason = f"failed with exit code {failed[name]}" if name in failed else "was not run"
            lines += [f"No results: the experiment {reason}.", ""]
            continue
        for key, figure in results.get("figures", {}).items():
            lines += [f"![{name} {key}]({name}/{figure})", ""]
        lines += [f"- {sentence}" for sentence in module.findings(results)]
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, int]:
    """Run the selected experiments (skipping finished ones), write the summary; return failures."""
    names = args.only or list(EXPERIMENTS)
    failed = {}
    for name in names:
        module = EXPERIMENTS[name][0]
        if not args.force and completed(args.out / name, args.quick) is not None:
            print(f"run_all: {name}: results already in {args.out / name}; skipping (use --force to rerun)")
            continue
        print(f"run_all: running {name}")
        code = module.main(experiment_argv(name, args))
        if code == common.EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if code != 0:
            failed[name] = code
    path = args.out / SUMMARY
    path.write_text(summary_markdown(args.out, args.quick, failed))
    print(f"run_all: wrote {path}")
    if failed:
        raise ExperimentsFailed(failed)
    return failed


class ExperimentsFailed(JaxdigitsError):
    """One or more experiments ended with an error (each has printed its own message)."""

    def __init__(self, failed: dict[str, int]):
        super().__init__(f"{len(failed)} experiment(s) failed: {', '.join(failed)}; see their messages above")
        self.exit_code = max(failed.values())


def build_parser() -> argparse.ArgumentParser:
    parser = common.make_parser(__doc__.splitlines()[0], prog="run_all.py")
    common.add_fashion_flag(parser)
    parser.add_argument("--only", nargs="+", choices=tuple(EXPERIMENTS), help="run only these experiments")
    parser.add_argument("--force", action="store_true", help="rerun experiments that already have results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
