"""Population tables: bins, label fractions, cells, medians and phase grids against hand-counted answers."""

import pytest

from grokscope import population as pop
from grokscope.errors import GrokscopeError


def _rows():
    # 12 members: alpha in three [Z23] bins x width 32 / 128; labels and GS chosen so every count is known.
    rows = []
    for alpha, labels in ((0.05, ["pizza", "pizza"]), (0.31, ["pizza", "uninterpreted"]), (0.95, ["clock", "clock"])):
        for width in (32, 128):
            for k, label in enumerate(labels):
                rows.append({"id": f"a{alpha}-w{width}-{k}", "alpha": alpha + 0.01 * k, "d_model": width,
                             "label": label, "gradient_symmetricity": 0.99 if label == "pizza" else 0.4 + 0.1 * k,
                             "distance_irrelevance": 0.2 if label == "pizza" else 0.9})
    return rows


def test_alpha_bins_are_the_published_tenths_with_the_top_edge_inside():
    assert ALPHA_NAMES == [pop.ALPHA_BINS.name(i) for i in range(10)]
    assert [pop.ALPHA_BINS.index(v) for v in (0.0, 0.05, 0.1, 0.3, 0.6999, 0.7, 1.0)] == [0, 0, 1, 3, 6, 7, 9]
    assert pop.ALPHA_BINS.index(1.2) is None and pop.ALPHA_BINS.index(float("nan")) is None


ALPHA_NAMES = ["0.0-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8", "0.8-0.9",
               "0.9-1.0"]


def test_label_fractions_count_every_label():
    stats = pop.label_fractions(_rows())
    assert stats["counts"] == {"clock": 4, "pizza": 6, "uninterpreted": 2}
    assert stats["n"] == 12
    assert stats["fractions"]["pizza"] == pytest.approx(0.5, abs=1e-12)  # 6 / 12, exact in binary
    assert stats["pizza_share"] == pytest.approx(0.6, abs=1e-12)  # 6 / (6 + 4)
    assert pop.label_fractions([])["pizza_share"] is None


def test_cells_over_two_axes_with_alpha_binned():
    table = pop.cells(_rows(), ["alpha", "d_model"], {"alpha": pop.ALPHA_BINS})
    assert [(c["alpha"], c["d_model"], c["n"]) for c in table] == [
        ("0.0-0.1", 32, 2), ("0.0-0.1", 128, 2), ("0.3-0.4", 32, 2), ("0.3-0.4", 128, 2),
        ("0.9-1.0", 32, 2), ("0.9-1.0", 128, 2)]
    mixed = table[2]
    assert mixed["counts"] == {"clock": 0, "pizza": 1, "uninterpreted": 1}
    # GS of the cell: 0.99 (pizza) and 0.5 (uninterpreted, k = 1): median 0.745
    assert mixed["median_gradient_symmetricity"] == pytest.approx(0.745, abs=1e-12)
    assert table[4]["median_gradient_symmetricity"] == pytest.approx(0.45, abs=1e-12)  # 0.4 and 0.5


def test_a_continuous_axis_is_binned_by_default_and_a_few_values_are_categories():
    rows = [{"alpha": i / 39, "label": "pizza"} for i in range(40)]
    assert pop.default_bins(rows, "alpha") == pop.ALPHA_BINS
    assert [c["n"] for c in pop.cells(rows, ["alpha"])] == [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    few = [{"alpha": a, "label": "clock"} for a in (0.0, 0.5, 1.0)]
    assert pop.default_bins(few, "alpha") is None
    assert [c["alpha"] for c in pop.cells(few, ["alpha"])] == [0.0, 0.5, 1.0]


def test_bins_given_as_a_width_or_edges():
    rows = [{"weight_decay": w, "label": "clock"} for w in (0.1, 0.4, 0.6, 2.0)]
    widths = pop.cells(rows, ["weight_decay"], {"weight_decay": 0.5})
    assert [(c["weight_decay"], c["n"]) for c in widths] == [("0.0-0.5", 2), ("0.5-1.0", 1), ("1.5-2.0", 1)]
    edges = pop.cells(rows, ["weight_decay"], {"weight_decay": [0, 1, 3]})
    assert [(c["weight_decay"], c["n"]) for c in edges] == [("0.0-1.0", 3), ("1.0-3.0", 1)]
    with pytest.raises(GrokscopeError, match="increasing"):
        pop.Bins((1.0, 0.5))


def test_phase_grid_places_each_cell_and_leaves_empty_cells_none():
    rows = _rows()[:-2]  # drop the alpha 0.95, width 128 cell
    grid = pop.phase_grid(rows, "alpha", "d_model", "pizza_share", bins={"alpha": pop.ALPHA_BINS})
    assert grid.x == ["0.0-0.1", "0.3-0.4", "0.9-1.0"] and grid.y == [32, 128]
    assert grid.z == [[1.0, 1.0, 0.0], [1.0, 1.0, None]]
    assert grid.n == [[2, 2, 2], [2, 2, 0]]


def test_default_axes_prefer_attention_rate_by_width():
    assert pop.default_axes(["lr", "d_model", "alpha"]) == ("alpha", "d_model")
    assert pop.default_axes(["frac", "weight_decay", "seed"]) == ("frac", "weight_decay")
    assert pop.default_axes(["seed"]) == (None, None)


def test_population_object_table_repr_and_unknown_member():
    population = pop.Population(rows=_rows(), axes=["alpha", "d_model"])
    assert len(population) == 12
    table = population.table
    assert len(table) == 12
    assert "4 clock" in repr(population) and "6 pizza" in repr(population)
    assert "<table>" in population._repr_html_()
    with pytest.raises(GrokscopeError, match="member 'nope'"):
        population.row("nope")
    figures = population.figures()
    assert [title for title, _ in figures][:3] == ["pizza share of clock + pizza", "median gradient symmetricity",
                                                   "median distance irrelevance"]
