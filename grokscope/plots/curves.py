"""Figures of one run's table of measures over training: loss and accuracy, restricted and excluded
loss, sparsity and weight norm ([P22], [N23]), with the phases shaded.

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

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokscope.plots._base import (COLORS, PHASE_COLORS, PhasesLike, as_array, as_mapping, column,
                                   empty_figure, finish, finite_list, use_log_x)

__all__ = ["phase_spans", "loss_curves", "restricted_excluded_curves", "weight_curves", "train_only_curves"]


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
    ph = as_mapping(phases)
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
    ph = as_mapping(phases)
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
        return empty_figure(title, "no step column: nothing to plot")
    steps = as_array(table["step"], "table column 'step'").reshape(-1)
    n = steps.shape[0]
    columns = {col: column(table, col, n) for panel in panels for col, _, _ in panel}
    if n == 0 or not any(np.isfinite(v).any() for v in columns.values()):
        return empty_figure(title, "no values: " + ", ".join(columns) + " are all unknown")
    use_log = use_log_x(steps, log_x)
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.07)
    notes: list[str] = []
    for row, (panel, log) in enumerate(zip(panels, log_y), start=1):
        for col, name, line in panel:
            values = columns[col]
            if not np.isfinite(values).any():
                notes.append(f"{name} unknown")
                continue
            fig.add_trace(go.Scatter(x=finite_list(steps), y=finite_list(values, positive=log), name=name,
                                     mode="lines", line=line, connectgaps=False,
                                     visible=(visible_when or {}).get(col, True)), row=row, col=1)
        fig.update_yaxes(type="log" if log else "linear", title_text=y_titles[row - 1], row=row, col=1)
    x_title = "step"
    if use_log:
        x_title += " (log scale; step 0 not shown)" if (steps <= 0).any() else " (log scale)"
    fig.update_xaxes(type="log" if use_log else "linear")
    fig.update_xaxes(title_text=x_title, row=len(panels), col=1)
    _add_phases(fig, phases, steps, use_log, len(panels), notes)
    return finish(fig, title, notes, height)


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
        return empty_figure(title, "no train-only columns: nothing to plot")
    return _curves(table, [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept], phases, log_x,
                   title, 300 + 260 * len(kept))
