"""Train-only progress measures and a phase detector that never looks at a test row (SCIENCE.md section 9).

[N23] shows the generalising circuit forming long before test accuracy moves; Li, Fan and Zhou 2025
(arXiv 2506.21551) argue that at scale there is often no test set to watch. These measures use the
train rows (inputs and labels) and the weights only, so they run live in training and on runs or
models whose split is unknown (then every grid row counts as a train row, and outputs say so).

At each checkpoint:

- K, the key frequencies, from the current weights alone: rule C of SCIENCE.md section 2 (the W_E
  frequency norms of a's tokens above max / 4), or rule B (W_L norms). No logits, no test row.
- The train logits L (n_train, p) are regressed, per class column and by least squares over the train
  rows only, on the constant and the 2|K| directions cos(w_k(a+b)), sin(w_k(a+b)):
  L ~ 1 mu + D_K beta. Restricted logits = 1 mu + D_K beta (the K part plus the per-class mean, the
  bias correction of [N23]); excluded logits = L - D_K beta (no bias correction, as in [N23]). On
  the full grid the directions are orthonormal and orthogonal to the constant, so this is exactly
  [N23]'s projection P_K; on a subset it is the same projection fitted to the rows one has.
- ``excluded_loss`` and ``restricted_loss`` (and ``restricted_acc``) are float64 cross-entropies over
  those train rows; ``train_loss``, ``train_acc`` of L itself.
- ``sum_sq_weights`` and the Ginis of the W_E and W_L Fourier norms (``measures.weight_measures``):
  weights only, train-only by nature.

Every column name starts with ``trainonly_`` (``TRAIN_ONLY_COLUMNS``) so that no output mistakes one for
a measure that saw the split.

>>> from grokscope.tasks import Task
>>> from grokscope.constructions import exact_clock_model
>>> task = Task(p=23)
>>> m = train_only_measures(exact_clock_model(task, [3, 7]), task, task.split(0.5, seed=0))
>>> m.key_freqs, m.train_acc, m.restricted_acc
([3, 7], 1.0, 1.0)
>>> m.excluded_loss > 1.0 > 1e-3 > m.train_loss
True
"""

import math
import time
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.fourier import RELATIVE_NORM, FourierBasis, component_norms, fourier_basis, key_directions
from grokscope.measures import gini
from grokscope.models import HookedTransformer, final_logits
from grokscope.tasks import Task

NAN = float("nan")

PREFIX = "trainonly_"
"""Every train-only column starts with this, in tables, log.csv and summary.json."""

TRAIN_ONLY_COLUMNS = tuple(PREFIX + name for name in (
    "train_loss", "train_acc", "excluded_loss", "restricted_loss", "restricted_acc", "n_key_freqs",
    "sum_sq_weights", "gini_W_E", "gini_W_L"))
"""The numeric columns of ``TrainOnlyMeasures.as_row()``, in order."""

KEY_RULES = ("C", "B")
"""Train-free key-frequency rules: C (W_E norms of a's tokens), B (W_L = W_out W_U norms)."""

MAX_KEY_FREQS = 5
"""At most this many train-free key frequencies ([N23]'s p = 113 model has 5, as does the end of the
``fast`` preset's seed-0 run above max / 4)."""

_BUFFER_ENDINGS = ("attn.mask", "attn.IGNORE", "rotary_sin", "rotary_cos")


@dataclass
class TrainOnlyMeasures:
    """Train-only measures of one checkpoint; NaN where undefined (an op other than "add").

    Attributes:
        key_freqs: K chosen from the weights by ``rule`` (threshold ``RELATIVE_NORM`` x max).
        rows: "train" when the split was known, "all" when every grid row stood in for it.
        n_rows: how many rows the losses average over.
    """

    train_loss: float = NAN
    train_acc: float = NAN
    excluded_loss: float = NAN
    restricted_loss: float = NAN
    restricted_acc: float = NAN
    sum_sq_weights: float = NAN
    gini_W_E: float = NAN
    gini_W_L: float = NAN
    key_freqs: list[int] = field(default_factory=list)
    rule: str = "C"
    rows: str = "train"
    n_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n_key_freqs(self) -> int:
        """|K|."""
        return len(self.key_freqs)

    def as_row(self) -> dict[str, float]:
        """The ``TRAIN_ONLY_COLUMNS`` as floats: ``trainonly_<name>`` is the attribute ``<name>``."""
        return {column: float(getattr(self, column.removeprefix(PREFIX))) for column in TRAIN_ONLY_COLUMNS}


# ----- weights ------------------------------------------------------------------------------------------
def _parameters(weights: HookedTransformer | dict[str, Tensor]) -> dict[str, Tensor]:
    """Name -> tensor of a model's parameters or of a HookedTransformer state dict (buffers left out)."""
    if isinstance(weights, torch.nn.Module):
        return backend.weights(weights)
    if isinstance(weights, dict):
        return {name: value for name, value in weights.items()
                if isinstance(value, Tensor) and value.is_floating_point() and not name.endswith(_BUFFER_ENDINGS)}
    raise GrokscopeError(f"a {type(weights).__name__}", expected="a HookedTransformer or its state dict",
                         where="train-only measures")


def _pick(params: dict[str, Tensor], name: str) -> Tensor:
    if name not in params:
        raise GrokscopeError(f"parameters {sorted(params)[:6]}...", expected=f"a HookedTransformer state dict "
                             f"with {name!r}", where="train-only measures")
    return params[name].detach().cpu()  # the measures run on the CPU whatever device trains


def _last_mlp_out(params: dict[str, Tensor]) -> Tensor:
    layers = sorted(int(name.split(".")[1]) for name in params
                    if name.startswith("blocks.") and name.endswith(".mlp.W_out"))
    if not layers:
        raise GrokscopeError(f"parameters {sorted(params)[:6]}...", expected="an MLP (blocks.{l}.mlp.W_out)",
                             where="train-only measures")
    return _pick(params, f"blocks.{layers[-1]}.mlp.W_out")


def weight_spectra(weights: HookedTransformer | dict[str, Tensor], task: Task, basis: FourierBasis | None = None
                   ) -> dict[str, Tensor]:
    """Fourier component norms (length p) of W_E (a's token rows) and of W_L over its class axis.

    W_L = W_out @ W_U[:, :p] of the last layer (SCIENCE.md section 2). Weights only.
    """
    basis = fourier_basis(task.p) if basis is None else basis
    params = _parameters(weights)
    W_E = _pick(params, "embed.W_E")[:task.p]
    W_L = _last_mlp_out(params) @ _pick(params, "unembed.W_U")[:, :task.p]
    return {"W_E": component_norms(W_E, basis), "W_L": component_norms(W_L.T, basis)}


def train_free_key_frequencies(weights: HookedTransformer | dict[str, Tensor], task: Task, rule: str = "C", *,
                               threshold: float = RELATIVE_NORM, max_freqs: int | None = MAX_KEY_FREQS,
                               basis: FourierBasis | None = None) -> list[int]:
    """K from the weights alone: frequencies whose W_E (rule "C") or W_L (rule "B") norm > threshold x max,
    at most ``max_freqs`` of them (the largest norms).

    The same rules as ``fourier.key_frequencies`` B and C (SCIENCE.md section 2), from a model or a
    state dict, so that the batched trainer can call it on a slice of its stacked weights. The cap
    matters before the spectrum is sparse: early in training every frequency passes max / 4, and on
    the train rows alone a fit on every frequency is any function of a + b, which reproduces a
    memorised train set as well as a circuit (the labels are a function of a + b there).

    >>> from grokscope.constructions import exact_clock_model
    >>> task = Task(p=23)
    >>> train_free_key_frequencies(exact_clock_model(task, [4, 9]), task, "B")
    [4, 9]
    """
    if rule not in KEY_RULES:
        raise GrokscopeError(f"rule {rule!r}", expected=f"one of {KEY_RULES} (train-free rules)",
                             where="train_free_key_frequencies")
    basis = fourier_basis(task.p) if basis is None else basis
    norms = weight_spectra(weights, task, basis)["W_E" if rule == "C" else "W_L"]
    per_freq = torch.sqrt(norms[basis.cos_rows()] ** 2 + norms[basis.sin_rows()] ** 2)
    top = float(per_freq.max())
    passing = [(n, k) for k, n in zip(basis.freqs, per_freq.tolist()) if top > 0 and n > threshold * top]
    passing.sort(reverse=True)
    return sorted(k for _, k in passing[:max_freqs])


def weight_norm_measures(weights: HookedTransformer | dict[str, Tensor], task: Task,
                         basis: FourierBasis | None = None) -> dict[str, float]:
    """sum_sq_weights (every parameter) and the Ginis of the p - 1 non-constant W_E and W_L norms.

    The definitions of ``measures.weight_measures`` ([N23]), from a model or a state dict.
    """
    basis = fourier_basis(task.p) if basis is None else basis
    params = _parameters(weights)
    spectra = weight_spectra(params, task, basis)
    nonconst = basis.nonconstant_rows()
    return {"sum_sq_weights": sum(float(v.detach().double().square().sum().cpu()) for v in params.values()),
            "gini_W_E": gini(spectra["W_E"][nonconst]), "gini_W_L": gini(spectra["W_L"][nonconst])}


# ----- losses on the train rows ------------------------------------------------------------------------
def _row_losses(L: Tensor, labels: Tensor) -> Tensor:
    return -L.log_softmax(dim=-1).gather(1, labels[:, None]).squeeze(1)


def key_fit(L: Float[Tensor, "n p"], rows: Int[Tensor, "n"], task: Task, freqs: list[int]
            ) -> tuple[Float[Tensor, "n p"], Float[Tensor, "n p"]]:
    """(restricted, excluded) logits of the train logits ``L`` at grid ``rows``, fitted on those rows only.

    Least squares per class column on [1, D_K]: restricted = 1 mu + D_K beta, excluded = L - D_K beta.

    >>> task = Task(p=7)
    >>> a, b = task.operands().T
    >>> c = torch.arange(7)
    >>> L = torch.cos(2 * math.pi * 2 * (a + b)[:, None] / 7 - c).double() + 5.0
    >>> rows = task.split(0.6, seed=1)
    >>> restricted, excluded = key_fit(L[rows], rows, task, [2])
    >>> torch.allclose(restricted, L[rows], atol=1e-10), torch.allclose(excluded, torch.full_like(excluded, 5.0), atol=1e-10)
    (True, True)
    """
    L = L.double()
    n = rows.numel()
    D = key_directions(task.p, freqs)[:, rows].T.contiguous()          # (n, 2K)
    X = torch.cat([torch.ones(n, 1, dtype=torch.float64), D], dim=1)
    coef = torch.linalg.lstsq(X, L, driver="gelsd").solution if n > X.shape[1] else torch.linalg.pinv(X) @ L
    key_part = D @ coef[1:]
    return X @ coef, L - key_part


def train_only_measures(weights: HookedTransformer | dict[str, Tensor], task: Task,
                        train_indices: Int[Tensor, "n_train"] | None = None, *,
                        train_logits: Float[Tensor, "n_train d_vocab_out"] | None = None, rule: str = "C",
                        basis: FourierBasis | None = None) -> TrainOnlyMeasures:
    """Train-only measures of one checkpoint (module docstring): K from the weights, losses on the train rows.

    Args:
        weights: a HookedTransformer, or its state dict when ``train_logits`` are given.
        task: the task; rows index its lexicographic grid.
        train_indices: the train rows; None uses every grid row (a model whose split is unknown).
        train_logits: the read-out logits at ``train_indices`` if already computed (training has
            them from its own forward pass); otherwise one forward pass over the train rows.
        rule: "C" (W_E norms, default) or "B" (W_L norms) for K.
        basis: a prebuilt ``fourier_basis(task.p)``.
    """
    basis = fourier_basis(task.p) if basis is None else basis
    rows_known = train_indices is not None
    rows = (torch.as_tensor(train_indices).long().flatten() if rows_known else torch.arange(task.n_inputs))
    if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= task.n_inputs:
        found = f"{rows.numel()} rows" + (f" in {int(rows.min())}..{int(rows.max())}" if rows.numel() else "")
        raise GrokscopeError(found, expected=f"train rows of the grid, 0..{task.n_inputs - 1}",
                             where="train_only_measures")
    if train_logits is None:
        if not isinstance(weights, torch.nn.Module):
            raise GrokscopeError("a state dict without train_logits", expected="a HookedTransformer, or the "
                                 "train logits with the state dict", where="train_only_measures")
        with torch.no_grad():
            train_logits = final_logits(weights, task.tokens()[rows].to(backend.weights(weights)["embed.W_E"].device))
    if train_logits.ndim != 2 or train_logits.shape[0] != rows.numel() or train_logits.shape[1] < task.p:
        raise GrokscopeError(f"train logits of shape {tuple(train_logits.shape)}", where="train_only_measures",
                             expected=f"({rows.numel()}, >= {task.p}): one row per train row")
    L = train_logits.detach()[:, :task.p].double().cpu()
    labels = task.labels()[rows]
    with torch.no_grad():
        in_z_p = task.group is not None and task.group.N == task.p and task.op in ("add", "sub")
        if not in_z_p:  # mul, div (Z_{p-1}) and the polynomials: no Z_p key frequency or Gini fits them
            params = _parameters(weights)
            m = TrainOnlyMeasures(rule=rule, rows="train" if rows_known else "all", n_rows=int(rows.numel()),
                                  sum_sq_weights=sum(float(v.detach().double().square().sum().cpu())
                                                     for v in params.values()))
            m.train_loss = float(_row_losses(L, labels).mean())
            m.train_acc = float((L.argmax(-1) == labels).double().mean())
            m.notes.append(f"train-only key frequencies, Ginis and restricted / excluded losses are defined in "
                           f"Z_p (op 'add'; 'sub' without the fit); NaN for op {task.op!r}")
            return m
        m = TrainOnlyMeasures(rule=rule, rows="train" if rows_known else "all", n_rows=int(rows.numel()),
                              key_freqs=train_free_key_frequencies(weights, task, rule, basis=basis),
                              **weight_norm_measures(weights, task, basis))
        m.train_loss = float(_row_losses(L, labels).mean())
        m.train_acc = float((L.argmax(-1) == labels).double().mean())
        if task.op != "add":
            m.notes.append(f"train-only restricted / excluded losses use the directions of op 'add'; "
                           f"NaN for op {task.op!r}")
            return m
        restricted, excluded = key_fit(L, rows, task, m.key_freqs)
        m.restricted_loss = float(_row_losses(restricted, labels).mean())
        m.restricted_acc = float((restricted.argmax(-1) == labels).double().mean())
        m.excluded_loss = float(_row_losses(excluded, labels).mean())
    if not rows_known:
        m.notes.append("train/test split unknown: train-only measures use every grid row as a train row")
    return m


# ----- the phase detector -------------------------------------------------------------------------------
PHASES = ("memorising", "circuit forming", "cleaning up", "generalised")
"""The phases the detector names, in the only order it moves through them."""

MEMORISED_ACC = 0.99
"""Train accuracy from which the train set counts as memorised."""

FALL = 2.0
"""Circuit formation, ratio trigger: the restricted-to-train loss ratio has fallen this factor below its peak."""

WEIGHT_FALL = 0.001
"""Circuit formation, weight trigger: the sum of squared weights has fallen this fraction (0.1%) below
its peak since memorisation. AdamW's decay has started to shrink the network while the train set stays
memorised: the removal of the memorising part that [N23] calls circuit formation. Without weight decay
Adam keeps the norm growing after memorisation, so the weights never turn over; the margin keeps a
tiny wobble of a flat norm from counting."""

CHANCE_SHARE = 0.5
"""Either trigger also needs the restricted loss at most this share of chance, ln p: the key
frequencies alone carry the train fit. Without it weight decay pruning a memorised set (too little
data) would count, although its key frequencies explain nothing (restricted loss at chance)."""

MIN_FORECAST_ROWS = 3
"""Rows since the alarm (and since the peak of the ratio) needed before the detector forecasts."""

TRIGGERS = ("weight", "ratio")
"""What set the alarm off: the weight norm turning over, or the ratio falling ``FALL``-fold."""


@dataclass
class Detection:
    """What the train-only detector concluded from the rows it has seen (``DETECTOR_RULE``).

    Attributes:
        phase: one of ``PHASES``.
        memorised_step: first step with train accuracy >= ``MEMORISED_ACC``.
        since_step: "circuit formation under way since" this step: the peak whose fall set the alarm
            off (of the weight norm, or of the ratio).
        circuit_step: the alarm: the first step where the restricted loss is at most ``CHANCE_SHARE``
            x ln p and either the sum of squared weights is ``WEIGHT_FALL`` below its peak since
            memorisation or r = restricted / train loss is at most its peak / ``FALL``.
        trigger: which of ``TRIGGERS`` fired first (both at once: "weight").
        weight_peak_step: the step of the largest sum of squared weights since memorisation, tracked
            until the alarm.
        circuit_gap: steps between the alarm's row and the row before it (live training sees every
            logged step, ``analyze`` only the saved checkpoints), so how precisely the alarm is placed.
        peak_step: the step of the peak ratio r since memorisation (tracked until cleanup; after a
            weight alarm r usually peaks a few rows later).
        cleanup_step: first step (after the alarm) where log r has covered half its way from the
            peak to 0 (r <= sqrt(peak)).
        generalised_step: first step (after the alarm) where r <= 1: the key frequencies alone fit
            the train rows at least as well as the whole model.
        forecast_step: the step where a straight line through log r since the later of the alarm
            and the peak of r reaches 0 (None before ``MIN_FORECAST_ROWS`` rows or while log r is not
            falling); updated at every row until ``generalised_step``, then kept.
        first_forecast_step, first_forecast_at: the first forecast and the step it was made at.
        cleanup_forecast_step: the forecast made at ``cleanup_step``.
        ratio: r at the last row; peak_ratio: r at ``peak_step``.
    """

    phase: str = PHASES[0]
    memorised_step: int | None = None
    since_step: int | None = None
    circuit_step: int | None = None
    circuit_gap: int | None = None
    trigger: str | None = None
    weight_peak_step: int | None = None
    peak_step: int | None = None
    cleanup_step: int | None = None
    generalised_step: int | None = None
    forecast_step: int | None = None
    first_forecast_step: int | None = None
    first_forecast_at: int | None = None
    cleanup_forecast_step: int | None = None
    ratio: float = NAN
    peak_ratio: float = NAN
    weight_peak: float = NAN

    def message(self) -> str:
        """The conclusion in one line (``describe_detection``)."""
        return describe_detection(self.to_dict())

    def to_dict(self) -> dict:
        """A JSON-safe dict of every field, and the rule."""
        return {**{name: getattr(self, name) for name in self.__dataclass_fields__}, "rule": DETECTOR_RULE}


def describe_detection(detection: dict) -> str:
    """One line for a ``Detection.to_dict()``: the phase, the alarm and the forecast.

    >>> describe_detection(Detection(phase="circuit forming", since_step=74, circuit_step=78, circuit_gap=4,
    ...                              trigger="weight").to_dict())
    'circuit forming; circuit formation under way since step 74 (detected at 78 by the weight trigger, rows 4 steps apart there)'
    """
    if detection.get("circuit_step") is None:
        return f"{detection['phase']} (no circuit formation detected)"
    since = detection.get("since_step", detection.get("peak_step"))        # older results: the ratio's peak
    by = f" by the {detection['trigger']} trigger" if detection.get("trigger") else ""
    # live training sees every logged step, analyze only the saved checkpoints: say how fine the rows were
    gap = f", rows {detection['circuit_gap']} steps apart there" if detection.get("circuit_gap") else ""
    text = (f"{detection['phase']}; circuit formation under way since step {since} "
            f"(detected at {detection['circuit_step']}{by}{gap})")
    if detection.get("generalised_step") is not None:
        text += f", generalised (train-only rule) at step {detection['generalised_step']}"
    elif detection.get("forecast_step") is not None:
        text += f", grokking forecast near step {detection['forecast_step']}"
    return text


DETECTOR_RULE = (f"r = trainonly_restricted_loss / trainonly_train_loss (K: top {MAX_KEY_FREQS} W_E frequencies "
                 f"above max/4), W = trainonly_sum_sq_weights; memorising until train acc >= {MEMORISED_ACC}; then "
                 f"circuit forming at the first row with restricted loss <= {CHANCE_SHARE:g} ln p and either "
                 f"W <= (1 - {WEIGHT_FALL:g}) x (peak W since memorisation) or r <= (peak r since then) / {FALL:g}; "
                 f"cleaning up once r <= sqrt(peak r); generalised once r <= 1; forecast: where a line through "
                 f"log r since the alarm and the peak of r reaches 0")
"""The detector's rule in words, stored with every result."""


class PhaseDetector:
    """Online train-only phase detection: feed rows in step order, read ``.detection``.

    Causal by construction: the state after a row depends only on that row and the ones before, so the
    phase shown live in training is the phase ``detect_phases`` gives for the same log prefix.
    ``sum_sq_weights`` may be NaN (a table without it): then only the ratio trigger can fire.

    >>> d = PhaseDetector(p=23)
    >>> rows = [(0.5, 1e-2, 0.5, 100.0), (1.0, 1e-3, 0.5, 101.0), (1.0, 1e-3, 0.6, 100.5), (1.0, 2e-3, 0.2, 100.0),
    ...         (1.0, 1e-3, 1e-3, 99.0)]
    >>> for step, (acc, tl, rl, w) in enumerate(rows):
    ...     d.update(step * 10, train_acc=acc, train_loss=tl, restricted_loss=rl, sum_sq_weights=w).phase
    'memorising'
    'memorising'
    'circuit forming'
    'circuit forming'
    'generalised'
    >>> d.detection.weight_peak_step, d.detection.circuit_step, d.detection.trigger, d.detection.peak_step
    (10, 20, 'weight', 20)
    """

    def __init__(self, p: int):
        self.chance = math.log(p)
        self.detection = Detection()
        self._log: list[tuple[int, float]] = []        # (step, log r) since the alarm and the peak of r
        self._previous_step: int | None = None

    def update(self, step: int, *, train_acc: float, train_loss: float, restricted_loss: float,
               sum_sq_weights: float = NAN) -> Detection:
        """Take one row (the train-only measures at ``step``) and return the updated detection."""
        d = self.detection
        gap = None if self._previous_step is None else int(step) - self._previous_step
        self._previous_step = int(step)
        if d.memorised_step is None:
            if not train_acc >= MEMORISED_ACC:
                return d
            d.memorised_step = int(step)
        if not (train_loss > 0 and restricted_loss >= 0) or math.isnan(restricted_loss):
            return d
        r = max(restricted_loss, 1e-300) / train_loss
        d.ratio = r
        new_peak = not r <= d.peak_ratio                   # a new peak of r (or the first row)
        if new_peak and d.cleanup_step is None:
            d.peak_ratio, d.peak_step = r, int(step)
            self._log.clear()                              # the forecast fits the fall after the peak only
        if d.circuit_step is None:
            weights_fell = False
            if not math.isnan(sum_sq_weights):
                if not sum_sq_weights <= d.weight_peak:
                    d.weight_peak, d.weight_peak_step = sum_sq_weights, int(step)
                weights_fell = sum_sq_weights <= (1.0 - WEIGHT_FALL) * d.weight_peak
            ratio_fell = not new_peak and r <= d.peak_ratio / FALL
            if (weights_fell or ratio_fell) and restricted_loss <= CHANCE_SHARE * self.chance:
                d.circuit_step, d.circuit_gap, d.phase = int(step), gap, PHASES[1]
                d.trigger = TRIGGERS[0] if weights_fell else TRIGGERS[1]
                d.since_step = d.weight_peak_step if weights_fell else d.peak_step
        if d.circuit_step is not None and d.generalised_step is None:
            self._log.append((int(step), math.log(r)))
            d.forecast_step = _forecast(self._log)
            if d.first_forecast_step is None and d.forecast_step is not None:
                d.first_forecast_step, d.first_forecast_at = d.forecast_step, int(step)
            if d.cleanup_step is None and r <= math.sqrt(max(d.peak_ratio, 1.0)):
                d.cleanup_step, d.phase = int(step), PHASES[2]
                d.cleanup_forecast_step = d.forecast_step
            if d.generalised_step is None and r <= 1.0:
                d.generalised_step, d.phase = int(step), PHASES[3]
                d.cleanup_step = d.cleanup_step if d.cleanup_step is not None else int(step)
        return d


def _forecast(points: list[tuple[int, float]]) -> int | None:
    """Where the least-squares line through (step, log r) reaches log r = 0, if it is falling."""
    if len(points) < MIN_FORECAST_ROWS:
        return None
    n = len(points)
    mean_s = sum(s for s, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((s - mean_s) ** 2 for s, _ in points)
    if var == 0:
        return None
    slope = sum((s - mean_s) * (y - mean_y) for s, y in points) / var
    if not slope < 0:
        return None
    return int(round(mean_s - mean_y / slope))


_DETECTOR_INPUTS = ("train_acc", "train_loss", "restricted_loss", "sum_sq_weights")


def detect_phases(table: dict[str, list], p: int) -> tuple[Detection, list[str]]:
    """Replay ``PhaseDetector(p)`` over a table with trainonly_* columns: (final detection, phase per row).

    Rows are taken in step order; rows with a NaN train accuracy, train loss or restricted loss leave
    the state as it was. A table without ``trainonly_sum_sq_weights`` (an older log) replays with the
    ratio trigger only.
    """
    needed = [PREFIX + name for name in _DETECTOR_INPUTS[:3]]
    missing = [name for name in ["step", *needed] if name not in table]
    if missing:
        raise GrokscopeError(f"columns {sorted(table)}", expected=f"also {missing}", where="detect_phases")
    weights = table.get(PREFIX + "sum_sq_weights", [NAN] * len(table["step"]))
    order = sorted(range(len(table["step"])), key=lambda i: table["step"][i])
    detector, phases = PhaseDetector(p), [""] * len(order)
    for i in order:
        values = [float(table[name][i]) for name in needed]
        if not any(math.isnan(v) for v in values):
            detector.update(int(table["step"][i]), train_acc=values[0], train_loss=values[1],
                            restricted_loss=values[2], sum_sq_weights=float(weights[i]))
        phases[i] = detector.detection.phase
    return detector.detection, phases


# ----- live use in training -----------------------------------------------------------------------------
PHASE_COLUMN = PREFIX + "phase"
"""The log.csv column holding the detector's phase at each logged step."""

LOG_MONITOR_COLUMNS = (*TRAIN_ONLY_COLUMNS, PHASE_COLUMN)
"""The columns ``TrainOnlyMonitor.measure`` returns, in log.csv order."""


class TrainOnlyMonitor:
    """Train-only measures and the phase detector, called by a training loop at its log steps.

    ``measure(weights, step, train_logits=...)`` returns the ``LOG_MONITOR_COLUMNS`` of one row and
    advances the detector; ``.phase`` and ``.detection`` say where the run stands. Pass the read-out
    logits the training step already computed on the train rows (any row order matching
    ``train_indices``) and the call needs no forward pass: its cost is one least-squares fit of
    (n_train x (2|K| + 1)) against p columns plus Fourier transforms of W_E and W_L, about a seventh of
    one full-batch training step (measured at p = 59, d_model 128 on a loaded 2-core CPU: 7% of training
    when called every 2 steps), so about 3.5% every 4 steps and 1.4% every 10. The detector sees only
    the rows it is given: a finer cadence gives an earlier alarm (docs/monitor.md). ``seconds``
    accumulates the time actually spent, so a trainer can report it.

    ``weights`` is a HookedTransformer or its state dict (e.g. one model's slice of a batched trainer's
    stacked parameters, named as in HookedTransformer).

    >>> from grokscope.constructions import exact_clock_model
    >>> task = Task(p=23)
    >>> monitor = TrainOnlyMonitor(task, task.split(0.5, seed=0))
    >>> row = monitor.measure(exact_clock_model(task, [3, 7]), step=0)
    >>> row["trainonly_n_key_freqs"], row["trainonly_phase"], monitor.phase
    (2.0, 'memorising', 'memorising')
    """

    def __init__(self, task: Task, train_indices: Int[Tensor, "n_train"] | None, *, rule: str = "C"):
        self.task, self.rule = task, rule
        self.train_indices = None if train_indices is None else torch.as_tensor(train_indices).long()
        self.basis = fourier_basis(task.p)
        self.detector = PhaseDetector(task.p)
        self.seconds = 0.0
        self.calls = 0

    @property
    def detection(self) -> Detection:
        """The detector's current conclusions."""
        return self.detector.detection

    @property
    def phase(self) -> str:
        """The current phase (one of ``PHASES``)."""
        return self.detector.detection.phase

    def measure(self, weights: HookedTransformer | dict[str, Tensor], step: int, *,
                train_logits: Float[Tensor, "n_train d_vocab_out"] | None = None) -> dict[str, float | str]:
        """The train-only columns at ``step`` (floats, and the phase as text); advances the detector."""
        start = time.perf_counter()
        m = train_only_measures(weights, self.task, self.train_indices, train_logits=train_logits,
                                rule=self.rule, basis=self.basis)
        row: dict[str, float | str] = m.as_row()
        self._advance(step, row)
        row[PHASE_COLUMN] = self.phase
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return row

    def replay(self, log: dict[str, list]) -> None:
        """Rebuild the detector from a log's rows (a resumed run); rows without the columns are skipped."""
        if PREFIX + "restricted_loss" not in log:
            return
        for i, step in enumerate(log["step"]):
            self._advance(step, {name: log[name][i] for name in TRAIN_ONLY_COLUMNS if name in log})

    def _advance(self, step: int, row: dict) -> None:
        values = [row.get(PREFIX + name, NAN) for name in _DETECTOR_INPUTS]
        values = [v if isinstance(v, float) else NAN for v in values]
        if not any(math.isnan(v) for v in values[:3]):
            self.detector.update(int(step), train_acc=values[0], train_loss=values[1], restricted_loss=values[2],
                                 sum_sq_weights=values[3])
