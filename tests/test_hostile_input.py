"""Hostile input to `grokscope train` and `grokscope analyze`, by class: a run's own files malformed,
nothing usable, sizes that cannot exist, non-finite weights, out-of-range options. Every case exits 2
with one stderr line ``grokscope: <where>: found ...; expected ...`` and leaves no output behind.

Also here: the trainer's run lock under concurrency and SIGKILL, analyze outputs under SIGKILL, and
phases only where a history exists.
"""

import contextlib
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from formats_writers import make_model, nanda_state
from safetensors.torch import load_file, save_file

from grokscope import backend
from grokscope import limits
from grokscope.checkpoints import LOCK_FILE, run_lock
from grokscope.cli import main
from grokscope.errors import GrokscopeError
from grokscope.models import final_logits, parameter_state_dict
from grokscope.outputs import outputs_complete
from grokscope.phases import LOSS_FOR_ACCURACY, find_phases
from grokscope.tasks import Task


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def assert_refused(args, where, *phrases, created: Path | None = None) -> str:
    """Exit 2, nothing on stdout, one ``grokscope: WHERE: found ...; expected ...`` line holding ``phrases``."""
    status, stdout, stderr = run_cli(args)
    assert status == 2 and stdout == "", (status, stdout, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith(f"grokscope: {where}"), line
    assert "found " in line and "expected " in line, line
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    if created is not None:
        assert not created.exists(), f"{created} was created"
    return line


@pytest.fixture
def run_copy(tiny_run_dir, tmp_path):
    """A private copy of the tiny native run."""
    return Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))


def analyze_args(path, tmp_path):
    return ["analyze", path, "--out", tmp_path / "out", "--quiet"]


# ----- a run's own files malformed ------------------------------------------------------------------

def _edit_run_json(edit):
    def apply(run: Path):
        meta = json.loads((run / "run.json").read_text())
        edit(meta)
        (run / "run.json").write_text(json.dumps(meta))
    return apply


def _truncate(name: str, keep: int):
    def apply(run: Path):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:keep])
    return apply


def _split(tensors: dict):
    def apply(run: Path):
        save_file(tensors, str(run / "split.safetensors"))
    return apply


@pytest.mark.parametrize("damage,file,phrases", [
    (_truncate("run.json", 100), "run.json", ["unreadable JSON file", "expected a JSON object"]),
    (lambda run: (run / "run.json").write_text("p = 13\n"), "run.json", ["unreadable JSON file"]),
    (lambda run: (run / "run.json").write_text("[1, 2]"), "run.json", ["a JSON list"]),
    (_edit_run_json(lambda m: m.pop("format")), "run.json", ["no 'format' key", "grokscope-native"]),
    (_edit_run_json(lambda m: m.update(format="other")), "run.json", ["format = 'other'"]),
    (_edit_run_json(lambda m: m.pop("task")), "run.json", ["no 'task' key"]),
    (_edit_run_json(lambda m: m["task"].update(p="13")), "run.json", ["p = '13'", "odd prime"]),
    (_edit_run_json(lambda m: m["task"].update(p=15)), "run.json", ["p = 15", "odd prime"]),
    (_edit_run_json(lambda m: m["task"].update(eq_token="yes")), "run.json", ["eq_token = 'yes'"]),
    (_edit_run_json(lambda m: m.pop("model")), "run.json", ["no 'model' key"]),
    (_edit_run_json(lambda m: m["model"].update(d_model=-16)), "run.json", ["d_model = -16", "positive integers"]),
    (_edit_run_json(lambda m: m["model"].update(d_mlp="64")), "run.json", ["d_mlp = '64'"]),
    (_edit_run_json(lambda m: m["model"].update(d_vocab=5)), "run.json", ["d_vocab = 5", "d_vocab >= 14"]),
    (_edit_run_json(lambda m: m.update(attention_rate="high")), "run.json", ["attention_rate = 'high'", "[0, 1]"]),
    (_edit_run_json(lambda m: m.update(attention_rate=2.0)), "run.json", ["attention_rate = 2.0"]),
    (_truncate("split.safetensors", 50), "split.safetensors", ["unreadable file"]),
    (_split({"rows": torch.arange(5)}), "split.safetensors", ["tensors ['rows']", "'train_indices'"]),
    (_split({"train_indices": torch.rand(5)}), "split.safetensors", ["torch.float32", "1-D integer tensor"]),
    (_split({"train_indices": torch.tensor([0, 3, 169])}), "split.safetensors", ["to 169", "(0..168)"]),
    (_split({"train_indices": torch.tensor([-1, 3])}), "split.safetensors", ["from -1"]),
    (_split({"train_indices": torch.tensor([4, 4, 5])}), "split.safetensors", ["1 repeated", "distinct rows"]),
    (lambda run: (run / "log.csv").write_text("step,loss\n0,1\n"), "log.csv", ["header ['step', 'loss']"]),
], ids=["json-truncated", "not-json", "json-list", "no-format", "other-format", "no-task", "p-string",
        "p-not-prime", "eq-token-string", "no-model", "d-model-negative", "d-mlp-string", "d-vocab-small",
        "alpha-string", "alpha-range", "split-truncated", "split-key", "split-float", "split-range",
        "split-negative", "split-repeats", "log-header"])
def test_malformed_run_file_is_an_error_about_that_file(run_copy, tmp_path, damage, file, phrases):
    damage(run_copy)
    # The run folder, its checkpoints folder and one checkpoint in it all name the damaged file.
    checkpoint = sorted((run_copy / "checkpoints").iterdir())[-1]
    for path in (run_copy, run_copy / "checkpoints", checkpoint):
        assert_refused(analyze_args(path, tmp_path), run_copy / file, *phrases, created=tmp_path / "out")


def test_truncated_run_json_is_never_read_as_a_folder_of_models(run_copy, tmp_path):
    _truncate("run.json", 100)(run_copy)
    status, stdout, stderr = run_cli(analyze_args(run_copy, tmp_path) + ["--json"])
    assert status == 2 and "models" not in stdout and "run.json" in stderr


def test_other_tools_run_json_without_our_files_is_not_ours(tmp_path):
    """A run.json of some other tool, beside a plain checkpoint, is not read as a native run."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "run.json").write_text('{"tool": "other"}')
    save_file(parameter_state_dict(make_model(1)), str(folder / "model.safetensors"))
    status, stdout, stderr = run_cli(["analyze", folder, "--out", tmp_path / "out", "--quiet", "--no-report"])
    assert status == 0, stderr


# ----- nothing usable ----------------------------------------------------------------------------------

def test_run_without_checkpoints(run_copy, tmp_path):
    for file in (run_copy / "checkpoints").iterdir():
        file.unlink()
    assert_refused(analyze_args(run_copy, tmp_path), run_copy, "no checkpoints", "at least one readable",
                   created=tmp_path / "out")


def test_run_with_no_readable_checkpoint(run_copy, tmp_path):
    files = sorted((run_copy / "checkpoints").iterdir())
    for file in files:
        file.write_bytes(file.read_bytes()[:40])
    line = assert_refused(analyze_args(run_copy, tmp_path), run_copy,
                          f"no readable checkpoint among {len(files)}", str(files[0]), created=tmp_path / "out")
    assert "classify" not in line


def test_folder_of_runs_with_nothing_readable(run_copy, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    for name in ("a", "b"):
        target = shutil.copytree(run_copy, folder / name)
        for file in (target / "checkpoints").iterdir():
            file.write_bytes(b"\0" * 10)
    assert_refused(["analyze", folder, "--quiet"], folder, "no member with a readable checkpoint among 2",
                   created=folder / "grokscope")


def test_folder_member_with_nothing_readable_is_listed(run_copy, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    shutil.copytree(run_copy, folder / "good")
    bad = shutil.copytree(run_copy, folder / "bad")
    for file in (bad / "checkpoints").iterdir():
        file.write_bytes(b"\0" * 10)
    status, stdout, stderr = run_cli(["analyze", folder, "--quiet", "--no-report", "--json"])
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert [Path(m["source"]["path"]).name for m in summary["models"]] == ["good"]
    assert any(entry["path"] == str(bad) and "no readable checkpoint" in entry["error"]
               for entry in summary["skipped"])


# ----- sizes that cannot exist -------------------------------------------------------------------------

@pytest.mark.parametrize("args,option,phrases", [
    (["--p", "1000003"], "--p", ["p = 1000003", "EiB", "at most"]),
    (["--p", str(10**40 + 1)], "--p", ["at most"]),  # refused by size before a prime test would stall
    (["--epochs", str(10**12), "--checkpoint-every", "1"], "--epochs", ["epochs = 1000000000000", "TiB"]),
    (["--d-model", "400000"], "--d-model", ["d_model = 400000", "AdamW state", "at most"]),
], ids=["p-million", "p-astronomic", "epochs", "d-model"])
def test_train_refuses_sizes_that_cannot_fit(tmp_path, args, option, phrases):
    out = tmp_path / "run"
    started = time.perf_counter()
    line = assert_refused(["train", "--out", out, "--quiet", *args], f"train{': argument' if option == '--p' else ''} "
                          f"{option}", *phrases, created=out)
    assert "quarter of this machine's" in line
    assert time.perf_counter() - started < 30  # refused up front, not after an attempt


def test_limits_are_what_the_tensors_take():
    """grid_bytes is the float64 full-grid logits' size, model_bytes the parameters' (ground truth: torch)."""
    task = Task(p=23)
    model = make_model(0, task, d_model=32, d_mlp=64)
    logits = final_logits(model, task.tokens()).double()
    assert limits.grid_bytes(task.p) == logits.numel() * logits.element_size()
    assert limits.model_bytes(model.cfg) == sum(p.numel() * p.element_size() for p in backend.weights(model).values())
    two_layers = make_model(0, Task(p=29, eq_token=False), n_layers=2, d_model=16, n_heads=2, d_mlp=48)
    assert limits.model_bytes(two_layers.cfg) == sum(p.numel() * 4 for p in backend.weights(two_layers).values())


def _huge_header_file(path: Path) -> Path:
    header = json.dumps({"embed.W_E": {"dtype": "F32", "shape": [2**22, 2**22], "data_offsets": [0, 2**46]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64)
    return path


def test_safetensors_header_declaring_too_much_is_refused_unread(tmp_path):
    path = _huge_header_file(tmp_path / "model.safetensors")
    assert_refused(["analyze", path, "--quiet"], path, "header declaring tensors", "embed.W_E of shape "
                   "[4194304, 4194304]", "64.0 TiB", "at most", created=tmp_path / "grokscope")


def test_native_checkpoint_header_declaring_too_much(run_copy, tmp_path):
    checkpoint = sorted((run_copy / "checkpoints").iterdir())[-1]
    _huge_header_file(checkpoint)
    status, stdout, stderr = run_cli(analyze_args(run_copy, tmp_path) + ["--json", "--no-report"])
    assert status == 0, stderr  # one checkpoint refused: skipped and listed, the rest analysed
    entry = next(s for s in json.loads(stdout)["skipped"] if s["path"] == str(checkpoint))
    assert "header declaring tensors" in entry["error"] and "at most" in entry["error"]


@pytest.mark.parametrize("edit,phrases", [
    (lambda m: m["task"].update(p=1000003), ["in 'task': p = 1000003", "EiB"]),
    (lambda m: m["model"].update(d_model=10**6, d_head=250000, d_mlp=4 * 10**6), ["d_model = 1000000", "TiB"]),
], ids=["p", "model"])
def test_run_json_sizes_that_cannot_fit(run_copy, tmp_path, edit, phrases):
    _edit_run_json(edit)(run_copy)
    assert_refused(analyze_args(run_copy, tmp_path), run_copy / "run.json", *phrases, "at most",
                   created=tmp_path / "out")


def test_the_limit_is_a_quarter_of_memory_and_applies_to_any_layout(tmp_path, monkeypatch):
    assert limits.memory_limit() == limits.physical_memory() // 4 > 0
    path = tmp_path / "model.pt"
    model = make_model(3, d_model=256, d_mlp=1024)
    torch.save(parameter_state_dict(model), path)
    # A 4 MiB machine: the p = 23 grid (95 KiB of logits) fits, the 3.1 MiB model does not.
    monkeypatch.setattr(limits, "memory_limit", lambda: 2**20)
    assert limits.grid_bytes(23) < 2**20 < limits.model_bytes(model.cfg)
    assert_refused(["analyze", path, "--quiet"], path, "a model with d_model = 256", "at most 1.0 MiB")


def test_too_many_checkpoints_for_the_table(monkeypatch):
    from grokscope.analysis import analyze
    from grokscope.formats.base import Run

    monkeypatch.setattr(limits, "memory_limit", lambda: 2**20)
    model = make_model(4)
    n = 2**20 // limits.table_bytes(1) + 1  # one row more than fits
    run = Run(task=Task(p=23), cfg=model.cfg, steps=list(range(n)), load_state=lambda i: {}, source="many",
              format="memory")
    with pytest.raises(GrokscopeError, match=rf"^many: found {n} checkpoints to tabulate, which needs 1.0 MiB; "
                                             r"expected at most 1.0 MiB"):
        analyze(run, classify=None)


# ----- non-finite weights ------------------------------------------------------------------------------

def test_nan_checkpoint_in_a_run_is_skipped_and_named(run_copy, tmp_path):
    files = sorted((run_copy / "checkpoints").iterdir())
    state = load_file(str(files[-1]))
    state["embed.W_E"][0, 0] = float("nan")
    save_file(state, str(files[-1]))
    status, stdout, stderr = run_cli(analyze_args(run_copy, tmp_path) + ["--json", "--no-report"])
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert summary["checkpoints"]["count"] == len(files) - 1
    assert summary["final"]["step"] == int(files[-2].stem.split("_")[1])  # the last finite checkpoint
    [entry] = [s for s in summary["skipped"] if s["path"] == str(files[-1])]
    assert "non-finite weights: embed.W_E has 1 NaN and 0 infinite" in entry["error"]


@pytest.mark.parametrize("command", ["analyze", "classify"])
def test_infinite_weights_in_a_single_model(tmp_path, command):
    state = parameter_state_dict(make_model(2))
    state["blocks.0.mlp.W_in"][3] = float("inf")
    state["unembed.W_U"][0, :2] = float("-inf")
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    assert_refused([command, path] + (["--quiet"] if command == "analyze" else []), path,
                   "blocks.0.mlp.W_in has 0 NaN and 64 infinite of 2048 entries",
                   "unembed.W_U has 0 NaN and 2 infinite", "expected finite weights", created=tmp_path / "grokscope")


# ----- every numeric option ------------------------------------------------------------------------------

@pytest.mark.parametrize("option,value,phrases", [
    ("--seed", "-1", ["found -1", "whole number >= 0"]),
    ("--seed", "1.5", ["found '1.5'"]),
    ("--split-seed", "x", ["found 'x'"]),
    ("--p", "0", ["found 0", ">= 3"]),
    ("--p", "91", ["91, which is not prime"]),
    ("--frac", "0", ["found 0", "> 0 and < 1"]),
    ("--frac", "1", ["found 1"]),
    ("--frac", "nan", ["found nan"]),
    ("--epochs", "0", ["found 0", ">= 1"]),
    ("--epochs", "1e3", ["found '1e3'", "whole number"]),
    ("--d-model", "-8", ["found -8"]),
    ("--weight-decay", "-0.1", ["found -0.1", ">= 0"]),
    ("--weight-decay", "inf", ["found inf"]),
    ("--lr", "0", ["found 0", "> 0"]),
    ("--lr", "-1e-3", ["found -1e-3"]),
    ("--alpha", "1.5", ["found 1.5", ">= 0 and <= 1"]),
    ("--alpha", "-0.5", ["found -0.5"]),
    ("--checkpoint-every", "0", ["found 0"]),
    ("--log-every", "0", ["found 0"]),
    ("--threads", "0", ["found 0", ">= 1 and <= "]),
    ("--threads", "100000", ["found 100000", "this machine's cores"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_train_option_out_of_range(tmp_path, option, value, phrases):
    out = tmp_path / "run"
    # OPTION=VALUE, so that argparse reads "-1e-3" as a value, not as an option
    assert_refused(["train", "--out", out, "--quiet", f"{option}={value}"], f"train: argument {option}: ", *phrases,
                   created=out)


def test_train_setting_that_contradicts_the_preset_names_the_option(tmp_path):
    out = tmp_path / "run"
    assert_refused(["train", "--out", out, "--quiet", "--d-model", "30"], "train --d-model (with --preset nanda)",
                   "d_model = 30", "multiple of n_heads = 4", created=out)


@pytest.mark.parametrize("value,phrase", [("0", "found 0"), ("-2", "found -2"), ("two", "found 'two'"),
                                          ("100000", "this machine's cores")])
def test_analyze_workers_out_of_range(tiny_run_dir, tmp_path, value, phrase):
    assert_refused(["analyze", tiny_run_dir, "--out", tmp_path / "out", f"--workers={value}"],
                   "analyze: argument --workers: ", phrase, created=tmp_path / "out")


# ----- concurrency and kills -------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from grokscope.checkpoints import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def _holder(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_run_lock_refuses_a_second_holder_and_survives_sigkill(tmp_path):
    folder = tmp_path / "run"
    child = _holder(folder)
    try:
        with pytest.raises(GrokscopeError, match=rf"run: found a run locked by process {child.pid} "):
            with run_lock(folder):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (folder / LOCK_FILE).is_file()  # the dead holder could not remove its file...
    with run_lock(folder) as path:  # ...but the OS released its lock: the file is taken over
        assert path.read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_FILE).exists()  # a normal exit removes it


def test_second_trainer_on_a_folder_refuses_then_proceeds_after_a_kill(tmp_path, tiny_config):
    out = tmp_path / "run"
    args = ["train", "--out", out, "--quiet", "--preset", "fast", "--p", str(tiny_config.p), "--d-model",
            str(tiny_config.d_model), "--epochs", "20", "--frac", str(tiny_config.frac)]
    child = _holder(out)  # stands for a trainer writing the folder
    try:
        assert_refused(args, str(out), f"locked by process {child.pid}", "one trainer per folder")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the refused trainer wrote nothing
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    status, stdout, stderr = run_cli(args)
    assert status == 0, stderr
    assert "20 epochs" in stdout and (out / "checkpoints" / "step_0000020.safetensors").is_file()
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_killed_trainer_leaves_no_stale_lock(tmp_path):
    """A real `grokscope train` killed mid-run: the next one gets the lock and resumes to the end."""
    out = tmp_path / "run"
    args = ["-m", "grokscope.cli", "train", "--out", str(out), "--quiet", "--preset", "fast", "--p", "13",
            "--d-model", "16", "--epochs", "2000", "--checkpoint-every", "50", "--threads", "1"]
    child = subprocess.Popen([sys.executable, *args], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step_00000[1-9]*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "run.json").read_text().count('"finished": true')
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "checkpoints" / "step_0002000.safetensors").is_file()


KILLED_ANALYZE = textwrap.dedent("""
    import os, signal, sys
    import grokscope.report
    grokscope.report.write_report = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    from grokscope.cli import main
    main(["analyze", sys.argv[1], "--out", sys.argv[2], "--quiet"])
""")


def test_killed_analyze_leaves_no_summary_that_looks_complete(run_copy, tmp_path):
    out = tmp_path / "out"
    status, _, stderr = run_cli(["analyze", run_copy, "--out", out, "--quiet"])
    assert status == 0 and outputs_complete(out), stderr
    old_summary = json.loads((out / "summary.json").read_text())
    assert set(old_summary["outputs"]) == {"measures.csv", "report.html"}
    # The next analysis sees one checkpoint fewer and is killed while writing its report.
    sorted((run_copy / "checkpoints").iterdir())[-1].unlink()
    killed = subprocess.run([sys.executable, "-c", KILLED_ANALYZE, str(run_copy), str(out)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists() and not outputs_complete(out)
    # What is there is whole: the new measures.csv (one row fewer), the old report under its name.
    rows = (out / "measures.csv").read_text().splitlines()
    assert len(rows) - 1 == old_summary["checkpoints"]["count"] - 1
    status, _, stderr = run_cli(["analyze", run_copy, "--out", out, "--quiet"])
    assert status == 0 and outputs_complete(out), stderr


def test_outputs_complete_notices_a_file_from_another_analysis(run_copy, tmp_path):
    out = tmp_path / "out"
    assert run_cli(["analyze", run_copy, "--out", out, "--quiet", "--no-report"])[0] == 0
    assert outputs_complete(out) and not (out / "report.html").exists()
    (out / "measures.csv").write_text((out / "measures.csv").read_text().replace("\n", "\r\n"))
    assert not outputs_complete(out)


# ----- phases only where a history exists ----------------------------------------------------------

def _nanda_model_file(path: Path, **extra) -> Path:
    state = nanda_state(make_model(5, attention_biases=False))
    torch.save({"model": state, **extra}, path)
    return path


def test_single_model_without_history_has_no_phases(tmp_path):
    path = _nanda_model_file(tmp_path / "model.pth", epoch=107790)
    status, stdout, stderr = run_cli(["analyze", path, "--quiet", "--no-report"])
    assert status == 0, stderr
    assert "phases       not available" in stdout and "grokking 107790" not in stdout
    summary = json.loads((tmp_path / "grokscope" / "model" / "summary.json").read_text())
    phases = summary["phases"]
    assert phases["available"] is False and phases["source"] == "none"
    assert all(phases[k] is None for k in ("memorization_step", "grokking_step", "cleanup_end_step", "delay_ratio"))


# Curves of 12 epochs: train loss reaches the 99%-accuracy bound (0.01 ln 2 = 0.00693) at epoch 3, the
# test loss peaks at epoch 4 (6.0), halves by epoch 6 and reaches the bound at epoch 8.
TRAIN = [4.0, 1.0, 0.05, 0.006, 0.003, 0.002, 0.001, 0.001, 0.0008, 0.0005, 0.0004, 0.0003]
TEST = [4.5, 5.0, 5.5, 5.8, 6.0, 4.0, 2.5, 0.5, 0.006, 0.001, 1e-4, 1e-5]


def test_curves_without_checkpoints_give_curve_phases(tmp_path):
    path = _nanda_model_file(tmp_path / "model.pth", epoch=11, train_losses=TRAIN, test_losses=TEST)
    status, stdout, stderr = run_cli(["analyze", path, "--quiet", "--no-report", "--json"])
    assert status == 0, stderr
    phases = json.loads(stdout)["phases"]
    assert phases["available"] is True and phases["source"] == "training curves"
    assert phases["memorization_step"] == 3 and phases["grokking_step"] == 8
    assert phases["delay_ratio"] == pytest.approx(8 / 3, rel=1e-12)  # a ratio of two integers
    assert phases["circuit_formation_end"] == 6                # first test loss <= 6.0 / 2 after the peak
    assert phases["circuit_formation_start"] is None           # needs the excluded loss of checkpoints
    assert all(text.startswith("from the training curves stored with the run (train_loss, test_loss; "
                               "no checkpoints)") for text in phases["method"].values())
    assert "0.01 ln 2" in phases["method"]["memorization_step"]


def test_curves_are_cut_at_the_model_epoch(tmp_path):
    """A model saved at epoch 6 has no history after it: its phases see only epochs 0..6."""
    path = _nanda_model_file(tmp_path / "model.pth", epoch=6, train_losses=TRAIN, test_losses=TEST)
    status, stdout, stderr = run_cli(["analyze", path, "--quiet", "--no-report", "--json"])
    assert status == 0, stderr
    phases = json.loads(stdout)["phases"]
    assert phases["memorization_step"] == 3 and phases["grokking_step"] is None


def test_one_native_checkpoint_uses_the_run_log(run_copy, tmp_path):
    checkpoint = run_copy / "checkpoints" / "step_0000030.safetensors"
    status, stdout, stderr = run_cli(["analyze", checkpoint, "--quiet", "--no-report", "--json"])
    assert status == 0, stderr
    phases = json.loads(stdout)["phases"]
    assert phases["source"] == "training curves"
    assert "train_loss, test_loss, train_acc, test_acc" in phases["method"]["grokking_step"]
    assert "first step with train_acc >= 0.99" in phases["method"]["memorization_step"]


@pytest.mark.parametrize("seed", range(5))
def test_the_loss_bound_guarantees_the_accuracy(seed):
    """Mean cross-entropy <= 0.01 ln 2 implies accuracy >= 99% (Markov): checked on adversarial logits
    where 1% of the rows are wrong by a small margin and the rest are confidently right."""
    generator = torch.Generator().manual_seed(seed)
    n, classes = 10_000, 23
    labels = torch.randint(classes, (n,), generator=generator)
    logits = torch.randn(n, classes, generator=generator, dtype=torch.float64)
    logits[torch.arange(n), labels] += 40.0
    wrong = torch.randperm(n, generator=generator)[: n // 100 + 1]  # one row more than 1% allows
    others = logits[wrong].clone()
    others[torch.arange(len(wrong)), labels[wrong]] = -math.inf
    logits[wrong, labels[wrong]] = others.max(-1).values - 1e-3  # just below the best wrong class
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(-1) == labels).double().mean().item()
    assert accuracy < 0.99 and loss > LOSS_FOR_ACCURACY  # wrong rows cost at least ln 2 each


def test_loss_rule_only_without_accuracies():
    table = {"step": [0, 1, 2], "train_loss": [1.0, 0.001, 0.001], "train_acc": [0.0, 0.5, 1.0],
             "test_loss": [1.0, 1.0, 0.001]}
    phases = find_phases(table)
    assert phases.memorization_step == 2 and phases.method["memorization_step"].startswith("first step with train_acc")
    assert phases.grokking_step == 2 and "0.01 ln 2" in phases.method["grokking_step"]
