"""Modular-arithmetic tasks: operations, the full (a, b) grid, token layouts and train/test splits.

Conventions (SCIENCE.md section 1): operands a, b in 0..p-1; the grid is lexicographic, row = a*p + b,
so for every operation but ``div`` a tensor over the grid reshapes to (p, p) with axis 0 = a, axis 1 = b.
``div`` drops b = 0 and has p*(p-1) rows, still a-major.

Token layouts:
- ``eq_token=True`` ([N23]): tokens ``[a, b, =]`` with ``=`` the last input id, n_ctx = 3.
- ``eq_token=False`` ([Z23]): tokens ``[a, b]``, n_ctx = 2.
- ``diff_vocab=True`` ([Z23]): b gets its own ids p..2p-1.

>>> task = Task(p=5)
>>> task.tokens()[:3].tolist()
[[0, 0, 5], [0, 1, 5], [0, 2, 5]]
>>> task.labels()[:7].tolist()
[0, 1, 2, 3, 4, 1, 2]
>>> Task(p=5, op="div").n_inputs
20

Each operation with a known mechanism is addition in a cyclic group Z_N after relabelling the tokens
(SCIENCE.md section 7): ``task.group`` says which (Z_p for add and sub, Z_{p-1} through the discrete
logarithm for mul and div) and maps grid rows, tokens and classes to group coordinates.

>>> Task(p=5, op="mul").group
Group(Z_4, discrete log base 2, phi(a) + phi(b) = phi(c))
"""

from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.limits import check_task_size

OperationFn = Callable[[Tensor, Tensor, int], Tensor]


def _modular_inverse(b: Tensor, p: int) -> Tensor:
    # Fermat: b^(p-2) = b^-1 mod p for prime p and b != 0.
    result = torch.ones_like(b)
    base, exponent = b % p, p - 2
    while exponent:
        if exponent & 1:
            result = result * base % p
        base = base * base % p
        exponent >>= 1
    return result


OPERATIONS: dict[str, OperationFn] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * _modular_inverse(b, p)) % p,
    "a^2+b^2": lambda a, b, p: (a * a + b * b) % p,
    "a^2+ab+b^2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "a^3+ab": lambda a, b, p: (a * a * a + a * b) % p,
}
"""Every supported operation, by canonical name: c = op(a, b) mod p."""

OPERATION_ALIASES = {"+": "add", "a+b": "add", "-": "sub", "a-b": "sub", "*": "mul", "a*b": "mul",
                     "/": "div", "a/b": "div", "a2+b2": "a^2+b^2", "a2+ab+b2": "a^2+ab+b^2",
                     "a3+ab": "a^3+ab"}


def is_prime(n: int) -> bool:
    """True when n is a prime number.

    >>> [n for n in range(20) if is_prime(n)]
    [2, 3, 5, 7, 11, 13, 17, 19]
    """
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def primitive_root(p: int) -> int:
    """The smallest generator g of the multiplicative group Z_p^* (p = 59: 2, p = 113: 3).

    >>> primitive_root(59), primitive_root(113), primitive_root(23)
    (2, 3, 5)
    """
    n = p - 1
    factors = {q for q in range(2, n + 1) if n % q == 0 and is_prime(q)}
    return next(g for g in range(2, p) if all(pow(g, n // q, p) != 1 for q in factors))


GROUP_OPERATIONS = {"add": ("identity", 1), "sub": ("identity", -1), "mul": ("log", 1), "div": ("log", -1)}
"""op -> (relabelling, sign of b): c = phi^-1(phi(a) + sign * phi(b)) in Z_N (SCIENCE.md section 7)."""

NO_MECHANISM = ("no single-group mechanism is known for op {op!r} (only add, sub, mul and div are "
                "addition in a cyclic group after relabelling): Fourier quantities are not defined")


@dataclass(frozen=True, repr=False)
class Group:
    """The cyclic group Z_N an operation is addition in, and the token relabelling that shows it.

    With phi = identity (add, sub; N = p) or phi = ind_g, the discrete logarithm base g (mul, div;
    N = p - 1, zero is outside the group), every in-group input satisfies
    phi(c) = phi(a) + sign_b * phi(b) mod N. Group coordinates are u = phi(a), v = sign_b * phi(b),
    m = phi(c), so that m = u + v: every measure of addition then applies in the basis of Z_N.

    Attributes:
        op, p: the task's operation and prime.
        N: the group order.
        relabelling: "identity" or "log".
        sign_b: +1 (add, mul) or -1 (sub, div): the sign of b's coordinate.
        generator: g of Z_p^* for the discrete log, None for the identity.
    """

    op: str
    p: int
    N: int
    relabelling: str
    sign_b: int
    generator: int | None = None

    def __repr__(self) -> str:
        return f"Group({self.name}, phi(a) {'+' if self.sign_b > 0 else '-'} phi(b) = phi(c))"

    @property
    def name(self) -> str:
        """The basis every Fourier quantity of this task uses, e.g. "Z_59" or "Z_58, discrete log base 2"."""
        return f"Z_{self.N}" if self.generator is None else f"Z_{self.N}, discrete log base {self.generator}"

    def to_dict(self) -> dict:
        """JSON-safe description: name, N, relabelling, generator, sign of b."""
        return {"name": self.name, "N": self.N, "relabelling": self.relabelling,
                "generator": self.generator, "sign_b": self.sign_b}

    def elements(self) -> Int[Tensor, "N"]:
        """The operand value of each group element x = 0..N-1: phi^-1(x) (x itself, or g^x mod p)."""
        if self.generator is None:
            return torch.arange(self.N)
        return torch.tensor([pow(self.generator, x, self.p) for x in range(self.N)])

    def coordinates(self) -> Int[Tensor, "p"]:
        """phi(x) for every operand value x = 0..p-1; -1 for values outside the group (0 under the log)."""
        phi = torch.full((self.p,), -1, dtype=torch.long)
        phi[self.elements()] = torch.arange(self.N)
        return phi

    def b_values(self) -> Int[Tensor, "N"]:
        """The b operand at each group coordinate v: phi^-1(sign_b * v)."""
        return self.elements()[(self.sign_b * torch.arange(self.N)) % self.N]


def task_group(task: "Task", generator: int | None = None) -> Group | None:
    """The group ``task``'s operation lives in, or None for operations without a known mechanism.

    ``generator`` picks another g for mul and div (default: ``primitive_root(p)``); another generator
    relabels frequencies k -> k u with gcd(u, p - 1) = 1, so key sets depend on g, their size does not.
    """
    return _group(task.op, task.p, generator)


@lru_cache(maxsize=64)
def _group(op: str, p: int, generator: int | None) -> Group | None:
    if op not in GROUP_OPERATIONS:
        return None
    relabelling, sign = GROUP_OPERATIONS[op]
    if relabelling == "identity":
        return Group(op=op, p=p, N=p, relabelling=relabelling, sign_b=sign)
    g = primitive_root(p) if generator is None else int(generator)
    if len({pow(g, x, p) for x in range(p - 1)}) != p - 1:
        raise GrokscopeError(f"generator {generator}", expected=f"a primitive root mod {p}, e.g. "
                             f"{primitive_root(p)}", where="task_group")
    return Group(op=op, p=p, N=p - 1, relabelling=relabelling, sign_b=sign, generator=g)


def canonical_operation(op: str) -> str:
    """The canonical name of an operation, accepting the aliases in ``OPERATION_ALIASES``."""
    name = OPERATION_ALIASES.get(op, op)
    if name not in OPERATIONS:
        raise GrokscopeError(f"operation {op!r}", expected=f"one of {sorted(OPERATIONS)}", where="Task")
    return name


@dataclass(frozen=True)
class Task:
    """A modular-arithmetic task: which operation over which prime, and how inputs are tokenised.

    Attributes:
        p: the prime modulus; also the number of output classes.
        op: an operation name from ``OPERATIONS`` (aliases such as "a+b" are accepted).
        eq_token: whether inputs end with an ``=`` token ([N23]) or not ([Z23]).
        diff_vocab: whether b uses its own token ids p..2p-1 ([Z23] "diff_vocab" runs).
    """

    p: int
    op: str = "add"
    eq_token: bool = True
    diff_vocab: bool = False

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, int) or self.p < 3:
            raise GrokscopeError(f"p = {self.p!r}", expected="an odd prime such as 23, 59 or 113",
                                 where="Task")
        check_task_size(self.p, where="Task")  # before the prime test, which an absurd p would stall
        if not is_prime(self.p):
            raise GrokscopeError(f"p = {self.p!r}", expected="an odd prime such as 23, 59 or 113",
                                 where="Task")
        object.__setattr__(self, "op", canonical_operation(self.op))

    # ----- vocabulary ---------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Sequence length: 3 with the ``=`` token, else 2."""
        return 3 if self.eq_token else 2

    @property
    def d_vocab(self) -> int:
        """Number of input token ids: p (+p with diff_vocab) (+1 with the ``=`` token)."""
        return self.p * (2 if self.diff_vocab else 1) + (1 if self.eq_token else 0)

    @property
    def d_vocab_out(self) -> int:
        """Number of output classes the analysis uses: p (extra output logits are dropped)."""
        return self.p

    @property
    def eq_id(self) -> int | None:
        """The token id of ``=``, or None without it."""
        return self.d_vocab - 1 if self.eq_token else None

    @property
    def b_offset(self) -> int:
        """What is added to b to form its token id (p with diff_vocab, else 0)."""
        return self.p if self.diff_vocab else 0

    # ----- the grid ----------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        """Rows of the full grid: p^2, or p*(p-1) for ``div`` (b = 0 dropped)."""
        return self.p * (self.p - 1) if self.op == "div" else self.p * self.p

    @property
    def is_square_grid(self) -> bool:
        """Whether grid tensors reshape to (p, p) with axis 0 = a, axis 1 = b."""
        return self.n_inputs == self.p * self.p

    def operands(self) -> Int[Tensor, "n_inputs 2"]:
        """The (a, b) pairs of the full grid, lexicographic (a-major)."""
        a = torch.arange(self.p).repeat_interleave(self.p)
        b = torch.arange(self.p).repeat(self.p)
        pairs = torch.stack([a, b], dim=1)
        if self.op == "div":
            pairs = pairs[pairs[:, 1] != 0]
        return pairs

    def tokens(self) -> Int[Tensor, "n_inputs n_ctx"]:
        """Input tokens of the full grid, in the layout of this task."""
        pairs = self.operands()
        columns = [pairs[:, 0], pairs[:, 1] + self.b_offset]
        if self.eq_token:
            columns.append(torch.full_like(pairs[:, 0], self.eq_id))
        return torch.stack(columns, dim=1)

    def labels(self) -> Int[Tensor, "n_inputs"]:
        """The correct class c = op(a, b) mod p of every grid row."""
        pairs = self.operands()
        return OPERATIONS[self.op](pairs[:, 0], pairs[:, 1], self.p)

    def split(self, frac: float, seed: int = 0) -> Int[Tensor, "n_train"]:
        """Train indices into the grid: a seeded random ``floor(frac * n_inputs)`` rows, ascending.

        [N23]'s 30% of the p = 113 grid gives 3830 train rows.

        >>> Task(p=113).split(0.3, seed=0).shape
        torch.Size([3830])
        """
        if not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
            raise GrokscopeError(f"train fraction {frac!r}", expected="a number in (0, 1)", where="Task.split")
        n_train = int(frac * self.n_inputs)
        if n_train == 0:
            raise GrokscopeError(f"train fraction {frac} of {self.n_inputs} inputs leaves no train rows",
                                 expected="a larger fraction", where="Task.split")
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(self.n_inputs, generator=generator)
        return order[:n_train].sort().values

    # ----- the group -----------------------------------------------------------------------------
    @property
    def group(self) -> Group | None:
        """The cyclic group this operation is addition in (``task_group``), None without a mechanism."""
        return task_group(self)

    def row_index(self, a: Tensor, b: Tensor) -> Tensor:
        """The grid row of operand pairs (a, b): a*p + b, or a*(p-1) + b - 1 for ``div``."""
        return a * (self.p - 1) + b - 1 if self.op == "div" else a * self.p + b

    def group_rows(self, group: Group | None = None) -> Int[Tensor, "N_sq"]:
        """Grid rows of the in-group inputs in group coordinates: entry u*N + v is the row of
        (a, b) = (phi^-1(u), phi^-1(sign_b v)), so that the correct class is phi^-1(u + v mod N).

        >>> task = Task(p=5, op="sub")
        >>> rows = task.group_rows()
        >>> task.operands()[rows[1]].tolist(), task.labels()[rows[1]].item()
        ([0, 4], 1)
        """
        group = self.group if group is None else group
        if group is None:
            raise GrokscopeError(NO_MECHANISM.format(op=self.op), expected="op add, sub, mul or div",
                                 where="Task.group_rows")
        a = group.elements().repeat_interleave(group.N)
        b = group.b_values().repeat(group.N)
        return self.row_index(a, b)

    def outside_rows(self, group: Group | None = None) -> Int[Tensor, "n_outside"]:
        """Grid rows with an operand outside the group (a zero operand for mul and div), ascending."""
        group = self.group if group is None else group
        mask = torch.ones(self.n_inputs, dtype=torch.bool)
        if group is not None:
            mask[self.group_rows(group)] = False
        return mask.nonzero().squeeze(1)

    # ----- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-safe dict; ``Task.from_dict(task.to_dict()) == task``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Task":
        """Build a Task from ``to_dict`` output, naming any unknown or missing key."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise GrokscopeError(f"task keys {sorted(unknown)}", expected=f"only {sorted(known)}",
                                 where="Task.from_dict")
        if "p" not in data:
            raise GrokscopeError("no key 'p'", expected="a task with at least p", where="Task.from_dict")
        return cls(**data)


def held_out_mask(n_inputs: int, train_indices: Int[Tensor, "n_train"]) -> torch.Tensor:
    """Boolean mask of the grid rows that are not in ``train_indices``."""
    mask = torch.ones(n_inputs, dtype=torch.bool)
    mask[train_indices] = False
    return mask
