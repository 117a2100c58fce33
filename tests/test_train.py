"""The trainer: configs and presets, determinism, resume after a kill, refusal of foreign folders, grokking."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grokscope import checkpoints as ck
from grokscope.cli import PRESET_NAMES, main
from grokscope.errors import GrokscopeError
from grokscope.formats import native
from grokscope.models import build_model, cross_entropy_f64
from grokscope.training import PRESETS, TrainConfig, summarize, train

REPO = Path(__file__).resolve().parents[1]


def _weights(run_dir, step):
    return load_file(Path(run_dir) / ck.CHECKPOINT_DIR / ck.checkpoint_filename(step))


def _assert_bitwise_equal(first: dict, second: dict):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


# ----- TrainConfig --------------------------------------------------------------------------------

def test_defaults_are_the_nanda_recipe():
    config = TrainConfig()
    assert (config.p, config.frac, config.op, config.eq_token) == (113, 0.3, "add", True)
    assert (config.n_layers, config.d_model, config.n_heads, config.d_mlp, config.act_fn) == (1, 128, 4, None, "relu")
    assert (config.lr, config.weight_decay, config.betas, config.alpha) == (1e-3, 1.0, (0.9, 0.98), 1.0)
    assert (config.grokfast, config.grokfast_alpha, config.grokfast_lamb) == (False, 0.98, 2.0)
    assert config.model_config().d_mlp == 512
    assert PRESETS["nanda"] == config


def test_pizza_preset_is_the_z23_setting():
    config = TrainConfig.preset("pizza")
    assert (config.p, config.frac, config.weight_decay, config.alpha, config.eq_token) == (59, 0.8, 2.0, 0.0, False)
    cfg = config.model_config()
    assert (cfg.n_ctx, cfg.d_vocab, cfg.attention_dir) == (2, 59, "bidirectional")
    assert TrainConfig.preset("nanda").model_config().attention_dir == "causal"


def test_cli_offers_every_preset():
    assert set(PRESET_NAMES) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_json(name):
    config = TrainConfig.preset(name, seed=3, grokfast=True)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_from_dict_names_unknown_and_missing_keys():
    data = TrainConfig().to_dict()
    data["learning_rate"] = data.pop("lr")
    with pytest.raises(GrokscopeError, match=r"unknown keys \['learning_rate'\], missing keys \['lr'\]"):
        TrainConfig.from_dict(data)


def test_preset_and_replace_name_bad_settings():
    with pytest.raises(GrokscopeError, match=r"preset 'quick'.*one of \['fast', 'nanda', 'pizza'\]"):
        TrainConfig.preset("quick")
    with pytest.raises(GrokscopeError, match=r"settings \['width'\]"):
        TrainConfig.preset("fast", width=3)
    assert TrainConfig.preset("fast", lr=2e-3).lr == 2e-3


@pytest.mark.parametrize("overrides, pattern", [
    ({"p": 12}, "p = 12"), ({"op": "pow"}, "operation 'pow'"), ({"frac": 1.0}, r"frac = 1.0; expected a number in \(0, 1\)"),
    ({"alpha": 2.0}, "alpha = 2.0"), ({"lr": 0.0}, "lr = 0.0"), ({"epochs": 0}, "epochs = 0"),
    ({"betas": (0.9, 1.0)}, "betas"), ({"d_model": 30}, "d_model = 30; expected a multiple of n_heads = 4"),
    ({"seed": -1}, "seed = -1"), ({"weight_decay": -1.0}, "weight_decay"), ({"frac": float("nan")}, "frac = nan"),
])
def test_invalid_settings_are_refused_by_name(overrides, pattern):
    with pytest.raises(GrokscopeError, match=pattern):
        TrainConfig(**overrides)


@pytest.mark.parametrize("overrides", [{"grokfast": "yes"}, {"betas": (0.9,)}, {"epochs": 10.5}])
def test_settings_of_the_wrong_type_are_refused(overrides):
    # GrokscopeError from the config, or a TypeError first where annotations are checked at run time
    with pytest.raises((GrokscopeError, TypeError)):
        TrainConfig(**overrides)


def test_integers_given_for_real_settings_are_stored_as_floats():
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), "alpha": 0, "weight_decay": 2})
    assert (config.alpha, config.weight_decay) == (0.0, 2.0)
    assert isinstance(config.alpha, float) and isinstance(config.to_dict()["weight_decay"], float)


def test_checkpoint_schedule_is_dense_early_and_complete():
    for name, config in PRESETS.items():
        steps = config.checkpoint_steps()
        assert steps[0] == 0 and steps[-1] == config.epochs and steps == sorted(set(steps))
        assert {1, 2, 3, 5, 10} <= set(steps), name  # memorisation is fast: log-spaced early
        assert set(range(0, config.epochs + 1, config.checkpoint_every)) <= set(steps)
    assert 50 <= len(PRESETS["fast"].checkpoint_steps()) <= 150
    assert ck.checkpoint_steps(7, every=100, per_decade=0) == [0, 7]


# ----- small training runs ------------------------------------------------------------------------

def test_same_seeds_give_bitwise_identical_runs(tmp_path, tiny_config, tiny_run_dir):
    again = train(tiny_config, tmp_path / "again", progress=False)
    for step in again.steps:
        _assert_bitwise_equal(_weights(tiny_run_dir, step), _weights(tmp_path / "again", step))
    assert (tmp_path / "again" / ck.LOG_CSV).read_text() == (tiny_run_dir / ck.LOG_CSV).read_text()


def test_init_and_split_seeds_are_separate(tmp_path, tiny_config, tiny_run_dir):
    short = {"epochs": 1}
    other_split = train(tiny_config.replace(split_seed=1, **short), tmp_path / "split", progress=False)
    other_init = train(tiny_config.replace(seed=1, **short), tmp_path / "init", progress=False)
    base = train(tiny_config.replace(**short), tmp_path / "base", progress=False)
    _assert_bitwise_equal(_weights(tmp_path / "split", 0), _weights(tmp_path / "base", 0))
    assert not torch.equal(other_split.train_indices, base.train_indices)
    assert torch.equal(other_init.train_indices, base.train_indices)
    assert not torch.equal(_weights(tmp_path / "init", 0)["embed.W_E"], _weights(tmp_path / "base", 0)["embed.W_E"])


def test_training_leaves_global_rng_alone(tmp_path, tiny_config):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(tiny_config.replace(epochs=2), tmp_path / "run", progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_frozen_biases_stay_zero_and_mlp_biases_train(tiny_run_dir):
    final = _weights(tiny_run_dir, 60)
    for name, tensor in final.items():
        if name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_U")):
            assert torch.count_nonzero(tensor) == 0, name
    assert torch.count_nonzero(final["blocks.0.mlp.b_in"]) > 0
    assert not torch.equal(final["blocks.0.mlp.W_in"], _weights(tiny_run_dir, 0)["blocks.0.mlp.W_in"])


def test_checkpoints_reproduce_the_logged_metrics(tiny_run_dir):
    """A checkpoint loaded into HookedTransformer gives the logits the trainer logged for its step."""
    from grokscope.formats import native

    run = native.read(tiny_run_dir)
    tokens, labels = run.task.tokens(), run.task.labels()
    rows = {step: i for i, step in enumerate(run.log["step"])}
    compared = 0
    for i, step in enumerate(run.steps):
        if step not in rows:
            continue
        model = build_model(run.cfg, run.alpha, run.state_dict(i))
        with torch.no_grad():
            logits = model(tokens)[:, -1]
        for split, idx in (("train", run.train_indices), ("test", run.test_indices)):
            loss = cross_entropy_f64(logits[idx], labels[idx]).item()
            acc = (logits[idx].argmax(-1) == labels[idx]).double().mean().item()
            assert loss == pytest.approx(run.log[f"{split}_loss"][rows[step]], rel=1e-5, abs=1e-7), (step, split)
            assert acc == pytest.approx(run.log[f"{split}_acc"][rows[step]], abs=1e-9), (step, split)
        compared += 1
    assert compared >= 8


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("grokfast, die_after", [(False, "checkpoint"), (False, "log"), (False, "resume"),
                                                  (True, "resume")])
def test_resume_after_an_interruption_is_bitwise_identical(tmp_path, monkeypatch, tiny_config, grokfast, die_after):
    """Stop the trainer right after one of the three files written at step 40; the rerun matches."""
    config = tiny_config.replace(grokfast=grokfast)
    reference = train(config, tmp_path / "reference", progress=False)
    real_write = ck.atomic_write
    names = {"checkpoint": ck.checkpoint_filename(40), "log": ck.LOG_CSV, "resume": ck.RESUME_FILE}

    def write_then_die(path, data):
        result = real_write(path, data)
        at_step_40 = (Path(path).parent / ck.CHECKPOINT_DIR / ck.checkpoint_filename(40)).exists() \
            or Path(path).name == names["checkpoint"]
        if Path(path).name == names[die_after] and at_step_40:
            raise _Interrupt
        return result

    monkeypatch.setattr(ck, "atomic_write", write_then_die)
    with pytest.raises(_Interrupt):
        train(config, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(ck, "atomic_write", real_write)
    assert (tmp_path / "resumed" / ck.RESUME_FILE).exists()
    resumed = train(config, tmp_path / "resumed", progress=False)
    assert resumed.steps == reference.steps
    for step in reference.steps:
        _assert_bitwise_equal(_weights(tmp_path / "reference", step), _weights(tmp_path / "resumed", step))
    # rows after the resumed step were dropped and recomputed: no duplicates
    assert (tmp_path / "resumed" / ck.LOG_CSV).read_text() == (tmp_path / "reference" / ck.LOG_CSV).read_text()
    assert not (tmp_path / "resumed" / ck.RESUME_FILE).exists()


def test_a_different_config_is_refused_naming_the_settings(tmp_path, tiny_config):
    train(tiny_config.replace(epochs=3), tmp_path / "run", progress=False)
    expected = f"lr = {tiny_config.lr!r} there but 0.0123 here; seed = 0 there but 5 here"
    with pytest.raises(GrokscopeError, match=re.escape(expected)) as info:
        train(tiny_config.replace(epochs=3, lr=0.0123, seed=5), tmp_path / "run", progress=False)
    assert str(tmp_path / "run") in str(info.value)


def test_a_foreign_folder_is_refused(tmp_path, tiny_config):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GrokscopeError, match="non-empty folder without run.json"):
        train(tiny_config, tmp_path, progress=False)
    assert [entry.name for entry in tmp_path.iterdir()] == ["notes.txt"]


def test_a_finished_run_is_returned_untouched(tmp_path, tiny_config):
    out = tmp_path / "run"
    first = train(tiny_config.replace(epochs=5), out, progress=False)
    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    time.sleep(0.01)
    again = train(tiny_config.replace(epochs=5), out, progress=False)
    assert again.steps == first.steps
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == stamps


def test_cli_train_prints_a_summary_and_errors_in_one_line(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path / "run"), "--preset", "fast", "--p", "11", "--d-model", "16", "--quiet"]
    assert main(args + ["--epochs", "20"]) == 0
    out = capsys.readouterr().out
    assert "p = 11" in out and "train accuracy >= 99% at epoch" in out and "final (epoch 20)" in out
    assert main(args + ["--epochs", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("grokscope: ") and "epochs = 20 there but 30 here" in err[0]
    assert main(["train", "--out", str(tmp_path / "x"), "--p", "12"]) == 2
    assert capsys.readouterr().err.strip() == ("grokscope: train: argument --p: found 12, which is not prime; "
                                               "expected an odd prime such as 23, 59 or 113 (see grokscope train --help)")


def test_cli_log_every_sets_the_log_rows(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--preset", "fast", "--p", "11", "--d-model", "16", "--quiet"]
    assert main(args + ["--epochs", "7", "--log-every", "3"]) == 0
    log = native.read(out).log
    assert log["step"] == [0, 3, 6, 7] and len(log["trainonly_train_loss"]) == 4     # the last step always


def test_the_log_cadence_changes_nothing_in_training(tmp_path):
    # Logging (and the train-only monitor at each log row) only reads the weights: the same run logged
    # every 2 or every 5 steps ends with the same weights (bitwise: same machine, same thread count).
    config = TrainConfig.preset("fast", p=13, d_model=16, epochs=20)
    runs = [train(config.replace(log_every=every), tmp_path / str(every), progress=False) for every in (2, 5)]
    assert runs[0].log["step"][:3] == [0, 2, 4] and runs[1].log["step"][:3] == [0, 5, 10]
    final = [run.model(-1).state_dict() for run in runs]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])


def test_cli_help_is_fast_and_lists_train():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "grokscope.cli", "--help"], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "train" in result.stdout
    assert time.perf_counter() - start < 5.0
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, grokscope.cli; grokscope.cli.build_parser(); print(sorted(sys.modules))"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout


@pytest.mark.slow
def test_resume_after_sigkill_of_the_cli(tmp_path):
    """Kill a real `grokscope train` process with SIGKILL mid-run; rerunning it ends bitwise identical."""
    args = ["train", "--preset", "fast", "--p", "23", "--d-model", "32", "--epochs", "400",
            "--checkpoint-every", "20", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def command(out):
        return [sys.executable, "-m", "grokscope.cli", *args, "--out", str(out)]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(command(killed_dir), env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    target = killed_dir / ck.CHECKPOINT_DIR / ck.checkpoint_filename(200)
    deadline = time.monotonic() + 300
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed_dir / ck.CHECKPOINT_DIR / ck.checkpoint_filename(400)).exists()
    assert (killed_dir / ck.RESUME_FILE).exists()

    for out in (killed_dir, tmp_path / "uninterrupted"):
        result = subprocess.run(command(out), env=env, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    steps = sorted(ck.checkpoint_step(p.name) for p in (killed_dir / ck.CHECKPOINT_DIR).iterdir())
    assert steps == ck.checkpoint_steps(400, every=20, per_decade=10)
    for step in steps:
        _assert_bitwise_equal(_weights(killed_dir, step), _weights(tmp_path / "uninterrupted", step))
    assert (killed_dir / ck.LOG_CSV).read_text() == (tmp_path / "uninterrupted" / ck.LOG_CSV).read_text()


@pytest.mark.slow
def test_fast_preset_groks_with_delayed_generalisation(fast_run_dir):
    from grokscope.formats import native

    summary = summarize(native.read(fast_run_dir))
    assert summary["final"]["train_acc"] >= 0.99 and summary["final"]["test_acc"] >= 0.99
    assert summary["train_99_step"] is not None and summary["test_99_step"] is not None
    assert summary["test_99_step"] >= 3 * summary["train_99_step"]
    assert 50 <= summary["checkpoints"] <= 150


# ----- the progress bar ---------------------------------------------------------------------------

class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True

    @property
    def text(self):
        return self.getvalue()


def test_progress_bar_draws_on_a_terminal_only():
    from tqdm.auto import tqdm

    from grokscope.progress import progress_bar

    assert isinstance(progress_bar(1, enabled=False), tqdm)  # tqdm.auto: a widget in notebooks
    terminal = _FakeTerminal()
    with progress_bar(200, desc="train", initial=50, file=terminal, unit="epoch") as bar:
        bar.set_postfix({"train_loss": 0.012345, "test_acc": 0.5}, refresh=False)
        bar.update(50)
        assert not bar.disable and bar.n == 100
    final = terminal.text.split("\r")[-1]
    assert final.startswith("train:  50%|") and "| 100/200 [" in final, final
    assert "epoch/s" in final and "train_loss=0.0123, test_acc=0.5" in final, final
    assert terminal.text.endswith("\n")
    for enabled, stream in ((False, _FakeTerminal()), (True, io.StringIO()), (None, io.StringIO())):
        with progress_bar(10, file=stream, enabled=enabled) as bar:
            bar.set_postfix(train_loss=1.0)
            assert bar.disable, (enabled, type(stream))
            bar.update(5)
        assert stream.getvalue() == "", (enabled, type(stream))
