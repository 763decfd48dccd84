"""Observed convergence orders of the forward solver against exact / independent references."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import pdenets as pn
from conftest import observed_orders

ORDERS = {"euler": 1, "heun": 2, "rk4": 4}


def _random_controls(time_basis="constant", intervals=1, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = intervals + (time_basis == "linear")
    return pn.GridControls(1, 5, intervals, T=1.0, time_basis=time_basis,
                           w=scale * torch.randn(K, 5, 5, generator=g, dtype=torch.float64),
                           b=0.5 * torch.randn(K, 5, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_depth_order_linear_exact_matrix_exponential(solver):
    """σ = identity, time-independent controls: du/dt = A u + b, u(T) = exp(T·M)[u0; 1]."""
    ctrl = _random_controls()
    dyn = pn.Standard("identity")
    grid = pn.Midpoint(16).grid()
    A, b = ctrl.discretize(grid).at(0.5, 0.0, 1.0)
    A, b = A.detach().numpy(), b.detach().numpy()
    u0 = np.sin(3 * grid.nodes[:, 0].numpy()) + 0.2
    M = np.zeros((17, 17))
    M[:16, :16], M[:16, 16] = A, b
    exact = (scipy.linalg.expm(M) @ np.append(u0, 1.0))[:16]
    steps = [8, 16, 32, 64] if solver != "rk4" else [4, 8, 16, 32]
    errs = []
    for S in steps:
        sol = pn.solve(ctrl, torch.tensor(u0)[None], dyn,
                       pn.Discretization(pn.Midpoint(16), pn.make_solver(solver), S))
        errs.append(float(np.abs(sol.u[0].detach().numpy() - exact).max()))
    slope, pair = observed_orders([1 / S for S in steps], errs)
    assert abs(slope - ORDERS[solver]) < 0.15, (errs, slope)
    assert np.all(np.abs(pair - ORDERS[solver]) < 0.3), pair


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("variant", ["standard", "field", "selection"])
def test_depth_order_tanh_against_fine_reference(solver, variant):
    """tanh, controls piecewise linear in depth (2 intervals): reference dopri5 at rtol 1e-12."""
    ctrl = _random_controls("linear", intervals=2, scale=0.7)
    dyn = pn.make_dynamics(variant, "tanh")
    u0 = lambda x: 0.5 + 0.3 * torch.cos(math.pi * x[:, 0])  # noqa: E731
    ref = pn.solve(ctrl, u0, dyn, pn.Discretization(pn.Midpoint(16),
                                                   pn.Dopri5(rtol=1e-12, atol=1e-13), 1)).u
    steps = [8, 16, 32, 64] if solver != "rk4" else [4, 8, 16, 32]
    errs = []
    for S in steps:
        u = pn.solve(ctrl, u0, dyn, pn.Discretization(pn.Midpoint(16),
                                                     pn.make_solver(solver), S)).u
        errs.append(float((u - ref).abs().max()))
    slope, _ = observed_orders([1 / S for S in steps], errs)
    assert abs(slope - ORDERS[solver]) < 0.15, (errs, slope)


def test_dopri5_meets_tolerance_and_reports_steps():
    ctrl = _random_controls("linear", intervals=2, scale=0.7)
    dyn = pn.Standard("tanh")
    u0 = lambda x: torch.sin(5 * x[:, 0])  # noqa: E731
    ref = pn.solve(ctrl, u0, dyn, pn.Discretization(pn.Midpoint(16), pn.RK4(), 2048)).u
    prev_steps = 0
    for tol in (1e-4, 1e-7, 1e-10):
        sol = pn.solve(ctrl, u0, dyn,
                       pn.Discretization(pn.Midpoint(16), pn.Dopri5(rtol=tol, atol=tol), 1))
        err = float((sol.u - ref).abs().max())
        assert err < 50 * tol
        assert sol.stats["steps"] > prev_steps and sol.stats["nfev"] >= 6 * sol.stats["steps"]
        prev_steps = sol.stats["steps"]


def _separable_reference(T=1.0):
    """∂_t u = tanh(g(x) I(t) + b(x)), I = ∫ h u dy: the scalar ODE for I, solved by scipy."""
    g = lambda x: np.cos(np.pi * x)  # noqa: E731
    h = lambda y: 1.0 + y**2  # noqa: E731
    b = lambda x: 0.3 * np.sin(2 * np.pi * x)  # noqa: E731
    u0 = lambda x: np.exp(-x) + 0.5 * x  # noqa: E731
    I0 = scipy.integrate.quad(lambda y: h(y) * u0(y), 0, 1, epsabs=1e-15)[0]
    xs, ws = np.polynomial.legendre.leggauss(80)
    xs, ws = (xs + 1) / 2, ws / 2

    def rhs(t, I):
        return [np.sum(ws * h(xs) * np.tanh(g(xs) * I[0] + b(xs)))]

    sol = scipy.integrate.solve_ivp(rhs, (0, T), [I0], rtol=1e-13, atol=1e-14, method="DOP853")
    return sol.y[0, -1], (g, h, b, u0)


def test_width_convergence_separable_kernel():
    I_ref, _ = _separable_reference()
    ctrl = pn.FunctionControls(
        lambda x, y, t: torch.cos(math.pi * x[..., 0]) * (1 + y[..., 0] ** 2),
        lambda x, t: 0.3 * torch.sin(2 * math.pi * x[..., 0]),
        dim=1, time_dependent=False,
    )
    dyn = pn.Standard("tanh")
    u0t = lambda x: torch.exp(-x[:, 0]) + 0.5 * x[:, 0]  # noqa: E731

    def I_T(rule):
        sol = pn.solve(ctrl, u0t, dyn, pn.Discretization(rule, pn.RK4(), 400))
        x = sol.grid.nodes[:, 0]
        return float(sol.grid.integrate((1 + x**2) * sol.u[0]))

    ns = [8, 16, 32, 64]
    errs = [abs(I_T(pn.Midpoint(n)) - I_ref) for n in ns]
    slope, pair = observed_orders([1 / n for n in ns], errs)
    assert abs(slope - 2) < 0.15 and np.all(np.abs(pair - 2) < 0.15), errs
    gl = [abs(I_T(pn.GaussLegendre(n)) - I_ref) for n in (4, 8, 16, 32)]
    # spectral: the apparent algebraic order between doublings keeps growing (no fixed order),
    # exceeds midpoint's 2 by far, and the error reaches rounding level at 32 nodes
    _, gl_pair = observed_orders([1 / 4, 1 / 8, 1 / 16, 1 / 32], gl)
    assert np.all(np.diff(gl_pair) > 2) and gl_pair[-1] > 15, (gl, gl_pair)
    assert gl[-1] < 1e-12, gl


def test_discretization_invariance_predicted_by_richardson():
    """A model at (N, S), (2N, 2S), (4N, 4S): the (N,S)-(4N,4S) gap is the truncation error that
    (control vertices at k/4 fall on cell boundaries, so each cell sees a smooth integrand)
    the observed order-2 (midpoint) convergence predicts from the (N,S)-(2N,2S) gap."""
    net = pn.ContinuumNetwork.create(8, 3, control_size=5, intervals=4, init_scale=0.45, seed=3)
    with torch.no_grad():
        net.readout.c.normal_(0, 1.0)
    xi = torch.randn(16, 8, dtype=torch.float64)
    y = {}
    for f in (1, 2, 4):
        d = pn.Discretization(pn.Midpoint(16 * f), pn.RK4(), 8 * f)
        with torch.no_grad():
            y[f] = net(xi, d)
    gap1 = float((y[1] - y[2]).abs().max())
    gap4 = float((y[1] - y[4]).abs().max())
    predicted = gap1 * (1 - 1 / 16) / (1 - 1 / 4)
    assert gap4 < 2e-3
    assert abs(gap4 - predicted) < 0.15 * predicted, (gap4, predicted)
    assert torch.equal(y[1].argmax(1), y[4].argmax(1))


def test_heat_equation_imex_and_strang():
    """w = 0, b = 0, σ = id: ∂_t u = εΔu, u0 = cos(πx) → exp(−επ²t) cos(πx)."""
    eps, T = 0.1, 1.0
    ctrl = pn.GridControls(1, 2, 1, T=T)
    dyn = pn.Standard("identity", eps=eps)
    u0 = lambda x: torch.cos(math.pi * x[:, 0])  # noqa: E731
    with pytest.raises(pn.StabilityError, match="stability limit"):
        pn.solve(ctrl, u0, dyn, pn.Discretization(pn.Midpoint(64), pn.Euler(), 10))
    for rule in (pn.Midpoint(64), pn.Trapezoid(65)):
        grid = rule.grid()
        x = grid.nodes[:, 0]
        # exact semi-discrete solution: cos(πx) is an eigenvector of the discrete Laplacian
        hh = 1 / 64
        lam = -(2 / hh**2) * (1 - math.cos(math.pi * hh))
        semi = math.exp(eps * lam * T) * torch.cos(math.pi * x)
        cont = math.exp(-eps * math.pi**2 * T) * torch.cos(math.pi * x)
        def err(solver, S, rule=rule, semi=semi):
            sol = pn.solve(ctrl, u0, dyn, pn.Discretization(rule, solver, S))
            return float((sol.u[0] - semi).abs().max())

        steps = [40, 80, 160]
        slope, _ = observed_orders([1 / S for S in steps],
                                   [err(pn.IMEXEuler(), S) for S in steps])
        assert abs(slope - 1) < 0.15
        # Strang applies the heat semigroup exactly: no error for a pure diffusion
        assert err(pn.Strang(), 5) < 1e-13
        # explicit RK4 within its stability limit (h ε ρ <= 2.785) is accurate
        assert err(pn.RK4(), 700) < 1e-10
        # the width (finite-difference) error is second order: λ_h = −π² + π⁴h²/12 + O(h⁴)
        predicted = eps * T * math.pi**4 * hh**2 / 12 * math.exp(-eps * math.pi**2 * T)
        assert float((semi - cont).abs().max()) == pytest.approx(predicted, rel=0.01)


def test_gronwall_bound_holds(record_property):
    from pdenets.analysis import gronwall_factor

    ratios = []
    for seed in range(6):
        for variant, act in (("standard", "tanh"), ("standard", "sigmoid"), ("field", "tanh"),
                             ("standard", "relu")):
            net = pn.ContinuumNetwork.create(8, 2, control_size=5, intervals=3, init_scale=1.5,
                                             dynamics=variant, activation=act, seed=seed)
            disc = pn.Discretization(pn.Midpoint(32), pn.RK4(), 64)
            grid = net.grid(disc.width)
            factor = gronwall_factor(net.controls, net.dynamics, grid)
            xi1 = torch.randn(8, 8, dtype=torch.float64)
            xi2 = xi1 + 0.1 * torch.randn(8, 8, dtype=torch.float64)
            with torch.no_grad():
                s1, s2 = net.solve(xi1, disc), net.solve(xi2, disc)
                d0 = grid.l2_norm(net.initial_state(xi1, grid) - net.initial_state(xi2, grid))
                dT = grid.l2_norm(s1.u - s2.u)
            assert bool((dT <= factor * d0 * (1 + 1e-9)).all())
            ratios.append(float((dT / (factor * d0)).max()))
    record_property("gronwall_tightness_max", max(ratios))
    record_property("gronwall_tightness_median", float(np.median(ratios)))
    print(f"Gronwall tightness (observed/bound): max {max(ratios):.3f}, "
          f"median {np.median(ratios):.3f}")
