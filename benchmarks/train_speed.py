"""Seconds per model-epoch of the training engine, as ratios to this machine's own floor, in one run.

The floor is the matrix products of a straightforward read-out-only step of the same network ([N23]:
p = 113, 30% train, 3,830 rows; [Z23]: p = 59, 80% train, 2,785 rows; 1 layer, d_model 128, 4 heads,
d_mlp 512): the query at the last position, keys and values at every position, W_O, W_in, W_out and
W_U, each forward and its two backward products. They are timed here as bare ``torch.mm`` calls, so
the floor is what this machine's BLAS does with those shapes right now, not a datasheet figure.

Variants, each a full training epoch (forward, float64 cross-entropy, backward, AdamW update):

- ``hooked``: the HookedTransformer read-out (``models.final_logits``) with ``torch.optim.AdamW``,
  the step grokscope trained with before the engine;
- ``engine M=k``: ``grokscope.engine`` on a stack of k members (seconds per model-epoch);
- ``engine M=1 late``: one member whose inputs are scaled up until 1% of the loss gradient's
  entries would be subnormal float32 numbers, as after memorisation (0.7% at epoch 6,000 of the
  ``nanda`` preset); the engine zeroes them, so this should cost what ``engine M=1`` does.

Variants take turns (``--repeats`` rounds of ``--steps`` epochs) so a change in load hits all alike;
medians are reported. Run it on an idle machine; on a shared one, time one thread in process CPU
time (``--threads 1 --clock cpu``), which leaves out the time the process waits for a core:

    python benchmarks/train_speed.py [--threads 1] [--clock cpu] [--members 1 8 64] [--steps 5] [--repeats 3]
"""

import argparse
import statistics
import time

import torch

from grokscope import backend
from grokscope.engine import (FROZEN_PARAMETERS, Architecture, MemberRows, MemberSettings, StackedAdamW,
                              fused_readout, micro_batch_size, stack_parameters, stacked_logits, train_pass)
from grokscope.models import cross_entropy_f64, final_logits
from grokscope.training import TrainConfig


def readout_products(config: TrainConfig, n_rows: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every forward product of the straightforward read-out-only step."""
    cfg = config.model_config()
    d, d_mlp, n_ctx, out = cfg.d_model, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab_out
    return [(n_rows, d, d),                                   # queries at the read-out position
            (n_rows * n_ctx, d, d), (n_rows * n_ctx, d, d),   # keys and values at every position
            (n_rows, d, d), (n_rows, d, d_mlp), (n_rows, d_mlp, d), (n_rows, d, out)]


def engine_products(config: TrainConfig, n_rows: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the engine's forward products over the batch (one-layer path, ``grokscope.engine``)."""
    cfg = config.model_config()
    d, d_mlp, out = cfg.d_model, cfg.d_mlp, cfg.d_vocab_out
    if fused_readout(Architecture.from_config(cfg)):
        return [(n_rows, d, d_mlp), (n_rows, d, out), (n_rows, d_mlp, out)]
    return [(n_rows, d, d), (n_rows, d, d_mlp), (n_rows, d_mlp, d), (n_rows, d, out)]


def product_flops(products: list[tuple[int, int, int]]) -> int:
    """Forward and backward (input and weight gradients): three products of 2mkn FLOPs each."""
    return sum(3 * 2 * m * k * n for m, k, n in products)


def time_products(products: list[tuple[int, int, int]], repeats: int = 5, clock=time.perf_counter) -> float:
    """Median seconds of the forward and both backward matrix products, run as bare ``torch.mm``."""
    operands = []
    for m, k, n in products:
        x, w, g = torch.randn(m, k), torch.randn(k, n), torch.randn(m, n)
        operands.append((x, w, g))

    def once():
        for x, w, g in operands:
            torch.mm(x, w)
            torch.mm(g, w.T)
            torch.mm(x.T, g)

    once()
    times = []
    for _ in range(repeats):
        start = clock()
        once()
        times.append(clock() - start)
    return statistics.median(times)


def hooked_epoch(config: TrainConfig):
    """One epoch of the HookedTransformer read-out with torch's AdamW."""
    model = config.init_model()
    model.train()
    trainable = [p for name, p in backend.parameters(model).items() if not name.endswith(FROZEN_PARAMETERS)]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    rows = config.train_indices()
    tokens, labels = config.task.tokens()[rows], config.task.labels()[rows]

    def epoch():
        cross_entropy_f64(final_logits(model, tokens), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return epoch


def subnormal_share(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of the mean cross-entropy's logit gradient, (softmax - onehot) / rows, that is a
    subnormal float32 number."""
    grad = (logits.double().softmax(-1) - torch.nn.functional.one_hot(labels, logits.shape[-1])).float()
    grad = grad / logits.shape[-2]
    return ((grad != 0) & (grad.abs() < torch.finfo(torch.float32).tiny)).double().mean().item()


def make_confident(params: dict, arch: Architecture, rows: MemberRows, alpha: torch.Tensor,
                   target: float = 0.01) -> float:
    """Scale every member's W_E and W_pos (bisection on a log scale) until ``target`` of member 0's logit
    gradient would be subnormal; returns the share reached. The inputs rather than W_U grow, so that
    the backward products keep the small gradients small, as in a memorised model."""
    original = {name: params[name].detach().clone() for name in ("embed.W_E", "pos_embed.W_pos")}

    def share(scale: float) -> float:
        for name, tensor in original.items():
            params[name].copy_(tensor * scale)
        logits = stacked_logits(params, arch, rows.tokens, alpha, rows.last_token)[0]
        return subnormal_share(logits, rows.labels[0])

    with torch.no_grad():
        low, high = 1.0, 1e4
        for _ in range(30):
            middle = (low * high) ** 0.5
            low, high = (middle, high) if share(middle) < target else (low, middle)
        return share(high)


def engine_epoch(config: TrainConfig, n_members: int, late: bool = False):
    """One engine epoch for a stack of ``n_members`` seeds of ``config`` (``late``: ``make_confident``)."""
    configs = [config.replace(seed=seed) for seed in range(n_members)]
    arch = Architecture.from_config(config.model_config())
    params = stack_parameters([backend.weights(c.init_model()) for c in configs])
    trainable = [name for name in params if not name.endswith(FROZEN_PARAMETERS)]
    for name in trainable:
        params[name].requires_grad_(True)
    task = config.task
    rows = MemberRows.from_indices(task.tokens(), task.labels(), [c.train_indices() for c in configs])
    settings = MemberSettings.from_values(
        alpha=[config.alpha] * n_members, lr=[config.lr] * n_members, weight_decay=[config.weight_decay] * n_members,
        beta1=[config.betas[0]] * n_members, beta2=[config.betas[1]] * n_members,
        grokfast_alpha=[config.grokfast_alpha] * n_members, grokfast_lamb=[0.0] * n_members)
    adam, alpha = StackedAdamW(settings), settings.alpha.float()
    micro_batch = micro_batch_size(rows.tokens.shape[1], "cpu")
    if late:
        make_confident(params, arch, rows, alpha)

    def epoch():
        values = train_pass(params, trainable, arch, rows, alpha, micro_batch=micro_batch)
        adam.step(params, values.grads)
    return epoch


def benchmark(name: str, config: TrainConfig, members: list[int], steps: int, repeats: int,
              clock=time.perf_counter) -> None:
    n_rows = len(config.train_indices())
    products = readout_products(config, n_rows)
    flops = product_flops(products)
    variants = {"hooked": (hooked_epoch(config), 1)}
    variants.update({f"engine M={m}": (engine_epoch(config, m), m) for m in members})
    variants["engine M=1 late"] = (engine_epoch(config, 1, late=True), 1)
    for epoch, _ in variants.values():  # warm-up
        epoch()
    floors, times = [], {label: [] for label in variants}
    for _ in range(repeats):
        floors.append(time_products(products, repeats=1, clock=clock))
        for label, (epoch, n_models) in variants.items():
            start = clock()
            for _ in range(steps):
                epoch()
            times[label].append((clock() - start) / steps / n_models)
    floor = statistics.median(floors)
    print(f"\n{name}: p = {config.p}, {n_rows} train rows, n_ctx {config.task.n_ctx}; "
          f"{torch.get_num_threads()} torch threads; {repeats} rounds x {steps} epochs; "
          f"{'process CPU' if clock is time.process_time else 'wall'} time")
    print(f"  floor: read-out step products {flops / 1e9:.2f} GFLOP in {floor * 1e3:.1f} ms "
          f"({flops / floor / 1e9:.0f} GFLOP/s measured)")
    print(f"  engine step products {product_flops(engine_products(config, n_rows)) / 1e9:.2f} GFLOP per member")
    print(f"  {'variant':<14} {'ms per model-epoch':>19} {'/ floor':>8}")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:<14} {median * 1e3:>19.1f} {median / floor:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="epochs per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 8, 64], help="stack sizes to time")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (an idle machine), or process CPU time (one thread on a shared machine: "
                             "time the process waits for a core is not counted)")
    parser.add_argument("--shapes", nargs="+", default=["nanda", "pizza"], choices=["nanda", "pizza"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.shapes:
        benchmark(f"[{'N23' if name == 'nanda' else 'Z23'}] {name}", TrainConfig.preset(name), args.members,
                  args.steps, args.repeats, clock=time.process_time if args.clock == "cpu" else time.perf_counter)


if __name__ == "__main__":
    main()
