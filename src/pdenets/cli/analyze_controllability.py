"""``pdenets analyze controllability``: terminal misfit against α, T and K (MODEL.md §9)."""

from __future__ import annotations

import torch

from .analyze import (
    add_source_args,
    as_targets,
    check_analysis,
    check_finite_results,
    finish,
    float_list,
    load_case,
)


def register(asub) -> None:
    p = asub.add_parser(
        "controllability",
        help="terminal misfit vs α → 0, depth T and sample count K (§9)",
        description="Minimize J_α = mean ½‖R u_k(T) − y_k‖² + (α/2)∫‖θ‖² by L-BFGS "
        "(strong-Wolfe) for each α (from the model's controls), and at the smallest α "
        "for several depths T and sample counts K; report the terminal misfit "
        "max_k ‖R u_k(T) − y_k‖ and the control budget ‖θ‖ (MODEL.md §9). Writes "
        "controllability.png.",
    )
    add_source_args(p)
    p.add_argument("--alphas", help="comma-separated α values (default 1e-1,1e-2,1e-3,1e-4,1e-6)")
    p.add_argument("--horizons", help="comma-separated depths T for the T sweep")
    p.add_argument("--samples", help="comma-separated sample counts K for the K sweep")
    p.add_argument("--sweep-alpha", type=float, help="α of the T and K sweeps (default: "
                   "the smallest α)")
    p.add_argument("--delta", type=float, default=1e-2, help="misfit threshold δ of the verdict")
    p.add_argument("--iters", type=int, default=200, help="L-BFGS iterations per fit")
    p.add_argument("--params", help="parameters to optimize (default: controls)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analysis.controllability import (
        controllability_study,
        format_table,
        plot_controllability,
    )
    from ..errors import PdenetsError

    if args.iters < 1:
        raise PdenetsError(f"--iters must be a positive integer, got {args.iters}")
    case = load_case(args, need_targets=True)
    net = case.net
    opt = case.options
    alphas = float_list(args.alphas or opt.get("alphas", "1e-1,1e-2,1e-3,1e-4,1e-6"), "--alphas")
    if not alphas or any(a < 0 for a in alphas):
        raise PdenetsError("--alphas must be a non-empty list of numbers >= 0")
    horizons = float_list(args.horizons if args.horizons is not None
                          else opt.get("horizons"), "--horizons")
    if any(T <= 0 for T in horizons):
        raise PdenetsError("--horizons must be positive depths")
    counts_f = float_list(args.samples if args.samples is not None else opt.get("samples"),
                          "--samples")
    if any(c != int(c) for c in counts_f):
        raise PdenetsError("--samples must be integers")
    if any(c < 1 for c in counts_f):
        raise PdenetsError("--samples must be positive integers")
    if args.delta is not None and not args.delta > 0:
        raise PdenetsError(f"--delta must be a positive number, got {args.delta}")
    # one L-BFGS fit per α, per T (steps scale with T/T_model) and per K: up to 1.25 solves
    # with gradient per iteration
    T0 = float(case.net.T)
    fits = len(alphas) + sum(max(1.0, T / T0) for T in horizons) + len(counts_f)
    check_analysis(net, int(max([len(case.inputs), *counts_f])), "the controllability study",
                   work=1.25 * args.iters * fits,
                   options=f"--iters {args.iters}, {len(alphas)} α, horizons up to "
                   f"{max(horizons, default=T0):g}, {len(counts_f)} sample counts")
    counts = [int(c) for c in counts_f]
    xi = torch.as_tensor(case.inputs, dtype=torch.float64)
    y = as_targets(net, case.targets, case.inputs)
    rep = controllability_study(
        net, xi, y, alphas=alphas, horizons=horizons, counts=counts,
        sweep_alpha=args.sweep_alpha, delta=args.delta, max_iter=args.iters,
        params=args.params or "controls",
    )
    check_finite_results(**{"terminal misfit": rep.misfit_at_smallest_alpha})
    lines = ["misfit against α:", format_table(rep.alpha, "alpha")]
    if rep.horizon:
        lines += [f"misfit against T (α = {rep.horizon[0].alpha:g}):",
                  format_table(rep.horizon, "T")]
    if rep.samples:
        lines += [f"misfit against K (α = {rep.samples[0].alpha:g}):",
                  format_table(rep.samples, "samples")]
    trend = "n/a" if rep.trend is None else f"{rep.trend:.3g}"
    lines.append(
        f"verdict: {'approximately controllable' if rep.controllable else 'not shown controllable'}"
        f" (max misfit {rep.misfit_at_smallest_alpha:.3e} at α = {rep.alpha[-1].alpha:g}, "
        f"δ = {rep.delta:g}; log-log slope in α {trend})")
    return finish(args, "controllability", {"analysis": "controllability", **rep.as_dict()},
                  "\n".join(lines),
                  {"controllability.png": lambda path: plot_controllability(rep, path)})
