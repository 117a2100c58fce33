"""Reader for the Clock-and-Pizza model release [Z23].

Layout: a folder of independent models, each a pair ``model_<id>.pt`` (a plain state dict in the
paper code's own layout) and ``config_<id>.json`` (its training configuration). The state dict holds

    embed.W_E            (d_model, d_vocab)       columns are tokens
    pos_embed.W_pos      (n_ctx, d_model)
    unembed.W_U          (d_model, d_vocab)       one output logit per *input* token id
    blocks.{l}.attn.W_Q/W_K/W_V  (n_heads, d_head, d_model)
    blocks.{l}.attn.W_O  (d_model, n_heads * d_head), head-major columns
    blocks.{l}.attn.mask (n_ctx, n_ctx)           a buffer the forward pass never uses: skipped
    blocks.{l}.mlp.W_in  (d_mlp, d_model), b_in (d_mlp,), W_out (d_model, d_mlp), b_out (d_model,)

with no attention or unembedding biases and d_mlp = 4 d_model. The config keys used: ``C`` (= p),
``n_layers``, ``d_model``, ``n_heads`` (``d_head`` = d_model // n_heads unless given), ``act_fn``,
``attn_coeff`` (the attention rate alpha), ``diff_vocab``, ``eqn_sign``, ``epoch``; a ``use_linear``
config is a different architecture and is refused. The ``funcs`` key is a Python lambda stored as
text: it is never evaluated, only matched against ``lambda x: (x[0]+x[1])%p`` (every released model;
``-`` and ``*`` are recognised too).

How the release code runs these weights, and how the reader maps it into a HookedTransformer:

- Tokens ``[a, b]`` (n_ctx = 2); ``eqn_sign`` appends ``=`` with the last id (n_ctx = 3);
  ``diff_vocab`` gives b the ids p..2p-1. This is ``Task(p, eq_token=eqn_sign, diff_vocab=...)``.
- Attention scores are divided by sqrt(d_head) and **no causal mask is applied**, although the
  configs say ``attention_dir: "casual"`` and a ``mask`` buffer is stored: the models are
  bidirectional. The pattern is then ``attn_coeff * softmax + (1 - attn_coeff)``, which is
  grokscope's attention rate (``models.set_attention_rate``).
- ``GeLU`` is PyTorch's exact (erf) ``F.gelu``, TransformerLens ``act_fn="gelu"`` (not ``gelu_new``,
  the tanh approximation). ``ReLU`` maps to ``"relu"``; ``Tanh`` has no TransformerLens equivalent
  and is refused.
- The read-out is the last position. The release unembeds to d_vocab logits, one per input token
  id (2p with diff_vocab, p + 1 with eqn_sign), but only the first p are ever a label. The converted
  model keeps exactly those: d_vocab_out = p and W_U = ``unembed.W_U[:, :p]``. Logits of the p
  classes are unchanged; the release's softmax and argmax also ranged over the extra ids, which
  grokscope's analysis never does (on the six fixture models no argmax falls on an extra id).

Weights load through ``safe_load.load_pickle`` (``torch.load(weights_only=True)`` on the CPU). The
train / test split is not released, so ``train_indices`` is None.

>>> runs = read_folder("tests/fixtures/pizza")        # doctest: +SKIP
>>> runs[0].model()                                   # doctest: +SKIP
"""

import json
import os
import re

import torch
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.formats import safe_load
from grokscope.formats.base import Run
from grokscope.models import HookedTransformerConfig, pizza_config
from grokscope.tasks import Task

FORMAT = "pizza_release"
MODEL_PATTERN = re.compile(r"^model_(?P<id>[A-Za-z0-9_-]+)\.pt$")
ACTIVATIONS = {"relu": "relu", "gelu": "gelu"}
"""Release ``act_fn`` (lower-cased) -> TransformerLens ``act_fn``: exact GeLU, as ``F.gelu`` in the release."""

REQUIRED_CONFIG_KEYS = ("C", "d_model", "n_heads", "attn_coeff")


def config_path_for(model_path: str | os.PathLike) -> str:
    """The ``config_<id>.json`` beside ``model_<id>.pt``."""
    model_path = os.fspath(model_path)
    folder, name = os.path.split(model_path)
    match = MODEL_PATTERN.match(name)
    if match is None:
        raise GrokscopeError(f"file name {name!r}", expected="model_<id>.pt",
                             where=model_path)
    return os.path.join(folder, f"config_{match['id']}.json")


def matches(path: str | os.PathLike) -> bool:
    """True for a ``model_<id>.pt`` with its ``config_<id>.json`` beside it, or a folder holding such pairs."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return bool(_model_files(path))
    return (os.path.isfile(path) and MODEL_PATTERN.match(os.path.basename(path)) is not None
            and os.path.isfile(config_path_for(path)))


def _model_files(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if MODEL_PATTERN.match(n))
    paths = [os.path.join(folder, n) for n in names]
    return [p for p in paths if os.path.isfile(config_path_for(p))]


def read_folder(path: str | os.PathLike) -> list[Run]:
    """Every model of a release folder, one Run each, sorted by id."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise GrokscopeError("not a folder", expected="a folder of model_<id>.pt / config_<id>.json pairs",
                             where=path)
    files = _model_files(path)
    if not files:
        raise GrokscopeError("no model_<id>.pt with a config_<id>.json beside it",
                             expected="the Clock-and-Pizza release layout", where=path)
    return [read_model(f) for f in files]


def read_config(config_path: str) -> dict:
    """The JSON config of one model, checked for the keys the reader needs."""
    if not os.path.isfile(config_path):
        raise GrokscopeError("no such file", expected="config_<id>.json beside model_<id>.pt",
                             where=config_path)
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise GrokscopeError(f"unreadable JSON ({error})", expected="a JSON object",
                             where=config_path) from None
    if not isinstance(config, dict):
        raise GrokscopeError(f"a JSON {type(config).__name__}", expected="a JSON object",
                             where=config_path)
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise GrokscopeError(f"no keys {missing}", expected=f"keys {list(REQUIRED_CONFIG_KEYS)}",
                             where=config_path)
    if config.get("use_linear"):
        raise GrokscopeError(f"use_linear = {config['use_linear']!r}",
                             expected="a transformer run (the linear-model runs are another architecture)",
                             where=config_path)
    return config


_FUNCS = re.compile(r"^lambda\s*x\s*:\s*\(\s*x\[0\]\s*(?P<op>[-+*])\s*x\[1\]\s*\)\s*%\s*(?P<p>\d+)$")
_OPS = {"+": "add", "-": "sub", "*": "mul"}


def operation_from_config(config: dict, where: str = "config") -> str:
    """The operation named by the config's ``funcs`` text, recognised by pattern and never evaluated.

    ``lambda x: (x[0]+x[1])%59`` is "add" (every released model); "-" and "*" are recognised too; a
    config without ``funcs`` is taken as addition; any other text is refused.
    """
    text = config.get("funcs")
    if text is None:
        return "add"
    match = _FUNCS.match(str(text).strip())
    if match is None or int(match["p"]) != int(config["C"]):
        raise GrokscopeError(f"funcs {str(text)[:80]!r}", where=where, expected=f"'lambda x: "
                             f"(x[0]+x[1])%{config['C']}' (or - or *); it is never evaluated")
    return _OPS[match["op"]]


def task_from_config(config: dict, where: str = "config") -> Task:
    """The Task of a release config: ``funcs`` mod ``C``, tokens [a, b] (+ ``=`` with eqn_sign)."""
    p = config.get("C")
    if isinstance(p, bool) or not isinstance(p, int):
        raise GrokscopeError(f"C = {p!r}" if "C" in config else "no key 'C'", expected="the modulus C, an odd prime",
                             where=where)
    try:
        return Task(p=p, op=operation_from_config(config, where), eq_token=bool(config.get("eqn_sign", False)),
                    diff_vocab=bool(config.get("diff_vocab", False)))
    except GrokscopeError as error:
        if error.where != "Task":
            raise
        raise GrokscopeError(f"C: {error.found}", expected=error.expected, where=where) from None


def hooked_config(config: dict, task: Task, where: str = "config") -> HookedTransformerConfig:
    """The HookedTransformerConfig of a release config (bidirectional attention, d_mlp = 4 d_model)."""
    act = str(config.get("act_fn", "relu")).lower()
    if act not in ACTIVATIONS:
        raise GrokscopeError(f"act_fn {config.get('act_fn')!r}", expected="one of ReLU, GeLU", where=where)
    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    return pizza_config(task, n_layers=int(config.get("n_layers", 1)), d_model=d_model, n_heads=n_heads,
                        d_head=int(config.get("d_head", d_model // n_heads)), d_mlp=4 * d_model,
                        act_fn=ACTIVATIONS[act])


def load_release_state(model_path: str) -> dict[str, Tensor]:
    """The raw state dict of ``model_<id>.pt``, loaded weights-only (no pickled code runs)."""
    state = safe_load.load_pickle(model_path, mmap=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise GrokscopeError(f"a {type(state).__name__}", expected="a plain dict of tensors",
                             where=model_path)
    return state


def expected_shapes(cfg: HookedTransformerConfig, d_vocab_release: int) -> dict[str, tuple[int, ...]]:
    """The release tensor shapes a config implies (buffers excluded)."""
    d, h, e, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    shapes = {"embed.W_E": (d, d_vocab_release), "pos_embed.W_pos": (cfg.n_ctx, d),
              "unembed.W_U": (d, d_vocab_release)}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        shapes.update({b + "attn.W_Q": (h, e, d), b + "attn.W_K": (h, e, d), b + "attn.W_V": (h, e, d),
                       b + "attn.W_O": (d, h * e), b + "mlp.W_in": (m, d), b + "mlp.b_in": (m,),
                       b + "mlp.W_out": (d, m), b + "mlp.b_out": (d,)})
    return shapes


def convert_state(state: dict[str, Tensor], cfg: HookedTransformerConfig, p: int,
                  where: str = "state dict") -> dict[str, Tensor]:
    """Map a release state dict to HookedTransformer names and layouts, checking every key and shape.

    W_E -> transpose; W_Q/K/V (h, e, d) -> (h, d, e); W_O (d, h*e) head-major -> (h, e, d);
    W_in, W_out -> transpose; W_U -> its first p columns; attention and unembedding biases zero.
    """
    weights = {k: v for k, v in state.items() if not k.endswith("attn.mask")}
    d_vocab_release = weights["embed.W_E"].shape[-1] if "embed.W_E" in weights else cfg.d_vocab
    shapes = expected_shapes(cfg, d_vocab_release)
    missing, unexpected = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if missing or unexpected:
        found = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(weights.items())[:6])
        raise GrokscopeError(f"keys {{{found}, ...}}: missing {missing[:4]}, unexpected {unexpected[:4]}",
                             expected=f"the release layout of a {cfg.n_layers}-layer model", where=where)
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise GrokscopeError(f"{name} of shape {tuple(weights[name].shape)}",
                                 expected=f"shape {shape} from the config", where=where)
    if d_vocab_release < cfg.d_vocab:
        raise GrokscopeError(f"embed.W_E with {d_vocab_release} token columns",
                             expected=f"at least d_vocab = {cfg.d_vocab} (p = {p})", where=where)
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    out = {"embed.W_E": weights["embed.W_E"].T[: cfg.d_vocab], "pos_embed.W_pos": weights["pos_embed.W_pos"],
           "unembed.W_U": weights["unembed.W_U"][:, :p], "unembed.b_U": torch.zeros(p)}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        for name in ("W_Q", "W_K", "W_V"):
            out[b + f"attn.{name}"] = weights[b + f"attn.{name}"].transpose(1, 2)
        for name in ("b_Q", "b_K", "b_V"):
            out[b + f"attn.{name}"] = torch.zeros(h, e)
        out[b + "attn.W_O"] = weights[b + "attn.W_O"].T.reshape(h, e, d)
        out[b + "attn.b_O"] = torch.zeros(d)
        out[b + "mlp.W_in"] = weights[b + "mlp.W_in"].T
        out[b + "mlp.b_in"] = weights[b + "mlp.b_in"]
        out[b + "mlp.W_out"] = weights[b + "mlp.W_out"].T
        out[b + "mlp.b_out"] = weights[b + "mlp.b_out"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def read_model(model_path: str | os.PathLike) -> Run:
    """One released model as a Run with a single checkpoint (step = the config's ``epoch``).

    Reads the config and the weights once to check every key and shape; the Run itself holds no
    weights and re-reads the file on ``run.model()``.
    """
    model_path = os.fspath(model_path)
    if os.path.basename(model_path).startswith("config_") and model_path.endswith(".json"):
        model_path = os.path.join(os.path.dirname(model_path),
                                  "model_" + os.path.basename(model_path)[len("config_"):-len(".json")] + ".pt")
    if not os.path.isfile(model_path):
        raise GrokscopeError("no such file", expected="a model_<id>.pt file", where=model_path)
    config_path = config_path_for(model_path)
    config = read_config(config_path)
    try:
        task = task_from_config(config, config_path)
        cfg = hooked_config(config, task)
        alpha = float(config["attn_coeff"])
    except GrokscopeError as error:
        raise GrokscopeError(error.found, expected=error.expected,
                             where=config_path) from None
    except (TypeError, ValueError) as error:
        raise GrokscopeError(str(error), expected="a release config (C a prime, sizes integers, "
                             "attn_coeff a number)", where=config_path) from None
    if not 0.0 <= alpha <= 1.0:
        raise GrokscopeError(f"attn_coeff = {alpha}", expected="a number in [0, 1]",
                             where=config_path)
    state = load_release_state(model_path)
    convert_state(state, cfg, task.p, where=model_path)  # validate now, fail with the file's name

    def load_state(i: int) -> dict[str, Tensor]:
        return convert_state(load_release_state(model_path), cfg, task.p, where=model_path)

    step = int(config.get("epoch", 0) or 0)
    return Run(task=task, cfg=cfg, steps=[step], load_state=load_state, source=model_path, format=FORMAT,
               alpha=alpha, train_indices=None, config=config, log=None, checkpoint_paths=[model_path])
