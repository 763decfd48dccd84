"""``pdenets hjb``: solve the HJB equation of a reduced problem (MODEL.md §8) from a TOML config.

Two methods (``[solver] method``, or ``--set method=...``):

* ``grid`` (default): the value function on a state grid (:func:`pdenets.hjb.solve_hjb`,
  schemes ``lax-friedrichs``, ``semi-lagrangian``, ``eno2-rk2``, ``weno5-rk3``). Writes into
  ``--out DIR`` (atomically): ``value.npz`` (V at the snapshot depths on the state grid),
  ``feedback.npz`` (θ* = (w*, b*) and the closed-loop velocity on a sub-grid at the plotted
  depths), ``closed_loop.npz`` (trajectories under the feedback), ``summary.json`` and the
  plots ``value.png``, ``feedback.png``, ``trajectories.png``.
* ``sampled``: a learned value function from optimal trajectories, for state dimensions a
  grid cannot reach (:func:`pdenets.hjb.run_sampled`, options in ``[sampled]``). Writes
  ``closed_loop.npz``, ``summary.json`` and ``trajectories.png`` (the closed loops and the
  learned V along them).

Both report V(0, v0), the closed-loop cost, the exact value in the closed-form case and the
direct-method cost (``--json``: one JSON object on stdout, the same fields for both methods,
grid-only ones null for ``sampled``). The config (:class:`pdenets.hjb.config.HJBConfig`,
documented in docs/hjb.md) is a TOML file plus ``--set key=value`` overrides; unknown tables,
keys or bad values raise :class:`~pdenets.errors.ConfigError`. Sizes are checked before any
work (:mod:`pdenets._limits`). The report lines, the files and the plots are written by
:mod:`pdenets.cli._hjb_output`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import _limits
from ..dynamics import make_dynamics
from ..errors import ConfigError, PdenetsError
from ..hjb import (
    HJBOptions,
    ReducedProblem,
    SampledOptions,
    StateGrid,
    closed_form_value,
    closed_loop,
    direct_method,
    run_sampled,
    scheme_names,
    solve_hjb,
)
from ..hjb.config import METHODS, HJBConfig, load_hjb_config
from ..integrators import make_solver
from ..quadrature import make_rule
from ._common import (
    add_json_flag,
    add_out_arguments,
    check_result,
    emit,
    output_directory,
    progress,
)
from ._hjb_output import (
    _plot_sampled,
    _plots,
    _report_lines,
    _write_loops,
    _write_npz,
    _write_summary,
)

_CLOSED_LOOP_SOLVERS = ("euler", "heun", "rk4")


def register(sub) -> None:
    p = sub.add_parser(
        "hjb",
        help="solve the HJB equation of a reduced problem; value function, optimal feedback",
        description="Solve the Hamilton-Jacobi-Bellman equation (MODEL.md §8) of a reduced "
        "problem given by a TOML config, on a state grid (method = grid) or from sampled "
        "optimal trajectories (method = sampled), derive the optimal feedback and run the "
        "closed loop. Writes value.npz, feedback.npz (grid), closed_loop.npz, summary.json and "
        "plots into --out.",
    )
    p.add_argument("--config", required=True, help="TOML config file (see docs/hjb.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set solver.scheme=weno5-rk3, "
                   "--set grid.points=[41,41] or --set method=sampled (repeatable)")
    add_out_arguments(p, "hjb")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads of the solve and the closed loop (default 1: "
                   "the work comes in small chunks, where extra threads mostly add "
                   "synchronization; 0 = the library's policy and torch's default)")
    add_json_flag(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | None = None) -> HJBConfig:
    """Read a ``pdenets hjb`` TOML config with ``--set`` overrides
    (:func:`pdenets.hjb.config.load_hjb_config`).

    Raises
    ------
    ConfigError
        For a missing/unreadable file, invalid TOML, an unknown table or key, a value of the
        wrong type, or a missing required key.
    """
    cfg = load_hjb_config(path, overrides)
    if cfg.solver.method not in METHODS:
        raise ConfigError(f"solver.method: unknown value {cfg.solver.method!r}; choose one of "
                          f"{', '.join(METHODS)}")
    return cfg


def _problem(cfg: HJBConfig) -> tuple[ReducedProblem, torch.Tensor]:
    """The reduced problem and v0; also checks [closed_loop], [direct] and [plot]."""
    pr = cfg.problem
    _check_common_sizes(cfg)
    try:
        dyn = make_dynamics(pr.dynamics, pr.activation, pr.eps)
        rule = make_rule(pr.rule, pr.width, 1)
        problem = ReducedProblem(dyn, rule, pr.samples, pr.controls, pr.alpha, pr.T, pr.target,
                                 pr.terminal, pr.w0, pr.b0)
    except ConfigError:
        raise
    except PdenetsError as e:
        raise ConfigError(f"[problem]: {e}") from None
    v0 = torch.as_tensor(pr.v0, dtype=torch.float64).reshape(-1)
    if v0.numel() == 1 and problem.D > 1:
        v0 = v0.expand(problem.D).clone()
    if v0.numel() != problem.D:
        raise ConfigError(f"[problem] v0 has {v0.numel()} entries; the state has D = "
                          f"samples x width = {problem.D}")
    cl = cfg.closed_loop
    if cl.solver not in _CLOSED_LOOP_SOLVERS:
        raise ConfigError(f"[closed_loop] unknown solver {cl.solver!r}; choose one of: "
                          f"{', '.join(_CLOSED_LOOP_SOLVERS)}")
    for s in cl.starts:
        if len(s) != problem.D:
            raise ConfigError(f"[closed_loop] start {s} has {len(s)} entries; expected "
                              f"D = {problem.D}")
    di = cfg.direct
    if di.intervals < 0 or (di.steps is not None and di.steps < 1):
        raise ConfigError("[direct] intervals must be >= 0 (0 = skip), steps and max_iter >= 1")
    if di.intervals and di.steps is not None and di.steps % di.intervals:
        raise ConfigError(f"[direct] steps ({di.steps}) must be a multiple of intervals "
                          f"({di.intervals})")
    if cfg.plot.depths < 1:
        raise ConfigError(f"[plot] depths must be >= 1, got {cfg.plot.depths}")
    return problem, v0


def _threads(threads: int) -> int | None:
    if not 0 <= threads <= 1024:
        raise ConfigError(f"--threads must be between 0 and 1024, got {threads}")
    return threads or None


def build(cfg: HJBConfig, threads: int | None = 1
          ) -> tuple[ReducedProblem, StateGrid, HJBOptions, torch.Tensor]:
    """The problem, state grid, solver options and v0 of a grid-method config; invalid values
    raise :class:`ConfigError` naming the table, absurd sizes
    :class:`~pdenets._limits.SizeLimitError`."""
    gr, so = cfg.grid, cfg.solver
    _check_grid_sizes_early(cfg)
    problem, v0 = _problem(cfg)
    try:
        grid = StateGrid(gr.lo, gr.hi, gr.points, problem.D)
    except PdenetsError as e:
        raise ConfigError(f"[grid]: {e} (state dimension D = samples x width = {problem.D})"
                          ) from None
    if so.scheme not in scheme_names():
        raise ConfigError(f"[solver]: unknown HJB scheme {so.scheme!r}; choose one of "
                          f"{', '.join(scheme_names())}")
    try:
        mem = so.max_memory_gb
        opts = HJBOptions(so.scheme, so.cfl, so.snapshots,
                          None if mem is None else int(mem * 2**30), so.inner_points,
                          so.newton_iters, so.max_steps, so.device, threads)
    except PdenetsError as e:
        raise ConfigError(f"[solver]: {e}") from None
    _check_work(cfg, problem, grid, opts)
    return problem, grid, opts, v0


def build_sampled(cfg: HJBConfig, threads: int | None = 1
                  ) -> tuple[ReducedProblem, SampledOptions, torch.Tensor]:
    """The problem, :class:`SampledOptions` and v0 of a sampled-method config (sizes checked
    as for :func:`build`)."""
    import dataclasses

    problem, v0 = _problem(cfg)
    so = cfg.solver
    try:
        opts = SampledOptions(**dataclasses.asdict(cfg.sampled), device=so.device,
                              threads=threads, inner_points=so.inner_points,
                              newton_iters=so.newton_iters)
        for key in ("lo", "hi"):
            v = getattr(opts, key)
            if isinstance(v, list) and len(v) not in (1, problem.D):
                raise PdenetsError(f"{key} has {len(v)} entries; expected 1 or D = {problem.D}")
    except PdenetsError as e:
        raise ConfigError(f"[sampled]: {e}") from None
    _check_sampled_work(cfg, problem, opts)
    return problem, opts, v0


#: work of one grid point in one time step, per state dimension and width node (inner
#: minimization over candidates with Newton polishing, fluxes): measured ~6 µs for D = N = 2
#: on one core (examples/hjb_tanh.toml), charged as 9 µs at the rate of pdenets._limits
_POINT_STEP_FLOPS = 7500.0


def _check_common_sizes(cfg: HJBConfig) -> None:
    """Counts that must be positive, checked before anything is built."""
    for table, key in (("problem", "width"), ("problem", "samples"), ("solver", "snapshots"),
                       ("closed_loop", "steps"), ("direct", "max_iter"),
                       ("solver", "inner_points"), ("solver", "max_steps")):
        v = getattr(getattr(cfg, table), key)
        if v < 1:
            raise ConfigError(f"[{table}] {key} must be >= 1, got {v}")
    if cfg.solver.newton_iters < 0:
        raise ConfigError(f"[solver] newton_iters must be >= 0, got {cfg.solver.newton_iters}")
    if not cfg.problem.T > 0:
        raise ConfigError(f"[problem] T must be > 0, got {cfg.problem.T}")


def _check_grid_sizes_early(cfg: HJBConfig) -> None:
    """Sizes checked before anything is built (MODEL.md §8): the state dimension
    D = samples × width nodes and the grid of points^D values (:mod:`pdenets._limits`)."""
    pr, so = cfg.problem, cfg.solver
    _check_common_sizes(cfg)
    D = _limits.count(pr.samples) * _limits.count(pr.width)
    pts = cfg.grid.points
    if isinstance(pts, list):
        if len(pts) not in (1, D):
            return  # StateGrid names the mismatch
        size = 1.0
        for n in pts:
            size *= _limits.count(n)
        if len(pts) == 1:
            size = _limits.power(pts[0], D)
    else:
        size = _limits.power(pts, D)
    sizes = (f"[problem] samples = {pr.samples}, width = {pr.width} (D = {D:.4g}); "
             f"[grid] points = {pts if not isinstance(pts, list) or len(pts) < 6 else '[...]'}")
    if so.max_memory_gb is None:
        _limits.check_memory(8.0 * size * (9 + 3 * D + so.snapshots) + 8.0 * D * D, sizes,
                             f"the HJB grid of {size:.4g} points in D = {D:.4g} dimensions")
    _limits.check_flops(size * _POINT_STEP_FLOPS * D, sizes,
                        f"one time step on the HJB grid of {size:.4g} points")


def _check_loop_and_direct(cfg: HJBConfig, problem: ReducedProblem, per_eval: float) -> None:
    """The closed loops (``per_eval`` flops per feedback evaluation) and the direct method."""
    cl, di = cfg.closed_loop, cfg.direct
    evals = 4.0 * cl.steps * (1 + len(cl.starts))
    _limits.check_flops(evals * (per_eval + _limits.EVAL_OVERHEAD_FLOPS),
                        f"[closed_loop] steps = {cl.steps}", "the closed loop")
    if di.intervals > 0:
        dsteps = di.steps if di.steps is not None else 4 * di.intervals
        cost = _limits.solve_cost(nodes=problem.N, batch=problem.B, steps=dsteps, tape=True)
        _limits.check_cost(cost.times(1.0, 1.25 * di.max_iter * 5),
                           f"[direct] steps = {dsteps}, max_iter = {di.max_iter}",
                           "the direct method")


def _per_point(problem: ReducedProblem, newton_iters: int) -> float:
    """Work of the Hamiltonian minimization at one state (all D row problems)."""
    return _POINT_STEP_FLOPS * problem.D * (problem.N + 1) * (1 + newton_iters / 8)


def _check_work(cfg: HJBConfig, problem, grid, opts) -> None:
    """The memory of the solve (:func:`pdenets.hjb.estimate_memory`, unless
    ``max_memory_gb`` is given) and its time: the number of time steps T/dt is estimated at
    unit characteristic speed (dt = cfl / Σ_d 1/h_d for Lax–Friedrichs and the high-order
    schemes, cfl · min_d h_d for semi-Lagrangian) and must stay within ``max_steps``; the work
    is steps × points × :data:`_POINT_STEP_FLOPS` · D · (N + 1) (× 2 or 3 Runge–Kutta stages
    for ``eno2-rk2`` / ``weno5-rk3``), plus the closed loop and the direct method."""
    from ..hjb import estimate_memory

    pr, so = cfg.problem, cfg.solver
    h = [float(v) for v in grid.h]
    if opts.scheme == "semi-lagrangian":
        steps = problem.T / (opts.cfl * min(h))
    else:
        steps = problem.T * sum(1.0 / v for v in h) / opts.cfl
    steps = max(steps, float(opts.snapshots - 1))
    where = (f"[problem] T = {pr.T:g} with [grid] points = {list(grid.shape)[:6]} and "
             f"[solver] cfl = {opts.cfl:g}")
    if steps > opts.max_steps and not _limits.override_active():
        raise _limits.SizeLimitError(
            f"{where}: the HJB solve needs about {steps:.3g} time steps (T/dt at unit speed), "
            f"more than [solver] max_steps = {opts.max_steps}; {_limits.HINT}")
    if so.max_memory_gb is None:
        _limits.check_memory(estimate_memory(problem, grid, opts), where, "the HJB solve")
    stages = {"eno2-rk2": 2, "weno5-rk3": 3}.get(str(opts.scheme), 1)
    per_point = _per_point(problem, opts.newton_iters)
    solve = min(steps, opts.max_steps) * stages * (grid.size * per_point + 5e6)
    _limits.check_flops(solve, where, f"the HJB solve (~{steps:.3g} time steps)")
    D = problem.D
    _check_loop_and_direct(cfg, problem, 2.0**min(D, 60) * D * 10 + per_point)


def _check_sampled_work(cfg: HJBConfig, problem: ReducedProblem, opts: SampledOptions) -> None:
    """Memory and time of the sampled method: the boundary problems (batched RK4 solves with
    a tape, ``tpbvp_iter`` L-BFGS iterations, each solve about 1.25 × 3 evaluations), the fits
    (values and gradients of the value model at every data point) and the residual screening,
    plus the closed loop and the direct method."""
    D, N, B = problem.D, problem.N, problem.B
    sa = cfg.sampled
    trajectories = float(opts.starts + opts.validation + opts.rounds * opts.batch)
    nsteps = float(opts.intervals * opts.steps)
    tp = _limits.solve_cost(nodes=N, batch=B * trajectories, steps=nsteps, tape=True)
    sizes = (f"[sampled] starts = {sa.starts}, validation = {sa.validation}, rounds = "
             f"{sa.rounds}, batch = {sa.batch}, intervals = {sa.intervals}, steps = {sa.steps}")
    _limits.check_cost(tp.times(1.0, 1.25 * opts.tpbvp_iter), sizes + f", tpbvp_iter = "
                       f"{sa.tpbvp_iter}", "the boundary problems of the sampled method")
    model = 6.0 * (D * opts.hidden + opts.hidden**2 * opts.layers + D * (opts.degree + 1) * 3)
    points = (trajectories - opts.validation) * (opts.intervals + 1)
    _limits.check_memory(points * (D * 8.0 * 4 + 8.0 * (opts.hidden * opts.layers * 4)),
                         sizes, "the data and tape of the value-model fit")
    fit = (opts.rounds + 1) * opts.fit_iter * 1.25 * points * (3 * model)
    screen = opts.rounds * opts.batch * opts.candidates * (
        _per_point(problem, opts.newton_iters) + 3 * model)
    _limits.check_flops(fit + screen, sizes + f", fit_iter = {sa.fit_iter}, candidates = "
                        f"{sa.candidates}", "the value-model fits of the sampled method")
    _check_loop_and_direct(cfg, problem, _per_point(problem, opts.newton_iters) + 3 * model)


def _is_closed_form(problem: ReducedProblem) -> bool:
    """The setting of MODEL.md §8's closed form: ∂_t u = b, state terminal cost, B = 1."""
    d = problem.dynamics
    return (d.kind == "standard" and d.activation.name == "identity" and d.eps == 0.0
            and problem.controls == "b" and bool((problem.w0 == 0).all())
            and problem.terminal == "state" and problem.B == 1)


def _exact(problem: ReducedProblem, v0: torch.Tensor) -> float | None:
    if not _is_closed_form(problem):
        return None
    return float(closed_form_value(0.0, v0, problem.target[0], problem.alpha, problem.T,
                                   problem.weights))


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def run(args) -> int:
    cfg = load_config(args.config, args.set)
    threads = _threads(args.threads)
    if cfg.solver.method == "sampled":
        return _run_sampled(args, cfg, threads)
    problem, grid, opts, v0 = build(cfg, threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    sol = solve_hjb(problem, grid, opts)
    progress(f"hjb: {problem!r}; grid {' x '.join(map(str, grid.shape))} = {grid.size} points, "
             f"{opts.scheme}: {sol.stats['steps']} steps in {sol.stats['seconds']:.2f} s")
    V0 = float(sol.value(0.0, v0)[0])
    cl_cfg = cfg.closed_loop
    solver = make_solver(cl_cfg.solver)
    starts = [v0] + [torch.tensor(s, dtype=torch.float64) for s in cl_cfg.starts]
    loops = [closed_loop(sol, s, steps=cl_cfg.steps, solver=solver) for s in starts]
    main = loops[0]
    check_result(V0, "V(0, v0)")
    for c in loops:
        check_result(c.cost, "the closed-loop cost")
    exact = _exact(problem, v0)
    direct = None
    di = cfg.direct
    if di.intervals > 0:
        progress(f"hjb: direct method with {di.intervals} control intervals")
        direct = direct_method(problem, v0, intervals=di.intervals, steps=di.steps,
                               max_iter=di.max_iter)
    n_depths = min(cfg.plot.depths, opts.snapshots)
    depth_idx = sorted({round(k) for k in np.linspace(0, opts.snapshots - 1, n_depths)})
    nmax = max(grid.shape)
    stride = max(1, math.ceil((nmax - 1) / (32 if grid.D <= 2 else 16)))
    fb = [sol.feedback_on_grid(k, stride) for k in depth_idx]

    payload = {
        "out": str(args.out),
        "files": ["value.npz", "feedback.npz", "closed_loop.npz", "summary.json", "value.png",
                  "feedback.png", "trajectories.png"],
        "method": "grid",
        "D": problem.D, "width_nodes": problem.N, "samples": problem.B,
        "grid_points": list(grid.shape), "grid_size": grid.size, "scheme": str(opts.scheme),
        "time_steps": sol.stats["steps"], "snapshots": opts.snapshots,
        "v0": v0.tolist(), "V0": V0,
        "closed_loop_cost": main.cost, "closed_loop_running": main.running,
        "closed_loop_terminal": main.terminal, "closed_loop_steps": cl_cfg.steps,
        "closed_loop_costs": [c.cost for c in loops],
        "exact_V0": exact, "direct_cost": None if direct is None else direct.cost,
        "seconds": sol.stats["seconds"],
        "point_steps_per_second": sol.stats["point_steps_per_second"],
        "memory_estimate_bytes": sol.stats["memory_estimate"],
        "problem": problem.describe(), "grid": grid.describe(),
    }
    with output_directory(args) as tmp:
        _write_npz(tmp / "value.npz", times=sol.times.numpy(), values=sol.values.numpy(),
                   lo=grid.lo.numpy(), hi=grid.hi.numpy(), points=np.asarray(grid.shape),
                   weights=problem.weights.numpy())
        _write_npz(tmp / "feedback.npz", t=sol.times[depth_idx].numpy(),
                   points=fb[0]["points"], shape=np.asarray(fb[0]["shape"]),
                   w=np.stack([f["w"] for f in fb]), b=np.stack([f["b"] for f in fb]),
                   velocity=np.stack([f["velocity"] for f in fb]))
        _write_loops(tmp, loops, starts)
        _write_summary(tmp, payload)
        _plots(tmp, sol, v0, depth_idx, fb, loops, exact is not None)
    lines = [
        f"HJB ({opts.scheme}) on {' x '.join(map(str, grid.shape))} = {grid.size} grid points "
        f"in D = {problem.D} (N = {problem.N} width nodes x B = {problem.B} samples), "
        f"{sol.stats['steps']} time steps, {sol.stats['seconds']:.2f} s",
        *_report_lines(V0, main, exact, None if direct is None else direct.cost, di.intervals),
        f"wrote {args.out}/: {', '.join(payload['files'])}",
    ]
    emit(args, payload, "\n".join(lines))
    return 0


def _run_sampled(args, cfg: HJBConfig, threads: int | None) -> int:
    """``method = "sampled"``: :func:`pdenets.hjb.run_sampled`, then the closed loops again
    for closed_loop.npz and the plot (run_sampled reports only their costs)."""
    problem, opts, v0 = build_sampled(cfg, threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    cl, di = cfg.closed_loop, cfg.direct
    exact = _exact(problem, v0)
    sol, report = run_sampled(
        problem, v0, opts, starts=cl.starts, closed_loop_steps=cl.steps,
        solver=make_solver(cl.solver), direct_intervals=di.intervals, direct_steps=di.steps,
        direct_max_iter=di.max_iter, exact_V0=exact, progress=progress)
    starts = [v0] + [torch.tensor(s, dtype=torch.float64) for s in cl.starts]
    loops = [closed_loop(sol, s, steps=cl.steps, solver=make_solver(cl.solver))
             for s in starts]
    check_result(report["V0"], "V(0, v0)")
    for c in loops:
        check_result(c.cost, "the closed-loop cost")
    files = ["closed_loop.npz", "summary.json", "trajectories.png"]
    payload = {"out": str(args.out), "files": files, **report}
    with output_directory(args) as tmp:
        _write_loops(tmp, loops, starts)
        _write_summary(tmp, payload)
        _plot_sampled(tmp, sol, loops, exact is not None)
    main = loops[0]
    direct_cost = report["direct_cost"]
    lines = [
        f"HJB (sampled) in D = {problem.D} (N = {problem.N} width nodes x B = {problem.B} "
        f"samples): {report['trajectories']} trajectories, {report['rounds']} refinement "
        f"rounds, validation error {report['validation_error']:.3g}"
        f"{'' if report['converged'] else ' (tolerance not reached)'}, "
        f"{report['seconds']:.2f} s",
        *_report_lines(report["V0"], main, exact, direct_cost, di.intervals),
        f"wrote {args.out}/: {', '.join(files)}",
    ]
    emit(args, payload, "\n".join(lines))
    return 0
