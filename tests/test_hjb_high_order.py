"""High-order HJB grid schemes (MODEL.md §8; pdenets.hjb.high_order), devices and threads.

References are independent of the code under test: the exact value of §8's closed form, exact
derivatives of polynomials, a scalar (loop-by-loop) transcription of the Jiang–Peng WENO5
formulas, the direct method for a tanh problem, and the CPU solution for the CUDA one.
"""

import math

import pytest
import torch

import pdenets as pn
from conftest import observed_orders
from pdenets.errors import PdenetsError
from pdenets.hjb import (
    HIGH_ORDER_SCHEMES,
    HighOrder,
    HJBOptions,
    ReducedProblem,
    StateGrid,
    closed_form_value,
    direct_method,
    get_scheme,
    one_sided_high_order,
    solve_hjb,
)

ALPHA, T = 0.5, 1.0


def _closed_form(D):
    y = [0.2, -0.1][:D]
    return ReducedProblem(pn.Standard("identity"), pn.Midpoint(D), 1, "b", ALPHA, T, target=y)


def _interior_error(prob, grid, sol, k=0):
    """max |V − V_exact| at t = times[k] on the interior box |v|∞ ≤ 1/2."""
    pts = grid.points()
    m = (pts.abs() <= 0.5 + 1e-12).all(1)
    t = float(sol.times[k])
    ex = closed_form_value(t, pts[m], prob.target[0], ALPHA, T, prob.weights)
    return float((sol.values[k].reshape(-1)[m] - ex).abs().max())


@pytest.mark.parametrize("scheme, D, points", [
    ("eno2-rk2", 1, [21, 41, 81]),
    ("weno5-rk3", 1, [21, 41, 81]),
    ("eno2-rk2", 2, [17, 33]),
    ("weno5-rk3", 2, [17, 33]),
])
def test_closed_form_observed_order_at_least_1_7(scheme, D, points):
    prob = _closed_form(D)
    hs, errs = [], []
    for n in points:
        grid = StateGrid(-1.0, 1.0, n, D)
        sol = solve_hjb(prob, grid, HJBOptions(scheme=scheme, cfl=0.5, snapshots=3))
        hs.append(float(grid.h[0]))
        errs.append(max(_interior_error(prob, grid, sol, k) for k in (0, 1)))
    slope, _ = observed_orders(hs, errs)
    assert slope >= 1.7, (slope, errs)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    # far below the first-order scheme on the finest grid (≈ 1e-2 there)
    assert errs[-1] < 1e-4, errs


def test_eno2_is_exact_for_quadratics_and_weno5_for_quartics():
    """One-sided differences at interior points: ENO2 reproduces the derivative of a quadratic
    exactly, each WENO5 candidate (hence the blend) that of a quartic... up to its own order:
    third-order candidates are exact for cubics."""
    x = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
    h = torch.tensor([0.1], dtype=torch.float64)
    quad = 0.7 * x**2 - 0.3 * x + 0.2
    pm, pp = one_sided_high_order(quad, h, "eno2")
    exact = 1.4 * x - 0.3
    inner = slice(2, -2)
    assert torch.allclose(pm[0][inner], exact[inner], atol=1e-12)
    assert torch.allclose(pp[0][inner], exact[inner], atol=1e-12)
    cubic = x**3 - 0.5 * x**2 + 0.1 * x
    pm, pp = one_sided_high_order(cubic, h, "weno5")
    exact = 3 * x**2 - x + 0.1
    inner = slice(3, -3)
    assert torch.allclose(pm[0][inner], exact[inner], atol=1e-11)
    assert torch.allclose(pp[0][inner], exact[inner], atol=1e-11)


def _weno_scalar(v):
    """Jiang–Peng WENO5 for one point, written out with floats."""
    v1, v2, v3, v4, v5 = v
    p = [v1 / 3 - 7 * v2 / 6 + 11 * v3 / 6, -v2 / 6 + 5 * v3 / 6 + v4 / 3,
         v3 / 3 + 5 * v4 / 6 - v5 / 6]
    s = [13 / 12 * (v1 - 2 * v2 + v3) ** 2 + (v1 - 4 * v2 + 3 * v3) ** 2 / 4,
         13 / 12 * (v2 - 2 * v3 + v4) ** 2 + (v2 - v4) ** 2 / 4,
         13 / 12 * (v3 - 2 * v4 + v5) ** 2 + (3 * v3 - 4 * v4 + v5) ** 2 / 4]
    eps = 1e-6 * max(a * a for a in v) + 1e-99
    a = [g / (eps + si) ** 2 for g, si in zip((0.1, 0.6, 0.3), s)]
    return sum(ai * pi for ai, pi in zip(a, p)) / sum(a)


def test_weno5_matches_a_scalar_reference_on_rough_2d_data():
    g = torch.Generator().manual_seed(3)
    V = torch.rand(9, 11, generator=g, dtype=torch.float64)
    V[4:, :] += 1.0  # a jump
    h = torch.tensor([0.2, 0.1], dtype=torch.float64)
    pm, pp = one_sided_high_order(V, h, "weno5")
    for d in (0, 1):
        n = V.shape[d]
        for line in range(V.shape[1 - d]):
            u = (V[:, line] if d == 0 else V[line, :]).tolist()
            ext = [u[0] - k * (u[1] - u[0]) for k in (3, 2, 1)] + u + \
                  [u[-1] + k * (u[-1] - u[-2]) for k in (1, 2, 3)]
            dm = [(ext[j] - ext[j - 1]) / float(h[d]) for j in range(1, len(ext))]
            for i in range(n):
                j = i + 2  # dm[j] = D⁻u_i
                ref_m = _weno_scalar([dm[j - 2], dm[j - 1], dm[j], dm[j + 1], dm[j + 2]])
                ref_p = _weno_scalar([dm[j + 3], dm[j + 2], dm[j + 1], dm[j], dm[j - 1]])
                got_m = pm[d][(i, line) if d == 0 else (line, i)]
                got_p = pp[d][(i, line) if d == 0 else (line, i)]
                assert math.isclose(float(got_m), ref_m, rel_tol=1e-10, abs_tol=1e-10)
                assert math.isclose(float(got_p), ref_p, rel_tol=1e-10, abs_tol=1e-10)


def test_tanh_high_order_value_matches_direct_method_better_than_lax_friedrichs():
    prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(1), 1, "wb", alpha=0.2, T=1.0,
                          target=[0.7])
    v0 = [-0.3]
    ref = direct_method(prob, v0, intervals=32, steps=64).cost
    grid = StateGrid(-1.5, 1.5, 81, 1)
    err = {s: abs(float(solve_hjb(prob, grid, HJBOptions(scheme=s)).value(0.0, v0)) - ref)
           for s in ("lax-friedrichs", "eno2-rk2", "weno5-rk3")}
    # the direct reference is accurate to ~1e-5 (second order in 32 intervals)
    assert err["weno5-rk3"] < 1e-4, err
    assert err["eno2-rk2"] < 0.2 * err["lax-friedrichs"], err


def test_high_order_names_objects_and_bad_options():
    assert set(HIGH_ORDER_SCHEMES) == {"eno2-rk2", "weno5-rk3"}
    s = get_scheme("eno2-rk2")
    assert isinstance(s, HighOrder) and (s.spatial, s.time) == ("eno2", "rk2")
    with pytest.raises(PdenetsError, match="spatial"):
        HighOrder("weno3")
    with pytest.raises(PdenetsError, match="time stepping"):
        HighOrder("eno2", "rk4")
    with pytest.raises(PdenetsError, match="cfl"):
        HJBOptions(scheme="weno5-rk3", cfl=1.5)
    with pytest.raises(PdenetsError, match="device"):
        HJBOptions(device="tpu")
    with pytest.raises(PdenetsError, match="threads"):
        HJBOptions(threads=0)


def test_threads_option_restores_torch_setting_and_gives_the_same_solution():
    prob = _closed_form(2)
    grid = StateGrid(-1.0, 1.0, 17, 2)
    before = torch.get_num_threads()
    sols = [solve_hjb(prob, grid, HJBOptions(scheme="eno2-rk2", threads=k)) for k in (1, 2)]
    auto = solve_hjb(prob, grid, HJBOptions(scheme="eno2-rk2"))
    assert torch.get_num_threads() == before
    assert auto.stats["threads"] == 1  # small chunks: one intra-op thread
    assert sols[1].stats["threads"] == 2
    assert torch.allclose(sols[0].values, sols[1].values, rtol=0, atol=1e-13)
    assert torch.allclose(sols[0].values, auto.values, rtol=0, atol=1e-13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("scheme, act, controls", [
    ("weno5-rk3", "identity", "b"), ("eno2-rk2", "tanh", "wb"), ("lax-friedrichs", "tanh", "wb"),
    ("semi-lagrangian", "tanh", "wb"),
])
def test_cuda_grid_solution_equals_cpu_to_rounding(scheme, act, controls):
    prob = ReducedProblem(pn.Standard(act), pn.Midpoint(2), 1, controls, alpha=0.3, T=0.5,
                          target=[0.3, -0.2])
    grid = StateGrid(-1.0, 1.0, 33, 2)
    cpu = solve_hjb(prob, grid, HJBOptions(scheme=scheme))
    gpu = solve_hjb(prob, grid, HJBOptions(scheme=scheme, device="cuda"))
    assert gpu.stats["device"].startswith("cuda")
    assert cpu.stats["steps"] == gpu.stats["steps"]
    scale = float(cpu.values.abs().max())
    assert float((cpu.values - gpu.values).abs().max()) <= 1e-10 * scale
