"""Phase diagrams of a population [Z23]: plotly figures as pure functions of the population table.

Each function takes the rows of population.csv (dicts) and returns a ``plotly.graph_objects.Figure``;
none reads files. ``population_figures`` picks the standard set for the report:

- the label over two axes (attention rate x width in [Z23]): the pizza share of the members labelled
  clock or pizza per cell, with the counts of every label;
- the median gradient symmetricity and the median distance irrelevance (correct logit) per cell;
- GS against DI, one point per member, coloured by the attention rate (the paper's scatter);
- the median grokking delay (test-99% step / train-99% step) over train fraction x weight decay, when
  both are swept ([P22], [N23]);
- the label fractions per cell of every swept axis.

>>> rows = [{"alpha": a, "d_model": w, "label": "pizza" if a < 0.5 else "clock",
...          "gradient_symmetricity": 1 - a / 2, "distance_irrelevance": a}
...         for a in (0.0, 0.25, 0.75, 1.0) for w in (32, 64)]
>>> fig = phase_diagram(rows, "alpha", "d_model", "pizza_share")
>>> [list(row) for row in fig.data[0].z]
[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from grokscope import population as pop

LABEL_COLORS = {"clock": "#1f77b4", "pizza": "#e8710a", "uninterpreted": "#888888"}
TITLES = {"pizza_share": "pizza share of clock + pizza", "gradient_symmetricity": "median gradient symmetricity",
          "distance_irrelevance": "median distance irrelevance",
          "distance_irrelevance_runnerup": "median distance irrelevance (runner-up)",
          "delay_ratio": "median grokking delay (test / train 99% step)"}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, height=300, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def phase_diagram(rows: Sequence[Mapping[str, Any]], x: str, y: str | None, value: str, *,
                  bins: Mapping[str, Any] | None = None, title: str | None = None) -> go.Figure:
    """Heatmap of ``value`` per cell of ``x`` (columns) and ``y`` (rows): a column's median, or
    ``"pizza_share"``; each cell is annotated with its value and member count (hover: label counts)."""
    label = TITLES.get(value, value.replace("_", " "))
    title = title or f"{label} over {x}" + (f" x {y}" if y else "")
    rows = [r for r in rows if r.get(x) is not None and (y is None or r.get(y) is not None)]
    if not rows:
        return _empty(title, f"no member has {x}" + (f" and {y}" if y else ""))
    grid = pop.phase_grid(rows, x, y, value, bins=bins)
    labels = pop.phase_grid(rows, x, y, lambda members: pop.label_counts(members), bins=bins)
    hover = [[", ".join(f"{k} {v}" for k, v in (labels.z[i][j] or {}).items() if v) or "no members"
              for j in range(len(grid.x))] for i in range(len(grid.y))]
    text = [[(f"{_text(grid.z[i][j])}<br>n={grid.n[i][j]}" if grid.n[i][j] else "") for j in range(len(grid.x))]
            for i in range(len(grid.y))]
    zmin, zmax = (0.0, 1.0) if value in ("pizza_share",) or "symmetricity" in value or "irrelevance" in value \
        else (None, None)
    fig = go.Figure(go.Heatmap(
        x=[str(v) for v in grid.x], y=[str(v) for v in grid.y] if y else [label],
        z=grid.z, text=text, texttemplate="%{text}", customdata=hover, zmin=zmin, zmax=zmax,
        colorscale=[[0, LABEL_COLORS["clock"]], [0.5, "#f2f2f2"], [1, LABEL_COLORS["pizza"]]]
        if value == "pizza_share" else "Viridis",
        colorbar=dict(title=label.split(" (")[0]),
        hovertemplate=f"{x}=%{{x}}" + (f", {y}=%{{y}}" if y else "") + "<br>%{z:.3f}<br>%{customdata}<extra></extra>"))
    fig.update_xaxes(title_text=x, type="category")
    fig.update_yaxes(title_text=y or "", type="category")
    fig.update_layout(title=title, height=480)
    return fig


def gs_against_di(rows: Sequence[Mapping[str, Any]], *, color: str = "alpha",
                  di: str = "distance_irrelevance", title: str | None = None) -> go.Figure:
    """One point per member: gradient symmetricity (x) against distance irrelevance (y), coloured by
    ``color`` (the attention rate, as in [Z23]'s figures); the symbol is the label."""
    title = title or f"gradient symmetricity vs {di.replace('_', ' ')}, coloured by {color}"
    shown = [r for r in rows if _finite(r.get("gradient_symmetricity")) and _finite(r.get(di))]
    if not shown:
        return _empty(title, "no member has both signatures")
    symbols = {"clock": "circle", "pizza": "diamond", "uninterpreted": "x"}
    colours = [float(r[color]) if _finite(r.get(color)) else None for r in shown]
    fig = go.Figure(go.Scatter(
        x=[float(r["gradient_symmetricity"]) for r in shown], y=[float(r[di]) for r in shown], mode="markers",
        marker=dict(size=9, color=colours, colorscale="Plasma", showscale=True, colorbar=dict(title=color),
                    symbol=[symbols.get(r.get("label"), "circle-open") for r in shown]),
        text=[f"{r.get('id')}: {r.get('label')}" for r in shown],
        hovertemplate="%{text}<br>GS %{x:.3f}, DI %{y:.3f}<br>" + color + " %{marker.color}<extra></extra>"))
    fig.update_xaxes(title_text="gradient symmetricity", range=[-0.05, 1.05])
    fig.update_yaxes(title_text=di.replace("_", " "), range=[-0.05, 1.05])
    fig.update_layout(title=title, height=500, hovermode="closest")
    return fig


def label_fractions_by(rows: Sequence[Mapping[str, Any]], axis: str, *, bins: Mapping[str, Any] | None = None,
                       label_column: str = "label", title: str | None = None) -> go.Figure:
    """Stacked bars: the share of each label per cell of ``axis`` (count in the hover)."""
    title = title or f"labels per {axis}"
    table = pop.cells(rows, [axis], bins, label_column=label_column, medians=())
    if not table:
        return _empty(title, f"no member has {axis}")
    fig = go.Figure()
    for label in pop.LABELS:
        fig.add_trace(go.Bar(x=[str(c[axis]) for c in table], y=[c["fractions"][label] for c in table], name=label,
                             marker_color=LABEL_COLORS[label], customdata=[c["counts"][label] for c in table],
                             hovertemplate=f"{label}: %{{y:.0%}} (%{{customdata}})<extra></extra>"))
    fig.update_layout(barmode="stack", title=title, height=380, yaxis=dict(title="fraction", range=[0, 1]),
                      xaxis=dict(title=axis, type="category"))
    return fig


def alpha_trend_figure(trends: Mapping[str, Sequence[Any]], published: Sequence[Any] | None = None, *,
                       title: str | None = None) -> go.Figure:
    """[Z23]'s attention-rate trend against a sweep's: median gradient symmetricity (left) and median
    runner-up distance irrelevance (right) per alpha bin.

    ``trends`` maps a name (e.g. "1000 epochs") to that sweep's ``alpha_trend.bin_trends``; each is
    drawn as medians with bars from the bin's smallest to its largest member. The published medians
    (``alpha_trend.Z23_ONE_LAYER`` by default) are a line with their inter-quartile range shaded.

    >>> from grokscope.alpha_trend import bin_trends
    >>> rows = [{"alpha": 0.05, "accuracy": 1.0, "gradient_symmetricity": 0.99, "distance_irrelevance_runnerup": 0.3}]
    >>> [trace.name for trace in alpha_trend_figure({"ours": bin_trends(rows)}).data][-2:]
    ['ours', 'ours']
    """
    from plotly.subplots import make_subplots

    from grokscope.alpha_trend import Z23_ONE_LAYER

    published = Z23_ONE_LAYER if published is None else published
    fig = make_subplots(rows=1, cols=2, subplot_titles=("median gradient symmetricity",
                                                        "median distance irrelevance (runner-up)"))
    centres = [(b.low + b.high) / 2 for b in published]
    palette = ("#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#17becf")
    for col, quartiles in ((1, [b.gs for b in published]), (2, [b.di_runnerup for b in published])):
        band = [q.q3 for q in quartiles] + [q.q1 for q in quartiles][::-1]  # up the q3 side, back down q1
        fig.add_trace(go.Scatter(x=centres + centres[::-1], y=band, fill="toself", fillcolor="rgba(232,113,10,0.18)",
                                 line=dict(width=0), hoverinfo="skip", name="[Z23] quartiles",
                                 showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Scatter(x=centres, y=[q.median for q in quartiles], mode="lines+markers",
                                 line=dict(color=LABEL_COLORS["pizza"], width=2), name="[Z23] median",
                                 showlegend=col == 1), row=1, col=col)
    for k, (name, bins) in enumerate(trends.items()):
        colour = palette[k % len(palette)]
        x = [(t.low + t.high) / 2 + 0.012 * (k - (len(trends) - 1) / 2) for t in bins]  # side by side
        for col, (mid, low, high) in ((1, ("gs_median", "gs_min", "gs_max")), (2, ("di_median", "di_min", "di_max"))):
            y = [getattr(t, mid) for t in bins]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="markers", marker=dict(color=colour, size=8), name=name, showlegend=col == 1,
                error_y=dict(type="data", symmetric=False, array=[getattr(t, high) - v for t, v in zip(bins, y)],
                             arrayminus=[v - getattr(t, low) for t, v in zip(bins, y)], color=colour),
                text=[f"{t.label}: n={t.n}" for t in bins],
                hovertemplate="%{text}<br>median %{y:.3f}<extra>" + name + "</extra>"), row=1, col=col)
    fig.update_xaxes(title_text="attention rate alpha", range=[-0.02, 1.02], dtick=0.1)
    fig.update_yaxes(range=[0.3, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0.0, 1.02], row=1, col=2)
    fig.update_layout(title=title or "[Z23]'s attention-rate trend", height=420, width=980,
                      legend=dict(orientation="h", y=-0.22))
    return fig


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def population_figures(rows: Sequence[Mapping[str, Any]], swept: Sequence[str], *,
                       axes: Sequence[str] | None = None, bins: Mapping[str, Any] | None = None
                       ) -> list[tuple[str, go.Figure]]:
    """The report's figures (module docstring) as ``(title, figure)`` pairs.

    ``axes`` are the two axes of the main diagrams (default ``population.default_axes(swept)``).
    """
    rows = [r for r in rows if not r.get("error")]
    x, y = (list(axes) + [None, None])[:2] if axes else pop.default_axes(swept, rows)
    figures = []
    if x is not None:
        for value in ("pizza_share", "gradient_symmetricity", "distance_irrelevance"):
            figures.append((TITLES[value], phase_diagram(rows, x, y, value, bins=bins)))
    figures.append(("GS against DI", gs_against_di(rows, color="alpha" if any("alpha" in r for r in rows)
                                                   else (x or "alpha"))))
    names = set(swept)
    if {"frac", "weight_decay"} <= names:
        figures.append(("Grokking delay", phase_diagram(rows, "frac", "weight_decay", "delay_ratio", bins=bins)))
    for axis in [a for a in swept if a not in ("seed", "split_seed")]:
        figures.append((f"Labels per {axis}", label_fractions_by(rows, axis, bins=bins)))
    return figures
