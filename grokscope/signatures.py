"""Clock and pizza signatures of a modular-addition model [Z23] (SCIENCE.md section 4).

Pure functions: a HookedTransformer (or tensors) and a Task in, numbers and small frozen dataclasses
out. ``signatures(model, task)`` computes everything from one forward pass over the grid, one batched
forward / backward pass for the gradient symmetricity and one batched forward pass over the grid
for the logit templates of every embedding circle (``grokscope.templates``).

- Gradient symmetricity (GS): mean cosine of dQ/dE_a and dQ/dE_b, Q the raw logit of a class c.
- Distance irrelevance (DI): how little the correct logit depends on a - b.
- Circularity: how purely the top principal components of the embedding are single frequencies.
- Circles: consecutive principal components paired, with frequency k, index step delta = k^-1 mod p,
  accompanying circles at 2k, and their clock / pizza template fractions of variance explained.

>>> from grokscope.constructions import exact_clock_model
>>> task = Task(p=23)
>>> s = signatures(exact_clock_model(task, [3, 7]), task)
>>> s.di_correct, round(s.circularity, 6), [c.freq for c in s.circles]
(1.0, 1.0, [3, 7])
>>> round(s.circles[0].template_fve["clock"], 6)
1.0
"""

import math
import random
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.fourier import token_embeddings
from grokscope.models import HookedTransformer, final_logits
from grokscope.tasks import Task
from grokscope.templates import circle_fve, isolated_circle_logits

DEGENERATE_RTOL = 1e-4
"""DI is defined as 1 when the logit matrix varies less than this fraction of the logits' spread."""


# ----- gradient symmetricity ---------------------------------------------------------------------
@lru_cache(maxsize=8)
def _shuffled_triples(p: int, n_samples: int, seed: int) -> tuple[tuple[int, int, int], ...]:
    order = list(range(p**3))
    random.Random(seed).shuffle(order)  # the same permutation as shuffling the triples themselves
    return tuple((i // (p * p), i // p % p, i % p) for i in order[:n_samples])


def gs_triples(p: int, n_samples: int = 100, seed: int = 42) -> Int[Tensor, "n_samples 3"]:
    """The [Z23] samples: all p^3 triples (a, b, c) a-major, shuffled by ``random.Random(seed)``, first n.

    >>> gs_triples(59, 2).tolist()
    [[29, 1, 57], [49, 36, 24]]
    """
    if not 1 <= n_samples <= p**3:
        raise GrokscopeError(f"n_samples = {n_samples}", expected=f"1..{p**3}", where="gs_triples")
    return torch.tensor(_shuffled_triples(p, n_samples, seed), dtype=torch.long)


def _operand_tokens(task: Task, a: Tensor, b: Tensor) -> Int[Tensor, "batch n_ctx"]:
    columns = [a, b + task.b_offset]
    if task.eq_token:
        columns.append(torch.full_like(a, task.eq_id))
    return torch.stack(columns, dim=1)


def gradient_cosines(model: HookedTransformer, task: Task,
                     triples: Int[Tensor, "batch 3"]) -> Float[Tensor, "batch"]:
    """cos(dQ/dE_a, dQ/dE_b) per triple, Q = raw logit of class c at the last position [Z23].

    E_a, E_b are the embedding outputs (``hook_embed``, before the positional embedding) at
    positions 0 and 1. All triples go through one forward and one backward pass: each sample's Q
    depends only on its own inputs, so the gradient of sum(Q) holds every per-sample gradient.
    """
    tokens = _operand_tokens(task, triples[:, 0], triples[:, 1])
    captured = {}

    def leaf_embedding(act: Tensor, hook) -> Tensor:
        captured["embed"] = act.detach().requires_grad_(True)
        return captured["embed"]

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", leaf_embedding)])[:, -1]
        q = logits.gather(1, triples[:, 2:3]).sum()
        (grad,) = torch.autograd.grad(q, captured["embed"])
    return torch.nn.functional.cosine_similarity(grad[:, 0].double(), grad[:, 1].double(), dim=-1)


def gradient_symmetricity(model: HookedTransformer, task: Task, *, n_samples: int = 100,
                          seed: int = 42) -> float:
    """GS = mean over the ``gs_triples`` samples of cos(dQ/dE_a, dQ/dE_b) [Z23]. Pizza ~1, clock low."""
    return float(gradient_cosines(model, task, gs_triples(task.p, n_samples, seed)).mean())


# ----- distance irrelevance ----------------------------------------------------------------------
def _require_addition(task: Task, where: str) -> None:
    if task.op != "add":
        raise GrokscopeError(f"op = {task.op!r}", expected="'add': the clock and pizza signatures "
                             "describe modular addition", where=where)


def distance_matrix(logits: Float[Tensor, "n_inputs p"], task: Task, *,
                    runner_up: bool = False) -> Float[Tensor, "p p"]:
    """M[(a+b) mod p, (a-b) mod p] = the correct logit (or, with ``runner_up``, the largest wrong one)."""
    _require_addition(task, "distance_matrix")
    pairs, labels = task.operands(), task.labels()
    logits = logits[:, : task.p].double()
    if runner_up:
        values = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    else:
        values = logits.gather(1, labels[:, None])[:, 0]
    matrix = torch.empty(task.p, task.p, dtype=torch.float64)
    matrix[(pairs[:, 0] + pairs[:, 1]) % task.p, (pairs[:, 0] - pairs[:, 1]) % task.p] = values
    return matrix


def distance_irrelevance(logits: Float[Tensor, "n_inputs p"], task: Task, *,
                         runner_up: bool = False) -> float:
    """DI = mean over columns of std over rows of M / std of all of M (population std) [Z23].

    M from ``distance_matrix``: columns are a - b, rows a + b. A clock's correct logit ignores a - b
    (DI ~ 1), a pizza's scales with |cos(w(a-b)/2)| (DI low). ``runner_up`` uses the largest wrong
    logit, as the released result tables do; the paper's definition (the default) uses the correct one.

    Degenerate case: when M is constant (its std below ``DEGENERATE_RTOL`` times the std of all
    logits, e.g. an exact clock, whose correct logit is the same on every input) it cannot depend
    on a - b, so DI = 1.
    """
    matrix = distance_matrix(logits, task, runner_up=runner_up)
    total = matrix.std(unbiased=False)
    scale = logits[:, : task.p].double().std(unbiased=False)
    if total <= DEGENERATE_RTOL * scale or total == 0:
        return 1.0
    return float(matrix.std(dim=0, unbiased=False).mean() / total)


# ----- embedding PCA, circularity and circles ----------------------------------------------------
class EmbeddingPCA(NamedTuple):
    """PCA of p embedding rows: scores (p, r), components (r, d_model), variance share (r,), mean."""

    scores: Tensor
    components: Tensor
    share: Tensor
    mean: Tensor


def embedding_pca(W_rows: Float[Tensor, "p d_model"], *, rtol: float = 1e-5) -> EmbeddingPCA:
    """Centred PCA (SVD, float64) of token embedding rows, components by decreasing variance.

    Components with no variance (below 1e-12 of the largest) are dropped. Components whose singular
    values agree within ``rtol`` (of the largest) are not unique: any rotation of their span is an
    equally valid PCA. grokscope picks the rotation that makes them single-frequency where possible
    (and orders them by frequency), so exact constructions with equal-sized circles read as circles.
    """
    rows = W_rows.detach().double()
    mean = rows.mean(dim=0)
    U, S, Vh = torch.linalg.svd(rows - mean, full_matrices=False)
    keep = S > S[0] * 1e-6 if len(S) and S[0] > 0 else torch.zeros_like(S, dtype=torch.bool)
    scores, comps, S = U[:, keep] * S[keep], Vh[keep], S[keep]
    start = 0
    for end in range(1, len(S) + 1):
        if end == len(S) or S[end - 1] - S[end] > rtol * S[0]:
            if end - start > 1:
                rotation = _frequency_rotation(scores[:, start:end])
                scores[:, start:end] = scores[:, start:end] @ rotation
                comps[start:end] = rotation.T @ comps[start:end]
            start = end
    share = S**2 / (S**2).sum() if len(S) else S
    return EmbeddingPCA(scores, comps, share, mean)


def _frequency_rotation(scores: Tensor) -> Tensor:
    """Orthogonal R making the columns of scores @ R single-frequency where the span allows.

    Eigenvectors of sum_k k * G^T P_k G (P_k the projector on frequency k over the rows): for a span
    of pure-frequency vectors this matrix is diagonal in exactly that basis, with distinct eigenvalues.
    """
    p = scores.shape[0]
    x = torch.arange(p, dtype=torch.float64)
    freqs = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * freqs[:, None] * x[None] / p
    coeff_cos, coeff_sin = torch.cos(angle) @ scores, torch.sin(angle) @ scores  # (n_freqs, m)
    weights = freqs[:, None]
    mixed = (coeff_cos * weights).T @ coeff_cos + (coeff_sin * weights).T @ coeff_sin
    return torch.linalg.eigh(mixed).eigenvectors


def frequency_energy(values: Float[Tensor, "p n"]) -> Float[Tensor, "n n_freqs"]:
    """Fraction of each column's energy at frequency k = 1..(p-1)/2 (cos and sin together).

    e_k = 2 |sum_x v_x exp(2 pi i k x / p)|^2 / (p sum_x v_x^2) for mean-zero columns v, normalised
    over the p rows the transform uses: a pure cos(2 pi k x / p + phase) scores 1 at k. Independent
    of any Fourier basis ordering.
    """
    p = values.shape[0]
    spectrum = torch.fft.fft(values.double(), dim=0)[1 : (p - 1) // 2 + 1]
    energy = (values.double() ** 2).sum(dim=0).clamp_min(1e-300)
    return (2 * spectrum.abs() ** 2 / (p * energy)).T


def _fold(k: int, p: int) -> int:
    k %= p
    return min(k, p - k)


def index_step(freq: int, p: int) -> int:
    """delta = k^-1 mod p folded into 1..(p-1)/2: tokens 0, delta, 2 delta, ... walk the circle in order.

    >>> index_step(17, 59), index_step(3, 59), index_step(15, 59)
    (7, 20, 4)
    """
    return _fold(pow(freq, -1, p), p)


def component_frequencies(pca: EmbeddingPCA, n_components: int) -> tuple[list[int], list[float]]:
    """Best frequency and its energy fraction (clipped to [0, 1]) of the first principal components."""
    n = min(n_components, pca.scores.shape[1])
    fraction, best = frequency_energy(pca.scores[:, :n]).max(dim=1)
    return [int(k) + 1 for k in best], [min(max(float(f), 0.0), 1.0) for f in fraction]


def circularity(W_rows: Float[Tensor, "p d_model"], n_components: int = 4) -> float:
    """Mean over the first ``n_components`` principal components of each one's largest single-frequency
    energy fraction [Z23]. Normalised over the p rows the transform uses (the released code used all
    vocabulary rows, which halves it for diff_vocab models)."""
    return _mean_fraction(embedding_pca(W_rows), n_components)


def _mean_fraction(pca: EmbeddingPCA, n_components: int) -> float:
    _, fractions = component_frequencies(pca, n_components)
    return sum(fractions) / len(fractions) if fractions else 0.0


@dataclass(frozen=True)
class Circle:
    """Principal components (2i, 2i+1) of the operand-a embedding, read as one circle.

    Attributes:
        index: circle number, 0-based (circle 1 of the paper is index 0).
        components: the two principal components (0-based).
        freq: frequency k in 1..(p-1)/2; delta: index step k^-1 mod p (folded), so k = delta^-1.
        component_freqs, fractions: each component's best frequency and its energy fraction there.
        variance: share of the embedding variance in the two components.
        is_circle: both components peak at the same frequency with at least half their energy there.
        doubles: the index of an earlier circle whose frequency this one doubles (a candidate
            accompanying circle, freq = 2k), else None.
        template_fve: clock / pizza (and, for accompanying candidates, accompanying) fractions of
            variance explained in the paper's convention, 2 rho - 1 over all p^3 logits.
        template_fve_centred: the same after removing each class's mean logit and each input's mean
            logit (offsets that no template can explain); the classifier compares these.
        phase: the relative b phase used by the pizza template (fitted for diff_vocab, else 0).
    """

    index: int
    components: tuple[int, int]
    freq: int
    delta: int
    component_freqs: tuple[int, int]
    fractions: tuple[float, float]
    variance: float
    is_circle: bool
    doubles: int | None = None
    template_fve: dict | None = None
    template_fve_centred: dict | None = None
    phase: float = 0.0

    def to_dict(self) -> dict:
        """JSON-safe dict of every field, and ``is_accompanying``."""
        return {**asdict(self), "is_accompanying": self.is_accompanying}

    @property
    def is_accompanying(self) -> bool:
        """An accompanying circle [Z23]: it doubles another circle's frequency and the accompanying
        template explains its logits better than the clock and pizza templates."""
        fve = self.template_fve_centred or {}
        if self.doubles is None or fve.get("accompanying") is None:
            return False
        return fve["accompanying"] > max(fve["clock"], fve["pizza"])


def find_circles(W_rows: Float[Tensor, "p d_model"], n_circles: int = 6,
                 pca: EmbeddingPCA | None = None) -> list[Circle]:
    """Pair principal components (0, 1), (2, 3), ... into circles with frequency and index step [Z23].

    Model A of [Z23] gives delta = 7, 20, 4 (k = 17, 3, 15) and accompanying circles delta = 26,
    10, 2 (k = 25, 6, 29 = 2k folded). Templates are filled in by ``signatures``.
    """
    p = W_rows.shape[0]
    pca = pca if pca is not None else embedding_pca(W_rows)
    freqs, fractions = component_frequencies(pca, 2 * n_circles)
    share = pca.share
    circles = []
    for i in range(len(freqs) // 2):
        j = 2 * i
        main = j if fractions[j] >= fractions[j + 1] else j + 1
        same = freqs[j] == freqs[j + 1]
        freq = freqs[main]
        doubles = next((c.index for c in circles if c.is_circle and _fold(2 * c.freq, p) == freq), None)
        circles.append(Circle(index=i, components=(j, j + 1), freq=freq, delta=index_step(freq, p),
                              component_freqs=(freqs[j], freqs[j + 1]),
                              fractions=(fractions[j], fractions[j + 1]),
                              variance=float(share[j] + share[j + 1]),
                              is_circle=same and min(fractions[j], fractions[j + 1]) >= 0.5,
                              doubles=doubles if same else None))
    return circles


def _with_templates(model: HookedTransformer, task: Task, circles: list[Circle],
                    pca: EmbeddingPCA) -> list[Circle]:
    """The circles with their template FVE filled in (one batched forward pass for all of them)."""
    chosen = [c for c in circles if c.is_circle]
    if not chosen:
        return circles
    planes = [pca.scores[:, list(c.components)] @ pca.components[list(c.components)] for c in chosen]
    logits = isolated_circle_logits(model, task, planes, [c.freq for c in chosen], pca.mean)
    freq_of, done = {c.index: c.freq for c in circles}, {}
    for circle, circle_logits in zip(chosen, logits):
        base = freq_of[circle.doubles] if circle.doubles is not None else None
        paper, centred, phase = circle_fve(circle_logits, circle.freq, base, fit_phase=task.diff_vocab)
        done[circle.index] = replace(circle, template_fve=paper, template_fve_centred=centred, phase=phase)
    return [done.get(c.index, c) for c in circles]


def _weighted_templates(circles: list[Circle], key: str) -> dict | None:
    main = [c for c in circles if c.is_circle and not c.is_accompanying and getattr(c, key)]
    total = sum(c.variance for c in main)
    if not main or total <= 0:
        return None
    return {name: sum(c.variance * getattr(c, key)[name] for c in main) / total
            for name in ("clock", "pizza")}


@dataclass(frozen=True)
class Signatures:
    """Every clock / pizza signature of one model [Z23].

    Attributes:
        p: the modulus. accuracy: over the full grid (argmax of the p class logits).
        gradient_symmetricity: GS with ``n_samples`` triples of the seed-``seed`` protocol.
        di_correct: distance irrelevance of the correct logit (the paper's definition).
        di_runnerup: the same for the largest wrong logit (the released result tables).
        circularity: of the operand-a embedding rows; circularity_b: of the b rows (diff_vocab only).
        circles: consecutive principal-component pairs of the operand-a embedding, with templates.
        template_fve, template_fve_centred: clock and pizza FVE averaged over the circles that are
            neither accompanying nor broken pairs, weighted by their embedding variance (None if none).
    """

    p: int
    accuracy: float
    gradient_symmetricity: float
    di_correct: float
    di_runnerup: float
    circularity: float
    circularity_b: float | None
    circles: tuple[Circle, ...]
    template_fve: dict | None
    template_fve_centred: dict | None
    n_samples: int = 100
    seed: int = 42

    def to_dict(self) -> dict:
        """JSON-safe dict; circles as a list of dicts."""
        data = asdict(self)
        data["circles"] = [c.to_dict() for c in self.circles]
        return data


def signatures(model: HookedTransformer, task: Task, *, n_samples: int = 100, seed: int = 42,
               n_circles: int = 6, templates: bool = True) -> Signatures:
    """All signatures of ``model`` on ``task`` (modular addition): see the module docstring.

    Work: one forward pass over the grid (accuracy, DI), one batched forward / backward pass over
    ``n_samples`` triples (GS), and with ``templates`` one batched forward pass over the grid for all
    circles (without it, circles carry no template FVE and the cost drops to the first two).
    """
    _require_addition(task, "signatures")
    if model.cfg.d_vocab_out < task.p or model.cfg.d_vocab < task.d_vocab:
        raise GrokscopeError(f"d_vocab = {model.cfg.d_vocab}, d_vocab_out = {model.cfg.d_vocab_out}",
                             expected=f"a model of {task} (d_vocab {task.d_vocab}, >= {task.p} outputs)",
                             where="signatures")
    with torch.no_grad():
        logits = final_logits(model, task.tokens())[:, : task.p]
    accuracy = float((logits.argmax(dim=1) == task.labels()).double().mean())
    rows_a = token_embeddings(model, task, "a")
    pca = embedding_pca(rows_a)
    circles = find_circles(rows_a, n_circles, pca)
    if templates:
        circles = _with_templates(model, task, circles, pca)
    return Signatures(
        p=task.p, accuracy=accuracy,
        gradient_symmetricity=gradient_symmetricity(model, task, n_samples=n_samples, seed=seed),
        di_correct=distance_irrelevance(logits, task),
        di_runnerup=distance_irrelevance(logits, task, runner_up=True),
        circularity=_mean_fraction(pca, 4),
        circularity_b=circularity(token_embeddings(model, task, "b")) if task.diff_vocab else None,
        circles=tuple(circles), template_fve=_weighted_templates(circles, "template_fve"),
        template_fve_centred=_weighted_templates(circles, "template_fve_centred"),
        n_samples=n_samples, seed=seed)
