"""Phase boundaries of a grokking run, detected from its table of progress measures.

[N23] splits training into memorisation, circuit formation and cleanup; [P22] measures the delay
between fitting the train set and generalising. The rules below use only the table's columns and are
reported in ``Phases.method`` (the words stored with every result):

- memorization_step: first step with train_acc >= 0.99.
- grokking_step: first step with test_acc >= 0.99 (full_acc when the split is unknown).
- delay_ratio: grokking_step / memorization_step ([P22] saw 10x to 100x); None if either is missing
  or memorisation happened at step 0.
- circuit_formation_start: the excluded-loss rise. The step, at or after memorisation (and before
  grokking), where the excluded loss is lowest, provided it later rises at least ``RISE`` times
  above that minimum; until then it falls with the train loss (memorisation), after it the key
  frequencies carry more and more of the train fit ([N23] figure 7).
- circuit_formation_end (= cleanup start): the test-loss drop. The first step after the test
  loss's peak (taken at or after memorisation) where the test loss is below 1/``DROP`` of that
  peak; never after grokking_step.
- cleanup_end_step: the end of the test-loss drop. The first step at or after grokking_step where the
  log test loss has covered ``SETTLED`` (90%) of its fall from that peak to its lowest value.

Where a table has losses but no accuracies (the training curves some files keep, e.g. [N23]'s
``train_losses`` and ``test_losses`` per epoch), memorization_step and grokking_step use the loss
instead: the first step with mean cross-entropy <= ``LOSS_FOR_ACCURACY`` = 0.01 ln 2. That loss
guarantees 99% accuracy (an input whose loss is below ln 2 has its correct class above 1/2, hence on
top, and by Markov's inequality at most loss / ln 2 of the inputs are not), so the step found is
at or after the first one with 99% accuracy; ``method`` says so.

A single checkpoint has no history: ``unavailable(reason)`` reports every boundary as not available
(``available`` False) rather than reading one row as a run.

A boundary that cannot be detected is None (a run that never groks has no grokking step, no
cleanup, and no circuit-formation end), with the reason in ``notes``.

>>> table = {"step": [0, 10, 20, 30, 40], "train_acc": [0.0, 1.0, 1.0, 1.0, 1.0],
...          "test_acc": [0.0, 0.1, 0.5, 1.0, 1.0]}
>>> phases = find_phases(table)
>>> phases.memorization_step, phases.grokking_step, phases.delay_ratio
(10, 30, 3.0)
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from grokscope.errors import GrokscopeError

ACCURACY = 0.99
"""Accuracy that counts as fitted (train) or generalised (test)."""

RISE = 2.0
"""The excluded loss must rise this factor above its minimum for circuit formation to be detected."""

DROP = 2.0
"""Cleanup starts once the test loss is below its peak / DROP."""

SETTLED = 0.9
"""Cleanup ends once this fraction of the log test loss's fall (peak to lowest) is done."""

LOSS_FOR_ACCURACY = 0.01 * math.log(2)
"""Mean cross-entropy at or below which accuracy is at least ACCURACY (see the module docstring)."""

TINY = 1e-300
"""Losses are clamped to this before taking logs (a float64 loss can underflow to 0)."""


@dataclass
class Phases:
    """Phase boundaries (steps) of one run; None where not detected. ``method`` says how each was found."""

    memorization_step: int | None = None
    grokking_step: int | None = None
    delay_ratio: float | None = None
    circuit_formation_start: int | None = None
    circuit_formation_end: int | None = None
    cleanup_end_step: int | None = None
    method: dict[str, str] = field(default_factory=dict)
    grokked: bool = False
    notes: list[str] = field(default_factory=list)
    available: bool = True
    source: str = "checkpoints"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return asdict(self)


def unavailable(reason: str) -> Phases:
    """Phases of something without a history (one checkpoint, no curves): none available, and why.

    >>> phases = unavailable("a single checkpoint and no training curves")
    >>> phases.available, phases.grokking_step, phases.method["phases"]
    (False, None, 'not available: a single checkpoint and no training curves')
    """
    return Phases(method={"phases": f"not available: {reason}"}, notes=[f"phases not available: {reason}"],
                  available=False, source="none")


def _column(table: dict[str, list], name: str, order: list[int]) -> list[float] | None:
    values = table.get(name)
    if values is None:
        return None
    values = [float("nan") if v is None else float(v) for v in values]
    values = [values[i] for i in order]
    return None if all(math.isnan(v) for v in values) else values


def _first(steps: list[int], values: list[float], threshold: float, start: int = 0) -> int | None:
    for i in range(start, len(steps)):
        if values[i] >= threshold:
            return i
    return None


def _argbest(values: list[float], lo: int, hi: int, largest: bool) -> int | None:
    best = None
    for i in range(lo, hi):
        v = values[i]
        if math.isnan(v):
            continue
        if best is None or (v > values[best] if largest else v < values[best]):
            best = i
    return best


def _reached(table: dict[str, list], order: list[int], steps: list[int], accuracies: tuple[str, ...],
             loss_name: str) -> tuple[int | None, str]:
    """(index of the first row that reaches 99% accuracy, the rule used); the loss bound without accuracies."""
    for name in accuracies:
        values = _column(table, name, order)
        if values is not None:
            return _first(steps, values, ACCURACY), f"first step with {name} >= {ACCURACY}"
    loss = _column(table, loss_name, order)
    if loss is None:
        return None, "none"
    index = next((i for i, v in enumerate(loss) if v <= LOSS_FOR_ACCURACY), None)
    return index, (f"first step with {loss_name} <= 0.01 ln 2 = {LOSS_FOR_ACCURACY:.5f} (no accuracy recorded; "
                   f"this loss guarantees accuracy >= {ACCURACY}, so the step is at or after the first with it)")


def find_phases(table: dict[str, list]) -> Phases:
    """Memorisation, circuit formation, cleanup and grokking steps from a table of measures.

    ``table`` maps column names to lists with a ``step`` column (as in ``AnalysisResult.table`` or a
    training log); columns used where present: train_acc, test_acc, full_acc, excluded_loss,
    test_loss, full_loss. Rules: see the module docstring.
    """
    if "step" not in table:
        raise GrokscopeError(f"columns {sorted(table)}", expected="a 'step' column", where="find_phases")
    lengths = {name: len(values) for name, values in table.items()}
    if len(set(lengths.values())) > 1:
        raise GrokscopeError(f"columns of lengths {lengths}", expected="equal lengths", where="find_phases")
    order = sorted(range(len(table["step"])), key=lambda i: table["step"][i])
    steps = [int(table["step"][i]) for i in order]
    phases = Phases()
    method, notes = phases.method, phases.notes
    if not steps:
        notes.append("empty table")
        return phases

    mem, rule = _reached(table, order, steps, ("train_acc",), "train_loss")
    method["memorization_step"] = rule
    if mem is None:
        notes.append(f"{rule}: never reached" if rule != "none" else "no train_acc column (split unknown)")
    else:
        phases.memorization_step = steps[mem]

    grok, rule = _reached(table, order, steps, ("test_acc", "full_acc"), "test_loss")
    method["grokking_step"] = rule
    if grok is None:
        notes.append(f"{rule}: never reached, the run did not grok" if rule != "none" else "no accuracy column")
    else:
        phases.grokking_step, phases.grokked = steps[grok], True

    method["delay_ratio"] = "grokking_step / memorization_step"
    if phases.memorization_step and phases.grokking_step is not None:
        phases.delay_ratio = phases.grokking_step / phases.memorization_step

    # Circuit formation starts where the excluded loss turns from falling to rising.
    excluded = _column(table, "excluded_loss", order)
    method["circuit_formation_start"] = (f"lowest excluded_loss at or after memorisation and before grokking, "
                                         f"if it later rises >= {RISE}x")
    if excluded is not None and mem is not None:
        end = grok + 1 if grok is not None else len(steps)
        low = _argbest(excluded, mem, end, largest=False)
        high = _argbest(excluded, low, len(steps), largest=True) if low is not None else None
        if low is not None and high is not None and excluded[high] >= RISE * excluded[low]:
            phases.circuit_formation_start = steps[low]
        else:
            notes.append(f"the excluded loss does not rise {RISE}x after memorisation")
    elif excluded is None:
        notes.append("no excluded_loss column: circuit formation start unknown")

    # Cleanup starts with the test-loss drop and ends when that drop has settled.
    loss, loss_name = _column(table, "test_loss", order), "test_loss"
    if loss is None:
        loss, loss_name = _column(table, "full_loss", order), "full_loss"
    method["circuit_formation_end"] = (f"first step after the {loss_name} peak (at or after memorisation) "
                                       f"with {loss_name} <= peak / {DROP}, at most grokking_step")
    method["cleanup_end_step"] = (f"first step at or after grokking_step where log {loss_name} has fallen "
                                  f"{SETTLED:.0%} of the way from its peak to its lowest value")
    peak = _argbest(loss, min(mem, grok), grok + 1, largest=True) \
        if loss is not None and mem is not None and grok is not None else None
    if peak is not None:
        drop = next((i for i in range(peak, len(steps)) if loss[i] <= loss[peak] / DROP), None)
        drop = grok if drop is None or drop > grok else drop
        phases.circuit_formation_end = steps[drop]
        lowest = _argbest(loss, peak, len(steps), largest=False)
        log_loss = [math.log(max(v, TINY)) if not math.isnan(v) else math.nan for v in loss]
        target = log_loss[peak] - SETTLED * (log_loss[peak] - log_loss[lowest])
        settled = next((i for i in range(grok, len(steps)) if log_loss[i] <= target), max(lowest, grok))
        phases.cleanup_end_step = steps[settled]
        if settled == len(steps) - 1:
            notes.append(f"the {loss_name} drop settles only at the last checkpoint: cleanup may continue")
        if phases.circuit_formation_start is not None and phases.circuit_formation_start > steps[drop]:
            notes.append("the excluded loss starts rising only after the test-loss drop")
    elif grok is None:
        notes.append("no cleanup without grokking")
    elif loss is None:
        notes.append("no test_loss or full_loss column: cleanup boundaries unknown")
    return phases
