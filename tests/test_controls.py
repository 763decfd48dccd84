import math

import pytest
import torch

import pdenets as pn
from pdenets.errors import PdenetsError


def affine_w(x, y, t):
    return 0.3 + 1.5 * x[..., 0] - 0.7 * y[..., 0] + 2.0 * x[..., 0] * y[..., 0] + 0.5 * t


def affine_b(x, t):
    return -0.2 + 0.9 * x[..., 0] - t


@pytest.mark.parametrize("rule", [pn.Midpoint(13), pn.GaussLegendre(9), pn.MonteCarlo(20)])
def test_affine_controls_are_represented_exactly(rule):
    c = pn.GridControls.from_functions(affine_w, affine_b, dim=1, size=3, intervals=2, T=1.0)
    g = rule.grid()
    sched = c.discretize(g)
    x = g.nodes
    for t in (0.0, 0.3, 0.5, 0.77, 1.0):
        A, b = sched.at(t, t, t)
        W = affine_w(x[:, None, :], x[None, :, :], t) * g.weights[None, :]
        assert torch.allclose(A, W, atol=1e-13)
        assert torch.allclose(b, affine_b(x, t), atol=1e-13)


def test_2d_bilinear_exact_and_constant():
    w = lambda x, y, t: 1 + x[..., 0] * x[..., 1] - 2 * y[..., 1]  # noqa: E731
    c = pn.GridControls.from_functions(w, lambda x, t: x[..., 1], 2, (2, 3), 1, 1.0, "constant")
    g = pn.GaussLegendre(5, dim=2).grid()
    A, b = c.discretize(g).at(0.5, 0.0, 1.0)
    x = g.nodes
    assert torch.allclose(A, w(x[:, None], x[None], 0) * g.weights, atol=1e-13)
    assert torch.allclose(b, x[:, 1], atol=1e-13)
    k = pn.GridControls.constant(2.0, -1.0, dim=2)
    A, b = k.discretize(g).at(0.1, 0, 1)
    assert torch.allclose(A, 2.0 * g.weights.expand_as(A))
    assert torch.allclose(b, -torch.ones(25, dtype=torch.float64))


def test_piecewise_constant_uses_the_step_interval():
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)[:, None, None] * torch.ones(3, 2, 2)
    c = pn.GridControls(1, 2, 3, T=3.0, time_basis="constant", w=w)
    sched = c.discretize(pn.Midpoint(4).grid())
    # a stage at t = 1 belongs to [0, 1] in the first step and to [1, 2] in the second
    assert float(sched.at(1.0, 0.0, 1.0)[0][0, 0]) == pytest.approx(1.0 / 4)
    assert float(sched.at(1.0, 1.0, 2.0)[0][0, 0]) == pytest.approx(2.0 / 4)
    assert sched.breakpoints == (1.0, 2.0)


def test_prolongation_preserves_the_function():
    torch.manual_seed(1)
    for basis in ("linear", "constant"):
        c = pn.GridControls(2, 3, 2, T=1.0, time_basis=basis,
                            w=torch.randn(2 + (basis == "linear"), 9, 9),
                            b=torch.randn(2 + (basis == "linear"), 9))
        f = c.prolong(size=5, intervals=4)
        assert f.w.shape[1] == 25
        g = pn.MonteCarlo(30, dim=2, seed=2).grid()
        s1, s2 = c.discretize(g), f.discretize(g)
        for t, t0, t1 in ((0.1, 0.0, 0.25), (0.6, 0.5, 0.75), (0.99, 0.75, 1.0)):
            A1, b1 = s1.at(t, t0, t1)
            A2, b2 = s2.at(t, t0, t1)
            assert torch.allclose(A1, A2, atol=1e-12) and torch.allclose(b1, b2, atol=1e-12)


def test_function_controls_time_dependent():
    c = pn.FunctionControls(lambda x, y, t: math.cos(t) + 0 * x[..., 0],
                            lambda x, t: t + 0 * x[..., 0])
    g = pn.Midpoint(4).grid()
    A, b = c.discretize(g).at(0.7, 0.5, 1.0)
    assert torch.allclose(A, math.cos(0.7) * 0.25 * torch.ones(4, 4, dtype=torch.float64))
    assert torch.allclose(b, 0.7 * torch.ones(4, dtype=torch.float64))


def test_bad_controls():
    with pytest.raises(PdenetsError, match="shape"):
        pn.GridControls(1, 3, 2, w=torch.zeros(2, 3, 3))
    with pytest.raises(PdenetsError, match="non-finite"):
        pn.GridControls(1, 2, 1, w=torch.full((2, 2, 2), float("nan")))
    with pytest.raises(PdenetsError, match="T"):
        pn.GridControls(1, 2, 1, T=0.0)
    with pytest.raises(PdenetsError, match="T"):
        pn.GridControls(1, 2, 1, T=-1.0)
    with pytest.raises(PdenetsError, match="time basis"):
        pn.GridControls(1, 2, 1, time_basis="cubic")
    with pytest.raises(PdenetsError, match="intervals"):
        pn.GridControls(1, 2, 0)
    c = pn.GridControls(1, 2, 1)
    with pytest.raises(PdenetsError, match="1-D"):
        c.discretize(pn.Midpoint(3, dim=2).grid())
