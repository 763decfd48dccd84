"""Structured kernels, part 2 (MODEL.md §2, §10): the materialized convolution, displacements on
discontinuities of k, learning-rate units per family and width-refinement invariance of a
trained conv model."""

from __future__ import annotations

import math

import pytest
import torch

from pdenets.config import Config
from pdenets.kernels import ConvKernel, KernelControls, make_kernel
from pdenets.quadrature import Midpoint, Trapezoid

F64 = torch.float64


def _random(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in k.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return k


@pytest.mark.parametrize("rule", [Midpoint(23), Trapezoid(19), Midpoint((7, 6), dim=2)])
@pytest.mark.parametrize("channels", [1, 2])
def test_matrix_plan_equals_pairwise_evaluation(rule, channels):
    """Small convolutions are materialized (plan "matrix"); the matrix is ω_j k(x_i − x_j)."""
    grid = rule.grid(F64)
    k = _random(ConvKernel(rule.dim, 0.37, 5, 2, channels=channels))
    assert k.plan(grid) == "matrix"
    (A,) = k.knot_tensors(grid)
    x = grid.nodes
    z = (x[:, None, :] - x[None, :, :]).reshape(-1, rule.dim)
    P = k.basis_at(z).reshape(grid.n, grid.n, -1)
    W = torch.einsum("kcdm,ijm->kcidj", k.k.detach(), P) * grid.weights
    ref = W.reshape(k.n_knots, channels * grid.n, channels * grid.n)
    assert torch.allclose(A.detach(), ref, atol=1e-12)
    # the FFT on the same grid agrees
    k.method = "fft"
    (S,) = k.knot_tensors(grid)
    op = k.make_op([S[1]], grid)
    u = torch.randn(3, channels * grid.n, dtype=F64)
    with torch.no_grad():
        assert torch.allclose(op.apply(u), u @ ref[1].T, atol=1e-12)


def _overlap(a0, a1, b0, b1):
    return max(0.0, min(a1, b1) - max(a0, b0))


@pytest.mark.parametrize("m", [1, 2, 4])
def test_pixel_constant_fields_are_integrated_exactly_at_every_width(m):
    """k constant on 4×4 displacement cells of [−r, r]², r = 1/4, u constant on 8×8 pixels: at
    width 8m the midpoint convolution equals ∫ k(x_i − y) u(y) dy exactly (computed here from
    the areas of pixel ∩ (x_i − cell)), displacements on faces and corners included."""
    r, cells, p = 0.25, 4, 8
    k = _random(ConvKernel(2, r, cells, 1, time_basis="constant", space_basis="constant"), 3)
    kv = k.k.detach()[0, 0, 0].reshape(cells, cells)
    u = torch.randn(p, p, dtype=F64, generator=torch.Generator().manual_seed(1))
    n = p * m
    grid = Midpoint((n, n), dim=2).grid(F64)
    k.method = "direct"
    op = k.make_op([k.knot_tensors(grid)[0][0]], grid)
    uf = u.repeat_interleave(m, 0).repeat_interleave(m, 1).reshape(1, -1)
    with torch.no_grad():
        got = op.apply(uf).reshape(n, n)
    dz = 2 * r / cells
    for i0, i1 in [(0, 0), (3, 5), (n - 1, n // 2), (n // 2, n // 2 - 1)]:
        x0, x1 = (i0 + 0.5) / n, (i1 + 0.5) / n
        tot = 0.0
        for a in range(cells):  # y ∈ x − cell: y_0 ∈ [x0 − z_hi, x0 − z_lo]
            ya = (x0 - (-r + (a + 1) * dz), x0 - (-r + a * dz))
            for b in range(cells):
                yb = (x1 - (-r + (b + 1) * dz), x1 - (-r + b * dz))
                for q0 in range(p):
                    o0 = _overlap(*ya, q0 / p, (q0 + 1) / p)
                    if o0 == 0.0:
                        continue
                    for q1 in range(p):
                        o1 = _overlap(*yb, q1 / p, (q1 + 1) / p)
                        tot += float(kv[a, b] * u[q0, q1]) * o0 * o1
        assert abs(float(got[i0, i1]) - tot) < 1e-12, (m, i0, i1)


def test_displacements_on_discontinuities_take_the_mean_of_the_limits():
    k = ConvKernel(2, 0.5, 2, 1, space_basis="constant")
    with torch.no_grad():
        k.k.copy_(torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=F64).expand(2, 1, 1, 4))
    z = torch.tensor([[0.0, 0.0], [0.0, 0.25], [0.5, 0.25], [0.5, 0.5], [-0.25, 0.25],
                      [0.6, 0.0]], dtype=F64)
    vals = k.basis_at(z) @ k.k.detach()[0, 0, 0]
    # cells (a, b) ↦ 1, 2, 3, 5; the corner z = 0 takes the mean of all four cells; on the
    # support's edge z_0 = 0.5 only the inner side counts (the outer limit is 0)
    expect = torch.tensor([2.75, 3.5, 2.5, 1.25, 2.0, 0.0], dtype=F64)
    assert torch.allclose(vals, expect, atol=1e-14)
    lin = ConvKernel(1, 0.5, 3, 1)
    with torch.no_grad():
        lin.k.fill_(1.0)
    zl = torch.tensor([[-0.5], [0.0], [0.5], [0.51]], dtype=F64)
    assert torch.allclose(lin.basis_at(zl) @ lin.k.detach()[0, 0, 0],
                          torch.tensor([0.5, 1.0, 0.5, 0.0], dtype=F64), atol=1e-14)


@pytest.mark.parametrize("kind", ["dense", "conv", "lowrank", "conv+lowrank"])
def test_learning_rates_follow_each_family_units(kind):
    """Trainer.param_groups: Adam's rate is lr / (cell volume) for integrated functions —
    Nc for a dense kernel, 1/Δ² for a conv kernel on cells of side Δ, √Nc for low-rank factors,
    lr for biases."""
    from pdenets.training import make_trainer

    cfg = Config()
    cfg.model.kernel, cfg.model.channels, cfg.model.rank = kind, 2, 3
    cfg.data.n_samples = 200
    from pdenets.data import load_dataset_config

    tr = make_trainer(cfg, load_dataset_config(cfg.data))
    lr = cfg.train.lr
    groups = {g["name"]: g["lr"] for g in tr.param_groups(lr)}
    ctrl = tr.net.controls
    assert isinstance(ctrl, KernelControls)
    nc = 64.0  # 8 × 8 control cells on the digits' pixel grid
    expect: dict[str, float] = {}
    kern = ctrl.kernel
    parts = list(kern.parts) if kind == "conv+lowrank" else [kern]
    for i, part in enumerate(parts):
        pre = "controls.kernel." + (f"parts.{i}." if kind == "conv+lowrank" else "")
        if part.kind == "dense":
            expect[pre + "w"] = lr * nc
        elif part.kind == "conv":
            side = 2 * part.radius / part.size[0]
            expect[pre + "k"] = lr / side**2
        else:
            expect[pre + "g"] = expect[pre + "h"] = lr * math.sqrt(nc)
    for name, v in expect.items():
        assert groups[name] == pytest.approx(v, rel=1e-12), name
    assert groups["other"] == lr  # bias, d, lifting
    if kind == "conv":  # the default displacement grid is as fine as the control grid
        assert expect["controls.kernel.k"] == pytest.approx(lr * nc)
    # SGD: squared factors
    g2 = {g["name"]: g["lr"] for g in tr.param_groups(lr, power=2)}
    for name, v in expect.items():
        assert g2[name] == pytest.approx(lr * (v / lr) ** 2, rel=1e-12)


def test_trained_conv_model_is_invariant_under_width_refinement():
    """A conv model (2 channels) trained at the pixel grid keeps its test accuracy within 0.5
    points at 2× and 4× width and steps (MODEL.md §2)."""
    from pdenets.data import load_dataset_config
    from pdenets.training import make_trainer
    from pdenets.training.build import discretization_from
    from pdenets.training.trainer import evaluate

    cfg = Config()
    cfg.model.kernel, cfg.model.channels = "conv", 2
    cfg.train.epochs = 6
    tr = make_trainer(cfg, load_dataset_config(cfg.data))
    net = tr.fit().net
    x, y = tr.data["test"]
    d0 = net.discretization
    accs = []
    with torch.no_grad():
        for m in (1, 2, 4):
            d = discretization_from(net, width=tuple(s * m for s in d0.width.sizes),
                                    steps=d0.steps * m)
            accs.append(100 * evaluate(net, x, y, "cross_entropy", d)["accuracy"])
    assert accs[0] > 85.0, accs
    assert max(abs(a - accs[0]) for a in accs[1:]) <= 0.5, accs


def test_make_kernel_default_conv_grid_is_aligned():
    """The default displacement grid has cells as large as the control cells (faces on node
    displacements at every multiple of the control grid)."""
    k = make_kernel("conv", 2, size=8, intervals=2, radius=0.25, space_basis="constant")
    assert isinstance(k, ConvKernel)
    assert 2 * k.radius / k.size[0] == pytest.approx(1 / 8)


def test_lattice_kernel_keeps_pixel_constant_states_at_every_width():
    """A lattice conv kernel on the pixel grid: the network's outputs are the same at widths
    8, 16, 24 (the state stays constant on pixels; same steps), and equal the convolution of k
    on the pixel grid itself."""
    from pdenets import ContinuumNetwork
    from pdenets.network import Discretization

    net = ContinuumNetwork.create((8, 8), 3, kernel="conv", channels=2, space_basis="constant",
                                  kernel_radius=0.25, init_scale=1.0, seed=2, intervals=2)
    kern = net.controls.kernel
    assert kern.lattice and kern.lattice_shape == (8, 8)
    x = torch.rand(4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    outs = []
    with torch.no_grad():
        for n in (8, 16, 24):
            disc = Discretization.make("midpoint", (n, n), 2, "rk4", 6)
            outs.append(net(x, disc))
        grid = Midpoint((8, 8), dim=2).grid(F64)
        assert kern.plan(grid) == "matrix"
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-12, rtol=0)


def test_lattice_kernel_norm_is_exact():
    """∫∫ w² of the lattice kernel, against a midpoint sum on a grid refining the lattice (exact:
    w is constant on pairs of lattice cells)."""
    k = _random(ConvKernel(2, 0.25, 4, 1, time_basis="constant", channels=2,
                           space_basis="constant", lattice=True), 4)
    grid = Midpoint((16, 16), dim=2).grid(F64)
    A = k.dense_matrix(grid, 0.5).detach() / grid.weights.repeat(2)[None, :]
    wts = grid.weights.repeat(2)
    brute = float((A**2 * wts[:, None] * wts[None, :]).sum())
    assert abs(float(k.norms()[0].detach()) - brute) < 1e-10 * brute


def test_lattice_needs_cells_tiling_the_domain():
    from pdenets.errors import PdenetsError

    with pytest.raises(PdenetsError, match="lattice"):
        ConvKernel(1, 0.3, 4, 1, space_basis="constant", lattice=True)
    with pytest.raises(PdenetsError, match="lattice"):
        ConvKernel(1, 0.25, 5, 1, lattice=True)
