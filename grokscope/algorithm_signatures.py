"""Clock and pizza signatures of a modular-arithmetic model [Z23] (SCIENCE.md sections 4 and 7).

Every signature is measured in the group of the task (``Task.group``): in group coordinates
u = phi(a), v = sign_b phi(b), m = phi(c) the task is addition in Z_N (m = u + v), so the addition
definitions apply with a + b -> u + v and a - b -> u - v. For add nothing changes. For sub
(v = -b) the roles of a + b and a - b are exchanged: a clock's logit depends on a - b only, a
pizza's also on |cos(w(a + b)/2)|, so DI's rows are a - b and its columns a + b. For mul and div the
measures run on the (p - 1)^2 nonzero grid in discrete-log coordinates (N = p - 1), the embedding
rows in the order g^0, g^1, ...; accuracy with a zero operand is reported apart.

GS compares dQ/dE_a and dQ/dE_b, which for a pizza of u + v are parallel only when b's embedding
carries v itself. When sign_b = -1 (sub, div) the b token at coordinate v is phi^-1(-v), and GS uses
the mirrored variant: dQ/dE_b is mapped back through the linear map M with E_b(v) = E_a(v) M on the
embedding rows (least squares over the N group rows, centred; a reflection for a shared table), so
g_b <- g_b M^T, the gradient with respect to the embedding of coordinate v.

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

from grokscope.circles import (Circle, EmbeddingPCA, circularity, embedding_pca, find_circles, isolated_factors,
                               mean_fraction, spectral_circularity)
from grokscope.errors import GrokscopeError
from grokscope.fourier import group_embeddings, require_group
from grokscope.grid_forward import grid_logits, take
from grokscope.models import HookedTransformer
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


def group_triples(task: Task, n_samples: int = 100, seed: int = 42) -> Int[Tensor, "n_samples 3"]:
    """The [Z23] protocol in group coordinates: ``gs_triples(N)`` as (u, v, m), mapped to operand values
    (a, b, c) = (phi^-1(u), phi^-1(sign_b v), phi^-1(m)); for add exactly ``gs_triples(p)``."""
    group = require_group(task, "gradient_symmetricity")
    coords = gs_triples(group.N, n_samples, seed)
    values = group.elements()
    return torch.stack([values[coords[:, 0]], group.b_values()[coords[:, 1]], values[coords[:, 2]]], dim=1)


def mirror_map(model: HookedTransformer, task: Task) -> Float[Tensor, "d_model d_model"] | None:
    """M with E_b(v) ~ E_a(v) M over the group rows (least squares, centred), for sign_b = -1; else None.

    E_a(v) is the embedding of a's token at coordinate v and E_b(v) that of b's token at coordinate v
    (``group_embeddings``). For sub with one shared table E_b(v) = E(-v): on token circles M is the
    reflection sin -> -sin.
    """
    if require_group(task, "mirror_map").sign_b > 0:
        return None
    rows_a = group_embeddings(model, task, "a").detach().double()
    rows_b = group_embeddings(model, task, "b").detach().double()
    return torch.linalg.pinv(rows_a - rows_a.mean(0)) @ (rows_b - rows_b.mean(0))


def _operand_tokens(task: Task, a: Tensor, b: Tensor) -> Int[Tensor, "batch n_ctx"]:
    columns = [a, b + task.b_offset]
    if task.eq_token:
        columns.append(torch.full_like(a, task.eq_id))
    return torch.stack(columns, dim=1)


def gradient_cosines(model: HookedTransformer, task: Task, triples: Int[Tensor, "batch 3"],
                     mirror: Float[Tensor, "d_model d_model"] | None = None) -> Float[Tensor, "batch"]:
    """cos(dQ/dE_a, dQ/dE_b) per triple (a, b, c), Q = raw logit of class c at the last position [Z23].

    E_a, E_b are the embedding outputs (``hook_embed``, before the positional embedding) at
    positions 0 and 1. All triples go through one forward and one backward pass: each sample's Q
    depends only on its own inputs, so the gradient of sum(Q) holds every per-sample gradient.
    ``mirror`` (``mirror_map``) maps dQ/dE_b to g_b M^T first (the mirrored variant for sub and div).
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
    g_a, g_b = grad[:, 0].double(), grad[:, 1].double()
    if mirror is not None:
        g_b = g_b @ mirror.T
    return torch.nn.functional.cosine_similarity(g_a, g_b, dim=-1)


def gradient_symmetricity(model: HookedTransformer, task: Task, *, n_samples: int = 100,
                          seed: int = 42) -> float:
    """GS = mean over the ``group_triples`` samples of cos(dQ/dE_a, dQ/dE_b) [Z23], mirrored for sub and
    div (module docstring). Pizza ~1, clock low."""
    triples = group_triples(task, n_samples, seed)
    return float(gradient_cosines(model, task, triples, mirror_map(model, task)).mean())


# ----- distance irrelevance ----------------------------------------------------------------------
def group_logits(logits: Float[Tensor, "n_inputs d_vocab_out"], task: Task) -> Float[Tensor, "N_sq N"]:
    """The logits of the in-group inputs in group coordinates: row u*N + v, column m = class phi^-1(m)
    (``Task.group_rows``); the correct class of row u*N + v is m = u + v mod N."""
    group = require_group(task, "group_logits")
    return take(take(logits, task.group_rows(group)), group.elements(), dim=1).double()


def distance_matrix(logits: Float[Tensor, "n_inputs p"], task: Task, *,
                    runner_up: bool = False) -> Float[Tensor, "p p"]:
    """M[(u+v) mod N, (u-v) mod N] = the correct logit (or, with ``runner_up``, the largest wrong one of
    the N group classes), in group coordinates: (a+b, a-b) for add, (a-b, a+b) for sub, (ind a +- ind b,
    ind a -+ ind b) on the nonzero grid for mul and div.

    For even N (mul, div) (u, v) -> (u+v, u-v) is two-to-one onto the pairs of equal parity, so the
    rows are indexed by u instead: M[u, (u-v) mod N]. Each column still holds the N inputs of one
    u - v, which is all ``distance_irrelevance`` reads.
    """
    N = require_group(task, "distance_matrix").N
    G = group_logits(logits, task)
    u, v = torch.arange(N).repeat_interleave(N), torch.arange(N).repeat(N)
    labels = (u + v) % N
    if runner_up:
        values = G.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    else:
        values = G.gather(1, labels[:, None])[:, 0]
    matrix = torch.empty(N, N, dtype=torch.float64)
    matrix[labels if N % 2 else u, (u - v) % N] = values
    return matrix


def distance_irrelevance(logits: Float[Tensor, "n_inputs p"], task: Task, *,
                         runner_up: bool = False) -> float:
    """DI = mean over columns of std over rows of M / std of all of M (population std) [Z23].

    M from ``distance_matrix``: columns are u - v, rows u + v (a - b and a + b for add; exchanged for sub). A clock's correct logit ignores a - b
    (DI ~ 1), a pizza's scales with |cos(w(a-b)/2)| (DI low). ``runner_up`` uses the largest wrong
    logit, as the released result tables do; the paper's definition (the default) uses the correct one.

    Degenerate case: when M is constant (its std below ``DEGENERATE_RTOL`` times the std of all
    logits, e.g. an exact clock, whose correct logit is the same on every input) it cannot depend
    on a - b, so DI = 1.
    """
    matrix = distance_matrix(logits, task, runner_up=runner_up)
    total = matrix.std(unbiased=False)
    scale = group_logits(logits, task).std(unbiased=False)
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
    planes = [isolated_factors(rows_a, c, pca) for c in chosen]
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
        basis: the group the signatures were measured in (``Group.name``, e.g. "Z_58, discrete log base 2").
        group_accuracy: over the in-group inputs; zero_operand_accuracy: over the inputs with an
            operand outside the group (a zero operand for mul and div; None when there are none).
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
    basis: str = ""
    group_accuracy: float | None = None
    zero_operand_accuracy: float | None = None

    def to_dict(self) -> dict:
        """JSON-safe dict; circles as a list of dicts."""
        data = asdict(self)
        data["circles"] = [c.to_dict() for c in self.circles]
        return data


def signatures(model: HookedTransformer, task: Task, *, n_samples: int = 100, seed: int = 42,
               n_circles: int = 6, templates: bool = True) -> Signatures:
    """All signatures of ``model`` on ``task`` in the task's group: see the module docstring.

    Work: one forward pass over the grid (accuracy, DI), one batched forward / backward pass over
    ``n_samples`` triples (GS), and with ``templates`` one batched forward pass over the grid for all
    circles (without it, circles carry no template FVE and the cost drops to the first two).
    """
    group = require_group(task, "signatures")
    if model.cfg.d_vocab_out < task.p or model.cfg.d_vocab < task.d_vocab:
        raise GrokscopeError(f"d_vocab = {model.cfg.d_vocab}, d_vocab_out = {model.cfg.d_vocab_out}",
                             expected=f"a model of {task} (d_vocab {task.d_vocab}, >= {task.p} outputs)",
                             where="signatures")
    logits = grid_logits(model, task)[:, : task.p]
    correct = (logits.argmax(dim=1) == task.labels()).double()
    outside = task.outside_rows(group)
    accuracy = float(correct.mean())
    rows_a = group_embeddings(model, task, "a").detach().double()
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
        circularity_b=circularity(group_embeddings(model, task, "b")) if task.diff_vocab else None,
        circles=tuple(circles), template_fve=_weighted_templates(circles, "template_fve"),
        template_fve_centred=_weighted_templates(circles, "template_fve_centred"),
        n_samples=n_samples, seed=seed, basis=group.name,
        group_accuracy=float(correct[task.group_rows(group)].mean()),
        zero_operand_accuracy=float(correct[outside].mean()) if outside.numel() else None)
