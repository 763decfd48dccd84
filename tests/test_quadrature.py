import numpy as np
import pytest
import torch

import pdenets as pn
from pdenets.errors import PdenetsError


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid", "gauss-legendre", "monte-carlo"])
@pytest.mark.parametrize("dim", [1, 2])
def test_weights_sum_to_area_and_nodes_in_domain(rule, dim):
    g = pn.make_rule(rule, 7, dim).grid()
    assert g.nodes.shape == (7**dim, dim)
    assert torch.isclose(g.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((g.nodes >= 0).all() and (g.nodes <= 1).all())
    assert bool((g.weights > 0).all())


def test_exactness_degrees():
    x = lambda g: g.nodes[:, 0]  # noqa: E731
    # midpoint and trapezoid integrate affine functions exactly, not quadratics
    for rule in (pn.Midpoint(5), pn.Trapezoid(5)):
        g = rule.grid()
        assert abs(float(g.integrate(3 * x(g) + 1)) - 2.5) < 1e-14
        assert abs(float(g.integrate(x(g) ** 2)) - 1 / 3) > 1e-4
    # Gauss-Legendre with n nodes is exact for degree 2n-1
    g = pn.GaussLegendre(4).grid()
    assert abs(float(g.integrate(x(g) ** 7)) - 1 / 8) < 1e-14
    assert abs(float(g.integrate(x(g) ** 8)) - 1 / 9) > 1e-8


def test_tensor_product_2d():
    g = pn.GaussLegendre(3, dim=2).grid()
    f = g.nodes[:, 0] ** 4 * g.nodes[:, 1] ** 5
    assert abs(float(g.integrate(f)) - 1 / 30) < 1e-14
    # row-major ordering: node i*n1 + j at (axis0[i], axis1[j])
    assert torch.equal(g.nodes[1 * 3 + 2], torch.stack([g.axes[0][1], g.axes[1][2]]))


def test_midpoint_order_two_and_gauss_spectral():
    f = lambda x: np.exp(np.sin(3 * x))  # noqa: E731
    from scipy.integrate import quad

    exact = quad(f, 0, 1, epsabs=1e-14)[0]
    errs = []
    for n in (8, 16, 32, 64):
        g = pn.Midpoint(n).grid()
        errs.append(abs(float(g.integrate(torch.exp(torch.sin(3 * g.nodes[:, 0])))) - exact))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(orders - 2) < 0.15)
    g = pn.GaussLegendre(12).grid()
    assert abs(float(g.integrate(torch.exp(torch.sin(3 * g.nodes[:, 0])))) - exact) < 1e-11


def test_monte_carlo_is_seeded():
    a = pn.MonteCarlo(50, seed=3).grid().nodes
    b = pn.MonteCarlo(50, seed=3).grid().nodes
    c = pn.MonteCarlo(50, seed=4).grid().nodes
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_size_limits_and_large_grids():
    assert pn.Midpoint(4096).grid().n == 4096
    assert pn.GaussLegendre(4096).grid().weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert pn.Midpoint(64, dim=2).grid().n == 4096
    assert pn.Trapezoid(2).grid().n == 2
    for bad in (lambda: pn.Midpoint(4097), lambda: pn.Midpoint(65, dim=2),
                lambda: pn.Trapezoid(1), lambda: pn.Midpoint(0), lambda: pn.Midpoint(4, dim=3),
                lambda: pn.Midpoint(2.5)):
        with pytest.raises(PdenetsError):
            bad()


def test_unknown_rule():
    with pytest.raises(PdenetsError, match="unknown quadrature rule 'simpson'"):
        pn.make_rule("simpson", 8)


def test_refine():
    r = pn.Trapezoid(5, dim=2).refine(4)
    assert r.sizes == (20, 20) and isinstance(r, pn.Trapezoid)
