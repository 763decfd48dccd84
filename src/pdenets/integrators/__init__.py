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

The package: :mod:`.core` (system, counters, :class:`Solver`), :mod:`.tableau`,
:mod:`.controllers`, :mod:`.rk` (one step), :mod:`.solvers` (explicit RK and the registry),
:mod:`.splitting` (IMEX Euler, Strang) and :mod:`.driver` (:func:`integrate_span`,
:func:`integrate`).
"""

from __future__ import annotations

from .controllers import (
    CONTROLLERS,
    IController,
    PIController,
    StepSizeController,
    make_controller,
)
from .core import (
    Solver,
    Stage,
    StageHook,
    Stats,
    System,
)
from .driver import (
    integrate,
    integrate_span,
    stage_times,
)
from .rk import (
    _axpy,  # noqa: F401 (re-exported)
    _emit,  # noqa: F401 (re-exported)
    _rk_step_inplace,  # noqa: F401 (re-exported)
    rk_step,
)
from .solvers import (
    RK4,
    SOLVERS,
    AdaptiveRK,
    Dopri5,
    Euler,
    ExplicitRK,
    Heun,
    make_solver,
)
from .splitting import (
    IMEXEuler,
    Strang,
)
from .tableau import (
    DOPRI5_TABLEAU,
    EULER_TABLEAU,
    HEUN_TABLEAU,
    RK4_TABLEAU,
    TABLEAU_TOL,
    ButcherTableau,
    _gamma,  # noqa: F401 (re-exported)
    _order_defects,  # noqa: F401 (re-exported)
    _tree_order,  # noqa: F401 (re-exported)
    _trees,  # noqa: F401 (re-exported)
)

__all__ = [
    "AdaptiveRK",
    "ButcherTableau",
    "CONTROLLERS",
    "DOPRI5_TABLEAU",
    "Dopri5",
    "EULER_TABLEAU",
    "Euler",
    "ExplicitRK",
    "HEUN_TABLEAU",
    "Heun",
    "IController",
    "IMEXEuler",
    "PIController",
    "RK4",
    "RK4_TABLEAU",
    "SOLVERS",
    "Solver",
    "Stage",
    "StageHook",
    "Stats",
    "StepSizeController",
    "Strang",
    "System",
    "TABLEAU_TOL",
    "integrate",
    "integrate_span",
    "make_controller",
    "make_solver",
    "rk_step",
    "stage_times",
]
