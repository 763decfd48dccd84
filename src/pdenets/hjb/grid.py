"""The state grid of the HJB solver (MODEL.md §8): a tensor grid on a box of R^D, its
multilinear interpolation (linear extrapolation outside) and one-sided differences."""

from __future__ import annotations

import copy
import math

import torch

from .._checks import check_positive
from ..errors import PdenetsError
from ._tensors import _DTYPE, _as_tensor


class StateGrid:
    """A tensor grid on the box Π_d [lo_d, hi_d] of the state space R^D.

    Parameters
    ----------
    lo, hi : float or sequence of float
        Box corners (broadcast to D entries), lo < hi.
    points : int or sequence of int
        Grid points per dimension (≥ 3).
    D : int
        State dimension.
    """

    def __init__(self, lo, hi, points, D: int) -> None:
        check_positive(D, "state dimension D", integer=True)
        self.D = D
        self.lo = _as_tensor(lo, (D,), "grid lo")
        self.hi = _as_tensor(hi, (D,), "grid hi")
        if not bool((self.hi > self.lo).all()):
            raise PdenetsError(f"grid: need lo < hi in every dimension, got {self.lo.tolist()} "
                               f"and {self.hi.tolist()}")
        pts = [points] * D if isinstance(points, int) else list(points)
        if len(pts) == 1 and D > 1:
            pts = pts * D
        if len(pts) != D or any(isinstance(n, bool) or not isinstance(n, int) or n < 3
                                for n in pts):
            raise PdenetsError(f"grid points must be an integer >= 3 or {D} of them, got "
                               f"{points!r}")
        self.shape = tuple(int(n) for n in pts)
        self.h = (self.hi - self.lo) / torch.tensor([n - 1 for n in self.shape], dtype=_DTYPE)
        self.size = math.prod(self.shape)
        strides = [1] * D
        for d in range(D - 2, -1, -1):
            strides[d] = strides[d + 1] * self.shape[d + 1]
        self.strides = torch.tensor(strides, dtype=torch.int64)
        self.n_tensor = torch.tensor(self.shape, dtype=torch.int64)

    @property
    def device(self) -> torch.device:
        """The device of the box corners and spacing."""
        return self.lo.device

    def to(self, device: str | torch.device) -> StateGrid:
        """The same grid with its corners and spacing on ``device`` (``self`` if already)."""
        dev = torch.device(device)
        if dev == self.device:
            return self
        new = copy.copy(self)
        new.lo, new.hi, new.h = self.lo.to(dev), self.hi.to(dev), self.h.to(dev)
        return new

    def axes(self) -> list[torch.Tensor]:
        """The 1-D coordinates per dimension."""
        return [torch.linspace(float(self.lo[d]), float(self.hi[d]), n, dtype=_DTYPE)
                for d, n in enumerate(self.shape)]

    def points(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Coordinates of the flat (row-major) grid indices ``start:stop``, shape ``(M, D)``."""
        stop = self.size if stop is None else stop
        dev = self.device
        idx = torch.arange(start, stop, dtype=torch.int64, device=dev)
        multi = (idx[:, None] // self.strides.to(dev)) % self.n_tensor.to(dev)
        return self.lo + multi.to(_DTYPE) * self.h

    def interpolate(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Multilinear interpolation of grid ``values`` (shape ``self.shape`` or flat) at
        points ``x`` (``(M, D)``), linear extrapolation outside the box.

        The 2^D corner values are read with :func:`torch.take` at the base index plus a
        constant offset per corner (advanced indexing ``flat[idx]`` is many times slower with
        several intra-op threads), and the weights are products of the per-axis fractions.
        Runs on the device of ``values``.
        """
        flat = values.reshape(-1)
        lo, h = self.lo.to(x.device), self.h.to(x.device)
        s = (x - lo) / h
        top = (self.n_tensor - 2).to(device=x.device, dtype=x.dtype)
        i0 = torch.minimum(torch.clamp(torch.floor(s), min=0.0), top)
        frac = s - i0
        base = (i0.to(torch.int64) * self.strides.to(x.device)).sum(-1)
        fr = frac.T.contiguous()  # (D, M): per-axis fractions, contiguous rows
        one_minus = 1.0 - fr
        strides = self.strides.tolist()
        out: torch.Tensor | None = None
        for corner in range(2**self.D):
            offset = 0
            wgt: torch.Tensor | None = None
            for d in range(self.D):
                bit = (corner >> (self.D - 1 - d)) & 1
                offset += bit * strides[d]
                f = fr[d] if bit else one_minus[d]
                wgt = f if wgt is None else wgt * f
            assert wgt is not None
            term = wgt * torch.take(flat, base + offset)
            out = term if out is None else out + term
        assert out is not None
        return out

    def one_sided(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward and forward differences p⁻, p⁺ of ``V`` (grid-shaped), shape
        ``(D, *shape)`` each, with linearly extrapolated ghost values."""
        pm = V.new_empty((self.D, *self.shape))
        pp = torch.empty_like(pm)
        for d in range(self.D):
            first = 2 * V.narrow(d, 0, 1) - V.narrow(d, 1, 1)
            last = 2 * V.narrow(d, -1, 1) - V.narrow(d, -2, 1)
            dV = torch.diff(V, dim=d, prepend=first, append=last) / float(self.h[d])
            n = self.shape[d]
            pm[d] = dV.narrow(d, 0, n)
            pp[d] = dV.narrow(d, 1, n)
        return pm, pp

    def describe(self) -> dict:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist(), "points": list(self.shape),
                "size": self.size}
