import math

import pytest
import torch

import pdenets as pn
from pdenets._laplacian import laplacian_for
from pdenets.errors import PdenetsError

ACTS = ["tanh", "relu", "sigmoid", "softplus", "identity"]


def test_activation_derivatives_match_autograd():
    z = torch.linspace(-3, 3, 41, dtype=torch.float64).add(0.013).requires_grad_(True)
    for name in ACTS:
        a = pn.get_activation(name)
        (g,) = torch.autograd.grad(a(z).sum(), z)
        assert torch.allclose(a.derivative(z.detach()), g), name
        assert float(a.derivative(z.detach()).abs().max()) <= a.lipschitz + 1e-12


def test_inplace_activations_match_reference():
    z = torch.linspace(-30, 30, 100001)
    for name in ACTS:
        a = pn.get_activation(name)
        for dt, tol in ((torch.float32, 3e-7), (torch.float64, 1e-15)):
            zz = z.to(dt)
            assert torch.allclose(a.apply_(zz.clone()), a.fn(zz), rtol=0, atol=tol), (name, dt)


def test_custom_activation_and_unknown_name():
    swish = pn.Activation("swish", lambda z: z * torch.sigmoid(z),
                          lambda z: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z))), 1.1)
    dyn = pn.Standard(swish)
    u = torch.randn(3, 4, dtype=torch.float64)
    A = torch.randn(4, 4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    z = u @ A.T + b
    assert torch.allclose(dyn(u, A, b), z * torch.sigmoid(z))
    with pytest.raises(PdenetsError, match="unknown activation 'gelu'"):
        pn.Standard("gelu")
    with pytest.raises(PdenetsError, match="unknown dynamics"):
        pn.make_dynamics("wave")
    with pytest.raises(PdenetsError, match="eps"):
        pn.Standard("tanh", eps=-1.0)


@pytest.mark.parametrize("variant", ["standard", "field", "selection"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
def test_vjp_matches_autograd(variant, act, rule):
    grid = pn.make_rule(rule, 6).grid()
    eps = 0.05
    dyn = pn.make_dynamics(variant, act, eps)
    lap = laplacian_for(grid)
    u = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    A = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(3, 6, dtype=torch.float64)
    gu, gA, gb = torch.autograd.grad((dyn(u, A, b, lap) * lam).sum(), (u, A, b))
    du, dA, db = dyn.vjp(u.detach(), A.detach(), b.detach(), lam, lap)
    assert torch.allclose(du, gu) and torch.allclose(dA, gA) and torch.allclose(db, gb)
    # the fused form used by the continuous adjoint (reaction part only)
    gu, gA, gb = torch.autograd.grad((dyn.reaction(u, A, b) * lam).sum(), (u, A, b))
    f, du, dA, db = dyn.reaction_and_vjp(u.detach(), A.detach(), b.detach(), lam)
    assert torch.allclose(f, dyn.reaction(u, A, b).detach())
    assert torch.allclose(du, gu) and torch.allclose(dA, gA) and torch.allclose(db, gb)


def test_variant_formulas():
    grid = pn.Midpoint(5).grid()
    u = torch.rand(2, 5, dtype=torch.float64)
    A = torch.randn(5, 5, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    z = torch.stack([A @ u[k] + b for k in range(2)])
    assert torch.allclose(pn.Standard("tanh")(u, A, b), torch.tanh(z))
    assert torch.allclose(pn.Field("tanh")(u, A, b),
                          torch.stack([A @ torch.tanh(u[k]) + b for k in range(2)]))
    assert torch.allclose(pn.Selection("tanh")(u, A, b), u * torch.tanh(z))
    lap = laplacian_for(grid)
    # Neumann Laplacian: constants are in the kernel, eigenvalue of cos(πx) known
    assert torch.allclose(lap(torch.ones(1, 5, dtype=torch.float64)), torch.zeros(1, 5,
                          dtype=torch.float64), atol=1e-12)
    x = grid.nodes[:, 0]
    v = torch.cos(math.pi * x)[None]
    lam = -(2 * 25) * (1 - math.cos(math.pi / 5))
    assert torch.allclose(lap(v), lam * v, atol=1e-10)


def test_laplacian_2d_functions_match_dense():
    for rule in (pn.Midpoint(4, dim=2), pn.Trapezoid((3, 5), dim=2)):
        grid = rule.grid()
        lap = laplacian_for(grid)
        L = lap(torch.eye(grid.n, dtype=torch.float64)).T  # column j = L e_j
        u = torch.randn(2, grid.n, dtype=torch.float64)
        assert torch.allclose(lap.apply_function(u, lambda lam: lam), u @ L.T, atol=1e-9)
        E = torch.linalg.matrix_exp(0.01 * L)
        assert torch.allclose(lap.apply_function(u, lambda lam: torch.exp(0.01 * lam)), u @ E.T,
                              atol=1e-10)
        assert torch.allclose(lap.transpose_apply(u), u @ L, atol=1e-9)


def test_diffusion_needs_structured_grid():
    ctrl = pn.GridControls(1, 2, 1)
    with pytest.raises(PdenetsError, match="structured"):
        pn.solve(ctrl, torch.zeros(1, 8, dtype=torch.float64), pn.Standard("tanh", eps=0.1),
                 pn.Discretization(pn.GaussLegendre(8), pn.IMEXEuler(), 4))


class _Cubic(pn.Dynamics):
    """A dynamics class defined only by its reaction (no batched forms of its own)."""

    kind = "cubic"

    def reaction(self, u, A, b):
        return torch.tanh(u @ A.T + b) - 0.1 * u ** 3


@pytest.mark.parametrize("dyn", [pn.Standard("tanh"), pn.Field("softplus"),
                                 pn.Selection("sigmoid"), _Cubic("tanh")],
                         ids=["standard", "field", "selection", "custom"])
def test_batched_forms_match_per_stage_reaction_and_autograd(dyn):
    """reaction_batched / vjp_u_batched over E stages with their own (A_e, b_e) equal the
    per-stage reaction and the autograd derivative pᵀ∂R/∂u, and are differentiable in A."""
    g = torch.Generator().manual_seed(0)
    E, B, N = 4, 3, 5
    Y = torch.rand(E, B, N, generator=g, dtype=torch.float64) + 0.2
    A = torch.randn(E, N, N, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(E, N, generator=g, dtype=torch.float64)
    p = torch.randn(E, B, N, generator=g, dtype=torch.float64)
    F = dyn.reaction_batched(Y, A, b)
    G = dyn.vjp_u_batched(Y, A, b, p)
    for e in range(E):
        assert torch.allclose(F[e], dyn.reaction(Y[e], A[e], b[e]), rtol=1e-13, atol=1e-14)
        ue = Y[e].clone().requires_grad_(True)
        (gu,) = torch.autograd.grad((dyn.reaction(ue, A[e].detach(), b[e]) * p[e]).sum(), ue)
        assert torch.allclose(G[e], gu, rtol=1e-12, atol=1e-14)
    # derivative in A of the batched costate term by finite differences
    (gA,) = torch.autograd.grad((G ** 2).sum(), A)
    dA = torch.randn(E, N, N, generator=g, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (((dyn.vjp_u_batched(Y, A + h * dA, b, p) ** 2).sum()
               - (dyn.vjp_u_batched(Y, A - h * dA, b, p) ** 2).sum()) / (2 * h))
    assert float((gA * dA).sum()) == pytest.approx(float(fd), rel=1e-6)


def test_system_is_the_semi_discrete_rhs():
    grid = pn.Midpoint(6).grid()
    ctrl = pn.GridControls(1, 3, 2, 1.0, "linear")
    with torch.no_grad():
        ctrl.w.normal_()
        ctrl.b.normal_()
    sched = ctrl.discretize(grid)
    dyn = pn.Standard("tanh", eps=0.01)
    system = dyn.system(sched, grid)
    u = torch.rand(2, 6, dtype=torch.float64)
    A, b = sched.at(0.3, 0.25, 0.5)
    assert torch.allclose(system(0.3, u, 0.25, 0.5), dyn(u, A, b, laplacian_for(grid)))
