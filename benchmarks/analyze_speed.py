"""Seconds per checkpoint of grokscope's measure set against a bare forward pass and a naive loop.

On the [N23]-size model (p = 113, d_model 128, 4 heads, d_mlp 512; random weights), in one process:
  (a) ``analyze.measure_checkpoint``: every progress measure from one read-out pass;
  (b) a bare forward pass ``model(tokens)`` over the p^2 inputs;
  (c) a straightforward loop that computes each measure on its own, the way exploratory notebooks
      do: ``run_with_cache`` per measure, the Fourier basis rebuilt per measure, float32 -> float64
      conversions each time, directions built from 2D Fourier products.
Prints the seconds (best of ``--repeats``) and the ratios (a)/(b) (goal <= 2) and (c)/(a) (goal >= 5);
(a) and (c) must agree, which the script checks. Timings on a shared machine are noisy: compare the
ratios of one run, not seconds across runs.

    python benchmarks/analyze_speed.py [--p 113] [--repeats 3] [--threads N] [--freqs 14,35,41,42,52]
"""

import argparse
import math
import time

import torch

from grokscope.analysis import measure_checkpoint
from grokscope.constructions import random_model
from grokscope.fourier import fourier_basis
from grokscope.tasks import Task


def naive_basis(p: int) -> torch.Tensor:
    """The Fourier basis built row by row, as a notebook would, every time it is needed."""
    rows = [torch.ones(p) / math.sqrt(p)]
    for k in range(1, p // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * torch.arange(p) / p))
        rows.append(torch.sin(2 * math.pi * k * torch.arange(p) / p))
        rows[-2] = rows[-2] / rows[-2].norm()
        rows[-1] = rows[-1] / rows[-1].norm()
    return torch.stack(rows)


def naive_logits(model, tokens):
    _, cache = model.run_with_cache(tokens)
    return cache["unembed.hook_out"][:, -1].double()


def naive_ce(logits, labels):
    return float(-logits.log_softmax(-1)[torch.arange(len(labels)), labels].mean())


def naive_projection(logits, p, freqs):
    """P_K L via the 2D Fourier products (F_c x F_c - F_s x F_s)/sqrt 2 and (F_s x F_c + F_c x F_s)/sqrt 2."""
    F = naive_basis(p).double()               # rows: const, cos 1, sin 1, cos 2, ... (built just above)
    out = torch.zeros_like(logits)
    for k in freqs:
        c, s = F[2 * k - 1], F[2 * k]
        for direction in ((torch.outer(c, c) - torch.outer(s, s)) / math.sqrt(2),
                          (torch.outer(s, c) + torch.outer(c, s)) / math.sqrt(2)):
            d = direction.flatten()
            out += torch.outer(d, d @ logits)
    return out


def naive_gini(norms):
    c = norms.sort().values
    n = len(c)
    return float(2 * sum((i + 1) * c[i] for i in range(n)) / (n * c.sum()) - (n + 1) / n)


def naive_measures(model, task, freqs, train, test):
    """Each measure computed on its own: one run_with_cache (and conversions) per measure."""
    p, tokens, labels = task.p, task.tokens(), task.labels()
    row = {}
    with torch.no_grad():
        row["train_loss"] = naive_ce(naive_logits(model, tokens)[train], labels[train])
        row["test_loss"] = naive_ce(naive_logits(model, tokens)[test], labels[test])
        row["train_acc"] = float((naive_logits(model, tokens)[train].argmax(-1) == labels[train]).double().mean())
        row["test_acc"] = float((naive_logits(model, tokens)[test].argmax(-1) == labels[test]).double().mean())
        row["full_loss"] = naive_ce(naive_logits(model, tokens), labels)
        row["full_acc"] = float((naive_logits(model, tokens).argmax(-1) == labels).double().mean())
        L = naive_logits(model, tokens)
        row["restricted_loss"] = naive_ce(naive_projection(L, p, freqs) + L.mean(0), labels)
        L = naive_logits(model, tokens)
        row["restricted_loss_test"] = naive_ce((naive_projection(L, p, freqs) + L.mean(0))[test], labels[test])
        L = naive_logits(model, tokens)
        row["excluded_loss"] = naive_ce((L - naive_projection(L, p, freqs))[train], labels[train])
        for k in freqs:
            L = naive_logits(model, tokens)
            row[f"excluded_loss_k{k}"] = naive_ce((L - naive_projection(L, p, [k]))[train], labels[train])
        row["sum_sq_weights"] = sum(float(w.double().pow(2).sum()) for w in model.parameters())
        F = naive_basis(p).double()
        row["gini_W_E"] = naive_gini((F @ model.W_E[:p].double()).norm(dim=-1)[1:])
        F = naive_basis(p).double()
        W_L = (model.W_out[0] @ model.W_U[:, :p]).double()
        row["gini_W_L"] = naive_gini((F @ W_L.T).norm(dim=-1)[1:])
        L = naive_logits(model, tokens)
        centred = L - L.mean(1, keepdim=True)
        explained = 0.0
        for k in freqs:
            a = torch.arange(p).repeat_interleave(p).double()
            b = torch.arange(p).repeat(p).double()
            C = torch.cos(2 * math.pi * k * ((a + b)[:, None] - torch.arange(p).double()) / p)
            explained += float((C / C.norm() * L).sum()) ** 2
        row["cos_fve"] = explained / float(centred.pow(2).sum())
    return row


def best_of(fn, repeats, warm_up=True):
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=113)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--freqs", default="14,35,41,42,52", help="key frequencies used by the measures")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = Task(p=args.p)
    freqs = [int(k) for k in args.freqs.split(",")]
    model = random_model(task, 0)
    train = task.split(0.3, 0)
    test = torch.ones(task.n_inputs, dtype=torch.bool)
    test[train] = False
    tokens, basis = task.tokens(), fourier_basis(task.p)

    def full():
        return measure_checkpoint(model, task, freqs, train, basis=basis)[0]

    def bare():
        with torch.no_grad():
            return model(tokens)

    ours, naive = full(), naive_measures(model, task, freqs, train, test)
    for name, value in naive.items():
        if not math.isclose(ours[name], value, rel_tol=1e-6, abs_tol=1e-9):
            raise SystemExit(f"mismatch in {name}: measure_checkpoint {ours[name]!r}, naive loop {value!r}")
    t_a = best_of(full, args.repeats)
    t_b = best_of(bare, args.repeats)
    t_c = best_of(lambda: naive_measures(model, task, freqs, train, test), max(1, args.repeats // 2),
                  warm_up=False)   # already warm from the agreement check
    print(f"p = {task.p}, d_model {model.cfg.d_model}, d_mlp {model.cfg.d_mlp}, {task.n_inputs} inputs, "
          f"K = {freqs}, torch threads {torch.get_num_threads()}")
    print(f"(a) full measure set (measure_checkpoint)  {t_a:8.3f} s / checkpoint")
    print(f"(b) bare forward pass model(tokens)        {t_b:8.3f} s / checkpoint")
    print(f"(c) naive per-measure loop                 {t_c:8.3f} s / checkpoint")
    print(f"(a)/(b) = {t_a / t_b:.2f}   (goal <= 2)")
    print(f"(c)/(a) = {t_c / t_a:.1f}   (goal >= 5)")
    print(f"all {len(naive)} naive measures agree with measure_checkpoint")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
