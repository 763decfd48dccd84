"""``pdenets analyze``: the analysis toolkit on the command line (MODEL.md §3, §6, §9, §1).

``analyze`` has its own sub-commands, one module each, imported from :data:`ANALYZERS`::

    pdenets analyze stability        MODEL | --example NAME  [--data FILE]  [--json] [--out DIR]
    pdenets analyze hessian          MODEL --data FILE | --example NAME  [--params ...]
    pdenets analyze controllability  MODEL --data FILE | --example NAME  [--alphas ...]
    pdenets analyze steady-state     MODEL | --example NAME  [--depth t]

**Extension hook.** For each ``name`` in :data:`ANALYZERS` the module
``pdenets.cli.analyze_<name>`` is imported if it exists (a missing module is skipped; any
other import error propagates) and its ``register(analyze_subparsers)`` is called with the
``argparse`` sub-parsers object of ``analyze``. A sub-command sets ``func`` (via
``set_defaults``) to a callable ``func(args) -> int`` and may use the helpers of this module:
:func:`add_source_args` / :func:`load_case` (model file or built-in example, ``--data``,
``--width``, ``--steps``), :func:`load_data` (data files, via :func:`pdenets.data.load_xy`) and
:func:`finish` (report on stdout — exactly one JSON object with ``--json`` — and plots plus
``report.json`` written atomically into ``--out``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import _limits
from ..errors import PdenetsError
from ..network import ContinuumNetwork
from ._common import add_json_flag, add_out_arguments, check_result, emit, output_directory

#: optional sub-sub-command modules ``analyze_<name>``, in --help order
ANALYZERS = ("stability", "hessian", "controllability", "steady_state", "pmp")


def register(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="stability, Hessian certification, controllability, steady states",
        description="Analysis toolkit (MODEL.md §3 stability, §6 second-order conditions, "
        "§9 controllability, §1 steady states). Each analysis prints a report (--json: one "
        "JSON object) and writes plots and report.json into --out.",
    )
    asub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    for name in ANALYZERS:
        modname = f"{__package__}.analyze_{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue  # optional analysis not installed/built
            raise
        mod.register(asub)
    p.set_defaults(func=lambda args: _help(p))


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 0


# ---------------------------------------------------------------------------------------------
# Built-in example cases (small problems whose answers are known; see docs/analysis.md)
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A model with data and the analysis defaults that suit it."""

    net: ContinuumNetwork
    inputs: np.ndarray
    targets: np.ndarray | None = None
    params: str = "controls"
    alpha: float = 0.0
    loss: str = "mse"
    optimize: int = 0
    note: str = ""
    options: dict = field(default_factory=dict)


def _cell_net(kind: str, act: str, *, n: int = 4, size: int = 3, intervals: int = 2,
              eps: float = 0.0, w=None, b=None, T: float = 1.0, readout=None, steps: int = 4,
              width: int = 8, basis: str = "linear"):
    from ..controls import GridControls
    from ..dynamics import make_dynamics
    from ..integrators import RK4
    from ..lifting import PiecewiseConstantLifting
    from ..network import ContinuumNetwork, Discretization
    from ..quadrature import Midpoint
    from ..readout import CellAverageReadout

    ctrl = GridControls(1, size, intervals, T, basis, w=w, b=b)
    return ContinuumNetwork(ctrl, make_dynamics(kind, act, eps), PiecewiseConstantLifting(n),
                            readout or CellAverageReadout(n),
                            Discretization(Midpoint(width), RK4(), steps))


def _ex_convex() -> Case:
    g = torch.Generator().manual_seed(0)
    net = _cell_net("standard", "identity", n=4, readout=None)
    xi = torch.randn(5, 4, generator=g, dtype=torch.float64).numpy()
    y = torch.randn(5, 4, generator=g, dtype=torch.float64).numpy()
    return Case(net, xi, y, params="controls.b", alpha=0.05, optimize=200,
                note="σ = identity, w ≡ 0 fixed, b optimized: J is a strictly convex quadratic")


def _ex_saddle() -> Case:
    from ..readout import LinearReadout

    net = _cell_net("standard", "identity", size=2, intervals=1, basis="constant", T=1.5,
                    readout=LinearReadout(1, 1, 2))
    return Case(net, np.zeros((1, 4)), np.full((1, 1), 2.0), params="controls.b,readout.c",
                alpha=0.0, note="y = T⟨c, b⟩ with u(0) = 0: a bilinear saddle at (b, c) = 0")


def _ex_controllable() -> Case:
    g = torch.Generator().manual_seed(1)
    teacher = _cell_net("standard", "identity",
                        w=torch.randn(3, 3, 3, generator=g, dtype=torch.float64),
                        b=torch.randn(3, 3, generator=g, dtype=torch.float64))
    xi = torch.randn(4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(xi)
    return Case(_cell_net("standard", "identity"), xi.numpy(), y.numpy(),
                options={"alphas": "1e-1,1e-2,1e-3,1e-4,1e-6", "horizons": "0.5,1,2",
                         "samples": "1,2,4"},
                note="σ = identity, targets produced by a teacher network: reachable")


def _ex_obstructed() -> Case:
    g = torch.Generator().manual_seed(2)
    xi = (torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.5).numpy()
    return Case(_cell_net("selection", "tanh"), xi, -0.5 * np.ones((3, 4)),
                options={"alphas": "1e-1,1e-2,1e-4,1e-6", "horizons": "0.5,1,2",
                         "samples": "1,2,3"},
                note="selection u' = u tanh(z) keeps u > 0: negative targets are unreachable")


def _ex_steady(a: float) -> Callable[[], Case]:
    def build() -> Case:
        from ..controls import GridControls

        net = _cell_net("standard", "identity", eps=0.05, width=16, intervals=1,
                        basis="constant", size=2, steps=16)
        c = GridControls.constant(a, 0.5)
        net.controls = c
        return Case(net, np.zeros((1, 4)),
                    note=f"σ = identity, w ≡ {a:g}, b ≡ 0.5, ε = 0.05: spectrum "
                    f"{{{a:g}}} ∪ {{ε μ_j}} (Neumann eigenvalues μ_j)")

    return build


def _ex_demo(name: str) -> Callable[[], Case]:
    def build() -> Case:
        from ..examples import example_network

        net, xi = example_network(name)
        return Case(net, np.asarray(xi), note=f"pdenets.examples {name!r}")

    return build


EXAMPLES: dict[str, Callable[[], Case]] = {
    "convex": _ex_convex,
    "saddle": _ex_saddle,
    "controllable": _ex_controllable,
    "obstructed": _ex_obstructed,
    "stable": _ex_steady(-1.0),
    "unstable": _ex_steady(1.0),
    "demo1d": _ex_demo("demo1d"),
    "demo2d": _ex_demo("demo2d"),
}


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def load_data(path: str, need_targets: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a data file: an ``.npz`` with arrays ``x`` (inputs, ``(K, n)`` or ``(K, p, q)``)
    and ``y`` (targets, ``(K, m)`` values or ``(K,)`` integer labels), through the one
    hardened reader of data files, :func:`pdenets.data.load_xy`."""
    from ..data import load_xy

    return load_xy(path, "data", need_targets, suffixes=(".npz",))


def add_source_args(p: argparse.ArgumentParser, data_help: str = "data (.npz with x, y)") -> None:
    """Model file or ``--example``, ``--data``, ``--width``, ``--steps``, ``--out``, ``--json``."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("model", nargs="?", help="model file (.safetensors)")
    src.add_argument("--example", choices=sorted(EXAMPLES), help="a built-in example case")
    p.add_argument("--data", help=data_help)
    p.add_argument("--width", type=int, help="width nodes per axis (default: the model's)")
    p.add_argument("--steps", type=int, help="depth steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of random directions")
    add_out_arguments(p, f"analysis-{p.prog.split()[-1]}",
                      help="output directory for plots and report.json (default: analysis-<name>)")
    add_json_flag(p)


def load_case(args, need_targets: bool = False, need_data: bool = True) -> Case:
    """The model (file or example) and data of an analysis, with ``--width/--steps`` applied.

    A model file needs ``--data`` unless ``need_data`` is False; an example brings its own
    data, which ``--data`` replaces."""
    from ..modelfile import load_model
    from ..network import Discretization

    if args.model is None and args.example is None:
        raise PdenetsError("give a model file or --example NAME")
    if args.model is not None:
        net = load_model(args.model)
        if args.data is None and (need_data or need_targets):
            raise PdenetsError("--data FILE is required with a model file")
        case = Case(net, np.zeros((0,)))
    else:
        case = EXAMPLES[args.example]()
    if args.data is not None:
        x, y = load_data(args.data, need_targets)
        case.inputs, case.targets = x, y
    if need_targets and case.targets is None:
        raise PdenetsError(f"this analysis needs targets; example {args.example!r} has none — "
                           f"give --data FILE with arrays x and y")
    net = case.net
    d = net.discretization
    width = d.width
    if args.width is not None:
        if args.width < 1:
            raise PdenetsError(f"--width must be a positive integer, got {args.width}")
        from ..quadrature import make_rule

        try:
            width = make_rule(d.width.name, args.width, net.dim)
        except PdenetsError as e:
            raise PdenetsError(f"--width {args.width}: {e}") from None
    steps = d.steps if args.steps is None else args.steps
    net.discretization = Discretization(width, d.solver, steps)
    return case


def check_analysis(net, batch: int, what: str, *, work: float, memory: float = 1.0,
                   tape: bool = True, options: str = "", extra: _limits.Cost | None = None,
                   ) -> None:
    """Refuse an analysis whose estimate — ``work`` recorded forward solves (``tape``: with
    their gradient) of ``batch`` inputs at the network's discretization, ``memory`` × the
    memory of one, plus ``extra`` — exceeds the limits of :mod:`pdenets._limits`.
    ``options`` names the analysis options that scale the work (e.g. ``"--k 30"``)."""
    d = net.discretization
    sizes = (f"--width {'x'.join(map(str, d.width.sizes))}, --steps {d.steps}, "
             f"{batch} sample(s)" + (f", {options}" if options else ""))
    cost = _limits.network_cost(net, d, batch, tape=tape).times(memory, work)
    _limits.check_cost(cost + (extra or _limits.Cost()), sizes, what)


def check_finite_results(**values) -> None:
    """Raise when any named result (number or tensor) is NaN or Inf (once per analysis)."""
    for name, v in values.items():
        check_result(v, f"the result {name}")


def as_targets(net, targets: np.ndarray | None, inputs) -> torch.Tensor:
    """Float targets of the network's output shape; integer labels become one-hot vectors."""
    if targets is None:
        raise PdenetsError("this analysis needs targets: give --data FILE with arrays x and y")
    y = np.asarray(targets)
    m = net.readout.outputs
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and m > 1:
        if y.min() < 0 or y.max() >= m:
            raise PdenetsError(f"labels must lie in [0, {m - 1}] for {m} outputs")
        y = np.eye(m)[y]
    y = y.reshape(len(y), -1) if y.ndim != 2 else y
    if y.shape[1] != m:
        raise PdenetsError(f"targets have {y.shape[1]} values per sample; the model has {m} "
                           f"outputs")
    return torch.as_tensor(y, dtype=torch.float64)


def float_list(text: str | None, name: str) -> list[float]:
    """Parse ``"1e-2,1e-4"`` (empty → [])."""
    if not text:
        return []
    try:
        out = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise PdenetsError(f"{name} must be a comma-separated list of numbers, got {text!r}") \
            from None
    if any(not math.isfinite(v) for v in out):
        raise PdenetsError(f"{name} must be finite numbers, got {text!r}")
    return out


def finish(args, name: str, payload: dict, text: str,
           plots: dict[str, Callable[[Path], None]]) -> int:
    """Write ``plots`` (file name → writer) and ``report.json`` into ``--out`` atomically, then
    print the report (one JSON object with ``--json``)."""
    out = args.out or f"analysis-{name}"
    payload = dict(payload)
    payload["out"] = str(out)
    payload["files"] = ["report.json", *plots]
    payload = _clean(payload)
    with output_directory(args, out) as tmp:
        for fname, writer in plots.items():
            writer(tmp / fname)
        (tmp / "report.json").write_text(json.dumps(payload, indent=1, default=_jsonable))
    emit(args, payload, text + f"\nwrote {', '.join(payload['files'])} into {out}/")
    return 0


def _clean(o):
    """Non-finite floats → None (strict JSON), tensors/arrays → lists, recursively."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, torch.Tensor | np.ndarray):
        return _clean(np.asarray(o.detach().cpu() if isinstance(o, torch.Tensor) else o).tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | torch.Tensor):
        return np.asarray(o).tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
