"""``pdenets hjb``: solve the HJB equation of a reduced problem (MODEL.md §8) from a TOML config.

Writes into ``--out DIR`` (atomically): ``value.npz`` (V at the snapshot depths on the state
grid), ``feedback.npz`` (θ* = (w*, b*) and the closed-loop velocity on a sub-grid at the plotted
depths), ``closed_loop.npz`` (trajectories under the feedback), ``summary.json`` and the plots
``value.png``, ``feedback.png``, ``trajectories.png``. Reports V(0, v0), the closed-loop cost and
the grid sizes (``--json``: one JSON object on stdout). The config format is documented in
docs/hjb.md; unknown tables, keys or bad values raise :class:`~pdenets.errors.ConfigError`.
"""

from __future__ import annotations

import io
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import torch

from .. import _limits
from ..dynamics import make_dynamics
from ..errors import ConfigError, PdenetsError
from ..hjb import (
    HJBOptions,
    HJBSolution,
    ReducedProblem,
    StateGrid,
    closed_form_value,
    closed_loop,
    direct_method,
    solve_hjb,
)
from ..integrators import make_solver
from ..modelfile import atomic_write_bytes
from ..quadrature import make_rule
from ._common import (
    add_json_flag,
    add_out_arguments,
    check_result,
    emit,
    output_directory,
    progress,
)

_NUM, _INT, _STR, _NUMS, _INTS, _STARTS = "number", "integer", "string", "numbers", "ints", "starts"

#: table -> key -> (kind, default); a default of ``...`` marks a required key
SCHEMA: dict[str, dict[str, tuple[str, object]]] = {
    "problem": {
        "dynamics": (_STR, "standard"), "activation": (_STR, "tanh"), "eps": (_NUM, 0.0),
        "controls": (_STR, "wb"), "alpha": (_NUM, 1.0), "T": (_NUM, 1.0),
        "rule": (_STR, "midpoint"), "width": (_INT, 1), "samples": (_INT, 1),
        "terminal": (_STR, "state"), "target": (_NUMS, 0.0), "v0": (_NUMS, ...),
        "w0": (_NUM, 0.0), "b0": (_NUM, 0.0),
    },
    "grid": {"lo": (_NUMS, -1.0), "hi": (_NUMS, 1.0), "points": (_INTS, 41)},
    "solver": {
        "scheme": (_STR, "lax-friedrichs"), "cfl": (_NUM, 0.9), "snapshots": (_INT, 11),
        "max_memory_gb": (_NUM, None), "inner_points": (_INT, 7), "newton_iters": (_INT, 8),
        "max_steps": (_INT, 1_000_000),
    },
    "closed_loop": {"steps": (_INT, 200), "solver": (_STR, "rk4"), "starts": (_STARTS, [])},
    "direct": {"intervals": (_INT, 0), "steps": (_INT, None), "max_iter": (_INT, 300)},
    "plot": {"depths": (_INT, 4)},
}
_CLOSED_LOOP_SOLVERS = ("euler", "heun", "rk4")


def register(sub) -> None:
    p = sub.add_parser(
        "hjb",
        help="solve the HJB equation of a reduced problem; value function, optimal feedback",
        description="Solve the Hamilton-Jacobi-Bellman equation (MODEL.md §8) of a reduced "
        "problem given by a TOML config on a state grid, derive the optimal feedback and run "
        "the closed loop. Writes value.npz, feedback.npz, closed_loop.npz, summary.json and "
        "plots into --out.",
    )
    p.add_argument("--config", required=True, help="TOML config file (see docs/hjb.md)")
    add_out_arguments(p, "hjb")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: the grid is processed in small "
                   "chunks, where extra threads mostly add synchronization; 0 = torch default)")
    add_json_flag(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def _is_num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_value(table: str, key: str, kind: str, value):
    where = f"[{table}] {key}"
    finite = lambda x: _is_num(x) and math.isfinite(x)  # noqa: E731
    if kind == _NUM:
        if not finite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if kind == _STR:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if kind == _NUMS:
        if finite(value):
            return float(value)
        if isinstance(value, list) and value and all(finite(x) for x in value):
            return [float(x) for x in value]
        raise ConfigError(f"{where} must be a finite number or a non-empty list of them, "
                          f"got {value!r}")
    if kind == _INTS:
        ok = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
        if ok(value) or (isinstance(value, list) and value and all(ok(x) for x in value)):
            return value
        raise ConfigError(f"{where} must be an integer or a list of integers, got {value!r}")
    if kind == _STARTS:
        if isinstance(value, list) and all(
            isinstance(r, list) and r and all(finite(x) for x in r) for r in value
        ):
            return [[float(x) for x in r] for r in value]
        raise ConfigError(f"{where} must be a list of states (lists of finite numbers), "
                          f"got {value!r}")
    raise AssertionError(kind)  # pragma: no cover


def load_config(path: str | Path) -> dict:
    """Read and validate a ``pdenets hjb`` TOML config; returns the tables with defaults.

    Raises
    ------
    ConfigError
        For a missing/unreadable file, invalid TOML, an unknown table or key, a value of the
        wrong type, or a missing required key.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    cfg: dict[str, dict] = {}
    for table in raw:
        if table not in SCHEMA:
            raise ConfigError(f"unknown config table [{table}]; known tables: "
                              f"{', '.join(SCHEMA)}")
        if not isinstance(raw[table], dict):
            raise ConfigError(f"config entry {table!r} must be a table [{table}]")
    for table, keys in SCHEMA.items():
        given = raw.get(table, {})
        for key in given:
            if key not in keys:
                raise ConfigError(f"unknown key {key!r} in [{table}]; known keys: "
                                  f"{', '.join(keys)}")
        out = {}
        for key, (kind, default) in keys.items():
            if key in given:
                out[key] = _check_value(table, key, kind, given[key])
            elif default is ...:
                raise ConfigError(f"missing required key {key!r} in [{table}]")
            else:
                out[key] = default
        cfg[table] = out
    return cfg


def build(cfg: dict) -> tuple[ReducedProblem, StateGrid, HJBOptions, torch.Tensor]:
    """The problem, state grid, solver options and v0 described by a validated config;
    invalid values raise :class:`ConfigError` naming the table."""
    pr, gr, so = cfg["problem"], cfg["grid"], cfg["solver"]
    _check_sizes_early(cfg)
    try:
        dyn = make_dynamics(pr["dynamics"], pr["activation"], pr["eps"])
        rule = make_rule(pr["rule"], pr["width"], 1)
        problem = ReducedProblem(
            dyn, rule, pr["samples"], pr["controls"], pr["alpha"], pr["T"], pr["target"],
            pr["terminal"], pr["w0"], pr["b0"],
        )
    except ConfigError:
        raise
    except PdenetsError as e:
        raise ConfigError(f"[problem]: {e}") from None
    try:
        grid = StateGrid(gr["lo"], gr["hi"], gr["points"], problem.D)
    except PdenetsError as e:
        raise ConfigError(f"[grid]: {e} (state dimension D = samples x width = {problem.D})"
                          ) from None
    try:
        mem = so["max_memory_gb"]
        opts = HJBOptions(so["scheme"], so["cfl"], so["snapshots"],
                          None if mem is None else int(mem * 2**30), so["inner_points"],
                          so["newton_iters"], so["max_steps"])
    except PdenetsError as e:
        raise ConfigError(f"[solver]: {e}") from None
    v0 = torch.as_tensor(pr["v0"], dtype=torch.float64).reshape(-1)
    if v0.numel() == 1 and problem.D > 1:
        v0 = v0.expand(problem.D).clone()
    if v0.numel() != problem.D:
        raise ConfigError(f"[problem] v0 has {v0.numel()} entries; the state has D = "
                          f"samples x width = {problem.D}")
    cl = cfg["closed_loop"]
    if cl["steps"] < 1:
        raise ConfigError(f"[closed_loop] steps must be >= 1, got {cl['steps']}")
    if cl["solver"] not in _CLOSED_LOOP_SOLVERS:
        raise ConfigError(f"[closed_loop] unknown solver {cl['solver']!r}; choose one of: "
                          f"{', '.join(_CLOSED_LOOP_SOLVERS)}")
    for s in cl["starts"]:
        if len(s) != problem.D:
            raise ConfigError(f"[closed_loop] start {s} has {len(s)} entries; expected "
                              f"D = {problem.D}")
    di = cfg["direct"]
    if di["intervals"] < 0 or di["max_iter"] < 1 or (di["steps"] is not None
                                                       and di["steps"] < 1):
        raise ConfigError("[direct] intervals must be >= 0 (0 = skip), steps and max_iter >= 1")
    if di["intervals"] and di["steps"] is not None and di["steps"] % di["intervals"]:
        raise ConfigError(f"[direct] steps ({di['steps']}) must be a multiple of intervals "
                          f"({di['intervals']})")
    if cfg["plot"]["depths"] < 1:
        raise ConfigError(f"[plot] depths must be >= 1, got {cfg['plot']['depths']}")
    _check_work(cfg, problem, grid, opts)
    return problem, grid, opts, v0


#: work of one grid point in one time step, per state dimension and width node (inner
#: minimization over candidates with Newton polishing, fluxes): measured ~6 µs for D = N = 2
#: on one core (examples/hjb_tanh.toml), charged as 9 µs at the rate of pdenets._limits
_POINT_STEP_FLOPS = 7500.0


def _check_sizes_early(cfg: dict) -> None:
    """Sizes checked before anything is built (MODEL.md §8): the state dimension
    D = samples × width nodes and the grid of points^D values (:mod:`pdenets._limits`)."""
    pr, gr, so = cfg["problem"], cfg["grid"], cfg["solver"]
    for table, key in (("problem", "width"), ("problem", "samples"), ("solver", "snapshots"),
                       ("closed_loop", "steps"), ("direct", "max_iter")):
        v = cfg[table][key]
        if v < 1:
            raise ConfigError(f"[{table}] {key} must be >= 1, got {v}")
    for key in ("inner_points", "max_steps"):
        if so[key] < 1:
            raise ConfigError(f"[solver] {key} must be >= 1, got {so[key]}")
    if so["newton_iters"] < 0:
        raise ConfigError(f"[solver] newton_iters must be >= 0, got {so['newton_iters']}")
    if not pr["T"] > 0:
        raise ConfigError(f"[problem] T must be > 0, got {pr['T']}")
    D = _limits.count(pr["samples"]) * _limits.count(pr["width"])
    pts = gr["points"]
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
    sizes = (f"[problem] samples = {pr['samples']}, width = {pr['width']} (D = {D:.4g}); "
             f"[grid] points = {pts if not isinstance(pts, list) or len(pts) < 6 else '[...]'}")
    if so["max_memory_gb"] is None:
        _limits.check_memory(8.0 * size * (9 + 3 * D + so["snapshots"]) + 8.0 * D * D, sizes,
                             f"the HJB grid of {size:.4g} points in D = {D:.4g} dimensions")
    _limits.check_flops(size * _POINT_STEP_FLOPS * D, sizes,
                        f"one time step on the HJB grid of {size:.4g} points")


def _check_work(cfg: dict, problem, grid, opts) -> None:
    """The memory of the solve (:func:`pdenets.hjb.estimate_memory`, unless
    ``max_memory_gb`` is given) and its time: the number of time steps T/dt is estimated at
    unit characteristic speed (dt = cfl / Σ_d 1/h_d for Lax–Friedrichs, cfl · min_d h_d for
    semi-Lagrangian) and must stay within ``max_steps``; the work is steps × points ×
    :data:`_POINT_STEP_FLOPS` · D · (N + 1), plus the closed loop and the direct method."""
    from ..hjb import estimate_memory

    pr, so, cl, di = cfg["problem"], cfg["solver"], cfg["closed_loop"], cfg["direct"]
    h = [float(v) for v in grid.h]
    if opts.scheme == "lax-friedrichs":
        steps = problem.T * sum(1.0 / v for v in h) / opts.cfl
    else:
        steps = problem.T / (opts.cfl * min(h))
    steps = max(steps, float(opts.snapshots - 1))
    where = (f"[problem] T = {pr['T']:g} with [grid] points = {list(grid.shape)[:6]} and "
             f"[solver] cfl = {opts.cfl:g}")
    if steps > opts.max_steps and not _limits.override_active():
        raise _limits.SizeLimitError(
            f"{where}: the HJB solve needs about {steps:.3g} time steps (T/dt at unit speed), "
            f"more than [solver] max_steps = {opts.max_steps}; {_limits.HINT}")
    if so["max_memory_gb"] is None:
        _limits.check_memory(estimate_memory(problem, grid, opts), where, "the HJB solve")
    D, N = problem.D, problem.N
    per_point = _POINT_STEP_FLOPS * D * (N + 1) * (1 + opts.newton_iters / 8)
    solve = min(steps, opts.max_steps) * (grid.size * per_point + 5e6)
    _limits.check_flops(solve, where, f"the HJB solve (~{steps:.3g} time steps)")
    evals = 4.0 * cl["steps"] * (1 + len(cl["starts"]))
    loop = evals * (2.0**min(D, 60) * D * 10 + per_point + _limits.EVAL_OVERHEAD_FLOPS)
    _limits.check_flops(loop, f"[closed_loop] steps = {cl['steps']}", "the closed loop")
    if di["intervals"] > 0:
        dsteps = di["steps"] if di["steps"] is not None else 4 * di["intervals"]
        cost = _limits.solve_cost(nodes=N, batch=problem.B, steps=dsteps, tape=True)
        _limits.check_cost(cost.times(1.0, 1.25 * di["max_iter"] * 5),
                           f"[direct] steps = {dsteps}, max_iter = {di['max_iter']}",
                           "the direct method")


def _is_closed_form(problem: ReducedProblem) -> bool:
    """The setting of MODEL.md §8's closed form: ∂_t u = b, state terminal cost, B = 1."""
    d = problem.dynamics
    return (d.kind == "standard" and d.activation.name == "identity" and d.eps == 0.0
            and problem.controls == "b" and bool((problem.w0 == 0).all())
            and problem.terminal == "state" and problem.B == 1)


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def run(args) -> int:
    cfg = load_config(args.config)
    problem, grid, opts, v0 = build(cfg)
    if not 0 <= args.threads <= 1024:
        raise ConfigError(f"--threads must be between 0 and 1024, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sol = solve_hjb(problem, grid, opts)
    progress(f"hjb: {problem!r}; grid {' x '.join(map(str, grid.shape))} = {grid.size} points, "
             f"{opts.scheme}: {sol.stats['steps']} steps in {sol.stats['seconds']:.2f} s")
    V0 = float(sol.value(0.0, v0)[0])
    cl_cfg = cfg["closed_loop"]
    solver = make_solver(cl_cfg["solver"])
    starts = [v0] + [torch.tensor(s, dtype=torch.float64) for s in cl_cfg["starts"]]
    loops = [closed_loop(sol, s, steps=cl_cfg["steps"], solver=solver) for s in starts]
    main = loops[0]
    check_result(V0, "V(0, v0)")
    for c in loops:
        check_result(c.cost, "the closed-loop cost")
    exact = None
    if _is_closed_form(problem):
        exact = float(closed_form_value(0.0, v0, problem.target[0], problem.alpha, problem.T,
                                        problem.weights))
    direct = None
    di = cfg["direct"]
    if di["intervals"] > 0:
        progress(f"hjb: direct method with {di['intervals']} control intervals")
        direct = direct_method(problem, v0, intervals=di["intervals"], steps=di["steps"],
                               max_iter=di["max_iter"])
    n_depths = min(cfg["plot"]["depths"], opts.snapshots)
    depth_idx = sorted({round(k) for k in np.linspace(0, opts.snapshots - 1, n_depths)})
    nmax = max(grid.shape)
    stride = max(1, math.ceil((nmax - 1) / (32 if grid.D <= 2 else 16)))
    fb = [sol.feedback_on_grid(k, stride) for k in depth_idx]

    payload = {
        "out": str(args.out),
        "files": ["value.npz", "feedback.npz", "closed_loop.npz", "summary.json", "value.png",
                  "feedback.png", "trajectories.png"],
        "D": problem.D, "width_nodes": problem.N, "samples": problem.B,
        "grid_points": list(grid.shape), "grid_size": grid.size, "scheme": opts.scheme,
        "time_steps": sol.stats["steps"], "snapshots": opts.snapshots,
        "v0": v0.tolist(), "V0": V0,
        "closed_loop_cost": main.cost, "closed_loop_running": main.running,
        "closed_loop_terminal": main.terminal, "closed_loop_steps": cl_cfg["steps"],
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
        _write_npz(tmp / "closed_loop.npz", t=main.ts.numpy(),
                   states=np.stack([c.states.numpy() for c in loops]),
                   starts=np.stack([s.numpy() for s in starts]),
                   cost=np.asarray([c.cost for c in loops]))
        atomic_write_bytes(tmp / "summary.json",
                           (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
        _plots(tmp, sol, v0, depth_idx, fb, loops, exact is not None)
    lines = [
        f"HJB ({opts.scheme}) on {' x '.join(map(str, grid.shape))} = {grid.size} grid points "
        f"in D = {problem.D} (N = {problem.N} width nodes x B = {problem.B} samples), "
        f"{sol.stats['steps']} time steps, {sol.stats['seconds']:.2f} s",
        f"V(0, v0)            = {V0:.8g}",
        f"closed-loop cost    = {main.cost:.8g}  (running {main.running:.6g}, "
        f"terminal {main.terminal:.6g})",
    ]
    if exact is not None:
        lines.append(f"exact V(0, v0)      = {exact:.8g}  (error {abs(V0 - exact):.3g})")
    if direct is not None:
        lines.append(f"direct method       = {direct.cost:.8g}  ({di['intervals']} intervals)")
    lines.append(f"wrote {args.out}/: {', '.join(payload['files'])}")
    emit(args, payload, "\n".join(lines))
    return 0


def _write_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _slice_index(grid: StateGrid, v0: torch.Tensor, shape) -> tuple:
    """Index of a 2-D slice (dims 0, 1) through the grid point nearest v0 (other dims)."""
    idx: list = [slice(None), slice(None)]
    for d in range(2, grid.D):
        n = shape[d]
        frac = float((v0[d] - grid.lo[d]) / (grid.hi[d] - grid.lo[d]))
        idx.append(int(min(max(round(frac * (n - 1)), 0), n - 1)))
    return tuple(idx)


def _plots(tmp: Path, sol: HJBSolution, v0, depth_idx, fb, loops, closed_form: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    grid, prob = sol.grid, sol.problem
    axes = [a.numpy() for a in grid.axes()]
    times = sol.times.numpy()
    # value
    if grid.D == 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for k in depth_idx:
            ax.plot(axes[0], sol.values[k].numpy(), label=f"t = {times[k]:.2f}")
            if closed_form:
                ex = closed_form_value(float(times[k]), grid.points(), prob.target[0],
                                       prob.alpha, prob.T, prob.weights).numpy()
                ax.plot(axes[0], ex, "k:", lw=0.8)
        ax.set_xlabel("state v")
        ax.set_ylabel("V(t, v)")
        ax.legend(fontsize=8)
        ax.set_title("value function" + (" (dotted: exact)" if closed_form else ""), fontsize=9)
    else:
        sl = _slice_index(grid, v0, grid.shape)
        fig, axs = plt.subplots(1, len(depth_idx), figsize=(4.0 * len(depth_idx), 3.4),
                                squeeze=False, layout="constrained")
        for a, k in zip(axs[0], depth_idx):
            im = a.imshow(sol.values[k][sl].numpy().T, origin="lower", aspect="auto",
                          extent=(axes[0][0], axes[0][-1], axes[1][0], axes[1][-1]))
            a.set_title(f"V, t = {times[k]:.2f}", fontsize=9)
            a.set_xlabel("v₁")
            a.set_ylabel("v₂")
            fig.colorbar(im, ax=a)
        if grid.D > 2:
            fig.suptitle("slice through v0 in dimensions 3..D", fontsize=8)
    save_figure(fig, tmp / "value.png")
    # feedback
    sub_shape = fb[0]["shape"]
    if grid.D == 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        x = fb[0]["points"][:, 0]
        for f, k in zip(fb, depth_idx):
            for i in range(prob.N):
                if "b" in prob.controls:
                    ax.plot(x, f["b"][:, i], label=f"b*_{i}, t = {times[k]:.2f}")
                if "w" in prob.controls:
                    ax.plot(x, f["w"][:, i, 0], "--", label=f"w*_{i}0, t = {times[k]:.2f}")
        ax.set_xlabel("state v")
        ax.set_ylabel("feedback θ*(t, v)")
        ax.legend(fontsize=7, ncol=2)
    else:
        sl = _slice_index(grid, v0, sub_shape)
        pts = fb[0]["points"].reshape(*sub_shape, grid.D)[sl]
        fig, axs = plt.subplots(1, len(fb), figsize=(4.4 * len(fb), 3.6), squeeze=False,
                                layout="constrained")
        q = max(1, math.ceil(max(pts.shape[:2]) / 17))
        for a, f, k in zip(axs[0], fb, depth_idx):
            vel = f["velocity"].reshape(*sub_shape, grid.D)[sl]
            key = "b" if "b" in prob.controls else "w"
            ctrl = f[key].reshape(*sub_shape, -1)[sl][..., 0]
            im = a.pcolormesh(pts[..., 0], pts[..., 1], ctrl, shading="auto", cmap="RdBu_r")
            a.quiver(pts[::q, ::q, 0], pts[::q, ::q, 1], vel[::q, ::q, 0], vel[::q, ::q, 1],
                     angles="xy", width=0.004)
            a.set_title(f"{key}*₁ (colour), f(v, θ*) (arrows), t = {times[k]:.2f}",
                        fontsize=8)
            a.set_xlabel("v₁")
            a.set_ylabel("v₂")
            fig.colorbar(im, ax=a)
    save_figure(fig, tmp / "feedback.png")
    # trajectories
    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    for j, c in enumerate(loops):
        st = c.states.numpy()
        for d in range(grid.D):
            axs[0].plot(c.ts.numpy(), st[:, d], color=f"C{d % 10}", lw=1.6 if j == 0 else 0.8,
                        alpha=1.0 if j == 0 else 0.6, label=f"v_{d + 1}" if j == 0 else None)
    axs[0].set_xlabel("depth t")
    axs[0].set_ylabel("closed-loop state")
    axs[0].legend(fontsize=7)
    if grid.D == 1:
        axs[1].plot(axes[0], sol.values[0].numpy(), "k-", lw=1)
        for c in loops:
            v = float(c.states[0, 0])
            axs[1].plot([v], [float(sol.value(0.0, c.states[0]))], "o")
        axs[1].set_xlabel("v")
        axs[1].set_ylabel("V(0, v)")
    else:
        sl = _slice_index(grid, v0, grid.shape)
        axs[1].contour(axes[0], axes[1], sol.values[0][sl].numpy().T, 15, linewidths=0.6)
        for c in loops:
            st = c.states.numpy()
            axs[1].plot(st[:, 0], st[:, 1], "-")
            axs[1].plot(st[0, 0], st[0, 1], "o", ms=4)
        axs[1].set_xlabel("v₁")
        axs[1].set_ylabel("v₂")
    axs[1].set_title(f"closed loop under θ*(t, v); cost from v0 = {loops[0].cost:.5g}",
                     fontsize=9)
    save_figure(fig, tmp / "trajectories.png")
