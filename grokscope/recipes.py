"""Training recipes: ``TrainConfig``, everything that determines one run, and the named ``PRESETS``.

The recipe is [N23]'s (SCIENCE.md section 5): full-batch AdamW (lr 1e-3, weight decay 1.0, betas
(0.9, 0.98)) on a fixed random fraction of the p^2 grid; [Z23]'s layout and attention rate with
``eq_token=False`` and ``alpha``; Grokfast-EMA [L24] optional.

>>> config = TrainConfig.preset("fast", epochs=3, d_model=32, p=23)
>>> config.task
Task(p=23, op='add', eq_token=True, diff_vocab=False)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

import contextlib
import math
import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from grokscope import checkpoints as ck
from grokscope.errors import GrokscopeError
from grokscope.limits import check_training_size
from grokscope.models import HookedTransformer, HookedTransformerConfig, build_model, nanda_config, pizza_config
from grokscope.tasks import Task

MODEL_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "act_fn", "d_vocab", "d_vocab_out",
                "n_ctx", "normalization_type", "positional_embedding_type", "attention_dir", "attn_only")
"""HookedTransformerConfig fields run.json stores; with them the reader rebuilds the model."""


_REAL_SETTINGS = ("frac", "alpha", "lr", "weight_decay", "grokfast_alpha", "grokfast_lamb")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Defaults are the [N23] recipe (p = 113, 30% train).

    Attributes:
        p, op, eq_token: the task (``Task(p, op, eq_token)``); eq_token=False also removes the causal mask.
        frac: the train fraction of the grid.
        n_layers, d_model, n_heads, d_mlp, act_fn: the architecture (d_mlp None means 4 * d_model).
        alpha: the [Z23] attention rate (1.0 is a standard transformer).
        lr, weight_decay, betas: full-batch AdamW.
        epochs: optimiser steps (one per epoch: the batch is the whole train split).
        seed: initialisation seed; split_seed: seed of the train/test split.
        grokfast, grokfast_alpha, grokfast_lamb: Grokfast-EMA [L24] and its a and lambda.
        checkpoint_every: steps between regular checkpoints.
        checkpoint_per_decade: log-spaced checkpoints per factor of ten in steps (dense early).
        log_every: steps between rows of log.csv (the final step is always logged).
    """

    p: int = 113
    op: str = "add"
    frac: float = 0.3
    eq_token: bool = True
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int | None = None
    act_fn: str = "relu"
    alpha: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    epochs: int = 15000
    seed: int = 0
    split_seed: int = 0
    grokfast: bool = False
    grokfast_alpha: float = 0.98
    grokfast_lamb: float = 2.0
    checkpoint_every: int = 100
    checkpoint_per_decade: int = 10
    log_every: int = 10

    def __post_init__(self):
        def check(ok: bool, name: str, expected: str):
            if not ok:
                raise GrokscopeError(f"{name} = {getattr(self, name)!r}", expected=expected, where="TrainConfig")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        self.task  # validates p, op, eq_token
        for name in ("n_layers", "d_model", "n_heads", "epochs", "checkpoint_every", "log_every"):
            check(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer")
        for name in ("seed", "split_seed", "checkpoint_per_decade"):
            check(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "a non-negative integer")
        check(self.d_mlp is None or (is_int(self.d_mlp) and self.d_mlp >= 1), "d_mlp", "a positive integer or None")
        check(self.d_model % self.n_heads == 0, "d_model", f"a multiple of n_heads = {self.n_heads}")
        check(is_number(self.frac) and 0 < self.frac < 1, "frac", "a number in (0, 1)")
        check(is_number(self.alpha) and 0 <= self.alpha <= 1, "alpha", "a number in [0, 1]")
        check(is_number(self.lr) and self.lr > 0, "lr", "a positive number")
        check(is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        check(isinstance(self.grokfast, bool), "grokfast", "true or false")
        check(is_number(self.grokfast_alpha) and 0 <= self.grokfast_alpha < 1, "grokfast_alpha",
              "a number in [0, 1)")
        check(is_number(self.grokfast_lamb) and self.grokfast_lamb >= 0, "grokfast_lamb", "a number >= 0")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None
        check(betas is not None and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
              "betas", "two numbers in [0, 1)")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        for name in _REAL_SETTINGS:
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "act_fn", str(self.act_fn).lower())
        check_training_size(self)  # before any schedule, model or optimiser state is built

    # ----- derived objects ------------------------------------------------------------------------
    @property
    def task(self) -> Task:
        """The task this config trains on."""
        return Task(p=self.p, op=self.op, eq_token=self.eq_token)

    def model_config(self) -> HookedTransformerConfig:
        """The HookedTransformerConfig of the model ([N23] layout, or [Z23] without the ``=`` token)."""
        make = nanda_config if self.eq_token else pizza_config
        with preserved_global_rng():  # HookedTransformerConfig(seed=...) seeds every global RNG
            return make(self.task, n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                        d_mlp=self.d_mlp, act_fn=self.act_fn, seed=self.seed)

    def init_model(self) -> HookedTransformer:
        """The model at step 0: initialised from ``seed`` alone, global RNG states left untouched."""
        cfg = self.model_config()
        with preserved_global_rng():
            return build_model(cfg, self.alpha)

    def train_indices(self) -> Int[Tensor, "n_train"]:
        """The train rows of the grid, from ``frac`` and ``split_seed``."""
        return self.task.split(self.frac, self.split_seed)

    def checkpoint_steps(self) -> list[int]:
        """The steps that get a checkpoint (``checkpoints.checkpoint_steps``)."""
        return ck.checkpoint_steps(self.epochs, self.checkpoint_every, self.checkpoint_per_decade)

    # ----- construction ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (betas as a list)."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config of ``to_dict`` output; unknown or missing keys raise GrokscopeError naming them."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        missing = [name for name in known if name not in data]
        if unknown or missing:
            found = ", ".join(part for part in (f"unknown keys {unknown}" if unknown else "",
                                                f"missing keys {missing}" if missing else "") if part)
            raise GrokscopeError(found, expected=f"exactly the keys {known}", where="TrainConfig.from_dict")
        data = dict(data)
        if isinstance(data["betas"], list):
            data["betas"] = tuple(data["betas"])
        for name in _REAL_SETTINGS:  # JSON written by hand may hold 0 for 0.0
            if isinstance(data[name], int) and not isinstance(data[name], bool):
                data[name] = float(data[name])
        return cls(**data)

    def replace(self, **overrides: Any) -> "TrainConfig":
        """A copy with some settings changed; unknown names raise GrokscopeError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise GrokscopeError(f"settings {unknown}", expected=f"names among {sorted(known)}",
                                 where="TrainConfig")
        return replace(self, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """A named recipe from ``PRESETS`` (docs/presets.md), with optional overrides."""
        if name not in PRESETS:
            raise GrokscopeError(f"preset {name!r}", expected=f"one of {sorted(PRESETS)}", where="TrainConfig")
        return PRESETS[name].replace(**overrides)


PRESETS: dict[str, TrainConfig] = {
    # Groks in about a minute on 2 CPU cores: train accuracy 99% near epoch 60, test 99% near 500-700.
    "fast": TrainConfig(p=59, frac=0.5, lr=3e-3, epochs=1000, checkpoint_every=20, log_every=10),
    # The [N23] run: p = 113, 30% train, AdamW lr 1e-3, wd 1.0, betas (0.9, 0.98).
    "nanda": TrainConfig(),
    # A [Z23] run: p = 59, 80% train, wd 2.0, constant attention (alpha 0), tokens [a, b], no causal mask.
    "pizza": TrainConfig(p=59, frac=0.8, eq_token=False, alpha=0.0, weight_decay=2.0, epochs=20000,
                         checkpoint_every=200),
}
"""The named training recipes; measured figures in docs/presets.md."""


@contextlib.contextmanager
def preserved_global_rng():
    """Restore torch's, Python's and numpy's global random states on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
