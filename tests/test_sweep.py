"""Sweep specs, member ids, the sweep folder, resuming, extending, refusing changes, and kills."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grokscope import checkpoints as ck
from grokscope.cli import main
from grokscope.errors import GrokscopeError
from grokscope.sweep_runner import RUNS_DIR, SweepPlan, read_index, read_sweep, run_sweep
from grokscope.sweep_spec import config_hash, expand_spec, load_spec, member_id, swept_axes

TINY = {"p": 23, "d_model": 16, "epochs": 40, "checkpoint_every": 20, "log_every": 10}


def _spec(**sections):
    return {"base": "fast", "set": dict(TINY), **sections}


# ----- specs ---------------------------------------------------------------------------------------

def test_grid_zip_random_and_seeds_cross_in_order():
    spec = _spec(grid={"alpha": [0.0, 1.0], "frac": [0.3, 0.5]}, zip={"lr": [1e-3, 3e-3], "weight_decay": [1.0, 0.5]},
                 random={"n": 3, "seed": 7, "axes": {"grokfast_lamb": {"uniform": [0, 2]},
                                                     "d_mlp": {"choice": [32, 64]}}}, seeds=[4, 5])
    members = expand_spec(spec)
    assert len(members) == 2 * 2 * 2 * 3 * 2
    assert swept_axes(spec) == ["alpha", "frac", "lr", "weight_decay", "grokfast_lamb", "d_mlp", "seed"]
    first = members[0]
    assert (first.alpha, first.frac, first.lr, first.weight_decay, first.seed) == (0.0, 0.3, 1e-3, 1.0, 4)
    assert members[1].seed == 5 and members[2].seed == 4 and members[2].grokfast_lamb != first.grokfast_lamb
    assert {(m.lr, m.weight_decay) for m in members} == {(1e-3, 1.0), (3e-3, 0.5)}  # zipped, never crossed
    assert all(m.p == 23 and m.epochs == 40 for m in members)
    again = expand_spec(json.loads(json.dumps(spec)))  # draws are seeded: the same members every time
    assert [m.to_dict() for m in again] == [m.to_dict() for m in members]
    assert all(0 <= m.grokfast_lamb <= 2 and m.d_mlp in (32, 64) for m in members)


def test_member_ids_are_readable_stable_and_unique():
    members = expand_spec(_spec(grid={"alpha": [0.25, 1.0]}, seeds=2))
    axes = ["alpha", "seed"]
    ids = [member_id(m, axes) for m in members]
    assert ids[0].startswith("alpha0.25-seed0-") and ids[3].startswith("alpha1-seed1-")
    assert len(set(ids)) == 4
    # the hash is of the canonical JSON of the config: key order and process do not matter
    assert config_hash(members[0]) == config_hash(type(members[0]).from_dict(dict(reversed(members[0].to_dict().items()))))
    code = ("from grokscope.sweep_spec import expand_spec, member_id; import json, sys; "
            "print(member_id(expand_spec(json.loads(sys.argv[1]))[0], ['alpha', 'seed']))")
    other = subprocess.run([sys.executable, "-c", code, json.dumps(_spec(grid={"alpha": [0.25, 1.0]}, seeds=2))],
                           capture_output=True, text=True, check=True)
    assert other.stdout.strip() == ids[0]


@pytest.mark.parametrize("spec, pattern", [
    ({"base": "fast", "grdi": {}}, r"keys = \['grdi'\].*expected keys among base, set, grid"),
    ({"base": "quick"}, r"base = 'quick'.*expected a preset: fast, nanda, pizza"),
    ({"base": "fast", "grid": {"alpah": [1]}}, r"grid.alpah = 'alpah'.*expected a TrainConfig field"),
    ({"base": "fast", "grid": {"alpha": []}}, r"grid.alpha = \[\].*non-empty list"),
    ({"base": "fast", "grid": {"seed": [1, 2]}}, r"grid.seed.*the `seeds` key"),
    ({"base": "fast", "zip": {"lr": [1, 2], "frac": [0.5]}}, r"zip = \{'lr': 2, 'frac': 1\}.*lists of one length"),
    ({"base": "fast", "random": {"n": 2, "axes": {"alpha": {"normal": [0, 1]}}}}, r"random.axes.alpha.*uniform"),
    ({"base": "fast", "random": {"n": 2, "axes": {"lr": {"loguniform": [0, 1]}}}}, r"loguniform.*positive bounds"),
    ({"base": "fast", "seeds": 0}, r"seeds = 0.*a count in 1\.\."),
    ({"base": "fast", "grid": {"alpha": [1.5]}}, r"alpha.*1\.5.*expected valid TrainConfig settings"),
    ({"base": "fast", "set": {"alpha": 0.5}, "grid": {"alpha": [1.0]}}, r"set = \['alpha'\].*no axis also sweeps"),
])
def test_spec_errors_name_the_key_what_was_found_and_what_is_allowed(spec, pattern):
    with pytest.raises(GrokscopeError, match=pattern):
        expand_spec(spec)


def test_yaml_and_json_specs_load_and_numbers_without_a_dot_are_numbers(tmp_path):
    (tmp_path / "s.yaml").write_text("base: fast\nset: {p: 23}\ngrid:\n  lr: [1e-3, 3e-3]\n")
    (tmp_path / "s.json").write_text(json.dumps({"base": "fast", "set": {"p": 23}, "grid": {"lr": [1e-3, 3e-3]}}))
    from_yaml, from_json = (expand_spec(load_spec(tmp_path / name)) for name in ("s.yaml", "s.json"))
    assert [m.lr for m in from_yaml] == [m.lr for m in from_json] == [1e-3, 3e-3]
    (tmp_path / "bad.yaml").write_text("base: [fast\n")
    with pytest.raises(GrokscopeError, match=r"bad.yaml.*unparseable content"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(GrokscopeError, match=r"list.json.*a list.*expected a mapping"):
        load_spec(tmp_path / "list.json")


# ----- the sweep folder ------------------------------------------------------------------------------

def _broken_sweeps():
    """(name, change to a good sweep.json, words the one-line error must hold)."""
    def edit(**changes):
        return lambda data: {**data, **changes}

    return [("not json", lambda data: "{not json", ["unreadable JSON", "a sweep.json written by grokscope sweep"]),
            ("a list", lambda data: [data], ["format 'list'", "'grokscope-sweep'"]),
            ("format", edit(format="something-else"), ["format 'something-else'", "'grokscope-sweep'"]),
            ("version", edit(format_version=99), ["format_version 99", "this grokscope's"]),
            ("axes", edit(axes="alpha"), ["axes of type str", "'axes' a list"]),
            ("spec", edit(spec=None), ["spec of type NoneType", "'spec' a mapping"]),
            ("member type", lambda data: {**data, "members": {"m1": [1, 2]}}, ["member 'm1' of type list",
                                                                                 "a TrainConfig dict"]),
            ("member keys", lambda data: {**data, "members": {"m1": {"p": 23}}},
             ["member 'm1': a config that does not load", "missing keys"])]


@pytest.mark.parametrize("name, change, words", _broken_sweeps(), ids=[case[0] for case in _broken_sweeps()])
def test_one_reader_names_what_is_wrong_with_sweep_json(tmp_path, name, change, words):
    """Training (continuing a sweep) and analysis read sweep.json through ``read_sweep`` alike."""
    from grokscope.population_analysis import analyze_population

    spec = _spec(grid={"alpha": [0.5, 1.0]}, seeds=1)
    good = SweepPlan.from_spec(spec)
    assert read_sweep_roundtrip(tmp_path / "good", good) == good
    folder = tmp_path / "bad"
    folder.mkdir()
    changed = change(good.to_dict())
    (folder / "sweep.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    for call in (lambda: read_sweep(folder), lambda: run_sweep(spec, folder, workers=1, progress=False),
                 lambda: analyze_population(folder, report=False)):
        with pytest.raises(GrokscopeError) as error:
            call()
        message = str(error.value)
        assert str(folder / "sweep.json") in message and all(word in message for word in words), message


def read_sweep_roundtrip(folder: Path, plan: SweepPlan) -> SweepPlan:
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps(plan.to_dict()))
    return read_sweep(folder)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_sweep_writes_native_runs_an_index_and_continues_where_it_stopped(tmp_path):
    spec = _spec(grid={"alpha": [0.5, 1.0]}, seeds=1)
    plan = run_sweep(spec, tmp_path / "sw", workers=1, progress=False)
    assert isinstance(plan, SweepPlan) and len(plan.members) == 2
    stored = read_sweep(tmp_path / "sw")
    assert stored.axes == ["alpha", "seed"] and stored.spec == spec
    rows = read_index(tmp_path / "sw")
    assert [row["id"] for row in rows] == list(plan.members)
    assert all(row["status"] == "finished" for row in rows) and rows[0]["alpha"] == "0.5"
    from grokscope.formats import load_run

    for mid, config in plan.members.items():
        run = load_run(tmp_path / "sw" / RUNS_DIR / mid)
        assert run.format == "native" and run.config["train_config"] == config.to_dict()
        assert run.steps[-1] == 40
    before = _mtimes(tmp_path / "sw" / RUNS_DIR)
    run_sweep(spec, tmp_path / "sw", workers=1, progress=False)
    assert _mtimes(tmp_path / "sw" / RUNS_DIR) == before  # finished members are kept as they are

    bigger = _spec(grid={"alpha": [0.5, 1.0, 0.0]}, seeds=1)
    extended = run_sweep(bigger, tmp_path / "sw", workers=1, progress=False)
    assert len(extended.members) == 3
    assert {k: v for k, v in _mtimes(tmp_path / "sw" / RUNS_DIR).items() if k in before} == before
    assert [row["status"] for row in read_index(tmp_path / "sw")] == ["finished"] * 3

    changed = {**bigger, "set": {**TINY, "weight_decay": 0.5}}
    with pytest.raises(GrokscopeError, match=r"member alpha0.5-seed0-\w+ changed \(weight_decay = 1.0 there but 0.5 "
                                             r"here\).*expected a spec that keeps existing members' settings"):
        run_sweep(changed, tmp_path / "sw", workers=1, progress=False)


def test_members_of_two_architectures_train_in_two_groups_on_two_workers(tmp_path):
    spec = {"base": "fast", "set": {k: v for k, v in TINY.items() if k != "d_model"},
            "grid": {"d_model": [16, 32], "alpha": [0.0, 1.0]}}
    run_sweep(spec, tmp_path / "sw", workers=2, progress=False)
    rows = read_index(tmp_path / "sw")
    assert len(rows) == 4 and all(row["status"] == "finished" for row in rows)
    in_stack = [ck.read_json(tmp_path / "sw" / RUNS_DIR / row["id"] / ck.RUN_JSON)["status"]["members_in_stack"]
                for row in rows]
    assert in_stack == [2, 2, 2, 2]


def test_cli_sweep_with_flags_and_its_errors(tmp_path, capsys):
    args = ["sweep", "--out", str(tmp_path / "sw"), "--base", "fast", "--grid", "alpha=0.5,1", "--seeds", "1",
            "--workers", "1", "--quiet"] + [f"--set={k}={v}" for k, v in TINY.items()]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 members, 2 finished" in out and "index.csv" in out
    assert main(["sweep", "--out", str(tmp_path / "x")]) == 2
    assert "no spec file and no --base" in capsys.readouterr().err
    assert main(["sweep", "--out", str(tmp_path / "x"), "--grid", "alpha"]) == 2
    assert "--grid 'alpha'" in capsys.readouterr().err
    assert main(["sweep", "--out", str(tmp_path / "x"), "--base", "fast", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grokscope: ") and "--workers 0" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    assert main(["sweep", "--out", str(tmp_path / "file"), "--base", "fast"]) == 2
    assert "expected a folder for the sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_of_the_sweep_loses_no_finished_member_or_checkpoint(tmp_path):
    spec = _spec(grid={"alpha": [0.0, 0.5, 1.0]}, set={**TINY, "epochs": 3000, "checkpoint_every": 100})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "sw"
    command = [sys.executable, "-m", "grokscope.cli", "sweep", str(tmp_path / "spec.json"), "--out", str(out),
               "--workers", "1", "--max-members", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env)
    from grokscope.sweep_runner import member_status

    ids = list(SweepPlan.from_spec(spec).members)
    first_dir, second_dir = out / RUNS_DIR / ids[0], out / RUNS_DIR / ids[1]
    deadline = time.time() + 300
    # kill once the first member is finished and the second has a checkpoint after step 100
    while time.time() < deadline and process.poll() is None:
        if member_status(first_dir)["status"] == "finished" \
                and (second_dir / ck.CHECKPOINT_DIR / ck.checkpoint_filename(300)).exists():
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert member_status(second_dir)["status"] == "running", "the second member finished before the kill"
    rows = [{"id": mid} for mid in ids]
    first, second = rows[0]["id"], rows[1]["id"]
    finished_files = _mtimes(out / RUNS_DIR / first)
    # checkpoints at or before the resume state are complete; a later one is recomputed (identically)
    resumed_at = int(ck.load_tensors(out / RUNS_DIR / second / ck.RESUME_FILE)[1]["step"])
    kept = {name: mtime for name, mtime in _mtimes(out / RUNS_DIR / second).items()
            if name.startswith(ck.CHECKPOINT_DIR) and ck.checkpoint_step(Path(name).name) is not None
            and ck.checkpoint_step(Path(name).name) <= resumed_at}
    assert kept
    assert subprocess.run(command, env=env).returncode == 0
    assert _mtimes(out / RUNS_DIR / first) == finished_files
    after = _mtimes(out / RUNS_DIR / second)
    assert all(after[name] == mtime for name, mtime in kept.items())  # completed checkpoints untouched
    assert all(row["status"] == "finished" for row in read_index(out))
    from grokscope.formats import native

    log = native.read(out / RUNS_DIR / second).log
    assert log["step"] == list(range(0, 3001, 10))
