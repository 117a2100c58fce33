"""Tests of grokscope.report: content, escaping, self-containment, the atomic write, and a real
headless-chromium check that every figure of a report renders with no console error."""

import json
import math
import os
import re
import stat
from pathlib import Path
from html.parser import HTMLParser

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.offline import get_plotlyjs

from grokscope import plots, report
from grokscope.errors import GrokscopeError
from headless import console_errors_in_log, find_chromium, inspect_page

EVIL = '<script>alert("x")</script>'
THRESHOLDS = {"min_accuracy": 0.99, "min_circularity": 0.9, "circularity_measure": "spectral",
              "pizza_min_gs": 0.98, "pizza_max_di": 0.4, "clock_max_gs": 0.9, "clock_min_di": 0.6,
              "template_margin": 0.05, "template_scale": 0.2, "min_template_fve": 0.5}


def make_summary(**overrides) -> dict:
    summary = {
        "grokscope_version": "0.1.0",
        "source": {"path": "runs/<b>p59</b> & co/model_p99zdpze5l.pt", "format": "zhong2023"},
        "task": {"p": 59, "op": "add", "n_ctx": 2, "eq_token": False},
        "checkpoints": {"count": 3, "steps": [0, 1000, 20000]},
        "key_frequencies": {"freqs": [3, 15, 17], "rule": "A: argmax frequency of >= 5 neurons",
                            "threshold": 0.85},
        "final": {"step": 20000, "accuracy": 1.0, "train_loss": 2.41e-7, "test_loss": None,
                  "restricted_loss": 5.5e-8, "excluded_loss": 4.2},
        "phases": {"memorization_step": 140, "grokking_step": 9800, "circuit_formation_start": 150,
                   "circuit_formation_end": 9400, "cleanup_end_step": None, "delay_ratio": 70.0,
                   "method": {"memorization_step": "first step with train accuracy >= 0.99",
                              "grokking_step": "first step with test accuracy >= 0.99",
                              "cleanup_end_step": "not detected: " + EVIL}},
        "classification": {"label": "pizza", "reason": None, "confidence": 0.9, "accuracy": 1.0,
                           "gradient_symmetricity": 0.99367, "distance_irrelevance": 0.1717,
                           "distance_irrelevance_runnerup": 0.2218, "circularity": 0.9978,
                           "circularity_b": None, "spectral_circularity": 0.9999,
                           "template_fve": {"clock": 0.754, "pizza": 0.983}, "template_vote": "pizza",
                           "template_margin": 0.229, "gs_samples": 100, "gs_seed": 42,
                           "thresholds": THRESHOLDS,
                           "circles": [{"k": 17, "delta": 7, "label": "pizza"},
                                       {"k": 3, "delta": 20, "label": "clock"}],
                           "evidence": ["GS 0.994 >= 0.98", "template vote: " + EVIL]},
        "skipped": [{"path": "checkpoints/step_<0001>.safetensors", "error": "truncated file & bad header"}],
    }
    summary.update(overrides)
    return summary


def make_figures(p: int = 23, seed: int = 0) -> list[tuple[str, go.Figure]]:
    """Every figure kind, with some missing data so that the degraded forms are drawn too."""
    rng = np.random.default_rng(seed)
    steps = np.unique(np.r_[0, np.geomspace(1, 20000, 50).astype(int)])
    n = steps.size
    table = {"step": steps, "train_loss": rng.uniform(1e-7, 4, n), "test_loss": np.full(n, np.nan),
             "train_acc": rng.uniform(0, 1, n), "test_acc": [None] * n, "restricted_loss": rng.uniform(1e-8, 4, n),
             "excluded_loss": rng.uniform(1, 9, n), "excluded_loss_k3": rng.uniform(1, 9, n),
             "sum_sq_weights": rng.uniform(10, 90, n), "gini_W_E": rng.uniform(0, 1, n)}
    phases = make_summary()["phases"]
    angle = 2 * np.pi * np.arange(p) / p
    circles = [{"k": k, "delta": pow(k, -1, p), "points": np.c_[np.cos(k * angle), np.sin(k * angle)],
                "labels": list(range(p)), "label": "pizza"} for k in (3, 5)]
    models = [{"source": {"path": f"model_{i}{EVIL}.pt"},
               "classification": {"label": ["pizza", "clock", "uninterpreted"][i % 3],
                                  "gradient_symmetricity": float(rng.uniform()),
                                  "distance_irrelevance": float(rng.uniform())}} for i in range(6)]
    figures = plots.standard_figures(
        table, phases, embedding_norms=torch.rand((p - 1) // 2, generator=torch.Generator().manual_seed(seed)),
        key_freqs=[3, 5], neuron_freq=torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(seed)),
        frac_explained=torch.rand(64, generator=torch.Generator().manual_seed(seed)), circles=circles,
        logit_grid=torch.randn(p, p, generator=torch.Generator().manual_seed(seed)), models=models)
    figures += [("No phases: " + EVIL, plots.loss_curves(table, None)),
                ("Empty", plots.embedding_circles([])),
                ("No steps", plots.weight_curves({}))]
    return figures


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def without_plotly_js(html: str) -> str:
    js = get_plotlyjs()
    assert html.count(js) == 1, "plotly.js must be embedded exactly once, unchanged"
    return html.replace(js, "")


@pytest.fixture(scope="module")
def page() -> tuple[str, list[tuple[str, go.Figure]]]:
    figures = make_figures()
    return report.render_report(make_summary(), figures), figures


def visible(html: str) -> str:
    """The page body, without plotly.js and the figure scripts: what a reader can see."""
    body = without_plotly_js(html).split("<body>", 1)[1]
    return re.sub(r"<script>.*?</script>", "", body, flags=re.S)


def section(html: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}"[^>]*>(.*?)</section>', html, re.S)
    assert match, anchor
    return match.group(1)


def test_header_and_sections(page):
    html, figures = page
    text = without_plotly_js(html)
    assert "p = 59, c = a + b mod p, n_ctx = 2, no &#x27;=&#x27; token" in text
    assert "runs/&lt;b&gt;p59&lt;/b&gt; &amp; co/model_p99zdpze5l.pt" in text and "(zhong2023)" in text
    assert "3, steps 0 to 20000" in text
    assert "steps 0 to 20000" in report.render_report(make_summary(checkpoints={"steps": [0.0, 20000.0]}))
    assert "1, step 20000</p>" in report.render_report(make_summary(checkpoints={"count": 1, "steps": [20000]}))
    for expected in ["<td>gradient symmetricity (GS)</td><td class=\"num\">0.9937</td>",
                     "<td>distance irrelevance (DI, correct logit)</td><td class=\"num\">0.1717</td>",
                     "clock 75.4%, pizza 98.3%", "(100 samples, seed 42)", "<li>GS 0.994 &gt;= 0.98</li>",
                     "<th>key frequencies</th><td>3, 15, 17</td>", "A: argmax frequency of &gt;= 5 neurons",
                     "<td>first step with train accuracy &gt;= 0.99</td>", "<td>140</td>", "<td>9800</td>",
                     "<th>restricted loss (key frequencies only)</th><td>5.5e-08</td>",
                     "Not available: test loss (the train/test split is not stored",
                     "checkpoints/step_&lt;0001&gt;.safetensors", "truncated file &amp; bad header",
                     "Skipped checkpoints (1)", "<h3>Circles (2)</h3>",
                     "<td>pizza_min_gs</td><td class=\"num\">0.98</td><td>pizza needs GS at least this</td>"]:
        assert expected in text, expected
    assert text.count('class="gs-plot"') == len(figures)
    for i in range(len(figures)):
        assert f'id="figure-{i}"' in text and f'id="gs-fig-{i}"' in text


def test_page_leads_with_the_verdict(page):
    """The first section holds the label, its confidence, the numbers that decided it, the phases and
    the grokking curve; the evidence follows."""
    html, figures = page
    text = visible(html)
    assert text.index('<section id="summary" class="lead">') < text.index('<section id="classification">')
    lead = section(without_plotly_js(html), "summary")
    assert '<span class="label label-pizza label-big">pizza</span>' in lead and "confidence 0.90" in lead
    assert "logits depend on a - b" in lead  # what the label means
    rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>",
                      lead)
    assert rows == [("accuracy over the full grid", "1", "&gt;= 0.99 to count as generalised", "generalised"),
                    ("spectral circularity", "0.9999", "&gt;= 0.9: the embedding is made of circles", "circular"),
                    ("gradient symmetricity (GS)", "0.9937", "pizza &gt;= 0.98, clock &lt;= 0.9", "pizza side"),
                    ("distance irrelevance (DI)", "0.1717", "pizza &lt;= 0.4, clock &gt;= 0.6", "pizza side"),
                    ("logit templates (centred FVE)", "pizza - clock = +22.9%",
                     "second vote, sets the confidence: neutral within +-5%, full weight from +-20%", "pizza vote")]
    assert "<li><strong>memorisation</strong> step 140</li>" in lead
    assert "<li><strong>grokking</strong> step 9800</li>" in lead and "70x (grokking / memorisation)" in lead
    assert "<li><strong>circuit formation</strong> steps 150 to 9400</li>" in lead
    assert "Not detected: cleanup ends." in lead
    assert lead.count('class="gs-plot"') == 1 and 'id="gs-fig-0"' in lead and "Grokking curve" in lead
    assert figures[0][0] == "Loss and accuracy"  # the lead shows the loss curves, not the first figure by chance
    assert 'id="gs-fig-0"' not in section(without_plotly_js(html), "figures")


def test_lead_figure_is_chosen_by_title():
    figures = make_figures()
    order = [figures[3], figures[0], figures[1]]  # Fourier norms first: the loss curves still lead
    html = without_plotly_js(report.render_report(make_summary(), order))
    lead, rest = section(html, "summary"), section(html, "figures")
    assert '"text":"Loss and accuracy"' in lead and "Loss and accuracy" not in rest
    assert lead.count('class="gs-plot"') == 1 and "Embedding Fourier norms" not in lead
    assert rest.index("<h3>Embedding Fourier norms</h3>") < rest.index("<h3>Restricted and excluded loss</h3>")
    assert 'id="summary"' in html and "Grokking curve" not in report.render_report(make_summary(), order,
                                                                                    lead_figure=None)


@pytest.mark.parametrize("values, outcomes", [
    # the classifier's own rules (docs/classifier.md), one value on each side of every bound
    (dict(accuracy=0.5, spectral_circularity=0.95, gradient_symmetricity=0.99, distance_irrelevance=0.1),
     ["not generalised", "circular", "pizza side", "pizza side"]),
    (dict(accuracy=1.0, spectral_circularity=0.5, gradient_symmetricity=0.3, distance_irrelevance=0.8),
     ["generalised", "non-circular", "clock side", "clock side"]),
    (dict(accuracy=0.99, spectral_circularity=0.9, gradient_symmetricity=0.95, distance_irrelevance=0.5),
     ["generalised", "circular", "between", "between"]),  # bounds are inclusive: 0.99 and 0.9 pass
])
def test_decision_rows_compare_with_the_thresholds(values, outcomes):
    from grokscope.report_sections import decision_rows

    rows = decision_rows({**values, "thresholds": THRESHOLDS})
    assert [r[0] for r in rows] == ["accuracy over the full grid", "spectral circularity",
                                    "gradient symmetricity (GS)", "distance irrelevance (DI)"]
    assert [r[3] for r in rows] == outcomes


def test_decision_rows_read_the_gated_circularity():
    from grokscope.report_sections import decision_rows

    paper = {**THRESHOLDS, "circularity_measure": "paper", "min_circularity": 0.99}
    rows = decision_rows({"circularity": 0.97, "spectral_circularity": 0.999, "thresholds": paper})
    assert rows == [("circularity ([Z23])", "0.97", "&gt;= 0.99: the embedding is made of circles".replace(
        "&gt;", ">"), "non-circular")]
    assert decision_rows({"gradient_symmetricity": 0.5}) == [("gradient symmetricity (GS)", "0.5", "", "")]


@pytest.mark.parametrize("reason, words", [("not generalised", "does not solve the task"),
                                           ("non-circular", "not made of clean circles"),
                                           ("mixed", "neither the pizza nor the"),
                                           ("something new", "see the evidence below")])
def test_uninterpreted_says_why(reason, words):
    c = {**make_summary()["classification"], "label": "uninterpreted", "reason": reason}
    lead = section(without_plotly_js(report.render_report(make_summary(classification=c))), "summary")
    assert '<span class="label label-other label-big">uninterpreted</span>' in lead
    assert f"{reason[0].upper()}{reason[1:]}: " in lead and words in lead


def test_unavailable_fields_are_left_out_or_explained():
    """No bare placeholders: null fields are omitted, or named once with the reason."""
    c = {**make_summary()["classification"], "reason": None, "circularity_b": None, "template_fve": None,
         "template_margin": None, "template_vote": None, "confidence": None}
    summary = make_summary(classification=c, checkpoints={"count": 1, "steps": [20000]},
                           final={"step": 20000, "accuracy": 1.0, "train_loss": None, "test_loss": None,
                                  "restricted_loss": None},
                           phases={k: None for k in ("memorization_step", "grokking_step", "delay_ratio",
                                                     "circuit_formation_start", "circuit_formation_end",
                                                     "cleanup_end_step")})
    text = visible(report.render_report(summary, []))
    for absent in ("n/a", "reason", "circularity b", "None", "null", "nan", "class=\"confidence\""):
        assert absent not in text, absent
    assert "Not available: train loss, test loss (the train/test split is not stored" in text
    assert "Not computed: restricted loss (key frequencies only) (see the notes)." in text
    assert ('<td>logit template FVE</td><td class="num"></td><td>not computed: no circle to compare the '
            'templates on</td>') in text
    lead = section(text, "summary")
    assert "Phases: not available (one checkpoint has no training history)." in lead
    assert "No grokking curve: one checkpoint has no training history." in lead


def test_phases_not_detected_on_a_long_run():
    summary = make_summary(phases={"memorization_step": None, "grokking_step": None})
    lead = section(visible(report.render_report(summary, [])), "summary")
    assert "Phases: not available (none was detected; the Phases section below says how each" in lead


def test_text_from_data_is_escaped(page):
    html, _ = page
    text = without_plotly_js(html)
    assert EVIL not in html and "<b>p59" not in html and "step_<0001>" not in html
    assert "alert(&quot;x&quot;)" in text  # shown, as text
    # figure JSON: no data may close its <script>; every <script> the page has is ours
    assert len(re.findall(r"<script\b", html)) == 1 + len(page[1])
    assert len(re.findall(r"</script>", html)) == 1 + len(page[1])


@pytest.mark.parametrize("text", ['{"a": "</script><script>x()</script>"}', '{"a": "<!--"}',
                                  '{"a": "\u2028&"}'])
def test_script_json_cannot_end_its_script(text):
    safe = report._js_json(text)
    assert "<" not in safe and ">" not in safe and "&" not in safe and "\u2028" not in safe
    assert json.loads(safe) == json.loads(text)


def test_page_is_self_contained(page):
    html, _ = page
    parser = Tags()
    parser.feed(html)
    for tag, attrs in parser.tags:
        for key in ("src", "href", "srcset", "data", "action", "poster"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (tag, key, value)
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
    rest = without_plotly_js(html).lower()
    for needle in ("http:", "https:", "//cdn", "mathjax", "@import", "@font-face", "url("):
        assert needle not in rest, needle


def test_folder_of_models():
    models = [make_summary(source={"path": f"dir/m{i}.pt", "format": "zhong2023"}) for i in range(3)]
    models[1]["classification"] = {"label": "clock", "gradient_symmetricity": 0.33362,
                                   "distance_irrelevance": 0.8483}
    models[2]["classification"] = {"label": "uninterpreted", "reason": "not generalised"}
    html = report.render_report({"source": {"path": "released/", "format": "folder"}, "models": models,
                                 "skipped": []}, [])
    lead = section(html, "summary")
    assert "3 models: 1 pizza, 1 clock, 1 uninterpreted" in lead
    assert ('<td><span title="dir/m1.pt">m1.pt</span></td><td><span class="label label-clock">clock</span></td>'
            '<td class="num">59</td>') in lead
    assert '<td class="num">0.3336</td><td class="num">0.8483</td>' in lead
    assert '<span class="label label-other">uninterpreted</span> <span class="muted">not generalised</span>' in lead
    assert "None: every checkpoint was read." in html and "task unknown" not in html


@pytest.mark.parametrize("summary", [{}, {"task": None, "source": None, "phases": None, "classification": None},
                                     {"phases": {}, "classification": {}, "key_frequencies": {}}])
def test_sparse_summaries_render(summary):
    html = report.render_report(summary, [])
    assert "task unknown" in html and "<code>unknown</code>" in html and html.rstrip().endswith("</html>")


def test_phase_method_as_plain_text():
    html = report.render_report({"phases": {"grokking_step": 12, "method": "thresholds on accuracy"}}, [])
    assert "<td>grokking (test accuracy reaches 99%)</td><td>12</td>" in html
    assert "<th>method</th><td>thresholds on accuracy</td>" in html
    assert "<li><strong>grokking</strong> step 12</li>" in section(html, "summary")


def test_other_summary_keys_are_shown():
    html = report.render_report(make_summary(notes=["excluded loss skipped: no key frequencies " + EVIL],
                                             alpha=0.0, empty=[]), [])
    assert '<section id="notes"><h2>Notes</h2><ul><li>excluded loss skipped: no key frequencies &lt;' in html
    assert '<h2>Alpha</h2>0</section>' in html and "more-empty" not in html


def test_extra_sections_escaped():
    html = report.render_report({}, [], sections=[("Notes " + EVIL, "first\n\n" + EVIL),
                                                  ("Table", {"a<b": [1.5, math.nan]}), ("List", ["x", EVIL])])
    assert EVIL not in html and "<h2>Notes &lt;script&gt;" in html and "<p>first</p>" in html
    assert "<th>a&lt;b</th><td>1.5, </td>" in html and "<li>x</li>" in html


def test_write_report_atomic(tmp_path):
    summary, figures = make_summary(), make_figures()[:2]
    target = tmp_path / "out" / "report.html"
    assert report.write_report(target, summary, figures) == target
    assert target.read_text(encoding="utf-8") == report.render_report(summary, figures)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    report.write_report(target, make_summary(task={"p": 113, "op": "add"}), [])
    assert "p = 113" in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]  # no temporary left


def test_write_report_failure_keeps_old_page(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old page", encoding="utf-8")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(GrokscopeError, match="report.html: found OSError: No space left on device"):
        report.write_report(target, make_summary(), [])
    assert target.read_text(encoding="utf-8") == "old page"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_report_onto_a_folder(tmp_path):
    (tmp_path / "report.html").mkdir()
    with pytest.raises(GrokscopeError, match="expected a writable report path"):
        report.write_report(tmp_path / "report.html", {}, [])
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


BROWSER = find_chromium()
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium binary on PATH "
                                   "(apt-get install chromium)")


@pytest.mark.browser
@needs_browser
def test_every_figure_renders_in_a_real_browser(page):
    html, figures = page
    result = inspect_page(html, BROWSER)
    assert result.done, "the page probe did not finish: " + result.stderr[-2000:]
    assert result.errors == []
    assert console_errors_in_log(result.stderr) == []
    assert result.resources == []  # nothing fetched
    assert [p["id"] for p in result.plots] == [f"gs-fig-{i}" for i in range(len(figures))]
    for probe, (title, fig) in zip(result.plots, figures):
        assert probe["svg"] >= 1 and result.svg_divs[probe["id"]] >= 1, title
        assert probe["traces"] == len(fig.data), title
        shown = [t for t in fig.data if t.visible != "legendonly"]
        assert probe["drawn"] == len(shown), title
    assert_fits(result.layout, 1400)


def assert_fits(layout: dict, width: int) -> None:
    """Nothing is wider than the window, and no table needs its sideways scroll at this width."""
    assert layout["viewport"] == width and layout["page"] <= width, layout
    assert layout["boxes"], "no table boxes measured"
    wide = [box for box in layout["boxes"] if box["scroll"] > box["client"]]
    assert wide == [], wide


def full_circles(p: int = 59) -> list[dict]:
    """Six circles with every field ``Classification.to_dict`` writes, three pizza and three
    accompanying, as on the released model A ([Z23]); long enough values to test the table's width."""
    circles = []
    for i, (k, delta) in enumerate([(17, 7), (3, 20), (15, 4), (25, 26), (6, 10), (29, 2)]):
        accompanying = i >= 3
        fve = ({"clock": -1.0000008, "pizza": -0.9999995, "accompanying": 0.9756270} if accompanying
               else {"clock": 0.7540791, "pizza": 0.9831455})
        circles.append({"index": i, "components": [2 * i, 2 * i + 1], "freq": k, "delta": delta,
                        "variance": 0.2623 - 0.04 * i, "roundness": 0.9991344795, "purity": 0.9999647525,
                        "isolated_on": "fourier" if i == 2 else "components", "is_circle": i != 5,
                        "doubles": i - 3 if accompanying else None, "accompanying": accompanying,
                        "template_fve": fve, "template_fve_centred": fve, "phase": 0.0,
                        "label": "accompanying" if accompanying else "pizza"})
    return circles


@pytest.mark.browser
@needs_browser
def test_wide_tables_fit_at_1400_px():
    """The circles table (every column, six circles) and a folder's models table fit a 1,400 px window."""
    summary = make_summary()
    summary["classification"]["circles"] = full_circles()
    models = [make_summary(source={"path": f"released/models/model_{i}_p99zdpze5l.pt", "format": "zhong2023"},
                           attention_rate=0.0040673, classification={**summary["classification"],
                                                                     "label": "uninterpreted",
                                                                     "reason": "not generalised"})
              for i in range(3)]
    for page in (summary, {"source": {"path": "released/", "format": "folder"}, "models": models}):
        result = inspect_page(report.render_report(page, []), BROWSER, width=1400)
        assert result.done and result.errors == []
        assert_fits(result.layout, 1400)
    # in a narrow window the circles table scrolls inside its box; the page keeps the window's width
    narrow = inspect_page(report.render_report(summary, []), BROWSER, width=800).layout
    assert narrow["viewport"] == 800 and narrow["page"] <= 800, narrow
    assert [box["section"] for box in narrow["boxes"] if box["scroll"] > box["client"]] == ["classification"]


@pytest.mark.browser
@needs_browser
def test_browser_check_sees_failures():
    """The harness itself: errors, rejections, failed loads and undrawn plots are all reported."""
    page = ("<!DOCTYPE html><html><head><title>t</title></head><body>"
            '<div id="gs-fig-0" class="gs-plot"></div><img src="missing.png">'
            "<script>console.error('deliberate');Promise.reject('refused');</script>"
            "<script>throw new Error('boom')</script></body></html>")
    result = inspect_page(page, BROWSER)
    assert result.done
    assert "console.error: deliberate" in result.errors and "uncaught: Uncaught Error: boom" in result.errors
    assert "unhandled rejection: refused" in result.errors
    assert any(e.startswith("failed to load") and e.endswith("missing.png") for e in result.errors)
    assert console_errors_in_log(result.stderr) != []
    assert result.plots == [{"id": "gs-fig-0", "svg": 0, "traces": 0, "drawn": 0}]
    assert result.svg_divs == {"gs-fig-0": 0}


def lead_number(lead: str, measure: str) -> float:
    match = re.search(rf'<tr><td>{re.escape(measure)}</td><td class="num">([-0-9.e+]+)</td>', lead)
    assert match, measure
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.browser
@needs_browser
def test_reports_of_a_released_model_and_a_trained_run(fast_run_dir, tmp_path):
    """End to end on real data: [Z23]'s released model A and a trained ``fast`` run. The lead shows
    the label and the numbers that decided it; a single model says it has no phases and no curve, the
    run shows its phases and its grokking curve; every table fits a 1,400 px window."""
    from grokscope.outputs import analyze_path

    pizza = Path(__file__).parent / "fixtures" / "pizza" / "model_p99zdpze5l.pt"
    summary, out = analyze_path(pizza, tmp_path / "pizza")
    html = (out / "report.html").read_text(encoding="utf-8")
    lead = section(without_plotly_js(html), "summary")
    assert '<span class="label label-pizza label-big">pizza</span>' in lead
    # SCIENCE.md section 4: GS 0.99367, DI 0.1717 (shown to 4 significant digits, so 1e-3 covers it)
    assert lead_number(lead, "gradient symmetricity (GS)") == pytest.approx(0.99367, abs=1e-3)
    assert lead_number(lead, "distance irrelevance (DI)") == pytest.approx(0.1717, abs=1e-3)
    assert "No grokking curve: one checkpoint has no training history." in lead
    assert "n/a" not in visible(html) and "Circles (6)" in html
    result = inspect_page(html, BROWSER, width=1400)
    assert result.done and result.errors == []
    assert_fits(result.layout, 1400)

    summary, out = analyze_path(fast_run_dir, tmp_path / "fast")
    html = (out / "report.html").read_text(encoding="utf-8")
    lead = section(without_plotly_js(html), "summary")
    label = summary["classification"]["label"]
    assert f'<span class="label label-{label if label in ("clock", "pizza") else "other"} label-big">' in lead
    assert lead_number(lead, "gradient symmetricity (GS)") == pytest.approx(
        summary["classification"]["gradient_symmetricity"], rel=1e-3)  # 4 significant digits
    memorised = summary["phases"]["memorization_step"]
    assert memorised is not None and f"<li><strong>memorisation</strong> step {memorised}</li>" in lead
    assert "Grokking curve" in lead and 'id="gs-fig-0"' in lead
    result = inspect_page(html, BROWSER, width=1400)
    assert result.done and result.errors == []
    assert result.plots[0]["id"] == "gs-fig-0" and result.plots[0]["drawn"] >= 4  # train/test loss and accuracy
    assert_fits(result.layout, 1400)
