"""Butcher tableaus of explicit Runge–Kutta methods, checked when built (MODEL.md §2).

Consistency and the order conditions (by rooted trees, Hairer–Nørsett–Wanner I §II.2) are
verified to :data:`TABLEAU_TOL`; first-same-as-last (FSAL) is detected."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

from .._checks import check_positive
from ..errors import PdenetsError

#: absolute tolerance of the tableau checks (coefficients are rationals rounded to doubles)
TABLEAU_TOL = 1e-12



@cache
def _trees(order: int) -> tuple[tuple, ...]:
    """Rooted trees with ``order`` vertices; a tree is the sorted tuple of its subtrees."""
    if order == 1:
        return ((),)
    found: set[tuple] = set()

    def build(rest: int, smallest: tuple, acc: tuple) -> None:
        if rest == 0:
            found.add(acc)
            return
        for k in range(1, rest + 1):
            for t in _trees(k):
                key = (k, t)
                if key >= smallest:
                    build(rest - k, key, (*acc, t))

    build(order - 1, (0, ()), ())
    return tuple(sorted(found))


def _tree_order(t: tuple) -> int:
    return 1 + sum(_tree_order(s) for s in t)


def _gamma(t: tuple) -> int:
    """The density γ(t) = |t| Π γ(subtrees) (Hairer–Nørsett–Wanner I, Def. II.2.10)."""
    return _tree_order(t) * math.prod(_gamma(s) for s in t)


def _order_defects(a, weights, c_len: int, order: int) -> list[tuple[int, float]]:
    """(tree order, |Σ_i w_i Φ_i(t) − 1/γ(t)|) for every rooted tree up to ``order``
    (Butcher's order conditions, Hairer–Nørsett–Wanner I, Thm. II.2.13)."""
    memo: dict[tuple, list[float]] = {}

    def phi(t: tuple) -> list[float]:
        if t not in memo:
            v = [1.0] * c_len
            for s in t:
                ps = phi(s)
                v = [v[i] * sum(aij * ps[j] for j, aij in enumerate(a[i])) for i in range(c_len)]
            memo[t] = v
        return memo[t]

    out = []
    for q in range(1, order + 1):
        for t in _trees(q):
            val = sum(w * p for w, p in zip(weights, phi(t)))
            out.append((q, abs(val - 1.0 / _gamma(t))))
    return out


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method (optionally with an embedded pair), checked when built.

    Parameters
    ----------
    a : sequence of sequences of float
        Stage coefficients; row i may list up to i entries (explicit: strictly lower
        triangular — longer rows are accepted only if their entries from column i on are 0).
    b : sequence of float
        Weights of the solution, Σ b_i = 1.
    c : sequence of float
        Nodes, c_i = Σ_j a_ij.
    order : int
        Classical order p; every Butcher order condition up to p is verified.
    b_err : sequence of float, optional
        Error weights e = b − b̂ of an embedded method b̂ (Σ e_i = 0, i.e. Σ b̂_i = 1).
    embedded_order : int, optional
        Order of b̂ (verified likewise); required with ``b_err``.
    name : str

    Attributes
    ----------
    fsal : bool
        First same as last: c_s = 1, the last row of ``a`` equals ``b`` and c_1 = 0, so the
        last stage's slope f(t + h, y_{n+1}) is the next step's first slope (one evaluation
        saved per step).

    Raises
    ------
    PdenetsError
        When a condition fails; the message names the condition and the stage.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    embedded_order: int | None = None
    name: str = "tableau"
    fsal: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        nm = f"Butcher tableau {self.name!r}"
        try:
            c = tuple(float(v) for v in self.c)
            b = tuple(float(v) for v in self.b)
            rows = [tuple(float(v) for v in row) for row in self.a]
            e = None if self.b_err is None else tuple(float(v) for v in self.b_err)
        except (TypeError, ValueError) as exc:
            raise PdenetsError(f"{nm}: coefficients must be numbers ({exc})") from None
        s = len(c)
        if s < 1 or len(rows) != s or len(b) != s or (e is not None and len(e) != s):
            raise PdenetsError(
                f"{nm}: need s >= 1 stages with len(a) = len(b) = len(c) (= len(b_err)) = s, "
                f"got len(a) = {len(rows)}, len(b) = {len(b)}, len(c) = {s}"
                + ("" if e is None else f", len(b_err) = {len(e)}"))
        if not all(math.isfinite(v) for v in (*c, *b, *(e or ()), *(x for r in rows for x in r))):
            raise PdenetsError(f"{nm}: coefficients must be finite")
        a = []
        for i, row in enumerate(rows):
            if any(v != 0.0 for v in row[i:]):
                raise PdenetsError(
                    f"{nm}: not explicit — a[{i}][j] must vanish for j >= {i} (the matrix must "
                    f"be strictly lower triangular), got row {row}")
            a.append(row[:i] + (0.0,) * (i - len(row[:i])))
        for i in range(s):
            rs = sum(a[i])
            if abs(rs - c[i]) > TABLEAU_TOL * max(1.0, abs(c[i])):
                raise PdenetsError(
                    f"{nm}: row-sum condition c_i = Σ_j a_ij fails in stage {i}: "
                    f"c_{i} = {c[i]!r}, Σ_j a_{i}j = {rs!r}")
        if abs(sum(b) - 1.0) > TABLEAU_TOL:
            raise PdenetsError(f"{nm}: weights must sum to 1, Σ b_i = {sum(b)!r}")
        check_positive(self.order, f"{nm}: order", integer=True)
        self._check_order(a, b, s, self.order, "b", nm)
        if e is not None:
            if abs(sum(e)) > TABLEAU_TOL:
                raise PdenetsError(
                    f"{nm}: embedded weights b̂ = b − b_err must sum to 1, "
                    f"Σ b̂_i = {sum(b) - sum(e)!r}")
            if self.embedded_order is None:
                raise PdenetsError(f"{nm}: b_err needs embedded_order")
            check_positive(self.embedded_order, f"{nm}: embedded_order", integer=True)
            self._check_order(a, tuple(x - y for x, y in zip(b, e)), s, self.embedded_order,
                              "b̂ (embedded)", nm)
        elif self.embedded_order is not None:
            raise PdenetsError(f"{nm}: embedded_order given without b_err")
        object.__setattr__(self, "a", tuple(tuple(r) for r in a))
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "b_err", e)
        fsal = s > 1 and c[0] == 0.0 and c[-1] == 1.0 and a[-1] == b[:-1] and b[-1] == 0.0
        object.__setattr__(self, "fsal", fsal)

    @staticmethod
    def _check_order(a, w, s, order, what, nm) -> None:
        for q, d in _order_defects(a, w, s, order):
            if d > 10 * TABLEAU_TOL:
                raise PdenetsError(
                    f"{nm}: weights {what} fail an order-{q} condition (defect {d:.3g}); "
                    f"the method is not of the declared order {order}")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether an embedded error estimate is available."""
        return self.b_err is not None


EULER_TABLEAU = ButcherTableau(((),), (1.0,), (0.0,), 1, name="euler")
HEUN_TABLEAU = ButcherTableau(((), (1.0,)), (0.5, 0.5), (0.0, 1.0), 2, name="heun")
RK4_TABLEAU = ButcherTableau(
    ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    (0.0, 0.5, 0.5, 1.0), 4, name="rk4")
DOPRI5_TABLEAU = ButcherTableau(
    (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    5,
    b_err=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
    embedded_order=4,
    name="dopri5",
)
