"""The ``pdenets hjb`` configuration (MODEL.md §8): a typed dataclass tree read by the schema
engine of :mod:`pdenets._schema` (the one of ``pdenets train``).

Tables: ``[problem]`` (the reduced problem; ``v0`` is required), ``[grid]``, ``[solver]``
(``method = "grid" | "sampled"``, the grid scheme, device), ``[sampled]`` (the options of
:class:`pdenets.hjb.SampledOptions`), ``[closed_loop]``, ``[direct]``, ``[plot]``. The top-level
key ``method`` is a shorthand for ``solver.method`` (``pdenets hjb --set method=sampled``).
docs/hjb.md lists every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .. import _schema


@dataclass(kw_only=True)
class ProblemSection:
    """``[problem]``: the reduced problem (:class:`pdenets.hjb.ReducedProblem`) and v0."""

    dynamics: str = "standard"
    activation: str = "tanh"
    eps: float = 0.0
    controls: str = "wb"
    alpha: float = 1.0
    T: float = 1.0
    rule: str = "midpoint"
    width: int = 1
    samples: int = 1
    terminal: str = "state"
    target: float | list[float] = 0.0
    v0: float | list[float]  # required: D numbers, or one to broadcast
    w0: float = 0.0
    b0: float = 0.0


@dataclass
class GridSection:
    """``[grid]``: the state box and points per dimension (:class:`pdenets.hjb.StateGrid`)."""

    lo: float | list[float] = -1.0
    hi: float | list[float] = 1.0
    points: int | list[int] = 41


@dataclass
class SolverSection:
    """``[solver]``: the method, the grid scheme (:class:`pdenets.hjb.HJBOptions`) and the
    device; ``inner_points`` and ``newton_iters`` also serve the sampled method."""

    method: str = "grid"
    scheme: str = "lax-friedrichs"
    cfl: float = 0.9
    snapshots: int = 11
    max_memory_gb: float | None = None
    inner_points: int = 7
    newton_iters: int = 8
    max_steps: int = 1_000_000
    device: str = "cpu"


@dataclass
class SampledSection:
    """``[sampled]``: the sampled method's options (:class:`pdenets.hjb.SampledOptions`, less
    ``device``, ``threads``, ``inner_points`` and ``newton_iters``, which come from
    ``[solver]`` and ``--threads``)."""

    lo: float | list[float] = -1.0
    hi: float | list[float] = 1.0
    starts: int = 32
    validation: int = 16
    batch: int = 16
    rounds: int = 4
    tol: float = 0.01
    intervals: int = 16
    steps: int = 2
    tpbvp_iter: int = 200
    degree: int = 6
    hidden: int = 32
    layers: int = 2
    fit_iter: int = 200
    candidates: int = 8
    seed: int = 0


@dataclass
class ClosedLoopSection:
    """``[closed_loop]``: the closed loop under the feedback (:func:`pdenets.hjb.closed_loop`)."""

    steps: int = 200
    solver: str = "rk4"
    starts: list[list[float]] = field(default_factory=list)


@dataclass
class DirectSection:
    """``[direct]``: the direct method (:func:`pdenets.hjb.direct_method`; 0 intervals = skip)."""

    intervals: int = 0
    steps: int | None = None
    max_iter: int = 300


@dataclass
class PlotSection:
    """``[plot]``: depths shown in the plots and stored in feedback.npz."""

    depths: int = 4


@dataclass(kw_only=True)
class HJBConfig:
    """A ``pdenets hjb`` run (module docstring)."""

    _aliases: ClassVar[dict[str, str]] = {"method": "solver.method"}

    problem: ProblemSection
    grid: GridSection = field(default_factory=GridSection)
    solver: SolverSection = field(default_factory=SolverSection)
    sampled: SampledSection = field(default_factory=SampledSection)
    closed_loop: ClosedLoopSection = field(default_factory=ClosedLoopSection)
    direct: DirectSection = field(default_factory=DirectSection)
    plot: PlotSection = field(default_factory=PlotSection)

    def to_toml(self) -> str:
        """The configuration as TOML (readable back by :func:`load_hjb_config`)."""
        return _schema.to_toml(self)


METHODS = ("grid", "sampled")


def hjb_config_from_dict(d: dict) -> HJBConfig:
    """The :class:`HJBConfig` of nested dicts (TOML tables); types checked, ranges not (those
    are checked where the objects are built, ``pdenets.cli.hjb.build``)."""
    return _schema.from_dict(HJBConfig, d)


def load_hjb_config(path: str | Path | None, overrides: list[str] | None = None) -> HJBConfig:
    """The TOML file ``path`` with ``--set key=value`` ``overrides`` (dotted keys such as
    ``solver.scheme=weno5-rk3``, ``grid.points=[41, 41]`` or ``method=sampled``).

    Raises
    ------
    ConfigError
        For a missing/unreadable file, invalid TOML, an unknown table or key (with a
        suggestion), a value of the wrong type, a non-finite number or a missing required key
        (``problem.v0``).
    """
    return _schema.load(HJBConfig, path, overrides)
