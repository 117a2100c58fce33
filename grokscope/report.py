"""The self-contained offline HTML report of an analysis (report.html).

One page that opens without a network: plotly.js is embedded once, in one ``<script>`` block in the
head; each figure is a ``<div>`` filled by an inline ``Plotly.newPlot`` call; no element has an
external source (no CDN, no web fonts, no MathJax). All text taken from data (file names, error
messages, evidence lines) is HTML-escaped, and figure JSON is escaped so that no data can close its
``<script>``.

The page leads with what a reader came for: the label and its confidence, what the label means,
the numbers that decided it against their thresholds ([Z23], docs/classifier.md), the phases in one
line ([N23]) and the grokking curve (the figure titled ``lead_figure``); for a folder of independent
models, the label counts and one row per model. The full evidence follows: every signature with what
it measures, the circles, the classifier's own reading, the thresholds; the key frequencies and the
rule that chose them; the final checkpoint; each phase with how it was detected; the notes; the
skipped checkpoints; any extra sections; the other figures. Unavailable fields are left out or named
with the reason, and wide tables scroll inside their box instead of widening the page.

>>> html = render_report({"task": {"p": 59, "op": "add"}, "source": {"path": "runs/<x>", "format": "native"}})
>>> "runs/&lt;x&gt;" in html and "runs/<x>" not in html
True
"""

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from grokscope import report_sections as rs
from grokscope.checkpoints import atomic_write
from grokscope.errors import GrokscopeError

__all__ = ["render_report", "write_report"]

PLOT_CONFIG = {"responsive": True, "displaylogo": False, "showLink": False, "showSendToCloud": False,
               "showEditInChartStudio": False, "toImageButtonOptions": {"format": "svg"}}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1b1b1b;
background:#fafafa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem;box-sizing:border-box}
header{background:#23395d;color:#fff;padding:1.2rem 1.5rem}
header h1{margin:0 0 .3rem;font-size:1.5rem} header p{margin:.1rem 0;opacity:.92}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:.8rem 1.2rem;margin:1rem 0}
section.lead{border:2px solid #23395d}
h2{font-size:1.2rem;margin:.2rem 0 .6rem} h3{font-size:1.02rem;margin:.9rem 0 .3rem}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.3rem 0;font-size:.92rem}
td,th{border-bottom:1px solid #eee;padding:.25rem .7rem .25rem 0;text-align:left;vertical-align:top}
td:last-child,th:last-child{padding-right:0} th{font-weight:600;color:#444} .path{overflow-wrap:anywhere}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
header code{background:rgba(255,255,255,.15);color:#fff}
.label{display:inline-block;padding:.1rem .6rem;border-radius:1rem;color:#fff;font-weight:600;white-space:nowrap}
.label-big{font-size:1.35rem;padding:.15rem .9rem}
.label-pizza{background:#e8710a}.label-clock{background:#1f77b4}.label-other{background:#777}
.verdict{margin:.2rem 0 .4rem} .confidence{font-size:1.1rem;margin-left:.6rem}
.meaning{margin:.2rem 0 .6rem;max-width:60rem}
ul.strip{list-style:none;padding:0;margin:.3rem 0;display:flex;flex-wrap:wrap;gap:.3rem 1.6rem}
.muted{color:#666} .nowrap{white-space:nowrap} header .muted{color:#c9d3e3} nav{display:flex;flex-wrap:wrap;gap:.2rem .9rem} nav a{white-space:nowrap}
.gs-plot{width:100%}
"""


_e = rs.esc


def _section(anchor: str, title: str, body: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<section id="{_e(anchor)}"{klass}><h2>{_e(title)}</h2>{body}</section>'


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


def _n_checkpoints(summary: Mapping[str, Any]) -> int | None:
    checkpoints = summary.get("checkpoints") or {}
    count = checkpoints.get("count", len(checkpoints.get("steps") or []) if checkpoints else None)
    return int(count) if isinstance(count, (int, float)) else None


def _header_meta(summary: Mapping[str, Any]) -> str:
    """Task, source, checkpoints, attention rate and version, one line each."""
    source, task = summary.get("source") or {}, summary.get("task") or {}
    path = source.get("path")
    checkpoints = summary.get("checkpoints") or {}
    steps = checkpoints.get("steps") or []
    meta = [] if "models" in summary and not task else [f"<p><strong>Task:</strong> {_e(_task_text(task))}</p>"]
    meta.append(f"<p><strong>Source:</strong> <code>{_e(path if path is not None else 'unknown')}</code>"
                f" ({_e(source.get('format', 'format unknown'))})</p>")
    if checkpoints:
        span = (f", step {rs.fmt(steps[0])}" if len(steps) == 1
                else f", steps {rs.fmt(steps[0])} to {rs.fmt(steps[-1])}" if steps else "")
        meta.append(f"<p><strong>Checkpoints:</strong> {_e(rs.fmt(checkpoints.get('count', len(steps))))}"
                    f"{_e(span)}</p>")
    if rs.fmt(summary.get("attention_rate")):
        meta.append(f"<p><strong>Attention rate:</strong> alpha = {_e(rs.fmt(summary['attention_rate']))}</p>")
    meta.append(f'<p class="muted">grokscope {_e(summary.get("grokscope_version", "?"))}</p>')
    return "".join(meta)


def _lead(summary: Mapping[str, Any], figure: str | None) -> str:
    """The first section: the verdict, the phases in one line and the grokking curve."""
    if "models" in summary:
        models = summary["models"] or []
        counts: dict[str, int] = {}
        for m in models:
            label = (m.get("classification") or {}).get("label") or "not classified"
            counts[label] = counts.get(label, 0) + 1
        tally = ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return (f'<p class="verdict">{_e(len(models))} models' + (f": {_e(tally)}" if tally else "") + "</p>"
                + rs.models_table(models))
    out = []
    if "classification" in summary:
        out.append(rs.verdict(summary["classification"] or {}))
    if "phases" in summary:
        out.append("<h3>Phases</h3>" + rs.phase_strip(summary["phases"] or {}, _n_checkpoints(summary)))
    if figure is not None:
        out.append(figure)
    elif _n_checkpoints(summary) == 1:
        out.append(rs.muted("No grokking curve: one checkpoint has no training history."))
    return "".join(out)


_SHOWN = {"grokscope_version", "source", "task", "checkpoints", "classification", "key_frequencies", "final",
          "phases", "models", "skipped", "notes", "attention_rate"}


def _evidence_sections(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    sections = []
    if summary.get("classification"):
        sections.append(("classification", "Classification evidence",
                         rs.classification_evidence(summary["classification"])))
    if "key_frequencies" in summary:
        sections.append(("key-frequencies", "Key frequencies", rs.key_frequencies(summary["key_frequencies"])))
    if summary.get("final"):
        sections.append(("final", "Final checkpoint", rs.final_checkpoint(summary["final"])))
    if "phases" in summary:
        sections.append(("phases", "Phases", rs.phases_detail(summary["phases"] or {})))
    if summary.get("notes"):
        sections.append(("notes", "Notes", rs.generic(list(summary["notes"]))))
    for key, value in summary.items():
        if key not in _SHOWN and value not in (None, [], {}, ""):
            sections.append((f"more-{key}", key.replace("_", " ").capitalize(), rs.generic(value)))
    skipped = summary.get("skipped") or []
    body = rs.table(["path", "error"], [[rs.Html(f'<span class="path">{_e(s.get("path"))}</span>'), s.get("error")]
                                        for s in skipped]) if skipped \
        else '<p class="muted">None: every checkpoint was read.</p>'
    sections.append(("skipped", f"Skipped checkpoints ({len(skipped)})", body))
    return sections


def _js_json(value: str) -> str:
    """JSON text safe inside a <script> element: '<', '>' and '&' only occur in strings, as escapes."""
    return (value.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _figure_html(index: int, title: str, fig: go.Figure, *, heading: str = "h2") -> str:
    div_id = f"gs-fig-{index}"
    height = int(fig.layout.height or 450)
    script = (f'(function(){{var el=document.getElementById("{div_id}");var fig={_js_json(fig.to_json())};'
              f'var fail=function(e){{el.textContent="This figure could not be drawn: "+e;console.error(e);}};'
              f'try{{Plotly.newPlot(el,fig.data,fig.layout,{json.dumps(PLOT_CONFIG)}).catch(fail);}}'
              f'catch(e){{fail(e);}}}})();')
    return (f'<div id="figure-{index}" class="figure"><{heading}>{_e(title)}</{heading}>'
            f'<div id="{div_id}" class="gs-plot" style="height:{height}px"></div>'
            f"<script>{script}</script></div>")


def _plotly_js() -> str:
    source = get_plotlyjs()
    # Defensive: nothing in the embedded library may end the <script> element early.
    return source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT").replace("<!--", "<\\!--")


def render_report(summary: Mapping[str, Any], figures: Sequence[tuple[str, go.Figure]] = (), *,
                  sections: Sequence[tuple[str, Any]] = (), title: str | None = None,
                  lead_figure: str | None = "Loss and accuracy") -> str:
    """The whole report page as one HTML string.

    ``summary`` is the summary.json dict (DESIGN.md); missing keys are left out of the page.
    ``figures`` are ``(title, figure)`` pairs, e.g. from ``grokscope.plots.standard_figures``; the
    first whose title is ``lead_figure`` (``plots.loss_curves``' default title) is the grokking curve
    of the lead section, the others follow the evidence.
    ``sections`` are extra ``(heading, body)`` pairs placed before the figures; a body is plain text,
    a list (bullets) or a mapping (a table), always escaped.

    >>> page = render_report({"classification": {"label": "clock", "reason": None, "accuracy": 1.0,
    ...                                          "thresholds": {"min_accuracy": 0.99}}})
    >>> body = page.split("<body>")[1]                 # what a reader sees, without plotly.js
    >>> "reason" in body, "n/a" in body, "&gt;= 0.99 to count as generalised" in body
    (False, False, True)
    """
    figures = list(figures)
    path = (summary.get("source") or {}).get("path")
    page_title = title or ("grokscope report" + (f": {Path(str(path)).name}" if path else ""))
    lead_at = next((i for i, (t, _) in enumerate(figures) if lead_figure is not None and t == lead_figure), None)
    # the grokking curve is drawn first (gs-fig-0) in the lead; the other figures keep their order
    ordered = [figures[i] for i in ([lead_at] if lead_at is not None else [])] + \
        [f for i, f in enumerate(figures) if i != lead_at]
    lead_html = _figure_html(0, "Grokking curve", ordered[0][1], heading="h3") if lead_at is not None else None
    rest = list(enumerate(ordered))[1 if lead_at is not None else 0:]
    blocks = [("summary", "Summary", _lead(summary, lead_html), "lead")]
    blocks += [(a, t, b, "") for a, t, b in _evidence_sections(summary)]
    blocks += [(f"extra-{i}", heading, rs.generic(body) if not isinstance(body, str)
                else "".join(f"<p>{_e(line)}</p>" for line in body.split("\n\n")), "")
               for i, (heading, body) in enumerate(sections)]
    if rest:
        blocks.append(("figures", "Figures", "".join(_figure_html(i, t, fig, heading="h3") for i, (t, fig) in rest),
                       "figures"))
    nav = "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t, _, _ in blocks)
    body = "".join(_section(*b) for b in blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(page_title)}</title><style>{_STYLE}</style>"
            f"<script>{_plotly_js()}</script></head>\n<body><header><h1>{_e(page_title)}</h1>"
            f"{_header_meta(summary)}</header><main><nav>{nav}</nav>"
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
