"""``pdenets analyze hessian``: first- and second-order optimality certification (MODEL.md §6)."""

from __future__ import annotations

import torch

from .analyze import (
    add_source_args,
    as_targets,
    check_analysis,
    check_finite_results,
    finish,
    load_case,
)


def register(asub) -> None:
    p = asub.add_parser(
        "hessian",
        help="‖∇J‖, Lanczos extreme eigenvalues of ∇²J, minimizer/saddle verdict (§6)",
        description="Reduced objective J(θ) (MODEL.md §4) over the chosen parameters: gradient "
        "norm, Hessian-vector products by double backward, Lanczos (full "
        "reorthogonalization) for the extreme eigenvalues, and a verdict — strict local "
        "minimizer, saddle (with a verified descent direction), degenerate, or not a critical "
        "point. Writes hessian.png.",
    )
    add_source_args(p)
    p.add_argument("--loss", choices=["mse", "cross_entropy"], help="loss (default: mse, or "
                   "cross_entropy for integer labels with a model file)")
    p.add_argument("--alpha", type=float, help="Tikhonov weight α (example default or 0)")
    p.add_argument("--beta", type=float, default=0.0, help="H¹-in-depth weight β")
    p.add_argument("--params", help="parameters: names or groups, comma separated "
                   "(controls, controls.w, controls.b, readout, readout.c, ..., all)")
    p.add_argument("--k", type=int, default=30, help="Lanczos steps")
    p.add_argument("--tol", type=float, help="eigenvalue tolerance (default 1e-6·max|λ|)")
    p.add_argument("--grad-tol", type=float, default=1e-6, help="critical-point tolerance")
    p.add_argument("--optimize", type=int, help="L-BFGS iterations before the analysis "
                   "(example default or 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..analysis.controllability import fit
    from ..analysis.hessian import ReducedObjective, certify, plot_hessian
    from ..errors import PdenetsError
    from ..objective import Objective

    if args.k < 1:
        raise PdenetsError(f"--k must be a positive integer, got {args.k}")
    case = load_case(args, need_targets=True)
    net = case.net
    y = np.asarray(case.targets)
    loss = args.loss or ("cross_entropy" if args.model is not None and y.ndim == 1
                         and np.issubdtype(y.dtype, np.integer) else case.loss)
    alpha = case.alpha if args.alpha is None else args.alpha
    obj = Objective(loss, alpha, args.beta)
    targets = (torch.as_tensor(y, dtype=torch.long) if loss == "cross_entropy"
               else as_targets(net, y, case.inputs))
    xi = torch.as_tensor(case.inputs, dtype=torch.float64)
    params = args.params or case.params
    optimize = case.optimize if args.optimize is None else args.optimize
    if optimize < 0:
        raise PdenetsError(f"--optimize must be >= 0, got {optimize}")
    # Lanczos: one Hessian-vector product (double backward, ~4 solves) per step; L-BFGS: up
    # to 1.25 evaluations (solve + gradient) per iteration; double backward keeps ~3 tapes
    check_analysis(net, len(xi), "the Hessian analysis",
                   work=2 + 4 * args.k + 1.25 * optimize, memory=3,
                   options=f"--k {args.k}, --optimize {optimize}")
    if optimize:
        fit(net, xi, targets, alpha, params=params, max_iter=optimize, objective=obj)
    red = ReducedObjective(net, obj, xi, targets, params=params)
    rep = certify(red, k=args.k, tol=args.tol, grad_tol=args.grad_tol, seed=args.seed)
    check_finite_results(J=rep.J, **{"‖∇J‖": rep.grad_norm, "λ_min": rep.lambda_min,
                                     "λ_max": rep.lambda_max})
    d = rep.as_dict()
    lines = [
        f"J = {rep.J:.10g} over {rep.n_params} parameters ({', '.join(rep.parameters)}), "
        f"loss {loss}, α = {alpha:g}" + (f" (after {optimize} L-BFGS iterations)"
                                        if optimize else ""),
        f"‖∇J‖ = {rep.grad_norm:.3e} (critical if ≤ {rep.grad_tol:g})",
        f"λ_min = {rep.lambda_min:.8g}, λ_max = {rep.lambda_max:.8g} "
        f"({rep.lanczos_steps} Lanczos steps{', exact' if rep.exact else ''}; Ritz residuals "
        f"{rep.residual_min:.1e}, {rep.residual_max:.1e}); tol = {rep.tol:.2e}",
        f"verdict: {rep.verdict}",
    ]
    if rep.descent is not None:
        dc = rep.descent
        lines.append(
            "descent along the λ_min eigenvector: " + (
                f"J decreases by {dc.best_decrease:.4e} at step {dc.best_step:.3g}"
                if dc.decreased else "no decrease found (check tolerances)"))
    payload = {"analysis": "hessian", "loss": loss, "alpha": alpha, "beta": args.beta,
               "optimized_iterations": optimize, **d}
    return finish(args, "hessian", payload, "\n".join(lines),
                  {"hessian.png": lambda path: plot_hessian(rep, red, path)})
