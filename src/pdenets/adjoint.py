"""Gradient strategies for the learning problem (MODEL.md §5).

Pass one of these as ``adjoint=`` to :func:`pdenets.solve` / :meth:`ContinuumNetwork.solve`
(cf. Diffrax's ``adjoint=``); ``loss.backward()`` then computes gradients of every learnable
parameter (controls, readout, learnable lifting) with the chosen method.

:class:`DiscreteAdjoint` (discretize-then-optimize)
    The exact gradient of the *discrete* objective, by reverse-mode automatic differentiation
    through the integrator (the discrete adjoint equations). Agrees with finite differences to
    rounding. Memory grows like the number of steps S; with ``checkpoint=k`` only every k-th
    state is kept and segments are recomputed in the backward pass (memory O(S/k + k)).
    For :class:`~pdenets.integrators.Dopri5` the accepted step sizes are treated as constants
    (the gradient of the map with the step sequence frozen).
:class:`ContinuousAdjoint` (optimize-then-discretize)
    Solves the costate equation of MODEL.md §5,

        −∂_t λ = (∂f/∂u)ᵀ λ,     λ(T) = ∂ℓ/∂u(T),

    backward with its own integrator, together with the state u, which is *recomputed by
    integrating the forward equation backward in time* from u(T) and re-anchored to stored
    forward values at ``checkpoints`` fixed depths (the control knots by default). The
    gradient ∫ λᵀ ∂f/∂θ dt is accumulated with the integrator's own quadrature weights (as for
    the augmented system of Pontryagin/Chen et al.). Memory is independent of the number of
    steps: O(checkpoints·B·N + K·N²). The gradient is consistent: it converges to the discrete
    gradient at the integrator's order as the steps increase. With diffusion (ε > 0) integrating
    u backward is ill-posed, so the continuous adjoint then raises; use
    ``DiscreteAdjoint(checkpoint=k)``.

References
----------
Hager (2000), Runge–Kutta methods in optimal control and the transformed adjoint system,
Numer. Math. 87. Chen, Rubanova, Bettencourt & Duvenaud (2018), Neural ordinary differential
equations. Griewank & Walther (2008), Evaluating Derivatives, ch. 12 (checkpointing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ._checks import check_positive
from .controls import _KnotSchedule
from .errors import PdenetsError
from .integrators import Dopri5, ExplicitRK, Solver, Stats, integrate


class Adjoint:
    """Base class of gradient strategies."""

    name = "adjoint"

    def config(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class DiscreteAdjoint(Adjoint):
    """Exact discrete gradient by automatic differentiation (see module docstring).

    Parameters
    ----------
    checkpoint : int, optional
        Keep the state every ``checkpoint`` steps only and recompute in between
        (fixed-step solvers).
    """

    checkpoint: int | None = None
    name = "discrete"

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            check_positive(self.checkpoint, "checkpoint", integer=True)

    def config(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class ContinuousAdjoint(Adjoint):
    """Optimize-then-discretize gradient (see module docstring).

    Parameters
    ----------
    solver : Solver, optional
        Integrator of the backward (state, costate) system; the forward solver by default.
        Explicit Runge–Kutta methods and Dopri5 are supported.
    steps : int, optional
        Backward steps for fixed-step solvers; the forward number of steps by default.
    checkpoints : int, optional
        Number of stored forward states used to re-anchor the backward state reconstruction
        (default: the number of control intervals, at least 1). Independent of the steps.
    """

    solver: Solver | None = None
    steps: int | None = None
    checkpoints: int | None = None
    name = "continuous"

    def __post_init__(self) -> None:
        if self.steps is not None:
            check_positive(self.steps, "adjoint steps", integer=True)
        if self.checkpoints is not None:
            check_positive(self.checkpoints, "adjoint checkpoints", integer=True)
        if self.solver is not None and not isinstance(self.solver, ExplicitRK):
            raise PdenetsError(
                f"continuous adjoint: solver must be an explicit Runge-Kutta method or dopri5, "
                f"got {self.solver!r}"
            )

    def config(self) -> dict:
        return {"name": self.name, "steps": self.steps, "checkpoints": self.checkpoints,
                "solver": None if self.solver is None else self.solver.config()}


ADJOINTS = {"discrete": DiscreteAdjoint, "continuous": ContinuousAdjoint}


def make_adjoint(name: str | Adjoint, **options) -> Adjoint:
    """Build a gradient strategy by name (``discrete`` or ``continuous``)."""
    if isinstance(name, Adjoint):
        return name
    from ._checks import check_choice

    return ADJOINTS[check_choice(name, ADJOINTS, "gradient strategy")](**options)


# ------------------------------------------------------------------------------------------
# discrete adjoint with checkpointing


def integrate_checkpointed(system_factory, u0, sched_tensors, T, steps, solver, k):
    """Fixed-step integration where only every k-th state is kept for the backward pass.

    ``system_factory(A, b)`` rebuilds the system from the schedule's knot tensors so that the
    recomputation inside each checkpointed segment is differentiable in them.
    """
    if solver.adaptive:
        raise PdenetsError("DiscreteAdjoint(checkpoint=...) needs a fixed-step solver")
    h = T / steps
    stats = Stats()

    def segment(u, start, n, *tensors):
        system = system_factory(*tensors)
        for j in range(n):
            u = solver.step(system, (start + j) * h, h, u, stats)
        return u

    u = u0
    start = 0
    while start < steps:
        n = min(k, steps - start)
        u = torch_checkpoint(segment, u, start, n, *sched_tensors, use_reentrant=False)
        stats.steps += n
        start += n
    return u, stats


# ------------------------------------------------------------------------------------------
# continuous adjoint


def _knot_weights(sched: _KnotSchedule, t: float, t0: float, t1: float):
    k, s = sched.index(t, t0, t1)
    return ((k, 1.0 - s),) if s == 0.0 else ((k, 1.0 - s), (k + 1, s))


class _Backward:
    """The backward (state, costate) system and the gradient quadrature."""

    def __init__(self, dynamics, sched: _KnotSchedule):
        self.dynamics, self.sched = dynamics, sched

    def stage(self, t, u, lam, t0, t1):
        """(du/dt, dλ/dt, ∂⟨λ,f⟩/∂A, ∂⟨λ,f⟩/∂b) at a stage of the backward system."""
        A, b = self.sched.at(t, t0, t1)
        du, lu, gA, gb = self.dynamics.reaction_and_vjp(u, A, b, lam)
        return du, -lu, gA, gb


def _rk_backward_step(bw, solver: ExplicitRK, t1, h, u, lam):
    """One step of the backward system from t1 to t1 − h with the RK tableau of ``solver``.

    Returns (u(t1−h), λ(t1−h), list of (t_i, h·b_i, gA_i, gb_i), (stage slopes of u, of λ)).
    """
    t0 = t1 - h
    ks_u, ks_l, contrib = [], [], []
    for i, ci in enumerate(solver.c):
        yu, yl = u, lam
        for j, aij in enumerate(solver.a[i]):
            if aij != 0.0:
                yu = yu - (h * aij) * ks_u[j]
                yl = yl - (h * aij) * ks_l[j]
        ti = t1 - ci * h
        du, dl, gA, gb = bw.stage(ti, yu, yl, t0, t1)
        ks_u.append(du)
        ks_l.append(dl)
        contrib.append((ti, gA, gb))
    b = solver.b
    new_u, new_l = u, lam
    for bi, ku, kl in zip(b, ks_u, ks_l):
        if bi != 0.0:
            new_u = new_u - (h * bi) * ku
            new_l = new_l - (h * bi) * kl
    return new_u, new_l, [(t, h * bi, gA, gb) for bi, (t, gA, gb) in zip(b, contrib)
                          if bi != 0.0], (ks_u, ks_l)


class _ContinuousAdjointFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u0, A, b, info):
        dynamics, sched_cls_args, system_factory, T, steps, solver, adj = info
        sched = _KnotSchedule(A.detach(), b.detach(), *sched_cls_args)
        with torch.no_grad():
            system = system_factory(sched)
            ncp = adj.checkpoints or max(1, getattr(sched, "intervals", 1))
            cp_times = sorted({T * j / ncp for j in range(ncp + 1)})
            if not solver.adaptive:
                h = T / steps
                cp_times = sorted({round(t / h) * h for t in cp_times})
            uT, saved, stats = integrate(system, u0.detach(), T, steps, solver, cp_times,
                                         sched.breakpoints)
        ctx.info = info
        ctx.sched = sched
        ctx.cp_times = cp_times
        ctx.stats = stats
        ctx.save_for_backward(*saved)
        return uT

    @staticmethod
    def backward(ctx, gT):
        dynamics, _, _, T, steps, solver, adj = ctx.info
        sched = ctx.sched
        saved = ctx.saved_tensors
        anchors = dict(zip(ctx.cp_times, saved))
        bsolver = adj.solver or solver
        bsteps = adj.steps or steps
        gA = torch.zeros_like(sched.A)
        gb = torch.zeros_like(sched.b)
        bw = _Backward(dynamics, sched)

        def commit(contrib, t0, t1):
            for t, w, dA, db in contrib:
                for k, s in _knot_weights(sched, t, t0, t1):
                    if s != 0.0:
                        gA[k].add_(dA, alpha=w * s)
                        gb[k].add_(db, alpha=w * s)

        with torch.no_grad():
            lam = gT.detach()
            # stop (re-anchor) at checkpoints and at control breakpoints
            stops = sorted(set(ctx.cp_times) | {b for b in sched.breakpoints if 0 < b < T}
                           | {0.0, T}, reverse=True)
            u = anchors[stops[0]] if stops[0] in anchors else None
            for t_hi, t_lo in zip(stops[:-1], stops[1:]):
                if t_hi in anchors:
                    u = anchors[t_hi]
                span = t_hi - t_lo
                if not bsolver.adaptive:
                    n = max(1, math.ceil(span / (T / bsteps) - 1e-9))
                    h = span / n
                    t = t_hi
                    for _ in range(n):
                        u, lam, contrib, _ = _rk_backward_step(bw, bsolver, t, h, u, lam)
                        commit(contrib, t - h, t)
                        t -= h
                else:
                    u, lam = _adaptive_backward(bw, bsolver, t_hi, t_lo, u, lam, commit, T)
        return lam, gA, gb, None


def _adaptive_backward(bw, solver: Dopri5, t_hi, t_lo, u, lam, commit, T):
    t = t_hi
    h = min(t_hi - t_lo, 0.05 * T)
    attempts = 0
    while t > t_lo + 1e-14 * max(1.0, T):
        h = min(h, t - t_lo)
        attempts += 1
        if attempts > solver.max_steps:
            raise PdenetsError("continuous adjoint: dopri5 exceeded max_steps")
        nu, nl, contrib, (ku, kl) = _rk_backward_step(bw, solver, t, h, u, lam)
        eu = sum((h * e) * k for e, k in zip(solver.b_err, ku) if e != 0.0)
        el = sum((h * e) * k for e, k in zip(solver.b_err, kl) if e != 0.0)
        en = max(solver._norm(eu, u, nu), solver._norm(el, lam, nl))
        fac = 0.9 * (max(en, 1e-10) ** -0.2) if math.isfinite(en) else 0.1
        if math.isfinite(en) and en <= 1.0:
            commit(contrib, t - h, t)
            u, lam, t = nu, nl, t - h
            h *= min(5.0, max(0.2, fac))
        else:
            h *= min(1.0, max(0.1, fac))
    return u, lam


def solve_with_adjoint(adjoint, dynamics, sched, grid, u0, T, steps, solver, system_factory):
    """Integrate to T with the gradient strategy ``adjoint``; returns (u(T), stats dict)."""
    if isinstance(adjoint, ContinuousAdjoint):
        if dynamics.eps > 0.0:
            raise PdenetsError(
                "continuous adjoint with diffusion (eps > 0) would integrate the state backward "
                "through the heat equation (ill-posed); use DiscreteAdjoint(checkpoint=k)"
            )
        if not isinstance(solver, ExplicitRK):
            raise PdenetsError(
                f"continuous adjoint needs an explicit Runge-Kutta forward solver, got {solver!r}"
            )
        if not isinstance(sched, _KnotSchedule):
            raise PdenetsError("continuous adjoint needs GridControls (knot-based controls)")
        info = (dynamics, (sched.T, sched.basis, sched._weights), system_factory, T, steps,
                solver, adjoint)
        uT = _ContinuousAdjointFn.apply(u0, sched.A, sched.b, info)
        return uT, {"steps": steps}
    assert isinstance(adjoint, DiscreteAdjoint)
    if adjoint.checkpoint is None:
        uT, _, stats = integrate(system_factory(sched), u0, T, steps, solver, None,
                                 sched.breakpoints)
        return uT, stats.as_dict()
    if not isinstance(sched, _KnotSchedule):
        raise PdenetsError("DiscreteAdjoint(checkpoint=...) needs GridControls")
    args = (sched.T, sched.basis, sched._weights)

    def factory(A, b):
        return system_factory(_KnotSchedule(A, b, *args))

    uT, stats = integrate_checkpointed(factory, u0, (sched.A, sched.b), T, steps, solver,
                                       adjoint.checkpoint)
    return uT, stats.as_dict()
