"""The sampled HJB method (MODEL.md §8, "High state dimension"): value and feedback without a
grid, from optimal trajectories.

1. **Two-point boundary problems** (:func:`solve_tpbvp`): from sampled starts v_s at depth 0,
   the optimality system of §7 (state forward, costate backward, Hamiltonian extremal) is solved
   as the direct method does, batched over the starts: controls piecewise constant on M depth
   intervals, the forward problem by RK4 (``steps`` per interval) and L-BFGS on
   Σ_s [Σ_m Δ L(θ_sm) + Φ(u_s(T))] with gradients by autograd (the discrete adjoint). Along each
   optimal trajectory the tail cost gives V(t_m, u_s(t_m)) and its derivative with respect to
   the state (the costate −λ, by autograd with the controls fixed) gives D_vV(t_m, u_s(t_m)) —
   at every interval start t_m and at T (where V = Φ).
2. **Fit** (:mod:`pdenets.hjb.value_model`): a quadratic part plus a small network, fitted to
   values and gradients.
3. **Adaptive sampling**: a fixed validation set of trajectories measures the relative RMS
   value error of the fit; while it exceeds ``tol``, new starts are added where the fitted
   model violates the HJB equation most (|∂_t V + H(v, ∇V)| at depth 0 over a pool of random
   candidates, cheap: no boundary problem is solved for the candidates).
4. **Feedback**: θ*(t, v) minimizes the Hamiltonian at p = ∇_v V(t, v) of the model
   (:meth:`SampledSolution.feedback`, the package's Hamiltonian minimization), so
   :func:`pdenets.hjb.closed_loop` runs the closed loop unchanged.

:func:`run_sampled` is the library side of ``pdenets hjb --set method=sampled``: it solves,
evaluates V(0, v0), runs the closed loops (and optionally the direct method) and returns the
JSON report fields of the grid path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .._checks import check_positive
from ..errors import PdenetsError
from ._tensors import _DTYPE, _states
from .problem import ReducedProblem
from .tpbvp import Trajectories, solve_tpbvp
from .value_model import ValueModel, fit_value_model


@dataclass(frozen=True)
class SampledOptions:
    """Options of :func:`solve_sampled`.

    Attributes
    ----------
    lo, hi : float or sequence of float
        Box from which starts are drawn uniformly (per state entry).
    starts : int
        Initial training starts.
    validation : int
        Validation starts (fixed; their trajectories are never trained on).
    batch : int
        Starts added per refinement round.
    rounds : int
        Most refinement rounds.
    tol : float
        Stop when the relative RMS value error on the validation trajectories is ≤ tol.
    intervals, steps : int
        Control intervals M and RK4 steps per interval of the boundary problems.
    tpbvp_iter : int
        L-BFGS iterations of the boundary problems.
    degree, hidden, layers : int
        Value model: Legendre degree in depth, network width (0: quadratic part only), layers.
    fit_iter : int
        L-BFGS iterations per fit stage.
    candidates : int
        Random candidates per new start screened by the HJB residual.
    seed : int
    device : str
    threads : int or None
        Intra-op threads on the CPU during the solve (None: one — the kernels are small, see
        :mod:`pdenets.hjb.solve`); torch's setting is restored afterwards.
    inner_points, newton_iters : int
        Hamiltonian minimization (feedback and HJB residual).

    The Legendre degree in depth is capped at ``intervals − 1`` (the data lie on the
    ``intervals + 1`` depths t_m).
    """

    lo: float | Sequence[float] = -1.0
    hi: float | Sequence[float] = 1.0
    starts: int = 32
    validation: int = 16
    batch: int = 16
    rounds: int = 4
    tol: float = 1e-2
    intervals: int = 16
    steps: int = 2
    tpbvp_iter: int = 200
    degree: int = 6
    hidden: int = 32
    layers: int = 2
    fit_iter: int = 200
    candidates: int = 8
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    inner_points: int = 7
    newton_iters: int = 8

    def __post_init__(self) -> None:
        for name in ("starts", "validation", "batch", "intervals", "steps", "tpbvp_iter",
                     "fit_iter", "candidates", "inner_points", "layers"):
            check_positive(getattr(self, name), name, integer=True)
        for name in ("rounds", "degree", "hidden", "newton_iters", "seed"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise PdenetsError(f"{name} must be an integer >= 0, got {val!r}")
        check_positive(self.tol, "tol")
        if self.threads is not None:
            check_positive(self.threads, "threads", integer=True)
        dev = str(self.device)
        if not (dev == "cpu" or dev.startswith("cuda")):
            raise PdenetsError(f"device must be 'cpu' or 'cuda[:k]', got {self.device!r}")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise PdenetsError(f"device {dev!r} requested but CUDA is not available")


@dataclass
class SampledSolution:
    """A learned value function with the feedback it defines (:func:`solve_sampled`).

    Attributes
    ----------
    problem : ReducedProblem
    model : ValueModel
    options : SampledOptions
    stats : dict
        ``trajectories`` (training), ``data_points``, ``rounds``, ``validation_error``
        (relative RMS value error on the validation trajectories), ``validation_gradient_error``,
        ``seconds``, ``history`` (one dict per round).
    """

    problem: ReducedProblem
    model: ValueModel
    options: SampledOptions
    stats: dict = field(default_factory=dict)

    def _tv(self, t: float, v) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.problem.T
        if not (-1e-12 * T <= t <= T * (1 + 1e-12)):
            raise PdenetsError(f"depth t = {t} lies outside [0, T = {T}]")
        v = _states(v, self.problem.D)
        return torch.full((v.shape[0],), float(t), dtype=_DTYPE), v

    def value(self, t: float, v) -> torch.Tensor:
        """V(t, v) at states ``v`` (``(M, D)`` or ``(D,)``)."""
        tt, v = self._tv(t, v)
        with torch.no_grad():
            return self.model(tt, v)

    def gradient(self, t: float, v) -> torch.Tensor:
        """D_vV(t, v), shape ``(M, D)`` (autograd through the model)."""
        tt, v = self._tv(t, v)
        return self.model.value_and_gradient(tt, v)[1]

    def feedback(self, t: float, v) -> tuple[torch.Tensor, torch.Tensor]:
        """θ*(t, v) = (w*, b*): the Hamiltonian minimizer at p = D_vV(t, v)."""
        v = _states(v, self.problem.D)
        row = self.problem.minimize(v, self.gradient(t, v), self.options.inner_points,
                                    self.options.newton_iters)
        return self.problem.controls_from(v, row.c)

    def hjb_residual(self, t: float, v) -> torch.Tensor:
        """|∂_t V + H(v, D_vV)| of the model at ``(t, v)`` (∂_t by a central difference)."""
        tt, v = self._tv(t, v)
        T = self.problem.T
        dt = 1e-4 * T
        ta, tb = max(float(t) - dt, 0.0), min(float(t) + dt, T)
        with torch.no_grad():
            dV = (self.model(torch.full_like(tt, tb), v) - self.model(torch.full_like(tt, ta), v))
        row = self.problem.minimize(v, self.gradient(t, v), self.options.inner_points,
                                    self.options.newton_iters)
        return (dV / (tb - ta) + row.H).abs()


def _uniform(gen: torch.Generator, n: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, lo.shape[0], generator=gen, dtype=_DTYPE)


def _data(tr: Trajectories) -> tuple[torch.Tensor, ...]:
    return tr.t.reshape(-1), tr.v.reshape(-1, tr.v.shape[-1]), tr.V.reshape(-1), \
        tr.G.reshape(-1, tr.G.shape[-1])


def _cat(a: Trajectories, b: Trajectories) -> Trajectories:
    return Trajectories(*(torch.cat([x, y], 0) for x, y in zip(
        (a.starts, a.t, a.v, a.V, a.G, a.cost), (b.starts, b.t, b.v, b.V, b.G, b.cost))))


def _errors(model: ValueModel, tr: Trajectories) -> tuple[float, float, torch.Tensor]:
    t, v, V, G = _data(tr)
    val, grad = model.value_and_gradient(t, v)
    ev = float(((val - V) ** 2).mean() / (V * V).mean().clamp(min=1e-300)) ** 0.5
    eg = float(((grad - G) ** 2).sum(-1).mean() / (G * G).sum(-1).mean().clamp(min=1e-300))
    per_start = ((val - V).abs().reshape(tr.V.shape)).amax(-1)
    return ev, eg ** 0.5, per_start


def solve_sampled(problem: ReducedProblem, options: SampledOptions | None = None, *,
                  progress: Callable[[str], None] | None = None) -> SampledSolution:
    """Learn V and the optimal feedback of ``problem`` from sampled optimal trajectories
    (module docstring).

    Parameters
    ----------
    problem : ReducedProblem
    options : SampledOptions, optional
    progress : callable, optional
        Called with one line of text per stage (boundary problems, fit, validation error).

    Returns
    -------
    SampledSolution
        On the CPU (the work runs on ``options.device``).
    """
    opts = options or SampledOptions()
    if not isinstance(problem, ReducedProblem):
        raise PdenetsError(f"problem must be a ReducedProblem, got {problem!r}")
    saved = torch.get_num_threads()
    threads = opts.threads or 1
    if str(opts.device) == "cpu" and threads != saved:
        torch.set_num_threads(threads)
    try:
        return _solve_sampled(problem, opts, progress)
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)


def _solve_sampled(problem: ReducedProblem, opts: SampledOptions,
                   progress: Callable[[str], None] | None) -> SampledSolution:
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    D = problem.D
    lo = torch.as_tensor(opts.lo, dtype=_DTYPE).expand(D).clone()
    hi = torch.as_tensor(opts.hi, dtype=_DTYPE).expand(D).clone()
    if not bool((hi > lo).all()):
        raise PdenetsError(f"sampling box needs lo < hi, got {lo.tolist()} and {hi.tolist()}")
    gen = torch.Generator().manual_seed(opts.seed)
    dev = torch.device(opts.device)
    dprob = problem.to(dev)

    def tpbvp(starts: torch.Tensor) -> Trajectories:
        tr = solve_tpbvp(dprob, starts.to(dev), intervals=opts.intervals, steps=opts.steps,
                         max_iter=opts.tpbvp_iter)
        return tr.to("cpu")

    val_set = tpbvp(_uniform(gen, opts.validation, lo, hi))
    train = tpbvp(_uniform(gen, opts.starts, lo, hi))
    say(f"sampled: {opts.starts} + {opts.validation} validation boundary problems in D = {D} "
        f"({time.perf_counter() - t0:.2f} s)")
    history: list[dict] = []
    degree = min(opts.degree, opts.intervals - 1)
    model = ValueModel(D, problem.T, degree, opts.hidden, opts.layers)
    sol = SampledSolution(problem, model, opts)
    r = 0
    while True:
        model = ValueModel(D, problem.T, degree, opts.hidden, opts.layers).to(dev)
        td, vd, Vd, Gd = (x.to(dev) for x in _data(train))
        fit = fit_value_model(model, td, vd, Vd, Gd, iters=opts.fit_iter)
        model = model.to("cpu")
        sol.model = model
        ev, eg, _ = _errors(model, val_set)
        history.append({"round": r, "trajectories": train.starts.shape[0],
                        "fit_value_error": fit.value_error,
                        "fit_gradient_error": fit.gradient_error,
                        "validation_error": ev, "validation_gradient_error": eg,
                        "seconds": time.perf_counter() - t0})
        say(f"sampled: round {r}: {train.starts.shape[0]} trajectories, validation error "
            f"{ev:.3g} (gradient {eg:.3g}), fit {fit.value_error:.3g}")
        if ev <= opts.tol or r >= opts.rounds:
            break
        pool = _uniform(gen, opts.batch * opts.candidates, lo, hi)
        res = sol.hjb_residual(0.0, pool)
        worst = pool[torch.argsort(res, descending=True)[: opts.batch]]
        train = _cat(train, tpbvp(worst))
        r += 1
    sol.stats = {
        "trajectories": int(train.starts.shape[0]), "data_points": int(train.V.numel()),
        "validation_trajectories": opts.validation, "rounds": r,
        "validation_error": history[-1]["validation_error"],
        "validation_gradient_error": history[-1]["validation_gradient_error"],
        "converged": history[-1]["validation_error"] <= opts.tol,
        "seconds": time.perf_counter() - t0, "history": history, "device": str(dev),
    }
    return sol


def run_sampled(problem: ReducedProblem, v0, options: SampledOptions | None = None, *,
                starts: Sequence = (), closed_loop_steps: int = 200, solver=None,
                direct_intervals: int = 0, direct_steps: int | None = None,
                direct_max_iter: int = 300, exact_V0: float | None = None,
                progress: Callable[[str], None] | None = None) -> tuple[SampledSolution, dict]:
    """``pdenets hjb`` with ``method = "sampled"``: solve, evaluate V(0, v0), run the closed
    loops from ``v0`` and ``starts``, optionally the direct method; return the solution and
    the JSON report (the grid path's fields; grid-only ones are None) plus ``method``,
    ``trajectories``, ``data_points``, ``validation_error``, ``rounds``,
    ``closed_loop_costs`` (per start, v0 first)."""
    from .closed_loop import closed_loop
    from .direct import direct_method

    sol = solve_sampled(problem, options, progress=progress)
    v0 = _states(v0, problem.D)[0]
    V0 = float(sol.value(0.0, v0)[0])
    loops = [closed_loop(sol, s, steps=closed_loop_steps, solver=solver)
             for s in [v0, *(torch.as_tensor(s, dtype=_DTYPE) for s in starts)]]
    direct = None
    if direct_intervals > 0:
        if progress:
            progress(f"hjb: direct method with {direct_intervals} control intervals")
        direct = direct_method(problem, v0, intervals=direct_intervals, steps=direct_steps,
                               max_iter=direct_max_iter)
    main = loops[0]
    st = sol.stats
    report = {
        "method": "sampled", "D": problem.D, "width_nodes": problem.N, "samples": problem.B,
        "grid_points": None, "grid_size": None, "scheme": "sampled", "time_steps": None,
        "snapshots": None, "v0": v0.tolist(), "V0": V0,
        "closed_loop_cost": main.cost, "closed_loop_running": main.running,
        "closed_loop_terminal": main.terminal, "closed_loop_steps": closed_loop_steps,
        "closed_loop_costs": [c.cost for c in loops],
        "exact_V0": exact_V0, "direct_cost": None if direct is None else direct.cost,
        "seconds": st["seconds"], "point_steps_per_second": None,
        "memory_estimate_bytes": None, "problem": problem.describe(), "grid": None,
        "trajectories": st["trajectories"], "data_points": st["data_points"],
        "validation_error": st["validation_error"], "rounds": st["rounds"],
        "converged": st["converged"],
    }
    if not math.isfinite(V0):
        raise PdenetsError("sampled HJB: the fitted value at v0 is not finite")
    return sol, report
