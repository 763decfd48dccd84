"""Optimization methods of ``train.method`` (MODEL.md §4–5, §7, §2) and their registry.

A *method* is an object that makes the optimizer of a :class:`~pdenets.training.Trainer` and
runs one epoch; it may also add fields to the epoch's history record, change the model
selection, restore its own state from a checkpoint and add final metrics (the hooks of
:class:`Method`). Methods register themselves under their ``train.method`` name with
:func:`register_method`; :func:`get_method` resolves a name to its class.

This module defines ``adam`` and ``sgd`` (minibatches, learning-rate schedule) and ``lbfgs``
(full batch, strong-Wolfe line search). The methods of later layers — ``msa``
(:mod:`pdenets.pontryagin.msa`, MODEL.md §7) and ``multilevel`` (:mod:`pdenets.multilevel`,
MODEL.md §2) — register themselves when their module is imported; the registry knows only the
*name* of the module that registers each of them (:data:`PLUGINS`) and imports it on first use,
so neither this module nor the trainer imports them and the module import graph stays acyclic
(``tests/test_imports.py``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .._checks import value_checks
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset
    from ..network import ContinuumNetwork
    from .trainer import Trainer

__all__ = ["Method", "register_method", "get_method", "method_names", "METHODS", "PLUGINS",
           "SCHEDULES", "lr_factor", "set_lr", "Adam", "SGD", "LBFGS"]

SCHEDULES = ("constant", "cosine", "step")

#: methods defined in later layers: name -> the module that registers it on import
PLUGINS: dict[str, str] = {"msa": "pdenets.pontryagin.msa", "multilevel": "pdenets.multilevel"}

#: every value ``train.method`` accepts (rebound by :func:`register_method` for new names)
METHODS: tuple[str, ...] = ("adam", "sgd", "lbfgs", *PLUGINS)

_REGISTRY: dict[str, type[Method]] = {}

M = TypeVar("M", bound="type[Method]")


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass as ``train.method = name``.

    A name that is not yet in :data:`METHODS` is added to it (so the configuration accepts it
    from then on); registering a name twice replaces the earlier class.
    """

    def deco(cls: M) -> M:
        global METHODS
        cls.name = name
        _REGISTRY[name] = cls
        if name not in METHODS:
            METHODS = (*METHODS, name)
        return cls

    return deco


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``, importing its module (:data:`PLUGINS`) on
    first use; an unknown name raises :class:`~pdenets.errors.ConfigError`."""
    if name not in _REGISTRY and name in PLUGINS:
        importlib.import_module(PLUGINS[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"train.method: unknown value {name!r}; choose one of "
                          f"{', '.join(METHODS)}") from None


def method_names() -> tuple[str, ...]:
    """The values ``train.method`` accepts (:data:`METHODS`)."""
    return METHODS


def lr_factor(cfg: Config, epoch: int) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based): warm-up, then the schedule."""
    t = cfg.train
    if t.warmup_epochs and epoch < t.warmup_epochs:
        return (epoch + 1) / t.warmup_epochs
    e = epoch - t.warmup_epochs
    n = max(1, t.epochs - t.warmup_epochs)
    if t.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * e / n)) * 0.99 + 0.01
    if t.schedule == "step":
        return 0.1 ** (3 * e // n)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, cfg: Config, epoch: int) -> None:
    """Set every parameter group's learning rate to its initial one × :func:`lr_factor`."""
    f = lr_factor(cfg, epoch)
    for g in optimizer.param_groups:
        g["lr"] = g.setdefault("initial_lr", g["lr"]) * f


class Method:
    """An optimization method of a :class:`~pdenets.training.Trainer` (base class: Adam on
    minibatches, see :class:`Adam`).

    The trainer calls, in this order: :meth:`prepare` and :meth:`build_network` (only when no
    network is given) before it builds its parts, :meth:`make_optimizer`, then :meth:`attach`
    once it is complete; every epoch :meth:`train_epoch` and :meth:`epoch_record`, and
    :meth:`improved` for the model selection; around :meth:`Trainer.load_checkpoint
    <pdenets.training.Trainer.load_checkpoint>` :meth:`before_load` and :meth:`after_load`;
    at the end :meth:`result_metrics`.

    Parameters
    ----------
    cfg : Config
        The run's configuration (``cfg.train`` holds the method's options).
    """

    name = ""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @classmethod
    def delegate(cls, cfg: Config) -> str | None:
        """The method that does this method's epochs (its data-parallel support is that
        method's; :func:`pdenets.training.distributed.check_method`), or None: its own."""
        return None

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self, cfg: Config, ds: Any) -> Config:
        """The configuration the trainer's loop runs with (default: ``cfg``)."""
        return cfg

    def build_network(self, cfg: Config, ds: Dataset) -> ContinuumNetwork | None:
        """The initial network when none is given (default: None = the configured one)."""
        return None

    def make_optimizer(self, trainer: Trainer) -> torch.optim.Optimizer:
        """The optimizer of ``trainer.params`` (see :meth:`Trainer.param_groups
        <pdenets.training.Trainer.param_groups>` for the learning-rate units)."""
        t = trainer.cfg.train
        return torch.optim.Adam(trainer.param_groups(t.lr), lr=t.lr, weight_decay=t.weight_decay)

    def attach(self, trainer: Trainer) -> None:
        """Called once the trainer is complete (its optimizer, generator and data exist)."""

    # -- one epoch ----------------------------------------------------------------------------
    def train_epoch(self, trainer: Trainer) -> float:
        """One epoch of minibatch steps (:meth:`Trainer.step
        <pdenets.training.Trainer.step>`); returns the mean training objective.

        The hot path: the data were checked once (finite, labels in range) when the trainer
        was built, so the steps run with the per-call value checks off, and the objective is
        summed on the device — one host synchronization per epoch. Under data parallelism
        the step sums the ranks' shares of J and of its gradient (one all-reduce)."""
        n = len(trainer.data["train"][0])
        total = torch.zeros((), dtype=torch.float64, device=trainer.device)
        with value_checks(False):
            for xb, yb in trainer.batches():
                J = trainer.step(xb, yb)
                total += J.to(torch.float64) * len(xb)
        return float(total) / n

    def epoch_record(self, trainer: Trainer) -> dict:
        """Extra fields of this epoch's history record (default: none)."""
        return {}

    def improved(self, trainer: Trainer, val: dict) -> bool | None:
        """Whether the epoch with validation results ``val`` is the new best; None (default)
        leaves it to the trainer's rule (lowest validation loss)."""
        return None

    # -- checkpoints and result ---------------------------------------------------------------
    def before_load(self, trainer: Trainer, info: dict) -> None:
        """Before a checkpoint with metadata ``info`` is restored into ``trainer``."""

    def after_load(self, trainer: Trainer) -> None:
        """After a checkpoint was restored (``trainer.history`` holds the saved records)."""

    def result_metrics(self, trainer: Trainer) -> dict:
        """Extra entries of the final metrics (default: none)."""
        return {}


@register_method("adam")
class Adam(Method):
    """Adam on shuffled minibatches of ``train.batch_size`` (``train.lr``,
    ``train.weight_decay``, ``train.clip_norm``; MODEL.md §4–5)."""


@register_method("sgd")
class SGD(Method):
    """SGD with momentum on minibatches; the learning rates of the quadrature-weighted knots
    are scaled by Nc² (:meth:`Trainer.param_groups <pdenets.training.Trainer.param_groups>`)."""

    def make_optimizer(self, trainer: Trainer) -> torch.optim.Optimizer:
        t = trainer.cfg.train
        return torch.optim.SGD(trainer.param_groups(t.lr, 2), lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)


@register_method("lbfgs")
class LBFGS(Method):
    """Full-batch L-BFGS with a strong-Wolfe line search (``train.lbfgs_lr``,
    ``train.lbfgs_iterations`` per epoch, ``train.history_size``)."""

    def make_optimizer(self, trainer: Trainer) -> torch.optim.Optimizer:
        t = trainer.cfg.train
        return torch.optim.LBFGS(trainer.params, lr=t.lbfgs_lr, max_iter=t.lbfgs_iterations,
                                 history_size=t.history_size, line_search_fn="strong_wolfe")

    def train_epoch(self, trainer: Trainer) -> float:
        x, y = trainer.data["train"]
        opt = trainer.optimizer
        last = {}

        def closure():
            opt.zero_grad(set_to_none=True)
            J = trainer.dist.loss(trainer, x, y)  # this rank's share (distributed.py)
            J.backward()
            J = trainer.dist.reduce_gradients(trainer.params, J.detach())
            last["J"] = float(J)
            return J

        opt.step(closure)
        return last["J"]
