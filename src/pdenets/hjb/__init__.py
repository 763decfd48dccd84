"""Hamilton–Jacobi–Bellman equation, value function and optimal feedback (MODEL.md §8).

For a *reduced* problem — N width nodes with quadrature weights ω_i and B input samples sharing
the controls, state v ∈ R^D, D = B · N — the value function V(t, v) solves

    ∂_t V + H(v, ∇_v V) = 0,   V(T, v) = Φ(v),   H(v, p) = inf_θ [ ⟨p, f(v, θ)⟩ + L(θ) ].

The package is organised by concept:

=====================  ==========================================================================
module                 contents
=====================  ==========================================================================
``problem``            :class:`ReducedProblem` (dynamics, costs, ω-weighted norms, H and θ*)
``hamiltonian``        the infimum over θ: closed form, or discrete control set + Newton
``grid``               :class:`StateGrid` (box grid, multilinear interpolation, differences)
``schemes``            :class:`Scheme` interface, :class:`LaxFriedrichs`, :class:`SemiLagrangian`,
                       the name registry (:func:`register_scheme`, :func:`get_scheme`)
``high_order``         ENO2/WENO5 + local Lax–Friedrichs + TVD-RK2/3 (``eno2-rk2``,
                       ``weno5-rk3``, :class:`HighOrder`)
``solve``              :class:`HJBOptions`, :func:`estimate_memory`, :func:`solve_hjb`
``solution``           :class:`HJBSolution` (value, gradient, optimal feedback)
``closed_loop``        :func:`closed_loop` — the forward problem under the feedback
``direct``             :func:`direct_method` — an independent reference for V(0, v0)
``tpbvp``              :func:`solve_tpbvp` — batched two-point boundary problems (V, D_vV data)
``value_model``        :class:`ValueModel` (quadratic part + small net), :func:`fit_value_model`
``sampled``            :func:`solve_sampled`, :class:`SampledSolution`, :func:`run_sampled`
``closed_form``        the closed-form case of §8 (w ≡ 0, σ = identity, bias control)
=====================  ==========================================================================

Activation facts used here (σ'', sup|σ|, monotonicity, affinity) live on
:class:`pdenets.activations.Activation`.

References
----------
M. G. Crandall, P.-L. Lions, Viscosity solutions of Hamilton–Jacobi equations, Trans. AMS 277
(1983); Two approximations of solutions of Hamilton–Jacobi equations, Math. Comp. 43 (1984).
S. Osher, C.-W. Shu, High-order ENO schemes for Hamilton–Jacobi equations, SIAM J. Numer. Anal.
28 (1991). G. Barles, P. E. Souganidis, Convergence of approximation schemes for fully nonlinear
second order equations, Asymptotic Anal. 4 (1991). M. Falcone, R. Ferretti, Semi-Lagrangian
Approximation Schemes for Linear and Hamilton–Jacobi Equations, SIAM (2014). M. Bardi,
I. Capuzzo-Dolcetta, Optimal Control and Viscosity Solutions of HJB Equations, Birkhäuser (1997).
"""

from __future__ import annotations

from .closed_form import closed_form_feedback, closed_form_value
from .closed_loop import ClosedLoop, closed_loop
from .direct import DirectResult, direct_method
from .grid import StateGrid
from .high_order import ENO2RK2, WENO5RK3, HighOrder, one_sided_high_order
from .problem import CONTROL_SETS as CONTROL_SETS
from .problem import TERMINALS as TERMINALS
from .problem import ReducedProblem
from .problem import RowSolution as RowSolution
from .sampled import SampledOptions, SampledSolution, run_sampled, solve_sampled
from .schemes import (
    SCHEMES,
    LaxFriedrichs,
    MarchContext,
    Scheme,
    SemiLagrangian,
    StepPlan,
    get_scheme,
    register_scheme,
    scheme_names,
)
from .solution import HJBSolution
from .solve import PARALLEL_MIN_POINTS, HJBOptions, estimate_memory, solve_hjb
from .solve import _default_memory_limit as _default_memory_limit  # used by benchmarks
from .tpbvp import Trajectories, solve_tpbvp
from .value_model import ValueModel, fit_value_model

__all__ = [
    "SCHEMES", "ClosedLoop", "DirectResult", "HJBOptions", "HJBSolution", "ReducedProblem",
    "StateGrid", "closed_form_feedback", "closed_form_value", "closed_loop", "direct_method",
    "estimate_memory", "solve_hjb",
    # scheme interface
    "LaxFriedrichs", "MarchContext", "Scheme", "SemiLagrangian", "StepPlan", "get_scheme",
    "register_scheme", "scheme_names",
    # high-order schemes
    "ENO2RK2", "HIGH_ORDER_SCHEMES", "HighOrder", "PARALLEL_MIN_POINTS", "WENO5RK3",
    "one_sided_high_order",
    # sampled method
    "SampledOptions", "SampledSolution", "Trajectories", "ValueModel", "fit_value_model",
    "run_sampled", "solve_sampled", "solve_tpbvp",
]

#: names of the registered high-order schemes (:mod:`pdenets.hjb.high_order`)
HIGH_ORDER_SCHEMES: tuple[str, ...] = (ENO2RK2.name, WENO5RK3.name)
