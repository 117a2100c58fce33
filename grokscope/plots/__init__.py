"""Plotly figures for grokking runs and clock / pizza analyses, in two modules by job:

- :mod:`grokscope.plots.curves`: one run's table of measures over training (loss and accuracy,
  restricted and excluded loss, sparsity and weight norm), with the phases shaded;
- :mod:`grokscope.plots.evidence`: what one model computes (embedding Fourier norms, neuron clusters,
  embedding circles, the correct-logit map) and a folder of models in the [Z23] signature plane.

Every function is a pure function of plain data (a table of columns, tensors, small dicts) and returns
a ``plotly.graph_objects.Figure``: nothing is read, written or shown. Missing data degrades gracefully:
the figure says what is missing (in its subtitle, or in place of the plot) instead of raising. Data
that contradicts itself (columns of different lengths, a key frequency outside 1..(p-1)/2) raises
``GrokscopeError``. Every figure function is importable from here.

>>> from grokscope import plots
>>> fig = plots.loss_curves({"step": [0, 10, 100, 1000], "train_loss": [4.0, 1.0, 0.1, 0.01],
...                          "test_loss": [4.0, 5.0, 3.0, 0.02]})
>>> [trace.name for trace in fig.data]
['train loss', 'test loss']
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from torch import Tensor

from grokscope.plots._base import PhasesLike
from grokscope.plots.curves import (loss_curves, phase_spans, restricted_excluded_curves, train_only_curves,
                                    weight_curves)
from grokscope.plots.evidence import embedding_circles, fourier_norms, logit_map, model_comparison, neuron_clusters

__all__ = ["phase_spans", "loss_curves", "restricted_excluded_curves", "weight_curves", "train_only_curves",
           "fourier_norms", "neuron_clusters", "embedding_circles", "logit_map", "model_comparison",
           "standard_figures", "PhasesLike"]


def standard_figures(table: Mapping[str, Any] | None = None, phases: PhasesLike = None, *,
                     embedding_norms: Float[Tensor, "n_freq"] | Float[np.ndarray, "n_freq"] | None = None,
                     key_freqs: Sequence[int] = (),
                     neuron_freq: Int[Tensor, "d_mlp"] | Int[np.ndarray, "d_mlp"] | None = None,
                     frac_explained: Float[Tensor, "d_mlp"] | Float[np.ndarray, "d_mlp"] | None = None,
                     circles: Sequence[Any] | None = None,
                     logit_grid: Float[Tensor, "p p"] | Float[np.ndarray, "p p"] | None = None,
                     models: Sequence[Mapping[str, Any]] | None = None) -> list[tuple[str, go.Figure]]:
    """Every figure the given data supports, as ``(title, figure)`` in report order; None skips one.

    >>> [title for title, _ in standard_figures({"step": [0, 1], "train_loss": [1.0, 0.5]})]
    ['Loss and accuracy', 'Restricted and excluded loss', 'Sparsity and weight norm']
    """
    figures: list[go.Figure] = []
    if table is not None:
        figures += [loss_curves(table, phases), restricted_excluded_curves(table, phases),
                    weight_curves(table, phases)]
        if "trainonly_excluded_loss" in table:
            figures.append(train_only_curves(table, phases))
    if embedding_norms is not None:
        figures.append(fourier_norms(embedding_norms, key_freqs))
    if neuron_freq is not None and frac_explained is not None:
        figures.append(neuron_clusters(neuron_freq, frac_explained))
    if circles is not None:
        figures.append(embedding_circles(circles))
    if logit_grid is not None:
        figures.append(logit_map(logit_grid))
    if models is not None:
        figures.append(model_comparison(models))
    return [(fig.layout.title.text, fig) for fig in figures]
