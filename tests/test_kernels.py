"""Structured kernels and channels (MODEL.md §10): evaluation, adjoints, norms, channels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdenets import ContinuumNetwork
from pdenets.adjoint import ContinuousAdjoint, DiscreteAdjoint
from pdenets.controls import GridControls
from pdenets.dynamics import make_dynamics
from pdenets.errors import PdenetsError
from pdenets.kernels import (
    ConvKernel,
    DenseKernel,
    KernelControls,
    LowRankKernel,
    SumKernel,
    make_kernel,
)
from pdenets.lifting import ChannelLifting, PiecewiseConstantLifting
from pdenets.network import Discretization, solve
from pdenets.objective import Objective, control_norms
from pdenets.quadrature import GaussLegendre, Midpoint, MonteCarlo, Trapezoid
from pdenets.readout import LinearReadout

F64 = torch.float64


def _random(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in k.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return k


def _op_at(kernel, grid, t):
    return kernel.make_op([kernel.time.value(x, t) for x in kernel.knot_tensors(grid)], grid)


# ------------------------------------------------------------------------------------------
# evaluation: direct and FFT convolution equal the dense evaluation of the same k


@pytest.mark.parametrize("rule", [Midpoint(23), Trapezoid(19), Midpoint((7, 6), dim=2),
                                  Trapezoid((5, 8), dim=2)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("basis", ["linear", "constant"])
def test_conv_direct_and_fft_equal_dense(rule, channels, basis):
    grid = rule.grid(F64)
    k = _random(ConvKernel(rule.dim, 0.37, 5 if basis == "linear" else 4, 2,
                           channels=channels, space_basis=basis))
    # reference: w_{cc'}(x_i, x_j) ω_j from k evaluated at every pair of nodes, built here
    x = grid.nodes
    z = x[:, None, :] - x[None, :, :]
    t = 0.3
    kt = k.time.value(k.k.detach(), t)  # (C, C, Mk)
    P = k.basis_at(z.reshape(-1, rule.dim)).reshape(grid.n, grid.n, -1)
    W = torch.einsum("cdm,ijm->cidj", kt, P) * grid.weights[None, None, None, :]
    A = W.reshape(channels * grid.n, channels * grid.n)
    u = torch.randn(4, channels * grid.n, dtype=F64)
    for method in ("direct", "fft"):
        k.method = method
        op = _op_at(k, grid, t)
        assert op.plan == method
        with torch.no_grad():
            assert torch.allclose(op.apply(u), u @ A.T, atol=1e-12, rtol=0)
            # the transposed operator is the correlation with k(−z) (continuous adjoint, §5)
            assert torch.allclose(op.apply_T(u), u @ A, atol=1e-12, rtol=0)


def test_conv_kernel_values_and_support():
    # k(z) = 1 − |z|/r sampled on the vertices is represented exactly (piecewise linear)
    r = 0.3
    k = ConvKernel(1, r, 7, 1)
    v = torch.linspace(-r, r, 7, dtype=F64)
    with torch.no_grad():
        k.k.copy_((1 - v.abs() / r).reshape(1, 1, 1, 7).expand(2, 1, 1, 7))
    z = torch.tensor([[-0.5], [-0.2], [0.0], [0.05], [0.29], [0.31]], dtype=F64)
    vals = (k.basis_at(z) @ k.k[0, 0, 0].detach())
    expect = torch.clamp(1 - z[:, 0].abs() / r, min=0.0)
    assert torch.allclose(vals, expect, atol=1e-14)


def test_cost_model_picks_direct_for_small_support_and_fft_for_large():
    small = ConvKernel(1, 0.01, 3, 1)
    big = ConvKernel(1, 1.0, 9, 1)
    grid = Midpoint(2048).grid(F64)
    assert _op_at(small, grid, 0.0).plan == "direct"
    assert _op_at(big, grid, 0.0).plan == "fft"


@pytest.mark.parametrize("rule", [GaussLegendre(9), MonteCarlo(11, seed=1)])
def test_non_uniform_rules_fall_back_to_dense(rule):
    grid = rule.grid(F64)
    k = _random(ConvKernel(1, 0.5, 5, 1))
    assert k.is_dense_on(grid)
    ctrl = KernelControls(k, 3)
    sched = ctrl.discretize(grid)
    A, _ = sched.at(0.5, 0.0, 1.0)
    x = grid.nodes[:, 0]
    z = (x[:, None] - x[None, :]).reshape(-1, 1)
    ref = (k.basis_at(z) @ k.time.value(k.k.detach(), 0.5)[0, 0]).reshape(grid.n, grid.n)
    assert torch.allclose(A, ref * grid.weights[None, :], atol=1e-13)


def test_lowrank_and_sum_operators_equal_dense():
    grid = Midpoint((5, 4), dim=2).grid(F64)
    lr = _random(LowRankKernel(2, 3, 2, 2, channels=2), 1)
    cv = _random(ConvKernel(2, 0.5, 3, 2, channels=2), 2)
    s = SumKernel([cv, lr])
    u = torch.randn(3, 2 * grid.n, dtype=F64)
    for kern in (lr, s):
        op = _op_at(kern, grid, 0.7)
        A = kern.dense_matrix(grid, 0.7).detach()
        with torch.no_grad():
            assert torch.allclose(op.apply(u), u @ A.T, atol=1e-12)
            assert torch.allclose(op.apply_T(u), u @ A, atol=1e-12)
    # low rank: the g_r h_r of a hand-built kernel at the nodes
    x = grid.nodes
    t = 0.7
    g = lr.time.value(lr.g.detach(), t)
    h = lr.time.value(lr.h.detach(), t)
    from pdenets import _basis

    P = _basis.basis_matrix(x, lr.size, "linear")
    gx, hy = g @ P.T, h @ P.T  # (C, R, N)
    W = torch.einsum("crn,drm->cndm", gx, hy) * grid.weights[None, None, None, :]
    assert torch.allclose(lr.dense_matrix(grid, t).detach(),
                          W.reshape(2 * grid.n, 2 * grid.n), atol=1e-13)


# ------------------------------------------------------------------------------------------
# gradients: finite differences for each family and both adjoints


def _net(kernel, channels, dim=1):
    shape = (6,) if dim == 1 else (4, 3)
    net = ContinuumNetwork.create(shape, 3, kernel=kernel, channels=channels, intervals=2,
                                  kernel_radius=0.4, rank=2, init_scale=0.8, seed=3,
                                  in_channels=2 if channels > 1 else 1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in net.readout.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        for p in net.controls.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=F64))
    return net


@pytest.mark.parametrize("kernel", ["dense", "conv", "lowrank", "conv+lowrank"])
@pytest.mark.parametrize("channels", [1, 2])
def test_gradients_match_finite_differences(kernel, channels):
    dim = 2 if channels == 2 else 1
    net = _net(kernel, channels, dim)
    g = torch.Generator().manual_seed(0)
    shape = (5, *((2,) if channels > 1 else ()), *((6,) if dim == 1 else (4, 3)))
    x = torch.randn(shape, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 2, 1, 0])
    obj = Objective("cross_entropy", alpha=1e-2, beta=1e-2)
    disc = Discretization.make("midpoint", 8 if dim == 1 else (8, 6), dim, "rk4", 16)
    params = [p for p in net.parameters()]

    def J():
        with torch.no_grad():
            return float(obj(net, x, y, disc))

    grads = {}
    for name, adj in (("discrete", None), ("continuous", ContinuousAdjoint(steps=64))):
        net.zero_grad()
        obj(net, x, y, disc, adj).backward()
        grads[name] = [p.grad.clone() for p in params]
    gen = np.random.default_rng(1)
    for pi, p in enumerate(params):
        for idx in gen.choice(p.numel(), size=min(3, p.numel()), replace=False):
            flat = p.data.view(-1)
            old = float(flat[idx])
            eps = 1e-6
            flat[idx] = old + eps
            jp = J()
            flat[idx] = old - eps
            jm = J()
            flat[idx] = old
            fd = (jp - jm) / (2 * eps)
            for name in grads:
                got = float(grads[name][pi].view(-1)[idx])
                assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd)), (name, pi, idx, got, fd)


@pytest.mark.parametrize("kernel", ["conv", "lowrank", "conv+lowrank"])
def test_checkpointed_discrete_adjoint_equals_plain(kernel):
    net = _net(kernel, 2, 1)
    x = torch.randn(4, 2, 6, dtype=F64)
    y = torch.tensor([0, 1, 2, 1])
    obj = Objective("cross_entropy", alpha=1e-3)
    disc = Discretization.make("midpoint", 12, 1, "heun", 8)
    out = []
    for adj in (None, DiscreteAdjoint(checkpoint=3)):
        net.zero_grad()
        obj(net, x, y, disc, adj).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    assert torch.allclose(out[0], out[1], atol=1e-13, rtol=0)


# ------------------------------------------------------------------------------------------
# channels


def test_one_channel_kernel_controls_reproduce_the_scalar_model():
    net = ContinuumNetwork.create(7, 3, intervals=3, seed=2, learnable_lifting=False)
    with torch.no_grad():
        net.readout.c.normal_()
    gc = net.controls
    ctrl = KernelControls(DenseKernel.from_grid_controls(gc), gc.size, gc.b.detach()[:, None],
                          gc.space_basis)
    same = ContinuumNetwork(ctrl, net.dynamics, net.lifting, net.readout, net.discretization)
    x = torch.randn(4, 7, dtype=F64)
    for disc in (Discretization.make("midpoint", 21, 1, "rk4", 8),
                 Discretization.make("gauss-legendre", 10, 1, "dopri5", 4)):
        assert torch.allclose(net(x, disc), same(x, disc), atol=1e-13, rtol=0)
    obj = Objective("cross_entropy", alpha=0.1, beta=0.2, gamma=0.3)
    assert torch.allclose(obj.regularization(net), obj.regularization(same), atol=1e-13)


def test_decoupled_channels_reproduce_scalar_models():
    """Two channels with zero cross-coupling evolve as two independent scalar networks."""
    dim, shape = 2, (4, 4)
    nets = [ContinuumNetwork.create(shape, 2, kernel="conv", kernel_radius=0.3, seed=s,
                                    intervals=2) for s in (0, 1)]
    kk = torch.zeros(3, 2, 2, nets[0].controls.kernel.k.shape[-1], dtype=F64)
    b = torch.zeros(3, 2, nets[0].controls.b.shape[-1], dtype=F64)
    for c, n in enumerate(nets):
        kk[:, c, c] = n.controls.kernel.k.detach()[:, 0, 0]
        b[:, c] = n.controls.b.detach()[:, 0]
        with torch.no_grad():
            n.readout.c.normal_()
    k0 = nets[0].controls.kernel
    kern = ConvKernel(dim, k0.radius, k0.size, 2, channels=2, k=kk)
    ctrl = KernelControls(kern, nets[0].controls.size, b)
    lift = ChannelLifting(PiecewiseConstantLifting(shape), 1, 2)
    c = torch.stack([n.readout.c.detach() for n in nets], 1)
    ro = LinearReadout(2, dim, nets[0].readout.size, c=c,
                       d=sum(n.readout.d.detach() for n in nets), channels=2)
    both = ContinuumNetwork(ctrl, nets[0].dynamics, lift, ro)
    x = torch.rand(3, *shape, dtype=F64)
    disc = Discretization.make("midpoint", 8, 2, "rk4", 6)
    assert torch.allclose(both(x, disc), nets[0](x, disc) + nets[1](x, disc), atol=1e-12)


def test_channel_lifting_mixes_input_channels():
    lift = ChannelLifting(PiecewiseConstantLifting(3), 2, 3,
                          mix=torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]]))
    grid = Midpoint(3).grid(F64)
    xi = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]], dtype=F64)
    u = lift(xi, grid)
    assert torch.equal(u, torch.tensor([[1, 2, 3, 8, 10, 12, -3, -3, -3]], dtype=F64))
    with pytest.raises(PdenetsError, match="channel"):
        lift(torch.zeros(1, 3, 3), grid)


def test_channel_mismatch_is_refused():
    k = ConvKernel(1, 0.5, 3, 1, channels=2)
    with pytest.raises(PdenetsError, match="channels"):
        ContinuumNetwork(KernelControls(k, 3), make_dynamics(), PiecewiseConstantLifting(4),
                         LinearReadout(2, 1, 3))


def test_diffusion_acts_per_channel():
    net = ContinuumNetwork.create(8, 2, kernel="conv", channels=2, eps=0.01, seed=1)
    x = torch.randn(3, 8, dtype=F64)
    out = net(x, Discretization.make("midpoint", 16, 1, "strang", 8))
    assert out.shape == (3, 2) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# width convergence, norms, operator-norm bound


def test_conv_midpoint_width_order_two():
    """A local k, continuous and vanishing at |z| = r, with its kinks on node displacements,
    and a smooth input: the width error of the midpoint rule is O(N^-2) (MODEL.md §2)."""
    r = 0.25
    vals = torch.tensor([0.0, 1.5, 2.0, 0.5, 0.0], dtype=F64)
    k = ConvKernel(1, r, 5, 1, time_basis="linear",
                   k=torch.stack([vals, 0.5 * vals - 0.2 * vals.flip(0)]).reshape(2, 1, 1, 5))
    ctrl = KernelControls(k, 2, torch.full((2, 1, 2), 0.1, dtype=F64))
    dyn = make_dynamics("standard", "tanh")

    def functional(n):
        disc = Discretization.make("midpoint", n, 1, "rk4", 8)
        with torch.no_grad():
            sol = solve(ctrl, lambda x: torch.sin(3 * x[:, 0]) + x[:, 0], dyn, disc)
        g = disc.width.grid(F64)
        return float(sol.u[0] @ (g.weights * torch.cos(g.nodes[:, 0])))

    ref = functional(4096)
    errs = [abs(functional(n) - ref) for n in (16, 32, 64, 128)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(3)]
    assert all(1.9 < o < 2.1 for o in orders), (errs, orders)


def _brute_l2(kernel, t, n=60):
    """∫∫ Σ_cc' w_cc'(x, y, t)² dx dy by a fine midpoint rule (reference)."""
    grid = Midpoint(n if kernel.dim == 1 else (n // 3,) * 2, dim=kernel.dim).grid(F64)
    A = kernel.dense_matrix(grid, t).detach() / grid.weights.repeat(kernel.channels)[None, :]
    wts = grid.weights.repeat(kernel.channels)
    return float((A**2 * wts[:, None] * wts[None, :]).sum())


@pytest.mark.parametrize("basis", ["linear", "constant"])
def test_conv_norm_is_exact(basis):
    r = 0.5
    k = _random(ConvKernel(1, r, 5 if basis == "linear" else 4, 1, time_basis="constant",
                           channels=2, space_basis=basis))
    sq = float(k.norms()[0].detach())
    # independent: the exact integral by adaptive quadrature of k(z)² (1 − |z|)
    from scipy.integrate import quad

    tot = 0.0
    kv = k.k.detach()[0]
    for c in range(2):
        for d in range(2):
            def f(z, c=c, d=d):
                zz = torch.tensor([[z]], dtype=F64)
                return float((k.basis_at(zz) @ kv[c, d])[0]) ** 2 * (1 - abs(z))
            pts = list(np.linspace(-r, r, 5)) + [0.0]
            tot += quad(f, -r, r, points=pts, limit=200)[0]
    assert abs(sq - tot) < 1e-10 * max(1.0, tot)
    # and a fine midpoint rule on Ω × Ω agrees to its accuracy
    assert abs(_brute_l2(k, 0.5, 600) - sq) < 1e-2 * sq


def test_lowrank_norms_are_exact_in_depth():
    k = _random(LowRankKernel(1, 3, 2, 2, T=1.0, channels=1))
    sq, dsq = (float(v) for v in k.norms())
    # reference: fine Gauss in depth of the exact spatial norms at each depth
    M = k._mass()
    x, w = np.polynomial.legendre.leggauss(20)
    ref_sq = ref_dsq = 0.0
    for a in range(2):
        for xi, wi in zip(x, w):
            t = 0.5 * (a + 0.5 * (xi + 1))
            G, H = k.time.value(k.g.detach(), t), k.time.value(k.h.detach(), t)
            ref_sq += 0.25 * wi * float(k._sq(G, H, M, M))
            e = 1e-6
            Wp = [k.time.value(p.detach(), t + e) for p in (k.g, k.h)]
            Wm = [k.time.value(p.detach(), t - e) for p in (k.g, k.h)]
            # ‖(w(t+e) − w(t−e)) / 2e‖² as a rank-2R kernel
            Gd = torch.cat([Wp[0], -Wm[0]], 1) / (2 * e)
            Hd = torch.cat([Wp[1], Wm[1]], 1)
            ref_dsq += 0.25 * wi * float(k._sq(Gd, Hd, M, M))
    assert abs(sq - ref_sq) < 1e-12 * max(1, ref_sq)
    assert abs(dsq - ref_dsq) < 1e-5 * max(1, ref_dsq)
    assert abs(_brute_l2(k, 0.3, 400) - float(k._sq(k.time.value(k.g.detach(), 0.3),
                                                     k.time.value(k.h.detach(), 0.3),
                                                     M, M))) < 1e-3


def test_dense_kernel_norms_equal_grid_controls():
    gc = GridControls(1, 4, 3, 2.0, "linear")
    _random(gc)
    dk = DenseKernel.from_grid_controls(gc)
    for a, b in zip(control_norms(gc, spatial=True),
                    KernelControls(dk, 4, gc.b.detach()[:, None]).norms(spatial=True)):
        assert abs(float(a) - float(b)) < 1e-12 * max(1.0, abs(float(a)))


@pytest.mark.parametrize("kernel", ["conv", "lowrank", "conv+lowrank", "dense"])
def test_operator_norm_bound_holds(kernel):
    k = make_kernel(kernel, 1, size=5, intervals=2, channels=2, radius=0.3, rank=2,
                    init_scale=1.0, generator=torch.Generator().manual_seed(0))
    grid = Midpoint(200).grid(F64)
    s = torch.sqrt(grid.weights.repeat(2))
    for t in (0.0, 0.35, 1.0):
        A = k.dense_matrix(grid, t).detach()
        op_norm = float(torch.linalg.matrix_norm(s[:, None] * A / s[None, :], ord=2))
        assert op_norm <= k.operator_norm_bound(t) * (1 + 1e-2)


def test_prolongation_is_exact():
    k = _random(ConvKernel(1, 0.4, 5, 2, channels=2))
    ctrl = KernelControls(k, 3)
    _random(ctrl)
    fine = ctrl.prolong(size=5, intervals=4, kernel_size=9)
    net = ContinuumNetwork(ctrl, make_dynamics(), ChannelLifting(PiecewiseConstantLifting(5),
                                                                 1, 2),
                           LinearReadout(2, 1, 3, c=torch.ones(2, 2, 3), channels=2))
    net2 = ContinuumNetwork(fine, make_dynamics(), net.lifting, net.readout)
    x = torch.randn(3, 5, dtype=F64)
    disc = Discretization.make("midpoint", 20, 1, "rk4", 8)
    assert torch.allclose(net(x, disc), net2(x, disc), atol=1e-12)


def test_bad_kernel_arguments_are_refused():
    with pytest.raises(PdenetsError, match="radius"):
        ConvKernel(1, 1.5, 3, 1)
    with pytest.raises(PdenetsError, match="kernel"):
        ContinuumNetwork.create(4, 2, kernel="wavelet")
    with pytest.raises(PdenetsError, match="rank"):
        LowRankKernel(1, 3, 0, 1)
    with pytest.raises(PdenetsError, match="channels"):
        ContinuumNetwork.create(4, 2, channels=0)
