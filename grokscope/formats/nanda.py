"""The layout of the [N23] progress-measures code: whole runs in one file, and single models.

Parameter names and shapes of that code, and their HookedTransformer equivalents:

| [N23] key | shape | HookedTransformer |
|---|---|---|
| embed.W_E | (d_model, d_vocab) | W_E = transpose, (d_vocab, d_model) |
| pos_embed.W_pos | (n_ctx, d_model) | the same |
| blocks.l.attn.W_Q / W_K / W_V | (heads, d_head, d_model) | transpose the last two, (heads, d_model, d_head) |
| blocks.l.attn.W_O | (d_model, heads * d_head), head-major | (heads, d_head, d_model) |
| blocks.l.attn.mask | (n_ctx, n_ctx) causal buffer | dropped (rebuilt by ``attention_dir="causal"``) |
| blocks.l.mlp.W_in, b_in | (d_mlp, d_model), (d_mlp,) | transpose, (d_model, d_mlp); b_in as is |
| blocks.l.mlp.W_out, b_out | (d_model, d_mlp), (d_model,) | transpose, (d_mlp, d_model); b_out as is |
| unembed.W_U | (d_model, d_vocab) = p + 1 outputs | the ``=`` column dropped, (d_model, p) |

There are no attention or unembedding biases (they load as zeros) and no LayerNorm. Attention is
causal with scores scaled by 1/sqrt(d_head), as in HookedTransformer.

Files: a whole run ``{state_dicts: [...], epochs?, model?, train_losses, test_losses, config}`` (one
state dict every ``save_every`` epochs); a single model ``{model: state_dict, epoch?, ...}`` (also the
code's ``init.pth``, whose ``train_data`` lists the train pairs) or a bare state dict.

The train split of the code: the list of pairs (a, b, =) in lexicographic order, shuffled in place by
Python's ``random`` seeded with ``config["seed"]``; the first ``int(frac_train * p^2)`` are train.
``train_indices`` rebuilds it exactly.
"""

import os
import random
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.formats import infer, safe_load
from grokscope.formats.base import Run

FORMAT = "nanda"


# ----- weights ---------------------------------------------------------------------------------

def to_hooked(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The [N23] parameters under HookedTransformer names and shapes (see the module table).

    Keys it does not know pass through unchanged, so the structure checks can name them.

    >>> state = {"embed.W_E": torch.zeros(8, 6), "blocks.0.attn.W_Q": torch.zeros(2, 4, 8),
    ...          "blocks.0.attn.W_O": torch.zeros(8, 2 * 4)}
    >>> {k: tuple(v.shape) for k, v in to_hooked(state).items()}
    {'embed.W_E': (6, 8), 'blocks.0.attn.W_Q': (2, 8, 4), 'blocks.0.attn.W_O': (2, 4, 8)}
    """
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(infer.BUFFER_SUFFIXES):
            continue
        suffix = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if name == "embed.W_E" and tensor.ndim == 2:
            tensor = tensor.T
        elif suffix in ("attn.W_Q", "attn.W_K", "attn.W_V") and tensor.ndim == 3:
            tensor = tensor.transpose(1, 2)
        elif suffix == "attn.W_O" and tensor.ndim == 2:
            w_q = state.get(name[: -len("W_O")] + "W_Q")
            n_heads = w_q.shape[0] if isinstance(w_q, Tensor) and w_q.ndim == 3 else 1
            d_model, width = tensor.shape
            if width % n_heads:
                raise GrokscopeError(f"{name} of shape {tuple(tensor.shape)} with {n_heads} heads",
                                     expected="d_model x (heads * d_head)", where="nanda.to_hooked")
            tensor = tensor.T.reshape(n_heads, width // n_heads, d_model)
        elif suffix in ("mlp.W_in", "mlp.W_out") and tensor.ndim == 2:
            tensor = tensor.T
        out[name] = tensor
    return out


def hints_from_config(config: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """Canonical hints (see ``infer.infer_model``) from the code's config (p, fn_name, d_model,
    num_heads, d_mlp, num_layers, n_ctx, d_vocab, act_type)."""
    config = config or {}
    hints: dict[str, Any] = {"attention_dir": "causal"}
    if config.get("fn_name") == "rand":
        raise GrokscopeError("fn_name 'rand' (random labels) in the config",
                             expected="a modular-arithmetic operation", where=where)
    if config.get("fn_name") is not None:
        hints["op"] = infer.operation_from(config["fn_name"], where)
    renames = {"p": "p", "d_model": "d_model", "num_heads": "n_heads", "d_mlp": "d_mlp",
               "num_layers": "n_layers", "n_ctx": "n_ctx", "d_vocab": "d_vocab"}
    for key, name in renames.items():
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            hints[name] = config[key]
    if config.get("act_type") is not None:
        hints["act_fn"] = str(config["act_type"]).lower()
    return hints


def train_indices(p: int, frac_train: float, seed: int) -> Int[Tensor, "n_train"]:
    """The [N23] code's train rows of the lexicographic grid, ascending.

    The code shuffles the a-major list of the p^2 pairs with ``random.seed(seed); random.shuffle``
    and keeps the first ``int(frac_train * p^2)``; a shuffle moves positions the same way whatever the
    elements are, so shuffling the row numbers gives the same rows.

    >>> train_indices(113, 0.3, seed=0).shape
    torch.Size([3830])
    """
    order = list(range(p * p))
    random.Random(seed).shuffle(order)
    return torch.tensor(sorted(order[: int(frac_train * len(order))]), dtype=torch.long)


def rows_from_pairs(pairs: Any, p: int) -> Tensor:
    """Grid rows a*p + b of a list of (a, b, ...) pairs, ascending (the code's ``train_data``)."""
    rows = sorted(int(pair[0]) * p + int(pair[1]) for pair in pairs)
    return torch.tensor(rows, dtype=torch.long)


# ----- recognising the layout ------------------------------------------------------------------

def is_run_object(obj: Any) -> bool:
    """Whether a loaded file is a whole [N23] run (a list of state dicts under ``state_dicts``)."""
    dicts = obj.get("state_dicts") if isinstance(obj, dict) else None
    return isinstance(dicts, (list, tuple)) and len(dicts) > 0 and infer.is_state_dict(dicts[0])


def model_state(obj: Any) -> dict[str, Tensor] | None:
    """The one state dict of a single-model file (bare, or under ``model`` / ``state_dict``)."""
    if infer.is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if infer.is_state_dict(obj.get(key)):
                return obj[key]
    return None


def matches_object(obj: Any) -> bool:
    """Whether a loaded file is in this layout (a whole run, or one model with a 2-D W_O)."""
    if is_run_object(obj):
        return infer.layout_of(obj["state_dicts"][0]) == FORMAT
    state = model_state(obj)
    return state is not None and infer.layout_of(state) == FORMAT


def matches(path: str) -> bool:
    """Whether ``path`` is a file in this layout (a [Z23] release model beside its config is not)."""
    if not os.path.isfile(path) or _is_pizza_release(path):
        return False
    try:
        return matches_object(safe_load.load_checkpoint(path))
    except GrokscopeError:
        return False


def _is_pizza_release(path: str) -> bool:
    name = os.path.basename(path)
    if not (name.startswith("model_") and name.endswith(".pt")):
        return False
    return os.path.isfile(os.path.join(os.path.dirname(path), f"config_{name[6:-3]}.json"))


# ----- reading ---------------------------------------------------------------------------------

def read(path: str, *, trust_pickle: bool = False) -> Run:
    """Read an [N23] run or single model from ``path``."""
    return from_object(safe_load.load_checkpoint(path, trust_pickle=trust_pickle), path)


def _floats(values: Any) -> list[float] | None:
    if values is None:
        return None
    if isinstance(values, Tensor):
        values = values.flatten().tolist()
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def loss_log(train_losses: Any, test_losses: Any) -> dict[str, list] | None:
    """Per-epoch curves as Run.log columns. When the test loss was logged every k epochs (k =
    len(train) / len(test), a whole number), rows are kept every k epochs."""
    train, test = _floats(train_losses), _floats(test_losses)
    if not train and not test:
        return None
    if train and test and len(train) != len(test):
        stride = len(train) // len(test)
        if stride * len(test) == len(train):
            return {"step": list(range(0, len(train), stride)), "train_loss": train[::stride], "test_loss": test}
        return {"step": list(range(len(train))), "train_loss": train}
    log: dict[str, list] = {"step": list(range(len(train or test)))}
    if train:
        log["train_loss"] = train
    if test:
        log["test_loss"] = test
    return log


def _steps(obj: dict, n: int, config: dict, inferred: dict) -> list[int]:
    epochs = obj.get("epochs")
    if isinstance(epochs, Tensor):
        epochs = epochs.tolist()
    if isinstance(epochs, (list, tuple)) and len(epochs) == n and all(isinstance(e, int) for e in epochs):
        return [int(e) for e in epochs]
    every = config.get("save_every")
    if isinstance(every, int) and every > 0:
        inferred["steps"] = f"checkpoint i at epoch i * save_every = {every} i"
        return [i * every for i in range(n)]
    inferred["steps"] = "checkpoint indices (no epochs recorded)"
    return list(range(n))


def _split(obj: dict, config: dict, task_p: int, path: str) -> tuple[Tensor | None, str]:
    if isinstance(obj.get("train_data"), (list, tuple)) and obj["train_data"]:
        return rows_from_pairs(obj["train_data"], task_p), "train_data in the file"
    seed, frac = config.get("seed"), config.get("frac_train")
    if isinstance(seed, int) and isinstance(frac, (int, float)) and 0 < frac < 1:
        rows = train_indices(task_p, float(frac), seed)
        return rows, f"rebuilt from seed = {seed}, frac_train = {frac} with Python's random, as the [N23] code"
    return None, "unknown (no seed and frac_train in the config)"


def from_object(obj: Any, path: str) -> Run:
    """A Run from a loaded [N23] file: a whole run, or one model."""
    if is_run_object(obj):
        sources = list(obj["state_dicts"])
    else:
        state = model_state(obj)
        if state is None:
            raise GrokscopeError(f"keys {infer.describe_keys(obj) if isinstance(obj, dict) else type(obj).__name__}",
                                 expected="an [N23] run {state_dicts, ...} or model {model, ...}", where=path)
        sources = [state]
    wrapper = obj if isinstance(obj, dict) and not infer.is_state_dict(obj) else {}
    config = wrapper.get("config") if isinstance(wrapper.get("config"), dict) else {}
    if not isinstance(wrapper.get("config"), (dict, type(None))):
        config = dict(getattr(wrapper["config"], "__dict__", {}))
    hints = hints_from_config(config, path)
    first = to_hooked(sources[0])
    task, cfg, inferred = infer.infer_model(first, where=path, hints=hints,
                                            describe=infer.describe_keys(sources[0]))
    if is_run_object(obj):
        steps = _steps(wrapper, len(sources), config, inferred)
        final = model_state(wrapper) if "model" in wrapper else None
        final_epoch = wrapper.get("epoch", config.get("num_epochs"))
        if final is not None and isinstance(final_epoch, int) and final_epoch > max(steps):
            sources.append(final)
            steps.append(final_epoch)
    else:
        epoch = wrapper.get("epoch")
        steps = [int(epoch) if isinstance(epoch, int) else 0]
    order = sorted(range(len(steps)), key=steps.__getitem__)
    if len(set(steps)) != len(steps):
        raise GrokscopeError(f"repeated epochs {sorted(steps)[:6]}", expected="one checkpoint per epoch", where=path)
    sources, steps = [sources[i] for i in order], [steps[i] for i in order]
    split, split_note = _split(wrapper, config, task.p, path)

    def load_state(i: int) -> dict[str, Tensor]:
        where = f"{path} (checkpoint {i}, epoch {steps[i]})"
        return infer.prepare_state(to_hooked(sources[i]), cfg, where=where)

    run_config = infer.json_safe(config)
    run_config.update(inferred=inferred, split=split_note, layout="run" if is_run_object(obj) else "model")
    log = loss_log(wrapper.get("train_losses"), wrapper.get("test_losses"))
    return Run(task=task, cfg=cfg, steps=steps, load_state=load_state, source=path, format=FORMAT, alpha=1.0,
               train_indices=split, config=run_config, log=log)

