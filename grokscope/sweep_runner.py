"""Sweeps: train every member of a spec into one folder, on this machine's cores or a Ray cluster.

Layout (every file written atomically)::

    DIR/sweep.json        format, the spec, the swept axes, every member's id and TrainConfig
    DIR/index.csv         id, the swept settings, status, train_99_step, test_99_step, error
    DIR/runs/<id>/        an ordinary native run per member (``formats.native``)

Running the same sweep again continues it: finished members are kept, interrupted ones resume from
their newest checkpoint (``training.train_members``). A spec that adds members extends the sweep; one
that gives an existing member (the same swept values) another config is refused, naming the settings.

Members are grouped by architecture and number of epochs, and each group trains as stacks of the
batched engine. On a CPU the groups are split over ``workers`` processes (default: one per core), one
torch thread each; on a GPU one process trains as many members per stack as fit. ``engine="ray"``
sends the same groups to a Ray cluster as tasks (one CPU each, retried when a worker dies); the
cluster's nodes must share the sweep folder.
"""

import csv
import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from grokscope import checkpoints as ck
from grokscope.errors import GrokscopeError
from grokscope.progress import progress_bar
from grokscope.recipes import TrainConfig
from grokscope.sweep_spec import expand_spec, load_spec, member_id, member_key, swept_axes

SWEEP_JSON = "sweep.json"
INDEX_CSV = "index.csv"
RUNS_DIR = "runs"
FORMAT_NAME = "grokscope-sweep"
FORMAT_VERSION = 1
WORKER_RETRIES = 2
"""How many times a group whose worker process died is started again (it resumes from its checkpoints)."""


@dataclass
class SweepPlan:
    """A sweep's spec, its swept axes and its members by id (in spec order)."""

    spec: dict
    axes: list[str]
    members: dict[str, TrainConfig]

    @classmethod
    def from_spec(cls, spec: dict) -> "SweepPlan":
        axes = swept_axes(spec)
        members = {}
        for config in expand_spec(spec):
            members.setdefault(member_id(config, axes), config)
        return cls(spec, axes, members)

    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "spec": self.spec, "axes": self.axes,
                "members": {mid: config.to_dict() for mid, config in self.members.items()}}


def read_sweep(folder: str | Path) -> SweepPlan:
    """The plan stored in ``folder/sweep.json``, checked: readable JSON, format and format_version, spec
    (a mapping), axes (a list), members (a mapping id -> TrainConfig dict). Errors name the file, what
    was found and what was expected. The one reader of the file: training and analysis both use it."""
    path = Path(folder) / SWEEP_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise GrokscopeError(f"unreadable JSON ({error})", expected="a sweep.json written by grokscope sweep",
                             where=str(path)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise GrokscopeError(f"format {found!r}", expected=f"{FORMAT_NAME!r}", where=str(path))
    if data.get("format_version") != FORMAT_VERSION:
        raise GrokscopeError(f"format_version {data.get('format_version')!r}",
                             expected=f"{FORMAT_VERSION} (this grokscope's)", where=str(path))
    if not isinstance(data.get("axes"), list) or not isinstance(data.get("members"), dict) \
            or not isinstance(data.get("spec"), dict):
        raise GrokscopeError(f"axes of type {type(data.get('axes')).__name__}, members of type "
                             f"{type(data.get('members')).__name__}, spec of type {type(data.get('spec')).__name__}",
                             expected="'axes' a list of settings, 'members' a mapping id -> config and 'spec' "
                             "a mapping", where=str(path))
    members = {}
    for mid, config in data["members"].items():
        if not isinstance(config, dict):
            raise GrokscopeError(f"member {mid!r} of type {type(config).__name__}", expected="a TrainConfig dict",
                                 where=str(path))
        try:
            members[str(mid)] = TrainConfig.from_dict(config)
        except GrokscopeError as error:
            raise GrokscopeError(f"member {mid!r}: a config that does not load ({error})",
                                 expected="TrainConfig dicts", where=str(path)) from None
    return SweepPlan(data["spec"], [str(axis) for axis in data["axes"]], members)


def _differences(old: TrainConfig, new: TrainConfig) -> str:
    a, b = old.to_dict(), new.to_dict()
    return "; ".join(f"{name} = {a[name]!r} there but {b[name]!r} here" for name in a if a[name] != b[name])


def merge_plans(old: SweepPlan, new: SweepPlan, where: str) -> SweepPlan:
    """``old`` extended by ``new``'s members; refuses a member of both with another config."""
    old_by_key = {member_key(config, old.axes): (mid, config) for mid, config in old.members.items()}
    for mid, config in new.members.items():
        key = member_key(config, old.axes)
        if mid not in old.members and key in old_by_key and set(new.axes) == set(old.axes):
            old_id, old_config = old_by_key[key]
            raise GrokscopeError(f"member {old_id} changed ({_differences(old_config, config)})",
                                 expected="a spec that keeps existing members' settings, or another --out folder",
                                 where=where)
    axes = old.axes + [name for name in new.axes if name not in old.axes]
    return SweepPlan(new.spec, axes, {**old.members, **{m: c for m, c in new.members.items() if m not in old.members}})


def prepare_sweep(spec: dict, out: str | Path) -> SweepPlan:
    """Create or extend the sweep folder ``out`` for ``spec``; returns the plan of all its members."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GrokscopeError("a file", expected="a folder for the sweep (or a new path)", where=str(out))
    plan = SweepPlan.from_spec(spec)
    if (out / SWEEP_JSON).exists():
        plan = merge_plans(read_sweep(out), plan, where=str(out))
    elif out.is_dir() and any(not ck.is_temporary(entry.name) for entry in out.iterdir()):
        raise GrokscopeError("a non-empty folder without sweep.json",
                             expected="a new or empty folder, or a grokscope sweep to continue", where=str(out))
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    ck.remove_temporaries(out)
    ck.write_json(out / SWEEP_JSON, plan.to_dict())
    return plan


# ----- the index ---------------------------------------------------------------------------------

def member_status(run_dir: Path) -> dict:
    """A member's status and headline steps from its run folder (pending when it has not started)."""
    from grokscope.training import first_step_at

    row = {"status": "pending", "train_99_step": None, "test_99_step": None}
    if not (run_dir / ck.RUN_JSON).exists():
        return row
    try:
        config = ck.read_json(run_dir / ck.RUN_JSON)
        row["status"] = "finished" if config.get("status", {}).get("finished") else "running"
        if (run_dir / ck.LOG_CSV).exists():
            log = ck.read_log(run_dir / ck.LOG_CSV)
            row["train_99_step"] = first_step_at(log, "train_acc")
            row["test_99_step"] = first_step_at(log, "test_acc")
    except GrokscopeError as error:
        row.update(status="failed", error=str(error))
    return row


def index_rows(out: Path, plan: SweepPlan, errors: dict[str, str] | None = None) -> list[dict]:
    """One row per member: id, its swept settings, status, train_99_step, test_99_step, error."""
    rows = []
    for mid, config in plan.members.items():
        row = {"id": mid, **{name: getattr(config, name) for name in plan.axes}}
        status = member_status(out / RUNS_DIR / mid)
        if errors and mid in errors and status["status"] != "finished":
            status.update(status="failed", error=errors[mid])
        row.update(status)
        rows.append(row)
    return rows


def write_index(out: Path, plan: SweepPlan, errors: dict[str, str] | None = None) -> list[dict]:
    """Atomically rewrite ``out/index.csv``; returns its rows."""
    rows = index_rows(out, plan, errors)
    columns = ["id", *plan.axes, "status", "train_99_step", "test_99_step", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: "" if row.get(column) is None else row.get(column) for column in columns})
    ck.atomic_write(out / INDEX_CSV, buffer.getvalue())
    return rows


def read_index(folder: str | Path) -> list[dict]:
    """The rows of ``folder/index.csv`` as dicts of strings."""
    path = Path(folder) / INDEX_CSV
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError as error:
        raise GrokscopeError(f"an unreadable index ({error.strerror})", expected="a CSV file", where=str(path)) from None


# ----- execution ---------------------------------------------------------------------------------

def plan_groups(plan: SweepPlan, out: Path, workers: int, device: str) -> list[list[str]]:
    """Unfinished members in groups that train together: one architecture and epochs per group.

    On a CPU the members are cut into about ``workers`` groups of similar size so every core gets
    work; on a GPU each architecture is one group (the engine chunks it by memory).
    """
    from grokscope.training import stack_key

    by_arch: dict[tuple, list[str]] = {}
    for mid, config in plan.members.items():
        if member_status(out / RUNS_DIR / mid)["status"] != "finished":
            by_arch.setdefault(stack_key(config), []).append(mid)
    pending = sum(len(ids) for ids in by_arch.values())
    if not pending:
        return []
    if device.startswith("cuda"):
        return list(by_arch.values())
    size = max(1, math.ceil(pending / max(workers, 1)))
    return [ids[i:i + size] for ids in by_arch.values() for i in range(0, len(ids), size)]


def train_group(configs: list[dict], outs: list[str], device: str, threads: int | None,
                max_members: int | None) -> dict[str, str | None]:
    """Train one group in this process (a worker's job): returns {out: None on success, else the error}."""
    import torch

    from grokscope.training import train_members

    if threads:
        torch.set_num_threads(threads)
    try:
        train_members([TrainConfig.from_dict(c) for c in configs], outs, device=device, progress=False,
                      max_members=max_members)
    except GrokscopeError as error:
        return {out: str(error) for out in outs}
    return {out: None for out in outs}


def _group_job(plan: SweepPlan, out: Path, ids: list[str]) -> tuple[list[dict], list[str]]:
    return [plan.members[mid].to_dict() for mid in ids], [str(out / RUNS_DIR / mid) for mid in ids]


def _run_local(plan, out, groups, device, workers, max_members, on_done) -> None:
    if workers <= 1 or len(groups) == 1:
        for ids in groups:
            configs, outs = _group_job(plan, out, ids)
            on_done(ids, train_group(configs, outs, device, None, max_members))
        return
    remaining = list(groups)
    for attempt in range(WORKER_RETRIES + 1):
        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(remaining)), mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(train_group, *_group_job(plan, out, ids), device, 1, max_members): ids
                           for ids in remaining}
                for future in as_completed(futures):
                    ids = futures[future]
                    on_done(ids, future.result())
                    remaining.remove(ids)
            return
        except BrokenProcessPool:
            if attempt == WORKER_RETRIES:
                raise GrokscopeError(f"worker processes that died {WORKER_RETRIES + 1} times",
                                     expected="workers that finish; run the same command again to resume",
                                     where=str(out)) from None


def _run_ray(plan, out, groups, device, address, max_members, on_done) -> None:
    try:
        import ray
    except ImportError:
        raise GrokscopeError("no ray module", expected="ray installed (pip install 'grokscope[ray]')",
                             where="grokscope sweep --engine ray") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address) if address else ray.init(num_cpus=os.cpu_count())
    try:
        remote = ray.remote(num_cpus=0 if device.startswith("cuda") else 1,
                            num_gpus=1 if device.startswith("cuda") else 0,
                            max_retries=WORKER_RETRIES + 1)(train_group)
        refs = {remote.remote(*_group_job(plan, out, ids), device, 1, max_members): ids for ids in groups}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                on_done(refs[ref], ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()


def sweep(spec: dict | str | Path, out: str | Path, **options):
    """Train the sweep ``spec`` into ``out`` (``run_sweep``) and return its population (``load_sweep``)."""
    run_sweep(spec, out, **options)
    from grokscope.population_analysis import load_sweep

    return load_sweep(out)


def run_sweep(spec: dict | str | Path, out: str | Path, *, device: str = "cpu", engine: str = "local",
              workers: int | None = None, ray_address: str | None = None, max_members: int | None = None,
              progress: bool = True) -> SweepPlan:
    """Train every member of ``spec`` (a mapping or a YAML / JSON file) into the sweep folder ``out``.

    Resumes and extends as the module docstring says; returns the plan of all members. Members that
    fail with a GrokscopeError are marked failed in index.csv with the message; the rest go on.
    """
    if engine not in ("local", "ray"):
        raise GrokscopeError(f"engine {engine!r}", expected="local or ray", where="grokscope sweep")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise GrokscopeError(f"workers = {workers!r}", expected="a positive integer", where="grokscope sweep")
    spec = load_spec(spec) if isinstance(spec, (str, Path)) else spec
    out = Path(out)
    plan = prepare_sweep(spec, out)
    workers = workers or os.cpu_count() or 1
    groups = plan_groups(plan, out, workers, device)
    errors: dict[str, str] = {}
    write_index(out, plan)
    finished = len(plan.members) - sum(len(ids) for ids in groups)
    bar = progress_bar(len(plan.members), desc=f"sweep {out.name}", initial=finished, enabled=progress, unit="member")

    def on_done(ids: list[str], results: dict[str, str | None]) -> None:
        for mid in ids:
            error = results.get(str(out / RUNS_DIR / mid))
            if error:
                errors[mid] = error
        write_index(out, plan, errors)
        bar.update(len(ids))

    try:
        if engine == "ray":
            _run_ray(plan, out, groups, device, ray_address, max_members, on_done)
        else:
            _run_local(plan, out, groups, device, workers, max_members, on_done)
    finally:
        bar.close()
        write_index(out, plan, errors)
    return plan
