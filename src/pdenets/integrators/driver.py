"""The one driver of all depth solves (MODEL.md §2): :func:`integrate_span` (either
direction, fixed or adaptive steps, per-stage hooks), :func:`integrate` (the forward problem)
and :func:`stage_times`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import PdenetsError
from .core import Solver, StageHook, Stats, System
from .rk import _emit, _rk_step_inplace, rk_step
from .solvers import AdaptiveRK, ExplicitRK


def stage_times(solver: Solver, t_start: float, t_end: float, steps: int
                ) -> list[tuple[float, float, float]]:
    """The stages ``(t, lo, hi)`` at which a fixed-step solve by :func:`integrate_span` of
    ``steps`` equal steps from ``t_start`` to ``t_end`` evaluates the right-hand side, with
    exactly the floating-point depths the driver computes (step n starts at
    t_start + n h; stage i is at t0 + c_i h). Empty for adaptive solvers and solvers whose
    stage depths are unknown (see :attr:`Solver.nodes`). Used to evaluate the controls of
    all stages at once (MODEL.md §2; :meth:`KernelSchedule.batched
    <pdenets.controls.KernelSchedule.batched>`)."""
    if solver.adaptive:
        return []
    nodes = solver.tableau.c if isinstance(solver, ExplicitRK) else solver.nodes
    if nodes is None:
        return []
    hs = (t_end - t_start) / steps
    out = []
    for n in range(steps):
        t0 = t_start + n * hs
        lo, hi = (t0, t0 + hs) if hs >= 0 else (t0 + hs, t0)
        out += [(t0 + ci * hs, lo, hi) for ci in nodes]
    return out


def integrate_span(
    system, y, t_start: float, t_end: float, solver: Solver, stats: Stats, *,
    steps: int | None = None, h: float | None = None, hook: StageHook | None = None,
    state: Any = None, inplace: bool = False,
    on_step: Callable[[int, Any], None] | None = None,
) -> tuple[Any, float, Any]:
    """Integrate dy/dt = system(t, y, lo, hi) from ``t_start`` to ``t_end`` (either direction).

    Fixed-step solvers take ``steps`` equal steps (step n starts at t_start + n h). Adaptive
    solvers start with |h| = ``h`` and let their controller choose the rest (or replay
    ``solver.replay``); FSAL tableaus reuse the last slope as the next first slope, and a
    retried step reuses its first slope.

    Parameters
    ----------
    hook : callable, optional
        Called with a :class:`Stage` for every stage of every *accepted* step, in order.
    state : optional
        The controller's state from a previous span (continued), or None (fresh).
    inplace : bool
        Fixed-step tensor states without autograd: update ``y`` in place (no hook).
    on_step : callable, optional
        ``on_step(n, y)`` after the n-th accepted step (n = 1, 2, ...; counted in ``stats``).

    Returns
    -------
    (y(t_end), the next |h| proposed, controller state)
    """
    span = t_end - t_start
    sign = 1.0 if span >= 0 else -1.0
    if not solver.adaptive:
        if steps is None:
            raise PdenetsError(f"{solver.name}: a fixed-step solver needs a number of steps")
        hs = span / steps
        tab = solver.tableau if isinstance(solver, ExplicitRK) else None
        if hook is not None and tab is None:
            raise PdenetsError(f"{solver.name}: per-stage hooks need an explicit Runge-Kutta "
                               f"solver")
        k1 = None
        for n in range(steps):
            t0 = t_start + n * hs
            if tab is None:
                y = solver.step(system, t0, hs, y, stats, inplace)
            elif inplace and not tab.fsal:
                y = _rk_step_inplace(tab, system, t0, hs, y, stats)
            else:
                y, ys, ks = rk_step(tab, system, t0, hs, y, stats, k1)
                k1 = ks[-1] if tab.fsal else None
                if hook is not None:
                    _emit(hook, tab, t0, hs, ys, ks)
            stats.steps += 1
            if on_step is not None:
                on_step(stats.steps, y)
        return y, abs(hs), None
    assert isinstance(solver, AdaptiveRK)
    tab = solver.tableau
    tol_t = 1e-14 * max(1.0, abs(t_start), abs(t_end))
    t, k1 = t_start, None
    if solver.replay is not None:
        while sign * (t_end - t) > tol_t:
            if stats.steps >= len(solver.replay):
                raise PdenetsError(f"{solver.name} replay: the recorded step sequence is too "
                                   f"short")
            hs = sign * solver.replay[stats.steps]
            y1, ys, ks = rk_step(tab, system, t, hs, y, stats, k1)
            if hook is not None:
                _emit(hook, tab, t, hs, ys, ks)
            t, y = t + hs, y1
            k1 = ks[-1] if tab.fsal else None
            stats.steps += 1
            stats.step_sizes.append(abs(hs))
            if on_step is not None:
                on_step(stats.steps, y)
        return y, abs(h or 0.0), state
    if h is None or not h > 0:
        raise PdenetsError(f"{solver.name}: an adaptive span needs a first step h > 0")
    ctrl = solver.controller
    cstate = ctrl.init() if state is None else state
    habs = float(h)
    attempts = 0
    while sign * (t_end - t) > tol_t:
        habs = min(habs, abs(t_end - t))
        attempts += 1
        if attempts > solver.max_steps:
            raise PdenetsError(
                f"{solver.name}: more than max_steps={solver.max_steps} attempted steps "
                f"(stuck at t = {t:.6g}); loosen rtol/atol or raise max_steps"
            )
        hs = sign * habs
        y1, ys, ks = rk_step(tab, system, t, hs, y, stats, k1)
        err = solver.error_norm(hs, ks, y, y1)
        accept, habs_next, cstate = ctrl.adapt(habs, err, solver.error_order, cstate)
        if accept:
            if hook is not None:
                _emit(hook, tab, t, hs, ys, ks)
            t, y = t + hs, y1
            k1 = ks[-1] if tab.fsal else None
            stats.steps += 1
            stats.step_sizes.append(habs)
            if on_step is not None:
                on_step(stats.steps, y)
        else:
            stats.rejected += 1
            k1 = ks[0]  # same t and y: the first slope stays valid
        habs = habs_next
        if habs < tol_t:
            raise PdenetsError(f"{solver.name}: step size underflow at t = {t:.6g}")
    return y, habs, cstate


def integrate(
    system: System,
    u0: torch.Tensor,
    T: float,
    steps: int,
    solver: Solver,
    save_times: list[float] | None = None,
    breakpoints: tuple[float, ...] = (),
    *,
    hook: StageHook | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], Stats]:
    """Integrate ``system`` from 0 to T (the forward problem; see :func:`integrate_span`).

    Fixed-step solvers take ``steps`` equal steps and save at ``save_times`` (which must lie
    on the step grid). Adaptive solvers ignore ``steps`` and stop exactly at every save time
    and control breakpoint (a fresh first slope after each stop). ``hook`` is called for
    every stage of every accepted step (:class:`Stage`).

    Returns
    -------
    (u(T), [u(t) for t in save_times], stats)
    """
    stats = Stats()
    save_times = list(save_times or [])
    saved: list[torch.Tensor] = []
    if not solver.adaptive:
        h = T / steps
        solver.check_stable(system, h)
        idx: dict[int, list[int]] = {}
        for t in save_times:
            k = round(t / h)
            if abs(k * h - t) > 1e-9 * max(T, 1.0) or k < 0 or k > steps:
                raise PdenetsError(
                    f"save time t = {t:.6g} is not on the depth grid of {steps} steps of "
                    f"h = {h:.6g} (use times k·T/steps)"
                )
            idx.setdefault(k, []).append(len(saved))
            saved.append(None)  # type: ignore[arg-type]
        # without autograd the solver may update the state in place (one private copy of u0)
        inplace = not torch.is_grad_enabled() and hook is None
        u = u0.clone() if inplace else u0
        for j in idx.get(0, []):
            saved[j] = u0

        def keep(n: int, y: torch.Tensor) -> None:
            for j in idx.get(n, []):
                saved[j] = y.clone() if inplace else y

        u, _, _ = integrate_span(system, u, 0.0, T, solver, stats, steps=steps, hook=hook,
                                 inplace=inplace, on_step=keep if idx else None)
        return u, saved, stats
    assert isinstance(solver, AdaptiveRK)
    for t in save_times:
        if not (0.0 <= t <= T):
            raise PdenetsError(f"save time t = {t:.6g} lies outside [0, T = {T}]")
    stops = sorted(set([T, *save_times, *[b for b in breakpoints if 0 < b < T]]))
    u = u0
    t = 0.0
    h0: float | None = None
    if solver.replay is None:
        h0 = solver.initial_step(system, 0.0, u0, T)
        if solver.first_step is None:
            stats.nfev += 1
    state = None
    values = {0.0: u0}
    for s in stops:
        if s > t:
            u, h0, state = integrate_span(system, u, t, s, solver, stats, h=h0, hook=hook,
                                          state=state)
            t = s
        values[s] = u
    saved = [values[t] if t in values else u0 for t in save_times]
    return u, saved, stats
