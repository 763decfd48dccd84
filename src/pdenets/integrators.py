"""Depth integrators for the forward problem (MODEL.md §2).

A solver advances du/dt = f(t, u) from t = 0 to T. Fixed-step explicit Runge–Kutta methods
(:class:`Euler` — which *is* the residual network —, :class:`Heun`, :class:`RK4`) take S equal
steps; :class:`Dopri5` is the adaptive Dormand–Prince 5(4) pair with error control (rtol, atol)
and reports its accepted/rejected step counts. For a diffusion term ε Δ_x u (ε > 0) the explicit
methods are stable only for h ε ρ(Δ) below their stability limit and raise
:class:`~pdenets.errors.StabilityError` otherwise; :class:`IMEXEuler` (implicit diffusion,
explicit reaction, order 1) and :class:`Strang` (exact diffusion half-steps around an explicit
reaction step, order 2) are unconditionally stable in the diffusion.

Solvers are strategy objects: pass an instance, e.g. ``solver=RK4()`` (cf. Diffrax).

References
----------
Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations I*, 2nd ed., §II.1, §II.4-5
(Runge–Kutta methods, Dormand–Prince, step-size control). Ascher, Ruuth & Wetton (1995),
implicit–explicit methods. Strang (1968), splitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._checks import check_choice, check_positive
from .errors import PdenetsError, StabilityError


class System:
    """What a solver integrates: f(t, u) = reaction(t, u) + ε L u.

    ``reaction(t, u, t0, t1)`` gets the current step [t0, t1] so that piecewise-constant
    controls are looked up on the step's own interval. ``lap`` is the Laplacian (or None).
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


class ExplicitRK(Solver):
    """Explicit Runge–Kutta method given by its Butcher tableau (a, b, c)."""

    a: tuple[tuple[float, ...], ...] = ()
    b: tuple[float, ...] = ()
    c: tuple[float, ...] = ()

    def stages(self, system: System, t0: float, h: float, u: torch.Tensor):
        """Stage values Y_i and slopes k_i = f(t0 + c_i h, Y_i) of one step."""
        t1 = t0 + h
        ks: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for i, ci in enumerate(self.c):
            y = u
            for j, aij in enumerate(self.a[i]):
                if aij != 0.0:
                    y = y + (h * aij) * ks[j]
            ys.append(y)
            ks.append(system(t0 + ci * h, y, t0, t1))
        return ys, ks

    def step(self, system, t0, h, u, stats, inplace=False):
        if inplace:
            return self._step_inplace(system, t0, h, u, stats)
        _, ks = self.stages(system, t0, h, u)
        stats.nfev += len(ks)
        out = u
        for bi, k in zip(self.b, ks):
            if bi != 0.0:
                out = out + (h * bi) * k
        return out

    def _step_inplace(self, system, t0, h, u, stats):
        t1 = t0 + h
        ks: list[torch.Tensor] = []
        for i, ci in enumerate(self.c):
            y = u
            for j, aij in enumerate(self.a[i]):
                if aij != 0.0:
                    y = torch.add(u, ks[j], alpha=h * aij) if y is u else y.add_(ks[j],
                                                                                 alpha=h * aij)
            ks.append(system(t0 + ci * h, y, t0, t1))
        stats.nfev += len(ks)
        for bi, k in zip(self.b, ks):
            if bi != 0.0:
                u.add_(k, alpha=h * bi)
        return u


class Euler(ExplicitRK):
    """Explicit Euler, order 1: u_{k+1} = u_k + h f(t_k, u_k) — exactly the ResNet of §1."""

    name, order, stability_limit = "euler", 1, 2.0
    a, b, c = ((),), (1.0,), (0.0,)

    def step(self, system, t0, h, u, stats, inplace=False):
        stats.nfev += 1
        k = system(t0, u, t0, t0 + h)
        return u.add_(k, alpha=h) if inplace else torch.add(u, k, alpha=h)


class Heun(ExplicitRK):
    """Heun's method (explicit trapezoid), order 2."""

    name, order, stability_limit = "heun", 2, 2.0
    a, b, c = ((), (1.0,)), (0.5, 0.5), (0.0, 1.0)


class RK4(ExplicitRK):
    """The classical fourth-order Runge–Kutta method."""

    name, order, stability_limit = "rk4", 4, 2.785
    a = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    b = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    c = (0.0, 0.5, 0.5, 1.0)


class Dopri5(ExplicitRK):
    """Adaptive Dormand–Prince 5(4) with local extrapolation and a PI step-size controller.

    Parameters
    ----------
    rtol, atol : float
        Relative and absolute tolerances of the mixed error norm
        ``rms(err / (atol + rtol · max(|u|, |u_new|)))``.
    max_steps : int
        Attempted-step budget; exceeding it raises :class:`PdenetsError`.
    first_step : float, optional
        Initial step; by default chosen by Hairer's heuristic.
    """

    name, order, adaptive = "dopri5", 5, True
    a = (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    )
    b = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
    b_err = (
        71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40,
    )
    c = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)

    def __init__(
        self, rtol: float = 1e-6, atol: float = 1e-8, max_steps: int = 100_000,
        first_step: float | None = None, replay: tuple[float, ...] | None = None,
    ) -> None:
        check_positive(rtol, "dopri5 rtol")
        check_positive(atol, "dopri5 atol")
        check_positive(max_steps, "dopri5 max_steps", integer=True)
        self.rtol, self.atol, self.max_steps, self.first_step = rtol, atol, max_steps, first_step
        self.replay = None if replay is None else tuple(float(h) for h in replay)

    def frozen(self, step_sizes) -> Dopri5:
        """A copy that replays the accepted ``step_sizes`` of an earlier solve (no error
        control): the map whose exact derivative the discrete adjoint computes."""
        return Dopri5(self.rtol, self.atol, self.max_steps, self.first_step, tuple(step_sizes))

    def __repr__(self) -> str:
        return f"Dopri5(rtol={self.rtol}, atol={self.atol})"

    def config(self) -> dict:
        return {"name": self.name, "rtol": self.rtol, "atol": self.atol}

    def _norm(self, e, u0, u1):
        with torch.no_grad():
            scale = self.atol + self.rtol * torch.maximum(u0.abs(), u1.abs())
            return float(torch.sqrt(torch.mean((e / scale) ** 2)))

    def attempt(self, system, t0, h, u, stats):
        """One attempted step: (u_new, error norm, stages, slopes)."""
        ys, ks = self.stages(system, t0, h, u)
        stats.nfev += len(ks)
        u1 = ys[-1]  # the 7th stage is evaluated at the 5th-order solution (FSAL)
        err = sum((h * e) * k for e, k in zip(self.b_err, ks) if e != 0.0)
        return u1, self._norm(err, u, u1), ys, ks

    def integrate_span(self, system, t_start, t_end, u, stats, h):
        """Adaptive integration over [t_start, t_end]; returns (u, last accepted h)."""
        if self.replay is not None:
            return self._replay_span(system, t_start, t_end, u, stats), h
        t = t_start
        attempts = 0
        while t < t_end - 1e-14 * max(1.0, abs(t_end)):
            h = min(h, t_end - t)
            attempts += 1
            if attempts > self.max_steps:
                raise PdenetsError(
                    f"dopri5: more than max_steps={self.max_steps} attempted steps "
                    f"(stuck at t = {t:.6g}); loosen rtol/atol or raise max_steps"
                )
            u1, en, _, _ = self.attempt(system, t, h, u, stats)
            if not math.isfinite(en):
                stats.rejected += 1
                h *= 0.1
                continue
            fac = 0.9 * (max(en, 1e-10) ** -0.2)
            if en <= 1.0:
                t += h
                u = u1
                stats.steps += 1
                stats.step_sizes.append(h)
                h *= min(5.0, max(0.2, fac))
            else:
                stats.rejected += 1
                h *= min(1.0, max(0.1, fac))
            if h < 1e-14 * max(1.0, abs(t_end)):
                raise PdenetsError(f"dopri5: step size underflow at t = {t:.6g}")
        return u, h

    def _replay_span(self, system, t_start, t_end, u, stats):
        t = t_start
        while t < t_end - 1e-14 * max(1.0, abs(t_end)):
            if stats.steps >= len(self.replay):
                raise PdenetsError("dopri5 replay: the recorded step sequence is too short")
            h = self.replay[stats.steps]
            u, _, _, _ = self.attempt(system, t, h, u, stats)
            t += h
            stats.steps += 1
            stats.step_sizes.append(h)
        return u

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


class IMEXEuler(Solver):
    """IMEX Euler: (I − h ε Δ) u_{k+1} = u_k + h R(t_k, u_k); order 1, stable for any h in ε."""

    name, order = "imex-euler", 1

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
    ``strang``); options such as ``rtol`` go to :class:`Dopri5`."""
    if isinstance(name, Solver):
        return name
    if not isinstance(name, str):
        raise PdenetsError(f"solver must be a name or a Solver, got {name!r}")
    cls = SOLVERS[check_choice(name, SOLVERS, "depth solver")]
    if kwargs and cls is not Dopri5:
        raise PdenetsError(f"solver {name!r} takes no options, got {sorted(kwargs)}")
    return cls(**kwargs)


def integrate(
    system: System,
    u0: torch.Tensor,
    T: float,
    steps: int,
    solver: Solver,
    save_times: list[float] | None = None,
    breakpoints: tuple[float, ...] = (),
) -> tuple[torch.Tensor, list[torch.Tensor], Stats]:
    """Integrate ``system`` from 0 to T.

    Fixed-step solvers take ``steps`` equal steps and save at ``save_times`` (which must lie
    on the step grid). Dopri5 ignores ``steps`` except for its first step guess and stops
    exactly at every save time and control breakpoint.

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
        idx = {}
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
        inplace = not torch.is_grad_enabled()
        u = u0.clone() if inplace else u0
        for j in idx.get(0, []):
            saved[j] = u0
        for k in range(steps):
            u = solver.step(system, k * h, h, u, stats, inplace)
            stats.steps += 1
            for j in idx.get(k + 1, []):
                saved[j] = u.clone() if inplace else u
        return u, saved, stats
    # adaptive
    assert isinstance(solver, Dopri5)
    for t in save_times:
        if not (0.0 <= t <= T):
            raise PdenetsError(f"save time t = {t:.6g} lies outside [0, T = {T}]")
    stops = sorted(set([T, *save_times, *[b for b in breakpoints if 0 < b < T]]))
    u = u0
    t = 0.0
    h = solver.initial_step(system, 0.0, u0, T)
    stats.nfev += 1
    values = {0.0: u0}
    for s in stops:
        if s > t:
            u, h = solver.integrate_span(system, t, s, u, stats, h)
            t = s
        values[s] = u
    saved = [values[t] if t in values else u0 for t in save_times]
    return u, saved, stats
