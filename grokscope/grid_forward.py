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
``stacked_grid_logits`` takes n embedding tables at once.

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


def stacked_grid_logits(model: HookedTransformer, task: Task, tables: Float[Tensor, "n d_vocab d_model"]
                        ) -> Float[Tensor, "n p_sq d_vocab_out"]:
    """Last-position logits over the lexicographic grid for each of n embedding tables W_E.

    ``tables[i]`` replaces ``model.embed.W_E``; every other weight is the model's. Requires
    ``supports(model)``. Rows are a * p + b, as ``task.tokens()``.
    """
    cfg = model.cfg
    p, n = task.p, tables.shape[0]
    W = backend.weights(model)
    attn = SimpleNamespace(**{k.removeprefix("blocks.0.attn."): v for k, v in W.items() if k.startswith("blocks.0.attn.")})
    mlp = SimpleNamespace(**{k.removeprefix("blocks.0.mlp."): v for k, v in W.items() if k.startswith("blocks.0.mlp.")})
    W_U, b_U, W_pos = W["unembed.W_U"], W["unembed.b_U"], W["pos_embed.W_pos"]
    act_fn = backend.activation(model)
    dtype = W_U.dtype
    tables = tables.to(dtype)
    kinds = ["a", "b"] + (["eq"] if task.eq_token else [])
    rows = {"a": tables[:, :p], "b": tables[:, task.b_offset:task.b_offset + p],
            "eq": tables[:, task.eq_id:task.eq_id + 1] if task.eq_token else None}
    x = [rows[kind] + W_pos[j] for j, kind in enumerate(kinds)]  # (n, T_j, d_model) per position
    last = len(kinds) - 1
    scale = backend.attention_scale(cfg)
    q = torch.einsum("ntd,hde->nthe", x[last], attn.W_Q) + attn.b_Q
    q = _grid(q, kinds[last])
    scores = []
    for j, kind in enumerate(kinds):
        k = _grid(torch.einsum("ntd,hde->nthe", x[j], attn.W_K) + attn.b_K, kind)
        scores.append((q * k).sum(-1).expand(n, p, p, cfg.n_heads) / scale)
    top = torch.stack(scores).amax(dim=0)
    exps = [(s - top).exp() for s in scores]  # softmax over positions, kept as one tensor per position
    total = sum(exps)
    pattern = [e / total for e in exps]
    alpha = attention_rate(model)
    if alpha != 1.0:
        pattern = [alpha * w + (1.0 - alpha) for w in pattern]
    W_L = mlp.W_out @ W_U
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
    step = max(1, CHUNK_ELEMENTS // (p * cfg.d_mlp))
    for start in range(0, p, step):
        rows_a = slice(start, start + step)
        pre = base_in[:, rows_a] if kinds[last] == "a" else base_in
        out = base_out[:, rows_a] if kinds[last] == "a" else base_out
        for j, kind in enumerate(kinds):
            table_in = tables_in[j][:, rows_a] if kind == "a" else tables_in[j]
            table_out = tables_out[j][:, rows_a] if kind == "a" else tables_out[j]
            weights = pattern[j][:, rows_a]
            pre = torch.einsum(_SUM_OVER_HEADS[kind], weights, table_in).add_(pre)
            out = torch.einsum(_SUM_OVER_HEADS[kind], weights, table_out).add_(out)
        logits[:, rows_a] = (act_fn(pre) @ W_L).add_(out)
    return logits.reshape(n, p * p, -1)


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
