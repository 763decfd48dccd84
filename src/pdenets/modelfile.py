"""Model files: a :class:`~pdenets.network.ContinuumNetwork` as safetensors + JSON (never pickle).

Format (version 1)
------------------
A standard `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its header metadata
holds one key, ``"pdenets"``, whose value is a JSON object::

    {"format": "pdenets-model", "version": 1,
     "T": 1.0, "dim": 2,
     "dynamics": {"kind": "standard"|"field"|"selection", "activation": "tanh", "eps": 0.0},
     "controls": {"kind": "grid", "size": [8, 8], "intervals": 4, "time_basis": "linear",
                  "space_basis": "linear"|"constant"},
     "lifting":  {"kind": "piecewise_constant", "shape": [8, 8]}
               | {"kind": "learnable", "shape": [...], "size": [...], "basis": "linear"},
     "readout":  {"kind": "linear", "outputs": 10, "size": [8, 8], "basis": "constant"}
               | {"kind": "cell_average", "cells": [2, 5]},
     "discretization": {"rule": "midpoint", "width": [8, 8], "dim": 2,
                        "solver": {"name": "rk4"}, "steps": 8},
     "extra": {...}}                       # free-form (training info), optional

(``space_basis``/``basis`` are optional, default ``"linear"``: files written before they
existed load unchanged) and the tensors (float32 or float64; Nc = prod(controls.size),
K = intervals (+1 if linear); "vertices" are cells for the constant space basis):

====================  ==================  =============================================
name                  shape               meaning
====================  ==================  =============================================
``controls.w``        (K, Nc, Nc)         w at control vertices (x row-major, y) per knot
``controls.b``        (K, Nc)             b at control vertices per knot
``readout.c``         (m, Nc_r)           c_j at readout vertices (linear readout only)
``readout.d``         (m,)                d_j (linear readout only)
``lifting.phi``       (n, Nc_l)           φ_i at lifting vertices (learnable lifting only)
====================  ==================  =============================================

Any other tensor, a missing one, a wrong shape, non-finite values, an unknown key or option is
rejected with :class:`~pdenets.errors.ModelFileError`. Files are written atomically (temporary
file + rename), so an interrupted save never leaves a truncated model behind.

Format version 2 (structured kernels and channels, MODEL.md §10) is written only for networks
that version 1 cannot describe; it is documented with its loader at the end of this module.
Version-1 files load unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .activations import Activation
from .controls import GridControls
from .dynamics import make_dynamics
from .errors import ModelFileError, PdenetsError
from .integrators import make_solver
from .lifting import LearnableLifting, PiecewiseConstantLifting
from .network import ContinuumNetwork, Discretization
from .quadrature import make_rule
from .readout import CellAverageReadout, LinearReadout

FORMAT = "pdenets-model"
VERSION = 1
MAX_FILE_BYTES = 2**31


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-directory temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def network_tensors(net: ContinuumNetwork) -> dict[str, torch.Tensor]:
    """The tensors of ``net`` under their model-file names."""
    out = {
        "controls.w": net.controls.w, "controls.b": net.controls.b,
    }
    if isinstance(net.readout, LinearReadout):
        out["readout.c"], out["readout.d"] = net.readout.c, net.readout.d
    if isinstance(net.lifting, LearnableLifting):
        out["lifting.phi"] = net.lifting.phi
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def save_model(net: ContinuumNetwork, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Save ``net`` to ``path`` in the format of the module docstring (atomic write)."""
    if not net.dynamics.activation.builtin:
        raise PdenetsError(
            f"cannot save custom activation {net.dynamics.activation.name!r} by value; "
            f"save works for built-in activations (pass the custom one again at load time)"
        )
    if needs_v2(net):
        meta = {"format": FORMAT, "version": VERSION_2, **net.config(), "extra": extra or {}}
        data = st_save(network_tensors_v2(net), metadata={"pdenets": json.dumps(meta)})
        atomic_write_bytes(path, data)
        return
    meta = {"format": FORMAT, "version": VERSION, **net.config(), "extra": extra or {}}
    data = st_save(network_tensors(net), metadata={"pdenets": json.dumps(meta)})
    atomic_write_bytes(path, data)


def _get(d: dict, key: str, typ, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ModelFileError(f"model file: missing key {where}.{key}")
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise ModelFileError(f"model file: {where}.{key} has the wrong type ({type(v).__name__})")
    return v


def _int_list(v, where: str, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or not all(
        isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 65536 for k in v
    ):
        raise ModelFileError(f"model file: {where} must be a list of positive integers")
    if length is not None and len(v) != length:
        raise ModelFileError(f"model file: {where} must have {length} entries")
    return tuple(v)


MAX_STEPS = 1_000_000
MAX_OUTPUTS = 2**20


def _check_sizes_against_tensors(meta, cmeta, lmeta, rmeta, dmeta, dim, tensors) -> None:
    """Reject sizes in the metadata that would allocate more than the file's own tensors hold
    (a hostile header must not make the loader allocate gigabytes) before building anything."""
    import math

    def numel(name: str) -> int:
        t = tensors.get(name)
        return -1 if t is None else t.numel()

    size = _int_list(cmeta.get("size"), "controls.size", dim)
    intervals = _get(cmeta, "intervals", int, "controls")
    if not 1 <= intervals <= MAX_STEPS:
        raise ModelFileError(f"model file: controls.intervals {intervals} is out of range")
    K = intervals + (1 if cmeta.get("time_basis") == "linear" else 0)
    nc = math.prod(size)
    if numel("controls.w") != K * nc * nc or numel("controls.b") != K * nc:
        raise ModelFileError(
            f"model file: tensors controls.w/controls.b do not hold the {K}×{nc}×{nc} and "
            f"{K}×{nc} values that controls.size/intervals describe"
        )
    if rmeta.get("kind") == "linear":
        m = _get(rmeta, "outputs", int, "readout")
        nr = math.prod(_int_list(rmeta.get("size"), "readout.size", dim))
        if not 1 <= m <= MAX_OUTPUTS or numel("readout.c") != m * nr:
            raise ModelFileError("model file: tensor readout.c does not match readout.outputs/size")
    elif rmeta.get("kind") == "cell_average":
        cells = _int_list(rmeta.get("cells"), "readout.cells", dim)
        if math.prod(cells) > MAX_OUTPUTS:
            raise ModelFileError(f"model file: readout.cells {list(cells)} is too large")
    if lmeta.get("kind") == "learnable":
        n = math.prod(_int_list(lmeta.get("shape"), "lifting.shape", dim))
        nl = math.prod(_int_list(lmeta.get("size"), "lifting.size", dim))
        if numel("lifting.phi") != n * nl:
            raise ModelFileError("model file: tensor lifting.phi does not match lifting.shape/size")
    steps = _get(dmeta, "steps", int, "discretization")
    if not 1 <= steps <= MAX_STEPS:
        raise ModelFileError(f"model file: discretization.steps {steps} is out of range "
                             f"[1, {MAX_STEPS}]")


def _opt_str(d: dict, key: str, where: str, default: str = "linear") -> str:
    """An optional string entry (files written before the entry existed lack it)."""
    return _get(d, key, str, where) if key in d else default


def _build(meta: dict, tensors: dict[str, torch.Tensor], activation: Activation | None):
    if meta.get("format") != FORMAT:
        raise ModelFileError("model file: not a pdenets model (metadata 'format' is wrong)")
    if meta.get("version") == VERSION_2:
        return _build_v2(meta, tensors, activation)
    if meta.get("version") != VERSION:
        raise ModelFileError(f"model file: unsupported format version {meta.get('version')!r}")
    T = _get(meta, "T", float, "model")
    dim = _get(meta, "dim", int, "model")
    if dim not in (1, 2):
        raise ModelFileError(f"model file: dim must be 1 or 2, got {dim}")
    dyn = _get(meta, "dynamics", dict, "model")
    act_name = _get(dyn, "activation", str, "dynamics")
    act = activation if (activation is not None and activation.name == act_name) else act_name
    cmeta = _get(meta, "controls", dict, "model")
    if _get(cmeta, "kind", str, "controls") != "grid":
        raise ModelFileError(f"model file: unknown controls kind {cmeta['kind']!r}")
    lmeta = _get(meta, "lifting", dict, "model")
    rmeta = _get(meta, "readout", dict, "model")
    dmeta = _get(meta, "discretization", dict, "model")
    _check_sizes_against_tensors(meta, cmeta, lmeta, rmeta, dmeta, dim, tensors)
    try:
        dynamics = make_dynamics(_get(dyn, "kind", str, "dynamics"), act,
                                 _get(dyn, "eps", float, "dynamics"))
        size = _int_list(cmeta.get("size"), "controls.size", dim)
        expected: dict[str, tuple[int, ...]] = {}
        ctrl = GridControls(dim, size, _get(cmeta, "intervals", int, "controls"), T,
                            _get(cmeta, "time_basis", str, "controls"),
                            space_basis=_opt_str(cmeta, "space_basis", "controls"))
        expected["controls.w"] = tuple(ctrl.w.shape)
        expected["controls.b"] = tuple(ctrl.b.shape)
        lkind = _get(lmeta, "kind", str, "lifting")
        shape = _int_list(lmeta.get("shape"), "lifting.shape", dim)
        if lkind == "piecewise_constant":
            lifting = PiecewiseConstantLifting(shape)
        elif lkind == "learnable":
            lifting = LearnableLifting(shape, _int_list(lmeta.get("size"), "lifting.size", dim),
                                       basis=_opt_str(lmeta, "basis", "lifting"))
            expected["lifting.phi"] = tuple(lifting.phi.shape)
        else:
            raise ModelFileError(f"model file: unknown lifting kind {lkind!r}")
        rkind = _get(rmeta, "kind", str, "readout")
        if rkind == "linear":
            readout = LinearReadout(_get(rmeta, "outputs", int, "readout"), dim,
                                    _int_list(rmeta.get("size"), "readout.size", dim),
                                    basis=_opt_str(rmeta, "basis", "readout"))
            expected["readout.c"] = tuple(readout.c.shape)
            expected["readout.d"] = tuple(readout.d.shape)
        elif rkind == "cell_average":
            readout = CellAverageReadout(_int_list(rmeta.get("cells"), "readout.cells", dim))
        else:
            raise ModelFileError(f"model file: unknown readout kind {rkind!r}")
        smeta = _get(dmeta, "solver", dict, "discretization")
        sname = _get(smeta, "name", str, "discretization.solver")
        sopts = {k: float(v) for k, v in smeta.items() if k in ("rtol", "atol")}
        disc = Discretization(
            make_rule(_get(dmeta, "rule", str, "discretization"),
                      _int_list(dmeta.get("width"), "discretization.width", dim), dim),
            make_solver(sname, **sopts), _get(dmeta, "steps", int, "discretization"),
        )
    except ModelFileError:
        raise
    except PdenetsError as e:
        raise ModelFileError(f"model file: {e}") from None
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ModelFileError(f"model file: unexpected tensor(s) {', '.join(unexpected)}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelFileError(f"model file: missing tensor(s) {', '.join(missing)}")
    dtypes = {t.dtype for t in tensors.values()}
    if not dtypes <= {torch.float32, torch.float64}:
        raise ModelFileError(f"model file: tensors must be float32/float64, got {dtypes}")
    for name, shp in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shp:
            raise ModelFileError(
                f"model file: tensor {name} has shape {tuple(t.shape)}, expected {shp}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"model file: tensor {name} contains NaN or Inf")
    net = ContinuumNetwork(ctrl, dynamics, lifting, readout, disc)
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    net = net.to(dtype)
    with torch.no_grad():
        for name, param in [("controls.w", ctrl.w), ("controls.b", ctrl.b)] + (
            [("readout.c", readout.c), ("readout.d", readout.d)]
            if isinstance(readout, LinearReadout) else []
        ) + ([("lifting.phi", lifting.phi)] if isinstance(lifting, LearnableLifting) else []):
            param.copy_(tensors[name].to(dtype))
    return net


def read_metadata(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and minimally validate a model file; return (metadata, tensors)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"model file {str(path)!r} is too large ({size} bytes)")
    data = path.read_bytes()
    if len(data) < 8:
        raise ModelFileError(f"model file {str(path)!r} is truncated ({len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > 100_000_000:
        raise ModelFileError(f"model file {str(path)!r} is corrupt or truncated (bad header)")
    try:
        tensors = st_load(data)
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"model file {str(path)!r} is corrupt or truncated: {e}") from None
    raw = (header.get("__metadata__") or {}).get("pdenets")
    if raw is None:
        raise ModelFileError(f"model file {str(path)!r} has no pdenets metadata")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ModelFileError(f"model file {str(path)!r}: metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"model file {str(path)!r}: metadata is not a JSON object")
    return meta, tensors


def load_model(
    path: str | os.PathLike, activation: Activation | None = None
) -> ContinuumNetwork:
    """Load a network saved by :func:`save_model`, validating everything (see module docstring).

    Parameters
    ----------
    path : path-like
    activation : Activation, optional
        A custom activation to use when the file names it.
    """
    meta, tensors = read_metadata(path)
    net = _build(meta, tensors, activation)
    net.extra = meta.get("extra", {})
    return net


# ------------------------------------------------------------------------------------------
# format version 2: structured kernels and channels (MODEL.md §10)
#
# Written only for networks that version 1 cannot describe (a KernelControls kernel, or
# channels); everything else is still written as version 1. The metadata is version 1's with
#
#   "controls": {"kind": "kernel", "size": [...], "intervals": 4, "time_basis": "linear",
#                "space_basis": "linear", "channels": C,
#                "kernel": {"kind": "dense", "size": [...], "space_basis": ...}
#                        | {"kind": "conv", "radius": r, "size": [...], "space_basis": ...}
#                        | {"kind": "lowrank", "rank": R, "size": [...], "space_basis": ...}
#                        | {"kind": "sum", "parts": [<kernel>, ...]}}
#   "lifting":  {"kind": "channels", "in_channels": C_in, "channels": C, "base": <lifting>}
#   "readout":  {..., "channels": C}   (optional, default 1)
#
# and the tensors are the network's parameters under their module names (K knots, C channels,
# Nc = prod(controls.size), Mk = prod(conv size)):
#
#   controls.b (K, C, Nc); controls.kernel.w (K, C, C, Nc_k, Nc_k) [dense];
#   controls.kernel.k (K, C, C, Mk) [conv]; controls.kernel.g / .h (K, C, R, Nc_k) [lowrank];
#   controls.kernel.parts.<i>.<name> [sum]; lifting.mix (C, C_in); lifting.base.phi (learnable
#   base); readout.c (m, C, Nc_r) (C > 1) or (m, Nc_r); readout.d (m,).
#
# The expected tensor shapes are derived from the metadata and compared with the file's tensors
# before anything is allocated.

VERSION_2 = 2
MAX_CHANNELS = 256
MAX_RANK = 4096


def needs_v2(net: ContinuumNetwork) -> bool:
    """Whether ``net`` needs format version 2 (structured kernel or channels)."""
    from .controls import GridControls as _GC

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
    from .lifting import ChannelLifting

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
    """Build a network from a version-2 model file (see the block comment above)."""
    import math

    from .kernels import KernelControls, kernel_from_config

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
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ModelFileError(f"model file: unexpected tensor(s) {', '.join(unexpected)}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelFileError(f"model file: missing tensor(s) {', '.join(missing)}")
    dtypes = {t.dtype for t in tensors.values()}
    if not dtypes <= {torch.float32, torch.float64}:
        raise ModelFileError(f"model file: tensors must be float32/float64, got {dtypes}")
    for name, shp in expected.items():
        if tuple(tensors[name].shape) != shp:
            raise ModelFileError(f"model file: tensor {name} has shape "
                                 f"{tuple(tensors[name].shape)}, expected {shp}")
        if not bool(torch.isfinite(tensors[name]).all()):
            raise ModelFileError(f"model file: tensor {name} contains NaN or Inf")
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
