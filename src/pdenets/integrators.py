"""Depth integrators for the forward problem (MODEL.md §2) — one Runge–Kutta core.

A solver advances dy/dt = f(t, y) over a depth interval. Explicit Runge–Kutta methods are
given by a checked :class:`ButcherTableau` (consistency and order conditions verified when it is
built, first-same-as-last (FSAL) detected and used) and all run through one driver,
:func:`integrate_span`, which :func:`integrate` (the forward problem), the continuous adjoint's
backward sweep (:mod:`pdenets.adjoint`) and the PMP state sweep (:mod:`pdenets.pontryagin`)
share. Fixed-step methods (:class:`Euler` — which *is* the residual network —, :class:`Heun`,
:class:`RK4`) take S equal steps; :class:`Dopri5` is the adaptive Dormand–Prince 5(4) pair whose
step sizes are chosen by a step-size controller object (:class:`IController`, the default, or
the proportional–integral :class:`PIController`) and which reports its accepted/rejected step
counts. For a diffusion term ε Δ_x u (ε > 0) the explicit methods are stable only for h ε ρ(Δ)
below their stability limit and raise :class:`~pdenets.errors.StabilityError` otherwise;
:class:`IMEXEuler` (implicit diffusion, explicit reaction, order 1) and :class:`Strang` (exact
diffusion half-steps around an explicit reaction step, order 2) are unconditionally stable in
the diffusion.

Solvers and controllers are strategy objects: pass instances, e.g. ``solver=RK4()`` or
``Dopri5(rtol=1e-8, controller=PIController())`` (cf. Diffrax's ``solver=`` and
``stepsize_controller=``).

The state y may be one tensor or a tuple of tensors (the continuous adjoint integrates the pair
(u, λ)); a system may return more slope components than the state has: the extra ones are
auxiliary stage outputs, handed to the per-stage hook but not integrated.

References
----------
Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations I*, 2nd ed., §II.1-2
(Runge–Kutta methods, order conditions by rooted trees), §II.4-5 (Dormand–Prince, FSAL,
step-size control). Hairer & Wanner, *Solving ODEs II*, §IV.2 (PI step-size control).
Gustafsson (1991), Control theoretic techniques for stepsize selection in explicit Runge–Kutta
methods, ACM TOMS 17. Söderlind (2002), Automatic control and adaptive time-stepping, Numer.
Algorithms 31. Ascher, Ruuth & Wetton (1995), implicit–explicit methods. Strang (1968),
splitting.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

from ._checks import check_choice, check_positive
from .errors import PdenetsError, StabilityError

#: absolute tolerance of the tableau checks (coefficients are rationals rounded to doubles)
TABLEAU_TOL = 1e-12


class System:
    """What a solver integrates: f(t, u) = reaction(t, u) + ε L u.

    ``reaction(t, u, t0, t1)`` gets the current step [t0, t1] (t0 < t1) so that
    piecewise-constant controls are looked up on the step's own interval. ``lap`` is the
    Laplacian (or None).
    """

    def __init__(self, reaction, eps: float = 0.0, lap=None) -> None:
        self.reaction, self.eps, self.lap = reaction, float(eps), lap

    def __call__(self, t: float, u: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
        out = self.reaction(t, u, t0, t1)
        if self.eps > 0.0:
            out = out + self.eps * self.lap(u)
        return out


@dataclass
class Stats:
    """Counters of one solve: accepted and rejected steps and right-hand-side evaluations."""

    steps: int = 0
    rejected: int = 0
    nfev: int = 0
    step_sizes: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"steps": self.steps, "rejected": self.rejected, "nfev": self.nfev}


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of an accepted step, as passed to the per-stage hook of :func:`integrate`.

    ``t`` is the stage depth t0 + c_i h, ``lo``/``hi`` the step's interval (lo < hi whatever
    the direction), ``index`` the stage number i, ``weight`` the quadrature weight h b_i
    (negative when integrating backward), ``y`` the stage state Y_i and ``k`` what the system
    returned there (the slope, plus auxiliary components if any).
    """

    t: float
    lo: float
    hi: float
    index: int
    weight: float
    y: Any
    k: Any


StageHook = Callable[[Stage], None]


# ------------------------------------------------------------------------------------------
# Butcher tableaus


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


# ------------------------------------------------------------------------------------------
# step-size controllers


class StepSizeController:
    """Base class of step-size controllers (cf. Diffrax's ``AbstractStepSizeController``).

    A controller is stateless; the state of one integration (e.g. the previous error) is
    created by :meth:`init` and threaded through :meth:`adapt`.
    """

    name = "controller"

    def init(self) -> Any:
        """State at the start of an integration."""
        return None

    def adapt(self, h: float, err: float, error_order: int, state: Any
              ) -> tuple[bool, float, Any]:
        """Decide on an attempted step of size |h| with scaled error norm ``err`` (accept if
        ≤ 1) of an embedded pair of error order k (the lower order + 1).

        Returns ``(accept, next |h|, new state)``.
        """
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class IController(StepSizeController):
    """Integral (elementary) controller: h_new = h · clip(safety · err^(−1/k)),
    clipped to [factor_min, factor_max] after an accepted step and to [factor_reject, 1] after a
    rejected one; a non-finite error divides h by 10 (Hairer–Nørsett–Wanner I, §II.4)."""

    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 5.0
    factor_reject: float = 0.1
    name = "i"

    def adapt(self, h, err, error_order, state):
        if not math.isfinite(err):
            return False, h * self.factor_reject, state
        fac = self.safety * (max(err, 1e-10) ** (-1 / error_order))
        if err <= 1.0:
            return True, h * min(self.factor_max, max(self.factor_min, fac)), state
        return False, h * min(1.0, max(self.factor_reject, fac)), state

    def config(self) -> dict:
        return {"name": self.name, "safety": self.safety}


@dataclass(frozen=True)
class PIController(StepSizeController):
    """Proportional–integral controller (Gustafsson 1991; Hairer–Wanner II, §IV.2, eq. 2.43c;
    Söderlind 2002; Diffrax's ``PIDController(pcoeff, icoeff)``): after an accepted step

        h_new = h · clip( safety · err_n^(−(pcoeff + icoeff)/k) · err_{n−1}^(pcoeff/k) ),

    with err_{n−1} the error of the previous accepted step (floored at 1e-4, 1 at the start),
    clipped to [factor_min, factor_max] — and to at most 1 right after a rejection. A rejected
    step is retried with the integral factor safety · err^(−1/k) clipped to
    [factor_reject, 1]. The defaults pcoeff = 0.4, icoeff = 0.3 are Gustafsson's
    (β₁ = 0.7/k, β₂ = 0.4/k); pcoeff = 0 is the I controller.
    """

    pcoeff: float = 0.4
    icoeff: float = 0.3
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 5.0
    factor_reject: float = 0.1
    name = "pi"

    def __post_init__(self) -> None:
        if not (self.icoeff > 0 and self.pcoeff >= 0):
            raise PdenetsError(
                f"PIController needs icoeff > 0 and pcoeff >= 0, got icoeff={self.icoeff!r}, "
                f"pcoeff={self.pcoeff!r}")

    def init(self):
        return (1.0, False)  # previous accepted error, last attempt rejected

    def adapt(self, h, err, error_order, state):
        prev, rejected = state
        if not math.isfinite(err):
            return False, h * self.factor_reject, (prev, True)
        e = max(err, 1e-10)
        if err <= 1.0:
            k = float(error_order)
            fac = self.safety * e ** (-(self.pcoeff + self.icoeff) / k) * prev ** (self.pcoeff / k)
            fac = min(self.factor_max, max(self.factor_min, fac))
            if rejected:
                fac = min(fac, 1.0)
            return True, h * fac, (max(err, 1e-4), False)
        fac = self.safety * e ** (-1.0 / error_order)
        return False, h * min(1.0, max(self.factor_reject, fac)), (prev, True)

    def config(self) -> dict:
        return {"name": self.name, "pcoeff": self.pcoeff, "icoeff": self.icoeff,
                "safety": self.safety}


CONTROLLERS: dict[str, type[StepSizeController]] = {"i": IController, "pi": PIController}


# ------------------------------------------------------------------------------------------
# solvers


class Solver:
    """Base class of depth integrators."""

    name = "solver"
    order = 1
    adaptive = False
    #: largest h·ρ on the negative real axis for which the explicit method is stable
    stability_limit: float = math.inf

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def config(self) -> dict:
        return {"name": self.name}

    def check_stable(self, system: System, h: float) -> None:
        if system.eps <= 0.0 or math.isinf(self.stability_limit):
            return
        rho = system.eps * system.lap.spectral_radius
        if h * rho > self.stability_limit:
            need = math.ceil(h * rho / self.stability_limit * (1 + 1e-12))
            raise StabilityError(
                f"{self.name}: step h = {h:.3g} violates the explicit stability limit "
                f"h·ε·ρ(Δ) <= {self.stability_limit:.3g} (ε·ρ(Δ) = {rho:.3g}); use at least "
                f"{need}× more steps, or solver=IMEXEuler() / Strang()"
            )

    def step(self, system: System, t0: float, h: float, u: torch.Tensor, stats: Stats,
             inplace: bool = False):
        """Advance u by one step of size h from t0. With ``inplace`` (no autograd) the solver
        may overwrite ``u`` and reuse buffers."""
        raise NotImplementedError

    #: depths c_i (fractions of a step) at which :meth:`step` evaluates the reaction, when
    #: known in advance (fixed-step solvers); None otherwise
    nodes: tuple[float, ...] | None = None


def stage_times(solver: Solver, t_start: float, t_end: float, steps: int
                ) -> list[tuple[float, float, float]]:
    """The stages ``(t, lo, hi)`` at which a fixed-step solve by :func:`integrate_span` of
    ``steps`` equal steps from ``t_start`` to ``t_end`` evaluates the right-hand side, with
    exactly the floating-point depths the driver computes (step n starts at
    t_start + n h; stage i is at t0 + c_i h). Empty for adaptive solvers and solvers whose
    stage depths are unknown (see :attr:`Solver.nodes`). Used to evaluate the controls of
    all stages at once (MODEL.md §2; :meth:`KernelSchedule.batched
    <pdenets.controls.KernelSchedule.batched>`)."""
    if solver.adaptive:
        return []
    nodes = solver.tableau.c if isinstance(solver, ExplicitRK) else solver.nodes
    if nodes is None:
        return []
    hs = (t_end - t_start) / steps
    out = []
    for n in range(steps):
        t0 = t_start + n * hs
        lo, hi = (t0, t0 + hs) if hs >= 0 else (t0 + hs, t0)
        out += [(t0 + ci * hs, lo, hi) for ci in nodes]
    return out


def _axpy(y, alpha: float, k):
    """y + alpha·k for a tensor or a tuple state (extra slope components are ignored)."""
    if isinstance(y, tuple):
        return tuple(yi + alpha * ki for yi, ki in zip(y, k))
    return y + alpha * k


def rk_step(tableau: ButcherTableau, system, t0: float, h: float, y, stats: Stats, k1=None):
    """One explicit Runge–Kutta step of (signed) size h from t0 — the arithmetic core.

    ``k1``, if given, is the first slope f(t0, y) (FSAL reuse, or a retried step). Returns
    ``(y_new, stage states, slopes)``; for an FSAL tableau y_new is the last stage state.
    """
    lo, hi = (t0, t0 + h) if h >= 0 else (t0 + h, t0)
    ys: list = []
    ks: list = []
    for i, ci in enumerate(tableau.c):
        yi = y
        for j, aij in enumerate(tableau.a[i]):
            if aij != 0.0:
                yi = _axpy(yi, h * aij, ks[j])
        ys.append(yi)
        if i == 0 and k1 is not None:
            ks.append(k1)
        else:
            ks.append(system(t0 + ci * h, yi, lo, hi))
            stats.nfev += 1
    if tableau.fsal:
        return ys[-1], ys, ks
    out = y
    for bi, k in zip(tableau.b, ks):
        if bi != 0.0:
            out = _axpy(out, h * bi, k)
    return out, ys, ks


def _rk_step_inplace(tableau: ButcherTableau, system, t0, h, u, stats):
    """As :func:`rk_step` for a tensor state without autograd, updating ``u`` in place."""
    t1 = t0 + h
    ks: list[torch.Tensor] = []
    for i, ci in enumerate(tableau.c):
        y = u
        for j, aij in enumerate(tableau.a[i]):
            if aij != 0.0:
                y = torch.add(u, ks[j], alpha=h * aij) if y is u else y.add_(ks[j],
                                                                             alpha=h * aij)
        ks.append(system(t0 + ci * h, y, t0, t1))
    stats.nfev += len(ks)
    for bi, k in zip(tableau.b, ks):
        if bi != 0.0:
            u.add_(k, alpha=h * bi)
    return u


def _emit(hook: StageHook, tableau: ButcherTableau, t0: float, h: float, ys, ks) -> None:
    lo, hi = (t0, t0 + h) if h >= 0 else (t0 + h, t0)
    for i, (ci, bi, y, k) in enumerate(zip(tableau.c, tableau.b, ys, ks)):
        hook(Stage(t0 + ci * h, lo, hi, i, h * bi, y, k))


class ExplicitRK(Solver):
    """Explicit Runge–Kutta method given by a :class:`ButcherTableau`.

    Subclasses set the class attribute ``tableau``; ``ExplicitRK(tableau)`` builds a fixed-step
    solver from any (checked) tableau.
    """

    tableau: ButcherTableau = EULER_TABLEAU

    def __init__(self, tableau: ButcherTableau | None = None) -> None:
        if tableau is not None:
            if not isinstance(tableau, ButcherTableau):
                raise PdenetsError(f"tableau must be a ButcherTableau, got {tableau!r}")
            self.tableau = tableau
            self.name, self.order = tableau.name, tableau.order

    def __repr__(self) -> str:
        if type(self).tableau is self.tableau:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(tableau={self.tableau.name!r})"

    @property
    def a(self) -> tuple[tuple[float, ...], ...]:
        return self.tableau.a

    @property
    def b(self) -> tuple[float, ...]:
        return self.tableau.b

    @property
    def c(self) -> tuple[float, ...]:
        return self.tableau.c

    def stages(self, system: System, t0: float, h: float, u: torch.Tensor):
        """Stage values Y_i and slopes k_i = f(t0 + c_i h, Y_i) of one step."""
        _, ys, ks = rk_step(self.tableau, system, t0, h, u, Stats())
        return ys, ks

    def step(self, system, t0, h, u, stats, inplace=False):
        if inplace and not self.tableau.fsal:
            return _rk_step_inplace(self.tableau, system, t0, h, u, stats)
        return rk_step(self.tableau, system, t0, h, u, stats)[0]


class Euler(ExplicitRK):
    """Explicit Euler, order 1: u_{k+1} = u_k + h f(t_k, u_k) — exactly the ResNet of §1."""

    name, order, stability_limit = "euler", 1, 2.0
    tableau = EULER_TABLEAU


class Heun(ExplicitRK):
    """Heun's method (explicit trapezoid), order 2."""

    name, order, stability_limit = "heun", 2, 2.0
    tableau = HEUN_TABLEAU


class RK4(ExplicitRK):
    """The classical fourth-order Runge–Kutta method."""

    name, order, stability_limit = "rk4", 4, 2.785
    tableau = RK4_TABLEAU


def make_controller(controller: str | StepSizeController | None) -> StepSizeController:
    """A step-size controller by name (``i``, ``pi``) or instance (default: I)."""
    if controller is None:
        return IController()
    if isinstance(controller, StepSizeController):
        return controller
    if not isinstance(controller, str):
        raise PdenetsError(f"controller must be a name or a StepSizeController, got "
                           f"{controller!r}")
    return CONTROLLERS[check_choice(controller, CONTROLLERS, "step-size controller")]()


class AdaptiveRK(ExplicitRK):
    """Adaptive explicit Runge–Kutta method with an embedded pair and error control.

    Parameters
    ----------
    tableau : ButcherTableau
        With error weights ``b_err`` (and ``embedded_order``).
    rtol, atol : float
        Relative and absolute tolerances of the mixed error norm
        ``rms(err / (atol + rtol · max(|u|, |u_new|)))`` (for a tuple state: the largest of
        the components' norms).
    max_steps : int
        Attempted-step budget; exceeding it raises :class:`PdenetsError`.
    first_step : float, optional
        Initial step; by default chosen by Hairer's heuristic.
    replay : sequence of float, optional
        Replay these accepted step sizes instead of controlling the error (see
        :meth:`frozen`).
    controller : StepSizeController or {"i", "pi"}, optional
        Step-size controller; :class:`IController` by default.
    """

    adaptive = True

    def __init__(
        self, tableau: ButcherTableau, rtol: float = 1e-6, atol: float = 1e-8,
        max_steps: int = 100_000, first_step: float | None = None,
        replay: tuple[float, ...] | None = None,
        controller: str | StepSizeController | None = None,
    ) -> None:
        super().__init__(tableau)
        if not self.tableau.adaptive:
            raise PdenetsError(f"{self.name}: an adaptive solver needs a tableau with "
                               f"error weights b_err")
        check_positive(rtol, f"{self.name} rtol")
        check_positive(atol, f"{self.name} atol")
        check_positive(max_steps, f"{self.name} max_steps", integer=True)
        self.rtol, self.atol, self.max_steps, self.first_step = rtol, atol, max_steps, first_step
        self.replay = None if replay is None else tuple(float(h) for h in replay)
        self.controller = make_controller(controller)

    @property
    def b_err(self) -> tuple[float, ...]:
        return self.tableau.b_err  # type: ignore[return-value]

    @property
    def error_order(self) -> int:
        """k = (order of the embedded method) + 1, the exponent base of the controllers."""
        return min(self.tableau.order, self.tableau.embedded_order or 0) + 1

    def frozen(self, step_sizes) -> AdaptiveRK:
        """A copy that replays the accepted ``step_sizes`` of an earlier solve (no error
        control): the map whose exact derivative the discrete adjoint computes."""
        new = copy.copy(self)
        new.replay = tuple(float(h) for h in step_sizes)
        return new

    def _tol_repr(self) -> str:
        ctrl = "" if self.controller == IController() else f", controller={self.controller!r}"
        return f"rtol={self.rtol}, atol={self.atol}{ctrl}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._tol_repr()})"

    def config(self) -> dict:
        out = {"name": self.name, "rtol": self.rtol, "atol": self.atol}
        if self.controller != IController():
            out["controller"] = self.controller.config()
        return out

    def _norm(self, e, u0, u1) -> float:
        with torch.no_grad():
            scale = self.atol + self.rtol * torch.maximum(u0.abs(), u1.abs())
            return float(torch.sqrt(torch.mean((e / scale) ** 2)))

    def error_norm(self, h: float, ks, y0, y1) -> float:
        """Scaled norm of the embedded error estimate h Σ e_i k_i of one step."""
        with torch.no_grad():
            pairs = [(e, k) for e, k in zip(self.b_err, ks) if e != 0.0]
            if not isinstance(y0, tuple):
                return self._norm(sum((h * e) * k for e, k in pairs), y0, y1)
            return max(self._norm(sum((h * e) * k[c] for e, k in pairs), y0[c], y1[c])
                       for c in range(len(y0)))

    def attempt(self, system, t0, h, u, stats):
        """One attempted step: (u_new, error norm, stages, slopes)."""
        u1, ys, ks = rk_step(self.tableau, system, t0, h, u, stats)
        return u1, self.error_norm(h, ks, u, u1), ys, ks

    def initial_step(self, system, t0, u, T):
        if self.first_step is not None:
            return float(self.first_step)
        f0 = system(t0, u, t0, T).detach()
        u = u.detach()
        scale = self.atol + self.rtol * u.abs()
        d0 = float(torch.sqrt(torch.mean((u / scale) ** 2)))
        d1 = float(torch.sqrt(torch.mean((f0 / scale) ** 2)))
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        return min(h0, T)


class Dopri5(AdaptiveRK):
    """Adaptive Dormand–Prince 5(4) with local extrapolation (Hairer–Nørsett–Wanner I, §II.5).

    FSAL: the seventh stage is evaluated at the new solution and is the next step's first
    stage, so an attempted step costs 6 right-hand-side evaluations. The step size is chosen
    by ``controller`` (:class:`IController` by default; :class:`PIController` for the
    proportional–integral controller of Hairer–Wanner II §IV.2). Other parameters as
    :class:`AdaptiveRK`.
    """

    name, order = "dopri5", 5
    tableau = DOPRI5_TABLEAU

    def __init__(
        self, rtol: float = 1e-6, atol: float = 1e-8, max_steps: int = 100_000,
        first_step: float | None = None, replay: tuple[float, ...] | None = None,
        controller: str | StepSizeController | None = None,
    ) -> None:
        super().__init__(DOPRI5_TABLEAU, rtol, atol, max_steps, first_step, replay, controller)
        self.name = "dopri5"


class IMEXEuler(Solver):
    """IMEX Euler: (I − h ε Δ) u_{k+1} = u_k + h R(t_k, u_k); order 1, stable for any h in ε."""

    name, order = "imex-euler", 1
    nodes = (0.0,)

    def step(self, system, t0, h, u, stats, inplace=False):
        stats.nfev += 1
        v = u + h * system.reaction(t0, u, t0, t0 + h)
        if system.eps > 0.0:
            v = system.lap.apply_function(v, lambda lam: 1.0 / (1.0 - h * system.eps * lam))
        return v


class Strang(Solver):
    """Strang splitting: exact diffusion for h/2, a Heun step of the reaction, diffusion h/2.

    Order 2; unconditionally stable in the diffusion (the heat semigroup is applied exactly in
    the Laplacian's eigenbasis).
    """

    name, order = "strang", 2
    nodes = (0.0, 1.0)

    def step(self, system, t0, h, u, stats, inplace=False):
        half = (lambda lam: torch.exp(0.5 * h * system.eps * lam)) if system.eps > 0 else None
        t1 = t0 + h
        if half is not None:
            u = system.lap.apply_function(u, half)
        k1 = system.reaction(t0, u, t0, t1)
        k2 = system.reaction(t1, u + h * k1, t0, t1)
        stats.nfev += 2
        u = u + (0.5 * h) * (k1 + k2)
        if half is not None:
            u = system.lap.apply_function(u, half)
        return u


SOLVERS: dict[str, type[Solver]] = {
    "euler": Euler,
    "heun": Heun,
    "rk4": RK4,
    "dopri5": Dopri5,
    "imex-euler": IMEXEuler,
    "strang": Strang,
}


def make_solver(name: str | Solver, **kwargs) -> Solver:
    """Build a solver by name (``euler``, ``heun``, ``rk4``, ``dopri5``, ``imex-euler``,
    ``strang``); options such as ``rtol`` or ``controller`` go to :class:`Dopri5`."""
    if isinstance(name, Solver):
        return name
    if not isinstance(name, str):
        raise PdenetsError(f"solver must be a name or a Solver, got {name!r}")
    cls = SOLVERS[check_choice(name, SOLVERS, "depth solver")]
    if kwargs and not issubclass(cls, AdaptiveRK):
        raise PdenetsError(f"solver {name!r} takes no options, got {sorted(kwargs)}")
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------
# the driver


def integrate_span(
    system, y, t_start: float, t_end: float, solver: Solver, stats: Stats, *,
    steps: int | None = None, h: float | None = None, hook: StageHook | None = None,
    state: Any = None, inplace: bool = False,
    on_step: Callable[[int, Any], None] | None = None,
) -> tuple[Any, float, Any]:
    """Integrate dy/dt = system(t, y, lo, hi) from ``t_start`` to ``t_end`` (either direction).

    Fixed-step solvers take ``steps`` equal steps (step n starts at t_start + n h). Adaptive
    solvers start with |h| = ``h`` and let their controller choose the rest (or replay
    ``solver.replay``); FSAL tableaus reuse the last slope as the next first slope, and a
    retried step reuses its first slope.

    Parameters
    ----------
    hook : callable, optional
        Called with a :class:`Stage` for every stage of every *accepted* step, in order.
    state : optional
        The controller's state from a previous span (continued), or None (fresh).
    inplace : bool
        Fixed-step tensor states without autograd: update ``y`` in place (no hook).
    on_step : callable, optional
        ``on_step(n, y)`` after the n-th accepted step (n = 1, 2, ...; counted in ``stats``).

    Returns
    -------
    (y(t_end), the next |h| proposed, controller state)
    """
    span = t_end - t_start
    sign = 1.0 if span >= 0 else -1.0
    if not solver.adaptive:
        if steps is None:
            raise PdenetsError(f"{solver.name}: a fixed-step solver needs a number of steps")
        hs = span / steps
        tab = solver.tableau if isinstance(solver, ExplicitRK) else None
        if hook is not None and tab is None:
            raise PdenetsError(f"{solver.name}: per-stage hooks need an explicit Runge-Kutta "
                               f"solver")
        k1 = None
        for n in range(steps):
            t0 = t_start + n * hs
            if tab is None:
                y = solver.step(system, t0, hs, y, stats, inplace)
            elif inplace and not tab.fsal:
                y = _rk_step_inplace(tab, system, t0, hs, y, stats)
            else:
                y, ys, ks = rk_step(tab, system, t0, hs, y, stats, k1)
                k1 = ks[-1] if tab.fsal else None
                if hook is not None:
                    _emit(hook, tab, t0, hs, ys, ks)
            stats.steps += 1
            if on_step is not None:
                on_step(stats.steps, y)
        return y, abs(hs), None
    assert isinstance(solver, AdaptiveRK)
    tab = solver.tableau
    tol_t = 1e-14 * max(1.0, abs(t_start), abs(t_end))
    t, k1 = t_start, None
    if solver.replay is not None:
        while sign * (t_end - t) > tol_t:
            if stats.steps >= len(solver.replay):
                raise PdenetsError(f"{solver.name} replay: the recorded step sequence is too "
                                   f"short")
            hs = sign * solver.replay[stats.steps]
            y1, ys, ks = rk_step(tab, system, t, hs, y, stats, k1)
            if hook is not None:
                _emit(hook, tab, t, hs, ys, ks)
            t, y = t + hs, y1
            k1 = ks[-1] if tab.fsal else None
            stats.steps += 1
            stats.step_sizes.append(abs(hs))
            if on_step is not None:
                on_step(stats.steps, y)
        return y, abs(h or 0.0), state
    if h is None or not h > 0:
        raise PdenetsError(f"{solver.name}: an adaptive span needs a first step h > 0")
    ctrl = solver.controller
    cstate = ctrl.init() if state is None else state
    habs = float(h)
    attempts = 0
    while sign * (t_end - t) > tol_t:
        habs = min(habs, abs(t_end - t))
        attempts += 1
        if attempts > solver.max_steps:
            raise PdenetsError(
                f"{solver.name}: more than max_steps={solver.max_steps} attempted steps "
                f"(stuck at t = {t:.6g}); loosen rtol/atol or raise max_steps"
            )
        hs = sign * habs
        y1, ys, ks = rk_step(tab, system, t, hs, y, stats, k1)
        err = solver.error_norm(hs, ks, y, y1)
        accept, habs_next, cstate = ctrl.adapt(habs, err, solver.error_order, cstate)
        if accept:
            if hook is not None:
                _emit(hook, tab, t, hs, ys, ks)
            t, y = t + hs, y1
            k1 = ks[-1] if tab.fsal else None
            stats.steps += 1
            stats.step_sizes.append(habs)
            if on_step is not None:
                on_step(stats.steps, y)
        else:
            stats.rejected += 1
            k1 = ks[0]  # same t and y: the first slope stays valid
        habs = habs_next
        if habs < tol_t:
            raise PdenetsError(f"{solver.name}: step size underflow at t = {t:.6g}")
    return y, habs, cstate


def integrate(
    system: System,
    u0: torch.Tensor,
    T: float,
    steps: int,
    solver: Solver,
    save_times: list[float] | None = None,
    breakpoints: tuple[float, ...] = (),
    *,
    hook: StageHook | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], Stats]:
    """Integrate ``system`` from 0 to T (the forward problem; see :func:`integrate_span`).

    Fixed-step solvers take ``steps`` equal steps and save at ``save_times`` (which must lie
    on the step grid). Adaptive solvers ignore ``steps`` and stop exactly at every save time
    and control breakpoint (a fresh first slope after each stop). ``hook`` is called for
    every stage of every accepted step (:class:`Stage`).

    Returns
    -------
    (u(T), [u(t) for t in save_times], stats)
    """
    stats = Stats()
    save_times = list(save_times or [])
    saved: list[torch.Tensor] = []
    if not solver.adaptive:
        h = T / steps
        solver.check_stable(system, h)
        idx: dict[int, list[int]] = {}
        for t in save_times:
            k = round(t / h)
            if abs(k * h - t) > 1e-9 * max(T, 1.0) or k < 0 or k > steps:
                raise PdenetsError(
                    f"save time t = {t:.6g} is not on the depth grid of {steps} steps of "
                    f"h = {h:.6g} (use times k·T/steps)"
                )
            idx.setdefault(k, []).append(len(saved))
            saved.append(None)  # type: ignore[arg-type]
        # without autograd the solver may update the state in place (one private copy of u0)
        inplace = not torch.is_grad_enabled() and hook is None
        u = u0.clone() if inplace else u0
        for j in idx.get(0, []):
            saved[j] = u0

        def keep(n: int, y: torch.Tensor) -> None:
            for j in idx.get(n, []):
                saved[j] = y.clone() if inplace else y

        u, _, _ = integrate_span(system, u, 0.0, T, solver, stats, steps=steps, hook=hook,
                                 inplace=inplace, on_step=keep if idx else None)
        return u, saved, stats
    assert isinstance(solver, AdaptiveRK)
    for t in save_times:
        if not (0.0 <= t <= T):
            raise PdenetsError(f"save time t = {t:.6g} lies outside [0, T = {T}]")
    stops = sorted(set([T, *save_times, *[b for b in breakpoints if 0 < b < T]]))
    u = u0
    t = 0.0
    h0: float | None = None
    if solver.replay is None:
        h0 = solver.initial_step(system, 0.0, u0, T)
        if solver.first_step is None:
            stats.nfev += 1
    state = None
    values = {0.0: u0}
    for s in stops:
        if s > t:
            u, h0, state = integrate_span(system, u, t, s, solver, stats, h=h0, hook=hook,
                                          state=state)
            t = s
        values[s] = u
    saved = [values[t] if t in values else u0 for t in save_times]
    return u, saved, stats
