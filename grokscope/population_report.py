"""The offline HTML report of a population (report.html beside population.csv).

Built with the single-run report's page (``grokscope.report.render_report``: plotly.js embedded once,
every text escaped), holding: the label fractions overall (default and strict [Z23] thresholds),
the label fractions and medians per cell of the swept axes, the phase diagrams of
``grokscope.population_figures``, and the per-member table.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grokscope.population_figures import population_figures

MEMBER_COLUMNS = ("id", "label", "reason", "label_strict", "gradient_symmetricity", "distance_irrelevance",
                  "distance_irrelevance_runnerup", "circularity", "spectral_circularity", "accuracy",
                  "memorization_step", "grokking_step", "delay_ratio", "error")
"""Columns of the per-member table, after the swept axes and the seed."""


def _label_table(stats: Mapping[str, Any]) -> dict[str, Any]:
    return {label: f"{count} ({stats['fractions'][label]:.1%})" if stats["fractions"][label] is not None else count
            for label, count in stats["counts"].items()} | {"members with a label": stats["n"],
                                                             "pizza share of clock + pizza": stats["pizza_share"]}


def _cell_rows(cells: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for cell in cells:
        row = {axis: cell.get(axis) for axis in axes}
        row["n"] = cell["n"]
        row.update({label: count for label, count in cell["counts"].items()})
        row["pizza share"] = cell["pizza_share"]
        row["median GS"] = cell.get("median_gradient_symmetricity")
        row["median DI"] = cell.get("median_distance_irrelevance")
        row["median DI (runner-up)"] = cell.get("median_distance_irrelevance_runnerup")
        out.append(row)
    return out


def population_sections(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                        swept: Sequence[str]) -> list[tuple[str, Any]]:
    """The report's text sections as ``(heading, body)`` pairs (bodies are mappings or row lists)."""
    sections: list[tuple[str, Any]] = [
        ("Members", {"members": summary.get("members"), "analysed": summary.get("analysed"),
                     "swept axes": ", ".join(swept) or "none", "phase-diagram axes":
                     ", ".join(summary.get("phase_axes") or []) or "none"}),
        ("Labels (default thresholds)", _label_table(summary["labels"])),
        ("Labels (strict: paper circularity >= 0.99)", _label_table(summary["labels_strict"])),
    ]
    for axis, cells in (summary.get("by_axis") or {}).items():
        sections.append((f"Per {axis}", _cell_rows(cells, [axis])))
    if len(swept) > 1 and summary.get("cells"):
        sections.append((f"Per cell of {' x '.join(swept)}", _cell_rows(summary["cells"], swept)))
    shown = list(dict.fromkeys([*swept, "seed", *MEMBER_COLUMNS]))
    sections.append((f"Every member ({len(rows)})", [{c: r.get(c) for c in shown} for r in rows]))
    return sections


def write_population_report(path: str | os.PathLike, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                            swept: Sequence[str], axes: Sequence[str] | None = None,
                            bins: Mapping[str, Any] | None = None) -> Path:
    """Render the population report and write it atomically to ``path``."""
    from grokscope.report import write_report

    figures = population_figures(rows, swept, axes=axes, bins=bins)
    page = {"grokscope_version": summary.get("grokscope_version"), "source": summary.get("source"),
            "skipped": summary.get("skipped") or []}
    name = Path(str((summary.get("source") or {}).get("path", "population"))).name
    return write_report(path, page, figures, sections=population_sections(summary, rows, swept),
                        title=f"grokscope population: {name}")
