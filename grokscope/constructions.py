"""Networks with analytically set weights: an exact clock, an exact pizza, and a seeded random model.

They are HookedTransformers of the usual grokscope architecture (``nanda_config`` / ``pizza_config`` +
``build_model``), for any odd prime p and both token layouts ([a, b, =] and [a, b], diff_vocab too), so
they serve as ground truth for every measure: the clock's logits are exactly C * sum_k cos(w_k(a+b-c)).

Clock ([N23] algorithm, [Z23] "clock"), residual stream of width 8 |K| + n_ctx:
  per frequency k: a token circle E_t = (cos w t, sin w t), an "a" copy, a "b" copy and an output
  circle (2 dims each), then one-hot position dims. Head 0 attends only to position 0 and head 1 only
  to position 1 (queries and keys read position dims only; a score gap ``gap`` makes the softmax
  one-hot to float precision); their W_V / W_O copy the token circle into the a / b copies.
  The MLP has p^2 neurons per frequency, indexed (i, j), phases phi_i = 2 pi i / p, psi_j = 2 pi j / p:
  pre = cos(w a - phi_i) + cos(w b - psi_j) + beta, and W_out @ W_U gives the neuron the logit
  contribution lam * cos(phi_i + psi_j - w c). Summed over the group grid (u = w a - phi_i,
  v = w b - psi_j run over all of Z_p) the logit is exactly lam * C * cos(w(a+b-c)) with
  C = sum_{u,v} ReLU(cos u + cos v + beta) cos u cos v > 0. Measured fractions (p = 23..113):

      beta   fraction explained   C / p^2
      0.0    0.962                0.135
      0.5    0.967                0.107
      1.0    0.981                0.059

  so the default beta = 0 keeps every neuron explained (>= 0.85) with the largest C.

Pizza ([Z23]), attention rate alpha = 0 (constant attention sums the values of all positions), width
6 |K|: one head copies the token circle into a "sum" block E_a + E_b; ``n_phases`` neurons per
frequency at phases phi_j = 2 pi j / n_phases with pre = cos(w a - phi_j) + cos(w b - phi_j) =
2 cos(w(a-b)/2) cos(w(a+b)/2 - phi_j) and logit contribution cos(2 phi_j - w c). With n_phases a
multiple of p the sum is exactly s |cos(w(a-b)/2)| cos(w(a+b-c)), s > 0 (the phase grid's aliasing
terms are equal for both half-grid offsets of w(a+b)/2), so the correct class wins at every input:
|cos(w(a-b)/2)| never vanishes for odd p.

The token circle is never read by W_in or W_U: the embeddings reach the logits only through attention.
With tokens [a, b] the last token's embedding also enters the residual stream that W_in and W_U read
(gradients flow back along every dim they read); so W_O and W_out write ``gain`` x their outputs and
W_in and W_U read them back / ``gain``, making those direct gradient paths 1/gain of the attention
path. The pizza's gradients with respect to the embedding outputs of a and b are then parallel to
~1e-6 ([Z23]'s gradient symmetricity ~ 1).

>>> from grokscope.tasks import Task
>>> from grokscope.models import final_logits
>>> task = Task(p=23)
>>> model = exact_clock_model(task, [2, 5])
>>> (final_logits(model, task.tokens()).argmax(-1) == task.labels()).all().item()
True
"""

import math
from types import SimpleNamespace

import torch
from jaxtyping import Float
from torch import Tensor

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.models import HookedTransformer, build_model, nanda_config, pizza_config
from grokscope.tasks import Task

GAIN = 1000.0
"""W_O and W_out multiply what they write by it, W_in and W_U divide it back out (same function)."""

def _check(task: Task, freqs: list[int], where: str) -> list[int]:
    freqs = [int(k) for k in freqs]
    if not freqs or len(set(freqs)) != len(freqs) or any(not 1 <= k <= (task.p - 1) // 2 for k in freqs):
        raise GrokscopeError(f"frequencies {freqs}", where=where,
                             expected=f"one or more distinct integers in 1..{(task.p - 1) // 2}")
    if task.op != "add":
        raise GrokscopeError(f"op {task.op!r}", expected="'add' (the constructions implement a + b)",
                             where=where)
    return freqs


def _angles(p: int, k: int) -> Float[Tensor, "p"]:
    return 2 * math.pi * k * torch.arange(p, dtype=torch.float64) / p


def _set_embeddings(model: HookedTransformer, task: Task, circle_dims: list[tuple[int, int, int]]) -> None:
    """Write the token circle (cos w t, sin w t) into the given dims for a's and b's token ids."""
    W_E = backend.weights(model)["embed.W_E"]
    for k, cos_dim, sin_dim in circle_dims:
        angle = _angles(task.p, k).float()
        for start in {0, task.b_offset}:
            W_E[start:start + task.p, cos_dim] = torch.cos(angle)
            W_E[start:start + task.p, sin_dim] = torch.sin(angle)


def _min_gap(p: int, freqs: list[int]) -> float:
    """min over e != 0 of sum_k (1 - cos(w_k e)): the clock's smallest correct-vs-wrong logit gap / C."""
    e = torch.arange(1, p, dtype=torch.float64)
    return float(sum(1 - torch.cos(2 * math.pi * k * e / p) for k in freqs).min())


def clock_constant(p: int, beta: float = 0.0) -> float:
    """C = sum over the Z_p^2 grid of ReLU(cos u + cos v + beta) cos u cos v (the clock's logit scale)."""
    u = _angles(p, 1)
    g = torch.relu(torch.cos(u)[:, None] + torch.cos(u)[None, :] + beta)
    return float((g * torch.cos(u)[:, None] * torch.cos(u)[None, :]).sum())


def exact_clock_model(task: Task, freqs: list[int], *, beta: float = 0.0, margin: float = 16.0,
                      gap: float = 40.0, gain: float = GAIN,
                      embedding_map: Float[Tensor, "n_circle_dims n_circle_dims"] | None = None
                      ) -> HookedTransformer:
    """A one-layer clock: logits exactly lam * C * sum_k cos(w_k(a+b-c)) over the full grid.

    Args:
        task: an "add" task (any odd prime p, with or without the ``=`` token, diff_vocab too).
        freqs: the key frequencies, e.g. [3, 7].
        beta: MLP bias; every neuron is explained >= 0.85 by its frequency for beta in [0, 1.5].
        margin: the smallest correct-minus-wrong logit gap over the grid (loss ~ 2 exp(-margin)).
        gap: attention score gap between the attended position and the others.
        gain: W_O and W_out write gain x, W_in and W_U read back / gain (see the module docstring).
        embedding_map: an invertible (2 |K|, 2 |K|) matrix A over the token-circle dims (cos, sin of
            each frequency in the order of ``freqs``): W_E <- W_E A and W_V <- A^-1 W_V there, so the
            logits are unchanged while the embedded circles become ellipses of unequal size in
            non-orthogonal planes, as in trained models.

    d_mlp = |K| p^2; n_heads = 2, d_head = 2 |K|; attention rate 1.

    >>> from grokscope.models import final_logits
    >>> task = Task(p=23)
    >>> plain = final_logits(exact_clock_model(task, [3, 7]), task.tokens())
    >>> skew = torch.eye(4, dtype=torch.float64) + 0.1 * torch.ones(4, 4, dtype=torch.float64)
    >>> mapped = final_logits(exact_clock_model(task, [3, 7], embedding_map=skew), task.tokens())
    >>> bool((mapped - plain).abs().max() < 1e-4 * plain.abs().max())
    True
    """
    freqs = _check(task, freqs, "exact_clock_model")
    p, nk = task.p, len(freqs)
    const = clock_constant(p, beta)
    if const <= 0:
        raise GrokscopeError(f"beta = {beta} (C = {const:.3g})", expected="a beta with C > 0, e.g. 0..1.5",
                             where="exact_clock_model")
    lam = margin / (const * _min_gap(p, freqs))
    d_pos = 8 * nk
    config = nanda_config if task.eq_token else pizza_config
    cfg = config(task, d_model=d_pos + task.n_ctx, n_heads=2, d_head=2 * nk, d_mlp=nk * p * p)
    model = _blank(cfg, alpha=1.0)
    phase = 2 * math.pi * torch.arange(p, dtype=torch.float64) / p
    phi, psi = phase.repeat_interleave(p), phase.repeat(p)  # neuron (i, j) -> index i*p + j
    with torch.no_grad():
        _set_embeddings(model, task, [(k, 8 * f, 8 * f + 1) for f, k in enumerate(freqs)])
        W = backend.weights(model)
        W["pos_embed.W_pos"][:, d_pos:] = torch.eye(task.n_ctx)
        attn, mlp = _layer(W, 0)
        score = gap * backend.attention_scale(cfg)
        for head, source in ((0, 0), (1, 1)):
            attn.W_Q[head, d_pos:, 0] = 1.0
            attn.W_K[head, d_pos + source, 0] = score
        for f, k in enumerate(freqs):
            tok, a_copy, b_copy, out = 8 * f, 8 * f + 2, 8 * f + 4, 8 * f + 6
            for head, copy in ((0, a_copy), (1, b_copy)):
                for i in range(2):
                    attn.W_V[head, tok + i, 2 * f + i] = 1.0
                    attn.W_O[head, 2 * f + i, copy + i] = gain
            neurons = slice(f * p * p, (f + 1) * p * p)
            mlp.W_in[a_copy, neurons] = (torch.cos(phi) / gain).float()
            mlp.W_in[a_copy + 1, neurons] = (torch.sin(phi) / gain).float()
            mlp.W_in[b_copy, neurons] = (torch.cos(psi) / gain).float()
            mlp.W_in[b_copy + 1, neurons] = (torch.sin(psi) / gain).float()
            mlp.b_in[neurons] = beta
            mlp.W_out[neurons, out] = (gain * torch.cos(phi + psi)).float()
            mlp.W_out[neurons, out + 1] = (gain * torch.sin(phi + psi)).float()
            angle = _angles(p, k)
            W["unembed.W_U"][out, :p] = (lam / gain * torch.cos(angle)).float()
            W["unembed.W_U"][out + 1, :p] = (lam / gain * torch.sin(angle)).float()
        if embedding_map is not None:
            _map_token_circles(model, [d for f in range(nk) for d in (8 * f, 8 * f + 1)], embedding_map)
    return model


def _map_token_circles(model: HookedTransformer, dims: list[int], matrix: Tensor) -> None:
    """W_E <- W_E A and W_V <- A^-1 W_V over ``dims`` (only W_V reads them): the same function."""
    A = torch.as_tensor(matrix, dtype=torch.float64)
    if A.shape != (len(dims), len(dims)) or torch.linalg.matrix_rank(A) < len(dims):
        raise GrokscopeError(f"embedding_map of shape {tuple(A.shape)} (rank "
                             f"{int(torch.linalg.matrix_rank(A)) if A.ndim == 2 else 0})",
                             expected=f"an invertible {len(dims)} x {len(dims)} matrix (2 per frequency)",
                             where="exact_clock_model")
    W = backend.weights(model)
    W_V, W_E = W["blocks.0.attn.W_V"], W["embed.W_E"]
    W_E[:, dims] = (W_E[:, dims].double() @ A).float()
    for head in range(W_V.shape[0]):
        W_V[head, dims] = torch.linalg.solve(A, W_V[head, dims].double()).float()


def _pizza_readout(p: int, k: int, phases: Tensor) -> Float[Tensor, "p_sq 2"]:
    """Per grid row, the (cos, sin) output-circle coordinates the pizza neurons of frequency k write."""
    angle = _angles(p, k)
    s_cos = (torch.cos(angle)[:, None] + torch.cos(angle)[None, :]).reshape(-1)
    s_sin = (torch.sin(angle)[:, None] + torch.sin(angle)[None, :]).reshape(-1)
    pre = torch.relu(s_cos[:, None] * torch.cos(phases) + s_sin[:, None] * torch.sin(phases))
    return torch.stack([pre @ torch.cos(2 * phases), pre @ torch.sin(2 * phases)], dim=1)


def exact_pizza_model(task: Task, freqs: list[int], *, n_phases: int | None = None,
                      margin: float = 16.0, gain: float = GAIN) -> HookedTransformer:
    """A one-layer pizza with constant attention (alpha = 0): logit ~ sum_k A_k(a-b) cos(w_k(a+b-c)).

    Args:
        task: an "add" task (any odd prime p, with or without the ``=`` token, diff_vocab too).
        freqs: the circles' frequencies, e.g. [2, 5, 9].
        n_phases: neurons per frequency (default 2p; a multiple of p makes A_k depend on a - b only).
        margin: the smallest correct-minus-wrong logit gap over the full grid.
        gain: W_O and W_out write gain x, W_in and W_U read back / gain (see the module docstring).

    d_mlp = |K| n_phases; one head, d_head = 2 |K|; attention rate 0; accuracy 1.0 over the grid.
    """
    freqs = _check(task, freqs, "exact_pizza_model")
    p, nk = task.p, len(freqs)
    n_phases = 2 * p if n_phases is None else int(n_phases)
    if n_phases < 3:
        raise GrokscopeError(f"n_phases = {n_phases}", expected="at least 3", where="exact_pizza_model")
    phases = 2 * math.pi * torch.arange(n_phases, dtype=torch.float64) / n_phases
    labels = task.labels()
    logits = torch.zeros(p * p, p, dtype=torch.float64)
    for k in freqs:
        read = _pizza_readout(p, k, phases)
        angle = _angles(p, k)
        logits += read[:, :1] * torch.cos(angle) + read[:, 1:] * torch.sin(angle)
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    wrong = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    worst = float((correct - wrong).min())
    if worst <= 0:
        raise GrokscopeError(f"a smallest logit gap of {worst:.3g} with {n_phases} phases",
                             expected="more phases or frequencies", where="exact_pizza_model")
    lam = margin / worst
    cfg = pizza_config(task, d_model=6 * nk, n_heads=1, d_head=2 * nk, d_mlp=nk * n_phases)
    model = _blank(cfg, alpha=0.0)
    with torch.no_grad():
        _set_embeddings(model, task, [(k, 6 * f, 6 * f + 1) for f, k in enumerate(freqs)])
        W = backend.weights(model)
        attn, mlp = _layer(W, 0)
        for f, k in enumerate(freqs):
            tok, total, out = 6 * f, 6 * f + 2, 6 * f + 4
            for i in range(2):
                attn.W_V[0, tok + i, 2 * f + i] = 1.0
                attn.W_O[0, 2 * f + i, total + i] = gain
            neurons = slice(f * n_phases, (f + 1) * n_phases)
            mlp.W_in[total, neurons] = (torch.cos(phases) / gain).float()
            mlp.W_in[total + 1, neurons] = (torch.sin(phases) / gain).float()
            mlp.W_out[neurons, out] = (gain * torch.cos(2 * phases)).float()
            mlp.W_out[neurons, out + 1] = (gain * torch.sin(2 * phases)).float()
            angle = _angles(p, k)
            W["unembed.W_U"][out, :p] = (lam / gain * torch.cos(angle)).float()
            W["unembed.W_U"][out + 1, :p] = (lam / gain * torch.sin(angle)).float()
    return model


def _layer(W: dict[str, Tensor], layer: int) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Layer ``layer``'s attention and MLP weights as attributes (``attn.W_Q``, ``mlp.W_in``, ...): views,
    so writing into them writes the model."""
    def part(prefix: str) -> SimpleNamespace:
        return SimpleNamespace(**{k[len(prefix):]: v for k, v in W.items() if k.startswith(prefix)})
    return part(f"blocks.{layer}.attn."), part(f"blocks.{layer}.mlp.")


def _blank(cfg, alpha: float) -> HookedTransformer:
    """A model of ``cfg`` with every parameter zero; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, alpha)
    with torch.no_grad():
        for tensor in backend.weights(model).values():
            tensor.zero_()
    return model


def random_model(task: Task, seed: int = 0, *, alpha: float = 1.0, **config) -> HookedTransformer:
    """A freshly initialised model for ``task``: weights N(0, initializer_range^2), biases zero.

    Uses ``nanda_config`` for [a, b, =] and ``pizza_config`` for [a, b]; ``config`` overrides their
    arguments (d_model, d_mlp, ...). Seeded with a private generator: the global RNG is untouched.

    >>> m1, m2 = random_model(Task(p=23), seed=3), random_model(Task(p=23), seed=3)
    >>> torch.equal(m1.W_E, m2.W_E)
    True
    """
    make = nanda_config if task.eq_token else pizza_config
    cfg = make(task, **config)
    generator = torch.Generator().manual_seed(int(seed))
    state = {name: torch.zeros(shape) if name.split(".")[-1].startswith("b_")
             else torch.randn(shape, generator=generator) * cfg.initializer_range
             for name, shape in backend.hooked_shapes(cfg).items()}
    return build_model(cfg, alpha, state)
