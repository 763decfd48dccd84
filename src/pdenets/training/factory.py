"""A trainer from a :class:`~pdenets.config.Config` (MODEL.md §4–5): the network, objective
and gradient strategy of :mod:`pdenets.training.build` and the method registered as
``train.method`` (:mod:`pdenets.training.methods`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .build import (
    DTYPES,
    build_network,
    default_sizes,
    discretization_from,
    make_adjoint_from_config,
    make_objective,
    resolved_config,
)
from .methods import get_method
from .trainer import Trainer

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset

__all__ = ["make_trainer", "DTYPES", "build_network", "default_sizes", "discretization_from",
           "make_adjoint_from_config", "make_objective", "resolved_config"]


def make_trainer(cfg: Config, ds: Dataset, **kwargs: Any) -> Trainer:
    """The trainer of ``cfg`` on ``ds`` with the method registered as ``cfg.train.method``
    (``kwargs``: the keyword arguments of :class:`~pdenets.training.Trainer`, e.g.
    ``checkpoint_path``, ``log_path``, ``progress``, ``net``)."""
    method = get_method(cfg.train.method)(cfg)
    return Trainer(cfg, ds, method=method, **kwargs)
