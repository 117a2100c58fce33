"""The native run format: detection, reading, atomic writes, damaged and temporary files."""

import json
import pickle
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grokscope import checkpoints as ck
from grokscope.errors import GrokscopeError
from grokscope.formats import native
from grokscope.models import build_model, parameter_state_dict
from grokscope.monitor import LOG_MONITOR_COLUMNS


@pytest.fixture
def run_copy(tmp_path, tiny_run_dir):
    """A private copy of the tiny run that a test may damage."""
    return Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))


def test_files_of_a_finished_run(tiny_run_dir, tiny_config):
    names = sorted(entry.name for entry in tiny_run_dir.iterdir())
    assert names == [ck.CHECKPOINT_DIR, ck.LOG_CSV, ck.RUN_JSON, ck.SPLIT_FILE]  # resume state and lock removed
    files = sorted(entry.name for entry in (tiny_run_dir / ck.CHECKPOINT_DIR).iterdir())
    assert files == [f"step_{step:07d}.safetensors" for step in tiny_config.checkpoint_steps()]
    meta = json.loads((tiny_run_dir / ck.RUN_JSON).read_text())
    assert meta["format"] == "grokscope-native" and meta["status"]["finished"] is True
    assert meta["train_config"] == tiny_config.to_dict()
    assert meta["task"] == {"p": 13, "op": "add", "eq_token": True, "diff_vocab": False}
    assert meta["model"]["d_model"] == 16 and meta["model"]["d_mlp"] == 64
    assert meta["seeds"] == {"init": 0, "split": 0}
    assert meta["optimizer"]["name"] == "AdamW" and meta["optimizer"]["betas"] == [0.9, 0.98]


def test_checkpoints_hold_parameter_names_only(tiny_run_dir, tiny_config):
    state = load_file(tiny_run_dir / ck.CHECKPOINT_DIR / ck.checkpoint_filename(0))
    model = tiny_config.init_model()
    assert set(state) == set(parameter_state_dict(model))  # HookedTransformer names on either line
    for name, tensor in parameter_state_dict(model).items():  # step 0 is the initialisation itself
        assert torch.equal(state[name], tensor), name


def test_read_a_run(tiny_run_dir, tiny_config):
    run = native.read(tiny_run_dir)
    assert run.format == "native" and run.source == str(tiny_run_dir)
    assert run.task == tiny_config.task and run.alpha == 1.0
    assert run.steps == tiny_config.checkpoint_steps()
    assert run.checkpoint_paths[3] == str(tiny_run_dir / ck.CHECKPOINT_DIR / ck.checkpoint_filename(run.steps[3]))
    assert torch.equal(run.train_indices, tiny_config.train_indices())
    assert run.log["step"] == list(range(0, 61, 5))
    assert list(run.log)[:len(ck.LOG_COLUMNS)] == list(ck.LOG_COLUMNS)
    assert set(run.log) - set(ck.LOG_COLUMNS) == set(LOG_MONITOR_COLUMNS)
    assert run.config == json.loads((tiny_run_dir / ck.RUN_JSON).read_text())
    assert (run.cfg.d_model, run.cfg.d_vocab, run.cfg.d_vocab_out, run.cfg.n_ctx) == (16, 14, 13, 3)
    final = parameter_state_dict(run.model(-1))
    for name, tensor in load_file(run.checkpoint_paths[-1]).items():
        assert torch.equal(final[name], tensor), name


def test_read_from_the_checkpoints_folder_or_one_file(tiny_run_dir):
    whole = native.read(tiny_run_dir / ck.CHECKPOINT_DIR)
    assert whole.steps == native.read(tiny_run_dir).steps
    one = native.read(tiny_run_dir / ck.CHECKPOINT_DIR / ck.checkpoint_filename(20))
    assert one.steps == [20] and len(one.checkpoint_paths) == 1
    assert torch.equal(one.state_dict(0)["embed.W_E"], whole.state_dict(whole.steps.index(20))["embed.W_E"])


def test_a_pizza_style_run_keeps_its_attention_rate(tmp_path, tiny_config):
    from grokscope.training import train

    config = tiny_config.replace(eq_token=False, alpha=0.25, epochs=3)
    run = native.read(train(config, tmp_path / "run", progress=False).source)
    assert run.alpha == 0.25 and run.cfg.attention_dir == "bidirectional" and run.cfg.n_ctx == 2
    model = run.model(-1)
    _, cache = model.run_with_cache(run.task.tokens()[:4])
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.full((4, 4, 2), 1.75))


def test_matches(tiny_run_dir, tmp_path):
    checkpoint = tiny_run_dir / ck.CHECKPOINT_DIR / ck.checkpoint_filename(0)
    assert native.matches(tiny_run_dir) and native.matches(str(tiny_run_dir))
    assert native.matches(tiny_run_dir / ck.CHECKPOINT_DIR) and native.matches(checkpoint)
    assert not native.matches(tiny_run_dir / ck.LOG_CSV)
    assert not native.matches(tmp_path / "missing")
    assert not native.matches(tmp_path)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(checkpoint, loose / checkpoint.name)
    assert not native.matches(loose / checkpoint.name)  # a step file outside a run
    other = tmp_path / "other"
    other.mkdir()
    (other / ck.RUN_JSON).write_text(json.dumps({"format": "something-else"}))
    assert not native.matches(other)
    (other / ck.RUN_JSON).write_text("{not json")
    assert not native.matches(other)


def test_read_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(GrokscopeError, match=f"{tmp_path}: found no grokscope run"):
        native.read(tmp_path)


def test_temporary_and_foreign_files_are_never_checkpoints(run_copy):
    folder = run_copy / ck.CHECKPOINT_DIR
    steps = native.read(run_copy).steps
    source = folder / ck.checkpoint_filename(60)
    half = source.read_bytes()[: source.stat().st_size // 2]
    (folder / f".{ck.checkpoint_filename(70)}.abc123.tmp").write_bytes(half)  # a killed writer's temp file
    (folder / f"{ck.checkpoint_filename(80)}.tmp").write_bytes(half)
    (folder / "step_80.safetensors").write_bytes(half)  # not 7 digits
    (folder / "notes.txt").write_text("x")
    assert native.read(run_copy).steps == steps
    assert ck.remove_temporaries(folder) == [folder / f".{ck.checkpoint_filename(70)}.abc123.tmp"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_skipped_and_named(run_copy, damage):
    path = run_copy / ck.CHECKPOINT_DIR / ck.checkpoint_filename(30)
    content = path.read_bytes()
    path.write_bytes({"truncated": content[:-100], "empty": b"", "garbage": b"\x00garbage" * 50}[damage])
    run = native.read(run_copy)
    assert 30 in run.steps
    with pytest.raises(GrokscopeError, match=f"{path}: found an unreadable file"):
        run.state_dict(run.steps.index(30))
    seen = [step for step, _ in run.iter_models()]
    assert 30 not in seen and len(seen) == len(run.steps) - 1
    assert len(run.skipped) == 1 and run.skipped[0]["path"] == str(path)
    assert "safetensors" in run.skipped[0]["error"] and str(path) not in run.skipped[0]["error"]


def test_a_pickle_is_never_unpickled(run_copy, tmp_path):
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = run_copy / ck.CHECKPOINT_DIR / ck.checkpoint_filename(30)
    path.write_bytes(pickle.dumps(Trap()))
    run = native.read(run_copy)
    assert 30 not in [step for step, _ in run.iter_models()]
    assert not marker.exists()


def test_log_and_split_files_are_read_back_exactly(tmp_path):
    log = {"step": [0, 10], "train_loss": [4.1, 1.0000000000000002e-08], "test_loss": [4.2, 3.3],
           "train_acc": [0.0, 1.0], "test_acc": [1 / 3, 0.5]}
    ck.atomic_write(tmp_path / ck.LOG_CSV, ck.log_to_csv(log))
    assert ck.read_log(tmp_path / ck.LOG_CSV) == log
    assert ck.truncate_log(log, 9) == {column: values[:1] for column, values in log.items()}
    (tmp_path / "bad.csv").write_text("step,loss\n0,1\n")
    with pytest.raises(GrokscopeError, match="bad.csv: found header"):
        ck.read_log(tmp_path / "bad.csv")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "file.bin"
    ck.atomic_write(target, b"old")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~ck._umask()  # not mkstemp's private 0600

    def failing_writer(handle):
        handle.write(b"new but partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.atomic_write(target, failing_writer)
    assert target.read_bytes() == b"old"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["file.bin"]
    ck.atomic_write(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new"


def test_saved_tensors_round_trip_with_metadata(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor(3, dtype=torch.int64)}
    ck.save_tensors(tmp_path / "x.safetensors", tensors, metadata={"step": "7"})
    loaded, metadata = ck.load_tensors(tmp_path / "x.safetensors")
    assert metadata == {"step": "7"} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with pytest.raises(GrokscopeError, match="found no such file"):
        ck.load_tensors(tmp_path / "missing.safetensors")


def test_run_models_reload_into_hooked_transformer(tiny_run_dir):
    run = native.read(tiny_run_dir)
    model = build_model(run.cfg, run.alpha, run.state_dict(-1))
    tokens = run.task.tokens()
    torch.testing.assert_close(model(tokens)[:, -1], run.model(-1)(tokens)[:, -1], rtol=0, atol=0)
