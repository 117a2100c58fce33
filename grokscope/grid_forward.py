"""Logits over the whole (a, b) grid of a one-layer model, from per-token tables.

In a one-layer transformer read out at the last position, every quantity before the attention
softmax depends on one token only: the query on the last token, each key and value on its own
position's token. So the grid forward needs only tables over the p operand tokens:

    scores_j[a, b, h] = q_h(t_last) . k_h,j(t_j) / sqrt(d_head)
    pattern = alpha * softmax_j(scores) + (1 - alpha)                  (SCIENCE.md section 4)
    pre[a, b]    = x_last W_in + b_in + b_O W_in + sum_{j, h} pattern_j,h (v_h,j W_O,h W_in)(t_j)
    logits[a, b] = (x_last + b_O) W_U + b_U + b_out W_U + sum_{j, h} pattern_j,h (v_h,j W_O,h W_U)(t_j)
                   + act(pre) (W_out W_U)

with x_j = W_E[t_j] + W_pos[j]. Only act(pre) (W_out W_U) costs p^2 d_mlp d_vocab_out; the usual forward
also multiplies the p^2 residuals by W_in and the activations by W_out, about 4x the work at d_mlp =
4 d_model. The result equals ``models.final_logits`` up to float rounding (the sums are reassociated).

Used for the logit templates [Z23], where each embedding circle needs its own grid pass:
``stacked_grid_logits`` takes n embedding tables at once. An isolated circle puts every operand row
in a plane (mean + 2 coordinates), so ``affine_grid_logits`` goes further: each input's MLP input and
direct logits are one product of (1 + r)(1 + 2 heads) features with a stacked map, leaving
act(pre) (W_out W_U) as almost the only cost.

>>> import torch
>>> from grokscope import backend
>>> from grokscope.constructions import random_model
>>> from grokscope.models import final_logits
>>> from grokscope.tasks import Task
>>> task = Task(p=13)
>>> model = random_model(task, seed=0)
>>> fast = stacked_grid_logits(model, task, backend.weights(model)["embed.W_E"].detach()[None])[0]
>>> slow = final_logits(model, task.tokens()).detach()
>>> bool(torch.allclose(fast, slow, atol=1e-4 * float(slow.abs().max())))
True
"""

from types import SimpleNamespace
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope import backend
from grokscope.models import HookedTransformer, attention_rate, final_logits
from grokscope.tasks import Task


def supports(model: HookedTransformer) -> bool:
    """Whether the table forward applies: one layer with an MLP, no LayerNorm, learned positions."""
    cfg = model.cfg
    return (cfg.n_layers == 1 and cfg.normalization_type is None and cfg.positional_embedding_type == "standard"
            and not cfg.attn_only)


def _one_layer(model: HookedTransformer) -> SimpleNamespace:
    """The one layer's weights by their circuit names (views through ``backend.weights``, either line):
    ``attn.W_Q`` ..., ``mlp.W_in`` ..., ``W_U``, ``b_U``, ``W_pos`` and the activation ``act_fn``."""
    W = backend.weights(model)
    attn, mlp = backend.layer_weights(W, 0)
    return SimpleNamespace(attn=attn, mlp=mlp, W_U=W["unembed.W_U"], b_U=W["unembed.b_U"],
                           W_pos=W["pos_embed.W_pos"], act_fn=backend.activation(model))


def _grid(values: Tensor, kind: str) -> Tensor:
    """Per-token values (n, T, ...) as a tensor broadcastable over the grid (n, a, b, ...)."""
    if kind == "a":
        return values[:, :, None]
    if kind == "b":
        return values[:, None, :]
    return values[:, None, None, 0]  # the '=' token: one row, the same for every input


CHUNK_ELEMENTS = 1 << 18
"""Activations computed per block of operand-a rows: about this many numbers (1 MiB in float32)."""

_SUM_OVER_HEADS = {"a": "nabh,nahm->nabm", "b": "nabh,nbhm->nabm", "eq": "nabh,nhm->nabm"}


def _patterns(model: HookedTransformer, x: list[Tensor], kinds: list[str], shape: tuple[int, int, int]
              ) -> list[Tensor]:
    """Attention weights of the last position on each position j, (n, T_a, T_b, heads) per j, with the
    attention rate applied (SCIENCE.md section 4)."""
    cfg, attn = model.cfg, _one_layer(model).attn
    last = len(kinds) - 1
    scale = backend.attention_scale(cfg)
    q = torch.einsum("ntd,hde->nthe", x[last], attn.W_Q) + attn.b_Q
    scores = []
    for j, kind in enumerate(kinds):
        k = torch.einsum("ntd,hde->nthe", x[j], attn.W_K) + attn.b_K
        if kind == "a" and kinds[last] == "b":  # one product per head over every (a, b) pair
            score = torch.einsum("nahe,nbhe->nabh", k, q)
        else:  # the query's own token, or one side is the single '=' token
            score = _grid((q * k).sum(-1), kind)
        scores.append(score.expand(*shape, cfg.n_heads) / scale)
    top = torch.stack(scores).amax(dim=0)
    exps = [(s - top).exp() for s in scores]  # softmax over positions, kept as one tensor per position
    total = sum(exps)
    pattern = [e / total for e in exps]
    alpha = attention_rate(model)
    if alpha != 1.0:
        pattern = [alpha * w + (1.0 - alpha) for w in pattern]
    return pattern


def _neuron_logit_map(model: HookedTransformer) -> Float[Tensor, "d_mlp d_pad"]:
    """W_L = W_out W_U with zero columns up to a multiple of 16: the widest product of the forward
    runs about a quarter faster on whole vector registers; callers drop the extra columns."""
    layer = _one_layer(model)
    W_L = layer.mlp.W_out @ layer.W_U
    return torch.nn.functional.pad(W_L, (0, -W_L.shape[1] % 16))


def _chunk_rows(n: int, width: int, d_mlp: int) -> int:
    """Operand-a rows per block so that the n blocks of activations hold about ``CHUNK_ELEMENTS``."""
    return max(1, CHUNK_ELEMENTS // max(1, n * width * d_mlp))


def stacked_grid_logits(model: HookedTransformer, task: Task, tables: Float[Tensor, "n d_vocab d_model"]
                        ) -> Float[Tensor, "n p_sq d_vocab_out"]:
    """Last-position logits over the lexicographic grid for each of n embedding tables W_E.

    ``tables[i]`` replaces ``model.embed.W_E``; every other weight is the model's. Requires
    ``supports(model)``. Rows are a * p + b, as ``task.tokens()``.
    """
    cfg = model.cfg
    p, n = task.p, tables.shape[0]
    layer = _one_layer(model)
    attn, mlp, W_U, b_U, W_pos = layer.attn, layer.mlp, layer.W_U, layer.b_U, layer.W_pos
    dtype = W_U.dtype
    tables = tables.to(dtype)
    kinds = ["a", "b"] + (["eq"] if task.eq_token else [])
    rows = {"a": tables[:, :p], "b": tables[:, task.b_offset:task.b_offset + p],
            "eq": tables[:, task.eq_id:task.eq_id + 1] if task.eq_token else None}
    x = [rows[kind] + W_pos[j] for j, kind in enumerate(kinds)]  # (n, T_j, d_model) per position
    last = len(kinds) - 1
    pattern = _patterns(model, x, kinds, (n, p, p))
    W_L = _neuron_logit_map(model)
    base_in = _grid(x[last] @ mlp.W_in, kinds[last]) + attn.b_O @ mlp.W_in + mlp.b_in
    base_out = _grid(x[last] @ W_U, kinds[last]) + (attn.b_O + mlp.b_out) @ W_U + b_U
    tables_in, tables_out = [], []
    for j, kind in enumerate(kinds):
        v = torch.einsum("ntd,hde->nthe", x[j], attn.W_V) + attn.b_V
        vo = torch.einsum("nthe,hed->nthd", v, attn.W_O)  # each head's output per token
        table_in, table_out = vo @ mlp.W_in, vo @ W_U
        if kind == "eq":
            table_in, table_out = table_in[:, 0], table_out[:, 0]
        tables_in.append(table_in)
        tables_out.append(table_out)
    logits = torch.empty(n, p, p, W_U.shape[1], dtype=dtype, device=tables.device)
    # Blocks of operand-a rows small enough for the cache: the activations are the only large tensor.
    step = _chunk_rows(n, p, cfg.d_mlp)
    for start in range(0, p, step):
        rows_a = slice(start, start + step)
        pre = base_in[:, rows_a] if kinds[last] == "a" else base_in
        out = base_out[:, rows_a] if kinds[last] == "a" else base_out
        for j, kind in enumerate(kinds):
            table_in = tables_in[j][:, rows_a] if kind == "a" else tables_in[j]
            table_out = tables_out[j][:, rows_a] if kind == "a" else tables_out[j]
            weights = pattern[j][:, rows_a]
            # contiguous sums: a transposed einsum result would make every later pass strided
            pre = torch.einsum(_SUM_OVER_HEADS[kind], weights, table_in).contiguous().add_(pre)
            out = torch.einsum(_SUM_OVER_HEADS[kind], weights, table_out).add_(out)
        act = layer.act_fn(pre)
        product = act.reshape(-1, act.shape[-1]) @ W_L
        logits[:, rows_a] = product.reshape(act.shape[:-1] + W_L.shape[1:])[..., :W_U.shape[1]].add_(out)
    return logits.reshape(n, p * p, -1)


class AffineRows(NamedTuple):
    """The token embeddings of one position as ``origin + coords @ basis``: T tokens, r coordinates.

    An embedding whose rows lie in an r-dimensional affine plane (an isolated circle: r = 2) makes the
    grid forward cheap: every per-token quantity is affine in the coordinates (``affine_grid_logits``).
    """

    origin: Float[Tensor, "n d_model"]
    coords: Float[Tensor, "n T r"]
    basis: Float[Tensor, "n r d_model"]

    def dense(self) -> Float[Tensor, "n T d_model"]:
        """The rows themselves."""
        return self.origin[:, None] + self.coords @ self.basis


def affine_grid_logits(model: HookedTransformer, rows_a: AffineRows, rows_b: AffineRows,
                       eq_row: Float[Tensor, "n d_model"] | None = None) -> Float[Tensor, "n T_a T_b d_vocab_out"]:
    """Last-position logits of every input (t_a, t_b[, =]) for n embeddings given in affine form.

    ``rows_a`` holds the T_a operand-a embeddings, ``rows_b`` the T_b operand-b ones, ``eq_row`` the
    ``=`` embedding when the task has one. With x_j = origin_j + c_j(t) B_j + W_pos[j], each head's
    value, mapped through W_O and [W_in | W_U], is e_{j,h} + c_j(t) R_{j,h}, so the module docstring's
    sums become one product per input of the features (1, c_last) and pattern_{j,h} (1, c_j) with
    the stacked [e; R]: about (1 + r)(1 + 2 heads) numbers instead of a sum over heads of d_mlp-long
    vectors. Requires ``supports(model)``.

    >>> from grokscope import backend
    >>> from grokscope.constructions import random_model
    >>> task = Task(p=13)
    >>> model = random_model(task, seed=0)
    >>> W_E = backend.weights(model)["embed.W_E"].detach()
    >>> rows = AffineRows(W_E[:13].mean(0)[None], torch.randn(1, 13, 2, generator=torch.Generator().manual_seed(0)),
    ...                   W_E[None, :2])
    >>> table = W_E.clone()[None]
    >>> table[:, :13] = rows.dense()
    >>> with torch.no_grad():
    ...     fast = affine_grid_logits(model, rows, rows, table[:, task.eq_id])
    ...     slow = stacked_grid_logits(model, task, table).reshape(fast.shape)
    >>> bool(torch.allclose(fast, slow, atol=1e-4 * float(slow.abs().max())))
    True
    """
    cfg = model.cfg
    layer = _one_layer(model)
    attn, mlp, W_U, b_U, W_pos = layer.attn, layer.mlp, layer.W_U, layer.b_U, layer.W_pos
    dtype = W_U.dtype
    positions = [AffineRows(*(t.to(dtype) for t in rows)) for rows in (rows_a, rows_b)]
    kinds = ["a", "b"]
    n = positions[0].origin.shape[0]
    if eq_row is not None:
        eq_row = eq_row.to(dtype)
        positions.append(AffineRows(eq_row, eq_row.new_zeros(n, 1, 0), eq_row.new_zeros(n, 0, eq_row.shape[-1])))
        kinds.append("eq")
    T_a, T_b = positions[0].coords.shape[1], positions[1].coords.shape[1]
    x = [rows.dense() + W_pos[j] for j, rows in enumerate(positions)]
    pattern = _patterns(model, x, kinds, (n, T_a, T_b))
    d_mlp = cfg.d_mlp
    W_cat = torch.cat([mlp.W_in, W_U], dim=1)  # what the residual stream is read by: MLP in, logits
    bias = torch.cat([mlp.b_in, mlp.b_out @ W_U + b_U]) + attn.b_O @ W_cat
    head_maps = torch.einsum("hed,dD->heD", attn.W_O, W_cat)
    last, last_j = positions[-1], len(positions) - 1
    blocks = [((last.origin + W_pos[last_j]) @ W_cat + bias)[:, None], last.basis @ W_cat]
    ones = torch.ones(n, 1, 1, 1, dtype=dtype, device=W_U.device)
    features = [ones.expand(n, T_a, T_b, 1), _grid(last.coords, kinds[-1]).expand(n, T_a, T_b, -1)]
    for j, (rows, kind) in enumerate(zip(positions, kinds)):
        e = torch.einsum("nd,hde->nhe", rows.origin + W_pos[j], attn.W_V) + attn.b_V
        R = torch.einsum("nrd,hde->nhre", rows.basis, attn.W_V)
        values = torch.cat([e[:, :, None], R], dim=2)  # (n, heads, 1 + r, d_head)
        blocks.append(torch.einsum("nhre,heD->nhrD", values, head_maps).flatten(1, 2))
        coords = torch.cat([rows.coords.new_ones(*rows.coords.shape[:-1], 1), rows.coords], dim=-1)
        features.append((pattern[j][..., None] * _grid(coords, kind)[..., None, :]).flatten(-2))
    G = torch.cat(blocks, dim=1)  # (n, K, d_mlp + d_vocab_out)
    W_L = _neuron_logit_map(model)
    G_in = G[..., :d_mlp].contiguous()
    G_out = torch.nn.functional.pad(G[..., d_mlp:], (0, W_L.shape[1] - W_U.shape[1]))
    logits = torch.empty(n, T_a, T_b, W_U.shape[1], dtype=dtype, device=W_U.device)
    features = torch.cat(features, dim=-1)  # (n, T_a, T_b, K)
    step = _chunk_rows(n, T_b, d_mlp)
    for start in range(0, T_a, step):
        block = slice(start, start + step)
        F = features[:, block].flatten(1, 2)  # (n, rows * T_b, K)
        act = layer.act_fn(F @ G_in)
        out = torch.baddbmm(F @ G_out, act, W_L.expand(n, *W_L.shape))
        logits[:, block] = out.reshape(n, -1, T_b, W_L.shape[1])[..., :W_U.shape[1]]
    return logits


def take(values: Tensor, index: Int[Tensor, "k"], dim: int = 0) -> Tensor:
    """``values.index_select(dim, index)``, as a view without a copy when index is 0, 1, ..., k - 1.

    >>> take(torch.arange(6).reshape(2, 3), torch.tensor([0, 1]), dim=1).tolist()
    [[0, 1], [3, 4]]
    """
    if torch.equal(index, torch.arange(len(index), device=index.device)):
        return values.narrow(dim, 0, len(index))
    return values.index_select(dim, index.to(values.device))


def task_rows_in_square(task: Task) -> Int[Tensor, "n_inputs"]:
    """Where each row of ``task.tokens()`` sits in the square a * p + b grid (``div`` drops b = 0).

    >>> task_rows_in_square(Task(p=3, op="div")).tolist()
    [1, 2, 4, 5, 7, 8]
    """
    square = torch.arange(task.p * task.p)
    return square if task.is_square_grid else square[square % task.p != 0]


def grid_logits(model: HookedTransformer, task: Task) -> Float[Tensor, "n_inputs d_vocab_out"]:
    """Last-position logits over the task's grid, rows as ``task.tokens()`` (no gradients): the table
    forward where ``supports(model)``, else ``models.final_logits``."""
    with torch.no_grad():
        if supports(model):
            square = stacked_grid_logits(model, task, backend.weights(model)["embed.W_E"].detach()[None])[0]
            return square if task.is_square_grid else square[task_rows_in_square(task)]
        return final_logits(model, task.tokens())
