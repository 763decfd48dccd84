"""The HJB scheme interface (pdenets.hjb.schemes) and the activation facts the solver reads.

A new scheme plugs in by subclassing :class:`Scheme` and registering it, without editing the
solver; here a local Lax–Friedrichs scheme written against the interface converges to the
closed form of MODEL.md §8, and a recording wrapper checks the solver's side of the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import pdenets as pn
import pdenets.hjb.schemes as schemes_mod
from conftest import observed_orders
from pdenets.activations import Activation, get_activation
from pdenets.errors import PdenetsError
from pdenets.hjb import (
    SCHEMES,
    HJBOptions,
    LaxFriedrichs,
    MarchContext,
    ReducedProblem,
    Scheme,
    SemiLagrangian,
    StateGrid,
    StepPlan,
    closed_form_value,
    estimate_memory,
    get_scheme,
    register_scheme,
    scheme_names,
    solve_hjb,
)

ALPHA, T = 0.5, 1.0


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the scheme registry (registrations do not leak between tests)."""
    monkeypatch.setattr(schemes_mod, "_REGISTRY", dict(schemes_mod._REGISTRY))


def _closed_form_problem():
    """∂_t u = b on one node, σ = identity, w ≡ 0 (V known in closed form, MODEL.md §8)."""
    return ReducedProblem(pn.Standard("identity"), pn.Midpoint(1), 1, "b", ALPHA, T,
                          target=[0.2])


def _tanh_problem(act="tanh", D=1):
    return ReducedProblem(pn.Standard(act), pn.Midpoint(D), 1, "wb", alpha=0.2, T=0.5,
                          target=[0.7, -0.3][:D])


# ---------------------------------------------------------------------------------------------
# names, objects, options
# ---------------------------------------------------------------------------------------------
def test_names_resolve_to_scheme_objects():
    assert SCHEMES == ("lax-friedrichs", "semi-lagrangian")
    assert set(SCHEMES) <= set(scheme_names())
    assert isinstance(get_scheme("lax-friedrichs"), LaxFriedrichs)
    assert isinstance(get_scheme("semi-lagrangian"), SemiLagrangian)
    lf = LaxFriedrichs()
    assert get_scheme(lf) is lf and lf == LaxFriedrichs() and str(lf) == "lax-friedrichs"
    assert HJBOptions(scheme="semi-lagrangian").scheme_object == SemiLagrangian()
    assert HJBOptions(scheme=lf).scheme_object is lf
    with pytest.raises(PdenetsError, match="unknown HJB scheme 'weno'; choose one of: lax"):
        get_scheme("weno")
    with pytest.raises(PdenetsError, match="name or a pdenets.hjb.Scheme"):
        HJBOptions(scheme=3)  # type: ignore[arg-type]


def test_cfl_limits_belong_to_the_scheme():
    with pytest.raises(PdenetsError, match="monotonicity"):
        HJBOptions(scheme=LaxFriedrichs(), cfl=1.2)
    assert HJBOptions(scheme=SemiLagrangian(), cfl=3.0).cfl == 3.0
    assert HJBOptions(scheme="semi-lagrangian", cfl=3.0).cfl == 3.0


@pytest.mark.parametrize("name", ["lax-friedrichs", "semi-lagrangian"])
def test_object_and_name_give_the_same_solution(name):
    prob, grid = _tanh_problem(), StateGrid(-1.5, 1.5, 41, 1)
    by_name = solve_hjb(prob, grid, HJBOptions(scheme=name, snapshots=3))
    by_obj = solve_hjb(prob, grid, HJBOptions(scheme=get_scheme(name), snapshots=3))
    assert torch.equal(by_name.values, by_obj.values)
    assert by_name.stats["steps"] == by_obj.stats["steps"] and by_obj.stats["scheme"] == name


def test_memory_estimate_counts_the_schemes_grid_arrays():
    prob, grid = _tanh_problem(D=2), StateGrid(-1, 1, 21, 2)
    lf = estimate_memory(prob, grid, HJBOptions(scheme="lax-friedrichs"))
    sl = estimate_memory(prob, grid, HJBOptions(scheme="semi-lagrangian"))
    assert sl - lf == 8 * grid.size * SemiLagrangian.grid_arrays


# ---------------------------------------------------------------------------------------------
# the solver's side of the contract
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Recording(Scheme):
    """Delegates to Lax–Friedrichs and records what the solver passes."""

    log: list = None  # type: ignore[assignment]
    name: ClassVar[str] = "test-recording"

    def stable_dt(self, ctx: MarchContext, V: torch.Tensor) -> StepPlan:
        plan = LaxFriedrichs().stable_dt(ctx, V)
        self.log.append(("plan", ctx.t, plan.dt))
        return plan

    def step(self, ctx, V, dt, plan):
        self.log.append(("step", ctx.t, dt))
        return LaxFriedrichs().step(ctx, V, dt, plan)


def test_solver_clips_steps_onto_snapshots_and_never_lengthens_them():
    prob, grid = _tanh_problem(), StateGrid(-1.5, 1.5, 41, 1)
    rec = _Recording(log=[])
    sol = solve_hjb(prob, grid, HJBOptions(scheme=rec, snapshots=4))
    ref = solve_hjb(prob, grid, HJBOptions(scheme="lax-friedrichs", snapshots=4))
    assert torch.equal(sol.values, ref.values)
    plans, steps = rec.log[0::2], rec.log[1::2]
    assert len(steps) == sol.stats["steps"] and all(s[0] == "step" for s in steps)
    t = prob.T
    for (_, tp, dt_max), (_, ts, dt) in zip(plans, steps):
        assert tp == ts == pytest.approx(t, abs=1e-14)
        assert 0 < dt <= dt_max
        t -= dt
    assert t == pytest.approx(0.0, abs=1e-12)
    # every snapshot depth T·j/3 is hit exactly by the accumulated steps
    depths = [prob.T] + [ts - dt for _, ts, dt in steps]
    for j in range(4):
        assert min(abs(d - prob.T * j / 3) for d in depths) < 1e-12


@dataclass(frozen=True)
class _Broken(Scheme):
    name: ClassVar[str] = "test-broken"

    def stable_dt(self, ctx, V):
        return StepPlan(0.0, V.new_ones(ctx.grid.D))

    def step(self, ctx, V, dt, plan):  # pragma: no cover - never reached
        return V


def test_a_scheme_giving_no_step_is_rejected():
    with pytest.raises(PdenetsError, match="scheme 'test-broken' gave the step 0.0"):
        solve_hjb(_tanh_problem(), StateGrid(-1, 1, 11, 1), HJBOptions(scheme=_Broken()))


# ---------------------------------------------------------------------------------------------
# a new scheme plugs in by name
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LocalLaxFriedrichs(Scheme):
    """Local Lax–Friedrichs: dissipation α_d(v) = max |∂H/∂p_d| over p⁻, p̄, p⁺ at each grid
    point (Osher–Shu 1991), Δt = cfl / max_v Σ_d α_d(v)/Δv_d. Written only against the
    interface (MarchContext, StepPlan)."""

    name: ClassVar[str] = "test-local-lax-friedrichs"

    def check_cfl(self, cfl):
        if cfl > 1.0:
            raise PdenetsError("local Lax–Friedrichs needs cfl <= 1")

    def stable_dt(self, ctx, V):
        pm, pp = ctx.differences(V)
        H = V.new_empty(V.shape[0])
        alpha = V.new_empty(pm.shape)
        for s, e, x in ctx.chunks():
            a, b = pm[:, s:e].T, pp[:, s:e].T
            row = ctx.hamiltonian(x, 0.5 * (a + b))
            H[s:e] = row.H
            sp = row.f.abs()
            for pq in (a, b):
                sp = torch.maximum(sp, ctx.hamiltonian(x, pq).f.abs())
            alpha[:, s:e] = sp.T
        alpha = torch.clamp(alpha, min=1e-12)
        dt = ctx.cfl / float((alpha / ctx.grid.h[:, None]).sum(0).max())
        return StepPlan(dt, alpha.amax(1), {"pm": pm, "pp": pp, "H": H, "alpha": alpha})

    def step(self, ctx, V, dt, plan):
        w = plan.work
        return V + dt * (w["H"] + (0.5 * (w["pp"] - w["pm"]) * w["alpha"]).sum(0))


def test_registered_scheme_converges_to_the_closed_form(registry):
    register_scheme(_LocalLaxFriedrichs)
    assert "test-local-lax-friedrichs" in scheme_names()
    with pytest.raises(PdenetsError, match="cfl <= 1"):
        HJBOptions(scheme="test-local-lax-friedrichs", cfl=1.5)
    prob = _closed_form_problem()
    hs, errs, lf_errs = [], [], []
    for n in (21, 41, 81, 161):
        grid = StateGrid(-1.0, 1.0, n, 1)
        X = grid.points()
        inner = ((X - 0.2).abs() <= 0.5 + 1e-12).all(1)
        exact = closed_form_value(0.0, X[inner], [0.2], ALPHA, T)
        for name, out in (("test-local-lax-friedrichs", errs), ("lax-friedrichs", lf_errs)):
            sol = solve_hjb(prob, grid, HJBOptions(scheme=name, cfl=0.9, snapshots=3))
            out.append(float((sol.values[0].reshape(-1)[inner] - exact).abs().max()))
        assert sol.stats["scheme"] == "lax-friedrichs"
        hs.append(float(grid.h[0]))
    slope, _ = observed_orders(hs, errs)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert abs(slope - 1.0) < 0.2, (slope, errs)
    # less numerical diffusion than the global Lax–Friedrichs dissipation
    assert all(e < f for e, f in zip(errs, lf_errs)), (errs, lf_errs)


def test_register_scheme_rejects_bad_classes(registry):
    with pytest.raises(PdenetsError, match="must subclass"):
        register_scheme(int)  # type: ignore[arg-type]

    class Nameless(_LocalLaxFriedrichs):
        name: ClassVar[str] = ""

    with pytest.raises(PdenetsError, match="non-empty string name"):
        register_scheme(Nameless)

    class Abstract(Scheme):
        name: ClassVar[str] = "test-abstract"

    with pytest.raises(PdenetsError, match="does not implement stable_dt, step"):
        register_scheme(Abstract)

    class Clash(_LocalLaxFriedrichs):
        name: ClassVar[str] = "lax-friedrichs"

    with pytest.raises(PdenetsError, match="'lax-friedrichs' is already registered"):
        register_scheme(Clash)
    assert register_scheme(LaxFriedrichs) is LaxFriedrichs  # re-registering is harmless


# ---------------------------------------------------------------------------------------------
# the solver reads activation facts, not names
# ---------------------------------------------------------------------------------------------
def test_custom_activation_with_tanh_facts_solves_exactly_like_tanh():
    t = get_activation("tanh")
    twin = Activation("my-tanh", t.fn, t.derivative, 1.0, False,
                      first_and_second=t.first_and_second, sup_abs=1.0, monotone=True)
    grid = StateGrid(-1.2, 1.2, 13, 2)
    for scheme in SCHEMES:
        opts = HJBOptions(scheme=scheme, snapshots=3)
        a = solve_hjb(_tanh_problem(D=2), grid, opts)
        b = solve_hjb(_tanh_problem(twin, D=2), grid, opts)
        assert torch.equal(a.values, b.values), scheme


def test_custom_activation_without_facts_finds_the_same_minimum():
    """No facts: two-signed search box, σ'' by finite differences of σ', no speed bound."""
    t = get_activation("tanh")
    plain = Activation("plain-tanh", t.fn, t.derivative)
    a, b = _tanh_problem(D=1), _tanh_problem(plain, D=1)
    assert a.sup_psi == 1.0 and b.sup_psi is None
    g = torch.Generator().manual_seed(5)
    v = torch.randn(50, 1, generator=g, dtype=torch.float64)
    p = 3 * torch.randn(50, 1, generator=g, dtype=torch.float64)
    ra, rb = a.minimize(v, p), b.minimize(v, p)
    # B = 1 without fixed pre-activation: unimodal, both find the global minimum
    torch.testing.assert_close(rb.H, ra.H, rtol=0, atol=1e-10)


def test_affine_custom_activation_uses_the_exact_closed_form():
    """ψ(z) = 2z + 0.3, one node (ω = 1), B = 1, controls (w, b):
    H(v, p) = min_{w,b} p (2(w v + b) + 0.3) + (α/2)(w² + b²) = 0.3 p − 2 p² (v² + 1)/α."""
    lin = Activation("lin", lambda z: 2 * z + 0.3, lambda z: torch.full_like(z, 2.0),
                     lipschitz=2.0, affine=True)
    prob = ReducedProblem(pn.Standard(lin), pn.Midpoint(1), 1, "wb", alpha=0.4)
    assert prob.affine and prob.psi_slope == 2.0
    v = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    p = torch.linspace(-1.5, 1.7, 9, dtype=torch.float64)[:, None]
    row = prob.minimize(v, p)
    exact = 0.3 * p[:, 0] - 2.0 * p[:, 0] ** 2 * (v[:, 0] ** 2 + 1) / 0.4
    torch.testing.assert_close(row.H, exact, rtol=1e-13, atol=1e-13)
