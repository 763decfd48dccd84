"""The sampled HJB method (MODEL.md §8, high state dimension): closed form of §8 in D = 8 and 32,
a tanh problem against the grid solver, the refinement loop, the report and bad input.

References: the exact value of §8 (any D), the grid solver (second-order scheme) for D = 2.
"""

import pytest
import torch

import pdenets as pn
from pdenets.errors import PdenetsError
from pdenets.hjb import (
    HJBOptions,
    ReducedProblem,
    SampledOptions,
    StateGrid,
    closed_form_value,
    closed_loop,
    run_sampled,
    solve_hjb,
    solve_sampled,
    solve_tpbvp,
)

ALPHA, T = 0.5, 1.0
FAST = dict(starts=12, validation=6, intervals=8, steps=1, rounds=0, hidden=16, fit_iter=80,
            tpbvp_iter=60)


def _closed_form(D):
    y = torch.linspace(-0.3, 0.3, D, dtype=torch.float64)
    return ReducedProblem(pn.Standard("identity"), pn.Midpoint(D), 1, "b", ALPHA, T, target=y)


@pytest.mark.parametrize("D", [8, 32])
def test_closed_form_value_and_closed_loop_within_one_percent(D):
    prob = _closed_form(D)
    sol = solve_sampled(prob, SampledOptions(**FAST))
    g = torch.Generator().manual_seed(11)
    vs = -1 + 2 * torch.rand(24, D, generator=g, dtype=torch.float64)
    y = prob.target[0]
    for t in (0.0, 0.5 * T):
        exact = closed_form_value(t, vs, y, ALPHA, T, prob.weights)
        rel = ((sol.value(t, vs) - exact).abs() / exact).max()
        assert rel <= 0.01, (t, float(rel))
    for k in range(3):
        exact = float(closed_form_value(0.0, vs[k], y, ALPHA, T, prob.weights))
        cl = closed_loop(sol, vs[k], steps=20)
        assert abs(cl.cost - exact) <= 0.01 * exact, (cl.cost, exact)


def test_tpbvp_values_and_gradients_are_exact_for_the_closed_form():
    """Piecewise-constant controls are exact here (b* is constant along optimal paths), so
    V and D_vV along the trajectories equal the closed form everywhere on them."""
    prob = _closed_form(4)
    g = torch.Generator().manual_seed(2)
    starts = -1 + 2 * torch.rand(5, 4, generator=g, dtype=torch.float64)
    tr = solve_tpbvp(prob, starts, intervals=4, steps=1, max_iter=100)
    y = prob.target[0]
    for m in range(5):
        t = float(tr.t[0, m])
        v = tr.v[:, m]
        ex = closed_form_value(t, v, y, ALPHA, T, prob.weights)
        assert torch.allclose(tr.V[:, m], ex, rtol=1e-8, atol=1e-12)
        gex = prob.weights * (v - y) / (1 + (T - t) / ALPHA)
        assert torch.allclose(tr.G[:, m], gex, rtol=1e-6, atol=1e-10)


def test_tanh_D2_sampled_value_agrees_with_the_grid_solver():
    prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(2), 1, "wb", alpha=0.2, T=1.0,
                          target=[0.6, -0.4])
    vals = {}
    for n in (41, 81):
        grid = StateGrid(-1.2, 1.2, n, 2)
        vals[n] = solve_hjb(prob, grid, HJBOptions(scheme="eno2-rk2"))
    sol = solve_sampled(prob, SampledOptions(lo=-0.6, hi=0.6, starts=20, validation=6,
                                             intervals=8, steps=2, rounds=0, hidden=16,
                                             fit_iter=100, tpbvp_iter=80))
    g = torch.Generator().manual_seed(4)
    vs = -0.5 + torch.rand(10, 2, generator=g, dtype=torch.float64)
    fine, coarse = vals[81].value(0.0, vs), vals[41].value(0.0, vs)
    grid_err = (fine - coarse).abs()  # the coarse grid's error estimate bounds the fine one's
    diff = (sol.value(0.0, vs) - fine).abs()
    # within the grid's error plus 2 % of the value scale on the test states
    assert bool((diff <= grid_err + 0.02 * fine.abs().max()).all()), (diff, grid_err)


def test_refinement_adds_starts_where_the_residual_is_worst_and_reports_progress():
    prob = _closed_form(3)
    lines = []
    opts = SampledOptions(**{**FAST, "rounds": 2, "batch": 4, "hidden": 0, "tol": 1e-14})
    sol = solve_sampled(prob, opts, progress=lines.append)
    hist = sol.stats["history"]
    assert [h["trajectories"] for h in hist] == [12, 16, 20]
    assert sol.stats["rounds"] == 2 and not sol.stats["converged"]
    assert any("validation error" in s for s in lines)
    # a loose tolerance stops at once
    sol = solve_sampled(prob, SampledOptions(**{**FAST, "rounds": 3, "tol": 0.5}))
    assert sol.stats["rounds"] == 0 and sol.stats["converged"]


def test_run_sampled_report_has_the_grid_reports_fields():
    prob = _closed_form(2)
    v0 = [0.5, -0.5]
    exact = float(closed_form_value(0.0, torch.tensor(v0), prob.target[0], ALPHA, T,
                                    prob.weights))
    sol, rep = run_sampled(prob, v0, SampledOptions(**FAST), starts=[[0.1, 0.2]],
                           closed_loop_steps=10, exact_V0=exact)
    grid_keys = {"D", "width_nodes", "samples", "grid_points", "grid_size", "scheme",
                 "time_steps", "snapshots", "v0", "V0", "closed_loop_cost",
                 "closed_loop_running", "closed_loop_terminal", "closed_loop_steps",
                 "exact_V0", "direct_cost", "seconds", "point_steps_per_second",
                 "memory_estimate_bytes", "problem", "grid"}
    assert grid_keys <= set(rep)
    assert rep["method"] == "sampled" and len(rep["closed_loop_costs"]) == 2
    assert abs(rep["V0"] - exact) <= 1e-3 * exact


def test_bad_sampled_options_raise():
    with pytest.raises(PdenetsError, match="starts"):
        SampledOptions(starts=0)
    with pytest.raises(PdenetsError, match="tol"):
        SampledOptions(tol=-1.0)
    with pytest.raises(PdenetsError, match="device"):
        SampledOptions(device="tpu")
    with pytest.raises(PdenetsError, match="lo < hi"):
        solve_sampled(_closed_form(2), SampledOptions(lo=1.0, hi=0.0))
    sol = solve_sampled(_closed_form(2), SampledOptions(**{**FAST, "hidden": 0}))
    with pytest.raises(PdenetsError, match="outside"):
        sol.value(2.0, [0.0, 0.0])
