"""Clock and pizza logit templates [Z23]: how much of a circle's logits each algorithm explains.

Everything runs in group coordinates (``Task.group``): a, b, c below are u = phi(a), v = sign_b phi(b),
m = phi(c) of Z_N, so for sub the clock template is cos(w(a - b - c)) and the pizza's distance
factor |cos(w(a + b)/2)|; for mul and div they are functions of the discrete logs.

A circle of the embedding (two principal components, frequency k, w = 2 pi k / p) is isolated the
way [Z23] does it: every operand row of W_E is replaced by the mean row plus its projection on the
circle, and the model is run over the whole grid. Its logits L[a, b, c] are compared with

- clock:        cos(w(a + b - c));
- pizza:        |<s, u>| - |<s, u_perp>| with s = E_a + E_b on the unit circle and u the read-out
                direction at the half angle w c / 2, i.e. 2 |cos(w(a-b)/2)| (|cos(w x/2)| - |sin(w x/2)|),
                x = a + b - c (the released code's form; close to |cos(w(a-b)/2)| cos(w x));
- accompanying: -(cos(2w'a - w'c) + cos(2w'b - w'c)) for a circle at 2k' that patches the pizza of
                frequency k' (the antipodal case).

The fraction of variance explained follows the paper's convention: z-score both over all p^3 entries,
FVE = 1 - Var(z_L - z_T) = 2 rho - 1 (not R^2). A pure pizza scores ~75% on the clock template and a
pure clock ~79% on the pizza one, so the two are compared, never thresholded alone.

Every template factors as T = f(d) g(x) with d = a - b and x = a + b - c (mod p), so the FVE needs
no p^3 template: sum_c L g(x) per input, then a sum over each d.

>>> import torch
>>> p, k = 7, 2
>>> a, b, c = torch.meshgrid(*[torch.arange(p, dtype=torch.float64)] * 3, indexing="ij")
>>> clock = torch.cos(2 * torch.pi * k * (a + b - c) / p)
>>> round(template_fve(clock, "clock", k)[0], 6)
1.0
"""

import math
from functools import lru_cache

import torch
from jaxtyping import Float
from torch import Tensor

from grokscope import backend
from grokscope.circles import circle_factors, circle_plane
from grokscope.errors import GrokscopeError
from grokscope.grid_forward import (AffineRows, affine_grid_logits, stacked_grid_logits, supports,
                                    take, task_rows_in_square)
from grokscope.models import HookedTransformer, final_logits
from grokscope.tasks import Task

TEMPLATES = ("clock", "pizza", "accompanying")
N_PHASES = 360
"""Candidate relative phases of the b circle (a 1-degree grid) when the phase is fitted."""


def _factors(kind: str, p: int, freq: int, phases: Tensor) -> tuple[Tensor, Tensor]:
    """(f, g) with T(a, b, c) = f(d) g(x); f has one row per candidate phase of the b circle."""
    w = 2 * math.pi * freq / p
    x = torch.arange(p, dtype=torch.float64)
    if kind == "clock":
        return torch.ones(len(phases), p, dtype=torch.float64), torch.cos(w * x)
    if kind == "pizza":
        f = 2 * torch.cos((w * x[None] + phases[:, None]) / 2).abs()
        return f, torch.cos(w * x / 2).abs() - torch.sin(w * x / 2).abs()
    if kind == "accompanying":  # -(cos(2wa - wc) + cos(2wb - wc)) = -2 cos(w d) cos(w x)
        return -2 * torch.cos(w * x[None] + phases[:, None]), torch.cos(w * x)
    raise GrokscopeError(f"template {kind!r}", expected=f"one of {TEMPLATES}", where="template_fve")


@lru_cache(maxsize=8)
def _indices(p: int) -> tuple[Tensor, Tensor]:
    """(d, x): (a - b) mod p per input, flattened, and (a + b - c) mod p over the p^3 grid."""
    a = torch.arange(p)
    return ((a[:, None] - a[None]) % p).flatten(), ((a[:, None] + a[None])[:, :, None] - a[None, None]) % p


class _CircleLogits:
    """What every template's FVE needs from one circle's logits, computed once.

    ``by_x[a, b, x] = L[a, b, (a + b - x) mod p]`` turns sum_c L g(a + b - c) into one matrix product
    for all templates; the means and spreads of L and of its centred part are shared too.
    """

    def __init__(self, logits: Float[Tensor, "p p p"]):
        p = logits.shape[0]
        L = logits.double()
        self.p = p
        self.d, x = _indices(p)
        self.by_x = L.gather(2, x).reshape(p * p, p)                  # column x holds c = a + b - x
        self.sums = L.sum(-1).flatten()
        self.mean = L.mean()
        self.std = L.std(unbiased=False)
        # Mean square of L - input means - class means + mean, without forming it: the three parts
        # removed are orthogonal (two-way analysis of variance), so their energies subtract.
        input_means, class_means = self.sums / p, L.mean(dim=(0, 1))
        energy = L.pow(2).mean() - input_means.pow(2).mean() - class_means.pow(2).mean() + self.mean**2
        self.rms_c = energy.clamp_min(0).sqrt()

    def fve(self, kind: str, freq: int, fit_phase: bool = False) -> tuple[float, float, float]:
        p = self.p
        phases = torch.arange(N_PHASES, dtype=torch.float64) * (2 * math.pi / N_PHASES) if fit_phase \
            else torch.zeros(1, dtype=torch.float64)
        f, g = _factors(kind, p, freq, phases)
        per_input = self.by_x @ g                                    # sum_c L g(a+b-c)
        per_input_c = per_input - g.mean() * self.sums               # the same with g centred
        by_d = torch.zeros(p, dtype=torch.float64).index_add_(0, self.d, per_input)
        by_d_c = torch.zeros(p, dtype=torch.float64).index_add_(0, self.d, per_input_c)
        n = p**3
        std_c = self.rms_c * (f.pow(2).mean(1) * (g - g.mean()).pow(2).mean()).sqrt()
        rho_c = (f @ by_d_c / n) / std_c.clamp_min(1e-300)
        best = int(rho_c.argmax())
        f_best = f[best]
        mean_t = f_best.mean() * g.mean()
        std_t = (f_best.pow(2).mean() * g.pow(2).mean() - mean_t**2).clamp_min(0).sqrt()
        rho = (f_best @ by_d / n - self.mean * mean_t) / (self.std * std_t).clamp_min(1e-300)
        return float(2 * rho - 1), float(2 * rho_c[best] - 1), float(phases[best])


def template_fve(logits: Float[Tensor, "p p p"], kind: str, freq: int, *,
                 fit_phase: bool = False) -> tuple[float, float, float]:
    """(fve, fve_centred, phase) of ``logits[a, b, c]`` under the ``kind`` template at ``freq`` [Z23].

    ``fve`` is the paper's 2 rho - 1 over all p^3 entries. ``fve_centred`` removes first what no template
    can explain: each class's mean logit and each input's mean logit (a model whose isolated circle
    leaves large class offsets scores low on every template in the paper's convention). With
    ``fit_phase`` (separate a and b embeddings, diff_vocab) the b circle's relative phase in f(d)
    is chosen on a 1-degree grid to maximise the centred FVE; otherwise it is 0.
    """
    return _CircleLogits(logits).fve(kind, freq, fit_phase)


def circle_fve(logits: Float[Tensor, "p p p"], freq: int, base_freq: int | None = None, *,
               fit_phase: bool = False) -> tuple[dict, dict, float]:
    """Clock and pizza FVE of one isolated circle (and accompanying FVE at ``base_freq`` if given).

    Returns (paper convention, centred, the pizza template's b phase)."""
    prepared = _CircleLogits(logits)
    paper, centred = {}, {}
    paper["clock"], centred["clock"], _ = prepared.fve("clock", freq)
    paper["pizza"], centred["pizza"], phase = prepared.fve("pizza", freq, fit_phase)
    if base_freq is not None:
        paper["accompanying"], centred["accompanying"], _ = prepared.fve("accompanying", base_freq, fit_phase)
    return paper, centred, phase


def isolated_circle_logits(model: HookedTransformer, task: Task,
                           planes: list[Tensor | tuple[Tensor, Tensor]], freqs: list[int],
                           mean: Float[Tensor, "d_model"]) -> Float[Tensor, "n_circles p p p"]:
    """Group-grid logits with each circle isolated in the embedding, all circles in one batched pass.

    ``planes[i]`` (N, d_model) is the operand-a rows' projection on circle i, rows in group order
    (``fourier.group_embeddings``), or its factors (coords (N, r), basis (r, d_model)) with
    projection = coords @ basis (``circles.isolated_factors``); ``mean`` the mean a row. With
    diff_vocab the b rows (in b's group order) become their mean plus their own Fourier component at
    ``freqs[i]``; other rows (``=``, and tokens outside the group) are kept. Returns L[i, u, v, m] in
    group coordinates (``Task.group_rows``, class phi^-1(m)). The model is not modified.

    Factored planes on a model the table forward supports take ``grid_forward.affine_grid_logits``:
    the isolated rows lie in a plane, so each input's MLP input is one short product. Otherwise the
    stacked embedding tables go through the table forward, or replace W_E inside ``final_logits``.
    """
    group = task.group
    if group is None:
        raise GrokscopeError(f"op {task.op!r}", expected="an operation with a group (add, sub, mul, div)",
                             where="isolated_circle_logits")
    N, W_E = group.N, backend.weights(model)["embed.W_E"].detach()
    a_ids, b_ids = group.elements(), group.b_values() + task.b_offset
    if supports(model) and planes and all(isinstance(plane, tuple) for plane in planes):
        with torch.no_grad():
            logits = affine_grid_logits(model, *_affine_operands(task, W_E, planes, freqs, mean))
        return take(logits, a_ids, dim=-1)
    planes = [plane[0] @ plane[1] if isinstance(plane, tuple) else plane for plane in planes]
    tables = []
    for plane, freq in zip(planes, freqs):
        table = W_E.double().clone()
        table[a_ids] = mean + plane
        if task.diff_vocab:
            rows_b = table[b_ids]
            table[b_ids] = rows_b.mean(0) + circle_plane(rows_b, freq)
        tables.append(table.to(W_E.dtype))
    rows = task.group_rows(group)
    with torch.no_grad():
        if supports(model):  # per-token tables (grokscope.grid_forward): about 4x less work
            grid = stacked_grid_logits(model, task, torch.stack(tables))
            logits = grid[:, task_rows_in_square(task)[rows]].reshape(-1, grid.shape[-1])
        else:
            tokens = torch.cat([task.tokens()[rows] + i * W_E.shape[0] for i in range(len(tables))])
            logits = final_logits(model, tokens, weights={"embed.W_E": torch.cat(tables)})
    return logits[:, a_ids].reshape(len(tables), N, N, N)


def _affine_operands(task: Task, W_E: Tensor, planes: list[tuple[Tensor, Tensor]], freqs: list[int],
                     mean: Tensor) -> tuple[AffineRows, AffineRows, Tensor | None]:
    """The isolated embeddings of ``isolated_circle_logits`` in affine form, tokens in group order:
    operand a at coordinate u, operand b at coordinate v, and the ``=`` row (None without one)."""
    group = task.group
    n, r = len(planes), max(coords.shape[1] for coords, _ in planes)
    origin = mean.double().expand(n, -1)

    def stacked(factors):  # pad to r coordinates: a sign-frequency plane has one
        coords = torch.zeros(n, factors[0][0].shape[0], r, dtype=torch.float64)
        basis = torch.zeros(n, r, W_E.shape[1], dtype=torch.float64)
        for i, (c, b) in enumerate(factors):
            coords[i, :, :c.shape[1]], basis[i, :b.shape[0]] = c, b
        return coords, basis

    coords_a, basis_a = stacked(planes)
    rows_a = AffineRows(origin, coords_a, basis_a)
    if task.diff_vocab:
        rows_b = W_E[group.b_values() + task.b_offset].double()
        coords_b, basis_b = stacked([circle_factors(rows_b, freq) for freq in freqs])
        rows_b = AffineRows(rows_b.mean(0).expand(n, -1), coords_b, basis_b)
    else:  # b's token at coordinate v is a's token at coordinate phi(b): the same row of the table
        position = group.coordinates()[group.b_values()]
        rows_b = AffineRows(origin, coords_a[:, position], basis_a)
    eq_row = W_E[task.eq_id].double().expand(n, -1) if task.eq_token else None
    return rows_a, rows_b, eq_row
