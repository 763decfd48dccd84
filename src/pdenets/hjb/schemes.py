"""Time-marching schemes of the grid HJB solver (MODEL.md §8).

A scheme advances the grid values of V one step backward in depth. :func:`pdenets.hjb.solve_hjb`
owns the march — snapshot depths, step budget, finiteness checks, statistics — and talks to the
scheme through one interface, :class:`Scheme`:

1. :meth:`Scheme.stable_dt` inspects V at the current depth t and returns a :class:`StepPlan`:
   the largest stable step, the characteristic speeds α_d it was sized with, and any work the
   step reuses (differences, Hamiltonian values);
2. the solver clips the step so that it lands on the next snapshot depth (never lengthening it);
3. :meth:`Scheme.step` returns V at t − Δt.

A scheme sees one solve through a :class:`MarchContext` (problem, grid, chunks of grid points,
the Hamiltonian minimizer, an exact speed bound where one exists, and a ``carry`` dictionary for
state kept between steps). Schemes are registered by name with :func:`register_scheme`, so
``HJBOptions(scheme="name")`` finds a new one without any edit of the solver; an instance can
also be passed directly (``HJBOptions(scheme=LaxFriedrichs())``). Kernels work on the tensors
they are given (no numpy) and allocate on V's device.

Built-in schemes
----------------
``lax-friedrichs`` (:class:`LaxFriedrichs`)
    Monotone first-order Lax–Friedrichs scheme (Crandall–Lions 1984; Osher–Shu 1991) marching
    backward in t with one-sided differences p^± (upwind stencil) and the numerical Hamiltonian
    Ĥ = H(v, (p⁻ + p⁺)/2) + Σ_d α_d (p⁺_d − p⁻_d)/2, α_d ≥ |∂H/∂p_d| = |f_d(v, θ*)|.
    α_d is the exact bound sup|σ|·|mult| for bounded activations (``Activation.sup_abs``:
    tanh, sigmoid), otherwise 1.1 × the grid maximum of |f_d| at p⁻, p⁺ and p̄. Step
    Δt = cfl / Σ_d α_d / Δv_d (CFL ≤ 1 makes the scheme monotone, hence convergent to the
    viscosity solution by Barles–Souganidis).
``semi-lagrangian`` (:class:`SemiLagrangian`)
    First-order semi-Lagrangian scheme (Falcone–Ferretti 2014)
    V(t, v) = min_θ [Δt L(θ) + I[V(t + Δt)](v + Δt f(v, θ))] with multilinear interpolation I
    (monotone for every fixed θ, unconditionally stable). The minimum is taken over the
    discrete control set {θ*(v, p⁻), θ*(v, p̄), θ*(v, p⁺)} of Hamiltonian minimizers at the
    one-sided and central discrete gradients; the value is first-order insensitive to the
    control, so the error per step is O(Δt²). Δt = cfl · min_d Δv_d / α_d with α_d = 1.1 × the
    largest |f_d| of the previous step (any cfl is stable; cfl ≈ 1 balances the O(Δt) and
    O(Δv²/Δt) errors).

The boundary of the state box uses linear extrapolation (ghost values for Lax–Friedrichs,
extrapolating interpolation for the semi-Lagrangian foot).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .._checks import check_choice
from ..errors import PdenetsError
from .grid import StateGrid
from .problem import ReducedProblem, RowSolution

#: speeds are clamped below by this value (Δt stays finite on flat value functions)
_MIN_SPEED = 1e-12
#: safety factor on measured (not a-priori bounded) characteristic speeds
_SPEED_SAFETY = 1.1


@dataclass
class MarchContext:
    """What a scheme sees of one solve; built by :func:`pdenets.hjb.solve_hjb`, one per solve.

    Attributes
    ----------
    problem : ReducedProblem
    grid : StateGrid
    cfl : float
        CFL number of the options.
    inner_points, newton_iters : int
        Options of the Hamiltonian minimization (:meth:`hamiltonian`).
    spans : list of (int, int)
        Chunks ``start:stop`` of flat grid indices processed together (bounds the memory).
    coords : list of torch.Tensor
        Grid points of each chunk, shape ``(stop − start, D)``.
    bound : torch.Tensor or None
        Exact bound of |f_d(v, θ)| over the grid and all θ (shape ``(D,)``) for bounded
        activations, else None.
    t : float
        Current depth; a step goes from t to t − Δt (maintained by the solver).
    carry : dict
        Scheme-private state kept from one step to the next within this solve.
    """

    problem: ReducedProblem
    grid: StateGrid
    cfl: float
    inner_points: int
    newton_iters: int
    spans: list[tuple[int, int]]
    coords: list[torch.Tensor]
    bound: torch.Tensor | None = None
    t: float = 0.0
    carry: dict[str, Any] = field(default_factory=dict)

    def chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, points)`` per chunk of grid points."""
        for (s, e), x in zip(self.spans, self.coords):
            yield s, e, x

    def hamiltonian(self, x: torch.Tensor, p: torch.Tensor) -> RowSolution:
        """H(x, p), its minimizer and ∂H/∂p at states ``x`` and costates ``p`` (``(M, D)``)."""
        return self.problem.minimize(x, p, self.inner_points, self.newton_iters)

    def differences(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sided differences p⁻, p⁺ of the flat grid values ``V`` (``(P,)``), each of shape
        ``(D, P)`` (linearly extrapolated ghost values at the box boundary)."""
        pm, pp = self.grid.one_sided(V.reshape(self.grid.shape))
        return pm.reshape(self.grid.D, -1), pp.reshape(self.grid.D, -1)


@dataclass
class StepPlan:
    """A scheme's assessment of V at the current depth.

    Attributes
    ----------
    dt : float
        The largest stable step (> 0); the solver may shorten it to land on a snapshot.
    speed : torch.Tensor
        Characteristic speeds α_d the step was sized with, shape ``(D,)`` (their maximum is
        reported as ``stats["max_speed"]``).
    work : dict
        Anything :meth:`Scheme.step` reuses (differences, Hamiltonian values, …).
    """

    dt: float
    speed: torch.Tensor
    work: dict[str, Any] = field(default_factory=dict)


class Scheme(ABC):
    """A time-marching scheme for ∂_t V + H(v, ∇V) = 0 backward from V(T) = Φ (module docstring).

    Subclasses set the class attribute ``name`` (the ``scheme=`` string of
    :class:`pdenets.hjb.HJBOptions`), implement :meth:`stable_dt` and :meth:`step`, may reject
    options in :meth:`check_cfl`, declare the grid-sized arrays they hold in ``grid_arrays``,
    and are made available by name with :func:`register_scheme`. A registered scheme must be
    constructible without arguments.
    """

    #: the scheme's name, as given to ``HJBOptions(scheme=...)``
    name: ClassVar[str] = ""
    #: float64 arrays of grid size held during a step besides V, its differences and the
    #: snapshots (:func:`pdenets.hjb.estimate_memory`)
    grid_arrays: ClassVar[int] = 0

    def check_cfl(self, cfl: float) -> None:  # noqa: B027 - optional hook
        """Raise :class:`PdenetsError` for a CFL number (> 0) the scheme cannot use."""

    @abstractmethod
    def stable_dt(self, ctx: MarchContext, V: torch.Tensor) -> StepPlan:
        """Assess the flat grid values ``V`` (``(P,)``) at depth ``ctx.t``: the largest stable
        step and the speeds it came from."""

    @abstractmethod
    def step(self, ctx: MarchContext, V: torch.Tensor, dt: float, plan: StepPlan) -> torch.Tensor:
        """V at depth ``ctx.t − dt`` (``dt`` ≤ ``plan.dt``) from ``V`` at ``ctx.t``."""

    def __str__(self) -> str:
        return self.name


_REGISTRY: dict[str, type[Scheme]] = {}


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: make the :class:`Scheme` subclass ``cls`` available by ``cls.name``.

    Raises
    ------
    PdenetsError
        If ``cls`` is not a concrete :class:`Scheme` subclass, has no name, or its name is
        taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Scheme)):
        raise PdenetsError(f"an HJB scheme must subclass pdenets.hjb.Scheme, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise PdenetsError(f"HJB scheme class {cls.__name__} needs a non-empty string name")
    if getattr(cls, "__abstractmethods__", None):
        raise PdenetsError(f"HJB scheme class {cls.__name__} does not implement "
                           f"{', '.join(sorted(cls.__abstractmethods__))}")
    if _REGISTRY.get(name, cls) is not cls:
        raise PdenetsError(f"HJB scheme name {name!r} is already registered "
                           f"({_REGISTRY[name].__name__})")
    _REGISTRY[name] = cls
    return cls


def scheme_names() -> tuple[str, ...]:
    """Names of the registered schemes (built-in ones first)."""
    return tuple(_REGISTRY)


def get_scheme(scheme: str | Scheme) -> Scheme:
    """The :class:`Scheme` named ``scheme`` (a new instance), or ``scheme`` itself.

    Raises
    ------
    PdenetsError
        For an unknown name (the message lists the registered ones) or another type.
    """
    if isinstance(scheme, Scheme):
        return scheme
    if not isinstance(scheme, str):
        raise PdenetsError(f"HJB scheme must be a name or a pdenets.hjb.Scheme, got {scheme!r}")
    return _REGISTRY[check_choice(scheme, _REGISTRY, "HJB scheme")]()


def _max_abs_f(speed: torch.Tensor, row: RowSolution) -> torch.Tensor:
    return torch.maximum(speed, row.f.abs().amax(0))


@register_scheme
@dataclass(frozen=True)
class LaxFriedrichs(Scheme):
    """Monotone first-order Lax–Friedrichs scheme with global dissipation α_d (module
    docstring); requires cfl ≤ 1."""

    name: ClassVar[str] = "lax-friedrichs"

    def check_cfl(self, cfl: float) -> None:
        if cfl > 1.0:
            raise PdenetsError(f"cfl = {cfl} > 1 breaks the monotonicity of the "
                               "Lax–Friedrichs scheme; use cfl <= 1")

    def stable_dt(self, ctx: MarchContext, V: torch.Tensor) -> StepPlan:
        pm, pp = ctx.differences(V)
        Hs = V.new_empty(V.shape[0])
        speed = V.new_zeros(ctx.grid.D)
        for s, e, x in ctx.chunks():
            a, b = pm[:, s:e].T, pp[:, s:e].T
            row = ctx.hamiltonian(x, 0.5 * (a + b))
            Hs[s:e] = row.H
            if ctx.bound is None:
                speed = _max_abs_f(speed, row)
                for pq in (a, b):
                    speed = _max_abs_f(speed, ctx.hamiltonian(x, pq))
        speed = ctx.bound if ctx.bound is not None else _SPEED_SAFETY * speed
        speed = torch.clamp(speed, min=_MIN_SPEED)
        dt = ctx.cfl / float((speed / ctx.grid.h).sum())
        return StepPlan(dt, speed, {"pm": pm, "pp": pp, "H": Hs})

    def step(self, ctx: MarchContext, V: torch.Tensor, dt: float, plan: StepPlan) -> torch.Tensor:
        pm, pp = plan.work["pm"], plan.work["pp"]
        diss = (0.5 * (pp - pm) * plan.speed[:, None]).sum(0)
        return V + dt * (plan.work["H"] + diss)


@register_scheme
@dataclass(frozen=True)
class SemiLagrangian(Scheme):
    """First-order semi-Lagrangian scheme over the discrete control set of Hamiltonian
    minimizers at p⁻, p̄, p⁺ (module docstring); stable for any cfl."""

    name: ClassVar[str] = "semi-lagrangian"
    grid_arrays: ClassVar[int] = 3

    def stable_dt(self, ctx: MarchContext, V: torch.Tensor) -> StepPlan:
        pm, pp = ctx.differences(V)
        speeds = ctx.carry.get("speeds")
        if speeds is None:  # first step: the speeds at the central differences
            if ctx.bound is not None:
                speeds = ctx.bound
            else:
                speeds = V.new_zeros(ctx.grid.D)
                for s, e, x in ctx.chunks():
                    speeds = _max_abs_f(speeds,
                                        ctx.hamiltonian(x, 0.5 * (pm[:, s:e] + pp[:, s:e]).T))
            ctx.carry["speeds"] = speeds
        speed = torch.clamp(_SPEED_SAFETY * speeds, min=_MIN_SPEED)
        dt = ctx.cfl * float((ctx.grid.h / speed).min())
        return StepPlan(dt, speed, {"pm": pm, "pp": pp})

    def step(self, ctx: MarchContext, V: torch.Tensor, dt: float, plan: StepPlan) -> torch.Tensor:
        pm, pp = plan.work["pm"], plan.work["pp"]
        Vn = V.new_empty(V.shape[0])
        seen = V.new_zeros(ctx.grid.D)
        for s, e, x in ctx.chunks():
            a, b = pm[:, s:e].T, pp[:, s:e].T
            best: torch.Tensor | None = None
            for pq in (0.5 * (a + b), a, b):
                r = ctx.hamiltonian(x, pq)
                seen = _max_abs_f(seen, r)
                cand = dt * r.cost + ctx.grid.interpolate(V, x + dt * r.f)
                best = cand if best is None else torch.minimum(best, cand)
            assert best is not None
            Vn[s:e] = best
        # the speeds seen in this step size the next one
        ctx.carry["speeds"] = seen if ctx.bound is None else ctx.bound
        return Vn


#: names of the built-in schemes
SCHEMES: tuple[str, ...] = scheme_names()
