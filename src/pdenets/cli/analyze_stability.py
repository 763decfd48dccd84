"""``pdenets analyze stability``: Gronwall bound vs observed sensitivities, Lipschitz estimate
(MODEL.md §3)."""

from __future__ import annotations

import torch

from .analyze import add_source_args, check_analysis, check_finite_results, finish, load_case


def register(asub) -> None:
    p = asub.add_parser(
        "stability",
        help="Gronwall bound vs observed input/control sensitivity; Lipschitz estimate (§3)",
        description="For a model and inputs: the Gronwall factor exp(L_σ ∫‖w(t)‖dt), the "
        "observed ‖u1(T) − u2(T)‖_ω for random input and control perturbations against their "
        "Gronwall bounds, and the local Lipschitz constant of u(0) ↦ u(T) at each input by power "
        "iteration on the linearized flow (MODEL.md §3). Writes stability.png.",
    )
    add_source_args(p, data_help="inputs (.npz with array x; y is ignored)")
    p.add_argument("--directions", type=int, default=4, help="random directions per input")
    p.add_argument("--iters", type=int, default=100, help="power iterations")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analysis.stability import plot_stability, stability_report
    from ..errors import PdenetsError

    if args.directions < 1 or args.iters < 1:
        raise PdenetsError("--directions and --iters must be positive integers")
    case = load_case(args)
    net = case.net
    if len(case.inputs) == 0:
        raise PdenetsError("no inputs to analyze")
    # power iteration: a linearized solve and its transpose per iteration; 4 perturbation
    # scales × directions × (input and control) perturbed solves
    check_analysis(net, len(case.inputs), "the stability analysis",
                   work=2 + 3 * args.iters + 8 * args.directions, memory=2,
                   options=f"--iters {args.iters}, --directions {args.directions}")
    xi = torch.as_tensor(case.inputs, dtype=torch.float64)
    rep = stability_report(net, xi, directions=args.directions, iters=args.iters, seed=args.seed)
    check_finite_results(**{"Lipschitz estimate": rep.lipschitz.value,
                            "∫‖w(t)‖dt": rep.integrated_operator_norm})
    d = rep.as_dict()
    lines = [
        f"∫‖w(t)‖dt = {rep.integrated_operator_norm:.6g}, L_σ = {rep.lipschitz_sigma:g}",
        "Gronwall factor: " + ("none (selection variant is not globally Lipschitz)"
                               if rep.gronwall is None else f"{rep.gronwall:.6g}"),
        f"Lipschitz estimate of u(0) ↦ u(T) (power iteration, {rep.lipschitz.iterations} its, "
        f"converged={rep.lipschitz.converged}): {rep.lipschitz.value:.6g}",
    ]
    for s in (rep.input, rep.control):
        if s is None:
            continue
        lines.append(f"{s.kind} perturbations: scale, observed, bound")
        for i, sc in enumerate(s.scales):
            b = "—" if s.bounds is None else f"{s.bounds[i]:.4e}"
            lines.append(f"  {sc:10.3g}  {s.responses[i]:.4e}  {b}")
        if s.holds is not None and s.ratios is not None:
            lines.append(f"  bound holds: {s.holds} (max ratio {max(s.ratios):.3g})")
    return finish(args, "stability", {"analysis": "stability", **d}, "\n".join(lines),
                  {"stability.png": lambda path: plot_stability(rep, path)})
