"""Operators built from a kernel's tensors at one depth (MODEL.md §10): dense matrices,
discrete convolutions (direct or zero-padded FFT), low-rank products and their sums, with the
transposed operators of the discrete adjoint (§5) and the parameter VJPs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

KERNELS = ("dense", "conv", "lowrank", "conv+lowrank")
CONV_METHODS = ("auto", "matrix", "direct", "fft", "dense")

#: a convolution with C·N ≤ MATRIX_MAX is materialized as a dense matrix (on a CPU, dense matrix
#: products beat convolution routines with weight gradients at these sizes by 1.1-20×: see
#: benchmarks/bench_kernels.py)
MATRIX_MAX = 1024

#: relative FFT cost per point and log₂ of the transform length (calibrated on a CPU, see
#: benchmarks/bench_kernels.py); only the ratio to the direct cost matters
FFT_COST = 6.0


# ------------------------------------------------------------------------------------------
# operators built from a kernel's tensors at one depth


class KernelOp:
    """A linear operator u ↦ (∫ w(·, y) u(y) dy)_i on states ``(B, C·N)``.

    ``tensors`` are the tensors it is built from (one depth's knot tensors); ``rebuild`` makes
    the same operator from other tensors of the same shapes. ``param_vjp(g, u)`` returns the
    gradients of ``Σ_b ⟨g_b, apply(u)_b⟩`` with respect to ``tensors``.
    """

    tensors: tuple[torch.Tensor, ...] = ()

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_T(self, v: torch.Tensor) -> torch.Tensor:
        """The transposed operator (the plain-sum adjoint used by the discrete costate)."""
        raise NotImplementedError

    def param_vjp(self, g: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> KernelOp:
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        """The operator as a dense ``(C·N, C·N)`` matrix (for diagnostics and tests)."""
        n = self.size
        t = self.tensors[0]
        eye = torch.eye(n, dtype=t.dtype, device=t.device)
        return self.apply(eye).T

    size: int = 0


class DenseOp(KernelOp):
    """A dense matrix A: ``apply(u) = u Aᵀ``."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.tensors = (A,)
        self.size = A.shape[0]

    def apply(self, u):
        return u @ self.A.T

    def apply_T(self, v):
        return v @ self.A

    def param_vjp(self, g, u):
        return (g.T @ u,)

    def rebuild(self, tensors):
        return DenseOp(tensors[0])

    def matrix(self):
        return self.A

    def dense(self) -> torch.Tensor:
        """The matrix (differentiable in :attr:`tensors`)."""
        return self.A

    def dense_vjp(self, gA: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The gradients of ``⟨gA, dense()⟩`` with respect to :attr:`tensors`."""
        return (gA,)


def _conv_plan(shape: tuple[int, ...], half: tuple[int, ...], C: int, method: str) -> str:
    """Direct or FFT convolution by the cost model (operations per batch element)."""
    if method in ("direct", "fft"):
        return method
    n = math.prod(shape)
    stencil = math.prod(2 * h + 1 for h in half)
    direct = C * C * n * stencil
    nf = math.prod(_fft_len(s, h) for s, h in zip(shape, half))
    fft = C * nf * FFT_COST * max(1.0, math.log2(nf)) + 4 * C * C * nf
    return "fft" if fft < direct else "direct"


def _fft_len(n: int, h: int) -> int:
    """A fast (5-smooth) transform length ≥ n + 2h (linear convolution, no wrap-around)."""
    m = n + 2 * h
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


class ConvOp(KernelOp):
    """Discrete convolution ``out_c(x_i) = Σ_{c'} Σ_j K_{cc'}[i − j] ω_j u_{c'}(x_j)`` on a
    uniform tensor grid (zero padding: no wrap-around), directly or by FFT.

    ``stencil`` has shape ``(C, C, 2L_0+1[, 2L_1+1])``; entry ``L + l`` is k at displacement
    l·h.
    """

    def __init__(self, stencil: torch.Tensor, shape: tuple[int, ...], weights: torch.Tensor,
                 method: str = "auto") -> None:
        self.stencil = stencil
        self.tensors = (stencil,)
        self.shape = shape
        self.weights = weights
        self.C = stencil.shape[0]
        self.half = tuple((s - 1) // 2 for s in stencil.shape[2:])
        self.size = self.C * math.prod(shape)
        self.method = method
        self.plan = _conv_plan(shape, self.half, self.C, method)

    def rebuild(self, tensors):
        return ConvOp(tensors[0], self.shape, self.weights, self.method)

    def _conv(self, v: torch.Tensor, K: torch.Tensor, plan: str) -> torch.Tensor:
        """Linear convolution of v ``(B, C, N)`` with the stencil K, cropped to the grid."""
        B, C = v.shape[0], self.C
        d = len(self.shape)
        x = v.reshape(B, C, *self.shape)
        if plan == "direct":
            W = torch.flip(K, dims=tuple(range(2, 2 + d)))
            conv = F.conv1d if d == 1 else F.conv2d
            y = conv(x, W, padding=self.half)
        else:
            s = [_fft_len(n, h) for n, h in zip(self.shape, self.half)]
            dims = tuple(range(2, 2 + d))
            X = torch.fft.rfftn(x, s=s, dim=dims)
            KF = torch.fft.rfftn(K, s=s, dim=dims)
            Y = torch.einsum("bc...,dc...->bd...", X, KF)
            y = torch.fft.irfftn(Y, s=s, dim=dims)
            for a, (n, h) in enumerate(zip(self.shape, self.half)):
                y = y.narrow(2 + a, h, n)
        return y.reshape(B, C * math.prod(self.shape))

    def _wide(self, w: torch.Tensor) -> torch.Tensor:
        return w.repeat(self.C)

    def apply(self, u):
        return self._conv(u * self._wide(self.weights), self.stencil, self.plan)

    def apply_T(self, v):
        # correlation: the transpose convolves with k(−z) and transposed channels (§5, §10)
        d = len(self.shape)
        Kt = torch.flip(self.stencil.transpose(0, 1), dims=tuple(range(2, 2 + d)))
        return self._conv(v, Kt, self.plan) * self._wide(self.weights)

    def param_vjp(self, g, u):
        with torch.enable_grad():
            K = self.stencil.detach().requires_grad_(True)
            out = self._conv((u * self._wide(self.weights)).detach(), K, self.plan)
            return (torch.autograd.grad(out, K, g.detach())[0],)


class LowRankOp(KernelOp):
    """``apply(u) = (u H) Gᵀ`` with G ``(C·N, R)`` (the g_r at the nodes) and H ``(C·N, R)``
    (ω_j h_r(x_j)): O(B C N R)."""

    def __init__(self, G: torch.Tensor, H: torch.Tensor) -> None:
        self.G, self.H = G, H
        self.tensors = (G, H)
        self.size = G.shape[0]

    def rebuild(self, tensors):
        return LowRankOp(tensors[0], tensors[1])

    def apply(self, u):
        return (u @ self.H) @ self.G.T

    def apply_T(self, v):
        return (v @ self.G) @ self.H.T

    def param_vjp(self, g, u):
        return g.T @ (u @ self.H), u.T @ (g @ self.G)

    def dense(self) -> torch.Tensor:
        """The matrix G Hᵀ (differentiable in G, H)."""
        return self.G @ self.H.T

    def dense_vjp(self, gA: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The gradients of ``⟨gA, G Hᵀ⟩``: ``(gA H, gAᵀ G)``."""
        return gA @ self.H, gA.T @ self.G


class SumOp(KernelOp):
    """The sum of operators."""

    def __init__(self, ops: Sequence[KernelOp]) -> None:
        self.ops = list(ops)
        self.tensors = tuple(t for op in self.ops for t in op.tensors)
        self.size = self.ops[0].size

    def rebuild(self, tensors):
        out, i = [], 0
        for op in self.ops:
            n = len(op.tensors)
            out.append(op.rebuild(tensors[i:i + n]))
            i += n
        return SumOp(out)

    def apply(self, u):
        out = self.ops[0].apply(u)
        for op in self.ops[1:]:
            out = out + op.apply(u)
        return out

    def apply_T(self, v):
        out = self.ops[0].apply_T(v)
        for op in self.ops[1:]:
            out = out + op.apply_T(v)
        return out

    def param_vjp(self, g, u):
        return tuple(x for op in self.ops for x in op.param_vjp(g, u))


class DenseSumOp(SumOp):
    """A sum of dense and low-rank operators materialized as one ``(C·N, C·N)`` matrix per
    depth (for C·N ≤ ``MATRIX_MAX``): one matrix product per stage instead of one per part,
    while :attr:`tensors` (and so the depth interpolation, :meth:`rebuild`, the parameter
    VJPs) stay those of the parts. The matrix is formed at each depth from the interpolated
    parts — a low-rank part's factors are interpolated separately, so its knot products could
    not be."""

    def __init__(self, ops: Sequence[KernelOp]) -> None:
        super().__init__(ops)
        mats = [op.dense() for op in self.ops]  # type: ignore[attr-defined]
        A = mats[0]
        for m in mats[1:]:
            A = A + m
        self.A = A

    @staticmethod
    def fits(ops: Sequence[KernelOp]) -> bool:
        """Whether ``ops`` can be materialized: every one dense or low rank, C·N small."""
        return (all(isinstance(op, (DenseOp, LowRankOp)) for op in ops)
                and ops[0].size <= MATRIX_MAX)

    def rebuild(self, tensors):
        return DenseSumOp(SumOp.rebuild(self, tensors).ops)

    def apply(self, u):
        return u @ self.A.T

    def apply_T(self, v):
        return v @ self.A

    def param_vjp(self, g, u):
        gA = g.T @ u
        return tuple(x for op in self.ops for x in op.dense_vjp(gA))

    def matrix(self):
        return self.A


# helpers for the dynamics: A is a dense matrix (tensor) or a KernelOp


def lin(u: torch.Tensor, A, b: torch.Tensor) -> torch.Tensor:
    """``∫ w u dy + b`` at the nodes: ``u Aᵀ + b`` (dense) or ``A.apply(u) + b``."""
    if isinstance(A, torch.Tensor):
        return torch.addmm(b, u, A.T)
    if isinstance(A, DenseSumOp):  # one fused product, as a dense kernel's
        return torch.addmm(b, u, A.A.T)
    return A.apply(u) + b


def lin_T(g: torch.Tensor, A) -> torch.Tensor:
    """The transposed operator applied to g."""
    return g @ A if isinstance(A, torch.Tensor) else A.apply_T(g)


def lin_param_vjp(g: torch.Tensor, u: torch.Tensor, A):
    """∂ Σ_b ⟨g_b, A u_b⟩ / ∂A: a matrix (dense) or a tuple (one per operator tensor)."""
    return g.T @ u if isinstance(A, torch.Tensor) else A.param_vjp(g, u)
