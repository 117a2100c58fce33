"""Networks with analytically set weights: an exact clock, an exact pizza, and a seeded random model.

They are HookedTransformers of the usual grokscope architecture (``nanda_config`` / ``pizza_config`` +
``build_model``), for any odd prime p and both token layouts ([a, b, =] and [a, b], diff_vocab too), so
they serve as ground truth for every measure: the clock's logits are exactly C * sum_k cos(w_k(a+b-c)).

Every operation with a group (``Task.group``, SCIENCE.md section 7) is built the same way in group
coordinates: a token t sits on its circles at angle w_k phi(t), w_k = 2 pi k / N (phi the identity
for add and sub, the discrete log for mul and div, N = p or p - 1), so the logits are exactly
C * sum_k cos(w_k(phi(a) + sign_b phi(b) - phi(c))) on the in-group inputs: cos(w(a - b - c)) for sub,
cos(w(ind a +- ind b - ind c)) for mul and div. For sub and div the b copy is mirrored (sin -> -sin,
so it carries -phi(b)). For even N the sign frequency N/2 is a circle with no sin part: the token
sits at (-1)^phi(t) (the Legendre symbol under the log), and the same neurons give
C (-1)^(u+v-m) because the phase grid is closed under a shift by pi.

Zero under the discrete log: token 0 has no circle but a flag dim that the heads copy (z = number of
zero operands); one "zero" neuron ReLU(z) writes class 0's logit, and b_U[0] = -B keeps class 0 below
the correct class on the nonzero grid. The clock's own logits vanish on a row with a zero operand
(its neurons' outputs sum to zero over the phase grid), so class 0 wins there by the set margin.

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
6 |K| (+2 with a zero operand): one head copies the token circle into a "sum" block E_a + E_b; ``n_phases`` neurons per
frequency at phases phi_j = 2 pi j / n_phases with pre = cos(w a - phi_j) + cos(w b - phi_j) =
2 cos(w(a-b)/2) cos(w(a+b)/2 - phi_j) and logit contribution cos(2 phi_j - w c). With n_phases a
multiple of p the sum is exactly s |cos(w(a-b)/2)| cos(w(a+b-c)), s > 0 (the phase grid's aliasing
terms are equal for both half-grid offsets of w(a+b)/2), so the correct class wins at every input:
|cos(w(a-b)/2)| never vanishes for odd p. Constant attention sums the two operands' embeddings
symmetrically: with one shared table and tokens [a, b, =] the read-out sees a and b only through
that sum, so no pizza of the asymmetric a - b exists (with tokens [a, b] only b's own embedding on
the direct path breaks the symmetry). The pizza for sub is built with ``diff_vocab`` (b's table then
carries b's group coordinate -b). For even N (mul, div) no pizza
exists at all: at u - v = N/2 (a = -b for mul, since g^(N/2) = -1) every odd k has
|cos(w_k (u - v)/2)| = |cos(pi k / 2)| = 0, and every even k gives the classes m and m + N/2 (c and
-c) the same logit, so the correct class always ties with -c there; the builder refuses.

The token circle is never read by W_in or W_U: the embeddings reach the logits only through attention.
With tokens [a, b] the last token's embedding also enters the residual stream that W_in and W_U read
(gradients flow back along every dim they read); so W_O and W_out write ``gain`` x their outputs and
W_in and W_U read them back / ``gain``, making those direct gradient paths 1/gain of the attention
path. The pizza's gradients with respect to the embedding outputs of a and b are then parallel to
~1e-6 ([Z23]'s gradient symmetricity ~ 1).

>>> from grokscope.tasks import NO_MECHANISM, Task
>>> from grokscope.models import final_logits
>>> task = Task(p=23)
>>> model = exact_clock_model(task, [2, 5])
>>> (final_logits(model, task.tokens()).argmax(-1) == task.labels()).all().item()
True
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.models import HookedTransformer, build_model, nanda_config, pizza_config
from grokscope.tasks import NO_MECHANISM, Task

GAIN = 1000.0
"""W_O and W_out multiply what they write by it, W_in and W_U divide it back out (same function)."""

def _check(task: Task, freqs: list[int], where: str):
    group = task.group
    if group is None:
        raise GrokscopeError(NO_MECHANISM.format(op=task.op),
                             expected="op add, sub, mul or div (addition in a cyclic group)", where=where)
    freqs = [int(k) for k in freqs]
    if not freqs or len(set(freqs)) != len(freqs) or any(not 1 <= k <= group.N // 2 for k in freqs):
        raise GrokscopeError(f"frequencies {freqs}", where=where,
                             expected=f"one or more distinct integers in 1..{group.N // 2} (frequencies of {group.name})")
    return freqs, group


def _circle(N: int, k: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """(cos w x, sin w x) for w = 2 pi k / N; the sign frequency N/2 gives ((-1)^x, 0) exactly."""
    if 2 * k == N:
        return 1.0 - 2.0 * (x % 2).double(), torch.zeros(x.shape, dtype=torch.float64)
    angle = 2 * math.pi * k * x.double() / N
    return torch.cos(angle), torch.sin(angle)


def _token_coordinates(task: Task, group, operand: str, mirrored: bool) -> tuple[Tensor, Tensor]:
    """(token ids, group coordinates) of one operand's in-group tokens; ``mirrored`` applies sign_b."""
    values = group.elements()
    coords = torch.arange(group.N)
    if mirrored and group.sign_b < 0:
        coords = (-coords) % group.N
    start = task.b_offset if operand == "b" else 0
    return values + start, coords


def _angles(p: int, k: int) -> Float[Tensor, "p"]:
    return 2 * math.pi * k * torch.arange(p, dtype=torch.float64) / p


def _set_embeddings(model: HookedTransformer, task: Task, group, circle_dims: list[tuple[int, int, int]],
                    mirror_b: bool = False, flag_dim: int | None = None) -> None:
    """Write the token circle (cos w phi(t), sin w phi(t)) into the given dims for a's and b's token ids.

    ``mirror_b`` (a separate b table only) puts b's tokens at their own coordinate sign_b phi(b).
    Tokens outside the group get no circle, and a 1 in ``flag_dim`` when given."""
    W_E = backend.weights(model)["embed.W_E"]
    for operand in ("a", "b") if task.diff_vocab else ("a",):
        ids, coords = _token_coordinates(task, group, operand, mirror_b and operand == "b")
        for k, cos_dim, sin_dim in circle_dims:
            cos, sin = _circle(group.N, k, coords)
            W_E[ids, cos_dim] = cos.float()
            W_E[ids, sin_dim] = sin.float()
        outside = [t for t in range(task.p) if t not in set(group.elements().tolist())]
        if flag_dim is not None:
            start = task.b_offset if operand == "b" else 0
            for t in outside:
                W_E[start + t, flag_dim] = 1.0


def _min_gap(p: int, freqs: list[int]) -> float:
    """min over e != 0 of sum_k (1 - cos(w_k e)): the clock's smallest correct-vs-wrong logit gap / C."""
    e = torch.arange(1, p, dtype=torch.float64)
    return float(sum(1 - _circle(p, k, e)[0] for k in freqs).min())


def clock_constant(p: int, beta: float = 0.0) -> float:
    """C = sum over the Z_p^2 grid of ReLU(cos u + cos v + beta) cos u cos v (the clock's logit scale)."""
    u = _angles(p, 1)  # for any N: the phase grid of the neurons
    g = torch.relu(torch.cos(u)[:, None] + torch.cos(u)[None, :] + beta)
    return float((g * torch.cos(u)[:, None] * torch.cos(u)[None, :]).sum())


def exact_clock_model(task: Task, freqs: list[int], *, beta: float = 0.0, margin: float = 16.0,
                      gap: float = 40.0, gain: float = GAIN,
                      embedding_map: Float[Tensor, "n_circle_dims n_circle_dims"] | None = None
                      ) -> HookedTransformer:
    """A one-layer clock: logits exactly lam * C * sum_k cos(w_k(u+v-m)) over the in-group inputs.

    u = phi(a), v = sign_b phi(b), m = phi(c) are the group coordinates of ``task.group``: a + b - c
    for add, a - b - c for sub, ind a +- ind b - ind c for mul and div (w_k = 2 pi k / N). With a zero
    operand (mul, div) the correct class 0 wins by ``margin`` too (module docstring).

    Args:
        task: an add, sub, mul or div task (any odd prime p, with or without the ``=`` token, diff_vocab too).
        freqs: the key frequencies in 1..N/2, e.g. [3, 7] (N/2 is the sign frequency for mul and div).
        beta: MLP bias; every neuron is explained >= 0.85 by its frequency for beta in [0, 1.5].
        margin: the smallest correct-minus-wrong logit gap over the grid (loss ~ 2 exp(-margin)).
        gap: attention score gap between the attended position and the others.
        gain: W_O and W_out write gain x, W_in and W_U read back / gain (see the module docstring).
        embedding_map: an invertible (2 |K|, 2 |K|) matrix A over the token-circle dims (cos, sin of
            each frequency in the order of ``freqs``): W_E <- W_E A and W_V <- A^-1 W_V there, so the
            logits are unchanged while the embedded circles become ellipses of unequal size in
            non-orthogonal planes, as in trained models.

    d_mlp = |K| N^2 (+1 zero neuron); n_heads = 2, d_head = 2 |K| (+1); attention rate 1.

    >>> from grokscope.models import final_logits
    >>> task = Task(p=23)
    >>> plain = final_logits(exact_clock_model(task, [3, 7]), task.tokens())
    >>> skew = torch.eye(4, dtype=torch.float64) + 0.1 * torch.ones(4, 4, dtype=torch.float64)
    >>> mapped = final_logits(exact_clock_model(task, [3, 7], embedding_map=skew), task.tokens())
    >>> bool((mapped - plain).abs().max() < 1e-4 * plain.abs().max())
    True
    >>> mul = Task(p=23, op="mul")
    >>> (final_logits(exact_clock_model(mul, [3, 11]), mul.tokens()).argmax(-1) == mul.labels()).all().item()
    True
    """
    freqs, group = _check(task, freqs, "exact_clock_model")
    N, nk = group.N, len(freqs)
    const = clock_constant(N, beta)
    if const <= 0:
        raise GrokscopeError(f"beta = {beta} (C = {const:.3g})", expected="a beta with C > 0, e.g. 0..1.5",
                             where="exact_clock_model")
    if math.gcd(N, *freqs) != 1:
        raise GrokscopeError(f"frequencies {freqs} of {group.name}", where="exact_clock_model",
                             expected=f"frequencies with no common factor with N = {N}: with one, m and "
                             f"m + {N // math.gcd(N, *freqs)} get the same logit at every input")
    lam = margin / (const * _min_gap(N, freqs))
    zero = N < task.p                       # tokens and class 0 outside the group (discrete log)
    d_circ = 8 * nk
    flag, z, zout = d_circ, d_circ + 1, d_circ + 2
    d_posdims = d_circ + (3 if zero else 0)
    config = nanda_config if task.eq_token else pizza_config
    d_head = 2 * nk + (1 if zero else 0)
    cfg = config(task, d_model=d_posdims + task.n_ctx, n_heads=2, d_head=d_head,
                 d_mlp=nk * N * N + (1 if zero else 0))
    model = _blank(cfg, alpha=1.0)
    phase = 2 * math.pi * torch.arange(N, dtype=torch.float64) / N
    phi, psi = phase.repeat_interleave(N), phase.repeat(N)  # neuron (i, j) -> index i*N + j
    classes = group.elements()
    with torch.no_grad():
        _set_embeddings(model, task, group, [(k, 8 * f, 8 * f + 1) for f, k in enumerate(freqs)],
                        flag_dim=flag if zero else None)
        W = backend.weights(model)
        W["pos_embed.W_pos"][:, d_posdims:] = torch.eye(task.n_ctx)
        attn, mlp = backend.layer_weights(W, 0)
        score = gap * backend.attention_scale(cfg)
        for head, source in ((0, 0), (1, 1)):
            attn.W_Q[head, d_posdims:, 0] = 1.0
            attn.W_K[head, d_posdims + source, 0] = score
            if zero:  # each head copies its operand's zero flag into z
                attn.W_V[head, flag, 2 * nk] = 1.0
                attn.W_O[head, 2 * nk, z] = gain
        for f, k in enumerate(freqs):
            tok, a_copy, b_copy, out = 8 * f, 8 * f + 2, 8 * f + 4, 8 * f + 6
            for head, copy in ((0, a_copy), (1, b_copy)):
                for i in range(2):
                    # head 1 mirrors b's circle for sub and div: it then carries -phi(b)
                    sign = group.sign_b if head == 1 and i == 1 else 1
                    attn.W_V[head, tok + i, 2 * f + i] = float(sign)
                    attn.W_O[head, 2 * f + i, copy + i] = gain
            neurons = slice(f * N * N, (f + 1) * N * N)
            mlp.W_in[a_copy, neurons] = (torch.cos(phi) / gain).float()
            mlp.W_in[a_copy + 1, neurons] = (torch.sin(phi) / gain).float()
            mlp.W_in[b_copy, neurons] = (torch.cos(psi) / gain).float()
            mlp.W_in[b_copy + 1, neurons] = (torch.sin(psi) / gain).float()
            mlp.b_in[neurons] = beta
            mlp.W_out[neurons, out] = (gain * torch.cos(phi + psi)).float()
            mlp.W_out[neurons, out + 1] = (gain * torch.sin(phi + psi)).float()
            cos, sin = _circle(N, k, torch.arange(N))
            W["unembed.W_U"][out, classes] = (lam / gain * cos).float()
            W["unembed.W_U"][out + 1, classes] = (lam / gain * sin).float()
        if zero:
            _zero_neuron(model, z, zout, cfg.d_mlp - 1, margin, gain)
        if embedding_map is not None:
            _map_token_circles(model, [d for f in range(nk) for d in (8 * f, 8 * f + 1)], embedding_map)
    return model


def _zero_neuron(model: HookedTransformer, z: int, zout: int, neuron: int, margin: float, gain: float) -> None:
    """Class 0 for inputs with a zero operand: ReLU(z) lifts class 0 by 2 margin per zero operand, and
    b_U[0] = -margin keeps it ``margin`` below the (positive) correct logit elsewhere; every other
    class's clock logit is 0 on those inputs."""
    lift = 2 * margin
    W = backend.weights(model)
    _, mlp = backend.layer_weights(W, 0)
    mlp.W_in[z, neuron] = 1.0 / gain
    mlp.W_out[neuron, zout] = gain
    W["unembed.W_U"][zout, 0] = lift / gain
    W["unembed.b_U"][0] = -margin


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


def _pizza_readout(s_cos: Tensor, s_sin: Tensor, phases: Tensor) -> Float[Tensor, "n 2"]:
    """Per input with summed circle (s_cos, s_sin): the (cos, sin) output-circle coordinates the pizza
    neurons of one frequency write (pre = <s, (cos phi_j, sin phi_j)>, out = (cos 2 phi_j, sin 2 phi_j))."""
    pre = torch.relu(s_cos[:, None] * torch.cos(phases) + s_sin[:, None] * torch.sin(phases))
    return torch.stack([pre @ torch.cos(2 * phases), pre @ torch.sin(2 * phases)], dim=1)


def exact_pizza_model(task: Task, freqs: list[int], *, n_phases: int | None = None,
                      margin: float = 16.0, gain: float = GAIN) -> HookedTransformer:
    """A one-layer pizza with constant attention (alpha = 0): logit ~ sum_k A_k(u-v) cos(w_k(u+v-m)).

    u, v, m are the group coordinates of ``task.group`` (a, b, c for add; ind a, ind b, ind c for mul;
    with diff_vocab, a, -b, c for sub and ind a, -ind b, ind c for div); w_k = 2 pi k / N.

    Args:
        task: an add task, or a sub task with ``diff_vocab`` (no pizza exists otherwise: module docstring).
        freqs: the circles' frequencies, e.g. [2, 5, 9].
        n_phases: neurons per frequency (default 2N; a multiple of N makes A_k depend on u - v only).
        margin: the smallest correct-minus-wrong logit gap over the full grid.
        gain: W_O and W_out write gain x, W_in and W_U read back / gain (see the module docstring).

    d_mlp = |K| n_phases; one head, d_head = 2 |K|; attention rate 0; accuracy 1.0 over the grid.
    Raises GrokscopeError where no pizza exists.

    >>> from grokscope.models import final_logits
    >>> sub = Task(p=23, op="sub", eq_token=False, diff_vocab=True)
    >>> (final_logits(exact_pizza_model(sub, [2, 5]), sub.tokens()).argmax(-1) == sub.labels()).all().item()
    True
    """
    freqs, group = _check(task, freqs, "exact_pizza_model")
    N, nk = group.N, len(freqs)
    if N % 2 == 0:
        raise GrokscopeError(f"op {task.op!r} in {group.name}", where="exact_pizza_model",
                             expected="an odd group order: in Z_N with N even the pizza's correct class ties "
                             "with -c wherever u - v = N/2 (module docstring), so no pizza exists for mul or div")
    if group.sign_b < 0 and not task.diff_vocab:
        raise GrokscopeError(f"op {task.op!r} with one embedding table shared by a and b", where="exact_pizza_model",
                             expected="diff_vocab=True: constant attention sums E_a + E_b symmetrically, so a "
                             "pizza of a - b needs b's own table carrying its mirrored coordinate")
    n_phases = 2 * N if n_phases is None else int(n_phases)
    if n_phases < 3:
        raise GrokscopeError(f"n_phases = {n_phases}", expected="at least 3", where="exact_pizza_model")
    phases = 2 * math.pi * torch.arange(n_phases, dtype=torch.float64) / n_phases
    u, v = torch.arange(N).repeat_interleave(N), torch.arange(N).repeat(N)
    labels = (u + v) % N
    logits = torch.zeros(N * N, N, dtype=torch.float64)
    for k in freqs:
        cu, su = _circle(N, k, u)
        cv, sv = _circle(N, k, v)
        read = _pizza_readout(cu + cv, su + sv, phases)
        cm, sm = _circle(N, k, torch.arange(N))
        logits += read[:, :1] * cm + read[:, 1:] * sm
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    wrong = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    worst = float((correct - wrong).min())
    if worst <= 1e-9 * float(logits.abs().max()):
        raise GrokscopeError(f"a smallest logit gap of {worst:.3g} with {n_phases} phases at frequencies "
                             f"{freqs} of {group.name}", where="exact_pizza_model",
                             expected="more phases or frequencies")
    lam = margin / worst
    cfg = pizza_config(task, d_model=6 * nk, n_heads=1, d_head=2 * nk, d_mlp=nk * n_phases)
    model = _blank(cfg, alpha=0.0)
    classes = group.elements()
    with torch.no_grad():
        _set_embeddings(model, task, group, [(k, 6 * f, 6 * f + 1) for f, k in enumerate(freqs)],
                        mirror_b=True)
        W = backend.weights(model)
        attn, mlp = backend.layer_weights(W, 0)
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
            cos, sin = _circle(N, k, torch.arange(N))
            W["unembed.W_U"][out, classes] = (lam / gain * cos).float()
            W["unembed.W_U"][out + 1, classes] = (lam / gain * sin).float()
    return model


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
