"""HookedTransformer configs and builders for modular arithmetic, the attention rate, and a fast path.

Two recipes (SCIENCE.md section 5):
- [N23] Nanda et al. 2023: 1 layer, d_model 128, 4 heads of 32, d_mlp 512, ReLU, no LayerNorm, learned
  positions, tokens [a, b, =], causal attention.
- [Z23] Zhong et al. 2023: the same shapes, tokens [a, b], no causal mask, attention rate alpha.

The attention rate alpha ([Z23]) replaces every attention pattern by
``alpha * softmax(scores) + (1 - alpha)``: alpha = 1 is a standard transformer, alpha = 0 constant
attention (every entry one). It is a permanent hook on ``blocks.{l}.attn.hook_pattern``.

``final_logits`` computes the read-out logits straight from the HookedTransformer's parameters,
skipping the work the read-out does not need (queries and the last MLP at other positions). It is
exactly the model's function at the last position, and gradients flow into the model's parameters.

>>> from grokscope.tasks import Task
>>> model = build_model(nanda_config(Task(p=23), seed=0))
>>> tuple(model.W_E.shape), tuple(model.W_U.shape)
((24, 128), (128, 23))
>>> final_logits(model, Task(p=23).tokens()).shape
torch.Size([529, 23])
"""

import warnings
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.tasks import Task

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

ATTENTION_RATE_ATTR = "grokscope_attention_rate"
"""Attribute on a HookedTransformer that records the attention rate its hooks apply."""

SUPPORTED_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_fast", "silu")


def nanda_config(task: Task, *, n_layers: int = 1, d_model: int = 128, n_heads: int = 4,
                 d_head: int | None = None, d_mlp: int | None = None, act_fn: str = "relu",
                 seed: int | None = None, attention_dir: str = "causal") -> HookedTransformerConfig:
    """The [N23] architecture for ``task``: no LayerNorm, learned positions, read-out at the last token.

    ``d_head`` defaults to d_model / n_heads and ``d_mlp`` to 4 * d_model, as in the paper.
    """
    act_fn = act_fn.lower()
    if act_fn not in SUPPORTED_ACTIVATIONS:
        raise GrokscopeError(f"act_fn {act_fn!r}", expected=f"one of {SUPPORTED_ACTIVATIONS}",
                             where="nanda_config")
    if d_head is None:
        if d_model % n_heads:
            raise GrokscopeError(f"d_model = {d_model} with n_heads = {n_heads}",
                                 expected="d_model divisible by n_heads, or an explicit d_head",
                                 where="nanda_config")
        d_head = d_model // n_heads
    return HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head,
        d_mlp=4 * d_model if d_mlp is None else d_mlp, act_fn=act_fn,
        d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx,
        normalization_type=None, positional_embedding_type="standard", attention_dir=attention_dir,
        seed=seed, device="cpu", default_prepend_bos=False,
    )


def pizza_config(task: Task, **kwargs: Any) -> HookedTransformerConfig:
    """The [Z23] architecture: the [N23] shapes with no causal mask (their tokens are [a, b])."""
    kwargs.setdefault("attention_dir", "bidirectional")
    return nanda_config(task, **kwargs)


def set_attention_rate(model: HookedTransformer, alpha: float) -> HookedTransformer:
    """Attach (or replace) the [Z23] attention rate on every layer: pattern' = alpha*pattern + 1 - alpha.

    Rows of the new pattern sum to alpha + (1 - alpha) * n_ctx (2 - alpha for the [Z23] tokens [a, b]);
    with a causal mask the added constant reaches later positions too, as in [Z23]'s definition.
    alpha = 1 removes the hooks. Returns ``model``.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise GrokscopeError(f"attention rate {alpha}", expected="a number in [0, 1]",
                             where="set_attention_rate")
    model.reset_hooks(including_permanent=True)
    setattr(model, ATTENTION_RATE_ATTR, alpha)
    if alpha != 1.0:
        def attention_rate_hook(pattern: Tensor, hook) -> Tensor:
            return alpha * pattern + (1.0 - alpha)

        for layer in range(model.cfg.n_layers):
            model.add_perma_hook(f"blocks.{layer}.attn.hook_pattern", attention_rate_hook)
    return model


def attention_rate(model: HookedTransformer) -> float:
    """The attention rate alpha a model was built with (1.0 for a standard transformer)."""
    return float(getattr(model, ATTENTION_RATE_ATTR, 1.0))


def build_model(cfg: HookedTransformerConfig, alpha: float = 1.0,
                state_dict: dict[str, Tensor] | None = None) -> HookedTransformer:
    """A HookedTransformer from ``cfg`` with attention rate ``alpha``, optionally loading weights.

    Attention and unembedding biases stay zero unless ``state_dict`` sets them (the recipes train
    only MLP biases).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O")) or name == "unembed.b_U":
                param.zero_()
    if state_dict is not None:
        load_weights(model, state_dict)
    model.eval()
    return set_attention_rate(model, alpha)


def load_weights(model: HookedTransformer, state_dict: dict[str, Tensor]) -> None:
    """Load a HookedTransformer state dict, naming missing, unexpected or mis-shaped tensors."""
    expected = {k: v for k, v in model.state_dict().items() if not _is_buffer_name(k)}
    given = {k: v for k, v in state_dict.items() if not _is_buffer_name(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise GrokscopeError(f"missing {missing[:4]}, unexpected {unexpected[:4]}",
                             expected="the HookedTransformer parameter names of the config",
                             where="load_weights")
    for name, tensor in given.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise GrokscopeError(f"{name} of shape {tuple(tensor.shape)}",
                                 expected=f"shape {tuple(expected[name].shape)}", where="load_weights")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in given.items()}, strict=False)


def _is_buffer_name(name: str) -> bool:
    return name.endswith(("attn.mask", "attn.IGNORE", "rotary_sin", "rotary_cos"))


def parameter_state_dict(model: HookedTransformer) -> dict[str, Tensor]:
    """The model's parameters by HookedTransformer name, without buffers, detached and contiguous."""
    return {name: param.detach().contiguous().clone() for name, param in model.named_parameters()}


def final_logits(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                 return_post: bool = False
                 ) -> Float[Tensor, "batch d_vocab_out"] | tuple[Tensor, Tensor]:
    """Logits at the last position, computed directly from ``model``'s parameters.

    Equal to ``model(tokens)[:, -1]`` (attention rate included) for the no-LayerNorm models grokscope
    builds, but the last layer computes queries, attention and its MLP only at the read-out position.
    With ``return_post`` also returns the last layer's MLP activations at that position
    (``blocks.{L-1}.mlp.hook_post[:, -1]``, shape batch x d_mlp).
    """
    cfg = model.cfg
    if cfg.normalization_type is not None or cfg.positional_embedding_type != "standard" or cfg.attn_only:
        raise GrokscopeError(
            f"normalization_type={cfg.normalization_type}, positional_embedding_type="
            f"{cfg.positional_embedding_type}, attn_only={cfg.attn_only}",
            expected="a model without LayerNorm, with learned positions and MLPs", where="final_logits")
    alpha = attention_rate(model)
    n_pos = tokens.shape[1]
    resid = model.embed.W_E[tokens] + model.pos_embed.W_pos[:n_pos]
    scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
    post = None
    for layer, block in enumerate(model.blocks):
        last = layer == cfg.n_layers - 1
        attn, mlp = block.attn, block.mlp
        queries_from = resid[:, -1:] if last else resid
        q = torch.einsum("bqd,hde->bhqe", queries_from, attn.W_Q) + attn.b_Q[None, :, None]
        k = torch.einsum("bkd,hde->bhke", resid, attn.W_K) + attn.b_K[None, :, None]
        v = torch.einsum("bkd,hde->bhke", resid, attn.W_V) + attn.b_V[None, :, None]
        scores = q @ k.transpose(-1, -2) / scale
        if cfg.attention_dir == "causal" and not last:
            causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        pattern = scores.softmax(dim=-1)
        if alpha != 1.0:
            pattern = alpha * pattern + (1.0 - alpha)
        z = pattern @ v
        attn_out = torch.einsum("bhqe,hed->bqd", z, attn.W_O) + attn.b_O
        if last:
            resid = resid[:, -1] + attn_out[:, 0]
            post = mlp.act_fn(resid @ mlp.W_in + mlp.b_in)
            resid = resid + post @ mlp.W_out + mlp.b_out
        else:
            resid = resid + attn_out
            resid = resid + mlp.act_fn(resid @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
    logits = resid @ model.unembed.W_U + model.unembed.b_U
    return (logits, post) if return_post else logits


def cross_entropy_f64(logits: Float[Tensor, "batch n_classes"], labels: Int[Tensor, "batch"]) -> Tensor:
    """Mean cross-entropy with log-softmax in float64 (losses reach 1e-8; float32 quantises them)."""
    log_probs = logits.double().log_softmax(dim=-1)
    return -log_probs.gather(-1, labels[:, None]).mean()


def count_parameters(model: HookedTransformer) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters())
