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
