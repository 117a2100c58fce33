"""The training step for M stacked models of one architecture, on any device.

Every parameter is one tensor with a leading model axis: ``params["blocks.0.mlp.W_in"]`` has shape
``(M, d_model, d_mlp)``, and the names and trailing shapes are HookedTransformer's, so member m's
weights are ``{name: t[m]}``, the native checkpoint format. One forward, one backward and one
optimiser update serve all M members:

- loss = sum over members of each member's own float64 mean cross-entropy over its own train rows
  (the members' gradients never mix: member m's loss depends only on member m's parameters);
- AdamW per member: ``p <- p (1 - lr_m wd_m)``, ``m1 <- lerp(m1, g, 1 - b1_m)``,
  ``m2 <- b2_m m2 + (1 - b2_m) g^2``, ``p <- p - lr_m / (1 - b1_m^t) * m1 / (sqrt(m2 / (1 - b2_m^t)) + eps)``,
  in the order ``torch.optim.AdamW`` applies them, with each member's own lr, decay and betas;
- Grokfast-EMA [L24] per member between backward and update: ``mu_0 = g_0``,
  ``mu_t = a_m mu_{t-1} + (1 - a_m) g_t``, ``g <- g + lam_m mu_t`` (lam_m = 0 leaves g unchanged).

The forward is the read-out of models.final_logits. For one-layer models it uses that the inputs are
tokens: the residual stream before attention at position i is ``W_E[t_i] + W_pos[i]``, so queries,
keys and values are per-token tables (vocabulary x heads x d_head, computed once per step). The
query is the last position's, so each head's scores form a table too: score[u, (i, v)] =
q[u] . k[i, v] / sqrt(d_head) for last token u and token v at position i; rows gather their scores
and values. After attention only the activation is nonlinear, so the linear maps around it are
merged once per step (``fused_readout``): with z the heads' mixed values and
r = W_E[t_last] + W_pos[last] + b_O,

    pre    = z (W_O W_in) + [r W_in + b_in]
    logits = z (W_O W_U) + act(pre) (W_out W_U) + [(r + b_out) W_U + b_U]

where the bracketed terms are per-token tables. Three products over the batch (d_model x d_mlp,
d_model x d_vocab_out, d_mlp x d_vocab_out per row) replace four (W_O, W_in, W_out, W_U); merging
pays when the read-out is narrow, d_mlp d_vocab_out < d_model (d_model + d_mlp), as in both papers'
networks. Deeper models run the plain stacked forward.

>>> import torch
>>> from grokscope import backend
>>> from grokscope.models import nanda_config, build_model, final_logits
>>> from grokscope.tasks import Task
>>> task = Task(p=23)
>>> models = [build_model(nanda_config(task, d_model=32, seed=s)) for s in (0, 1)]
>>> arch = Architecture.from_config(models[0].cfg)
>>> params = stack_parameters([backend.weights(m) for m in models])
>>> params["blocks.0.mlp.W_in"].shape
torch.Size([2, 32, 128])
>>> logits = stacked_logits(params, arch, task.tokens().expand(2, -1, -1), torch.ones(2))
>>> all(torch.allclose(logits[i], final_logits(models[i], task.tokens()), atol=1e-5) for i in (0, 1))
True
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.optim.adamw import adamw as functional_adamw

from grokscope.errors import GrokscopeError

FROZEN_PARAMETERS = ("b_Q", "b_K", "b_V", "b_O", "b_U")
"""Name endings of the parameters held fixed (at zero) during training: the recipes train only MLP biases."""

ADAM_EPS = 1e-8
"""AdamW's epsilon (torch's default, which the recipes use)."""


def _gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class _ReluOverwriting(torch.autograd.Function):
    """ReLU that writes its output over its input and its input's gradient over its output's.

    The read-out's activations (rows x d_mlp) are the step's largest tensors; overwriting saves two
    fresh buffers of that size a step. Safe only where the input is not needed again and the output
    has one consumer whose backward hands over a fresh gradient (the merged read-out's last product).
    """

    @staticmethod
    def forward(ctx, pre: Tensor) -> Tensor:
        post = pre.clamp_min_(0.0)
        ctx.mark_dirty(pre)
        ctx.save_for_backward(post)
        return post

    @staticmethod
    def backward(ctx, grad_post: Tensor) -> Tensor:
        (post,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward.grad_input(grad_post, post, 0.0, grad_input=grad_post)


class _RowsTimesMatrix(torch.autograd.Function):
    """``torch.bmm(rows, matrix)`` whose matrix gradient, a sum over the rows, is taken member by member
    on a CPU.

    For one member the BLAS may split that sum over the rows between threads, for a stack it splits the
    members; the two orders round differently, and a member must not depend on its stack-mates (one
    product per member orders the sum alike for any M). A GPU keeps the single batched product.
    """

    @staticmethod
    def forward(ctx, rows: Float[Tensor, "M N k"], matrix: Float[Tensor, "M k n"]) -> Float[Tensor, "M N n"]:
        ctx.save_for_backward(rows, matrix)
        return torch.bmm(rows, matrix)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        rows, matrix = ctx.saved_tensors
        grad_rows = torch.bmm(grad, matrix.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_matrix = None
        if ctx.needs_input_grad[1] and grad.device.type != "cpu":
            grad_matrix = torch.bmm(rows.transpose(1, 2), grad)
        elif ctx.needs_input_grad[1]:
            # A narrow matrix (the read-outs into d_vocab_out) is its gradient's transpose: the BLAS
            # sums long rows faster into the short side (Intel, 2 threads: 512 x 59 in 0.67 ms, not 1.23).
            narrow = matrix.shape[2] < matrix.shape[1]
            grad_matrix = torch.stack([torch.mm(grad[m].t(), rows[m]).t() if narrow else torch.mm(rows[m].t(), grad[m])
                                       for m in range(rows.shape[0])])
        return grad_rows, grad_matrix


def _rows_times(rows: Float[Tensor, "M N k"], matrix: Float[Tensor, "M k n"]) -> Float[Tensor, "M N n"]:
    """Each member's rows times its matrix (``_RowsTimesMatrix``)."""
    return _RowsTimesMatrix.apply(rows, matrix)


class _MixValues(torch.autograd.Function):
    """Each head's values mixed by its attention: ``z[..., h, :] = sum_i pattern[..., i, h] v[..., i, h, :]``.

    The same as ``(pattern[..., None] * v).sum(2)``, without the (rows, positions, heads, d_head) product
    in the forward and with its two gradients written directly (on an [N23] step's shapes, two threads,
    forward and backward alone: 3.0 ms through autograd's broadcast backward of that expression, 1.0 here).
    """

    @staticmethod
    def forward(ctx, pattern: Float[Tensor, "M N i h"], v: Float[Tensor, "M N i h e"]) -> Float[Tensor, "M N h e"]:
        ctx.save_for_backward(pattern, v)
        z = pattern[:, :, 0, :, None] * v[:, :, 0]
        for i in range(1, v.shape[2]):
            z.addcmul_(pattern[:, :, i, :, None], v[:, :, i])
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, Tensor]:
        pattern, v = ctx.saved_tensors
        grad_pattern = (grad_z[:, :, None] * v).sum(-1)
        grad_v = grad_z[:, :, None] * pattern[..., None]
        return grad_pattern, grad_v


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": _gelu_new, "gelu_fast": _gelu_fast, "silu": F.silu}
"""The MLP activations, the same functions as the HookedTransformer's."""


@dataclass(frozen=True)
class Architecture:
    """The shapes every member of a stack shares (the HookedTransformerConfig fields the forward needs).

    >>> Architecture(1, 128, 4, 32, 512, "relu", 114, 113, 3, True).parameter_shapes()["blocks.0.attn.W_Q"]
    (4, 128, 32)
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    act_fn: str
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    causal: bool

    def __post_init__(self):
        if self.act_fn not in ACTIVATIONS:
            raise GrokscopeError(f"act_fn {self.act_fn!r}", expected=f"one of {sorted(ACTIVATIONS)}",
                                 where="engine.Architecture")

    @classmethod
    def from_config(cls, cfg) -> "Architecture":
        """The architecture of a HookedTransformerConfig (no LayerNorm, learned positions, with MLPs)."""
        if cfg.normalization_type is not None or cfg.positional_embedding_type != "standard" or cfg.attn_only:
            raise GrokscopeError(
                f"normalization_type={cfg.normalization_type}, positional_embedding_type="
                f"{cfg.positional_embedding_type}, attn_only={cfg.attn_only}",
                expected="a model without LayerNorm, with learned positions and MLPs", where="engine")
        return cls(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, str(cfg.act_fn).lower(),
                   cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, cfg.attention_dir == "causal")

    @property
    def attn_scale(self) -> float:
        """Attention scores are divided by sqrt(d_head), as in the HookedTransformer."""
        return math.sqrt(self.d_head)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """HookedTransformer parameter names and their shapes (one model, no model axis)."""
        d, h, e, f = self.d_model, self.n_heads, self.d_head, self.d_mlp
        shapes = {"embed.W_E": (self.d_vocab, d), "pos_embed.W_pos": (self.n_ctx, d)}
        for layer in range(self.n_layers):
            attn, mlp = f"blocks.{layer}.attn", f"blocks.{layer}.mlp"
            shapes.update({f"{attn}.W_Q": (h, d, e), f"{attn}.W_K": (h, d, e), f"{attn}.W_V": (h, d, e),
                           f"{attn}.W_O": (h, e, d), f"{attn}.b_Q": (h, e), f"{attn}.b_K": (h, e),
                           f"{attn}.b_V": (h, e), f"{attn}.b_O": (d,), f"{mlp}.W_in": (d, f),
                           f"{mlp}.b_in": (f,), f"{mlp}.W_out": (f, d), f"{mlp}.b_out": (d,)})
        shapes.update({"unembed.W_U": (d, self.d_vocab_out), "unembed.b_U": (self.d_vocab_out,)})
        return shapes

    def n_parameters(self, trainable_only: bool = False) -> int:
        """Scalars per member (all, or only those training updates)."""
        return sum(math.prod(shape) for name, shape in self.parameter_shapes().items()
                   if not (trainable_only and name.endswith(FROZEN_PARAMETERS)))


def stack_parameters(state_dicts: list[dict[str, Tensor]], device: str | torch.device = "cpu"
                     ) -> dict[str, Tensor]:
    """Stack M state dicts (HookedTransformer names) along a new leading model axis, float32, on ``device``."""
    names = list(state_dicts[0])
    for i, state in enumerate(state_dicts[1:], start=1):
        if list(state) != names:
            raise GrokscopeError(f"member {i} with parameters {sorted(set(state) ^ set(names))[:4]} differing",
                                 expected="the same parameter names in every member", where="stack_parameters")
    return {name: torch.stack([state[name].detach().float() for state in state_dicts]).to(device)
            for name in names}


def member_state_dict(params: dict[str, Tensor], member: int) -> dict[str, Tensor]:
    """Member ``member``'s parameters as a contiguous CPU HookedTransformer state dict."""
    return {name: tensor[member].detach().to("cpu", copy=True).contiguous() for name, tensor in params.items()}


# ----- forward ---------------------------------------------------------------------------------

NARROW_ROWS = 16
"""Tables with fewer numbers than this per row take their gradient through ``_NarrowRowsSelect``."""


class _NarrowRowsSelect(torch.autograd.Function):
    """``table.index_select(0, index)`` whose gradient is one flat scatter-add, for tables with narrow rows.

    Autograd's index_add over rows of a few numbers is slow once it runs in parallel (an [N23] step's
    score gradient, 11,490 rows of 4: 0.72 ms on two threads; one flat scatter-add: 0.03 ms). The flat
    scatter-add adds in the order of ``index``, so a member's sums do not depend on its stack-mates.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Int[Tensor, "K"]) -> Tensor:
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        width = math.prod(ctx.table_shape[1:])
        positions = (index[:, None] * width + torch.arange(width, device=index.device)).reshape(-1)
        flat = grad.new_zeros(math.prod(ctx.table_shape)).scatter_add_(0, positions, grad.reshape(-1))
        return flat.view(ctx.table_shape), None


def _gather_rows(table: Tensor, tokens: Tensor) -> Tensor:
    """``table[m, tokens[m, n]]`` for a table (M, V, ...) and tokens (M, N): shape (M, N, ...)."""
    n_models, vocab = table.shape[:2]
    offsets = torch.arange(n_models, device=tokens.device)[:, None] * vocab
    flat = table.reshape(n_models * vocab, *table.shape[2:])
    index = (tokens + offsets).reshape(-1)
    if math.prod(table.shape[2:]) < NARROW_ROWS and flat.requires_grad:
        rows = _NarrowRowsSelect.apply(flat, index)
    else:
        rows = flat.index_select(0, index)
    return rows.reshape(*tokens.shape, *table.shape[2:])


def _mlp_and_unembed(params: dict[str, Tensor], arch: Architecture, layer: int,
                     resid: Float[Tensor, "M N d_model"]) -> Float[Tensor, "M N d_vocab_out"]:
    mlp = f"blocks.{layer}.mlp"
    pre = _rows_times(resid, params[f"{mlp}.W_in"]) + params[f"{mlp}.b_in"][:, None]
    post = ACTIVATIONS[arch.act_fn](pre)
    resid = resid + (_rows_times(post, params[f"{mlp}.W_out"]) + params[f"{mlp}.b_out"][:, None])
    return _rows_times(resid, params["unembed.W_U"]) + params["unembed.b_U"][:, None]


def _mix(pattern: Tensor, alpha: Tensor) -> Tensor:
    """The [Z23] attention rate: alpha * pattern + (1 - alpha), alpha per member (M,)."""
    shape = (-1,) + (1,) * (pattern.dim() - 1)
    return alpha.view(shape) * pattern + (1.0 - alpha.view(shape))


def _head_matrix(weight: Float[Tensor, "M h d e"]) -> Float[Tensor, "M d he"]:
    """W_Q, W_K or W_V of every head side by side, so that one matrix product serves all heads."""
    return weight.permute(0, 2, 1, 3).flatten(2)


def fused_readout(arch: Architecture) -> bool:
    """Whether merging the maps around the activation saves products (module docstring): per row
    d_model d_mlp + d_model d_vocab_out + d_mlp d_vocab_out multiply-adds against
    d_model^2 + 2 d_model d_mlp + d_model d_vocab_out.

    >>> fused_readout(Architecture(1, 128, 4, 32, 512, "relu", 114, 113, 3, True))  # [N23]
    True
    >>> fused_readout(Architecture(1, 128, 4, 32, 512, "relu", 212, 211, 3, True))  # p = 211: 4 products
    False
    """
    d, f, c = arch.d_model, arch.d_mlp, arch.d_vocab_out
    return arch.n_heads * arch.d_head * (f + c) + f * c < d * d + 2 * d * f + d * c


def _one_layer_logits(params: dict[str, Tensor], arch: Architecture, tokens: Tensor, alpha: Tensor,
                      last_token: int | None = None) -> Tensor:
    """Read-out logits of one-layer members from per-token tables (module docstring).

    ``last_token``, when every row's last token is that one (the [N23] ``=``), lets the read-out
    position's tables be single rows broadcast over the batch instead of gathered per row.
    """
    attn, mlp = "blocks.0.attn", "blocks.0.mlp"
    n_models, n_rows, n_pos = tokens.shape
    heads, d_head = arch.n_heads, arch.d_head
    # resid[m, i, v] = W_E[v] + W_pos[i]: the residual stream at position i when the token there is v.
    resid = params["embed.W_E"][:, None] + params["pos_embed.W_pos"][:, :n_pos, None]
    vocab = resid.shape[2]
    flat = resid.flatten(1, 2)                                                          # M (i v) d
    # Tables span the whole vocabulary even when one last token is used: BLAS may round a one-row
    # product differently for one member and for a stack, and members must not depend on their stack-mates.
    last = resid[:, -1]                                                                 # M u d
    q_table = torch.bmm(last, _head_matrix(params[f"{attn}.W_Q"])) + params[f"{attn}.b_Q"].flatten(1)[:, None]
    k_table = torch.bmm(flat, _head_matrix(params[f"{attn}.W_K"])) + params[f"{attn}.b_K"].flatten(1)[:, None]
    v_table = torch.bmm(flat, _head_matrix(params[f"{attn}.W_V"])) + params[f"{attn}.b_V"].flatten(1)[:, None]
    # The query depends on the last token u only and a key on (i, t_i) only, so the scores form a table
    # score[u, (i v), h] = q[u, h] . k[(i v), h] / sqrt(d_head), gathered per row like the values.
    # Operands are laid out the same for any M, so that BLAS rounds a member alike alone and in a stack;
    # a single query row goes elementwise (a one-row product, as above).
    keys = k_table.view(n_models, 1, n_pos * vocab, heads, d_head)
    if last_token is None:
        queries = q_table.view(n_models, vocab, heads, d_head).transpose(1, 2).contiguous()      # M h u e
        score_table = torch.matmul(queries, keys[:, 0].permute(0, 2, 3, 1).contiguous()).permute(0, 2, 3, 1)
    else:
        query = q_table[:, last_token].view(n_models, 1, 1, heads, d_head)
        score_table = (query * keys).sum(-1)
    score_table = score_table / arch.attn_scale                                          # M u (i v) h
    # Position i's rows of the (position, token) tables are indexed by i * vocab + token.
    position_tokens = tokens + torch.arange(n_pos, device=tokens.device) * vocab        # M N i
    last_tokens = tokens[..., -1]
    score_rows = position_tokens if last_token is not None else position_tokens + last_tokens[..., None] * (n_pos * vocab)
    scores = _gather_rows(score_table.reshape(n_models, -1, heads), score_rows.flatten(1))
    pattern = _mix(scores.view(n_models, n_rows, n_pos, heads).softmax(dim=2), alpha)   # M N i h
    v = _gather_rows(v_table, position_tokens.flatten(1)).view(n_models, n_rows, n_pos, heads, d_head)
    # With n_pos values of d_head each, the mix over positions is cheaper elementwise than as matmuls.
    z = _MixValues.apply(pattern, v).flatten(2)                                         # M N (h e)
    w_o = params[f"{attn}.W_O"].flatten(1, 2)                                           # M (h e) d

    def per_row(table: Tensor) -> Tensor:
        """A table over the last token, as rows of the batch (broadcast when that token is fixed)."""
        return table[:, last_token:last_token + 1] if last_token is not None else _gather_rows(table, last_tokens)

    if not fused_readout(arch):
        resid_mid = per_row(last) + (_rows_times(z, w_o) + params[f"{attn}.b_O"][:, None])
        return _mlp_and_unembed(params, arch, 0, resid_mid)
    W_in, W_U = params[f"{mlp}.W_in"], params["unembed.W_U"]
    last = last + params[f"{attn}.b_O"][:, None]                                        # M u d
    in_table = torch.baddbmm(params[f"{mlp}.b_in"][:, None], last, W_in)                # M u d_mlp
    # b_out joins the table's rows rather than a one-row product (as above).
    out_table = torch.baddbmm(params["unembed.b_U"][:, None], last + params[f"{mlp}.b_out"][:, None], W_U)
    pre = _rows_times(z, torch.bmm(w_o, W_in)).add_(per_row(in_table))
    post = _ReluOverwriting.apply(pre) if arch.act_fn == "relu" else ACTIVATIONS[arch.act_fn](pre)
    direct = _rows_times(z, torch.bmm(w_o, W_U)).add_(per_row(out_table))
    return _rows_times(post, torch.bmm(params[f"{mlp}.W_out"], W_U)).add_(direct)


def _deep_logits(params: dict[str, Tensor], arch: Architecture, tokens: Tensor, alpha: Tensor) -> Tensor:
    """Read-out logits of members with any number of layers: the plain stacked forward."""
    n_models, n_rows, n_pos = tokens.shape
    resid = _gather_rows(params["embed.W_E"], tokens.flatten(1)).view(n_models, n_rows, n_pos, arch.d_model)
    resid = resid + params["pos_embed.W_pos"][:, None, :n_pos]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=tokens.device).tril()
    for layer in range(arch.n_layers):
        attn, last = f"blocks.{layer}.attn", layer == arch.n_layers - 1
        queries_from = resid[:, :, -1:] if last else resid
        q = torch.einsum("mnqd,mhde->mnhqe", queries_from, params[f"{attn}.W_Q"]) + params[f"{attn}.b_Q"][:, None, :, None]
        k = torch.einsum("mnkd,mhde->mnhke", resid, params[f"{attn}.W_K"]) + params[f"{attn}.b_K"][:, None, :, None]
        v = torch.einsum("mnkd,mhde->mnhke", resid, params[f"{attn}.W_V"]) + params[f"{attn}.b_V"][:, None, :, None]
        scores = q @ k.transpose(-1, -2) / arch.attn_scale
        if arch.causal and not last:
            scores = scores.masked_fill(~causal, float("-inf"))
        pattern = _mix(scores.softmax(dim=-1), alpha)
        z = pattern @ v                                                                  # M N h q e
        attn_out = torch.einsum("mnhqe,mhed->mnqd", z, params[f"{attn}.W_O"]) + params[f"{attn}.b_O"][:, None, None]
        if last:
            return _mlp_and_unembed(params, arch, layer, resid[:, :, -1] + attn_out[:, :, 0])
        resid = resid + attn_out
        mlp = f"blocks.{layer}.mlp"
        pre = torch.einsum("mnqd,mdf->mnqf", resid, params[f"{mlp}.W_in"]) + params[f"{mlp}.b_in"][:, None, None]
        post = ACTIVATIONS[arch.act_fn](pre)
        resid = resid + torch.einsum("mnqf,mfd->mnqd", post, params[f"{mlp}.W_out"]) + params[f"{mlp}.b_out"][:, None, None]
    raise AssertionError("unreachable: the last layer returns")


def stacked_logits(params: dict[str, Tensor], arch: Architecture, tokens: Int[Tensor, "M N pos"],
                   alpha: Float[Tensor, "M"], last_token: int | None = None) -> Float[Tensor, "M N d_vocab_out"]:
    """Read-out logits of every member on its own rows: ``logits[m] == final_logits(model_m, tokens[m])``.

    ``alpha`` is each member's attention rate (1 for standard attention); ``last_token`` says that
    every row ends in that token (``MemberRows.last_token``), which one-layer members use to skip gathers.
    """
    if arch.n_layers == 1:
        return _one_layer_logits(params, arch, tokens, alpha, last_token)
    return _deep_logits(params, arch, tokens, alpha)


class _Float64WithoutSubnormalGradients(torch.autograd.Function):
    """``logits.double()`` whose gradient comes back to float32 with subnormal entries set to zero.

    Once a model has memorised, some wrong classes' probabilities fall below float32's smallest normal
    number (1.2e-38; 0.7% of the [N23] logits' gradient after 6,000 epochs), and every product that reads
    a subnormal runs slowly on a CPU: the [N23] step took 1.8x as long on two threads. Zero changes each
    such entry by less than 1.2e-38, far below the rounding of the weight gradients it feeds.
    """

    @staticmethod
    def forward(ctx, logits: Tensor) -> Tensor:
        return logits.double()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.float()
        return grad.masked_fill_(grad.abs() < torch.finfo(torch.float32).tiny, 0.0)


def member_nll(logits: Float[Tensor, "M N C"], labels: Int[Tensor, "M N"]) -> Float[Tensor, "M N"]:
    """Per-row float64 negative log-likelihood (log-softmax in float64: losses reach 1e-8); the gradient
    returns to the float32 logits without subnormal numbers (``_Float64WithoutSubnormalGradients``)."""
    log_probs = _Float64WithoutSubnormalGradients.apply(logits).log_softmax(dim=-1)
    return -log_probs.gather(-1, labels[..., None])[..., 0]


# ----- rows ------------------------------------------------------------------------------------

@dataclass
class MemberRows:
    """Each member's rows of the grid, padded to one length: tokens, labels and a validity mask.

    Padding rows repeat row 0 of the grid and carry zero weight, so they change no loss and no gradient.
    ``last_token`` is the token every row ends in, where there is one (the [N23] ``=``), else None.
    """

    tokens: Int[Tensor, "M N pos"]
    labels: Int[Tensor, "M N"]
    valid: Bool[Tensor, "M N"]
    counts: Int[Tensor, "M"]
    last_token: int | None = None

    @classmethod
    def from_indices(cls, grid_tokens: Tensor, grid_labels: Tensor, indices: list[Tensor],
                     device: str | torch.device = "cpu") -> "MemberRows":
        """Rows ``indices[m]`` of the lexicographic grid for member m."""
        longest = max(max(len(rows) for rows in indices), 1)
        padded = torch.zeros(len(indices), longest, dtype=torch.long)
        valid = torch.zeros(len(indices), longest, dtype=torch.bool)
        for m, rows in enumerate(indices):
            padded[m, :len(rows)] = rows
            valid[m, :len(rows)] = True
        counts = valid.sum(1)
        tokens = grid_tokens[padded]
        last = tokens[..., -1].unique()  # on the host, once: the step itself never synchronises
        return cls(tokens.to(device), grid_labels[padded].to(device), valid.to(device), counts.to(device),
                   int(last[0]) if len(last) == 1 else None)

    def mean(self, values: Float[Tensor, "M N"]) -> Float[Tensor, "M"]:
        """Each member's mean of ``values`` over its own rows (NaN for a member with none)."""
        masked = torch.where(self.valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
        return masked.sum(1) / self.counts.to(values.dtype)


def micro_batch_size(n_rows: int, device: str | torch.device) -> int:
    """Members per forward/backward pass: the whole stack on a GPU; on a CPU about 4,096 rows at a time.

    On a CPU a stack of large members gains nothing from one big pass (the matrix products are already
    large) but loses the caches, so members run a few at a time; small members still share passes.

    >>> micro_batch_size(3830, "cpu"), micro_batch_size(264, "cpu"), micro_batch_size(3830, "cuda") > 10**6
    (1, 15, True)
    """
    if torch.device(device).type != "cpu":
        return 1 << 30
    return max(1, 4096 // max(n_rows, 1))


def evaluation_rows_per_pass(n_members: int, n_rows: int, device: str | torch.device) -> int:
    """Rows per forward pass when no gradient is needed: all on a GPU; on a CPU the same ~4,096 rows
    per pass as ``micro_batch_size``, split evenly (an [N23] member's 8,939 test rows go as three parts).

    Large passes cost more per row on a CPU than a few smaller ones (their buffers leave the caches and
    are fresh memory each time), and rows without gradients are independent, so they may go in parts.

    >>> evaluation_rows_per_pass(1, 8939, "cpu"), evaluation_rows_per_pass(15, 265, "cpu")
    (2980, 265)
    """
    if torch.device(device).type != "cpu":
        return max(n_rows, 1)
    parts = max(1, math.ceil(n_members * n_rows / 4096))
    return max(1, math.ceil(n_rows / parts))


@dataclass
class StepValues:
    """What one pass over the train rows gives: per-member mean losses, accuracies and gradients."""

    losses: Float[Tensor, "M"]
    accuracy: Float[Tensor, "M"] | None
    grads: dict[str, Tensor] | None
    logits: Float[Tensor, "M N d_vocab_out"] | None = None


def train_pass(params: dict[str, Tensor], trainable: list[str], arch: Architecture, rows: MemberRows,
               alpha: Float[Tensor, "M"], *, micro_batch: int, gradients: bool = True,
               accuracy: bool = False, keep_logits: bool = False, rows_per_pass: int | None = None) -> StepValues:
    """Losses (float64 mean cross-entropy per member), optionally accuracies, and gradients of their sum.

    Members go through in groups of ``micro_batch``; each member's values depend on its own parameters
    only, so grouping changes nothing but the order of float32 sums. Without gradients, each group's
    rows may go in parts of ``rows_per_pass`` (``evaluation_rows_per_pass``); the float64 means then
    add the same rows in another order.
    """
    n_models, n_rows = rows.tokens.shape[:2]
    losses, correct, kept = [], [], []
    grads = {name: torch.empty_like(params[name]) for name in trainable} if gradients else None
    step_rows = n_rows if gradients or rows_per_pass is None else max(1, rows_per_pass)
    for begin in range(0, n_models, micro_batch):
        end = min(begin + micro_batch, n_models)
        part = {name: tensor[begin:end] for name, tensor in params.items()}
        if gradients:
            for name in trainable:
                part[name] = part[name].detach().requires_grad_(True)
        counts = rows.counts[begin:end].double()
        nll_sum, hits, group_logits, members = None, 0.0, [], slice(begin, end)
        for first in range(0, n_rows, step_rows):
            chunk = slice(first, first + step_rows)
            tokens, labels, valid = rows.tokens[members, chunk], rows.labels[members, chunk], rows.valid[members, chunk]
            with torch.set_grad_enabled(gradients):
                logits = stacked_logits(part, arch, tokens, alpha[begin:end], rows.last_token)
                part_sum = torch.where(valid, member_nll(logits, labels), 0.0).sum(1)
                nll_sum = part_sum if nll_sum is None else nll_sum + part_sum
            if keep_logits:
                group_logits.append(logits.detach())
            if accuracy:
                with torch.no_grad():
                    hits = hits + (valid & (logits.argmax(-1) == labels)).sum(1).double()
        loss = nll_sum / counts
        if gradients:
            for name, grad in zip(trainable, torch.autograd.grad(loss.sum(), [part[name] for name in trainable])):
                grads[name][begin:end] = grad
        losses.append(loss.detach())
        if keep_logits:
            kept.append(torch.cat(group_logits, dim=1))
        if accuracy:
            correct.append(hits / counts)
    return StepValues(torch.cat(losses), torch.cat(correct) if accuracy else None, grads,
                      torch.cat(kept) if keep_logits else None)


# ----- optimiser -------------------------------------------------------------------------------

@dataclass
class MemberSettings:
    """Per-member hyperparameters as (M,) float64 tensors: attention rate, AdamW and Grokfast settings.

    ``grokfast_lamb`` is 0 for members without Grokfast (then their gradients pass unchanged).
    """

    alpha: Tensor
    lr: Tensor
    weight_decay: Tensor
    beta1: Tensor
    beta2: Tensor
    grokfast_alpha: Tensor
    grokfast_lamb: Tensor

    @classmethod
    def from_values(cls, **columns: list[float]) -> "MemberSettings":
        return cls(**{name: torch.tensor(values, dtype=torch.float64) for name, values in columns.items()})

    def to(self, device: str | torch.device) -> "MemberSettings":
        """The same settings on ``device`` (still float64), so that updates need no host transfers."""
        return MemberSettings(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


def _per_member(values: Tensor, like: Tensor) -> Tensor:
    """(M,) float64 values as ``like``'s dtype, shaped (M, 1, ..., 1) to broadcast against it."""
    return values.to(dtype=like.dtype).view((-1,) + (1,) * (like.dim() - 1))


class StackedAdamW:
    """AdamW for stacked parameters, each member with its own lr, weight decay and betas.

    Applies torch.optim.AdamW's update per member (decoupled decay first, then the moments, then the
    bias-corrected step). On a CPU it is torch's fused AdamW kernel, called on each member's own slices
    (one call per distinct setting), which reads and writes each number once: the unfused update runs
    some ten passes over the state, which leave the caches once a stack outgrows them (eight [N23]
    members: 6.7 to 29.5 ms an update, as the allocator serves its temporaries; fused 1.2). On a GPU,
    and with ``fused=False``, the update is a few elementwise operations over the whole stack with
    per-member scalars, computed in double precision on the parameters' device, as torch.optim.AdamW
    does (no host transfer per step).
    """

    def __init__(self, settings: MemberSettings, eps: float = ADAM_EPS, device: str | torch.device = "cpu",
                 fused: bool | None = None):
        self.settings, self.eps = settings.to(device), eps
        self.fused = torch.device(device).type == "cpu" if fused is None else fused
        # Members sharing lr, decay and betas share one fused call; a member's own numbers do not
        # depend on which others join it (the kernel is elementwise, and each member's slice is its own).
        groups: dict[tuple[float, ...], list[int]] = {}
        columns = (settings.lr, settings.weight_decay, settings.beta1, settings.beta2)
        for member, key in enumerate(zip(*(column.tolist() for column in columns))):
            groups.setdefault(key, []).append(member)
        self.groups = groups
        self.step_count = 0
        self.exp_avg: dict[str, Tensor] = {}
        self.exp_avg_sq: dict[str, Tensor] = {}

    def init_state(self, params: dict[str, Tensor]) -> None:
        """Zero moments for the parameters that have none yet (a fresh run's step 0)."""
        for name, param in params.items():
            if name not in self.exp_avg:
                self.exp_avg[name] = torch.zeros_like(param, requires_grad=False)
                self.exp_avg_sq[name] = torch.zeros_like(param, requires_grad=False)

    @torch.no_grad()
    def step(self, params: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
        self.step_count += 1
        self.init_state({name: params[name] for name in grads})
        if self.fused:
            self._fused_step(params, grads)
            return
        s, t = self.settings, self.step_count
        decay = 1.0 - s.lr * s.weight_decay
        step_size = s.lr / (1.0 - s.beta1 ** t)
        bias_correction2_sqrt = (1.0 - s.beta2 ** t).sqrt()
        for name, grad in grads.items():
            param = params[name]
            exp_avg, exp_avg_sq = self.exp_avg[name], self.exp_avg_sq[name]
            param.mul_(_per_member(decay, param))
            exp_avg.lerp_(grad, _per_member(1.0 - s.beta1, param))
            exp_avg_sq.mul_(_per_member(s.beta2, param)).addcmul_(grad, grad * _per_member(1.0 - s.beta2, param))
            denom = (exp_avg_sq.sqrt() / _per_member(bias_correction2_sqrt, param)).add_(self.eps)
            param.sub_(exp_avg / denom * _per_member(step_size, param))

    def _fused_step(self, params: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
        for (lr, weight_decay, beta1, beta2), members in self.groups.items():
            slices = [(name, m) for m in members for name in grads]
            # torch's functional AdamW adds one to each step count before the update uses it.
            steps = list(torch.full((len(slices),), float(self.step_count - 1), device=params[slices[0][0]].device)
                         .unbind(0))
            functional_adamw(
                [params[name][m] for name, m in slices], [grads[name][m] for name, m in slices],
                [self.exp_avg[name][m] for name, m in slices], [self.exp_avg_sq[name][m] for name, m in slices],
                [], steps, fused=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=lr,
                weight_decay=weight_decay, eps=self.eps, maximize=False)


class StackedGrokfast:
    """Grokfast-EMA [L24] per member: mu_0 = g_0, mu_t = a mu_{t-1} + (1 - a) g_t, g <- g + lam mu_t."""

    def __init__(self, settings: MemberSettings, device: str | torch.device = "cpu"):
        self.settings = settings.to(device)
        self.mu: dict[str, Tensor] = {}

    @torch.no_grad()
    def apply(self, grads: dict[str, Tensor]) -> None:
        s = self.settings
        for name, grad in grads.items():
            if name in self.mu:
                mu = self.mu[name]
                mu.mul_(_per_member(s.grokfast_alpha, grad)).add_(grad * _per_member(1.0 - s.grokfast_alpha, grad))
            else:
                self.mu[name] = mu = grad.clone()
            grad.add_(mu * _per_member(s.grokfast_lamb, grad))


# ----- memory ------------------------------------------------------------------------------------

def state_bytes_per_member(arch: Architecture, grokfast: bool) -> int:
    """Parameters, gradients and two AdamW moments (and the Grokfast EMA) of one member, float32 bytes."""
    return 4 * arch.n_parameters() * (4 + (1 if grokfast else 0))


def activation_bytes_per_member(arch: Architecture, n_rows: int) -> int:
    """An upper estimate of the activations autograd keeps for one member's pass over ``n_rows`` rows.

    Gathered queries, keys and values, attention scores, the residual stream, MLP pre- and
    post-activations, float32 logits and their float64 log-softmax and gradient.
    """
    per_row = (arch.n_ctx * arch.n_heads * (3 * arch.d_head + 2) + 3 * arch.d_model * arch.n_ctx
               + 3 * arch.d_mlp + arch.d_vocab_out * 5)
    if arch.n_layers > 1:
        per_row += (arch.n_layers - 1) * arch.n_ctx * (3 * arch.d_mlp + 8 * arch.d_model)
    return 4 * n_rows * per_row


def available_memory(device: str | torch.device) -> int:
    """Bytes free for new tensors on ``device``: free GPU memory, or the machine's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def members_per_chunk(n_members: int, member_bytes: int, budget_bytes: int, fixed_bytes: int = 0) -> int:
    """How many members one stack may hold within ``budget_bytes`` (beyond ``fixed_bytes`` it needs anyway).

    Refuses, naming the limit, when not even one member fits.

    >>> members_per_chunk(64, 100, 1000)
    10
    >>> members_per_chunk(4, 100, 10_000)
    4
    """
    budget_bytes -= fixed_bytes
    if member_bytes > budget_bytes:
        raise GrokscopeError(f"one member needing about {member_bytes / 2**20:.0f} MiB",
                             expected=f"at most the {budget_bytes / 2**20:.0f} MiB this device has free",
                             where="training engine")
    return max(1, min(n_members, budget_bytes // member_bytes))
