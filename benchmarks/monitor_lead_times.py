"""Validate the train-only phase detector: lead times on grokking runs, false alarms on runs that never grok.

Trains (one at a time, one torch thread, resumable) the runs listed in ``RUNS`` under ``runs/monitor/``,
each logged every ``LOG_EVERY`` steps, then replays the train-only detector over their logs, at any
cadence that is a multiple of that, and prints the markdown tables of docs/monitor.md:

    python benchmarks/monitor_lead_times.py train [--set design|held-out]   # slow: minutes per run
    python benchmarks/monitor_lead_times.py table --set design --every 4     # the design set's tables
    python benchmarks/monitor_lead_times.py table --set held-out --every 4   # the held-out set's
    python benchmarks/monitor_lead_times.py cadences   # alarm counts every 2, 4, 10 steps, new and previous rule
    python benchmarks/monitor_lead_times.py table --nanda runs/nanda   # adds the [N23] preset run
    python benchmarks/monitor_lead_times.py pathways   # pathway measures at the milestones of a few runs

The rule was designed on ``DESIGN`` and frozen before ``HELD_OUT`` was scored. The detector never sees
a test row; test accuracy comes from each run's log.csv, at its finest resolution, only to score it.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "monitor"

LOG_EVERY = 2
"""The validation runs log (and run the live monitor) every 2 steps, so that the table can replay the
detector at any cadence that divides it (``table --every N``); logging changes nothing in training."""


def _fast(name: str, seed: int, *extra: str) -> tuple[str, list[str]]:
    return name, ["--preset", "fast", "--seed", str(seed), "--split-seed", str(seed), "--log-every", str(LOG_EVERY),
                  *extra]


GROKKING = [_fast(f"fast_s{s}", s) for s in range(10)]
"""Ten seeds (initialisation and split) of the ``fast`` recipe: they grok within 1,000 epochs."""

NON_GROKKING = [*[_fast(f"wd0_s{s}", s, "--weight-decay", "0") for s in range(3)],
                *[_fast(f"frac015_s{s}", s, "--frac", "0.15") for s in range(2)]]
"""Runs expected not to grok in 1,000 epochs: no weight decay (3 seeds), 15% train data (2 seeds)."""

DESIGN = GROKKING + NON_GROKKING
"""The runs the detector's rule was designed on (in-sample)."""

HELD_OUT_GROKKING = [_fast(f"fast_s{s}", s) for s in range(11, 21)]
"""Fresh seeds of the ``fast`` recipe, scored only once the rule was frozen (out of sample). Seed 10 is
left out of both sets: its early curves were looked at while the rule was designed."""

HELD_OUT_NON_GROKKING = [*[_fast(f"wd0_s{s}", s, "--weight-decay", "0") for s in range(3, 6)],
                         *[_fast(f"frac015_s{s}", s, "--frac", "0.15") for s in range(2, 4)]]
"""Fresh runs that should not grok: weight decay 0 (seeds 3 to 5), 15% train data (seeds 2 and 3)."""

HELD_OUT = HELD_OUT_GROKKING + HELD_OUT_NON_GROKKING

RUNS = DESIGN + HELD_OUT


def training_order(runs=None) -> list[tuple[str, list[str]]]:
    """Grokking and non-grokking runs interleaved, so a partial pass already has both kinds."""
    runs = RUNS if runs is None else runs
    grokking = [run for run in runs if run[0].startswith("fast_")]
    order, rest = [], [run for run in runs if not run[0].startswith("fast_")]
    for run in grokking:
        order.append(run)
        if rest:
            order.append(rest.pop(0))
    return order + rest


def train_all(threads: int = 1, runs=None) -> None:
    """Train every run of ``runs`` (default ``RUNS``) not finished yet (``grokscope train`` resumes or skips)."""
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for name, args in training_order(runs):
        command = [sys.executable, "-m", "grokscope.cli", "train", "--out", str(OUT / name), "--quiet",
                   "--threads", str(threads), *args]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, env=env)


def measure_run(path: Path) -> dict[str, list]:
    """Train-only measures at every checkpoint of the run at ``path`` (cached next to the runs)."""
    import torch

    from grokscope.analysis import assemble_table
    from grokscope.formats import native
    from grokscope.fourier import fourier_basis
    from grokscope.monitor import train_only_measures

    cache = OUT / "_measures" / f"{path.name}.json"
    if cache.exists() and cache.stat().st_mtime > (path / "run.json").stat().st_mtime:
        return json.loads(cache.read_text())
    torch.set_num_threads(1)
    run = native.read(path)
    basis = fourier_basis(run.task.p)
    rows = [(step, train_only_measures(model, run.task, run.train_indices, basis=basis).as_row())
            for step, model in run.iter_models()]
    table = assemble_table(rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(table))
    return table


def _finished(path: Path) -> bool:
    run_json = path / "run.json"
    return run_json.exists() and json.loads(run_json.read_text()).get("status", {}).get("finished", False)


def first_step(steps, values, threshold):
    """The first step where ``values`` reaches ``threshold`` (None if never)."""
    return next((int(s) for s, v in zip(steps, values) if v >= threshold), None)


def every_nth_row(log: dict[str, list], every: int) -> dict[str, list]:
    """The rows of ``log`` at steps that are multiples of ``every`` (and its last row): what the log of the
    same run with ``log_every = every`` holds, since logging does not change training."""
    keep = [i for i, s in enumerate(log["step"]) if s % every == 0 or i == len(log["step"]) - 1]
    return {column: [values[i] for i in keep] for column, values in log.items()}


def score_run(path: Path, every: int | None = None, ratio_only: bool = False) -> dict:
    """Detection, forecast and the test-accuracy steps of one run, the detector reading every ``every``-th
    step's row of the live log (None: every row there is). ``ratio_only`` hides the weight column, which
    leaves the ratio trigger alone: the previous rule."""
    from grokscope.formats import native
    from grokscope.monitor import detect_phases

    run = native.read(path)
    log = run.log                          # test accuracy is always read at the finest logged step
    live = "trainonly_restricted_loss" in log and not any(v != v for v in log["trainonly_restricted_loss"])
    rows = every_nth_row(log, every) if live and every is not None else log
    if ratio_only:
        rows = {column: values for column, values in rows.items() if column != "trainonly_sum_sq_weights"}
    detection, _ = detect_phases(rows if live else measure_run(path), run.task.p)
    forecast = (f"{detection.first_forecast_step} (at {detection.first_forecast_at})"
                if detection.first_forecast_step is not None else None)
    return {"run": path.name, "rows": f"log, every {rows['step'][1] - rows['step'][0]}" if live else "checkpoints",
            "memorised": detection.memorised_step, "since": detection.since_step,
            "alarm": detection.circuit_step, "trigger": detection.trigger, "cleanup": detection.cleanup_step,
            "generalised": detection.generalised_step, "forecast": forecast,
            "cleanup_forecast": detection.cleanup_forecast_step,
            "test50": first_step(log["step"], log["test_acc"], 0.5),
            "test99": first_step(log["step"], log["test_acc"], 0.99),
            "final_test_acc": log["test_acc"][-1],
            "acc_at_alarm": _at(log, "test_acc", detection.circuit_step),
            "acc_at_memorised": _at(log, "test_acc", detection.memorised_step)}


def _at(log: dict[str, list], column: str, step: int | None) -> float | None:
    """``column`` at the last logged step at or before ``step``."""
    if step is None:
        return None
    return next(v for s, v in zip(reversed(log["step"]), reversed(log[column])) if s <= step)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(scores: list[dict]) -> str:
    """The lead-time table: one row per run, then the counts the goal asks for."""
    head = ("| run | rows | memorised | circuit since | alarm | trigger | cleanup | generalised "
            "| first forecast (made at) | forecast at cleanup | test 50% | test 99% | test acc at alarm | alarm lead on 50% | alarm lead on 99% "
            "| final test acc |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in scores:
        leads = [s[t] - s["alarm"] if s["alarm"] is not None and s[t] is not None else None
                 for t in ("test50", "test99")]
        keys = ("run", "rows", "memorised", "since", "alarm", "trigger", "cleanup", "generalised", "forecast",
                "cleanup_forecast", "test50", "test99")
        lines.append("| " + " | ".join(_cell(s[k]) for k in keys)
                     + f" | {_cell(s['acc_at_alarm'])} | {_cell(leads[0])} | {_cell(leads[1])} "
                       f"| {_cell(s['final_test_acc'])} |")
    return "\n".join(lines)


PATHWAY_RUNS = ("fast_s0", "fast_s1", "wd0_s0", "frac015_s0")
"""Runs whose pathway measures docs/monitor.md shows."""


def pathway_table(name: str) -> str:
    """Pathway measures beside the train-only excluded loss and the test accuracy, at milestone steps."""
    import torch

    from grokscope.formats import native
    from grokscope.monitor import detect_phases
    from grokscope.pathways import pathway_measures

    torch.set_num_threads(1)
    path = OUT / name
    run = native.read(path)
    measures = measure_run(path)
    detection, _ = detect_phases(measures, run.task.p)
    log = run.log
    test50, test99 = (first_step(log["step"], log["test_acc"], t) for t in (0.5, 0.99))
    marks = {0: "init", detection.memorised_step: "memorised", detection.circuit_step: "alarm",
             test50: "test 50%", test99: "test 99%", run.steps[-1]: "end"}
    marks.update({s: "" for s in (100, 300, 500, 800) if s not in marks})
    lines = [f"\n{name}\n", "| step | milestone | test acc | excluded loss (train-only) | pathway distance "
             "| label consistency | active fraction |", "|---|---|---|---|---|---|---|"]
    for step in sorted(s for s in marks if s is not None):
        i = min(range(len(run.steps)), key=lambda j: abs(run.steps[j] - step))  # nearest checkpoint
        at = run.steps[i]
        m = pathway_measures(run.model(i), run.task, run.train_indices)
        acc = log["test_acc"][min(range(len(log["step"])), key=lambda j: abs(log["step"][j] - at))]
        excluded = measures["trainonly_excluded_loss"][measures["step"].index(at)]
        lines.append(f"| {at} | {marks[step]} | {acc:.3f} | {excluded:.2f} | {m['pathway_distance']:.4f} "
                     f"| {m['label_consistency']:.4f} | {m['active_fraction']:.3f} |")
    return "\n".join(lines)


def summary_lines(scores: list[dict]) -> str:
    """The figures docs/monitor.md quotes: leads, forecast errors, test accuracy at memorisation."""
    lead99 = [s["test99"] - s["alarm"] for s in scores]
    ratios = [s["cleanup_forecast"] / s["test99"] for s in scores if s["cleanup_forecast"] is not None]
    before = [s["test99"] - s["generalised"] for s in scores if s["generalised"] is not None]
    at_mem = [s["acc_at_memorised"] for s in scores]
    return "\n".join([
        f"- alarm lead on test 99%: {min(lead99)} to {max(lead99)} steps",
        f"- forecast at cleanup / test-99% step: {min(ratios):.2f} to {max(ratios):.2f}; within 15%: "
        f"{sum(abs(r - 1) <= 0.15 for r in ratios)} of {len(ratios)}",
        f"- test-99% step minus generalised step: {sorted(before)}",
        f"- test accuracy when memorised: {min(at_mem):.3f} to {max(at_mem):.3f}",
        f"- test accuracy at the alarm: {min(s['acc_at_alarm'] for s in scores):.3f} to "
        f"{max(s['acc_at_alarm'] for s in scores):.3f}"])


CADENCES = (2, 4, 10)
"""Monitor cadences (steps between log rows) the ``cadences`` table replays."""


def _counts(scores: list[dict]) -> tuple[int, int]:
    """(alarms before test accuracy reaches 50% or on a run that never does, alarms at all)."""
    early = sum(1 for s in scores if s["alarm"] is not None and (s["test50"] is None or s["alarm"] < s["test50"]))
    return early, sum(1 for s in scores if s["alarm"] is not None)


def cadence_table(cadences=CADENCES) -> str:
    """Per run set and cadence: grokking runs alarmed before test 50%, non-grokking runs alarmed at all."""
    sets = [("design set", GROKKING, NON_GROKKING), ("held out", HELD_OUT_GROKKING, HELD_OUT_NON_GROKKING)]
    lines = ["| runs | " + " | ".join(f"monitor every {n} steps" for n in cadences) + " |",
             "|---|" + "---|" * len(cadences)]
    for title, grokking, never in sets:
        for rule, ratio_only in (("", False), (" (ratio trigger only: the previous rule)", True)):
            for kind, runs in (("grokking: alarm before test 50%", grokking), ("non-grokking: false alarms", never)):
                paths = [OUT / name for name, _ in runs if _finished(OUT / name)]
                cells = []
                for every in cadences:
                    early, fired = _counts([score_run(path, every, ratio_only) for path in paths])
                    cells.append(f"{early if kind.startswith('grokking') else fired} of {len(paths)}")
                lines.append(f"| {title}, {kind}{rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("train", "table", "cadences", "pathways"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", choices=("design", "held-out", "all"), default="all",
                        help="which runs: the design set, the held-out set, or both (default)")
    parser.add_argument("--nanda", metavar="DIR", help="a finished nanda-preset run to add to the table")
    parser.add_argument("--every", type=int, default=None, metavar="N",
                        help="replay the detector on the log rows at multiples of N steps only (default: all)")
    args = parser.parse_args(argv)
    if args.what == "train":
        train_all(args.threads, {"design": DESIGN, "held-out": HELD_OUT, "all": RUNS}[args.set])
        return 0
    if args.what == "cadences":
        print(cadence_table(CADENCES))
        return 0
    if args.what == "pathways":
        for name in PATHWAY_RUNS:
            if _finished(OUT / name):
                print(pathway_table(name))
        return 0
    costs = []
    for name, _ in {"design": DESIGN, "held-out": HELD_OUT, "all": RUNS}[args.set]:
        status = json.loads((OUT / name / "run.json").read_text()).get("status", {}) if _finished(OUT / name) else {}
        if status.get("monitor_s") is not None and status.get("wall_time_s"):
            costs.append(status["monitor_s"] / status["wall_time_s"])
    if costs:
        print(f"monitor cost over {len(costs)} runs with the live monitor: {min(costs):.1%} to {max(costs):.1%} "
              f"of training wall time (mean {sum(costs) / len(costs):.1%})")
    groups = {"design": [("grokking, design set", GROKKING), ("non-grokking, design set", NON_GROKKING)],
              "held-out": [("grokking, held out", HELD_OUT_GROKKING),
                           ("non-grokking, held out", HELD_OUT_NON_GROKKING)]}
    groups = groups["design"] + groups["held-out"] if args.set == "all" else groups[args.set]
    if args.nanda:
        groups.append(("nanda", [(args.nanda, None)]))
    for title, runs in groups:
        paths = [Path(name) if args is None else (OUT / name if title != "nanda" else Path(name))
                 for name, args in runs]
        scores = [score_run(path, args.every if title != "nanda" else None) for path in paths if _finished(path)]
        early, fired = _counts(scores)
        print(f"\n### {title} ({len(scores)} runs; alarm before test 50%: {early}; alarm at all: {fired})\n")
        print(markdown(scores))
        grokked = [s for s in scores if s["test99"] is not None and s["alarm"] is not None]
        if grokked:
            print("\n" + summary_lines(grokked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
