"""Many runs -> one table: label fractions per cell, medians per cell, phase-diagram grids [Z23].

Pure functions of a population table: a list of rows (dicts), one per member, as
``grokscope analyze`` writes them into population.csv (docs/populations.md lists the columns). No
files, no printing; ``Population`` adds a path so that ``population.run(id)`` can read a member.

A *cell* is one combination of values of chosen axes (e.g. ``alpha`` x ``d_model``). Axes with few
distinct values are categorical (one cell per value); continuous ones are cut into intervals: the
attention rate into the 0.1-wide bins of [Z23]'s published table (SCIENCE.md section 8), others into
``DEFAULT_N_BINS`` equal-width bins over their range, or any ``Bins`` given.

>>> rows = [{"alpha": 0.05, "label": "pizza", "gradient_symmetricity": 0.99},
...         {"alpha": 0.12, "label": "pizza", "gradient_symmetricity": 0.98},
...         {"alpha": 0.93, "label": "clock", "gradient_symmetricity": 0.45},
...         {"alpha": 0.97, "label": "uninterpreted", "gradient_symmetricity": 0.60}]
>>> bins = {"alpha": ALPHA_BINS}
>>> label_fractions(rows)["fractions"]
{'clock': 0.25, 'pizza': 0.5, 'uninterpreted': 0.25}
>>> [(c["alpha"], c["n"], c["fractions"]["pizza"]) for c in cells(rows, ["alpha"], bins)]
[('0.0-0.1', 1, 1.0), ('0.1-0.2', 1, 1.0), ('0.9-1.0', 2, 0.0)]
>>> grid = phase_grid(rows, "alpha", None, "gradient_symmetricity", bins=bins)
>>> grid.x, grid.z
(['0.0-0.1', '0.1-0.2', '0.9-1.0'], [[0.99, 0.98, 0.525]])
"""

import html
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grokscope.errors import GrokscopeError

LABELS = ("clock", "pizza", "uninterpreted")
CIRCLE_LABELS = ("clock", "pizza", "accompanying", "mixed", "unexplained")
MAX_CATEGORIES = 12
"""An axis with more distinct values than this is continuous and gets binned."""
DEFAULT_N_BINS = 10
EDGE_TOLERANCE = 1e-9
"""Relative slack at bin edges: 0.3 lies in [0.3, 0.4) even though 0.3 / 0.1 = 2.9999999999999996."""

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Bins:
    """Half-open intervals [edges[i], edges[i+1]); the last one is closed so the top edge is inside.

    >>> ALPHA_BINS.index(0.3), ALPHA_BINS.index(1.0), ALPHA_BINS.name(9)
    (3, 9, '0.9-1.0')
    """

    edges: tuple[float, ...]

    def __post_init__(self):
        edges = tuple(float(e) for e in self.edges)
        if len(edges) < 2 or any(not b > a for a, b in zip(edges, edges[1:])):
            raise GrokscopeError(f"bin edges {list(self.edges)}", expected="at least two increasing numbers",
                                 where="Bins")
        object.__setattr__(self, "edges", edges)

    @classmethod
    def width(cls, start: float, stop: float, width: float) -> "Bins":
        """Bins of one width from ``start`` to at least ``stop``."""
        if not width > 0:
            raise GrokscopeError(f"bin width {width!r}", expected="a positive number", where="Bins.width")
        n = max(1, math.ceil((stop - start) / width - EDGE_TOLERANCE))
        return cls(tuple(round(start + i * width, 12) for i in range(n + 1)))

    def index(self, value: float) -> int | None:
        """The interval holding ``value`` (None outside the edges or for NaN)."""
        if value is None or not math.isfinite(value):
            return None
        span = self.edges[-1] - self.edges[0]
        slack = EDGE_TOLERANCE * max(span, 1.0)
        if value < self.edges[0] - slack or value > self.edges[-1] + slack:
            return None
        for i in range(len(self.edges) - 2, -1, -1):
            if value >= self.edges[i] - slack:
                return i
        return 0

    def name(self, i: int) -> str:
        """The interval's label, e.g. '0.6-0.7' (what tables and figure axes show)."""
        return f"{_short(self.edges[i])}-{_short(self.edges[i + 1])}"


ALPHA_BINS = Bins.width(0.0, 1.0, 0.1)
"""The attention-rate intervals of [Z23]'s published one-layer table (SCIENCE.md section 8)."""


def _short(value: float) -> str:
    return f"{value:.1f}" if float(value).is_integer() and abs(value) < 1e6 else f"{value:.6g}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def column(rows: Sequence[Row], name: str) -> list[Any]:
    """The values of one column (None where a row lacks it)."""
    return [row.get(name) for row in rows]


def axis_values(rows: Sequence[Row], axis: str) -> list[Any]:
    """The distinct values of ``axis``, sorted (numbers numerically, others as text)."""
    values = {row.get(axis) for row in rows if row.get(axis) is not None}
    return sorted(values, key=lambda v: (0, _number(v), "") if _number(v) is not None else (1, 0.0, str(v)))


def default_bins(rows: Sequence[Row], axis: str) -> Bins | None:
    """None (categorical) for an axis with at most ``MAX_CATEGORIES`` values or non-numeric values;
    otherwise ``ALPHA_BINS`` for the attention rate and ``DEFAULT_N_BINS`` equal bins for others."""
    values = axis_values(rows, axis)
    numbers = [_number(v) for v in values]
    if len(values) <= MAX_CATEGORIES or any(n is None for n in numbers):
        return None
    if axis == "alpha" and min(numbers) >= 0 and max(numbers) <= 1:
        return ALPHA_BINS
    low, high = min(numbers), max(numbers)
    return Bins(tuple(low + (high - low) * i / DEFAULT_N_BINS for i in range(DEFAULT_N_BINS + 1)))


def resolve_bins(rows: Sequence[Row], axes: Sequence[str],
                 bins: Mapping[str, "Bins | float | Sequence[float] | None"] | None = None) -> dict[str, Bins | None]:
    """Bins per axis: given ones (a ``Bins``, a width, or a list of edges) or ``default_bins``."""
    given = dict(bins or {})
    resolved: dict[str, Bins | None] = {}
    for axis in axes:
        spec = given.get(axis, "default")
        if isinstance(spec, str) and spec == "default":
            resolved[axis] = default_bins(rows, axis)
        elif spec is None or isinstance(spec, Bins):
            resolved[axis] = spec
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            numbers = [n for n in (_number(v) for v in axis_values(rows, axis)) if n is not None]
            if not numbers:
                raise GrokscopeError(f"bin width for axis {axis!r} with no numeric values",
                                     expected="a numeric axis", where="bins")
            start = math.floor(min(numbers) / spec + EDGE_TOLERANCE) * spec
            resolved[axis] = Bins.width(start, max(numbers), float(spec))
        else:
            resolved[axis] = Bins(tuple(spec))
    return resolved


def cell_value(row: Row, axis: str, bins: Bins | None) -> Any:
    """The cell coordinate of ``row`` on ``axis``: its value, or its interval's name when binned."""
    value = row.get(axis)
    if bins is None:
        return value
    index = bins.index(_number(value))
    return None if index is None else bins.name(index)


def _cell_order(rows: Sequence[Row], axis: str, bins: Bins | None) -> list[Any]:
    if bins is None:
        return axis_values(rows, axis)
    used = {bins.index(_number(r.get(axis))) for r in rows} - {None}
    return [bins.name(i) for i in sorted(used)]


def label_counts(rows: Sequence[Row], label_column: str = "label") -> dict[str, int]:
    """Members per label (every label of ``LABELS`` present, others added as found)."""
    counts = dict.fromkeys(LABELS, 0)
    for row in rows:
        label = row.get(label_column)
        if label is not None and label != "":
            counts[label] = counts.get(label, 0) + 1
    return counts


def label_fractions(rows: Sequence[Row], label_column: str = "label") -> dict[str, Any]:
    """``{"n", "counts", "fractions", "pizza_share"}`` over the rows with a label.

    ``pizza_share`` is pizza / (pizza + clock): [Z23]'s question of which algorithm the interpretable
    runs chose (None when there is neither).
    """
    counts = label_counts(rows, label_column)
    n = sum(counts.values())
    fractions = {label: (count / n if n else None) for label, count in counts.items()}
    solved = counts.get("pizza", 0) + counts.get("clock", 0)
    return {"n": n, "counts": counts, "fractions": fractions,
            "pizza_share": counts.get("pizza", 0) / solved if solved else None}


def median(values: Sequence[Any]) -> float | None:
    """Median of the finite numbers among ``values`` (None when there are none)."""
    numbers = [n for n in (_number(v) for v in values) if n is not None]
    return statistics.median(numbers) if numbers else None


def group(rows: Sequence[Row], axes: Sequence[str], bins: Mapping[str, Bins | None] | None = None
          ) -> dict[tuple, list[Row]]:
    """Rows by cell (a tuple of ``cell_value`` per axis), cells in axis order; rows off every bin dropped."""
    bins = resolve_bins(rows, axes, bins)
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        key = tuple(cell_value(row, axis, bins[axis]) for axis in axes)
        if any(k is None for k in key):
            continue
        groups.setdefault(key, []).append(row)
    orders = [_cell_order(rows, axis, bins[axis]) for axis in axes]
    position = [{v: i for i, v in enumerate(order)} for order in orders]
    return dict(sorted(groups.items(), key=lambda item: tuple(position[i][v] for i, v in enumerate(item[0]))))


MEDIAN_COLUMNS = ("gradient_symmetricity", "distance_irrelevance", "distance_irrelevance_runnerup",
                  "circularity", "spectral_circularity", "delay_ratio")
"""Columns whose median ``cells`` reports per cell."""


def cells(rows: Sequence[Row], axes: Sequence[str], bins: Mapping[str, Bins | None] | None = None, *,
          label_column: str = "label", medians: Sequence[str] = MEDIAN_COLUMNS) -> list[dict[str, Any]]:
    """One dict per cell of ``axes``: the cell's coordinates, its label fractions, medians of ``medians``.

    >>> rows = [{"d_model": 64, "label": "clock", "gradient_symmetricity": 0.3},
    ...         {"d_model": 64, "label": "pizza", "gradient_symmetricity": 0.99},
    ...         {"d_model": 128, "label": "pizza", "gradient_symmetricity": 0.98}]
    >>> [(c["d_model"], c["n"], c["pizza_share"], c["median_gradient_symmetricity"]) for c in cells(rows, ["d_model"])]
    [(64, 2, 0.5, 0.645), (128, 1, 1.0, 0.98)]
    """
    out = []
    for key, members in group(rows, axes, bins).items():
        cell = dict(zip(axes, key))
        cell.update(label_fractions(members, label_column))
        for name in medians:
            cell[f"median_{name}"] = median(column(members, name))
        out.append(cell)
    return out


@dataclass(frozen=True)
class PhaseGrid:
    """Phase-diagram data: ``z[i][j]`` is the value of cell (x[j], y[i]); None where no member falls.

    ``n[i][j]`` counts the members of the cell; ``y`` is ``[None]`` for a one-axis diagram.
    """

    x_axis: str
    y_axis: str | None
    value: str
    x: list[Any]
    y: list[Any]
    z: list[list[float | None]]
    n: list[list[int]]


def phase_grid(rows: Sequence[Row], x: str, y: str | None, value: str | Callable[[Sequence[Row]], float | None],
               *, bins: Mapping[str, Bins | None] | None = None, name: str | None = None) -> PhaseGrid:
    """Phase-diagram data of ``value`` over the cells of axes ``x`` and ``y`` (``y`` None: one row).

    ``value`` is a column (its median per cell), ``"pizza_share"`` / ``"fraction:<label>"`` (label
    statistics per cell), or a function of the cell's rows.
    """
    axes = [x] if y is None else [x, y]
    resolved = resolve_bins(rows, axes, bins)
    groups = group(rows, axes, resolved)
    xs = _cell_order(rows, x, resolved[x])
    ys = [None] if y is None else _cell_order(rows, y, resolved[y])
    reduce = _reducer(value)
    z = [[None] * len(xs) for _ in ys]
    n = [[0] * len(xs) for _ in ys]
    for key, members in groups.items():
        j, i = xs.index(key[0]), (0 if y is None else ys.index(key[1]))
        z[i][j] = reduce(members)
        n[i][j] = len(members)
    label = name if name is not None else (value if isinstance(value, str) else getattr(value, "__name__", "value"))
    return PhaseGrid(x_axis=x, y_axis=y, value=label, x=xs, y=ys, z=z, n=n)


def _reducer(value: str | Callable) -> Callable[[Sequence[Row]], float | None]:
    if callable(value):
        return value
    if value == "pizza_share":
        return lambda members: label_fractions(members)["pizza_share"]
    if value.startswith("fraction:"):
        label = value.split(":", 1)[1]
        return lambda members: label_fractions(members)["fractions"].get(label, 0.0)
    return lambda members: median(column(members, value))


def varying_axes(rows: Sequence[Row], candidates: Sequence[str]) -> list[str]:
    """The candidates that take more than one value among ``rows``, in the given order."""
    return [axis for axis in candidates if len(axis_values(rows, axis)) > 1]


def default_axes(axes: Sequence[str], rows: Sequence[Row] = ()) -> tuple[str | None, str | None]:
    """The two axes of the main phase diagram: attention rate x width as in [Z23] when swept, else the
    first two swept axes (seed never counts as an axis)."""
    swept = [a for a in axes if a not in ("seed", "split_seed")]
    if rows:
        swept = varying_axes(rows, swept) or swept
    preferred = [a for a in ("alpha", "d_model") if a in swept]
    chosen = preferred + [a for a in swept if a not in preferred]
    return (chosen[0] if chosen else None), (chosen[1] if len(chosen) > 1 else None)


def summary(rows: Sequence[Row], axes: Sequence[str], bins: Mapping[str, Bins | None] | None = None
            ) -> dict[str, Any]:
    """Label fractions overall, per cell of all ``axes`` crossed, and per single axis (JSON-safe)."""
    resolved = resolve_bins(rows, axes, bins)
    return {"labels": label_fractions(rows), "labels_strict": label_fractions(rows, "label_strict"),
            "axes": list(axes),
            "bins": {a: (list(b.edges) if b is not None else None) for a, b in resolved.items()},
            "medians": {f"median_{name}": median(column(rows, name)) for name in MEDIAN_COLUMNS},
            "cells": cells(rows, axes, resolved) if axes else [],
            "by_axis": {axis: cells(rows, [axis], resolved) for axis in axes}}


def _to_pandas(rows: Sequence[Row]):
    try:
        import pandas
    except ImportError:
        return None
    return pandas.DataFrame(list(rows))


@dataclass
class Population:
    """The members of a sweep (or of any folder of runs) as one table [Z23].

    Attributes:
        rows: one dict per member (the population.csv columns).
        axes: the swept settings, in spec order (for a plain folder, the settings that vary).
        root: the folder the members were read from (``run(id)`` reads ``root/<path>``).
        summary: the summary.json object when the population was analysed, else None.
    """

    rows: list[dict[str, Any]]
    axes: list[str] = field(default_factory=list)
    root: str | None = None
    summary: dict[str, Any] | None = None

    @property
    def table(self):
        """A pandas DataFrame when pandas is installed, else the list of row dicts."""
        frame = _to_pandas(self.rows)
        return frame if frame is not None else self.rows

    @property
    def ids(self) -> list[str]:
        return [str(row.get("id")) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, member: str) -> dict[str, Any]:
        """The table row of member ``member`` (GrokscopeError naming the known ids when absent)."""
        for row in self.rows:
            if str(row.get("id")) == str(member):
                return row
        shown = ", ".join(self.ids[:5]) + (", ..." if len(self.rows) > 5 else "")
        raise GrokscopeError(f"member {member!r}", expected=f"one of the {len(self.rows)} ids ({shown})",
                             where=str(self.root or "population"))

    def run(self, member: str):
        """Member ``member`` as a ``grokscope.formats.base.Run`` (read lazily from disk)."""
        from pathlib import Path

        from grokscope.formats import load_run

        row = self.row(member)
        if self.root is None:
            raise GrokscopeError("a population without a folder", expected="one read by load_sweep",
                                 where="Population.run")
        return load_run(Path(self.root) / str(row.get("path") or row.get("id")))

    def labels(self) -> dict[str, Any]:
        """``label_fractions`` of all members."""
        return label_fractions(self.rows)

    def cells(self, axes: Sequence[str] | None = None, bins: Mapping[str, Any] | None = None) -> list[dict]:
        """``cells`` over ``axes`` (default: the swept axes)."""
        return cells(self.rows, list(self.axes if axes is None else axes), bins)

    def figures(self, axes: Sequence[str] | None = None, bins: Mapping[str, Any] | None = None) -> list:
        """``(title, plotly figure)`` pairs: ``grokscope.population_figures.population_figures``."""
        from grokscope.population_figures import population_figures

        return population_figures(self.rows, self.axes, axes=axes, bins=bins)

    def __repr__(self) -> str:
        stats = self.labels()
        counts = ", ".join(f"{count} {label}" for label, count in stats["counts"].items() if count)
        return (f"Population({len(self.rows)} members, axes {self.axes}"
                + (f", {counts}" if counts else "") + (f", root={self.root!r}" if self.root else "") + ")")

    def _repr_html_(self) -> str:
        stats = self.labels()
        head = "".join(f"<tr><th>{html.escape(label)}</th><td>{count}</td>"
                       f"<td>{_percent(stats['fractions'][label])}</td></tr>"
                       for label, count in stats["counts"].items())
        shown = ["id", *self.axes, "seed", "label", "gradient_symmetricity", "distance_irrelevance",
                 "grokking_step"]
        shown = list(dict.fromkeys(c for c in shown if any(c in r for r in self.rows)))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell_text(r.get(c)))}</td>" for c in shown) + "</tr>"
                       for r in self.rows[:10])
        more = f"<p>... {len(self.rows) - 10} more members</p>" if len(self.rows) > 10 else ""
        header = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
        return (f"<div><p><b>Population</b>: {len(self.rows)} members, axes "
                f"{html.escape(', '.join(self.axes) or 'none')}</p><table>{head}</table>"
                f"<table><tr>{header}</tr>{body}</table>{more}</div>")


def _cell_text(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"
