"""How `grokscope analyze` scales with the number of checkpoints: peak memory and workers.

Builds synthetic native runs of N [N23]-size checkpoints (p = 113, d_model 128, 4 heads, d_mlp 512):
run.json and split.safetensors as ``grokscope.training`` writes them, and N step_*.safetensors files
holding a random model plus a small per-checkpoint drift, so that every checkpoint is really read
from disk. Then, each in a fresh subprocess:
  (a) ``outputs.analyze_path`` (what the command runs: measures, classification, summary.json,
      measures.csv, report.html) for every N, reporting the peak resident memory of the process
      (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its rise over the memory held after the
      imports; the peak should not grow with N (one model in memory at a time);
  (b) ``analyze.analyze(run, workers=W)`` (measures only) on one run for W = 1 and 2: seconds per
      checkpoint and the speed-up, with the workers' own peak memory (``RUSAGE_CHILDREN``).
Timings on a shared machine are noisy: compare the ratios of one run, not seconds across runs.

    python benchmarks/analyze_scaling.py [--quick] [--n 25,100,400] [--speed-n 100] [--workers 1,2]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from grokscope import checkpoints as ck
from grokscope.constructions import random_model
from grokscope.models import parameter_state_dict
from grokscope.training import TrainConfig, run_metadata

CONFIG = TrainConfig(p=113, d_model=128, n_heads=4, d_mlp=512)
"""The [N23] architecture and split."""


def build_run(folder: Path, n: int, seed: int = 0) -> Path:
    """A native run in ``folder`` with ``n`` checkpoints at steps 0, 10, 20, ... (drifting random weights)."""
    checkpoint_dir = folder / ck.CHECKPOINT_DIR
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ck.write_json(folder / ck.RUN_JSON, run_metadata(CONFIG, finished=True))
    ck.save_tensors(folder / ck.SPLIT_FILE, {"train_indices": CONFIG.train_indices()})
    base = parameter_state_dict(random_model(CONFIG.task, seed=seed, d_model=CONFIG.d_model, d_mlp=CONFIG.d_mlp))
    generator = torch.Generator().manual_seed(seed + 1)
    drift = {name: torch.randn(value.shape, generator=generator) * 0.01 for name, value in base.items()}
    for i in range(n):
        state = {name: value + i * drift[name] for name, value in base.items()}
        ck.save_tensors(checkpoint_dir / ck.checkpoint_filename(10 * i), state, metadata={"step": str(10 * i)})
    return folder


def _rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(mode: str, run_dir: str, workers: int, out: str) -> dict:
    """One measurement in this (fresh) process; returns what the parent prints."""
    from grokscope.analysis import analyze
    from grokscope.formats import load_run
    from grokscope.outputs import analyze_path

    import grokscope.classifier, grokscope.plots, grokscope.report  # noqa: E401,F401  (imports before the baseline)
    baseline = _current_rss_mb()
    start = time.perf_counter()
    if mode == "memory":
        summary, _ = analyze_path(run_dir, out, workers=workers)
        count = summary["checkpoints"]["count"]
    else:
        result = analyze(load_run(run_dir), workers=workers, classify=None, views=False)
        count = len(result.steps)
    seconds = time.perf_counter() - start
    return {"count": count, "seconds": seconds, "baseline_mb": baseline, "peak_mb": _rss_mb(),
            "children_peak_mb": _rss_mb(resource.RUSAGE_CHILDREN)}


def measure(mode: str, run_dir: Path, workers: int, out: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(run_dir), str(workers), str(out)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({mode}, {run_dir}, workers {workers}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="25,100,400", help="checkpoint counts for the memory runs")
    parser.add_argument("--speed-n", type=int, default=100, help="checkpoints in the workers comparison")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--quick", action="store_true", help="small runs: --n 5,20,80 --speed-n 24")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "RUN", "WORKERS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, run_dir, workers, out = args.child
        print(json.dumps(child(mode, run_dir, int(workers), out)))
        return
    if args.quick:
        args.n, args.speed_n = "5,20,80", 24
    counts = [int(n) for n in args.n.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="grokscope_scaling_") as tmp:
        tmp = Path(tmp)
        print(f"(a) peak memory of `grokscope analyze` (analyze_path, report included), p = {CONFIG.p}, "
              f"d_model {CONFIG.d_model}, d_mlp {CONFIG.d_model * 4}, workers 1")
        print(f"  {'N':>5} {'build s':>8} {'analyze s':>10} {'s/ckpt':>7} {'after imports MB':>17} "
              f"{'peak MB':>8} {'rise MB':>8}")
        memory = []
        for n in counts:
            clock = time.perf_counter()
            run_dir = build_run(tmp / f"run_{n}", n)
            built = time.perf_counter() - clock
            m = measure("memory", run_dir, 1, tmp / f"out_{n}")
            assert m["count"] == n, m
            memory.append(m)
            print(f"  {n:>5} {built:>8.1f} {m['seconds']:>10.1f} {m['seconds'] / n:>7.3f} {m['baseline_mb']:>17.0f} "
                  f"{m['peak_mb']:>8.0f} {m['peak_mb'] - m['baseline_mb']:>8.0f}")
            if n != args.speed_n:
                for path in sorted((run_dir / ck.CHECKPOINT_DIR).iterdir()):
                    path.unlink()
        first, last = memory[0], memory[-1]
        print(f"  peak ratio N = {counts[-1]} / N = {counts[0]}: {last['peak_mb'] / first['peak_mb']:.3f}; "
              f"rise ratio: {(last['peak_mb'] - last['baseline_mb']) / max(first['peak_mb'] - first['baseline_mb'], 1):.3f}"
              f" ({counts[-1] / counts[0]:.0f}x the checkpoints)")

        run_dir = tmp / f"run_{args.speed_n}"
        if not (run_dir / ck.CHECKPOINT_DIR).is_dir() or len(list((run_dir / ck.CHECKPOINT_DIR).iterdir())) == 0:
            run_dir = build_run(tmp / f"speed_{args.speed_n}", args.speed_n)
        print(f"\n(b) analyze(run, workers=W) on {args.speed_n} checkpoints (measures only), "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"  {'W':>3} {'s':>7} {'s/ckpt':>7} {'speed-up':>9} {'peak MB':>8} {'worker peak MB':>15}")
        reference = None
        for w in worker_counts:
            m = measure("speed", run_dir, w, tmp / "unused")
            assert m["count"] == args.speed_n, m
            reference = reference or m["seconds"]
            print(f"  {w:>3} {m['seconds']:>7.1f} {m['seconds'] / args.speed_n:>7.3f} {reference / m['seconds']:>9.2f} "
                  f"{m['peak_mb']:>8.0f} {m['children_peak_mb']:>15.0f}")


if __name__ == "__main__":
    main()
