"""``pdenets analyze pmp``: Hamiltonian and Pontryagin residual over depth (MODEL.md §7).

::

    pdenets analyze pmp MODEL [--data NAME|FILE] [--split train|val|test] [--alpha A]
                        [--beta B] [--width N] [--steps S] [--max-samples K] [--json] [--out DIR]
    pdenets analyze pmp --example NAME

A model file is evaluated on a split (``train`` by default) of a named dataset
(:func:`pdenets.data.load_dataset`, e.g. ``digits``) or data file, with the same splits and
preprocessing as in training (by default the dataset it was trained on). α and β default to the
``[objective]`` of the ``config.toml`` next to the model file (a results directory), else 0.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ..errors import PdenetsError
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
        "pmp",
        help="Hamiltonian H(t) and PMP residual ‖∇_θH(t)‖ over depth (§7)",
        description="Pontryagin diagnostics (MODEL.md §7): the Hamiltonian H(t) along the "
        "trajectory, the pointwise residual ‖∇_θH(t)‖ (dual L² norm of the control space) at "
        "every Runge-Kutta stage, the knot-projected residual ∫φ_j∇_θH dt and the discrete "
        "identity ∇_θJ = −∫φ_j∇_θH dt. Writes pmp.png.",
    )
    add_source_args(p, data_help="dataset name (e.g. digits) or data file; default: the "
                    "dataset the model was trained on")
    p.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="data split (default: train — the PMP concerns the training objective)")
    p.add_argument("--alpha", type=float, help="Tikhonov weight α (default: the run's "
                   "config.toml next to the model, else 0)")
    p.add_argument("--beta", type=float, help="H¹-in-depth weight β (default as for α)")
    p.add_argument("--max-samples", type=int, help="use the first K samples of the split")
    p.set_defaults(func=run)


def _run_objective(model: str) -> tuple[float, float, str]:
    cfg_path = Path(model).parent / "config.toml"
    if cfg_path.is_file():
        from .. import _limits
        from ..config import load_config

        try:
            with _limits.allow_large():  # only α, β are read: the run's sizes are not checked
                c = load_config(cfg_path)
            return c.objective.alpha, c.objective.beta, str(cfg_path)
        except PdenetsError:
            pass
    return 0.0, 0.0, ""


def run(args) -> int:
    import numpy as np

    from ..objective import Objective
    from ..pontryagin import plot_pmp, pmp_residual

    source = ""
    if args.model is not None:
        from .evaluate import load_model_and_data

        ns = argparse.Namespace(model=args.model, data=args.data, width=args.width,
                                steps=args.steps, method=None, rule=None)
        net, ds, disc = load_model_and_data(ns)
        dtype = next(net.parameters()).dtype
        x, y = ds.tensors(args.split, dtype)
        loss = ds.loss
        alpha, beta, source = _run_objective(args.model)
        data_name = f"{ds.name} ({args.split} split)"
    else:
        case = load_case(args, need_targets=True)
        net, disc = case.net, case.net.discretization
        x = torch.as_tensor(np.asarray(case.inputs), dtype=torch.float64)
        loss = case.loss
        y = as_targets(net, case.targets, case.inputs) if loss == "mse" else \
            torch.as_tensor(case.targets, dtype=torch.long)
        alpha, beta = case.alpha, 0.0
        data_name = f"example {args.example}"
    if args.alpha is not None:
        alpha = args.alpha
    if args.beta is not None:
        beta = args.beta
    if alpha < 0 or beta < 0:
        raise PdenetsError(f"--alpha and --beta must be >= 0, got {alpha}, {beta}")
    if args.max_samples is not None:
        if args.max_samples < 1:
            raise PdenetsError(f"--max-samples must be positive, got {args.max_samples}")
        x, y = x[:args.max_samples], y[:args.max_samples]
    if len(x) == 0:
        raise PdenetsError("no samples to analyze")
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise PdenetsError(f"--alpha and --beta must be finite, got {alpha}, {beta}")
    net.discretization = disc
    # forward solve keeping every stage, the adjoint sweep and ∇_θH at every stage: ~4 solves
    check_analysis(net, len(x), "the PMP diagnostics", work=4, memory=2)
    obj = Objective(loss, alpha, beta)
    rep = pmp_residual(net, x, y, obj, disc)
    check_finite_results(J=rep.J, **{"max residual": rep.max_residual})
    payload = {"analysis": "pmp", "data": data_name, "loss_function": loss,
               "objective_from": source or None, **rep.as_dict()}
    text = f"PMP diagnostics on {data_name}, loss {loss}" + (
        f" (α, β from {source})" if source else "") + "\n" + rep.summary()
    return finish(args, "pmp", payload, text, {"pmp.png": lambda path: plot_pmp(rep, path)})
