"""Gradient strategies for the learning problem (MODEL.md §5).

Pass one of these as ``adjoint=`` to :func:`pdenets.solve` / :meth:`ContinuumNetwork.solve`
(cf. Diffrax's ``adjoint=``); ``loss.backward()`` then computes gradients of every learnable
parameter (controls, readout, learnable lifting) with the chosen method.

A strategy does its own work: :meth:`Adjoint.solve` receives the discretized
:class:`ForwardProblem` and the initial state and returns u(T) wired for ``backward()``. The
network calls nothing else, so a new strategy is a subclass of :class:`Adjoint` with a
``solve`` method — no change to :mod:`pdenets.network`.

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

    backward through the common Runge–Kutta core (:func:`pdenets.integrators.integrate_span`:
    same tableaus, same step-size controllers), together with the state u, which is *recomputed by
    integrating the forward equation backward in time* from u(T) and re-anchored to stored
    forward values at ``checkpoints`` fixed depths (the control knots by default). The
    gradient ∫ λᵀ ∂f/∂θ dt is accumulated by the integrator's per-stage hook with its own
    quadrature weights h b_i on accepted steps (the augmented system of Pontryagin/Chen et
    al.). Memory is independent of the number of
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

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ._checks import check_positive
from .controls import KernelSchedule
from .errors import PdenetsError
from .integrators import (
    ExplicitRK,
    Solver,
    Stage,
    Stats,
    System,
    integrate,
    integrate_span,
    stage_times,
)

if TYPE_CHECKING:
    from .dynamics import Dynamics
    from .quadrature import Grid


@dataclass(frozen=True)
class ForwardProblem:
    """The discretized forward problem of MODEL.md §1–2 that a gradient strategy solves.

    Attributes
    ----------
    dynamics : Dynamics
    schedule : KernelSchedule
        The controls evaluated on ``grid`` (``controls.discretize(grid)``).
    grid : Grid
    T : float
    steps : int
        Number of (fixed) depth steps; the first-step guess of adaptive solvers.
    solver : Solver
    """

    dynamics: Dynamics
    schedule: KernelSchedule
    grid: Grid
    T: float
    steps: int
    solver: Solver

    def system(self, schedule: KernelSchedule | None = None) -> System:
        """The semi-discrete right-hand side (for ``schedule``, by default the problem's)."""
        return self.dynamics.system(self.schedule if schedule is None else schedule, self.grid)

    def stage_schedule(self, schedule: KernelSchedule | None = None,
                       chunk: int | None = None) -> KernelSchedule:
        """The schedule (by default the problem's) with the controls of every stage of the
        fixed-step forward solve evaluated in one batch (:func:`stage_times`,
        :meth:`KernelSchedule.batched <pdenets.controls.KernelSchedule.batched>`); adaptive
        solvers get the schedule itself (their stages are not known in advance)."""
        sched = self.schedule if schedule is None else schedule
        stages = stage_times(self.solver, 0.0, self.T, self.steps)
        return sched.batched(stages, chunk) if stages else sched


class Adjoint:
    """Base class of gradient strategies: subclasses implement :meth:`solve`."""

    name = "adjoint"

    def config(self) -> dict:
        return {"name": self.name}

    def solve(self, problem: ForwardProblem, u0: torch.Tensor, save_times=()
              ) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
        """Integrate ``problem`` from ``u0`` to T so that ``backward()`` through the returned
        u(T) uses this strategy.

        Returns
        -------
        (u(T), [u(t) for t in save_times], stats dict)
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement solve()")

    def _no_saveat(self, save_times) -> None:
        if save_times:
            raise PdenetsError(f"saveat cannot be combined with adjoint={self!r}")


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

    def solve(self, problem, u0, save_times=()):
        if self.checkpoint is None:
            system = problem.system(problem.stage_schedule())
            uT, saved, st = integrate(system, u0, problem.T, problem.steps,
                                      problem.solver, list(save_times),
                                      problem.schedule.breakpoints)
            return uT, saved, {**st.as_dict(), "step_sizes": st.step_sizes}
        self._no_saveat(save_times)
        sched = problem.schedule
        if not callable(getattr(sched, "with_knot_tensors", None)):
            raise PdenetsError("DiscreteAdjoint(checkpoint=...) needs knot-based controls "
                               "(GridControls or KernelControls)")

        def factory(*tensors):
            return problem.system(sched.with_knot_tensors(*tensors))

        uT, st = integrate_checkpointed(factory, u0, sched.knot_tensors(), problem.T,
                                        problem.steps, problem.solver, self.checkpoint)
        return uT, [], st.as_dict()


@dataclass(frozen=True)
class ContinuousAdjoint(Adjoint):
    """Optimize-then-discretize gradient (see module docstring).

    Parameters
    ----------
    solver : Solver, optional
        Integrator of the backward (state, costate) system; the forward solver by default.
        Explicit Runge–Kutta methods and adaptive ones (Dopri5, with its step-size
        controller) are supported.
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

    def solve(self, problem, u0, save_times=()):
        self._no_saveat(save_times)
        if problem.dynamics.eps > 0.0:
            raise PdenetsError(
                "continuous adjoint with diffusion (eps > 0) would integrate the state backward "
                "through the heat equation (ill-posed); use DiscreteAdjoint(checkpoint=k)"
            )
        if not isinstance(problem.solver, ExplicitRK):
            raise PdenetsError(
                f"continuous adjoint needs an explicit Runge-Kutta forward solver, got "
                f"{problem.solver!r}"
            )
        sched = problem.schedule
        if not callable(getattr(sched, "with_knot_tensors", None)):
            raise PdenetsError("continuous adjoint needs knot-based controls (GridControls or "
                               "KernelControls)")
        stats: dict = {}
        outs = _ContinuousAdjointFn.apply(u0, (problem, self, stats), *sched.knot_tensors())
        return outs[0], [], stats


ADJOINTS = {"discrete": DiscreteAdjoint, "continuous": ContinuousAdjoint}


def make_adjoint(name: str | Adjoint, **options) -> Adjoint:
    """Build a gradient strategy by name (``discrete`` or ``continuous``)."""
    if isinstance(name, Adjoint):
        return name
    from ._checks import check_choice

    return ADJOINTS[check_choice(name, ADJOINTS, "gradient strategy")](**options)


def solve_with_adjoint(adjoint, dynamics, sched, grid, u0, T, steps, solver,
                       system_factory=None):
    """Compatibility wrapper: ``adjoint.solve(ForwardProblem(...), u0)`` → (u(T), stats)."""
    uT, _, stats = adjoint.solve(ForwardProblem(dynamics, sched, grid, T, steps, solver), u0)
    return uT, stats


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


def _knot_weights(sched, t: float, t0: float, t1: float):
    k, s = sched.index(t, t0, t1)
    return ((k, 1.0 - s),) if s == 0.0 else ((k, 1.0 - s), (k + 1, s))


class _Backward:
    """The backward (state, costate) system y = (u, λ): dy/dt = (f(u), −(∂f/∂u)ᵀλ), with the
    integrand ∂⟨λ,f⟩/∂(A, b) of the gradient as auxiliary slope components. For a structured
    kernel (MODEL.md §10) A is an operator and the integrand has one component per operator
    tensor; the costate equation then applies the transposed operator (for a convolution the
    correlation with k(−z))."""

    def __init__(self, dynamics, sched):
        self.dynamics, self.sched = dynamics, sched

    def __call__(self, t, y, lo, hi):
        u, lam = y
        A, b = self.sched.at(t, lo, hi)
        du, lu, gA, gb = self.dynamics.reaction_and_vjp(u, A, b, lam)
        if isinstance(gA, tuple):
            return (du, -lu, *gA, gb)
        return du, -lu, gA, gb


#: stages batched at once by the continuous adjoint (controls, gradient accumulation). Its memory
#: must not depend on the number of steps (tests/test_gallery.py::test_adjoint_memory): measured
#: on the gallery's B = N = 32 problem, chunks of 16 (4) stages raised the peak from 0.139 MiB
#: to 0.17-0.32 (0.14-0.18) MiB, growing with S; 1 keeps it flat, so the sweeps stay per stage
#: (the chunked machinery is kept: on a GPU a larger chunk trades memory for launches)
_CHUNK = 1


def _checkpoint_times(problem: ForwardProblem, adj: ContinuousAdjoint, sched) -> list[float]:
    """Depths of the stored forward states (on the step grid for fixed-step solvers)."""
    T = problem.T
    ncp = adj.checkpoints or max(1, getattr(sched, "intervals", 1))
    cp_times = sorted({T * j / ncp for j in range(ncp + 1)})
    if not problem.solver.adaptive:
        h = T / problem.steps
        cp_times = sorted({round(t / h) * h for t in cp_times})
    return cp_times


class _ContinuousAdjointFn(torch.autograd.Function):
    """u(T) with the continuous adjoint as its backward pass.

    ``forward``/``setup_context`` are separate (composable with :mod:`torch.func`, e.g.
    ``torch.func.grad``): the stored forward states are returned as extra, non-differentiable
    outputs and saved from there; the knot tensors are saved as inputs."""

    @staticmethod
    def forward(u0, info, *tensors):
        problem, adj, out_stats = info
        T, steps, solver = problem.T, problem.steps, problem.solver
        sched = problem.schedule.with_knot_tensors(*(x.detach() for x in tensors))
        with torch.no_grad():
            system = problem.system(problem.stage_schedule(sched, _CHUNK))
            cp_times = _checkpoint_times(problem, adj, sched)
            u0d = u0.detach()
            uT, saved, stats = integrate(system, u0d, T, steps, solver, cp_times,
                                         sched.breakpoints)
            # the outputs are distinct tensors that alias no input (nor each other)
            seen = {id(u0d), id(uT)}
            distinct = []
            for x in saved:
                distinct.append(x.clone() if id(x) in seen else x)
                seen.add(id(x))
            saved = distinct
        out_stats.update({**stats.as_dict(), "step_sizes": stats.step_sizes})
        return (uT, *saved)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, info, *tensors = inputs
        ctx.info = info
        ctx.n_knots = len(tensors)
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*tensors, *output[1:])

    @staticmethod
    def backward(ctx, gT, *_):
        problem, adj, _stats = ctx.info
        T = problem.T
        saved = ctx.saved_tensors
        knots, anchors_t = saved[:ctx.n_knots], saved[ctx.n_knots:]
        sched = problem.schedule.with_knot_tensors(*(x.detach() for x in knots))
        cp_times = _checkpoint_times(problem, adj, sched)
        anchors = dict(zip(cp_times, anchors_t))
        bsolver = adj.solver or problem.solver
        if getattr(bsolver, "replay", None) is not None:  # a frozen forward step sequence
            bsolver = copy.copy(bsolver)
            bsolver.replay = None
        bsteps = adj.steps or problem.steps
        grads = [torch.zeros_like(x) for x in sched.knot_tensors()]
        K = grads[-1].shape[0]
        stats = Stats()
        # stop (re-anchor) at checkpoints and at control breakpoints
        stops = sorted(set(cp_times) | {b for b in sched.breakpoints if 0 < b < T}
                       | {0.0, T}, reverse=True)
        spans = []
        for t_hi, t_lo in zip(stops[:-1], stops[1:]):
            span = t_hi - t_lo
            n = max(1, math.ceil(span / (T / bsteps) - 1e-9)) if not bsolver.adaptive else 0
            spans.append((t_hi, t_lo, n))
        # the controls of every backward stage in one batch (fixed-step backward solvers)
        stages = [st for t_hi, t_lo, n in spans if n
                  for st in stage_times(bsolver, t_hi, t_lo, n)]
        bw = _Backward(problem.dynamics, sched.batched(stages, _CHUNK) if stages else sched)
        rows: list[list[float]] = []
        parts: list[list[torch.Tensor]] = [[] for _ in grads]

        def commit(stage: Stage) -> None:
            # the step runs backward (weight h b_i < 0): ∫ λᵀ ∂f/∂θ dt gains |h| b_i · integrand
            if stage.weight == 0.0:
                return
            row = [0.0] * K
            for k, s in _knot_weights(sched, stage.t, stage.lo, stage.hi):
                row[k] += -stage.weight * s
            rows.append(row)
            for lst, d in zip(parts, stage.k[2:]):
                lst.append(d)
            if len(rows) >= _CHUNK:
                flush()

        def flush() -> None:
            # Σ_stages (knot weight × quadrature weight) · integrand: one contraction per
            # knot tensor for all stages of a span
            if not rows:
                return
            dev = grads[0].device
            W = torch.tensor(rows, dtype=torch.float64, pin_memory=dev.type == "cuda")
            W = W.to(dev, non_blocking=True)  # from pinned memory: no synchronization
            for g, lst in zip(grads, parts):
                g.add_(torch.tensordot(W.T.to(g.dtype), torch.stack(lst), 1))
                lst.clear()
            rows.clear()

        with torch.no_grad():
            lam = gT.detach()
            u = anchors.get(stops[0])
            for t_hi, t_lo, n in spans:
                if t_hi in anchors:
                    u = anchors[t_hi]
                span = t_hi - t_lo
                if not bsolver.adaptive:
                    (u, lam), _, _ = integrate_span(bw, (u, lam), t_hi, t_lo, bsolver, stats,
                                                    steps=n, hook=commit)
                else:
                    (u, lam), _, _ = integrate_span(bw, (u, lam), t_hi, t_lo, bsolver, stats,
                                                    h=min(span, 0.05 * T), hook=commit)
                flush()
        return (lam, None, *grads)
