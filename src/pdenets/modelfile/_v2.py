"""Model-file format version 2: structured kernels and channels (MODEL.md §10).

Written only for networks that version 1 cannot describe (a KernelControls kernel, or
channels); everything else is still written as version 1. The metadata is version 1's with::

  "controls": {"kind": "kernel", "size": [...], "intervals": 4, "time_basis": "linear",
               "space_basis": "linear", "channels": C,
               "kernel": {"kind": "dense", "size": [...], "space_basis": ...}
                       | {"kind": "conv", "radius": r, "size": [...], "space_basis": ...}
                       | {"kind": "lowrank", "rank": R, "size": [...], "space_basis": ...}
                       | {"kind": "sum", "parts": [<kernel>, ...]}}
  "lifting":  {"kind": "channels", "in_channels": C_in, "channels": C, "base": <lifting>}
  "readout":  {..., "channels": C}   (optional, default 1)

and the tensors are the network's parameters under their module names (K knots, C channels,
Nc = prod(controls.size), Mk = prod(conv size))::

  controls.b (K, C, Nc); controls.kernel.w (K, C, C, Nc_k, Nc_k) [dense];
  controls.kernel.k (K, C, C, Mk) [conv]; controls.kernel.g / .h (K, C, R, Nc_k) [lowrank];
  controls.kernel.parts.<i>.<name> [sum]; lifting.mix (C, C_in); lifting.base.phi (learnable
  base); readout.c (m, C, Nc_r) (C > 1) or (m, Nc_r); readout.d (m,).

The expected tensor shapes are derived from the metadata and compared with the file's tensors
before anything is allocated.
"""

from __future__ import annotations

import torch

from ..activations import Activation
from ..controls import GridControls
from ..dynamics import make_dynamics
from ..errors import ModelFileError, PdenetsError
from ..integrators import make_solver
from ..lifting import LearnableLifting, PiecewiseConstantLifting
from ..network import ContinuumNetwork, Discretization
from ..quadrature import make_rule
from ..readout import CellAverageReadout, LinearReadout
from ._fields import _get, _int_list, _opt_str
from ._limits import MAX_OUTPUTS, MAX_STEPS, _check_tensors

VERSION_2 = 2
MAX_CHANNELS = 256
MAX_RANK = 4096


def needs_v2(net: ContinuumNetwork) -> bool:
    """Whether ``net`` needs format version 2 (structured kernel or channels)."""
    from ..controls import GridControls as _GC

    return (not isinstance(net.controls, _GC) or getattr(net.lifting, "channels", 1) > 1
            or getattr(net.lifting, "in_channels", 1) > 1
            or getattr(net.readout, "channels", 1) > 1)


def network_tensors_v2(net: ContinuumNetwork) -> dict[str, torch.Tensor]:
    """The parameters of ``net`` under their module names (format version 2)."""
    return {k: v.detach().cpu().contiguous() for k, v in net.named_parameters()}


def _v2_int(d: dict, key: str, where: str, lo: int, hi: int) -> int:
    v = _get(d, key, int, where)
    if not lo <= v <= hi:
        raise ModelFileError(f"model file: {where}.{key} = {v} is out of range [{lo}, {hi}]")
    return v


def _v2_kernel_shapes(k: dict, dim: int, K: int, C: int, prefix: str, depth: int = 0
                      ) -> dict[str, tuple[int, ...]]:
    import math

    if not isinstance(k, dict):
        raise ModelFileError(f"model file: {prefix} must be an object")
    kind = _get(k, "kind", str, prefix)
    if kind == "sum":
        parts = _get(k, "parts", list, prefix)
        if depth > 0 or not 1 <= len(parts) <= 4:
            raise ModelFileError(f"model file: {prefix}.parts must list 1-4 kernels (no "
                                 f"nesting)")
        out: dict[str, tuple[int, ...]] = {}
        for i, p in enumerate(parts):
            out.update(_v2_kernel_shapes(p, dim, K, C, f"{prefix}.parts.{i}", depth + 1))
        return out
    size = math.prod(_int_list(k.get("size"), f"{prefix}.size", dim))
    _opt_str(k, "space_basis", prefix)
    if kind == "dense":
        return {f"{prefix}.w": (K, C, C, size, size)}
    if kind == "conv":
        r = _get(k, "radius", float, prefix)
        if not 0.0 < r <= 1.0:
            raise ModelFileError(f"model file: {prefix}.radius must lie in (0, 1], got {r}")
        return {f"{prefix}.k": (K, C, C, size)}
    if kind == "lowrank":
        R = _v2_int(k, "rank", prefix, 1, MAX_RANK)
        return {f"{prefix}.g": (K, C, R, size), f"{prefix}.h": (K, C, R, size)}
    raise ModelFileError(f"model file: unknown kernel kind {kind!r}")


def _v2_lifting_shapes(lm: dict, dim: int, prefix: str = "lifting", top: bool = True
                       ) -> dict[str, tuple[int, ...]]:
    import math

    kind = _get(lm, "kind", str, prefix)
    if kind == "channels" and top:
        cin = _v2_int(lm, "in_channels", prefix, 1, MAX_CHANNELS)
        c = _v2_int(lm, "channels", prefix, 1, MAX_CHANNELS)
        return {f"{prefix}.mix": (c, cin),
                **_v2_lifting_shapes(_get(lm, "base", dict, prefix), dim, f"{prefix}.base",
                                     False)}
    shape = _int_list(lm.get("shape"), f"{prefix}.shape", dim)
    if kind == "piecewise_constant":
        return {}
    if kind == "learnable":
        nl = math.prod(_int_list(lm.get("size"), f"{prefix}.size", dim))
        return {f"{prefix}.phi": (math.prod(shape), nl)}
    raise ModelFileError(f"model file: unknown lifting kind {kind!r}")


def _v2_lifting(lm: dict, dim: int, dtype, top: bool = True):
    from ..lifting import ChannelLifting

    kind = lm["kind"]
    if kind == "channels" and top:
        base = _v2_lifting(lm["base"], dim, dtype, False)
        return ChannelLifting(base, lm["in_channels"], lm["channels"], dtype=dtype)
    shape = _int_list(lm.get("shape"), "lifting.shape", dim)
    if kind == "piecewise_constant":
        return PiecewiseConstantLifting(shape)
    return LearnableLifting(shape, _int_list(lm.get("size"), "lifting.size", dim), dtype,
                            basis=_opt_str(lm, "basis", "lifting"))


def _build_v2(meta: dict, tensors: dict[str, torch.Tensor], activation: Activation | None):
    """Build a network from a version-2 model file (see the module docstring)."""
    import math

    from ..kernels import KernelControls, kernel_from_config

    T = _get(meta, "T", float, "model")
    if not (math.isfinite(T) and T > 0):
        raise ModelFileError(f"model file: T must be a positive number, got {T}")
    dim = _get(meta, "dim", int, "model")
    if dim not in (1, 2):
        raise ModelFileError(f"model file: dim must be 1 or 2, got {dim}")
    dyn = _get(meta, "dynamics", dict, "model")
    act_name = _get(dyn, "activation", str, "dynamics")
    act = activation if (activation is not None and activation.name == act_name) else act_name
    cm = _get(meta, "controls", dict, "model")
    lm = _get(meta, "lifting", dict, "model")
    rm = _get(meta, "readout", dict, "model")
    dm = _get(meta, "discretization", dict, "model")
    ckind = _get(cm, "kind", str, "controls")
    intervals = _v2_int(cm, "intervals", "controls", 1, MAX_STEPS)
    tb = _get(cm, "time_basis", str, "controls")
    K = intervals + (1 if tb == "linear" else 0)
    nc = math.prod(_int_list(cm.get("size"), "controls.size", dim))
    expected: dict[str, tuple[int, ...]] = {}
    if ckind == "grid":
        C = 1
        expected.update({"controls.w": (K, nc, nc), "controls.b": (K, nc)})
    elif ckind == "kernel":
        C = _v2_int(cm, "channels", "controls", 1, MAX_CHANNELS)
        expected["controls.b"] = (K, C, nc)
        expected.update(_v2_kernel_shapes(_get(cm, "kernel", dict, "controls"), dim, K, C,
                                          "controls.kernel"))
    else:
        raise ModelFileError(f"model file: unknown controls kind {ckind!r}")
    expected.update(_v2_lifting_shapes(lm, dim))
    rkind = _get(rm, "kind", str, "readout")
    rC = _v2_int(rm, "channels", "readout", 1, MAX_CHANNELS) if "channels" in rm else 1
    if rkind == "linear":
        m = _v2_int(rm, "outputs", "readout", 1, MAX_OUTPUTS)
        nr = math.prod(_int_list(rm.get("size"), "readout.size", dim))
        expected["readout.c"] = (m, nr) if rC == 1 else (m, rC, nr)
        expected["readout.d"] = (m,)
    elif rkind == "cell_average":
        cells = _int_list(rm.get("cells"), "readout.cells", dim)
        if math.prod(cells) > MAX_OUTPUTS:
            raise ModelFileError(f"model file: readout.cells {list(cells)} is too large")
    else:
        raise ModelFileError(f"model file: unknown readout kind {rkind!r}")
    steps = _v2_int(dm, "steps", "discretization", 1, MAX_STEPS)
    # compare with the file's own tensors before allocating anything
    dtypes = _check_tensors(tensors, expected)
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    try:
        dynamics = make_dynamics(_get(dyn, "kind", str, "dynamics"), act,
                                 _get(dyn, "eps", float, "dynamics"))
        size = _int_list(cm.get("size"), "controls.size", dim)
        sb = _opt_str(cm, "space_basis", "controls")
        ctrl: GridControls | KernelControls
        if ckind == "grid":
            ctrl = GridControls(dim, size, intervals, T, tb, dtype=dtype, space_basis=sb)
        else:
            kern = kernel_from_config(cm["kernel"], dim, intervals, T, tb, C, dtype)
            ctrl = KernelControls(kern, size, space_basis=sb)
        lifting = _v2_lifting(lm, dim, dtype)
        readout: LinearReadout | CellAverageReadout
        if rkind == "linear":
            readout = LinearReadout(rm["outputs"], dim,
                                    _int_list(rm.get("size"), "readout.size", dim),
                                    dtype=dtype, basis=_opt_str(rm, "basis", "readout"),
                                    channels=rC)
        else:
            readout = CellAverageReadout(_int_list(rm.get("cells"), "readout.cells", dim), rC)
        smeta = _get(dm, "solver", dict, "discretization")
        sname = _get(smeta, "name", str, "discretization.solver")
        sopts = {k: float(v) for k, v in smeta.items() if k in ("rtol", "atol")}
        disc = Discretization(
            make_rule(_get(dm, "rule", str, "discretization"),
                      _int_list(dm.get("width"), "discretization.width", dim), dim),
            make_solver(sname, **sopts), steps)
        net = ContinuumNetwork(ctrl, dynamics, lifting, readout, disc).to(dtype)
    except ModelFileError:
        raise
    except (PdenetsError, KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"model file: {e}") from None
    params = dict(net.named_parameters())
    if set(params) != set(expected):
        raise ModelFileError("model file: the described network does not match its tensors")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(dtype))
    return net
