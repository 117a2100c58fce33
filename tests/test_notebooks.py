"""The example notebooks and examples/quickstart.py run end to end, at their small size.

Each notebook executes in a fresh kernel running this interpreter (``sys.executable``, through a
kernelspec written for the test), in a temporary working directory, with ``GROKSCOPE_EXAMPLE_SCALE``
= small unless the environment says otherwise. The last cell of every notebook prints one JSON line
that summarises what it showed; the tests check those numbers against what the example claims.
Stored notebooks must carry no outputs (checked without running them).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = ("quickstart.ipynb", "progress_measures.ipynb", "clock_vs_pizza.ipynb")
KERNEL = "grokscope-tests"
CELL_TIMEOUT_S = 900


def example_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a notebook kernel or the script: small size, runs in tmp, grokscope importable."""
    env = dict(os.environ)
    env.setdefault("GROKSCOPE_EXAMPLE_SCALE", "small")
    env["GROKSCOPE_EXAMPLE_RUNS"] = str(tmp_path / "runs")
    env["GROKSCOPE_PIZZA_MODELS"] = str(ROOT / "tests" / "fixtures" / "pizza")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    # One torch thread unless told otherwise: on shared CPU cores two threads ran several times slower
    # (docs/presets.md, "Threads, speed and determinism").
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def write_kernelspec(folder: Path) -> Path:
    """A kernelspec named KERNEL that starts ipykernel with this interpreter; returns the JUPYTER_PATH entry."""
    spec = folder / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "grokscope tests", "language": "python"}))
    return folder / "jupyter"


def last_json_line(text: str) -> dict:
    lines = [line for line in text.strip().splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary line in:\n{text[-2000:]}"
    return json.loads(lines[-1])


def run_notebook(name: str, tmp_path: Path, monkeypatch) -> dict:
    """Execute examples/<name> in tmp_path; returns the JSON line its last code cell printed."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    work = tmp_path / "work"
    work.mkdir()
    env = example_env(tmp_path)
    env["JUPYTER_PATH"] = os.pathsep.join([str(write_kernelspec(tmp_path)), *filter(None, [env.get("JUPYTER_PATH")])])
    for key, value in env.items():  # the kernel inherits the test process's environment
        monkeypatch.setenv(key, value)
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    text = "".join(out.get("text", "") for out in code_cells[-1].outputs if out.get("output_type") == "stream")
    return last_json_line(text)


# ----- stored form (fast) --------------------------------------------------------------------------
def test_every_notebook_in_examples_is_tested():
    assert sorted(path.name for path in EXAMPLES.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert len(code) >= 5
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "GROKSCOPE_EXAMPLE_SCALE" in code[0].source + code[1].source
    assert (EXAMPLES / name).stat().st_size < 40_000


# ----- execution (slow) ----------------------------------------------------------------------------
@pytest.mark.slow
def test_quickstart_notebook(tmp_path, monkeypatch):
    out = run_notebook("quickstart.ipynb", tmp_path, monkeypatch)
    if out["scale"] == "small":
        assert out["p"] == 37
    assert out["final_accuracy"] >= 0.99
    assert out["memorization_step"] is not None and out["grokking_step"] is not None
    assert out["grokking_step"] >= 3 * out["memorization_step"]       # grokking: a delay, not at once
    assert out["key_frequencies"], "no key frequency on a grokked run"
    assert out["label"] in ("clock", "pizza", "uninterpreted")
    assert len(out["figures"]) >= 3
    assert (tmp_path / "runs" / f"quickstart-{out['scale']}" / "grokscope" / "report.html").stat().st_size > 100_000


@pytest.mark.slow
def test_progress_measures_notebook(tmp_path, monkeypatch):
    out = run_notebook("progress_measures.ipynb", tmp_path, monkeypatch)
    assert out["rules_agree"], "rules A and B disagree on a grokked model"
    assert out["memorization_step"] < out["grokking_step"] <= out["cleanup_end_step"]
    assert out["circuit_formation_start"] is not None and out["circuit_formation_start"] < out["grokking_step"]
    # [N23]'s final-checkpoint shapes: restricted loss below the full loss, excluded far above train.
    assert out["restricted_below_full_at_end"]
    assert out["final_restricted_loss"] < out["final_full_loss"] < 1e-2
    assert out["excluded_over_train_at_end"] > 1e3
    assert out["excluded_rise_in_circuit_formation"] > 2.0
    assert out["weight_norm_fall_from_peak"] > 0.2
    assert out["gini_W_E_rise"] > 0.1 and out["gini_W_L_rise"] > 0.1


# SCIENCE.md section 4: the released models' published signatures and labels.
RELEASED = {"p99zdpze5l": ("pizza", 0.99367, 0.1717), "l8k1hzciux": ("clock", 0.33362, 0.8483),
            "18c9ev5v5p": ("pizza", 0.997, 0.174), "h9m153uuh9": ("pizza", 0.997, 0.185),
            "dy65ktpiij": ("uninterpreted", 0.993, 0.474), "f5dh675z97": ("uninterpreted", 0.622, 0.992)}


@pytest.mark.slow
def test_clock_vs_pizza_notebook(tmp_path, monkeypatch):
    out = run_notebook("clock_vs_pizza.ipynb", tmp_path, monkeypatch)
    assert sorted(out["released"]) == sorted(RELEASED)
    for name, (label, gs_ref, di_ref) in RELEASED.items():
        got = out["released"][name]
        assert got["label"] == label, name
        assert got["gs"] == pytest.approx(gs_ref, abs=1e-3), name
        assert got["di"] == pytest.approx(di_ref, abs=1e-3), name
    sweep = {row["alpha"]: row for row in out["sweep"]}
    assert min(sweep) == 0.0 and max(sweep) == 1.0
    low, high = sweep[0.0], sweep[1.0]
    assert low["accuracy"] >= 0.99 and high["accuracy"] >= 0.99
    # Constant attention makes a pizza (GS ~ 1); standard attention a clock (GS low, DI high) [Z23].
    assert low["gradient_symmetricity"] > 0.98 > 0.9 > high["gradient_symmetricity"]
    assert high["distance_irrelevance"] > low["distance_irrelevance"] + 0.2
    assert low["gs_side"] == "pizza" and high["gs_side"] == "clock"
    assert low["label"] != "clock" and high["label"] != "pizza"
    assert out["boundary"] is not None and 0.0 <= out["boundary"][0] < out["boundary"][1] <= 1.0


@pytest.mark.slow
def test_quickstart_script(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], cwd=work, env=example_env(tmp_path),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    out = last_json_line(done.stdout)
    assert out["final_accuracy"] >= 0.99 and out["grokking_step"] is not None
    assert out["label"] in ("clock", "pizza", "uninterpreted")
    folder = tmp_path / "runs" / f"quickstart-{out['scale']}" / "grokscope"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["task"]["p"] == (37 if out["scale"] == "small" else 59)
    assert summary["final"]["accuracy"] == pytest.approx(out["final_accuracy"])
    header = (folder / "measures.csv").read_text().splitlines()[0].split(",")
    assert {"step", "train_loss", "test_loss", "restricted_loss", "excluded_loss"} <= set(header)
    assert (folder / "report.html").stat().st_size > 100_000
