"""Steady states with C > 1 channels (MODEL.md §1, §10): u ∈ R^{C·N}, the (C·N) × (C·N)
operator, checked against independent computations — the residual of the dense-matrix
equation by hand (the kernel's reference dense evaluation, a hand-written Neumann Laplacian
per channel) and a long forward simulation at the frozen controls written in the test."""

import pytest
import torch

import pdenets as pn
from pdenets.analysis import analyze_steady_state, find_steady_state
from pdenets.errors import PdenetsError

F64 = torch.float64


def _net(channels=2, n=8, eps=0.0, family="conv", seed=4):
    net = pn.ContinuumNetwork.create(n, 2, kernel=family, channels=channels, in_channels=1,
                                     intervals=2, kernel_radius=0.3, rank=2, init_scale=0.6,
                                     seed=seed, eps=eps, width=n, steps=4)
    kern = net.controls.kernel
    for m in [kern, *getattr(kern, "parts", [])]:
        if hasattr(m, "method"):
            m.method = "direct"  # the structured operator, not its matrix
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.controls.b.normal_(0.0, 0.5, generator=g)  # a nontrivial u*
        if family == "conv":  # random coupled channels, dissipative diagonal: a stable u*
            z = torch.linspace(-kern.radius, kern.radius, kern.size[0], dtype=F64)
            kern.k.normal_(0.0, 0.8, generator=g)
            for c in range(channels):
                kern.k[:, c, c] -= 16.0 * (1 - z.abs() / kern.radius)
    return net


def _lap_1d(u, n):
    """Neumann Laplacian of the 1-D midpoint grid (ghost cells equal the boundary cells),
    per channel of u ``(C·n,)``."""
    v = u.reshape(-1, n)
    ext = torch.cat([v[:, :1], v, v[:, -1:]], 1)
    return ((ext[:, :-2] - 2 * v + ext[:, 2:]) * n * n).reshape(-1)


@pytest.mark.parametrize("eps", [0.0, 0.01])
def test_conv_two_channel_steady_state_against_independent_computations(eps):
    n, C, t = 8, 2, 0.5
    net = _net(C, n, eps)
    grid = net.grid(net.discretization.width)
    res = find_steady_state(net.controls, net.dynamics, grid, depth=t)
    assert res.converged and res.u.shape == (C * n,)
    u = res.u
    # the dense-matrix equation by hand: tanh(A u + b) + ε Δu = 0, A from the kernel's
    # reference dense evaluation k(x_i − x_j) ω_j (not the convolution operator)
    A = net.controls.kernel.dense_matrix(grid, t).detach()
    assert A.shape == (C * n, C * n)
    bk = net.controls.bias_knots(grid).detach()  # (K, C·n), linear in depth: t = 0.5 is knot 1
    b = bk[1]
    with torch.no_grad():
        r = torch.tanh(A @ u + b) + eps * _lap_1d(u, n)
    assert float(u.abs().max()) > 0.1
    assert float(r.abs().max()) < 1e-10
    # the channels are coupled: the off-diagonal channel blocks act
    assert float(A[:n, n:].abs().max()) > 1e-3
    # a long forward simulation at the frozen controls (RK4 written here, the structured
    # operator of the schedule) converges to u*
    op, bt = net.controls.discretize(grid).at(t, t, t)
    assert type(op).__name__ == "ConvOp"

    def f(v):
        return net.dynamics.reaction(v[None], op, bt)[0] + eps * _lap_1d(v, n)

    v, h = torch.zeros(C * n, dtype=F64), 0.1
    with torch.no_grad():
        for _ in range(1200):  # horizon 120
            k1 = f(v)
            k2 = f(v + 0.5 * h * k1)
            k3 = f(v + 0.5 * h * k2)
            k4 = f(v + h * k3)
            v = v + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert float((v - u).abs().max()) < 1e-8


def test_two_channel_analysis_verdict_and_simulation_agree():
    net = _net(2, 8)
    grid = net.grid(net.discretization.width)
    rep = analyze_steady_state(net.controls, net.dynamics, grid, depth=0.5, horizon=15.0,
                               perturbation=1e-7)
    assert rep.converged and rep.channels == 2
    assert len(rep.eigenvalues_real) == 16
    # standard dynamics: f'(u*) = diag(σ'(z*)) A, z* = A u* + b; its spectrum by hand
    A = net.controls.kernel.dense_matrix(grid, 0.5).detach()
    b = net.controls.bias_knots(grid)[1].detach()
    Jm = (1 - torch.tanh(A @ rep.u + b) ** 2)[:, None] * A
    lam = torch.linalg.eigvals(Jm)
    assert max(float(x) for x in lam.real) == pytest.approx(rep.max_real, abs=1e-10)
    assert rep.verdict == "asymptotically stable" and rep.max_real < -0.1
    assert rep.simulation.verdict == "decays" and rep.agrees
    d = rep.as_dict()
    assert d["channels"] == 2 and len(d["u"]) == 16


def test_two_channel_initial_guess_size_and_state_limit():
    net = _net(2, 8)
    grid = net.grid(net.discretization.width)
    with pytest.raises(PdenetsError, match="2 channels"):
        find_steady_state(net.controls, net.dynamics, grid, torch.zeros(8), depth=0.5)
    big = pn.ContinuumNetwork.create(8, 2, kernel="conv", channels=3, width=4096, intervals=1)
    with pytest.raises(PdenetsError, match="C·N = 12288"):
        find_steady_state(big.controls, big.dynamics, big.grid(big.discretization.width),
                          depth=0.5)
