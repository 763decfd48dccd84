"""Width discretization: quadrature rules on Ω = [0,1]^d (MODEL.md §2).

A rule (:class:`Midpoint`, :class:`Trapezoid`, :class:`GaussLegendre`, :class:`MonteCarlo`) is a
small, immutable description — a number of nodes per axis and a dimension. Calling
:meth:`QuadratureRule.grid` materializes it as a :class:`Grid`: nodes x_i, weights ω_i with
Σ ω_i = |Ω| = 1, so that ∫_Ω f(y) dy ≈ Σ_j ω_j f(x_j).

Rules in 2-D are tensor products (Monte Carlo excepted), and the node ordering is row-major
over (axis 0, axis 1), matching the pixel ordering of an image: node ``i*n1 + j`` sits at
``(axis0[i], axis1[j])``.

Expected orders of accuracy for smooth integrands, per axis with n nodes: midpoint and
trapezoid O(n^-2), Gauss–Legendre spectral (exact for polynomials of degree 2n−1), Monte Carlo
O(N^-1/2) in probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._checks import check_choice
from .errors import PdenetsError

MAX_NODES_1D = 4096
MAX_NODES_PER_AXIS_2D = 64


@dataclass(frozen=True)
class Grid:
    """A materialized width discretization.

    Attributes
    ----------
    nodes : torch.Tensor
        Shape ``(N, d)``, the neuron positions x_i ∈ [0,1]^d.
    weights : torch.Tensor
        Shape ``(N,)``, positive quadrature weights ω_i summing to 1.
    shape : tuple of int
        Nodes per axis for tensor-product rules, ``(N,)`` for 1-D and Monte Carlo in 1-D;
        ``None`` for unstructured (Monte Carlo in 2-D) grids.
    axes : tuple of torch.Tensor
        1-D node coordinates per axis for tensor-product rules (empty for Monte Carlo).
    rule : str
        Name of the rule that made it.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    shape: tuple[int, ...] | None
    axes: tuple[torch.Tensor, ...]
    rule: str
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        """Number of nodes N."""
        return int(self.nodes.shape[0])

    @property
    def dim(self) -> int:
        """Dimension d of Ω."""
        return int(self.nodes.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.nodes.dtype

    @property
    def device(self) -> torch.device:
        return self.nodes.device

    def integrate(self, f: torch.Tensor) -> torch.Tensor:
        """Quadrature of nodal values ``f`` (shape ``(..., N)``) over Ω."""
        return f @ self.weights

    def l2_norm(self, f: torch.Tensor) -> torch.Tensor:
        """Discrete L²(Ω) norm of nodal values ``f`` (shape ``(..., N)``)."""
        return torch.sqrt(torch.clamp((f * f) @ self.weights, min=0.0))


class QuadratureRule:
    """Base class of width quadrature rules; see the module docstring."""

    name: str = "rule"

    def __init__(self, n: int | tuple[int, ...], dim: int = 1) -> None:
        if dim not in (1, 2):
            raise PdenetsError(f"width dimension d must be 1 or 2, got {dim!r}")
        if isinstance(n, tuple | list):
            if len(n) != dim:
                raise PdenetsError(f"{self.name}: {len(n)} node counts given for d = {dim}")
            sizes = tuple(int(k) for k in n)
        else:
            if isinstance(n, bool) or not isinstance(n, int | np.integer):
                raise PdenetsError(f"{self.name}: number of nodes must be an integer, got {n!r}")
            sizes = (int(n),) * dim
        lo = self._min_nodes()
        hi = MAX_NODES_1D if dim == 1 else MAX_NODES_PER_AXIS_2D
        for k in sizes:
            if k < lo or k > hi:
                raise PdenetsError(
                    f"{self.name}: {k} nodes per axis is outside the supported range "
                    f"[{lo}, {hi}] for d = {dim}"
                )
        self.sizes = sizes
        self.dim = dim

    def _min_nodes(self) -> int:
        return 1

    def __repr__(self) -> str:
        n = self.sizes[0] if len(set(self.sizes)) == 1 else self.sizes
        return f"{type(self).__name__}({n!r}, dim={self.dim})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.sizes, self.dim))

    def _axis(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def grid(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Grid:
        """Materialize the rule as a :class:`Grid` with the given dtype and device."""
        axes = [self._axis(n) for n in self.sizes]
        if self.dim == 1:
            x, w = axes[0]
            nodes, weights = x[:, None], w
        else:
            (x0, w0), (x1, w1) = axes
            X0, X1 = np.meshgrid(x0, x1, indexing="ij")
            nodes = np.stack([X0.ravel(), X1.ravel()], axis=1)
            weights = np.outer(w0, w1).ravel()
        t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return Grid(t(nodes), t(weights), self.sizes, tuple(t(a[0]) for a in axes), self.name)

    def refine(self, factor: int) -> QuadratureRule:
        """The same rule with ``factor`` times as many nodes per axis."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        QuadratureRule.__init__(new, tuple(k * factor for k in self.sizes), self.dim)
        return new


class Midpoint(QuadratureRule):
    """Composite midpoint rule: n equal cells, nodes at cell centres, weights 1/n (order 2)."""

    name = "midpoint"

    def _axis(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)


class Trapezoid(QuadratureRule):
    """Composite trapezoid rule: n ≥ 2 equispaced nodes including both ends (order 2)."""

    name = "trapezoid"

    def _min_nodes(self) -> int:
        return 2

    def _axis(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.linspace(0.0, 1.0, n)
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return x, w


class GaussLegendre(QuadratureRule):
    """Gauss–Legendre rule mapped to [0,1] (tensor product in 2-D); spectral for smooth f."""

    name = "gauss-legendre"

    def _axis(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n <= 100:
            x, w = np.polynomial.legendre.leggauss(n)
        else:  # Golub–Welsch would be O(n^3); scipy's roots_legendre is accurate and fast
            from scipy.special import roots_legendre

            x, w = roots_legendre(n)
        return (x + 1.0) / 2.0, w / 2.0


class MonteCarlo(QuadratureRule):
    """Seeded Monte Carlo rule: N = prod(sizes) i.i.d. uniform nodes, weights 1/N (order 1/2).

    Parameters
    ----------
    n : int or tuple
        Total nodes N for ``dim=1``; for ``dim=2`` an int n gives n × n = N points
        (placed at random, not on a grid).
    dim : int
    seed : int
        Seed of the node positions; the same seed gives the same nodes on every device.
    """

    name = "monte-carlo"

    def __init__(self, n: int | tuple[int, ...], dim: int = 1, seed: int = 0) -> None:
        super().__init__(n, dim)
        self.seed = int(seed)

    def grid(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Grid:
        total = int(np.prod(self.sizes))
        rng = np.random.default_rng(self.seed)
        nodes = rng.random((total, self.dim))
        if self.dim == 1:
            nodes = np.sort(nodes, axis=0)
        w = np.full(total, 1.0 / total)
        t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        shape = (total,) if self.dim == 1 else None
        return Grid(t(nodes), t(w), shape, (), self.name)


RULES: dict[str, type[QuadratureRule]] = {
    "midpoint": Midpoint,
    "trapezoid": Trapezoid,
    "gauss-legendre": GaussLegendre,
    "monte-carlo": MonteCarlo,
}


def make_rule(name: str, n: int | tuple[int, ...], dim: int = 1, **kwargs) -> QuadratureRule:
    """Build a quadrature rule by name (``midpoint``, ``trapezoid``, ``gauss-legendre``,
    ``monte-carlo``; ``gauss`` and ``mc`` are accepted aliases)."""
    aliases = {"gauss": "gauss-legendre", "gl": "gauss-legendre", "mc": "monte-carlo"}
    name = aliases.get(name, name)
    return RULES[check_choice(name, RULES, "quadrature rule")](n, dim, **kwargs)
