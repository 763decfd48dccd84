"""Kernel schedules: controls discretized on a width grid (MODEL.md §2).

A :class:`KernelSchedule` is what :meth:`Controls.discretize <pdenets.controls.Controls.discretize>`
returns for one width grid: for a depth t inside a step [t0, t1] the matrix
``A(t)[i, j] = w(x_i, x_j, t) ω_j`` (or a structured operator, MODEL.md §10) and the vector
``b(x_i, t)``. Knot-based schedules interpolate knot tensors in depth; the stage table evaluates
all the stages of a fixed-step solve in one batch (the hot path of MODEL.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .quadrature import Grid

WFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
BFn = Callable[[torch.Tensor, float], torch.Tensor]


class KernelSchedule:
    """Controls evaluated on a width grid, as a function of depth (see module docstring)."""

    #: quadrature weights ω of the width grid (set by the subclasses)
    _weights: torch.Tensor

    #: depths at which the controls may jump (step boundaries should include them)
    breakpoints: tuple[float, ...] = ()

    def at(self, t: float, t0: float, t1: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(A(t), b(t))`` for a stage at depth t of the step [t0, t1]."""
        raise NotImplementedError

    def norms(self, t: float, t0: float, t1: float) -> float:
        """Operator norm (spectral norm) of the discretized integral operator at depth t, as a
        map of L²_ω (the grid's weighted L²) to itself (used by the Gronwall bound, §3)."""
        A, _ = self.at(t, t0, t1)
        w = self._weights
        s = torch.sqrt(w)
        # L²_ω operator norm of A equals the spectral norm of diag(√ω) A diag(1/√ω)
        return float(torch.linalg.matrix_norm(s[:, None] * A / s[None, :], ord=2))

    def batched(self, stages: Sequence[tuple[float, float, float]],
                chunk: int | None = None) -> KernelSchedule:
        """The schedule with the controls of all ``stages`` ``(t, t0, t1)`` evaluated at once.

        The stage depths of a fixed-step solve are known before it starts (MODEL.md §2), so a
        knot-based schedule (one with ``index`` and ``knot_tensors``: :class:`GridControls`,
        :class:`~pdenets.kernels.KernelControls`) interpolates every distinct stage depth in one
        batched operation per knot tensor — stages that share a depth share the value — and
        :meth:`at` then only looks the value up (:class:`_StageTable`; identical values, one
        node in the autograd graph instead of one per stage). Other schedules return
        themselves. ``chunk`` bounds the depths evaluated at once (see :class:`_StageTable`)."""
        if not (callable(getattr(self, "index", None))
                and callable(getattr(self, "knot_tensors", None))):
            return self
        return _StageTable(self, stages, chunk)


#: the (U × K) interpolation matrices of the stage tables, by (stage keys, device, dtype,
#: knots): the same fixed-step discretization asks for the same one at every forward (no
#: host-to-device copy then)
_TABLE_INDEX: dict = {}


def _canonical(index: Callable, t: float, t0: float, t1: float) -> tuple[int, float]:
    k, s = index(t, t0, t1)
    return (k + 1, 0.0) if s == 1.0 else (k, s)


class _StageTable(KernelSchedule):
    """A knot-based schedule evaluated at a known list of stage depths in one batch.

    For knot tensors X (``(K, ...)``) and the distinct stage keys (k_u, s_u) it computes
    ``(1 − s_u) X[k_u] + s_u X[k_u + 1]`` for all u at once, as one product of a (U × K)
    interpolation matrix with X — what the per-stage :meth:`at` computes one at a time, to
    rounding (``X[k]`` exactly where s = 0) — and splits the result into per-stage views with
    one ``unbind``. Depths not in the table fall back to the
    underlying schedule. With ``chunk`` the distinct depths are evaluated ``chunk`` at a time,
    when first asked for, keeping only the current chunk (memory independent of the number of
    stages: the continuous adjoint's sweeps, which visit the stages in order)."""

    def __init__(self, base: KernelSchedule, stages: Sequence[tuple[float, float, float]],
                 chunk: int | None = None):
        self.base = base
        self.breakpoints = base.breakpoints
        index = base.index  # type: ignore[attr-defined]
        keys: dict[tuple[int, float], int] = {}
        for t, t0, t1 in stages:
            keys.setdefault(_canonical(index, t, t0, t1), len(keys))
        self.keys = keys
        self.chunk = max(1, len(keys)) if chunk is None else int(chunk)
        self._order = list(keys)
        self._current = -1
        self.values: list = []
        if chunk is None:
            self._load(0)

    def _load(self, c: int) -> None:
        """Evaluate the c-th chunk of distinct depths (all of them without ``chunk``)."""
        keys = self._order[c * self.chunk:(c + 1) * self.chunk]
        self._current = c
        self.values = []
        if not keys:
            return
        base = self.base
        knots = base.knot_tensors()  # type: ignore[attr-defined]
        ref = knots[-1]
        ck = (tuple(keys), ref.device, ref.dtype, knots[0].shape[0])
        cached = _TABLE_INDEX.get(ck)
        if cached is None:
            # row u of the (U × K) interpolation matrix: weight 1 − s_u at knot k_u, s_u at
            # k_u + 1 — one matrix product evaluates every stage (its backward is one too:
            # gathering rows with X[i] and lerp costs 3–5× as much, mostly in the backward)
            K = knots[0].shape[0]
            rows = torch.zeros(len(keys), K, dtype=torch.float64)
            for u, (k, sv) in enumerate(keys):
                rows[u, k] += 1.0 - sv
                if sv != 0.0:
                    rows[u, min(k + 1, K - 1)] += sv
            rows = rows.to(ref.dtype)
            if ref.device.type == "cuda":  # pinned host memory: an asynchronous copy
                rows = rows.pin_memory()
            cached = rows.to(ref.device, non_blocking=True)
            if len(_TABLE_INDEX) > 256:
                _TABLE_INDEX.clear()
            _TABLE_INDEX[ck] = cached
        cols = []
        for X in knots:
            Wt = cached if X.dtype == cached.dtype else cached.to(X.dtype)
            vals = (Wt @ X.reshape(X.shape[0], -1)).reshape(len(keys), *X.shape[1:])
            cols.append(vals.unbind(0))
        build = getattr(base, "build", None)
        for u in range(len(keys)):
            vals = [col[u] for col in cols]
            self.values.append((build(vals[:-1]), vals[-1]) if build is not None
                               else (vals[0], vals[1]))

    def __getattr__(self, name: str):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def at(self, t, t0, t1):
        index = self.base.index
        u = self.keys.get(_canonical(index, t, t0, t1))
        if u is None:
            return self.base.at(t, t0, t1)
        c, pos = divmod(u, self.chunk)
        if c != self._current:
            self._load(c)
        return self.values[pos]

    def norms(self, t, t0, t1):
        return self.base.norms(t, t0, t1)

    def batched(self, stages, chunk=None):
        return self.base.batched(stages, chunk)


class _KnotSchedule(KernelSchedule):
    """Piecewise-constant or piecewise-linear interpolation between knot matrices."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor, T: float, basis: str, weights):
        self.A, self.b, self.T, self.basis = A, b, T, basis
        self.intervals = A.shape[0] if basis == "constant" else A.shape[0] - 1
        self.delta = T / self.intervals
        self._weights = weights
        self.breakpoints = tuple(k * self.delta for k in range(1, self.intervals))
        self._last: tuple | None = None

    def index(self, t: float, t0: float, t1: float) -> tuple[int, float]:
        """Knot index k and weight s with value ``(1 − s) V_k + s V_{k+1}`` at depth t."""
        if self.basis == "constant":
            k = int(math.floor(0.5 * (t0 + t1) / self.delta))
            return min(max(k, 0), self.intervals - 1), 0.0
        tau = t / self.delta
        k = min(max(int(math.floor(tau)), 0), self.intervals - 1)
        return k, tau - k

    def knot_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors the schedule is built from: the knot matrices and bias vectors."""
        return (self.A, self.b)

    def with_knot_tensors(self, A: torch.Tensor, b: torch.Tensor) -> _KnotSchedule:
        """The same schedule built from other knot tensors (checkpointing, adjoints)."""
        out = _KnotSchedule(A, b, self.T, self.basis, self._weights)
        if hasattr(self, "channels"):
            out.channels = self.channels  # type: ignore[attr-defined]
        return out

    def at(self, t, t0, t1):
        k, s = self.index(t, t0, t1)
        if s == 0.0:
            return self.A[k], self.b[k]
        if s == 1.0:
            return self.A[k + 1], self.b[k + 1]
        # consecutive stages often share a depth (RK4's two midpoints, a step's end and the
        # next step's start): reuse the last interpolated matrix (cost O(N²) otherwise)
        key = (k, s, torch.is_grad_enabled())
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        A = torch.lerp(self.A[k], self.A[k + 1], s)
        b = torch.lerp(self.b[k], self.b[k + 1], s)
        self._last = (key, A, b)
        return A, b


class _FunctionSchedule(KernelSchedule):
    def __init__(self, w_fn: WFn, b_fn: BFn, grid: Grid, time_dependent: bool):
        self.w_fn, self.b_fn, self.grid = w_fn, b_fn, grid
        self.time_dependent = time_dependent
        self._weights = grid.weights
        self._cache: tuple[float, torch.Tensor, torch.Tensor] | None = None

    def at(self, t, t0, t1):
        key = float(t) if self.time_dependent else 0.0
        if self._cache is None or self._cache[0] != key:
            x = self.grid.nodes
            W = self.w_fn(x[:, None, :], x[None, :, :], key)
            W = torch.as_tensor(W, dtype=x.dtype, device=x.device) * torch.ones(
                x.shape[0], x.shape[0], dtype=x.dtype, device=x.device
            )
            b = torch.as_tensor(self.b_fn(x, key), dtype=x.dtype, device=x.device)
            b = b * torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            self._cache = (key, W * self.grid.weights[None, :], b)
        return self._cache[1], self._cache[2]
