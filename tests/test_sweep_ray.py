"""The Ray engine: the same sweep folder from a Ray cluster, and a member that resumes after its worker dies."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from grokscope import checkpoints as ck
from grokscope.sweep_runner import RUNS_DIR, read_index, run_sweep

pytestmark = pytest.mark.ray

SPEC = {"base": "fast", "set": {"p": 23, "d_model": 16, "epochs": 60, "checkpoint_every": 20, "log_every": 10},
        "grid": {"alpha": [0.5, 1.0]}, "seeds": 1}


def _ray_workers_running(function: str) -> list[int]:
    """Pids of processes whose title says they run the Ray task ``function``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"ray::{function}" in title:
                pids.append(int(entry.name))
    return pids


def test_a_ray_sweep_writes_the_same_folder_as_a_local_one(ray_cluster, tmp_path):
    run_sweep(SPEC, tmp_path / "ray", engine="ray", progress=False)
    run_sweep(SPEC, tmp_path / "local", workers=1, progress=False)
    ray_rows, local_rows = read_index(tmp_path / "ray"), read_index(tmp_path / "local")
    assert [row["id"] for row in ray_rows] == [row["id"] for row in local_rows]
    assert all(row["status"] == "finished" for row in ray_rows)
    for row in ray_rows:
        steps = sorted(p.name for p in (tmp_path / "ray" / RUNS_DIR / row["id"] / ck.CHECKPOINT_DIR).iterdir())
        assert steps == sorted(p.name for p in (tmp_path / "local" / RUNS_DIR / row["id"] / ck.CHECKPOINT_DIR).iterdir())


def test_a_member_resumes_when_its_ray_worker_is_killed(ray_cluster, tmp_path):
    spec = {**SPEC, "set": {**SPEC["set"], "epochs": 3000, "checkpoint_every": 100}, "grid": {"alpha": [1.0]}}
    out = tmp_path / "sw"
    errors = []
    sweep = threading.Thread(target=lambda: _capture(errors, run_sweep, spec, out, engine="ray", progress=False))
    sweep.start()
    deadline, killed, kept = time.time() + 300, None, {}
    while time.time() < deadline and sweep.is_alive():
        runs = list((out / RUNS_DIR).glob("*/checkpoints")) if (out / RUNS_DIR).exists() else []
        if runs and (runs[0] / ck.checkpoint_filename(500)).exists():
            pids = _ray_workers_running("train_group")
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
                kept = _checkpoints_behind_resume_state(runs[0])
                break
        time.sleep(0.05)
    sweep.join(timeout=600)
    assert killed is not None, "the member finished before its worker could be killed"
    assert not errors, errors
    rows = read_index(out)
    assert rows[0]["status"] == "finished"
    checkpoints = out / RUNS_DIR / rows[0]["id"] / ck.CHECKPOINT_DIR
    after = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}
    assert kept and all(after[name] == mtime for name, mtime in kept.items())  # resumed, not restarted
    assert ck.checkpoint_filename(3000) in after
    from grokscope.formats import native

    assert native.read(checkpoints.parent).log["step"] == list(range(0, 3001, 10))


def _checkpoints_behind_resume_state(checkpoints: Path) -> dict[str, int]:
    """Checkpoints at or before the resume state's step: complete, so a resumed member never rewrites them.

    (One written after the newest resume state is recomputed, identically, when the member resumes.)
    """
    step = int(ck.load_tensors(checkpoints.parent / ck.RESUME_FILE)[1]["step"])
    return {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()
            if ck.checkpoint_step(p.name) is not None and ck.checkpoint_step(p.name) <= step}


def _capture(errors, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except Exception as error:  # reported by the test's assertion
        errors.append(repr(error))
