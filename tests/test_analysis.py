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
    input_sensitivity,
    lanczos,
    lipschitz_estimate,
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
    b_star = -np.linalg.solve(H, grad0)
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
