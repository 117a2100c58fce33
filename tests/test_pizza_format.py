"""The Clock-and-Pizza release reader [Z23] on the six released models and on files written in that layout.

Ground truth: ``release_forward`` below, a float64 forward pass written from the release layout's own
description (plain torch on the original state dict, no TransformerLens): columns of W_E are tokens,
W_Q/K/V are (heads, d_head, d_model), W_O is (d_model, heads*d_head) head-major, scores / sqrt(d_head)
with no mask, pattern = alpha * softmax + (1 - alpha), MLP with biases, exact GeLU, logits at the last
position over every input id.
"""

import copy
import json
import math
import os
import shutil

import pytest
import torch

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.formats import pizza
from grokscope.models import build_model, final_logits
from grokscope.tasks import Task

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pizza")
IDS = ["p99zdpze5l", "l8k1hzciux", "18c9ev5v5p", "h9m153uuh9", "dy65ktpiij", "f5dh675z97"]
ATOL = 1e-6


def model_path(run_id: str, folder: str = FIXTURES) -> str:
    return os.path.join(folder, f"model_{run_id}.pt")


def release_config(run_id: str, folder: str = FIXTURES) -> dict:
    with open(os.path.join(folder, f"config_{run_id}.json")) as handle:
        return json.load(handle)


def release_forward(state: dict, config: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits at the last position for every input id, float64, in the release's own conventions."""
    w = {k: v.double() for k, v in state.items()}
    alpha = float(config["attn_coeff"])
    x = w["embed.W_E"][:, tokens].permute(1, 2, 0) + w["pos_embed.W_pos"][: tokens.shape[1]]
    for layer in range(config.get("n_layers", 1)):
        b = f"blocks.{layer}."
        q, k, v = (torch.einsum("hed,bpd->bhpe", w[b + f"attn.W_{n}"], x) for n in "QKV")
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(q.shape[-1])
        pattern = alpha * scores.softmax(dim=-1) + (1 - alpha)
        z = torch.einsum("bhqk,bhke->bqhe", pattern, v).flatten(2)   # heads major, then d_head
        x = x + z @ w[b + "attn.W_O"].T
        pre = x @ w[b + "mlp.W_in"].T + w[b + "mlp.b_in"]
        post = torch.relu(pre) if config["act_fn"] == "ReLU" else torch.nn.functional.gelu(pre)
        x = x + post @ w[b + "mlp.W_out"].T + w[b + "mlp.b_out"]
    return (x @ w["unembed.W_U"])[:, -1]


def release_tokens(config: dict) -> torch.Tensor:
    """The release's own grid: [a, b (+p with diff_vocab)] (+ [vocab - 1] with eqn_sign), a-major."""
    p = config["C"]
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    vocab = p * (2 if config.get("diff_vocab") else 1) + (1 if config.get("eqn_sign") else 0)
    columns = [a, b + (p if config.get("diff_vocab") else 0)]
    if config.get("eqn_sign"):
        columns.append(torch.full_like(a, vocab - 1))
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("run_id", IDS)
def test_converted_model_matches_the_release_forward_pass(run_id):
    """Every logit of the grid, float64, for 1 and 2 layers, diff_vocab and GeLU."""
    run = pizza.read_model(model_path(run_id))
    config = release_config(run_id)
    state = torch.load(model_path(run_id), weights_only=True, map_location="cpu")
    expected = release_forward(state, config, release_tokens(config))
    p = config["C"]
    assert torch.equal(run.task.tokens(), release_tokens(config))
    model = run.model().double()
    with torch.no_grad():
        full = model(run.task.tokens())[:, -1]
        fast = final_logits(model, run.task.tokens())
    assert full.shape == (p * p, p)
    torch.testing.assert_close(full, expected[:, :p], atol=ATOL, rtol=0)
    torch.testing.assert_close(fast, expected[:, :p], atol=ATOL, rtol=0)
    # the dropped outputs (ids p.. with diff_vocab) never win the release's own argmax
    assert bool((expected.argmax(dim=1) < p).all())


def test_the_test_can_tell_exact_from_tanh_gelu_and_a_causal_mask():
    """The equality above is sharp enough to catch the two easy mistakes of a conversion."""
    config = release_config("dy65ktpiij")
    state = torch.load(model_path("dy65ktpiij"), weights_only=True, map_location="cpu")
    expected = release_forward(state, config, release_tokens(config))[:, :59]
    run = pizza.read_model(model_path("dy65ktpiij"))
    assert run.cfg.act_fn == "gelu"
    tanh_cfg = copy.deepcopy(run.cfg)
    tanh_cfg.act_fn = "gelu_new"
    tanh_model = backend.to_dtype(build_model(tanh_cfg, run.alpha, run.state_dict()), torch.float64)
    assert (final_logits(tanh_model, run.task.tokens()).detach() - expected).abs().max() > 1e-3
    two_layer = pizza.read_model(model_path("h9m153uuh9"))
    assert two_layer.cfg.attention_dir == "bidirectional"
    causal_cfg = copy.deepcopy(two_layer.cfg)
    causal_cfg.attention_dir = "causal"
    causal = backend.to_dtype(build_model(causal_cfg, two_layer.alpha, two_layer.state_dict()), torch.float64)
    config2 = release_config("h9m153uuh9")
    state2 = torch.load(model_path("h9m153uuh9"), weights_only=True, map_location="cpu")
    expected2 = release_forward(state2, config2, release_tokens(config2))[:, :59]
    with torch.no_grad():
        assert (causal(two_layer.task.tokens())[:, -1] - expected2).abs().max() > 1e-4


@pytest.mark.parametrize("run_id,layers,d_model,d_head,act,diff_vocab", [
    ("p99zdpze5l", 1, 128, 32, "relu", False), ("18c9ev5v5p", 1, 128, 32, "relu", True),
    ("h9m153uuh9", 2, 128, 32, "relu", False), ("dy65ktpiij", 1, 128, 32, "gelu", False),
    ("f5dh675z97", 1, 86, 21, "relu", False)])
def test_run_metadata(run_id, layers, d_model, d_head, act, diff_vocab):
    run = pizza.read_model(model_path(run_id))
    config = release_config(run_id)
    assert run.format == "pizza_release" and run.steps == [20000] and len(run) == 1
    assert run.train_indices is None and run.test_indices is None and run.log is None
    assert run.config == config and run.alpha == pytest.approx(config["attn_coeff"], abs=0)
    assert run.task == Task(p=59, op="add", eq_token=False, diff_vocab=diff_vocab)
    cfg = run.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_head, cfg.n_heads, cfg.d_mlp, cfg.act_fn, cfg.n_ctx) == \
        (layers, d_model, d_head, 4, 4 * d_model, act, 2)
    assert (cfg.d_vocab, cfg.d_vocab_out) == (118 if diff_vocab else 59, 59)
    assert run.checkpoint_paths == [model_path(run_id)] and run.source == model_path(run_id)


def test_read_folder_sorts_by_id_and_matches():
    runs = pizza.read_folder(FIXTURES)
    assert [os.path.basename(r.source) for r in runs] == [f"model_{i}.pt" for i in sorted(IDS)]
    assert pizza.matches(FIXTURES) and pizza.matches(model_path("p99zdpze5l"))
    assert not pizza.matches(os.path.join(FIXTURES, "config_p99zdpze5l.json"))
    assert not pizza.matches(os.path.join(FIXTURES, "README.md"))
    assert not pizza.matches(os.path.dirname(FIXTURES))  # no pairs directly inside


# ----- files written in the release layout ---------------------------------------------------------

def write_release_model(folder, run_id: str, *, p: int = 7, d_model: int = 8, n_heads: int = 2,
                        n_layers: int = 1, act: str = "ReLU", diff_vocab: bool = False,
                        eqn_sign: bool = False, alpha: float = 0.3, seed: int = 0, **config_extra) -> str:
    """A random model in the release layout (the release's own shapes and names), with its config."""
    generator = torch.Generator().manual_seed(seed)
    vocab = p * (2 if diff_vocab else 1) + (1 if eqn_sign else 0)
    n_ctx, d_head, d_mlp = 3 if eqn_sign else 2, d_model // n_heads, 4 * d_model

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    state = {"embed.W_E": rand(d_model, vocab), "pos_embed.W_pos": rand(n_ctx, d_model),
             "unembed.W_U": rand(d_model, vocab)}
    for layer in range(n_layers):
        b = f"blocks.{layer}."
        for name in ("W_K", "W_Q", "W_V"):
            state[b + f"attn.{name}"] = rand(n_heads, d_head, d_model)
        state.update({b + "attn.W_O": rand(d_model, n_heads * d_head),
                      b + "attn.mask": torch.tril(torch.ones(n_ctx, n_ctx)),
                      b + "mlp.W_in": rand(d_mlp, d_model), b + "mlp.b_in": rand(d_mlp),
                      b + "mlp.W_out": rand(d_model, d_mlp), b + "mlp.b_out": rand(d_model)})
    config = {"name": f"modadd_{p}", "funcs": f"lambda x: (x[0]+x[1])%{p}", "C": p, "n_heads": n_heads,
              "d_model": d_model, "n_layers": n_layers, "attention_dir": "casual", "act_fn": act, "epoch": 123,
              "attn_coeff": alpha, "runid": run_id, "diff_vocab": int(diff_vocab), "eqn_sign": int(eqn_sign),
              "func": None, **config_extra}
    torch.save(state, os.path.join(folder, f"model_{run_id}.pt"))
    with open(os.path.join(folder, f"config_{run_id}.json"), "w") as handle:
        json.dump(config, handle)
    return os.path.join(folder, f"model_{run_id}.pt")


@pytest.mark.parametrize("diff_vocab,eqn_sign,act,n_layers", [
    (False, True, "ReLU", 1), (True, True, "GeLU", 2), (True, False, "ReLU", 2), (False, False, "GeLU", 1)])
def test_written_layouts_round_trip(tmp_path, diff_vocab, eqn_sign, act, n_layers):
    path = write_release_model(tmp_path, "abc", diff_vocab=diff_vocab, eqn_sign=eqn_sign, act=act,
                               n_layers=n_layers)
    run = pizza.read_model(path)
    assert run.task == Task(p=7, eq_token=eqn_sign, diff_vocab=diff_vocab) and run.steps == [123]
    config = release_config("abc", str(tmp_path))
    assert torch.equal(run.task.tokens(), release_tokens(config))
    expected = release_forward(torch.load(path, weights_only=True), config, release_tokens(config))
    got = final_logits(run.model().double(), run.task.tokens()).detach()
    torch.testing.assert_close(got, expected[:, :7], atol=ATOL, rtol=0)


def test_funcs_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    path = write_release_model(tmp_path, "evil", funcs=f"__import__('pathlib').Path({str(marker)!r}).touch()")
    with pytest.raises(GrokscopeError, match="funcs"):
        pizza.read_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("funcs,op", [("lambda x: (x[0]+x[1])%7", "add"), ("lambda x:(x[0] - x[1]) % 7", "sub"),
                                      ("lambda x: (x[0]*x[1])%7", "mul"), (None, "add")])
def test_funcs_text_is_matched_not_run(tmp_path, funcs, op):
    path = write_release_model(tmp_path, "op", funcs=funcs)
    assert pizza.read_model(path).task.op == op


@pytest.mark.parametrize("funcs", ["lambda x: (x[0]+x[1])%11", "lambda x: (x[0]**2+x[1])%7"])
def test_other_funcs_are_refused(tmp_path, funcs):
    with pytest.raises(GrokscopeError, match="never evaluated"):
        pizza.read_model(write_release_model(tmp_path, "op", funcs=funcs))


@pytest.mark.parametrize("change,needle", [
    ("no_config", "config_bad.json: found no such file"),
    ("bad_json", "unreadable JSON"),
    ("missing_key", "no keys ['C']"),
    ("tanh", "act_fn 'Tanh'"),
    ("linear", "use_linear"),
    ("not_prime", "p = 8"),
    ("shape", "blocks.0.mlp.W_in of shape (16, 8)"),
    ("drop_key", "missing ['blocks.0.attn.W_V']"),
    ("extra_layer", "missing ['blocks.1."),
    ("not_a_dict", "a list"),
    ("garbage", "model_bad.pt"),
])
def test_errors_name_the_file_and_the_problem(tmp_path, change, needle):
    path = write_release_model(tmp_path, "bad")
    config_path = os.path.join(tmp_path, "config_bad.json")
    config = release_config("bad", str(tmp_path))
    state = torch.load(path, weights_only=True)
    if change == "no_config":
        os.remove(config_path)
    elif change == "bad_json":
        with open(config_path, "w") as handle:
            handle.write("{not json")
    elif change in ("missing_key", "tanh", "linear", "not_prime", "extra_layer"):
        edits = {"missing_key": {}, "tanh": {"act_fn": "Tanh"}, "linear": {"use_linear": True},
                 "not_prime": {"C": 8, "funcs": "lambda x: (x[0]+x[1])%8"},
                 "extra_layer": {"n_layers": 2}}[change]
        config.update(edits)
        if change == "missing_key":
            del config["C"]
        with open(config_path, "w") as handle:
            json.dump(config, handle)
    elif change == "shape":
        state["blocks.0.mlp.W_in"] = torch.zeros(16, 8)
        state["blocks.0.mlp.b_in"] = torch.zeros(16)
        torch.save(state, path)
    elif change == "drop_key":
        del state["blocks.0.attn.W_V"]
        torch.save(state, path)
    elif change == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    elif change == "garbage":
        with open(path, "wb") as handle:
            handle.write(b"\x00not a checkpoint")
    with pytest.raises(GrokscopeError) as error:
        pizza.read_model(path)
    message = str(error.value)
    assert needle in message
    assert "model_bad.pt" in message or "config_bad.json" in message


def test_folder_without_pairs_is_refused(tmp_path):
    shutil.copy(model_path("p99zdpze5l"), tmp_path / "model_lonely.pt")
    assert not pizza.matches(tmp_path)
    with pytest.raises(GrokscopeError, match="no model_<id>.pt with a config_<id>.json"):
        pizza.read_folder(tmp_path)
