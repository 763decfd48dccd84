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

Any other tensor, a missing one, a wrong shape or dtype, non-finite values, an unknown key,
kind or option, or a value outside the limits below is rejected with
:class:`~pdenets.errors.ModelFileError` (free-form content is allowed under ``extra`` only).
Files are written atomically (temporary file + rename), so an interrupted save never leaves a
truncated model behind.

Limits (checked at load, before anything is allocated)
------------------------------------------------------
A model file must describe a network whose forward pass (MODEL.md §1–2) at its own
discretization this library can run: the work and memory it implies are bounded, and a file
that breaks a bound is rejected as corrupt or hostile, never run. N = prod(discretization.width)
(≤ 4096 width nodes: ``quadrature.MAX_NODES_1D`` / ``MAX_NODES_PER_AXIS_2D``²), s = stages per
step (euler 1, heun 2, rk4 4, dopri5 7, imex-euler 1, strang 2):

=============================  ==================================================================
file size                      ≤ ``MAX_FILE_BYTES`` (2 GiB); safetensors header ≤ 100 MB
``pdenets`` metadata           a JSON object of ≤ ``MAX_METADATA_CHARS`` (64 Mi) characters
``T``                          finite, 0 < T ≤ ``MAX_T`` (1e6)
``dynamics.eps``               finite, 0 ≤ ε ≤ ``MAX_EPS`` (1e6)
``discretization.steps``       1 … ``MAX_STEPS`` (10 000); ``controls.intervals`` likewise
work per input                 steps · s · (N² + 2¹⁶) ≤ ``MAX_WORK`` (2³⁴ multiply-adds, seconds
                               on one core; 2¹⁶ stands for the fixed cost of a stage)
dense matrices                 every matrix the forward pass builds (the kernel schedule
                               K·N², the basis products K·N·Nc, the lifting n·N, the readout
                               m·N) ≤ ``MAX_MATRIX_ELEMENTS`` (2²⁸ values, 2 GiB in float64)
control grids                  Nc = prod(size) ≤ ``MAX_CONTROL_NODES`` (4096) for the controls,
                               a learnable lifting and a linear readout
inputs / outputs               n = prod(lifting.shape) ≤ ``MAX_FEATURES`` (2²⁰);
                               m ≤ ``MAX_OUTPUTS`` (2¹⁶)
dopri5 options                 rtol ∈ [1e-13, 1], atol ∈ [1e-16, 1e6]; no other solver options
tensors                        float32 or float64, finite, |value| ≤ ``MAX_ABS_VALUE`` (1e12:
                               far above trained values, far below overflow)
``extra``                      a JSON object; where present, ``data`` (types of the
                               :class:`~pdenets.config.DataConfig` fields, 0 ≤ seed < 2³²,
                               n_samples ≤ ``MAX_SAMPLES`` = 10⁷), ``preprocess`` (``{}``,
                               ``{"kind": "scale", "factor": f > 0}`` or ``{"kind":
                               "standardize", "mean": [...], "std": [... > 0]}`` with one finite
                               entry per input feature) and ``task`` (``"classification"`` or
                               ``"regression"``) are checked; anything else there is free-form
=============================  ==================================================================

Finally two run-time checks at the file's own discretization: every cell of a cell-average
readout must contain a width node; and a network whose evaluation costs at most ``PROBE_WORK``
(2³⁰ multiply-adds, well under a second: K·(N·Nc² + N²·Nc) for the kernel schedule plus
2 · steps · s · (N² + 2¹⁶), dopri5 counted and capped at ``PROBE_DOPRI5_STEPS`` = 1000
attempted steps) is evaluated on two probe inputs (all zeros, all ones) and must give finite
outputs without error — this rejects finite but exploding weights, an explicit step that
violates the diffusion stability limit, a stiff dopri5 file. Larger networks are not probed
(the probe would double the cost of a command; their outputs are to be checked where they are
used). A file failing a check is rejected. :func:`read_safetensors_metadata` reads the header
metadata of any safetensors file (model or checkpoint) with the same safety checks.

Format version 2 (structured kernels and channels, MODEL.md §10) is written only for networks
that version 1 cannot describe; it is documented with its loader at the end of this module.
Version-1 files load unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from ._basis import cell_index
from ._outputs import atomic_write_bytes  # noqa: F401 - re-exported (moved to _outputs)
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
MAX_METADATA_CHARS = 64 * 2**20
MAX_T = 1e6
MAX_EPS = 1e6
MAX_STEPS = 10_000
MAX_WORK = 2**34
STAGE_OVERHEAD = 2**16
MAX_MATRIX_ELEMENTS = 2**28
MAX_CONTROL_NODES = 4096
MAX_FEATURES = 2**20
MAX_OUTPUTS = 2**16
MAX_ABS_VALUE = 1e12
MAX_SAMPLES = 10**7
RTOL_RANGE = (1e-13, 1.0)
ATOL_RANGE = (1e-16, 1e6)
PROBE_WORK = 2**30
PROBE_DOPRI5_STEPS = 1000
#: right-hand-side evaluations per step of each solver name (dopri5: per attempted step)
STAGES = {"euler": 1, "heun": 2, "rk4": 4, "dopri5": 7, "imex-euler": 1, "strang": 2}


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


# -- reading --------------------------------------------------------------------------------

def _regular_file(path: str | os.PathLike, what: str = "model file") -> Path:
    """``path`` as a :class:`Path`, after checking that it is an existing regular file of at
    most ``MAX_FILE_BYTES`` bytes."""
    path = Path(path)
    try:
        if not path.exists():
            raise ModelFileError(f"{what} {str(path)!r} does not exist")
        if not path.is_file():
            raise ModelFileError(f"{what} {str(path)!r} is not a regular file")
        size = path.stat().st_size
    except (OSError, ValueError) as e:  # a name too long, with a NUL byte, unreadable...
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{what} {str(path)[:200]!r} cannot be read: {e}") from None
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"{what} {str(path)!r} is too large ({size} bytes; the limit "
                             f"is {MAX_FILE_BYTES})")
    return path


def _corrupt(path: Path, e: BaseException, what: str = "model file") -> ModelFileError:
    msg = " ".join(str(e).split()) or type(e).__name__
    return ModelFileError(f"{what} {str(path)!r} is corrupt or truncated: {msg}")


def read_safetensors_metadata(path: str | os.PathLike, what: str = "model file"
                              ) -> dict[str, str]:
    """The header metadata (``__metadata__``) of a safetensors file, ``{}`` when it has none.

    The one reader of safetensors headers in pdenets (model files and checkpoints). It relies on
    ``safetensors.safe_open``, which refuses a header longer than 100 MB or than the file, and
    validates the header's JSON, dtypes, shapes and data offsets before anything is allocated
    (a forged header length or shape is an error, not an allocation); the file must be a
    regular file of at most ``MAX_FILE_BYTES`` bytes.

    Parameters
    ----------
    path : path-like
    what : str
        How error messages name the file (e.g. ``"checkpoint"``).

    Raises
    ------
    ModelFileError
        For a missing, non-regular, too large, truncated or corrupt file.
    """
    path = _regular_file(path, what)
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e, what) from None


def read_metadata(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a model file: its parsed ``pdenets`` metadata (a dict) and its tensors.

    Only float32/float64 tensors are read (others are refused before their data is touched);
    the metadata must be a JSON object of at most ``MAX_METADATA_CHARS`` characters. The
    content is validated by :func:`load_model`.
    """
    path = _regular_file(path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), "pt") as f:
            header = dict(f.metadata() or {})
            raw = header.get("pdenets")
            if raw is None:
                raise ModelFileError(f"model file {str(path)!r} has no pdenets metadata")
            if len(raw) > MAX_METADATA_CHARS:
                raise ModelFileError(f"model file {str(path)!r}: metadata is too large "
                                     f"({len(raw)} characters)")
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in ("F32", "F64"):
                    raise ModelFileError(f"model file: tensor {name} has dtype {dtype}; "
                                         f"tensors must be float32/float64")
                tensors[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise _corrupt(path, e) from None
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise ModelFileError(f"model file {str(path)!r}: metadata is not valid JSON "
                             f"(or nested too deeply)") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"model file {str(path)!r}: metadata is not a JSON object")
    return meta, tensors


# -- validation of the metadata ---------------------------------------------------------------

def _get(d: dict, key: str, typ, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ModelFileError(f"model file: missing key {where}.{key}")
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise ModelFileError(f"model file: {where}.{key} has the wrong type ({type(v).__name__})")
    return v


def _number(d: dict, key: str, where: str, lo: float, hi: float, *, open_lo: bool = False,
            integer: bool = False) -> Any:
    """A number (an int if ``integer``) in [lo, hi] — (lo, hi] if ``open_lo``; NaN fails."""
    v = _get(d, key, int if integer else float, where)
    if not ((lo < v if open_lo else lo <= v) and v <= hi):
        interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
        raise ModelFileError(f"model file: {where}.{key} = {v!r} is out of range {interval}")
    return v


def _keys(d: dict, allowed: set[str], where: str) -> dict:
    """Reject unknown keys: a damaged key name must not silently select a default."""
    if not isinstance(d, dict):
        raise ModelFileError(f"model file: {where} must be a JSON object")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ModelFileError(f"model file: unknown key(s) in {where}: "
                             f"{', '.join(map(repr, unknown))[:200]}")
    return d


def _int_list(v, where: str, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or not all(
        isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 65536 for k in v
    ):
        raise ModelFileError(f"model file: {where} must be a list of positive integers")
    if length is not None and len(v) != length:
        raise ModelFileError(f"model file: {where} must have {length} entries")
    return tuple(v)


def _grid_size(d: dict, key: str, where: str, dim: int, limit: int) -> tuple[int, ...]:
    size = _int_list(d.get(key), f"{where}.{key}", dim)
    if math.prod(size) > limit:
        raise ModelFileError(f"model file: {where}.{key} {list(size)} has {math.prod(size)} "
                             f"points; the limit is {limit}")
    return size


def _opt_str(d: dict, key: str, where: str, default: str = "linear") -> str:
    """An optional string entry (files written before the entry existed lack it)."""
    return _get(d, key, str, where) if key in d else default


_TOP = {"format", "version", "T", "dim", "dynamics", "controls", "lifting", "readout",
        "discretization", "extra"}


def _check_sizes_against_tensors(cmeta, lmeta, rmeta, dim, tensors) -> None:
    """Reject sizes in the metadata that do not match the values the file's own tensors hold
    (a hostile header must not make the loader allocate gigabytes) before building anything."""

    def numel(name: str) -> int:
        t = tensors.get(name)
        return -1 if t is None else t.numel()

    size = _int_list(cmeta.get("size"), "controls.size", dim)
    intervals = _number(cmeta, "intervals", "controls", 1, math.inf, integer=True)
    K = intervals + (1 if cmeta.get("time_basis") == "linear" else 0)
    nc = math.prod(size)
    if numel("controls.w") != K * nc * nc or numel("controls.b") != K * nc:
        raise ModelFileError(
            f"model file: tensors controls.w/controls.b do not hold the {K}×{nc}×{nc} and "
            f"{K}×{nc} values that controls.size/intervals describe"
        )
    _grid_size(cmeta, "size", "controls", dim, MAX_CONTROL_NODES)
    _number(cmeta, "intervals", "controls", 1, MAX_STEPS, integer=True)
    if rmeta.get("kind") == "linear":
        m = _number(rmeta, "outputs", "readout", 1, MAX_OUTPUTS, integer=True)
        nr = math.prod(_grid_size(rmeta, "size", "readout", dim, MAX_CONTROL_NODES))
        if numel("readout.c") != m * nr:
            raise ModelFileError("model file: tensor readout.c does not match readout.outputs/size")
    if lmeta.get("kind") == "learnable":
        n = math.prod(_grid_size(lmeta, "shape", "lifting", dim, MAX_FEATURES))
        nl = math.prod(_grid_size(lmeta, "size", "lifting", dim, MAX_CONTROL_NODES))
        if numel("lifting.phi") != n * nl:
            raise ModelFileError("model file: tensor lifting.phi does not match lifting.shape/size")


def _solver_options(smeta: dict, sname: str) -> dict[str, float]:
    allowed = {"name", "rtol", "atol"} if sname == "dopri5" else {"name"}
    _keys(smeta, allowed, "discretization.solver")
    opts = {}
    for key, (lo, hi) in (("rtol", RTOL_RANGE), ("atol", ATOL_RANGE)):
        if key in smeta:
            opts[key] = float(_number(smeta, key, "discretization.solver", lo, hi))
    return opts


def _check_work(K: int, nc: int, n: int, nl: int | None, m: int, nr: int | None,
                N: int, steps: int, sname: str) -> None:
    """The memory and work limits of the module docstring, from sizes alone."""
    mats = {"the kernel schedule K·N²": K * N * N, "the basis products K·N·Nc": K * N * nc,
            "the readout matrix m·N": m * N}
    if nl is not None:
        mats["the lifting matrix n·N"] = n * N
        mats["the lifting basis N·Nc"] = N * nl
    if nr is not None:
        mats["the readout basis N·Nc"] = N * nr
    for what, count in mats.items():
        if count > MAX_MATRIX_ELEMENTS:
            raise ModelFileError(
                f"model file: {what} at the file's discretization has {count} values; that "
                f"memory exceeds the limit of {MAX_MATRIX_ELEMENTS} values"
            )
    work = steps * STAGES[sname] * (N * N + STAGE_OVERHEAD)
    if work > MAX_WORK:
        raise ModelFileError(
            f"model file: {steps} {sname} steps at {N} width nodes need {work:.3g} "
            f"multiply-adds per input; the work limit is {MAX_WORK:.3g}"
        )


def _check_extra(extra: Any, lifting_shape: tuple[int, ...]) -> None:
    """The entries of ``extra`` that the command line reads (see the module docstring)."""
    if not isinstance(extra, dict):
        raise ModelFileError(f"model file: extra must be a JSON object, got "
                             f"{type(extra).__name__}")
    if "data" in extra:
        data = extra["data"]
        if not isinstance(data, dict):
            raise ModelFileError("model file: extra.data must be a JSON object")
        for key, typ in (("name", str), ("standardize", bool)):
            if key in data:
                _get(data, key, typ, "extra.data")
        for key in ("test_fraction", "val_fraction"):
            if key in data:
                _number(data, key, "extra.data", 0.0, 1.0)
        if "seed" in data:
            _number(data, "seed", "extra.data", 0, 2**32 - 1, integer=True)
        if "n_samples" in data:
            _number(data, "n_samples", "extra.data", 1, MAX_SAMPLES, integer=True)
    if "task" in extra and extra["task"] not in ("classification", "regression"):
        raise ModelFileError(f"model file: extra.task must be 'classification' or "
                             f"'regression', got {str(extra['task'])[:50]!r}")
    pre = extra.get("preprocess", {})
    if not isinstance(pre, dict):
        raise ModelFileError("model file: extra.preprocess must be a JSON object")
    kind = pre.get("kind")
    if not pre:
        return
    if kind == "scale":
        _keys(pre, {"kind", "factor"}, "extra.preprocess")
        _number(pre, "factor", "extra.preprocess", 0.0, MAX_ABS_VALUE, open_lo=True)
    elif kind == "standardize":
        _keys(pre, {"kind", "mean", "std"}, "extra.preprocess")
        n = math.prod(lifting_shape)
        for key in ("mean", "std"):
            try:
                a = np.asarray(_get(pre, key, list, "extra.preprocess"), dtype=np.float64)
            except (TypeError, ValueError):
                raise ModelFileError(f"model file: extra.preprocess.{key} must be a list of "
                                     f"numbers") from None
            if a.shape not in ((n,), lifting_shape):
                raise ModelFileError(f"model file: extra.preprocess.{key} has shape {a.shape};"
                                     f" the model has {n} input features")
            if not np.isfinite(a).all() or np.abs(a).max() > MAX_ABS_VALUE or (
                    key == "std" and not (a > 0).all()):
                raise ModelFileError(f"model file: extra.preprocess.{key} must hold finite "
                                     f"numbers{' > 0' if key == 'std' else ''}")
    else:
        raise ModelFileError(f"model file: unknown extra.preprocess kind "
                             f"{str(kind)[:50]!r}; choose scale or standardize")


def _check_tensor_values(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ModelFileError(f"model file: tensor {name} contains NaN or Inf")
    if t.numel() and float(t.abs().max()) > MAX_ABS_VALUE:
        raise ModelFileError(f"model file: tensor {name} holds a value of magnitude "
                             f"{float(t.abs().max()):.3g} > {MAX_ABS_VALUE:g}")


# -- building ---------------------------------------------------------------------------------

def _build(meta: dict, tensors: dict[str, torch.Tensor], activation: Activation | None):
    if meta.get("format") != FORMAT:
        raise ModelFileError("model file: not a pdenets model (metadata 'format' is wrong)")
    if meta.get("version") == VERSION_2:
        return _build_v2(meta, tensors, activation)
    if meta.get("version") != VERSION:
        raise ModelFileError(f"model file: unsupported format version "
                             f"{str(meta.get('version'))[:50]}")
    _keys(meta, _TOP, "the metadata")
    T = _number(meta, "T", "model", 0.0, MAX_T, open_lo=True)
    dim = _get(meta, "dim", int, "model")
    if dim not in (1, 2):
        raise ModelFileError(f"model file: dim must be 1 or 2, got {dim}")
    dyn = _keys(_get(meta, "dynamics", dict, "model"), {"kind", "activation", "eps"},
                "dynamics")
    act_name = _get(dyn, "activation", str, "dynamics")
    act = activation if (activation is not None and activation.name == act_name) else act_name
    eps = _number(dyn, "eps", "dynamics", 0.0, MAX_EPS)
    cmeta = _keys(_get(meta, "controls", dict, "model"),
                  {"kind", "size", "intervals", "time_basis", "space_basis"}, "controls")
    if _get(cmeta, "kind", str, "controls") != "grid":
        raise ModelFileError(f"model file: unknown controls kind {cmeta['kind'][:50]!r}")
    lmeta = _get(meta, "lifting", dict, "model")
    lkind = _get(lmeta, "kind", str, "lifting")
    if lkind not in ("piecewise_constant", "learnable"):
        raise ModelFileError(f"model file: unknown lifting kind {lkind[:50]!r}")
    _keys(lmeta, {"kind", "shape"} | ({"size", "basis"} if lkind == "learnable" else set()),
          "lifting")
    rmeta = _get(meta, "readout", dict, "model")
    rkind = _get(rmeta, "kind", str, "readout")
    if rkind not in ("linear", "cell_average"):
        raise ModelFileError(f"model file: unknown readout kind {rkind[:50]!r}")
    _keys(rmeta, {"kind", "outputs", "size", "basis"} if rkind == "linear" else {"kind", "cells"},
          "readout")
    dmeta = _keys(_get(meta, "discretization", dict, "model"),
                  {"rule", "width", "dim", "solver", "steps"}, "discretization")
    if "dim" in dmeta and _get(dmeta, "dim", int, "discretization") != dim:
        raise ModelFileError(f"model file: discretization.dim {dmeta['dim']} differs from "
                             f"dim {dim}")
    steps = _number(dmeta, "steps", "discretization", 1, MAX_STEPS, integer=True)
    smeta = _get(dmeta, "solver", dict, "discretization")
    sname = _get(smeta, "name", str, "discretization.solver")
    if sname not in STAGES:
        raise ModelFileError(f"model file: unknown depth solver {sname[:50]!r}; choose one of: "
                             f"{', '.join(STAGES)}")
    sopts = _solver_options(smeta, sname)
    _check_sizes_against_tensors(cmeta, lmeta, rmeta, dim, tensors)
    shape = _grid_size(lmeta, "shape", "lifting", dim, MAX_FEATURES)
    if rkind == "cell_average":
        _grid_size(rmeta, "cells", "readout", dim, MAX_OUTPUTS)
    _check_extra(meta.get("extra", {}), shape)
    try:
        rule = make_rule(_get(dmeta, "rule", str, "discretization"),
                         _int_list(dmeta.get("width"), "discretization.width", dim), dim)
    except ModelFileError:
        raise
    except PdenetsError as e:
        raise ModelFileError(f"model file: discretization.rule/width: {e}") from None
    try:
        csize = _int_list(cmeta["size"], "controls.size", dim)
        K = cmeta["intervals"] + (1 if cmeta.get("time_basis") == "linear" else 0)
        _check_work(
            K, math.prod(csize), math.prod(shape),
            math.prod(lmeta["size"]) if lkind == "learnable" else None,
            rmeta["outputs"] if rkind == "linear" else math.prod(rmeta["cells"]),
            math.prod(rmeta["size"]) if rkind == "linear" else None,
            math.prod(rule.sizes), steps, sname,
        )
        dynamics = make_dynamics(_get(dyn, "kind", str, "dynamics"), act, eps)
        expected: dict[str, tuple[int, ...]] = {}
        ctrl = GridControls(dim, csize, cmeta["intervals"], T,
                            _get(cmeta, "time_basis", str, "controls"),
                            space_basis=_opt_str(cmeta, "space_basis", "controls"))
        expected["controls.w"] = tuple(ctrl.w.shape)
        expected["controls.b"] = tuple(ctrl.b.shape)
        lifting: PiecewiseConstantLifting | LearnableLifting
        if lkind == "piecewise_constant":
            lifting = PiecewiseConstantLifting(shape)
        else:
            lifting = LearnableLifting(shape, _int_list(lmeta.get("size"), "lifting.size", dim),
                                       basis=_opt_str(lmeta, "basis", "lifting"))
            expected["lifting.phi"] = tuple(lifting.phi.shape)
        readout: LinearReadout | CellAverageReadout
        if rkind == "linear":
            readout = LinearReadout(rmeta["outputs"], dim,
                                    _int_list(rmeta.get("size"), "readout.size", dim),
                                    basis=_opt_str(rmeta, "basis", "readout"))
            expected["readout.c"] = tuple(readout.c.shape)
            expected["readout.d"] = tuple(readout.d.shape)
        else:
            readout = CellAverageReadout(_int_list(rmeta.get("cells"), "readout.cells", dim))
        disc = Discretization(rule, make_solver(sname, **sopts), steps)
    except ModelFileError:
        raise
    except PdenetsError as e:
        raise ModelFileError(f"model file: {e}") from None
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ModelFileError(f"model file: unexpected tensor(s) {', '.join(unexpected)[:200]}")
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
        _check_tensor_values(name, t)
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


def _probe_cost(net: ContinuumNetwork) -> int:
    """Multiply-adds of :func:`_probe` at most (dopri5: ``PROBE_DOPRI5_STEPS`` attempts)."""
    disc, ctrl = net.discretization, net.controls
    N = math.prod(disc.width.sizes)
    name = disc.solver.name
    steps = PROBE_DOPRI5_STEPS if name == "dopri5" else disc.steps
    if isinstance(ctrl, GridControls):
        K, nc = ctrl.n_knots, ctrl.n_control
        cost = K * (N * nc * nc + N * N * nc)
    else:  # structured kernels (MODEL.md §10): at most a dense (C·N)² operator per knot
        N *= int(getattr(ctrl, "channels", 1))
        cost = int(getattr(ctrl, "n_knots", 1)) * N * N
    cost += 2 * steps * STAGES[name] * (N * N + STAGE_OVERHEAD)
    if isinstance(net.lifting, LearnableLifting):
        cost += math.prod(net.lifting.phi.shape) * N
    if isinstance(net.readout, LinearReadout):
        cost += math.prod(net.readout.c.shape) * N
    return int(cost)


def _probe(net: ContinuumNetwork) -> None:
    """The run-time checks of the module docstring: every output cell of a cell-average readout
    holds a width node; a network of probe cost ≤ ``PROBE_WORK`` evaluates at its own
    discretization to finite outputs for inputs 0 and 1."""
    disc = net.discretization
    if isinstance(net.readout, CellAverageReadout):
        cells = net.readout.cells
        idx = cell_index(disc.width.grid(torch.float64).nodes, cells)
        if int((torch.bincount(idx, minlength=math.prod(cells)) == 0).sum()):
            raise ModelFileError(
                f"model file: some of the {math.prod(cells)} cells of the cell-average readout "
                f"contain no width node of the file's discretization "
                f"({'x'.join(map(str, disc.width.sizes))} {disc.width.name})"
            )
    if _probe_cost(net) > PROBE_WORK:
        return
    solver = copy.copy(disc.solver)
    if hasattr(solver, "max_steps"):  # dopri5: bound the attempted steps of the probe
        solver.max_steps = min(solver.max_steps, PROBE_DOPRI5_STEPS)
    dtype = next(net.parameters()).dtype
    shape = tuple(net.lifting.shape)
    in_channels = int(getattr(net.lifting, "in_channels", 1))
    if in_channels > 1:  # multi-channel inputs (MODEL.md §10)
        shape = (in_channels, *shape)
    xi = torch.stack([torch.zeros(shape, dtype=dtype), torch.ones(shape, dtype=dtype)])
    try:
        with torch.no_grad():
            out = net(xi, Discretization(disc.width, solver, disc.steps))
    except PdenetsError as e:
        raise ModelFileError(f"model file: the network cannot be evaluated at its own "
                             f"discretization: {e}") from None
    if not bool(torch.isfinite(out).all()):
        raise ModelFileError("model file: the network's outputs at its own discretization are "
                             "not finite (NaN or Inf) for inputs 0 and 1")


def load_model(
    path: str | os.PathLike, activation: Activation | None = None
) -> ContinuumNetwork:
    """Load a network saved by :func:`save_model`, validating everything (see module docstring).

    Parameters
    ----------
    path : path-like
    activation : Activation, optional
        A custom activation to use when the file names it.

    Raises
    ------
    ModelFileError
        For a missing, corrupt, truncated, hostile or insane file (the limits of the module
        docstring), with a one-line message naming the problem.
    """
    meta, tensors = read_metadata(path)
    net = _build(meta, tensors, activation)
    _probe(net)
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
