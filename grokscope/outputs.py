"""What `grokscope analyze` writes: measures.csv, summary.json, report.html, and the terminal table.

``summary.json`` (DESIGN.md) holds the task, the checkpoints, the key frequencies with their rule, the
final measures, the phases, the classification and the skipped files. For a folder of independent
models it holds ``models: [...]``, one such object each. Every file is written atomically; NaN is
written as null so the JSON is strict.
"""

import csv
import hashlib
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grokscope import __version__
from grokscope.analysis import AnalysisResult
from grokscope.checkpoints import atomic_write, json_safe, write_json
from grokscope.errors import GrokscopeError
from grokscope.formats.base import skip_entry

MEASURES_FILE, SUMMARY_FILE, REPORT_FILE = "measures.csv", "summary.json", "report.html"


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
                 "diff_vocab": task.diff_vocab, "group": task.group.to_dict() if task.group else None},
        "attention_rate": info.get("alpha"),
        "checkpoints": {"count": len(result.steps), "steps": result.steps},
        "key_frequencies": {"freqs": list(result.key_freqs.freqs), "rule": result.key_freqs.rule,
                            "threshold": result.key_freqs.threshold, "basis": result.key_freqs.basis or None},
        "final": {"step": result.steps[-1] if result.steps else None,
                  "accuracy": _number(final, "full_acc"), "loss": _number(final, "full_loss"),
                  "train_loss": _number(final, "train_loss"), "test_loss": _number(final, "test_loss"),
                  "train_accuracy": _number(final, "train_acc"), "test_accuracy": _number(final, "test_acc"),
                  "restricted_loss": _number(final, "restricted_loss"),
                  "excluded_loss": _number(final, "excluded_loss"),
                  "group_loss": _number(final, "group_loss"), "group_accuracy": _number(final, "group_acc"),
                  "zero_operand_accuracy": _number(final, "zero_operand_acc")},
        "phases": phases,
        "train_only": _train_only_summary(result),
        "classification": classification,
        "notes": list(result.notes),
        "skipped": [dict(entry) for entry in result.skipped],
    }
    return json_safe(summary)


def _train_only_summary(result: AnalysisResult) -> dict[str, Any] | None:
    """The train-only block of summary.json: final measures, the detector's steps and rule, which rows."""
    if "trainonly_restricted_loss" not in result.table:
        return None
    from grokscope.fourier import RELATIVE_NORM
    from grokscope.monitor import KEY_RULES, MAX_KEY_FREQS, TRAIN_ONLY_COLUMNS

    final = result.final_row
    return {"rows": "train" if result.run_info.get("split_known") else "all (split unknown)",
            "key_frequencies": {"rule": KEY_RULES[0], "threshold": RELATIVE_NORM, "max_freqs": MAX_KEY_FREQS},
            "final": {name.removeprefix("trainonly_"): _number(final, name) for name in TRAIN_ONLY_COLUMNS},
            "restricted_to_train_ratio": _ratio(_number(final, "trainonly_restricted_loss"),
                                                _number(final, "trainonly_train_loss")),
            "detection": result.train_only.to_dict() if result.train_only is not None else None}


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


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
                     "trainonly_excluded_loss": (s.get("train_only") or {}).get("final", {}).get("excluded_loss"),
                     "trainonly_restricted_loss": (s.get("train_only") or {}).get("final", {}).get("restricted_loss"),
                     "key_frequencies": " ".join(map(str, s["key_frequencies"]["freqs"])),
                     "label": c.get("label"), "reason": c.get("reason"), "confidence": c.get("confidence"),
                     "gradient_symmetricity": c.get("gradient_symmetricity"),
                     "distance_irrelevance": c.get("distance_irrelevance"),
                     "distance_irrelevance_runnerup": c.get("distance_irrelevance_runnerup"),
                     "circularity": c.get("circularity"),
                     "spectral_circularity": c.get("spectral_circularity")})
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


def default_out_dir(path: str | os.PathLike) -> Path:
    """Where results go without ``--out``: PATH/grokscope/ for a folder, else <folder>/grokscope/<name>/."""
    path = Path(path)
    return path / "grokscope" if path.is_dir() else path.parent / "grokscope" / path.stem


def analyze_path(path: str | os.PathLike, out: str | os.PathLike | None = None, *, workers: int = 1,
                 trust_pickle: bool = False, progress: bool = False, report: bool = True,
                 pathways: bool = False) -> tuple[dict[str, Any], Path]:
    """Analyse whatever is at ``path`` and write measures.csv, summary.json and report.html into ``out``.

    ``path`` is a run in any layout, one checkpoint file, or a folder of independent models or runs
    (then ``measures.csv`` has one row per model and ``summary.json`` a ``models`` list). Returns the
    summary and the output folder. ``pathways`` adds the experimental pathway columns (``analyze``). Unreadable checkpoints are skipped and listed in the summary;
    input that cannot be analysed at all raises GrokscopeError.
    """
    from grokscope import plots
    from grokscope.analysis import analyze
    from grokscope.formats import detect, load
    from grokscope.report import write_report

    skipped: list[dict] = []
    loaded = load(path, trust_pickle=trust_pickle, skipped=skipped)
    if isinstance(loaded, list):
        results, failed = [], []
        for run in loaded:
            try:
                results.append(analyze(run, progress=progress, workers=workers, pathways=pathways))
            except GrokscopeError as error:  # a member with nothing readable is listed, not fatal
                failed.append(skip_entry(str(run.source), error))
        skipped += failed
        if not results:
            raise GrokscopeError(f"no member with a readable checkpoint among {len(loaded)} (first: "
                                 f"{failed[0]['path']}: {failed[0]['error']})",
                                 expected="at least one readable model or run", where=str(path))
        summary = collection_summary(results, str(path), detect(path), skipped)
        table_text = collection_csv(summary["models"])
        figures = [("Models", plots.model_comparison(summary["models"]))]
    else:
        result = analyze(loaded, progress=progress, workers=workers, pathways=pathways)
        summary = summary_dict(result)
        summary["skipped"] = skipped + summary["skipped"]
        table_text = measures_csv(result.table)
        figures = result.figures()
    out_dir = Path(out) if out is not None else default_out_dir(path)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    write_outputs(out_dir, summary, table_text,
                  (lambda target: write_report(target, summary, figures)) if report else None)
    return summary, out_dir


def write_outputs(out_dir: Path, summary: dict[str, Any], table_text: str,
                  write_report: Callable[[Path], Any] | None) -> None:
    """Write measures.csv, report.html, then summary.json: summary.json is the mark of a complete set.

    Each file is written atomically (never half a file under its name), and summary.json, removed
    first, is written last with the size and SHA-256 of the others under ``outputs``: a killed
    analysis leaves no summary.json (a folder without one is incomplete), and files from an older
    analysis are recognisable by hashes that do not match. A report not asked for is removed, so
    the folder never pairs a new summary with an old page.
    """
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
    written = [atomic_write(out_dir / MEASURES_FILE, table_text)]
    if write_report is not None:
        written.append(write_report(out_dir / REPORT_FILE) or out_dir / REPORT_FILE)
    else:
        (out_dir / REPORT_FILE).unlink(missing_ok=True)
    summary["outputs"] = {Path(file).name: _fingerprint(Path(file)) for file in written}
    write_json(out_dir / SUMMARY_FILE, summary)


def _fingerprint(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def outputs_complete(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds a complete, consistent set from one analysis: summary.json, and every
    file it lists with the size and SHA-256 it records.

    >>> import tempfile
    >>> outputs_complete(tempfile.mkdtemp())
    False
    """
    from grokscope.checkpoints import read_json

    out_dir = Path(out_dir)
    try:
        listed = read_json(out_dir / SUMMARY_FILE).get("outputs")
    except GrokscopeError:
        return False
    if not isinstance(listed, dict) or MEASURES_FILE not in listed:
        return False
    for name, expected in listed.items():
        file = out_dir / name
        if not file.is_file() or _fingerprint(file) != expected:
            return False
    return True


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def _phases_line(ph: dict[str, Any]) -> str:
    if ph.get("available") is False:
        return "phases       not available (a single checkpoint and no training curves)"
    line = (f"phases       memorisation {_fmt(ph.get('memorization_step'))}, grokking "
            f"{_fmt(ph.get('grokking_step'))}, delay {_fmt(ph.get('delay_ratio'))}x, cleanup end "
            f"{_fmt(ph.get('cleanup_end_step'))}")
    return line + (f" (from the {ph['source']})" if ph.get("source") not in (None, "checkpoints") else "")


def _train_only_lines(train_only: dict | None) -> list[str]:
    if not train_only:
        return []
    from grokscope.monitor import describe_detection

    final, detection = train_only["final"], train_only["detection"]
    return [f"train-only   ({train_only['rows']} rows) excluded {_fmt(final['excluded_loss'])}, restricted "
            f"{_fmt(final['restricted_loss'])}, restricted / train {_fmt(train_only['restricted_to_train_ratio'])}; "
            + (describe_detection(detection) if detection else "one checkpoint: no phase detection")]


def format_table(summary: dict[str, Any]) -> str:
    """The short table `grokscope analyze` prints: task, checkpoints, key frequencies, phases, losses, label."""
    if "models" in summary:
        lines = [f"{len(summary['models'])} models in {summary['source']['path']}"]
        lines.append(f"  {'model':<28} {'p':>4} {'accuracy':>9} {'GS':>7} {'DI':>7} {'circ.':>7} {'spec.':>7}  "
                     "label")
        for m in summary["models"]:
            c, final = m.get("classification") or {}, m.get("final") or {}
            lines.append(f"  {Path(m['source']['path']).name[:28]:<28} {m['task']['p']:>4} "
                         f"{_fmt(final.get('accuracy')):>9} {_fmt(c.get('gradient_symmetricity')):>7} "
                         f"{_fmt(c.get('distance_irrelevance')):>7} {_fmt(c.get('circularity')):>7} "
                         f"{_fmt(c.get('spectral_circularity')):>7}  "
                         f"{c.get('label', '-')}" + (f" ({c['reason']})" if c.get("reason") else ""))
    else:
        task, ph, final, c = summary["task"], summary["phases"], summary["final"], summary.get("classification") or {}
        keys = summary["key_frequencies"]
        steps = summary["checkpoints"]["steps"]
        lines = [f"task         p = {task['p']}, {task['op']}, n_ctx = {task['n_ctx']}"
                 f" ({summary['source']['format']}: {summary['source']['path']})",
                 f"checkpoints  {summary['checkpoints']['count']}"
                 + (f", steps {steps[0]}..{steps[-1]}" if steps else "")
                 + (f", {len(summary['skipped'])} skipped" if summary["skipped"] else ""),
                 f"key freqs    {keys['freqs']} (rule {keys['rule']}"
                 + (f", basis {keys['basis']})" if keys.get("basis") else ")"),
                 _phases_line(ph),
                 f"final        step {_fmt(final['step'])}: accuracy {_fmt(final['accuracy'], 4)}, train loss "
                 f"{_fmt(final['train_loss'])}, test loss {_fmt(final['test_loss'])}, restricted "
                 f"{_fmt(final['restricted_loss'])}, excluded {_fmt(final['excluded_loss'])}"
                 + (f", with a zero operand accuracy {_fmt(final['zero_operand_accuracy'], 4)}"
                    if final.get("zero_operand_accuracy") is not None else ""),
                 *_train_only_lines(summary.get("train_only")),
                 f"label        {c.get('label', '-')}" + (f" ({c['reason']})" if c.get("reason") else "")
                 + (f", confidence {_fmt(c.get('confidence'), 2)}, GS {_fmt(c.get('gradient_symmetricity'))}, "
                    f"DI {_fmt(c.get('distance_irrelevance'))}, circularity {_fmt(c.get('circularity'))} "
                    f"(spectral {_fmt(c.get('spectral_circularity'))})"
                    if c else "")]
    if summary.get("skipped"):
        lines += [f"skipped      {s['path']}: {s['error']}" for s in summary["skipped"][:5]]
    return "\n".join(lines)
