"""Training the continuum network on data (MODEL.md §4–5).

The package has one module per concept:

* :mod:`.trainer` — :class:`Trainer`, the epoch loop for any network and data (evaluation,
  early stopping, best-or-last selection, history, logging, progress) driven by a method;
* :mod:`.methods` — the optimization methods (``train.method``) and their registry
  (:func:`register_method`, :func:`get_method`); ``msa`` and ``multilevel`` register from their
  own modules, which this package does not import;
* :mod:`.build` and :mod:`.factory` — the network, objective and gradient strategy from a
  :class:`~pdenets.config.Config`, and :func:`make_trainer`;
* :mod:`.checkpoint` — resumable checkpoints (exact resume state);
* :mod:`.run` — :func:`run_training`, a run into a results directory.
"""

from __future__ import annotations

from ..modelfile import save_model
from . import methods as _methods
from .build import (
    DTYPES,
    build_network,
    default_sizes,
    discretization_from,
    make_adjoint_from_config,
    make_objective,
    resolved_config,
)
from .checkpoint import _pack_state, _unpack_state, checkpoint_config, checkpoint_info
from .factory import make_trainer
from .methods import (
    SCHEDULES,
    Method,
    get_method,
    lr_factor,
    method_names,
    register_method,
)
from .run import RUN_FILES, _clear_work, _partial, dataclass_dict, ds_preprocess, run_training
from .trainer import Trainer, TrainResult, evaluate

__all__ = [
    "DTYPES", "METHODS", "RUN_FILES", "SCHEDULES", "Method", "TrainResult", "Trainer",
    "build_network", "checkpoint_config", "checkpoint_info", "dataclass_dict", "default_sizes",
    "discretization_from", "ds_preprocess", "evaluate", "get_method", "lr_factor",
    "make_adjoint_from_config", "make_objective", "make_trainer", "method_names",
    "register_method", "resolved_config", "run_training", "save_model",
    "_pack_state", "_unpack_state", "_partial", "_clear_work",
]


def __getattr__(name: str):
    if name == "METHODS":  # current value: register_method may add names
        return _methods.METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
