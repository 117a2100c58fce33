"""Full-batch training of modular-arithmetic transformers into the native run format.

The recipe is [N23]'s (SCIENCE.md section 5): full-batch AdamW (lr 1e-3, weight decay 1.0, betas
(0.9, 0.98)) on a fixed random fraction of the p^2 grid, loss = float64 cross-entropy of the read-out
logits (``models.final_logits``, exactly ``model(tokens)[:, -1]``). Attention and unembedding biases
stay frozen at zero; every other HookedTransformer parameter trains, MLP biases included.
Optional Grokfast-EMA [L24] amplifies the slow gradient component between backward and step:
mu_0 = g_0, mu_t = a*mu_{t-1} + (1-a)*g_t, g_t <- g_t + lam*mu_t.

Tokens follow the task: with ``eq_token`` the [N23] layout ``[a, b, =]`` and causal attention; without
it the [Z23] layout ``[a, b]`` with no causal mask (``models.pizza_config``), where ``alpha`` is the
attention rate.

Step s means "after s optimiser updates"; checkpoint s and log row s describe the same weights.
A run killed at any moment resumes from its newest complete checkpoint when ``train`` is called
again with the same config and folder, and ends bitwise identical to an uninterrupted run.

>>> config = TrainConfig.preset("fast", epochs=3, d_model=32, p=23)
>>> config.task
Task(p=23, op='add', eq_token=True, diff_vocab=False)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

import grokscope
from grokscope import checkpoints as ck
from grokscope.errors import GrokscopeError
from grokscope.formats import native
from grokscope.formats.base import Run
from grokscope.models import (HookedTransformer, HookedTransformerConfig, build_model, cross_entropy_f64,
                              final_logits, nanda_config, parameter_state_dict, pizza_config)
from grokscope.monitor import LOG_MONITOR_COLUMNS, TrainOnlyMonitor, detect_phases
from grokscope.progress import Progress
from grokscope.tasks import Task, held_out_mask

FROZEN_PARAMETERS = ("b_Q", "b_K", "b_V", "b_O", "b_U")
"""Name endings of the parameters held at zero during training (the recipes train only MLP biases)."""

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


class GrokfastEMA:
    """Grokfast-EMA [L24]: after backward, g <- g + lam * mu with mu an EMA of past gradients.

    mu = g on the first call, then mu = a * mu + (1 - a) * g (per parameter, before the step).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], alpha: float = 0.98, lamb: float = 2.0):
        self.params, self.alpha, self.lamb = params, float(alpha), float(lamb)
        self.mu: dict[str, Tensor] = {}

    @torch.no_grad()
    def apply(self) -> None:
        """Filter the gradients held in ``.grad`` in place."""
        for name, param in self.params.items():
            if param.grad is None:
                continue
            if name in self.mu:
                self.mu[name].mul_(self.alpha).add_(param.grad, alpha=1.0 - self.alpha)
            else:
                self.mu[name] = param.grad.detach().clone()
            param.grad.add_(self.mu[name], alpha=self.lamb)


def run_metadata(config: TrainConfig, finished: bool = False, wall_time_s: float | None = None,
                 monitor_s: float | None = None) -> dict:
    """The content of run.json for ``config``.

    ``monitor_s``: seconds spent in the train-only monitor since the run last started (a resumed run
    counts only its last session, while ``wall_time_s`` covers every session).
    """
    cfg = config.model_config()
    return {
        "format": ck.FORMAT_NAME,
        "format_version": ck.FORMAT_VERSION,
        "grokscope_version": grokscope.__version__,
        "task": config.task.to_dict(),
        "model": {name: getattr(cfg, name) for name in MODEL_FIELDS},
        "attention_rate": config.alpha,
        "optimizer": {"name": "AdamW", "lr": config.lr, "weight_decay": config.weight_decay,
                      "betas": list(config.betas), "batch": "full",
                      "frozen_at_zero": list(FROZEN_PARAMETERS),
                      "grokfast": {"alpha": config.grokfast_alpha, "lamb": config.grokfast_lamb}
                      if config.grokfast else None},
        "schedule": {"epochs": config.epochs, "checkpoint_every": config.checkpoint_every,
                     "checkpoint_per_decade": config.checkpoint_per_decade, "log_every": config.log_every},
        "seeds": {"init": config.seed, "split": config.split_seed},
        "train_config": config.to_dict(),
        "status": {"finished": finished, "wall_time_s": wall_time_s, "monitor_s": monitor_s},
    }


def _config_differences(saved: dict, config: TrainConfig) -> list[str]:
    wanted = json.loads(json.dumps(config.to_dict()))
    names = list(wanted) + sorted(set(saved) - set(wanted))
    return [f"{name} = {saved.get(name, '(absent)')!r} there but {wanted.get(name, '(absent)')!r} here"
            for name in names if saved.get(name, "(absent)") != wanted.get(name, "(absent)")]


def _prepare_folder(out: Path, config: TrainConfig) -> dict | None:
    """Check ``out`` can hold this run; returns the saved run.json, or None for a new run."""
    if out.exists() and not out.is_dir():
        raise GrokscopeError("a file", expected="a folder for the run (or a new path)", where=str(out))
    run_json = out / ck.RUN_JSON
    if run_json.exists():
        saved = ck.read_json(run_json)
        if saved.get("format") != ck.FORMAT_NAME or not isinstance(saved.get("train_config"), dict):
            raise GrokscopeError("a run.json that is not a grokscope run", expected="a grokscope run folder",
                                 where=str(run_json))
        differences = _config_differences(saved["train_config"], config)
        if differences:
            raise GrokscopeError(f"a run of a different configuration ({'; '.join(differences)})",
                                 expected="the same settings to resume it, or another --out folder",
                                 where=str(out))
        return saved
    if out.is_dir() and any(not ck.is_temporary(entry.name) for entry in out.iterdir()):
        raise GrokscopeError("a non-empty folder without run.json",
                             expected="a new or empty folder, or a grokscope run to resume", where=str(out))
    return None


def train(config: TrainConfig, out: str | Path, *, progress: bool = True) -> Run:
    """Train ``config`` into the native run folder ``out`` and return it read back (``formats.native.read``).

    Resumes an interrupted run of the same config in ``out``; returns a finished one as it is; refuses
    (GrokscopeError) a folder holding a run of another config, naming the settings that differ.
    ``progress`` draws a progress bar on stderr when it is a terminal.

    >>> import tempfile
    >>> run = train(TrainConfig.preset("fast", p=13, d_model=16, epochs=3), tempfile.mkdtemp(), progress=False)
    >>> run.steps, run.log["step"]
    ([0, 1, 2, 3], [0, 3])
    """
    if not isinstance(config, TrainConfig):
        raise GrokscopeError(f"a {type(config).__name__}", expected="a TrainConfig", where="train")
    out = Path(out)
    saved = _prepare_folder(out, config)
    if saved is not None and saved.get("status", {}).get("finished"):
        (out / ck.RESUME_FILE).unlink(missing_ok=True)
        return native.read(out)
    checkpoint_dir = out / ck.CHECKPOINT_DIR
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out, checkpoint_dir):
        ck.remove_temporaries(folder)
    if saved is None:
        ck.write_json(out / ck.RUN_JSON, run_metadata(config))

    task, train_idx = config.task, config.train_indices()
    split_path = out / ck.SPLIT_FILE
    if not split_path.exists() or not torch.equal(ck.load_tensors(split_path)[0].get("train_indices"),
                                                  train_idx):
        ck.save_tensors(split_path, {"train_indices": train_idx},
                        metadata={"frac": repr(config.frac), "split_seed": str(config.split_seed),
                                  "n_inputs": str(task.n_inputs)})
    tokens, labels = task.tokens(), task.labels()
    test_mask = held_out_mask(task.n_inputs, train_idx)
    train_tokens, train_labels = tokens[train_idx], labels[train_idx]
    test_tokens, test_labels = tokens[test_mask], labels[test_mask]

    model = config.init_model()
    model.train()
    trainable = {}
    for name, param in model.named_parameters():
        if name.endswith(FROZEN_PARAMETERS):
            param.requires_grad_(False)
        else:
            trainable[name] = param
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    grokfast = GrokfastEMA(trainable, config.grokfast_alpha, config.grokfast_lamb) if config.grokfast else None

    start, elapsed = 0, 0.0
    resume_path, log_path = out / ck.RESUME_FILE, out / ck.LOG_CSV
    log = {column: [] for column in (*ck.LOG_COLUMNS, *LOG_MONITOR_COLUMNS)}
    monitor = TrainOnlyMonitor(task, train_idx)  # train rows only: the phase shown needs no test set
    if resume_path.exists():
        start, elapsed = ck.load_resume(resume_path, model, optimizer, trainable, grokfast)
        if log_path.exists():
            log = _with_monitor_columns(ck.truncate_log(ck.read_log(log_path), start - 1))
            monitor.replay(log)
    schedule = set(config.checkpoint_steps())
    clock = time.perf_counter()

    with Progress(config.epochs, desc=f"train p={task.p} {task.op}", initial=start, enabled=progress) as bar:
        for step in range(start, config.epochs + 1):
            last = step == config.epochs
            with torch.set_grad_enabled(not last):
                logits = final_logits(model, train_tokens)
                loss = cross_entropy_f64(logits, train_labels)
            if step % config.log_every == 0 or last:
                with torch.no_grad():
                    test_logits = final_logits(model, test_tokens)
                    row = (step, loss.item(), cross_entropy_f64(test_logits, test_labels).item(),
                           (logits.argmax(-1) == train_labels).double().mean().item(),
                           (test_logits.argmax(-1) == test_labels).double().mean().item())
                for column, value in zip(ck.LOG_COLUMNS, row):
                    log[column].append(value)
                for column, value in monitor.measure(model, step, train_logits=logits).items():
                    log[column].append(value)
                bar.update(step, train_loss=row[1], test_loss=row[2], train_acc=row[3], test_acc=row[4],
                           phase=monitor.phase)
            if step in schedule:
                ck.save_tensors(checkpoint_dir / ck.checkpoint_filename(step), parameter_state_dict(model),
                                metadata={"step": str(step)})
                ck.atomic_write(log_path, ck.log_to_csv(log))  # before the resume state, never after
                if not last:
                    ck.save_resume(resume_path, step, model, optimizer, trainable, grokfast,
                                 elapsed + time.perf_counter() - clock)
            if last:
                break
            loss.backward()
            if grokfast is not None:
                grokfast.apply()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(step + 1)
    wall_time = elapsed + time.perf_counter() - clock
    ck.write_json(out / ck.RUN_JSON, run_metadata(config, finished=True, wall_time_s=round(wall_time, 3),
                                                  monitor_s=round(monitor.seconds, 3)))
    resume_path.unlink(missing_ok=True)
    return native.read(out)


def _with_monitor_columns(log: dict[str, list]) -> dict[str, list]:
    """A log read back, with empty train-only columns added where an older version wrote none."""
    n = len(log["step"])
    for column in LOG_MONITOR_COLUMNS:
        log.setdefault(column, [math.nan] * n if column != LOG_MONITOR_COLUMNS[-1] else [""] * n)
    return log


def first_step_at(log: dict[str, list], column: str, threshold: float = 0.99) -> int | None:
    """The first logged step where ``column`` reaches ``threshold`` (None if never)."""
    for step, value in zip(log["step"], log[column]):
        if value >= threshold:
            return int(step)
    return None


def summarize(run) -> dict[str, Any]:
    """Headline figures of a native run: epochs of train and test accuracy >= 99%, their ratio, finals."""
    log = run.log or {column: [] for column in ck.LOG_COLUMNS}
    train_99, test_99 = first_step_at(log, "train_acc"), first_step_at(log, "test_acc")
    # The final row of the five classic columns; the train-only ones are summarised by "train_only".
    final = {column: log[column][-1] for column in ck.LOG_COLUMNS} if log["step"] else {}
    detection = None
    if log["step"] and "trainonly_restricted_loss" in log:
        detection = detect_phases(log, run.task.p)[0]
    return {
        "train_99_step": train_99,
        "test_99_step": test_99,
        "delay_ratio": test_99 / train_99 if train_99 and test_99 is not None else None,
        "final": final,
        "checkpoints": len(run.steps),
        "wall_time_s": run.config.get("status", {}).get("wall_time_s"),
        "monitor_s": run.config.get("status", {}).get("monitor_s"),
        "train_only": detection.to_dict() if detection is not None else None,
    }
