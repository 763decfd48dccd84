"""The kernel base class (MODEL.md §10) and helpers shared by the families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_finite, check_positive
from ..errors import PdenetsError
from ..quadrature import Grid
from ._ops import KernelOp
from ._time import _Time


def _init_param(v, shape, name, dtype) -> torch.Tensor:
    if v is None:
        return torch.zeros(shape, dtype=dtype)
    v = torch.as_tensor(v, dtype=dtype)
    if tuple(v.shape) != tuple(shape):
        raise PdenetsError(f"kernel: {name} has shape {tuple(v.shape)}, expected {tuple(shape)}")
    return check_finite(v.detach().clone(), f"kernel.{name}")


def _check_channels(channels) -> int:
    check_positive(channels, "channels", integer=True)
    if channels > 256:
        raise PdenetsError(f"channels must be at most 256, got {channels}")
    return int(channels)


class Kernel(nn.Module):
    """Base class of kernel families (see the module docstring).

    Subclasses set ``kind``, ``dim``, ``channels`` and ``time`` and implement
    :meth:`knot_tensors`, :meth:`make_op`, :meth:`dense_knots`, :meth:`norms`,
    :meth:`operator_norm_bound`, :meth:`prolong` and :meth:`config`.
    """

    kind = "kernel"
    dim: int
    channels: int
    time: _Time

    @property
    def T(self) -> float:
        return self.time.T

    @property
    def n_knots(self) -> int:
        return self.time.n_knots

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def knot_tensors(self, grid: Grid) -> tuple[torch.Tensor, ...]:
        """The discretized kernel on ``grid`` at every depth knot (leading axis K)."""
        raise NotImplementedError

    def make_op(self, tensors: Sequence[torch.Tensor], grid: Grid) -> KernelOp:
        """The operator at one depth from that depth's tensors (as :meth:`knot_tensors`)."""
        raise NotImplementedError

    def is_dense_on(self, grid: Grid) -> bool:
        """Whether :meth:`knot_tensors` is one dense ``(K, C·N, C·N)`` matrix on ``grid``."""
        return False

    def dense_knots(self, grid: Grid) -> torch.Tensor:
        """Reference dense evaluation ``(K, C·N, C·N)``: ``A[c·N+i, c'·N+j] = ω_j w_{cc'}(x_i,
        x_j)`` (channel-major blocks)."""
        raise NotImplementedError

    def dense_matrix(self, grid: Grid, t: float) -> torch.Tensor:
        """The dense matrix at depth t (reference evaluation)."""
        return self.time.value(self.dense_knots(grid), t)

    def norms(self, spatial: bool = False):
        """Exact ``(∫‖w‖² dt, ∫‖∂_t w‖² dt[, ∫‖∇_x w‖² + ‖∇_y w‖² dt])`` (norms of L²(Ω×Ω)
        summed over channel pairs; the depth term of piecewise-constant kernels penalizes
        jumps, as for :class:`~pdenets.controls.GridControls`)."""
        raise NotImplementedError

    def operator_norm_bound(self, t: float) -> float:
        """An upper bound of the L²(Ω)^C operator norm of w(·, ·, t) (MODEL.md §3, §10)."""
        raise NotImplementedError

    def prolong(self, size=None, intervals: int | None = None) -> Kernel:
        """The same kernel on a finer control grid and/or more depth intervals (exact when the
        new grid refines the old one, as :meth:`GridControls.prolong
        <pdenets.controls.GridControls.prolong>`)."""
        raise NotImplementedError

    def lr_scales(self) -> dict[str, float]:
        """How each parameter scales with the control grid, for the learning rate in
        discrete-network units (:meth:`Trainer.param_groups
        <pdenets.training.Trainer.param_groups>`): ``{parameter name: s}``, Adam's rate being
        ``lr · s`` (SGD's ``lr · s²``). A function integrated against the quadrature weights
        enters the discrete network as (cell volume) × value, so it gets s = 1 / (cell
        volume) — Nc for a kernel on Nc control cells."""
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def _wide_weights(self, grid: Grid) -> torch.Tensor:
        return grid.weights.to(self._dtype()).repeat(self.channels)


def _blocks(W: torch.Tensor) -> torch.Tensor:
    """``(K, C, C, N, N)`` → channel-major ``(K, C·N, C·N)``."""
    K, C, _, N, _ = W.shape
    return W.permute(0, 1, 3, 2, 4).reshape(K, C * N, C * N)
