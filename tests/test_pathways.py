"""Pathway measures (grokscope.pathways) against brute force and constructed patterns."""

import itertools

import pytest
import torch

from grokscope.constructions import random_model
from grokscope.errors import GrokscopeError
from grokscope.models import final_logits
from grokscope.pathways import label_consistency, pathway_distance, pathway_measures, relu_patterns
from grokscope.tasks import Task


def test_distance_is_the_mean_pairwise_hamming_distance():
    x = (torch.rand(17, 9, generator=torch.Generator().manual_seed(0)) > 0.4).double()
    pairs = list(itertools.combinations(range(17), 2))
    brute = sum(float((x[i] - x[j]).abs().sum()) / 9 for i, j in pairs) / len(pairs)
    # The closed form and the brute-force sum are both exact sums of small integers / 9 in float64.
    assert pathway_distance(x) == pytest.approx(brute, rel=1e-12)
    assert pathway_distance(torch.ones(5, 4)) == 0.0                 # shared pathways: distance 0


def test_label_consistency_is_one_for_a_function_of_the_class_and_near_zero_for_noise():
    labels = torch.arange(200) % 5
    table = (torch.rand(5, 32, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    assert label_consistency(table[labels], labels) == pytest.approx(1.0, abs=1e-12)
    noise = (torch.rand(200, 32, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    # Independent patterns: the between-class share is (classes - 1) / n in expectation, 0.02 here;
    # 0.06 leaves several standard deviations of sampling spread.
    assert label_consistency(noise, labels) < 0.06
    assert torch.isnan(torch.tensor(label_consistency(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))))


def test_patterns_are_the_relus_at_the_read_out_and_only_train_rows_count():
    task = Task(p=23)
    model = random_model(task, seed=4)
    rows = task.split(0.3, seed=0)
    _, post = final_logits(model, task.tokens()[rows], return_post=True)
    assert torch.equal(relu_patterns(model, task, rows), (post > 0).double())
    m = pathway_measures(model, task, rows)
    x = (post > 0).double()
    assert m["pathway_distance"] == pytest.approx(pathway_distance(x), rel=1e-12)
    assert m["active_fraction"] == pytest.approx(float(x.mean()), rel=1e-12)
    assert pathway_measures(model, task)["pathway_distance"] != m["pathway_distance"]  # all rows differ


def test_bad_shapes_are_named():
    with pytest.raises(GrokscopeError, match=r"pathway_distance: found patterns of shape \(1, 3\)"):
        pathway_distance(torch.ones(1, 3))
    with pytest.raises(GrokscopeError, match=r"found \(3,\) labels; expected one per pattern \(4\)"):
        label_consistency(torch.ones(4, 3), torch.zeros(3))
