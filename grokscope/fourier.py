"""The real Fourier basis over Z_N and the Fourier views of a modular-arithmetic transformer.

Conventions (SCIENCE.md section 2): ``F`` is the real orthonormal N x N matrix whose row 0 is the
constant 1/sqrt(N) and whose rows 2k-1 / 2k are cos(w_k x) / sin(w_k x), normalised, w_k = 2 pi k / N.
That order is named in ``FourierBasis.order``; callers find rows with ``basis.index("cos", k)`` and
never by position, since other code (the TransformerLens demo) puts sin before cos. For even N
(the multiplicative group Z_p^* has N = p - 1) the last row is the real "sign" component (-1)^x at
k = N/2, which has no sin partner (SCIENCE.md section 7).

The task decides the group and the basis (``Task.group``): Z_p for add and sub, Z_{p-1} in
discrete-log coordinates for mul and div (tokens and classes relabelled by ind_g, the zero operand
and class 0 left out). Every function below that takes a task works in that basis, on the rows,
tokens and classes in group order, and ``task_basis(task).name`` says which basis it was. Operations
without a known mechanism (the polynomials) get a GrokscopeError saying so.

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
>>> fourier_basis(6).labels
('const', 'cos 1', 'sin 1', 'cos 2', 'sin 2', 'sign')
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
from grokscope.tasks import NO_MECHANISM, Task

FRACTION_EXPLAINED = 0.85
"""A neuron is "explained" when this fraction of its variance lies in one frequency block ([N23])."""

MIN_NEURONS = 5
"""Rule A's guard: a frequency is key only when at least this many explained neurons have it."""

RELATIVE_NORM = 0.25
"""Rules B and C: a frequency is key when its norm exceeds this fraction of the largest (max / 4)."""

RULES = ("A", "B", "C")


@dataclass(frozen=True, repr=False)
class FourierBasis:
    """The real orthonormal Fourier basis of Z_N, with named rows.

    Attributes:
        p: the modulus N (the group order; p itself for add and sub, p - 1 for mul and div).
        F: float64 (N, N), orthonormal rows; ``F @ x`` transforms a function of x in 0..N-1.
        labels: one label per row, e.g. "const", "cos 3", "sin 3", and "sign" for even N.
        order: the row order, "const,cos k,sin k" (then "sign" for even N); use ``index``, not positions.
        name: which basis this is, e.g. "Z_59" or "Z_58, discrete log base 2" (``Group.name``).
    """

    p: int
    F: Float[Tensor, "p p"]
    labels: tuple[str, ...]
    order: str = "const,cos k,sin k"
    name: str = ""

    def __repr__(self) -> str:
        return f"FourierBasis({self.name or f'Z_{self.p}'}, order={self.order!r})"

    @property
    def N(self) -> int:
        """The group order (the same as ``p``)."""
        return self.p

    @property
    def freqs(self) -> list[int]:
        """The frequencies 1..floor(N/2); for even N the last, N/2, is the sign component."""
        return list(range(1, self.p // 2 + 1))

    @property
    def sign_freq(self) -> int | None:
        """N/2 for even N (the (-1)^x component, no sin partner), else None."""
        return self.p // 2 if self.p % 2 == 0 else None

    def index(self, kind: str, k: int = 0) -> int:
        """The row of component (kind, k): kind in {"const", "cos", "sin", "sign"} (k ignored for
        const and sign; ("cos", N/2) is the sign row too)."""
        if kind == "const" or kind == "sign" or (kind == "cos" and k == self.sign_freq):
            label = "const" if kind == "const" else "sign"
        else:
            label = f"{kind} {k}"
        if label not in self.labels:
            raise GrokscopeError(f"component {label!r}", where="FourierBasis.index",
                                 expected=f"'const' or cos/sin k with k in 1..{(self.p - 1) // 2}"
                                 + (" or 'sign'" if self.sign_freq else ""))
        return self.labels.index(label)

    def frequency_rows(self, k: int) -> list[int]:
        """The rows of frequency k: [cos k, sin k], or [sign] for k = N/2."""
        if k == self.sign_freq:
            return [self.index("sign")]
        return [self.index("cos", k), self.index("sin", k)]

    def cos_rows(self, freqs: list[int] | None = None) -> Int[Tensor, "n_freqs"]:
        """Rows of cos(w_k x) for ``freqs`` (default: every cos/sin pair's frequency, ascending)."""
        return torch.tensor([self.index("cos", k) for k in (self.pair_freqs if freqs is None else freqs)])

    def sin_rows(self, freqs: list[int] | None = None) -> Int[Tensor, "n_freqs"]:
        """Rows of sin(w_k x) for ``freqs`` (default: every cos/sin pair's frequency, ascending)."""
        return torch.tensor([self.index("sin", k) for k in (self.pair_freqs if freqs is None else freqs)])

    @property
    def pair_freqs(self) -> list[int]:
        """The frequencies with a cos / sin pair: 1..(N-1)/2 (the sign frequency left out)."""
        return list(range(1, (self.p - 1) // 2 + 1))

    def nonconstant_rows(self) -> Int[Tensor, "p_minus_1"]:
        """Every row but the constant one (the N - 1 cos / sin / sign components), in basis order."""
        const = self.index("const")
        return torch.tensor([i for i in range(self.p) if i != const])


def fourier_basis(p: int, name: str = "") -> FourierBasis:
    """The real orthonormal Fourier basis of Z_N (N = ``p``) in the [N23] order (const, cos 1, sin 1, ...).

    Row 0 = 1/sqrt(N); rows 2k-1, 2k = cos(w_k x), sin(w_k x) normalised (norm sqrt(N/2)),
    w_k = 2 pi k / N, k = 1..(N-1)/2; for even N a last row (-1)^x / sqrt(N), the sign component
    (SCIENCE.md section 7). Built in float64 (orthonormal to ~1e-15).

    >>> b = fourier_basis(7)
    >>> torch.allclose(b.F @ b.F.T, torch.eye(7, dtype=torch.float64))
    True
    >>> b = fourier_basis(22)
    >>> torch.allclose(b.F @ b.F.T, torch.eye(22, dtype=torch.float64)), b.F[b.index("sign"), :3].tolist()[1] < 0
    (True, True)
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise GrokscopeError(f"N = {p!r}", expected="an integer >= 2 (a prime p, or p - 1 for the discrete log)",
                             where="fourier_basis")
    x = torch.arange(p, dtype=torch.float64)
    rows, labels = [torch.full((p,), 1.0 / math.sqrt(p), dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        angle = 2 * math.pi * k * x / p
        for kind, values in (("cos", torch.cos(angle)), ("sin", torch.sin(angle))):
            rows.append(values / values.norm())
            labels.append(f"{kind} {k}")
    if p % 2 == 0:
        rows.append((1.0 - 2.0 * (x % 2)) / math.sqrt(p))
        labels.append("sign")
    order = "const,cos k,sin k" + (",sign" if p % 2 == 0 else "")
    return FourierBasis(p=p, F=torch.stack(rows), labels=tuple(labels), order=order, name=name or f"Z_{p}")


def require_group(task: Task, where: str):
    """The task's ``Group``; a GrokscopeError naming the operation when it has no known mechanism."""
    group = task.group
    if group is None:
        raise GrokscopeError(NO_MECHANISM.format(op=task.op), expected="op add, sub, mul or div", where=where)
    return group


def task_basis(task: Task) -> FourierBasis:
    """The Fourier basis of the task's group: Z_p (add, sub) or Z_{p-1} in discrete-log coordinates.

    >>> task_basis(Task(p=59, op="mul"))
    FourierBasis(Z_58, discrete log base 2, order='const,cos k,sin k,sign')
    """
    group = require_group(task, "task_basis")
    return fourier_basis(group.N, name=group.name)


def _basis_for(task: Task, basis: FourierBasis | None) -> FourierBasis:
    if basis is None:
        return task_basis(task)
    group = require_group(task, "fourier")
    if basis.p != group.N:
        raise GrokscopeError(f"a Fourier basis of Z_{basis.p}", expected=f"one of {group.name}",
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
    """Per frequency k = 1..floor(N/2) (ascending): sqrt(cos_k^2 + sin_k^2) of component ``norms``;
    for the sign frequency N/2 the sign component's norm alone."""
    return torch.stack([norms[basis.frequency_rows(k)].square().sum().sqrt() for k in basis.freqs])


def token_embeddings(model: HookedTransformer, task: Task, operand: str = "a") -> Float[Tensor, "p d_model"]:
    """The W_E rows of the p operand tokens: a's ids 0..p-1, or b's (p..2p-1 when ``diff_vocab``)."""
    if operand not in ("a", "b"):
        raise GrokscopeError(f"operand {operand!r}", expected="'a' or 'b'", where="token_embeddings")
    start = task.b_offset if operand == "b" else 0
    return model.W_E[start:start + task.p]


def group_embeddings(model: HookedTransformer, task: Task, operand: str = "a") -> Float[Tensor, "N d_model"]:
    """The W_E rows of the operand tokens in group order: row x is the token at coordinate x.

    Operand a: phi^-1(x) (x itself for add and sub, g^x mod p for mul and div); operand b: the token
    of b = phi^-1(sign_b x), so for sub row x is token -x. Tokens outside the group (0 under the
    discrete log) are left out.

    >>> from grokscope.constructions import random_model
    >>> task = Task(p=5, op="mul")
    >>> model = random_model(task, d_model=8, d_mlp=8, n_heads=1, d_head=8)
    >>> torch.equal(group_embeddings(model, task)[2], model.W_E[4])   # 2^2 = 4 mod 5
    True
    """
    group = require_group(task, "group_embeddings")
    values = group.elements() if operand == "a" else group.b_values()
    return token_embeddings(model, task, operand)[values]


def embedding_norms(model: HookedTransformer, task: Task, *, operand: str = "a", per: str = "frequency",
                    basis: FourierBasis | None = None) -> Float[Tensor, "n"]:
    """Fourier norms of the token embeddings in the task's basis, per "component" (N) or per
    "frequency" (floor(N/2), the sign frequency last for even N).

    With ``diff_vocab`` the b tokens are a second table: pass ``operand="b"`` to analyse it.
    """
    basis = _basis_for(task, basis)
    norms = component_norms(group_embeddings(model, task, operand), basis)
    return _per(norms, per, basis, "embedding_norms")


def neuron_logit_map(model: HookedTransformer, task: Task) -> Float[Tensor, "d_mlp p"]:
    """W_L = W_out @ W_U[:, :p] of the last layer: each neuron's direct effect on the p class logits."""
    return model.blocks[-1].mlp.W_out @ model.W_U[:, :task.p]


def group_logit_map(model: HookedTransformer, task: Task) -> Float[Tensor, "d_mlp N"]:
    """W_L with its class columns in group order (column m = class phi^-1(m); class 0 left out under
    the discrete log)."""
    return neuron_logit_map(model, task)[:, require_group(task, "group_logit_map").elements()]


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


def group_activations(post: Float[Tensor, "n_inputs d_mlp"], task: Task) -> Float[Tensor, "N_sq d_mlp"]:
    """Activations over the task's grid reordered into group coordinates (row u*N + v, ``Task.group_rows``);
    rows outside the group (a zero operand under the discrete log) are left out."""
    return post[task.group_rows(require_group(task, "group_activations"))]


def _grid(post: Tensor, p: int, where: str) -> Tensor:
    if post.shape[0] != p * p:
        raise GrokscopeError(f"{post.shape[0]} rows", where=where,
                             expected=f"the square group grid of N^2 = {p * p} rows (``group_activations``)")
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
        freq: (d_mlp,) argmax frequency k (0 for a neuron with no variance; N/2 is the sign frequency).
        frac_explained: (d_mlp,) variance in the block {const, cos k, sin k}^2 minus const-const over
            the total variance (0 for a dead neuron).
        block_fractions: (n_freqs, d_mlp) that fraction for every k = 1..floor(N/2).
        variance: (d_mlp,) total variance over the grid.
    """

    freq: Int[Tensor, "d_mlp"]
    frac_explained: Float[Tensor, "d_mlp"]
    block_fractions: Float[Tensor, "n_freqs d_mlp"]
    variance: Float[Tensor, "d_mlp"]

    def __repr__(self) -> str:
        return f"NeuronFrequencies({self.freq.numel()} neurons)"


def neuron_frequencies(post: Float[Tensor, "N_sq d_mlp"], p: int) -> NeuronFrequencies:
    """Per neuron: the frequency k maximising the variance in {const, cos k, sin k}^2 (const-const out).

    ``post`` holds the activations over the N x N group grid (row u*N + v; ``group_activations``),
    ``p`` is N. The block spans the same real subspace as the complex modes (m, n) in {0, k, -k}^2, so
    its energy is read from a 2D FFT (Parseval: sum |X|^2 / N^2): independent of any basis order.
    For even N the sign frequency k = N/2 has modes {0, N/2}^2. [N23] section 5.
    """
    grid = _grid(post, p, "neuron_frequencies").permute(2, 0, 1)
    energy = torch.fft.fft2(grid).abs().square() / (p * p)
    variance = energy.sum(dim=(1, 2))
    ks = torch.arange(1, p // 2 + 1)
    member = torch.zeros(len(ks), p, dtype=torch.float64)   # member[f, m] = 1 when mode m is in {0, k, -k}
    member[:, 0] = 1.0
    member[torch.arange(len(ks)), ks] = 1.0
    member[torch.arange(len(ks)), (p - ks) % p] = 1.0
    block = torch.einsum("fm,xmn,fn->xf", member, energy, member) - energy[:, :1, :1].reshape(-1, 1)
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


# ----- directions in R^{N^2} ---------------------------------------------------------------------------
def sum_directions(p: int, k: int) -> tuple[Float[Tensor, "p_sq"], ...]:
    """Unit vectors cos(w_k(u+v)) and sin(w_k(u+v)) over the N x N grid (row u*N + v), w_k = 2 pi k / N.

    Equal to (F_c x F_c - F_s x F_s)/sqrt 2 and (F_s x F_c + F_c x F_s)/sqrt 2 ([N23] appendix). In group
    coordinates (``Task.group_rows``) u + v is a + b for add, a - b for sub and ind a +- ind b for mul and
    div. For the sign frequency k = N/2 (even N) sin vanishes: one direction (-1)^(u+v).

    >>> [d.shape[0] for d in sum_directions(6, 3)], [d.shape[0] for d in sum_directions(6, 2)]
    ([36], [36, 36])
    """
    if not 1 <= k <= p // 2:
        raise GrokscopeError(f"frequency {k}", expected=f"an integer in 1..{p // 2}", where="sum_directions")
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None] + a[None, :]).reshape(-1)
    angle = 2 * math.pi * k * s / p
    cos, sin = torch.cos(angle), torch.sin(angle)
    if 2 * k == p:
        return (cos / cos.norm(),)
    return cos / cos.norm(), sin / sin.norm()


def key_directions(p: int, freqs: list[int]) -> Float[Tensor, "two_K p_sq"]:
    """Orthonormal rows [cos k1, sin k1, cos k2, ...] spanning the subspace P_K projects onto
    (one row only for the sign frequency N/2)."""
    if not freqs:
        return torch.zeros(0, p * p, dtype=torch.float64)
    return torch.stack([d for k in freqs for d in sum_directions(p, k)])


# ----- key frequencies ---------------------------------------------------------------------------------
@dataclass
class KeyFrequencies:
    """Key frequencies and how they were chosen.

    Attributes:
        freqs: ascending frequencies k (for even N, k = N/2 is the sign component).
        rule: "A" (neuron frequencies), "B" (W_L norms), "C" (W_E norms), or "given".
        threshold: rule A: the fraction explained (0.85); rules B and C: the fraction of the largest
            frequency norm a key frequency exceeds (0.25).
        detail: rule-specific evidence (neuron counts, norms, the absolute cut).
        basis: the basis the frequencies are of, e.g. "Z_59" or "Z_58, discrete log base 2".
    """

    freqs: list[int]
    rule: str
    threshold: float
    detail: dict[str, Any] = field(default_factory=dict)
    basis: str = ""

    def __iter__(self):
        return iter(self.freqs)

    def __len__(self) -> int:
        return len(self.freqs)

    def __contains__(self, k: object) -> bool:
        return k in self.freqs

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe summary ``{freqs, rule, threshold, basis}``."""
        return {"freqs": list(self.freqs), "rule": self.rule, "threshold": self.threshold, "basis": self.basis}


def key_frequencies(model: HookedTransformer, task: Task, rule: str = "A", *,
                    min_neurons: int = MIN_NEURONS, threshold: float | None = None,
                    post: Float[Tensor, "n_inputs d_mlp"] | None = None,
                    basis: FourierBasis | None = None) -> KeyFrequencies:
    """The key frequencies K of a model by one of three rules (SCIENCE.md section 2), in the task's
    basis (``task_basis``; its name is in ``KeyFrequencies.basis``).

    - "A" ([N23] figures): each neuron's argmax frequency; K = frequencies of at least ``min_neurons``
      neurons explained >= ``threshold`` (default 0.85). ``post`` may pass precomputed activations.
    - "B": frequencies whose W_L norm over the output axis exceeds ``threshold`` (default 0.25) x max.
    - "C": frequencies whose W_E norm (a's tokens) exceeds ``threshold`` (default 0.25) x max.

    >>> from grokscope.constructions import exact_clock_model
    >>> task = Task(p=23)
    >>> key_frequencies(exact_clock_model(task, [3, 7]), task).freqs
    [3, 7]
    >>> mul = Task(p=23, op="mul")
    >>> K = key_frequencies(exact_clock_model(mul, [2, 11]), mul)
    >>> K.freqs, K.basis
    ([2, 11], 'Z_22, discrete log base 5')
    """
    if rule not in RULES:
        raise GrokscopeError(f"rule {rule!r}", expected=f"one of {RULES}", where="key_frequencies")
    basis = _basis_for(task, basis)
    with torch.no_grad():
        if rule == "A":
            cut = FRACTION_EXPLAINED if threshold is None else float(threshold)
            post = neuron_activations(model, task) if post is None else post
            nf = neuron_frequencies(group_activations(post, task), basis.p)
            explained = nf.freq[nf.frac_explained >= cut]
            counts = {int(k): int((explained == k).sum()) for k in explained.unique().tolist()}
            freqs = sorted(k for k, n in counts.items() if n >= min_neurons)
            detail = {"neuron_counts": counts, "min_neurons": min_neurons,
                      "n_explained": int(explained.numel()), "n_neurons": int(nf.freq.numel())}
            return KeyFrequencies(freqs=freqs, rule=rule, threshold=cut, detail=detail, basis=basis.name)
        cut = RELATIVE_NORM if threshold is None else float(threshold)
        if rule == "B":
            norms = logit_map_norms(group_logit_map(model, task), basis, per="frequency")
        else:
            norms = embedding_norms(model, task, per="frequency", basis=basis)
        top = float(norms.max())
        freqs = [k for k, n in zip(basis.freqs, norms.tolist()) if top > 0 and n > cut * top]
        detail = {"norms": dict(zip(basis.freqs, norms.tolist())), "absolute_cut": cut * top,
                  "of": "W_L = W_out @ W_U[:, :p]" if rule == "B" else "W_E rows of a's tokens"}
        return KeyFrequencies(freqs=freqs, rule=rule, threshold=cut, detail=detail, basis=basis.name)


def as_freq_list(key_freqs: "KeyFrequencies | list[int] | tuple[int, ...]", p: int) -> list[int]:
    """Validate key frequencies against the group order N (``p``) and return them as a sorted list of
    distinct ints in 1..floor(N/2)."""
    raw = list(key_freqs.freqs if isinstance(key_freqs, KeyFrequencies) else key_freqs)
    try:
        freqs = [operator.index(k) for k in raw if not isinstance(k, bool)]
    except TypeError:
        freqs = []
    if len(freqs) != len(raw) or any(not 1 <= k <= p // 2 for k in freqs):
        raise GrokscopeError(f"key frequencies {raw}", expected=f"integers in 1..{p // 2}",
                             where="key frequencies")
    return sorted(set(int(k) for k in freqs))
