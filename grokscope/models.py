"""Model configs and builders for modular arithmetic, the attention rate, and a fast path.

Two recipes (SCIENCE.md section 5):
- [N23] Nanda et al. 2023: 1 layer, d_model 128, 4 heads of 32, d_mlp 512, ReLU, no LayerNorm, learned
  positions, tokens [a, b, =], causal attention.
- [Z23] Zhong et al. 2023: the same shapes, tokens [a, b], no causal mask, attention rate alpha.

Models are TransformerLens models of the installed line (``grokscope.backend``): a HookedTransformer on
TransformerLens 3.x, a TransformerBridge on 4.x, built from the one weight format (HookedTransformer
names and shapes). grokscope draws the initial weights itself (``initial_state``), so a seed gives
the same model on both lines.

The attention rate alpha ([Z23]) replaces every attention pattern by
``alpha * softmax(scores) + (1 - alpha)``: alpha = 1 is a standard transformer, alpha = 0 constant
attention (every entry one). It is a permanent hook on ``blocks.{l}.attn.hook_pattern``.

``final_logits`` computes the read-out logits straight from the model's weights (``backend.weights``),
skipping the work the read-out does not need (queries and the last MLP at other positions). It is
exactly the model's function at the last position, and gradients flow into the model's parameters.

>>> from grokscope.tasks import Task
>>> model = build_model(nanda_config(Task(p=23), seed=0))
>>> tuple(model.W_E.shape), tuple(model.W_U.shape)
((24, 128), (128, 23))
>>> final_logits(model, Task(p=23).tokens()).shape
torch.Size([529, 23])
"""

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.tasks import Task

HookedTransformer = backend.Model
"""The model class of the installed TransformerLens line (HookedTransformer, or TransformerBridge on 4.x)."""
HookedTransformerConfig = backend.ModelConfig
"""Its config class (HookedTransformerConfig, or TransformerBridgeConfig on 4.x)."""

ATTENTION_RATE_ATTR = "grokscope_attention_rate"
"""Attribute on a model that records the attention rate its hooks apply."""

SUPPORTED_ACTIVATIONS = backend.ACTIVATIONS
"""Activations the installed line implements (gelu_fast only on TransformerLens 3.x)."""


def nanda_config(task: Task, *, n_layers: int = 1, d_model: int = 128, n_heads: int = 4,
                 d_head: int | None = None, d_mlp: int | None = None, act_fn: str = "relu",
                 seed: int | None = None, attention_dir: str = "causal") -> HookedTransformerConfig:
    """The [N23] architecture for ``task``: no LayerNorm, learned positions, read-out at the last token.

    ``d_head`` defaults to d_model / n_heads and ``d_mlp`` to 4 * d_model, as in the paper.
    """
    act_fn = act_fn.lower()
    if act_fn not in SUPPORTED_ACTIVATIONS:
        raise backend.unsupported_activation(act_fn, where="nanda_config")
    if d_head is None:
        if d_model % n_heads:
            raise GrokscopeError(f"d_model = {d_model} with n_heads = {n_heads}",
                                 expected="d_model divisible by n_heads, or an explicit d_head",
                                 where="nanda_config")
        d_head = d_model // n_heads
    return backend.make_config(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head,
        d_mlp=4 * d_model if d_mlp is None else d_mlp, act_fn=act_fn,
        d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx,
        normalization_type=None, positional_embedding_type="standard", attention_dir=attention_dir,
        seed=seed,
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


def initial_state(cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    """grokscope's initial weights for ``cfg``: every ``W_`` tensor N(0, initializer_range^2), every bias zero.

    Drawn in HookedTransformer's parameter order from a generator seeded with ``cfg.seed`` (the global
    RNG where the seed is None): TransformerLens 3.x's "gpt2" initialisation, on either line.

    >>> from grokscope.tasks import Task
    >>> cfg = nanda_config(Task(p=23), d_model=16, seed=1)
    >>> first, again = initial_state(cfg), initial_state(cfg)
    >>> torch.equal(first["embed.W_E"], again["embed.W_E"]), float(first["unembed.b_U"].abs().sum())
    (True, 0.0)
    """
    generator = None if cfg.seed is None else torch.Generator().manual_seed(int(cfg.seed))
    dtype = cfg.dtype or torch.float32
    state = {}
    for name, shape in backend.hooked_shapes(cfg).items():
        tensor = torch.zeros(shape, dtype=dtype)
        if "W_" in name:
            tensor.normal_(0.0, cfg.initializer_range, generator=generator)
        state[name] = tensor
    return state


def build_model(cfg: HookedTransformerConfig, alpha: float = 1.0,
                state_dict: dict[str, Tensor] | None = None) -> HookedTransformer:
    """A model of ``cfg`` (the installed TransformerLens line's class) with attention rate ``alpha``,
    loading ``state_dict`` (weight-format names) or else ``initial_state(cfg)``.

    Attention and unembedding biases are zero unless ``state_dict`` sets them (the recipes train
    only MLP biases).
    """
    model = backend.new_model(cfg)
    load_weights(model, initial_state(cfg) if state_dict is None else state_dict)
    model.eval()
    return set_attention_rate(model, alpha)


def load_weights(model: HookedTransformer, state_dict: dict[str, Tensor]) -> None:
    """Load a state dict in the weight format, naming missing, unexpected or mis-shaped tensors."""
    expected = backend.hooked_shapes(model.cfg)
    given = {k: v for k, v in state_dict.items() if not _is_buffer_name(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise GrokscopeError(f"missing {missing[:4]}, unexpected {unexpected[:4]}",
                             expected="the HookedTransformer parameter names of the config",
                             where="load_weights")
    for name, tensor in given.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise GrokscopeError(f"{name} of shape {tuple(tensor.shape)}",
                                 expected=f"shape {tuple(expected[name])}", where="load_weights")
    dtype = model.W_E.dtype
    with torch.no_grad():
        backend.load_state(model, {k: v.detach().to(dtype) for k, v in given.items()})


def _is_buffer_name(name: str) -> bool:
    return name.endswith(("attn.mask", "attn.IGNORE", "rotary_sin", "rotary_cos"))


def parameter_state_dict(model: HookedTransformer) -> dict[str, Tensor]:
    """The model's weights by HookedTransformer name and shape (``unembed.b_U`` included on both
    lines), without buffers, detached and contiguous."""
    return {name: tensor.detach().contiguous().clone() for name, tensor in backend.weights(model).items()}


def final_logits(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                 return_post: bool = False, weights: dict[str, Tensor] | None = None
                 ) -> Float[Tensor, "batch d_vocab_out"] | tuple[Tensor, Tensor]:
    """Logits at the last position, computed directly from ``model``'s weights.

    Equal to ``model(tokens)[:, -1]`` (attention rate included) for the no-LayerNorm models grokscope
    builds, but the last layer computes queries, attention and its MLP only at the read-out position.
    With ``return_post`` also returns the last layer's MLP activations at that position
    (``blocks.{L-1}.mlp.hook_post[:, -1]``, shape batch x d_mlp). ``weights`` replaces some of the
    model's tensors by weight-format name (e.g. ``{"embed.W_E": table}``) without touching the model.
    """
    cfg = model.cfg
    backend.check_architecture(cfg, where="final_logits")
    W = backend.weights(model)
    W.update(weights or {})
    act_fn = backend.activation(model)
    alpha = attention_rate(model)
    n_pos = tokens.shape[1]
    resid = W["embed.W_E"][tokens] + W["pos_embed.W_pos"][:n_pos]
    scale = backend.attention_scale(cfg)
    post = None
    for layer in range(cfg.n_layers):
        last = layer == cfg.n_layers - 1
        a, m = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        queries_from = resid[:, -1:] if last else resid
        q = torch.einsum("bqd,hde->bhqe", queries_from, W[a + "W_Q"]) + W[a + "b_Q"][None, :, None]
        k = torch.einsum("bkd,hde->bhke", resid, W[a + "W_K"]) + W[a + "b_K"][None, :, None]
        v = torch.einsum("bkd,hde->bhke", resid, W[a + "W_V"]) + W[a + "b_V"][None, :, None]
        scores = q @ k.transpose(-1, -2) / scale
        if cfg.attention_dir == "causal" and not last:
            causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        pattern = scores.softmax(dim=-1)
        if alpha != 1.0:
            pattern = alpha * pattern + (1.0 - alpha)
        z = pattern @ v
        attn_out = torch.einsum("bhqe,hed->bqd", z, W[a + "W_O"]) + W[a + "b_O"]
        if last:
            resid = resid[:, -1] + attn_out[:, 0]
            post = act_fn(resid @ W[m + "W_in"] + W[m + "b_in"])
            resid = resid + post @ W[m + "W_out"] + W[m + "b_out"]
        else:
            resid = resid + attn_out
            resid = resid + act_fn(resid @ W[m + "W_in"] + W[m + "b_in"]) @ W[m + "W_out"] + W[m + "b_out"]
    logits = resid @ W["unembed.W_U"] + W["unembed.b_U"]
    return (logits, post) if return_post else logits


def cross_entropy_f64(logits: Float[Tensor, "batch n_classes"], labels: Int[Tensor, "batch"]) -> Tensor:
    """Mean cross-entropy with log-softmax in float64 (losses reach 1e-8; float32 quantises them)."""
    log_probs = logits.double().log_softmax(dim=-1)
    return -log_probs.gather(-1, labels[:, None]).mean()


def count_parameters(model: HookedTransformer) -> int:
    """Number of scalars in the weight format (``unembed.b_U`` included on both lines)."""
    return sum(t.numel() for t in backend.weights(model).values())
