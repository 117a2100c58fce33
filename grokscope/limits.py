"""Sizes that cannot fit, refused before anything is allocated.

One rule, stated once: everything grokscope holds at a time must fit in a quarter of the machine's
physical memory, ``memory_limit()`` (``os.sysconf``: SC_PHYS_PAGES x SC_PAGE_SIZE / 4; the other
three quarters leave room for the temporaries a forward pass makes and for the rest of the machine).
The sizes measured against it:

- a task: the float64 logits over the whole grid, ``grid_bytes(p) = p^2 x p x 8`` (training,
  analysis and classification all evaluate every (a, b) pair at once), checked before the prime
  test so that an absurd p is refused at once rather than tested for primality;
- a model: ``model_bytes(cfg)``, its float32 parameters counted from the config;
- a file: the bytes a safetensors header declares (``safetensors_bytes``), before any tensor is read;
- a training schedule: the steps and log rows kept in memory (``schedule_bytes``);
- an analysis: its table, one row of numbers per checkpoint (``table_bytes``).

A refusal is a GrokscopeError naming what was asked, its size and the limit.

>>> grid_bytes(113)
11543176
>>> check_size(grid_bytes(113), "p = 113", where="Task", limit=10**9)
>>> check_size(grid_bytes(1_000_003), "p = 1000003", where="--p", limit=4 * 2**30)
Traceback (most recent call last):
...
grokscope.errors.GrokscopeError: --p: found p = 1000003, which needs 6.9 EiB; expected at most 4.0 GiB
"""

import json
import math
import os
import struct

from grokscope.errors import GrokscopeError

MEMORY_FRACTION = 4
"""The share of physical memory one grokscope process may plan to hold: 1 / MEMORY_FRACTION."""

MAX_HEADER_BYTES = 100_000_000
"""The largest safetensors JSON header read (the safetensors library's own limit)."""

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per element of each safetensors dtype."""

_STEP_BYTES = 64
"""Memory of one int in a Python set or one float in a list, with its share of the container."""


def physical_memory() -> int:
    """The machine's physical memory in bytes (``os.sysconf``); 16 GiB where it cannot be read."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def memory_limit() -> int:
    """The bytes one process may plan to hold: physical memory / ``MEMORY_FRACTION``."""
    return physical_memory() // MEMORY_FRACTION


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units with one decimal.

    >>> format_bytes(1536), format_bytes(3 * 2**40)
    ('1.5 KiB', '3.0 TiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} EiB"


def check_size(needed: float, what: str, *, where: str, limit: int | None = None) -> None:
    """Raise GrokscopeError when ``needed`` bytes exceed ``limit`` (default ``memory_limit()``)."""
    rule = ""
    if limit is None:
        limit = memory_limit()
        rule = f" (a quarter of this machine's {format_bytes(physical_memory())} of memory)"
    if needed > limit:
        raise GrokscopeError(f"{what}, which needs {format_bytes(needed)}",
                             expected=f"at most {format_bytes(limit)}{rule}", where=where)


def grid_bytes(p: int) -> int:
    """Bytes of the float64 logits over the whole grid of a task with modulus ``p``: p^2 x p x 8."""
    return p * p * p * 8


def check_task_size(p: int, *, where: str = "Task") -> None:
    """Refuse a modulus whose full-grid logits (``grid_bytes``) do not fit in ``memory_limit()``."""
    check_size(grid_bytes(p), f"p = {p}", where=where)


def model_bytes(cfg) -> int:
    """Bytes of the float32 parameters of a HookedTransformerConfig (embeddings, attention, MLP, unembed).

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(d_vocab=114, d_vocab_out=113, n_ctx=3, d_model=128, n_heads=4, d_head=32,
    ...                       d_mlp=512, n_layers=1)
    >>> model_bytes(cfg) // 4  # the [N23] model: 226,048 weights and 1,265 biases
    227313
    """
    d_model, heads, d_head = int(cfg.d_model), int(cfg.n_heads), int(cfg.d_head)
    d_mlp = int(cfg.d_mlp or 0)
    per_layer = 4 * heads * d_model * d_head + 3 * heads * d_head + d_model + 2 * d_model * d_mlp + d_mlp + d_model
    total = (int(cfg.d_vocab) + int(cfg.n_ctx)) * d_model + int(cfg.n_layers) * per_layer \
        + d_model * int(cfg.d_vocab_out) + int(cfg.d_vocab_out)
    return 4 * total


def check_model_size(cfg, *, where: str) -> None:
    """Refuse a model config whose parameters (``model_bytes``) do not fit in ``memory_limit()``."""
    check_size(model_bytes(cfg), f"a model with d_model = {cfg.d_model}, d_mlp = {cfg.d_mlp}, "
                                 f"{cfg.n_layers} layers, d_vocab = {cfg.d_vocab}", where=where)


def schedule_bytes(epochs: int, checkpoint_every: int, log_every: int) -> int:
    """Bytes of the checkpoint steps and log rows training keeps in memory (5 numbers per row)."""
    n_checkpoints = epochs // max(checkpoint_every, 1) + 1
    n_rows = epochs // max(log_every, 1) + 1
    return (n_checkpoints + 5 * n_rows) * _STEP_BYTES


def check_training_size(config, *, where: str = "TrainConfig") -> None:
    """Refuse a TrainConfig whose model with its AdamW state (4 x ``model_bytes``: weights, gradients and
    two moments) or whose schedule (``schedule_bytes``) does not fit in ``memory_limit()``.

    The task's grid is checked by ``Task`` itself.
    """
    from types import SimpleNamespace

    task = config.task
    d_mlp = config.d_mlp if config.d_mlp is not None else 4 * config.d_model
    cfg = SimpleNamespace(d_vocab=task.d_vocab, d_vocab_out=task.p, n_ctx=task.n_ctx, d_model=config.d_model,
                          n_heads=config.n_heads, d_head=config.d_model // config.n_heads, d_mlp=d_mlp,
                          n_layers=config.n_layers)
    check_size(4 * model_bytes(cfg), f"d_model = {config.d_model} (d_mlp = {d_mlp}, {config.n_layers} layers, "
                                     f"p = {task.p}) with AdamW state", where=where)
    check_size(schedule_bytes(config.epochs, config.checkpoint_every, config.log_every),
               f"epochs = {config.epochs} (checkpoint_every = {config.checkpoint_every}, log_every = "
               f"{config.log_every}) in the schedule and log", where=where)


ROW_NUMBERS = 32
"""Numbers in one checkpoint's row of an analysis table (15 measures and two per key frequency)."""


def table_bytes(n_checkpoints: int) -> int:
    """Bytes of an analysis table of ``n_checkpoints`` rows held in memory (``ROW_NUMBERS`` each)."""
    return n_checkpoints * ROW_NUMBERS * _STEP_BYTES


def check_checkpoint_count(n_checkpoints: int, *, where: str) -> None:
    """Refuse a run whose analysis table (``table_bytes``) does not fit in ``memory_limit()``."""
    check_size(table_bytes(n_checkpoints), f"{n_checkpoints} checkpoints to tabulate", where=where)


def safetensors_bytes(path: str) -> tuple[int, str]:
    """The bytes of tensors a safetensors file's header declares, and its largest tensor in words.

    Reads the header only; raises GrokscopeError naming the file when the header is not one.
    """
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"a header of {length} bytes (at most {MAX_HEADER_BYTES})")
            header = json.loads(handle.read(length))
        total, largest = 0, (0, "none")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            shape = [int(n) for n in info["shape"]]
            size = math.prod(shape) * DTYPE_BYTES.get(str(info["dtype"]), 8)
            total += size
            largest = max(largest, (size, f"{name} of shape {shape}"))
    except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError) as error:
        raise GrokscopeError(f"an unreadable safetensors header ({type(error).__name__}: {error})",
                             expected="a complete safetensors file", where=str(path)) from None
    return total, largest[1]


def check_safetensors_size(path: str | os.PathLike) -> None:
    """Refuse a safetensors file whose header declares more tensor bytes than ``memory_limit()``.

    A header that cannot be parsed passes: the reader that follows names the damage.
    """
    try:
        total, largest = safetensors_bytes(os.fspath(path))
    except GrokscopeError:
        return
    check_size(total, f"a header declaring tensors (largest: {largest})", where=str(path))
