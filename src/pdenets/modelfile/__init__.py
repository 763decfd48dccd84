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
that version 1 cannot describe; it is documented with its loader in
:mod:`pdenets.modelfile._v2`.
Version-1 files load unchanged.

Layout of the package (one concept per module; each imports only those listed before it):
``_fields`` (typed readers of metadata entries), ``_limits`` (the limits above, their checks
and the run-time probe), ``_v2`` (format version 2), ``_v1`` (format version 1: the loader,
which hands version-2 files to ``_v2``) and this module (saving, reading, loading). Every name
of the former single module ``pdenets.modelfile`` is importable from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .._outputs import atomic_write_bytes  # re-exported (moved to _outputs)
from ..activations import Activation
from ..errors import ModelFileError, PdenetsError
from ..lifting import LearnableLifting
from ..network import ContinuumNetwork
from ..readout import LinearReadout

# the package's modules; each name of the former single module ``pdenets.modelfile`` stays
# importable from here (``noqa: F401``: re-exported, not used in this module)
from ._fields import (  # noqa: F401
    _get,
    _grid_size,
    _int_list,
    _keys,
    _number,
    _opt_str,
)
from ._limits import (  # noqa: F401
    ATOL_RANGE,
    FORMAT,
    MAX_ABS_VALUE,
    MAX_CONTROL_NODES,
    MAX_EPS,
    MAX_FEATURES,
    MAX_FILE_BYTES,
    MAX_MATRIX_ELEMENTS,
    MAX_METADATA_CHARS,
    MAX_OUTPUTS,
    MAX_SAMPLES,
    MAX_STEPS,
    MAX_T,
    MAX_WORK,
    PROBE_DOPRI5_STEPS,
    PROBE_WORK,
    RTOL_RANGE,
    STAGE_OVERHEAD,
    STAGES,
    VERSION,
    _check_extra,
    _check_sizes_against_tensors,
    _check_tensor_values,
    _check_work,
    _probe,
    _probe_cost,
    _solver_options,
)
from ._v1 import (
    _TOP,  # noqa: F401
    _build,
)
from ._v2 import (  # noqa: F401
    MAX_CHANNELS,
    MAX_RANK,
    VERSION_2,
    _build_v2,
    _v2_int,
    _v2_kernel_shapes,
    _v2_lifting,
    _v2_lifting_shapes,
    needs_v2,
    network_tensors_v2,
)


def network_tensors(net: ContinuumNetwork) -> dict[str, torch.Tensor]:
    """The tensors of ``net`` under their model-file names."""
    out: dict[str, torch.Tensor] = {
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

