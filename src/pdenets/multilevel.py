"""Multilevel (coarse-to-fine) training (MODEL.md §2).

Because the controls are functions stored in a resolution-independent representation, a network
trained at a coarse width, few depth steps and a coarse control grid can be *prolonged* — the
same functions written in a finer representation (:func:`prolong_network`) — and training
continues at the finer level. For nested grids (``size − 1`` and ``intervals`` multiplied by an
integer) the prolongation represents exactly the same functions, so the prolonged network has
exactly the coarse network's outputs at any common discretization; otherwise it interpolates.

:class:`MultilevelTrainer` (``train.method = "multilevel"``) trains ``train.levels`` levels,
coarse to fine, with the optimizer ``train.level_method`` (adam, sgd, lbfgs or msa) and
``train.level_epochs`` epochs per level (a list, coarse to fine; default: the share
``train.fine_fraction`` of ``train.epochs`` at the finest level, the rest split evenly over the
coarse ones; with ``fine_fraction = 0`` an even split). Level ℓ = L−1 is the configured
model; level ℓ is coarser by the factor f = 2^(L−1−ℓ) in what ``train.level_coarsen`` selects:

* ``all`` (default): width nodes per axis (÷f, at least 4), depth steps (÷f, at least 1),
  control-grid vertices ((size−1)/f + 1, at least 2) and depth intervals (÷f, at least 1);
* ``discretization``: width and steps only (the control representation stays the finest);
* ``controls``: control grid and intervals only;
* ``depth``: depth steps only (width and control representation stay the finest);
* ``none``: nothing — the levels differ only in their solver and method.

``train.level_solver`` (default: ``model.solver``) is the depth solver of the coarse levels: with
``euler`` they train the ResNet that the model's explicit Euler discretization is (MODEL.md §2),
at a quarter of RK4's stages, and the finest level's accurate solver then finishes the same
controls, so the result is a discretization-independent continuum network.

Every level uses its own learning-rate schedule (``train.schedule`` over the level's epochs).
At coarse levels there is no early stopping and no best-epoch selection: the level's last
iterate is prolonged. The best-by-validation selection and ``train.patience`` apply within the
finest level, so the result always has the configured (finest) architecture and
discretization. History records carry ``level``, ``level_width`` and ``level_steps``.

The method is :class:`MultilevelMethod`, registered with
:func:`pdenets.training.methods.register_method`; each level trains with its own inner
:class:`~pdenets.training.Trainer` and the method registered as ``train.level_method``.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

from . import _basis
from .controls import GridControls
from .errors import PdenetsError
from .kernels import ConvKernel, KernelControls
from .lifting import LearnableLifting, Lifting, PiecewiseConstantLifting
from .network import ContinuumNetwork, Discretization
from .readout import LinearReadout, Readout
from .training.build import build_network, default_sizes
from .training.methods import Method, get_method, lr_factor, register_method
from .training.trainer import Trainer

if TYPE_CHECKING:
    from .config import Config

__all__ = ["prolong_network", "level_configs", "level_epochs", "MultilevelMethod",
           "MultilevelTrainer"]


def _sizes(v, dim: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else (int(v),) * dim


def prolong_network(
    net: ContinuumNetwork,
    control_size: int | tuple[int, ...] | None = None,
    intervals: int | None = None,
    discretization: Discretization | None = None,
    readout_size: int | tuple[int, ...] | None = None,
    lifting_size: int | tuple[int, ...] | None = None,
    kernel_size: int | tuple[int, ...] | None = None,
) -> ContinuumNetwork:
    """The same network in a finer representation (see module docstring).

    Parameters
    ----------
    net : ContinuumNetwork
        With :class:`~pdenets.controls.GridControls` or
        :class:`~pdenets.kernels.KernelControls` (MODEL.md §10).
    control_size, intervals : optional
        Target control grid and depth intervals (:meth:`GridControls.prolong`,
        :meth:`KernelControls.prolong <pdenets.kernels.KernelControls.prolong>`: the bias and
        dense / low-rank kernels on ``control_size``).
    discretization : Discretization, optional
        Default discretization of the result (the network's by default).
    readout_size, lifting_size : optional
        Target control grids of a learnable readout c_j and lifting φ_i (default: the new
        control size when they had the controls' size, else unchanged). Their values are
        interpolated in their own multilinear basis (exact for nested grids); d_j is copied.
    kernel_size : optional
        Target displacement grid of a convolution kernel (KernelControls; default: unchanged,
        which keeps the kernel exactly).

    Returns
    -------
    ContinuumNetwork
        A new network (the input is not modified).
    """
    from .kernels import KernelControls

    old = net.controls
    if isinstance(old, GridControls):
        ctrl: GridControls | KernelControls = old.prolong(control_size, intervals)
    elif isinstance(old, KernelControls):
        ctrl = old.prolong(control_size, intervals, kernel_size=kernel_size)
    else:
        raise PdenetsError(f"prolong_network needs GridControls or KernelControls, got "
                           f"{type(old).__name__}")
    was = dict(old.named_parameters())
    for name, p in ctrl.named_parameters():
        if name in was:
            p.requires_grad_(was[name].requires_grad)
    dim = net.dim
    ro: Readout = net.readout
    if isinstance(ro, LinearReadout):
        size = _sizes(readout_size, dim) if readout_size is not None else (
            ctrl.size if ro.size == old.size else ro.size)
        Ps = _basis.basis_prolong(ro.size, size, ro.basis, ro.c.dtype).to(ro.c.device)
        new_ro = LinearReadout(ro.outputs, dim, size, c=(ro.c.detach() @ Ps.T),
                               d=ro.d.detach(), dtype=ro.c.dtype, basis=ro.basis,
                               channels=ro.channels)
        new_ro.c.requires_grad_(ro.c.requires_grad)
        new_ro.d.requires_grad_(ro.d.requires_grad)
        ro = new_ro.to(ro.c.device)
    else:
        ro = copy.deepcopy(ro)
    lift: Lifting = net.lifting
    if isinstance(lift, LearnableLifting):
        size = _sizes(lifting_size, dim) if lifting_size is not None else (
            ctrl.size if lift.size == old.size else lift.size)
        Ps = _basis.basis_prolong(lift.size, size, lift.basis,
                                  lift.phi.dtype).to(lift.phi.device)
        new_l = LearnableLifting(lift.shape, size, lift.phi.dtype,
                                 phi=lift.phi.detach() @ Ps.T, basis=lift.basis)
        new_l.phi.requires_grad_(lift.phi.requires_grad)
        lift = new_l.to(lift.phi.device)
    elif isinstance(lift, PiecewiseConstantLifting):
        lift = PiecewiseConstantLifting(lift.shape)
    else:
        lift = copy.deepcopy(lift)
    return ContinuumNetwork(ctrl, net.dynamics, lift, ro,
                            discretization or net.discretization)


def _coarse_size(s: int, f: int, basis: str = "linear") -> int:
    """Control size coarsened by the factor f: vertices (s − 1)/f + 1 (linear space basis)
    or cells s/f (constant), rounded up so that coarse grids stay as fine as possible."""
    if basis == "constant":
        return max(1, math.ceil(s / f))
    return max(2, (s - 1) // f + 1) if (s - 1) % f == 0 else max(2, math.ceil((s - 1) / f) + 1)


def _solver_levels(cfg: Config) -> list[Config]:
    """Level configurations that differ in solver, method and epochs only (``level_coarsen =
    none``, also for data given as tensors: no dataset is needed)."""
    epochs = level_epochs(cfg)
    return [_level_settings(copy.deepcopy(cfg), cfg, ell, epochs)
            for ell in range(cfg.train.levels)]


def _level_settings(c: Config, cfg: Config, ell: int, epochs: list[int]) -> Config:
    """``c`` (a copy of ``cfg``) with what every level ``ell`` sets: the coarse levels' solver
    ``train.level_solver``, the method ``train.level_method`` and the level's epochs."""
    t = cfg.train
    if t.level_solver and ell < t.levels - 1:
        c.model.solver = t.level_solver
    c.train.method = t.level_method
    c.train.epochs = epochs[ell]
    return c


def _resolve(net: ContinuumNetwork, lcfg: Config) -> ContinuumNetwork:
    """``net`` with the depth solver of the level configuration ``lcfg`` (width and steps of
    its own discretization)."""
    from .integrators import make_solver

    d = net.discretization
    net.discretization = Discretization(d.width, make_solver(lcfg.model.solver), d.steps)
    return net


def level_configs(cfg: Config, ds) -> list[Config]:
    """Configurations of the levels, coarse to fine (the last one is ``cfg``'s model with
    the width and control size resolved), each with ``train.method = train.level_method``
    and ``train.epochs`` = the level's epochs."""
    t = cfg.train
    L = t.levels
    width, ctrl = default_sizes(cfg, ds)
    epochs = level_epochs(cfg)
    what = t.level_coarsen
    out = []
    for ell in range(L):
        f = 2 ** (L - 1 - ell)
        c = copy.deepcopy(cfg)
        m = c.model
        if what in ("all", "discretization"):
            m.width = max(4, math.ceil(width[0] / f))
            if m.width >= width[0]:
                m.width = width[0]
        else:
            m.width = width[0]
        if what in ("all", "discretization", "depth"):
            m.steps = max(1, math.ceil(cfg.model.steps / f))
        if what in ("all", "controls"):
            m.control_size = _coarse_size(ctrl[0], f, cfg.model.space_basis)
            m.intervals = max(1, math.ceil(cfg.model.intervals / f))
        else:
            m.control_size = ctrl[0]
        out.append(_level_settings(c, cfg, ell, epochs))
    return out


def level_epochs(cfg: Config) -> list[int]:
    """Epochs per level: ``train.level_epochs``; else round(``fine_fraction`` · ``epochs``)
    (at least 1) at the finest level and the rest split evenly over the coarse ones (a coarse
    level may get none when ``epochs`` is small: it is then skipped); with
    ``fine_fraction = 0`` an even split, the remainder to the finest level."""
    t = cfg.train
    if t.level_epochs:
        return [int(v) for v in t.level_epochs]
    if t.fine_fraction > 0 and t.levels > 1:
        fine = min(t.epochs, max(1, round(t.fine_fraction * t.epochs)))
        rest = t.epochs - fine
        coarse = [rest // (t.levels - 1)] * (t.levels - 1)
        coarse[-1] += rest - sum(coarse)
        return [*coarse, fine]
    base = max(1, t.epochs // t.levels)
    eps = [base] * t.levels
    eps[-1] = max(1, t.epochs - base * (t.levels - 1))
    return eps


@register_method("multilevel")
class MultilevelMethod(Method):
    """Coarse-to-fine training (see the module docstring); ``train.method = "multilevel"``.

    The trainer's loop runs ``sum(level_epochs)`` epochs; the method swaps the trainer's
    network, discretization, optimizer and parameters at each level change (the inner
    trainer of the level owns the optimizer and shares the trainer's shuffling generator, so
    one stream is saved in the checkpoint). A trainer built without a network starts from the
    coarsest level's network (``cfg.seed``).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.level = -1
        self.inner: Trainer | None = None

    @classmethod
    def delegate(cls, cfg: Config) -> str | None:
        """Every level trains with ``train.level_method`` (data parallel where it is)."""
        return cfg.train.level_method

    def prepare(self, cfg: Config, ds) -> Config:
        from .data import Dataset

        self.same_representation = cfg.train.level_coarsen == "none"
        if not isinstance(ds, Dataset):
            if not self.same_representation:
                raise PdenetsError(
                    f"train.method = multilevel with train.level_coarsen = "
                    f"{cfg.train.level_coarsen!r} builds each level's network from a dataset; "
                    f"with data given as tensors use train.level_coarsen = 'none' (levels that "
                    f"differ in their solver only) or another train.method")
            self.level_cfgs = _solver_levels(cfg)
        else:
            self.level_cfgs = level_configs(cfg, ds)
        self.level_epochs = level_epochs(cfg)
        self.bounds = [0]
        for e in self.level_epochs:
            self.bounds.append(self.bounds[-1] + e)
        outer = copy.deepcopy(cfg)
        outer.train.epochs = self.bounds[-1]
        self.ds = ds
        return outer

    def build_network(self, cfg: Config, ds) -> ContinuumNetwork:
        return build_network(self.level_cfgs[0], ds)

    def attach(self, trainer: Trainer) -> None:
        net = trainer.net
        if self.same_representation:  # a given network: its own width and steps (a copy:
            net = self._template(0, net)  # the caller's stays as it is)
        self._set_level(trainer, 0, net)

    # -- levels -----------------------------------------------------------------------------
    def _make_inner(self, trainer: Trainer, level: int, net: ContinuumNetwork) -> Trainer:
        lcfg = self.level_cfgs[level]
        inner = Trainer(lcfg, self.ds, net, method=get_method(lcfg.train.method)(lcfg),
                        objective=trainer.objective, adjoint=trainer.adjoint, dist=trainer.dist)
        inner.generator = trainer.generator  # one shuffling stream, saved in the checkpoint
        return inner

    def _set_level(self, trainer: Trainer, level: int, net: ContinuumNetwork) -> None:
        self.level = level
        trainer.net = net
        trainer.disc = net.discretization
        self.inner = self._make_inner(trainer, level, net)
        trainer.optimizer = self.inner.optimizer
        trainer.params = self.inner.params
        trainer.best = {"epoch": -1, "val_accuracy": -math.inf, "val_loss": math.inf}
        trainer.best_state = trainer._snapshot()
        trainer.stale = 0

    def _template(self, level: int, net: ContinuumNetwork | None = None) -> ContinuumNetwork:
        """The network of ``level``: built from its configuration, or (``level_coarsen =
        none``) ``net`` — by default the trainer's — integrated with the level's solver."""
        if self.same_representation:
            base = net if net is not None else self.inner.net if self.inner else None
            if base is not None:
                return _resolve(copy.deepcopy(base), self.level_cfgs[level])
        return build_network(self.level_cfgs[level], self.ds)

    def _advance(self, trainer: Trainer) -> None:
        if self.same_representation:  # the same functions: only the solver changes
            self._set_level(trainer, self.level + 1, self._template(self.level + 1, trainer.net))
            return
        tmpl = self._template(self.level + 1)
        tctrl = tmpl.controls
        if not isinstance(tctrl, (GridControls, KernelControls)):
            raise PdenetsError(f"multilevel training needs GridControls or KernelControls, got "
                               f"{type(tctrl).__name__}")
        kw = {}
        if isinstance(tmpl.readout, LinearReadout):
            kw["readout_size"] = tmpl.readout.size
        if isinstance(tmpl.lifting, LearnableLifting):
            kw["lifting_size"] = tmpl.lifting.size
        kern = getattr(tctrl, "kernel", None)
        for part in [kern, *getattr(kern, "parts", [])]:
            if isinstance(part, ConvKernel) and not part.lattice:
                kw["kernel_size"] = part.size
        fine = prolong_network(trainer.net, tctrl.size, tctrl.intervals,
                               tmpl.discretization, **kw)
        fine = fine.to(dtype=next(tmpl.parameters()).dtype)
        self._set_level(trainer, self.level + 1, fine)

    def level_of_epoch(self, epoch: int) -> int:
        """The level that trains epoch index ``epoch`` (0-based)."""
        for ell in range(len(self.level_epochs)):
            if epoch < self.bounds[ell + 1]:
                return ell
        return len(self.level_epochs) - 1

    # -- hooks of the trainer ---------------------------------------------------------------
    def train_epoch(self, trainer: Trainer) -> float:
        while self.level < self.level_of_epoch(trainer.epoch):
            self._advance(trainer)
        assert self.inner is not None
        local = trainer.epoch - self.bounds[self.level]
        lcfg = self.level_cfgs[self.level]
        for g in trainer.optimizer.param_groups:
            g["lr"] = g.setdefault("initial_lr", g["lr"]) * lr_factor(lcfg, local)
        return self.inner.train_epoch()

    def epoch_record(self, trainer: Trainer) -> dict:
        assert self.inner is not None
        return {"level": self.level, "level_width": list(trainer.disc.width.sizes),
                "level_steps": trainer.disc.steps, **self.inner.epoch_record()}

    def improved(self, trainer: Trainer, val: dict) -> bool | None:
        if self.level < len(self.level_epochs) - 1:
            return True  # coarse levels: keep the latest iterate, no early stopping
        return None

    def before_load(self, trainer: Trainer, info: dict) -> None:
        """Switch to the level of the saved epoch (its network is then overwritten)."""
        try:
            epoch = int(info["epoch"])
        except (KeyError, ValueError, TypeError):
            epoch = 0  # the trainer reports the mismatch
        level = self.level_of_epoch(epoch - 1) if epoch > 0 else 0
        if level != self.level:
            self._set_level(trainer, level, self._template(level, trainer.net))

    def after_load(self, trainer: Trainer) -> None:
        assert self.inner is not None
        self.inner.method.after_load(trainer)  # e.g. MSA counters from the outer history

    def result_metrics(self, trainer: Trainer) -> dict:
        assert self.inner is not None
        return {"levels": [
            {"width": c.model.width, "steps": c.model.steps, "solver": c.model.solver,
             "control_size": c.model.control_size,
             "intervals": c.model.intervals, "epochs": e, "method": c.train.method}
            for c, e in zip(self.level_cfgs, self.level_epochs)],
            **self.inner.method.result_metrics(self.inner)}


class MultilevelTrainer(Trainer):
    """:class:`~pdenets.training.Trainer` with the method :class:`MultilevelMethod`.

    Parameters
    ----------
    cfg, ds : Config, Dataset
    net : ContinuumNetwork, optional
        The coarsest level's initial network (built from the coarsest level's config by
        default, with ``cfg.seed``).
    checkpoint_path, log_path, progress :
        As for :class:`~pdenets.training.Trainer`.
    """

    method: MultilevelMethod

    def __init__(self, cfg: Config, ds, net: ContinuumNetwork | None = None, **kwargs) -> None:
        super().__init__(cfg, ds, net, method=MultilevelMethod(cfg), **kwargs)

    @property
    def level(self) -> int:
        """The level being trained (0 = coarsest)."""
        return self.method.level

    @property
    def level_cfgs(self) -> list[Config]:
        return self.method.level_cfgs

    @property
    def level_epochs(self) -> list[int]:
        return self.method.level_epochs

    @property
    def inner(self) -> Trainer:
        """The trainer of the current level."""
        assert self.method.inner is not None
        return self.method.inner

    def level_of_epoch(self, epoch: int) -> int:
        """The level that trains epoch index ``epoch`` (0-based)."""
        return self.method.level_of_epoch(epoch)
