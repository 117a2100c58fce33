"""Tasks: the grid, labels of every operation, token layouts and train/test splits."""

import pytest
import torch

from grokscope.errors import GrokscopeError
from grokscope.tasks import OPERATIONS, Task, held_out_mask, is_prime

PYTHON_OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow(b, -1, p)) % p,
    "a^2+b^2": lambda a, b, p: (a**2 + b**2) % p,
    "a^2+ab+b^2": lambda a, b, p: (a**2 + a * b + b**2) % p,
    "a^3+ab": lambda a, b, p: (a**3 + a * b) % p,
}


def test_every_operation_has_a_reference():
    assert set(PYTHON_OPERATIONS) == set(OPERATIONS)


@pytest.mark.parametrize("op", sorted(PYTHON_OPERATIONS))
@pytest.mark.parametrize("p", [5, 13, 23])
def test_grid_order_and_labels_match_a_python_loop(op, p):
    task = Task(p=p, op=op)
    expected_pairs = [(a, b) for a in range(p) for b in range(p) if not (op == "div" and b == 0)]
    expected_labels = [PYTHON_OPERATIONS[op](a, b, p) for a, b in expected_pairs]
    assert task.operands().tolist() == [list(pair) for pair in expected_pairs]
    assert task.labels().tolist() == expected_labels
    assert task.n_inputs == len(expected_pairs)
    assert task.tokens().tolist() == [[a, b, p] for a, b in expected_pairs]


@pytest.mark.parametrize("p", [5, 11])
def test_square_grid_reshapes_with_a_on_axis_0(p):
    task = Task(p=p)
    grid = task.labels().reshape(p, p)
    for a, b in [(0, 0), (1, p - 1), (p - 1, 2)]:
        assert grid[a, b].item() == (a + b) % p


@pytest.mark.parametrize("eq_token, diff_vocab, row, d_vocab", [
    (True, False, [2, 3, 7], 8),
    (False, False, [2, 3], 7),
    (False, True, [2, 10], 14),
    (True, True, [2, 10, 14], 15),
])
def test_token_layouts(eq_token, diff_vocab, row, d_vocab):
    task = Task(p=7, eq_token=eq_token, diff_vocab=diff_vocab)
    assert task.tokens()[2 * 7 + 3].tolist() == row
    assert task.d_vocab == d_vocab
    assert task.n_ctx == len(row)
    assert task.tokens().max().item() < task.d_vocab


def test_nanda_split_counts():
    train = Task(p=113).split(0.3, seed=0)
    assert train.numel() == 3830
    assert held_out_mask(113 * 113, train).sum().item() == 12769 - 3830 == 8939


@pytest.mark.parametrize("p, frac", [(23, 0.3), (59, 0.8), (113, 0.5)])
def test_split_is_determined_by_its_seed(p, frac):
    task = Task(p=p)
    first, again = task.split(frac, seed=3), task.split(frac, seed=3)
    assert torch.equal(first, again)
    assert first.numel() == int(frac * p * p)
    assert torch.equal(first, first.sort().values)
    assert first.unique().numel() == first.numel()
    assert 0 <= first.min() and first.max() < p * p
    others = [task.split(frac, seed=s) for s in range(4, 8)]
    assert all(not torch.equal(first, other) for other in others)


def test_split_ignores_global_rng():
    torch.manual_seed(1)
    first = Task(p=23).split(0.5, seed=0)
    torch.manual_seed(2)
    assert torch.equal(first, Task(p=23).split(0.5, seed=0))


@pytest.mark.parametrize("p", [4, 1, 2, 9, 15, -7, True])
def test_bad_p_is_refused_with_its_value(p):
    with pytest.raises(ValueError, match=r"Task: found p = .*expected an odd prime") as info:
        Task(p=p)
    assert repr(p) in str(info.value)
    assert isinstance(info.value, GrokscopeError)


@pytest.mark.parametrize("p", ["7", 7.0, None])
def test_p_of_the_wrong_type_is_refused(p):
    # a ValueError from Task, or a TypeError first where annotations are checked at run time
    with pytest.raises((ValueError, TypeError)):
        Task(p=p)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_frac_is_refused_with_its_value(frac):
    with pytest.raises(ValueError, match=r"Task.split: found train fraction .*expected a number in \(0, 1\)") as info:
        Task(p=7).split(frac)
    assert repr(frac) in str(info.value)


@pytest.mark.parametrize("frac", ["0.3", None])
def test_frac_of_the_wrong_type_is_refused(frac):
    with pytest.raises((ValueError, TypeError)):
        Task(p=7).split(frac)


def test_tiny_frac_leaving_no_rows_is_refused():
    with pytest.raises(ValueError, match="leaves no train rows"):
        Task(p=5).split(0.01)


@pytest.mark.parametrize("op", ["pow", "a+b+c", ""])
def test_bad_operation_is_refused_listing_the_choices(op):
    with pytest.raises(ValueError, match=r"Task: found operation .*expected one of .*'add'") as info:
        Task(p=7, op=op)
    assert repr(op) in str(info.value)


@pytest.mark.parametrize("alias, name", [("+", "add"), ("a-b", "sub"), ("*", "mul"), ("/", "div")])
def test_operation_aliases(alias, name):
    assert Task(p=7, op=alias).op == name


def test_round_trip_and_unknown_keys():
    task = Task(p=11, op="mul", eq_token=False)
    assert Task.from_dict(task.to_dict()) == task
    with pytest.raises(ValueError, match="unknown|task keys"):
        Task.from_dict({"p": 11, "modulus": 11})


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
