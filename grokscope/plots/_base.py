"""Shared pieces of the figure functions: colours, the plotly template, and the checks that turn
plain data (columns, arrays, tensors, mappings, dataclasses) into float64 arrays and JSON-friendly
lists. Private to :mod:`grokscope.plots`; nothing here reads, writes or shows anything.

>>> finite_list(np.array([1.0, np.nan, -2.0]), positive=True)   # None where a log axis cannot go
[1.0, None, None]
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from grokscope.errors import GrokscopeError

TEMPLATE = "plotly_white"
COLORS = {"train": "#1f77b4", "test": "#d62728", "full": "#7f7f7f", "restricted": "#2ca02c",
          "excluded": "#9467bd", "key": "#ef553b", "other": "#636efa"}
PHASE_COLORS = {"memorisation": "rgba(31,119,180,0.12)", "circuit formation": "rgba(255,127,14,0.14)",
                "cleanup": "rgba(44,160,44,0.14)"}
LABEL_COLORS = {"pizza": "#ff7f0e", "clock": "#1f77b4", "uninterpreted": "#7f7f7f"}

PhasesLike = Any
"""The phases mapping of summary.json, or a dataclass with those fields, or None (no phases)."""


def as_mapping(obj: Any) -> dict:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj)


def as_array(values: Any, where: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise GrokscopeError(f"values that are not numbers ({error})", expected="numbers or None",
                             where=where) from None


def column(table: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    """Column ``name`` as float64 (all NaN when absent), checked against the step count ``n``."""
    if name not in table or table[name] is None:
        return np.full(n, np.nan)
    values = as_array(table[name], f"table column {name!r}").reshape(-1)
    if values.shape[0] != n:
        raise GrokscopeError(f"{values.shape[0]} values", expected=f"{n}, one per step",
                             where=f"table column {name!r}")
    return values


def finite_list(values: np.ndarray, positive: bool = False) -> list[float | None]:
    """JSON-friendly list: None where a value is not finite (or not positive, for log axes)."""
    ok = np.isfinite(values) & ((values > 0) if positive else True)
    return [float(v) if good else None for v, good in zip(values, ok)]


def use_log_x(steps: np.ndarray, log_x: bool | None) -> bool:
    if log_x is not None:
        return log_x
    positive = steps[np.isfinite(steps) & (steps > 0)]
    return bool(positive.size >= 2 and positive.max() / positive.min() >= 100)


def empty_figure(title: str, message: str) -> go.Figure:
    fig = go.Figure(layout=dict(template=TEMPLATE, title=dict(text=title), height=260))
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def finish(fig: go.Figure, title: str, notes: list[str], height: int, **layout: Any) -> go.Figure:
    title_spec: dict = dict(text=title)
    if notes:
        title_spec["subtitle"] = dict(text="; ".join(notes))
    fig.update_layout(**{**dict(template=TEMPLATE, title=title_spec, height=height, hovermode="x unified",
                                legend=dict(orientation="h", yanchor="top", y=-0.12, x=0)), **layout})
    return fig
