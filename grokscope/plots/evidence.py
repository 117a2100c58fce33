"""Figures of what one model computes, and of a folder of models: the embedding's Fourier norms and
the neurons' frequency clusters ([N23]); the embedding circles, the correct-logit map over
(a+b, a-b) and the gradient-symmetricity / distance-irrelevance plane of clock and pizza ([Z23]).

>>> fig = embedding_circles([{"k": 1, "delta": 1, "points": [[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]],
...                           "label": "clock"}])
>>> fig.layout.annotations[0].text
'circle 1: k = 1, delta = 1 (clock)'
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.plots._base import COLORS, LABEL_COLORS, as_array, as_mapping, empty_figure, finish, finite_list

__all__ = ["fourier_norms", "neuron_clusters", "embedding_circles", "logit_map", "model_comparison"]


def fourier_norms(norms: Float[Tensor, "n_freq"] | Float[np.ndarray, "n_freq"],
                  key_freqs: Sequence[int] = (), *,
                  component_norms: Float[Tensor, "n_comp"] | Float[np.ndarray, "n_comp"] | None = None,
                  component_labels: Sequence[str] | None = None,
                  title: str = "Embedding Fourier norms") -> go.Figure:
    """Bars of the per-frequency norm sqrt(||cos_k||^2 + ||sin_k||^2) of W_E, k = 1..(p-1)/2 ([N23]),
    the key frequencies in a second colour and labelled; per-component norms in a lower panel if given.
    """
    values = as_array(norms, "fourier_norms").reshape(-1)
    n = values.shape[0]
    bad = [k for k in key_freqs if not 1 <= int(k) <= n]
    if bad:
        raise GrokscopeError(f"key frequencies {bad}", expected=f"frequencies in 1..{n}", where="fourier_norms")
    if n == 0 or not np.isfinite(values).any():
        return empty_figure(title, "no embedding Fourier norms")
    keys = sorted({int(k) for k in key_freqs})
    freqs = np.arange(1, n + 1)
    is_key = np.isin(freqs, keys)
    rows = 2 if component_norms is not None else 1
    fig = make_subplots(rows=rows, cols=1, vertical_spacing=0.15)
    fig.add_trace(go.Bar(x=freqs[~is_key].tolist(), y=finite_list(values[~is_key]), name="frequency",
                         marker_color=COLORS["other"], width=0.8), row=1, col=1)
    if keys:
        fig.add_trace(go.Bar(x=keys, y=finite_list(values[is_key]), name="key frequency",
                             marker_color=COLORS["key"], width=0.8, text=[f"k={k}" for k in keys],
                             textposition="outside"), row=1, col=1)
    fig.update_xaxes(title_text="frequency k", row=1, col=1)
    fig.update_yaxes(title_text="norm", row=1, col=1)
    notes = [] if keys else ["no key frequencies given"]
    if component_norms is not None:
        comp = as_array(component_norms, "fourier_norms component_norms").reshape(-1)
        labels = list(component_labels) if component_labels is not None else [str(i) for i in range(comp.size)]
        if len(labels) != comp.size:
            raise GrokscopeError(f"{len(labels)} component labels", expected=f"{comp.size}, one per norm",
                                 where="fourier_norms")
        fig.add_trace(go.Bar(x=labels, y=finite_list(comp), name="component", marker_color="#7f7f7f"),
                      row=2, col=1)
        fig.update_xaxes(type="category", title_text="Fourier component", row=2, col=1)
        fig.update_yaxes(title_text="norm", row=2, col=1)
    return finish(fig, title, notes, 420 * rows, hovermode="closest", barmode="overlay")


def neuron_clusters(neuron_freq: Int[Tensor, "d_mlp"] | Int[np.ndarray, "d_mlp"],
                    frac_explained: Float[Tensor, "d_mlp"] | Float[np.ndarray, "d_mlp"], *,
                    threshold: float = 0.85, title: str = "Neuron frequency clusters") -> go.Figure:
    """Neurons per frequency cluster and the histogram of the fraction of each neuron's variance
    explained by its frequency block {const, cos k, sin k}^2 ([N23]). A neuron is "unexplained" when its
    frequency is 0 or its fraction is below ``threshold`` (drawn on the histogram).
    """
    freq = as_array(neuron_freq, "neuron_clusters neuron_freq").reshape(-1)
    frac = as_array(frac_explained, "neuron_clusters frac_explained").reshape(-1)
    if freq.shape != frac.shape:
        raise GrokscopeError(f"{freq.size} frequencies and {frac.size} fractions",
                             expected="one of each per neuron", where="neuron_clusters")
    if freq.size == 0:
        return empty_figure(title, "no neurons")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.12,
                        subplot_titles=("neurons per frequency", "fraction explained"))
    explained = np.isfinite(freq) & (np.nan_to_num(frac) >= threshold)
    clusters, counts = np.unique(np.where(explained, np.nan_to_num(freq), 0).astype(int), return_counts=True)
    names = ["unexplained" if k == 0 else f"k={k}" for k in clusters]
    fig.add_trace(go.Bar(x=names, y=counts.tolist(), name="neurons",
                         marker_color=[COLORS["full"] if k == 0 else COLORS["key"] for k in clusters],
                         text=counts.tolist(), textposition="outside"), row=1, col=1)
    fig.update_xaxes(type="category", title_text="cluster", row=1, col=1)
    fig.update_yaxes(title_text="neurons", row=1, col=1)
    fig.add_trace(go.Histogram(x=finite_list(frac), xbins=dict(start=0, end=1.0001, size=0.025),
                               name="fraction explained", marker_color=COLORS["other"]), row=1, col=2)
    fig.add_vline(x=threshold, row=1, col=2, line=dict(dash="dash", color="#444"),
                  label=dict(text=f"threshold {threshold:g}", textposition="end", font=dict(size=10)))
    fig.update_xaxes(title_text="fraction of variance explained", range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(title_text="neurons", row=1, col=2)
    share = float(np.mean(explained & (np.nan_to_num(freq) != 0)))
    notes = [f"{share:.1%} of {freq.size} neurons explained at >= {threshold:g}"]
    return finish(fig, title, notes, 420, hovermode="closest", showlegend=False)


def embedding_circles(circles: Sequence[Any], *, columns: int = 3,
                      title: str = "Embedding circles") -> go.Figure:
    """One subplot per circle of [Z23]: the token embeddings projected on the circle's two directions,
    each point labelled with its token. A circle is ``{k, delta, points: (p, 2), labels}``, with an
    optional ``label`` (clock / pizza) shown in the subplot title.
    """
    if len(circles) == 0:
        return empty_figure(title, "no circles found in the embedding")
    cols = max(1, min(columns, len(circles)))
    rows = math.ceil(len(circles) / cols)
    circles = [as_mapping(circle) for circle in circles]
    titles = []
    for i, circle in enumerate(circles):
        text = f"circle {i + 1}: k = {circle.get('k', '?')}, delta = {circle.get('delta', '?')}"
        titles.append(text + (f" ({circle['label']})" if circle.get("label") else ""))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=0.12 / rows)
    for i, circle in enumerate(circles):
        where = f"embedding_circles circle {i + 1}"
        points = as_array(circle.get("points", []), where)
        if points.ndim != 2 or points.shape[1] != 2:
            raise GrokscopeError(f"points of shape {tuple(points.shape)}", expected="(n_tokens, 2)", where=where)
        labels = circle.get("labels")
        labels = list(range(points.shape[0])) if labels is None else [int(t) for t in as_array(labels, where)]
        if len(labels) != points.shape[0]:
            raise GrokscopeError(f"{len(labels)} labels", expected=f"{points.shape[0]}, one per point", where=where)
        row, col = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(x=finite_list(points[:, 0]), y=finite_list(points[:, 1]), mode="markers+text",
                                 text=[str(t) for t in labels], textposition="top center",
                                 textfont=dict(size=8), name=titles[i],
                                 marker=dict(color=labels, colorscale="Twilight", size=7),
                                 hovertemplate="token %{text}<extra></extra>"), row=row, col=col)
        axis = "" if i == 0 else str(i + 1)
        fig.update_layout({f"xaxis{axis}": dict(scaleanchor=f"y{axis}", scaleratio=1, showticklabels=False),
                           f"yaxis{axis}": dict(showticklabels=False)})
    return finish(fig, title, [], 380 * rows, hovermode="closest", showlegend=False)


def logit_map(grid: Float[Tensor, "p p"] | Float[np.ndarray, "p p"], *,
              title: str = "Correct-class logit over (a+b, a-b)") -> go.Figure:
    """Heatmap of M[(a+b) mod p, (a-b) mod p] = logit of the correct class ([Z23]): rows (y) are a+b,
    columns (x) are a-b. A clock is flat along a-b; a pizza varies with a-b (|cos(w(a-b)/2)|).
    """
    values = as_array(grid, "logit_map")
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise GrokscopeError(f"shape {tuple(values.shape)}", expected="a square (p, p) grid", where="logit_map")
    if values.size == 0 or not np.isfinite(values).any():
        return empty_figure(title, "no correct-logit map")
    p = values.shape[0]
    z = [finite_list(row) for row in values]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(p)), y=list(range(p)), colorscale="Viridis",
                               colorbar=dict(title=dict(text="logit")), name="correct logit",
                               hovertemplate="a+b=%{y}, a-b=%{x}: %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="(a - b) mod p", constrain="domain")
    fig.update_yaxes(title_text="(a + b) mod p", scaleanchor="x", scaleratio=1)
    return finish(fig, title, [], 560, hovermode="closest")


# ---------------------------------------------------------------- a folder of models

def _model_row(model: Mapping[str, Any], x: str, y: str) -> dict:
    classification = as_mapping(model.get("classification"))
    source = as_mapping(model.get("source"))
    name = model.get("name") or source.get("path") or "?"
    label = model.get("label", classification.get("label")) or "unknown"
    return dict(name=str(name), label=str(label), reason=str(model.get("reason", classification.get("reason", ""))),
                x=model.get(x, classification.get(x)), y=model.get(y, classification.get(y)))


def model_comparison(models: Sequence[Mapping[str, Any]], *, x: str = "gradient_symmetricity",
                     y: str = "distance_irrelevance",
                     title: str = "Independent models: gradient symmetricity vs distance irrelevance") -> go.Figure:
    """One point per model, coloured by label, as in the [Z23] phase diagrams. A model is a per-model
    summary.json object (values read from its ``classification``) or a flat row with ``name``, ``label``
    and the two signatures.
    """
    rows = [_model_row(m, x, y) for m in models]
    shown = [r for r in rows if r["x"] is not None and r["y"] is not None
             and math.isfinite(float(r["x"])) and math.isfinite(float(r["y"]))]
    if not shown:
        return empty_figure(title, f"no model has both {x} and {y}" if rows else "no models")
    fig = go.Figure()
    labels = sorted({r["label"] for r in shown}, key=lambda s: (s not in LABEL_COLORS, s))
    for label in labels:
        group = [r for r in shown if r["label"] == label]
        fig.add_trace(go.Scatter(x=[float(r["x"]) for r in group], y=[float(r["y"]) for r in group],
                                 mode="markers", name=f"{label} ({len(group)})",
                                 marker=dict(size=10, color=LABEL_COLORS.get(label)),
                                 text=[r["name"] for r in group], customdata=[r["reason"] for r in group],
                                 hovertemplate="%{text}<br>%{customdata}<br>x=%{x:.3f}, y=%{y:.3f}"
                                               "<extra></extra>"))
    fig.update_xaxes(title_text=x.replace("_", " "))
    fig.update_yaxes(title_text=y.replace("_", " "))
    missing = len(rows) - len(shown)
    notes = [f"{missing} of {len(rows)} models lack {x} or {y}: not shown"] if missing else []
    return finish(fig, title, notes, 500, hovermode="closest",
                   legend=dict(orientation="v", y=1, x=1.02, yanchor="top"))
