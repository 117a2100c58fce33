"""The TransformerLens boundary: the same models, logits and hook values on the 3.x and the 4.x line.

Ground truth: references computed once with TransformerLens 3.x (``tl_reference.py``), TransformerLens's
own per-head weight views, and analytic facts (a bias shifts the logits by itself). The suite runs on
both lines (``scripts/test.sh``); tests that only make sense on one line say so.
"""

import ast
import importlib.metadata
import math
import pathlib

import pytest
import torch
from tl_reference import CASES, N_HOOK_ROWS, compute, hook_names, load_reference

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.models import (build_model, final_logits, initial_state, nanda_config, parameter_state_dict,
                              pizza_config)
from grokscope.tasks import Task

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "grokscope"

RTOL = 1e-5
"""float32 matmuls in another kernel or summation order (the other line, another CPU) agree to a few
ulps of the largest term; 1e-5 of each tensor's largest entry leaves a wide margin above that."""


def assert_matches(got: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    scale = float(reference.abs().max()) if reference.numel() else 1.0
    torch.testing.assert_close(got, reference, rtol=RTOL, atol=RTOL * max(scale, 1.0), msg=what)


# ----- which line, and one place that knows it ----------------------------------------------------

def test_the_installed_line_is_detected():
    major = int(importlib.metadata.version("transformer-lens").split(".")[0])
    assert backend.LINE == major and backend.VERSION == importlib.metadata.version("transformer-lens")
    model = build_model(nanda_config(Task(p=23), d_model=16, seed=0))
    assert type(model).__name__ == {3: "HookedTransformer", 4: "TransformerBridge"}[backend.LINE]
    if backend.LINE == 4:  # the removed names raise ImportError (so hasattr is no test of the line)
        with pytest.raises(ImportError, match="removed in TransformerLens 4.0"):
            from transformer_lens import HookedTransformer  # noqa: F401


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_backend_imports_transformer_lens():
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if "transformer_lens" in _imports(path))
    assert importers == ["backend.py"]
    # compatibility mode processes (changes) the weights: grokscope never turns it on
    assert not any("enable_compatibility_mode()" in path.read_text(encoding="utf-8")
                   .replace("``enable_compatibility_mode()``", "") for path in PACKAGE.rglob("*.py"))


# ----- stored references: every built configuration, every checkpoint layout --------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_hooks_match_the_stored_reference(name):
    """Recomputed on the installed line, compared with the values TransformerLens 3.x gave."""
    reference = load_reference(name)
    got = compute(name)
    assert torch.equal(got["rows"], reference["rows"])
    assert_matches(got["logits"], reference["logits"], f"{name}: logits")
    for key in (k for k in reference if k.startswith("hook.")):
        value, expected = got[key], reference[key]
        assert value.shape == expected.shape, key
        assert_matches(value, expected, f"{name}: {key}")


@pytest.mark.parametrize("name", ["preset_nanda", "pizza_alpha_half", "nanda_two_layer_gelu", "format_tl_demo",
                                  "format_pizza_two_layer"])
def test_final_logits_is_the_model_forward(name):
    """``final_logits == model(tokens)[:, -1]`` over the full grid, and equal to the stored logits."""
    model, task = CASES[name]()
    tokens = task.tokens()
    with torch.no_grad():
        full = model(tokens)[:, -1]
        fast = final_logits(model, tokens)
    assert_matches(fast, full, name)
    reference = load_reference(name)
    assert_matches(fast[reference["rows"]], reference["logits"], name)


def test_every_hook_of_a_case_is_stored():
    model, _ = CASES["nanda_two_layer_gelu"]()
    assert set(hook_names(model)) <= set(model.hook_dict)
    reference = load_reference("nanda_two_layer_gelu")
    assert {f"hook.{name}" for name in hook_names(model)} <= set(reference)
    assert reference["hook.blocks.1.mlp.hook_post"].shape == (N_HOOK_ROWS, 3, 64)


# ----- the weight format on either class ---------------------------------------------------------

def _seeded_state(cfg, seed=0):
    state = initial_state(cfg)
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=generator) * 0.3 for name, t in state.items()}


def test_the_weight_format_round_trips_and_matches_transformer_lens_own_views():
    cfg = nanda_config(Task(p=23), n_layers=2, d_model=24, n_heads=3, d_mlp=40)
    state = _seeded_state(cfg)
    model = build_model(cfg, 1.0, state)
    back = parameter_state_dict(model)
    assert list(back) == list(state)  # every name, b_U included, in HookedTransformer's order
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name  # loading and reading only copy
    # TransformerLens's own per-head views (W_Q ... on HookedTransformer, their compatibility views on
    # the bridge) agree with the backend's reading of the same model
    W = backend.weights(model)
    for layer, block in enumerate(model.blocks):
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            assert torch.equal(getattr(block.attn, name), W[f"blocks.{layer}.attn.{name}"]), name
        for name in ("W_in", "b_in", "W_out", "b_out"):
            assert torch.equal(getattr(block.mlp, name), W[f"blocks.{layer}.mlp.{name}"]), name
    assert torch.equal(model.W_E, W["embed.W_E"]) and torch.equal(model.W_U, W["unembed.W_U"])


def test_one_tensor_converts_to_the_weight_format():
    cfg = nanda_config(Task(p=23), d_model=24, n_heads=3, d_mlp=40)
    state = _seeded_state(cfg, 1)
    model = build_model(cfg, 1.0, state)
    for name, param in backend.parameters(model).items():  # the line's own layout back to what was loaded
        hooked = backend.to_hooked(name, param.detach(), cfg)
        assert tuple(hooked.shape) == backend.hooked_shapes(cfg)[name], name
        assert torch.equal(hooked, state[name]), name


def test_a_seed_gives_the_same_model_and_transformer_lens_3_init():
    cfg = nanda_config(Task(p=23), d_model=32, d_mlp=64, seed=11)
    first, second = parameter_state_dict(build_model(cfg)), initial_state(cfg)
    assert all(torch.equal(first[name], second[name]) for name in first)
    std = cfg.initializer_range  # 0.8 / sqrt(d_model) ("gpt2" init), biases zero
    assert std == pytest.approx(0.8 / math.sqrt(32), rel=1e-12)
    assert float(first["blocks.0.mlp.W_in"].std()) == pytest.approx(std, rel=0.05)  # 2048 draws: 3 sigma ~ 5%
    assert all(float(first[name].abs().max()) == 0.0 for name in first if name.split(".")[-1].startswith("b_"))
    if backend.LINE == 3:  # exactly what HookedTransformer(cfg) draws (same generator, same order)
        with torch.random.fork_rng(devices=[]):
            own = backend.Model(cfg)
        assert all(torch.equal(param, first[name]) for name, param in own.named_parameters())


def test_training_parameters_and_the_fixed_unembedding_bias():
    task = Task(p=23)
    cfg = nanda_config(task, d_model=16, n_heads=2, d_mlp=32)
    state = _seeded_state(cfg, 2)
    model = build_model(cfg, 1.0, state)
    params = backend.parameters(model)
    expected = set(state) - ({"unembed.b_U"} if backend.LINE == 4 else set())  # a fixed buffer on the bridge
    assert set(params) == expected and all(isinstance(p, torch.nn.Parameter) for p in params.values())
    # the bias still counts: without it every logit moves by exactly -b_U
    no_bias = build_model(cfg, 1.0, {**state, "unembed.b_U": torch.zeros(task.p)})
    with torch.no_grad():
        shift = final_logits(model, task.tokens()) - final_logits(no_bias, task.tokens())
    torch.testing.assert_close(shift, state["unembed.b_U"].expand_as(shift), rtol=0, atol=1e-5)  # float32 sums
    # gradients reach every trainable parameter through final_logits
    loss = final_logits(model, task.tokens()).square().mean()
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in params.values())


def test_attention_scale_is_sqrt_d_head_on_both_lines():
    cfg = pizza_config(Task(p=23, eq_token=False), d_model=32, n_heads=2, d_head=8)
    assert backend.attention_scale(cfg) == pytest.approx(math.sqrt(8), rel=1e-12)
    if backend.LINE == 4:
        assert cfg.attn_scale == -1  # the bridge's config keeps the sentinel


def test_gelu_fast_is_refused_on_4x_only():
    task = Task(p=23)
    if backend.LINE == 4:
        with pytest.raises(GrokscopeError, match="act_fn 'gelu_fast'.*gelu_fast needs TransformerLens 3.x"):
            nanda_config(task, d_model=16, act_fn="gelu_fast")
        with pytest.raises(GrokscopeError, match="gelu_fast"):
            backend.make_config(n_layers=1, d_model=16, n_heads=4, d_head=4, d_mlp=64, act_fn="gelu_fast",
                                d_vocab=24, d_vocab_out=23, n_ctx=3, normalization_type=None)
        return
    model = build_model(nanda_config(task, d_model=16, act_fn="gelu_fast", seed=0))
    with torch.no_grad():
        assert_matches(final_logits(model, task.tokens()), model(task.tokens())[:, -1], "gelu_fast")


def test_unknown_config_fields_are_named():
    with pytest.raises(GrokscopeError, match=r"make_config: found model fields \['n_layer'\]"):
        backend.make_config(n_layer=1, d_model=16, n_heads=4, d_head=4, n_ctx=3)


def test_the_resume_state_is_in_the_weight_format(tmp_path, monkeypatch):
    """Parameters and AdamW moments are saved under HookedTransformer names and shapes on both lines, so
    an interrupted run resumes on either line."""
    from grokscope import checkpoints as ck
    from grokscope.training import TrainConfig, train

    config = TrainConfig(p=23, d_model=16, n_heads=2, d_mlp=32, epochs=20, checkpoint_every=10, log_every=10,
                         checkpoint_per_decade=0, seed=4)

    class Stop(Exception):
        pass

    real_save = ck.save_tensors

    def save_then_stop(path, tensors, metadata=None):
        real_save(path, tensors, metadata=metadata)
        if pathlib.Path(path).name == ck.RESUME_FILE:
            raise Stop

    monkeypatch.setattr(ck, "save_tensors", save_then_stop)
    with pytest.raises(Stop):
        train(config, tmp_path / "run", progress=False)
    tensors, metadata = ck.load_tensors(tmp_path / "run" / ck.RESUME_FILE)
    assert metadata["step"] == "0"  # the first checkpoint step
    shapes = backend.hooked_shapes(config.model_config())
    assert {k.removeprefix("param.") for k in tensors if k.startswith("param.")} == set(shapes)
    moments = 0
    for key, tensor in tensors.items():
        for prefix in ("param.", "adam.exp_avg.", "adam.exp_avg_sq."):
            if key.startswith(prefix):
                assert tuple(tensor.shape) == shapes[key.removeprefix(prefix)], key
                moments += prefix != "param."
    trainable = [name for name in shapes if not name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_U"))]
    assert moments == 2 * len(trainable)
    monkeypatch.setattr(ck, "save_tensors", real_save)
    resumed = train(config, tmp_path / "run", progress=False)
    reference = train(config, tmp_path / "reference", progress=False)
    for name, tensor in reference.state_dict(-1).items():  # the same machine and thread count: bitwise
        assert torch.equal(resumed.state_dict(-1)[name], tensor), name
