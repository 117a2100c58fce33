"""The real Fourier basis over Z_p and the Fourier views of a modular-arithmetic transformer.

Conventions (SCIENCE.md section 2): ``F`` is the real orthonormal p x p matrix whose row 0 is the
constant 1/sqrt(p) and whose rows 2k-1 / 2k are cos(w_k x) / sin(w_k x), normalised, w_k = 2 pi k / p.
That order is named in ``FourierBasis.order``; callers find rows with ``basis.index("cos", k)`` and
never by position, since other code (the TransformerLens demo) puts sin before cos.

Pieces, following [N23] (Nanda et al. 2023) and [Z23] (Zhong et al. 2023):
- embedding norms ``||F W_E[:p]||`` per component and per frequency;
- the neuron-logit map W_L = W_out @ W_U[:, :p] and its norms over the output axis;
- the 2D transform of neuron activations over (a, b), each neuron's frequency and fraction explained;
- the directions cos(w_k(a+b)) and sin(w_k(a+b)) in R^{p^2};
- key frequencies by rule A (neurons), B (W_L) or C (W_E), reported with their rule and threshold.

>>> basis = fourier_basis(5)
>>> basis.labels
('const', 'cos 1', 'sin 1', 'cos 2', 'sin 2')
>>> basis.index("sin", 2)
4
"""

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.models import HookedTransformer, final_logits
from grokscope.tasks import Task

FRACTION_EXPLAINED = 0.85
"""A neuron is "explained" when this fraction of its variance lies in one frequency block ([N23])."""

MIN_NEURONS = 5
"""Rule A's guard: a frequency is key only when at least this many explained neurons have it."""

RELATIVE_NORM = 0.25
"""Rules B and C: a frequency is key when its norm exceeds this fraction of the largest (max / 4)."""

RULES = ("A", "B", "C")


@dataclass(frozen=True, repr=False)
class FourierBasis:
    """The real orthonormal Fourier basis of Z_p, with named rows.

    Attributes:
        p: the modulus.
        F: float64 (p, p), orthonormal rows; ``F @ x`` transforms a function of x in 0..p-1.
        labels: one label per row, e.g. "const", "cos 3", "sin 3".
        order: the row order, always "const,cos k,sin k" here; use ``index`` rather than positions.
    """

    p: int
    F: Float[Tensor, "p p"]
    labels: tuple[str, ...]
    order: str = "const,cos k,sin k"

    def __repr__(self) -> str:
        return f"FourierBasis(p={self.p}, order={self.order!r})"

    @property
    def freqs(self) -> list[int]:
        """The frequencies 1..(p-1)/2."""
        return list(range(1, (self.p - 1) // 2 + 1))

    def index(self, kind: str, k: int = 0) -> int:
        """The row of component (kind, k): kind in {"const", "cos", "sin"} (k ignored for const)."""
        if kind == "const":
            return self.labels.index("const")
        label = f"{kind} {k}"
        if label not in self.labels:
            raise GrokscopeError(f"component {label!r}", where="FourierBasis.index",
                                 expected=f"'const' or cos/sin k with k in 1..{(self.p - 1) // 2}")
        return self.labels.index(label)

    def cos_rows(self, freqs: list[int] | None = None) -> Int[Tensor, "n_freqs"]:
        """Rows of cos(w_k x) for ``freqs`` (default: every frequency, ascending)."""
        return torch.tensor([self.index("cos", k) for k in (self.freqs if freqs is None else freqs)])

    def sin_rows(self, freqs: list[int] | None = None) -> Int[Tensor, "n_freqs"]:
        """Rows of sin(w_k x) for ``freqs`` (default: every frequency, ascending)."""
        return torch.tensor([self.index("sin", k) for k in (self.freqs if freqs is None else freqs)])

    def nonconstant_rows(self) -> Int[Tensor, "p_minus_1"]:
        """Every row but the constant one (the p - 1 cos / sin components), in basis order."""
        const = self.index("const")
        return torch.tensor([i for i in range(self.p) if i != const])


def fourier_basis(p: int) -> FourierBasis:
    """The real orthonormal Fourier basis of Z_p in the [N23] order (const, cos 1, sin 1, ...).

    Row 0 = 1/sqrt(p); rows 2k-1, 2k = cos(w_k x), sin(w_k x) normalised (norm sqrt(p/2)),
    w_k = 2 pi k / p, k = 1..(p-1)/2. Built in float64 (orthonormal to ~1e-15).

    >>> b = fourier_basis(7)
    >>> torch.allclose(b.F @ b.F.T, torch.eye(7, dtype=torch.float64))
    True
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 3 or p % 2 == 0:
        raise GrokscopeError(f"p = {p!r}", expected="an odd integer >= 3 (a prime for a Task)",
                             where="fourier_basis")
    x = torch.arange(p, dtype=torch.float64)
    rows, labels = [torch.full((p,), 1.0 / math.sqrt(p), dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        angle = 2 * math.pi * k * x / p
        for kind, values in (("cos", torch.cos(angle)), ("sin", torch.sin(angle))):
            rows.append(values / values.norm())
            labels.append(f"{kind} {k}")
    return FourierBasis(p=p, F=torch.stack(rows), labels=tuple(labels))


def _basis_for(p: int, basis: FourierBasis | None) -> FourierBasis:
    if basis is None:
        return fourier_basis(p)
    if basis.p != p:
        raise GrokscopeError(f"a Fourier basis for p = {basis.p}", expected=f"one for p = {p}",
                             where="fourier")
    return basis


# ----- component and frequency norms ------------------------------------------------------------------
def component_norms(W: Float[Tensor, "p d"], basis: FourierBasis) -> Float[Tensor, "p"]:
    """Norm of each Fourier component of a table whose rows are indexed by x in 0..p-1: ``||(F W)_i||``.

    >>> b = fourier_basis(5)
    >>> component_norms(b.F[b.index("cos", 2)][:, None], b)[b.index("cos", 2)].item()
    1.0
    """
    return (basis.F @ W.detach().double()).norm(dim=-1)


def frequency_norms(norms: Float[Tensor, "p"], basis: FourierBasis) -> Float[Tensor, "n_freqs"]:
    """Per frequency k = 1..(p-1)/2 (ascending): sqrt(cos_k^2 + sin_k^2) of component ``norms``."""
    return torch.sqrt(norms[basis.cos_rows()] ** 2 + norms[basis.sin_rows()] ** 2)


def token_embeddings(model: HookedTransformer, task: Task, operand: str = "a") -> Float[Tensor, "p d_model"]:
    """The W_E rows of the p operand tokens: a's ids 0..p-1, or b's (p..2p-1 when ``diff_vocab``)."""
    if operand not in ("a", "b"):
        raise GrokscopeError(f"operand {operand!r}", expected="'a' or 'b'", where="token_embeddings")
    start = task.b_offset if operand == "b" else 0
    return model.W_E[start:start + task.p]


def embedding_norms(model: HookedTransformer, task: Task, *, operand: str = "a", per: str = "frequency",
                    basis: FourierBasis | None = None) -> Float[Tensor, "n"]:
    """Fourier norms of the token embeddings, per "component" (p) or per "frequency" ((p-1)/2).

    With ``diff_vocab`` the b tokens are a second table: pass ``operand="b"`` to analyse it.
    """
    basis = _basis_for(task.p, basis)
    norms = component_norms(token_embeddings(model, task, operand), basis)
    return _per(norms, per, basis, "embedding_norms")


def neuron_logit_map(model: HookedTransformer, task: Task) -> Float[Tensor, "d_mlp p"]:
    """W_L = W_out @ W_U[:, :p] of the last layer: each neuron's direct effect on the p class logits."""
    return model.blocks[-1].mlp.W_out @ model.W_U[:, :task.p]


def logit_map_norms(W_L: Float[Tensor, "d_mlp p"], basis: FourierBasis, per: str = "component"
                    ) -> Float[Tensor, "n"]:
    """Fourier norms of W_L over its output (class) axis, per "component" or per "frequency"."""
    return _per(component_norms(W_L.T, basis), per, basis, "logit_map_norms")


def _per(norms: Tensor, per: str, basis: FourierBasis, where: str) -> Tensor:
    if per == "component":
        return norms
    if per == "frequency":
        return frequency_norms(norms, basis)
    raise GrokscopeError(f"per={per!r}", expected="'component' or 'frequency'", where=where)


# ----- neurons ------------------------------------------------------------------------------------------
def neuron_activations(model: HookedTransformer, task: Task) -> Float[Tensor, "n_inputs d_mlp"]:
    """Last-layer MLP activations (hook_post) at the read-out position over the full grid."""
    with torch.no_grad():
        return final_logits(model, task.tokens(), return_post=True)[1]


def _grid(post: Tensor, p: int, where: str) -> Tensor:
    if post.shape[0] != p * p:
        raise GrokscopeError(f"{post.shape[0]} rows", where=where,
                             expected=f"the full square grid of p^2 = {p * p} rows (not defined for 'div')")
    grid = post.detach().double().reshape(p, p, -1)
    return grid - grid.mean(dim=(0, 1), keepdim=True)


def neuron_fourier_2d(post: Float[Tensor, "n_inputs d_mlp"], basis: FourierBasis
                      ) -> Float[Tensor, "p p d_mlp"]:
    """The 2D transform ``F A F^T`` of each neuron's activations A over (a, b), centred per neuron.

    Axis 0 indexes the a-component, axis 1 the b-component (labels from ``basis.labels``).
    """
    grid = _grid(post, basis.p, "neuron_fourier_2d")
    return torch.einsum("ia,abn,jb->ijn", basis.F, grid, basis.F)


@dataclass(repr=False)
class NeuronFrequencies:
    """Each neuron's frequency and the fraction of its variance that frequency explains.

    Attributes:
        freq: (d_mlp,) argmax frequency k (0 for a neuron with no variance).
        frac_explained: (d_mlp,) variance in the block {const, cos k, sin k}^2 minus const-const over
            the total variance (0 for a dead neuron).
        block_fractions: (n_freqs, d_mlp) that fraction for every k = 1..(p-1)/2.
        variance: (d_mlp,) total variance over the grid.
    """

    freq: Int[Tensor, "d_mlp"]
    frac_explained: Float[Tensor, "d_mlp"]
    block_fractions: Float[Tensor, "n_freqs d_mlp"]
    variance: Float[Tensor, "d_mlp"]

    def __repr__(self) -> str:
        return f"NeuronFrequencies({self.freq.numel()} neurons)"


def neuron_frequencies(post: Float[Tensor, "n_inputs d_mlp"], p: int) -> NeuronFrequencies:
    """Per neuron: the frequency k maximising the variance in {const, cos k, sin k}^2 (const-const out).

    The block spans the same real subspace as the complex modes (m, n) in {0, k, -k}^2, so its energy
    is read from a 2D FFT (Parseval: sum |X|^2 / p^2): independent of any basis order. [N23] section 5.
    """
    grid = _grid(post, p, "neuron_frequencies").permute(2, 0, 1)
    energy = torch.fft.fft2(grid).abs().square() / (p * p)
    variance = energy.sum(dim=(1, 2))
    ks = torch.arange(1, (p - 1) // 2 + 1)
    modes = torch.stack([torch.zeros_like(ks), ks, p - ks], dim=1)
    block = energy[:, modes[:, :, None], modes[:, None, :]].sum(dim=(2, 3)) - energy[:, :1, :1].reshape(-1, 1)
    safe = torch.where(variance > 0, variance, torch.ones_like(variance))
    fractions = (block / safe[:, None]).T * (variance > 0)
    best, arg = fractions.max(dim=0)
    freq = torch.where(variance > 0, ks[arg], torch.zeros_like(arg))
    return NeuronFrequencies(freq=freq, frac_explained=best, block_fractions=fractions, variance=variance)


def neuron_clusters(frequencies: NeuronFrequencies, threshold: float = FRACTION_EXPLAINED
                    ) -> dict[int | str, list[int]]:
    """Neuron indices grouped by frequency; neurons explained below ``threshold`` go to "unexplained"."""
    clusters: dict[int | str, list[int]] = {}
    for n, (k, frac) in enumerate(zip(frequencies.freq.tolist(), frequencies.frac_explained.tolist())):
        clusters.setdefault(k if frac >= threshold else "unexplained", []).append(n)
    return dict(sorted(clusters.items(), key=lambda item: (isinstance(item[0], str), item[0])))


# ----- directions in R^{p^2} ---------------------------------------------------------------------------
def sum_directions(p: int, k: int) -> tuple[Float[Tensor, "p_sq"], Float[Tensor, "p_sq"]]:
    """Unit vectors cos(w_k(a+b)) and sin(w_k(a+b)) over the grid (row a*p + b), w_k = 2 pi k / p.

    Equal to (F_c x F_c - F_s x F_s)/sqrt 2 and (F_s x F_c + F_c x F_s)/sqrt 2 ([N23] appendix).
    """
    if not 1 <= k <= (p - 1) // 2:
        raise GrokscopeError(f"frequency {k}", expected=f"an integer in 1..{(p - 1) // 2}",
                             where="sum_directions")
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None] + a[None, :]).reshape(-1)
    angle = 2 * math.pi * k * s / p
    cos, sin = torch.cos(angle), torch.sin(angle)
    return cos / cos.norm(), sin / sin.norm()


def key_directions(p: int, freqs: list[int]) -> Float[Tensor, "two_K p_sq"]:
    """Orthonormal rows [cos k1, sin k1, cos k2, ...] spanning the subspace P_K projects onto."""
    if not freqs:
        return torch.zeros(0, p * p, dtype=torch.float64)
    return torch.stack([d for k in freqs for d in sum_directions(p, k)])


# ----- key frequencies ---------------------------------------------------------------------------------
@dataclass
class KeyFrequencies:
    """Key frequencies and how they were chosen.

    Attributes:
        freqs: ascending frequencies k.
        rule: "A" (neuron frequencies), "B" (W_L norms), "C" (W_E norms), or "given".
        threshold: rule A: the fraction explained (0.85); rules B and C: the fraction of the largest
            frequency norm a key frequency exceeds (0.25).
        detail: rule-specific evidence (neuron counts, norms, the absolute cut).
    """

    freqs: list[int]
    rule: str
    threshold: float
    detail: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.freqs)

    def __len__(self) -> int:
        return len(self.freqs)

    def __contains__(self, k: object) -> bool:
        return k in self.freqs

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe summary ``{freqs, rule, threshold}``."""
        return {"freqs": list(self.freqs), "rule": self.rule, "threshold": self.threshold}


def key_frequencies(model: HookedTransformer, task: Task, rule: str = "A", *,
                    min_neurons: int = MIN_NEURONS, threshold: float | None = None,
                    post: Float[Tensor, "n_inputs d_mlp"] | None = None,
                    basis: FourierBasis | None = None) -> KeyFrequencies:
    """The key frequencies K of a model by one of three rules (SCIENCE.md section 2).

    - "A" ([N23] figures): each neuron's argmax frequency; K = frequencies of at least ``min_neurons``
      neurons explained >= ``threshold`` (default 0.85). ``post`` may pass precomputed activations.
    - "B": frequencies whose W_L norm over the output axis exceeds ``threshold`` (default 0.25) x max.
    - "C": frequencies whose W_E norm (a's tokens) exceeds ``threshold`` (default 0.25) x max.

    >>> from grokscope.constructions import exact_clock_model
    >>> task = Task(p=23)
    >>> key_frequencies(exact_clock_model(task, [3, 7]), task).freqs
    [3, 7]
    """
    if rule not in RULES:
        raise GrokscopeError(f"rule {rule!r}", expected=f"one of {RULES}", where="key_frequencies")
    basis = _basis_for(task.p, basis)
    with torch.no_grad():
        if rule == "A":
            cut = FRACTION_EXPLAINED if threshold is None else float(threshold)
            post = neuron_activations(model, task) if post is None else post
            nf = neuron_frequencies(post, task.p)
            explained = nf.freq[nf.frac_explained >= cut]
            counts = {int(k): int((explained == k).sum()) for k in explained.unique().tolist()}
            freqs = sorted(k for k, n in counts.items() if n >= min_neurons)
            detail = {"neuron_counts": counts, "min_neurons": min_neurons,
                      "n_explained": int(explained.numel()), "n_neurons": int(nf.freq.numel())}
            return KeyFrequencies(freqs=freqs, rule=rule, threshold=cut, detail=detail)
        cut = RELATIVE_NORM if threshold is None else float(threshold)
        if rule == "B":
            norms = logit_map_norms(neuron_logit_map(model, task), basis, per="frequency")
        else:
            norms = embedding_norms(model, task, per="frequency", basis=basis)
        top = float(norms.max())
        freqs = [k for k, n in zip(basis.freqs, norms.tolist()) if top > 0 and n > cut * top]
        detail = {"norms": dict(zip(basis.freqs, norms.tolist())), "absolute_cut": cut * top,
                  "of": "W_L = W_out @ W_U[:, :p]" if rule == "B" else "W_E rows of a's tokens"}
        return KeyFrequencies(freqs=freqs, rule=rule, threshold=cut, detail=detail)


def as_freq_list(key_freqs: "KeyFrequencies | list[int] | tuple[int, ...]", p: int) -> list[int]:
    """Validate key frequencies against p and return them as a sorted list of distinct ints."""
    raw = list(key_freqs.freqs if isinstance(key_freqs, KeyFrequencies) else key_freqs)
    try:
        freqs = [operator.index(k) for k in raw if not isinstance(k, bool)]
    except TypeError:
        freqs = []
    if len(freqs) != len(raw) or any(not 1 <= k <= (p - 1) // 2 for k in freqs):
        raise GrokscopeError(f"key frequencies {raw}", expected=f"integers in 1..{(p - 1) // 2}",
                             where="key frequencies")
    return sorted(set(int(k) for k in freqs))
