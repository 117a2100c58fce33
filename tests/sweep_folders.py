"""Sweep folders for tests, in the layout ``grokscope sweep`` writes (docs/populations.md).

``make_sweep`` trains each member with ``grokscope.training.train`` into DIR/runs/<id>/ and writes
DIR/sweep.json and DIR/index.csv, so the analysis side is tested without the sweep runner.
"""

import csv
import json
import shutil
from pathlib import Path

from grokscope.training import TrainConfig, summarize, train


def member_id(config: TrainConfig, axes: list[str]) -> str:
    """A readable id from the swept settings and the seed, e.g. ``alpha0.5-d_model32-s1``."""
    return "-".join(f"{axis}{getattr(config, axis):g}" if isinstance(getattr(config, axis), float)
                    else f"{axis}{getattr(config, axis)}" for axis in axes) + f"-s{config.seed}"


def write_sweep_files(root: Path, members: dict[str, TrainConfig], axes: list[str], statuses: dict[str, str],
                      steps: dict[str, tuple] | None = None, spec: dict | None = None) -> None:
    """sweep.json and index.csv for ``members`` (id -> config)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps({
        "format": "grokscope-sweep", "format_version": 1, "spec": spec or {"base": "fast", "axes": axes},
        "axes": axes, "members": {i: c.to_dict() for i, c in members.items()}}, indent=1))
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *axes, "seed", "status", "train_99_step", "test_99_step"])
        for i, c in members.items():
            train_99, test_99 = (steps or {}).get(i, (None, None))
            writer.writerow([i, *[getattr(c, a) for a in axes], c.seed, statuses[i],
                             "" if train_99 is None else train_99, "" if test_99 is None else test_99])


def make_sweep(root: Path, configs: list[TrainConfig], axes: list[str], *, pending: list[TrainConfig] = ()) -> dict:
    """Train ``configs`` as the finished members of a sweep in ``root``; ``pending`` ones are listed only."""
    members, statuses, steps = {}, {}, {}
    for config in configs:
        i = member_id(config, axes)
        run = train(config, root / "runs" / i, progress=False)
        figures = summarize(run)
        members[i], statuses[i] = config, "finished"
        steps[i] = (figures["train_99_step"], figures["test_99_step"])
    for config in pending:
        i = member_id(config, axes)
        members[i], statuses[i] = config, "pending"
    write_sweep_files(root, members, axes, statuses, steps)
    return members


def copy_members(source: Path, target: Path, n: int) -> None:
    """A sweep of ``n`` members in ``target`` made of copies of ``source``'s finished members (for
    scaling tests: the same runs under new ids)."""
    data = json.loads((source / "sweep.json").read_text())
    ids = [i for i in data["members"] if (source / "runs" / i).is_dir()]
    members, statuses = {}, {}
    for k in range(n):
        i = ids[k % len(ids)]
        new = f"{i}-copy{k}"
        shutil.copytree(source / "runs" / i, target / "runs" / new)
        members[new], statuses[new] = TrainConfig.from_dict(data["members"][i]), "finished"
    write_sweep_files(target, members, data["axes"], statuses)
