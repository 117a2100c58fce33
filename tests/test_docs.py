"""The documentation builds with ``mkdocs build --strict``, every nav page exists, the API reference
renders every public module, and docstring examples come out as code."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_MODULES = ("tasks", "models", "constructions", "recipes", "training", "engine", "sweep_spec", "sweep_runner",
               "formats", "fourier", "measures", "phases", "algorithm_signatures", "classifier", "analysis", "plots",
               "plots.curves", "plots.evidence", "report", "progress", "monitor", "pathways")


def nav_pages(nav) -> list[str]:
    """Every page file named in a mkdocs nav (nested lists of {title: page or list})."""
    pages = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return out


def test_every_nav_page_exists():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    assert {"index.md", "quickstart.md", "measures.md", "cli.md", "api.md"} <= set(pages)
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"pages in the nav but not in docs/: {missing}"


def test_strict_build_writes_every_page(site):
    yaml = pytest.importorskip("yaml")
    for page in nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]):
        built = site / ("index.html" if page == "index.md" else Path(page).with_suffix("") / "index.html")
        assert built.is_file(), page


@pytest.mark.parametrize("module", API_MODULES)
def test_api_reference_renders_module(site, module):
    page = (site / "api" / "index.html").read_text()
    assert f'id="grokscope.{module}"' in page


@pytest.mark.parametrize("name", ["grokscope.measures.progress_measures", "grokscope.analysis.analyze",
                                  "grokscope.classifier.classify", "grokscope.fourier.key_frequencies",
                                  "grokscope.formats.load_run", "grokscope.recipes.TrainConfig",
                                  "grokscope.plots.curves.loss_curves", "grokscope.plots.evidence.embedding_circles",
                                  "grokscope.plots.standard_figures", "grokscope.progress.progress_bar"])
def test_api_reference_renders_public_names(site, name):
    assert f'id="{name}"' in (site / "api" / "index.html").read_text()


def test_docstring_examples_render_as_code(site):
    page = (site / "api" / "index.html").read_text()
    assert "<blockquote>" not in page            # a bare >>> block would be a nested quotation
    assert 'class="language-pycon"' in page
    assert "&gt;&gt;&gt; basis = fourier_basis(5)" in page


def _layout_module():
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("griffe_docstrings", DOCS / "griffe_docstrings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text, expected", [
    ("Sum.\n>>> 1 + 1\n2\n\nMore.", "Sum.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nMore."),
    ("Args:\n    x: a number\n        >>> f(1)\n        2", "Args:\n    x: a number\n        ```pycon\n        >>> f(1)\n        2\n        ```"),
    ("Pieces:\n- one\n- two\n  continued\n- three", "Pieces:\n\n- one\n- two\n  continued\n- three"),
    ("Rules:\n1. first\n2. second", "Rules:\n\n1. first\n2. second"),
    ("```\n>>> kept\n- kept\n```", "```\n>>> kept\n- kept\n```"),
    ("Plain text\nover two lines.", "Plain text\nover two lines."),
])
def test_docstring_layout(text, expected):
    assert _layout_module().reformat(text) == expected
