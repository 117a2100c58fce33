"""Pathway measures, an experimental train-only signal adapted from Li, Fan and Zhou 2025 (arXiv 2506.21551).

The paper (a mixture-of-experts LLM): a sample's *pathway* is its sequence of expert choices across
layers; as the model turns from memorising to generalising, pathways become shared between samples
(the mean pairwise edit distance between pathways falls) and more consistent from layer to layer.

The adaptation here is grokscope's, not the paper's result: a one-layer dense model has no experts and
no layers to compare, so a sample's pathway is its ReLU on/off pattern at the read-out position,
x_i = [hook_post_i > 0] in {0, 1}^d_mlp, over the train rows only.

- ``pathway_distance``: the mean over all pairs i < j of train samples of the normalised Hamming
  distance |x_i - x_j|_1 / d_mlp (the edit distance of two equal-length patterns with substitutions
  only). Per neuron u with n_u samples on out of n, n_u (n - n_u) pairs differ, so the mean is
  sum_u n_u (n - n_u) / (d_mlp n (n - 1) / 2), exact and O(n d_mlp).
- ``label_consistency``: how much of the pattern the answer class explains: the between-class share of
  the patterns' variance, sum_u Var_u(E[x_u | c]) / sum_u Var_u(x_u) (a correlation ratio, eta^2, pooled
  over neurons): 1 when the pattern is a function of the class, near 0 when unrelated to it. The
  paper's layer-to-layer consistency has no analogue in one layer; this score stands in for "shared
  by samples of the same answer".

>>> x = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
>>> pathway_distance(x), label_consistency(x, torch.tensor([0, 0, 1, 1]))
(0.6666666666666666, 1.0)
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.models import HookedTransformer, final_logits
from grokscope.tasks import Task

PATHWAY_COLUMNS = ("pathway_distance", "label_consistency", "active_fraction")
"""Columns of ``pathway_measures``."""


def _check(patterns: Tensor, where: str) -> Tensor:
    if patterns.ndim != 2 or patterns.shape[0] < 2 or patterns.shape[1] < 1:
        raise GrokscopeError(f"patterns of shape {tuple(patterns.shape)}", where=where,
                             expected="(n_samples >= 2, d_mlp >= 1)")
    return patterns.detach().double()


def pathway_distance(patterns: Float[Tensor, "n d_mlp"]) -> float:
    """Mean normalised Hamming distance over all pairs of rows of a 0/1 pattern matrix (module docstring)."""
    x = _check(patterns, "pathway_distance")
    n, d = x.shape
    on = x.sum(dim=0)
    return float((on * (n - on)).sum() / (d * n * (n - 1) / 2))


def label_consistency(patterns: Float[Tensor, "n d_mlp"], labels: Int[Tensor, "n"]) -> float:
    """Pooled between-class variance share of the patterns, sum_u Var(E[x_u | c]) / sum_u Var(x_u).

    NaN when no neuron varies over the samples (every pattern equal).
    """
    x = _check(patterns, "label_consistency")
    labels = torch.as_tensor(labels).long()
    if labels.shape != (x.shape[0],):
        raise GrokscopeError(f"{tuple(labels.shape)} labels", expected=f"one per pattern ({x.shape[0]})",
                             where="label_consistency")
    total = x.var(dim=0, unbiased=False).sum()
    if total == 0:
        return float("nan")
    classes, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, inverse, x)
    class_means = sums / counts[:, None]
    between = ((class_means - x.mean(dim=0)) ** 2 * counts[:, None]).sum() / x.shape[0]
    return float(between / total)


def relu_patterns(model: HookedTransformer, task: Task, rows: Int[Tensor, "n"] | None = None
                  ) -> Float[Tensor, "n d_mlp"]:
    """The last layer's on/off pattern (hook_post > 0) at the read-out position for grid ``rows``."""
    tokens = task.tokens() if rows is None else task.tokens()[torch.as_tensor(rows).long()]
    with torch.no_grad():
        _, post = final_logits(model, tokens, return_post=True)
    return (post > 0).double()


def pathway_measures(model: HookedTransformer, task: Task, train_indices: Int[Tensor, "n_train"] | None = None
                     ) -> dict[str, float]:
    """``PATHWAY_COLUMNS`` of one checkpoint over the train rows (every row when the split is unknown).

    ``active_fraction`` is the mean share of neurons on, for reading the distance (a pattern that is
    all on or all off has distance 0 for a trivial reason).

    >>> from grokscope.constructions import random_model
    >>> task = Task(p=23)
    >>> m = pathway_measures(random_model(task), task, task.split(0.5))
    >>> sorted(m) == sorted(PATHWAY_COLUMNS), 0 < m["pathway_distance"] < 1
    (True, True)
    """
    rows = torch.arange(task.n_inputs) if train_indices is None else torch.as_tensor(train_indices).long()
    x = relu_patterns(model, task, rows)
    return {"pathway_distance": pathway_distance(x), "label_consistency": label_consistency(x, task.labels()[rows]),
            "active_fraction": float(x.mean())}
