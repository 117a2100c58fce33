"""The TransformerLens grokking-demo bundle: a whole run in one ``torch.save`` file.

Keys: ``model`` (the final HookedTransformer state dict), ``config`` (a pickled
HookedTransformerConfig, read through the weights-only allow-list of ``safe_load``, never a free
unpickle; on TransformerLens 4.x, which has no such class, its fields load into a plain holder), ``checkpoints`` (a list of state dicts), ``checkpoint_epochs`` (their epochs),
``train_losses`` and ``test_losses`` (one per epoch), ``train_indices`` and ``test_indices`` (rows of the
lexicographic grid of [a, b, =] inputs). The state dicts are already in HookedTransformer layout; the
task is inferred from the weights and the config (the demo trains a + b mod 113 with the ``=``
token, d_vocab = p + 1, d_vocab_out = p).

The file holds every checkpoint, so the Run keeps that one file open (memory-mapped where the file
allows) and converts a checkpoint when it is asked for.
"""

import os
from typing import Any

import torch
from torch import Tensor

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.formats import infer, nanda, safe_load
from grokscope.formats.base import Run
from grokscope.formats.transformer_lens import config_fields, hints_from_fields

FORMAT = "tl_demo"
KEYS = ("model", "config", "checkpoints", "checkpoint_epochs", "train_losses", "test_losses", "train_indices",
        "test_indices")


def matches_object(obj: Any) -> bool:
    """Whether a loaded file is a demo bundle: checkpoints with their epochs, or a model with a pickled
    HookedTransformerConfig and a split."""
    if not isinstance(obj, dict) or infer.is_state_dict(obj):
        return False
    if isinstance(obj.get("checkpoints"), (list, tuple)) and "checkpoint_epochs" in obj:
        return True
    return (isinstance(obj.get("config"), backend.CONFIG_CLASSES) and infer.is_state_dict(obj.get("model"))
            and "train_indices" in obj)


def matches(path: str) -> bool:
    """Whether ``path`` is a demo bundle."""
    if not os.path.isfile(path):
        return False
    try:
        return matches_object(safe_load.load_checkpoint(path))
    except GrokscopeError:
        return False


def read(path: str, *, trust_pickle: bool = False) -> Run:
    """A Run from a demo bundle file."""
    return from_object(safe_load.load_checkpoint(path, trust_pickle=trust_pickle), path)


def _epochs(value: Any) -> list[int] | None:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return None


def from_object(obj: Any, path: str) -> Run:
    """A Run from a loaded demo bundle."""
    if not matches_object(obj):
        found = infer.describe_keys(obj) if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise GrokscopeError(f"keys {found}", expected=f"a TransformerLens grokking-demo bundle {{{', '.join(KEYS)}}}",
                             where=path)
    sources = list(obj.get("checkpoints") or [])
    steps = _epochs(obj.get("checkpoint_epochs")) if sources else []
    if sources and (steps is None or len(steps) != len(sources)):
        epochs = str(obj.get("checkpoint_epochs"))[:60]
        raise GrokscopeError(f"{len(sources)} checkpoints with checkpoint_epochs {epochs}",
                             expected="one whole-number epoch per checkpoint", where=path)
    steps = list(steps or [])
    final = obj.get("model")
    n_epochs = len(obj.get("train_losses") or [])
    if infer.is_state_dict(final) and (not steps or n_epochs - 1 > steps[-1]):
        sources.append(final)
        steps.append(max(n_epochs - 1, steps[-1] + 1 if steps else 0))
    if not sources:
        raise GrokscopeError("no checkpoints and no model", expected="a bundle with at least one state dict",
                             where=path)
    for i, source in enumerate(sources):
        if not infer.is_state_dict(source):
            raise GrokscopeError(f"checkpoint {i} of type {type(source).__name__}", expected="a state dict", where=path)
    if len(set(steps)) != len(steps) or steps != sorted(steps):
        raise GrokscopeError(f"checkpoint_epochs {steps[:6]}...", expected="distinct ascending epochs", where=path)
    fields = config_fields(obj.get("config"))
    hints = hints_from_fields(fields, path)
    first = nanda.to_hooked(sources[0]) if infer.layout_of(sources[0]) == "nanda" else sources[0]
    task, cfg, inferred = infer.infer_model(first, where=path, hints=hints, describe=infer.describe_keys(sources[0]))

    def load_state(i: int) -> dict[str, Tensor]:
        state = sources[i]
        state = nanda.to_hooked(state) if infer.layout_of(state) == "nanda" else state
        return infer.prepare_state(state, cfg, where=f"{path} (checkpoint {i}, epoch {steps[i]})")

    split = obj.get("train_indices")
    if split is not None:
        split = (split if isinstance(split, Tensor) else torch.tensor(list(split))).long().sort().values
        if split.numel() and (int(split.max()) >= task.n_inputs or int(split.min()) < 0):
            raise GrokscopeError(f"train_indices up to {int(split.max())}",
                                 expected=f"rows of the {task.n_inputs}-row grid", where=path)
    run_config = infer.json_safe(fields)
    run_config.update(inferred=inferred)
    alpha = infer.alpha_from(fields, path)
    return Run(task=task, cfg=cfg, steps=steps, load_state=load_state, source=path, format=FORMAT,
               alpha=1.0 if alpha is None else alpha, train_indices=split, config=run_config,
               log=nanda.loss_log(obj.get("train_losses"), obj.get("test_losses")))
