"""The table forward of one-layer models (grokscope.grid_forward) against the plain forward, and the
classifier's numbers with it against the numbers of the plain forward."""

import math
from pathlib import Path

import pytest
import torch

from grokscope import backend
from grokscope import algorithm_signatures, templates
from grokscope.algorithm_signatures import signatures
from grokscope.constructions import random_model
from grokscope.grid_forward import grid_logits, stacked_grid_logits, supports
from grokscope.models import final_logits
from grokscope.tasks import Task

FIXTURES = Path(__file__).parent / "fixtures" / "pizza"


def _with_biases(model, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in backend.weights(model).items():
            if name.split(".")[-1].startswith("b_"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


@pytest.mark.parametrize("eq_token, diff_vocab, alpha, act_fn", [
    (True, False, 1.0, "relu"), (False, False, 0.0, "relu"), (False, True, 0.4, "gelu"), (True, False, 0.7, "gelu")])
def test_table_forward_equals_the_plain_forward(eq_token, diff_vocab, alpha, act_fn):
    task = Task(p=23, eq_token=eq_token, diff_vocab=diff_vocab)
    model = _with_biases(random_model(task, seed=1, alpha=alpha, d_model=32, act_fn=act_fn), seed=2)
    assert supports(model)
    W_E = backend.weights(model)["embed.W_E"].detach()
    tables = torch.stack([W_E, 0.5 * W_E + 0.1, W_E.flip(0)])
    fast = stacked_grid_logits(model, task, tables)
    with torch.no_grad():
        for table, got in zip(tables, fast):
            model.embed.W_E.copy_(table)
            want = final_logits(model, task.tokens())
            # float32 forwards that sum in different orders: agreement to ~1e-6 of the logit scale
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_grid_logits_falls_back_for_two_layers():
    task = Task(p=13, eq_token=False)
    model = random_model(task, seed=0, n_layers=2, d_model=16)
    assert not supports(model)
    with torch.no_grad():
        assert torch.equal(grid_logits(model, task), final_logits(model, task.tokens()))


@pytest.mark.parametrize("op", ["div", "sub", "mul"])
def test_grid_logits_rows_follow_the_task_grid(op):
    """Division drops b = 0: the table forward returns exactly the task's rows, in its order."""
    task = Task(p=13, op=op)
    model = random_model(task, seed=1, d_model=16)
    with torch.no_grad():
        expected = final_logits(model, task.tokens())
        got = grid_logits(model, task)
    assert got.shape == expected.shape == (task.n_inputs, model.cfg.d_vocab_out)
    # float32 sums in another order: a few ulps of the logits' scale
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def _plain_signatures(model, task, monkeypatch):
    """Signatures with the table forward switched off: the plain forward everywhere."""
    with monkeypatch.context() as patch:
        patch.setattr(templates, "supports", lambda model: False)
        patch.setattr(algorithm_signatures, "grid_logits",
                      lambda model, task: final_logits(model, task.tokens()).detach())
        return signatures(model, task)


def _flat(value, prefix=""):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flat(inner, f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            yield from _flat(inner, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), value


@pytest.mark.parametrize("model_id", ["p99zdpze5l", "l8k1hzciux", "18c9ev5v5p"])
def test_classifier_numbers_are_unchanged_by_the_table_forward(model_id, monkeypatch):
    from grokscope.formats.pizza import read_model

    run = read_model(str(FIXTURES / f"model_{model_id}.pt"))
    model, task = run.model(), run.task
    fast = dict(_flat(signatures(model, task).to_dict()))
    plain = dict(_flat(_plain_signatures(model, task, monkeypatch).to_dict()))
    assert fast.keys() == plain.keys()
    for key, value in plain.items():
        if isinstance(value, float) and not isinstance(value, bool):
            # logits agree to ~1e-6 relative (float32 sums reordered); every signature and template FVE is a
            # smooth function of them: 1e-5 absolute is far below the thresholds' resolution
            assert math.isclose(fast[key], value, rel_tol=0, abs_tol=1e-5), key
        else:
            assert fast[key] == value, key


def _planes(model, task):
    """Every circle's isolation factors, as the classifier builds them."""
    from grokscope.circles import embedding_pca, find_circles, isolated_factors
    from grokscope.fourier import group_embeddings

    rows_a = group_embeddings(model, task, "a").detach().double()
    pca = embedding_pca(rows_a)
    circles = find_circles(rows_a, 6, pca)
    return [isolated_factors(rows_a, c, pca) for c in circles], [c.freq for c in circles], rows_a.mean(0)


@pytest.mark.parametrize("op, eq_token, diff_vocab", [
    ("add", False, False), ("add", True, False), ("sub", False, True), ("mul", True, False), ("div", False, True)])
def test_affine_forward_equals_the_table_forward(op, eq_token, diff_vocab):
    """Isolated circles in affine form (coords @ basis) against the same embeddings as dense tables."""
    task = Task(p=23, op=op, eq_token=eq_token, diff_vocab=diff_vocab)
    model = _with_biases(random_model(task, seed=3, alpha=0.6, d_model=32), seed=4)
    factors, freqs, mean = _planes(model, task)
    if task.group.N % 2 == 0:  # the sign frequency N/2: a one-coordinate plane among two-coordinate ones
        from grokscope.circles import circle_factors
        from grokscope.fourier import group_embeddings

        factors.append(circle_factors(group_embeddings(model, task, "a"), task.group.N // 2))
        freqs.append(task.group.N // 2)
        assert factors[-1][0].shape[1] == 1
    fast = templates.isolated_circle_logits(model, task, factors, freqs, mean)
    dense = templates.isolated_circle_logits(model, task, [c @ b for c, b in factors], freqs, mean)
    assert fast.shape == dense.shape == (len(freqs), task.group.N, task.group.N, task.group.N)
    # float32 forwards summing in different orders (features x stacked maps vs per-token tables)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-5 * float(dense.abs().max()))


def _plain_classification(model, task, monkeypatch):
    from grokscope.classifier import classify_signatures

    return classify_signatures(_plain_signatures(model, task, monkeypatch))


def _construction(name):
    from grokscope.constructions import exact_clock_model, exact_pizza_model

    tasks = {"clock-add": (exact_clock_model, Task(p=23), [3, 7]),
             "clock-mul-sign": (exact_clock_model, Task(p=23, op="mul"), [3, 11]),  # 11 = N/2: a line
             "clock-eq": (exact_clock_model, Task(p=23, eq_token=True), [2, 9]),
             "pizza-add": (exact_pizza_model, Task(p=23), [3, 7]),
             "pizza-sub-dv": (exact_pizza_model, Task(p=23, op="sub", diff_vocab=True), [4, 9])}
    build, task, freqs = tasks[name]
    return build(task, freqs), task


@pytest.mark.parametrize("source", ["p99zdpze5l", "l8k1hzciux", "18c9ev5v5p", "clock-add", "clock-mul-sign",
                                    "clock-eq", "pizza-add", "pizza-sub-dv"])
def test_fast_classification_equals_the_plain_one(source, monkeypatch):
    """``classify`` (table and affine forwards) against the plain HookedTransformer forward everywhere:
    the same label, reason, votes and circle labels, and every number within float32 rounding."""
    from grokscope.classifier import classify

    if source.startswith(("clock", "pizza")):
        model, task = _construction(source)
    else:
        from grokscope.formats.pizza import read_model

        run = read_model(str(FIXTURES / f"model_{source}.pt"))
        model, task = run.model(), run.task
    fast, plain = classify(model, task), _plain_classification(model, task, monkeypatch)
    assert (fast.label, fast.reason, fast.template_vote, fast.circle_labels) == \
        (plain.label, plain.reason, plain.template_vote, plain.circle_labels)
    numbers = {key: value for key, value in _flat({k: v for k, v in plain.to_dict().items() if k != "evidence"})}
    got = dict(_flat({k: v for k, v in fast.to_dict().items() if k != "evidence"}))
    assert got.keys() == numbers.keys()
    for key, value in numbers.items():
        if isinstance(value, float):
            # logits agree to ~1e-6 relative; signatures, FVEs and the confidence are smooth in them
            assert math.isclose(got[key], value, rel_tol=0, abs_tol=1e-5), key
        else:
            assert got[key] == value, key
