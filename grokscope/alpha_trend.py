"""[Z23]'s attention-rate trend: the published one-layer table, a sweep's medians per bin, and the two compared.

[Z23] trained one-layer transformers on a + b mod 59 at random attention rates alpha and released
their result table (``result/1l_fixedwidth.csv`` of the paper's code release). Its runs with one
layer, d_model 128, ReLU and tokens [a, b] (no separate b vocabulary, no ``=``) are 2,381 runs with
signatures, all generalised (test accuracy >= 0.997). Per 0.1-wide bin of alpha, ``Z23_ONE_LAYER``
holds the quartiles of their gradient symmetricity (GS) and runner-up distance irrelevance (DI) and
the share with circularity > 0.995 (SCIENCE.md section 8): GS about 0.99 below alpha = 0.5, falling
to ~0.5 near alpha = 1; DI rising from ~0.35 to ~0.85.

A sweep's bin *matches* a published bin when its median lies inside the published inter-quartile
range (q1 <= median <= q3), and lies *within the spread* when the range of its members' values
[min, max] meets that quartile range (the two spreads overlap). [Z23]'s runs were not seeded: runs in
one bin differ by seed, split and the exact alpha, so that range is the spread of one run's value there. Quartiles are rounded to
0.001, so a comparison can be off by at most 0.0005 at an edge.

>>> rows = [{"alpha": a, "accuracy": 1.0, "gradient_symmetricity": gs, "distance_irrelevance_runnerup": di}
...         for a, gs, di in ((0.0, 0.993, 0.30), (0.05, 0.995, 0.40), (0.95, 0.70, 0.85), (1.0, 0.60, 0.86))]
>>> [(t.label, t.n, round(t.gs_median, 3), round(t.di_median, 3)) for t in bin_trends(rows)]
[('0.0-0.1', 2, 0.994, 0.35), ('0.9-1.0', 2, 0.65, 0.855)]
>>> [(c.label, c.gs_match, c.di_match) for c in compare(bin_trends(rows))]
[('0.0-0.1', True, True), ('0.9-1.0', False, True)]
"""

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grokscope.population import ALPHA_BINS

GENERALISED = 0.99
"""Full-grid accuracy a member needs to count (every published run had generalised)."""


@dataclass(frozen=True)
class Quartiles:
    """First quartile, median and third quartile of a value over the runs of one bin."""

    q1: float
    median: float
    q3: float

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies inside the inter-quartile range."""
        return self.q1 <= value <= self.q3

    def meets(self, low: float, high: float) -> bool:
        """Whether the range [low, high] overlaps the inter-quartile range."""
        return low <= self.q3 and self.q1 <= high


@dataclass(frozen=True)
class PublishedBin:
    """One 0.1-wide alpha bin of [Z23]'s released one-layer table."""

    low: float
    high: float
    n: int
    gs: Quartiles
    di_runnerup: Quartiles
    circular_share: float

    @property
    def label(self) -> str:
        return f"{self.low:.1f}-{self.high:.1f}"


def _bin(low: float, n: int, gs: tuple, di: tuple, circular: float) -> PublishedBin:
    return PublishedBin(low, round(low + 0.1, 1), n, Quartiles(*gs), Quartiles(*di), circular)


Z23_ONE_LAYER: tuple[PublishedBin, ...] = (
    # low, runs, GS (q1, median, q3), runner-up DI (q1, median, q3), share with circularity > 0.995
    _bin(0.0, 241, (0.992, 0.993, 0.994), (0.196, 0.362, 0.618), 0.38),
    _bin(0.1, 244, (0.991, 0.992, 0.993), (0.208, 0.335, 0.616), 0.40),
    _bin(0.2, 236, (0.991, 0.992, 0.993), (0.206, 0.374, 0.637), 0.40),
    _bin(0.3, 226, (0.991, 0.992, 0.993), (0.203, 0.332, 0.595), 0.39),
    _bin(0.4, 260, (0.992, 0.993, 0.994), (0.246, 0.339, 0.595), 0.28),
    _bin(0.5, 261, (0.938, 0.991, 0.993), (0.330, 0.449, 0.600), 0.25),
    _bin(0.6, 218, (0.763, 0.871, 0.928), (0.535, 0.621, 0.680), 0.28),
    _bin(0.7, 232, (0.627, 0.722, 0.819), (0.654, 0.698, 0.754), 0.37),
    _bin(0.8, 237, (0.521, 0.613, 0.691), (0.733, 0.776, 0.815), 0.35),
    _bin(0.9, 226, (0.394, 0.483, 0.567), (0.803, 0.853, 0.896), 0.34),
)
"""[Z23]'s released one-layer, width-128 runs per alpha bin (2,381 runs; medians as in SCIENCE.md section 8)."""


@dataclass(frozen=True)
class BinTrend:
    """A sweep's generalised members in one alpha bin: count, median and range of GS and runner-up DI.

    ``left_out`` counts the bin's members without both signatures or below ``GENERALISED`` accuracy.
    """

    low: float
    high: float
    n: int
    left_out: int
    gs_median: float
    gs_min: float
    gs_max: float
    di_median: float
    di_min: float
    di_max: float

    @property
    def label(self) -> str:
        return f"{self.low:.1f}-{self.high:.1f}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def bin_trends(rows: Sequence[Mapping[str, Any]]) -> list[BinTrend]:
    """Per alpha bin (``population.ALPHA_BINS``) of population.csv rows: the generalised members' GS
    and runner-up DI medians and ranges, bins without any generalised member omitted."""
    members: dict[int, list] = {}
    left_out: dict[int, int] = {}
    for row in rows:
        index = ALPHA_BINS.index(float(row["alpha"])) if _finite(row.get("alpha")) else None
        if index is None:
            continue
        gs, di, accuracy = (row.get(name) for name in
                            ("gradient_symmetricity", "distance_irrelevance_runnerup", "accuracy"))
        if _finite(gs) and _finite(di) and _finite(accuracy) and accuracy >= GENERALISED:
            members.setdefault(index, []).append((float(gs), float(di)))
        else:
            left_out[index] = left_out.get(index, 0) + 1
    trends = []
    for index in sorted(members):
        gs, di = zip(*members[index])
        low, high = ALPHA_BINS.edges[index], ALPHA_BINS.edges[index + 1]
        trends.append(BinTrend(round(low, 10), round(high, 10), len(gs), left_out.get(index, 0),
                               statistics.median(gs), min(gs), max(gs),
                               statistics.median(di), min(di), max(di)))
    return trends


@dataclass(frozen=True)
class BinComparison:
    """One alpha bin, ours against [Z23]'s: whether each median lies in the published quartile range."""

    ours: BinTrend
    published: PublishedBin

    @property
    def label(self) -> str:
        return self.published.label

    @property
    def gs_match(self) -> bool:
        return self.published.gs.holds(self.ours.gs_median)

    @property
    def di_match(self) -> bool:
        return self.published.di_runnerup.holds(self.ours.di_median)

    @property
    def gs_within_spread(self) -> bool:
        return self.published.gs.meets(self.ours.gs_min, self.ours.gs_max)

    @property
    def di_within_spread(self) -> bool:
        return self.published.di_runnerup.meets(self.ours.di_min, self.ours.di_max)


def compare(trends: Sequence[BinTrend], published: Sequence[PublishedBin] = Z23_ONE_LAYER) -> list[BinComparison]:
    """Each of our bins next to the published bin with the same interval (bins [Z23] lacks are left out)."""
    by_label = {b.label: b for b in published}
    return [BinComparison(t, by_label[t.label]) for t in trends if t.label in by_label]


def trend_matches(comparisons: Sequence[BinComparison], published: Sequence[PublishedBin] = Z23_ONE_LAYER) -> bool:
    """Whether every published bin is covered and matched on both GS and runner-up DI."""
    matched = {c.label for c in comparisons if c.gs_match and c.di_match}
    return all(b.label in matched for b in published)


def trend_within_spread(comparisons: Sequence[BinComparison],
                        published: Sequence[PublishedBin] = Z23_ONE_LAYER) -> bool:
    """Whether every published bin is covered and our members' range meets its quartiles on GS and DI."""
    met = {c.label for c in comparisons if c.gs_within_spread and c.di_within_spread}
    return all(b.label in met for b in published)


def markdown_table(comparisons: Sequence[BinComparison]) -> str:
    """The comparison as a markdown table: per bin n, our median [min, max] ("ours"), [Z23]'s median
    [q1, q3], and a check mark where our median lies in the published quartile range (a tilde where
    only our members' range meets it).

    >>> rows = [{"alpha": 0.05, "accuracy": 1.0, "gradient_symmetricity": 0.99,
    ...          "distance_irrelevance_runnerup": 0.3}]
    >>> print(markdown_table(compare(bin_trends(rows))))
    | alpha | n | GS ours | GS [Z23] | DI ours | DI [Z23] |
    |---|---|---|---|---|---|
    | 0.0-0.1 | 1 | 0.990 [0.990, 0.990] | 0.993 [0.992, 0.994] | 0.300 [0.300, 0.300] ✓ | 0.362 [0.196, 0.618] |
    """
    def mark(match: bool, within_spread: bool) -> str:
        return " ✓" if match else " ~" if within_spread else ""

    lines = ["| alpha | n | GS ours | GS [Z23] | DI ours | DI [Z23] |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        o, p = c.ours, c.published
        n = f"{o.n}" + (f" (+{o.left_out} left out)" if o.left_out else "")
        lines.append(f"| {c.label} | {n} "
                     f"| {o.gs_median:.3f} [{o.gs_min:.3f}, {o.gs_max:.3f}]{mark(c.gs_match, c.gs_within_spread)} "
                     f"| {p.gs.median:.3f} [{p.gs.q1:.3f}, {p.gs.q3:.3f}] "
                     f"| {o.di_median:.3f} [{o.di_min:.3f}, {o.di_max:.3f}]{mark(c.di_match, c.di_within_spread)} "
                     f"| {p.di_runnerup.median:.3f} [{p.di_runnerup.q1:.3f}, {p.di_runnerup.q3:.3f}] |")
    return "\n".join(lines)
