"""Clock / pizza signatures [Z23] against SCIENCE.md's reference values, independent re-derivations
and analytic constructions."""

import functools
import json
import math
import os
import random

import pytest
import torch
from test_pizza_format import FIXTURES, release_config

from grokscope.constructions import exact_clock_model, exact_pizza_model
from grokscope.errors import GrokscopeError
from grokscope.formats import pizza
from grokscope.models import final_logits
from grokscope.circles import circularity, embedding_pca, find_circles, frequency_energy, index_step
from grokscope.algorithm_signatures import distance_irrelevance, gradient_symmetricity, gs_triples, signatures
from grokscope.templates import isolated_circle_logits, template_fve
from grokscope.tasks import Task

# SCIENCE.md section 4: id -> (GS, DI_correct, DI_runnerup, circularity, accuracy)
REFERENCE = {
    "p99zdpze5l": (0.99367, 0.1717, 0.2218, 0.9978, 1.0),
    "l8k1hzciux": (0.33362, 0.8483, 0.8849, 0.9989, 1.0),
    "18c9ev5v5p": (0.997, 0.174, 0.181, 1.0, 1.0),
    "h9m153uuh9": (0.997, 0.185, 0.237, 1.000, 1.0),
    "dy65ktpiij": (0.993, 0.474, 0.425, 0.726, 0.968),
    "f5dh675z97": (0.622, 0.992, 0.994, 0.145, 0.018),
}


@functools.lru_cache(maxsize=None)
def measured(run_id: str):
    run = pizza.read_model(os.path.join(FIXTURES, f"model_{run_id}.pt"))
    model = run.model()
    return run, model, signatures(model, run.task)


@pytest.mark.parametrize("run_id", list(REFERENCE))
def test_fixture_signatures_match_the_reference_table(run_id):
    gs, di, di_runnerup, circ, accuracy = REFERENCE[run_id]
    _, _, s = measured(run_id)
    assert s.gradient_symmetricity == pytest.approx(gs, abs=1e-3)
    assert s.di_correct == pytest.approx(di, abs=1e-3)
    assert s.di_runnerup == pytest.approx(di_runnerup, abs=1e-3)
    assert s.circularity == pytest.approx(circ, abs=2e-3)
    assert s.accuracy == pytest.approx(accuracy, abs=1e-3)
    json.dumps(s.to_dict())


def test_model_a_circles_and_templates():
    _, _, s = measured("p99zdpze5l")
    assert [c.delta for c in s.circles] == [7, 20, 4, 26, 10, 2]
    assert [c.freq for c in s.circles] == [17, 3, 15, 25, 6, 29]
    assert all(pow(c.delta, -1, 59) in (c.freq, 59 - c.freq) for c in s.circles)
    assert [c.doubles for c in s.circles] == [None, None, None, 0, 1, 2]
    assert [c.is_accompanying for c in s.circles] == [False] * 3 + [True] * 3
    first = s.circles[0]
    assert first.components == (0, 1) and first.is_circle
    assert first.template_fve["clock"] == pytest.approx(0.754, abs=1e-3)
    assert first.template_fve["pizza"] == pytest.approx(0.983, abs=1e-3)
    assert s.template_fve["pizza"] > s.template_fve["clock"]


def test_diff_vocab_circularity_is_normalised_over_the_rows_used():
    """The released code normalised over all 2p rows (PCA of all rows), halving it; grokscope does not."""
    run, model, s = measured("18c9ev5v5p")
    rows = model.W_E.detach().double()                 # all 118 rows, as the released code did
    centred = rows - rows.mean(0)
    scores = torch.linalg.svd(centred, full_matrices=False)[0][:, :4]
    x = torch.arange(59, dtype=torch.float64)
    released = []
    for column in scores.T:
        v = column / column.norm()
        energies = [2 * float((v[:59] * torch.exp(2j * math.pi * k * x / 59)).sum().abs() ** 2) / 59
                    for k in range(1, 30)]
        released.append(max(energies))
    assert 0.45 < sum(released) / 4 < 0.6
    assert s.circularity > 0.999 and s.circularity_b > 0.999


# ----- gradient symmetricity ---------------------------------------------------------------------

def test_gs_triples_follow_the_seed_42_protocol():
    for p, n in [(11, 50), (59, 100)]:
        triples = [(a, b, c) for a in range(p) for b in range(p) for c in range(p)]
        random.Random(42).shuffle(triples)
        assert gs_triples(p, n).tolist() == [list(t) for t in triples[:n]]
    assert gs_triples(13, 7, seed=3).tolist() != gs_triples(13, 7, seed=4).tolist()


def release_logits_from_embeddings(state: dict, config: dict, embeddings: torch.Tensor) -> torch.Tensor:
    """The release forward pass (float64) starting from the embedding outputs, last position."""
    w = {k: v.double() for k, v in state.items()}
    alpha = float(config["attn_coeff"])
    x = embeddings + w["pos_embed.W_pos"][: embeddings.shape[1]]
    for layer in range(config.get("n_layers", 1)):
        b = f"blocks.{layer}."
        q, k, v = (torch.einsum("hed,bpd->bhpe", w[b + f"attn.W_{n}"], x) for n in "QKV")
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(q.shape[-1])
        pattern = alpha * scores.softmax(-1) + 1 - alpha
        x = x + torch.einsum("bhqk,bhke->bqhe", pattern, v).flatten(2) @ w[b + "attn.W_O"].T
        pre = x @ w[b + "mlp.W_in"].T + w[b + "mlp.b_in"]
        post = torch.relu(pre) if config["act_fn"] == "ReLU" else torch.nn.functional.gelu(pre)
        x = x + post @ w[b + "mlp.W_out"].T + w[b + "mlp.b_out"]
    return (x @ w["unembed.W_U"])[:, -1]


@pytest.mark.parametrize("run_id", ["l8k1hzciux", "p99zdpze5l"])
def test_batched_gs_equals_a_per_sample_independent_computation(run_id):
    """One sample at a time, in float64, through the release's own forward pass: the same mean cosine."""
    run, model, s = measured(run_id)
    config = release_config(run_id)
    state = torch.load(os.path.join(FIXTURES, f"model_{run_id}.pt"), weights_only=True, map_location="cpu")
    cosines = []
    for a, b, c in gs_triples(59, 100).tolist():
        emb = state["embed.W_E"].double()[:, [a, b]].T[None].clone().requires_grad_(True)
        release_logits_from_embeddings(state, config, emb)[0, c].backward()
        g = emb.grad[0]
        cosines.append(float(g[0] @ g[1] / (g[0].norm() * g[1].norm())))
    expected = sum(cosines) / len(cosines)
    assert s.gradient_symmetricity == pytest.approx(expected, abs=1e-5)
    first_20 = gradient_symmetricity(model, run.task, n_samples=20)
    assert first_20 == pytest.approx(sum(cosines[:20]) / 20, abs=1e-5)


# ----- distance irrelevance ----------------------------------------------------------------------

def grid_logits(p: int, correct: torch.Tensor, wrong_scale: float = 0.0) -> torch.Tensor:
    """Logits whose correct-class entry is ``correct`` (p*p,) and whose other entries are below it."""
    labels = Task(p=p).labels()
    logits = torch.full((p * p, p), -100.0, dtype=torch.float64) + wrong_scale * torch.rand(p * p, p)
    logits[torch.arange(p * p), labels] = correct
    return logits


@pytest.mark.parametrize("p", [7, 23])
def test_distance_irrelevance_on_analytic_logits(p):
    task = Task(p=p, eq_token=False)
    a, b = task.operands().T.double()
    s_angle, d_angle = 2 * math.pi * (a + b) / p, 2 * math.pi * (a - b) / p
    # correct logit = u(a+b) + v(a-b): DI = std(u) / sqrt(var u + var v) exactly (population stds)
    u, v = 3 * torch.cos(s_angle), 2 * torch.sin(2 * d_angle)
    expected = math.sqrt(4.5) / math.sqrt(4.5 + 2.0)
    assert distance_irrelevance(grid_logits(p, u + v), task) == pytest.approx(expected, abs=1e-12)
    assert distance_irrelevance(grid_logits(p, v), task) == pytest.approx(0.0, abs=1e-12)
    assert distance_irrelevance(grid_logits(p, u), task) == pytest.approx(1.0, abs=1e-12)
    # a constant correct logit cannot depend on a - b: DI = 1 by definition
    assert distance_irrelevance(grid_logits(p, torch.full_like(u, 7.0)), task) == 1.0
    # runner-up: the largest wrong logit, here v(a-b) + a constant
    logits = grid_logits(p, u + 50)
    wrong = (task.labels() + 1) % p
    logits[torch.arange(p * p), wrong] = v
    assert distance_irrelevance(logits, task, runner_up=True) == pytest.approx(0.0, abs=1e-12)


# ----- circularity, circles, templates -----------------------------------------------------------

def embedded(columns: list[torch.Tensor], d_model: int = 16, seed: int = 0) -> torch.Tensor:
    """Rows = the given columns, rotated into d_model dims by a random orthogonal map, plus an offset."""
    generator = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator, dtype=torch.float64))[0]
    rows = torch.stack(columns, dim=1)
    rows = torch.cat([rows, torch.zeros(rows.shape[0], d_model - rows.shape[1], dtype=torch.float64)], 1)
    return rows @ rotation + torch.randn(d_model, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("p,k1,k2,k3", [(23, 3, 7, 10), (59, 17, 3, 25)])
def test_circularity_of_analytic_embeddings(p, k1, k2, k3):
    x = 2 * math.pi * torch.arange(p, dtype=torch.float64) / p
    theta, phi = 0.3, 0.5
    columns = [4 * torch.cos(k1 * x), 4 * torch.sin(k1 * x),
               3 * (math.cos(theta) * torch.cos(k2 * x) + math.sin(theta) * torch.cos(k3 * x)),
               2 * (math.cos(phi) * torch.sin(k2 * x) + math.sin(phi) * torch.sin(k3 * x))]
    expected = (1 + 1 + math.cos(theta) ** 2 + math.cos(phi) ** 2) / 4
    assert circularity(embedded(columns)) == pytest.approx(expected, abs=1e-9)
    pure = [r * f(k * x) for r, k in ((5, k1), (3, k2), (2, k3)) for f in (torch.cos, torch.sin)]
    assert circularity(embedded(pure)) == pytest.approx(1.0, abs=1e-9)
    circles = find_circles(embedded(pure), n_circles=3)
    assert [c.freq for c in circles] == [k1, k2, k3] and all(c.is_circle for c in circles)
    assert [c.delta for c in circles] == [index_step(k, p) for k in (k1, k2, k3)]
    noise = torch.randn(p, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert circularity(noise) < 0.5


def test_equal_circles_are_separated_by_frequency():
    """Equal radii make the PCA degenerate; grokscope rotates the span to single frequencies."""
    p, x = 31, 2 * math.pi * torch.arange(31, dtype=torch.float64) / 31
    columns = [f(k * x) for k in (4, 9, 13) for f in (torch.cos, torch.sin)]
    rows = embedded(columns, seed=3)
    assert circularity(rows) == pytest.approx(1.0, abs=1e-9)
    assert sorted(c.freq for c in find_circles(rows, 3)) == [4, 9, 13]
    pca = embedding_pca(rows)
    assert pca.scores.shape[1] == 6                     # the zero-variance directions are dropped
    torch.testing.assert_close(pca.scores @ pca.components + pca.mean, rows, atol=1e-9, rtol=0)


def test_frequency_energy_against_an_explicit_fourier_basis():
    p = 13
    x = torch.arange(p, dtype=torch.float64)
    basis = {k: torch.stack([torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)])
             for k in range(1, (p - 1) // 2 + 1)}
    values = torch.randn(p, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values = values - values.mean(0)
    energy = frequency_energy(values)
    for k, rows in basis.items():
        rows = rows / rows.norm(dim=1, keepdim=True)
        expected = (rows @ values).pow(2).sum(0) / values.pow(2).sum(0)
        torch.testing.assert_close(energy[:, k - 1], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(energy.sum(1), torch.ones(5, dtype=torch.float64), atol=1e-12, rtol=0)


def test_index_step_is_the_inverse_frequency():
    assert [index_step(k, 59) for k in (17, 3, 15, 25, 6, 29)] == [7, 20, 4, 26, 10, 2]
    for k in range(1, 30):
        assert pow(index_step(k, 59), -1, 59) in (k, 59 - k)


def explicit_templates(p: int, k: int, phase: float = 0.0) -> dict:
    """The templates over all p^3 (a, b, c), built from circle vectors as [Z23] describes them."""
    w = 2 * math.pi * k / p
    a, b, c = torch.meshgrid(*[torch.arange(p, dtype=torch.float64)] * 3, indexing="ij")
    s_cos, s_sin = torch.cos(w * a) + torch.cos(w * b - phase), torch.sin(w * a) + torch.sin(w * b - phase)
    half = (w * c - phase) / 2
    along = s_cos * torch.cos(half) + s_sin * torch.sin(half)
    across = -s_cos * torch.sin(half) + s_sin * torch.cos(half)
    return {"clock": torch.cos(w * (a + b - c)), "pizza": along.abs() - across.abs(),
            "accompanying": -(torch.cos(2 * w * a - w * c) + torch.cos(2 * w * b - w * c))}


def explicit_fve(logits: torch.Tensor, template: torch.Tensor, centred: bool = False) -> float:
    def z(t):
        if centred:
            t = t - t.mean(dim=(0, 1), keepdim=True) - t.mean(dim=2, keepdim=True) + t.mean()
        return (t - t.mean()) / t.std(unbiased=False)

    return float(1 - (z(logits) - z(template)).var(unbiased=False))


@pytest.mark.parametrize("kind", ["clock", "pizza", "accompanying"])
def test_factorised_template_fve_equals_the_explicit_one(kind):
    p, k = 11, 3
    logits = torch.randn(p, p, p, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    logits = logits + 2 * explicit_templates(p, k)[kind]
    fve, fve_centred, phase = template_fve(logits, kind, k)
    template = explicit_templates(p, k)[kind]
    assert (fve, phase) == (pytest.approx(explicit_fve(logits, template), abs=1e-10), 0.0)
    assert fve_centred == pytest.approx(explicit_fve(logits, template, centred=True), abs=1e-10)
    if kind == "pizza":  # a b circle turned by 1 radian: the fitted phase finds it
        noise = torch.randn(p, p, p, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        turned = 0.2 * noise + explicit_templates(p, k, phase=1.0)[kind]
        fve, fve_centred, phase = template_fve(turned, kind, k, fit_phase=True)
        assert phase == pytest.approx(1.0, abs=math.pi / 180)
        assert fve == pytest.approx(explicit_fve(turned, explicit_templates(p, k, phase)[kind]), abs=1e-10)
        assert fve > template_fve(turned, kind, k)[0] + 0.05


def test_isolated_circle_logits_and_model_a_templates_by_hand():
    """Circle 1 of Model A isolated by hand (mean + projection on the top two principal components of
    W_E, the model's own forward pass on a copy), then the released code's templates over all p^3."""
    run, model, s = measured("p99zdpze5l")
    rows = model.W_E.detach().double()
    mean = rows.mean(0)
    plane = torch.linalg.svd(rows - mean, full_matrices=False)[2][:2]
    projection = (rows - mean) @ plane.T @ plane
    copy = pizza.read_model(run.source).model()
    with torch.no_grad():
        copy.embed.W_E.copy_((mean + projection).float())
        expected = copy(run.task.tokens())[:, -1].double().reshape(59, 59, 59)
    got = isolated_circle_logits(model, run.task, [projection], [17], mean)[0].double()
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
    templates = explicit_templates(59, 17)
    clock, pizza_fve = explicit_fve(expected, templates["clock"]), explicit_fve(expected, templates["pizza"])
    assert (clock, pizza_fve) == (pytest.approx(0.754, abs=1e-3), pytest.approx(0.983, abs=1e-3))
    assert s.circles[0].template_fve["clock"] == pytest.approx(clock, abs=1e-4)
    assert s.circles[0].template_fve["pizza"] == pytest.approx(pizza_fve, abs=1e-4)


# ----- analytic networks -------------------------------------------------------------------------

TASKS = [Task(p=23, eq_token=False), Task(p=29), Task(p=31, eq_token=False, diff_vocab=True)]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"p{t.p}-eq{int(t.eq_token)}-dv{int(t.diff_vocab)}")
def test_exact_clock_and_pizza_signatures(task):
    clock = signatures(exact_clock_model(task, [3, 7]), task)
    assert clock.accuracy == 1.0 and clock.di_correct == 1.0 and clock.di_runnerup == 1.0
    assert abs(clock.gradient_symmetricity) < 0.3 and clock.circularity == pytest.approx(1.0, abs=1e-6)
    main = [c for c in clock.circles if c.is_circle]
    assert sorted(c.freq for c in main) == [3, 7]
    for c in main:
        assert c.template_fve["clock"] == pytest.approx(1.0, abs=1e-6) and c.template_fve["pizza"] < 0.85
    pizza_sig = signatures(exact_pizza_model(task, [3, 7]), task)
    assert pizza_sig.accuracy == 1.0 and pizza_sig.di_correct < 0.05
    assert pizza_sig.gradient_symmetricity > 0.98 and pizza_sig.circularity == pytest.approx(1.0, abs=1e-6)
    for c in (c for c in pizza_sig.circles if c.is_circle):
        assert c.template_fve_centred["pizza"] > c.template_fve_centred["clock"] + 0.1
    if task.diff_vocab:
        assert clock.circularity_b == pytest.approx(1.0, abs=1e-6)


def test_errors():
    task = Task(p=23, eq_token=False)
    model = exact_clock_model(task, [3])
    with pytest.raises(GrokscopeError, match="not defined"):
        signatures(model, Task(p=23, op="a^2+ab+b^2", eq_token=False))
    with pytest.raises(GrokscopeError, match="d_vocab"):
        signatures(model, Task(p=29, eq_token=False))
    with pytest.raises(GrokscopeError, match="n_samples"):
        gs_triples(5, 0)
    logits = final_logits(model, task.tokens())
    with pytest.raises(GrokscopeError, match="template"):
        template_fve(logits.reshape(23, 23, 23), "spiral", 3)
