"""Fourier basis, directions, neuron frequencies and key frequencies against analytic ground truth."""

import math

import pytest
import torch

from grokscope.constructions import exact_clock_model, exact_pizza_model, random_model
from grokscope.errors import GrokscopeError
from grokscope.fourier import (KeyFrequencies, as_freq_list, component_norms, embedding_norms, fourier_basis,
                               frequency_norms, key_directions, key_frequencies, logit_map_norms,
                               neuron_activations, neuron_clusters, neuron_fourier_2d, neuron_frequencies,
                               neuron_logit_map, sum_directions)
from grokscope.models import build_model, nanda_config
from grokscope.tasks import Task

PRIMES = [3, 5, 7, 23, 59, 113]


@pytest.mark.parametrize("p", PRIMES)
def test_basis_is_orthonormal(p):
    F = fourier_basis(p).F
    assert F.dtype == torch.float64 and F.shape == (p, p)
    torch.testing.assert_close(F @ F.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("p", [5, 23, 31])
def test_rows_are_named_components(p):
    basis = fourier_basis(p)
    x = torch.arange(p, dtype=torch.float64)
    assert basis.order == "const,cos k,sin k"
    torch.testing.assert_close(basis.F[basis.index("const")], torch.full((p,), p ** -0.5, dtype=torch.float64))
    for k in basis.freqs:
        angle = 2 * math.pi * k * x / p
        torch.testing.assert_close(basis.F[basis.index("cos", k)], torch.cos(angle) / math.sqrt(p / 2))
        torch.testing.assert_close(basis.F[basis.index("sin", k)], torch.sin(angle) / math.sqrt(p / 2))
        assert basis.labels[basis.index("cos", k)] == f"cos {k}"
    assert basis.freqs == list(range(1, (p - 1) // 2 + 1))
    assert sorted(basis.nonconstant_rows().tolist() + [basis.index("const")]) == list(range(p))


@pytest.mark.parametrize("bad", [1, 0, -3, True, 4.0])
def test_basis_rejects_bad_p(bad):
    with pytest.raises(GrokscopeError, match="fourier_basis"):
        fourier_basis(bad)


def test_index_rejects_unknown_component():
    with pytest.raises(GrokscopeError, match="cos 3"):
        fourier_basis(5).index("cos", 3)


@pytest.mark.parametrize("p, k", [(5, 1), (23, 4), (31, 15), (59, 17)])
def test_sum_directions_match_grids_and_tensor_forms(p, k):
    basis = fourier_basis(p)
    cos_dir, sin_dir = sum_directions(p, k)
    a = torch.arange(p, dtype=torch.float64)
    grid = 2 * math.pi * k * (a[:, None] + a[None, :]) / p
    torch.testing.assert_close(cos_dir, (torch.cos(grid) / torch.cos(grid).norm()).flatten(), atol=1e-12, rtol=0)
    torch.testing.assert_close(sin_dir, (torch.sin(grid) / torch.sin(grid).norm()).flatten(), atol=1e-12, rtol=0)
    Fc, Fs = basis.F[basis.index("cos", k)], basis.F[basis.index("sin", k)]
    cos_form = (torch.outer(Fc, Fc) - torch.outer(Fs, Fs)) / math.sqrt(2)
    sin_form = (torch.outer(Fs, Fc) + torch.outer(Fc, Fs)) / math.sqrt(2)
    torch.testing.assert_close(cos_dir, cos_form.flatten(), atol=1e-12, rtol=0)
    torch.testing.assert_close(sin_dir, sin_form.flatten(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("p, freqs", [(23, [1, 5, 11]), (31, [2, 3]), (7, [1, 2, 3])])
def test_key_directions_are_orthonormal(p, freqs):
    D = key_directions(p, freqs)
    assert D.shape == (2 * len(freqs), p * p)
    torch.testing.assert_close(D @ D.T, torch.eye(2 * len(freqs), dtype=torch.float64), atol=1e-12, rtol=0)
    assert key_directions(p, []).shape == (0, p * p)


def test_component_and_frequency_norms():
    p = 11
    basis = fourier_basis(p)
    # Column 0 = 3 cos 2 + 4 sin 2, column 1 = 2 const: component norms 2, 3, 4; frequency 2 has norm 5.
    W = torch.stack([3 * basis.F[basis.index("cos", 2)] + 4 * basis.F[basis.index("sin", 2)],
                     2 * basis.F[basis.index("const")]], dim=1)
    norms = component_norms(W, basis)
    expected = torch.zeros(p, dtype=torch.float64)
    expected[basis.index("cos", 2)], expected[basis.index("sin", 2)], expected[basis.index("const")] = 3, 4, 2
    torch.testing.assert_close(norms, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(frequency_norms(norms, basis), torch.tensor([0, 5, 0, 0, 0], dtype=torch.float64),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_fft_fractions_equal_the_real_2d_transform(seed):
    p, d_mlp = 13, 20
    basis = fourier_basis(p)
    post = torch.randn(p * p, d_mlp, generator=torch.Generator().manual_seed(seed)).relu()
    G = neuron_fourier_2d(post, basis)
    energy = G.square()
    total = energy.sum(dim=(0, 1))
    nf = neuron_frequencies(post, p)
    for f, k in enumerate(basis.freqs):
        rows = [basis.index("const"), basis.index("cos", k), basis.index("sin", k)]
        block = energy[rows][:, rows].sum(dim=(0, 1)) - energy[rows[0], rows[0]]
        torch.testing.assert_close(nf.block_fractions[f], block / total, atol=1e-12, rtol=0)
    centred = post.double() - post.double().mean(0)
    torch.testing.assert_close(nf.variance, centred.square().sum(0), atol=1e-10, rtol=1e-12)


def test_neuron_frequency_of_synthetic_neurons():
    p = 17
    a = torch.arange(p, dtype=torch.float64)
    wa = 2 * math.pi * a / p
    grid = lambda f: f.reshape(-1)  # noqa: E731
    columns = [
        grid(torch.cos(3 * wa)[:, None] * torch.cos(3 * wa)[None, :]),            # pure k = 3 product
        grid(torch.sin(5 * wa)[:, None] + 0.0 * wa[None, :]),                      # linear in a, k = 5
        grid(torch.cos(2 * wa)[:, None] * torch.cos(7 * wa)[None, :]),            # mixed: no block
        torch.zeros(p * p, dtype=torch.float64),                                   # dead neuron
        grid(torch.cos(4 * (wa[:, None] + wa[None, :])) + 0.5 * torch.cos(6 * wa)[:, None]),  # 2/2.25 at k = 4
    ]
    nf = neuron_frequencies(torch.stack(columns, dim=1), p)
    assert nf.freq.tolist()[:2] == [3, 5] and nf.freq[3] == 0 and nf.freq[4] == 4
    torch.testing.assert_close(nf.frac_explained[:2], torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert nf.frac_explained[2] < 1e-12 and nf.frac_explained[3] == 0
    # cos(4(a+b)) has squared norm p^2/2, 0.5 cos(6a) has 0.25 * p^2/2: fraction 1 / 1.25.
    assert nf.frac_explained[4].item() == pytest.approx(0.8, abs=1e-12)
    assert neuron_clusters(nf) == {3: [0], 5: [1], "unexplained": [2, 3, 4]}
    assert neuron_clusters(nf, threshold=0.75) == {3: [0], 4: [4], 5: [1], "unexplained": [2, 3]}


def test_neuron_frequencies_needs_a_square_grid():
    with pytest.raises(GrokscopeError, match="N\\^2 = 25"):
        neuron_frequencies(torch.zeros(20, 3), 5)


CLOCK_CASES = [(Task(p=23), [3, 7]), (Task(p=29, eq_token=False), [2, 9, 13]),
               (Task(p=31, eq_token=False, diff_vocab=True), [5, 11]), (Task(p=23), [1])]


@pytest.mark.parametrize("rule", ["A", "B", "C"])
@pytest.mark.parametrize("task, freqs", CLOCK_CASES)
def test_exact_clock_has_exactly_its_frequencies(task, freqs, rule):
    model = exact_clock_model(task, freqs)
    found = key_frequencies(model, task, rule)
    assert found.freqs == freqs and found.rule == rule
    assert found.threshold == (0.85 if rule == "A" else 0.25)


@pytest.mark.parametrize("rule", ["A", "B", "C"])
def test_exact_pizza_has_exactly_its_frequencies(rule):
    task = Task(p=29, eq_token=False)
    assert key_frequencies(exact_pizza_model(task, [4, 6, 13]), task, rule).freqs == [4, 6, 13]


def test_clock_neurons_cluster_by_frequency():
    task, freqs = Task(p=23), [3, 7]
    post = neuron_activations(exact_clock_model(task, freqs), task)
    nf = neuron_frequencies(post, task.p)
    clusters = neuron_clusters(nf)
    n = task.p ** 2
    assert clusters == {3: list(range(n)), 7: list(range(n, 2 * n))}
    assert nf.frac_explained.min() > 0.96 and nf.frac_explained.max() < 0.97   # beta = 0: 0.9628


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("task", [Task(p=23), Task(p=31, eq_token=False)])
def test_random_model_has_no_rule_a_frequency(task, seed):
    found = key_frequencies(random_model(task, seed), task, "A")
    assert found.freqs == []
    assert all(n < 5 for n in found.detail["neuron_counts"].values())


def test_rule_a_guard_counts_neurons():
    task = Task(p=23)
    model = exact_clock_model(task, [3, 7])
    post = neuron_activations(model, task)
    post[:, task.p ** 2:] = 0.0                        # only four k = 7 neurons stay alive
    post[:, task.p ** 2:task.p ** 2 + 4] = neuron_activations(model, task)[:, task.p ** 2:task.p ** 2 + 4]
    assert key_frequencies(model, task, "A", post=post).freqs == [3]
    assert key_frequencies(model, task, "A", post=post, min_neurons=4).freqs == [3, 7]


def test_embedding_norms_of_each_operand_table():
    task = Task(p=23, eq_token=False, diff_vocab=True)
    clock = exact_clock_model(task, [2, 6])
    norms_a = embedding_norms(clock, task, operand="a")
    torch.testing.assert_close(norms_a, embedding_norms(clock, task, operand="b"))
    assert (norms_a > 1e-6).nonzero().flatten().add(1).tolist() == [2, 6]
    assert embedding_norms(clock, task, per="component").shape == (23,)
    rand = random_model(task, 0)
    assert not torch.allclose(embedding_norms(rand, task, operand="a"), embedding_norms(rand, task, operand="b"))
    with pytest.raises(GrokscopeError, match="operand"):
        embedding_norms(rand, task, operand="c")


def test_logit_map_drops_extra_output_classes():
    task = Task(p=23)
    cfg = nanda_config(task, d_model=32, d_mlp=64)
    cfg.d_vocab_out = task.p + 1
    model = build_model(cfg)
    W_L = neuron_logit_map(model, task)
    assert W_L.shape == (64, task.p)
    torch.testing.assert_close(W_L, model.blocks[0].mlp.W_out @ model.W_U[:, :task.p])
    assert logit_map_norms(W_L, fourier_basis(task.p), per="frequency").shape == (11,)


def test_key_frequency_arguments_are_checked():
    task = Task(p=23)
    model = random_model(task, 0)
    with pytest.raises(GrokscopeError, match="rule"):
        key_frequencies(model, task, "D")
    with pytest.raises(GrokscopeError, match="1..11"):
        as_freq_list([0, 3], 23)
    with pytest.raises(GrokscopeError, match="1..11"):
        as_freq_list([12], 23)
    assert as_freq_list(KeyFrequencies([7, 3], "A", 0.85), 23) == [3, 7]
    assert as_freq_list(torch.tensor([5, 2]).tolist(), 23) == [2, 5]
    found = key_frequencies(exact_clock_model(task, [4]), task, "B", threshold=0.5)
    assert found.to_dict() == {"freqs": [4], "rule": "B", "threshold": 0.5, "basis": "Z_23"}
