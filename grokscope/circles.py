"""Circles of a token embedding [Z23]: PCA, circularity and the frequency planes the tokens lie on.

A modular-addition network embeds token t on circles (cos w_k t, sin w_k t), w_k = 2 pi k / p, one
plane of d_model per key frequency k. Everything here reads the p operand rows of W_E (float64,
centred); the ``=`` row and, with diff_vocab, the b rows are measured separately by the caller.

- ``circularity``: the paper's measure. PCA of the rows; for each of the first 4 principal components,
  its largest fraction of energy at one frequency; the mean of those four.
- ``spectral_circularity``: the same question asked of the subspace instead of single components:
  the share of the first 4 components' variance that the 2 strongest frequency planes carry. It does
  not change when principal components of nearly equal variance rotate into each other.
- ``find_circles``: one circle per strong frequency, the plane P_k E of the rows' Fourier component at
  k, with its share of the variance, roundness, purity and index step delta = k^-1 mod p.

>>> import math, torch
>>> x = 2 * math.pi * torch.arange(23, dtype=torch.float64) / 23
>>> rows = torch.stack([3 * torch.cos(4 * x), 3 * torch.sin(4 * x), torch.cos(9 * x), torch.sin(9 * x)], 1)
>>> round(circularity(rows), 6), round(spectral_circularity(rows), 6)
(1.0, 1.0)
>>> [(c.freq, c.delta, round(c.variance, 3), c.is_circle) for c in find_circles(rows)]
[(4, 6, 0.9, True), (9, 5, 0.1, True)]
"""

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

MIN_PURITY = 0.9
"""A circle's plane must hold at least this share of the embedding's energy inside it at its own k."""
MIN_ROUNDNESS = 0.5
"""A circle's minor / major axis must reach this (a flatter ellipse is a line, not a circle)."""
PAIR_PURITY = 0.95
"""A principal-component pair isolates its circle ([Z23]'s way) only if both are this pure at k."""
MIN_SHARE_RATIO = 2.0
"""A circle's frequency must carry this many times the median frequency's share (noise spreads evenly)."""


class EmbeddingPCA(NamedTuple):
    """PCA of p embedding rows: scores (p, r), components (r, d_model), variance share (r,), mean."""

    scores: Tensor
    components: Tensor
    share: Tensor
    mean: Tensor


def embedding_pca(W_rows: Float[Tensor, "p d_model"], *, rtol: float = 1e-5) -> EmbeddingPCA:
    """Centred PCA (SVD, float64) of token embedding rows, components by decreasing variance.

    Components with no variance (below 1e-6 of the largest singular value) are dropped. Components
    whose singular values agree within ``rtol`` (of the largest) are not unique: any rotation of their
    span is an equally valid PCA. grokscope picks the rotation that makes them single-frequency where
    possible (and orders them by frequency), so exact constructions with equal-sized circles read as
    circles.
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


def _pair_weights(p: int) -> Tensor:
    """Parseval weight of each frequency k = 1..floor(p/2): 2 for a cos / sin pair, 1 for the sign N/2."""
    weights = torch.full((p // 2,), 2.0, dtype=torch.float64)
    if p % 2 == 0:
        weights[-1] = 1.0
    return weights


def frequency_energy(values: Float[Tensor, "p n"]) -> Float[Tensor, "n n_freqs"]:
    """Fraction of each column's energy at frequency k = 1..floor(N/2) (cos and sin together).

    e_k = 2 |sum_x v_x exp(2 pi i k x / N)|^2 / (N sum_x v_x^2) for mean-zero columns v, normalised
    over the N rows the transform uses: a pure cos(2 pi k x / N + phase) scores 1 at k. For even N
    the sign frequency N/2 counts once (factor 1). Independent of any Fourier basis ordering.
    """
    p = values.shape[0]
    spectrum = torch.fft.fft(values.double(), dim=0)[1 : p // 2 + 1]
    energy = (values.double() ** 2).sum(dim=0).clamp_min(1e-300)
    return (_pair_weights(p)[:, None] * spectrum.abs() ** 2 / (p * energy)).T


def frequency_shares(W_rows: Float[Tensor, "p d_model"]) -> Float[Tensor, "n_freqs"]:
    """Share of the centred rows' total energy at each frequency k = 1..(p-1)/2 (sums to 1).

    ||P_k (E - mean)||_F^2 / ||E - mean||_F^2 with P_k the projector on {cos w_k x, sin w_k x}:
    the squared radius of the token circle at k, summed over its two axes.
    """
    rows = W_rows.detach().double()
    centred = rows - rows.mean(dim=0)
    p = rows.shape[0]
    spectrum = torch.fft.fft(centred, dim=0)[1 : p // 2 + 1]
    return _pair_weights(p) * (spectrum.abs() ** 2).sum(dim=1) / (p * centred.pow(2).sum().clamp_min(1e-300))


def _fold(k: int, p: int) -> int:
    k %= p
    return min(k, p - k)


def index_step(freq: int, p: int) -> int | None:
    """delta = k^-1 mod N folded into 1..N/2: tokens 0, delta, 2 delta, ... walk the circle in order.

    None when k has no inverse mod N (even N: the circle at k then has N / gcd(k, N) points, each
    token sharing its point with others).

    >>> index_step(17, 59), index_step(3, 59), index_step(15, 59), index_step(4, 58)
    (7, 20, 4, None)
    """
    if math.gcd(freq, p) != 1:
        return None
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
    return mean_fraction(embedding_pca(W_rows), n_components)


def mean_fraction(pca: EmbeddingPCA, n_components: int = 4) -> float:
    """``circularity`` from an existing PCA."""
    _, fractions = component_frequencies(pca, n_components)
    return sum(fractions) / len(fractions) if fractions else 0.0


def spectral_circularity(W_rows: Float[Tensor, "p d_model"], n_components: int = 4,
                         pca: EmbeddingPCA | None = None) -> float:
    """Share of the first ``n_components`` principal variance carried by the n/2 strongest frequency
    planes: sum of the n/2 largest ``frequency_shares`` / sum of the n largest PCA variance shares
    (for even N the sign frequency is one dimension: the n dimensions are filled by largest share per
    dimension).

    In [0, 1], because the n/2 planes are a rank-n projection over the tokens and none keeps more
    energy than the first n principal components; 1 when those components span n/2 whole frequency
    planes (clean circles). Unlike that per-component measure it depends on the PCA only through the sum of
    its leading variances, so components of nearly equal variance that mix frequencies (trained models
    with several circles of about the same radius) do not lower it.

    >>> import math, torch
    >>> x = 2 * math.pi * torch.arange(31, dtype=torch.float64) / 31
    >>> rows = torch.stack([torch.cos(3 * x), torch.sin(3 * x), torch.randn(31, generator=torch.Generator().manual_seed(0))], 1)
    >>> 0.5 < spectral_circularity(rows) < 1.0
    True
    """
    share = (pca if pca is not None else embedding_pca(W_rows)).share
    if len(share) == 0:
        return 0.0
    top_variance = share[:n_components].sum()
    shares = frequency_shares(W_rows)
    # Fill n_components dimensions with the frequencies of largest share per dimension: a plane has
    # 2 dims, the sign frequency of an even N one (a line), so for odd N this is the n/2 top planes.
    dims = _pair_weights(W_rows.shape[0])
    budget, top_planes = float(max(n_components, 2)), 0.0
    for i in sorted(range(len(shares)), key=lambda i: -float(shares[i] / dims[i])):
        take = min(float(dims[i]), budget)
        top_planes += float(shares[i]) * take / float(dims[i])
        budget -= take
        if budget <= 0:
            break
    return float(min(max(top_planes / float(top_variance), 0.0), 1.0))


def circle_factors(W_rows: Float[Tensor, "p d_model"], freq: int
                   ) -> tuple[Float[Tensor, "p r"], Float[Tensor, "r d_model"]]:
    """(coords, basis) with ``circle_plane(W_rows, freq) = coords @ basis``: the Fourier basis rows at
    ``freq`` over the tokens (r = 2: cos and sin; r = 1 for the sign frequency N/2) and the centred
    rows' coefficients on them."""
    rows = W_rows.detach().double()
    centred = rows - rows.mean(dim=0)
    p = rows.shape[0]
    angle = 2 * math.pi * freq * torch.arange(p, dtype=torch.float64) / p
    if 2 * freq == p:  # the sign component: one direction, (-1)^x / sqrt(N)
        basis = torch.cos(angle)[None] / math.sqrt(p)
    else:
        basis = torch.stack([torch.cos(angle), torch.sin(angle)]) * math.sqrt(2 / p)
    return basis.T, basis @ centred


def circle_plane(W_rows: Float[Tensor, "p d_model"], freq: int) -> Float[Tensor, "p d_model"]:
    """P_k (E - mean): the rows' Fourier component at ``freq``, the circle the tokens trace there."""
    coords, basis = circle_factors(W_rows, freq)
    return coords @ basis


def isolated_factors(W_rows: Float[Tensor, "p d_model"], circle: "Circle", pca: EmbeddingPCA | None = None
                     ) -> tuple[Float[Tensor, "p r"], Float[Tensor, "r d_model"]]:
    """(coords, basis) with ``isolated_plane = coords @ basis`` (r <= 2): each token's coordinates in
    the circle's plane, and the plane's directions in d_model."""
    if circle.isolated_on != "components":
        return circle_factors(W_rows, circle.freq)
    pca = pca if pca is not None else embedding_pca(W_rows)
    chosen = list(circle.components)
    return pca.scores[:, chosen], pca.components[chosen]


def isolated_plane(W_rows: Float[Tensor, "p d_model"], circle: "Circle",
                   pca: EmbeddingPCA | None = None) -> Float[Tensor, "p d_model"]:
    """The centred rows' part on ``circle``, as ``circle.isolated_on`` says: its principal components'
    scores @ components, or ``circle_plane``."""
    coords, basis = isolated_factors(W_rows, circle, pca)
    return coords @ basis


def circle_coordinates(W_rows: Float[Tensor, "p d_model"], freq: int) -> Float[Tensor, "p 2"]:
    """Each token's 2-D position on the circle at ``freq``, along the ellipse's major and minor axes."""
    U, S, _ = torch.linalg.svd(circle_plane(W_rows, freq), full_matrices=False)
    return U[:, :2] * S[:2]


@dataclass(frozen=True)
class Circle:
    """The token circle of one frequency k in the operand-a embedding [Z23].

    Attributes:
        index: circle number by decreasing variance, 0-based (circle 1 of the paper is index 0).
        freq: frequency k in 1..floor(N/2) of the group (Z_p, or Z_{p-1} in discrete-log order);
            delta: index step k^-1 mod N (folded), so k = delta^-1; None when k has no inverse mod N.
            The sign frequency N/2 is a line (roundness 0), never a circle.
        variance: share of the embedding variance at k (the circle's squared radius).
        roundness: minor / major axis of the ellipse the tokens trace (1 for a circle).
        purity: share of the embedding energy inside the circle's plane of d_model that is at k
            (1 when no other frequency shares the plane).
        components: the principal components (of the first 2 x n_circles) whose strongest frequency is
            k: the paper's pair (2i, 2i + 1) when PCA separates the circles, others when circles of
            nearly equal variance interleave.
        isolated_on: how the templates isolate the circle: "components" (its two principal
            components, [Z23]'s way, when they are a pair (2i, 2i + 1) with at least 95% of their
            energy at k) or "fourier" (the plane P_k E, e.g. when circles of nearly equal variance
            interleave their components).
        is_circle: purity >= 0.9, roundness >= 0.5 and a variance share at least twice the median
            frequency's (noise spreads its variance evenly over the frequencies).
        doubles: the index of an earlier circle whose frequency this one doubles (a candidate
            accompanying circle, freq = 2k), else None.
        template_fve: clock / pizza (and, for accompanying candidates, accompanying) fractions of
            variance explained in the paper's convention, 2 rho - 1 over all p^3 logits.
        template_fve_centred: the same after removing each class's mean logit and each input's mean
            logit (offsets that no template can explain); the classifier compares these.
        phase: the relative b phase used by the pizza template (fitted for diff_vocab, else 0).
    """

    index: int
    freq: int
    delta: int | None
    variance: float
    roundness: float
    purity: float
    components: tuple[int, ...]
    isolated_on: str
    is_circle: bool
    doubles: int | None = None
    template_fve: dict | None = None
    template_fve_centred: dict | None = None
    phase: float = 0.0

    def to_dict(self) -> dict:
        """JSON-safe dict of every field, and ``is_accompanying``."""
        return {**asdict(self), "components": list(self.components), "is_accompanying": self.is_accompanying}

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
    """The ``n_circles`` frequencies with the largest share of the embedding variance, as circles [Z23].

    Each circle is the plane P_k E of the rows' Fourier component at k (``circle_plane``), so circles
    of nearly equal radius stay separate even where their principal components interleave. Zero-share
    frequencies are left out; ties in share go to the lower frequency. Model A of [Z23] gives
    delta = 7, 20, 4 (k = 17, 3, 15) and accompanying circles delta = 26, 10, 2 (k = 25, 6, 29 = 2k
    folded). Templates are filled in by ``grokscope.algorithm_signatures.signatures``.
    """
    rows = W_rows.detach().double()
    p = rows.shape[0]
    pca = pca if pca is not None else embedding_pca(rows)
    centred = rows - rows.mean(dim=0)
    shares = frequency_shares(rows)
    order = sorted(range(len(shares)), key=lambda i: (-round(float(shares[i]), 9), i))
    chosen = [i + 1 for i in order[:n_circles] if shares[i] > 1e-12]
    best, fractions = component_frequencies(pca, 2 * n_circles)
    centred_energy = centred.pow(2).sum()
    background = float(shares.median())
    circles: list[Circle] = []
    for index, freq in enumerate(chosen):
        share = float(shares[freq - 1])
        # The plane is coords @ basis with orthonormal coords: its singular values and directions are
        # those of the small basis (r x d_model).
        _, S, Vh = torch.linalg.svd(circle_factors(centred, freq)[1], full_matrices=False)
        inside = (centred @ Vh[:2].T).pow(2).sum() / centred_energy
        roundness = float(S[1] / S[0]) if len(S) > 1 and S[0] > 0 else 0.0
        purity = min(share / max(float(inside), 1e-300), 1.0)
        is_circle = (purity >= MIN_PURITY and roundness >= MIN_ROUNDNESS
                     and share >= MIN_SHARE_RATIO * background)
        doubles = next((c.index for c in circles if c.is_circle and _fold(2 * c.freq, p) == freq), None)
        components = tuple(j for j, k in enumerate(best) if k == freq)
        paper_pair = (len(components) == 2 and components[0] % 2 == 0 and components[1] == components[0] + 1
                      and min(fractions[j] for j in components) >= PAIR_PURITY)
        circles.append(Circle(index=index, freq=freq, delta=index_step(freq, p), variance=share,
                              roundness=roundness, purity=purity,
                              components=components,
                              isolated_on="components" if paper_pair else "fourier",
                              is_circle=is_circle, doubles=doubles if is_circle else None))
    return circles
