"""The limits of a model file and their checks (the table "Limits" of :mod:`pdenets.modelfile`).

The constants of the table; the checks of sizes against the file's tensors, of solver options,
of the work and memory implied by a file, of ``extra`` and of tensor values, all from the
metadata alone and before anything large is allocated; and the run-time probe of a built network
at its own discretization (MODEL.md §1–2).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from .._basis import cell_index
from ..controls import GridControls
from ..errors import ModelFileError, PdenetsError
from ..lifting import LearnableLifting
from ..network import ContinuumNetwork, Discretization
from ..readout import CellAverageReadout, LinearReadout
from ._fields import _get, _grid_size, _int_list, _keys, _number

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


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple]) -> set:
    """The tensor checks of both format versions: exactly the ``expected`` names, float32 or
    float64, the expected shapes, values within the limits (:func:`_check_tensor_values`).
    Returns the set of dtypes."""
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
    return dtypes


def _probe_cost(net: ContinuumNetwork) -> int:
    """Multiply-adds of :func:`_probe` at most (dopri5: ``PROBE_DOPRI5_STEPS`` attempts)."""
    disc, ctrl = net.discretization, net.controls
    N = math.prod(disc.width.sizes)
    name = disc.solver.name
    steps = PROBE_DOPRI5_STEPS if name == "dopri5" else disc.steps
    if isinstance(ctrl, GridControls):
        K, nc = ctrl.n_knots, ctrl.n_control
        cost = K * (N * nc * nc + N * N * nc) + 2 * steps * STAGES[name] * (N * N + STAGE_OVERHEAD)
    else:
        # structured kernels (format 2): bounded by a dense C·N × C·N operator per stage and
        # the kernel's parameters evaluated once per stage
        CN = getattr(ctrl, "channels", 1) * N
        n_par = sum(p.numel() for p in ctrl.parameters())
        cost = 2 * steps * STAGES[name] * (CN * CN + n_par + STAGE_OVERHEAD)
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
    c_in = getattr(net.lifting, "in_channels", 1)
    if c_in > 1:
        shape = (c_in, *shape)
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
