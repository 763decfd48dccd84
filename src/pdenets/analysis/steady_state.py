"""Steady states of weight-tied networks and their stability (MODEL.md §1, Liu–Markowich).

For time-independent controls (w, b) the forward problem is autonomous, ∂_t u = f(u), and its
large-time behaviour is governed by the steady states f(u*) = 0:

=============  ========================================  ==============================
dynamics       steady-state equation                      linearization f'(u*)
=============  ========================================  ==============================
standard       σ(∫ w u* dy + b) + ε Δu* = 0               diag(σ'(z*)) A + ε Δ
field          ∫ w σ(u*) dy + b + ε Δu* = 0               A diag(σ'(u*)) + ε Δ
selection      u* · σ(∫ w u* dy + b) + ε Δu* = 0          diag(σ(z*)) + diag(u* σ'(z*)) A + ε Δ
=============  ========================================  ==============================

(z* = A u* + b, A the discretized integral operator ``A[i, j] = w(x_i, x_j) ω_j``, Δ the
Neumann Laplacian of the width grid.) :func:`find_steady_state` solves the discretized equation
by a damped Newton method with the Jacobian from :func:`torch.func.jacrev` (least-squares
steps, so that continua of steady states — singular Jacobians — are handled);
:func:`linearization` returns f'(u*) and :func:`analyze_steady_state` its spectrum, the verdict

* max Re λ < −tol: **asymptotically stable** (linearized stability principle),
* max Re λ > tol: **unstable**,
* otherwise **marginal** (the linearization does not decide),

and a large-time simulation of the forward problem with the controls frozen, started at small
random perturbations of u*, whose distance ‖u(t) − u*‖_ω confirms or refutes the verdict.
Time-dependent controls can be analysed frozen at a chosen depth t (``depth=t``): the steady
states of the weight-tied network built from the layer at depth t.

Channels (MODEL.md §10): with C channels the state is u ∈ R^{C·N} (channel-major, entry
c·N + i is u_c(x_i)), A is the (C·N) × (C·N) block operator of any kernel family (as its dense
matrix), Δ acts on each channel, and ‖·‖_ω is the quadrature norm summed over the channels;
the Newton solve, the (C·N) × (C·N) linearization and its spectrum, and the confirming
simulation are the same as for C = 1. Everything is dense in C·N, so C·N is limited to
:data:`MAX_STATE` (a clear error above it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .._checks import check_positive
from .._laplacian import laplacian_for
from ..controls import Controls, KernelSchedule
from ..dynamics import ChannelLaplacian
from ..errors import PdenetsError
from ..integrators import RK4
from ..quadrature import Grid
from .stability import weighted_norm

VERDICTS = ("asymptotically stable", "unstable", "marginal", "no steady state found")

#: largest state dimension C·N of the dense steady-state analysis (an (C·N)² Jacobian per
#: Newton step and a dense eigen-decomposition)
MAX_STATE = 8192


def _channels(controls) -> int:
    return int(getattr(controls, "channels", 1))


def _state_size(controls, grid: Grid) -> int:
    """C·N, checked against :data:`MAX_STATE`."""
    C = _channels(controls)
    n = C * grid.n
    if n > MAX_STATE:
        what = f"{C} channels × {grid.n} nodes" if C > 1 else f"{grid.n} nodes"
        raise PdenetsError(
            f"the steady-state analysis is dense in the state dimension C·N = {n} ({what}); "
            f"at most {MAX_STATE} is supported — use a coarser width (model.width)")
    return n


def _wide_weights(grid: Grid, channels: int) -> torch.Tensor:
    """The quadrature weights repeated over the channels (the norm ‖·‖_ω of R^{C·N})."""
    return grid.weights.repeat(channels)


class _ConstantSchedule(KernelSchedule):
    time_dependent = False  # read by the Gronwall integral (stability.operator_norm_integral)

    def __init__(self, A: torch.Tensor, b: torch.Tensor, weights: torch.Tensor,
                 channels: int = 1) -> None:
        self.A, self.b, self._weights = A, b, weights
        self.channels = channels  # read by Dynamics.system (per-channel Laplacian)

    def at(self, t, t0, t1):
        return self.A, self.b


class FrozenControls(Controls):
    """Time-independent controls given by their discretization ``(A, b)`` on one grid.

    Used to run the autonomous (weight-tied) system over an arbitrary horizon ``T``. With
    ``channels`` C, A is ``(C·N, C·N)`` and b ``(C·N,)`` (channel-major).
    """

    def __init__(self, A: torch.Tensor, b: torch.Tensor, grid: Grid, T: float,
                 channels: int = 1) -> None:
        super().__init__()
        check_positive(T, "T")
        self.A, self.b, self._grid, self.T, self.dim = A.detach(), b.detach(), grid, float(T), \
            grid.dim
        self.channels = int(channels)
        n = self.channels * grid.n
        if tuple(self.A.shape) != (n, n) or tuple(self.b.shape) != (n,):
            raise PdenetsError(f"frozen controls: A {tuple(self.A.shape)} and b "
                               f"{tuple(self.b.shape)} do not match {self.channels} channel(s) "
                               f"× {grid.n} nodes")

    def discretize(self, grid: Grid) -> KernelSchedule:
        if grid.n != self._grid.n or not torch.equal(grid.nodes, self._grid.nodes):
            raise PdenetsError("frozen controls can only be evaluated on the grid they came from")
        return _ConstantSchedule(self.A, self.b, _wide_weights(grid, self.channels),
                                 self.channels)


def _as_matrix(A) -> torch.Tensor:
    """A dense matrix, or a structured kernel operator (MODEL.md §10) as its dense matrix: the
    steady-state analysis (Newton, the spectrum of the C·N × C·N linearization) is dense
    anyway."""
    if isinstance(A, torch.Tensor):
        return A.detach()
    return A.matrix().detach()


def frozen_operator(controls: Controls, grid: Grid, depth: float | None = None,
                    rtol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, b)`` of time-independent controls on ``grid``: ``(C·N, C·N)`` and ``(C·N,)`` with
    C channels.

    With ``depth=None`` the controls must not depend on t (checked at the depths of their
    knots / a few sample depths; raises :class:`PdenetsError` otherwise); with ``depth=t`` the
    controls are frozen at depth t.
    """
    _state_size(controls, grid)
    T = float(controls.T)
    sched = controls.discretize(grid)
    with torch.no_grad():
        if depth is not None:
            if not 0.0 <= float(depth) <= T:
                raise PdenetsError(f"depth {depth} lies outside [0, T = {T}]")
            t = float(depth)
            A, b = sched.at(t, t, t)
            return _as_matrix(A).clone(), b.detach().clone()
        samples = [T * s for s in (0.0, 0.13, 0.37, 0.5, 0.71, 0.94, 1.0)]
        bps = list(getattr(sched, "breakpoints", ()))
        samples += [max(0.0, p - 1e-9 * T) for p in bps] + [min(T, p + 1e-9 * T) for p in bps]
        A0, b0 = sched.at(samples[0], samples[0], samples[0])
        A0, b0 = _as_matrix(A0).clone(), b0.detach().clone()
        scale = max(float(A0.abs().max()), float(b0.abs().max()), 1e-300)
        for t in samples[1:]:
            A, b = sched.at(t, max(0.0, t - 1e-9 * T), min(T, t + 1e-9 * T))
            A = _as_matrix(A)
            diff = max(float((A - A0).abs().max()), float((b - b0).abs().max()))
            if diff > rtol * scale:
                raise PdenetsError(
                    f"the controls depend on depth (they change by {diff:.3g} between t = 0 and "
                    f"t = {t:.3g}); steady states need time-independent controls — freeze them "
                    f"at a depth (depth=t, CLI --depth)"
                )
    return A0, b0


def _rhs(dynamics, grid: Grid, channels: int = 1):
    lap: object | None = laplacian_for(grid) if dynamics.eps > 0.0 else None
    if lap is not None and channels > 1:
        lap = ChannelLaplacian(lap, channels)

    def f(u: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = dynamics.steady_state_residual(u[None, :], A, b)[0]
        if lap is not None:
            out = out + dynamics.eps * lap(u[None, :])[0]  # type: ignore[operator]
        return out

    return f


def linearization(dynamics, A: torch.Tensor, b: torch.Tensor, u: torch.Tensor,
                  grid: Grid, channels: int = 1) -> torch.Tensor:
    """Jacobian f'(u) (C·N × C·N) of the full right-hand side (reaction + ε Δ per channel) at
    ``u``, by :func:`torch.func.jacrev` (see the module table for its closed forms)."""
    from torch.func import jacrev

    f = _rhs(dynamics, grid, channels)
    with torch.no_grad():
        return jacrev(lambda v: f(v, A, b))(u.detach())


@dataclass
class NewtonResult:
    """Outcome of :func:`find_steady_state`."""

    u: torch.Tensor
    residual: float
    iterations: int
    converged: bool
    history: list[float]


def find_steady_state(
    controls: Controls, dynamics, grid: Grid, u_init: torch.Tensor | None = None, *,
    depth: float | None = None, tol: float = 1e-11, max_iter: int = 60,
) -> NewtonResult:
    """Solve f(u*) = 0 by damped Newton (least-squares steps, backtracking on ‖f‖_ω).

    Parameters
    ----------
    controls : Controls
        Time-independent controls (or frozen at ``depth``).
    dynamics : Dynamics
    grid : Grid
        The width grid of the discretized equation.
    u_init : torch.Tensor, optional
        Initial guess, shape ``(C·N,)`` with C channels (default zeros).
    tol : float
        Converged when ‖f(u)‖_ω ≤ tol (Newton continues while it still reduces ‖f‖).
    max_iter : int

    Returns
    -------
    NewtonResult
    """
    from torch.func import jacrev

    A, b = frozen_operator(controls, grid, depth)
    C = _channels(controls)
    n = C * grid.n
    f = _rhs(dynamics, grid, C)
    u = torch.zeros(n, dtype=grid.dtype, device=grid.device) if u_init is None else \
        torch.as_tensor(u_init, dtype=grid.dtype, device=grid.device).reshape(-1).clone()
    if u.shape != (n,):
        raise PdenetsError(f"initial guess has {u.numel()} values; the grid has {grid.n} nodes"
                           + (f" and the state {C} channels ({n} values)" if C > 1 else ""))
    w = _wide_weights(grid, C)
    with torch.no_grad():
        F = f(u, A, b)
        r = float(weighted_norm(F, w))
        hist = [r]
        it = 0
        polish = 1e-15 * max(1.0, float(weighted_norm(F, w)))
        for it in range(1, max_iter + 1):  # noqa: B007
            # iterate past ``tol`` down to rounding level (stops when no step reduces ‖f‖),
            # so that distances to u* in the confirming simulation are not floored by it
            if r <= polish:
                it -= 1
                break
            Jm = jacrev(lambda v: f(v, A, b))(u)
            step = torch.linalg.lstsq(Jm, -F[:, None], driver="gelsd").solution[:, 0]
            lam, accepted = 1.0, False
            while lam >= 1e-8:
                un = u + lam * step
                Fn = f(un, A, b)
                rn = float(weighted_norm(Fn, w))
                if math.isfinite(rn) and rn < (1 - 1e-4 * lam) * r:
                    accepted = True
                    break
                lam *= 0.5
            if not accepted:
                break
            u, F, r = un, Fn, rn
            hist.append(r)
    return NewtonResult(u, r, it, r <= tol, hist)


@dataclass
class Simulation:
    """Large-time forward solve from perturbations of u* (distance ‖u(t) − u*‖_ω, max over
    the perturbations)."""

    horizon: float
    steps: int
    times: list[float]
    distances: list[float]
    observed_rate: float | None
    verdict: str


@dataclass
class SteadyStateReport:
    """Steady state, spectrum of the linearization, verdicts (see :func:`analyze_steady_state`)."""

    residual: float
    newton_iterations: int
    converged: bool
    u_norm: float
    eigenvalues_real: list[float]
    eigenvalues_imag: list[float]
    max_real: float
    tol: float
    verdict: str
    simulation: Simulation | None
    agrees: bool | None
    u: torch.Tensor = field(repr=False, default=None)  # type: ignore[assignment]
    nodes: torch.Tensor = field(repr=False, default=None)  # type: ignore[assignment]
    channels: int = 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d["u"] = [float(x) for x in self.u]
        d.pop("nodes", None)
        return d


def _verdict(max_real: float, tol: float) -> str:
    if max_real < -tol:
        return "asymptotically stable"
    if max_real > tol:
        return "unstable"
    return "marginal"


def simulate_near(
    controls: Controls, dynamics, grid: Grid, u_star: torch.Tensor, *, depth: float | None = None,
    horizon: float = 20.0, perturbation: float = 1e-6, samples: int = 4, seed: int = 0,
    rate_hint: float | None = None, saves: int = 101, max_steps: int = 200_000,
    solver=None,
) -> Simulation:
    """Solve the autonomous forward problem over [0, ``horizon``] from u* + δ (``samples``
    random δ of ω-norm ``perturbation``) and record max ‖u(t) − u*‖_ω.

    The number of RK4 steps keeps h · ρ(f'(u*)) within the explicit stability region
    (``rate_hint`` = spectral radius of the linearization). The simulation verdict is
    ``decays`` (final distance < ½ initial), ``grows`` (> 2 × initial) or ``stays``;
    ``observed_rate`` is the log-slope of the distance over the last third of the saved points
    that are still in the linear regime (distance ≤ 10⁻³ max(1, ‖u*‖_ω)), to compare with
    max Re λ.
    """
    from ..network import Discretization, solve

    check_positive(horizon, "horizon")
    A, b = frozen_operator(controls, grid, depth)
    C = _channels(controls)
    w = _wide_weights(grid, C)
    frozen = FrozenControls(A, b, grid, horizon, C)
    rho = max(float(rate_hint or 0.0), 1e-12)
    if dynamics.eps > 0:
        rho = max(rho, dynamics.eps * laplacian_for(grid).spectral_radius)
    h = min(0.05, 2.0 / rho)
    steps = int(min(max_steps, max(saves - 1, math.ceil(horizon / h))))
    steps = int(math.ceil(steps / (saves - 1)) * (saves - 1))
    if steps > max_steps:
        raise PdenetsError(f"the simulation would need {steps} steps; shorten the horizon")
    disc = Discretization(grid_rule(grid), solver or RK4(), steps)
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(samples, C * grid.n, generator=gen, dtype=torch.float64).to(grid.dtype)
    d = d / weighted_norm(d, w)[:, None] * perturbation
    u0 = u_star[None, :] + d
    ts = [k * horizon / (saves - 1) for k in range(saves)]
    with torch.no_grad():
        sol = solve(frozen, u0, dynamics, disc, saveat=ts, grid=grid)
        assert sol.us is not None, "solve with saveat returns the saved states"
        dist = weighted_norm(sol.us - u_star[None, None, :], w).max(1).values
    dist_l = [float(x) if math.isfinite(float(x)) else math.inf for x in dist]
    d0, dT = dist_l[0], dist_l[-1]
    verdict = "decays" if dT < 0.5 * d0 else ("grows" if dT > 2.0 * d0 else "stays")
    # log-distance slope over the last third of the saved points still in the linear regime
    # (distance ≤ 1e-3 max(1, ‖u*‖)), where the slowest-decaying / fastest-growing mode dominates
    cap = 1e-3 * max(1.0, float(weighted_norm(u_star, w)))
    lin = [(t, x) for t, x in zip(ts, dist_l) if 1e-300 < x <= cap]
    lin = lin[len(lin) - max(2, len(lin) // 3):] if len(lin) >= 2 else []
    rate = None
    if len(lin) >= 2:
        tt = torch.tensor([p[0] for p in lin], dtype=torch.float64)
        ll = torch.log(torch.tensor([p[1] for p in lin], dtype=torch.float64))
        tc = tt - tt.mean()
        rate = float((tc * (ll - ll.mean())).sum() / (tc * tc).sum())
    return Simulation(float(horizon), steps, ts, dist_l, rate, verdict)


def grid_rule(grid: Grid):
    """A quadrature rule of ``grid``'s kind and size, to label a :class:`Discretization`
    (the simulation passes ``grid`` itself to :func:`~pdenets.network.solve`)."""
    from ..quadrature import Midpoint, make_rule

    if grid.shape is None:
        return Midpoint(2, grid.dim)
    return make_rule(grid.rule, tuple(grid.shape), grid.dim)


def analyze_steady_state(
    controls: Controls, dynamics, grid: Grid, u_init: torch.Tensor | None = None, *,
    depth: float | None = None, tol: float | None = None, newton_tol: float = 1e-11,
    horizon: float | None = 20.0, perturbation: float = 1e-6, seed: int = 0,
) -> SteadyStateReport:
    """Steady state, linearized spectrum, stability verdict and confirming simulation.

    Parameters
    ----------
    controls, dynamics, grid
        The (time-independent, or frozen at ``depth``) model on a width grid.
    u_init : torch.Tensor, optional
        Newton initial guess (default zeros).
    tol : float, optional
        Threshold on max Re λ for the verdict; default ``1e-8 · max(1, ρ)`` with ρ the
        spectral radius of f'(u*).
    horizon : float or None
        Depth of the confirming simulation (None: skip it).
    perturbation : float
        ω-norm of the initial perturbations of u*.

    Returns
    -------
    SteadyStateReport
        ``verdict`` is ``no steady state found`` (and nothing else is computed) when Newton
        does not reach ``newton_tol`` from ``u_init`` — e.g. for σ(Au + b) = 0 with b outside
        the range of a low-rank A. ``agrees`` is True when the simulation decays for an
        asymptotically stable verdict or grows for an unstable one (None for a marginal
        verdict or without simulation).
    """
    nr = find_steady_state(controls, dynamics, grid, u_init, depth=depth, tol=newton_tol)
    C = _channels(controls)
    w = _wide_weights(grid, C)
    if not nr.converged:
        return SteadyStateReport(
            nr.residual, nr.iterations, False, float(weighted_norm(nr.u, w)), [], [],
            math.nan, math.nan, "no steady state found", None, None, nr.u, grid.nodes, C)
    A, b = frozen_operator(controls, grid, depth)
    Jm = linearization(dynamics, A, b, nr.u, grid, C)
    lam = torch.linalg.eigvals(Jm)
    order = torch.argsort(lam.real, descending=True)
    lam = lam[order]
    rho = float(lam.abs().max()) if lam.numel() else 0.0
    if tol is None:
        tol = 1e-8 * max(1.0, rho)
    max_real = float(lam.real[0])
    verdict = _verdict(max_real, tol)
    sim, agrees = None, None
    if horizon is not None:
        sim = simulate_near(controls, dynamics, grid, nr.u, depth=depth, horizon=horizon,
                            perturbation=perturbation, seed=seed, rate_hint=rho)
        if verdict == "asymptotically stable":
            agrees = sim.verdict == "decays"
        elif verdict == "unstable":
            agrees = sim.verdict == "grows"
    return SteadyStateReport(
        nr.residual, nr.iterations, nr.converged, float(weighted_norm(nr.u, w)),
        [float(x) for x in lam.real], [float(x) for x in lam.imag], max_real, float(tol),
        verdict, sim, agrees, nr.u, grid.nodes, C,
    )


def plot_steady_state(report: SteadyStateReport, path) -> None:
    """u*, the spectrum of f'(u*) in the complex plane and ‖u(t) − u*‖ over the simulation."""
    import numpy as np

    from ..plotting import plt, save_figure

    n = 3 if report.simulation is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8))
    if not report.eigenvalues_real:
        axes[1].text(0.5, 0.5, report.verdict, ha="center", transform=axes[1].transAxes)
    ax = axes[0]
    nodes = report.nodes.cpu().numpy()
    C = max(1, int(report.channels))
    us = report.u.cpu().numpy().reshape(C, -1)
    for c, u in enumerate(us):
        lab = f"channel {c}" if C > 1 else None
        if nodes.shape[1] == 1:
            o = np.argsort(nodes[:, 0])
            ax.plot(nodes[o, 0], u[o], "-", label=lab)
            ax.set_xlabel("x")
        else:
            ax.plot(u, ".", label=lab)
            ax.set_xlabel("node index")
    if 1 < C <= 8:
        ax.legend(fontsize=7)
    ax.set_title(f"steady state u* (residual {report.residual:.2e})", fontsize=9)
    ax = axes[1]
    ax.plot(report.eigenvalues_real, report.eigenvalues_imag, "x")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.set_title(f"spectrum of f'(u*): {report.verdict}", fontsize=9)
    if report.simulation is not None:
        ax = axes[2]
        s = report.simulation
        ax.semilogy(s.times, [max(d, 1e-300) for d in s.distances], "-")
        d0 = s.distances[0]
        t = np.asarray(s.times)
        ax.semilogy(t, d0 * np.exp(np.clip(report.max_real * t, -700, 700)), "--",
                    label="e^{max Re λ · t} ‖δ‖")
        ax.set_xlabel("t")
        ax.set_ylabel("max ‖u(t) − u*‖_ω")
        ax.set_title(f"simulation: {s.verdict}", fontsize=9)
        ax.legend(fontsize=8)
    save_figure(fig, path)
