"""What `grokscope analyze` writes: measures.csv, summary.json, report.html, and the terminal table.

``summary.json`` (DESIGN.md) holds the task, the checkpoints, the key frequencies with their rule, the
final measures, the phases, the classification and the skipped files. For a folder of independent
models it holds ``models: [...]``, one such object each. Every file is written atomically; NaN is
written as null so the JSON is strict.
"""

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grokscope import __version__
from grokscope.analyze import AnalysisResult
from grokscope.checkpoints import atomic_write

MEASURES_FILE, SUMMARY_FILE, REPORT_FILE = "measures.csv", "summary.json", "report.html"


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf as None, tuples as lists, numpy and torch scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(row: dict, name: str) -> float | None:
    value = row.get(name)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summary_dict(result: AnalysisResult) -> dict[str, Any]:
    """The summary.json object of one analysed run or model (DESIGN.md)."""
    task, info, final = result.task, result.run_info, result.final_row
    phases = result.phases.to_dict() if hasattr(result.phases, "to_dict") else dict(result.phases)
    classification = result.classification.to_dict() if result.classification is not None else None
    summary = {
        "grokscope_version": __version__,
        "source": {"path": str(info.get("source")), "format": info.get("format")},
        "task": {"p": task.p, "op": task.op, "n_ctx": task.n_ctx, "eq_token": task.eq_token,
                 "diff_vocab": task.diff_vocab},
        "attention_rate": info.get("alpha"),
        "checkpoints": {"count": len(result.steps), "steps": result.steps},
        "key_frequencies": {"freqs": list(result.key_freqs.freqs), "rule": result.key_freqs.rule,
                            "threshold": result.key_freqs.threshold},
        "final": {"step": result.steps[-1] if result.steps else None,
                  "accuracy": _number(final, "full_acc"), "loss": _number(final, "full_loss"),
                  "train_loss": _number(final, "train_loss"), "test_loss": _number(final, "test_loss"),
                  "train_accuracy": _number(final, "train_acc"), "test_accuracy": _number(final, "test_acc"),
                  "restricted_loss": _number(final, "restricted_loss"),
                  "excluded_loss": _number(final, "excluded_loss")},
        "phases": phases,
        "classification": classification,
        "notes": list(result.notes),
        "skipped": [dict(entry) for entry in result.skipped],
    }
    return json_safe(summary)


def collection_summary(results: Sequence[AnalysisResult], source: str, fmt: str,
                       skipped: Sequence[dict] = ()) -> dict[str, Any]:
    """summary.json for a folder of independent models or runs: ``models`` holds one summary each."""
    return json_safe({"grokscope_version": __version__, "source": {"path": str(source), "format": fmt},
                      "models": [summary_dict(r) for r in results],
                      "skipped": [dict(s) for s in skipped] + [s for r in results for s in r.skipped]})


def measures_csv(table: dict[str, list]) -> str:
    """The per-checkpoint table as CSV text (header row, then one row per checkpoint; NaN empty)."""
    rows = [{name: values[i] for name, values in table.items()} for i in range(len(table.get("step", [])))]
    return _rows_csv(list(table), rows)


def collection_csv(summaries: Sequence[dict]) -> str:
    """One row per model of a folder: source, task, final measures and the classification."""
    rows = []
    for s in summaries:
        c, final = s.get("classification") or {}, s.get("final") or {}
        rows.append({"path": s["source"]["path"], "format": s["source"]["format"], "p": s["task"]["p"],
                     "attention_rate": s.get("attention_rate"), "step": final.get("step"),
                     "accuracy": final.get("accuracy"), "loss": final.get("loss"),
                     "restricted_loss": final.get("restricted_loss"),
                     "excluded_loss": final.get("excluded_loss"),
                     "key_frequencies": " ".join(map(str, s["key_frequencies"]["freqs"])),
                     "label": c.get("label"), "reason": c.get("reason"), "confidence": c.get("confidence"),
                     "gradient_symmetricity": c.get("gradient_symmetricity"),
                     "distance_irrelevance": c.get("distance_irrelevance"),
                     "distance_irrelevance_runnerup": c.get("distance_irrelevance_runnerup"),
                     "circularity": c.get("circularity")})
    return _rows_csv(list(rows[0]) if rows else ["path"], rows)


def _rows_csv(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None or _is_nan(row[c]) else _cell(row[c]) for c in columns])
    return buffer.getvalue()


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
