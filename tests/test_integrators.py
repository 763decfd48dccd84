"""The Runge–Kutta core (MODEL.md §2): checked tableaus, FSAL, step-size controllers, hooks."""

import math

import pytest
import torch

import pdenets as pn
from pdenets.errors import PdenetsError
from pdenets.integrators import (
    DOPRI5_TABLEAU,
    RK4_TABLEAU,
    AdaptiveRK,
    ButcherTableau,
    ExplicitRK,
    IController,
    PIController,
    Stats,
    System,
    _trees,
    integrate,
    integrate_span,
)

RK4_A = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
RK4_B = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
RK4_C = (0.0, 0.5, 0.5, 1.0)
# Bogacki–Shampine 3(2): an FSAL pair (Hairer–Nørsett–Wanner I, §II.5)
BS32 = dict(a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)), b=(2 / 9, 1 / 3, 4 / 9, 0.0),
            c=(0.0, 1 / 2, 3 / 4, 1.0), order=3,
            b_err=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8), embedded_order=2)


def test_rooted_tree_counts():
    """Number of rooted trees with n vertices: 1, 1, 2, 4, 9, 20 (OEIS A000081)."""
    assert [len(_trees(n)) for n in range(1, 7)] == [1, 1, 2, 4, 9, 20]


def test_valid_tableaus_and_fsal_detection():
    assert DOPRI5_TABLEAU.fsal and not RK4_TABLEAU.fsal
    bs = ButcherTableau(**BS32, name="bs32")
    assert bs.fsal and bs.adaptive and bs.stages == 4
    # rows may be written out in full as long as the upper part is zero
    full = ButcherTableau(tuple(r + (0.0,) * (4 - len(r)) for r in RK4_A), RK4_B, RK4_C, 4)
    assert full.a == RK4_TABLEAU.a


@pytest.mark.parametrize("kwargs,match", [
    (dict(a=RK4_A, b=RK4_B, c=(0.0, 0.4, 0.5, 1.0), order=4), "row-sum.*stage 1"),
    (dict(a=RK4_A, b=(1 / 6, 1 / 3, 1 / 3, 1 / 5), c=RK4_C, order=4), "sum to 1"),
    (dict(a=((), (0.5, 0.1), (0.0, 0.5), (0.0, 0.0, 1.0)), b=RK4_B, c=(0.0, 0.6, 0.5, 1.0),
          order=4), "not explicit"),
    (dict(a=RK4_A, b=RK4_B, c=RK4_C, order=5), "order-5 condition"),
    (dict(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2, b_err=(0.5, -0.4),
          embedded_order=1), "embedded weights"),
    (dict(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2, b_err=(0.5, -0.5),
          embedded_order=2), "b̂ \\(embedded\\) fail an order-2"),
    (dict(a=RK4_A, b=RK4_B[:3], c=RK4_C, order=4), "len\\(b\\) = 3"),
    (dict(a=RK4_A, b=RK4_B, c=(0.0, 0.5, float("nan"), 1.0), order=4), "finite"),
])
def test_broken_tableau_is_refused(kwargs, match):
    with pytest.raises(PdenetsError, match=match):
        ButcherTableau(**kwargs)


def _counting(system):
    calls = [0]

    def f(t, u, t0, t1):
        calls[0] += 1
        return system(t, u, t0, t1)

    return f, calls


def _oscillator():
    """u'' = −u as a first-order system on a (1, 2) state; exact (cos t, −sin t)."""
    M = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    return System(lambda t, u, t0, t1: u @ M.T), torch.tensor([[1.0, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize("first_step", [None, 0.01])
def test_fsal_dopri5_takes_six_evaluations_per_step(first_step):
    system, u0 = _oscillator()
    f, calls = _counting(system)
    T = 6.0
    uT, _, st = integrate(f, u0, T, 1, pn.Dopri5(rtol=1e-9, atol=1e-12, first_step=first_step))
    assert st.rejected >= 0 and st.steps > 20
    assert st.nfev == calls[0]
    # one first slope for the single span (+1 for the initial-step heuristic), then 6 per
    # attempted step (accepted or rejected)
    assert calls[0] == 6 * (st.steps + st.rejected) + 1 + (first_step is None)
    assert float((uT - torch.tensor([[math.cos(T), -math.sin(T)]])).abs().max()) < 1e-7


def test_fsal_reuse_equals_recomputing_every_stage():
    """Replaying the accepted steps with a plain 7-evaluation Dormand–Prince loop (written here
    from the tableau, no reuse) gives the same solution to rounding."""
    system, u0 = _oscillator()
    T = 3.0
    uT, _, st = integrate(system, u0, T, 1, pn.Dopri5(rtol=1e-6, atol=1e-9))
    tab = DOPRI5_TABLEAU
    u, t = u0.clone(), 0.0
    for h in st.step_sizes:
        ks = []
        for i in range(7):
            y = u + h * sum((aij * k for aij, k in zip(tab.a[i], ks)), torch.zeros_like(u))
            ks.append(system(t + tab.c[i] * h, y, t, t + h))
        u = u + h * sum(bi * k for bi, k in zip(tab.b, ks))
        t += h
    assert abs(t - T) < 1e-12
    assert torch.allclose(uT, u, rtol=0, atol=1e-14)


def _stiff(lam=100.0):
    """y' = −λ (y − cos t), y(0) = 1: exact solution for the stiff-ish test."""
    a, b = lam ** 2 / (lam ** 2 + 1), lam / (lam ** 2 + 1)

    def exact(t):
        return a * math.cos(t) + b * math.sin(t) + (1 - a) * math.exp(-lam * t)

    return System(lambda t, u, t0, t1: -lam * (u - math.cos(t))), exact


def test_pi_controller_differs_from_i_and_meets_tolerance():
    """Explicit Dopri5 at its stability limit (λ h ≈ 3.3): the I controller oscillates and
    rejects steps, the PI controller (Hairer–Wanner II §IV.2) smooths the step sequence."""
    system, exact = _stiff(100.0)
    u0 = torch.ones(1, 1, dtype=torch.float64)
    T, tol = 5.0, 1e-3
    res = {}
    for ctrl in (IController(), PIController()):
        uT, _, st = integrate(system, u0, T, 1, pn.Dopri5(rtol=tol, atol=tol, controller=ctrl))
        assert abs(float(uT) - exact(T)) < tol, (ctrl, float(uT), exact(T))
        assert abs(sum(st.step_sizes) - T) < 1e-12
        res[ctrl.name] = st
    assert res["pi"].step_sizes != res["i"].step_sizes
    assert res["i"].rejected >= 5 and res["pi"].rejected < res["i"].rejected
    assert res["pi"].nfev < res["i"].nfev


def test_controller_formulas():
    i, pi = IController(), PIController()
    # I: accept with h·clip(0.9 err^(−1/5), 0.2, 5); reject with clip to [0.1, 1]
    assert i.adapt(0.1, 0.5, 5, None) == (True, pytest.approx(0.1 * 0.9 * 0.5 ** -0.2), None)
    assert i.adapt(0.1, 1e-20, 5, None)[1] == pytest.approx(0.5)
    acc, h, _ = i.adapt(0.1, 2.0, 5, None)
    assert not acc and h == pytest.approx(0.1 * 0.9 * 2.0 ** -0.2)
    assert i.adapt(0.1, math.nan, 5, None)[:2] == (False, pytest.approx(0.01))
    # PI: err_n^(−0.7/k) err_{n−1}^(0.4/k) (Gustafsson), previous error carried in the state
    s = pi.init()
    acc, h, s = pi.adapt(0.1, 0.5, 5, s)
    assert acc and h == pytest.approx(0.1 * 0.9 * 0.5 ** (-0.7 / 5))
    acc, h, s = pi.adapt(0.1, 0.25, 5, s)
    assert h == pytest.approx(0.1 * 0.9 * 0.25 ** (-0.7 / 5) * 0.5 ** (0.4 / 5))
    acc, h, s = pi.adapt(0.1, 4.0, 5, s)
    assert not acc and h == pytest.approx(0.1 * 0.9 * 4.0 ** -0.2)
    acc, h, s = pi.adapt(0.1, 1e-3, 5, s)  # no growth right after a rejection
    assert acc and h == pytest.approx(0.1)
    # pcoeff = 0, icoeff = 1 is the I controller on accepted steps
    assert PIController(0.0, 1.0).adapt(0.1, 0.3, 5, (0.7, False))[1] == pytest.approx(
        i.adapt(0.1, 0.3, 5, None)[1])
    with pytest.raises(PdenetsError, match="icoeff"):
        PIController(icoeff=0.0)


def test_controller_option_plumbing():
    s = pn.make_solver("dopri5", rtol=1e-5, controller="pi")
    assert isinstance(s.controller, PIController)
    assert s.config()["controller"]["name"] == "pi" and "controller" not in pn.Dopri5().config()
    assert isinstance(s.frozen([0.5, 0.5]).controller, PIController)
    assert "PIController" in repr(s)
    with pytest.raises(PdenetsError, match="step-size controller"):
        pn.Dopri5(controller="pid")
    with pytest.raises(PdenetsError, match="takes no options"):
        pn.make_solver("rk4", controller="pi")


def test_generic_adaptive_pair_meets_tolerance():
    """Bogacki–Shampine 3(2) built from its tableau: u' = u, exact e^T."""
    solver = AdaptiveRK(ButcherTableau(**BS32, name="bs32"), rtol=1e-7, atol=1e-9)
    system = System(lambda t, u, t0, t1: u)
    f, calls = _counting(system)
    u0 = torch.ones(1, 3, dtype=torch.float64)
    uT, _, st = integrate(f, u0, 2.0, 1, solver)
    assert float((uT - math.exp(2.0)).abs().max()) < 1e-5
    assert calls[0] == 3 * (st.steps + st.rejected) + 2  # FSAL: 3 of 4 stages per step


def test_stage_hook_sees_accepted_stages_with_quadrature_weights():
    system, u0 = _oscillator()
    seen = []
    T, S = 2.0, 5
    integrate(system, u0, T, S, pn.RK4(), hook=seen.append)
    assert len(seen) == 4 * S
    assert [s.index for s in seen[:4]] == [0, 1, 2, 3]
    assert sum(s.weight for s in seen) == pytest.approx(T, abs=1e-14)
    assert seen[5].t == pytest.approx(T / S * (1 + 0.5))
    # the stages' quadrature (Simpson's rule for RK4) integrates ∫_0^T sin t dt
    q = sum(s.weight * math.sin(s.t) for s in seen)
    assert q == pytest.approx(1 - math.cos(T), abs=5e-5)
    # adaptive: only accepted steps reach the hook
    seen.clear()
    _, _, st = integrate(system, u0, T, 1, pn.Dopri5(rtol=1e-8), hook=seen.append)
    assert len(seen) == 7 * st.steps
    assert sum(s.weight for s in seen) == pytest.approx(T, abs=1e-12)


@pytest.mark.parametrize("solver,order", [(pn.Heun(), 2), (pn.RK4(), 4)])
def test_backward_tuple_span_with_auxiliary_outputs(solver, order):
    """Integrate (y, z) = (e^t, e^{2t}) from t = 1 down to 0; an auxiliary slope component
    (t itself) reaches the hook but is not integrated. Observed order p."""
    aux = []

    def f(t, y, lo, hi):
        assert lo < hi
        return y[0], 2 * y[1], torch.tensor(t)

    errs = []
    for n in (8, 16, 32):
        y1 = (torch.full((2,), math.e, dtype=torch.float64),
              torch.full((2,), math.e ** 2, dtype=torch.float64))
        aux.clear()
        (y, z), _, _ = integrate_span(f, y1, 1.0, 0.0, solver, Stats(), steps=n,
                                      hook=lambda s: aux.append((s.weight, float(s.k[2]))))
        errs.append(max(float((y - 1).abs().max()), float((z - 1).abs().max())))
        assert sum(w for w, _ in aux) == pytest.approx(-1.0)
        assert sum(w * t for w, t in aux) == pytest.approx(-0.5)  # −∫_0^1 t dt
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.2 for r in rates), rates


def test_hook_needs_runge_kutta_and_fixed_step_needs_steps():
    system, u0 = _oscillator()
    with pytest.raises(PdenetsError, match="hooks"):
        integrate(system, u0, 1.0, 4, pn.Strang(), hook=lambda s: None)
    with pytest.raises(PdenetsError, match="number of steps"):
        integrate_span(system, u0, 0.0, 1.0, pn.RK4(), Stats())
    with pytest.raises(PdenetsError, match="ButcherTableau"):
        ExplicitRK(tableau="rk4")
    with pytest.raises(PdenetsError, match="b_err"):
        AdaptiveRK(RK4_TABLEAU)
