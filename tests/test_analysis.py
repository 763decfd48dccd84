"""Tests of the analysis toolkit (MODEL.md §3, §6, §9, steady states of §1).

Every check compares with an exact solution or an independent reference computation
(closed-form spectra, explicitly assembled Jacobians/Hessians, invariants of the dynamics).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdenets import (
    RK4,
    CellAverageReadout,
    ContinuumNetwork,
    Discretization,
    FunctionControls,
    GaussLegendre,
    GridControls,
    LinearReadout,
    Midpoint,
    PdenetsError,
    PiecewiseConstantLifting,
    make_dynamics,
    solve,
)
from pdenets.analysis import (
    ReducedObjective,
    analyze_steady_state,
    certify,
    control_sensitivity,
    controllability_study,
    find_steady_state,
    fit,
    gronwall_factor,
    input_sensitivity,
    lanczos,
    lipschitz_estimate,
    operator_norm_integral,
    stability_report,
    terminal_misfit,
)
from pdenets.objective import Objective

DT = torch.float64




def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _hat(x: np.ndarray, k: int) -> np.ndarray:
    """Hat functions of k equispaced vertices on [0, 1] at x (independent of pdenets._basis)."""
    return np.maximum(0.0, 1.0 - np.abs(x[:, None] * (k - 1) - np.arange(k)[None, :]))


def _mass_1d(k: int, length: float = 1.0) -> np.ndarray:
    h = length / (k - 1)
    M = np.zeros((k, k))
    for i in range(k - 1):
        M[i : i + 2, i : i + 2] += h / 6 * np.array([[2.0, 1.0], [1.0, 2.0]])
    return M


# ---------------------------------------------------------------------------------------------
# Stability (MODEL.md §3)
# ---------------------------------------------------------------------------------------------


def _random_tanh_case(N=12, steps=16, seed=3, dyn="standard", rule=Midpoint):
    g = _gen(seed)
    ctrl = GridControls(1, 4, 1, 1.0, "constant",
                        w=torch.randn(1, 4, 4, generator=g, dtype=DT),
                        b=0.3 * torch.randn(1, 4, generator=g, dtype=DT))
    disc = Discretization(rule(N), RK4(), steps)
    grid = rule(N).grid()
    u0 = torch.randn(3, N, generator=g, dtype=DT)
    return ctrl, make_dynamics(dyn, "tanh"), disc, grid, u0


def _weighted_op_norm(A: np.ndarray, w: np.ndarray) -> float:
    s = np.sqrt(w)
    return float(np.linalg.norm(s[:, None] * A / s[None, :], 2))


@pytest.mark.parametrize("dyn", ["standard", "field"])
def test_gronwall_bound_holds_for_input_and_control_perturbations(dyn):
    ctrl, dynamics, disc, grid, u0 = _random_tanh_case(dyn=dyn)
    # independent Gronwall factor: one constant interval, exp(L_σ T ‖A‖_ω)
    x = grid.nodes[:, 0].numpy()
    w = grid.weights.numpy()
    P = _hat(x, 4)
    A = P @ ctrl.w.detach().numpy()[0] @ P.T * w[None, :]
    G = math.exp(1.0 * ctrl.T * _weighted_op_norm(A, w))
    rep = input_sensitivity(ctrl, dynamics, u0, disc, grid=grid, scales=(1e-3, 0.3, 3.0))
    assert rep.gronwall == pytest.approx(G, rel=1e-12)
    assert rep.holds
    for s, r in zip(rep.scales, rep.responses):
        assert 0 < r <= G * s
    crep = control_sensitivity(ctrl, dynamics, u0, disc, grid=grid, scales=(1e-3, 0.1, 1.0))
    assert crep.holds and all(0 < q <= 1 for q in crep.ratios)
    assert all(r > 0 for r in crep.responses)


def test_control_sensitivity_bound_is_violated_by_a_wrong_constant():
    """The control bound is not vacuous: for a linear case it is within a modest factor."""
    ctrl = GridControls.constant(0.0, 0.0)
    dyn = make_dynamics("standard", "identity")
    disc = Discretization(Midpoint(8), RK4(), 8)
    u0 = torch.ones(1, 8, dtype=DT)
    rep = control_sensitivity(ctrl, dyn, u0, disc, scales=(1e-3,), directions=8)
    # u' = δA u + δb from w = b = 0: response ≈ T‖δA u + δb‖, bound ≈ T(‖δA‖‖u‖ + ‖δb‖)
    assert rep.holds and 0.05 < rep.ratios[0] <= 1.0


def test_lipschitz_estimate_matches_assembled_jacobian():
    # non-uniform Gauss–Legendre weights: the ω-weighting of the norm matters
    ctrl, dynamics, disc, grid, u0 = _random_tanh_case(N=10, steps=12, rule=GaussLegendre)
    est = lipschitz_estimate(ctrl, dynamics, u0, disc, grid=grid, iters=300, rtol=1e-13)
    w = grid.weights
    s = torch.sqrt(w)
    for i in range(u0.shape[0]):
        J = torch.autograd.functional.jacobian(
            lambda v: solve(ctrl, v[None], dynamics, disc, grid=grid).u[0], u0[i])
        smax = float(torch.linalg.matrix_norm(s[:, None] * J / s[None, :], ord=2))
        assert est.per_input[i] == pytest.approx(smax, rel=1e-7)
    assert est.value == pytest.approx(max(est.per_input))


def test_lipschitz_equals_gronwall_for_positive_constant_kernel():
    """σ = identity, w ≡ a > 0: J = exp(T A) with A = a 1ωᵀ ω-self-adjoint, ‖J‖_ω = e^{aT}."""
    a, T = 0.8, 1.5
    ctrl = GridControls.constant(a, 0.2, T=T)
    dyn = make_dynamics("standard", "identity")
    disc = Discretization(Midpoint(8), RK4(), 64)
    u0 = torch.randn(2, 8, generator=_gen(1), dtype=DT)
    est = lipschitz_estimate(ctrl, dyn, u0, disc)
    assert est.converged
    assert est.value == pytest.approx(math.exp(a * T), rel=1e-8)
    rep = input_sensitivity(ctrl, dyn, u0, disc)
    assert rep.gronwall == pytest.approx(math.exp(a * T), rel=1e-12)


def test_selection_has_no_gronwall_bound_but_is_measured():
    ctrl, _, disc, grid, u0 = _random_tanh_case()
    rep = input_sensitivity(ctrl, make_dynamics("selection", "tanh"), u0, disc, grid=grid)
    assert rep.bounds is None and rep.holds is None and all(r > 0 for r in rep.responses)


def test_gronwall_factor_bounds_a_convex_depth_integrand():
    """σ = identity, w ≡ 4t³: A(t) = 4t³ 1ωᵀ is ω-self-adjoint with norm 4t³, the flow is
    exp(∫A) and its Lipschitz constant is exactly e (Σω = 1). A midpoint rule underestimates
    ∫4t³ (convex integrand); the factor must be an upper bound, and a close one."""
    ctrl = FunctionControls(lambda x, y, t: 4 * t**3 + 0 * x[..., 0],
                            lambda x, t: 0 * x[..., 0], 1, 1.0)
    dyn = make_dynamics("standard", "identity")
    grid = Midpoint(8).grid()
    integral = operator_norm_integral(ctrl, grid)
    assert not integral.certified and integral.converged  # a callable: an estimate
    assert 1.0 <= integral.value <= 1.0 + 1e-12
    G = gronwall_factor(ctrl, dyn, grid)
    assert math.e <= G <= math.e * (1 + 1e-12)
    u0 = torch.randn(2, 8, generator=_gen(4), dtype=DT)
    est = lipschitz_estimate(ctrl, dyn, u0, Discretization(Midpoint(8), RK4(), 64))
    assert est.converged
    assert est.value <= G and est.value == pytest.approx(math.e, rel=1e-7)


def _cos_basis(x: np.ndarray, j: int) -> np.ndarray:
    return np.cos(j * np.pi * x)


@pytest.mark.parametrize("seed", range(4))
def test_gronwall_factor_is_a_tight_bound_for_random_rank_one_function_controls(seed):
    """σ = identity, w(x,y,t) = a(t) φ(x) φ(y) with a ≥ 0: the A(t) = a(t) φ φᵀ W commute and
    are ω-self-adjoint, so the exact Lipschitz constant of the semi-discrete flow is
    exp(‖φ‖²_ω ∫a), with ∫a in closed form; the factor must bound it and be close to it."""
    rng = np.random.default_rng(seed)
    ck = rng.standard_normal(4)
    c0 = 1.2 * np.abs(ck).sum()  # a(t) = c0 + Σ c_k sin(kπt/T + k) > 0
    fk = rng.uniform(0.5, 1.0, 3)
    T = float(rng.uniform(0.5, 2.0))

    def a(t):
        return c0 + sum(c * math.sin((k + 1) * math.pi * t / T + k) for k, c in enumerate(ck))

    def phi(x):
        return sum(f * torch.cos(j * math.pi * x[..., 0]) for j, f in enumerate(fk))

    ctrl = FunctionControls(lambda x, y, t: a(t) * phi(x) * phi(y),
                            lambda x, t: 0 * x[..., 0], 1, T)
    grid = GaussLegendre(10).grid()
    x, w = grid.nodes[:, 0].numpy(), grid.weights.numpy()
    phi_n = sum(f * _cos_basis(x, j) for j, f in enumerate(fk))
    int_a = c0 * T + sum(c * T / ((k + 1) * math.pi)
                         * (math.cos(k) - math.cos((k + 1) * math.pi + k))
                         for k, c in enumerate(ck))
    exact = math.exp(float(phi_n**2 @ w) * int_a)
    dyn = make_dynamics("standard", "identity")
    G = gronwall_factor(ctrl, dyn, grid)
    assert exact <= G <= exact * (1 + 1e-9)  # quadrature tolerance 1e-10 in the exponent
    u0 = torch.randn(3, 10, generator=_gen(seed), dtype=DT)
    est = lipschitz_estimate(ctrl, dyn, u0, Discretization(GaussLegendre(10), RK4(), 128))
    assert est.value <= G * (1 + 1e-7)  # RK4 error ~1e-9 here
    assert est.value == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("seed,dyn", [(0, "standard"), (1, "field"), (2, "standard")])
def test_gronwall_factor_bounds_random_function_controls(seed, dyn):
    """Random smooth depth-dependent kernels (sign-changing, tanh): the factor bounds the
    RK4-observed amplification, and ∫‖A(t)‖_ω dt agrees with an independent QUADPACK
    integral of independently assembled matrices (and is not below it)."""
    from scipy.integrate import quad

    rng = np.random.default_rng(10 + seed)
    C = rng.standard_normal((3, 3, 3))  # c_jl(t) = Σ_m C[j, l, m] cos(m t · 2), j, l ≤ 2
    T = 1.5

    def coef(t):
        return np.einsum("jlm,m->jl", C, np.cos(2.0 * np.arange(3) * t + np.arange(3)))

    def w_fn(x, y, t):
        c = torch.as_tensor(coef(t))
        bx = torch.stack([torch.cos(j * math.pi * x[..., 0]) for j in range(3)], -1)
        by = torch.stack([torch.cos(j * math.pi * y[..., 0]) for j in range(3)], -1)
        return torch.einsum("...j,jl,...l->...", bx, c, by)

    ctrl = FunctionControls(w_fn, lambda x, t: 0.2 * torch.sin(3 * x[..., 0] + t), 1, T)
    grid = Midpoint(12).grid()
    x, w = grid.nodes[:, 0].numpy(), grid.weights.numpy()
    B = np.stack([_cos_basis(x, j) for j in range(3)], 1)

    def norm(t):
        return _weighted_op_norm(B @ coef(t) @ B.T * w[None, :], w)

    ref, ref_err = quad(norm, 0.0, T, epsabs=1e-13, epsrel=1e-13, limit=500)
    integral = operator_norm_integral(ctrl, grid)
    assert not integral.certified and integral.converged
    assert ref - ref_err <= integral.value <= ref * (1 + 1e-8)
    dynamics = make_dynamics(dyn, "tanh")
    G = gronwall_factor(ctrl, dynamics, grid)
    assert G == pytest.approx(math.exp(integral.value), rel=1e-14)
    u0 = torch.randn(2, 12, generator=_gen(seed), dtype=DT)
    disc = Discretization(Midpoint(12), RK4(), 32)
    est = lipschitz_estimate(ctrl, dynamics, u0, disc, iters=30, rtol=1e-6)  # a lower bound
    assert 0 < est.value <= G
    rep = input_sensitivity(ctrl, dynamics, u0, disc, scales=(1e-3, 1.0))
    assert rep.holds and rep.gronwall == G


def test_gronwall_integral_of_knot_controls_is_certified():
    """Piecewise-linear knots in depth: the trapezoid sum of the knot norms, an upper bound of
    the integral of the (convex) interpolated norm; depth-independent callables: exact."""
    from scipy.integrate import quad

    g = _gen(8)
    M, size = 3, 4
    ctrl = GridControls(1, size, M, 2.0, "linear",
                        w=torch.randn(M + 1, size, size, generator=g, dtype=DT),
                        b=torch.zeros(M + 1, size, dtype=DT))
    grid = GaussLegendre(9).grid()
    x, w = grid.nodes[:, 0].numpy(), grid.weights.numpy()
    P = _hat(x, size)
    A = [P @ ctrl.w.detach().numpy()[k] @ P.T * w[None, :] for k in range(M + 1)]
    norms = [_weighted_op_norm(Ak, w) for Ak in A]
    delta = 2.0 / M
    trapezoid = delta * (sum(norms) - 0.5 * (norms[0] + norms[-1]))
    true = sum(quad(lambda s, k=k: _weighted_op_norm((1 - s) * A[k] + s * A[k + 1], w),
                    0.0, 1.0, epsabs=1e-13, limit=200)[0] * delta for k in range(M))
    integral = operator_norm_integral(ctrl, grid)
    assert integral.certified
    assert integral.value == pytest.approx(trapezoid, rel=1e-12)
    assert true <= integral.value
    const = FunctionControls(lambda x, y, t: 0.7 * torch.cos(x[..., 0] - y[..., 0]),
                             lambda x, t: 0 * x[..., 0], 1, 1.5, time_dependent=False)
    K = 0.7 * np.cos(x[:, None] - x[None, :]) * w[None, :]
    exact = operator_norm_integral(const, grid)
    assert exact.certified and exact.value == pytest.approx(1.5 * _weighted_op_norm(K, w),
                                                            rel=1e-12)


def test_stability_report_says_whether_the_gronwall_factor_is_certified():
    def net_with(ctrl):
        return ContinuumNetwork(ctrl, make_dynamics("standard", "tanh"),
                                PiecewiseConstantLifting(4), CellAverageReadout(2),
                                Discretization(Midpoint(8), RK4(), 8))

    xi = torch.randn(2, 4, generator=_gen(2), dtype=DT)
    grid_ctrl = GridControls.constant(0.5, 0.1)
    rep = stability_report(net_with(grid_ctrl), xi, iters=20)
    assert rep.gronwall_certified is True and "exact" in rep.gronwall_method
    assert rep.as_dict()["gronwall_certified"] is True
    fn = FunctionControls(lambda x, y, t: math.cos(3 * t) + 0 * x[..., 0],
                          lambda x, t: 0 * x[..., 0], 1, 1.0)
    rep = stability_report(net_with(fn), xi, iters=20)
    assert rep.gronwall_certified is False and "estimate" in rep.gronwall_method
    # ∫|cos 3t| dt on [0, 1] = (2 − sin 3)/3, the operator norm of a constant kernel is |w|
    exact = (2 - math.sin(3.0)) / 3
    assert exact <= rep.integrated_operator_norm <= exact * (1 + 1e-9)
    assert rep.gronwall == pytest.approx(math.exp(rep.integrated_operator_norm), rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Hessian (MODEL.md §6)
# ---------------------------------------------------------------------------------------------


def _convex_case(alpha=0.05, n_cells=2, seed=0):
    """σ = identity, w ≡ 0 (fixed), b optimized: u(T) = u0 + ∫ b dt, J a convex quadratic."""
    N, size, M = 8, 3, 2
    ctrl = GridControls(1, size, M, 1.0, "linear")
    net = ContinuumNetwork(ctrl, make_dynamics("standard", "identity"),
                           PiecewiseConstantLifting(4), CellAverageReadout(n_cells),
                           Discretization(Midpoint(N), RK4(), 4))
    g = _gen(seed)
    xi = torch.randn(5, 4, generator=g, dtype=DT)
    y = torch.randn(5, n_cells, generator=g, dtype=DT)
    # --- independent exact Hessian -------------------------------------------------------
    x = (np.arange(N) + 0.5) / N
    P = _hat(x, size)  # (N, Nc)
    R = np.zeros((n_cells, N))
    for i, xi_ in enumerate(x):
        R[int(xi_ * n_cells), i] = n_cells / N  # average over the N / n_cells nodes of a cell
    delta = 1.0 / M
    tau = np.full(M + 1, delta)
    tau[0] = tau[-1] = delta / 2  # ∫ of the piecewise-linear hat functions in depth
    L = np.kron(tau[None, :], R @ P)  # outputs = L b_flat + R u0, b_flat[k·Nc + c]
    Mt = _mass_1d(M + 1, 1.0)  # depth mass of linear hats on [0, T]
    H = L.T @ L + alpha * np.kron(Mt, _mass_1d(size))
    # u0 at nodes = ξ of the containing lifting cell
    U0 = xi.numpy()[:, (x * 4).astype(int)]
    c = U0 @ R.T - y.numpy()  # residual at b = 0
    grad0 = L.T @ c.mean(0)
    b_star = np.linalg.lstsq(H, -grad0, rcond=None)[0]  # α = 0: H singular, grad0 ∈ range H
    return net, xi, y, H, b_star


def test_convex_case_is_certified_strict_minimizer_with_exact_spectrum():
    alpha = 0.05
    net, xi, y, H, b_star = _convex_case(alpha)
    red = ReducedObjective(net, Objective("mse", alpha), xi, y, params="controls.b")
    assert red.n == H.shape[0] == 9
    np.testing.assert_allclose(red.hessian().numpy(), H, rtol=1e-10, atol=1e-12)
    # at b = 0 the gradient is not zero
    rep0 = certify(red, k=20)
    assert rep0.verdict == "not a critical point" and rep0.grad_norm > 1e-3
    red.set(torch.as_tensor(b_star))
    rep = certify(red, k=20)
    ev = np.linalg.eigvalsh(H)
    assert rep.grad_norm < 1e-10
    assert rep.verdict == "strict local minimizer"
    assert rep.lambda_min == pytest.approx(ev[0], rel=1e-9)
    assert rep.lambda_max == pytest.approx(ev[-1], rel=1e-9)
    np.testing.assert_allclose(rep.ritz_values, ev, rtol=1e-8, atol=1e-12)
    assert rep.condition == pytest.approx(ev[-1] / ev[0], rel=1e-8)
    # w was not varied
    assert float(net.controls.w.detach().abs().max()) == 0.0


def _saddle_case(T=1.5, target=2.0, alpha=0.0):
    """w ≡ 0, σ = identity, u0 = 0, parameters (b, c): y = T ⟨c, b⟩_quad, a bilinear saddle."""
    ctrl = GridControls(1, 2, 1, T, "constant")
    net = ContinuumNetwork(ctrl, make_dynamics("standard", "identity"),
                           PiecewiseConstantLifting(4), LinearReadout(1, 1, 2),
                           Discretization(Midpoint(8), RK4(), 4))
    xi = torch.zeros(1, 4, dtype=DT)
    y = torch.full((1, 1), target, dtype=DT)
    x = (np.arange(8) + 0.5) / 8
    P = _hat(x, 2)
    G = P.T @ (P / 8)  # ∫ c b dx by the midpoint rule
    H = np.zeros((4, 4))
    H[:2, 2:] = H[2:, :2] = -target * T * G
    H[:2, :2] = alpha * T * _mass_1d(2)
    return net, xi, y, H


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_constructed_saddle_is_detected_with_descent_direction(alpha):
    net, xi, y, H = _saddle_case(alpha=alpha)
    obj = Objective("mse", alpha)
    red = ReducedObjective(net, obj, xi, y, params=["controls.b", "readout.c"])
    rep = certify(red, k=10)
    ev = np.linalg.eigvalsh(H)
    assert rep.grad_norm == 0.0
    assert rep.verdict == "saddle"
    assert ev[0] < 0 < ev[-1]
    assert rep.lambda_min == pytest.approx(ev[0], rel=1e-10)
    v = rep.direction.numpy()
    np.testing.assert_allclose(H @ v, ev[0] * v, atol=1e-10)  # an eigenvector of the exact H
    assert rep.descent.decreased
    # independent check: J(θ + s v) < J(θ) evaluated directly with the objective
    s = rep.descent.best_step
    J0 = float(obj(net, xi, y).detach())
    with torch.no_grad():
        net.controls.b += s * torch.as_tensor(v[:2]).reshape(1, 2)
        net.readout.c += s * torch.as_tensor(v[2:]).reshape(1, 2)
    assert float(obj(net, xi, y).detach()) < J0 - 1e-6


def _scaled(objective, c):
    """c · J: the same problem in other units of J."""
    return lambda net, x, y, disc=None: c * objective(net, x, y, disc)


@pytest.mark.parametrize("c", [1e-4, 1.0, 1e4])
def test_hessian_verdicts_are_invariant_to_scaling_J(c):
    """Scaling J by c > 0 scales ∇J and ∇²J by c and changes no verdict: the convex case is
    not critical at b = 0 and a strict minimizer at b*; without Tikhonov term (α = 0, more
    knots than outputs) b* is degenerate (exact null space of LᵀL); the saddle stays a saddle."""
    net, xi, y, H, b_star = _convex_case(0.05)
    red = ReducedObjective(net, _scaled(Objective("mse", 0.05), c), xi, y, params="controls.b")
    assert certify(red, k=20).verdict == "not a critical point"
    red.set(torch.as_tensor(b_star))
    rep = certify(red, k=20)
    ev = np.linalg.eigvalsh(H)
    assert rep.verdict == "strict local minimizer"
    assert rep.lambda_min == pytest.approx(c * ev[0], rel=1e-9)
    assert rep.tol == pytest.approx(c * 1e-6 * ev[-1], rel=1e-9)  # relative, no floor at 1
    net, xi, y, H0, b0 = _convex_case(0.0)
    ev0 = np.linalg.eigvalsh(H0)
    assert ev0[0] < 1e-14 * ev0[-1]  # rank(LᵀL) ≤ 2 < 9: the exact Hessian is singular
    red = ReducedObjective(net, _scaled(Objective("mse", 0.0), c), xi, y, params="controls.b")
    red.set(torch.as_tensor(b0))
    rep = certify(red, k=20)
    assert rep.verdict == "degenerate" and rep.exact
    assert rep.grad_norm <= rep.grad_tol and rep.rounding <= 1e-12 * c
    net, xi, y, Hs = _saddle_case(alpha=0.3)
    red = ReducedObjective(net, _scaled(Objective("mse", 0.3), c), xi, y,
                           params=["controls.b", "readout.c"])
    rep = certify(red, k=10)
    assert rep.verdict == "saddle" and rep.descent.decreased
    assert rep.lambda_min == pytest.approx(c * np.linalg.eigvalsh(Hs)[0], rel=1e-10)


class _MatrixObjective:
    """The interface of ReducedObjective for J(θ) = ½ θᵀMθ with a given (maybe inexact,
    i.e. asymmetric) Hessian-vector product θ ↦ Mθ, at θ = 0."""

    def __init__(self, M: torch.Tensor) -> None:
        self.M, self.n, self.names = M, M.shape[0], ["theta"]
        self.dtype, self.device = M.dtype, M.device

    def gradient(self):
        return 0.0, torch.zeros(self.n, dtype=self.dtype)

    def hvp(self, v):
        return self.M @ v

    def vector(self):
        return torch.zeros(self.n, dtype=self.dtype)


def test_hessian_rounding_error_sets_the_eigenvalue_floor():
    """An exactly symmetric H = diag(1e-4, 1, …, 1) is a strict minimizer (λ_min = 1e-4 ≫
    1e-6 ‖H‖). The same products with an error E of size 1e-4 — antisymmetric, so visible:
    an exact Hessian is symmetric, and a rounding error has a symmetric part of the same size
    — cannot resolve λ_min = 1e-4: not certified. With Lanczos exhausting the space, the
    measured asymmetry is ‖Qᵀ E Q‖ = ‖E‖ exactly (Q orthogonal)."""
    n = 12
    D = torch.diag(torch.tensor([1e-4] + [1.0] * (n - 1), dtype=DT))
    rep = certify(_MatrixObjective(D), k=n)
    assert rep.verdict == "strict local minimizer"
    assert rep.rounding <= n * torch.finfo(DT).eps * (1 + 1e-12)  # the floor n·u·‖H‖ only
    K = torch.randn(n, n, generator=_gen(3), dtype=DT)
    E = 1e-4 * (K - K.T) / float(torch.linalg.matrix_norm(K - K.T, 2))
    rep = certify(_MatrixObjective(D + E), k=n)
    assert rep.rounding == pytest.approx(1e-4, rel=1e-8)
    assert rep.verdict == "degenerate" and rep.tol == pytest.approx(1e-3, rel=1e-8)
    # the same at any scale of J
    rep = certify(_MatrixObjective(1e6 * (D + E)), k=n)
    assert rep.verdict == "degenerate" and rep.tol == pytest.approx(1e3, rel=1e-8)


def test_unconverged_lanczos_does_not_certify_a_minimizer():
    """H = diag(1, 2, …, 60) with 3 Lanczos steps: the smallest Ritz value (≥ λ_min) has a
    residual larger than itself, so positivity of λ_min is not established; with all steps it
    is."""
    M = torch.diag(torch.arange(1, 61, dtype=DT))
    red = _MatrixObjective(M)
    rep = certify(red, k=3)
    assert not rep.exact and rep.residual_min > rep.lambda_min > 1.0
    assert rep.verdict == "degenerate"
    full = certify(red, k=60)
    assert full.exact and full.verdict == "strict local minimizer"
    assert full.lambda_min == pytest.approx(1.0, rel=1e-10)


def test_lanczos_extreme_eigenvalues():
    n = 120
    g = _gen(5)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    lam = torch.cat([torch.tensor([-3.0, 6.0], dtype=DT), torch.rand(n - 2, generator=g,
                                                                     dtype=DT)])
    H = Q @ torch.diag(lam) @ Q.T
    res = lanczos(lambda v: H @ v, n, k=40)
    assert res.values[0] == pytest.approx(-3.0, abs=1e-9)
    assert res.values[-1] == pytest.approx(6.0, abs=1e-9)
    assert float(res.residuals[0]) < 1e-8
    Qr = res.vectors
    # full reorthogonalization keeps the Ritz vectors orthonormal; no spurious copies of −3
    np.testing.assert_allclose((Qr.T @ Qr).numpy(), np.eye(Qr.shape[1]), atol=1e-10)
    assert float(res.values[1]) > -2.0


def test_unknown_parameter_name_is_rejected():
    net, xi, y, _, _ = _convex_case()
    with pytest.raises(PdenetsError, match="unknown parameter"):
        ReducedObjective(net, Objective("mse", 0.1), xi, y, params="controls.q")


# ---------------------------------------------------------------------------------------------
# Controllability (MODEL.md §9)
# ---------------------------------------------------------------------------------------------


def _net(kind, act, w=None, b=None, n=4):
    ctrl = GridControls(1, 3, 2, 1.0, "linear", w=w, b=b)
    return ContinuumNetwork(ctrl, make_dynamics(kind, act), PiecewiseConstantLifting(n),
                            CellAverageReadout(n), Discretization(Midpoint(8), RK4(), 4))


def test_linear_controllable_case_misfit_vanishes_as_alpha_to_zero():
    g = _gen(1)
    teacher = _net("standard", "identity", w=torch.randn(3, 3, 3, generator=g, dtype=DT),
                   b=torch.randn(3, 3, generator=g, dtype=DT))
    xi = torch.randn(4, 4, generator=g, dtype=DT)
    with torch.no_grad():
        y = teacher(xi)  # reachable by construction
    rep = controllability_study(_net("standard", "identity"), xi, y, alphas=(1e-2, 1e-5),
                                counts=(1, 4), max_iter=100, delta=1e-3)
    a_big, a_small = rep.alpha
    assert a_big.misfit_max > 1e-3  # α = 1e-2 does not reach the targets
    assert a_small.misfit_max < 1e-4 < a_big.misfit_max
    assert rep.controllable
    assert 0.8 < rep.trend < 1.2  # misfit ∝ α for a reachable target
    assert all(r.misfit_max < 1e-3 for r in rep.samples)
    # independent recomputation of the misfit of a fitted network
    net = _net("standard", "identity")
    r = fit(net, xi, y, 1e-5, max_iter=100)
    with torch.no_grad():
        d = torch.linalg.vector_norm(net(xi) - y, dim=1)
    assert r.misfit_max == pytest.approx(float(d.max()), rel=1e-12)
    assert terminal_misfit(net, xi, y)[1] == pytest.approx(float(d.pow(2).mean().sqrt()))


def test_selection_positivity_obstructs_negative_targets():
    """u' = u tanh(z) ≥ −u keeps u(T) ≥ e^{−T} u(0) > 0: negative targets stay at distance
    ≥ ‖e^{−T} ξ − y‖, and that infimum is approached (b → −∞) but the misfit never vanishes."""
    g = _gen(2)
    xi = torch.rand(3, 4, generator=g, dtype=DT) + 0.5
    y = -0.5 * torch.ones(3, 4, dtype=DT)
    lower = float(torch.linalg.vector_norm(math.exp(-1.0) * xi - y, dim=1).max())
    rep = controllability_study(_net("selection", "tanh"), xi, y, alphas=(1e-2, 1e-5),
                                max_iter=100)
    assert not rep.controllable
    for r in rep.alpha:
        assert r.misfit_max >= lower * (1 - 1e-9)
    assert rep.alpha[-1].misfit_max < 1.1 * lower
    assert rep.alpha[-1].misfit_max > 0.5
    assert rep.trend < 0.1


# ---------------------------------------------------------------------------------------------
# Steady states (MODEL.md §1, time-independent controls)
# ---------------------------------------------------------------------------------------------


def _neumann_eigs(n: int) -> np.ndarray:
    """Eigenvalues of the cell-centred Neumann Laplacian on n cells of [0, 1]."""
    h = 1.0 / n
    return -4.0 / h**2 * np.sin(np.arange(n) * np.pi / (2 * n)) ** 2


@pytest.mark.parametrize(
    "kind,act,a,b0,u_init,u_exact,lam0,verdict",
    [
        ("standard", "identity", -1.0, 0.5, None, 0.5, -1.0, "asymptotically stable"),
        ("standard", "identity", 1.0, 0.5, None, -0.5, 1.0, "unstable"),
        ("standard", "tanh", -2.0, 0.5, None, 0.25, -2.0, "asymptotically stable"),
        # field: a·tanh(u*) + b0 = 0, constant mode a σ'(u*)
        ("field", "tanh", 2.0, -0.5, None, math.atanh(0.25), 2.0 * (1 - 0.25**2), "unstable"),
        # selection: u*·σ(a u* + b0) = 0 with u* ≠ 0, constant mode u* a = −b0
        ("selection", "tanh", -1.0, 0.5, 1.0, 0.5, -0.5, "asymptotically stable"),
    ],
)
def test_steady_state_spectrum_verdict_and_simulation(kind, act, a, b0, u_init, u_exact, lam0,
                                                      verdict):
    """w ≡ a, b ≡ b0, ε > 0: u* is constant, f'(u*) = c·A + εΔ with A = a 1ωᵀ commuting with
    Δ, so the spectrum is {c a} ∪ {ε μ_j, j ≥ 1} with μ_j the Neumann eigenvalues."""
    n, eps = 12, 0.05
    ctrl = GridControls.constant(a, b0)
    dyn = make_dynamics(kind, act, eps)
    grid = Midpoint(n).grid()
    init = None if u_init is None else torch.full((n,), u_init, dtype=DT)
    rep = analyze_steady_state(ctrl, dyn, grid, init, horizon=15.0, perturbation=1e-8)
    assert rep.converged and rep.residual < 1e-10
    np.testing.assert_allclose(rep.u.numpy(), u_exact, atol=1e-10)
    exact = np.sort(np.concatenate([[lam0], eps * _neumann_eigs(n)[1:]]))[::-1]
    np.testing.assert_allclose(rep.eigenvalues_real, exact, atol=1e-9)
    np.testing.assert_allclose(rep.eigenvalues_imag, 0.0, atol=1e-9)
    assert rep.verdict == verdict
    assert rep.agrees is True
    sim = rep.simulation
    assert sim.verdict == ("decays" if verdict.startswith("asym") else "grows")
    # the perturbation decays/grows at the slowest/fastest linear rate
    assert sim.observed_rate == pytest.approx(exact[0], rel=2e-2, abs=1e-3)


def test_degenerate_steady_states_are_marginal():
    """ε = 0, w ≡ −1: every constant-mean shift of u* is neutral (eigenvalue 0, N − 1 times)."""
    ctrl = GridControls.constant(-1.0, 0.5)
    rep = analyze_steady_state(ctrl, make_dynamics("standard", "identity"), Midpoint(8).grid(),
                               horizon=5.0)
    assert rep.converged
    assert abs(float(rep.u.mean()) - 0.5) < 1e-10  # ∫u* = −b0/a
    assert rep.verdict == "marginal" and rep.agrees is None
    assert sorted(rep.eigenvalues_real)[0] == pytest.approx(-1.0)
    assert rep.simulation.verdict == "stays"


def test_time_dependent_controls_need_a_depth():
    ctrl = GridControls.from_functions(lambda x, y, t: -1.0 - t, lambda x, t: 0.5, 1, 2, 2, 1.0)
    grid = Midpoint(8).grid()
    dyn = make_dynamics("standard", "identity", 0.05)
    with pytest.raises(PdenetsError, match="depend on depth"):
        find_steady_state(ctrl, dyn, grid)
    res = find_steady_state(ctrl, dyn, grid, depth=1.0)  # frozen at t = 1: w ≡ −2
    np.testing.assert_allclose(res.u.numpy(), 0.25, atol=1e-10)
