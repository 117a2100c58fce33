"""Bad input to ``grokscope.formats``: each case its own test, each message saying found / expected / where."""

import json
import os

import pytest
import torch
from formats_writers import OpensAFile, make_model, nanda_state, tl_fields, write_tl
from safetensors.torch import save_file

from grokscope.errors import GrokscopeError
from grokscope.formats import detect, load, load_run, load_runs
from grokscope.models import parameter_state_dict
from grokscope.tasks import Task


def assert_message(error: GrokscopeError, where, *parts: str) -> None:
    message = str(error)
    assert message.startswith(f"{os.fspath(where)}: found "), message
    assert "; expected " in message, message
    for part in parts:
        assert part in message, (part, message)


def test_missing_path(tmp_path):
    path = tmp_path / "runs" / "p113"
    for read in (detect, load):
        with pytest.raises(GrokscopeError) as error:
            read(path)
        assert_message(error.value, path, "no such file or folder", "a run folder")


def test_empty_folder(tmp_path):
    with pytest.raises(GrokscopeError) as error:
        load(tmp_path)
    assert_message(error.value, tmp_path, "an empty folder")


def test_folder_without_checkpoints(tmp_path):
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "log.csv").write_text("step,loss\n")
    with pytest.raises(GrokscopeError) as error:
        load(tmp_path)
    assert_message(error.value, tmp_path, "no checkpoint files", "README.md")


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "ckpt_7.pth"
    path.write_text("this is a text file, not a model\n")
    with pytest.raises(GrokscopeError) as error:
        load(path)
    assert_message(error.value, path, "not a checkpoint")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_checkpoint_in_a_folder_run_is_skipped(tmp_path, suffix):
    models = [make_model(seed) for seed in (1, 2, 3)]
    for step, model in zip((10, 20, 30), models):
        write_tl(str(tmp_path / f"step_{step}{suffix}"), model)
    broken = tmp_path / f"step_20{suffix}"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    run = load_run(tmp_path)
    assert run.steps == [10, 20, 30]
    steps = [step for step, _ in run.iter_models()]
    assert steps == [10, 30]
    assert len(run.skipped) == 1 and run.skipped[0]["path"] == str(broken)
    assert "truncated or corrupt" in run.skipped[0]["error"]
    with pytest.raises(GrokscopeError) as error:
        run.model(1)
    assert_message(error.value, broken, "truncated or corrupt")


def _layernorm_model():
    """A HookedTransformer state dict with LayerNorm (``ln1``, ``ln2``, ``ln_final`` scales and biases)."""
    state = parameter_state_dict(make_model(3, d_model=16, n_heads=2, d_mlp=32))
    for prefix in ("blocks.0.ln1.", "blocks.0.ln2.", "ln_final."):
        state[prefix + "w"], state[prefix + "b"] = torch.ones(16), torch.zeros(16)
    return state


def _without_mlp():
    state = parameter_state_dict(make_model(4, d_model=16, n_heads=2, d_mlp=32))
    return {k: v for k, v in state.items() if ".mlp." not in k}


def _vocab(rows: int, outputs: int):
    state = parameter_state_dict(make_model(5, d_model=16, n_heads=2, d_mlp=32))
    state["embed.W_E"] = torch.randn(rows, 16)
    state["unembed.W_U"] = torch.randn(16, outputs)
    state["unembed.b_U"] = torch.zeros(outputs)
    return state


@pytest.mark.parametrize("make_state,reason", [
    (_layernorm_model, "LayerNorm weights"),
    (_without_mlp, "no MLP"),
    (lambda: _vocab(13, 12), "p = 12 inferred from W_E (13 rows, with =) is not an odd prime"),
    (lambda: _vocab(24, 50), "W_U has 50 outputs (expected 23 or 24)"),
    (lambda: {"embed.W_E": torch.randn(24, 8), "mlp.W_in": torch.randn(8, 32)}, "embed.W_E and blocks.0.attn.W_O"),
], ids=["layernorm", "no-mlp", "p-not-prime", "vocab-mismatch", "no-attention"])
def test_not_a_modular_arithmetic_transformer(tmp_path, make_state, reason):
    path = tmp_path / "runs" / "x" / "ckpt_7.pth"
    path.parent.mkdir(parents=True)
    torch.save(make_state(), path)
    with pytest.raises(GrokscopeError) as error:
        load(path)
    assert_message(error.value, path, "found keys {", "expected a Nanda or TransformerLens layout", reason)


def test_nanda_layout_message_shows_the_original_shapes(tmp_path):
    state = nanda_state(make_model(6, attention_biases=False))
    state["embed.W_E"] = torch.randn(32, 13)  # p = 12 with the = token
    state["unembed.W_U"] = torch.randn(32, 13)
    path = tmp_path / "model.pth"
    torch.save({"model": state}, path)
    with pytest.raises(GrokscopeError) as error:
        load(path)
    assert_message(error.value, path, "embed.W_E (32, 13)", "p = 12 inferred from W_E")


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model.pt"
    torch.save({"model": parameter_state_dict(make_model(7)), "note": OpensAFile(marker)}, path)
    for read in (detect, load):
        with pytest.raises(GrokscopeError) as error:
            read(path)
        assert_message(error.value, path, "open", "--trust-pickle")
    assert not marker.exists()
    run = load(path, trust_pickle=True)
    assert marker.exists() and run.task == Task(p=23)


def test_code_running_pickle_in_a_folder_run_is_skipped_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    write_tl(str(tmp_path / "step_1.pt"), make_model(8))
    torch.save({"model": parameter_state_dict(make_model(9)), "note": OpensAFile(marker)}, tmp_path / "step_2.pt")
    run = load_run(tmp_path)
    assert [step for step, _ in run.iter_models()] == [1]
    assert "--trust-pickle" in run.skipped[0]["error"] and not marker.exists()


def test_files_in_one_folder_disagree_on_p(tmp_path):
    save_file(parameter_state_dict(make_model(10, Task(p=23))), str(tmp_path / "step_100.safetensors"))
    save_file(parameter_state_dict(make_model(11, Task(p=29))), str(tmp_path / "step_200.safetensors"))
    with pytest.raises(GrokscopeError) as error:
        load(tmp_path)
    assert_message(error.value, tmp_path / "step_200.safetensors", "p = 29", "p = 23 as in",
                   str(tmp_path / "step_100.safetensors"))


def test_config_that_contradicts_the_weights(tmp_path):
    model = make_model(12)
    path = write_tl(str(tmp_path / "m.safetensors"), model, {**tl_fields(model), "n_heads": 8})
    with pytest.raises(GrokscopeError) as error:
        load(path)
    assert_message(error.value, path, "n_heads = 8 in the config but 4 in the weights")


def test_unsupported_operation_in_config(tmp_path):
    model = make_model(13)
    path = write_tl(str(tmp_path / "m.pt"), model, {"task": {"op": "xor"}})
    with pytest.raises(GrokscopeError, match="operation 'xor'"):
        load(path)


def test_nanda_random_labels_are_refused(tmp_path):
    path = tmp_path / "run.pth"
    torch.save({"state_dicts": [nanda_state(make_model(14, attention_biases=False))], "config": {"fn_name": "rand"}},
               path)
    with pytest.raises(GrokscopeError) as error:
        load(path)
    assert_message(error.value, path, "fn_name 'rand'")


def test_load_run_refuses_a_folder_of_several(tmp_path):
    write_tl(str(tmp_path / "a.safetensors"), make_model(15))
    write_tl(str(tmp_path / "b.safetensors"), make_model(16))
    with pytest.raises(GrokscopeError) as error:
        load_run(tmp_path)
    assert_message(error.value, tmp_path, "2 models or runs", "load_runs")
    assert len(load_runs(tmp_path)) == 2


def test_unreadable_member_of_a_collection(tmp_path):
    write_tl(str(tmp_path / "a.safetensors"), make_model(17))
    (tmp_path / "b.pt").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(GrokscopeError) as error:
        load_runs(tmp_path)
    assert_message(error.value, tmp_path / "b.pt", "truncated or corrupt")
    skipped: list = []
    runs = load_runs(tmp_path, skipped=skipped)
    assert [os.path.basename(r.source) for r in runs] == ["a.safetensors"]
    assert skipped[0]["path"] == str(tmp_path / "b.pt") and "truncated or corrupt" in skipped[0]["error"]


def test_bad_json_config(tmp_path):
    model = make_model(18)
    path = write_tl(str(tmp_path / "m.pt"), model)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(GrokscopeError) as error:
        load(path)
    assert_message(error.value, tmp_path / "m.json", "unreadable JSON config")
    (tmp_path / "m.json").write_text(json.dumps([1, 2]))
    with pytest.raises(GrokscopeError, match="a JSON list"):
        load(path)
