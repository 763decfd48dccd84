"""Activation facts (σ', σ'', sup|σ|, monotonicity, affinity, Lipschitz constant) checked
against finite differences of σ and sampled values — independent of the closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from pdenets.activations import ACTIVATIONS, FD_STEP, Activation, get_activation
from pdenets.errors import PdenetsError

# away from the ReLU kink at 0 (finite differences straddling it are meaningless)
Z = torch.cat([torch.linspace(-8.0, -0.05, 400), torch.linspace(0.05, 8.0, 400)]).double()


def _swish() -> Activation:
    def fn(z):
        return z * torch.sigmoid(z)

    def d1(z):
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))

    return Activation("swish", fn, d1, lipschitz=1.1)


def _swish_second(z: torch.Tensor) -> torch.Tensor:
    """swish'' = σ(1 − σ)(2 + z(1 − 2σ)), σ the logistic function (by hand)."""
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_first_and_second_derivative_match_finite_differences_of_sigma(name):
    act = get_activation(name)
    h = 1e-3
    fp, f0, fm = act.fn(Z + h), act.fn(Z), act.fn(Z - h)
    d1, d2 = act.derivatives(Z)
    # central differences: truncation error h²/6 sup|σ'''| resp. h²/12 sup|σ''''| (≤ 1e-6 here)
    torch.testing.assert_close(d1, (fp - fm) / (2 * h), rtol=0, atol=1e-6)
    torch.testing.assert_close(d2, (fp - 2 * f0 + fm) / h**2, rtol=0, atol=1e-5)
    torch.testing.assert_close(act.second(Z), d2, rtol=0, atol=1e-12)
    # the fused evaluation agrees with the separate ones
    torch.testing.assert_close(d1, act.derivative(Z), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_sup_abs_is_the_supremum_of_sigma(name):
    act = get_activation(name)
    z = torch.linspace(-60.0, 60.0, 24001, dtype=torch.float64)
    sampled = float(act.fn(z).abs().max())
    if act.bounded:
        assert sampled <= act.sup_abs
        assert sampled > act.sup_abs - 1e-12  # attained in the limit z → ±∞
    else:
        assert act.sup_abs == math.inf
        assert float(act.fn(torch.tensor([-1e6, 1e6], dtype=torch.float64)).abs().max()) > 1e5


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_monotone_and_lipschitz_facts_hold_on_samples(name):
    act = get_activation(name)
    z = torch.linspace(-30.0, 30.0, 6001, dtype=torch.float64)
    slope = torch.diff(act.fn(z)) / torch.diff(z)  # difference quotients, no σ' involved
    assert float(slope.abs().max()) <= act.lipschitz * (1 + 1e-12)
    if act.monotone:
        assert float(slope.min()) >= 0.0
        assert float(act.derivative(z).min()) >= 0.0


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_affine_fact_matches_second_differences(name):
    act = get_activation(name)
    h = 0.5
    second_diff = act.fn(Z + h) - 2 * act.fn(Z) + act.fn(Z - h)
    if act.affine:
        assert float(second_diff.abs().max()) == 0.0
        assert float(act.second(Z).abs().max()) == 0.0
    else:
        assert float(second_diff.abs().max()) > 1e-3


def test_builtin_facts():
    tanh, sig, relu = get_activation("tanh"), get_activation("sigmoid"), get_activation("relu")
    assert (tanh.sup_abs, sig.sup_abs) == (1.0, 1.0) and tanh.bounded and not relu.bounded
    assert all(get_activation(n).monotone for n in ACTIVATIONS)
    assert [n for n in ACTIVATIONS if get_activation(n).affine] == ["identity"]


def test_custom_activation_defaults_are_conservative_and_sigma2_falls_back_to_fd():
    sw = _swish()
    assert not sw.bounded and not sw.monotone and not sw.affine
    d1, d2 = sw.derivatives(Z)
    torch.testing.assert_close(d1, sw.derivative(Z), rtol=0, atol=0)
    # central difference of σ' with step FD_STEP: error ~ FD_STEP² + 1e-16 / FD_STEP
    assert FD_STEP == 1e-6
    torch.testing.assert_close(d2, _swish_second(Z), rtol=0, atol=1e-8)
    torch.testing.assert_close(sw.second(Z), _swish_second(Z), rtol=0, atol=1e-8)


def test_custom_facts_are_used():
    sw = _swish()
    exact = Activation("swish", sw.fn, sw.derivative, lipschitz=1.1,
                       second_derivative=_swish_second)
    torch.testing.assert_close(exact.derivatives(Z)[1], _swish_second(Z), rtol=0, atol=0)
    fused = Activation("swish", sw.fn, sw.derivative, lipschitz=1.1,
                       first_and_second=lambda z: (sw.derivative(z), _swish_second(z)))
    torch.testing.assert_close(fused.derivatives(Z)[1], _swish_second(Z), rtol=0, atol=0)
    bounded = Activation("soft-sign", lambda z: z / (1 + z.abs()),
                         lambda z: 1 / (1 + z.abs()) ** 2, sup_abs=1.0, monotone=True)
    assert bounded.bounded and bounded.monotone


def test_bad_facts_raise():
    sw = _swish()
    with pytest.raises(PdenetsError, match="sup_abs must be a number > 0"):
        Activation("x", sw.fn, sw.derivative, sup_abs=-1.0)
    with pytest.raises(PdenetsError, match="sup_abs"):
        Activation("x", sw.fn, sw.derivative, sup_abs=float("nan"))
    with pytest.raises(PdenetsError, match="second_derivative must be callable"):
        Activation("x", sw.fn, sw.derivative, second_derivative=2.0)  # type: ignore[arg-type]
    with pytest.raises(PdenetsError, match="first_and_second must be callable"):
        Activation("x", sw.fn, sw.derivative, first_and_second="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2001, 40001])  # below and above the sigmoid-form sizes
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 5e-16), (torch.float32, 3e-7)])
def test_tanh_as_logistic_identity_matches_tanh_to_rounding(dtype, tol, n):
    """The CPU evaluation 2σ(2z) − 1 of tanh (and of its derivatives, in place and under
    autograd, first and second order) against math.tanh in float64 — an independent reference."""
    act = get_activation("tanh")
    z = torch.cat([torch.linspace(-30.0, 30.0, n), torch.logspace(-12, 1, 200)]).to(dtype)
    ref = torch.tensor([math.tanh(v) for v in z.double().tolist()], dtype=torch.float64)
    assert (act.fn(z).double() - ref).abs().max() <= tol
    assert (act.apply_(z.clone()).double() - ref).abs().max() <= tol
    d1, d2 = act.derivatives(z)
    assert (d1.double() - (1 - ref**2)).abs().max() <= 4 * tol
    assert (d2.double() - (-2 * ref * (1 - ref**2))).abs().max() <= 8 * tol
    zg = z.clone().requires_grad_(True)
    y = act.apply_(zg * 1.0)  # a temporary, under autograd
    (g,) = torch.autograd.grad(y.sum(), zg, create_graph=True)
    assert (y.detach().double() - ref).abs().max() <= tol
    assert (g.detach().double() - (1 - ref**2)).abs().max() <= 8 * tol
    (h,) = torch.autograd.grad(g.sum(), zg)  # second order through the backward
    assert (h.double() - (-2 * ref * (1 - ref**2))).abs().max() <= 16 * tol


def test_tanh_function_passes_gradcheck():
    from pdenets.activations import _TanhFn

    z = torch.linspace(-3, 3, 13, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(_TanhFn.apply, (z,))
    assert torch.autograd.gradgradcheck(_TanhFn.apply, (z,))
