"""HJB solver (MODEL.md §8): observed orders against the closed form, agreement with the direct
method and the closed loop, the inner minimization against brute force, bad input and the CLI.

References are independent of the solver: the exact value/feedback of §8, a brute-force search
over a dense control grid, and the direct method (L-BFGS over piecewise-constant controls,
autograd through the RK4 forward solve).
"""

import json
import re
import time

import numpy as np
import pytest
import torch

import pdenets as pn
from conftest import observed_orders
from pdenets.cli import main
from pdenets.errors import ConfigError, PdenetsError
from pdenets.hjb import (
    HJBOptions,
    ReducedProblem,
    StateGrid,
    closed_form_feedback,
    closed_form_value,
    closed_loop,
    direct_method,
    estimate_memory,
    solve_hjb,
)

ALPHA, T = 0.5, 1.0




def _closed_form_problem(D):
    """∂_t u = b on D midpoint nodes (ω = 1/D), w ≡ 0, σ = identity, state terminal cost."""
    y = [0.2, -0.1, 0.15][:D]
    prob = ReducedProblem(pn.Standard("identity"), pn.Midpoint(D), 1, "b", ALPHA, T, target=y)
    return prob, torch.tensor(y, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# closed form of MODEL.md §8
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scheme, D, points",
    [
        ("lax-friedrichs", 1, [21, 41, 81, 161]),
        ("lax-friedrichs", 2, [17, 33, 65]),
        ("lax-friedrichs", 3, [11, 21, 41]),
        ("semi-lagrangian", 1, [21, 41, 81, 161]),
        ("semi-lagrangian", 2, [17, 33, 65]),
    ],
)
def test_closed_form_value_and_feedback_first_order(scheme, D, points):
    """Value and feedback errors (interior box |v − y|∞ ≤ 1/2, t = 0 and t = T/2) shrink at the
    schemes' order 1; weighted norms ω_i = 1/D (the §8 formula with ‖·‖_ω)."""
    prob, y = _closed_form_problem(D)
    hs, eV, eb = [], [], []
    for n in points:
        grid = StateGrid(-1.0, 1.0, n, D)
        sol = solve_hjb(prob, grid, HJBOptions(scheme=scheme, cfl=0.9, snapshots=3))
        X = grid.points()
        inner = ((X - y).abs() <= 0.5 + 1e-12).all(1)
        Xi = X[inner]
        errV, errb = 0.0, 0.0
        for k, t in enumerate((0.0, 0.5 * T)):
            exact = closed_form_value(t, Xi, y, ALPHA, T, prob.weights)
            errV = max(errV, float((sol.values[k].reshape(-1)[inner] - exact).abs().max()))
            _, b = sol.feedback(t, Xi)
            errb = max(errb, float((b - closed_form_feedback(t, Xi, y, ALPHA, T)).abs().max()))
        hs.append(float(grid.h[0]))
        eV.append(errV)
        eb.append(errb)
    slope_V, pair_V = observed_orders(hs, eV)
    slope_b, _ = observed_orders(hs, eb)
    assert all(a > b for a, b in zip(eV, eV[1:])), eV
    assert all(a > b for a, b in zip(eb, eb[1:])), eb
    assert abs(slope_V - 1.0) < 0.2, (slope_V, pair_V, eV)
    # D = 3 runs on coarse grids (h ≥ 0.05), where the feedback error is still pre-asymptotic
    assert abs(slope_b - 1.0) < (0.3 if D < 3 else 0.5), (slope_b, eb)
    assert eV[-1] < 0.03 and eb[-1] < 0.03


def test_closed_form_closed_loop_follows_exact_optimal_trajectory():
    """Under b*(t, v) the optimal path is u(t) − y = (v0 − y)(α + T − t)/(α + T) and the cost is
    V(0, v0); both are reproduced by the closed loop of the HJB feedback."""
    prob, y = _closed_form_problem(2)
    v0 = torch.tensor([0.75, 0.5], dtype=torch.float64)
    exact_V = float(closed_form_value(0.0, v0, y, ALPHA, T, prob.weights))
    errs = []
    for n in (17, 33, 65):
        sol = solve_hjb(prob, StateGrid(-1.0, 1.0, n, 2), HJBOptions(snapshots=11))
        cl = closed_loop(sol, v0, steps=40)
        exact_path = y + (v0 - y) * (ALPHA + T - cl.ts[:, None]) / (ALPHA + T)
        errs.append((abs(cl.cost - exact_V), float((cl.states - exact_path).abs().max())))
    # measured: cost errors 1.9e-5, 2.8e-6, 6.6e-7; path errors 5.5e-3, 1.9e-3, 8.4e-4
    assert errs[-1][0] < 1e-5 and errs[-1][1] < 2e-3, errs
    assert errs[0][0] > errs[1][0] > errs[2][0] and errs[0][1] > errs[1][1] > errs[2][1], errs
    # an admissible control never beats the optimum (up to the integration error)
    assert cl.cost >= exact_V - 1e-7


# ---------------------------------------------------------------------------------------------
# the inner minimization
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dyn, act, B", [("standard", "tanh", 1), ("standard", "tanh", 2),
                                         ("selection", "sigmoid", 1), ("standard", "softplus", 2)])
def test_hamiltonian_minimum_matches_brute_force(dyn, act, B):
    """One width node (ω = 1), controls θ = (w, b) ∈ R²: the closed-form/discrete+Newton
    infimum equals a brute-force minimum over a dense (w, b) grid (up to its resolution) and
    is never above it; ∂H/∂p = f(v, θ*) (envelope theorem)."""
    prob = ReducedProblem(pn.make_dynamics(dyn, act), pn.Midpoint(1), B, "wb", alpha=0.3)
    g = torch.Generator().manual_seed(1)
    v = 1.5 * torch.randn(6, B, generator=g, dtype=torch.float64)
    p = 2.0 * torch.randn(6, B, generator=g, dtype=torch.float64)
    row = prob.minimize(v, p)
    sig = prob.dynamics.activation.fn
    for i in range(v.shape[0]):
        # any minimizer has |w|, |b| <= Σ_k |q_k| L_σ / α · max(1, |v|); search twice that box
        q = p[i] * (v[i] if dyn == "selection" else 1.0)
        R = 2.0 * float(q.abs().sum()) / prob.alpha * max(1.0, float(v[i].abs().max()))
        w = torch.linspace(-R, R, 801, dtype=torch.float64)
        W, Bb = torch.meshgrid(w, w, indexing="ij")
        W, Bb = W.reshape(-1), Bb.reshape(-1)
        z = W[:, None] * v[i][None] + Bb[:, None]  # (K, B)
        f = sig(z) * (v[i] if dyn == "selection" else 1.0)
        brute = ((f * p[i]).sum(1) + 0.5 * prob.alpha * (W**2 + Bb**2)).min()
        assert float(row.H[i]) <= float(brute) + 1e-10
        # grid spacing R/400: the gap is at most ½ λ_max (R/400)² with the objective's Hessian
        # bound λ_max <= α + Σ|q| sup|σ''| (1 + |v|²)  (sup|σ''| <= 1 for these activations)
        lam = prob.alpha + float(q.abs().sum()) * (1 + float(v[i].abs().max()) ** 2)
        gap = float(brute) - float(row.H[i])
        assert gap < 0.5 * lam * (R / 400) ** 2, (gap, lam, R)
    eps = 1e-6
    for d in range(B):
        e = torch.zeros(B, dtype=torch.float64)
        e[d] = eps
        dH = (prob.minimize(v, p + e).H - prob.minimize(v, p - e).H) / (2 * eps)
        assert torch.allclose(dH, row.f[:, d], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# nonlinear problems: HJB vs the direct method vs the closed loop
# ---------------------------------------------------------------------------------------------
def test_tanh_D1_hjb_direct_and_closed_loop_agree():
    prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(1), 1, "wb", alpha=0.2, T=1.0,
                          target=[0.7])
    v0 = [-0.3]
    direct = [direct_method(prob, v0, intervals=M, steps=2 * M).cost for M in (8, 16, 32)]
    # the direct method converges (second order in the control interval)
    d1, d2 = direct[0] - direct[1], direct[1] - direct[2]
    assert d1 > 0 and d2 > 0 and 2.5 < d1 / d2 < 6.0, direct
    ref = direct[-1]
    hs, errs, cl_errs = [], [], []
    for n in (41, 81, 161, 321):
        grid = StateGrid(-1.5, 1.5, n, 1)
        sol = solve_hjb(prob, grid, HJBOptions(snapshots=11))
        hs.append(float(grid.h[0]))
        errs.append(abs(float(sol.value(0.0, v0)) - ref))
        if n >= 161:
            cl = closed_loop(sol, v0, steps=40)
            cl_errs.append(cl.cost - ref)
    slope, _ = observed_orders(hs, errs)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert abs(slope - 1.0) < 0.3, (slope, errs)
    assert errs[-1] < 3e-3
    # the closed-loop cost matches the optimum much more closely than V's O(h) error
    assert all(abs(e) < 2e-5 for e in cl_errs), cl_errs
    assert abs(cl_errs[-1]) < 0.05 * errs[-1]


def test_tanh_D2_hjb_direct_and_closed_loop_agree():
    """Two width nodes (D = 2), tanh, w and b controls."""
    prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(2), 1, "wb", alpha=0.2, T=1.0,
                          target=[[0.6, -0.4]])
    v0 = [-0.2, 0.3]
    ref = direct_method(prob, v0, intervals=16, steps=32).cost
    hs, errs, cl = [], [], []
    for n in (21, 41, 81):
        grid = StateGrid(-1.2, 1.2, n, 2)
        sol = solve_hjb(prob, grid, HJBOptions(snapshots=11))
        hs.append(float(grid.h[0]))
        errs.append(abs(float(sol.value(0.0, v0)) - ref))
        if n != 41:
            cl.append(abs(closed_loop(sol, v0, steps=25).cost - ref))
    slope, _ = observed_orders(hs, errs)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert abs(slope - 1.0) < 0.3, (slope, errs)
    assert cl[-1] < 1e-4 and cl[-1] < cl[0], cl


def test_semi_lagrangian_tanh_converges_to_direct():
    prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(1), 1, "wb", alpha=0.2, T=1.0,
                          target=[0.7])
    v0 = [-0.3]
    ref = direct_method(prob, v0, intervals=16, steps=32).cost
    errs = []
    for n in (41, 81, 161):
        sol = solve_hjb(prob, StateGrid(-1.5, 1.5, n, 1),
                        HJBOptions(scheme="semi-lagrangian", cfl=1.0, snapshots=5))
        errs.append(abs(float(sol.value(0.0, v0)) - ref))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 5e-3, errs
    assert 1.5 < errs[0] / errs[1] < 3.0 and 1.5 < errs[1] / errs[2] < 3.0, errs


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_memory_estimate_rejects_huge_grid_before_allocating():
    prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(2), 2, "wb", alpha=0.5)
    grid = StateGrid(-1, 1, 400, 4)  # 2.56e10 points: ~ TiB
    opts = HJBOptions(max_memory=2**30)
    assert estimate_memory(prob, grid, opts) > 100 * 2**30
    t0 = time.perf_counter()
    with pytest.raises(PdenetsError, match="GiB"):
        solve_hjb(prob, grid, opts)
    assert time.perf_counter() - t0 < 1.0
    # a grid that fits is accepted and its estimate bounds the grid arrays it holds
    small = StateGrid(-1, 1, 5, 4)
    sol = solve_hjb(prob, small, HJBOptions(snapshots=2, max_memory=2**30))
    assert sol.stats["memory_estimate"] >= sol.values.numel() * 8


def test_bad_input_raises_clear_errors():
    with pytest.raises(PdenetsError, match="unknown HJB scheme 'weno'"):
        HJBOptions(scheme="weno")
    with pytest.raises(PdenetsError, match="monotonicity"):
        HJBOptions(cfl=1.5)
    with pytest.raises(PdenetsError, match="snapshots"):
        HJBOptions(snapshots=1)
    with pytest.raises(PdenetsError, match="target contains 1 non-finite"):
        ReducedProblem(pn.Standard("tanh"), pn.Midpoint(2), target=[0.1, float("nan")])
    with pytest.raises(PdenetsError, match="alpha"):
        ReducedProblem(pn.Standard("tanh"), pn.Midpoint(1), alpha=0.0)
    with pytest.raises(PdenetsError, match="unknown control set"):
        ReducedProblem(pn.Standard("tanh"), pn.Midpoint(1), controls="x")
    with pytest.raises(PdenetsError, match="non-finite"):
        StateGrid(-1, float("inf"), 11, 1)
    with pytest.raises(PdenetsError, match="lo < hi"):
        StateGrid(1, -1, 11, 1)
    with pytest.raises(PdenetsError, match="integer >= 3"):
        StateGrid(-1, 1, 2, 1)
    prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(2), target=[0.1, 0.2])
    with pytest.raises(PdenetsError, match="D = B·N"):
        solve_hjb(prob, StateGrid(-1, 1, 11, 3))
    sol = solve_hjb(prob, StateGrid(-1, 1, 9, 2), HJBOptions(snapshots=2))
    with pytest.raises(PdenetsError, match="non-finite"):
        closed_loop(sol, [0.1, float("nan")])
    with pytest.raises(PdenetsError, match="outside"):
        sol.value(2.0, [0.0, 0.0])
    with pytest.raises(PdenetsError, match="expected"):
        sol.value(0.0, [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
_CF = """
[problem]
activation = "identity"
controls = "b"
alpha = 0.5
width = 1
target = 0.2
v0 = 0.8

[grid]
points = 81

[closed_loop]
steps = 20
starts = [[-0.5]]

[plot]
depths = 2
"""


def test_cli_closed_form_json(tmp_path, capsys):
    cfg = tmp_path / "cf.toml"
    cfg.write_text(_CF)
    out = tmp_path / "run"
    assert main(["hjb", "--config", str(cfg), "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)  # exactly one JSON object
    exact = float(closed_form_value(0.0, [0.8], [0.2], 0.5, 1.0))
    assert payload["exact_V0"] == pytest.approx(exact, rel=1e-12)
    assert abs(payload["V0"] - exact) < 0.02
    assert abs(payload["closed_loop_cost"] - exact) < 1e-3
    assert payload["grid_points"] == [81] and payload["D"] == 1
    for f in payload["files"]:
        assert (out / f).is_file(), f
    with np.load(out / "value.npz") as z:
        assert z["values"].shape == (11, 81)
        np.testing.assert_allclose(z["values"][-1], 0.5 * (np.linspace(-1, 1, 81) - 0.2) ** 2,
                                   atol=1e-14)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s + '\n[solver]\nscheme = "weno"\n', "unknown HJB scheme"),
        (lambda s: s.replace("alpha = 0.5", "alpha = 0.5\nbeta = 1"), "unknown key 'beta'"),
        (lambda s: s + "\n[extra]\nx = 1\n", "unknown config table"),
        (lambda s: s.replace("points = 81", 'points = "many"'), "grid.points: expected a int"),
        (lambda s: s.replace("v0 = 0.8\n", ""), "missing required key 'v0'"),
        (lambda s: s.replace("width = 1", "width = 2").replace("v0 = 0.8", "v0 = [1, 2, 3]"),
         "v0 has 3 entries"),
        (lambda s: s.replace("alpha = 0.5", "alpha = nan"), "finite number"),
        (lambda s: s.replace("points = 81", "points = 81\nlo = [0, 1]"), r"\[grid\]"),
        (lambda s: s.replace("width = 1", "width = 4").replace("points = 81", "points = 3000")
         .replace("v0 = 0.8", "v0 = [0.8, 0.8, 0.8, 0.8]").replace("starts = [[-0.5]]", ""),
         "GiB"),
        (lambda s: s + "\n[[grid]]\n", "not valid TOML"),
    ],
)
def test_cli_bad_config_fails_cleanly(tmp_path, capsys, mutate, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(mutate(_CF))
    out = tmp_path / "run"
    assert main(["hjb", "--config", str(cfg), "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdenets: error:"), cap.err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]


def test_load_config_reports_config_error(tmp_path):
    from pdenets.cli.hjb import load_config

    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
