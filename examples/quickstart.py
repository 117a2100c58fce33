"""The grokscope quick start as a plain script: train a run until it groks, analyse it, classify it.

    python examples/quickstart.py                               # small: p = 37, under a minute
    GROKSCOPE_EXAMPLE_SCALE=full python examples/quickstart.py  # the `fast` preset, p = 59

It writes the run under ``$GROKSCOPE_EXAMPLE_RUNS`` (default ``runs/``) and the analysis into
``<run>/grokscope/``: measures.csv, summary.json and report.html (the figures, offline), as
``grokscope analyze`` does. Running it again reuses the finished run.
"""

import json
import os
import sys
from pathlib import Path

import grokscope as gs
from grokscope.outputs import measures_csv, summary_dict
from grokscope.report import write_report
from grokscope.training import summarize

SETTINGS = {
    "small": dict(p=37, d_model=64, epochs=1500, checkpoint_every=50),
    "full": dict(),
}


def main() -> int:
    scale = os.environ.get("GROKSCOPE_EXAMPLE_SCALE", "small")
    if scale not in SETTINGS:
        print(f"GROKSCOPE_EXAMPLE_SCALE={scale!r}: expected one of {sorted(SETTINGS)}", file=sys.stderr)
        return 2
    runs = Path(os.environ.get("GROKSCOPE_EXAMPLE_RUNS", "runs"))

    # 1. Train (full batch, AdamW, weight decay): the native run folder, resumable.
    config = gs.TrainConfig.preset("fast", **SETTINGS[scale])
    out = runs / f"quickstart-{scale}"
    run = gs.train(config, out)
    headline = summarize(run)
    print(f"trained {run}")
    print(f"  train accuracy >= 99% at epoch {headline['train_99_step']}, "
          f"test accuracy >= 99% at epoch {headline['test_99_step']}")

    # 2. Analyse every checkpoint: key frequencies, progress measures, phases, classification.
    result = gs.analyze(run)
    phases = result.phases
    print(f"key frequencies {result.key_freqs.freqs} (rule {result.key_freqs.rule})")
    for name in ("memorization_step", "circuit_formation_start", "circuit_formation_end", "grokking_step",
                 "cleanup_end_step"):
        print(f"  {name:24} {getattr(phases, name)!s:>6}   ({phases.method[name]})")
    final = result.final_row
    print(f"final: accuracy {final['full_acc']:.4f}, loss {final['full_loss']:.3g}, "
          f"restricted loss {final['restricted_loss']:.3g}, excluded loss {final['excluded_loss']:.3g}")

    # 3. Clock or pizza, with the evidence.
    classification = gs.classify(run.model(-1), run.task)
    print(repr(classification))
    for line in classification.evidence:
        print("  " + line)

    # 4. The files `grokscope analyze` writes.
    folder = out / "grokscope"
    folder.mkdir(parents=True, exist_ok=True)
    summary = summary_dict(result)
    (folder / "measures.csv").write_text(measures_csv(result.table))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    report = write_report(folder / "report.html", summary, result.figures())
    print(f"wrote {folder / 'measures.csv'}, {folder / 'summary.json'} and {report}")
    print(json.dumps({"scale": scale, "grokking_step": phases.grokking_step,
                      "final_accuracy": final["full_acc"], "key_frequencies": list(result.key_freqs.freqs),
                      "label": classification.label}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
