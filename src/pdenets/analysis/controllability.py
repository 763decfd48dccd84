"""Numerical controllability of the forward problem (MODEL.md §9).

Given inputs ξ_k and targets y_k, the network is (approximately) controllable on the data if
some controls θ steer every u_k(0) = E ξ_k to within δ of its target at depth T (through the
readout R). This module measures it as MODEL.md §9 prescribes: minimize

    J_α(θ) = (1/K) Σ_k ½ ‖R u_k(T) − y_k‖² + (α/2) ∫_0^T (‖w‖² + ‖b‖²) dt

(:class:`~pdenets.objective.Objective` with ``loss="mse"``) by L-BFGS with a strong-Wolfe line
search, and record the terminal misfit

    misfit_max = max_k ‖R u_k(T) − y_k‖,      misfit_rms = ((1/K) Σ_k ‖R u_k(T) − y_k‖²)^{1/2}

together with the control budget ‖θ‖ = (∫_0^T ‖w‖² + ‖b‖² dt)^{1/2}, against α → 0 (each fit
from the same initial controls), against the depth T and against the number of samples K.
With a :class:`~pdenets.readout.CellAverageReadout` on the lifting's cells the misfit is the
distance of the terminal field's cell averages to the targets.

Controllable data show misfit → 0 as α → 0 (roughly linearly in α for a reachable target);
an obstruction (e.g. an invariant of the dynamics such as positivity under the selection
variant) shows a misfit that levels off at a positive value.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .._checks import check_nonnegative, check_positive
from ..controls import GridControls
from ..errors import PdenetsError
from ..objective import Objective, control_norms
from ._params import frozen_parameters
from .hessian import select_parameters


@dataclass
class FitResult:
    """Outcome of one L-BFGS fit (one row of a controllability table)."""

    alpha: float
    T: float
    samples: int
    J: float
    misfit_max: float
    misfit_rms: float
    control_norm: float
    iterations: int
    evaluations: int

    def as_dict(self) -> dict:
        return asdict(self)


def terminal_misfit(net, inputs, targets, disc=None) -> tuple[float, float]:
    """``(max_k ‖R u_k(T) − y_k‖, rms_k ‖R u_k(T) − y_k‖)`` (Euclidean norm over outputs)."""
    with torch.no_grad():
        out = net(torch.as_tensor(inputs), disc)
        y = torch.as_tensor(targets, dtype=out.dtype, device=out.device)
        if y.dim() == 1 and out.shape[1] == 1:
            y = y[:, None]
        if y.shape != out.shape:
            raise PdenetsError(
                f"targets have shape {tuple(y.shape)}; the network outputs {tuple(out.shape)}"
            )
        d = torch.linalg.vector_norm(out - y, dim=1)
    return float(d.max()), float(torch.sqrt(torch.mean(d * d)))


def control_budget(net) -> float:
    """‖θ‖ = (∫_0^T ‖w‖² + ‖b‖² dt)^{1/2} (exact for grid controls; NaN otherwise)."""
    if not isinstance(net.controls, GridControls):
        return math.nan
    with torch.no_grad():
        return math.sqrt(max(float(control_norms(net.controls)[0]), 0.0))


def fit(
    net, inputs, targets, alpha: float, *, disc=None, params: Sequence[str] | str = ("controls",),
    max_iter: int = 200, tolerance_grad: float = 1e-12, tolerance_change: float = 1e-14,
    history_size: int = 50, beta: float = 0.0, objective: Objective | None = None,
) -> FitResult:
    """Minimize J_α over the selected parameters of ``net`` in place (L-BFGS, strong Wolfe).

    Parameters
    ----------
    net : ContinuumNetwork
        Modified in place (the selected parameters end at the computed minimizer).
    inputs, targets : array-like
        ξ_k (shape ``(K, …)``) and y_k (shape ``(K, m)``).
    alpha : float
        Tikhonov weight α ≥ 0.
    disc : Discretization, optional
    params : sequence of str or str
        Parameters to optimize (see :func:`~pdenets.analysis.hessian.select_parameters`).
    max_iter : int
        L-BFGS iterations.
    beta : float
        Optional H¹-in-depth weight β (MODEL.md §4).
    objective : Objective, optional
        Minimize this objective instead of ``Objective("mse", alpha, beta)`` (e.g. to polish a
        classification model before a Hessian analysis); the misfit is still reported.

    Returns
    -------
    FitResult
    """
    check_nonnegative(alpha, "alpha")
    check_positive(max_iter, "max_iter", integer=True)
    obj = objective or Objective("mse", float(alpha), float(beta))
    names = select_parameters(net, params)
    pdict = dict(net.named_parameters())
    ps = [pdict[n] for n in names]
    others = [p for n, p in pdict.items() if n not in names]
    dtype = ps[0].dtype
    x = torch.as_tensor(inputs)
    if x.is_floating_point():
        x = x.to(dtype)
    y = torch.as_tensor(targets)
    if obj.loss == "mse":
        y = y.to(dtype)
        if y.dim() == 1:
            y = y[:, None]
    try:
        with frozen_parameters(others):
            opt = torch.optim.LBFGS(ps, lr=1.0, max_iter=max_iter,
                                    max_eval=int(max_iter * 1.25) + 1,
                                    tolerance_grad=tolerance_grad,
                                    tolerance_change=tolerance_change,
                                    history_size=history_size, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                J = obj(net, x, y, disc)
                J.backward()
                return J

            with torch.enable_grad():
                opt.step(closure)
            state = opt.state[opt._params[0]]
            n_iter, n_eval = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    finally:
        for p in ps:
            p.grad = None
    with torch.no_grad():
        J = float(obj(net, x, y, disc))
    if not math.isfinite(J):
        raise PdenetsError(f"the fit diverged (J = {J}) at alpha = {alpha}")
    mmax, mrms = terminal_misfit(net, x, y, disc) if obj.loss == "mse" else (math.nan, math.nan)
    return FitResult(float(alpha), float(net.T), int(x.shape[0]), J, mmax, mrms,
                     control_budget(net), n_iter, n_eval)


def misfit_vs_alpha(
    net, inputs, targets, alphas: Sequence[float], *, disc=None, max_iter: int = 200,
    params: Sequence[str] | str = ("controls",), continuation: bool = False,
) -> list[FitResult]:
    """Fit for each α (sorted from large to small) from ``net``'s controls (a copy), or, with
    ``continuation``, warm-started at the previous minimizer (often *slower* for small α:
    L-BFGS restarts with an empty history at a point where the new gradient is tiny)."""
    alphas = sorted((float(a) for a in alphas), reverse=True)
    if not alphas:
        raise PdenetsError("give at least one alpha")
    base = copy.deepcopy(net)
    work = base
    rows = []
    for a in alphas:
        if not continuation:
            work = copy.deepcopy(base)
        rows.append(fit(work, inputs, targets, a, disc=disc, max_iter=max_iter, params=params))
    return rows


def with_horizon(net, T: float):
    """A copy of ``net`` whose grid controls have the same knot values on [0, T']."""
    check_positive(T, "T")
    c = net.controls
    if not isinstance(c, GridControls):
        raise PdenetsError("changing the depth T needs GridControls")
    new = copy.deepcopy(net)
    new.controls = c.like(T=float(T), w=c.w.detach(), b=c.b.detach())
    d = net.discretization
    steps = max(1, math.ceil(d.steps * float(T) / c.T - 1e-9))
    new.discretization = type(d)(d.width, d.solver, steps)
    return new


def misfit_vs_horizon(
    net, inputs, targets, horizons: Sequence[float], alpha: float, *, max_iter: int = 200,
    params: Sequence[str] | str = ("controls",),
) -> list[FitResult]:
    """Fit at each depth T' (controls start from ``net``'s knot values; the number of depth
    steps scales with T' so that the step size stays that of ``net.discretization``)."""
    rows = []
    for T in horizons:
        work = with_horizon(net, float(T))
        rows.append(fit(work, inputs, targets, alpha, max_iter=max_iter, params=params))
    return rows


def misfit_vs_samples(
    net, inputs, targets, counts: Sequence[int], alpha: float, *, disc=None,
    max_iter: int = 200, params: Sequence[str] | str = ("controls",),
) -> list[FitResult]:
    """Fit on the first K samples for each K in ``counts`` (fresh copy of ``net`` each time)."""
    n = len(inputs)
    rows = []
    for K in counts:
        K = int(K)
        if not 1 <= K <= n:
            raise PdenetsError(f"sample count {K} outside [1, {n}]")
        work = copy.deepcopy(net)
        rows.append(fit(work, inputs[:K], targets[:K], alpha, disc=disc, max_iter=max_iter,
                        params=params))
    return rows


@dataclass
class ControllabilityReport:
    """Tables of :class:`FitResult` rows and the verdict of :func:`controllability_study`."""

    alpha: list[FitResult]
    horizon: list[FitResult]
    samples: list[FitResult]
    delta: float
    controllable: bool
    misfit_at_smallest_alpha: float
    trend: float | None

    def as_dict(self) -> dict:
        return {
            "alpha": [r.as_dict() for r in self.alpha],
            "horizon": [r.as_dict() for r in self.horizon],
            "samples": [r.as_dict() for r in self.samples],
            "delta": self.delta, "controllable": self.controllable,
            "misfit_at_smallest_alpha": self.misfit_at_smallest_alpha, "trend": self.trend,
        }


def controllability_study(
    net, inputs, targets, *, alphas: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6),
    horizons: Sequence[float] = (), counts: Sequence[int] = (), sweep_alpha: float | None = None,
    delta: float = 1e-2, disc=None, max_iter: int = 200,
    params: Sequence[str] | str = ("controls",),
) -> ControllabilityReport:
    """Misfit against α, T and K (MODEL.md §9) and an approximate-controllability verdict.

    ``controllable`` is True when the largest terminal misfit at the smallest α is ≤ ``delta``.
    ``trend`` is the log–log slope of misfit_max against α over the two smallest α (≈ 1 when
    the misfit vanishes linearly with α, ≈ 0 when it levels off). The T and K sweeps use
    ``sweep_alpha`` (default: the smallest α).
    """
    rows_a = misfit_vs_alpha(net, inputs, targets, alphas, disc=disc, max_iter=max_iter,
                             params=params)
    a_sweep = min(float(a) for a in alphas) if sweep_alpha is None else float(sweep_alpha)
    rows_t = misfit_vs_horizon(net, inputs, targets, horizons, a_sweep, max_iter=max_iter,
                               params=params) if horizons else []
    rows_k = misfit_vs_samples(net, inputs, targets, counts, a_sweep, disc=disc,
                               max_iter=max_iter, params=params) if counts else []
    last = rows_a[-1].misfit_max
    trend = None
    if len(rows_a) >= 2 and rows_a[-1].alpha > 0 and rows_a[-2].misfit_max > 0 and last > 0:
        trend = math.log(rows_a[-2].misfit_max / last) / math.log(
            rows_a[-2].alpha / rows_a[-1].alpha)
    return ControllabilityReport(rows_a, rows_t, rows_k, float(delta), bool(last <= delta),
                                 last, trend)


def format_table(rows: Sequence[FitResult], key: str) -> str:
    """A plain-text table of fit rows, first column ``key`` (alpha, T or samples)."""
    head = f"{key:>10} {'misfit_max':>12} {'misfit_rms':>12} {'‖θ‖':>10} {'J':>12} {'iters':>6}"
    lines = [head]
    for r in rows:
        v = getattr(r, key)
        lines.append(f"{v:>10.3g} {r.misfit_max:>12.4e} {r.misfit_rms:>12.4e} "
                     f"{r.control_norm:>10.4g} {r.J:>12.4e} {r.iterations:>6d}")
    return "\n".join(lines)


def plot_controllability(report: ControllabilityReport, path) -> None:
    """Misfit against α (log–log), T and K."""
    from ..plotting import plt, save_figure

    panels = [("alpha", report.alpha, "α"), ("T", report.horizon, "depth T"),
              ("samples", report.samples, "samples K")]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for j, (ax, (key, rows, label)) in enumerate(zip(axes[0], panels)):
        xs = [getattr(r, key) for r in rows]
        ax.plot(xs, [max(r.misfit_max, 1e-300) for r in rows], "o-", label="max_k misfit")
        ax.plot(xs, [max(r.misfit_rms, 1e-300) for r in rows], "s--", label="rms misfit")
        ax.set_yscale("log")
        if key == "alpha":
            ax.set_xscale("log")
            ax.axhline(report.delta, color="k", lw=0.8, ls=":", label="δ")
        ax.set_xlabel(label)
        if j == 0:
            ax.set_ylabel("terminal misfit ‖R u(T) − y‖")
        ax.legend(fontsize=8)
    fig.suptitle("controllability (MODEL.md §9): "
                 + ("misfit → 0" if report.controllable else "misfit does not vanish"),
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
