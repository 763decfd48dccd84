"""Model-file format version 1: the loader (format in :mod:`pdenets.modelfile`).

:func:`_build` validates a version-1 file's metadata and tensors against the format and the
limits (:mod:`pdenets.modelfile._limits`) before it builds the network; a version-2 file is
handed to :func:`pdenets.modelfile._v2._build_v2`.
"""

from __future__ import annotations

import math

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
from ._fields import _get, _grid_size, _int_list, _keys, _number, _opt_str
from ._limits import (
    FORMAT,
    MAX_EPS,
    MAX_FEATURES,
    MAX_OUTPUTS,
    MAX_STEPS,
    MAX_T,
    STAGES,
    VERSION,
    _check_extra,
    _check_sizes_against_tensors,
    _check_tensors,
    _check_work,
    _solver_options,
)
from ._v2 import VERSION_2, _build_v2

_TOP = {"format", "version", "T", "dim", "dynamics", "controls", "lifting", "readout",
        "discretization", "extra"}


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
    dtypes = _check_tensors(tensors, expected)
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
