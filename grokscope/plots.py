"""Plotly figures for grokking runs and clock / pizza analyses.

Every function is a pure function of plain data (a table of columns, tensors, small dicts) and returns
a ``plotly.graph_objects.Figure``: nothing is read, written or shown. Missing data degrades gracefully:
the figure says what is missing (in its subtitle, or in place of the plot) instead of raising. Data
that contradicts itself (columns of different lengths, a key frequency outside 1..(p-1)/2) raises
``GrokscopeError``.

A *table* maps column names to 1-D sequences, arrays or tensors of one length, NaN or None where a
value is unknown: ``step``, ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``, ``full_loss``,
``full_acc``, ``restricted_loss``, ``excluded_loss``, ``excluded_loss_k{k}``, ``sum_sq_weights``,
``gini_W_E``, ``gini_W_L``, ``cos_fve`` (the progress measures of [N23]). *Phases* is the ``phases``
mapping of summary.json: ``memorization_step``, ``grokking_step``, ``circuit_formation_start``,
``circuit_formation_end``, ``cleanup_end_step`` (int or None); a dataclass with those fields works too.

>>> fig = loss_curves({"step": [0, 10, 100, 1000], "train_loss": [4.0, 1.0, 0.1, 0.01],
...                    "test_loss": [4.0, 5.0, 3.0, 0.02]})
>>> [trace.name for trace in fig.data]
['train loss', 'test loss']
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from grokscope.errors import GrokscopeError

__all__ = ["phase_spans", "loss_curves", "restricted_excluded_curves", "weight_curves", "train_only_curves",
           "fourier_norms", "neuron_clusters", "embedding_circles", "logit_map", "model_comparison",
           "standard_figures"]

TEMPLATE = "plotly_white"
COLORS = {"train": "#1f77b4", "test": "#d62728", "full": "#7f7f7f", "restricted": "#2ca02c",
          "excluded": "#9467bd", "key": "#ef553b", "other": "#636efa"}
PHASE_COLORS = {"memorisation": "rgba(31,119,180,0.12)", "circuit formation": "rgba(255,127,14,0.14)",
                "cleanup": "rgba(44,160,44,0.14)"}
LABEL_COLORS = {"pizza": "#ff7f0e", "clock": "#1f77b4", "uninterpreted": "#7f7f7f"}

PhasesLike = Any
"""The phases mapping of summary.json, or a dataclass with those fields, or None (no phases)."""


# ---------------------------------------------------------------- helpers

def _as_mapping(obj: Any) -> dict:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj)


def _array(values: Any, where: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise GrokscopeError(f"values that are not numbers ({error})", expected="numbers or None",
                             where=where) from None


def _column(table: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    """Column ``name`` as float64 (all NaN when absent), checked against the step count ``n``."""
    if name not in table or table[name] is None:
        return np.full(n, np.nan)
    values = _array(table[name], f"table column {name!r}").reshape(-1)
    if values.shape[0] != n:
        raise GrokscopeError(f"{values.shape[0]} values", expected=f"{n}, one per step",
                             where=f"table column {name!r}")
    return values


def _clean(values: np.ndarray, positive: bool = False) -> list[float | None]:
    """JSON-friendly list: None where a value is not finite (or not positive, for log axes)."""
    ok = np.isfinite(values) & ((values > 0) if positive else True)
    return [float(v) if good else None for v, good in zip(values, ok)]


def _use_log_x(steps: np.ndarray, log_x: bool | None) -> bool:
    if log_x is not None:
        return log_x
    positive = steps[np.isfinite(steps) & (steps > 0)]
    return bool(positive.size >= 2 and positive.max() / positive.min() >= 100)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure(layout=dict(template=TEMPLATE, title=dict(text=title), height=260))
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _finish(fig: go.Figure, title: str, notes: list[str], height: int, **layout: Any) -> go.Figure:
    title_spec: dict = dict(text=title)
    if notes:
        title_spec["subtitle"] = dict(text="; ".join(notes))
    fig.update_layout(**{**dict(template=TEMPLATE, title=title_spec, height=height, hovermode="x unified",
                                legend=dict(orientation="h", yanchor="top", y=-0.12, x=0)), **layout})
    return fig


def phase_spans(phases: PhasesLike,
                first_step: int | float) -> list[tuple[str, int | float, int | float]]:
    """The shaded phases of [N23] as ``(name, start, end)``, only those whose bounds are both known.

    memorisation: first step to ``circuit_formation_start`` (else ``memorization_step``);
    circuit formation: ``circuit_formation_start`` to ``circuit_formation_end``;
    cleanup: ``circuit_formation_end`` to ``cleanup_end_step``.

    >>> phase_spans({"memorization_step": 1400, "circuit_formation_start": 1400,
    ...              "circuit_formation_end": 9400, "cleanup_end_step": 14000}, 0)
    [('memorisation', 0, 1400), ('circuit formation', 1400, 9400), ('cleanup', 9400, 14000)]
    """
    ph = _as_mapping(phases)
    start = ph.get("circuit_formation_start")
    bounds = [("memorisation", first_step, start if start is not None else ph.get("memorization_step")),
              ("circuit formation", start, ph.get("circuit_formation_end")),
              ("cleanup", ph.get("circuit_formation_end"), ph.get("cleanup_end_step"))]
    return [(name, x0, x1) for name, x0, x1 in bounds if x0 is not None and x1 is not None and x1 > x0]


def _add_phases(fig: go.Figure, phases: PhasesLike, steps: np.ndarray, log_x: bool,
                rows: int, notes: list[str]) -> None:
    if phases is None:
        notes.append("no phases given")
        return
    finite = steps[np.isfinite(steps) & ((steps > 0) if log_x else True)]
    if finite.size == 0:
        return
    first = float(finite.min())
    spans = phase_spans(phases, first)
    missing = [name for name in PHASE_COLORS if name not in {s[0] for s in spans}]
    if missing:
        notes.append("phases not detected: " + ", ".join(missing))
    for name, x0, x1 in spans:
        x0 = max(x0, first) if log_x else x0  # a log axis has no step 0
        if x1 <= x0:
            continue
        for row in range(1, rows + 1):
            label = dict(text=name, textposition="top center", font=dict(size=11)) if row == 1 else None
            fig.add_vrect(x0=x0, x1=x1, row=row, col=1, fillcolor=PHASE_COLORS[name], line_width=0,
                          layer="below", label=label, name=name)
    ph = _as_mapping(phases)
    for key, text in (("memorization_step", "train acc 99%"), ("grokking_step", "test acc 99%")):
        if ph.get(key) is not None and not (log_x and ph[key] <= 0):
            for row in range(1, rows + 1):
                label = dict(text=text, textposition="end", font=dict(size=10)) if row == 1 else None
                fig.add_vline(x=ph[key], row=row, col=1, line=dict(dash="dot", width=1, color="#444"),
                              label=label, name=key)


def _curves(table: Mapping[str, Any], panels: list[list[tuple[str, str, dict]]], log_y: list[bool],
            y_titles: list[str], phases: PhasesLike, log_x: bool | None, title: str,
            height: int, visible_when: dict[str, str] | None = None) -> go.Figure:
    """Step curves in stacked panels sharing the x axis; each panel a list of (column, name, line)."""
    if "step" not in table or table["step"] is None:
        return _empty(title, "no step column: nothing to plot")
    steps = _array(table["step"], "table column 'step'").reshape(-1)
    n = steps.shape[0]
    columns = {col: _column(table, col, n) for panel in panels for col, _, _ in panel}
    if n == 0 or not any(np.isfinite(v).any() for v in columns.values()):
        return _empty(title, "no values: " + ", ".join(columns) + " are all unknown")
    use_log = _use_log_x(steps, log_x)
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.07)
    notes: list[str] = []
    for row, (panel, log) in enumerate(zip(panels, log_y), start=1):
        for col, name, line in panel:
            values = columns[col]
            if not np.isfinite(values).any():
                notes.append(f"{name} unknown")
                continue
            fig.add_trace(go.Scatter(x=_clean(steps), y=_clean(values, positive=log), name=name,
                                     mode="lines", line=line, connectgaps=False,
                                     visible=(visible_when or {}).get(col, True)), row=row, col=1)
        fig.update_yaxes(type="log" if log else "linear", title_text=y_titles[row - 1], row=row, col=1)
    x_title = "step"
    if use_log:
        x_title += " (log scale; step 0 not shown)" if (steps <= 0).any() else " (log scale)"
    fig.update_xaxes(type="log" if use_log else "linear")
    fig.update_xaxes(title_text=x_title, row=len(panels), col=1)
    _add_phases(fig, phases, steps, use_log, len(panels), notes)
    return _finish(fig, title, notes, height)


# ---------------------------------------------------------------- curves over training

def loss_curves(table: Mapping[str, Any], phases: PhasesLike = None, *,
                log_x: bool | None = None, title: str = "Loss and accuracy") -> go.Figure:
    """Train / test (and full-grid) cross-entropy on a log axis above train / test accuracy ([P22], [N23]).

    The phases are shaded (memorisation, circuit formation, cleanup) with dotted lines where train and
    test accuracy first reach 99%. ``log_x=None`` puts steps on a log axis when they span two decades.
    """
    panels = [[("train_loss", "train loss", dict(color=COLORS["train"])),
               ("test_loss", "test loss", dict(color=COLORS["test"])),
               ("full_loss", "full-grid loss", dict(color=COLORS["full"], dash="dot"))],
              [("train_acc", "train accuracy", dict(color=COLORS["train"])),
               ("test_acc", "test accuracy", dict(color=COLORS["test"])),
               ("full_acc", "full-grid accuracy", dict(color=COLORS["full"], dash="dot"))]]
    return _curves(table, panels, [True, False], ["loss", "accuracy"], phases, log_x, title, 620)


def restricted_excluded_curves(table: Mapping[str, Any], phases: PhasesLike = None, *,
                               log_x: bool | None = None,
                               title: str = "Restricted and excluded loss") -> go.Figure:
    """Restricted loss (logits projected on the key-frequency directions) and excluded loss (those
    directions removed) of [N23], with train / test loss dashed for reference. Per-frequency excluded
    losses ``excluded_loss_k{k}`` are listed in the legend, hidden until clicked.
    """
    per_k = sorted((c for c in table if c.startswith("excluded_loss_k") and c[15:].isdigit()),
                   key=lambda c: int(c[15:]))
    panel = [("restricted_loss", "restricted loss", dict(color=COLORS["restricted"])),
             ("excluded_loss", "excluded loss", dict(color=COLORS["excluded"])),
             ("train_loss", "train loss", dict(color=COLORS["train"], dash="dash", width=1)),
             ("test_loss", "test loss", dict(color=COLORS["test"], dash="dash", width=1))]
    panel += [(c, f"excluded loss, k = {c[15:]}", dict(dash="dot", width=1)) for c in per_k]
    return _curves(table, [panel], [True], ["loss"], phases, log_x, title, 480,
                   visible_when={c: "legendonly" for c in per_k})


def weight_curves(table: Mapping[str, Any], phases: PhasesLike = None, *,
                  log_x: bool | None = None, title: str = "Sparsity and weight norm") -> go.Figure:
    """Gini coefficients of the Fourier norms of W_E and W_L and the cos(w(a+b-c)) fraction of variance
    explained (0 to 1) above the sum of squared weights ([N23]: cleanup shows as the Gini jump and the
    weight-norm fall).
    """
    panels = [[("gini_W_E", "Gini of W_E Fourier norms", dict(color="#17becf")),
               ("gini_W_L", "Gini of W_L Fourier norms", dict(color="#bcbd22")),
               ("cos_fve", "cos(w(a+b-c)) FVE", dict(color="#e377c2", dash="dash"))],
              [("sum_sq_weights", "sum of squared weights", dict(color="#8c564b"))]]
    return _curves(table, panels, [False, False], ["Gini / FVE", "sum of squared weights"], phases,
                   log_x, title, 560)


def train_only_curves(table: Mapping[str, Any], phases: PhasesLike = None, *,
                      log_x: bool | None = None, title: str = "Train-only measures") -> go.Figure:
    """The train-only measures (``grokscope.monitor``: key frequencies from the weights, losses on the
    train rows) with the test loss dashed for reference, above the pathway measures
    (``grokscope.pathways``, where the table has them) and the test accuracy.

    >>> fig = train_only_curves({"step": [0, 10], "trainonly_excluded_loss": [4.0, 6.0],
    ...                          "pathway_distance": [0.1, 0.4]})
    >>> [trace.name for trace in fig.data]
    ['excluded loss (train-only)', 'pathway distance']
    """
    panels = [[("trainonly_train_loss", "train loss", dict(color=COLORS["train"])),
               ("trainonly_restricted_loss", "restricted loss (train-only)", dict(color=COLORS["restricted"])),
               ("trainonly_excluded_loss", "excluded loss (train-only)", dict(color=COLORS["excluded"])),
               ("test_loss", "test loss (reference)", dict(color=COLORS["test"], dash="dash", width=1))],
              [("pathway_distance", "pathway distance", dict(color="#ff7f0e")),
               ("label_consistency", "label consistency", dict(color="#17becf")),
               ("test_acc", "test accuracy (reference)", dict(color=COLORS["test"], dash="dash", width=1))]]
    present = [[entry for entry in panel if entry[0] in table] for panel in panels]
    kept = [(panel, log, name) for panel, log, name in zip(present, [True, False], ["loss", "pathways / accuracy"])
            if panel]
    if not kept:
        return _empty(title, "no train-only columns: nothing to plot")
    return _curves(table, [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept], phases, log_x,
                   title, 300 + 260 * len(kept))


# ---------------------------------------------------------------- one checkpoint

def fourier_norms(norms: Float[Tensor, "n_freq"] | Float[np.ndarray, "n_freq"],
                  key_freqs: Sequence[int] = (), *,
                  component_norms: Float[Tensor, "n_comp"] | Float[np.ndarray, "n_comp"] | None = None,
                  component_labels: Sequence[str] | None = None,
                  title: str = "Embedding Fourier norms") -> go.Figure:
    """Bars of the per-frequency norm sqrt(||cos_k||^2 + ||sin_k||^2) of W_E, k = 1..(p-1)/2 ([N23]),
    the key frequencies in a second colour and labelled; per-component norms in a lower panel if given.
    """
    values = _array(norms, "fourier_norms").reshape(-1)
    n = values.shape[0]
    bad = [k for k in key_freqs if not 1 <= int(k) <= n]
    if bad:
        raise GrokscopeError(f"key frequencies {bad}", expected=f"frequencies in 1..{n}", where="fourier_norms")
    if n == 0 or not np.isfinite(values).any():
        return _empty(title, "no embedding Fourier norms")
    keys = sorted({int(k) for k in key_freqs})
    freqs = np.arange(1, n + 1)
    is_key = np.isin(freqs, keys)
    rows = 2 if component_norms is not None else 1
    fig = make_subplots(rows=rows, cols=1, vertical_spacing=0.15)
    fig.add_trace(go.Bar(x=freqs[~is_key].tolist(), y=_clean(values[~is_key]), name="frequency",
                         marker_color=COLORS["other"], width=0.8), row=1, col=1)
    if keys:
        fig.add_trace(go.Bar(x=keys, y=_clean(values[is_key]), name="key frequency",
                             marker_color=COLORS["key"], width=0.8, text=[f"k={k}" for k in keys],
                             textposition="outside"), row=1, col=1)
    fig.update_xaxes(title_text="frequency k", row=1, col=1)
    fig.update_yaxes(title_text="norm", row=1, col=1)
    notes = [] if keys else ["no key frequencies given"]
    if component_norms is not None:
        comp = _array(component_norms, "fourier_norms component_norms").reshape(-1)
        labels = list(component_labels) if component_labels is not None else [str(i) for i in range(comp.size)]
        if len(labels) != comp.size:
            raise GrokscopeError(f"{len(labels)} component labels", expected=f"{comp.size}, one per norm",
                                 where="fourier_norms")
        fig.add_trace(go.Bar(x=labels, y=_clean(comp), name="component", marker_color="#7f7f7f"),
                      row=2, col=1)
        fig.update_xaxes(type="category", title_text="Fourier component", row=2, col=1)
        fig.update_yaxes(title_text="norm", row=2, col=1)
    return _finish(fig, title, notes, 420 * rows, hovermode="closest", barmode="overlay")


def neuron_clusters(neuron_freq: Int[Tensor, "d_mlp"] | Int[np.ndarray, "d_mlp"],
                    frac_explained: Float[Tensor, "d_mlp"] | Float[np.ndarray, "d_mlp"], *,
                    threshold: float = 0.85, title: str = "Neuron frequency clusters") -> go.Figure:
    """Neurons per frequency cluster and the histogram of the fraction of each neuron's variance
    explained by its frequency block {const, cos k, sin k}^2 ([N23]). A neuron is "unexplained" when its
    frequency is 0 or its fraction is below ``threshold`` (drawn on the histogram).
    """
    freq = _array(neuron_freq, "neuron_clusters neuron_freq").reshape(-1)
    frac = _array(frac_explained, "neuron_clusters frac_explained").reshape(-1)
    if freq.shape != frac.shape:
        raise GrokscopeError(f"{freq.size} frequencies and {frac.size} fractions",
                             expected="one of each per neuron", where="neuron_clusters")
    if freq.size == 0:
        return _empty(title, "no neurons")
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
    fig.add_trace(go.Histogram(x=_clean(frac), xbins=dict(start=0, end=1.0001, size=0.025),
                               name="fraction explained", marker_color=COLORS["other"]), row=1, col=2)
    fig.add_vline(x=threshold, row=1, col=2, line=dict(dash="dash", color="#444"),
                  label=dict(text=f"threshold {threshold:g}", textposition="end", font=dict(size=10)))
    fig.update_xaxes(title_text="fraction of variance explained", range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(title_text="neurons", row=1, col=2)
    share = float(np.mean(explained & (np.nan_to_num(freq) != 0)))
    notes = [f"{share:.1%} of {freq.size} neurons explained at >= {threshold:g}"]
    return _finish(fig, title, notes, 420, hovermode="closest", showlegend=False)


def embedding_circles(circles: Sequence[Any], *, columns: int = 3,
                      title: str = "Embedding circles") -> go.Figure:
    """One subplot per circle of [Z23]: the token embeddings projected on the circle's two directions,
    each point labelled with its token. A circle is ``{k, delta, points: (p, 2), labels}``, with an
    optional ``label`` (clock / pizza) shown in the subplot title.
    """
    if len(circles) == 0:
        return _empty(title, "no circles found in the embedding")
    cols = max(1, min(columns, len(circles)))
    rows = math.ceil(len(circles) / cols)
    circles = [_as_mapping(circle) for circle in circles]
    titles = []
    for i, circle in enumerate(circles):
        text = f"circle {i + 1}: k = {circle.get('k', '?')}, delta = {circle.get('delta', '?')}"
        titles.append(text + (f" ({circle['label']})" if circle.get("label") else ""))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=0.12 / rows)
    for i, circle in enumerate(circles):
        where = f"embedding_circles circle {i + 1}"
        points = _array(circle.get("points", []), where)
        if points.ndim != 2 or points.shape[1] != 2:
            raise GrokscopeError(f"points of shape {tuple(points.shape)}", expected="(n_tokens, 2)", where=where)
        labels = circle.get("labels")
        labels = list(range(points.shape[0])) if labels is None else [int(t) for t in _array(labels, where)]
        if len(labels) != points.shape[0]:
            raise GrokscopeError(f"{len(labels)} labels", expected=f"{points.shape[0]}, one per point", where=where)
        row, col = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(x=_clean(points[:, 0]), y=_clean(points[:, 1]), mode="markers+text",
                                 text=[str(t) for t in labels], textposition="top center",
                                 textfont=dict(size=8), name=titles[i],
                                 marker=dict(color=labels, colorscale="Twilight", size=7),
                                 hovertemplate="token %{text}<extra></extra>"), row=row, col=col)
        axis = "" if i == 0 else str(i + 1)
        fig.update_layout({f"xaxis{axis}": dict(scaleanchor=f"y{axis}", scaleratio=1, showticklabels=False),
                           f"yaxis{axis}": dict(showticklabels=False)})
    return _finish(fig, title, [], 380 * rows, hovermode="closest", showlegend=False)


def logit_map(grid: Float[Tensor, "p p"] | Float[np.ndarray, "p p"], *,
              title: str = "Correct-class logit over (a+b, a-b)") -> go.Figure:
    """Heatmap of M[(a+b) mod p, (a-b) mod p] = logit of the correct class ([Z23]): rows (y) are a+b,
    columns (x) are a-b. A clock is flat along a-b; a pizza varies with a-b (|cos(w(a-b)/2)|).
    """
    values = _array(grid, "logit_map")
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise GrokscopeError(f"shape {tuple(values.shape)}", expected="a square (p, p) grid", where="logit_map")
    if values.size == 0 or not np.isfinite(values).any():
        return _empty(title, "no correct-logit map")
    p = values.shape[0]
    z = [_clean(row) for row in values]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(p)), y=list(range(p)), colorscale="Viridis",
                               colorbar=dict(title=dict(text="logit")), name="correct logit",
                               hovertemplate="a+b=%{y}, a-b=%{x}: %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="(a - b) mod p", constrain="domain")
    fig.update_yaxes(title_text="(a + b) mod p", scaleanchor="x", scaleratio=1)
    return _finish(fig, title, [], 560, hovermode="closest")


# ---------------------------------------------------------------- a folder of models

def _model_row(model: Mapping[str, Any], x: str, y: str) -> dict:
    classification = _as_mapping(model.get("classification"))
    source = _as_mapping(model.get("source"))
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
        return _empty(title, f"no model has both {x} and {y}" if rows else "no models")
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
    return _finish(fig, title, notes, 500, hovermode="closest",
                   legend=dict(orientation="v", y=1, x=1.02, yanchor="top"))


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
