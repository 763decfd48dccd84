"""Multilevel (coarse-to-fine) training (MODEL.md §2).

Because the controls are functions stored in a resolution-independent representation, a network
trained at a coarse width, few depth steps and a coarse control grid can be *prolonged* — the
same functions written in a finer representation (:func:`prolong_network`) — and training
continues at the finer level. For nested grids (``size − 1`` and ``intervals`` multiplied by an
integer) the prolongation represents exactly the same functions, so the prolonged network has
exactly the coarse network's outputs at any common discretization; otherwise it interpolates.

:class:`MultilevelTrainer` (``train.method = "multilevel"``) trains ``train.levels`` levels,
coarse to fine, with the optimizer ``train.level_method`` (adam, sgd, lbfgs or msa) and
``train.level_epochs`` epochs per level (a list, coarse to fine; default: an even
split of ``train.epochs``, the remainder to the finest level). Level ℓ = L−1 is the configured
model; level ℓ is coarser by the factor f = 2^(L−1−ℓ) in what ``train.level_coarsen`` selects:

* ``all`` (default): width nodes per axis (÷f, at least 4), depth steps (÷f, at least 1),
  control-grid vertices ((size−1)/f + 1, at least 2) and depth intervals (÷f, at least 1);
* ``discretization``: width and steps only (the control representation stays the finest);
* ``controls``: control grid and intervals only.

Every level uses its own learning-rate schedule (``train.schedule`` over the level's epochs).
At coarse levels there is no early stopping and no best-epoch selection: the level's last
iterate is prolonged. The best-by-validation selection and ``train.patience`` apply within the
finest level, so the result always has the configured (finest) architecture and
discretization. History records carry ``level``, ``level_width`` and ``level_steps``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from . import _basis
from .config import Config
from .controls import GridControls
from .errors import PdenetsError
from .lifting import LearnableLifting, Lifting, PiecewiseConstantLifting
from .network import ContinuumNetwork, Discretization
from .readout import LinearReadout, Readout
from .training import Trainer, build_network, default_sizes, lr_factor

__all__ = ["prolong_network", "level_configs", "level_epochs", "MultilevelTrainer"]


def _sizes(v, dim: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else (int(v),) * dim


def prolong_network(
    net: ContinuumNetwork,
    control_size: int | tuple[int, ...] | None = None,
    intervals: int | None = None,
    discretization: Discretization | None = None,
    readout_size: int | tuple[int, ...] | None = None,
    lifting_size: int | tuple[int, ...] | None = None,
) -> ContinuumNetwork:
    """The same network in a finer representation (see module docstring).

    Parameters
    ----------
    net : ContinuumNetwork
        With :class:`~pdenets.controls.GridControls`.
    control_size, intervals : optional
        Target control grid and depth intervals (:meth:`GridControls.prolong`).
    discretization : Discretization, optional
        Default discretization of the result (the network's by default).
    readout_size, lifting_size : optional
        Target control grids of a learnable readout c_j and lifting φ_i (default: the new
        control size when they had the controls' size, else unchanged). Their values are
        interpolated in their own multilinear basis (exact for nested grids); d_j is copied.

    Returns
    -------
    ContinuumNetwork
        A new network (the input is not modified).
    """
    if not isinstance(net.controls, GridControls):
        raise PdenetsError("prolong_network needs GridControls")
    old = net.controls
    ctrl = old.prolong(control_size, intervals)
    ctrl.w.requires_grad_(old.w.requires_grad)
    ctrl.b.requires_grad_(old.b.requires_grad)
    dim = net.dim
    ro: Readout = net.readout
    if isinstance(ro, LinearReadout):
        size = _sizes(readout_size, dim) if readout_size is not None else (
            ctrl.size if ro.size == old.size else ro.size)
        Ps = _basis.basis_prolong(ro.size, size, ro.basis, ro.c.dtype).to(ro.c.device)
        new_ro = LinearReadout(ro.outputs, dim, size, c=(ro.c.detach() @ Ps.T),
                               d=ro.d.detach(), dtype=ro.c.dtype, basis=ro.basis)
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
            m.steps = max(1, math.ceil(cfg.model.steps / f))
        else:
            m.width = width[0]
        if what in ("all", "controls"):
            m.control_size = _coarse_size(ctrl[0], f, cfg.model.space_basis)
            m.intervals = max(1, math.ceil(cfg.model.intervals / f))
        else:
            m.control_size = ctrl[0]
        c.train.method = t.level_method
        c.train.epochs = epochs[ell]
        out.append(c)
    return out


def level_epochs(cfg: Config) -> list[int]:
    """Epochs per level: ``train.level_epochs`` or an even split of ``train.epochs``."""
    t = cfg.train
    if t.level_epochs:
        return [int(v) for v in t.level_epochs]
    base = max(1, t.epochs // t.levels)
    eps = [base] * t.levels
    eps[-1] = max(1, t.epochs - base * (t.levels - 1))
    return eps


class MultilevelTrainer(Trainer):
    """Coarse-to-fine training (see the module docstring); ``train.method = "multilevel"``.

    Parameters
    ----------
    cfg, ds : Config, Dataset
    net : ContinuumNetwork, optional
        The coarsest level's initial network (built from the coarsest level's config by
        default, with ``cfg.seed``).
    checkpoint_path, log_path, progress :
        As for :class:`~pdenets.training.Trainer`.
    """

    def __init__(self, cfg: Config, ds, net: ContinuumNetwork | None = None, **kwargs) -> None:
        self.level_cfgs = level_configs(cfg, ds)
        self.level_epochs = level_epochs(cfg)
        self.bounds = [0]
        for e in self.level_epochs:
            self.bounds.append(self.bounds[-1] + e)
        outer = copy.deepcopy(cfg)
        outer.train.epochs = self.bounds[-1]
        net0 = net if net is not None else build_network(self.level_cfgs[0], ds)
        super().__init__(outer, ds, net0, **kwargs)
        self.level = -1
        self._set_level(0, self.net)
        self.method_step = self._epoch_level

    # -- levels -----------------------------------------------------------------------------
    def _make_inner(self, level: int, net: ContinuumNetwork) -> Trainer:
        lcfg = self.level_cfgs[level]
        if lcfg.train.method == "msa":
            from .pontryagin import MSATrainer

            inner: Trainer = MSATrainer(lcfg, self.ds, net)
        else:
            inner = Trainer(lcfg, self.ds, net)
        inner.generator = self.generator  # one shuffling stream, saved in the checkpoint
        return inner

    def _set_level(self, level: int, net: ContinuumNetwork) -> None:
        self.level = level
        self.net = net
        self.disc = net.discretization
        self.inner = self._make_inner(level, net)
        self.optimizer = self.inner.optimizer
        self.params = self.inner.params
        self.best = {"epoch": -1, "val_accuracy": -math.inf, "val_loss": math.inf}
        self.best_state = self._snapshot()
        self.stale = 0

    def _template(self, level: int) -> ContinuumNetwork:
        return build_network(self.level_cfgs[level], self.ds)

    def _advance(self) -> None:
        tmpl = self._template(self.level + 1)
        kw = {}
        if isinstance(tmpl.readout, LinearReadout):
            kw["readout_size"] = tmpl.readout.size
        if isinstance(tmpl.lifting, LearnableLifting):
            kw["lifting_size"] = tmpl.lifting.size
        fine = prolong_network(self.net, tmpl.controls.size, tmpl.controls.intervals,
                               tmpl.discretization, **kw)
        fine = fine.to(dtype=next(tmpl.parameters()).dtype)
        self._set_level(self.level + 1, fine)

    def level_of_epoch(self, epoch: int) -> int:
        """The level that trains epoch index ``epoch`` (0-based)."""
        for ell in range(len(self.level_epochs)):
            if epoch < self.bounds[ell + 1]:
                return ell
        return len(self.level_epochs) - 1

    def _epoch_level(self) -> float:
        while self.level < self.level_of_epoch(self.epoch):
            self._advance()
        local = self.epoch - self.bounds[self.level]
        lcfg = self.level_cfgs[self.level]
        for g in self.optimizer.param_groups:
            g["lr"] = g.setdefault("initial_lr", g["lr"]) * lr_factor(lcfg, local)
        return self.inner.train_epoch()

    def epoch_record(self) -> dict:
        return {"level": self.level, "level_width": list(self.disc.width.sizes),
                "level_steps": self.disc.steps, **self.inner.epoch_record()}

    def _improved(self, val: dict) -> bool:
        if self.level < len(self.level_epochs) - 1:
            return True  # coarse levels: keep the latest iterate, no early stopping
        return super()._improved(val)

    # -- checkpoints ------------------------------------------------------------------------
    def load_checkpoint(self, path) -> None:
        path = Path(path)
        if not path.is_file():
            raise PdenetsError(f"checkpoint {str(path)!r} does not exist")
        try:  # the level of the saved epoch; a damaged file is reported by the base class
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n > path.stat().st_size - 8:
                    raise ValueError("truncated header")
                head = json.loads(f.read(n))
            info = json.loads(head["__metadata__"]["pdenets"])
            epoch = int(info["epoch"])
        except (OSError, KeyError, ValueError, TypeError, AttributeError):
            epoch = 0
        level = self.level_of_epoch(epoch - 1) if epoch > 0 else 0
        if level != self.level:
            self._set_level(level, self._template(level))
        super().load_checkpoint(path)
        if hasattr(self.inner, "msa") and self.history:
            self.inner.msa.load_state(self.history[-1])

    def _result(self, stopped: bool):
        res = super()._result(stopped)
        res.metrics["levels"] = [
            {"width": c.model.width, "steps": c.model.steps, "control_size": c.model.control_size,
             "intervals": c.model.intervals, "epochs": e, "method": c.train.method}
            for c, e in zip(self.level_cfgs, self.level_epochs)]
        if hasattr(self.inner, "msa"):
            res.metrics.update(self.inner.msa.state())
        return res
