"""The classifier: SCIENCE.md labels of the released models, analytic networks, and every rule at its
boundary on constructed signatures."""

import dataclasses
import json

import pytest
import torch
from test_signatures import TASKS, measured

from grokscope.classifier import (DEFAULT, STRICT, Classification, Thresholds, circle_label, classify,
                                classify_signatures, with_thresholds)
from grokscope.constructions import exact_clock_model, exact_pizza_model, random_model
from grokscope.errors import GrokscopeError
from grokscope.circles import Circle
from grokscope.algorithm_signatures import Signatures
from grokscope.tasks import Task

# SCIENCE.md section 4: id -> (label, reason)
EXPECTED = {
    "p99zdpze5l": ("pizza", None),
    "l8k1hzciux": ("clock", None),
    "18c9ev5v5p": ("pizza", None),
    "h9m153uuh9": ("pizza", None),
    "dy65ktpiij": ("uninterpreted", "not generalised"),
    "f5dh675z97": ("uninterpreted", "not generalised"),
}


@pytest.mark.parametrize("run_id", list(EXPECTED))
def test_released_models_get_their_labels(run_id):
    _, _, sig = measured(run_id)
    result = classify_signatures(sig)
    assert (result.label, result.reason) == EXPECTED[run_id]
    assert 0.0 <= result.confidence <= 1.0
    data = json.loads(json.dumps(result.to_dict()))
    for key in ("label", "reason", "gradient_symmetricity", "distance_irrelevance",
                "distance_irrelevance_runnerup", "circularity", "template_fve", "thresholds", "confidence"):
        assert key in data
    assert data["thresholds"] == DEFAULT.to_dict()
    assert "\n" not in repr(result) and len(repr(result)) < 160 and result.label in repr(result)


def test_model_a_and_b_votes_and_circles():
    a = classify_signatures(measured("p99zdpze5l")[2])
    assert a.template_vote == "pizza" and a.confidence == pytest.approx(1.0)
    assert [label for _, _, label in a.circle_labels] == ["pizza"] * 3 + ["accompanying"] * 3
    assert [k for _, k, _ in a.circle_labels] == [17, 3, 15, 25, 6, 29]
    b = classify_signatures(measured("l8k1hzciux")[2])
    assert b.template_vote == "clock"
    # measured: Model B's third circle (k = 21) fits the pizza template, with its accompanying circle at
    # 2k = 42 = -17; the clock circles carry more of the embedding, so the vote agrees but is not unanimous
    assert [(k, label) for _, k, label in b.circle_labels] == \
        [(13, "clock"), (16, "clock"), (21, "pizza"), (17, "accompanying")]
    assert 0.5 < b.confidence < 1.0
    assert any("DISAGREES" in line for line in b.evidence) is False


def test_strict_gate_and_rule_order_on_the_fixtures():
    for run_id in ("p99zdpze5l", "l8k1hzciux"):
        assert classify_signatures(measured(run_id)[2], STRICT).label == EXPECTED[run_id][0]
    gelu = measured("dy65ktpiij")[2]          # 96.8% accurate and circularity 0.726
    relaxed = classify_signatures(gelu, Thresholds(min_accuracy=0.95))
    assert (relaxed.label, relaxed.reason) == ("uninterpreted", "non-circular")
    mixed = classify_signatures(gelu, Thresholds(min_accuracy=0.95, min_circularity=0.7))
    assert (mixed.label, mixed.reason) == ("uninterpreted", "mixed")   # GS 0.993 but DI 0.474


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"p{t.p}-eq{int(t.eq_token)}-dv{int(t.diff_vocab)}")
def test_analytic_networks(task):
    clock = classify(exact_clock_model(task, [3, 7]), task)
    assert (clock.label, clock.reason, clock.template_vote) == ("clock", None, "clock")
    assert clock.confidence == pytest.approx(1.0)
    pizza = classify(exact_pizza_model(task, [3, 7]), task)
    assert (pizza.label, pizza.reason, pizza.template_vote) == ("pizza", None, "pizza")
    assert pizza.confidence > 0.9
    noise = classify(random_model(task, seed=1), task)
    assert (noise.label, noise.reason) == ("uninterpreted", "not generalised")


def skewed_clock(task: Task, freqs: list[int], seed: int = 0):
    """An exact clock whose token circles have nearly equal radii (within 5%), are slightly elliptical
    and sit in slightly non-orthogonal planes, as in trained multi-frequency clocks; same logits."""
    n = 2 * len(freqs)
    gen = torch.Generator().manual_seed(seed)
    skew = torch.diag(1 + 0.05 * torch.rand(n, generator=gen, dtype=torch.float64))
    skew = skew + 0.03 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    return exact_clock_model(task, freqs, embedding_map=skew)


def test_a_clock_with_near_equal_circles_is_a_clock():
    """Five key frequencies of about equal weight, as in [N23]'s p = 113 clock: the principal
    components interleave the circles, so [Z23]'s per-component circularity falls to 0.39 and the
    paper's gate would call this exact clock non-circular. The default gate reads the spectral
    circularity; every circle is found and fits the clock template."""
    task = Task(p=47)
    result = classify(skewed_clock(task, [5, 11, 17, 18, 22]), task)
    sig = result.signatures
    assert sig.circularity < 0.5 and sig.spectral_circularity > 0.9
    assert (result.label, result.reason, result.template_vote) == ("clock", None, "clock")
    assert result.confidence == pytest.approx(1.0)
    assert sorted((k, label) for _, k, label in result.circle_labels) == [
        (5, "clock"), (11, "clock"), (17, "clock"), (18, "clock"), (22, "clock")]
    assert all(c.template_fve["clock"] > 0.999 for c in sig.circles)
    paper_gate = with_thresholds(result, circularity_measure="paper")
    assert (paper_gate.label, paper_gate.reason) == ("uninterpreted", "non-circular")


@pytest.mark.slow
def test_a_clock_with_the_key_frequencies_of_nandas_model_is_a_clock():
    """p = 113 and [N23]'s key frequencies {14, 35, 41, 42, 52}, circles skewed as above."""
    task = Task(p=113)
    result = classify(skewed_clock(task, [14, 35, 41, 42, 52]), task, templates=False)
    assert (result.label, result.reason) == ("clock", None)
    assert result.signatures.circularity < 0.9 < result.signatures.spectral_circularity
    assert sorted(c.freq for c in result.signatures.circles if c.is_circle) == [14, 35, 41, 42, 52]


# ----- the rules on constructed signatures ---------------------------------------------------------

def circle(index: int, clock: float, pizza: float, variance: float = 0.3, accompanying: float | None = None,
           doubles: int | None = None) -> Circle:
    fve = {"clock": clock, "pizza": pizza}
    if accompanying is not None:
        fve["accompanying"] = accompanying
    return Circle(index=index, components=(2 * index, 2 * index + 1), freq=index + 1, delta=1,
                  variance=variance, roundness=1.0, purity=1.0, isolated_on="components", is_circle=True,
                  doubles=doubles, template_fve=dict(fve), template_fve_centred=dict(fve))


def sig(gs=0.99, di=0.2, accuracy=1.0, circ=1.0, circles=()) -> Signatures:
    return Signatures(p=59, accuracy=accuracy, gradient_symmetricity=gs, di_correct=di, di_runnerup=di,
                      circularity=circ, circularity_b=None, spectral_circularity=circ, circles=tuple(circles),
                      template_fve=None,
                      template_fve_centred=None)


@pytest.mark.parametrize("gs,di,accuracy,circ,label,reason", [
    (0.98, 0.4, 1.0, 1.0, "pizza", None),
    (0.9799, 0.4, 1.0, 1.0, "uninterpreted", "mixed"),
    (0.98, 0.4001, 1.0, 1.0, "uninterpreted", "mixed"),
    (0.9, 0.6, 1.0, 1.0, "clock", None),
    (0.9001, 0.6, 1.0, 1.0, "uninterpreted", "mixed"),
    (0.9, 0.5999, 1.0, 1.0, "uninterpreted", "mixed"),
    (0.95, 0.5, 1.0, 1.0, "uninterpreted", "mixed"),
    (0.2, 0.9, 0.9899, 1.0, "uninterpreted", "not generalised"),
    (0.2, 0.9, 0.99, 0.8999, "uninterpreted", "non-circular"),
    (0.2, 0.9, 0.2, 0.1, "uninterpreted", "not generalised"),   # accuracy is checked first
    (0.2, 0.9, 0.99, 0.9, "clock", None),
])
def test_rules_at_their_boundaries(gs, di, accuracy, circ, label, reason):
    result = classify_signatures(sig(gs, di, accuracy, circ))
    assert (result.label, result.reason) == (label, reason)
    assert result.template_vote is None and result.circle_labels == ()


def test_the_gate_reads_the_chosen_circularity():
    spectral_only = dataclasses.replace(sig(gs=0.2, di=0.9, circ=0.5), spectral_circularity=0.95)
    assert classify_signatures(spectral_only).label == "clock"
    assert classify_signatures(spectral_only, Thresholds(circularity_measure="paper")).reason == "non-circular"
    assert classify_signatures(spectral_only, STRICT).reason == "non-circular"
    paper_only = dataclasses.replace(sig(gs=0.2, di=0.9, circ=0.95), spectral_circularity=0.5)
    assert classify_signatures(paper_only).reason == "non-circular"
    assert classify_signatures(paper_only, Thresholds(circularity_measure="paper")).label == "clock"
    assert "gate 0.9 on spectral" in classify_signatures(paper_only).evidence[1]
    assert "spectral circularity 0.500" in repr(classify_signatures(paper_only))
    with pytest.raises(GrokscopeError, match="circularity_measure = 'pca'.*one of"):
        Thresholds(circularity_measure="pca")


def test_strict_gate_and_custom_thresholds():
    s = sig(gs=0.2, di=0.9, circ=0.95)
    assert classify_signatures(s).label == "clock"
    assert classify_signatures(s, STRICT).reason == "non-circular"
    assert with_thresholds(classify_signatures(s), min_circularity=0.99).reason == "non-circular"
    assert classify_signatures(s, Thresholds(clock_max_gs=0.1)).reason == "mixed"
    with pytest.raises((GrokscopeError, TypeError), match="Thresholds"):  # TypeError under runtime typing
        classify_signatures(s, {"min_accuracy": 0.5})


@pytest.mark.parametrize("gs,di,circles,label,confidence", [
    (0.99, 0.2, [circle(0, 0.75, 0.98)], "pizza", 1.0),                  # templates agree clearly
    (0.99, 0.2, [circle(0, 0.90, 0.95)], "pizza", 0.5),                  # within the margin: neutral
    (0.99, 0.2, [circle(0, 0.98, 0.75)], "pizza", 0.0),                  # templates say clock
    (0.99, 0.2, [circle(0, 0.80, 0.90)], "pizza", 0.5 + 0.5 / 3),        # a third of the way to full
    (0.2, 0.9, [circle(0, 0.98, 0.75)], "clock", 1.0),
    (0.2, 0.9, [circle(0, 0.75, 0.98)], "clock", 0.0),
    (0.2, 0.9, [], "clock", 0.5),                                        # no circle: no second vote
    (0.95, 0.5, [circle(0, 0.75, 0.98)], "uninterpreted", 0.5),          # mixed, but templates say pizza
    (0.95, 0.5, [circle(0, 0.90, 0.92)], "uninterpreted", 1.0),          # neutral templates: surely mixed
    # variance-weighted: a large clock circle outvotes a small pizza circle; accompanying ones abstain
    (0.2, 0.9, [circle(0, 0.98, 0.78, 0.6), circle(1, 0.78, 0.98, 0.2),
                circle(2, -1.0, -1.0, 0.1, accompanying=0.97, doubles=1)], "clock", 0.5 + 0.5 / 3),
])
def test_template_vote_sets_the_confidence(gs, di, circles, label, confidence):
    result = classify_signatures(sig(gs, di, circles=circles))
    assert result.label == label
    assert result.confidence == pytest.approx(confidence, abs=1e-9)


@pytest.mark.parametrize("fve,expected", [
    ({"clock": 0.75, "pizza": 0.98}, "pizza"), ({"clock": 0.98, "pizza": 0.75}, "clock"),
    ({"clock": 0.96, "pizza": 0.99}, "mixed"), ({"clock": 0.3, "pizza": 0.45}, "unexplained"),
])
def test_circle_labels(fve, expected):
    assert circle_label(circle(0, fve["clock"], fve["pizza"])) == expected
    accompanying = circle(1, -1.0, -1.0, accompanying=0.95, doubles=0)
    assert accompanying.is_accompanying and circle_label(accompanying) == "accompanying"
    broken = dataclasses.replace(circle(2, 0.9, 0.5), is_circle=False)
    assert circle_label(broken) is None


def test_classification_object():
    result = classify_signatures(sig(circles=[circle(0, 0.75, 0.98)]))
    assert isinstance(result, Classification)
    assert result.evidence[-1].startswith("-> pizza") and len(result.evidence) >= 6
    assert json.loads(json.dumps(result.to_dict()))["circles"][0]["label"] == "pizza"


def test_operations_without_a_group_are_refused():
    task = Task(p=23, op="a^3+ab")
    with pytest.raises(GrokscopeError, match="not defined"):
        classify(random_model(task, seed=0), task)
