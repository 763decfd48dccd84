"""Depth interpolation of kernel knots and exact Gram integrals of the 1-D bases
(MODEL.md §4: the regularization norms are computed exactly on the control grid)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_choice, check_positive
from ..controls import TIME_BASES


class _Time:
    """Depth knots: piecewise constant (M values) or linear (M + 1 knots) on [0, T]."""

    def __init__(self, intervals: int, T: float, basis: str) -> None:
        check_positive(intervals, "kernel: intervals", integer=True)
        check_positive(T, "T")
        self.intervals, self.T = int(intervals), float(T)
        self.basis = check_choice(basis, TIME_BASES, "time basis")
        self.delta = self.T / self.intervals

    @property
    def n_knots(self) -> int:
        return self.intervals + (1 if self.basis == "linear" else 0)

    def knot_times(self) -> list[float]:
        d = self.delta
        if self.basis == "constant":
            return [(k + 0.5) * d for k in range(self.intervals)]
        return [k * d for k in range(self.intervals + 1)]

    def weights_at(self, t: float) -> tuple[tuple[int, float], ...]:
        """``((k, 1 − s), (k + 1, s))``: the value at depth t is a combination of knots."""
        if self.basis == "constant":
            k = min(max(int(math.floor(t / self.delta)), 0), self.intervals - 1)
            return ((k, 1.0),)
        tau = t / self.delta
        k = min(max(int(math.floor(tau)), 0), self.intervals - 1)
        s = tau - k
        return ((k, 1.0 - s), (k + 1, s)) if s != 0.0 else ((k, 1.0),)

    def value(self, x: torch.Tensor, t: float) -> torch.Tensor:
        out = None
        for k, s in self.weights_at(t):
            out = s * x[k] if out is None else out + s * x[k]
        return out  # type: ignore[return-value]

    def prolong(self, x: torch.Tensor, intervals: int) -> torch.Tensor:
        """Knot values of the same depth function on ``intervals`` intervals (exact for a
        multiple of the current number)."""
        new = _Time(intervals, self.T, self.basis)
        return torch.stack([self.value(x, t) for t in new.knot_times()])

    def integral(self, form: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 K: int, device) -> torch.Tensor:
        """∫_0^T q(θ(t)) dt exactly for a quadratic form q given by its bilinear ``form``
        between knots (index tensors), for parameters linear in the knot values."""
        idx = torch.arange(K, device=device)
        diag = form(idx, idx)
        if self.basis == "constant":
            return self.delta * diag.sum()
        cross = form(idx[:-1], idx[1:])
        return (self.delta / 3.0) * (diag[:-1].sum() + diag[1:].sum() + cross.sum())

    def jump_sum(self, form, K: int, device) -> torch.Tensor:
        """Σ_k q(θ_{k+1} − θ_k)/Δ: ∫‖∂_tθ‖² (linear) or the penalty on jumps (constant)."""
        if K < 2:
            return torch.zeros((), device=device)
        i = torch.arange(K - 1, device=device)
        return (form(i, i) + form(i + 1, i + 1) - 2 * form(i, i + 1)).sum() / self.delta

    def gauss(self, points: int = 3) -> list[tuple[float, int, float, float]]:
        """``(weight, k, 1 − s, s)`` of a Gauss–Legendre rule on every interval (linear basis),
        exact for polynomials of degree 2·points − 1 in t."""
        x, w = np.polynomial.legendre.leggauss(points)
        out = []
        for k in range(self.intervals):
            for xi, wi in zip(x, w):
                s = 0.5 * (xi + 1.0)
                out.append((float(0.5 * wi * self.delta), k, float(1.0 - s), float(s)))
        return out


def _interval_gram(breaks: np.ndarray, f, g, weight) -> float:
    """∫ f g weight over [breaks[0], breaks[-1]] by 4-point Gauss–Legendre on each piece
    (exact for piecewise polynomials of degree ≤ 7 with these breakpoints)."""
    x, w = np.polynomial.legendre.leggauss(4)
    tot = 0.0
    for a, b in zip(breaks[:-1], breaks[1:]):
        if b <= a:
            continue
        z = 0.5 * (b - a) * x + 0.5 * (a + b)
        tot += float(np.sum(0.5 * (b - a) * w * f(z) * g(z) * weight(z)))
    return tot


def _basis_1d(z: np.ndarray, lo: float, hi: float, k: int, basis: str, deriv: bool = False
              ) -> np.ndarray:
    """Values (or derivatives) of the k basis functions of [lo, hi] at points z: ``(len(z), k)``
    (numpy; points are interior to one piece of the basis)."""
    s = (z - lo) / (hi - lo)
    if basis == "linear":
        pos = s[:, None] * (k - 1) - np.arange(k)[None, :]
        if deriv:
            return np.where(np.abs(pos) < 1, -np.sign(pos) * (k - 1) / (hi - lo), 0.0)
        return np.clip(1.0 - np.abs(pos), 0.0, None)
    idx = np.clip(np.floor(s * k).astype(int), 0, k - 1)
    out = np.zeros((len(z), k))
    out[np.arange(len(z)), idx] = 0.0 if deriv else 1.0
    return out


def _breaks(lo: float, hi: float, k: int, basis: str, extra=()) -> np.ndarray:
    n = k - 1 if basis == "linear" else k
    return np.unique(np.concatenate([np.linspace(lo, hi, n + 1), np.asarray(extra, float)]))


#: weights of the 1-D Gram integrals: a(z) = 1 − |z| (the measure of {x: x, x − z ∈ [0, 1]})
#: and 1
WEIGHTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tent": lambda z: 1.0 - np.abs(z), "one": lambda z: np.ones_like(z)}


@functools.lru_cache(maxsize=256)
def _gram_1d(lo: float, hi: float, k: int, basis: str, weight: str, d1: bool = False,
             d2: bool = False, extra: tuple[float, ...] = ()) -> np.ndarray:
    """∫ φ_p^{(d1)} φ_q^{(d2)} weight over [lo, hi] (cached: it depends on the grid only)."""
    wfn = WEIGHTS[weight]
    br = _breaks(lo, hi, k, basis, extra)
    G = np.zeros((k, k))
    for p in range(k):
        for q in range(k):
            G[p, q] = _interval_gram(
                br, lambda z, p=p: _basis_1d(z, lo, hi, k, basis, d1)[:, p],
                lambda z, q=q: _basis_1d(z, lo, hi, k, basis, d2)[:, q], wfn)
    G.flags.writeable = False
    return G


def _kron(mats: list[np.ndarray]) -> np.ndarray:
    out = mats[0]
    for m in mats[1:]:
        out = np.kron(out, m)
    return out
