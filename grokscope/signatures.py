"""Clock and pizza signatures of a modular-addition model [Z23] (SCIENCE.md section 4).

Every function is pure: a HookedTransformer (or tensors) and a Task in, numbers and small frozen
dataclasses out. ``signatures(model, task)`` computes them all from one forward pass over the grid,
one batched backward pass for the gradient symmetricity, and one batched forward pass over the grid
for every embedding circle's logit templates.

- Gradient symmetricity (GS): mean cosine of dQ/dE_a and dQ/dE_b, Q the raw logit of a class c.
- Distance irrelevance (DI): how little the correct logit depends on a - b.
- Circularity: how purely the top principal components of the embedding are single frequencies.
- Circles: consecutive principal components paired, with frequency k, index step delta = k^-1 mod p,
  accompanying circles at 2k, and their logit-template fractions of variance explained.

>>> from grokscope.formats.pizza import read_model                        # doctest: +SKIP
>>> run = read_model("tests/fixtures/pizza/model_p99zdpze5l.pt")          # doctest: +SKIP
>>> s = signatures(run.model(), run.task)                                 # doctest: +SKIP
>>> round(s.gradient_symmetricity, 4), [c.delta for c in s.circles[:3]]   # doctest: +SKIP
(0.9937, [7, 20, 4])
"""

import math
import random
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.models import HookedTransformer, final_logits
from grokscope.tasks import Task

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
def embedding_pca(W_rows: Float[Tensor, "p d_model"]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PCA of token embeddings: (scores (p, r), components (r, d_model), explained share (r,), mean)."""
    rows = W_rows.detach().double()
    mean = rows.mean(dim=0)
    U, S, Vh = torch.linalg.svd(rows - mean, full_matrices=False)
    share = S**2 / (S**2).sum().clamp_min(1e-300)
    return U * S, Vh, share, mean


def frequency_energy(values: Float[Tensor, "p n"]) -> Float[Tensor, "n n_freqs"]:
    """Fraction of each column's energy at frequency k = 1..(p-1)/2 (cos and sin together).

    Normalised by the column's own energy over the p rows it is defined on, so a column that is a
    pure cos(2 pi k x / p + phase) scores 1 at k. The result does not depend on how a Fourier basis
    is ordered: e_k = 2 |sum_x v_x exp(2 pi i k x / p)|^2 / (p sum_x v_x^2) for mean-zero v.
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


def component_frequencies(W_rows: Float[Tensor, "p d_model"], n_components: int
                          ) -> tuple[list[int], list[float], Tensor, Tensor, Tensor, Tensor]:
    """Best frequency and its energy fraction for each of the first principal components."""
    scores, comps, share, mean = embedding_pca(W_rows)
    n = min(n_components, scores.shape[1])
    energy = frequency_energy(scores[:, :n])
    fraction, best = energy.max(dim=1)
    return ([int(k) + 1 for k in best], [min(max(float(f), 0.0), 1.0) for f in fraction],
            scores, comps, share, mean)


def embedding_rows(model: HookedTransformer, task: Task, operand: str = "a") -> Float[Tensor, "p d_model"]:
    """The embedding rows of operand a (ids 0..p-1) or b (ids p..2p-1 with diff_vocab)."""
    offset = task.b_offset if operand == "b" else 0
    return model.W_E[offset : offset + task.p]


def circularity(W_rows: Float[Tensor, "p d_model"], n_components: int = 4) -> float:
    """Mean over the first ``n_components`` principal components of their largest single-frequency
    energy fraction [Z23]. Normalised over the p rows the transform uses (the released code used all
    vocabulary rows, which halves it for diff_vocab models)."""
    _, fractions, *_ = component_frequencies(W_rows, n_components)
    return sum(fractions) / len(fractions)


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
        """JSON-safe dict of every field."""
        return asdict(self)

    @property
    def is_accompanying(self) -> bool:
        """An accompanying circle [Z23]: it doubles another circle's frequency and the accompanying
        template explains its logits better than the clock and pizza templates."""
        fve = self.template_fve_centred or {}
        if self.doubles is None or fve.get("accompanying") is None:
            return False
        return fve["accompanying"] > max(fve["clock"], fve["pizza"])


# ----- logit templates ---------------------------------------------------------------------------
TEMPLATES = ("clock", "pizza", "accompanying")
N_PHASES = 360


def _template_factors(kind: str, p: int, freq: int, phases: Tensor) -> tuple[Tensor, Tensor]:
    """Templates factor as T(a, b, c) = f(d) g(x), d = (a - b) mod p, x = (a + b - c) mod p.

    clock: cos(w(a+b-c)): f = 1, g = cos(w x).
    pizza, as the released code builds it from s = E_a + E_b on the circle, read out along the
        half angle w c / 2: |<s, u_c>| - |<s, u_c perp>| = 2 |cos((w d + phase)/2)| (|cos(w x/2)| - |sin(w x/2)|).
    accompanying (freq = the base circle's k): -(cos(2wa - wc) + cos(2wb - wc))
        = -2 cos(w d + phase) cos(w x).
    ``phases`` (n,) gives one f per phase (the relative phase of the b circle, 0 for shared embeddings).
    """
    w = 2 * math.pi * freq / p
    x = torch.arange(p, dtype=torch.float64)
    if kind == "clock":
        return torch.ones(len(phases), p, dtype=torch.float64), torch.cos(w * x)
    if kind == "pizza":
        f = 2 * torch.cos((w * x[None] + phases[:, None]) / 2).abs()
        return f, torch.cos(w * x / 2).abs() - torch.sin(w * x / 2).abs()
    if kind == "accompanying":
        return -2 * torch.cos(w * x[None] + phases[:, None]), torch.cos(w * x)
    raise GrokscopeError(f"template {kind!r}", expected=f"one of {TEMPLATES}", where="template_fve")


def template_fve(logits: Float[Tensor, "p p p"], kind: str, freq: int, *,
                 fit_phase: bool = False) -> tuple[float, float, float]:
    """Fraction of variance of ``logits[a, b, c]`` explained by a template [Z23].

    The paper's convention: z-score both over all p^3 entries, FVE = 1 - Var(z_L - z_T) = 2 rho - 1
    (not R^2: a pure pizza still scores ~75% on the clock template, so compare, never threshold one).
    Returns (fve, fve_centred, phase): ``fve_centred`` first removes the per-class and per-input
    means of the logits (the templates have none). With ``fit_phase`` (separate a and b embeddings)
    the relative phase in f(d) is chosen on a 1-degree grid to maximise the centred FVE.
    Computed through the factorisation T = f(d) g(x), without building any p^3 template.
    """
    p = logits.shape[0]
    L = logits.double()
    a = torch.arange(p)
    s, d = (a[:, None] + a[None]) % p, (a[:, None] - a[None]) % p
    x = (s[:, :, None] - a[None, None]) % p
    phases = torch.arange(N_PHASES, dtype=torch.float64) * (2 * math.pi / N_PHASES) if fit_phase \
        else torch.zeros(1, dtype=torch.float64)
    f, g = _template_factors(kind, p, freq, phases)
    g_c = g - g.mean()
    n = p**3
    per_input = (L * g[x]).sum(-1)                                   # sum_c L g(a+b-c), (p, p)
    per_input_c = per_input - g.mean() * L.sum(-1)
    by_d = torch.zeros(p, dtype=torch.float64).index_add_(0, d.flatten(), per_input.flatten())
    by_d_c = torch.zeros(p, dtype=torch.float64).index_add_(0, d.flatten(), per_input_c.flatten())
    L_c = L - L.mean(dim=(0, 1), keepdim=True) - L.mean(dim=2, keepdim=True) + L.mean()
    std_c = L_c.pow(2).mean().sqrt() * (f.pow(2).mean(1) * g_c.pow(2).mean()).sqrt()
    rho_c = (f @ by_d_c / n) / std_c.clamp_min(1e-300)
    best = int(rho_c.argmax())
    f_best = f[best]
    mean_t = f_best.mean() * g.mean()
    std_t = (f_best.pow(2).mean() * g.pow(2).mean() - mean_t**2).clamp_min(0).sqrt()
    cov = f_best @ by_d / n - L.mean() * mean_t
    rho = cov / (L.std(unbiased=False) * std_t).clamp_min(1e-300)
    return float(2 * rho - 1), float(2 * rho_c[best] - 1), float(phases[best])


class _ReadOut(torch.nn.Module):
    """Wraps a model so ``torch.func.functional_call`` can swap its W_E for ``final_logits``."""

    def __init__(self, model: HookedTransformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return final_logits(self.model, tokens)


def _fourier_projection(rows: Tensor, freq: int) -> Tensor:
    p = rows.shape[0]
    angle = 2 * math.pi * freq * torch.arange(p, dtype=torch.float64) / p
    basis = torch.stack([torch.cos(angle), torch.sin(angle)]) * math.sqrt(2 / p)
    return basis.T @ (basis @ rows)


def isolated_circle_logits(model: HookedTransformer, task: Task,
                           circles: list[Circle]) -> Float[Tensor, "n_circles p p p"]:
    """Logits over the grid with each circle isolated in the embedding, as [Z23] does.

    Operand-a rows become mean + the circle's two principal components; with diff_vocab the b rows
    become their mean + their own Fourier component at the circle's frequency; other rows are kept.
    All circles go through one batched forward pass (one stacked embedding table).
    """
    p, W_E = task.p, model.W_E.detach()
    _, _, scores, comps, _, mean = component_frequencies(embedding_rows(model, task), 0)
    tables = []
    for circle in circles:
        table = W_E.double().clone()
        keep = list(circle.components)
        table[:p] = mean + scores[:, keep] @ comps[keep]
        if task.diff_vocab:
            rows_b = table[p : 2 * p]
            table[p : 2 * p] = rows_b.mean(0) + _fourier_projection(rows_b - rows_b.mean(0), circle.freq)
        tables.append(table.to(W_E.dtype))
    grid = task.tokens()
    tokens = torch.cat([grid + i * W_E.shape[0] for i in range(len(circles))])
    with torch.no_grad():
        logits = torch.func.functional_call(_ReadOut(model), {"model.embed.W_E": torch.cat(tables)}, (tokens,))
    return logits[:, :p].reshape(len(circles), p, p, p)


def find_circles(W_rows: Float[Tensor, "p d_model"], n_circles: int = 6) -> list[Circle]:
    """Pair principal components (0, 1), (2, 3), ... into circles with frequency and index step [Z23].

    Model A of [Z23] gives delta = 7, 20, 4 (k = 17, 3, 15) and accompanying circles delta = 26,
    10, 2 (k = 25, 6, 29 = 2k folded). Templates are filled in by ``signatures``.
    """
    p = W_rows.shape[0]
    freqs, fractions, _, _, share, _ = component_frequencies(W_rows, 2 * n_circles)
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
