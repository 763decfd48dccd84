"""``pdenets evaluate``: run a trained model on a dataset at any discretization."""

from __future__ import annotations

from .. import _limits
from ..errors import PdenetsError
from ..integrators import SOLVERS
from ..quadrature import RULES
from ._common import add_json_flag, check_result, emit


def add_discretization_flags(p) -> None:
    p.add_argument("--width", type=int, help="width nodes per axis (default: the model's)")
    p.add_argument("--steps", type=int, help="depth steps (default: the model's)")
    p.add_argument("--method", choices=sorted(SOLVERS), help="depth integrator")
    p.add_argument("--rule", choices=sorted(RULES), help="width quadrature rule")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and loss of a model on a dataset split",
                       description="Evaluate MODEL on the test split (by default) of a named "
                       "dataset or data file, at any width/depth discretization.")
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("--data", help="dataset name or .npz/.csv file (default: the one it was "
                   "trained on)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    add_discretization_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def load_model_and_data(args):
    """The model, its dataset (same splits as in training) and the discretization asked."""
    from ..data import load_dataset_config
    from ..modelfile import load_model

    net = load_model(args.model)
    dcfg = dict(getattr(net, "extra", {}).get("data", {}))
    name = args.data or dcfg.get("name")
    if not name:
        raise PdenetsError("--data is required (the model file does not name its dataset)")
    if args.data and args.data != dcfg.get("name"):
        dcfg = {}
    ds = load_dataset_config({**dcfg, "name": name})
    if tuple(ds.input_shape) != tuple(net.lifting.shape) and \
            (int(__import__("math").prod(ds.input_shape)) != net.lifting.n_features):
        raise PdenetsError(f"data {name!r} has inputs of shape {ds.input_shape}; the model "
                           f"expects {tuple(net.lifting.shape)}")
    if ds.n_outputs != net.readout.outputs and ds.task == "classification":
        raise PdenetsError(f"data {name!r} has {ds.n_outputs} classes; the model has "
                           f"{net.readout.outputs} outputs")
    disc = checked_discretization(net, args)
    return net, ds, disc


def checked_discretization(net, args):
    """The model's discretization with ``--width/--steps/--method/--rule`` applied; a width
    the quadrature rule refuses is reported as an error of ``--width``."""
    from ..training import discretization_from

    for flag in ("width", "steps"):
        v = getattr(args, flag, None)
        if v is not None and v < 1:
            raise PdenetsError(f"--{flag} must be a positive integer, got {v}")
    try:
        return discretization_from(net, args.width, args.steps, args.method, args.rule)
    except PdenetsError as e:
        if args.width is None:
            raise
        raise PdenetsError(f"--width {args.width}: {e}") from None


def disc_sizes(disc) -> str:
    """``"--width 8x8, --steps 16"``: the sizes of a discretization, for size-limit messages."""
    return f"--width {'x'.join(map(str, disc.width.sizes))}, --steps {disc.steps}"


def check_forward(net, disc, n: int, what: str, chunk: int = 2048) -> None:
    """Refuse forward solves of ``n`` inputs (in chunks of ``chunk``) whose memory or time
    estimate exceeds the limits of :mod:`pdenets._limits`."""
    sizes = f"{disc_sizes(disc)}, {n} input(s)"
    _limits.check_memory(_limits.network_cost(net, disc, min(n, chunk)).nbytes, sizes, what)
    _limits.check_flops(_limits.network_cost(net, disc, n).flops, sizes, what)


def run(args) -> int:
    from ..training import evaluate

    net, ds, disc = load_model_and_data(args)
    x, y = ds.tensors(args.split, next(net.parameters()).dtype)
    if len(x) == 0:
        raise PdenetsError(f"the {args.split} split of {ds.name!r} is empty")
    check_forward(net, disc, len(x), f"evaluating the {args.split} split")
    r = evaluate(net, x, y, ds.loss, disc)
    check_result(r["loss"], f"the {ds.loss} loss on the {args.split} split")
    payload = {"model": args.model, "data": ds.name, "split": args.split, "samples": len(x),
               "accuracy": r["accuracy"], "loss": r["loss"], "width_nodes": disc.width.sizes,
               "rule": disc.width.name, "steps": disc.steps, "method": disc.solver.name}
    acc = f"accuracy {100 * r['accuracy']:.2f}%, " if r["accuracy"] == r["accuracy"] else ""
    emit(args, payload, f"{ds.name} {args.split} ({len(x)} samples) at width "
         f"{'x'.join(map(str, disc.width.sizes))} ({disc.width.name}), {disc.steps} "
         f"{disc.solver.name} steps: {acc}loss {r['loss']:.4f}")
    return 0
