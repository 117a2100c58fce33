"""Progress measures against hand-computed values, analytic networks and a direct reference."""

import math

import numpy as np
import pytest
import torch

from grokscope import backend
from grokscope.constructions import exact_clock_model, exact_pizza_model, random_model
from grokscope.errors import GrokscopeError
from grokscope.fourier import KeyFrequencies, fourier_basis
from grokscope.measures import MEASURE_COLUMNS, gini, logit_measures, progress_measures, weight_measures
from grokscope.models import build_model, final_logits, nanda_config
from grokscope.tasks import Task


# ----- Gini -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 22, 112])
def test_gini_of_equal_entries_is_zero(n):
    assert gini(torch.full((n,), 0.3)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [2, 4, 22, 112])
def test_gini_of_one_hot_is_n_minus_one_over_n(n):
    c = torch.zeros(n)
    c[n // 3] = 5.0
    assert gini(c) == pytest.approx((n - 1) / n, abs=1e-12)


@pytest.mark.parametrize("values, expected", [([1, 2, 3, 4], 0.25), ([4, 3, 2, 1], 0.25), ([0, 0, 1, 1], 0.5),
                                              ([1, 1, 1, 5], 2 * (1 + 2 + 3 + 20) / (4 * 8) - 5 / 4)])
def test_gini_hand_computed(values, expected):
    # G = 2 sum_i i c_(i) / (N sum c) - (N + 1) / N; [1, 2, 3, 4]: 2 * 30 / 40 - 5 / 4 = 0.25.
    assert gini(torch.tensor(values, dtype=torch.float64)) == pytest.approx(expected, abs=1e-12)


def test_gini_edge_cases():
    assert math.isnan(gini(torch.zeros(5)))
    with pytest.raises(GrokscopeError, match="non-negative"):
        gini(torch.tensor([1.0, -1.0]))


# ----- a direct, slow reference -----------------------------------------------------------------------
def reference_measures(L: np.ndarray, p: int, freqs: list[int], rows: np.ndarray, test: np.ndarray | None):
    """Loop-by-loop definitions of SCIENCE.md section 3, in float64 numpy."""
    labels = np.array([(a + b) % p for a in range(p) for b in range(p)])

    def ce(X, idx):
        return float(np.mean([np.log(np.exp(X[r] - X[r].max()).sum()) + X[r].max() - X[r, labels[r]] for r in idx]))

    def direction(k, fn):
        v = np.array([fn(2 * math.pi * k * (a + b) / p) for a in range(p) for b in range(p)])
        return v / np.linalg.norm(v)

    def project(ks):
        out = np.zeros_like(L)
        for k in ks:
            for fn in (math.cos, math.sin):
                v = direction(k, fn)
                for c in range(p):
                    out[:, c] += (v @ L[:, c]) * v
        return out

    proj = project(freqs)
    restricted = proj + L.mean(axis=0, keepdims=True)
    out = {"restricted_loss": ce(restricted, range(p * p)), "excluded_loss": ce(L - proj, rows),
           "full_loss": ce(L, range(p * p))}
    if test is not None:
        out["restricted_loss_test"] = ce(restricted, test)
        out["train_loss"], out["test_loss"] = ce(L, rows), ce(L, test)
    for k in freqs:
        out[f"excluded_loss_k{k}"] = ce(L - project([k]), rows)
    centred = L - L.mean(axis=1, keepdims=True)
    explained = 0.0
    for k in freqs:
        C = np.array([[math.cos(2 * math.pi * k * (a + b - c) / p) for c in range(p)]
                      for a in range(p) for b in range(p)])
        out[f"cos_coef_k{k}"] = float((C / np.linalg.norm(C) * L).sum())
        explained += out[f"cos_coef_k{k}"] ** 2
    out["cos_fve"] = explained / float((centred ** 2).sum())
    return out


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("seed, p, freqs", [(0, 13, [2, 5]), (1, 11, [1, 3, 4])])
def test_logit_measures_equal_direct_reference_on_random_model(seed, p, freqs, split):
    task = Task(p=p)
    model = random_model(task, seed, d_model=32, d_mlp=64)
    with torch.no_grad():
        logits = final_logits(model, task.tokens()) * 40   # sharpen so losses span a wide range
    train = task.split(0.4, seed) if split else None
    m = progress_measures(model, task, freqs, train, logits=logits).as_row()
    rows = train.numpy() if split else np.arange(p * p)
    test = np.setdiff1d(np.arange(p * p), rows) if split else None
    ref = reference_measures(logits.double().numpy(), p, freqs, rows, test)
    for name, value in ref.items():
        assert m[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    if not split:
        assert all(math.isnan(m[c]) for c in ("train_loss", "test_loss", "train_acc", "test_acc",
                                               "restricted_loss_test", "test_restricted_ratio"))


def test_weight_measures_equal_direct_computation():
    task = Task(p=13)
    model = random_model(task, 4, d_model=16, d_mlp=24)
    w = weight_measures(model, task)
    direct = sum(float((param.detach().double() ** 2).sum()) for param in backend.weights(model).values())
    assert w["sum_sq_weights"] == pytest.approx(direct, rel=1e-12)
    # Non-constant component norms via numpy's FFT: |X_k|^2 = (p / 2) (cos_k^2 + sin_k^2) in the real basis.
    W_E = model.W_E[:13].detach().double().numpy()
    X = np.fft.fft(W_E, axis=0)
    cos_sin = np.concatenate([[np.linalg.norm(X[k].real), np.linalg.norm(X[k].imag)] for k in range(1, 7)])
    assert w["gini_W_E"] == pytest.approx(float(gini(torch.tensor(cos_sin / math.sqrt(13 / 2)))), abs=1e-12)
    W_L = (model.blocks[0].mlp.W_out @ model.W_U).detach().double().numpy()
    Y = np.fft.fft(W_L, axis=1)
    cos_sin = np.concatenate([[np.linalg.norm(Y[:, k].real), np.linalg.norm(Y[:, k].imag)] for k in range(1, 7)])
    assert w["gini_W_L"] == pytest.approx(float(gini(torch.tensor(cos_sin))), abs=1e-12)


# ----- analytic networks ------------------------------------------------------------------------------
def smallest_clock_gap(p: int, freqs: list[int]) -> float:
    return min(sum(1 - math.cos(2 * math.pi * k * e / p) for k in freqs) for e in range(1, p))


@pytest.mark.parametrize("task, freqs", [(Task(p=23), [3, 7]), (Task(p=29, eq_token=False), [2, 5, 11]),
                                         (Task(p=31, eq_token=False, diff_vocab=True), [6])])
def test_exact_clock_measures(task, freqs):
    p = task.p
    m = progress_measures(exact_clock_model(task, freqs, margin=16.0), task, KeyFrequencies(freqs, "A", 0.85),
                          task.split(0.3, 0))
    assert m.full_acc == m.train_acc == m.test_acc == 1.0
    # P_K L = L for the clock: the restricted loss equals the full loss up to float32 noise, never above.
    assert m.restricted_loss <= m.full_loss * (1 + 1e-5) and m.full_loss < 1e-5
    # L - P_K L vanishes (up to float32 noise): uniform logits, loss log p >> full loss.
    assert m.excluded_loss == pytest.approx(math.log(p), abs=1e-3)
    assert m.cos_fve == pytest.approx(1.0, abs=1e-6)
    # logits = (margin / min gap) sum_k cos(w_k(a+b-c)), and ||cos(w(a+b-c))|| = sqrt(p^3 / 2).
    expected = 16.0 / smallest_clock_gap(p, freqs) * math.sqrt(p ** 3 / 2)
    for k in freqs:
        assert m.cos_coefs[k] == pytest.approx(expected, rel=1e-5)
    # 2|K| equal non-zero components among N = p - 1: G = 1 - 2|K| / (p - 1).
    assert m.gini_W_E == pytest.approx(1 - 2 * len(freqs) / (p - 1), abs=1e-5)   # float32 weights
    assert m.gini_W_L == pytest.approx(1 - 2 * len(freqs) / (p - 1), abs=1e-5)
    if len(freqs) > 1:
        assert all(m.excluded_by_freq[k] > m.full_loss * 1e3 for k in freqs)


@pytest.mark.parametrize("p, k", [(23, 3), (29, 1), (31, 10)])
def test_exact_pizza_cos_fit_matches_the_abs_cos_profile(p, k):
    # Pizza logits A(a-b) cos(w(a+b-c)) with A ~ |cos(w(a-b)/2)|: FVE = (sum_d A)^2 / (p sum_d A^2).
    task = Task(p=p, eq_token=False)
    m = progress_measures(exact_pizza_model(task, [k]), task, [k])
    A = np.abs(np.cos(math.pi * k * np.arange(p) / p))
    assert m.cos_fve == pytest.approx(A.sum() ** 2 / (p * (A ** 2).sum()), abs=1e-6)
    assert m.full_acc == 1.0


def test_random_model_keeps_most_of_its_loss_outside_any_two_frequencies():
    task = Task(p=23)
    m = progress_measures(random_model(task, 0), task, [2, 9], task.split(0.3, 0))
    assert m.full_acc < 0.2 and m.cos_fve < 0.05
    assert m.excluded_loss == pytest.approx(m.train_loss, rel=0.05)


# ----- conventions ------------------------------------------------------------------------------------
def test_extra_output_logit_is_dropped():
    task = Task(p=13)
    cfg = nanda_config(task, d_model=16, d_mlp=32)
    cfg.d_vocab_out = task.p + 1
    model = build_model(cfg)
    with torch.no_grad():
        model.W_U[:, -1] = 50.0
        logits = final_logits(model, task.tokens())
    assert logits.shape == (169, 14)
    m = progress_measures(model, task, [1])
    ref = torch.nn.functional.cross_entropy(logits[:, :13].double(), task.labels())
    assert m.full_loss == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("op", ["a^2+b^2", "a^2+ab+b^2", "a^3+ab"])
def test_operations_without_a_group_give_nan_fourier_measures_with_a_note(op):
    task = Task(p=13, op=op)
    m = progress_measures(random_model(task, 0, d_model=16, d_mlp=32), task, [2], task.split(0.5, 0))
    row = m.as_row()
    for name in ("train_loss", "test_loss", "full_loss", "full_acc", "sum_sq_weights"):
        assert math.isfinite(row[name]), name
    for name in ("restricted_loss", "restricted_loss_test", "excluded_loss", "test_restricted_ratio", "cos_fve",
                 "gini_W_E", "gini_W_L", "group_loss", "group_acc"):
        assert math.isnan(row[name]), name
    assert len(m.notes) == 1 and repr(op) in m.notes[0] and "not defined" in m.notes[0] and m.basis == ""


def test_row_columns_and_precomputed_logits():
    task = Task(p=13)
    model = random_model(task, 1, d_model=16, d_mlp=32)
    train = task.split(0.5, 1)
    m = progress_measures(model, task, [4, 2], train)
    assert list(m.as_row()) == [*MEASURE_COLUMNS, "excluded_loss_k2", "excluded_loss_k4", "cos_coef_k2",
                                "cos_coef_k4"]
    with torch.no_grad():
        logits = model(task.tokens())[:, -1]
    again = progress_measures(model, task, [2, 4], train, logits=logits)
    for name, value in m.as_row().items():
        assert again.as_row()[name] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), name
    assert math.isnan(m.zero_operand_acc)  # add has no input outside its group
    assert m.test_restricted_ratio == pytest.approx(m.test_loss / m.restricted_loss, rel=1e-12)


def test_empty_key_set_and_bad_inputs():
    task = Task(p=13)
    model = random_model(task, 2, d_model=16, d_mlp=32)
    m = progress_measures(model, task, [], basis=fourier_basis(13))
    assert m.excluded_loss == pytest.approx(m.full_loss, rel=1e-12) and m.cos_fve == 0.0
    assert "no key frequencies" in m.notes[0]
    with pytest.raises(GrokscopeError, match="train indices"):
        progress_measures(model, task, [1], torch.tensor([0, 169]))
    with pytest.raises(GrokscopeError, match="1..6"):
        progress_measures(model, task, [7])
    with pytest.raises(GrokscopeError, match="logits of shape"):
        logit_measures(torch.zeros(10, 13), task, [1])
