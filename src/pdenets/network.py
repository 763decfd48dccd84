"""The continuum network and its forward solve (MODEL.md §1–3).

:func:`solve` integrates the forward problem

    ∂_t u = f(u; w(t), b(t)),   u(·, 0) = u0,   t ∈ (0, T]

for given controls, dynamics and discretization; :class:`ContinuumNetwork` adds the input lifting
E and the readout R, and is the object users train, save and run at any resolution::

    net = ContinuumNetwork.create(input_shape=(8, 8), outputs=10)
    disc = Discretization(Midpoint(8, dim=2), RK4(), steps=8)
    logits = net(images, disc)                 # (B, 10)
    sol = net.solve(images, Discretization(Midpoint(32, dim=2), RK4(), 32), saveat=[0.5, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._checks import check_finite, check_positive
from .adjoint import Adjoint, DiscreteAdjoint, ForwardProblem
from .controls import Controls, GridControls, KernelSchedule
from .dynamics import Dynamics, make_dynamics
from .errors import PdenetsError
from .integrators import RK4, Solver, System, make_solver
from .kernels import KERNELS, KernelControls, make_kernel
from .lifting import ChannelLifting, LearnableLifting, Lifting, PiecewiseConstantLifting
from .quadrature import Grid, Midpoint, QuadratureRule, make_rule
from .readout import CellAverageReadout, LinearReadout, Readout


@dataclass(frozen=True)
class Discretization:
    """A width rule, a depth solver and a number of depth steps (MODEL.md §2).

    ``steps`` is the number of equal steps for fixed-step solvers (and the first-step guess
    T/steps is ignored by :class:`~pdenets.integrators.Dopri5`, which picks its own).
    """

    width: QuadratureRule
    solver: Solver = field(default_factory=RK4)
    steps: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.width, QuadratureRule):
            raise PdenetsError(f"width must be a QuadratureRule, got {self.width!r}")
        if not isinstance(self.solver, Solver):
            raise PdenetsError(f"solver must be a Solver, got {self.solver!r}")
        check_positive(self.steps, "steps", integer=True)

    @classmethod
    def make(
        cls, rule: str = "midpoint", width: int | tuple[int, ...] = 32, dim: int = 1,
        solver: str = "rk4", steps: int = 16, **solver_options,
    ) -> Discretization:
        """Build from names, e.g. ``Discretization.make("gauss", 64, 1, "dopri5", rtol=1e-8)``."""
        return cls(make_rule(rule, width, dim), make_solver(solver, **solver_options), steps)

    def refine(self, factor: int) -> Discretization:
        """``factor`` × the width nodes per axis and ``factor`` × the steps."""
        return Discretization(self.width.refine(factor), self.solver, self.steps * factor)

    def config(self) -> dict:
        return {
            "rule": self.width.name, "width": list(self.width.sizes), "dim": self.width.dim,
            "solver": self.solver.config(), "steps": self.steps,
        }


@dataclass
class Solution:
    """Result of a forward solve.

    Attributes
    ----------
    u : torch.Tensor
        Final state u(·, T), shape ``(B, N)`` — ``(B, C·N)`` channel-major with C channels
        (MODEL.md §10).
    ts : list of float
        Depths at which the trajectory was saved.
    us : torch.Tensor or None
        Saved states, shape ``(len(ts), B, N)``.
    grid : Grid
        The width grid (nodes and weights).
    stats : dict
        ``steps``, ``rejected`` and ``nfev`` (right-hand-side evaluations).
    outputs : torch.Tensor or None
        Readout R u(·, T), shape ``(B, m)`` (set by :meth:`ContinuumNetwork.solve`).
    """

    u: torch.Tensor
    ts: list[float]
    us: torch.Tensor | None
    grid: Grid
    stats: dict
    outputs: torch.Tensor | None = None


def make_system(dynamics: Dynamics, sched: KernelSchedule, grid: Grid) -> System:
    """The semi-discrete right-hand side of the forward problem on ``grid``
    (:meth:`Dynamics.system <pdenets.dynamics.Dynamics.system>`)."""
    return dynamics.system(sched, grid)


def _save_times(saveat, T: float, steps: int) -> list[float]:
    if saveat is None:
        return []
    if isinstance(saveat, str):
        if saveat != "steps":
            raise PdenetsError(f"saveat must be a list of depths or 'steps', got {saveat!r}")
        return [k * T / steps for k in range(steps + 1)]
    ts = [float(t) for t in saveat]
    for t in ts:
        if not (0.0 <= t <= T * (1 + 1e-12)):
            raise PdenetsError(f"save depth {t} lies outside [0, T = {T}]")
    return ts


def solve(
    controls: Controls,
    u0: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    dynamics: Dynamics,
    disc: Discretization,
    *,
    saveat: Sequence[float] | str | None = None,
    grid: Grid | None = None,
    adjoint: Adjoint | None = None,
) -> Solution:
    """Solve the forward problem of MODEL.md §1 at the discretization ``disc``.

    Parameters
    ----------
    controls : Controls
        θ = (w, b) as functions (T is taken from the controls).
    u0 : torch.Tensor or callable
        Initial fields at the width nodes, shape ``(B, N)``, or a callable ``u0(x)`` of the
        nodes ``x`` (shape ``(N, d)``) returning ``(N,)`` or ``(B, N)``.
    dynamics : Dynamics
    disc : Discretization
    saveat : sequence of float or "steps", optional
        Depths at which to return u (fixed-step solvers: on the step grid).
    grid : Grid, optional
        A pre-built grid of ``disc.width`` (dtype/device of the controls by default).
    adjoint : Adjoint, optional
        Gradient strategy for ``backward()`` (MODEL.md §5): :class:`~pdenets.DiscreteAdjoint`
        (the default: automatic differentiation through the steps, optionally checkpointed)
        or :class:`~pdenets.ContinuousAdjoint` — or any :class:`~pdenets.Adjoint` subclass:
        the strategy integrates the problem itself (:meth:`Adjoint.solve
        <pdenets.adjoint.Adjoint.solve>`). Only the plain discrete adjoint supports
        ``saveat``.

    Returns
    -------
    Solution
    """
    T = float(controls.T)
    if grid is None:
        p = next(iter(controls.parameters()), None)
        dtype = p.dtype if p is not None else (u0.dtype if torch.is_tensor(u0) else torch.float64)
        device = p.device if p is not None else (u0.device if torch.is_tensor(u0) else "cpu")
        grid = disc.width.grid(dtype, device)
    if callable(u0) and not torch.is_tensor(u0):
        u0 = torch.as_tensor(u0(grid.nodes), dtype=grid.dtype, device=grid.device)
    if not torch.is_tensor(u0):
        raise PdenetsError(f"u0 must be a tensor or a callable, got {type(u0).__name__}")
    if u0.dim() == 1:
        u0 = u0[None, :]
    C = getattr(controls, "channels", 1)
    if u0.dim() != 2 or u0.shape[1] != C * grid.n:
        raise PdenetsError(
            f"u0 has shape {tuple(u0.shape)}; expected (B, {C * grid.n}) for a width grid of "
            f"{grid.n} nodes" + (f" and {C} channels" if C > 1 else "")
        )
    check_finite(u0, "u0")
    sched = controls.discretize(grid)
    ts = _save_times(saveat, T, disc.steps)
    u0 = u0.to(grid.dtype)
    problem = ForwardProblem(dynamics, sched, grid, T, disc.steps, disc.solver)
    strategy = DiscreteAdjoint() if adjoint is None else adjoint
    if not callable(getattr(strategy, "solve", None)):
        raise PdenetsError(f"adjoint must be a gradient strategy (an Adjoint), got {adjoint!r}")
    uT, saved, stats = strategy.solve(problem, u0, ts)
    us = torch.stack(saved) if saved else None
    return Solution(uT, ts, us, grid, stats)


class ContinuumNetwork(nn.Module):
    """Lifting E, controls θ, dynamics f and readout R: the continuum network of MODEL.md §1.

    Parameters
    ----------
    controls : Controls
    dynamics : Dynamics
    lifting : Lifting
    readout : Readout
    discretization : Discretization, optional
        Default discretization used when none is passed to :meth:`forward`/:meth:`solve`.
    """

    #: metadata of a loaded model file (training configuration, data; see
    #: :mod:`pdenets.modelfile`); set by the loader
    extra: dict[str, Any]

    def __init__(
        self, controls: Controls, dynamics: Dynamics, lifting: Lifting, readout: Readout,
        discretization: Discretization | None = None,
    ) -> None:
        super().__init__()
        dims = {controls.dim, lifting.dim, getattr(readout, "dim", controls.dim)}
        if len(dims) != 1:
            raise PdenetsError(
                f"controls ({controls.dim}-D), lifting ({lifting.dim}-D) and readout "
                f"({getattr(readout, 'dim', '?')}-D) must share the width dimension"
            )
        chans = {"controls": getattr(controls, "channels", 1),
                 "lifting": getattr(lifting, "channels", 1),
                 "readout": getattr(readout, "channels", 1)}
        if len(set(chans.values())) != 1:
            raise PdenetsError("controls, lifting and readout must have the same number of "
                               "channels, got " + ", ".join(f"{k} {v}" for k, v in chans.items()))
        self.controls, self.dynamics, self.lifting, self.readout = (
            controls, dynamics, lifting, readout,
        )
        self.dim = controls.dim
        self.discretization = discretization or Discretization(
            Midpoint(lifting.shape if self.dim == 2 else max(lifting.shape[0], 16), self.dim),
            RK4(), 16,
        )
        self._grids: dict = {}

    @property
    def T(self) -> float:
        return self.controls.T

    @property
    def channels(self) -> int:
        """Number C of state channels (MODEL.md §10; 1 for the scalar model)."""
        return getattr(self.controls, "channels", 1)

    @classmethod
    def create(
        cls,
        input_shape: int | tuple[int, ...],
        outputs: int,
        *,
        control_size: int | tuple[int, ...] | None = None,
        intervals: int = 4,
        T: float = 1.0,
        time_basis: str = "linear",
        space_basis: str = "linear",
        dynamics: str = "standard",
        activation: str = "tanh",
        eps: float = 0.0,
        readout: str = "linear",
        learnable_lifting: bool = False,
        width: int | tuple[int, ...] | None = None,
        rule: str = "midpoint",
        solver: str = "rk4",
        steps: int = 8,
        init_scale: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        kernel: str = "dense",
        kernel_radius: float = 0.25,
        kernel_size: int | tuple[int, ...] | None = None,
        rank: int = 4,
        channels: int = 1,
        in_channels: int = 1,
    ) -> ContinuumNetwork:
        """Build a network with random controls and a zero readout; ``input_shape`` is n (1-D)
        or (p, q) (2-D).

        The kernel's knot values are drawn N(0, init_scale² · Nc) (Nc control vertices): the
        discretized operator ω_j w(x_i, x_j) then has entries of standard deviation about
        init_scale / √Nc, the usual fan-in scaling of a residual layer (resolution
        independent: refining the width does not change the represented function). The bias
        knots are N(0, (init_scale/10)²).

        ``space_basis`` is the controls' space basis (``"linear"``: ``control_size`` vertices
        per axis, multilinear; ``"constant"``: ``control_size`` cells, piecewise constant; see
        :class:`~pdenets.controls.GridControls`); the linear readout and a learnable lifting
        use the same grid and basis.

        Structured kernels and channels (MODEL.md §10): ``kernel`` is the family (``dense``,
        ``conv``, ``lowrank``, ``conv+lowrank``; see :mod:`pdenets.kernels`), ``kernel_radius``
        the receptive-field radius r of a convolution and ``kernel_size`` its displacement grid
        (default: about one vertex per control cell in [−r, r], odd), ``rank`` the rank R of a
        low-rank part, ``channels`` the number C of state channels and ``in_channels`` that of
        the inputs (shape ``(B, C_in, *input_shape)``; lifted to C channels by a learnable
        pointwise matrix). ``kernel="dense"`` with one channel is the
        :class:`~pdenets.controls.GridControls` network (same parameters and numbers as
        before); anything else uses :class:`~pdenets.kernels.KernelControls`, initialised so
        that the kernel's operator norm is about ``init_scale``.
        """
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        dim = len(shape)
        if kernel not in KERNELS:
            raise PdenetsError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        for name, v in (("channels", channels), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 256:
                raise PdenetsError(f"{name} must be an integer in [1, 256], got {v!r}")
        if control_size is None:
            control_size = tuple(max(2, min(s, 16)) for s in shape)
        gen = torch.Generator().manual_seed(seed)
        ctrl: Controls
        if kernel == "dense" and channels == 1:
            ctrl = GridControls(dim, control_size, intervals, T, time_basis, dtype=dtype,
                                space_basis=space_basis)
            with torch.no_grad():
                ctrl.w.normal_(0.0, init_scale * ctrl.n_control**0.5, generator=gen)
                ctrl.b.normal_(0.0, 0.1 * init_scale, generator=gen)
            csize = ctrl.size
        else:
            kern = make_kernel(kernel, dim, size=control_size, intervals=intervals, T=T,
                               time_basis=time_basis, channels=channels, radius=kernel_radius,
                               kernel_size=kernel_size, rank=rank, space_basis=space_basis,
                               dtype=dtype, init_scale=init_scale, generator=gen)
            ctrl = KernelControls(kern, control_size, space_basis=space_basis)
            with torch.no_grad():
                ctrl.b.normal_(0.0, 0.1 * init_scale, generator=gen)
            csize = ctrl.size
        lift: Lifting = (
            LearnableLifting(shape, csize, dtype, basis=space_basis) if learnable_lifting
            else PiecewiseConstantLifting(shape)
        )
        if channels > 1 or in_channels > 1:
            lift = ChannelLifting(lift, in_channels, channels, dtype=dtype)
        if readout == "linear":
            ro: Readout = LinearReadout(outputs, dim, csize, dtype=dtype, basis=space_basis,
                                        channels=channels)
        elif readout == "cell_average":
            cells = (outputs,) if dim == 1 else _factor2(outputs)
            ro = CellAverageReadout(cells, channels)
        else:
            raise PdenetsError(f"unknown readout {readout!r}; choose linear or cell_average")
        if width is None:
            width = shape if dim == 2 else max(shape[0], 16)
        disc = Discretization(make_rule(rule, width, dim), make_solver(solver), steps)
        return cls(ctrl, make_dynamics(dynamics, activation, eps), lift, ro, disc)

    def grid(self, rule: QuadratureRule) -> Grid:
        """The (cached) grid of ``rule`` in the network's dtype and device."""
        p = next(self.parameters(), None)
        dtype = p.dtype if p is not None else torch.float64
        device = p.device if p is not None else torch.device("cpu")
        key = (repr(rule), getattr(rule, "seed", None), dtype, str(device))
        g = self._grids.get(key)
        if g is None:
            g = self._grids[key] = rule.grid(dtype, device)
        return g

    def initial_state(self, xi: torch.Tensor, grid: Grid) -> torch.Tensor:
        """u(·, 0) = E ξ at the nodes of ``grid``."""
        return self.lifting(torch.as_tensor(xi).to(grid.device), grid)

    def solve(
        self, xi: torch.Tensor, disc: Discretization | None = None, *,
        saveat: Sequence[float] | str | None = None, adjoint: Adjoint | None = None,
    ) -> Solution:
        """Lift ``xi``, solve the forward problem at ``disc``, apply the readout.

        ``adjoint`` selects the gradient strategy (see :func:`solve`)."""
        disc = disc or self.discretization
        grid = self.grid(disc.width)
        u0 = self.initial_state(xi, grid)
        sol = solve(self.controls, u0, self.dynamics, disc, saveat=saveat, grid=grid,
                    adjoint=adjoint)
        sol.outputs = self.readout(sol.u, grid)
        return sol

    def forward(
        self, xi: torch.Tensor, disc: Discretization | None = None,
        adjoint: Adjoint | None = None,
    ) -> torch.Tensor:
        """Outputs R u(·, T) for inputs ``xi``, shape ``(B, m)``."""
        return self.solve(xi, disc, adjoint=adjoint).outputs  # type: ignore[return-value]

    def config(self) -> dict:
        """JSON-serializable architecture (everything but the tensors)."""
        c = self.controls
        if isinstance(c, KernelControls):
            return {"T": c.T, "dim": self.dim, "dynamics": self.dynamics.config(),
                    "controls": c.config(), "lifting": self.lifting.config(),
                    "readout": self.readout.config(),
                    "discretization": self.discretization.config()}
        if not isinstance(c, GridControls):
            raise PdenetsError("only GridControls and KernelControls can be described in a "
                               "model file")
        return {
            "T": c.T,
            "dim": self.dim,
            "dynamics": self.dynamics.config(),
            "controls": {
                "kind": "grid", "size": list(c.size), "intervals": c.intervals,
                "time_basis": c.time_basis, "space_basis": c.space_basis,
            },
            "lifting": self.lifting.config(),
            "readout": self.readout.config(),
            "discretization": self.discretization.config(),
        }


def _factor2(m: int) -> tuple[int, int]:
    for a in range(int(m**0.5), 0, -1):
        if m % a == 0:
            return (a, m // a)
    return (1, m)
