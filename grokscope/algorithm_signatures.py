"""Clock and pizza signatures of a modular-addition model [Z23] (SCIENCE.md section 4).

Pure functions: a HookedTransformer (or tensors) and a Task in, numbers and small frozen dataclasses
out. ``signatures(model, task)`` computes everything from one forward pass over the grid, one batched
forward / backward pass for the gradient symmetricity and one batched forward pass over the grid
for the logit templates of every embedding circle (``grokscope.templates``).

- Gradient symmetricity (GS): mean cosine of dQ/dE_a and dQ/dE_b, Q the raw logit of a class c.
- Distance irrelevance (DI): how little the correct logit depends on a - b.
- Circularity: how purely the top principal components of the embedding are single frequencies
  ([Z23]'s), and how much of their variance whole frequency planes carry (spectral).
- Circles: the strongest frequency planes of the embedding (``grokscope.circles``), with index step
  delta = k^-1 mod p, accompanying circles at 2k, and their clock / pizza template fractions of
  variance explained.

>>> from grokscope.constructions import exact_clock_model
>>> task = Task(p=23)
>>> s = signatures(exact_clock_model(task, [3, 7]), task)
>>> s.di_correct, round(s.circularity, 6), [c.freq for c in s.circles]
(1.0, 1.0, [3, 7])
>>> round(s.circles[0].template_fve["clock"], 6)
1.0
"""

import random
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope.circles import (Circle, EmbeddingPCA, circularity, embedding_pca, find_circles, isolated_plane,
                               mean_fraction, spectral_circularity)
from grokscope.errors import GrokscopeError
from grokscope.fourier import token_embeddings
from grokscope.grid_forward import grid_logits
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


# ----- circles and their logit templates -------------------------------------------------------
def _with_templates(model: HookedTransformer, task: Task, circles: list[Circle],
                    rows_a: Tensor, pca: EmbeddingPCA) -> list[Circle]:
    """The circles with their template FVE filled in (one batched forward pass for all of them)."""
    chosen = [c for c in circles if c.is_circle]
    if not chosen:
        return circles
    planes = [isolated_plane(rows_a, c, pca) for c in chosen]
    mean = rows_a.detach().double().mean(dim=0)
    logits = isolated_circle_logits(model, task, planes, [c.freq for c in chosen], mean)
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
        circularity: [Z23]'s, of the operand-a embedding rows; circularity_b: of the b rows
            (diff_vocab only).
        spectral_circularity: ``grokscope.circles.spectral_circularity`` of the operand-a rows (the
            classifier's default gate).
        circles: the strongest frequency planes of the operand-a embedding (``find_circles``), with
            templates.
        template_fve, template_fve_centred: clock and pizza FVE averaged over the circles that are
            true circles and not accompanying, weighted by their embedding variance (None if none).
    """

    p: int
    accuracy: float
    gradient_symmetricity: float
    di_correct: float
    di_runnerup: float
    circularity: float
    circularity_b: float | None
    spectral_circularity: float
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
    logits = grid_logits(model, task)[:, : task.p]
    accuracy = float((logits.argmax(dim=1) == task.labels()).double().mean())
    rows_a = token_embeddings(model, task, "a").detach().double()
    pca = embedding_pca(rows_a)
    circles = find_circles(rows_a, n_circles, pca)
    if templates:
        circles = _with_templates(model, task, circles, rows_a, pca)
    return Signatures(
        p=task.p, accuracy=accuracy,
        gradient_symmetricity=gradient_symmetricity(model, task, n_samples=n_samples, seed=seed),
        di_correct=distance_irrelevance(logits, task),
        di_runnerup=distance_irrelevance(logits, task, runner_up=True),
        circularity=mean_fraction(pca, 4), spectral_circularity=spectral_circularity(rows_a, pca=pca),
        circularity_b=circularity(token_embeddings(model, task, "b")) if task.diff_vocab else None,
        circles=tuple(circles), template_fve=_weighted_templates(circles, "template_fve"),
        template_fve_centred=_weighted_templates(circles, "template_fve_centred"),
        n_samples=n_samples, seed=seed)
