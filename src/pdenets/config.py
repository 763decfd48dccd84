"""Run configuration: TOML files and ``--set key=value`` overrides with dotted keys.

Every option has a default, so ``pdenets train`` with no arguments trains the embedded default
(digits). A configuration is a tree of dataclasses with typed fields, read by the schema engine
of :mod:`pdenets._schema` (shared with ``pdenets hjb``); TOML tables and dotted keys address it
(``train.method``, ``model.width``, ...). Unknown keys, wrong types (a TOML file must give
each key a value of its type; ``--set`` text is parsed as that type, lists in TOML syntax),
NaN/Inf and invalid values raise :class:`~pdenets.errors.ConfigError` naming the key (with a
suggestion for typos), and sizes whose memory or time estimate is absurd raise
:class:`~pdenets._limits.SizeLimitError` (:func:`pdenets._limits.check_training`).

Other layers extend the options of ``[train]`` for their methods (e.g. MSA's ``rho``) by adding
fields to :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _schema
from .errors import ConfigError


@dataclass
class DataConfig:
    """``[data]``: dataset name or file, split fractions and seed (see :mod:`pdenets.data`)."""

    name: str = "digits"
    seed: int = 0
    test_fraction: float = 0.25
    val_fraction: float = 0.1
    n_samples: int = 1000
    standardize: bool = True
    length: int = 40  # of the synthetic ``signals`` (40 to 4096)
    image_size: int = 32  # side of the synthetic ``shapes`` images (8 to 128)


@dataclass
class ModelConfig:
    """``[model]``: architecture and default discretization (0 = automatic)."""

    dynamics: str = "standard"
    activation: str = "tanh"
    eps: float = 0.0
    T: float = 3.0
    control_size: int = 0
    intervals: int = 4
    time_basis: str = "linear"
    space_basis: str = "constant"
    rule: str = "midpoint"
    width: int = 0
    solver: str = "rk4"
    steps: int = 8
    readout: str = "linear"
    learnable_lifting: bool = False
    init_scale: float = 0.5
    # structured kernels and channels (MODEL.md §10; pdenets.kernels)
    #: "auto": conv+lowrank for images (the continuum CNN, MODEL.md §10), dense otherwise
    kernel: str = "auto"
    kernel_radius: float = 0.25
    rank: int = 8
    channels: int = 1


@dataclass
class ObjectiveConfig:
    """``[objective]``: loss (``auto`` = from the data) and regularization α, β (§4)."""

    loss: str = "auto"
    alpha: float = 1e-3
    beta: float = 1e-4
    gamma: float = 0.0


@dataclass
class TrainConfig:
    """``[train]``: optimization method and its parameters."""

    method: str = "multilevel"
    epochs: int = 80
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 0
    patience: int = 0
    keep: str = "last"
    gradient: str = "discrete"
    checkpoint_segments: int = 0
    adjoint_steps: int = 0
    lbfgs_iterations: int = 20
    lbfgs_lr: float = 1.0
    history_size: int = 20
    clip_norm: float = 0.0
    checkpoint_every: int = 1
    eval_batch_size: int = 2048
    # the optimization step (issue 13): torch.compile ("auto": where it pays) and CUDA graphs
    compile: str = "auto"
    cuda_graphs: bool = False
    # random affine deformations of image inputs (pdenets.data.random_affine)
    augment_rotate: float = 10.0
    augment_shift: float = 0.5
    augment_scale: float = 0.1
    # method of successive approximations (MODEL.md §7)
    msa_rho: float = 1.0
    msa_inner_steps: int = 10
    msa_inner_lr: float = 0.05
    msa_inner_solver: str = "lbfgs"
    msa_readout_steps: int = 10
    msa_adapt_rho: bool = True
    # multilevel (coarse-to-fine) training (MODEL.md §2)
    levels: int = 2
    level_method: str = "adam"
    #: epochs per level, coarse to fine (empty: from ``fine_fraction``); the old
    #: comma-separated string is still read, with a DeprecationWarning
    level_epochs: list[int] = field(default_factory=list, metadata={"legacy_csv": True})
    #: share of ``epochs`` trained at the finest level when ``level_epochs`` is empty (at
    #: least one epoch; 0: an even split); the coarse levels share the rest evenly
    fine_fraction: float = 0.5
    level_coarsen: str = "none"
    #: depth solver of the coarse levels ("" = model.solver): e.g. explicit Euler, the ResNet
    #: that the model's Euler discretization is, before the finest level's accurate solver
    level_solver: str = "euler"


@dataclass
class Config:
    """A whole run: seed, dtype, device and the sections."""

    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The configuration as nested dicts (readable back by :func:`config_from_dict`)."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved configuration as TOML (readable back by :func:`load_config`)."""
        return _schema.to_toml(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file ``path``, then ``overrides`` (``key=value`` strings).

    Parameters
    ----------
    path : str or Path, optional
        TOML file; its tables and keys are those of :class:`Config`.
    overrides : list of str, optional
        ``--set`` items ``key=value``: ``value`` is parsed as the type of ``key`` (numbers,
        ``true``/``false``, strings verbatim, lists in TOML syntax such as
        ``train.level_epochs=[3, 3, 4]``).

    Raises
    ------
    ConfigError
        Unknown key (with a suggestion), wrong type, non-finite number, invalid value.
    """
    cfg = _schema.load(Config, path, overrides)
    validate(cfg)
    return cfg


def config_from_dict(d: dict[str, Any]) -> Config:
    """The validated :class:`Config` of the nested dict ``d`` (e.g. :meth:`Config.to_dict`
    stored in a checkpoint): absent keys take their defaults, values are type-checked as in a
    TOML file (no text parsing)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a configuration must be a table (dict), got {type(d).__name__}")
    cfg = _schema.from_dict(Config, d)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check value ranges and choices; raise :class:`ConfigError` naming the key."""
    from .activations import ACTIVATIONS
    from .adjoint import ADJOINTS
    from .controls import SPACE_BASES, TIME_BASES
    from .data import BUILTIN
    from .dynamics import DYNAMICS
    from .integrators import SOLVERS
    from .objective import LOSSES
    from .quadrature import RULES

    def choice(key, value, options):
        if value not in options:
            raise ConfigError(f"{key}: unknown value {value!r}; choose one of "
                              f"{', '.join(options)}")

    def positive(key, value, allow_zero=False):
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")

    from . import _limits
    from .training.methods import METHODS, SCHEDULES

    _check_types(cfg)
    choice("dtype", cfg.dtype, ("float32", "float64"))
    _check_device(cfg.device)
    for key, seed in (("seed", cfg.seed), ("data.seed", cfg.data.seed)):
        if not 0 <= seed < 2**32:
            raise ConfigError(f"{key}: must lie in [0, 2**32), got {seed}")
    d, m, o, t = cfg.data, cfg.model, cfg.objective, cfg.train
    if d.name not in BUILTIN and not Path(d.name).suffix:
        choice("data.name", d.name, BUILTIN)
    for key in ("test_fraction", "val_fraction"):
        v = getattr(d, key)
        if not (0 <= v < 1) or (key == "test_fraction" and v == 0):
            raise ConfigError(f"data.{key}: must lie in (0, 1), got {v}")
    positive("data.n_samples", d.n_samples)
    if not 8 <= d.image_size <= 128:
        raise ConfigError(f"data.image_size: must lie in [8, 128], got {d.image_size}")
    choice("model.dynamics", m.dynamics, tuple(DYNAMICS))
    choice("model.activation", m.activation, ACTIVATIONS)
    choice("model.time_basis", m.time_basis, TIME_BASES)
    choice("model.space_basis", m.space_basis, SPACE_BASES)
    choice("model.rule", m.rule, tuple(RULES))
    choice("model.solver", m.solver, tuple(SOLVERS))
    choice("model.readout", m.readout, ("linear", "cell_average"))
    positive("model.eps", m.eps, allow_zero=True)
    positive("model.T", m.T)
    positive("model.control_size", m.control_size, allow_zero=True)
    if m.control_size == 1 and m.space_basis == "linear":
        raise ConfigError("model.control_size: needs >= 2 vertices per axis for the linear "
                          "space basis (or 0 = auto)")
    if o.gamma > 0 and m.space_basis != "linear":
        raise ConfigError("objective.gamma > 0 (H¹-in-width penalty) needs model.space_basis "
                          "= 'linear': piecewise-constant controls have no gradient in L²")
    from .kernels import KERNELS

    choice("model.kernel", m.kernel, ("auto", *KERNELS))
    if not 0 < m.kernel_radius <= 1:
        raise ConfigError(f"model.kernel_radius: must lie in (0, 1] (a fraction of the width "
                          f"domain), got {m.kernel_radius!r}")
    positive("model.rank", m.rank)
    positive("model.channels", m.channels)
    if m.channels > 256:
        raise ConfigError(f"model.channels: at most 256, got {m.channels}")
    positive("model.intervals", m.intervals)
    positive("model.width", m.width, allow_zero=True)
    positive("model.steps", m.steps)
    positive("model.init_scale", m.init_scale, allow_zero=True)
    choice("objective.loss", o.loss, ("auto", *LOSSES))
    positive("objective.alpha", o.alpha, allow_zero=True)
    positive("objective.beta", o.beta, allow_zero=True)
    positive("objective.gamma", o.gamma, allow_zero=True)
    choice("train.method", t.method, METHODS)
    choice("train.level_method", t.level_method, tuple(x for x in METHODS if x != "multilevel"))
    choice("train.schedule", t.schedule, SCHEDULES)
    choice("train.keep", t.keep, ("best", "last"))
    choice("train.gradient", t.gradient, tuple(ADJOINTS))
    choice("train.compile", t.compile, ("auto", "on", "off"))
    positive("train.epochs", t.epochs)
    positive("train.batch_size", t.batch_size)
    positive("train.lr", t.lr)
    for key in ("momentum", "weight_decay", "clip_norm", "msa_rho"):
        positive(f"train.{key}", getattr(t, key), allow_zero=True)
    for key in ("warmup_epochs", "patience", "checkpoint_segments", "adjoint_steps",
                "augment_rotate", "augment_shift", "augment_scale"):
        positive(f"train.{key}", getattr(t, key), allow_zero=True)
    for key in ("lbfgs_iterations", "history_size", "checkpoint_every", "eval_batch_size",
                "msa_inner_steps", "levels"):
        positive(f"train.{key}", getattr(t, key))
    positive("train.msa_inner_lr", t.msa_inner_lr)
    choice("train.msa_inner_solver", t.msa_inner_solver, ("lbfgs", "adam"))
    positive("train.msa_readout_steps", t.msa_readout_steps, allow_zero=True)
    choice("train.level_coarsen", t.level_coarsen,
           ("all", "discretization", "controls", "depth", "none"))
    if t.level_solver:
        choice("train.level_solver", t.level_solver, tuple(SOLVERS))
    if not 0 <= t.fine_fraction < 1:
        raise ConfigError(f"train.fine_fraction: must be in [0, 1), got {t.fine_fraction}")
    if t.level_epochs and (len(t.level_epochs) != t.levels or min(t.level_epochs) < 1):
        raise ConfigError(f"train.level_epochs: needs {t.levels} positive integers (one per "
                          f"level, coarse to fine), got {t.level_epochs!r}")
    positive("train.lbfgs_lr", t.lbfgs_lr)
    if t.augment_scale >= 1:
        raise ConfigError(f"train.augment_scale: must be < 1 (scale factors 1 ± it), "
                          f"got {t.augment_scale}")
    if t.gradient == "continuous" and m.eps > 0:
        raise ConfigError("train.gradient = 'continuous' is unavailable with model.eps > 0 "
                          "(backward heat equation); use 'discrete'")
    _limits.check_training(cfg)


def _check_types(cfg: Config) -> None:
    """Every field of a configuration built in Python has its annotated type and is finite
    (normalized in place: integers for floats, the old level_epochs string)."""
    _schema.check_tree(cfg)


def _check_device(device: str) -> None:
    import re

    import torch

    if device == "cpu":
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not m:
        raise ConfigError(f"device: expected 'cpu' or 'cuda[:k]', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"device: {device!r} does not exist ({torch.cuda.device_count()} "
                          f"CUDA device(s))")
