"""The arithmetic core of explicit Runge–Kutta steps (MODEL.md §2): one step of a tableau,
its in-place variant without autograd, and the per-stage hook emission."""

from __future__ import annotations

import torch

from .core import Stage, StageHook, Stats
from .tableau import ButcherTableau


def _axpy(y, alpha: float, k):
    """y + alpha·k for a tensor or a tuple state (extra slope components are ignored)."""
    if isinstance(y, tuple):
        return tuple(torch.add(yi, ki, alpha=alpha) for yi, ki in zip(y, k))
    return torch.add(y, k, alpha=alpha)


def rk_step(tableau: ButcherTableau, system, t0: float, h: float, y, stats: Stats, k1=None):
    """One explicit Runge–Kutta step of (signed) size h from t0 — the arithmetic core.

    ``k1``, if given, is the first slope f(t0, y) (FSAL reuse, or a retried step). Returns
    ``(y_new, stage states, slopes)``; for an FSAL tableau y_new is the last stage state.
    """
    lo, hi = (t0, t0 + h) if h >= 0 else (t0 + h, t0)
    ys: list = []
    ks: list = []
    for i, ci in enumerate(tableau.c):
        yi = y
        for j, aij in enumerate(tableau.a[i]):
            if aij != 0.0:
                yi = _axpy(yi, h * aij, ks[j])
        ys.append(yi)
        if i == 0 and k1 is not None:
            ks.append(k1)
        else:
            ks.append(system(t0 + ci * h, yi, lo, hi))
            stats.nfev += 1
    if tableau.fsal:
        return ys[-1], ys, ks
    out = y
    for bi, k in zip(tableau.b, ks):
        if bi != 0.0:
            out = _axpy(out, h * bi, k)
    return out, ys, ks


def _rk_step_inplace(tableau: ButcherTableau, system, t0, h, u, stats):
    """As :func:`rk_step` for a tensor state without autograd, updating ``u`` in place."""
    t1 = t0 + h
    ks: list[torch.Tensor] = []
    for i, ci in enumerate(tableau.c):
        y = u
        for j, aij in enumerate(tableau.a[i]):
            if aij != 0.0:
                y = torch.add(u, ks[j], alpha=h * aij) if y is u else y.add_(ks[j],
                                                                             alpha=h * aij)
        ks.append(system(t0 + ci * h, y, t0, t1))
    stats.nfev += len(ks)
    for bi, k in zip(tableau.b, ks):
        if bi != 0.0:
            u.add_(k, alpha=h * bi)
    return u


def _emit(hook: StageHook, tableau: ButcherTableau, t0: float, h: float, ys, ks) -> None:
    lo, hi = (t0, t0 + h) if h >= 0 else (t0 + h, t0)
    for i, (ci, bi, y, k) in enumerate(zip(tableau.c, tableau.b, ys, ks)):
        hook(Stage(t0 + ci * h, lo, hi, i, h * bi, y, k))
