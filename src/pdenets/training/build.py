"""The parts of a training run built from a :class:`~pdenets.config.Config`: the network
(MODEL.md §1–3), the objective J (§4) and the gradient strategy (§5).

:mod:`pdenets.training.factory` assembles them into a trainer; the trainer itself uses them only
for the parts it is not given.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch

from ..adjoint import Adjoint, ContinuousAdjoint, DiscreteAdjoint
from ..errors import ConfigError, PdenetsError
from ..integrators import make_solver
from ..network import ContinuumNetwork, Discretization
from ..objective import Objective

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset

__all__ = ["DTYPES", "default_sizes", "build_network", "make_objective",
           "make_adjoint_from_config", "resolved_config", "discretization_from"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def default_sizes(cfg: Config, ds: Dataset) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(width nodes per axis, control vertices/cells per axis) after resolving ``0 = auto``.

    Images: one neuron per pixel; the controls live on the pixel grid — p cells per axis for
    the constant space basis, p + 1 vertices (the pixel corners) for the linear one.
    Feature vectors: at least 32 neurons, a multiple of the number of features (so the
    piecewise-constant lifting is resolved exactly), and k cells (constant) or k + 1 vertices
    (linear) with k the largest divisor of the width ≤ max(16, n) (so each feature can be
    weighted on its own).
    Either way the jumps or kinks of the controls lie on cell boundaries of the midpoint rule
    at this width and at every multiple of it: refining the width is exact (constant basis,
    see :class:`~pdenets.controls.GridControls`) or converges at second order (linear basis)
    — see the discretization-invariance tests.
    """
    shape = ds.input_shape
    m = cfg.model
    extra = 1 if m.space_basis == "linear" else 0
    width: tuple[int, ...]
    ctrl: tuple[int, ...]
    if len(shape) == 2:
        width = (m.width,) * 2 if m.width else shape
        ctrl = (m.control_size,) * 2 if m.control_size else tuple(s + extra for s in shape)
    else:
        n = shape[0]
        width = (m.width,) if m.width else (n * math.ceil(32 / n),)
        k = max(d for d in range(1, max(16, n) + 1) if width[0] % d == 0)
        ctrl = (m.control_size,) if m.control_size else (max(k, 1) + extra,)
    return width, ctrl


def resolved_kernel(cfg: Config, ds: Dataset) -> str:
    """``model.kernel`` with ``"auto"`` resolved: the continuum CNN ``conv+lowrank`` for
    images (translation structure, MODEL.md §10; on digits 98.9 % against the dense kernel's
    98.0 %, README), ``dense`` for feature vectors and 1-D inputs."""
    k = cfg.model.kernel
    if k != "auto":
        return k
    return "conv+lowrank" if len(ds.input_shape) == 2 else "dense"


def build_network(cfg: Config, ds: Dataset) -> ContinuumNetwork:
    """The network described by ``cfg.model`` for the inputs and outputs of ``ds``."""
    m = cfg.model
    width, ctrl = default_sizes(cfg, ds)
    try:
        net = ContinuumNetwork.create(
            ds.input_shape, ds.n_outputs, control_size=ctrl, intervals=m.intervals, T=m.T,
            time_basis=m.time_basis, space_basis=m.space_basis, dynamics=m.dynamics,
            activation=m.activation, eps=m.eps,
            readout=m.readout, learnable_lifting=m.learnable_lifting, width=width, rule=m.rule,
            solver=m.solver, steps=m.steps, init_scale=m.init_scale, seed=cfg.seed,
            dtype=torch.float64, kernel=resolved_kernel(cfg, ds), kernel_radius=m.kernel_radius,
            rank=m.rank,
            channels=m.channels, in_channels=getattr(ds, "channels", 1),
        )
    except PdenetsError as e:
        raise ConfigError(f"model: {e}") from None
    return net.to(dtype=DTYPES[cfg.dtype], device=cfg.device)


def make_objective(cfg: Config, ds: Dataset) -> Objective:
    """J of MODEL.md §4 as ``cfg.objective`` states it (``loss = "auto"``: the data's loss)."""
    loss = ds.loss if cfg.objective.loss == "auto" else cfg.objective.loss
    if loss == "cross_entropy" and ds.task != "classification":
        raise ConfigError("objective.loss = 'cross_entropy' needs integer class labels")
    return Objective(loss, cfg.objective.alpha, cfg.objective.beta, cfg.objective.gamma)


def make_adjoint_from_config(cfg: Config) -> Adjoint | None:
    """The gradient strategy of MODEL.md §5 (``train.gradient``; None = plain autograd)."""
    t = cfg.train
    if t.gradient == "continuous":
        return ContinuousAdjoint(steps=t.adjoint_steps or None)
    if t.checkpoint_segments:
        per = max(1, math.ceil(cfg.model.steps / t.checkpoint_segments))
        return DiscreteAdjoint(checkpoint=per)
    return None


def resolved_config(cfg: Config, ds: Dataset) -> Config:
    """``cfg`` with ``model.kernel = "auto"`` resolved (:func:`resolved_kernel`) and
    ``model.width`` and ``model.control_size`` = 0 ("automatic") replaced by
    the values :func:`default_sizes` resolves them to (when one number per axis states them;
    a non-square image grid keeps 0 = the pixel grid). Training the result builds the same
    network."""
    width, ctrl = default_sizes(cfg, ds)
    res = copy.deepcopy(cfg)
    res.model.kernel = resolved_kernel(cfg, ds)
    if len(set(width)) == 1:
        res.model.width = int(width[0])
    if len(set(ctrl)) == 1:
        res.model.control_size = int(ctrl[0])
    return res


def discretization_from(net: ContinuumNetwork, width=None, steps=None, method=None,
                        rule=None) -> Discretization:
    """The network's default discretization with some parts replaced."""
    from ..quadrature import make_rule

    d = net.discretization
    w = d.width.sizes if width is None else width
    return Discretization(make_rule(rule or d.width.name, w, net.dim),
                          make_solver(method) if method else d.solver,
                          steps if steps is not None else d.steps)
