"""Test-side writers of foreign checkpoint layouts, and an independent forward pass of the [N23] layout.

Each writer takes a HookedTransformer built by grokscope and writes it the way the layout's own code
would, with this file's own conversion (not grokscope.formats'), so a reader test checks grokscope
against an independent statement of each layout.
"""

import contextlib
import json
import math
import os
import random
import sys
import types

import numpy as np
import torch
from safetensors.torch import save_file

from grokscope import backend
from grokscope.models import build_model, nanda_config, parameter_state_dict, pizza_config
from grokscope.tasks import Task

TL3_CONFIG_MODULE = "transformer_lens.config.hooked_transformer_config"
"""Where TransformerLens 3.x defines HookedTransformerConfig (1.x and 2.x: ``transformer_lens.HookedTransformerConfig``)."""


class OpensAFile:
    """Unpickling this calls ``open(marker, "w")``: code that runs when the file is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def make_model(seed: int, task: Task | None = None, *, n_layers: int = 1, act_fn: str = "relu",
               attention_biases: bool = True, alpha: float = 1.0, d_model: int = 32, n_heads: int = 4,
               d_mlp: int = 64, scale: float = 0.3):
    """A small HookedTransformer with random weights large enough for sharp attention; attention and
    unembedding biases random too unless ``attention_biases`` is False (the [N23] layout has none)."""
    task = task or Task(p=23)
    make_cfg = nanda_config if task.eq_token else pizza_config
    cfg = make_cfg(task, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, act_fn=act_fn)
    state = parameter_state_dict(build_model(cfg, alpha))
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        is_attention_bias = name.endswith(("b_Q", "b_K", "b_V", "b_O")) or name == "unembed.b_U"
        if is_attention_bias and not attention_biases:
            continue
        state[name] = torch.randn(tensor.shape, generator=generator) * scale
    return build_model(cfg, alpha, state)


def hooked_state_dict(model) -> dict[str, torch.Tensor]:
    """``HookedTransformer.state_dict()`` as TransformerLens 3.x writes it: the weights plus each layer's
    causal ``mask`` and ``IGNORE`` buffers (what released bundles hold)."""
    state = parameter_state_dict(model)
    n_ctx = model.cfg.n_ctx
    for layer in range(model.cfg.n_layers):
        state[f"blocks.{layer}.attn.mask"] = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))
        state[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-float("inf"))
    return state


@contextlib.contextmanager
def pickled_config_class(module: str = TL3_CONFIG_MODULE):
    """The class to pickle a config as ``{module}.HookedTransformerConfig``, as TransformerLens 1.x-3.x
    files name it: on 3.x at its own path the real class; otherwise a stand-in of that name, found
    there while the context lasts (TransformerLens 4.x has no such class)."""
    if backend.LINE == 3 and module == TL3_CONFIG_MODULE:
        yield backend.ModelConfig
        return

    class HookedTransformerConfig:
        def __init__(self, **fields):
            self.__dict__.update(fields)

    HookedTransformerConfig.__module__ = module
    HookedTransformerConfig.__qualname__ = "HookedTransformerConfig"
    stand_in = types.ModuleType(module)
    stand_in.HookedTransformerConfig = HookedTransformerConfig
    saved = sys.modules.get(module)
    sys.modules[module] = stand_in
    try:
        yield HookedTransformerConfig
    finally:
        if saved is None:
            del sys.modules[module]
        else:
            sys.modules[module] = saved


def hooked_config(model, module: str = TL3_CONFIG_MODULE, **overrides):
    """The model's config as TransformerLens 3.x pickles it: on 3.x the model's own
    HookedTransformerConfig; otherwise a stand-in with its fields and the non-JSON values such files
    carry (a torch dtype, a numpy float). Pickle it inside ``pickled_config_class(module)``."""
    fields = {**tl_fields(model), "positional_embedding_type": "standard", "attn_only": False,
              "dtype": torch.float32, "device": "cpu", "seed": None,
              "initializer_range": np.float64(0.8 / math.sqrt(model.cfg.d_model)), **overrides}
    if backend.LINE == 3 and module == TL3_CONFIG_MODULE:
        import dataclasses
        return dataclasses.replace(model.cfg, **overrides)
    return sys.modules[module].HookedTransformerConfig(**fields)


def nanda_state(model, *, extra_output: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model in the [N23] layout: W_E (d_model, d_vocab), W_Q/K/V (heads, d_head, d_model),
    W_O (d_model, heads*d_head) head-major, W_in (d_mlp, d_model), W_out (d_model, d_mlp), a causal
    ``mask`` buffer, and W_U (d_model, d_vocab) with an extra random ``=`` output column."""
    cfg, hooked = model.cfg, parameter_state_dict(model)
    state = {"embed.W_E": hooked["embed.W_E"].T.clone(), "pos_embed.W_pos": hooked["pos_embed.W_pos"]}
    for layer in range(cfg.n_layers):
        prefix = f"blocks.{layer}."
        for name in ("W_Q", "W_K", "W_V"):
            state[prefix + f"attn.{name}"] = hooked[prefix + f"attn.{name}"].permute(0, 2, 1).clone()
        w_o = hooked[prefix + "attn.W_O"]  # (heads, d_head, d_model)
        state[prefix + "attn.W_O"] = w_o.permute(2, 0, 1).reshape(cfg.d_model, cfg.n_heads * cfg.d_head).clone()
        state[prefix + "attn.mask"] = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx))
        state[prefix + "mlp.W_in"] = hooked[prefix + "mlp.W_in"].T.clone()
        state[prefix + "mlp.b_in"] = hooked[prefix + "mlp.b_in"]
        state[prefix + "mlp.W_out"] = hooked[prefix + "mlp.W_out"].T.clone()
        state[prefix + "mlp.b_out"] = hooked[prefix + "mlp.b_out"]
    w_u = hooked["unembed.W_U"]
    if extra_output:
        extra = torch.randn(cfg.d_model, cfg.d_vocab - w_u.shape[1], generator=torch.Generator().manual_seed(seed))
        w_u = torch.cat([w_u, extra], dim=1)
    state["unembed.W_U"] = w_u
    return state


def nanda_forward(state: dict[str, torch.Tensor], tokens: torch.Tensor, act: str = "relu") -> torch.Tensor:
    """Last-position logits of an [N23]-layout state dict, computed in that layout's own conventions
    (causal attention, scores / sqrt(d_head), head-major W_O, no attention biases)."""
    x = state["embed.W_E"][:, tokens].permute(1, 2, 0) + state["pos_embed.W_pos"][: tokens.shape[1]]
    n_pos = tokens.shape[1]
    layer = 0
    while f"blocks.{layer}.attn.W_Q" in state:
        prefix = f"blocks.{layer}."
        w_q, w_k, w_v = (state[prefix + f"attn.{n}"] for n in ("W_Q", "W_K", "W_V"))
        q = torch.einsum("hed,bpd->bhpe", w_q, x)
        k = torch.einsum("hed,bpd->bhpe", w_k, x)
        v = torch.einsum("hed,bpd->bhpe", w_v, x)
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / w_q.shape[1] ** 0.5
        scores = scores.masked_fill(torch.ones(n_pos, n_pos).tril() == 0, float("-inf"))
        z = torch.einsum("bhqk,bhke->bqhe", scores.softmax(-1), v).flatten(2)  # head-major (h e)
        x = x + z @ state[prefix + "attn.W_O"].T
        pre = x @ state[prefix + "mlp.W_in"].T + state[prefix + "mlp.b_in"]
        post = torch.relu(pre) if act == "relu" else torch.nn.functional.gelu(pre)
        x = x + post @ state[prefix + "mlp.W_out"].T + state[prefix + "mlp.b_out"]
        layer += 1
    return (x @ state["unembed.W_U"])[:, -1]


def nanda_config_dict(task: Task, model, *, seed: int = 7, frac_train: float = 0.3, save_every: int = 100,
                      num_epochs: int = 300, act_type: str = "ReLU") -> dict:
    """A config as the [N23] code's Config would be saved (its fields; device a torch.device)."""
    cfg = model.cfg
    return {"lr": 1e-3, "weight_decay": 1.0, "p": task.p, "d_model": cfg.d_model, "fn_name": "add",
            "frac_train": frac_train, "num_epochs": num_epochs, "save_models": True, "save_every": save_every,
            "stopping_thresh": -1, "seed": seed, "num_layers": cfg.n_layers, "batch_style": "full",
            "d_vocab": task.p + 1, "n_ctx": 3, "d_mlp": cfg.d_mlp, "num_heads": cfg.n_heads, "act_type": act_type,
            "device": torch.device("cpu"), "use_ln": False, "take_metrics_every_n_epochs": 1000}


def nanda_split_reference(p: int, frac_train: float, seed: int) -> list[int]:
    """The [N23] code's split, as that code states it: shuffle the (a, b, =) tuples, keep the first part."""
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.seed(seed)
    random.shuffle(pairs)
    train = pairs[: int(frac_train * len(pairs))]
    return sorted(a * p + b for a, b, _ in train)


def write_tl(path: str, model, config: dict | None = None) -> str:
    """A HookedTransformer state dict as .safetensors or .pt, with an optional JSON config beside it."""
    state = parameter_state_dict(model)
    if path.endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save(state, path)
    if config is not None:
        with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as handle:
            json.dump(config, handle)
    return path


def tl_fields(model) -> dict:
    """A JSON-safe HookedTransformerConfig subset, as a user would write cfg.json."""
    cfg = model.cfg
    return {k: getattr(cfg, k) for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "act_fn", "d_vocab",
                                         "d_vocab_out", "n_ctx", "normalization_type", "attention_dir")}
