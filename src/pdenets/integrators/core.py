"""The objects every depth solver shares (MODEL.md §2): the system f(t, u) = R(t, u) + ε Δ u,
the solve counters, the per-stage record handed to hooks and the :class:`Solver` base class."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import StabilityError


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
