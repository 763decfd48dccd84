"""pdenets — the PDE model of deep neural networks.

A deep residual network in the limit of infinite width and depth is the
partial differential-integral equation (MODEL.md §1)

    ∂_t u(x,t) = σ( ∫_Ω w(x,y,t) u(y,t) dy + b(x,t) ) + ε Δ_x u(x,t).

The public API, by layer:

* Forward solver (MODEL.md §1–3): :class:`ContinuumNetwork`, :func:`solve`,
  :class:`Discretization`, controls (:class:`GridControls`, :class:`FunctionControls`),
  dynamics (:class:`Standard`, :class:`Field`, :class:`Selection`), width rules
  (:class:`Midpoint`, :class:`Trapezoid`, :class:`GaussLegendre`, :class:`MonteCarlo`),
  depth solvers (:class:`Euler`, :class:`Heun`, :class:`RK4`, :class:`Dopri5`,
  :class:`IMEXEuler`, :class:`Strang`), model files (:func:`save_model`, :func:`load_model`).
* A continuum block for any PyTorch model: :class:`PDEBlock` (shape-preserving, float32 by
  default, works in ``nn.Sequential``, under ``torch.compile`` and DDP).
"""

# first, before torch loads: sets OMP_WAIT_POLICY=PASSIVE unless set (see pdenets._threads)
from . import _threads  # noqa: F401
from ._version import __version__ as __version__
from .activations import Activation, get_activation
from .adjoint import Adjoint, ContinuousAdjoint, DiscreteAdjoint, make_adjoint
from .block import PDEBlock
from .controls import Controls, FunctionControls, GridControls
from .dynamics import Dynamics, Field, Selection, Standard, make_dynamics
from .errors import ConfigError, ModelFileError, PdenetsError, StabilityError
from .integrators import RK4, Dopri5, Euler, Heun, IMEXEuler, Solver, Strang, make_solver
from .lifting import LearnableLifting, PiecewiseConstantLifting
from .modelfile import load_model, save_model
from .network import ContinuumNetwork, Discretization, Solution, solve
from .objective import Objective
from .quadrature import GaussLegendre, Grid, Midpoint, MonteCarlo, Trapezoid, make_rule
from .readout import CellAverageReadout, LinearReadout

__all__ = [
    "Activation", "Adjoint", "ContinuousAdjoint", "DiscreteAdjoint", "make_adjoint",
    "CellAverageReadout", "ConfigError", "ContinuumNetwork", "Controls",
    "Discretization", "Dopri5", "Dynamics", "Euler", "Field", "FunctionControls",
    "GaussLegendre", "Grid", "GridControls", "Heun", "IMEXEuler", "LearnableLifting",
    "LinearReadout", "Midpoint", "ModelFileError", "MonteCarlo", "PdenetsError",
    "PiecewiseConstantLifting", "RK4", "Selection", "Solution", "Solver", "StabilityError",
    "Standard", "Strang", "Trapezoid", "get_activation", "load_model", "make_dynamics",
    "make_rule", "make_solver", "save_model", "solve", "Objective", "PDEBlock",
]
