"""Structured kernels and channels: the model at scale (MODEL.md §10).

A :class:`Kernel` is the weight kernel w(x, y, t) of MODEL.md §1 as a *function* with C
channels (w(x, y, t) ∈ R^{C×C}), stored on its own control grid and depth knots, so that it runs
at any width and any number of steps (MODEL.md §2). The families:

:class:`DenseKernel`
    w_{cc'}(x, y, t) on a control grid in (x, y) — today's kernel
    (:class:`~pdenets.controls.GridControls`) with channels. Cost O(B C² N²) per stage.
:class:`ConvKernel`
    w_{cc'}(x, y, t) = k_{cc'}(x − y, t), k supported in |z_a| ≤ r (receptive-field radius r as
    a fraction of Ω) and stored on a *displacement* grid of [−r, r]^d (multilinear on vertices
    or piecewise constant on cells). On a uniform width grid (midpoint, trapezoid) the integral
    Σ_j ω_j k(x_i − x_j) u_j is a discrete convolution, evaluated directly (O(B C² N S), S the
    stencil size) or by zero-padded FFT (O(B C N log N), no wrap-around), whichever a cost
    model finds cheaper; on non-uniform rules (Gauss–Legendre, Monte Carlo) it falls back to
    the dense evaluation of the same k. The transposed operator (the adjoint of §5) is the
    correlation with k(−z) (channels transposed).
:class:`LowRankKernel`
    w_{cc'}(x, y, t) = Σ_{r ≤ R} g_{cr}(x, t) h_{c'r}(y, t), O(B C N R) per stage.
:class:`SumKernel`
    A sum of kernels (e.g. ``conv+lowrank``: a local convolution plus a low-rank global part).

Every kernel provides, for a width grid, its *knot tensors* (the discretized kernel at each
depth knot, differentiable in the parameters) and an operator (:class:`KernelOp`) built from
them at a depth t (depth interpolation acts on the knot tensors: piecewise constant or linear,
as for :class:`~pdenets.controls.GridControls`); the exact regularization norms of MODEL.md §4
(``∫‖w‖²``, ``∫‖∂_t w‖²`` and the H¹-in-width ``∫‖∇_x w‖² + ‖∇_y w‖²`` where defined) computed
on its control grid; an upper bound of the operator norm (MODEL.md §3, §10) and prolongation
to a finer control grid / more depth intervals (MODEL.md §2, multilevel).

:class:`KernelControls` pairs a kernel with a bias field b(x, t) ∈ R^C: the controls
θ = (w, b) of a network with structured kernels and/or channels. With C channels the state is
stored as ``(B, C·N)`` (channel-major: entry ``c·N + i`` is u_c(x_i)), so that every integrator
and gradient strategy works unchanged; C = 1 is the scalar model.

The package's modules: :mod:`~pdenets.kernels._ops` (operators), :mod:`~pdenets.kernels._time`
(depth knots, exact Gram integrals), :mod:`~pdenets.kernels.base`, :mod:`~pdenets.kernels.dense`,
:mod:`~pdenets.kernels.conv`, :mod:`~pdenets.kernels.lowrank`, :mod:`~pdenets.kernels.sum` and
:mod:`~pdenets.kernels.controls`.
"""

from __future__ import annotations

from ._ops import (
    CONV_METHODS,
    KERNELS,
    ConvOp,
    DenseOp,
    KernelOp,
    LowRankOp,
    SumOp,
    lin,
    lin_param_vjp,
    lin_T,
)
from .base import Kernel
from .controls import KernelControls, kernel_from_config, make_kernel
from .conv import ConvKernel
from .dense import DenseKernel
from .lowrank import LowRankKernel
from .sum import SumKernel

__all__ = [
    "CONV_METHODS", "KERNELS", "ConvKernel", "ConvOp", "DenseKernel", "DenseOp", "Kernel",
    "KernelControls", "KernelOp", "LowRankKernel", "LowRankOp", "SumKernel", "SumOp",
    "kernel_from_config", "lin", "lin_T", "lin_param_vjp", "make_kernel",
]
