"""``pdenets analyze steady-state``: steady states of weight-tied networks, spectrum of the
linearization, stability verdict and a confirming large-time simulation (MODEL.md §1)."""

from __future__ import annotations

from typing import Any

import torch

from .. import _limits
from .analyze import add_source_args, check_analysis, check_finite_results, finish, load_case


def register(asub) -> None:
    p = asub.add_parser(
        "steady-state",
        help="Newton steady state, linearized spectrum, stability, long-time simulation (§1)",
        description="For time-independent controls (or controls frozen at --depth): solve "
        "f(u*) = 0 by Newton (standard σ(∫wu*+b)+εΔu* = 0; field ∫wσ(u*)+b+εΔu* = 0; "
        "selection u*·σ(∫wu*+b)+εΔu* = 0), compute the spectrum of f'(u*), give the "
        "verdict (max Re λ < 0: asymptotically stable) and confirm it by a forward solve "
        "over a long horizon from perturbations of u*. Writes steady_state.png.",
    )
    add_source_args(p, data_help="inputs (.npz with array x) for --init input")
    p.add_argument("--depth", type=float, help="freeze time-dependent controls at this depth")
    p.add_argument("--init", choices=["zeros", "input"], default="zeros",
                   help="Newton initial guess: zeros, or the lifted first input")
    p.add_argument("--horizon", type=float, default=20.0, help="simulation horizon (depth)")
    p.add_argument("--perturbation", type=float, default=1e-6,
                   help="ω-norm of the perturbations of u* in the simulation")
    p.add_argument("--no-simulation", action="store_true", help="skip the simulation")
    p.set_defaults(func=run)


def run(args) -> int:
    import math

    from ..analysis.steady_state import analyze_steady_state, plot_steady_state
    from ..errors import PdenetsError

    if not (args.horizon > 0 and args.perturbation > 0 and math.isfinite(args.horizon)
            and math.isfinite(args.perturbation)):
        raise PdenetsError("--horizon and --perturbation must be finite positive numbers")
    if args.depth is not None and not math.isfinite(args.depth):
        raise PdenetsError(f"--depth must be a finite number, got {args.depth}")
    case = load_case(args, need_data=args.init == "input")
    net: Any = case.net
    # Newton with dense N×N Jacobians (least squares, ~2N³ each, ≤ 50 iterations), one
    # eigen-decomposition (~10N³); the simulation: 4 perturbed states, RK4, a number of steps
    # that grows with the horizon (capped at 200000 by the analysis)
    N = float(getattr(net.controls, "channels", 1))  # the state has C·N values
    for n in net.discretization.width.sizes:
        N *= n
    sim_steps = 0.0 if args.no_simulation else min(200_000.0, 100.0 + 10.0 * args.horizon)
    dense = _limits.Cost(8.0 * 12 * N * N, 110.0 * N**3)
    check_analysis(net, 4, "the steady-state analysis", work=sim_steps / net.discretization.steps,
                   tape=False, extra=dense, options=f"--horizon {args.horizon:g}")
    grid = net.grid(net.discretization.width)
    u_init = None
    if args.init == "input":
        if len(case.inputs) == 0:
            raise PdenetsError("--init input needs inputs (--data FILE)")  # pragma: no cover
        with torch.no_grad():
            u_init = net.initial_state(torch.as_tensor(case.inputs[:1], dtype=grid.dtype),
                                       grid)[0]
    rep = analyze_steady_state(net.controls, net.dynamics, grid, u_init, depth=args.depth,
                               horizon=None if args.no_simulation else args.horizon,
                               perturbation=args.perturbation, seed=args.seed)
    if rep.converged:
        check_finite_results(**{"‖u*‖": rep.u_norm, "max Re λ": rep.max_real})
    top = ", ".join(f"{r:.6g}{i:+.3g}i" if abs(i) > 0 else f"{r:.6g}"
                    for r, i in list(zip(rep.eigenvalues_real, rep.eigenvalues_imag))[:5])
    lines = [
        f"{net.dynamics!r} on {grid.n} width nodes"
        + (f", controls frozen at depth {args.depth:g}" if args.depth is not None else ""),
        f"steady state: ‖u*‖_ω = {rep.u_norm:.6g}, residual {rep.residual:.2e} after "
        f"{rep.newton_iterations} Newton iterations (converged: {rep.converged})",
    ]
    if rep.converged:
        lines += [f"spectrum of f'(u*) (largest real parts): {top}",
                  f"max Re λ = {rep.max_real:.6g} → {rep.verdict}"]
    else:
        lines.append(f"verdict: {rep.verdict} (try --init input or another --depth)")
    if rep.simulation is not None:
        s = rep.simulation
        rate = "n/a" if s.observed_rate is None else f"{s.observed_rate:.4g}"
        lines.append(
            f"simulation over [0, {s.horizon:g}] ({s.steps} RK4 steps): distance "
            f"{s.distances[0]:.2e} → {s.distances[-1]:.2e} ({s.verdict}; observed rate {rate})"
            + ("" if rep.agrees is None else f"; agrees with the linearization: {rep.agrees}"))
    return finish(args, "steady-state", {"analysis": "steady-state", "depth": args.depth,
                                         **rep.as_dict()},
                  "\n".join(lines), {"steady_state.png": lambda p: plot_steady_state(rep, p)})

