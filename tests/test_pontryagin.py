"""Pontryagin layer (MODEL.md §7): discrete PMP identity, residual at optimality, E-MSA, CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch

import pdenets as pn
from pdenets.config import load_config
from pdenets.errors import ConfigError, PdenetsError
from pdenets.objective import Objective
from pdenets.pontryagin import (
    MSA,
    costate_sweep,
    forward_sweep,
    hamiltonian,
    pmp_residual,
    stage_hamiltonian_gradients,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["data.name=iris", "train.epochs=2", "train.batch_size=64", "model.steps=2",
        "model.intervals=2", "model.width=8", "model.control_size=3"]


def _problem(basis="linear", solver="rk4", dynamics="standard", M=3, seed=1, loss="ce"):
    net = pn.ContinuumNetwork.create(4, 3 if loss == "ce" else 2, control_size=4, intervals=M,
                                     time_basis=basis, width=8, steps=6, solver=solver,
                                     dynamics=dynamics, init_scale=1.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.readout.c.normal_(0.0, 1.0, generator=g)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = (torch.randint(0, 3, (12,), generator=g) if loss == "ce"
         else torch.randn(12, 2, generator=g, dtype=torch.float64))
    return net, x, y


@pytest.mark.parametrize("basis,solver,dynamics", [
    ("linear", "rk4", "standard"), ("constant", "euler", "standard"),
    ("linear", "heun", "field"), ("constant", "rk4", "selection")])
def test_discrete_pmp_identity_on_non_converged_model(basis, solver, dynamics):
    """∂J/∂θ_j = −Σ_s w_s φ_j(t_s) ∇_θH(t_s) (data part) − exact running cost (+β term)."""
    net, x, y = _problem(basis, solver, dynamics)
    for alpha, beta in ((0.0, 0.0), (0.05, 0.0), (0.05, 0.02)):
        rep = pmp_residual(net, x, y, Objective("cross_entropy", alpha, beta))
        assert rep.grad_J_norm > 1e-4  # a generic, non-critical point
        assert rep.identity_error < 1e-10, (alpha, beta, rep.identity_error)
        if beta == 0:
            assert rep.projected_H_norm == pytest.approx(rep.grad_J_norm, rel=1e-10)
            # same relation knot by knot, in the dual norm
            for a, b in zip(rep.knot_residual, rep.knot_grad_J):
                assert a == pytest.approx(b, rel=1e-8)


def test_stage_gradients_match_autograd_per_stage_and_hamiltonian_value():
    """∇_θH(t_s) from the batched evaluation equals the per-stage derivative of H(t_s)."""
    net, x, y = _problem("linear", "rk4")
    alpha = 0.1
    sw = costate_sweep(forward_sweep(net, x), y, "cross_entropy")
    Gw, Gb = stage_hamiltonian_gradients(sw, alpha)
    H = hamiltonian(sw, alpha)
    from pdenets.controls import _KnotSchedule
    from pdenets.objective import control_norms

    ctrl = net.controls
    for s in (0, 5, 13):
        Wt = torch.einsum("j,jab->ab", sw.knot_weights[s], ctrl.w.detach()).requires_grad_(True)
        Bt = (sw.knot_weights[s] @ ctrl.b.detach()).requires_grad_(True)
        one = pn.GridControls(1, ctrl.size, 1, 1.0, "constant", w=Wt[None].detach(),
                              b=Bt[None].detach())
        one.w, one.b = torch.nn.Parameter(Wt[None]), torch.nn.Parameter(Bt[None])
        sched = one.discretize(sw.grid)
        assert isinstance(sched, _KnotSchedule)
        lam = sw.Lam[s] / sw.weights[s]
        f = net.dynamics.reaction(sw.Y[s], sched.A[0], sched.b[0])
        sq, _ = control_norms(one)  # ∫_0^1 of a constant = its L² norm squared
        Hs = -(lam * f).sum() - 0.5 * alpha * sq
        gw, gb = torch.autograd.grad(Hs, [one.w, one.b])
        assert torch.allclose(Gw[s], gw[0], atol=1e-12, rtol=1e-9)
        assert torch.allclose(Gb[s], gb[0], atol=1e-12, rtol=1e-9)
        assert float(H[s]) == pytest.approx(float(Hs.detach()), rel=1e-10, abs=1e-14)


def test_pmp_residual_small_at_converged_solution():
    """β = 0: at a critical point the knot-projected residual vanishes (= ‖∇J‖) and the
    pointwise residual max_t ‖∇_θH(t)‖ drops far below its initial value."""
    net = pn.ContinuumNetwork.create(4, 2, control_size=3, intervals=6, time_basis="constant",
                                     width=8, steps=6, init_scale=0.5, seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.readout.c.normal_(0.0, 1.0, generator=g)
    net.readout.requires_grad_(False)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(8, 2, generator=g, dtype=torch.float64)
    obj = Objective("mse", 5e-2, 0.0)
    r0 = pmp_residual(net, x, y, obj)
    opt = torch.optim.LBFGS([net.controls.w, net.controls.b], lr=1, max_iter=100,
                            tolerance_grad=1e-12, tolerance_change=1e-15, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        J = obj(net, x, y)
        J.backward()
        return J

    opt.step(closure)
    r1 = pmp_residual(net, x, y, obj)
    assert r1.J < r0.J
    assert r1.grad_J_norm < 1e-5
    assert r1.max_knot_residual < 1e-4 * r0.max_knot_residual
    assert r1.projected_H_norm == pytest.approx(r1.grad_J_norm, rel=1e-4, abs=1e-12)
    assert r1.max_residual < 0.1 * r0.max_residual
    assert r1.mean_residual < 0.05 * r0.mean_residual


def test_msa_with_sufficient_penalty_decreases_J_monotonically():
    net, x, y = _problem("linear", "rk4", M=2)
    obj = Objective("cross_entropy", 1e-3, 0.0)
    msa = MSA(net, obj, rho=5.0, inner_steps=10, adapt_rho=False)
    recs = msa.run(x, y, iterations=12, tol=0.0)
    Js = [recs[0].J_before] + [r.J_after for r in recs]
    assert all(b < a for a, b in zip(Js, Js[1:])), Js
    assert msa.fallbacks == 0 and all(r.accepted for r in recs)
    assert Js[-1] < 0.8 * Js[0]
    # each iteration: readout step, then the Hamiltonian maximization both decrease J
    assert all(r.J_after_readout <= r.J_before + 1e-12 for r in recs)
    assert all(r.H_gain >= 0 for r in recs)
    # the readout's proximal subproblem and both inner solvers work on the constant basis too
    net2, x2, y2 = _problem("constant", "euler", M=3, loss="mse")
    m2 = MSA(net2, Objective("mse", 1e-3), rho=2.0, inner_solver="adam", inner_lr=0.02,
             adapt_rho=False)
    r2 = m2.run(x2, y2, iterations=5, tol=0.0)
    assert r2[-1].J_after < r2[0].J_before


def test_msa_fallback_never_increases_J():
    """Without penalty the Hamiltonian maximization overshoots; every rejected step is
    replaced by a gradient step, so J still never increases, and fallbacks are counted."""
    net, x, y = _problem("linear", "rk4", M=2, seed=3)
    msa = MSA(net, Objective("cross_entropy"), rho=0.0, inner_steps=30, adapt_rho=True)
    recs = msa.run(x, y, iterations=8, tol=0.0)
    for r in recs:
        assert r.J_after <= r.J_after_readout + 1e-12
        assert r.fallback == (not r.accepted)
    assert msa.fallbacks == sum(r.fallback for r in recs)
    assert msa.state()["msa_fallbacks"] == msa.fallbacks


def test_pmp_rejects_unsupported_discretizations():
    net, x, y = _problem()
    with pytest.raises(PdenetsError, match="explicit Runge-Kutta"):
        pmp_residual(net, x, y, disc=pn.Discretization(pn.Midpoint(8), pn.Dopri5(), 4))
    with pytest.raises(PdenetsError, match="explicit Runge-Kutta"):
        MSA(net, Objective(), disc=pn.Discretization(pn.Midpoint(8), pn.IMEXEuler(), 4))


def test_msa_config_options_validated():
    cfg = load_config(None, ["train.method=msa", "train.msa_rho=3", "train.msa_inner_solver=adam",
                             "train.msa_adapt_rho=false"])
    assert cfg.train.msa_inner_solver == "adam" and cfg.train.msa_adapt_rho is False
    with pytest.raises(ConfigError, match="msa_inner_solver"):
        load_config(None, ["train.msa_inner_solver=newton"])
    with pytest.raises(ConfigError, match="msa_rho"):
        load_config(None, ["train.msa_rho=-1"])


def test_cli_train_msa_and_analyze_pmp_json(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "pdenets", "train", *sum(
        [["--set", s] for s in TINY + ["train.method=msa", "train.msa_inner_steps=3",
                                       "dtype=float64"]], []),
        "--out", str(out), "--no-plots", "--json"], capture_output=True, text=True, env=ENV,
        timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["method"] == "msa" and "msa_fallbacks" in m and m["msa_iterations"] == 4
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("msa_fallbacks" in h and "msa_rho" in h for h in hist)
    r = subprocess.run([sys.executable, "-m", "pdenets", "analyze", "pmp",
                        str(out / "model.safetensors"), "--data", "iris", "--json", "--out",
                        str(tmp_path / "pmp")], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    rep = json.loads(lines[0])
    assert rep["analysis"] == "pmp" and rep["data"] == "iris (train split)"
    from pdenets.config import load_config

    assert rep["samples"] == 100
    assert rep["alpha"] == pytest.approx(load_config().objective.alpha)  # from config.toml
    assert rep["identity_error"] < 1e-8 and len(rep["times"]) == len(rep["residual"]) == 8
    assert (tmp_path / "pmp" / "pmp.png").is_file()
    assert (tmp_path / "pmp" / "report.json").is_file()


class _Cubic(pn.Dynamics):
    """Dynamics known only by its reaction: the PMP layer must not need a 'kind' switch."""

    kind = "cubic"

    def reaction(self, u, A, b):
        return torch.tanh(u @ A.T + b) - 0.1 * u ** 3


def test_state_sweep_is_the_forward_solve_and_custom_dynamics_work():
    net, x, y = _problem("linear", "rk4")
    sw = forward_sweep(net, x)
    torch.testing.assert_close(sw.uT.detach(), net.solve(x).u.detach(), rtol=1e-14, atol=1e-15)
    assert float(sw.weights.sum()) == pytest.approx(float(net.T), abs=1e-14)
    assert sw.Y.shape[0] == 4 * net.discretization.steps
    net.dynamics = _Cubic("tanh")
    rep = pmp_residual(net, x, y, Objective("cross_entropy", 0.05, 0.0))
    assert rep.grad_J_norm > 1e-4 and rep.identity_error < 1e-10
    obj = Objective("cross_entropy", 1e-3, 0.0)
    msa = MSA(net, obj, rho=5.0, inner_steps=5, adapt_rho=False)
    rec = msa.step(x, y)
    assert rec.J_after <= rec.J_after_readout and rec.H_gain >= 0.0
