"""The ``grokscope`` command line: a thin layer over the library.

    grokscope train --out DIR [--preset NAME] [options]
    grokscope analyze PATH [--out DIR] [--workers N] [--json] [--trust-pickle] [--pathways] [--population] [--axes A B]
    grokscope classify MODEL [--json]
    grokscope sweep [SPEC] --out DIR [--grid FIELD=V1,V2] [--seeds N] [--device D] [--engine local|ray]

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``handler`` to a ``_run_<name>(args) -> int`` function; ``main`` parses and dispatches. Heavy modules
(torch, TransformerLens) are imported inside the handlers, so ``grokscope --help`` is fast.

User errors (GrokscopeError) print one line, ``grokscope: <message>``, on stderr and exit with 2.
"""

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

from grokscope.errors import GrokscopeError

class _UsageError(Exception):
    """An argument argparse refused; ``main`` prints it as one ``grokscope:`` line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line naming the subcommand and option (no usage dump)."""

    def error(self, message: str):
        command = self.prog.removeprefix("grokscope").strip()
        raise _UsageError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _number(kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False,
            open_high: bool = False, high_name: str | None = None) -> Callable[[str], int | float]:
    """An argparse ``type`` accepting a finite ``kind`` (int or float) in the range given.

    >>> _number(int, 1)("3"), _number(float, 0, 1, open_low=True)("0.5")
    (3, 0.5)
    >>> _number(int, 1)("-2")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: found -2; expected a whole number >= 1
    """
    noun = "a whole number" if kind is int else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if open_low else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if open_high else '<='} {high_name or format(high, 'g')}")
    expected = noun + (" " + " and ".join(bounds) if bounds else "")

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"found {text!r}; expected {expected}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if open_low else value < low)) \
                or (high is not None and (value >= high if open_high else value > high)):
            raise argparse.ArgumentTypeError(f"found {text}; expected {expected}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _prime(text: str) -> int:
    """An argparse ``type`` for ``--p``: an odd prime whose full grid fits in memory (``grokscope.limits``)."""
    from grokscope.limits import check_task_size
    from grokscope.tasks import is_prime

    p = _number(int, 3)(text)
    try:
        check_task_size(p, where="--p")
    except GrokscopeError as error:
        raise argparse.ArgumentTypeError(f"found {error.found}; expected {error.expected}") from None
    if not is_prime(p):
        raise argparse.ArgumentTypeError(f"found {p}, which is not prime; expected an odd prime such as 23, 59 "
                                         "or 113")
    return p


PRESET_NAMES = ("fast", "nanda", "pizza")
"""Presets offered by ``--preset`` (``grokscope.training.PRESETS``; a test keeps the two in step)."""


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train one run in the native format (resumes an interrupted run in DIR)",
        description="Train a modular-arithmetic transformer with full-batch AdamW, writing checkpoints, "
                    "log.csv and run.json into DIR. Running the same command again on the same DIR resumes "
                    "an interrupted run, or just reports a finished one.")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder (created if needed)")
    parser.add_argument("--preset", default="nanda", metavar="NAME", choices=PRESET_NAMES,
                        help=f"recipe to start from: {', '.join(PRESET_NAMES)} (default: nanda; "
                             "see docs/presets.md)")
    settings = parser.add_argument_group("overrides of the preset")
    settings.add_argument("--seed", type=_number(int, 0), metavar="N", help="initialisation seed")
    settings.add_argument("--split-seed", type=_number(int, 0), metavar="N", help="seed of the train/test split")
    settings.add_argument("--p", type=_prime, help="prime modulus (its p^3 float64 logits must fit in memory)")
    settings.add_argument("--op", help="operation: add, sub, mul, div, a^2+b^2, a^2+ab+b^2, a^3+ab")
    settings.add_argument("--frac", type=_number(float, 0, 1, open_low=True, open_high=True), metavar="F", help="train fraction of the p^2 grid")
    settings.add_argument("--epochs", type=_number(int, 1), metavar="N", help="full-batch steps")
    settings.add_argument("--d-model", type=_number(int, 1), metavar="N", help="residual width (d_mlp follows as 4 x d_model)")
    settings.add_argument("--weight-decay", type=_number(float, 0), metavar="W", help="AdamW weight decay")
    settings.add_argument("--lr", type=_number(float, 0, open_low=True), help="AdamW learning rate")
    settings.add_argument("--alpha", type=_number(float, 0, 1), metavar="A", help="attention rate in [0, 1] (1 = standard attention)")
    settings.add_argument("--grokfast", action="store_true", default=None, help="use Grokfast-EMA")
    settings.add_argument("--checkpoint-every", type=_number(int, 1), metavar="N", help="steps between regular checkpoints")
    settings.add_argument("--log-every", type=_number(int, 1), metavar="N",
                          help="steps between rows of log.csv (the train-only monitor runs at each)")
    parser.add_argument("--threads", type=_number(int, 1, _cpu_count(), high_name=f"{_cpu_count()} (this machine's cores)"),
                        metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy "
                             "machine; resume with the same value for bitwise-identical results)")
    parser.add_argument("--device", default="cpu", metavar="D",
                        help="where to train: cpu (default), cuda or cuda:N (the same code path on both)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_train)


_TRAIN_OVERRIDES = ("seed", "split_seed", "p", "op", "frac", "epochs", "d_model", "weight_decay", "lr", "alpha",
                    "grokfast", "checkpoint_every", "log_every")


def _run_train(args: argparse.Namespace) -> int:
    from grokscope.training import TrainConfig, summarize, train

    overrides = {name: getattr(args, name) for name in _TRAIN_OVERRIDES if getattr(args, name) is not None}
    try:
        config = TrainConfig.preset(args.preset, **overrides)
    except GrokscopeError as error:  # name the option that carried the setting, where one did
        named = [name for name in overrides if str(error.found).startswith(f"{name} = ")]
        if not named or error.expected is None:
            raise
        option = "--" + named[0].replace("_", "-")
        raise GrokscopeError(error.found, expected=error.expected,
                             where=f"train {option} (with --preset {args.preset})") from None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    run = train(config, args.out, progress=not args.quiet, device=args.device)
    print(format_summary(run.source, config, summarize(run)))
    return 0


def format_summary(out: str, config, summary: dict) -> str:
    """The few lines ``grokscope train`` prints at the end of a run."""
    train_99, test_99, final = summary["train_99_step"], summary["test_99_step"], summary["final"]
    wall = summary["wall_time_s"]
    lines = [f"run {out}: p = {config.p}, op = {config.op}, {config.frac:.0%} train, {config.epochs} epochs"
             + (f", {wall:.1f} s of training" if wall is not None else "")]
    lines.append(f"  train accuracy >= 99% at epoch {train_99 if train_99 is not None else 'never'}")
    ratio = f" ({summary['delay_ratio']:.1f}x later)" if summary["delay_ratio"] is not None else ""
    lines.append(f"  test accuracy >= 99% at epoch {test_99 if test_99 is not None else 'never'}{ratio}")
    if final:
        lines.append(f"  final (epoch {final['step']}): train accuracy {final['train_acc']:.4f}, test accuracy "
                     f"{final['test_acc']:.4f}, train loss {final['train_loss']:.3g}, "
                     f"test loss {final['test_loss']:.3g}")
    lines.append(f"  {summary['checkpoints']} checkpoints")
    detection, monitor_s = summary.get("train_only"), summary.get("monitor_s")
    if detection is not None:
        from grokscope.monitor import describe_detection

        lines.append(f"  train-only monitor: {describe_detection(detection)}")
    if monitor_s is not None and wall:
        lines.append(f"  train-only monitor cost: {monitor_s:.2f} s ({monitor_s / wall:.1%} of training)")
    return "\n".join(lines)


def _add_analyze(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze", help="measures, phases and the clock/pizza label of a run, a checkpoint or a folder of models",
        description="Analyse PATH (a run in any supported layout, one checkpoint file, or a folder of "
                    "independent models or runs) and write measures.csv, summary.json and report.html.")
    parser.add_argument("path", metavar="PATH", help="run folder, checkpoint file or folder of models")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: PATH/grokscope/ for a folder, "
                                                     "<folder>/grokscope/<name>/ for a file)")
    parser.add_argument("--workers", type=_number(int, 1, _cpu_count(), high_name=f"{_cpu_count()} (this machine's cores)"),
                        default=1, metavar="N",
                        help="processes measuring checkpoints in parallel (default 1)")
    parser.add_argument("--json", action="store_true", help="print summary.json to stdout instead of the table")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument("--pathways", action="store_true",
                        help="also measure the experimental pathway columns per checkpoint (docs/monitor.md)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow pickles that need more than plain tensors (they can run code: only "
                             "for files you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    population = parser.add_argument_group("populations (a sweep folder, or any folder with --population)")
    population.add_argument("--population", action="store_true",
                            help="analyse a folder of runs as a population (automatic for a sweep folder): "
                                 "population.csv, summary.json and phase diagrams")
    population.add_argument("--axes", nargs="+", metavar="AXIS",
                            help="the one or two axes of the phase diagrams (default: attention rate x width "
                                 "when swept, else the first swept axes)")
    population.add_argument("--step", type=_number(int, 0), metavar="N",
                            help="measure every member's checkpoint at step N instead of its final one "
                                 "(default output: PATH/grokscope/step_N/)")
    parser.set_defaults(handler=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    import json

    from grokscope.outputs import analyze_path, format_table
    from grokscope.population_analysis import analyze_population, format_population, is_sweep

    if args.population or is_sweep(args.path):
        if args.axes is not None and len(args.axes) > 2:
            raise GrokscopeError(f"--axes {' '.join(args.axes)}", expected="one or two axis names",
                                 where="grokscope analyze")
        population, out_dir = analyze_population(args.path, args.out, workers=args.workers, axes=args.axes,
                                                 report=not args.no_report, progress=not args.quiet,
                                                 step=args.step)
        if args.json:
            print(json.dumps(population.summary, indent=2))
        else:
            print(format_population(population))
            print(f"wrote {out_dir}/")
        return 0
    for option, value in (("--axes", args.axes), ("--step", args.step)):
        if value is not None:
            raise GrokscopeError(f"{option} for {args.path}", expected="a sweep folder, or --population for a "
                                 "folder of runs", where="grokscope analyze")
    summary, out_dir = analyze_path(args.path, args.out, workers=args.workers, trust_pickle=args.trust_pickle,
                                    progress=not args.quiet, report=not args.no_report, pathways=args.pathways)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        print(f"wrote {out_dir}/")
    return 0


def _add_classify(subparsers) -> None:
    parser = subparsers.add_parser(
        "classify", help="clock, pizza or uninterpreted, with the evidence, for one model",
        description="Classify the algorithm of one model (the last checkpoint of a run) with the signatures "
                    "of Zhong et al. 2023: gradient symmetricity, distance irrelevance, circularity and "
                    "logit templates.")
    parser.add_argument("model", metavar="MODEL", help="a checkpoint file, a released model or a run folder")
    parser.add_argument("--json", action="store_true", help="print the classification as JSON")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickles that can run code")
    parser.set_defaults(handler=_run_classify)


def _run_classify(args: argparse.Namespace) -> int:
    import json

    from grokscope.classifier import classify
    from grokscope.formats import load_run
    from grokscope.outputs import json_safe

    run = load_run(args.model, trust_pickle=args.trust_pickle)
    result = classify(run.model(-1), run.task)
    if args.json:
        print(json.dumps(json_safe({"source": run.source, "step": run.steps[-1], **result.to_dict()}), indent=2))
    else:
        print(f"{run.source} (step {run.steps[-1]}): {result!r}")
        for line in result.evidence:
            print(f"  {line}")
    return 0


def _add_sweep(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train every member of a sweep spec (resumes and extends an existing sweep)",
        description="Train the members of SPEC (YAML or JSON: base, set, grid, zip, random, seeds; see "
                    "docs/sweeps.md) into DIR/runs/<member-id>/, keeping DIR/sweep.json and DIR/index.csv. "
                    "Simple axes can be given as flags instead of, or on top of, a spec file. Running the same "
                    "command again continues the sweep.")
    parser.add_argument("spec", nargs="?", metavar="SPEC", help="sweep spec file (.yaml, .yml or .json)")
    parser.add_argument("--out", required=True, metavar="DIR", help="sweep folder (created if needed)")
    parser.add_argument("--base", metavar="NAME", help=f"preset to start from: {', '.join(PRESET_NAMES)}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a fixed setting for every member (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="a crossed axis (repeatable)")
    parser.add_argument("--zip", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="a paired axis: the i-th values of all --zip axes go together (repeatable)")
    parser.add_argument("--seeds", type=int, metavar="N", help="initialisation seeds 0..N-1 for every member")
    parser.add_argument("--device", default="cpu", metavar="D", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--engine", default="local", choices=("local", "ray"),
                        help="local processes (default) or a Ray cluster")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes on this machine, one torch thread each (default: one per core)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="address of a running Ray cluster (default: start a local one)")
    parser.add_argument("--max-members", type=int, metavar="M", help="at most M members per stack")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_sweep)


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _flag_axes(flags: list[str], option: str) -> dict:
    axes = {}
    for flag in flags:
        name, sep, values = flag.partition("=")
        if not sep or not name or not values:
            raise GrokscopeError(f"{option} {flag!r}", expected="FIELD=V1,V2,...", where="grokscope sweep")
        axes[name.strip().replace("-", "_")] = [_parse_value(v.strip()) for v in values.split(",")]
    return axes


def sweep_spec_from_args(args: argparse.Namespace) -> dict:
    """The spec of ``grokscope sweep``: the SPEC file, with the flags' base, settings and axes added."""
    from grokscope.sweep_spec import load_spec

    spec = load_spec(args.spec) if args.spec else {}
    if args.base:
        spec["base"] = args.base
    fixed = {name: values[0] for name, values in _flag_axes(args.set, "--set").items()}
    for key, flags, option in (("grid", args.grid, "--grid"), ("zip", args.zip, "--zip")):
        axes = _flag_axes(flags, option)
        if axes:
            spec[key] = {**(spec.get(key) or {}), **axes}
    if fixed:
        spec["set"] = {**(spec.get("set") or {}), **fixed}
    if args.seeds is not None:
        spec["seeds"] = args.seeds
    if not spec:
        raise GrokscopeError("no spec file and no --base, --grid, --zip or --seeds",
                             expected="a SPEC file or axes given as flags", where="grokscope sweep")
    return spec


def _run_sweep(args: argparse.Namespace) -> int:
    from grokscope.sweep_runner import run_sweep

    for name in ("workers", "max_members", "seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GrokscopeError(f"--{name.replace('_', '-')} {value}", expected="a positive integer",
                                 where="grokscope sweep")
    plan = run_sweep(sweep_spec_from_args(args), args.out, device=args.device, engine=args.engine,
                     workers=args.workers, ray_address=args.ray_address, max_members=args.max_members,
                     progress=not args.quiet)
    from grokscope.sweep_runner import read_index

    rows = read_index(args.out)
    counts = {status: sum(row["status"] == status for row in rows) for status in ("finished", "failed", "pending")}
    grokked = sum(bool(row["test_99_step"]) for row in rows)
    print(f"sweep {args.out}: {len(plan.members)} members, {counts['finished']} finished, {grokked} reached test "
          f"accuracy 99%, {counts['failed']} failed; index in {args.out}/index.csv")
    for row in rows:
        if row["status"] == "failed":
            print(f"  failed {row['id']}: {row['error']}")
    return 1 if counts["failed"] else 0


SUBCOMMANDS = (_add_train, _add_sweep, _add_analyze, _add_classify)
"""The functions that add one subcommand each to the parser, in help order."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of ``SUBCOMMANDS``."""
    from grokscope import __version__

    parser = _Parser(
        prog="grokscope",
        description="Train, load and interpret grokking modular-arithmetic transformers.")
    parser.add_argument("--version", action="version", version=f"grokscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        print(f"grokscope: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else 2
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except GrokscopeError as error:
        print(f"grokscope: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"grokscope: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grokscope: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
