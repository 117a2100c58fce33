"""[Z23]'s attention-rate trend from a grokscope sweep: GS and runner-up DI per alpha bin against the paper's.

Trains the sweep of ``z23_alpha_trend.yaml`` beside this file (the pizza preset over 12 attention
rates, 2 seeds each; resumable: run it again to continue), then analyses every member at each
checkpoint step of ``--steps`` (``grokscope analyze DIR --step N``) and prints, per step, the medians
per 0.1-wide alpha bin next to [Z23]'s released one-layer table (``grokscope.alpha_trend``), and the
fewest epochs at which every bin's medians lie in the published quartile range. Checkpoint N of a
full-batch run with a constant learning rate is the run that stopped at N, so one sweep answers for
every epoch count on its schedule.

    python benchmarks/z23_alpha_trend.py --out runs/z23_alpha [--steps 500,1000,2000] [--figure trend.png]
    python benchmarks/z23_alpha_trend.py --out runs/z23_alpha --no-train    # analyse what is there

``--figure`` writes the figure of docs/populations.md for the steps analysed (plotly's PNG export
needs ``pip install "kaleido>=1"`` and a chromium, e.g. Debian's ``chromium`` package).
docs/populations.md ("Reproducing [Z23]'s attention-rate trend") has the results and the cost.
"""

import argparse
import json
import time
from pathlib import Path

from grokscope import alpha_trend
from grokscope.population_analysis import analyze_population
from grokscope.sweep_runner import run_sweep

SPEC = Path(__file__).with_name("z23_alpha_trend.yaml")


def _reached(out: Path) -> int | None:
    """The latest checkpoint step every member has."""
    runs = [p for p in (out / "runs").iterdir() if p.is_dir()] if (out / "runs").is_dir() else []
    steps = [max((int(f.stem.split("_")[1]) for f in (r / "checkpoints").glob("step_*.safetensors")), default=None)
             for r in runs]
    return min(steps) if steps and None not in steps else None


def _wall_times(out: Path) -> list[float]:
    times = []
    for run_json in (out / "runs").glob("*/run.json"):
        status = json.loads(run_json.read_text()).get("status", {})
        if status.get("finished") and status.get("wall_time_s") is not None:
            times.append(float(status["wall_time_s"]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="sweep folder (created or resumed)")
    parser.add_argument("--spec", default=str(SPEC), help="sweep spec (default: z23_alpha_trend.yaml)")
    parser.add_argument("--steps", default="200,400,600,800,1000,1400,2000",
                        help="checkpoint steps to analyse, comma-separated (those not reached are skipped)")
    parser.add_argument("--workers", type=int, default=1, help="training and analysis processes (default 1)")
    parser.add_argument("--no-train", action="store_true", help="only analyse the checkpoints already written")
    parser.add_argument("--figure", help="PNG of the medians per bin at the steps analysed, against [Z23]'s")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.no_train:
        start = time.perf_counter()
        run_sweep(args.spec, out, workers=args.workers, progress=True)
        print(f"training: {time.perf_counter() - start:.0f} s in this call")
    walls = _wall_times(out)
    if walls:
        print(f"finished members: {len(walls)}, wall time per member's stack {max(walls):.0f} s")
    reached = _reached(out)
    steps = [int(s) for s in args.steps.split(",") if reached is not None and int(s) <= reached]
    print(f"latest checkpoint every member has: {reached}; analysing steps {steps}")
    trends, first_match, first_within = {}, None, None
    for step in steps:
        start = time.perf_counter()
        population, _ = analyze_population(out, step=step, workers=args.workers, report=False)
        comparisons = alpha_trend.compare(alpha_trend.bin_trends(population.rows))
        trends[f"{step} epochs"] = [c.ours for c in comparisons]
        gs_ok = sum(c.gs_match for c in comparisons)
        di_ok = sum(c.di_match for c in comparisons)
        matched = alpha_trend.trend_matches(comparisons)
        within = alpha_trend.trend_within_spread(comparisons)
        if matched and first_match is None:
            first_match = step
        if within and first_within is None:
            first_within = step
        print(f"\n### {step} epochs ({time.perf_counter() - start:.0f} s to analyse {len(population.rows)} members)\n")
        print(alpha_trend.markdown_table(comparisons))
        print(f"\nin the published quartile range: GS {gs_ok}/{len(comparisons)} bins, DI {di_ok}/{len(comparisons)}"
              f" bins; trend matched: {'yes' if matched else 'no'}; within the spread (✓ or ~ everywhere):"
              f" {'yes' if within else 'no'}")
    print(f"\nfewest epochs at which every bin's median lies in the published quartiles: "
          f"{first_match if first_match is not None else 'none analysed'}")
    print(f"fewest epochs at which every bin's range of members meets them: "
          f"{first_within if first_within is not None else 'none analysed'}")
    if args.figure and trends:
        import plotly
        import plotly.io as pio

        from grokscope.population_figures import alpha_trend_figure

        # kaleido loads plotly.js from the web unless told where plotly's own copy is (offline machines)
        pio.defaults.plotlyjs = str(Path(plotly.__file__).parent / "package_data" / "plotly.min.js")
        alpha_trend_figure(trends).write_image(args.figure, scale=1)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
