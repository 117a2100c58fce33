"""`grokscope analyze` and `grokscope classify` end to end: the files written, every summary.json field,
agreement with the library, the released models, bad input (exit 2, one stderr line) and workers.

Most tests call ``grokscope.cli.main`` in this process; one runs the installed console script.
"""

import contextlib
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from formats_writers import OpensAFile, make_model
from safetensors.torch import save_file

import grokscope as gs
from grokscope.cli import main
from grokscope.models import parameter_state_dict
from grokscope.tasks import Task

PIZZA = Path(__file__).parent / "fixtures" / "pizza"

SUMMARY_FIELDS = {
    "grokscope_version": None,
    "source": {"path", "format"},
    "task": {"p", "op", "n_ctx", "eq_token"},
    "checkpoints": {"count", "steps"},
    "key_frequencies": {"freqs", "rule", "threshold"},
    "final": {"step", "accuracy", "train_loss", "test_loss", "restricted_loss", "excluded_loss"},
    "phases": {"memorization_step", "grokking_step", "cleanup_end_step", "delay_ratio", "method"},
    "classification": {"label", "reason", "gradient_symmetricity", "distance_irrelevance",
                       "distance_irrelevance_runnerup", "circularity", "template_fve", "thresholds"},
    "skipped": None,
}
"""summary.json's fields (DESIGN.md): top-level name -> the names it must hold (None: a leaf)."""

# [Z23] reference values of SCIENCE.md section 4: label, GS, DI_correct, circularity.
RELEASED = {"p99zdpze5l": ("pizza", 0.99367, 0.1717, 0.9978), "l8k1hzciux": ("clock", 0.33362, 0.8483, 0.9989)}


def assert_summary_fields(summary: dict) -> None:
    for name, inner in SUMMARY_FIELDS.items():
        assert name in summary, name
        if inner is not None:
            assert inner <= set(summary[name]), (name, inner - set(summary[name]))
    assert set(summary["classification"]["template_fve"] or {}) >= {"clock", "pizza"} or \
        summary["classification"]["reason"] is not None
    assert summary["grokscope_version"] == gs.__version__
    assert isinstance(summary["skipped"], list)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``grokscope ARGS`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def close(a, b, rel: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel * 1e-3)


@pytest.fixture(scope="module")
def native(tiny_run_dir, tmp_path_factory):
    """`grokscope analyze RUN --out OUT --json --quiet` on a copy of the tiny native run, once."""
    root = tmp_path_factory.mktemp("cli_native")
    run_dir = Path(shutil.copytree(tiny_run_dir, root / "run"))
    out = root / "out"
    status, stdout, stderr = run_cli(["analyze", run_dir, "--out", out, "--json", "--quiet"])
    assert status == 0, stderr
    return {"run": run_dir, "out": out, "stdout": stdout, "stderr": stderr,
            "summary": json.loads((out / "summary.json").read_text())}


@pytest.fixture(scope="module")
def library_result(native):
    return gs.analyze(gs.load_run(native["run"]))


def test_analyze_writes_the_three_files(native):
    assert sorted(p.name for p in native["out"].iterdir()) == ["measures.csv", "report.html", "summary.json"]
    assert native["stderr"] == ""
    report = (native["out"] / "report.html").read_text()
    assert report.lstrip().lower().startswith("<!doctype html") and "</html>" in report
    assert not (native["run"] / "grokscope").exists()  # --out honoured, the run folder untouched


def test_measures_csv_has_one_row_per_checkpoint(native, library_result):
    rows = read_csv(native["out"] / "measures.csv")
    steps = sorted(int(p.stem.split("_")[1]) for p in (native["run"] / "checkpoints").glob("step_*.safetensors"))
    assert [int(r["step"]) for r in rows] == steps
    assert {"step", "restricted_loss", "excluded_loss", "train_loss", "test_loss", "full_acc"} <= set(rows[0])
    for name in ("restricted_loss", "excluded_loss", "test_loss"):
        expected = library_result.table[name]
        assert all(math.isclose(float(r[name]), e, rel_tol=1e-12) for r, e in zip(rows, expected)), name


def test_summary_json_has_every_field_and_agrees_with_the_library(native, library_result):
    summary, result = native["summary"], library_result
    assert_summary_fields(summary)
    assert summary["source"] == {"path": str(native["run"]), "format": "native"}
    assert summary["task"] == {**summary["task"], "p": 13, "op": "add", "n_ctx": 3, "eq_token": True}
    assert summary["checkpoints"] == {"count": len(result.steps), "steps": result.steps}
    assert summary["key_frequencies"]["freqs"] == result.key_freqs.freqs
    assert summary["key_frequencies"]["rule"] == result.key_freqs.rule
    final, row = summary["final"], result.final_row
    assert final["step"] == result.steps[-1] == 60
    for name, column in [("accuracy", "full_acc"), ("train_loss", "train_loss"), ("test_loss", "test_loss"),
                         ("restricted_loss", "restricted_loss"), ("excluded_loss", "excluded_loss")]:
        assert math.isclose(final[name], row[column], rel_tol=1e-12), name
    phases = result.phases.to_dict()
    for name in SUMMARY_FIELDS["phases"]:
        assert summary["phases"][name] == phases[name], name
    c, expected = summary["classification"], result.classification.to_dict()
    assert c["label"] == expected["label"] and c["reason"] == expected["reason"]
    for name in ("gradient_symmetricity", "distance_irrelevance", "distance_irrelevance_runnerup", "circularity",
                 "spectral_circularity"):
        assert close(c[name], expected[name], 1e-9), name
    assert c["thresholds"] == expected["thresholds"]
    assert summary["skipped"] == []


def test_final_accuracy_is_the_accuracy_over_the_grid(native):
    run = gs.load_run(native["run"])
    task, model = run.task, run.model(-1)
    with torch.no_grad():
        logits = model(task.tokens())[:, -1, : task.p]  # the full forward pass, not the fast read-out
    accuracy = (logits.argmax(-1) == task.labels()).double().mean().item()
    assert 0.0 < accuracy < 1.0  # the tiny run has not generalised: a non-trivial number
    assert math.isclose(native["summary"]["final"]["accuracy"], accuracy, rel_tol=0, abs_tol=1e-12)


def test_json_flag_prints_summary_json(native):
    assert json.loads(native["stdout"]) == native["summary"]


def test_table_output_without_json(native, tmp_path):
    status, stdout, stderr = run_cli(["analyze", native["run"], "--out", tmp_path, "--quiet", "--no-report"])
    assert status == 0 and stderr == ""
    assert "p = 13" in stdout and "uninterpreted" in stdout and f"wrote {tmp_path}" in stdout
    assert not (tmp_path / "report.html").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["final"] == native["summary"]["final"]


def test_workers_give_the_same_table(native, tmp_path):
    status, _, stderr = run_cli(["analyze", native["run"], "--out", tmp_path, "--workers", "2", "--quiet",
                                 "--no-report"])
    assert status == 0, stderr
    one, two = read_csv(native["out"] / "measures.csv"), read_csv(tmp_path / "measures.csv")
    assert len(one) == len(two) == native["summary"]["checkpoints"]["count"]
    assert list(one[0]) == list(two[0])
    for a, b in zip(one, two):
        for name in a:
            if a[name] == "":
                assert b[name] == "", name
            else:
                assert math.isclose(float(a[name]), float(b[name]), rel_tol=1e-12, abs_tol=0), (name, a, b)


def test_truncated_checkpoint_is_skipped_and_listed(tiny_run_dir, tmp_path):
    run_dir = Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.safetensors"))
    broken = checkpoints[len(checkpoints) // 2]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    status, stdout, stderr = run_cli(["analyze", run_dir, "--quiet", "--no-report", "--json"])
    assert status == 0 and stderr == ""
    summary = json.loads((run_dir / "grokscope" / "summary.json").read_text())  # default out: RUN/grokscope/
    assert json.loads(stdout) == summary
    assert [s["path"] for s in summary["skipped"]] == [str(broken)]
    assert "truncated" in summary["skipped"][0]["error"] or "unreadable" in summary["skipped"][0]["error"]
    bad_step = int(broken.stem.split("_")[1])
    all_steps = [int(p.stem.split("_")[1]) for p in checkpoints]
    assert summary["checkpoints"]["steps"] == [s for s in all_steps if s != bad_step]
    assert len(read_csv(run_dir / "grokscope" / "measures.csv")) == len(checkpoints) - 1


# ---- bad input: exit 2, one stderr line naming the file, no traceback, nothing written ----

def _missing(tmp_path):
    return tmp_path / "runs" / "p113", tmp_path / "runs" / "p113"


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", tmp_path / "empty"


def _text_file(tmp_path):
    path = tmp_path / "ckpt_7.pth"
    path.write_text("this is a text file, not a model\n")
    return path, path


def _no_mlp(tmp_path):
    state = parameter_state_dict(make_model(4, d_model=16, n_heads=2, d_mlp=32))
    path = tmp_path / "model.pt"
    torch.save({k: v for k, v in state.items() if ".mlp." not in k}, path)
    return path, path


def _pickle(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": parameter_state_dict(make_model(7)), "note": OpensAFile(tmp_path / "code_ran")}, path)
    return path, path


def _disagree_on_p(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    save_file(parameter_state_dict(make_model(10, Task(p=23))), str(folder / "step_100.safetensors"))
    save_file(parameter_state_dict(make_model(11, Task(p=29))), str(folder / "step_200.safetensors"))
    return folder, folder / "step_200.safetensors"


@pytest.mark.parametrize("command", ["analyze", "classify"])
@pytest.mark.parametrize("make,phrase", [
    (_missing, "no such file or folder"), (_empty, "empty folder"), (_text_file, "not a checkpoint"),
    (_no_mlp, "no MLP"), (_pickle, "--trust-pickle"), (_disagree_on_p, "p = 29"),
], ids=["missing", "empty-folder", "text-file", "not-modular", "code-pickle", "p-disagrees"])
def test_bad_input_exits_2_with_one_line(tmp_path, make, phrase, command):
    path, named = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    status, stdout, stderr = run_cli([command, path] + (["--quiet"] if command == "analyze" else []))
    assert status == 2 and stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("grokscope: "), stderr
    assert str(named) in lines[0] and phrase in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert not (tmp_path / "code_ran").exists()  # the pickle's code never ran
    assert sorted(tmp_path.rglob("*")) == before  # no output folder left behind


def test_trust_pickle_gets_past_the_refusal(tmp_path):
    path, _ = _pickle(tmp_path)
    status, stdout, stderr = run_cli(["analyze", path, "--trust-pickle", "--quiet", "--no-report", "--json"])
    assert status == 0, stderr
    assert (tmp_path / "code_ran").exists()  # the payload only writes this marker
    summary = json.loads(stdout)
    assert summary["task"]["p"] == 23 and summary["checkpoints"]["count"] == 1


def test_bad_workers_value(tiny_run_dir, tmp_path):
    status, stdout, stderr = run_cli(["analyze", tiny_run_dir, "--out", tmp_path / "out", "--workers", "0"])
    assert status == 2 and stdout == "" and len(stderr.splitlines()) == 1 and "workers" in stderr
    assert not (tmp_path / "out").exists()


# ---- released [Z23] models ----

@pytest.fixture(scope="module")
def released_folder(tmp_path_factory):
    """Two released models (Model A, pizza; Model B, clock) with their configs, analysed as a folder."""
    folder = tmp_path_factory.mktemp("released") / "models"
    folder.mkdir()
    for run_id in RELEASED:
        for name in (f"model_{run_id}.pt", f"config_{run_id}.json"):
            shutil.copy(PIZZA / name, folder / name)
    status, stdout, stderr = run_cli(["analyze", folder, "--quiet"])
    assert status == 0 and stderr == ""
    return folder, stdout


def test_folder_of_released_models(released_folder):
    folder, _ = released_folder
    out = folder / "grokscope"
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "report.html").exists()
    assert summary["source"]["path"] == str(folder) and summary["skipped"] == []
    models = {Path(m["source"]["path"]).stem.split("_")[1]: m for m in summary["models"]}
    assert set(models) == set(RELEASED)
    for run_id, (label, gs_ref, di_ref, circ_ref) in RELEASED.items():
        m = models[run_id]
        assert_summary_fields(m)
        assert m["source"]["format"] == "pizza_release" and m["task"]["p"] == 59
        assert m["checkpoints"]["count"] == 1 and m["final"]["accuracy"] == 1.0
        assert m["final"]["test_loss"] is None  # the release does not record the split
        c = m["classification"]
        assert c["label"] == label, (run_id, c["label"])
        assert abs(c["gradient_symmetricity"] - gs_ref) < (1e-3 if label == "pizza" else 0.03), run_id
        assert abs(c["distance_irrelevance"] - di_ref) < 1e-3 and abs(c["circularity"] - circ_ref) < 1e-3
    assert sorted(models["p99zdpze5l"]["key_frequencies"]["freqs"]) == [3, 15, 17]  # SCIENCE.md, Model A
    rows = read_csv(out / "measures.csv")
    assert len(rows) == 2
    assert {Path(r["path"]).stem.split("_")[1]: r["label"] for r in rows} == {k: v[0] for k, v in RELEASED.items()}
    for r in rows:  # the generalised released models are clean circles by both measures
        assert float(r["circularity"]) > 0.99 and float(r["spectral_circularity"]) > 0.99


def test_folder_table_lists_each_model(released_folder):
    folder, stdout = released_folder
    lines = stdout.splitlines()
    assert lines[0] == f"2 models in {folder}" and lines[-1] == f"wrote {folder / 'grokscope'}/"
    for run_id, (label, *_) in RELEASED.items():
        assert any(f"model_{run_id}.pt" in line and line.endswith(label) for line in lines), run_id
    # analysing the folder again: the output folder now inside it is not taken for a model
    assert sorted(Path(r.source).name for r in gs.load_runs(folder)) == [f"model_{k}.pt" for k in sorted(RELEASED)]


def test_single_released_model_file(tmp_path):
    path = Path(shutil.copy(PIZZA / "model_p99zdpze5l.pt", tmp_path / "model_p99zdpze5l.pt"))
    shutil.copy(PIZZA / "config_p99zdpze5l.json", tmp_path / "config_p99zdpze5l.json")
    status, stdout, stderr = run_cli(["analyze", path, "--quiet", "--no-report", "--json"])
    assert status == 0, stderr
    summary = json.loads((tmp_path / "grokscope" / "model_p99zdpze5l" / "summary.json").read_text())
    assert json.loads(stdout) == summary and "models" not in summary
    assert_summary_fields(summary)
    assert summary["classification"]["label"] == "pizza" and summary["final"]["step"] == 20000
    fve = summary["classification"]["template_fve"]
    assert fve["pizza"] > fve["clock"] + 0.1  # SCIENCE.md: clock 75.4%, pizza 98.3% on circle 1


def test_classify_console_script_on_model_a():
    script = Path(sys.executable).with_name("grokscope")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "grokscope.cli"]
    done = subprocess.run(command + ["classify", str(PIZZA / "model_p99zdpze5l.pt"), "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["label"] == "pizza" and result["step"] == 20000
    assert abs(result["gradient_symmetricity"] - 0.99367) < 1e-3
    assert abs(result["distance_irrelevance"] - 0.1717) < 1e-3


def test_classify_prints_label_and_evidence():
    status, stdout, stderr = run_cli(["classify", PIZZA / "model_l8k1hzciux.pt"])
    assert status == 0 and stderr == ""
    first, *evidence = stdout.splitlines()
    assert "model_l8k1hzciux.pt (step 20000)" in first and "clock" in first
    assert any("gradient symmetricity" in line for line in evidence)


@pytest.mark.slow
def test_analyze_a_run_that_groks(fast_run_dir, tmp_path):
    """On the fast preset run (it groks) the phases are found and agree with the library."""
    status, stdout, stderr = run_cli(["analyze", fast_run_dir, "--out", tmp_path, "--quiet", "--json",
                                      "--workers", "2"])
    assert status == 0, stderr
    summary = json.loads(stdout)
    result = gs.analyze(gs.load_run(fast_run_dir))
    phases = result.phases.to_dict()
    assert summary["phases"]["grokking_step"] is not None and summary["phases"]["memorization_step"] is not None
    for name in SUMMARY_FIELDS["phases"]:
        assert summary["phases"][name] == phases[name], name
    assert summary["final"]["accuracy"] > 0.99
    assert summary["classification"]["label"] == result.classification.label
