"""The self-contained offline HTML report of an analysis (report.html).

One page that opens without a network: plotly.js is embedded once, in one ``<script>`` block in the
head; each figure is a ``<div>`` filled by an inline ``Plotly.newPlot`` call; no element has an
external source (no CDN, no web fonts, no MathJax). All text taken from data (file names, error
messages, evidence lines) is HTML-escaped, and figure JSON is escaped so that no data can close its
``<script>``.

The page shows, in order: a header with the task and the source; the classification with its
evidence ([Z23]); the key frequencies and the rule that chose them ([N23]); the final checkpoint; the
phases with how each was detected; the skipped checkpoints; one row per model for a folder of
independent models; any extra sections; the figures.

>>> html = render_report({"task": {"p": 59, "op": "add"}, "source": {"path": "runs/<x>", "format": "native"}})
>>> "runs/&lt;x&gt;" in html and "runs/<x>" not in html
True
"""

import html as _html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from grokscope.checkpoints import atomic_write
from grokscope.errors import GrokscopeError

__all__ = ["render_report", "write_report"]

PLOT_CONFIG = {"responsive": True, "displaylogo": False, "showLink": False, "showSendToCloud": False,
               "showEditInChartStudio": False, "toImageButtonOptions": {"format": "svg"}}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1b1b1b;
background:#fafafa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem}
header{background:#23395d;color:#fff;padding:1.2rem 1.5rem}
header h1{margin:0 0 .3rem;font-size:1.5rem} header p{margin:.1rem 0;opacity:.92}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:.8rem 1.2rem;margin:1rem 0}
h2{font-size:1.2rem;margin:.2rem 0 .6rem} h3{font-size:1.02rem;margin:.8rem 0 .3rem}
table{border-collapse:collapse;margin:.3rem 0;font-size:.92rem}
td,th{border-bottom:1px solid #eee;padding:.25rem .7rem .25rem 0;text-align:left;vertical-align:top}
th{font-weight:600;color:#444} code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
header code{background:rgba(255,255,255,.15);color:#fff}
.label{display:inline-block;padding:.1rem .6rem;border-radius:1rem;color:#fff;font-weight:600}
.label-pizza{background:#e8710a}.label-clock{background:#1f77b4}.label-other{background:#777}
.muted{color:#666} header .muted{color:#c9d3e3} nav a{margin-right:.9rem} .gs-plot{width:100%}
"""


def _e(value: Any) -> str:
    return _html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Plain text for one value: 4 significant digits, 'n/a' for None and NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return str(int(value)) if value.is_integer() and abs(value) < 1e7 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _generic(value: Any) -> str:
    """Escaped HTML for any JSON-like value: mappings as tables, lists of mappings as tables with a
    column per key, other lists as bullet lists, scalars as text."""
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">none</span>'
        return _kv_table(list(value.items()))
    if isinstance(value, (list, tuple)):
        if not value:
            return '<span class="muted">none</span>'
        if all(isinstance(v, Mapping) for v in value):
            keys = list(dict.fromkeys(k for v in value for k in v))
            return _table(keys, [[v.get(k) for k in keys] for v in value])
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value) and len(value) <= 12 \
                and all(isinstance(v, (int, float)) for v in value):
            return _e(_fmt(list(value)))
        return "<ul>" + "".join(f"<li>{_generic(v)}</li>" for v in value) + "</ul>"
    return _e(_fmt(value))


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_generic(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_generic(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2>{body}</section>'


_OP_TEXT = {"add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b"}


def _task_text(task: Mapping[str, Any]) -> str:
    if not task:
        return "task unknown"
    op = task.get("op", "?")
    parts = [f"p = {task.get('p', '?')}", f"c = {_OP_TEXT.get(op, op)} mod p"]
    if task.get("n_ctx") is not None:
        parts.append(f"n_ctx = {task['n_ctx']}")
    if task.get("eq_token") is not None:
        parts.append("with '=' token" if task["eq_token"] else "no '=' token")
    if task.get("diff_vocab"):
        parts.append("b has its own token ids")
    return ", ".join(parts)


def _label_badge(label: Any) -> str:
    kind = label if label in ("pizza", "clock") else "other"
    return f'<span class="label label-{kind}">{_e(_fmt(label))}</span>'


_SIGNATURES = [("gradient_symmetricity", "gradient symmetricity (GS)"),
               ("distance_irrelevance", "distance irrelevance (DI, correct logit)"),
               ("distance_irrelevance_runnerup", "distance irrelevance (runner-up logit)"),
               ("circularity", "circularity (per component)"),
               ("spectral_circularity", "spectral circularity"), ("confidence", "confidence")]


def _classification(c: Mapping[str, Any]) -> str:
    if not c:
        return '<p class="muted">No classification.</p>'
    out = [f"<p>{_label_badge(c.get('label'))} &nbsp;reason: {_e(_fmt(c.get('reason')))}</p>"]
    rows = [(name, c[key]) for key, name in _SIGNATURES if key in c]
    fve = c.get("template_fve")
    if isinstance(fve, Mapping):
        rows += [(f"logit template FVE, {k}", v) for k, v in fve.items()]
    out.append(_kv_table(rows))
    if c.get("thresholds"):
        out.append("<h3>Thresholds</h3>" + _generic(c["thresholds"]))
    used = {key for key, _ in _SIGNATURES} | {"label", "reason", "template_fve", "thresholds", "evidence"}
    for key, value in c.items():
        if key not in used:
            out.append(f"<h3>{_e(key.replace('_', ' '))}</h3>" + _generic(value))
    if c.get("evidence"):
        out.append("<h3>Evidence</h3>" + _generic(list(c["evidence"])))
    return "".join(out)


_PHASE_EVENTS = [("memorization_step", "memorisation (train accuracy reaches 99%)"),
                 ("circuit_formation_start", "circuit formation starts"),
                 ("circuit_formation_end", "circuit formation ends, cleanup starts"),
                 ("grokking_step", "grokking (test accuracy reaches 99%)"),
                 ("cleanup_end_step", "cleanup ends")]


def _phases(ph: Mapping[str, Any]) -> str:
    if not ph:
        return '<p class="muted">No phases (no table of measures over training).</p>'
    if ph.get("available") is False:
        why = (ph.get("method") or {}).get("phases", "not available")
        return f"<p class=\"muted\">Phases {_html.escape(str(why))}.</p>"
    method = ph.get("method") or {}
    method = dict(method) if isinstance(method, Mapping) else {"method": method}
    rows = []
    for key, name in _PHASE_EVENTS:
        how = method.pop(key, None) or method.pop(key.removesuffix("_step"), None)
        if key in ph or how is not None:
            rows.append([name, ph.get(key), how if how is not None else ""])
    rows.append(["delay ratio (grokking / memorisation)", ph.get("delay_ratio"), method.pop("delay_ratio", "")])
    out = _table(["event", "step", "how it was detected"], rows)
    if method:
        out += "<h3>Notes</h3>" + _generic(method)
    extra = {k: v for k, v in ph.items() if k not in dict(_PHASE_EVENTS) and k not in ("method", "delay_ratio")}
    return out + (_generic(extra) if extra else "")


def _models(models: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for m in models:
        c, final = m.get("classification") or {}, m.get("final") or {}
        rows.append([(m.get("source") or {}).get("path", m.get("name")), (m.get("task") or {}).get("p"),
                     c.get("label"), c.get("reason"), c.get("gradient_symmetricity"),
                     c.get("distance_irrelevance"), c.get("distance_irrelevance_runnerup"),
                     c.get("circularity"), c.get("spectral_circularity"), final.get("accuracy")])
    return _table(["model", "p", "label", "reason", "GS", "DI", "DI runner-up", "circularity",
                   "spectral circ.", "accuracy"], rows)


_SHOWN = {"grokscope_version", "source", "task", "checkpoints", "classification", "key_frequencies", "final",
          "phases", "models", "skipped"}


def _body_sections(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    sections = []
    if "classification" in summary:
        sections.append(("classification", "Classification", _classification(summary["classification"] or {})))
    if "key_frequencies" in summary:
        kf = dict(summary["key_frequencies"] or {})
        rows = [("key frequencies", kf.pop("freqs", None)), ("rule", kf.pop("rule", None)),
                ("threshold", kf.pop("threshold", None)), *kf.items()]
        sections.append(("key-frequencies", "Key frequencies", _kv_table(rows)))
    if summary.get("final"):
        sections.append(("final", "Final checkpoint", _generic(summary["final"])))
    if "phases" in summary:
        sections.append(("phases", "Phases", _phases(summary["phases"] or {})))
    if "models" in summary:
        sections.append(("models", f"Models ({len(summary['models'])})", _models(summary["models"])))
    for key, value in summary.items():
        if key not in _SHOWN and value not in (None, [], {}, ""):
            sections.append((f"more-{key}", key.replace("_", " ").capitalize(), _generic(value)))
    skipped = summary.get("skipped") or []
    body = _table(["path", "error"], [[s.get("path"), s.get("error")] for s in skipped]) if skipped \
        else '<p class="muted">None: every checkpoint was read.</p>'
    sections.append(("skipped", f"Skipped checkpoints ({len(skipped)})", body))
    return sections


def _js_json(value: str) -> str:
    """JSON text safe inside a <script> element: '<', '>' and '&' only occur in strings, as escapes."""
    return (value.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _figure_html(index: int, title: str, fig: go.Figure) -> str:
    div_id = f"gs-fig-{index}"
    height = int(fig.layout.height or 450)
    script = (f'(function(){{var el=document.getElementById("{div_id}");var fig={_js_json(fig.to_json())};'
              f'var fail=function(e){{el.textContent="This figure could not be drawn: "+e;console.error(e);}};'
              f'try{{Plotly.newPlot(el,fig.data,fig.layout,{json.dumps(PLOT_CONFIG)}).catch(fail);}}'
              f'catch(e){{fail(e);}}}})();')
    return (f'<section id="figure-{index}" class="figure"><h2>{_e(title)}</h2>'
            f'<div id="{div_id}" class="gs-plot" style="height:{height}px"></div>'
            f"<script>{script}</script></section>")


def _plotly_js() -> str:
    source = get_plotlyjs()
    # Defensive: nothing in the embedded library may end the <script> element early.
    return source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT").replace("<!--", "<\\!--")


def render_report(summary: Mapping[str, Any], figures: Sequence[tuple[str, go.Figure]] = (), *,
                  sections: Sequence[tuple[str, Any]] = (), title: str | None = None) -> str:
    """The whole report page as one HTML string.

    ``summary`` is the summary.json dict (DESIGN.md); missing keys are left out of the page.
    ``figures`` are ``(title, figure)`` pairs, e.g. from ``grokscope.plots.standard_figures``.
    ``sections`` are extra ``(heading, body)`` pairs placed before the figures; a body is plain text,
    a list (bullets) or a mapping (a table), always escaped.
    """
    source, task = summary.get("source") or {}, summary.get("task") or {}
    path = source.get("path")
    page_title = title or ("grokscope report" + (f": {Path(str(path)).name}" if path else ""))
    checkpoints = summary.get("checkpoints") or {}
    steps = checkpoints.get("steps") or []
    meta = [f"<p><strong>Task:</strong> {_e(_task_text(task))}</p>",
            f"<p><strong>Source:</strong> <code>{_e(path if path is not None else 'unknown')}</code>"
            f" ({_e(source.get('format', 'format unknown'))})</p>"]
    if checkpoints:
        span = f", steps {_fmt(steps[0])} to {_fmt(steps[-1])}" if steps else ""
        meta.append(f"<p><strong>Checkpoints:</strong> {_e(_fmt(checkpoints.get('count', len(steps))))}"
                    f"{_e(span)}</p>")
    meta.append(f'<p class="muted">grokscope {_e(summary.get("grokscope_version", "?"))}</p>')
    blocks = _body_sections(summary)
    blocks += [(f"extra-{i}", heading, _generic(body) if not isinstance(body, str)
                else "".join(f"<p>{_e(line)}</p>" for line in body.split("\n\n")))
               for i, (heading, body) in enumerate(sections)]
    nav = "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t, _ in blocks)
    nav += "".join(f'<a href="#figure-{i}">{_e(t)}</a>' for i, (t, _) in enumerate(figures))
    body = "".join(_section(*b) for b in blocks)
    body += "".join(_figure_html(i, t, fig) for i, (t, fig) in enumerate(figures))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(page_title)}</title><style>{_STYLE}</style>"
            f"<script>{_plotly_js()}</script></head>\n<body><header><h1>{_e(page_title)}</h1>"
            f"{''.join(meta)}</header><main><nav>{nav}</nav>"
            "<noscript><p>The figures need JavaScript.</p></noscript>"
            f"{body}</main></body></html>\n")


def write_report(path: str | os.PathLike, summary: Mapping[str, Any],
                 figures: Sequence[tuple[str, go.Figure]] = (), **options: Any) -> Path:
    """Render the report (``render_report(summary, figures, **options)``) and write it atomically:
    to a temporary file in the same folder, flushed to disk, then renamed over ``path``, so a reader
    sees the old page or the new one, never half of one. Creates the folder if needed.
    """
    target = Path(path)
    text = render_report(summary, figures, **options)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, text)
    except OSError as error:
        raise GrokscopeError(f"{type(error).__name__}: {error.strerror or error}",
                             expected="a writable report path", where=str(target)) from error
    return target
