"""The Run every reader yields: a task, a model config, and lazily loaded checkpoints.

A Run holds no weights: ``run.model(i)`` reads checkpoint ``i`` when asked, so analysis streams
through a run with one model in memory at a time.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.limits import check_model_size
from grokscope.models import HookedTransformer, HookedTransformerConfig, build_model
from grokscope.tasks import Task, held_out_mask

StateLoader = Callable[[int], dict[str, Tensor]]
"""Maps a checkpoint index to a HookedTransformer state dict (raising GrokscopeError if unreadable)."""


@dataclass
class Run:
    """A trained run (or a single model) in any layout, mapped to HookedTransformer.

    Attributes:
        task: the modular-arithmetic task the model solves.
        cfg: the HookedTransformerConfig every checkpoint loads into.
        steps: checkpoint steps (epochs for full-batch runs), ascending.
        load_state: reads the state dict of checkpoint ``i`` (an index into ``steps``).
        source: the path the run was read from.
        format: the layout's name, e.g. "native" or "pizza_release".
        alpha: the attention rate of SCIENCE.md section 4 (1.0 for a standard transformer).
        train_indices: train rows of the lexicographic grid, or None where the split is unknown.
        config: the training configuration as read, JSON-safe (may be empty).
        log: logged training curves by column (step, train_loss, test_loss, train_acc, test_acc)
            where the layout stores them, else None.
        checkpoint_paths: one path per checkpoint where each is its own file, else None.
        skipped: ``{"path", "error"}`` for every checkpoint found unreadable so far.
    """

    task: Task
    cfg: HookedTransformerConfig
    steps: list[int]
    load_state: StateLoader
    source: str
    format: str
    alpha: float = 1.0
    train_indices: Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)
    log: dict[str, list] | None = None
    checkpoint_paths: list[str] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self):
        # Every reader ends here: a model too large to build is refused before any checkpoint loads.
        check_model_size(self.cfg, where=str(self.source))

    def __repr__(self) -> str:
        span = f"steps {self.steps[0]}..{self.steps[-1]}" if self.steps else "no checkpoints"
        return (f"Run({self.format}, p={self.task.p}, op={self.task.op!r}, {len(self.steps)} checkpoints, "
                f"{span}, alpha={self.alpha:g}, source={self.source!r})")

    def __len__(self) -> int:
        return len(self.steps)

    def _index(self, i: int) -> int:
        if not self.steps:
            raise GrokscopeError(f"{self.source}: no checkpoints", expected="at least one readable checkpoint")
        if not -len(self.steps) <= i < len(self.steps):
            raise IndexError(f"checkpoint index {i} out of range for {len(self.steps)} checkpoints")
        return i % len(self.steps)

    def state_dict(self, i: int = -1) -> dict[str, Tensor]:
        """The HookedTransformer state dict of checkpoint ``i`` (negative indices count from the end).

        A checkpoint holding NaN or infinite weights raises GrokscopeError naming the file and the
        tensors: no measure of such a model means anything, so analysis skips it like a damaged file.
        """
        index = self._index(i)
        state = self.load_state(index)
        check_finite(state, where=self.checkpoint_path(index))
        return state

    def model(self, i: int = -1) -> HookedTransformer:
        """Checkpoint ``i`` as a HookedTransformer in eval mode, with the run's attention rate attached."""
        return build_model(self.cfg, self.alpha, self.state_dict(i))

    def checkpoint_path(self, i: int) -> str:
        """The file of checkpoint ``i`` where each has its own, else the run's source."""
        return self.checkpoint_paths[self._index(i)] if self.checkpoint_paths else self.source

    def iter_models(self, indices: list[int] | None = None) -> Iterator[tuple[int, HookedTransformer]]:
        """Yield ``(step, model)`` one at a time; unreadable checkpoints are recorded in ``skipped``."""
        for i in range(len(self.steps)) if indices is None else indices:
            try:
                model = self.model(i)
            except GrokscopeError as error:
                self.skipped.append(skip_entry(self.checkpoint_path(i), error))
                continue
            yield self.steps[self._index(i)], model

    @property
    def test_indices(self) -> Tensor | None:
        """Grid rows not in the train split, or None where the split is unknown."""
        if self.train_indices is None:
            return None
        return held_out_mask(self.task.n_inputs, self.train_indices).nonzero().squeeze(1)


def check_finite(state: dict[str, Tensor], *, where: str) -> None:
    """Raise GrokscopeError naming the tensors of ``state`` that hold NaN or infinite entries.

    >>> import torch
    >>> check_finite({"embed.W_E": torch.tensor([1.0, float("nan"), float("inf")])}, where="m.pt")
    Traceback (most recent call last):
    ...
    grokscope.errors.GrokscopeError: m.pt: found non-finite weights: embed.W_E has 1 NaN and 1 infinite of 3 entries; expected finite weights (a diverged or damaged checkpoint)
    """
    bad = []
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nan = int(torch.isnan(tensor).sum())
            bad.append(f"{name} has {nan} NaN and {int((~finite).sum()) - nan} infinite of {tensor.numel()} entries")
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
        raise GrokscopeError(f"non-finite weights: {shown}", expected="finite weights (a diverged or damaged "
                             "checkpoint)", where=where)


def skip_entry(path: str, error: Exception) -> dict[str, str]:
    """``{"path", "error"}`` for a skipped checkpoint, without repeating the path in the error text."""
    message = str(error)
    prefix = f"{path}: "
    return {"path": path, "error": message[len(prefix):] if message.startswith(prefix) else message}
