"""Every reader on files written in its exact layout: logits over the whole grid survive the round trip.

Ground truth: the grokscope model the file was written from (``final_logits``), and for the [N23]
layout an independent forward pass in that layout's own conventions.
"""

import json
import os
import shutil

import pytest
import torch
from formats_writers import (
    TL3_CONFIG_MODULE,
    hooked_config,
    hooked_state_dict,
    make_model,
    nanda_config_dict,
    nanda_forward,
    nanda_split_reference,
    nanda_state,
    pickled_config_class,
    tl_fields,
    write_tl,
)
from safetensors.torch import save_file

from grokscope.formats import FORMATS, detect, load, load_run, load_runs, nanda
from grokscope.models import final_logits, parameter_state_dict
from grokscope.tasks import Task

ATOL = 1e-6
TASK = Task(p=23)


def assert_same_logits(run, originals, task=TASK):
    """Every checkpoint of ``run`` gives the logits of the corresponding original over the full grid."""
    assert len(run.steps) == len(originals)
    tokens = task.tokens()
    for i, original in enumerate(originals):
        expected = final_logits(original, tokens)
        got = final_logits(run.model(i), tokens)
        assert got.shape == (task.n_inputs, task.p)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# ----- the [N23] layout ------------------------------------------------------------------------

@pytest.mark.parametrize("n_layers,act", [(1, "relu"), (2, "gelu")])
def test_nanda_writer_is_the_original_layout(n_layers, act):
    """The test writer's [N23] state dict computes the original model's logits in [N23] conventions."""
    model = make_model(0, n_layers=n_layers, act_fn=act, attention_biases=False)
    state = nanda_state(model)
    expected = final_logits(model, TASK.tokens()).detach()
    got = nanda_forward(state, TASK.tokens(), act)
    assert got.shape == (TASK.n_inputs, TASK.p + 1)  # the [N23] code also has an ``=`` output class
    # two separately written float32 forward passes: agree to float32 rounding of the largest logit
    torch.testing.assert_close(got[:, :TASK.p], expected, atol=1e-5 * float(expected.abs().max()), rtol=0)


@pytest.mark.parametrize("with_epochs", [True, False])
def test_nanda_run_round_trip(tmp_path, with_epochs):
    models = [make_model(seed, attention_biases=False) for seed in (1, 2, 3, 4)]
    config = nanda_config_dict(TASK, models[0], seed=7, save_every=100, num_epochs=300)
    bundle = {"state_dicts": [nanda_state(m) for m in models[:3]], "model": nanda_state(models[3]),
              "train_losses": [1.0 / (e + 1) for e in range(300)],
              "test_losses": [2.0 / (e + 1) for e in range(0, 300, 10)], "config": config}
    if with_epochs:
        bundle["epochs"] = [0, 100, 200]
    path = str(tmp_path / "full_run.pth")
    torch.save(bundle, path)
    assert detect(path) == "nanda"
    run = load_run(path)
    assert run.format == "nanda" and run.task == TASK and run.alpha == 1.0
    assert run.steps == [0, 100, 200, 300]
    assert run.cfg.attention_dir == "causal" and run.cfg.act_fn == "relu"
    assert run.cfg.seed is None  # a seeded config would reseed the global RNGs on every model built
    assert_same_logits(run, models)
    assert run.train_indices.tolist() == nanda_split_reference(TASK.p, 0.3, 7)
    assert run.log["step"] == list(range(0, 300, 10))
    assert run.log["train_loss"][3] == pytest.approx(1.0 / 31) and run.log["test_loss"][3] == pytest.approx(2.0 / 31)
    assert "op" in run.config["inferred"] or run.task.op == "add"
    assert json.dumps(run.config)  # JSON-safe, torch.device included


@pytest.mark.parametrize("wrapper", ["bare", "model", "init"])
def test_nanda_single_model(tmp_path, wrapper):
    model = make_model(5, attention_biases=False)
    state = nanda_state(model)
    pairs = [(a, b, TASK.p) for a in range(TASK.p) for b in range(TASK.p)][::3]
    obj = {"bare": state, "model": {"model": state, "train_loss": 0.1, "test_loss": 0.2, "epoch": 1500},
           "init": {"model": state, "train_data": pairs, "test_data": []}}[wrapper]
    path = str(tmp_path / "1500.pth")
    torch.save(obj, path)
    assert detect(path) == "nanda"
    run = load(path)
    assert run.steps == ([1500] if wrapper == "model" else [0])
    assert_same_logits(run, [model])
    expected_split = sorted(a * TASK.p + b for a, b, _ in pairs) if wrapper == "init" else None
    assert (run.train_indices.tolist() if run.train_indices is not None else None) == expected_split
    assert run.config["inferred"]["op"].startswith("add (default")


def test_nanda_gelu_config(tmp_path):
    model = make_model(6, act_fn="gelu", attention_biases=False)
    config = nanda_config_dict(TASK, model, act_type="GeLU")
    torch.save({"state_dicts": [nanda_state(model)], "epochs": [0], "config": config, "train_losses": [1.0],
                "test_losses": [1.0]}, tmp_path / "run.pth")
    run = load_run(tmp_path / "run.pth")
    assert run.cfg.act_fn == "gelu" and "act_fn" not in run.config["inferred"]
    assert_same_logits(run, [model])


def test_nanda_per_epoch_folder(tmp_path):
    models = [make_model(seed, attention_biases=False) for seed in (11, 12, 13, 14)]
    pairs = [(a, b, TASK.p) for a in range(TASK.p) for b in range(TASK.p)][1::4]
    torch.save({"model": nanda_state(models[0]), "train_data": pairs, "test_data": []}, tmp_path / "init.pth")
    for epoch, model in zip((0, 100, 200), models[:3]):
        torch.save({"model": nanda_state(model), "train_loss": 0.5, "test_loss": 0.5, "epoch": epoch},
                   tmp_path / f"{epoch}.pth")
    torch.save({"model": nanda_state(models[3]), "train_losses": [0.1] * 300, "test_losses": [0.2] * 300,
                "epoch": 300}, tmp_path / "final.pth")
    assert detect(tmp_path) == "nanda"
    run = load_run(tmp_path)
    assert run.steps == [0, 100, 200, 300]
    assert run.checkpoint_paths[-1].endswith("final.pth")
    assert_same_logits(run, models)
    assert run.train_indices.tolist() == sorted(a * TASK.p + b for a, b, _ in pairs)


def test_nanda_split_reconstruction():
    """[N23]: 30% of the p = 113 grid with seed 0 is 3830 rows, and exactly the code's rows."""
    rows = nanda.train_indices(113, 0.3, seed=0)
    assert rows.shape == (3830,)
    assert rows.tolist() == nanda_split_reference(113, 0.3, 0)
    assert rows[:5].tolist() == [23, 28, 29, 32, 37]  # pinned: Python's random is stable across versions
    assert int(rows.sum()) == 24672933


# ----- TransformerLens state dicts -------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_transformer_lens_file_with_config(tmp_path, suffix):
    task = Task(p=23, op="sub")
    model = make_model(21, task, alpha=0.5)
    config = {**tl_fields(model), "task": {"p": 23, "op": "sub"}, "attention_rate": 0.5,
              "train_indices": [5, 1, 3]}
    path = write_tl(str(tmp_path / f"model{suffix}"), model, config)
    assert detect(path) == "transformer_lens"
    run = load_run(path)
    assert run.task == task and run.alpha == 0.5 and run.train_indices.tolist() == [1, 3, 5]
    assert run.config["inferred"].get("op") is None and run.config["config_file"].endswith("model.json")
    assert_same_logits(run, [model], task)


def test_transformer_lens_without_config_infers(tmp_path):
    model = make_model(22)
    path = write_tl(str(tmp_path / "ckpt.pt"), model)
    run = load_run(path)
    assert run.task == TASK and run.alpha == 1.0 and run.train_indices is None
    assert set(run.config["inferred"]) >= {"p", "op", "act_fn", "attention_dir"}
    assert_same_logits(run, [model])


def test_transformer_lens_extra_output_class_dropped(tmp_path):
    """W_U with an ``=`` output (d_vocab_out = p + 1): the extra logit is dropped, the rest unchanged."""
    model = make_model(23)
    state = parameter_state_dict(model)
    state["unembed.W_U"] = torch.cat([state["unembed.W_U"], torch.randn(model.cfg.d_model, 1)], dim=1)
    state["unembed.b_U"] = torch.cat([state["unembed.b_U"], torch.ones(1)])
    with pickled_config_class():
        cfg = hooked_config(model, d_vocab_out=TASK.p + 1)  # as the model was trained
        torch.save({"model": state, "config": cfg}, tmp_path / "model.pt")
    run = load_run(tmp_path / "model.pt")
    assert run.cfg.d_vocab_out == 23 and "d_vocab_out" in run.config["inferred"]
    assert_same_logits(run, [model])


def test_transformer_lens_two_token_layout(tmp_path):
    """[Z23]-style tokens [a, b] with b's own ids, bidirectional attention, from the JSON config."""
    task = Task(p=23, eq_token=False, diff_vocab=True)
    model = make_model(24, task, n_layers=2, alpha=0.25)
    config = {**tl_fields(model), "alpha": 0.25}
    path = write_tl(str(tmp_path / "m.safetensors"), model, config)
    run = load_run(path)
    assert run.task == task and run.cfg.attention_dir == "bidirectional" and run.alpha == 0.25
    assert_same_logits(run, [model], task)


def test_transformer_lens_folder_run(tmp_path):
    models = [make_model(seed) for seed in (31, 32, 33)]
    for step, model in zip((0, 50, 1000), models):
        save_file(parameter_state_dict(model), str(tmp_path / f"step_{step}.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model": tl_fields(models[0]), "task": {"p": 23}}))
    (tmp_path / "log.csv").write_text("step,train_loss,test_loss\n0,4.5,4.6\n50,0.1,5.0\n1000,1e-7,2e-7\n")
    assert detect(tmp_path) == "transformer_lens"
    run = load_run(tmp_path)
    assert run.steps == [0, 50, 1000] and len(run.checkpoint_paths) == 3
    assert run.log == {"step": [0, 50, 1000], "train_loss": [4.5, 0.1, 1e-7], "test_loss": [4.6, 5.0, 2e-7]}
    assert_same_logits(run, models)
    # lazy: the run holds no weights, a checkpoint is read from its file when asked for
    replacement = make_model(34)
    save_file(parameter_state_dict(replacement), str(tmp_path / "step_50.safetensors"))
    assert_same_logits(run, [models[0], replacement, models[2]])


# ----- the TransformerLens grokking-demo bundle ------------------------------------------------

def _demo_bundle(models, cfg):
    generator = torch.Generator().manual_seed(598)
    indices = torch.randperm(TASK.n_inputs, generator=generator)
    cutoff = int(TASK.n_inputs * 0.3)
    return {"model": hooked_state_dict(models[-1]), "config": cfg,
            "checkpoints": [hooked_state_dict(m) for m in models],
            "checkpoint_epochs": [99, 199, 299], "train_losses": [0.1] * 300, "test_losses": [0.2] * 300,
            "train_indices": indices[:cutoff], "test_indices": indices[cutoff:]}


def test_tl_demo_bundle(tmp_path):
    """The bundle's config is a pickled TransformerLens 3.x HookedTransformerConfig, a class 4.x lacks."""
    models = [make_model(seed, attention_biases=False) for seed in (41, 42, 43)]
    path = str(tmp_path / "grokking_demo.pth")
    with pickled_config_class():
        bundle = _demo_bundle(models, hooked_config(models[0]))
        torch.save(bundle, path)
    assert f"{TL3_CONFIG_MODULE}\nHookedTransformerConfig".encode() in open(path, "rb").read()
    assert detect(path) == "tl_demo"
    run = load_run(path)
    assert run.format == "tl_demo" and run.steps == [99, 199, 299] and run.task == TASK
    assert run.train_indices.tolist() == sorted(bundle["train_indices"].tolist())
    assert run.test_indices.tolist() == sorted(bundle["test_indices"].tolist())
    assert len(run.log["step"]) == 300
    assert_same_logits(run, models)


def test_tl_demo_bundle_from_older_transformer_lens(tmp_path):
    """Configs pickled by TransformerLens 1.x/2.x name the class transformer_lens.HookedTransformerConfig."""
    old = "transformer_lens.HookedTransformerConfig"
    models = [make_model(seed, attention_biases=False) for seed in (44, 45, 46)]
    path = str(tmp_path / "old_demo.pth")
    with pickled_config_class(old):
        torch.save(_demo_bundle(models, hooked_config(models[0], old)), path)
    assert b"transformer_lens.HookedTransformerConfig" in open(path, "rb").read()
    assert_same_logits(load_run(path), models)


# ----- detection and folders -------------------------------------------------------------------

def test_formats_are_described():
    assert set(FORMATS) == {"native", "pizza_release", "transformer_lens", "nanda", "tl_demo", "collection"}
    assert all(isinstance(text, str) and len(text) > 20 for text in FORMATS.values())


def test_collection_of_models_and_runs(tmp_path):
    models = [make_model(seed, attention_biases=False) for seed in (51, 52, 53)]
    write_tl(str(tmp_path / "b_model.safetensors"), models[0])
    torch.save({"model": nanda_state(models[1])}, tmp_path / "a_model.pth")
    (tmp_path / "run_10").mkdir()
    torch.save({"state_dicts": [nanda_state(models[2])], "epochs": [0]}, tmp_path / "run_10" / "run.pth")
    (tmp_path / "grokscope").mkdir()  # analysis outputs are never read as a model
    (tmp_path / "grokscope" / "summary.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not a model")
    assert detect(tmp_path) == "collection"
    runs = load_runs(tmp_path)
    assert [os.path.basename(r.source) for r in runs] == ["a_model.pth", "b_model.safetensors", "run.pth"]
    assert [r.format for r in runs] == ["nanda", "transformer_lens", "nanda"]
    for run, model in zip(runs, (models[1], models[0], models[2])):
        assert_same_logits(run, [model])
    assert isinstance(load(tmp_path), list)
    assert load_runs(tmp_path / "a_model.pth")[0].source == runs[0].source


def test_pizza_release_is_detected_before_the_nanda_layout():
    """The [Z23] release uses [N23]-style keys: its config beside the file makes it the release."""
    folder = os.path.join(os.path.dirname(__file__), "fixtures", "pizza")
    assert detect(os.path.join(folder, "model_p99zdpze5l.pt")) == "pizza_release"
    assert detect(folder) == "pizza_release"
    assert not nanda.matches(os.path.join(folder, "model_p99zdpze5l.pt"))


def test_native_run_is_detected_alone_and_in_a_collection(tiny_run_dir, tmp_path):
    assert detect(tiny_run_dir) == "native" and detect(tiny_run_dir / "checkpoints") == "native"
    run = load_run(tiny_run_dir)
    assert run.format == "native" and run.task.p == 13 and len(run.steps) > 1
    shutil.copytree(tiny_run_dir, tmp_path / "native_run")
    model = make_model(61)
    write_tl(str(tmp_path / "z_model.safetensors"), model)
    runs = load_runs(tmp_path)
    assert [r.format for r in runs] == ["native", "transformer_lens"]
    assert runs[0].steps == run.steps
    assert_same_logits(runs[1], [model])
