"""Fast paths of the structured kernels at small sizes (MODEL.md §10): the conv matrix plan as
one product with a knot-to-matrix map, conv+lowrank materialized per depth, cached Gram
matrices, batched low-rank norms. Each is checked against an independent evaluation."""

from __future__ import annotations

import pytest
import torch

from pdenets.kernels import ConvKernel, LowRankKernel, SumKernel, conv
from pdenets.kernels._ops import DenseOp, DenseSumOp, SumOp
from pdenets.quadrature import Midpoint, Trapezoid

F64 = torch.float64


def _random(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in k.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return k


def _reference(k: ConvKernel, grid, t: float) -> torch.Tensor:
    """ω_j k_{cc'}(x_i − x_j) at depth t from the displacement basis at every node pair."""
    x = grid.nodes
    z = (x[:, None, :] - x[None, :, :]).reshape(-1, x.shape[1])
    kt = k.time.value(k.k.detach(), t)
    P = k.basis_at(z).reshape(grid.n, grid.n, -1)
    W = torch.einsum("cdm,ijm->cidj", kt, P) * grid.weights[None, None, None, :]
    C = k.channels
    return W.reshape(C * grid.n, C * grid.n)


@pytest.mark.parametrize("rule", [Midpoint(13), Trapezoid(11), Midpoint((6, 5), dim=2)])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("basis", ["linear", "constant"])
@pytest.mark.parametrize("use_map", [True, False])
def test_conv_matrix_plan_equals_dense(rule, channels, basis, use_map, monkeypatch):
    if not use_map:  # the gather from the stencil (used when the map would be large)
        monkeypatch.setattr(conv, "MAP_MAX", 0)
    grid = rule.grid(F64)
    k = _random(ConvKernel(rule.dim, 0.41, 5 if basis == "linear" else 4, 3,
                           channels=channels, space_basis=basis))
    assert k.plan(grid) == "matrix"
    assert (k._matrix_map(grid) is not None) == use_map
    t = 0.45
    A = k.time.value(k.knot_tensors(grid)[0], t).detach()
    assert torch.allclose(A, _reference(k, grid, t), atol=1e-12, rtol=0)


def test_conv_matrix_map_gradient_equals_gather(monkeypatch):
    grid = Midpoint((5, 6), dim=2).grid(F64)
    k = _random(ConvKernel(2, 0.35, 4, 2, channels=2, space_basis="constant"))
    G = torch.randn(3, 2 * grid.n, 2 * grid.n, dtype=F64)
    grads = []
    for cap in (conv.MAP_MAX, 0):
        monkeypatch.setattr(conv, "MAP_MAX", cap)
        grid._cache.clear()
        k.k.grad = None
        (k.knot_tensors(grid)[0] * G).sum().backward()
        grads.append(k.k.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=0)


def test_conv_norms_follow_the_parameters_through_the_gram_cache():
    # the cached Gram matrices depend on the basis only: new knot values give the norms of a
    # freshly built kernel with those values
    for lattice, size, r in ((True, 4, 0.25), (False, 5, 0.3)):
        basis = "constant" if lattice else "linear"
        k = _random(ConvKernel(2, r, size, 2, space_basis=basis, lattice=lattice), 1)
        k.norms(spatial=not lattice)
        with torch.no_grad():
            k.k.mul_(-2.5).add_(0.3)
        fresh = ConvKernel(2, r, size, 2, space_basis=basis, lattice=lattice,
                           k=k.k.detach().clone())
        for a, b in zip(k.norms(spatial=not lattice), fresh.norms(spatial=not lattice)):
            assert torch.allclose(a, b, rtol=1e-13, atol=0)


def _lowrank_norms_loop(k: LowRankKernel):
    """∫‖w‖², ∫‖∂_t w‖² and the H¹ term by Gauss–Legendre, one point at a time, from the
    dense matrix of the mass-weighted factors (independent of the batched code)."""
    M = k._mass()
    S = k._mass(stiff=True)
    tm = k.time

    def sq(G, H, Mg, Mh):  # Σ_{cc'} ‖w_{cc'}‖², w_{cc'} = Σ_r g_{cr} ⊗ h_{c'r} as a matrix
        C = G.shape[0]
        tot = 0.0
        for c in range(C):
            for d in range(C):
                W = G[c].T @ H[d]  # (Nc, Nc) coefficients of w_{cd}
                tot = tot + ((Mg @ W @ Mh) * W).sum()
        return tot

    out = [0.0, 0.0, 0.0]
    for wq, kk, a, b in tm.gauss(3):
        g = a * k.g[kk] + b * k.g[kk + 1]
        h = a * k.h[kk] + b * k.h[kk + 1]
        dg = (k.g[kk + 1] - k.g[kk]) / tm.delta
        dh = (k.h[kk + 1] - k.h[kk]) / tm.delta
        out[0] += wq * sq(g, h, M, M)
        out[1] += wq * sq(torch.cat([dg, g], 1), torch.cat([h, dh], 1), M, M)
        out[2] += wq * (sq(g, h, S, M) + sq(g, h, M, S))
    return out


def test_lowrank_batched_norms_equal_pointwise_quadrature():
    k = _random(LowRankKernel(2, (4, 3), 3, 3, T=2.0, channels=2), 3)
    got = k.norms(spatial=True)
    for a, b in zip(got, _lowrank_norms_loop(k)):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_lowrank_time_derivative_norm_against_finite_differences():
    # ∫‖∂_t w‖² with w(t) = G(t) H(t)ᵀ: midpoint sum of the squared difference quotients of
    # the dense matrices (mass-weighted), converging at second order
    k = _random(LowRankKernel(1, 4, 2, 2, T=1.0, channels=1), 5)
    M = k._mass().detach()
    L = torch.linalg.cholesky(M)

    def W(t):
        G, H = k.time.value(k.g.detach(), t)[0], k.time.value(k.h.detach(), t)[0]
        return L.T @ (G.T @ H) @ L  # ⟨A, A⟩_M = ‖Lᵀ A L‖²

    n = 4000
    dt = 1.0 / n
    fd = sum(float(((W((i + 1) * dt) - W(i * dt)) / dt).pow(2).sum()) * dt for i in range(n))
    assert abs(fd - float(k.norms()[1].detach())) < 1e-5 * abs(fd)


def test_sum_piecewise_constant_in_depth_is_one_matrix_per_knot():
    grid = Midpoint((4, 5), dim=2).grid(F64)
    cv = _random(ConvKernel(2, 0.5, 3, 3, time_basis="constant", channels=2), 1)
    lr = _random(LowRankKernel(2, 3, 2, 3, time_basis="constant", channels=2), 2)
    s = SumKernel([cv, lr])
    assert s.is_dense_on(grid)
    (A,) = s.knot_tensors(grid)
    for t in (0.1, 0.5, 0.9):
        ref = cv.dense_matrix(grid, t) + lr.dense_matrix(grid, t)
        assert torch.allclose(s.time.value(A, t), ref, atol=1e-12, rtol=0)
        assert isinstance(s.make_op([s.time.value(A, t)], grid), DenseOp)
    # the linear depth basis keeps the parts (their product is not linear in depth)
    lin = SumKernel([_random(ConvKernel(2, 0.5, 3, 3, channels=2)),
                     _random(LowRankKernel(2, 3, 2, 3, channels=2))])
    assert not lin.is_dense_on(grid)
    assert len(lin.knot_tensors(grid)) == 3


def test_dense_sum_op_equals_sum_of_parts():
    time_basis = "linear"
    grid = Midpoint((4, 5), dim=2).grid(F64)
    cv = _random(ConvKernel(2, 0.5, 3, 2, time_basis=time_basis, channels=2), 1)
    lr = _random(LowRankKernel(2, 3, 2, 2, time_basis=time_basis, channels=2), 2)
    s = SumKernel([cv, lr])
    t = 0.55
    vals = [s.time.value(x, t).detach().requires_grad_(True) for x in s.knot_tensors(grid)]
    op = s.make_op(vals, grid)
    assert isinstance(op, DenseSumOp)
    ref = SumOp(op.ops)  # the parts applied one by one
    u = torch.randn(3, 2 * grid.n, dtype=F64)
    g = torch.randn(3, 2 * grid.n, dtype=F64)
    with torch.no_grad():
        assert torch.allclose(op.apply(u), ref.apply(u), atol=1e-12, rtol=0)
        assert torch.allclose(op.apply_T(g), ref.apply_T(g), atol=1e-12, rtol=0)
        # the dense reference of the sum at depth t (low-rank factors interpolated apart)
        assert torch.allclose(op.matrix(), s.dense_matrix(grid, t), atol=1e-12, rtol=0)
    # parameter VJPs: the op's own formula, the parts' formulas and autograd agree
    mine = op.param_vjp(g, u)
    parts = ref.param_vjp(g, u)
    auto = torch.autograd.grad((g * op.apply(u)).sum(), vals)
    for a, b, c in zip(mine, parts, auto):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
        assert torch.allclose(a, c, atol=1e-12, rtol=0)
    rebuilt = op.rebuild([v.detach() for v in vals])
    assert isinstance(rebuilt, DenseSumOp)
    assert torch.allclose(rebuilt.matrix(), op.matrix().detach(), atol=0, rtol=0)


def test_lowrank_batched_norms_piecewise_constant_in_depth():
    # piecewise constant: ∫‖w‖² = Δ Σ_k ‖w_k‖², the depth term Σ_k ‖w_{k+1} − w_k‖² / Δ, with
    # w_k the dense coefficient matrices Gᵀ H of each channel pair
    k = _random(LowRankKernel(2, 3, 2, 3, T=1.5, time_basis="constant", channels=2), 4)
    M, S = k._mass(), k._mass(stiff=True)
    d = k.time.delta

    def W(j):
        return torch.stack([torch.stack([k.g[j, c].T @ k.h[j, e] for e in range(2)])
                            for c in range(2)])  # (C, C, Nc, Nc)

    def nrm(A, Mg, Mh):
        return (torch.einsum("pq,cdqr,rs->cdps", Mg, A, Mh) * A).sum()

    Ws = [W(j) for j in range(k.n_knots)]
    sq = d * sum(nrm(A, M, M) for A in Ws)
    dsq = sum(nrm(b - a, M, M) for a, b in zip(Ws[:-1], Ws[1:])) / d
    grad = d * sum(nrm(A, S, M) + nrm(A, M, S) for A in Ws)
    for a, b in zip(k.norms(spatial=True), (sq, dsq, grad)):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_lattice_kernel_off_its_lattice_refuses_a_huge_dense_matrix(monkeypatch):
    from pdenets import _limits

    monkeypatch.delenv(_limits.ENV_VAR, raising=False)
    monkeypatch.setattr(_limits, "memory_limit", lambda: 2**20)  # 1 MiB
    k = _random(ConvKernel(2, 0.25, 4, 2, space_basis="constant", lattice=True))
    assert k.lattice_shape == (8, 8)
    on = Midpoint((8, 8), dim=2).grid(F64)
    assert k.plan(on) == "matrix"
    k.knot_tensors(on)  # on its lattice: no dense fallback
    off = Midpoint((64, 64), dim=2).grid(F64)  # 4096 nodes: (C·N)² matrices of 64 MiB
    assert k.plan(off) == "dense"
    with pytest.raises(_limits.SizeLimitError, match="lattice kernel off its 8×8 lattice"):
        k.knot_tensors(off)
    # a small grid off the lattice still falls back to the dense evaluation
    small = Midpoint((16, 16), dim=2).grid(F64)
    monkeypatch.setattr(_limits, "memory_limit", lambda: 2**26)
    A = k.time.value(k.knot_tensors(small)[0], 0.3).detach()
    x = small.nodes
    # reference: k̄ at the displacements of the pixel centres holding the nodes
    cen = (torch.floor(x * 8) + 0.5) / 8
    z = (cen[:, None, :] - cen[None, :, :]).reshape(-1, 2)
    ref = (k.basis_at(z) @ k.time.value(k.k.detach(), 0.3)[0, 0]).reshape(small.n, small.n)
    assert torch.allclose(A, ref * small.weights[None, :], atol=1e-13, rtol=0)
    # non-uniform rules: the error names the rule
    from pdenets.quadrature import GaussLegendre

    gl = GaussLegendre((64, 64), dim=2).grid(F64)
    monkeypatch.setattr(_limits, "memory_limit", lambda: 2**20)
    with pytest.raises(_limits.SizeLimitError, match="not a uniform grid"):
        k.knot_tensors(gl)
