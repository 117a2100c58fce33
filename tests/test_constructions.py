"""The analytic networks compute what their docstrings say, in the standard HookedTransformer path."""

import math

import pytest
import torch

from grokscope import backend
from grokscope.constructions import clock_constant, exact_clock_model, exact_pizza_model, random_model
from grokscope.errors import GrokscopeError
from grokscope.fourier import neuron_activations, neuron_frequencies, neuron_logit_map
from grokscope.models import attention_rate, final_logits
from grokscope.tasks import Task

LAYOUTS = [Task(p=23), Task(p=29, eq_token=False), Task(p=31, eq_token=False, diff_vocab=True),
           Task(p=23, diff_vocab=True)]


def grid_logits(model, task):
    with torch.no_grad():
        return model(task.tokens())[:, -1].double()


def abc(task):
    pairs = task.operands().double()
    c = torch.arange(task.p, dtype=torch.float64)
    return pairs[:, :1], pairs[:, 1:], c[None, :]


def margins(logits, task):
    labels = task.labels()
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    return correct - logits.scatter(1, labels[:, None], -math.inf).max(dim=1).values


@pytest.mark.parametrize("task", LAYOUTS)
@pytest.mark.parametrize("freqs", [[3], [2, 9], [1, 5, 11]])
def test_clock_logits_are_exactly_cosines_of_a_plus_b_minus_c(task, freqs):
    model = exact_clock_model(task, freqs, margin=12.0)
    logits = grid_logits(model, task)
    a, b, c = abc(task)
    p = task.p
    gap = min(sum(1 - math.cos(2 * math.pi * k * e / p) for k in freqs) for e in range(1, p))
    expected = 12.0 / gap * sum(torch.cos(2 * math.pi * k * (a + b - c) / p) for k in freqs)
    torch.testing.assert_close(logits, expected, atol=2e-4 * expected.abs().max().item(), rtol=0)
    assert margins(logits, task).min().item() == pytest.approx(12.0, rel=1e-4)
    torch.testing.assert_close(final_logits(model, task.tokens()).double(), logits, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("task", LAYOUTS[:2])
def test_clock_heads_attend_to_one_position(task):
    model = exact_clock_model(task, [4])
    _, cache = model.run_with_cache(task.tokens()[:50])
    pattern = cache["blocks.0.attn.hook_pattern"][:, :, -1]          # batch, head, key position
    assert pattern[:, 0, 0].min().item() > 1 - 1e-6 and pattern[:, 1, 1].min().item() > 1 - 1e-6
    assert attention_rate(model) == 1.0


@pytest.mark.parametrize("build", [lambda t: exact_clock_model(t, [2, 7]), lambda t: exact_pizza_model(t, [2, 7])])
def test_embeddings_reach_the_logits_only_through_attention(build):
    task = Task(p=23)
    model = build(task)
    with torch.no_grad():
        model.blocks[0].attn.W_O.zero_()
    logits = grid_logits(model, task)
    assert (logits - logits[0]).abs().max().item() < 1e-6


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.5])
def test_clock_neurons_are_explained_for_a_range_of_beta(beta):
    task = Task(p=23)
    model = exact_clock_model(task, [5], beta=beta)
    nf = neuron_frequencies(neuron_activations(model, task), task.p)
    assert (nf.freq == 5).all() and nf.frac_explained.min().item() >= 0.85
    assert (final_logits(model, task.tokens()).argmax(-1) == task.labels()).all()


def test_clock_constant_matches_the_documented_table():
    for beta, ratio in [(0.0, 0.135), (0.5, 0.107), (1.0, 0.059)]:
        assert clock_constant(113, beta) / 113 ** 2 == pytest.approx(ratio, abs=1e-3)
    assert clock_constant(23, 2.5) == pytest.approx(0.0, abs=1e-9)   # never at the kink: purely linear


def test_clock_neuron_logit_rows_are_phase_cosines():
    task = Task(p=11)
    model = exact_clock_model(task, [3])
    W_L = neuron_logit_map(model, task).double()
    c = torch.arange(11, dtype=torch.float64)
    for i, j in [(0, 0), (2, 5), (10, 7)]:
        row = W_L[i * 11 + j]
        expected = torch.cos(2 * math.pi * (i + j) / 11 - 2 * math.pi * 3 * c / 11)
        torch.testing.assert_close(row / row.norm(), expected / expected.norm(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("task", LAYOUTS)
@pytest.mark.parametrize("freqs", [[4], [2, 7, 10]])
def test_pizza_is_exact_and_depends_on_a_minus_b(task, freqs):
    model = exact_pizza_model(task, freqs, margin=10.0)
    assert attention_rate(model) == 0.0
    logits = grid_logits(model, task)
    assert margins(logits, task).min().item() == pytest.approx(10.0, rel=1e-4)
    p = task.p
    L = logits.reshape(p, p, p)
    shifted = L.roll(shifts=(1, 1, 2), dims=(0, 1, 2))        # (a, b, c) -> (a+1, b+1, c+2)
    torch.testing.assert_close(shifted, L, atol=1e-4 * L.abs().max().item(), rtol=0)
    if len(freqs) == 1:
        # A single circle: logits = s |cos(w(a-b)/2)| cos(w(a+b-c)) for one scale s > 0.
        a, b, c = abc(task)
        w = 2 * math.pi * freqs[0] / p
        template = (torch.cos(w * (a - b) / 2).abs() * torch.cos(w * (a + b - c))).reshape(-1)
        scale = (logits.reshape(-1) @ template) / (template @ template)
        assert scale > 0
        torch.testing.assert_close(logits.reshape(-1), scale * template, atol=1e-4 * scale.item(), rtol=0)


def embedding_gradient_cosines(model, tokens, c):
    """Cosine of dQ/d(embedding output) at positions 0 and 1, Q = logit of class c at the last position."""
    grads = {}

    def keep(tensor, hook):
        tensor.retain_grad()
        grads["embed"] = tensor

    logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", keep)])
    logits[:, -1, c].sum().backward()
    g = grads["embed"].grad
    assert g.abs().max() > 1e-3
    return torch.nn.functional.cosine_similarity(g[:, 0], g[:, 1], dim=-1)


@pytest.mark.parametrize("task", LAYOUTS)
def test_pizza_gradients_on_a_and_b_are_parallel(task):
    model = exact_pizza_model(task, [3, 8])
    tokens = task.tokens()[torch.tensor([4 * 23 + 17, 9, 22 * 23 + 1, 100])]
    assert embedding_gradient_cosines(model, tokens, 5).min().item() > 1 - 1e-5


def test_clock_gradients_on_a_and_b_are_not_parallel():
    task = Task(p=23, eq_token=False)
    model = exact_clock_model(task, [3, 8])
    tokens = task.tokens()[torch.arange(0, 529, 37)]
    assert embedding_gradient_cosines(model, tokens, 5).mean().item() < 0.9


def test_random_model_is_seeded_and_leaves_the_global_rng_alone():
    task = Task(p=23)
    state = torch.get_rng_state()
    m1, m2, m3 = random_model(task, 5), random_model(task, 5), random_model(task, 6)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(backend.weights(m1).values(), backend.weights(m2).values()))
    assert not torch.equal(backend.weights(m1)["embed.W_E"], backend.weights(m3)["embed.W_E"])
    assert backend.weights(m1)["blocks.0.mlp.W_in"].std().item() == pytest.approx(m1.cfg.initializer_range, rel=0.02)
    assert m1.cfg.attention_dir == "causal" and random_model(Task(p=23, eq_token=False), 0).cfg.attention_dir \
        == "bidirectional"
    assert random_model(task, 0, d_model=16, d_mlp=24).cfg.d_mlp == 24


@pytest.mark.parametrize("freqs", [[], [0], [12], [3, 3]])
@pytest.mark.parametrize("build", [exact_clock_model, exact_pizza_model])
def test_constructions_reject_bad_frequencies(build, freqs):
    with pytest.raises(GrokscopeError, match="frequencies"):
        build(Task(p=23), freqs)


def test_constructions_need_a_group():
    with pytest.raises(GrokscopeError, match="'a\\^2\\+b\\^2'"):
        exact_clock_model(Task(p=23, op="a^2+b^2"), [2])


@pytest.mark.parametrize("task", LAYOUTS[:3])
def test_clock_embedding_map_skews_the_circles_and_keeps_the_logits(task):
    freqs = [2, 9]
    skew = torch.tensor([[1.2, 0.3, 0.1, 0.0], [0.0, 0.8, 0.2, 0.1], [0.4, 0.0, 1.0, 0.0],
                         [0.0, 0.1, 0.3, 0.9]], dtype=torch.float64)
    plain, mapped = exact_clock_model(task, freqs), exact_clock_model(task, freqs, embedding_map=skew)
    expected = grid_logits(plain, task)
    torch.testing.assert_close(grid_logits(mapped, task), expected, atol=1e-4 * expected.abs().max().item(),
                               rtol=0)
    circle_dims = [0, 1, 8, 9]
    torch.testing.assert_close(mapped.W_E[:, circle_dims].double(), plain.W_E[:, circle_dims].double() @ skew,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("matrix", [torch.ones(4, 4), torch.eye(3), torch.eye(4)[:, :3]])
def test_clock_embedding_map_must_be_invertible(matrix):
    with pytest.raises(GrokscopeError, match="embedding_map of shape.*invertible 4 x 4"):
        exact_clock_model(Task(p=23), [2, 9], embedding_map=matrix)
