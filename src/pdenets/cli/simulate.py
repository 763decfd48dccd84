"""``pdenets simulate``: run a model (file or built-in example) and write u(x, t) and a plot."""

from __future__ import annotations

import io

import numpy as np
import torch

from .. import _limits
from ..errors import PdenetsError
from ..examples import EXAMPLES, example_network
from ..integrators import SOLVERS, make_solver
from ..modelfile import atomic_write_bytes, load_model
from ..network import Discretization
from ..quadrature import RULES, make_rule
from ._common import (
    add_json_flag,
    add_out_arguments,
    check_result,
    emit,
    load_array,
    output_directory,
)


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a model at a chosen discretization; write u(x,t) (npz) and a heatmap",
        description="Solve the forward problem (MODEL.md §1-2) for given inputs and write "
        "field.npz (u at the saved depths, nodes, weights, outputs) and field.png.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("model", nargs="?", help="model file (.safetensors)")
    src.add_argument("--example", choices=EXAMPLES, help="a built-in example model")
    p.add_argument("--input", help="inputs (.npy/.npz/.csv): shape (B, n) or (B, p, q)")
    p.add_argument("--rule", choices=sorted(RULES), help="width quadrature rule")
    p.add_argument("--width", type=int, help="width nodes per axis")
    p.add_argument("--steps", type=int, help="depth steps")
    p.add_argument("--solver", choices=sorted(SOLVERS), help="depth integrator")
    p.add_argument("--rtol", type=float, default=1e-6, help="dopri5 relative tolerance")
    p.add_argument("--atol", type=float, default=1e-8, help="dopri5 absolute tolerance")
    p.add_argument("--saves", type=int, default=33, help="number of saved depths (>= 2)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    add_out_arguments(p, "simulation")
    add_json_flag(p)
    p.set_defaults(func=run)


def _discretization(args, net) -> Discretization:
    base = net.discretization
    rule = args.rule or base.width.name
    width = args.width if args.width is not None else base.width.sizes
    if isinstance(width, int) and width < 1:
        raise PdenetsError(f"--width must be a positive integer, got {width}")
    solver_name = args.solver or base.solver.name
    opts = {"rtol": args.rtol, "atol": args.atol} if solver_name == "dopri5" else {}
    steps = args.steps if args.steps is not None else base.steps
    if steps < 1:
        raise PdenetsError(f"--steps must be a positive integer, got {steps}")
    try:
        rule_ = make_rule(rule, width, net.dim)
    except PdenetsError as e:
        raise PdenetsError(f"--width {args.width}: {e}" if args.width is not None else str(e)) \
            from None
    return Discretization(rule_, make_solver(solver_name, **opts), steps)


def _check_sizes(args, net, disc: Discretization, batch: int) -> None:
    """Memory and time estimates of the solve and the saved field (:mod:`pdenets._limits`)."""
    saves = args.saves if disc.solver.adaptive else min(args.saves, disc.steps + 1) + 1
    sizes = (f"--steps {disc.steps}, --width {'x'.join(map(str, disc.width.sizes))}, "
             f"--saves {args.saves}, {batch} input(s)")
    cost = _limits.network_cost(net, disc, batch, saves=saves)
    # the saved depths are also a Python list and a float64 array: ~64 bytes each
    cost = cost + _limits.Cost(64.0 * saves, 0.0)
    _limits.check_cost(cost, sizes, "the forward solve and its saved field")


def run(args) -> int:
    if args.model is None and args.example is None:
        raise PdenetsError("give a model file or --example NAME")
    if args.model is not None:
        net = load_model(args.model)
        if args.input is None:
            raise PdenetsError("--input is required with a model file")
        xi = load_array(args.input)
    else:
        net, xi = example_network(args.example)
        if args.input is not None:
            xi = load_array(args.input)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    net = net.to(dtype)
    disc = _discretization(args, net)
    if args.saves < 2:
        raise PdenetsError(f"--saves must be >= 2, got {args.saves}")
    if xi.ndim == 1:
        xi = xi[None, :]
    _check_sizes(args, net, disc, len(xi))
    if disc.solver.adaptive:
        saveat = list(np.linspace(0.0, net.T, args.saves))
    else:
        k = max(1, disc.steps // (args.saves - 1))
        saveat = [j * net.T / disc.steps for j in range(0, disc.steps + 1, k)]
        if saveat[-1] != net.T:
            saveat.append(net.T)
    with torch.no_grad():
        sol = net.solve(torch.as_tensor(xi, dtype=dtype), disc, saveat=saveat)
    check_result(sol.outputs, "the outputs R u(T)")
    check_result(sol.us, "the field u(x, t)")
    assert sol.us is not None and sol.outputs is not None  # saveat was given
    u = sol.us.cpu().numpy()
    nodes = sol.grid.nodes.cpu().numpy()
    outputs = sol.outputs.cpu().numpy()
    with output_directory(args) as tmp:
        buf = io.BytesIO()
        np.savez(buf, u=u, t=np.asarray(sol.ts), nodes=nodes,
                 weights=sol.grid.weights.cpu().numpy(), outputs=outputs,
                 shape=np.asarray(sol.grid.shape or (sol.grid.n,)))
        atomic_write_bytes(tmp / "field.npz", buf.getvalue())
        from ..plotting import plot_field

        plot_field(u[:, 0, :sol.grid.n], np.asarray(sol.ts), nodes, sol.grid.shape,
                   tmp / "field.png",
                   title=f"u(x,t), input 0 — {disc.width!r}, {disc.solver!r}, S={disc.steps}")
    payload = {
        "out": str(args.out), "files": ["field.npz", "field.png"],
        "width_nodes": sol.grid.n, "rule": disc.width.name, "solver": disc.solver.name,
        "steps": disc.steps, "stats": sol.stats, "batch": int(u.shape[1]),
        "saved_depths": len(sol.ts), "outputs": outputs.tolist(),
    }
    emit(args, payload,
         f"solved {u.shape[1]} input(s) at N={sol.grid.n} ({disc.width.name}), "
         f"{disc.solver.name} with {sol.stats['steps']} steps ({sol.stats['nfev']} f-evals); "
         f"wrote {args.out}/field.npz and {args.out}/field.png\noutputs:\n{outputs}")
    return 0
