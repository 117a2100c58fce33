"""Task and HookedTransformerConfig inference from a HookedTransformer state dict, and its checks.

Every reader converts its layout to HookedTransformer names first, then calls ``infer_model`` once per
run and ``prepare_state`` once per checkpoint. What the weights fix is read from them; what they do not
fix comes from the layout's config, or from a stated default recorded in ``Run.config["inferred"]``:

- p: from the vocabulary sizes. The read-out position holds ``=`` when W_pos has 3 rows (n_ctx = 3,
  [N23]) and not when it has 2 ([Z23]); W_E then has p + 1 (or p) rows, or 2p + 1 (2p) when b has its
  own ids (diff_vocab). W_U has p outputs, or as many as W_E has rows (an extra ``=`` class, dropped).
- op: only a config can say (default ``add``); act_fn (default ``relu``) and attention_dir (default
  ``causal``, as in [N23] and TransformerLens) likewise.

>>> from grokscope.models import build_model, nanda_config, parameter_state_dict
>>> state = parameter_state_dict(build_model(nanda_config(Task(p=23), seed=0)))
>>> task, cfg, inferred = infer_model(state, where="example.pt")
>>> task.p, cfg.n_heads, inferred["op"]
(23, 4, 'add (default: no config states the operation)')
"""

import math
import re
from typing import Any

import torch
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.models import SUPPORTED_ACTIVATIONS, HookedTransformerConfig, nanda_config
from grokscope.tasks import OPERATION_ALIASES, OPERATIONS, Task, is_prime

LAYOUTS = "a Nanda or TransformerLens layout of a modular-arithmetic transformer"

BUFFER_SUFFIXES = ("attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos")
"""Buffers a state dict may carry; they are rebuilt from the config, never loaded."""

_BLOCK_PARAMS = ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "attn.b_Q", "attn.b_K", "attn.b_V",
                 "attn.b_O", "mlp.W_in", "mlp.b_in", "mlp.W_out", "mlp.b_out")
_NORM_KEY = re.compile(r"(^|\.)(ln\d*|ln_final|norm\w*|layernorm\w*)\.", re.IGNORECASE)
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")

NANDA_OPERATIONS = {"add": "add", "subtract": "sub", "x2xyy2": "a^2+ab+b^2"}
"""Operation names of the [N23] code (``fn_name``) mapped to grokscope's."""

ALPHA_KEYS = ("attention_rate", "alpha", "attn_coeff")
"""Config keys that give the [Z23] attention rate, first found wins."""


# ----- small helpers ---------------------------------------------------------------------------

def describe_keys(state: dict[str, Any], limit: int = 6) -> str:
    """``{name (shape), ...}`` for the first ``limit`` tensors, as error messages show a state dict.

    >>> describe_keys({"embed.W_E": torch.zeros(128, 114), "step": 3})
    '{embed.W_E (128, 114), step}'
    """
    items = []
    for name, value in list(state.items())[:limit]:
        shape = tuple(value.shape) if isinstance(value, Tensor) else None
        items.append(f"{name} {shape}" if shape is not None else str(name))
    more = ", ..." if len(state) > limit else ""
    return "{" + ", ".join(items) + more + "}"


def json_safe(value: Any, max_list: int = 100_000) -> Any:
    """A JSON-safe copy of config values: numbers, strings, lists and dicts; others as strings."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, max_list) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, max_list) for v in value[:max_list]]
    if isinstance(value, Tensor):
        return json_safe(value.tolist(), max_list) if value.numel() <= 64 else f"tensor {tuple(value.shape)}"
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return json_safe(item(), max_list)
    return str(value)


def is_state_dict(value: Any) -> bool:
    """Whether ``value`` is a non-empty mapping of string names to tensors (buffers allowed)."""
    return (isinstance(value, dict) and len(value) > 0 and all(isinstance(k, str) for k in value)
            and all(isinstance(v, Tensor) for v in value.values()))


def layout_of(state: dict[str, Tensor]) -> str | None:
    """``"transformer_lens"`` or ``"nanda"`` from the attention output matrix, else None.

    TransformerLens keeps W_O per head, (heads, d_head, d_model); the [N23] code keeps one
    (d_model, heads * d_head) matrix.
    """
    w_o = state.get("blocks.0.attn.W_O")
    if "embed.W_E" not in state or not isinstance(w_o, Tensor):
        return None
    return {3: "transformer_lens", 2: "nanda"}.get(w_o.ndim)


def operation_from(value: Any, where: str) -> str:
    """grokscope's operation name for a config's ``op`` / ``fn_name`` value."""
    name = str(value)
    if name in NANDA_OPERATIONS:
        return NANDA_OPERATIONS[name]
    if name in OPERATIONS or name in OPERATION_ALIASES:
        return OPERATION_ALIASES.get(name, name)
    raise GrokscopeError(f"operation {name!r} in the config",
                         expected=f"one of {sorted(OPERATIONS)} (or [N23]'s {sorted(NANDA_OPERATIONS)})",
                         where=where)


def alpha_from(config: dict[str, Any], where: str) -> float | None:
    """The attention rate a config states under one of ``ALPHA_KEYS``, else None."""
    for key in ALPHA_KEYS:
        if config.get(key) is not None:
            try:
                alpha = float(config[key])
            except (TypeError, ValueError):
                raise GrokscopeError(f"{key} = {config[key]!r}", expected="a number in [0, 1]",
                                     where=where) from None
            if not 0.0 <= alpha <= 1.0:
                raise GrokscopeError(f"{key} = {alpha}", expected="a number in [0, 1]", where=where)
            return alpha
    return None


# ----- structure checks ------------------------------------------------------------------------

def _refuse(state_desc: str, reason: str, where: str) -> GrokscopeError:
    return GrokscopeError(f"keys {state_desc}", expected=f"{LAYOUTS}; {reason}", where=where)


def _n_layers(state: dict[str, Tensor]) -> int:
    layers = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    return max(layers) + 1 if layers else 0


def check_structure(state: dict[str, Tensor], *, where: str, describe: str | None = None) -> int:
    """Refuse what is not a no-LayerNorm transformer with MLPs; returns the number of layers.

    ``state`` uses HookedTransformer names; ``describe`` is the original keys for the message.
    """
    describe = describe or describe_keys(state)
    norms = [k for k in state if _NORM_KEY.search(k)]
    if norms:
        raise _refuse(describe, f"it has LayerNorm weights ({', '.join(norms[:3])}), which grokscope's "
                                "models do not have", where)
    for name in ("embed.W_E", "pos_embed.W_pos", "unembed.W_U"):
        if name not in state:
            raise _refuse(describe, f"no {name}", where)
    n_layers = _n_layers(state)
    if n_layers == 0:
        raise _refuse(describe, "no transformer blocks", where)
    for layer in range(n_layers):
        if f"blocks.{layer}.mlp.W_in" not in state:
            raise _refuse(describe, f"block {layer} has no MLP (mlp.W_in)", where)
        if f"blocks.{layer}.attn.W_Q" not in state:
            raise _refuse(describe, f"block {layer} has no attention (attn.W_Q)", where)
    known = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U"}
    known |= {f"blocks.{layer}.{name}" for layer in range(n_layers) for name in _BLOCK_PARAMS}
    unexpected = [k for k in state if k not in known and not k.endswith(BUFFER_SUFFIXES)]
    if unexpected:
        raise _refuse(describe, f"unexpected tensors {unexpected[:4]}", where)
    return n_layers


# ----- the task and the config -----------------------------------------------------------------

def _infer_task(n_in: int, n_out: int, n_ctx: int, hints: dict[str, Any], *, where: str,
                describe: str, inferred: dict[str, str]) -> Task:
    eq_token = hints.get("eq_token")
    if eq_token is None:
        if n_ctx not in (2, 3):
            raise _refuse(describe, f"W_pos has {n_ctx} rows, so the token layout is unknown "
                                    "(3 for [a, b, =], 2 for [a, b])", where)
        eq_token = n_ctx == 3
        inferred["eq_token"] = f"{eq_token} (W_pos has {n_ctx} rows)"
    base = n_in - (1 if eq_token else 0)
    layouts = [(False, base), (True, base // 2 if base % 2 == 0 else None)]
    if hints.get("diff_vocab") is not None:
        layouts = [lay for lay in layouts if lay[0] == bool(hints["diff_vocab"])]
    stated_p = hints.get("p")
    reasons = []
    for diff_vocab, p in layouts:
        if p is None:
            continue
        source = f"W_E ({n_in} rows{', with =' if eq_token else ''}{', b with its own ids' if diff_vocab else ''})"
        if stated_p is not None and int(stated_p) != p:
            reasons.append(f"the config says p = {stated_p} but p = {p} is inferred from {source}")
            continue
        if not is_prime(p) or p < 3:
            if not diff_vocab:
                reasons.append(f"p = {p} inferred from {source} is not an odd prime")
            continue
        if n_out not in (p, n_in):
            reasons.append(f"p = {p} inferred from {source} but W_U has {n_out} outputs "
                           f"(expected {p} or {n_in})")
            continue
        inferred["p"] = f"{p} from {source}"
        if "diff_vocab" not in hints:
            inferred["diff_vocab"] = f"{diff_vocab} (from W_E rows)"
        if n_out != p:
            inferred["d_vocab_out"] = f"W_U has {n_out} outputs; the {n_out - p} past p are dropped"
        op = hints.get("op")
        if op is None:
            op = "add"
            inferred["op"] = "add (default: no config states the operation)"
        try:
            return Task(p=p, op=op, eq_token=bool(eq_token), diff_vocab=diff_vocab)
        except GrokscopeError as error:  # e.g. a grid too large for memory: name the file
            raise GrokscopeError(f"{error.found} (inferred from {source})", expected=error.expected,
                                 where=where) from None
    raise _refuse(describe, "; ".join(reasons) or "no vocabulary size fits", where)


def _check_stated(hints: dict[str, Any], name: str, value: int, where: str) -> None:
    stated = hints.get(name)
    if stated is not None and int(stated) != int(value):
        raise GrokscopeError(f"{name} = {stated} in the config but {value} in the weights",
                             expected="a config that matches the checkpoint", where=where)


def infer_model(state: dict[str, Tensor], *, where: str, hints: dict[str, Any] | None = None,
                describe: str | None = None) -> tuple[Task, HookedTransformerConfig, dict[str, str]]:
    """The Task and HookedTransformerConfig of a HookedTransformer-named state dict.

    Args:
        state: parameters by HookedTransformer name (W_E (d_vocab, d_model), W_U (d_model, d_vocab_out),
            W_Q (heads, d_model, d_head), W_in (d_model, d_mlp), ...).
        where: the file, for messages.
        hints: what a config states, with canonical keys (p, op, eq_token, diff_vocab, n_layers,
            d_model, n_heads, d_head, d_mlp, d_vocab, d_vocab_out, n_ctx, act_fn, attention_dir,
            normalization_type, positional_embedding_type, attn_only). Shapes are checked
            against the weights; the rest fills what the weights cannot say.
        describe: the original keys, for messages (defaults to ``state``'s).

    Returns:
        ``(task, cfg, inferred)``: ``inferred`` says, per quantity, where it came from when no config
        stated it.
    """
    hints = {k: v for k, v in (hints or {}).items() if v is not None}
    describe = describe or describe_keys(state)
    if hints.get("normalization_type") not in (None, "None"):
        raise _refuse(describe, f"normalization_type = {hints['normalization_type']!r} in the config", where)
    if hints.get("attn_only"):
        raise _refuse(describe, "attn_only = True in the config (no MLP)", where)
    if hints.get("positional_embedding_type", "standard") != "standard":
        raise _refuse(describe, f"positional_embedding_type = {hints['positional_embedding_type']!r}", where)
    n_layers = check_structure(state, where=where, describe=describe)
    w_e, w_pos, w_u = state["embed.W_E"], state["pos_embed.W_pos"], state["unembed.W_U"]
    w_q, w_in = state["blocks.0.attn.W_Q"], state["blocks.0.mlp.W_in"]
    if w_e.ndim != 2 or w_pos.ndim != 2 or w_u.ndim != 2 or w_q.ndim != 3 or w_in.ndim != 2:
        raise _refuse(describe, "W_E, W_pos, W_U, W_in must be matrices and W_Q (heads, d_model, d_head)", where)
    n_in, d_model = w_e.shape
    n_ctx, n_out = w_pos.shape[0], w_u.shape[1]
    n_heads, _, d_head = w_q.shape
    d_mlp = w_in.shape[1]
    if w_pos.shape[1] != d_model or w_u.shape[0] != d_model or w_q.shape[1] != d_model or w_in.shape[0] != d_model:
        raise _refuse(describe, f"d_model disagrees between W_E ({d_model}), W_pos, W_U, W_Q and W_in", where)
    for name, value in (("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads), ("d_head", d_head),
                        ("d_mlp", d_mlp), ("d_vocab", n_in), ("n_ctx", n_ctx)):
        _check_stated(hints, name, value, where)
    if isinstance(hints.get("d_vocab_out"), int) and hints["d_vocab_out"] > 0:  # TransformerLens's -1: unset
        _check_stated(hints, "d_vocab_out", n_out, where)
    inferred: dict[str, str] = {}
    task = _infer_task(n_in, n_out, n_ctx, hints, where=where, describe=describe, inferred=inferred)
    if task.n_ctx != n_ctx:
        raise _refuse(describe, f"W_pos has {n_ctx} rows but tokens {'[a, b, =]' if task.eq_token else '[a, b]'} "
                                f"need {task.n_ctx}", where)
    act_fn = str(hints.get("act_fn", "")).lower()
    if not act_fn:
        act_fn = "relu"
        inferred["act_fn"] = "relu (default: no config states the activation)"
    if act_fn not in SUPPORTED_ACTIVATIONS:
        raise GrokscopeError(f"act_fn {act_fn!r} in the config", expected=f"one of {SUPPORTED_ACTIVATIONS}",
                             where=where)
    attention_dir = hints.get("attention_dir")
    if attention_dir is None:
        attention_dir = "causal"
        inferred["attention_dir"] = "causal (default, as in [N23] and TransformerLens)"
    if attention_dir not in ("causal", "bidirectional"):
        raise GrokscopeError(f"attention_dir {attention_dir!r} in the config",
                             expected="'causal' or 'bidirectional'", where=where)
    # no seed: a config with one reseeds the global RNGs, and loaded weights need no initialisation
    cfg = nanda_config(task, n_layers=n_layers, d_model=int(d_model), n_heads=int(n_heads), d_head=int(d_head),
                       d_mlp=int(d_mlp), act_fn=act_fn, attention_dir=attention_dir)
    return task, cfg, inferred


# ----- one checkpoint --------------------------------------------------------------------------

def expected_shapes(cfg: HookedTransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every HookedTransformer parameter of ``cfg`` with its shape."""
    h, m, e, f = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    shapes = {"embed.W_E": (cfg.d_vocab, m), "pos_embed.W_pos": (cfg.n_ctx, m)}
    for layer in range(cfg.n_layers):
        block = {"attn.W_Q": (h, m, e), "attn.W_K": (h, m, e), "attn.W_V": (h, m, e), "attn.W_O": (h, e, m),
                 "attn.b_Q": (h, e), "attn.b_K": (h, e), "attn.b_V": (h, e), "attn.b_O": (m,),
                 "mlp.W_in": (m, f), "mlp.b_in": (f,), "mlp.W_out": (f, m), "mlp.b_out": (m,)}
        shapes.update({f"blocks.{layer}.{k}": v for k, v in block.items()})
    shapes.update({"unembed.W_U": (m, cfg.d_vocab_out), "unembed.b_U": (cfg.d_vocab_out,)})
    return shapes


def prepare_state(state: dict[str, Tensor], cfg: HookedTransformerConfig, *, where: str,
                  reference: str | None = None) -> dict[str, Tensor]:
    """A checkpoint's state dict made loadable into ``cfg``: buffers dropped, outputs past p dropped,
    absent biases (the recipes train only MLP biases) filled with zeros, every shape checked.

    ``reference`` names the file ``cfg`` was inferred from, so a checkpoint of another p is reported
    against it.
    """
    p = cfg.d_vocab_out
    against = f" as in {reference}" if reference and reference != where else ""
    w_e = state.get("embed.W_E")
    if isinstance(w_e, Tensor) and w_e.ndim == 2 and w_e.shape[0] != cfg.d_vocab:
        raise GrokscopeError(f"W_E with {w_e.shape[0]} rows, the vocabulary of another p",
                             expected=f"W_E with {cfg.d_vocab} rows (p = {p}){against}", where=where)
    out: dict[str, Tensor] = {}
    for name, shape in expected_shapes(cfg).items():
        tensor = state.get(name)
        if tensor is None:
            if name.rsplit(".", 1)[-1].startswith("b_"):
                out[name] = torch.zeros(shape)
                continue
            raise GrokscopeError(f"no {name} among keys {describe_keys(state)}",
                                 expected="every parameter of the run's architecture", where=where)
        if name in ("unembed.W_U", "unembed.b_U") and tensor.shape[-1] == cfg.d_vocab != p:
            tensor = tensor[..., :p]
        if tuple(tensor.shape) != shape:
            raise GrokscopeError(f"{name} of shape {tuple(tensor.shape)}", expected=f"shape {shape}{against}",
                                 where=where)
        out[name] = tensor
    return out
