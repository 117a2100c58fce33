"""Operations beyond addition (SCIENCE.md section 7): the group each operation lives in, the bases,
and exact sub / mul / div networks as ground truth for every measure and signature."""

import json
import math

import pytest
import torch

from grokscope.algorithm_signatures import distance_irrelevance, gradient_symmetricity, mirror_map, signatures
from grokscope.classifier import classify
from grokscope.constructions import exact_clock_model, exact_pizza_model, random_model
from grokscope.errors import GrokscopeError
from grokscope.fourier import (component_norms, embedding_norms, fourier_basis, group_embeddings, key_directions,
                               key_frequencies, task_basis, token_embeddings)
from grokscope.measures import gini, progress_measures
from grokscope.models import final_logits
from grokscope.tasks import Task, primitive_root

# Float32 forward passes: logits carry ~1e-7 relative rounding, so losses of exact networks agree to
# about 1e-6 relative; 1e-4 leaves room for other CPUs and thread counts.
REL = 1e-4


def python_discrete_log(p: int, g: int) -> dict[int, int]:
    return {pow(g, i, p): i for i in range(p - 1)}


# ----- the group of each operation ---------------------------------------------------------------
@pytest.mark.parametrize("p, g", [(59, 2), (113, 3), (23, 5), (29, 2)])
def test_primitive_roots(p, g):
    assert primitive_root(p) == g
    assert len({pow(g, i, p) for i in range(p - 1)}) == p - 1


@pytest.mark.parametrize("op, N_of, sign, n_outside", [
    ("add", lambda p: p, 1, lambda p: 0), ("sub", lambda p: p, -1, lambda p: 0),
    ("mul", lambda p: p - 1, 1, lambda p: 2 * p - 1), ("div", lambda p: p - 1, -1, lambda p: p - 1)])
@pytest.mark.parametrize("p", [5, 23, 29])
def test_group_rows_turn_every_operation_into_addition(op, N_of, sign, n_outside, p):
    """In group coordinates the correct class of row u*N + v is phi^-1(u + v): checked against the
    task's own labels (computed from the operation itself) and a Python discrete log."""
    task = Task(p=p, op=op)
    group = task.group
    assert group.N == N_of(p) and group.sign_b == sign
    rows = task.group_rows()
    N = group.N
    u, v = torch.arange(N).repeat_interleave(N), torch.arange(N).repeat(N)
    assert task.labels()[rows].tolist() == group.elements()[(u + v) % N].tolist()
    assert len(set(rows.tolist())) == N * N
    outside = task.outside_rows()
    assert outside.numel() == n_outside(p)
    assert all(0 in pair for pair in task.operands()[outside].tolist())
    if group.generator is not None:
        log = python_discrete_log(p, group.generator)
        a, b = task.operands()[rows].T.tolist()
        assert [log[x] for x in a] == u.tolist()
        assert [(sign * log[x]) % N for x in b] == v.tolist()


def test_polynomials_have_no_group():
    task = Task(p=23, op="a^2+b^2")
    assert task.group is None
    with pytest.raises(GrokscopeError, match="not defined"):
        task_basis(task)
    with pytest.raises(GrokscopeError, match="not defined"):
        task.group_rows()


# ----- bases -------------------------------------------------------------------------------------
@pytest.mark.parametrize("N", [22, 28, 58, 112])
def test_even_basis_is_orthonormal_with_a_sign_row(N):
    basis = fourier_basis(N)
    assert torch.allclose(basis.F @ basis.F.T, torch.eye(N, dtype=torch.float64), atol=1e-12)  # float64 rounding
    assert basis.freqs[-1] == N // 2 == basis.sign_freq
    assert basis.frequency_rows(N // 2) == [basis.index("sign")]
    assert len(basis.nonconstant_rows()) == N - 1
    x = torch.arange(N)
    assert torch.equal(basis.F[basis.index("sign")] * math.sqrt(N), (1.0 - 2.0 * (x % 2)).double())


@pytest.mark.parametrize("p", [23, 59])
def test_the_sign_component_is_the_legendre_symbol(p):
    """(-1)^(ind a) = a^((p-1)/2) mod p (Euler's criterion): the sign row in token order."""
    task = Task(p=p, op="mul")
    basis, group = task_basis(task), task.group
    assert basis.name == f"Z_{p - 1}, discrete log base {group.generator}"
    sign = basis.F[basis.index("sign")] * math.sqrt(p - 1)          # at coordinate x = ind a
    legendre = [1 if pow(int(a), (p - 1) // 2, p) == 1 else -1 for a in group.elements()]
    assert sign.tolist() == legendre


# ----- exact clocks: ground truth for the measures ------------------------------------------------
CLOCKS = [(Task(p=23, op="sub"), [3, 7]), (Task(p=29, op="sub", eq_token=False), [2, 9]),
          (Task(p=23, op="mul"), [3, 11]), (Task(p=29, op="mul", eq_token=False), [4, 7, 14]),
          (Task(p=23, op="div"), [2, 5]), (Task(p=29, op="div", eq_token=False, diff_vocab=True), [5, 14])]
CLOCK_IDS = [f"{t.op}-p{t.p}-{'eq' if t.eq_token else 'noeq'}{'-diff' if t.diff_vocab else ''}" for t, _ in CLOCKS]


@pytest.fixture(scope="module", params=range(len(CLOCKS)), ids=CLOCK_IDS)
def clock(request):
    task, freqs = CLOCKS[request.param]
    return task, freqs, exact_clock_model(task, freqs)


def test_exact_clock_gets_every_input_right(clock):
    task, freqs, model = clock
    logits = final_logits(model, task.tokens())
    assert bool((logits.argmax(-1) == task.labels()).all())


@pytest.mark.parametrize("rule", ["A", "B", "C"])
def test_exact_clock_key_frequencies_in_the_group_basis(clock, rule):
    task, freqs, model = clock
    found = key_frequencies(model, task, rule)
    assert found.freqs == sorted(freqs) and found.basis == task.group.name


def test_exact_clock_progress_measures(clock):
    task, freqs, model = clock
    m = progress_measures(model, task, freqs, task.split(0.5, 0))
    assert m.basis == task.group.name
    assert m.full_acc == 1.0 and m.group_acc == 1.0
    # The logits lie in the key span: restricted loss no higher than the full loss (up to float32 rounding).
    assert m.restricted_loss <= m.group_loss * (1 + REL)
    # Removing the key directions leaves the logits near-constant over classes: near chance (log N).
    assert m.excluded_loss > 0.9 * math.log(task.group.N)
    # Removing one key frequency lowers every correct-minus-wrong gap by lam C (1 - cos(w e)) >= 0,
    # so no per-frequency excluded loss is below the full loss of the group grid.
    assert all(m.excluded_by_freq[k] >= m.group_loss * (1 - REL) for k in freqs)
    assert m.cos_fve == pytest.approx(1.0, abs=1e-6)   # the logits are exactly sum_k C_k
    if task.group.N < task.p:
        assert m.zero_operand_acc == 1.0
    else:
        assert math.isnan(m.zero_operand_acc)


def test_exact_clock_signatures_and_label(clock):
    task, freqs, model = clock
    c = classify(model, task)
    s = c.signatures
    assert c.label == "clock" and s.basis == task.group.name
    assert s.di_correct == pytest.approx(1.0, abs=1e-6)   # the correct logit is the same on every input
    assert s.gradient_symmetricity < 0.5
    assert s.template_fve_centred["clock"] > s.template_fve_centred["pizza"] + 0.1
    circle_freqs = {circle.freq for circle in s.circles if circle.is_circle}
    assert circle_freqs == {k for k in freqs if 2 * k != task.group.N}   # the sign frequency is a line
    assert c.to_dict()["zero_operand_accuracy"] == (1.0 if task.group.N < task.p else None)
    assert any(task.group.name in line for line in c.evidence)


@pytest.mark.parametrize("task", [Task(p=23, op="sub"), Task(p=23, op="mul"), Task(p=29, op="div")],
                         ids=["sub", "mul", "div"])
def test_a_random_network_has_no_key_frequency(task):
    model = random_model(task, seed=0)
    assert key_frequencies(model, task, "A").freqs == []
    m = progress_measures(model, task, [2, 5], task.split(0.5, 0))
    # Near chance everywhere: the key span holds ~4/N^2 of the logits' variance.
    assert m.restricted_loss == pytest.approx(math.log(task.group.N), rel=0.02)


def test_the_addition_basis_on_a_subtraction_clock_is_near_chance():
    """SCIENCE.md section 7's negative control: project on the cos/sin(w(a+b)) directions instead."""
    task = Task(p=29, op="sub")
    model = exact_clock_model(task, [3, 7])
    L = final_logits(model, task.tokens()).detach().double()
    D = key_directions(29, [3, 7])
    wrong = torch.nn.functional.cross_entropy(D.T @ (D @ L) + L.mean(0, keepdim=True), task.labels())
    assert float(wrong) == pytest.approx(math.log(29), rel=1e-3)
    assert progress_measures(model, task, [3, 7]).restricted_loss < 1e-5


def test_a_multiplication_clock_is_dense_in_the_additive_basis_and_sparse_in_the_log_basis():
    task = Task(p=29, op="mul")
    model = exact_clock_model(task, [3, 14])
    log_gini = progress_measures(model, task, [3, 14]).gini_W_E
    additive = fourier_basis(29)
    add_gini = gini(component_norms(token_embeddings(model, task), additive)[additive.nonconstant_rows()])
    # 3 of the 27 non-constant log-basis components are nonzero: G = 1 - 3/27 * (1 + ...) ~ 0.9.
    assert log_gini > 0.85 and add_gini < 0.2
    norms = embedding_norms(model, task)
    assert sorted(norms.topk(2).indices.add(1).tolist()) == [3, 14]


# ----- pizzas and the mirrored signatures ---------------------------------------------------------
def test_subtraction_pizza_with_its_own_b_table():
    task = Task(p=23, op="sub", eq_token=False, diff_vocab=True)
    model = exact_pizza_model(task, [2, 5])
    c = classify(model, task)
    s = c.signatures
    assert c.label == "pizza"
    assert s.gradient_symmetricity > 0.99 and s.di_correct < 0.4
    assert s.template_fve_centred["pizza"] > s.template_fve_centred["clock"] + 0.1
    m = progress_measures(model, task, [2, 5])
    assert m.full_acc == 1.0 and key_frequencies(model, task).freqs == [2, 5]


def test_subtraction_di_reads_a_minus_b_as_the_sum():
    """For sub the pizza's correct logit follows |cos(w(a + b)/2)|: its DI in group coordinates is low,
    while the addition layout (columns a - b) would see a correct logit that varies along a - b."""
    task = Task(p=23, op="sub", eq_token=False, diff_vocab=True)
    with torch.no_grad():
        logits = final_logits(exact_pizza_model(task, [2]), task.tokens())
    assert distance_irrelevance(logits, task) < 0.4
    pairs = task.operands()
    correct = logits.gather(1, task.labels()[:, None])[:, 0].double()
    by_sum = torch.zeros(23, dtype=torch.float64).index_add_(0, (pairs[:, 0] + pairs[:, 1]) % 23, correct) / 23
    w = 2 * math.pi * 2 / 23
    amplitude = (torch.cos(w * torch.arange(23) / 2)).abs()
    assert torch.corrcoef(torch.stack([by_sum, amplitude.double()]))[0, 1] > 0.99


def test_a_clock_needs_frequencies_without_a_common_factor_with_n():
    with pytest.raises(GrokscopeError, match="same logit"):
        exact_clock_model(Task(p=29, op="mul"), [4, 14])   # k = 4 and the sign both repeat every 14


@pytest.mark.parametrize("op, expected", [("mul", "no pizza exists"), ("div", "no pizza exists"),
                                          ("sub", "diff_vocab=True")])
def test_pizzas_that_do_not_exist_are_refused(op, expected):
    with pytest.raises(GrokscopeError, match=expected):
        exact_pizza_model(Task(p=23, op=op, eq_token=False), [2, 5])


def test_the_mul_pizza_ties_c_with_minus_c_where_a_is_minus_b():
    """The reason no mul pizza exists: at u - v = N/2, odd k vanish and even k cannot tell m from m + N/2."""
    N = 22
    for k in range(1, N // 2 + 1):
        w = 2 * math.pi * k / N
        amplitude = abs(math.cos(w * (N // 2) / 2))
        same = math.isclose(math.cos(w * 5), math.cos(w * (5 + N // 2)), abs_tol=1e-12)
        assert amplitude < 1e-12 or same


def test_mirror_map_is_the_reflection_for_a_shared_table():
    task = Task(p=23, op="sub")
    model = exact_clock_model(task, [3])
    M = mirror_map(model, task)
    rows_a, rows_b = group_embeddings(model, task, "a").double(), group_embeddings(model, task, "b").double()
    centred = rows_a - rows_a.mean(0)
    assert torch.allclose(centred @ M, rows_b - rows_b.mean(0), atol=1e-5)  # float32 embeddings
    assert torch.allclose(M[:2, :2], torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64), atol=1e-5)
    assert mirror_map(model, Task(p=23, op="add")) is None


def test_mirrored_gs_tells_a_pizza_from_a_clock_for_subtraction():
    pizza_task = Task(p=23, op="sub", eq_token=False, diff_vocab=True)
    clock_task = Task(p=23, op="sub", eq_token=False)
    assert gradient_symmetricity(exact_pizza_model(pizza_task, [2, 5]), pizza_task) > 0.99
    assert gradient_symmetricity(exact_clock_model(clock_task, [2, 5]), clock_task) < 0.5


def test_signatures_of_mul_report_the_zero_operand_accuracy_apart():
    task = Task(p=23, op="mul", eq_token=False)
    model = exact_clock_model(task, [3, 7])
    with torch.no_grad():
        model.unembed.b_U[0] = 1e4   # class 0 everywhere: right on the 45 zero-operand inputs only
    s = signatures(model, task, templates=False)
    assert s.zero_operand_accuracy == 1.0 and s.group_accuracy == 0.0
    assert s.accuracy == pytest.approx(45 / 529, abs=1e-12)
    assert json.loads(json.dumps(s.to_dict()))["basis"] == "Z_22, discrete log base 5"


# ----- trained runs end to end ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("op", ["sub", "mul"])
def test_grokscope_analyze_on_a_trained_run(op, tmp_path):
    """A short trained run of sub or mul through `grokscope analyze`: every Fourier output names the
    group's basis, and the zero-operand accuracy matches a direct count on the final checkpoint."""
    import grokscope as gs
    from grokscope.cli import main
    from grokscope.training import TrainConfig, train

    config = TrainConfig.preset("fast", p=23, op=op, d_model=32, frac=0.6, epochs=150, checkpoint_every=50,
                                log_every=10)
    train(config, tmp_path / "run", progress=False)
    assert main(["analyze", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--quiet", "--no-report"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    task = Task(p=23, op=op)
    name = task.group.name
    assert summary["task"]["group"]["name"] == name and summary["key_frequencies"]["basis"] == name
    assert summary["classification"]["basis"] == name
    model = gs.load_run(tmp_path / "run").model(-1)
    with torch.no_grad():
        logits = final_logits(model, task.tokens())
    correct = (logits.argmax(-1) == task.labels()).double()
    outside = task.outside_rows()
    if op == "mul":
        assert outside.numel() == 45
        assert summary["final"]["zero_operand_accuracy"] == pytest.approx(float(correct[outside].mean()), abs=1e-12)
    else:
        assert summary["final"]["zero_operand_accuracy"] is None
    assert summary["final"]["group_accuracy"] == pytest.approx(float(correct[task.group_rows()].mean()), abs=1e-12)
    header = (tmp_path / "out" / "measures.csv").read_text().splitlines()[0].split(",")
    assert {"group_loss", "zero_operand_acc", "restricted_loss", "excluded_loss"} <= set(header)


def test_another_generator_relabels_the_frequencies():
    """With g' = g^s the token at g'-coordinate x is g^(s x), at g-coordinate s x: a circle at k in g's
    coordinates sits at k s mod N (folded) in g''s. Checked on an exact clock's embedding shares."""
    from grokscope.circles import frequency_shares
    from grokscope.tasks import task_group

    task = Task(p=23, op="mul")
    model = exact_clock_model(task, [3])
    N, g = 22, task.group.generator
    s = 3                                              # gcd(3, 22) = 1: g^3 generates too
    other = task_group(task, generator=pow(g, s, 23))
    assert other.name == f"Z_22, discrete log base {pow(g, s, 23)}"
    shares = frequency_shares(token_embeddings(model, task)[other.elements()].detach())
    k = 3 * s % N
    assert int(shares.argmax()) + 1 == min(k, N - k)
    assert float(shares.max()) == pytest.approx(1.0, abs=1e-6)   # float32 embeddings
    with pytest.raises(GrokscopeError, match="primitive root"):
        task_group(task, generator=4)                  # 4 = 2^2 is a square mod 23
