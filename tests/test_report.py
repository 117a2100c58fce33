"""Tests of grokscope.report: content, escaping, self-containment, the atomic write, and a real
headless-chromium check that every figure of a report renders with no console error."""

import json
import math
import os
import re
import stat
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
        "classification": {"label": "pizza", "reason": "GS >= 0.98 and DI <= 0.4", "confidence": 0.9,
                           "gradient_symmetricity": 0.99367, "distance_irrelevance": 0.1717,
                           "distance_irrelevance_runnerup": 0.2218, "circularity": 0.9978,
                           "template_fve": {"clock": 0.754, "pizza": 0.983},
                           "thresholds": {"gs_pizza": 0.98, "di_pizza": 0.4},
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


def test_header_and_sections(page):
    html, figures = page
    text = without_plotly_js(html)
    assert "p = 59, c = a + b mod p, n_ctx = 2, no &#x27;=&#x27; token" in text
    assert "runs/&lt;b&gt;p59&lt;/b&gt; &amp; co/model_p99zdpze5l.pt" in text and "(zhong2023)" in text
    assert "3, steps 0 to 20000" in text
    assert "steps 0 to 20000" in report.render_report(make_summary(checkpoints={"steps": [0.0, 20000.0]}))
    for expected in ['<span class="label label-pizza">pizza</span>', "GS &gt;= 0.98 and DI &lt;= 0.4",
                     "<th>gradient symmetricity (GS)</th><td>0.9937</td>",
                     "<th>distance irrelevance (DI, correct logit)</th><td>0.1717</td>",
                     "<th>logit template FVE, pizza</th><td>0.983</td>", "<li>GS 0.994 &gt;= 0.98</li>",
                     "<th>key frequencies</th><td>3, 15, 17</td>", "A: argmax frequency of &gt;= 5 neurons",
                     "<td>first step with train accuracy &gt;= 0.99</td>", "<td>140</td>", "<td>9800</td>",
                     "<th>restricted_loss</th><td>5.5e-08</td>", "<th>test_loss</th><td>n/a</td>",
                     "checkpoints/step_&lt;0001&gt;.safetensors", "truncated file &amp; bad header",
                     "Skipped checkpoints (1)", "<h3>circles</h3>"]:
        assert expected in text, expected
    assert text.count('class="gs-plot"') == len(figures)
    for i, (title, _) in enumerate(figures):
        assert f'href="#figure-{i}"' in text and f'id="gs-fig-{i}"' in text


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
    models = [make_summary(source={"path": f"m{i}.pt", "format": "zhong2023"}) for i in range(3)]
    models[1]["classification"] = {"label": "clock", "gradient_symmetricity": 0.33362,
                                   "distance_irrelevance": 0.8483}
    html = report.render_report({"source": {"path": "released/", "format": "folder"}, "models": models,
                                 "skipped": []}, [])
    assert "Models (3)" in html and "<td>m1.pt</td><td>59</td><td>clock</td>" in html
    assert "<td>0.3336</td><td>0.8483</td>" in html and "None: every checkpoint was read." in html


@pytest.mark.parametrize("summary", [{}, {"task": None, "source": None, "phases": None, "classification": None},
                                     {"phases": {}, "classification": {}, "key_frequencies": {}}])
def test_sparse_summaries_render(summary):
    html = report.render_report(summary, [])
    assert "task unknown" in html and "<code>unknown</code>" in html and html.rstrip().endswith("</html>")


def test_phase_method_as_plain_text():
    html = report.render_report({"phases": {"grokking_step": 12, "method": "thresholds on accuracy"}}, [])
    assert "<td>grokking (test accuracy reaches 99%)</td><td>12</td>" in html
    assert "<th>method</th><td>thresholds on accuracy</td>" in html


def test_other_summary_keys_are_shown():
    html = report.render_report(make_summary(notes=["excluded loss skipped: no key frequencies " + EVIL],
                                             alpha=0.0, empty=[]), [])
    assert '<section id="more-notes"><h2>Notes</h2><ul><li>excluded loss skipped: no key frequencies &lt;' in html
    assert '<h2>Alpha</h2>0</section>' in html and "more-empty" not in html


def test_extra_sections_escaped():
    html = report.render_report({}, [], sections=[("Notes " + EVIL, "first\n\n" + EVIL),
                                                  ("Table", {"a<b": [1.5, math.nan]}), ("List", ["x", EVIL])])
    assert EVIL not in html and "<h2>Notes &lt;script&gt;" in html and "<p>first</p>" in html
    assert "<th>a&lt;b</th><td>1.5, n/a</td>" in html and "<li>x</li>" in html


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
