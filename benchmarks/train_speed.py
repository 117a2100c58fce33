"""Seconds per full-batch training epoch: grokscope's step against two references, in one run.

The network is [N23]'s (p = 113, 30% train: 3830 rows; 1 layer, d_model 128, 4 heads, d_mlp 512):

- grokscope: ``models.final_logits`` on the HookedTransformer (what ``grokscope.training`` runs);
- plain: a straightforward ``torch.nn.Module`` of the same network written below, with the full
  forward at every position and the logits of the last one;
- hooked: HookedTransformer's own forward, ``model(tokens)[:, -1]``.

Each epoch is forward, float64 cross-entropy, backward and an AdamW step. The three variants take
turns (round-robin, ``--repeats`` rounds of ``--steps`` epochs each) so that a change in machine
load hits all of them alike; the median per-epoch time of each is reported with its ratio to plain.
All three start from the same weights and are checked to compute the same logits first.

    python benchmarks/train_speed.py [--steps 20] [--repeats 5] [--threads N]
"""

import argparse
import statistics
import time

import torch
from torch import nn

from grokscope.models import cross_entropy_f64, final_logits
from grokscope.training import FROZEN_PARAMETERS, TrainConfig


class PlainTransformer(nn.Module):
    """One-layer attention + MLP transformer without LayerNorm, written out directly ([N23] layout)."""

    def __init__(self, d_vocab: int, d_vocab_out: int, n_ctx: int, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.embed = nn.Parameter(torch.zeros(d_vocab, d_model))
        self.pos = nn.Parameter(torch.zeros(n_ctx, d_model))
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, d_vocab_out, bias=False)
        self.register_buffer("causal", torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, n_pos = tokens.shape
        x = self.embed[tokens] + self.pos[:n_pos]

        def heads(t):
            return t.view(batch, n_pos, self.n_heads, self.d_head).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = (q @ k.transpose(-1, -2)) / self.d_head ** 0.5
        scores = scores.masked_fill(~self.causal[:n_pos, :n_pos], float("-inf"))
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, n_pos, -1)
        x = x + self.out(z)
        x = x + self.mlp_out(torch.relu(self.mlp_in(x)))
        return self.unembed(x)[:, -1]

    @torch.no_grad()
    def copy_from(self, model) -> "PlainTransformer":
        """Take the weights of a one-layer HookedTransformer (TransformerLens layouts transposed)."""
        attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
        self.embed.copy_(model.W_E)
        self.pos.copy_(model.W_pos)
        for linear, weight in ((self.query, attn.W_Q), (self.key, attn.W_K), (self.value, attn.W_V)):
            linear.weight.copy_(weight.permute(0, 2, 1).reshape(-1, weight.shape[1]))  # (h*e, d)
        self.out.weight.copy_(attn.W_O.reshape(-1, attn.W_O.shape[-1]).T)
        self.mlp_in.weight.copy_(mlp.W_in.T)
        self.mlp_in.bias.copy_(mlp.b_in)
        self.mlp_out.weight.copy_(mlp.W_out.T)
        self.mlp_out.bias.copy_(mlp.b_out)
        self.unembed.weight.copy_(model.W_U.T)
        return self


def _trainable(module) -> list:
    return [p for name, p in module.named_parameters() if not name.endswith(FROZEN_PARAMETERS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="epochs per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig.preset("nanda")
    task, train_idx = config.task, config.train_indices()
    tokens, labels = task.tokens()[train_idx], task.labels()[train_idx]

    hooked_for_fast, hooked = config.init_model(), config.init_model()
    cfg = hooked.cfg
    plain = PlainTransformer(cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, cfg.d_model, cfg.n_heads, cfg.d_mlp)
    plain.copy_from(hooked)
    with torch.no_grad():
        reference = hooked(tokens)[:, -1]
        for name, logits in (("grokscope", final_logits(hooked_for_fast, tokens)), ("plain", plain(tokens))):
            error = (logits - reference).abs().max().item()
            assert error < 1e-4, f"{name} differs from HookedTransformer by {error}"

    variants = {
        "grokscope": (hooked_for_fast, lambda: final_logits(hooked_for_fast, tokens)),
        "plain": (plain, lambda: plain(tokens)),
        "hooked": (hooked, lambda: hooked(tokens)[:, -1]),
    }
    optimizers = {name: torch.optim.AdamW(_trainable(module), lr=config.lr, betas=config.betas,
                                          weight_decay=config.weight_decay)
                  for name, (module, _) in variants.items()}

    def epoch(name):
        loss = cross_entropy_f64(variants[name][1](), labels)
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    for name in variants:  # warm-up
        for _ in range(3):
            epoch(name)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            start = time.perf_counter()
            for _ in range(args.steps):
                epoch(name)
            times[name].append((time.perf_counter() - start) / args.steps)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"p = {task.p}, {len(train_idx)} train rows, d_model {cfg.d_model}, d_mlp {cfg.d_mlp}; "
          f"{torch.get_num_threads()} torch threads; {args.repeats} rounds x {args.steps} epochs each")
    print(f"{'variant':<10} {'s/epoch (median)':>17} {'min':>9} {'max':>9} {'/ plain':>8}")
    for name, values in times.items():
        print(f"{name:<10} {median[name]:>17.4f} {min(values):>9.4f} {max(values):>9.4f} "
              f"{median[name] / median['plain']:>8.2f}")
    ratio = median["grokscope"] / median["plain"]
    print(f"grokscope / plain = {ratio:.2f} (goal <= 1.2): {'ok' if ratio <= 1.2 else 'SLOWER THAN GOAL'}")
    print(f"grokscope / hooked = {median['grokscope'] / median['hooked']:.2f}")


if __name__ == "__main__":
    main()
