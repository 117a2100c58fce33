"""The one module that imports TransformerLens: a HookedTransformer on 3.x, a TransformerBridge on 4.x.

TransformerLens 4.0 removed ``HookedTransformer`` and ``HookedTransformerConfig`` (importing them raises
ImportError, so ``hasattr`` is no test of the line); a small native model is then
``TransformerBridge.boot_native(TransformerBridgeConfig(...))``. grokscope keeps one weight format on
disk and in its code on both lines, the HookedTransformer names and shapes [N23]:

| name | shape | bridge tensor (4.x) |
|---|---|---|
| ``embed.W_E`` | (d_vocab, d_model) | ``embed.weight`` |
| ``pos_embed.W_pos`` | (n_ctx, d_model) | ``pos_embed.weight`` |
| ``blocks.{l}.attn.W_Q``, ``W_K``, ``W_V`` | (n_heads, d_model, d_head) | ``q/k/v.weight`` (n_heads d_head, d_model) |
| ``blocks.{l}.attn.W_O`` | (n_heads, d_head, d_model) | ``o.weight`` (d_model, n_heads d_head) |
| ``blocks.{l}.attn.b_Q``, ``b_K``, ``b_V`` | (n_heads, d_head) | ``q/k/v.bias`` (n_heads d_head) |
| ``blocks.{l}.attn.b_O`` | (d_model,) | ``o.bias`` |
| ``blocks.{l}.mlp.W_in``, ``W_out`` | (d_model, d_mlp), (d_mlp, d_model) | ``in/out.weight``, transposed |
| ``blocks.{l}.mlp.b_in``, ``b_out`` | (d_mlp,), (d_model,) | ``in/out.bias`` |
| ``unembed.W_U``, ``unembed.b_U`` | (d_model, d_vocab_out), (d_vocab_out,) | ``unembed.weight`` transposed; ``unembed.bias``, a fixed buffer |

``weights(model)`` gives these tensors for either class, as views of the model's own parameters (so
gradients flow into them); ``load_state`` loads them (on 4.x through TransformerLens's
``convert_tl_checkpoint``); ``parameters(model)`` names the trainable leaves by the same names. The
bridge is used as booted: ``enable_compatibility_mode()`` would process (change) the weights.

Only the architecture grokscope builds is supported: no LayerNorm, learned positions, MLPs.

>>> LINE in (3, 4)
True
>>> cfg = make_config(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, act_fn="relu", d_vocab=6,
...                   d_vocab_out=5, n_ctx=3, normalization_type=None, attention_dir="causal")
>>> attention_scale(cfg)
2.0
>>> [name for name in hooked_shapes(cfg)][:3]
['embed.W_E', 'pos_embed.W_pos', 'blocks.0.attn.W_Q']
"""

import copy
import importlib.metadata
import math
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from grokscope.errors import GrokscopeError

VERSION = importlib.metadata.version("transformer-lens")
"""The installed TransformerLens version."""

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:  # 3.x; on 4.x these names raise ImportError with a migration pointer
        from transformer_lens import HookedTransformer as _HookedTransformer
        from transformer_lens import HookedTransformerConfig as _HookedTransformerConfig
        LINE = 3
    except ImportError:
        if int(VERSION.split(".")[0]) < 4:  # a broken 3.x install, not the 4.x line
            raise
        from transformer_lens import TransformerBridge as _TransformerBridge
        from transformer_lens import TransformerBridgeConfig as _TransformerBridgeConfig
        from transformer_lens.model_bridge.sources.native import boot as _boot_native
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
        LINE = 4

if LINE == 3:
    Model: type = _HookedTransformer
    ModelConfig: type = _HookedTransformerConfig
    ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_new", "gelu_fast", "silu")
else:
    Model = _TransformerBridge
    ModelConfig = _TransformerBridgeConfig
    # the native bridge model implements these; gelu_fast is not among them
    ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")

PICKLED_CONFIG_NAMES = ("transformer_lens.HookedTransformerConfig.HookedTransformerConfig",
                        "transformer_lens.config.hooked_transformer_config.HookedTransformerConfig")
"""Module paths under which TransformerLens 1.x-3.x pickled HookedTransformerConfig (grokking-demo bundles,
TransformerLens checkpoints)."""

_ATTENTION = ("W_Q", "W_O", "b_Q", "b_O", "W_K", "W_V", "b_K", "b_V")  # HookedTransformer's own order
_MLP = ("W_in", "b_in", "W_out", "b_out")


class PickledConfig:
    """What a pickled HookedTransformerConfig becomes on 4.x, where the class is gone: its fields as
    attributes, nothing else (no code of the file or of TransformerLens runs to rebuild it)."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {})

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"PickledConfig({', '.join(f'{k}={v!r}' for k, v in list(self.__dict__.items())[:6])}, ...)"


CONFIG_CLASSES: tuple[type, ...] = (_HookedTransformerConfig, ) if LINE == 3 else (PickledConfig, )
"""Classes a pickled HookedTransformerConfig loads as on this line (for ``isinstance``)."""

PICKLED_CONFIG_GLOBALS: tuple = tuple((CONFIG_CLASSES[0], name) for name in PICKLED_CONFIG_NAMES)
"""``(class, "module.Name")`` pairs for ``torch.serialization.safe_globals``."""


# ----- configs --------------------------------------------------------------------------------

def _config_fields() -> set[str]:
    if LINE == 3:
        import dataclasses
        return {field.name for field in dataclasses.fields(_HookedTransformerConfig)}
    import inspect
    names = set()
    for cls in _TransformerBridgeConfig.__mro__[:-1]:
        if "__init__" in vars(cls):
            names |= set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    # HookedTransformerConfig fields the bridge config takes as keywords
    return names | {"positional_embedding_type", "device", "default_prepend_bos", "d_vocab_out"}


CONFIG_FIELDS = frozenset(_config_fields())
"""The config fields ``make_config`` accepts on this line."""


def unsupported_activation(act_fn: str, where: str) -> GrokscopeError:
    """The error for an activation this line does not implement (gelu_fast on 4.x)."""
    hint = "; gelu_fast needs TransformerLens 3.x (pip install 'transformer-lens<4')" if act_fn == "gelu_fast" else ""
    return GrokscopeError(f"act_fn {act_fn!r}", expected=f"one of {ACTIVATIONS} (TransformerLens {VERSION}){hint}",
                          where=where)


def make_config(**fields: Any):
    """The line's model config (HookedTransformerConfig or TransformerBridgeConfig) from
    HookedTransformerConfig fields; on CPU, no BOS token.

    Raises:
        GrokscopeError: an unknown field, or an activation this line does not implement.
    """
    unknown = sorted(set(fields) - CONFIG_FIELDS)
    if unknown:
        raise GrokscopeError(f"model fields {unknown}", expected="HookedTransformerConfig fields",
                             where="make_config")
    act_fn = str(fields.get("act_fn", "relu")).lower()
    if act_fn not in ACTIVATIONS:
        raise unsupported_activation(act_fn, where="make_config")
    fields = {"device": "cpu", "default_prepend_bos": False, **fields, "act_fn": act_fn}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if LINE == 3:
            return _HookedTransformerConfig(**fields)
        positional = fields.pop("positional_embedding_type", "standard")
        cfg = _TransformerBridgeConfig(**fields)
        cfg.positional_embedding_type = positional
        return cfg


def attention_scale(cfg) -> float:
    """The divisor of attention scores: ``attn_scale`` where set, else sqrt(d_head) (the bridge's config
    keeps the sentinel -1 where HookedTransformerConfig resolves it); 1 without scaling."""
    if not cfg.use_attn_scale:
        return 1.0
    return float(cfg.attn_scale) if cfg.attn_scale > 0 else math.sqrt(cfg.d_head)


def check_architecture(cfg, where: str = "build_model") -> None:
    """Refuse what the backend cannot map: LayerNorm, other positional embeddings, attention-only."""
    if cfg.normalization_type is not None or cfg.positional_embedding_type != "standard" or cfg.attn_only:
        raise GrokscopeError(
            f"normalization_type={cfg.normalization_type}, positional_embedding_type="
            f"{cfg.positional_embedding_type}, attn_only={cfg.attn_only}",
            expected="a model without LayerNorm, with learned positions and MLPs", where=where)


def hooked_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor of the weight format with its shape, in HookedTransformer's parameter order (the
    order grokscope draws initial weights in)."""
    d, h, e, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    shapes = {"embed.W_E": (cfg.d_vocab, d), "pos_embed.W_pos": (cfg.n_ctx, d)}
    per_layer = {"W_Q": (h, d, e), "W_K": (h, d, e), "W_V": (h, d, e), "W_O": (h, e, d), "b_Q": (h, e),
                 "b_K": (h, e), "b_V": (h, e), "b_O": (d,), "W_in": (d, m), "b_in": (m,), "W_out": (m, d),
                 "b_out": (d,)}
    for layer in range(cfg.n_layers):
        shapes.update({f"blocks.{layer}.attn.{k}": per_layer[k] for k in _ATTENTION})
        shapes.update({f"blocks.{layer}.mlp.{k}": per_layer[k] for k in _MLP})
    shapes.update({"unembed.W_U": (d, cfg.d_vocab_out), "unembed.b_U": (cfg.d_vocab_out,)})
    return shapes


# ----- one tensor between layouts ---------------------------------------------------------------

_BRIDGE_SUFFIX = {"W_Q": "q.weight", "W_K": "k.weight", "W_V": "v.weight", "W_O": "o.weight",
                  "b_Q": "q.bias", "b_K": "k.bias", "b_V": "v.bias", "b_O": "o.bias",
                  "W_in": "in.weight", "b_in": "in.bias", "W_out": "out.weight", "b_out": "out.bias",
                  "W_E": "weight", "W_pos": "weight", "W_U": "weight", "b_U": "bias"}


def bridge_name(name: str) -> str:
    """The bridge's state-dict key of a weight-format name (``blocks.0.attn.W_Q`` -> ``blocks.0.attn.q.weight``)."""
    head, _, last = name.rpartition(".")
    return f"{head}.{_BRIDGE_SUFFIX[last]}"


def to_hooked(name: str, tensor: Tensor, cfg) -> Tensor:
    """A tensor of the line's own layout in the weight format (a view where possible; identity on 3.x)."""
    if LINE == 3:
        return tensor
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    last = name.rpartition(".")[2]
    if last in ("W_Q", "W_K", "W_V"):  # (h e, d) -> (h, d, e)
        return tensor.view(h, e, d).permute(0, 2, 1)
    if last == "W_O":  # (d, h e) -> (h, e, d)
        return tensor.view(d, h, e).permute(1, 2, 0)
    if last in ("b_Q", "b_K", "b_V"):
        return tensor.view(h, e)
    if last in ("W_in", "W_out", "W_U"):
        return tensor.T
    return tensor


# ----- models -----------------------------------------------------------------------------------

def new_model(cfg) -> Any:
    """An untrained model of ``cfg`` (its weights are to be loaded); the global RNG is left as it was."""
    check_architecture(cfg)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        if LINE == 3:
            return _HookedTransformer(cfg)
        cfg = copy.deepcopy(cfg)
        cfg.init_weights = False  # grokscope draws the weights
        return _boot_native(cfg)


def weights(model) -> dict[str, Tensor]:
    """The model's tensors by weight-format name and shape: views of its parameters (gradients flow
    into them; writing into them writes the model), ``unembed.b_U`` included on both lines."""
    if LINE == 3:
        return dict(model.named_parameters())
    state = model.state_dict(keep_vars=True)
    return {name: to_hooked(name, state[bridge_name(name)], model.cfg) for name in hooked_shapes(model.cfg)}


def layer_weights(W: dict[str, Tensor], layer: int) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Layer ``layer``'s attention and MLP tensors of ``weights(model)`` by their short names
    (``attn.W_Q``, ``mlp.W_in``, ...): the same views, so writing into them writes the model."""
    def part(prefix: str) -> SimpleNamespace:
        return SimpleNamespace(**{k.removeprefix(prefix): v for k, v in W.items() if k.startswith(prefix)})
    return part(f"blocks.{layer}.attn."), part(f"blocks.{layer}.mlp.")


def parameters(model) -> dict[str, torch.nn.Parameter]:
    """The model's trainable leaves by weight-format name, in the line's own layout;
    the bridge's ``unembed.b_U`` is a fixed buffer, so absent there."""
    if LINE == 3:
        return dict(model.named_parameters())
    state = model.state_dict(keep_vars=True)
    return {name: state[bridge_name(name)] for name in hooked_shapes(model.cfg)
            if isinstance(state[bridge_name(name)], torch.nn.Parameter)}


def load_state(model, state: dict[str, Tensor]) -> None:
    """Load a complete weight-format state dict (names and shapes already checked by the caller)."""
    if LINE == 3:
        model.load_state_dict(state, strict=False)
        return
    converted = convert_tl_checkpoint(state, model.cfg)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


def activation(model) -> Callable[[Tensor], Tensor]:
    """The MLP activation function of ``model`` (the bridge's MLP has no ``act_fn``)."""
    if LINE == 3:
        return model.blocks[0].mlp.act_fn
    return model.original_model.layers[0].mlp.act


def to_dtype(model, dtype: torch.dtype):
    """``model`` in ``dtype`` (the bridge's ``to`` prints a line unless told not to)."""
    if LINE == 3:
        return model.to(dtype)
    return model.to(dtype, print_details=False)
