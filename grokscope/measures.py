"""[N23]'s progress measures of one checkpoint, from one forward pass over the full grid.

Losses and accuracies over the task's grid (train, test, full) are float64 cross-entropy over the p
classes. The Fourier measures live in the group of the task (``Task.group``, SCIENCE.md section 7):
L is the (N^2, N) float64 logit table of the in-group inputs in group coordinates, row u*N + v with
u = phi(a), v = sign_b phi(b) and column m the class phi^-1(m) (``Task.group_rows``), so that the
correct class is m = u + v mod N. For add that is the (p^2, p) table itself; for sub the b axis is
mirrored (v = -b, so u + v = a - b); for mul and div it is the (p - 1)^2 nonzero grid in discrete-log
coordinates with class 0 dropped, and the 2p - 1 (mul) or p - 1 (div) inputs with a zero operand are
measured apart (``zero_operand_acc``, ``zero_operand_loss``). ``group_loss`` / ``group_acc`` are the
full loss and accuracy of that N-class table, the loss the restricted loss is compared with.
P_K is the orthogonal projection of each class column onto the unit directions cos(w_k(u+v)),
sin(w_k(u+v)) for k in K, w_k = 2 pi k / N (one direction, (-1)^(u+v), for the sign frequency N/2):

- restricted loss: CE of P_K L + mean_over_grid(L) (per-class bias correction), all N^2 rows
  (``restricted_loss_test``: the same on the test rows);
- excluded loss: CE of L - P_K L (no bias correction) on the train rows (all rows without a split);
  ``excluded_loss_k{k}`` removes one frequency only;
- cos fit: coefficient <C_k, L> with C_k[u, v, m] = cos(w_k(u+v-m)) / ||.|| (unit over the N^3 tensor;
  cos(w(a-b-c)) for sub), and ``cos_fve`` = sum_k <C_k, L>^2 / ||L - rowmean(L)||^2, the fraction of
  the logits' variance across classes (softmax-invariant: each input row centred) the clock terms explain;
- Gini ([N23], Hurley and Rickard) of the N - 1 non-constant Fourier component norms (the sign
  component counted as one) of W_E (a's token rows in group order, norms over d_model) and of
  W_L = W_out @ W_U[:, :p] (class columns in group order, norms over neurons, transform over the
  class axis): G = 2 sum_i i c_(i) / (n sum c) - (n + 1) / n, c sorted ascending, n = N - 1.

Operations without a known mechanism (the polynomials) have no group: their Fourier measures are
NaN and ``notes`` says why; losses, accuracies and the sum of squared weights are computed for every op.
``ProgressMeasures.basis`` names the basis used.

>>> import math
>>> from grokscope.tasks import Task
>>> from grokscope.constructions import exact_clock_model
>>> task = Task(p=23)
>>> m = progress_measures(exact_clock_model(task, [3, 7]), task, [3, 7])
>>> # The exact clock's logits lie in the key span, so restricted and full loss agree up to float
>>> # rounding (about 1e-7 relative, and it differs between CPUs); compare with a tolerance.
>>> m.full_acc, m.full_loss < 1e-5, math.isclose(m.restricted_loss, m.full_loss, rel_tol=1e-4)
(1.0, True, True)
>>> m.excluded_loss > 1.0
True
"""

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.fourier import (FourierBasis, KeyFrequencies, as_freq_list, component_norms, group_embeddings,
                               group_logit_map, key_directions, task_basis)
from grokscope.models import HookedTransformer, final_logits
from grokscope.tasks import NO_MECHANISM, Task

NAN = float("nan")

MEASURE_COLUMNS = ("train_loss", "test_loss", "train_acc", "test_acc", "full_loss", "full_acc",
                   "restricted_loss", "restricted_loss_test", "excluded_loss", "test_restricted_ratio",
                   "sum_sq_weights", "gini_W_E", "gini_W_L", "cos_fve", "group_loss", "group_acc",
                   "zero_operand_loss", "zero_operand_acc")
"""Columns of ``ProgressMeasures.as_row()`` before the per-frequency ones (excluded_loss_k{k}, cos_coef_k{k})."""


@dataclass
class ProgressMeasures:
    """Progress measures of one model; NaN where undefined (no split, an op without a group, or no
    input outside the group for the zero-operand columns). ``basis`` names the Fourier basis used
    ("" when none fits the operation).

    ``excluded_by_freq`` and ``cos_coefs`` are keyed by frequency; ``as_row()`` flattens everything into
    the table columns of ``MEASURE_COLUMNS`` plus ``excluded_loss_k{k}`` and ``cos_coef_k{k}``.
    """

    train_loss: float = NAN
    test_loss: float = NAN
    train_acc: float = NAN
    test_acc: float = NAN
    full_loss: float = NAN
    full_acc: float = NAN
    restricted_loss: float = NAN
    restricted_loss_test: float = NAN
    excluded_loss: float = NAN
    test_restricted_ratio: float = NAN
    sum_sq_weights: float = NAN
    gini_W_E: float = NAN
    gini_W_L: float = NAN
    cos_fve: float = NAN
    group_loss: float = NAN
    group_acc: float = NAN
    zero_operand_loss: float = NAN
    zero_operand_acc: float = NAN
    basis: str = ""
    excluded_by_freq: dict[int, float] = field(default_factory=dict)
    cos_coefs: dict[int, float] = field(default_factory=dict)
    key_freqs: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, float]:
        """One table row: the fixed columns, then excluded_loss_k{k} and cos_coef_k{k} per key frequency."""
        row = {name: float(getattr(self, name)) for name in MEASURE_COLUMNS}
        row.update({f"excluded_loss_k{k}": float(v) for k, v in sorted(self.excluded_by_freq.items())})
        row.update({f"cos_coef_k{k}": float(v) for k, v in sorted(self.cos_coefs.items())})
        return row


def gini(c: Float[Tensor, "n"]) -> float:
    """Hurley-Rickard Gini index of non-negative entries: 0 when all equal, (N-1)/N when one-hot.

    G = 2 sum_{i=1..N} i c_(i) / (N sum c) - (N + 1) / N with c sorted ascending ([N23] section 5).

    >>> gini(torch.ones(4)), gini(torch.tensor([0.0, 0.0, 0.0, 2.0]))
    (0.0, 0.75)
    """
    c = c.detach().double().flatten()
    if c.numel() == 0 or bool((c < 0).any()):
        raise GrokscopeError(f"{c.numel()} entries, min {float(c.min()) if c.numel() else NAN}",
                             expected="a non-empty vector of non-negative norms", where="gini")
    total = float(c.sum())
    if total == 0.0:
        return NAN
    n = c.numel()
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(2 * (ranks * c.sort().values).sum() / (n * total) - (n + 1) / n)


def _row_losses(L: Tensor, labels: Tensor) -> Tensor:
    return -L.log_softmax(dim=-1).gather(1, labels[:, None]).squeeze(1)


def _mean(values: Tensor, rows: Tensor | None) -> float:
    picked = values if rows is None else values[rows]
    return float(picked.mean()) if picked.numel() else NAN


def logit_measures(logits: Float[Tensor, "n_inputs d_vocab_out"], task: Task, freqs: list[int],
                   train_indices: Int[Tensor, "n_train"] | None = None) -> ProgressMeasures:
    """Every measure that depends on the logits alone (weights-based fields left NaN).

    ``logits`` are the read-out logits over ``task``'s full grid; columns past p are dropped.
    """
    p, n = task.p, task.n_inputs
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] < p:
        raise GrokscopeError(f"logits of shape {tuple(logits.shape)}", where="progress_measures",
                             expected=f"({n}, >= {p}): the read-out logits over the full grid")
    L = logits.detach()[:, :p].double()
    labels = task.labels()
    train, test = _split_rows(train_indices, n)
    m = ProgressMeasures(key_freqs=list(freqs))

    losses = _row_losses(L, labels)
    correct = (L.argmax(dim=-1) == labels).double()
    m.full_loss, m.full_acc = _mean(losses, None), _mean(correct, None)
    if train is not None:
        m.train_loss, m.train_acc = _mean(losses, train), _mean(correct, train)
        m.test_loss, m.test_acc = _mean(losses, test), _mean(correct, test)

    group = task.group
    if group is None:
        m.notes.append("restricted / excluded losses, the cos fit and the Fourier Gini are NaN: "
                       + NO_MECHANISM.format(op=task.op))
        return m
    N = group.N
    m.basis = group.name
    rows, outside = task.group_rows(group), task.outside_rows(group)
    if outside.numel():
        m.zero_operand_loss, m.zero_operand_acc = _mean(losses[outside], None), _mean(correct[outside], None)
    G = L[rows][:, group.elements()]                      # (N^2, N) in group coordinates
    u, v = torch.arange(N).repeat_interleave(N), torch.arange(N).repeat(N)
    glabels = (u + v) % N
    group_losses = _row_losses(G, glabels)
    m.group_loss, m.group_acc = _mean(group_losses, None), _mean((G.argmax(-1) == glabels).double(), None)
    gtrain = gtest = None
    if train is not None:
        in_train = torch.zeros(n, dtype=torch.bool)
        in_train[train] = True
        gtrain, gtest = in_train[rows].nonzero().squeeze(1), (~in_train[rows]).nonzero().squeeze(1)
    if not freqs:
        m.notes.append("no key frequencies: restricted loss uses the per-class mean only, excluded = full")
    D = key_directions(N, freqs)                          # (2K, N^2), orthonormal rows (1 for the sign)
    spans, offset = [], 0
    for k in freqs:
        width = 1 if 2 * k == N else 2
        spans.append(slice(offset, offset + width))
        offset += width
    coefs = D @ G                                         # (2K, N): coordinates of each class column
    projected = D.T @ coefs                               # P_K L
    restricted = _row_losses(projected + G.mean(dim=0, keepdim=True), glabels)
    m.restricted_loss = _mean(restricted, None)
    if gtrain is not None:
        m.restricted_loss_test = _mean(restricted, gtest)
        m.test_restricted_ratio = _ratio(m.test_loss, m.restricted_loss)
    ex_rows = gtrain if gtrain is not None else torch.arange(N * N)
    m.excluded_loss = _mean(_row_losses(G[ex_rows] - projected[ex_rows], glabels[ex_rows]), None)
    for span, k in zip(spans, freqs):
        one = D[span, ex_rows].T @ coefs[span]
        m.excluded_by_freq[k] = _mean(_row_losses(G[ex_rows] - one, glabels[ex_rows]), None)

    # <C_k, L> = (1/sqrt N) sum_m [cos(w m) coef_cos[m] + sin(w m) coef_sin[m]] (C_k unit over N^3);
    # for the sign frequency C_k = (-1)^(u+v-m) / N^1.5 and the sin term is absent.
    c = torch.arange(N, dtype=torch.float64)
    centred = G - G.mean(dim=1, keepdim=True)
    total = float(centred.square().sum())
    explained = 0.0
    for span, k in zip(spans, freqs):
        angle = 2 * math.pi * k * c / N
        terms = torch.cos(angle) * coefs[span.start]
        if span.stop - span.start == 2:
            terms = terms + torch.sin(angle) * coefs[span.start + 1]
        value = float(terms.sum()) / math.sqrt(N)
        m.cos_coefs[k] = value
        explained += value * value
    m.cos_fve = explained / total if total > 0 else NAN
    return m


def _ratio(num: float, den: float) -> float:
    if den > 0 or math.isnan(den):
        return num / den
    return math.inf if num > 0 else NAN


def _split_rows(train_indices: Tensor | None, n: int) -> tuple[Tensor | None, Tensor | None]:
    if train_indices is None:
        return None, None
    train = torch.as_tensor(train_indices).long().flatten()
    if train.numel() and (int(train.min()) < 0 or int(train.max()) >= n):
        raise GrokscopeError(f"train indices in {int(train.min())}..{int(train.max())}",
                             expected=f"rows of the grid, 0..{n - 1}", where="progress_measures")
    mask = torch.ones(n, dtype=torch.bool)
    mask[train] = False
    return train, mask.nonzero().squeeze(1)


def weight_measures(model: HookedTransformer, task: Task, basis: FourierBasis | None = None
                    ) -> dict[str, float]:
    """sum_sq_weights (every parameter), gini_W_E and gini_W_L over the N - 1 non-constant components
    of the task's basis (NaN for operations without a group)."""
    with torch.no_grad():
        sum_sq = sum(float(t.detach().double().square().sum()) for t in backend.weights(model).values())
        if task.group is None:
            return {"sum_sq_weights": sum_sq, "gini_W_E": NAN, "gini_W_L": NAN}
        basis = task_basis(task) if basis is None else basis
        nonconst = basis.nonconstant_rows()
        norms_e = component_norms(group_embeddings(model, task, "a"), basis)[nonconst]
        norms_l = component_norms(group_logit_map(model, task).T, basis)[nonconst]
    return {"sum_sq_weights": sum_sq, "gini_W_E": gini(norms_e), "gini_W_L": gini(norms_l)}


def progress_measures(model: HookedTransformer, task: Task, key_freqs: KeyFrequencies | list[int],
                      train_indices: Int[Tensor, "n_train"] | None = None, *,
                      logits: Float[Tensor, "n_inputs d_vocab_out"] | None = None,
                      basis: FourierBasis | None = None) -> ProgressMeasures:
    """All progress measures of ``model`` ([N23] section 5) from one forward pass over the grid.

    Args:
        model: a grokscope HookedTransformer (no LayerNorm).
        task: its task; the grid is ``task.tokens()``.
        key_freqs: K, a ``KeyFrequencies`` or a list of ints (e.g. from the final checkpoint).
        train_indices: the run's train rows; without them train/test columns are NaN and the
            excluded loss uses all rows.
        logits: the read-out logits if already computed (``models.final_logits``), to skip the pass.
        basis: a prebuilt ``task_basis(task)`` to reuse across checkpoints.
    """
    freqs = as_freq_list(key_freqs, task.group.N if task.group is not None else task.p)
    if logits is None:
        with torch.no_grad():
            logits = final_logits(model, task.tokens())
    m = logit_measures(logits, task, freqs, train_indices)
    for name, value in weight_measures(model, task, basis).items():
        setattr(m, name, value)
    return m
