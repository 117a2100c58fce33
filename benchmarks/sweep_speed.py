"""Wall time of a CPU sweep against the same members trained one after another, in one run.

The members are ``--members`` seeds of one recipe (default: the `fast` recipe shortened to
``--epochs`` epochs). The baseline trains them one at a time with ``grokscope train`` in a fresh
process each, with torch's default thread count, as a user would by hand; the sweep trains them with
``grokscope sweep`` (one worker per core, one torch thread each, members of a worker stacked).
Checkpointing and logging are the recipe's in both. On a GPU, when one is present, it also prints
members per second for stacks of 256 and 1024.

    python benchmarks/sweep_speed.py [--members 16] [--epochs 200]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "grokscope.cli", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--preset", default="fast")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sweep_speed_"))
    overrides = {"epochs": args.epochs}

    start = time.perf_counter()
    for seed in range(args.members):
        _cli("train", "--preset", args.preset, "--seed", str(seed), "--epochs", str(args.epochs), "--quiet",
             "--out", str(work / "one_by_one" / f"seed{seed}"))
    one_by_one = time.perf_counter() - start

    spec = {"base": args.preset, "set": overrides, "seeds": args.members}
    (work / "spec.json").write_text(json.dumps(spec))
    start = time.perf_counter()
    _cli("sweep", str(work / "spec.json"), "--out", str(work / "sweep"), "--quiet")
    swept = time.perf_counter() - start

    print(f"{args.members} members of `{args.preset}` at {args.epochs} epochs, {os.cpu_count()} cores")
    print(f"  one after another (grokscope train): {one_by_one:8.1f} s")
    print(f"  grokscope sweep:                     {swept:8.1f} s")
    print(f"  speed-up: {one_by_one / swept:.2f}x (goal >= 1.8x on 2 cores)")

    import torch

    if torch.cuda.is_available():
        from grokscope.recipes import TrainConfig
        from grokscope.training import train_members

        for n_members in (256, 1024):
            configs = [TrainConfig.preset(args.preset, seed=s, epochs=args.epochs) for s in range(n_members)]
            outs = [work / f"gpu{n_members}" / str(s) for s in range(n_members)]
            start = time.perf_counter()
            train_members(configs, outs, device="cuda", progress=False)
            elapsed = time.perf_counter() - start
            print(f"  cuda, {n_members} members: {n_members / elapsed:.2f} members/s "
                  f"({elapsed / n_members / args.epochs * 1e3:.3f} ms per model-epoch)")


if __name__ == "__main__":
    main()
