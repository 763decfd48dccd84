"""Built-in example networks (used by ``pdenets simulate --example`` and the README).

They are fixed, smooth, resolution-independent models: handy for trying discretizations.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_choice
from .controls import GridControls
from .dynamics import make_dynamics
from .integrators import RK4
from .lifting import PiecewiseConstantLifting
from .network import ContinuumNetwork, Discretization
from .quadrature import Midpoint
from .readout import CellAverageReadout

EXAMPLES = ("demo1d", "demo2d")


def example_network(name: str) -> tuple[ContinuumNetwork, np.ndarray]:
    """Return ``(network, default_inputs)`` of the built-in example ``name``.

    ``demo1d``: d = 1, 8 features, tanh, w = 2 cos(π(x − y)) (1 − t/2), b = 0.3 sin(2πx);
    ``demo2d``: d = 2, an 8×8 image (a digit from scikit-learn's bundled set), a smooth
    rotating kernel.
    """
    check_choice(name, EXAMPLES, "example")
    if name == "demo1d":
        ctrl = GridControls.from_functions(
            lambda x, y, t: 2.0 * torch.cos(math.pi * (x[..., 0] - y[..., 0])) * (1 - t / 2),
            lambda x, t: 0.3 * torch.sin(2 * math.pi * x[..., 0]),
            dim=1, size=17, intervals=4,
        )
        net = ContinuumNetwork(ctrl, make_dynamics("standard", "tanh"),
                               PiecewiseConstantLifting(8), CellAverageReadout(2),
                               Discretization(Midpoint(64), RK4(), 32))
        xi = np.sin(np.linspace(0, 3, 8))[None, :] * np.array([[1.0], [-0.5]])
        return net, xi
    ctrl = GridControls.from_functions(
        lambda x, y, t: 3.0 * torch.exp(-8 * ((x - y.flip(-1)) ** 2).sum(-1)) - 1.0,
        lambda x, t: 0.2 * torch.cos(math.pi * (x[..., 0] + t)),
        dim=2, size=9, intervals=2,
    )
    net = ContinuumNetwork(ctrl, make_dynamics("standard", "tanh"),
                           PiecewiseConstantLifting((8, 8)), CellAverageReadout((2, 2)),
                           Discretization(Midpoint(16, 2), RK4(), 16))
    from sklearn.datasets import load_digits

    img = load_digits().images[:2] / 16.0
    return net, img
