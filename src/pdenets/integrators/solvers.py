"""Explicit Runge–Kutta solvers (MODEL.md §2): fixed-step Euler/Heun/RK4, any checked tableau,
adaptive embedded pairs (Dormand–Prince 5(4)), and the solver registry."""

from __future__ import annotations

import copy

import torch

from .._checks import check_choice, check_positive
from ..errors import PdenetsError
from .controllers import IController, StepSizeController, make_controller
from .core import Solver, Stats, System
from .rk import _rk_step_inplace, rk_step
from .splitting import IMEXEuler, Strang
from .tableau import DOPRI5_TABLEAU, EULER_TABLEAU, HEUN_TABLEAU, RK4_TABLEAU, ButcherTableau


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
