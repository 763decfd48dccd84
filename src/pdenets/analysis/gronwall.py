"""The Gronwall bound of MODEL.md §3: ∫_0^T ‖w(t)‖ dt on a width grid and the amplification
factor exp(L_σ ∫‖w‖) (discrete ω-operator norms for grid controls, the kernel's own
operator-norm bound for structured kernels of §10). Split from :mod:`.stability`, which
re-exports everything here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..controls import _KnotSchedule
from ..errors import PdenetsError
from ..quadrature import Grid


def operator_norm(A: torch.Tensor, weights: torch.Tensor) -> float:
    """L²_ω → L²_ω operator norm of the matrix A (the discretized integral operator)."""
    s = torch.sqrt(weights)
    return float(torch.linalg.matrix_norm(s[:, None] * A / s[None, :], ord=2))


@dataclass
class NormIntegral:
    """∫_0^T ‖w(t)‖ dt on a width grid and how far it can be trusted (MODEL.md §3).

    Attributes
    ----------
    value : float
        The upper bound (``certified``) or the conservative estimate (quadrature value plus
        its error estimate) of the integral.
    certified : bool
        True when ``value`` is an upper bound by construction (up to a rounding margin of
        4 (N + m) u relative, u the unit roundoff, N the grid size, m the number of norms
        summed): exact for depth-piecewise-constant and depth-independent controls, the
        trapezoid sum of a convex integrand for depth-piecewise-linear knots. False for
        arbitrary depth-dependent callables, whose norm between the nodes of any rule is
        unknown: then ``value`` is an *estimate* of an upper bound.
    method : str
        How ``value`` was obtained.
    error : float
        The quadrature error estimate included in ``value`` (0 when certified).
    evaluations : int
        Operator norms computed.
    converged : bool
        Whether the adaptive quadrature met its tolerance (always True when certified).
    """

    value: float
    certified: bool
    method: str
    error: float
    evaluations: int
    converged: bool

    def as_dict(self) -> dict:
        return asdict(self)


# Gauss–Kronrod 7–15 on [-1, 1] (QUADPACK qk15): Kronrod nodes ±x_0..±x_6, 0; the Gauss
# nodes are x_1, x_3, x_5 and 0.
_XGK = (0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
        0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
        0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
        0.207784955007898467600689403773245)
_WGK = (0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
        0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
        0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
        0.204432940075298892414161999234649)
_WGK0 = 0.209482141084727828012999174891714
_WG = (0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
       0.381830050505118944950369775488975)
_WG0 = 0.417959183673469387755102040816327


def _gk15(f, a: float, b: float) -> tuple[float, float, float]:
    """Kronrod value, |Kronrod − Gauss| and ∫|f| (Kronrod) on [a, b]."""
    c, h = 0.5 * (a + b), 0.5 * (b - a)
    f0 = f(c)
    k = _WGK0 * f0
    g = _WG0 * f0
    kabs = _WGK0 * abs(f0)
    for i, (x, wk) in enumerate(zip(_XGK, _WGK)):
        fl, fr = f(c - h * x), f(c + h * x)
        k += wk * (fl + fr)
        kabs += wk * (abs(fl) + abs(fr))
        if i % 2 == 1:
            g += _WG[i // 2] * (fl + fr)
    return h * k, abs(h * (k - g)), h * kabs


def _adaptive_integral(rule, edges: list[float], rtol: float, max_panels: int):
    """Adaptive Gauss–Kronrod 7–15 over consecutive panels ``edges``; ``rule(a, b)`` returns
    :func:`_gk15` of the integrand on [a, b].

    Bisects the panel of largest error estimate until Σ err ≤ rtol · ∫|f| or ``max_panels``
    panels. The panel error estimate is |K15 − G7| (which for smooth integrands exceeds the
    error of K15 by orders of magnitude) with a floor of 50 u ∫|f| for rounding, as in
    QUADPACK's qk15 without its optimistic rescaling. Returns (Σ K15, Σ err, evaluations,
    converged).
    """
    eps = torch.finfo(torch.float64).eps
    panels = []
    for a, b in zip(edges[:-1], edges[1:]):
        q, e, qa = rule(a, b)
        panels.append([max(e, 50 * eps * qa), a, b, q, qa])
    evals = 15 * len(panels)
    while True:
        total_abs = sum(p[4] for p in panels)
        err = sum(p[0] for p in panels)
        if err <= rtol * total_abs or len(panels) >= max_panels:
            break
        i = max(range(len(panels)), key=lambda j: panels[j][0])
        a, b = panels[i][1], panels[i][2]
        m = 0.5 * (a + b)
        if not a < m < b:  # panel at the resolution of floating point: stop (not converged)
            break
        panels.pop(i)
        for lo, hi in ((a, m), (m, b)):
            q, e, qa = rule(lo, hi)
            panels.append([max(e, 50 * eps * qa), lo, hi, q, qa])
        evals += 30
    q = sum(p[3] for p in panels)
    err = sum(p[0] for p in panels)
    return q, err, evals, err <= rtol * sum(p[4] for p in panels)


def operator_norm_integral(
    controls, grid: Grid, *, rtol: float = 1e-10, max_panels: int = 400,
) -> NormIntegral:
    """∫_0^T ‖w(t)‖ dt on ``grid`` (ω-operator norms), as an upper bound where one can be had.

    * Knot-based controls (:class:`~pdenets.controls.GridControls`): exact for
      piecewise-constant depth interpolation (Σ δ ‖A_k‖); for piecewise-linear interpolation the
      trapezoid sum over the knots, an upper bound because t ↦ ‖(1 − s)A_k + s A_{k+1}‖ is
      convex on every interval. Certified.
    * Depth-independent controls (``FunctionControls(..., time_dependent=False)``, frozen
      controls): T ‖A‖, exact. Certified.
    * Any other controls (depth-dependent callables): adaptive Gauss–Kronrod 7–15 quadrature,
      panels split at the schedule's breakpoints, with the sum of the panel error estimates
      |K15 − G7| *added* to the value. This is conservative for integrands resolved by the
      rule (piecewise smooth between the panel edges the refinement finds) — w = 4t³ gives
      1 + 1e-14, never below 1 as the former fixed midpoint rule did (0.99994) — but no
      finite sample of an arbitrary callable certifies a bound: ``certified`` is False and
      the value is an *estimate*.

    A rounding margin of 4 (N + m) u (relative) is added in all cases.

    Parameters
    ----------
    controls : Controls
    grid : Grid
    rtol : float
        Target of the quadrature error estimate relative to ∫‖w‖ (adaptive case only).
    max_panels : int
        Limit on the number of Gauss–Kronrod panels (15 norms each).

    Returns
    -------
    NormIntegral
    """
    if _is_kernel_controls(controls):
        return _kernel_norm_integral(controls, grid)
    sched = controls.discretize(grid)
    eps = torch.finfo(grid.dtype).eps
    N = grid.n

    def margin(value: float, terms: int) -> float:
        return value * (1.0 + 4.0 * (N + terms) * eps)

    T = float(controls.T)
    with torch.no_grad():
        if isinstance(sched, _KnotSchedule):
            norms = [operator_norm(sched.A[k], grid.weights) for k in range(sched.A.shape[0])]
            if sched.basis == "constant":
                val, method = sched.delta * sum(norms), "exact (piecewise constant in depth)"
            else:
                val = sched.delta * (sum(norms) - 0.5 * (norms[0] + norms[-1]))
                method = "trapezoid over knots (convex norm of linear interpolation)"
            return NormIntegral(margin(val, len(norms)), True, method, 0.0, len(norms), True)
        if getattr(sched, "time_dependent", True) is False:
            A, _ = sched.at(0.0, 0.0, T)
            return NormIntegral(margin(T * operator_norm(A, grid.weights), 1), True,
                                "exact (independent of depth)", 0.0, 1, True)
        inner = sorted(float(t) for t in getattr(sched, "breakpoints", ()) if 0.0 < t < T)
        edges = [0.0, *inner, T]
        # current panel (a, b) for schedules that select their value by the step [t0, t1]
        panel = [0.0, T]

        def norm_at(t: float) -> float:
            A, _ = sched.at(t, panel[0], panel[1])
            return operator_norm(A, grid.weights)

        def rule(a: float, b: float) -> tuple[float, float, float]:
            panel[0], panel[1] = a, b
            return _gk15(norm_at, a, b)

        q, err, evals, conv = _adaptive_integral(rule, edges, rtol, max_panels)
        return NormIntegral(margin(q + err, evals), False,
                            "adaptive Gauss–Kronrod 7–15 + error estimate (estimate)", err, evals,
                            conv)


def _is_kernel_controls(controls) -> bool:
    from ..kernels import KernelControls

    return isinstance(controls, KernelControls)


def _convex_in_depth(kernel) -> bool:
    """Whether t ↦ (the kernel's operator-norm bound) is convex on every depth interval:
    true for families linear in their knot values (dense, conv: a norm of a linear
    interpolation), false for low rank with piecewise-linear factors (a product of two)."""
    from ..kernels import LowRankKernel, SumKernel

    if kernel.time.basis == "constant":
        return True
    parts = kernel.parts if isinstance(kernel, SumKernel) else [kernel]
    return not any(isinstance(p, LowRankKernel) for p in parts)


def _kernel_norm_integral(controls, grid: Grid) -> NormIntegral:
    """∫_0^T of the kernel's operator-norm bound (MODEL.md §3, §10: conv ‖k(·,t)‖_{L¹} per
    channel block, dense and low rank the Hilbert–Schmidt norm, a sum the sum of its parts).

    Piecewise-constant depth: exact sum. Piecewise-linear depth, families linear in the
    knot values: trapezoid over the knots, an upper bound by convexity (certified). Low-rank
    factors linear in depth: the bound is not convex in t; adaptive Gauss–Kronrod with its
    error estimate added (an estimate, not certified).
    """
    kern = controls.kernel
    tm = kern.time
    K, d = tm.n_knots, tm.T / tm.intervals
    eps = torch.finfo(grid.dtype).eps

    def margin(value: float, terms: int) -> float:
        return value * (1.0 + 4.0 * (grid.n * controls.channels + terms) * eps)

    if tm.basis == "constant":
        norms = [controls.operator_norm_bound((k + 0.5) * d) for k in range(K)]
        return NormIntegral(margin(d * sum(norms), K), True,
                            "exact (piecewise constant in depth; kernel norm bound)", 0.0, K,
                            True)
    if _convex_in_depth(kern):
        norms = [controls.operator_norm_bound(k * d) for k in range(K)]
        val = d * (sum(norms) - 0.5 * (norms[0] + norms[-1]))
        return NormIntegral(margin(val, K), True,
                            "trapezoid over knots (convex kernel norm bound)", 0.0, K, True)

    def rule(a: float, b: float) -> tuple[float, float, float]:
        return _gk15(controls.operator_norm_bound, a, b)

    q, err, evals, conv = _adaptive_integral(rule, [k * d for k in range(K)], 1e-10, 400)
    return NormIntegral(margin(q + err, evals), False,
                        "adaptive Gauss–Kronrod 7–15 of the kernel norm bound (estimate)", err,
                        evals, conv)


def integrated_operator_norm(controls, grid: Grid, **kwargs) -> float:
    """∫_0^T ‖w(t)‖ dt on ``grid``: ``operator_norm_integral(controls, grid).value`` (an upper
    bound for knot-based and depth-independent controls, a conservative estimate otherwise; see
    :func:`operator_norm_integral`)."""
    return operator_norm_integral(controls, grid, **kwargs).value


def gronwall_factor(controls, dynamics, grid: Grid) -> float:
    """exp(L_σ ∫_0^T ‖w(t)‖ dt), the Gronwall amplification factor of MODEL.md §3.

    An upper bound of the Lipschitz constant of u(0) ↦ u(T) for knot-based
    (:class:`~pdenets.controls.GridControls`) and depth-independent controls; for
    depth-dependent :class:`~pdenets.controls.FunctionControls` the integral is an adaptive
    quadrature with its error estimate added, a conservative *estimate* (see
    :func:`operator_norm_integral`, whose ``certified`` field says which).

    Raises
    ------
    PdenetsError
        For the selection variant, whose right-hand side u·σ(…) is not globally Lipschitz.
    """
    if dynamics.kind == "selection":
        raise PdenetsError(
            "the Gronwall bound of MODEL.md §3 needs a globally Lipschitz right-hand side; "
            "the selection variant u·σ(∫wu+b) is not"
        )
    return math.exp(dynamics.activation.lipschitz * integrated_operator_norm(controls, grid))
