"""The ``grokscope`` command line: a thin layer over the library.

    grokscope train --out DIR [--preset NAME] [options]
    grokscope analyze PATH [--out DIR] [--workers N] [--json] [--trust-pickle] [--pathways]
    grokscope classify MODEL [--json]

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``handler`` to a ``_run_<name>(args) -> int`` function; ``main`` parses and dispatches. Heavy modules
(torch, TransformerLens) are imported inside the handlers, so ``grokscope --help`` is fast.

User errors (GrokscopeError) print one line, ``grokscope: <message>``, on stderr and exit with 2.
"""

import argparse
import sys
from collections.abc import Sequence

from grokscope.errors import GrokscopeError

PRESET_NAMES = ("fast", "nanda", "pizza")
"""Presets offered by ``--preset`` (``grokscope.training.PRESETS``; a test keeps the two in step)."""


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train one run in the native format (resumes an interrupted run in DIR)",
        description="Train a modular-arithmetic transformer with full-batch AdamW, writing checkpoints, "
                    "log.csv and run.json into DIR. Running the same command again on the same DIR resumes "
                    "an interrupted run, or just reports a finished one.")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder (created if needed)")
    parser.add_argument("--preset", default="nanda", metavar="NAME",
                        help=f"recipe to start from: {', '.join(PRESET_NAMES)} (default: nanda; "
                             "see docs/presets.md)")
    settings = parser.add_argument_group("overrides of the preset")
    settings.add_argument("--seed", type=int, metavar="N", help="initialisation seed")
    settings.add_argument("--split-seed", type=int, metavar="N", help="seed of the train/test split")
    settings.add_argument("--p", type=int, help="prime modulus")
    settings.add_argument("--op", help="operation: add, sub, mul, div, a^2+b^2, a^2+ab+b^2, a^3+ab")
    settings.add_argument("--frac", type=float, metavar="F", help="train fraction of the p^2 grid")
    settings.add_argument("--epochs", type=int, metavar="N", help="full-batch steps")
    settings.add_argument("--d-model", type=int, metavar="N", help="residual width (d_mlp follows as 4 x d_model)")
    settings.add_argument("--weight-decay", type=float, metavar="W", help="AdamW weight decay")
    settings.add_argument("--lr", type=float, help="AdamW learning rate")
    settings.add_argument("--alpha", type=float, metavar="A", help="attention rate in [0, 1] (1 = standard attention)")
    settings.add_argument("--grokfast", action="store_true", default=None, help="use Grokfast-EMA")
    settings.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between regular checkpoints")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy "
                             "machine; resume with the same value for bitwise-identical results)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_train)


_TRAIN_OVERRIDES = ("seed", "split_seed", "p", "op", "frac", "epochs", "d_model", "weight_decay", "lr", "alpha",
                    "grokfast", "checkpoint_every")


def _run_train(args: argparse.Namespace) -> int:
    from grokscope.training import TrainConfig, summarize, train

    overrides = {name: getattr(args, name) for name in _TRAIN_OVERRIDES if getattr(args, name) is not None}
    config = TrainConfig.preset(args.preset, **overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise GrokscopeError(f"--threads {args.threads}", expected="a positive number", where="grokscope train")
        import torch

        torch.set_num_threads(args.threads)
    run = train(config, args.out, progress=not args.quiet)
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
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes measuring checkpoints in parallel (default 1)")
    parser.add_argument("--json", action="store_true", help="print summary.json to stdout instead of the table")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument("--pathways", action="store_true",
                        help="also measure the experimental pathway columns per checkpoint (docs/monitor.md)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow pickles that need more than plain tensors (they can run code: only "
                             "for files you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    import json

    from grokscope.outputs import analyze_path, format_table

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


SUBCOMMANDS = (_add_train, _add_analyze, _add_classify)
"""The functions that add one subcommand each to the parser, in help order."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of ``SUBCOMMANDS``."""
    from grokscope import __version__

    parser = argparse.ArgumentParser(
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
    except SystemExit as exit_:  # --help, --version, usage errors
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
