"""Unit tests of grokscope.plots: traces carry the given data exactly, phases are shaded at the given
steps, key frequencies are marked, and missing data degrades to a figure that says what is missing."""

import dataclasses
import math
from pathlib import Path

import jaxtyping
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from grokscope import plots
from grokscope.errors import GrokscopeError

# Under `--jaxtyping-packages=grokscope,...` a shape that contradicts the annotation fails the
# annotation check first.
SHAPE_ERRORS = (GrokscopeError, jaxtyping.TypeCheckError)

TOL = dict(rel=1e-12, abs=0.0)


def make_table(n: int = 40, *, start: int = 0, stop: int = 20000, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    steps = np.unique(np.r_[start, np.geomspace(max(start, 1), stop, n)].astype(int))
    m = steps.size
    return {"step": steps.tolist(), "train_loss": rng.uniform(1e-6, 5, m).tolist(),
            "test_loss": rng.uniform(1e-6, 5, m).tolist(), "train_acc": rng.uniform(0, 1, m).tolist(),
            "test_acc": rng.uniform(0, 1, m).tolist(), "full_loss": rng.uniform(1e-6, 5, m).tolist(),
            "full_acc": rng.uniform(0, 1, m).tolist(), "restricted_loss": rng.uniform(1e-8, 5, m).tolist(),
            "excluded_loss": rng.uniform(1, 9, m).tolist(), "excluded_loss_k10": rng.uniform(1, 9, m).tolist(),
            "excluded_loss_k2": rng.uniform(1, 9, m).tolist(), "sum_sq_weights": rng.uniform(10, 99, m).tolist(),
            "gini_W_E": rng.uniform(0, 1, m).tolist(), "gini_W_L": rng.uniform(0, 1, m).tolist(),
            "cos_fve": rng.uniform(0, 1, m).tolist()}


PHASES = {"memorization_step": 1400, "grokking_step": 9800, "circuit_formation_start": 1500,
          "circuit_formation_end": 9400, "cleanup_end_step": 14000, "delay_ratio": 7.0, "method": {}}


def trace(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, f"{name!r} not among {[t.name for t in fig.data]}"
    return found[0]


def rects(fig: go.Figure) -> list:
    return [s for s in fig.layout.shapes if s.type == "rect"]


def subtitle(fig: go.Figure) -> str:
    return fig.layout.title.subtitle.text or ""


def empty_message(fig: go.Figure) -> str:
    assert len(fig.data) == 0
    return " ".join(a.text for a in fig.layout.annotations)


@pytest.mark.parametrize("phases, expected", [
    (PHASES, [("memorisation", 0, 1500), ("circuit formation", 1500, 9400), ("cleanup", 9400, 14000)]),
    ({"memorization_step": 300}, [("memorisation", 0, 300)]),
    ({"memorization_step": 300, "circuit_formation_start": 200, "circuit_formation_end": 150},
     [("memorisation", 0, 200)]),
    ({"circuit_formation_end": 10, "cleanup_end_step": 20}, [("cleanup", 10, 20)]),
    ({}, []), (None, []),
])
def test_phase_spans(phases, expected):
    assert plots.phase_spans(phases, 0) == expected


@pytest.mark.parametrize("column", ["train_loss", "test_loss", "full_loss", "train_acc", "test_acc"])
def test_loss_curves_carry_the_table(column):
    table = make_table()
    fig = plots.loss_curves(table, PHASES)
    name = {"train_loss": "train loss", "test_loss": "test loss", "full_loss": "full-grid loss",
            "train_acc": "train accuracy", "test_acc": "test accuracy"}[column]
    t = trace(fig, name)
    assert list(t.x) == table["step"]
    assert list(t.y) == pytest.approx(table[column], **TOL)
    assert len(fig.data) == 6


def test_loss_curves_axes_and_phases():
    fig = plots.loss_curves(make_table(), PHASES)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "linear"
    assert fig.layout.xaxis.type == "log" and "step 0 not shown" in fig.layout.xaxis2.title.text
    shaded = rects(fig)
    # three phases, shaded in both panels, labelled once in the top panel
    assert len(shaded) == 6
    labelled = {s.label.text: (s.x0, s.x1) for s in shaded if s.label.text}
    assert labelled == {"memorisation": (1, 1500), "circuit formation": (1500, 9400), "cleanup": (9400, 14000)}
    lines = {s.x0 for s in fig.layout.shapes if s.type == "line"}
    assert lines == {1400, 9800}
    assert "phases not detected" not in subtitle(fig)


@pytest.mark.parametrize("steps, expected", [(list(range(0, 50, 5)), "linear"),
                                             ([0, 10, 100, 1000, 10000], "log"),
                                             ([5, 50, 499], "linear"), ([5, 50, 500], "log")])
def test_log_x_only_when_steps_span_two_decades(steps, expected):
    fig = plots.loss_curves({"step": steps, "train_loss": [1.0] * len(steps)})
    assert fig.layout.xaxis.type == expected


def test_loss_curves_nan_and_non_positive_values_become_gaps():
    table = make_table(10)
    n = len(table["step"])
    table["test_loss"] = [math.nan] * n
    table["test_acc"] = [None] * n
    table["train_loss"][3] = math.nan
    table["train_loss"][4] = 0.0  # not drawable on a log axis
    table["train_acc"][5] = math.inf
    fig = plots.loss_curves(table, PHASES)
    names = [t.name for t in fig.data]
    assert "test loss" not in names and "test accuracy" not in names
    assert "test loss unknown" in subtitle(fig) and "test accuracy unknown" in subtitle(fig)
    assert trace(fig, "train loss").y[3] is None and trace(fig, "train loss").y[4] is None
    assert trace(fig, "train accuracy").y[5] is None
    assert trace(fig, "train loss").y[5] == pytest.approx(table["train_loss"][5], **TOL)
    fig.to_json()  # still a valid figure


@pytest.mark.parametrize("phases, note, n_labelled", [
    (None, "no phases given", 0),
    ({"memorization_step": 1400}, "phases not detected: circuit formation, cleanup", 1),
    ({"memorization_step": None, "grokking_step": None}, "phases not detected: memorisation, circuit "
                                                         "formation, cleanup", 0),
])
def test_missing_phases_are_said(phases, note, n_labelled):
    fig = plots.loss_curves(make_table(), phases)
    assert note in subtitle(fig)
    assert len([s for s in rects(fig) if s.label.text]) == n_labelled


@pytest.mark.parametrize("table, message", [
    ({"train_loss": [1.0, 2.0]}, "no step column"),
    ({"step": [0, 1, 2]}, "all unknown"),
    ({"step": [0, 1], "train_loss": [math.nan, None], "test_loss": [math.nan, math.nan]}, "all unknown"),
    ({"step": []}, "all unknown"),
])
def test_curves_without_data_say_so(table, message):
    for fn in (plots.loss_curves, plots.restricted_excluded_curves, plots.weight_curves):
        assert message in empty_message(fn(table))


def test_column_length_mismatch_is_an_error():
    with pytest.raises(GrokscopeError, match="'test_loss'.*3 values; expected 2"):
        plots.loss_curves({"step": [0, 1], "train_loss": [1.0, 0.5], "test_loss": [1.0, 0.5, 0.1]})


def test_tensor_and_array_columns():
    table = make_table(8)
    as_tensor = {k: torch.tensor(v, dtype=torch.float64) for k, v in table.items()}
    as_array = {k: np.asarray(v) for k, v in table.items()}
    for other in (as_tensor, as_array):
        a, b = plots.loss_curves(table).to_plotly_json(), plots.loss_curves(other).to_plotly_json()
        assert a == b


def test_restricted_excluded_curves():
    table = make_table()
    fig = plots.restricted_excluded_curves(table, PHASES)
    names = [t.name for t in fig.data]
    assert names == ["restricted loss", "excluded loss", "train loss", "test loss",
                     "excluded loss, k = 2", "excluded loss, k = 10"]
    assert [t.visible for t in fig.data][-2:] == ["legendonly", "legendonly"]
    assert trace(fig, "train loss").line.dash == "dash"
    assert list(trace(fig, "excluded loss, k = 10").y) == pytest.approx(table["excluded_loss_k10"], **TOL)
    assert fig.layout.yaxis.type == "log" and len(rects(fig)) == 3


def test_weight_curves():
    table = make_table()
    fig = plots.weight_curves(table, PHASES)
    assert [t.name for t in fig.data] == ["Gini of W_E Fourier norms", "Gini of W_L Fourier norms",
                                          "cos(w(a+b-c)) FVE", "sum of squared weights"]
    assert trace(fig, "sum of squared weights").yaxis == "y2"
    assert list(trace(fig, "Gini of W_L Fourier norms").y) == pytest.approx(table["gini_W_L"], **TOL)
    table["gini_W_L"] = [math.nan] * len(table["step"])
    assert "Gini of W_L Fourier norms unknown" in subtitle(plots.weight_curves(table, PHASES))


@pytest.mark.parametrize("kind", ["tensor", "array"])
@pytest.mark.parametrize("keys", [[14, 35, 41, 42, 52], [1], [56, 3]])
def test_fourier_norms_mark_key_frequencies(kind, keys):
    norms = torch.rand(56, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = norms if kind == "tensor" else norms.numpy()
    fig = plots.fourier_norms(data, keys)
    key, other = trace(fig, "key frequency"), trace(fig, "frequency")
    assert list(key.x) == sorted(keys)
    assert list(key.y) == pytest.approx([norms[k - 1].item() for k in sorted(keys)], **TOL)
    assert list(key.text) == [f"k={k}" for k in sorted(keys)]
    assert set(other.x) == set(range(1, 57)) - set(keys)
    assert list(other.y) == pytest.approx([norms[k - 1].item() for k in other.x], **TOL)


def test_fourier_norms_components_and_missing_keys():
    norms = np.linspace(0.1, 1.0, 5)
    comp = np.arange(11, dtype=float)
    labels = ["const"] + [f"{t} {k}" for k in range(1, 6) for t in ("cos", "sin")]
    fig = plots.fourier_norms(norms, [], component_norms=comp, component_labels=labels)
    assert [t.name for t in fig.data] == ["frequency", "component"]
    assert list(trace(fig, "component").x) == labels and trace(fig, "component").yaxis == "y2"
    assert "no key frequencies" in subtitle(fig)
    with pytest.raises(GrokscopeError, match="3 component labels"):
        plots.fourier_norms(norms, [], component_norms=comp, component_labels=labels[:3])


@pytest.mark.parametrize("keys", [[0], [6], [-1, 2]])
def test_fourier_norms_reject_impossible_keys(keys):
    with pytest.raises(GrokscopeError, match=r"expected frequencies in 1\.\.5"):
        plots.fourier_norms(np.ones(5), keys)


def test_fourier_norms_all_nan():
    assert "no embedding Fourier norms" in empty_message(plots.fourier_norms(np.full(5, np.nan), [2]))


def test_neuron_clusters_counts():
    freq = torch.tensor([0, 14, 14, 35, 0, 14, 41, 35])
    frac = torch.tensor([0.2, 0.9, 0.95, 0.86, 0.5, 0.99, 0.84, 0.9])
    fig = plots.neuron_clusters(freq, frac)
    bars = trace(fig, "neurons")
    # k = 41's only neuron is explained at 0.84 < 0.85: unexplained, like the two of frequency 0
    assert list(bars.x) == ["unexplained", "k=14", "k=35"]
    assert list(bars.y) == [3, 3, 2]
    lenient = trace(plots.neuron_clusters(freq, frac, threshold=0.8), "neurons")
    assert list(lenient.x) == ["unexplained", "k=14", "k=35", "k=41"] and list(lenient.y) == [2, 3, 2, 1]
    hist = trace(fig, "fraction explained")
    assert list(hist.x) == pytest.approx(frac.tolist(), rel=1e-6)
    assert [s.x0 for s in fig.layout.shapes if s.type == "line"] == [0.85]
    assert "62.5% of 8 neurons explained at >= 0.85" in subtitle(fig)  # 5 of 8 are >= 0.85


@pytest.mark.parametrize("freq, frac", [(np.zeros(3, dtype=np.int64), np.zeros(4)),
                                        (np.zeros(4, dtype=np.int64), np.zeros(3))])
def test_neuron_clusters_shape_mismatch(freq, frac):
    with pytest.raises(SHAPE_ERRORS, match="one of each per neuron|d_mlp"):
        plots.neuron_clusters(freq, frac)


def circle(p: int, k: int, delta: int, **extra) -> dict:
    angle = 2 * np.pi * k * np.arange(p) / p
    return {"k": k, "delta": delta, "points": np.c_[np.cos(angle), np.sin(angle)],
            "labels": list(range(p)), **extra}


@pytest.mark.parametrize("n_circles, rows", [(1, 1), (3, 1), (4, 2), (7, 3)])
def test_embedding_circles_one_subplot_each(n_circles, rows):
    p = 11
    circles = [circle(p, k, (k * 5) % p, label="pizza" if k % 2 else None) for k in range(1, n_circles + 1)]
    fig = plots.embedding_circles(circles)
    assert len(fig.data) == n_circles
    assert len({(t.xaxis, t.yaxis) for t in fig.data}) == n_circles
    assert fig.layout.height == 380 * rows
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "circle 1: k = 1, delta = 5 (pizza)" and titles[1 % n_circles].startswith("circle")
    for t, c in zip(fig.data, circles):
        assert list(t.x) == pytest.approx(c["points"][:, 0].tolist(), **TOL)
        assert list(t.text) == [str(i) for i in range(p)]
    assert fig.layout.xaxis.scaleanchor == "y"


def test_embedding_circles_missing_and_bad():
    assert "no circles" in empty_message(plots.embedding_circles([]))
    with pytest.raises(GrokscopeError, match=r"circle 1: found points of shape \(5, 3\)"):
        plots.embedding_circles([{"k": 1, "delta": 1, "points": np.zeros((5, 3))}])
    with pytest.raises(GrokscopeError, match="4 labels"):
        plots.embedding_circles([{"k": 1, "delta": 1, "points": np.zeros((5, 2)), "labels": [0, 1, 2, 3]}])


def test_logit_map_orientation():
    # An analytic pizza-like map: M[s, d] = |cos(w d / 2)| with s = a+b, d = a-b, constant along s.
    p, k = 13, 3
    s, d = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    grid = np.abs(np.cos(np.pi * k * d / p)) + 0.001 * s
    fig = plots.logit_map(torch.tensor(grid))
    heat = fig.data[0]
    assert heat.type == "heatmap" and list(heat.x) == list(range(p))
    for a_plus_b, a_minus_b in [(0, 5), (7, 2), (12, 12)]:
        assert heat.z[a_plus_b][a_minus_b] == pytest.approx(grid[a_plus_b, a_minus_b], **TOL)
    assert fig.layout.xaxis.title.text == "(a - b) mod p" and fig.layout.yaxis.title.text == "(a + b) mod p"


def test_logit_map_nan_and_errors():
    grid = np.ones((5, 5))
    grid[1, 2] = np.nan
    assert plots.logit_map(grid).data[0].z[1][2] is None
    assert "no correct-logit map" in empty_message(plots.logit_map(np.full((3, 3), np.nan)))
    with pytest.raises(SHAPE_ERRORS, match="square|p p"):
        plots.logit_map(np.ones((3, 4)))


def model(path, label, gs, di):
    return {"source": {"path": path}, "classification": {"label": label, "reason": "r", "gradient_symmetricity": gs,
                                                         "distance_irrelevance": di}}


def test_model_comparison_one_point_per_model():
    models = [model("a.pt", "pizza", 0.99, 0.17), model("b.pt", "clock", 0.33, 0.85),
              model("c.pt", "pizza", 0.997, 0.18), model("d.pt", "uninterpreted", 0.62, 0.99),
              model("e.pt", "clock", None, 0.9), {"name": "f", "label": "clock", "gradient_symmetricity": 0.4,
                                                 "distance_irrelevance": float("nan")}]
    fig = plots.model_comparison(models)
    assert [t.name for t in fig.data] == ["clock (1)", "pizza (2)", "uninterpreted (1)"]
    pizza = trace(fig, "pizza (2)")
    assert list(pizza.text) == ["a.pt", "c.pt"] and list(pizza.x) == [0.99, 0.997]
    assert "2 of 6 models lack" in subtitle(fig)
    flat = plots.model_comparison([{"name": "x", "label": "clock", "gradient_symmetricity": 0.3,
                                    "distance_irrelevance": 0.8}])
    assert list(flat.data[0].y) == [0.8]
    assert "no models" in empty_message(plots.model_comparison([]))
    assert "no model has both" in empty_message(plots.model_comparison([model("e.pt", "clock", None, 0.9)]))


@pytest.mark.parametrize("given, titles", [
    ({}, []),
    ({"table": True}, ["Loss and accuracy", "Restricted and excluded loss", "Sparsity and weight norm"]),
    ({"norms": True, "grid": True}, ["Embedding Fourier norms", "Correct-class logit over (a+b, a-b)"]),
])
def test_standard_figures(given, titles):
    kwargs = {}
    if "table" in given:
        kwargs["table"] = make_table(5)
    if "norms" in given:
        kwargs["embedding_norms"], kwargs["key_freqs"] = np.ones(5), [2]
    if "grid" in given:
        kwargs["logit_grid"] = np.ones((11, 11))
    assert [title for title, _ in plots.standard_figures(**kwargs)] == titles


@dataclasses.dataclass
class PhasesRecord:
    memorization_step: int | None = None
    grokking_step: int | None = None
    circuit_formation_start: int | None = None
    circuit_formation_end: int | None = None
    cleanup_end_step: int | None = None


def test_phases_as_a_dataclass_and_at_step_zero():
    table = make_table()
    as_dict = plots.loss_curves(table, {k: PHASES[k] for k in PHASES if k not in ("method", "delay_ratio")})
    as_record = plots.loss_curves(table, PhasesRecord(1400, 9800, 1500, 9400, 14000))
    assert as_dict.to_plotly_json() == as_record.to_plotly_json()
    # memorised at step 0 on a log axis: no line at 0, and the first span starts at the first positive step
    fig = plots.loss_curves(table, PhasesRecord(memorization_step=0, circuit_formation_start=0,
                                                circuit_formation_end=500))
    assert [s.type for s in fig.layout.shapes] == ["rect", "rect"]
    assert (fig.layout.shapes[0].x0, fig.layout.shapes[0].x1) == (1, 500)
    linear = plots.loss_curves(table, PhasesRecord(memorization_step=0, circuit_formation_start=0,
                                                   circuit_formation_end=500), log_x=False)
    assert {s.x0 for s in linear.layout.shapes if s.type == "line"} == {0}


FIXTURES = Path(__file__).parent / "fixtures" / "pizza"


@pytest.mark.parametrize("model_id, di_correct", [("p99zdpze5l", 0.1717), ("l8k1hzciux", 0.8483)])
def test_logit_map_of_released_models_reads_back_the_published_di(model_id, di_correct):
    """The heatmap's rows are a+b and columns a-b: distance irrelevance computed from the drawn grid
    (mean over columns of the std over rows / std of all entries, [Z23]) matches SCIENCE.md."""
    import grokscope as gs
    from grokscope.models import final_logits

    run = gs.load_run(FIXTURES / f"model_{model_id}.pt")
    task, p = run.task, run.task.p
    with torch.no_grad():
        logits = final_logits(run.model(-1), task.tokens())[:, :p].double()
    a, b = task.operands().T
    grid = torch.empty(p, p, dtype=torch.float64)
    grid[(a + b) % p, (a - b) % p] = logits[torch.arange(p * p), task.labels()]
    z = np.array(plots.logit_map(grid).data[0].z, dtype=float)
    assert z.std(axis=0).mean() / z.std() == pytest.approx(di_correct, abs=5e-4)


def test_every_figure_function_is_importable_from_the_package():
    """plots/ is split by job (curves over training, evidence of one model); the package still exposes
    every figure function under its old name, as the same object."""
    from grokscope.plots import curves, evidence

    for module in (curves, evidence):
        for name in module.__all__:
            assert getattr(plots, name) is getattr(module, name), name
            assert name in plots.__all__, name
    assert set(curves.__all__).isdisjoint(evidence.__all__)
