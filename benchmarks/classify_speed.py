"""Seconds per model of ``classify`` and of a per-sample Python-loop gradient-symmetricity baseline.

On the released p = 59 models in tests/fixtures/pizza (or any release folder), in one process:
  (a) ``grokscope.classifier.classify``: every signature and the label. Its work is one forward pass over
      the grid (accuracy, DI), one batched forward / backward over the 100 GS samples, one batched
      forward over the grid for all embedding circles (templates; for one-layer models the affine
      table forward of ``grokscope.grid_forward``);
  (a') ``classify(..., templates=False)``: the same label without the template vote (two passes);
  (b) ``signatures.gradient_symmetricity`` alone (the batched GS);
  (c) the baseline: GS the way the released notebook computes it, one forward and one backward pass
      per sample in a Python loop (``run_with_hooks`` per triple).
(b) and (c) must agree, which the script checks. Prints seconds per model (process CPU time, median of
``--repeats``, the variants taking turns so that load changes hit them alike) and the ratios (c)/(a)
and (c)/(b). CPU time is steadier than wall time on a shared machine, but still noisy there: compare
the ratios of one run, not seconds across runs.

    python benchmarks/classify_speed.py [--folder tests/fixtures/pizza] [--repeats 3] [--threads N]
"""

import argparse
import os
import statistics
import time

import torch

from grokscope.classifier import classify
from grokscope.formats.pizza import read_folder
from grokscope.algorithm_signatures import gradient_symmetricity, gs_triples


def loop_gradient_symmetricity(model, task, n_samples: int = 100, seed: int = 42) -> float:
    """One sample at a time: tokens of one triple, a forward pass, Q.backward(), cosine of the grads."""
    total = 0.0
    for a, b, c in gs_triples(task.p, n_samples, seed).tolist():
        tokens = [[a, b + task.b_offset] + ([task.eq_id] if task.eq_token else [])]
        captured = {}

        def keep(act, hook):
            captured["embed"] = act.detach().requires_grad_(True)
            return captured["embed"]

        with torch.enable_grad():
            logits = model.run_with_hooks(torch.tensor(tokens), fwd_hooks=[("hook_embed", keep)])
            logits[0, -1, c].backward()
        g = captured["embed"].grad[0].double()
        total += float(g[0] @ g[1] / (g[0].norm() * g[1].norm()))
    return total / n_samples


def timed(fn) -> tuple[float, object]:
    """(process CPU seconds, value) of fn(): other jobs on the machine do not count."""
    start = time.process_time()
    value = fn()
    return time.process_time() - start, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--folder", default=os.path.join(here, "..", "tests", "fixtures", "pizza"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = read_folder(args.folder)
    models = [(os.path.basename(run.source), run.model(), run.task) for run in runs]
    gs_triples(59, 100)  # the seed-42 shuffle of all p^3 triples is cached after its first use
    print(f"{len(models)} models from {args.folder}; torch threads {torch.get_num_threads()}")
    header = f"{'model':<22}{'classify s':>12}{'no templates s':>16}{'GS batched s':>14}{'GS loop s':>11}" \
             f"{'loop/classify':>15}{'loop/batched':>14}  label"
    print(header)
    ratios, ratios_gs, totals, plains = [], [], [], []
    for name, model, task in models:
        times = {"classify": [], "plain": [], "batched": [], "loop": []}
        for _ in range(args.repeats):
            dt, result = timed(lambda: classify(model, task))
            times["classify"].append(dt)
            dt, plain = timed(lambda: classify(model, task, templates=False))
            times["plain"].append(dt)
            dt, batched = timed(lambda: gradient_symmetricity(model, task))
            times["batched"].append(dt)
            dt, looped = timed(lambda: loop_gradient_symmetricity(model, task))
            times["loop"].append(dt)
        if abs(batched - looped) > 1e-5 or abs(batched - result.signatures.gradient_symmetricity) > 1e-9:
            raise SystemExit(f"{name}: batched GS {batched} != loop GS {looped}")
        if plain.label != result.label:
            raise SystemExit(f"{name}: templates=False changed the label")
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios.append(med["loop"] / med["classify"])
        ratios_gs.append(med["loop"] / med["batched"])
        totals.append(med["classify"])
        plains.append(med["plain"])
        print(f"{name:<22}{med['classify']:>12.3f}{med['plain']:>16.3f}{med['batched']:>14.4f}{med['loop']:>11.3f}"
              f"{ratios[-1]:>15.1f}{ratios_gs[-1]:>14.1f}  {result.label}")
    print(f"median seconds per model: classify {statistics.median(totals):.3f}, without templates "
          f"{statistics.median(plains):.3f}; median ratios: GS loop / "
          f"classify {statistics.median(ratios):.1f}, GS loop / batched GS {statistics.median(ratios_gs):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
