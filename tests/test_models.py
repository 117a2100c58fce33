"""Models: the fast read-out path equals the TransformerLens model's own forward; the attention rate."""

import math

import pytest
import torch

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.models import (attention_rate, build_model, cross_entropy_f64, final_logits, load_weights,
                              nanda_config, parameter_state_dict, pizza_config, set_attention_rate)
from grokscope.tasks import Task


def _float64_model(n_layers, act_fn, attention_dir, alpha, eq_token=True, seed=0):
    task = Task(p=11, eq_token=eq_token)
    cfg = nanda_config(task, n_layers=n_layers, d_model=32, n_heads=4, act_fn=act_fn, seed=seed,
                       attention_dir=attention_dir)
    state = parameter_state_dict(build_model(cfg, alpha))
    generator = torch.Generator().manual_seed(seed + 1)
    for name, tensor in state.items():  # non-zero biases, so that every term of the forward is exercised
        if name.split(".")[-1].startswith("b_"):
            state[name] = 0.1 * torch.randn(tensor.shape, generator=generator)
    return backend.to_dtype(build_model(cfg, alpha, state), torch.float64), task


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("attention_dir", ["causal", "bidirectional"])
@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_final_logits_equals_the_full_forward(n_layers, act_fn, attention_dir, alpha):
    model, task = _float64_model(n_layers, act_fn, attention_dir, alpha)
    tokens = task.tokens()
    expected, cache = model.run_with_cache(tokens)
    logits, post = final_logits(model, tokens, return_post=True)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, expected[:, -1], rtol=0, atol=1e-10)
    torch.testing.assert_close(post, cache[f"blocks.{n_layers - 1}.mlp.hook_post"][:, -1], rtol=0, atol=1e-10)
    # the [Z23] attention rate really is applied: (1 - alpha) is added to all n_ctx entries of a row
    row_sums = cache["blocks.0.attn.hook_pattern"].sum(-1)
    expected_sum = alpha + (1.0 - alpha) * task.n_ctx
    torch.testing.assert_close(row_sums, torch.full_like(row_sums, expected_sum), rtol=0, atol=1e-12)


@pytest.mark.parametrize("eq_token", [True, False])
def test_final_logits_gradients_equal_the_full_forward(eq_token):
    model, task = _float64_model(2, "relu", "causal" if eq_token else "bidirectional", 0.3, eq_token=eq_token)
    tokens, labels = task.tokens(), task.labels()
    cross_entropy_f64(model(tokens)[:, -1], labels).backward()
    params = backend.parameters(model)
    assert len(params) >= 14  # every weight and bias of both layers (the bridge's b_U is a fixed buffer)
    expected = {name: param.grad.clone() for name, param in params.items()}
    model.zero_grad()
    cross_entropy_f64(final_logits(model, tokens), labels).backward()
    for name, param in params.items():
        torch.testing.assert_close(param.grad, expected[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_alpha_zero_gives_all_ones_patterns(n_layers):
    task = Task(p=7, eq_token=False)
    model = build_model(pizza_config(task, n_layers=n_layers, d_model=16, seed=0), alpha=0.0)
    _, cache = model.run_with_cache(task.tokens())
    for layer in range(n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (49, 4, 2, 2)
        assert torch.equal(pattern, torch.ones_like(pattern))
    assert attention_rate(model) == 0.0


def test_alpha_one_is_the_plain_softmax_and_can_be_reset():
    task = Task(p=7)
    model = build_model(nanda_config(task, d_model=16, seed=0), alpha=0.5)
    set_attention_rate(model, 1.0)
    _, cache = model.run_with_cache(task.tokens())
    pattern = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(49, 4, 3), rtol=0, atol=1e-6)
    assert (pattern[..., 0, 1:] == 0).all()  # causal: the first position sees itself only
    assert attention_rate(model) == 1.0


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_attention_rate_is_refused(alpha):
    model = build_model(nanda_config(Task(p=5), d_model=8, seed=0))
    with pytest.raises(GrokscopeError, match="attention rate"):
        set_attention_rate(model, alpha)


def test_nanda_shapes_and_zero_biases():
    task = Task(p=113)
    model = build_model(nanda_config(task, seed=0))
    state = parameter_state_dict(model)
    shapes = {name: tuple(p.shape) for name, p in state.items()}
    assert shapes["embed.W_E"] == (114, 128) and shapes["unembed.W_U"] == (128, 113)
    assert shapes["blocks.0.attn.W_Q"] == (4, 128, 32) and shapes["blocks.0.mlp.W_in"] == (128, 512)
    for name, param in state.items():
        if name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_U")):
            assert torch.count_nonzero(param) == 0, name
    assert not any(name.endswith(("mask", "IGNORE")) for name in parameter_state_dict(model))


def test_same_seed_same_init_and_state_dict_round_trip():
    task = Task(p=13)
    first = build_model(nanda_config(task, d_model=16, seed=4))
    second = build_model(nanda_config(task, d_model=16, seed=4), state_dict=parameter_state_dict(first))
    other = build_model(nanda_config(task, d_model=16, seed=5))
    second_state = parameter_state_dict(second)
    for name, param in parameter_state_dict(first).items():
        assert torch.equal(param, second_state[name])
    assert not torch.equal(first.W_E, other.W_E)


def test_load_weights_names_the_problem():
    task = Task(p=13)
    model = build_model(nanda_config(task, d_model=16, seed=0))
    state = parameter_state_dict(model)
    state["embed.W_E"] = state["embed.W_E"][:-1]
    with pytest.raises(GrokscopeError, match=r"embed.W_E of shape \(13, 16\).*expected shape \(14, 16\)"):
        load_weights(model, state)
    del state["embed.W_E"]
    with pytest.raises(GrokscopeError, match="missing \\['embed.W_E'\\]"):
        load_weights(model, state)


def test_cross_entropy_f64_matches_a_direct_sum():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 30.0, 0.0]])
    labels = torch.tensor([0, 1])
    direct = [-(2.0 - math.log(math.exp(2.0) + 1 + math.exp(-1.0))), -(30.0 - math.log(math.exp(30.0) + 2))]
    loss = cross_entropy_f64(logits, labels)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(sum(direct) / 2, rel=1e-12)
    assert direct[1] == pytest.approx(2 * math.exp(-30.0), rel=1e-6)  # float64 keeps such tiny losses


def test_layernorm_models_are_refused():
    cfg = nanda_config(Task(p=5), d_model=8, seed=0)
    model = build_model(cfg)
    model.cfg.normalization_type = "LN"  # as a model built elsewhere would have it
    with pytest.raises(GrokscopeError, match="final_logits: found normalization_type=LN"):
        final_logits(model, Task(p=5).tokens())
    cfg.normalization_type = "LN"
    with pytest.raises(GrokscopeError, match="build_model: found normalization_type=LN"):
        build_model(cfg)
