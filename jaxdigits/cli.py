"""The ``jaxdigits`` command line: it parses arguments and calls the library, nothing more.

Exit codes: 0 success, 1 a data or checkpoint problem, 2 invalid flags or config (before anything
compiles), 3 training diverged, 130 interrupted (Ctrl-C or SIGTERM; finished work is kept).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import NoReturn, Sequence

from jaxdigits import interrupts
from jaxdigits.cli_flags import add_config_flags, add_data_flag, config_overrides, out_folder, positive, seed_flag
from jaxdigits.core.errors import ConfigError, JaxdigitsError

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block): ``prog: error: ...; see --help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="jaxdigits", description="The lesson's digit-reading network in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a network and save it to --out")
    add_config_flags(train)
    add_data_flag(train)
    train.add_argument("--out", type=out_folder, help="folder for params, checkpoint, run.json and history.json")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete epoch")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("evaluate", help="print a saved network's test accuracy")
    evaluate.add_argument("checkpoint", type=Path, help="a run's --out folder or its params.safetensors")
    add_data_flag(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    predict = commands.add_parser("predict", help="read the digit in a PNG with a saved network")
    predict.add_argument("checkpoint", type=Path, help="a run's --out folder or its params.safetensors")
    predict.add_argument("image", type=Path, help="a PNG of one digit, any size, dark or light background")
    predict.set_defaults(handler=run_predict)

    add_sweep_parser(commands)

    report = commands.add_parser("report", help="what a trained network gets wrong: an HTML report with figures",
                                 description="Measure a saved network on its test set (confusion matrix, per-class "
                                 "scores, confused pairs, confident mistakes, calibration, rejection, robustness) "
                                 "and write report.json, one PNG per figure and a self-contained report.html to --out.")
    report.add_argument("checkpoint", type=Path, help="a run's --out folder or its params.safetensors")
    add_data_flag(report)
    report.add_argument("--out", type=out_folder, required=True, metavar="DIR", help="folder for the report's files")
    report.add_argument("--compare", type=Path, metavar="OTHER",
                        help="a second run folder or params file, measured on the same images and drawn beside it")
    report.add_argument("--seed", type=seed_flag, default=0, help="seed of the random perturbations, 0..2**32-1 (default 0)")
    report.set_defaults(handler=run_report)

    add_sweep_report_parser(commands)
    from jaxdigits.cli_search import add_search_parsers

    add_search_parsers(commands)
    serve = commands.add_parser("serve", help="a local web page: draw a digit and watch the network think",
                                description="Start a local web server with a page to draw digits on; it shows the "
                                "28x28 input, every neuron's activation, the outputs and the weights. Ctrl-C stops it.")
    serve.add_argument("checkpoint", type=Path, help="a run's --out folder or its params.safetensors")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    serve.add_argument("--benchmark", type=positive("--benchmark"), metavar="N",
                       help="instead of serving, time N predict requests against a local server and print the latency")
    add_data_flag(serve)
    serve.set_defaults(handler=run_serve)
    return parser


def add_sweep_report_parser(commands) -> None:
    sweep_report = commands.add_parser(
        "sweep-report", help="what a sweep found: heatmap, curves and best configurations (HTML, PNG, CSV)",
        description="Read SWEEP_DIR/results.jsonl (a sweep still running shows what has finished) and write a "
        "heatmap of test accuracy over two axes, curves per epoch, the best configurations with their seed "
        "spread, CSV tables and report.html.")
    sweep_report.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="a sweep's --out folder")
    sweep_report.add_argument("--out", type=out_folder, metavar="DIR", help="folder for the report (default SWEEP_DIR/report)")
    sweep_report.add_argument("--x", metavar="AXIS", help="heatmap columns: a config field (default: the axis with most values)")
    sweep_report.add_argument("--y", metavar="AXIS", help="heatmap rows: a config field (default: the next such axis)")
    sweep_report.add_argument("--group", metavar="AXIS", help="colour the curves by this field (default: --x)")
    sweep_report.add_argument("--top", type=positive("--top"), default=10, help="how many best configurations to show (default 10)")
    sweep_report.set_defaults(handler=run_sweep_report)




def run_train(args: argparse.Namespace) -> int:
    from jaxdigits.run_folder import RunFolder
    from jaxdigits.core.config import TrainConfig
    from jaxdigits.training import train

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out, the folder of the run to continue")
    saved = RunFolder(args.out).saved_config() if args.resume else None
    config = (TrainConfig.from_dict(saved) if saved else TrainConfig()).replace(**config_overrides(args))
    try:
        result = train(config, data_dir=args.data_dir, out_dir=args.out, resume=args.resume,
                       overwrite=args.overwrite, progress=True)
    except KeyboardInterrupt as stop:
        interrupts.say(_interrupted_message(args, getattr(stop, "saved_epochs", 0)))
        return EXIT_INTERRUPTED
    if result.diverged:
        epoch = result.history[-1]["epoch"]
        kept = f"; epoch {epoch - 1}'s params are saved in {args.out}" if args.out is not None and epoch > 1 else ""
        cause = f"--lr (now {config.lr:g})" + (f" or --l2 (now {config.l2:g})" if config.l2 else "")
        print(f"diverged at epoch {epoch}; try a smaller {cause}{kept}", file=sys.stderr)
        return EXIT_DIVERGED
    record = result.record
    saved_to = f", saved to {args.out}" if args.out else "; nothing saved (give --out DIR to keep the network)"
    if record["selected_validation_accuracy"] is not None:
        print(f"done ({record['status']}): epoch {record['selected_epoch']} kept ({config.select}): validation accuracy "
              f"{100 * record['selected_validation_accuracy']:.2f}%, test accuracy {100 * record['selected_test_accuracy']:.2f}%"
              f"{saved_to}")
    elif record["test_accuracy"] is not None:
        print(f"done ({record['status']}): test accuracy {100 * record['test_accuracy']:.2f}%{saved_to}")
    return 0


def _interrupted_message(args: argparse.Namespace, completed: int) -> str:
    """The one line printed on Ctrl-C: what is kept and the command that resumes."""
    if args.out is None:
        return "interrupted; nothing was saved (no --out given)"
    if completed == 0:
        return "interrupted before the first epoch finished; nothing to resume, run the same command again"
    command = ["jaxdigits", "train", "--out", str(args.out), "--resume"]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    saved = "epoch 1 is saved" if completed == 1 else f"epochs 1-{completed} are saved"
    return f"interrupted; {saved}, resume with `{shlex.join(command)}`"


def run_evaluate(args: argparse.Namespace) -> int:
    from jaxdigits.core.metrics import evaluate
    from jaxdigits.loader import load_run

    network, _, data, _ = load_run(args.checkpoint, data_dir=args.data_dir)
    acc = evaluate(network, data.test_images, data.test_labels)
    print(f"test accuracy {100 * acc:.2f}% ({data.name}, {len(data.test_labels)} images)")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from jaxdigits.checkpoint import load_params
    from jaxdigits.images import load_digit_image
    from jaxdigits.core.model import predict

    network, _ = load_params(args.checkpoint)
    image = load_digit_image(args.image)
    if network.sizes[0] != image.shape[-1]:
        raise ConfigError(f"the network takes {network.sizes[0]} inputs, not a 28x28 digit image")
    digit, activations = predict(network, image[None, :].astype(network.dtype))
    print(f"digit {int(digit[0])}")
    print("activations " + " ".join(f"{d}:{float(a):.3f}" for d, a in enumerate(activations[0])))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from jaxdigits.reports import report, summary_table

    result = report(args.checkpoint, data_dir=args.data_dir, out_dir=args.out, compare=args.compare, seed=args.seed)
    print(summary_table(result))
    print(f"report in {args.out / 'report.html'}")
    return 0


def run_sweep_report(args: argparse.Namespace) -> int:
    from jaxdigits.reports import sweep_report, value_text

    out = args.out if args.out is not None else args.sweep_dir / "report"
    result = sweep_report(args.sweep_dir, out, x=args.x, y=args.y, group=args.group, top=args.top)
    finished = f"{result['finished']} of {result['planned']}" if result["planned"] else str(result["finished"])
    statuses = ", ".join(f"{count} {status}" for status, count in result["statuses"].items() if count)
    print(f"{finished} runs finished ({statuses}); heatmap {result['x']}" + (f" x {result['y']}" if result["y"] else ""))
    best, metric = result["configurations"][0], result["ranked_by"]
    if not (best["diverged"] or best["stalled"]):
        setting = ", ".join(f"{a} {value_text(best[a])}" for a in result["axes"]) or "the one configuration"
        name = "validation accuracy" if metric != "test_accuracy" else "test accuracy"
        line = (f"best by {name}: {setting}: {name} {100 * best[f'{metric}_mean']:.2f}% "
                f"± {100 * best[f'{metric}_std']:.2f} over {best['runs']} seed(s)")
        if metric != "test_accuracy":
            line += f"; test accuracy of the selected epoch {100 * best['selected_test_accuracy_mean']:.2f}%"
        print(line)
    print(f"report in {out / 'report.html'}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from jaxdigits.serve import serve

    return serve(args.checkpoint, host=args.host, port=args.port, data_dir=args.data_dir, benchmark=args.benchmark)


def add_sweep_parser(commands) -> None:
    sweep = commands.add_parser(
        "sweep", help="train a grid of configurations together (vmap, all devices); results to --out",
        description="Train every combination of the given axes; configurations of one shape train together in "
        "one compiled program, sharded over every device. Results are appended to OUT/results.jsonl group by "
        "group; running the same sweep again resumes it.",
    )
    add_config_flags(sweep, many=True)
    add_data_flag(sweep)
    sweep.add_argument("--grid", type=Path, metavar="FILE",
                       help="a TOML or JSON file of axes (flags given override its axes)")
    sweep.add_argument("--out", type=out_folder, required=True, metavar="DIR",
                       help="folder for results.jsonl and sweep.json; a sweep already there is resumed, and "
                       "axis flags then change its saved axes (a grid that grows trains only what is new)")
    sweep.add_argument("--overwrite", action="store_true", help="start the sweep in --out over")
    sweep.add_argument("--group-size", type=positive("--group-size"), help="at most this many configurations per compiled group "
                       "(default: chosen for the device, from its cache or memory; smaller loses less to Ctrl-C)")
    sweep.add_argument("--cpu-devices", type=positive("--cpu-devices", 256), help="with no accelerator, split the CPU into this many devices "
                       "(default: one per core)")
    sweep.add_argument("--exact", action="store_true", help="train each configuration's arithmetic on its own, so "
                       "its numbers equal `jaxdigits train`'s bit for bit on any device count and group (slower)")
    sweep.add_argument("--top", type=positive("--top"), help="show only the best N configurations in the summary table")
    sweep.add_argument("--keep", choices=("none", "best", "all"), default="none",
                       help="save the best (or every) network trained now as a run folder in OUT/networks/ID (default none)")
    sweep.add_argument("--distributed", action="store_true", help="join a multi-host run through "
                       "jax.distributed.initialize() (cluster auto-detection, or the three flags below)")
    sweep.add_argument("--coordinator", help="with --distributed: host:port of process 0")
    sweep.add_argument("--num-processes", type=int, help="with --distributed: number of processes")
    sweep.add_argument("--process-id", type=int, help="with --distributed: this process's index")
    sweep.add_argument("--timeout", type=positive("--timeout", 3600), default=60,
                       help="with --distributed: seconds to wait for the other processes (default 60)")
    sweep.set_defaults(handler=run_sweep)


def sweep_grid(args: argparse.Namespace):
    """The grid: ``--grid``, else the sweep already in ``--out`` (to resume or grow it), else the
    defaults; with the axis flags given applied on top."""
    from jaxdigits.core.config import SweepGrid
    from jaxdigits.sweeps import load_grid
    from jaxdigits.sweep_folder import SweepFolder

    if args.grid is not None:
        base = load_grid(args.grid)
    else:
        base = (None if args.overwrite else SweepFolder(args.out).saved_grid()) or SweepGrid()
    return base.replace(**config_overrides(args))


def run_sweep(args: argparse.Namespace) -> int:
    import jax

    from jaxdigits.devices import join_cluster, use_cpu_cores
    from jaxdigits.records import format_table
    from jaxdigits.sweep_folder import SweepFolder
    from jaxdigits.sweeps import sweep

    if args.distributed:
        join_cluster(args.coordinator, args.num_processes, args.process_id, args.timeout)
    elif args.coordinator or args.num_processes or args.process_id is not None:
        raise ConfigError("--coordinator, --num-processes and --process-id need --distributed")
    use_cpu_cores(args.cpu_devices)
    grid = sweep_grid(args)
    writer = jax.process_index() == 0
    try:
        result = sweep(grid, data_dir=args.data_dir, out_dir=args.out, overwrite=args.overwrite,
                       max_group_size=args.group_size, exact=args.exact, progress=True, keep=args.keep)
    except KeyboardInterrupt:
        if writer and SweepFolder(args.out).saved_grid() is None:
            interrupts.say("interrupted before the sweep started; nothing is saved, run the same command again")
        elif writer:
            done = SweepFolder(args.out).finished_count()
            command = ["jaxdigits", "sweep", "--out", str(args.out)]
            if args.data_dir is not None:
                command += ["--data-dir", str(args.data_dir)]
            interrupts.say(f"interrupted; {done} of {len(grid.configs())} configurations are saved in "
                           f"{args.out / 'results.jsonl'}: resume with `{shlex.join(command)}`")
        return EXIT_INTERRUPTED
    if writer:
        print(format_table(result.records, limit=args.top))
        print(result.summary() + f"; results in {args.out / 'results.jsonl'}")
    return 0


def interrupted_line(args: argparse.Namespace) -> str:
    """The one line printed when Ctrl-C or SIGTERM stops a command (``train`` and ``sweep`` say
    what they kept themselves)."""
    report_dirs = {"report": lambda: args.out, "sweep-report": lambda: args.out or args.sweep_dir / "report",
                   "search-report": lambda: args.report or args.out_dir / "report"}
    if args.command in report_dirs:
        return f"interrupted; no report written, {report_dirs[args.command]()} is as it was before; run the same command again"
    if args.command == "search":
        return "interrupted; the study keeps every finished trial: run the same command again to resume it"
    if args.command == "serve":
        return "interrupted; the server stopped"
    return "interrupted"


FINISHED_LINE = "interrupted after the work was done; its output is complete"


def use_compilation_cache() -> None:
    """With ``$JAXDIGITS_CACHE_DIR`` set, keep compiled programs there between commands (JAX's
    persistent compilation cache), so a second run of a network starts training at once. Off by
    default: a command writes nothing outside its ``--out``. A folder that cannot be made is skipped."""
    import os
    from pathlib import Path

    folder = os.environ.get("JAXDIGITS_CACHE_DIR", "")
    if not folder:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's own, see ``entry``); its exit code.
    Ctrl-C and SIGTERM ask the command to stop at its next safe point (``interrupts``): exit 130
    with one line; a second one stops at once. With the process's own command line (``argv``
    None) a signal that comes after the work, while Python shuts down, still exits 130 at once."""
    with interrupts.handled():
        code = run_command(argv)
        if argv is None:
            interrupts.exit_on_signal(FINISHED_LINE)
        if code != EXIT_INTERRUPTED and interrupts.requested():  # asked after the last safe point
            interrupts.say(FINISHED_LINE)
            code = EXIT_INTERRUPTED
    return code


def run_command(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the command; its exit code (see the module docstring)."""
    import warnings

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse reports these from the top parser; name the command's own help
        parser.exit(2, f"jaxdigits {args.command}: error: unrecognized arguments: {' '.join(unknown)}; "
                       f"see `jaxdigits {args.command} --help`\n")
    use_compilation_cache()
    if interrupts.requested():  # a signal while starting up
        interrupts.say("interrupted before it started; nothing was written")
        return EXIT_INTERRUPTED
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # every warning is news to the person at the terminal
            warnings.showwarning = lambda message, category, *_, **__: print(
                f"jaxdigits {args.command}: warning: {message}", file=sys.stderr)
            return args.handler(args)
    except JaxdigitsError as exc:
        print(f"jaxdigits {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        interrupts.say(interrupted_line(args))
        return EXIT_INTERRUPTED


def entry() -> NoReturn:
    """The process's own command line (``python -m jaxdigits``, the ``jaxdigits`` script): ``main``,
    then what Python runs at exit (other threads joined, ``atexit`` functions), then the exit,
    skipping only Python's teardown of every module: with JAX loaded that takes a third of a
    second during which Python no longer handles signals, so a Ctrl-C or SIGTERM then would kill
    the process with another exit code. This way one up to the very end exits 130."""
    try:
        code = main()
    except SystemExit as exc:  # argparse's --help and its errors, already printed
        if not isinstance(exc.code, (int, type(None))):
            raise
        code = exc.code or 0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
