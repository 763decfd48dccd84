"""Gradients of J (MODEL.md §5): discrete adjoint vs finite differences, continuous adjoint
convergence to the discrete gradient, checkpointing."""

import numpy as np
import pytest
import torch

import pdenets as pn
from conftest import observed_orders

ACTS = ["tanh", "relu", "sigmoid", "softplus", "identity"]


def small_net(variant="standard", act="tanh", eps=0.0, basis="linear", seed=0, learn_lift=True):
    net = pn.ContinuumNetwork.create(3, 2, control_size=3, intervals=2, time_basis=basis,
                                     dynamics=variant, activation=act, eps=eps, init_scale=0.46,
                                     seed=seed, learnable_lifting=learn_lift)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def data(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.5 * torch.rand(n, 3, generator=g, dtype=torch.float64)  # > 0 (selection)
    y = torch.randint(0, 2, (n,), generator=g)
    return x, y


def flat_grad(net):
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def directional_fd(net, J, direction, h=1e-5):
    params = list(net.parameters())
    base = [p.detach().clone() for p in params]

    def at(s):
        with torch.no_grad():
            off = 0
            for p, p0 in zip(params, base):
                n = p.numel()
                p.copy_(p0 + s * direction[off:off + n].reshape(p.shape))
                off += n
            return float(J())

    val = (at(h) - at(-h)) / (2 * h)
    at(0.0)
    return val


SOLVERS = [("euler", 0.0), ("heun", 0.0), ("rk4", 0.0), ("dopri5", 0.0),
           ("imex-euler", 0.05), ("strang", 0.05)]


@pytest.mark.parametrize("variant", ["standard", "field", "selection"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("solver,eps", SOLVERS)
def test_discrete_gradient_matches_finite_differences(variant, act, solver, eps):
    net = small_net(variant, act, eps, seed=3 * ACTS.index(act) + len(variant))
    x, y = data()
    obj = pn.Objective("cross_entropy", alpha=1e-2, beta=1e-2)
    rule = pn.Midpoint(6)
    s = pn.make_solver(solver) if solver != "dopri5" else pn.Dopri5(rtol=1e-5, atol=1e-7)
    disc = pn.Discretization(rule, s, 4)
    if solver == "dopri5":  # freeze the accepted step sequence (see DiscreteAdjoint docs)
        sol = net.solve(x, disc)
        disc = pn.Discretization(rule, s.frozen(sol.stats["step_sizes"]), 4)
    J = lambda: obj(net, x, y, disc)  # noqa: E731
    net.zero_grad()
    J().backward()
    g = flat_grad(net)
    direction = torch.randn(g.shape, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64)
    analytic = float(g @ direction)
    fd = directional_fd(net, J, direction)
    assert abs(analytic - fd) <= 1e-6 * abs(analytic), (analytic, fd)


@pytest.mark.parametrize("basis", ["linear", "constant"])
def test_checkpointed_discrete_adjoint_is_identical(basis):
    net = small_net(basis=basis)
    x, y = data()
    obj = pn.Objective("cross_entropy", alpha=1e-3)
    disc = pn.Discretization(pn.Midpoint(6), pn.RK4(), 8)
    net.zero_grad()
    obj(net, x, y, disc).backward()
    g0 = flat_grad(net)
    for k in (1, 3, 8):
        net.zero_grad()
        obj(net, x, y, disc, pn.DiscreteAdjoint(checkpoint=k)).backward()
        assert torch.allclose(flat_grad(net), g0, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
@pytest.mark.parametrize("variant", ["standard", "field", "selection"])
def test_continuous_adjoint_converges_to_discrete_at_integrator_order(solver, order, variant):
    """|g_cont − g_disc| = O(h^p) (Heun's pair even agrees to O(h³)); and g_cont converges to
    the exact gradient (dopri5 at rtol 1e-12) at order p."""
    net = small_net(variant, "tanh", learn_lift=True)
    x, y = data()
    obj = pn.Objective("cross_entropy", alpha=1e-3, beta=1e-3)
    net.zero_grad()
    obj(net, x, y, pn.Discretization(pn.Midpoint(6), pn.Dopri5(rtol=1e-12, atol=1e-13), 1)
        ).backward()
    exact = flat_grad(net)
    steps = [4, 8, 16, 32] if order > 1 else [16, 32, 64, 128]
    diffs, errs = [], []
    for S in steps:
        disc = pn.Discretization(pn.Midpoint(6), pn.make_solver(solver), S)
        net.zero_grad()
        obj(net, x, y, disc).backward()
        gd = flat_grad(net)
        net.zero_grad()
        obj(net, x, y, disc, pn.ContinuousAdjoint()).backward()
        gc = flat_grad(net)
        diffs.append(float((gc - gd).norm() / gd.norm()))
        errs.append(float((gc - exact).norm() / exact.norm()))
    slope, _ = observed_orders([1 / S for S in steps], diffs)
    assert slope > order - 0.2, (diffs, slope)
    slope, _ = observed_orders([1 / S for S in steps], errs)
    assert order - 0.2 < slope < order + 0.6, (errs, slope)


def test_continuous_adjoint_dopri5_and_constant_basis():
    net = small_net(basis="constant")
    x, y = data()
    obj = pn.Objective("cross_entropy")
    net.zero_grad()
    obj(net, x, y, pn.Discretization(pn.Midpoint(6), pn.RK4(), 256)).backward()
    ref = flat_grad(net)
    net.zero_grad()
    obj(net, x, y, pn.Discretization(pn.Midpoint(6), pn.Dopri5(rtol=1e-9, atol=1e-10), 1),
        pn.ContinuousAdjoint()).backward()
    assert float((flat_grad(net) - ref).norm() / ref.norm()) < 1e-6


def test_continuous_adjoint_input_gradient_and_errors():
    net = small_net(learn_lift=False)
    x, y = data()
    xg = x.clone().requires_grad_(True)
    disc = pn.Discretization(pn.Midpoint(6), pn.RK4(), 64)
    obj = pn.Objective("cross_entropy")
    (gx_d,) = torch.autograd.grad(obj(net, xg, y, disc), xg)
    (gx_c,) = torch.autograd.grad(obj(net, xg, y, disc, pn.ContinuousAdjoint()), xg)
    assert torch.allclose(gx_c, gx_d, rtol=1e-5, atol=1e-9)
    with pytest.raises(pn.PdenetsError, match="ill-posed"):
        diff = small_net(eps=0.1)
        obj(diff, x, y, pn.Discretization(pn.Midpoint(6), pn.Strang(), 4),
            pn.ContinuousAdjoint())
    with pytest.raises(pn.PdenetsError, match="unknown gradient strategy"):
        pn.make_adjoint("magic")


def test_regularization_is_exact():
    """α/2∫‖θ‖² and β/2∫‖∂tθ‖² against brute-force quadrature of the interpolated controls."""
    from pdenets.objective import control_norms

    for basis in ("linear", "constant"):
        c = pn.GridControls(2, (2, 3), 3, T=1.5, time_basis=basis,
                            w=torch.randn(3 + (basis == "linear"), 6, 6, dtype=torch.float64),
                            b=torch.randn(3 + (basis == "linear"), 6, dtype=torch.float64))
        sq, dsq = control_norms(c)
        # composite Gauss rule on the control cells: exact for the piecewise bilinear² integrands
        x1, w1 = np.polynomial.legendre.leggauss(3)
        ax0 = [(0.5 + 0.5 * x1, 0.5 * w1)]
        ax1 = [(0.25 + 0.25 * x1, 0.25 * w1), (0.75 + 0.25 * x1, 0.25 * w1)]
        n0 = np.concatenate([a for a, _ in ax0])
        w0 = np.concatenate([b for _, b in ax0])
        n1 = np.concatenate([a for a, _ in ax1])
        w1_ = np.concatenate([b for _, b in ax1])
        X0, X1 = np.meshgrid(n0, n1, indexing="ij")
        g = pn.Grid(torch.tensor(np.stack([X0.ravel(), X1.ravel()], 1)),
                    torch.tensor(np.outer(w0, w1_).ravel()), None, (), "composite-gauss")
        sched = c.discretize(g)
        ts, wt = np.polynomial.legendre.leggauss(3)
        total = 0.0
        for k in range(3):  # exact Gauss quadrature per depth interval
            for tq, wq in zip(ts, wt):
                t = 0.5 * (k + 0.5 + 0.5 * tq)
                A, b = sched.at(t, 0.5 * k, 0.5 * (k + 1))
                W = A / g.weights  # kernel values at node pairs
                total += 0.25 * wq * float(g.weights @ (W**2) @ g.weights + g.weights @ b**2)
        assert float(sq) == pytest.approx(total, rel=1e-12)
        K = c.w.shape[0]
        d = c.T / c.intervals
        P = pn._basis.hat_matrix(g.nodes, c.size)
        ref = 0.0
        for k in range(K - 1):
            dW = P @ (c.w[k + 1] - c.w[k]).detach() @ P.T
            db = (c.b[k + 1] - c.b[k]).detach() @ P.T
            ref += float(g.weights @ dW**2 @ g.weights + g.weights @ db**2) / d
        assert float(dsq) == pytest.approx(ref, rel=1e-12)


def test_spatial_gradient_penalty_exact_on_affine_controls():
    """∫‖∇_x w‖² + ‖∇_y w‖² + ‖∇_x b‖² for w = 1 + 2x₁ − 3y₀ + t x₀, b = 4x₁ − x₀ on [0,1]²:
    |∇_x w|² = (t² + 4), |∇_y w|² = 9, |∇b|² = 17, integrated over t ∈ [0, 2]."""
    from pdenets.objective import control_norms

    c = pn.GridControls.from_functions(
        lambda x, y, t: 1 + 2 * x[..., 1] - 3 * y[..., 0] + t * x[..., 0],
        lambda x, t: 4 * x[..., 1] - x[..., 0], dim=2, size=(3, 4), intervals=2, T=2.0)
    _, _, grad = control_norms(c, spatial=True)
    exact = (8 / 3 + 4 * 2) + 9 * 2 + 17 * 2
    assert float(grad) == pytest.approx(exact, rel=1e-12)
    obj = pn.Objective("mse", gamma=0.5)
    net = pn.ContinuumNetwork(c, pn.Standard(), pn.PiecewiseConstantLifting((2, 2)),
                              pn.CellAverageReadout((1, 1)))
    assert float(obj.regularization(net)) == pytest.approx(0.25 * exact, rel=1e-12)


class _CountingStrategy(pn.Adjoint):
    """A user-defined gradient strategy: plugs into the network through ``solve`` alone."""

    name = "counting"

    def __init__(self):
        self.calls = 0

    def solve(self, problem, u0, save_times=()):
        self.calls += 1
        assert problem.T == 1.0 and problem.grid.n == u0.shape[1]
        return pn.DiscreteAdjoint(checkpoint=2).solve(problem, u0, save_times)


def test_new_gradient_strategy_plugs_in_without_network_changes():
    net = small_net()
    x, y = data()
    obj = pn.Objective("cross_entropy", alpha=1e-3)
    disc = pn.Discretization(pn.Midpoint(6), pn.RK4(), 8)
    net.zero_grad()
    obj(net, x, y, disc).backward()
    g0 = flat_grad(net)
    strat = _CountingStrategy()
    net.zero_grad()
    obj(net, x, y, disc, strat).backward()
    assert strat.calls == 1
    assert torch.allclose(flat_grad(net), g0, rtol=1e-12, atol=1e-14)
    with pytest.raises(pn.PdenetsError, match="gradient strategy"):
        net(x, disc, adjoint="continuous")
    with pytest.raises(NotImplementedError, match="solve"):
        net(x, disc, adjoint=pn.Adjoint())


@pytest.mark.parametrize("controller", ["i", "pi"])
def test_continuous_adjoint_dopri5_controllers_linear_basis(controller):
    """Continuous adjoint through the common core with either step-size controller: agrees
    with the discrete gradient at a fine RK4 step (an independent reference) and reports the
    forward solve's counters."""
    net = small_net(basis="linear")
    x, y = data()
    obj = pn.Objective("cross_entropy", alpha=1e-3)
    net.zero_grad()
    obj(net, x, y, pn.Discretization(pn.Midpoint(6), pn.RK4(), 256)).backward()
    ref = flat_grad(net)
    solver = pn.Dopri5(rtol=1e-9, atol=1e-10, controller=controller)
    disc = pn.Discretization(pn.Midpoint(6), solver, 1)
    sol = net.solve(x, disc, adjoint=pn.ContinuousAdjoint())
    assert sol.stats["steps"] > 5 and sol.stats["nfev"] >= 6 * sol.stats["steps"]
    net.zero_grad()
    obj(net, x, y, disc, pn.ContinuousAdjoint()).backward()
    assert float((flat_grad(net) - ref).norm() / ref.norm()) < 1e-6
