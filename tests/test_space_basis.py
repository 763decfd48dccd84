"""Piecewise-constant ("constant") space basis of the controls, readout and lifting.

Exactness in width on aligned grids, first-order convergence on non-aligned ones, exact
regularization, gradients against finite differences, prolongation, model files, config.
"""

import json

import numpy as np
import pytest
import torch

import pdenets as pn
from conftest import observed_orders
from pdenets.config import load_config
from pdenets.errors import ConfigError, ModelFileError, PdenetsError
from pdenets.objective import control_norms
from test_gradients import directional_fd


def const_net(seed=0, learn_lift=False, T=1.0):
    return pn.ContinuumNetwork.create((4, 4), 3, control_size=4, intervals=2, T=T,
                                      space_basis="constant", init_scale=1.0, seed=seed,
                                      learnable_lifting=learn_lift)


def randomize(net, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def outputs_at(net, x, width, steps=16):
    disc = pn.Discretization(pn.Midpoint(width, dim=2), pn.RK4(), steps)
    with torch.no_grad():
        return net(x, disc)


def test_constant_basis_is_exact_on_aligned_widths_and_first_order_otherwise():
    net = randomize(const_net(T=1.5))
    x = torch.rand(6, 4, 4, dtype=torch.float64)
    exact = outputs_at(net, x, 4)
    for m in (8, 12, 16, 32):  # every multiple of the 4 pixel cells: the same network
        assert torch.allclose(outputs_at(net, x, m), exact, atol=1e-12, rtol=0)
    # the discrete network at the cell resolution is the plain 16-neuron ResNet
    A, b = net.controls.discretize(net.grid(pn.Midpoint(4, dim=2))).at(0.0, 0.0, 0.1)
    Wc = net.controls.w[0].detach()
    assert torch.allclose(A, Wc / 16) and torch.allclose(b, net.controls.b[0].detach())
    # odd widths cut the cells: error O(h)
    widths = [5, 9, 17, 33]
    errs = [float((outputs_at(net, x, m) - exact).abs().max()) for m in widths]
    slope, pair = observed_orders([1 / m for m in widths], errs)
    assert 0.8 < slope < 1.3 and errs[-1] > 1e-6, (slope, errs)


def test_constant_basis_matrix_and_control_norms_are_exact():
    from pdenets import _basis

    nodes = torch.tensor([[0.0], [0.24], [0.25], [0.5], [0.99], [1.0]], dtype=torch.float64)
    P = _basis.basis_matrix(nodes, (4,), "constant")
    assert P.argmax(1).tolist() == [0, 0, 1, 2, 3, 3] and torch.equal(P.sum(1), torch.ones(6))
    c = pn.GridControls(2, (2, 3), 3, T=1.5, space_basis="constant",
                        w=torch.randn(4, 6, 6, dtype=torch.float64),
                        b=torch.randn(4, 6, dtype=torch.float64))
    sq, dsq = control_norms(c)
    # brute force: a midpoint grid aligned with the cells integrates piecewise constants
    # exactly in space; Gauss in depth is exact for the piecewise-linear-squared integrand
    g = pn.Midpoint((6, 6), dim=2).grid()
    sched = c.discretize(g)
    ts, wt = np.polynomial.legendre.leggauss(3)
    total = 0.0
    for k in range(3):
        for tq, wq in zip(ts, wt):
            t = 0.5 * (k + 0.5 + 0.5 * tq)
            A, b = sched.at(t, 0.5 * k, 0.5 * (k + 1))
            W = A / g.weights
            total += 0.25 * wq * float(g.weights @ (W**2) @ g.weights + g.weights @ b**2)
    assert float(sq) == pytest.approx(total, rel=1e-12)
    P = c.basis_matrix(g.nodes)
    ref = sum(float(g.weights @ (P @ (c.w[k + 1] - c.w[k]).detach() @ P.T) ** 2 @ g.weights
                    + g.weights @ ((c.b[k + 1] - c.b[k]).detach() @ P.T) ** 2) / 0.5
              for k in range(3))
    assert float(dsq) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(PdenetsError, match="gamma"):
        control_norms(c, spatial=True)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_constant_basis_gradient_matches_finite_differences(solver):
    net = randomize(const_net(seed=2, learn_lift=True))
    x = torch.rand(5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1, 0])
    obj = pn.Objective("cross_entropy", alpha=1e-2, beta=1e-2)
    disc = pn.Discretization(pn.Midpoint(8, dim=2), pn.make_solver(solver), 3)
    J = lambda: obj(net, x, y, disc)  # noqa: E731
    net.zero_grad()
    J().backward()
    g = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    d = torch.randn(g.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fd = directional_fd(net, J, d)
    assert abs(float(g @ d) - fd) <= 1e-6 * abs(fd)


def test_constant_basis_prolongation_is_exact():
    from pdenets.multilevel import _coarse_size, prolong_network

    c = pn.GridControls(2, 3, 2, space_basis="constant", w=torch.randn(3, 9, 9),
                        b=torch.randn(3, 9))
    f = c.prolong(size=6, intervals=4)
    g = pn.MonteCarlo(40, dim=2, seed=1).grid()
    for t, t0, t1 in ((0.1, 0.0, 0.25), (0.6, 0.5, 0.75)):
        A1, b1 = c.discretize(g).at(t, t0, t1)
        A2, b2 = f.discretize(g).at(t, t0, t1)
        assert torch.allclose(A1, A2, atol=1e-12) and torch.allclose(b1, b2, atol=1e-12)
    net = randomize(const_net(learn_lift=True))
    fine = prolong_network(net, 8, 4)
    assert fine.readout.basis == fine.lifting.basis == "constant"
    x = torch.rand(4, 4, 4, dtype=torch.float64)
    assert torch.allclose(net(x), fine(x), atol=1e-12)
    assert _coarse_size(8, 2, "constant") == 4 and _coarse_size(9, 2, "linear") == 5


def test_constant_basis_model_files(tmp_path):
    net = randomize(const_net(learn_lift=True))
    p = tmp_path / "m.safetensors"
    pn.save_model(net, p)
    back = pn.load_model(p)
    x = torch.rand(3, 4, 4, dtype=torch.float64)
    assert torch.equal(net(x), back(x))
    assert back.controls.space_basis == back.readout.basis == back.lifting.basis == "constant"

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    def rewrite(edit):
        t = load_file(str(p))
        with safe_open(str(p), "pt") as f:
            m = json.loads(f.metadata()["pdenets"])
        edit(m)
        q = tmp_path / "edited.safetensors"
        save_file(t, str(q), metadata={"pdenets": json.dumps(m)})
        return q

    with pytest.raises(ModelFileError, match="space basis"):
        pn.load_model(rewrite(lambda m: m["controls"].update(space_basis="spline")))
    with pytest.raises(ModelFileError, match="wrong type"):
        pn.load_model(rewrite(lambda m: m["readout"].update(basis=3)))
    # files written before the key existed are multilinear
    lin = pn.ContinuumNetwork.create((4, 4), 3, control_size=5, seed=0)
    pn.save_model(lin, p)
    q = rewrite(lambda m: [m[k].pop(key, None) for k, key in
                           (("controls", "space_basis"), ("readout", "basis"))])
    old = pn.load_model(q)
    assert old.controls.space_basis == "linear" and torch.equal(old(x), lin(x))


def test_space_basis_config():
    cfg = load_config(None, ["model.space_basis=constant", "model.control_size=1"])
    assert cfg.model.space_basis == "constant"
    with pytest.raises(ConfigError, match="space_basis"):
        load_config(None, ["model.space_basis=cubic"])
    with pytest.raises(ConfigError, match="gamma"):
        load_config(None, ["model.space_basis=constant", "objective.gamma=1e-3"])
    with pytest.raises(ConfigError, match="control_size"):
        load_config(None, ["model.space_basis=linear", "model.control_size=1"])
    with pytest.raises(PdenetsError, match="cells"):
        pn.GridControls(1, 0, 1, space_basis="constant")
