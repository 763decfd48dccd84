"""A continuum block for any PyTorch model (MODEL.md §1–2, §4–5).

:class:`PDEBlock` is a shape-preserving :class:`torch.nn.Module` — like a residual stage of a
ResNet, but with infinitely many layers and neurons — that evolves its input by the forward
problem of MODEL.md §1,

    ∂_t u(x,t) = σ( ∫_Ω w(x,y,t) u(y,t) dy + b(x,t) ) + ε Δ_x u(x,t),   u(·,0) = E ξ,

and returns u(·,T) sampled back at the input's resolution::

    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), pdenets.PDEBlock(32), nn.Linear(32, 10))
    images = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), pdenets.PDEBlock((8, 8)), nn.Flatten())

**Input and output.** An input of n features (or a p × q image) *is* the field: its entries are
u(·,0) on the n equal cells of Ω = [0,1] (the p × q pixel cells of [0,1]², MODEL.md §1, the
piecewise-constant lifting E). The output is the cell average of u(·,T) over the same cells, so
``block(x).shape == x.shape``. At the block's natural width — the midpoint rule with one node per
cell — lifting and readout are the identity on the nodes. At any other width (``discretize``) the
input is lifted piecewise-constantly and the output cell-averaged by the quadrature rule, so
the same trained controls run at any resolution (discretization invariance, MODEL.md §2).

**Shapes.** 1-D blocks (``features = n``) take ``(B, n)`` or ``(B, 1, n)``; 2-D blocks
(``features = (p, q)``) take ``(B, p, q)``, ``(B, 1, p, q)`` or the flattened ``(B, p·q)``.
The output has the input's shape. Channels C > 1 (MODEL.md §10) are reserved for the
multi-channel core: :meth:`PDEBlock._to_field` already separates the channel axis.

**Dtype and device.** Parameters are created in ``torch.get_default_dtype()`` (float32 unless
changed) so the block mixes with ordinary layers; pass ``dtype=torch.float64`` for gradient
checks. ``block.to(device)`` moves it like any module.

**Discretization and gradient strategy** live on the module and can be changed after training:
``block.discretize(width=64, steps=32)`` (returns the block), ``block.adjoint =
ContinuousAdjoint()`` (MODEL.md §5). ``block.regularization(alpha, beta)`` is the exact control
penalty of MODEL.md §4, to add to any loss.

The solve itself is :class:`~pdenets.network.ContinuumNetwork` (``block.net``) with a
:class:`~pdenets.lifting.PiecewiseConstantLifting` and a cell-average readout on the input's
cells; nothing here integrates anything.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._basis import cell_index
from ._checks import check_positive
from .adjoint import Adjoint, DiscreteAdjoint, make_adjoint
from .controls import Controls
from .errors import PdenetsError
from .integrators import Solver, make_solver
from .network import ContinuumNetwork, Discretization
from .objective import Objective
from .quadrature import Grid, QuadratureRule, make_rule
from .readout import CellAverageReadout

__all__ = ["PDEBlock"]


class _CellAverage(CellAverageReadout):
    """:class:`CellAverageReadout` whose matrix is built once per grid (cached on the grid)."""

    def matrix(self, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("cell_average", self.cells)
        hit = grid._cache.get(key)
        if hit is None:
            hit = grid._cache[key] = super().matrix(grid)
        return hit


def _shape(features: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    if isinstance(features, bool):
        raise PdenetsError(f"PDEBlock: features must be n or (p, q), got {features!r}")
    if isinstance(features, int):
        shape: tuple = (features,)
    elif isinstance(features, tuple | list) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in features):
        shape = tuple(features)
    else:
        raise PdenetsError(f"PDEBlock: features must be n or (p, q), got {features!r}")
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise PdenetsError(
            f"PDEBlock: features must be n >= 1 (1-D) or (p, q) with p, q >= 1 (2-D), "
            f"got {features!r}"
        )
    return shape


class PDEBlock(nn.Module):
    """A continuum block: input field → u(·, T) at the input's resolution (see module docstring).

    Parameters
    ----------
    features : int or tuple of int
        n (1-D: inputs ``(B, n)``) or the image shape (p, q) (2-D: inputs ``(B, p, q)``).
    T : float
        Depth of the block.
    intervals : int
        Depth intervals M of the controls.
    control_size : int or tuple of int, optional
        Control-grid vertices (cells for ``space_basis="constant"``) per axis; default
        ``min(s, 16)`` (at least 2) per axis.
    time_basis, space_basis : {"linear", "constant"}
        Interpolation of the controls in depth and in space
        (:class:`~pdenets.controls.GridControls`).
    dynamics : {"standard", "field", "selection"}
        Variant of MODEL.md §1.
    activation : str
        σ (``tanh``, ``relu``, ``sigmoid``, ``softplus``, ``identity``, ...).
    eps : float
        Diffusion ε ≥ 0 (use ``solver="imex"``/``"strang"`` when it makes the problem stiff).
    channels : int
        Number of channels C; only C = 1 until the multi-channel core (MODEL.md §10) lands.
    width : int or tuple of int, optional
        Width nodes per axis; default the natural width (one node per input cell).
    rule : str
        Width quadrature rule (``midpoint``, ``trapezoid``, ``gauss``, ``mc``).
    solver : str or Solver
        Depth integrator (``euler``, ``heun``, ``rk4``, ``dopri5``, ``imex``, ``strang``).
    steps : int
        Depth steps S.
    adjoint : Adjoint or str, optional
        Gradient strategy (MODEL.md §5); default :class:`~pdenets.DiscreteAdjoint`.
    init_scale : float
        Scale of the random initial kernel (fan-in scaled, as
        :meth:`ContinuumNetwork.create <pdenets.ContinuumNetwork.create>`).
    seed : int
        Seed of the initial controls.
    dtype : torch.dtype, optional
        Parameter dtype; default ``torch.get_default_dtype()``.
    device : str or torch.device, optional
        Parameter device; default CPU.
    """

    def __init__(
        self,
        features: int | tuple[int, ...],
        *,
        T: float = 1.0,
        intervals: int = 4,
        control_size: int | tuple[int, ...] | None = None,
        time_basis: str = "linear",
        space_basis: str = "linear",
        dynamics: str = "standard",
        activation: str = "tanh",
        eps: float = 0.0,
        channels: int = 1,
        width: int | tuple[int, ...] | None = None,
        rule: str = "midpoint",
        solver: str | Solver = "rk4",
        steps: int = 8,
        adjoint: Adjoint | str | None = None,
        init_scale: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        shape = _shape(features)
        check_positive(channels, "PDEBlock: channels", integer=True)
        if channels != 1:
            raise PdenetsError(
                f"PDEBlock: channels={channels} is not supported yet (the multi-channel model of "
                f"MODEL.md §10 is not available in this build); use channels=1"
            )
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise PdenetsError(f"PDEBlock: dtype must be a floating-point torch.dtype, got "
                               f"{dtype!r}")
        self.shape = shape
        self.channels = channels
        net = ContinuumNetwork.create(
            shape, math.prod(shape), control_size=control_size, intervals=intervals, T=T,
            time_basis=time_basis, space_basis=space_basis, dynamics=dynamics,
            activation=activation, eps=eps, readout="cell_average", width=shape,
            rule="midpoint", solver="rk4", steps=steps, init_scale=init_scale, seed=seed,
            dtype=dtype,
        )
        net.readout = _CellAverage(shape)
        self.net = net
        self.adjoint = adjoint
        self.discretize(width=width, rule=rule, solver=solver)
        if device is not None:
            self.to(device)

    # -- configuration ---------------------------------------------------------------------
    @property
    def features(self) -> int:
        """Number of input features n = prod(shape)."""
        return math.prod(self.shape)

    @property
    def dim(self) -> int:
        """Dimension d of Ω (1 or 2)."""
        return len(self.shape)

    @property
    def T(self) -> float:
        return self.net.T

    @property
    def controls(self) -> Controls:
        """The controls θ = (w, b) (so :class:`~pdenets.Objective` accepts the block)."""
        return self.net.controls

    @property
    def discretization(self) -> Discretization:
        """The stored discretization used when ``forward`` gets none."""
        return self.net.discretization

    @property
    def adjoint(self) -> Adjoint:
        """The stored gradient strategy (MODEL.md §5); settable to an :class:`Adjoint`,
        ``"discrete"``, ``"continuous"`` or ``None`` (= :class:`DiscreteAdjoint`)."""
        return self._adjoint

    @adjoint.setter
    def adjoint(self, value: Adjoint | str | None) -> None:
        if value is None:
            value = DiscreteAdjoint()
        elif isinstance(value, str):
            value = make_adjoint(value)
        if not isinstance(value, Adjoint):
            raise PdenetsError(
                f"PDEBlock: adjoint must be an Adjoint (DiscreteAdjoint(), ContinuousAdjoint()), "
                f"'discrete' or 'continuous', got {value!r}"
            )
        self._adjoint = value

    def discretize(
        self,
        width: int | tuple[int, ...] | None = None,
        steps: int | None = None,
        solver: str | Solver | None = None,
        rule: str | QuadratureRule | None = None,
    ) -> PDEBlock:
        """Store a new discretization (MODEL.md §2); unspecified parts are kept. Returns ``self``.

        Parameters
        ----------
        width : int or tuple of int, optional
            Width nodes per axis (an int means the same count on every axis).
        steps : int, optional
            Depth steps S.
        solver : str or Solver, optional
            Depth integrator.
        rule : str or QuadratureRule, optional
            Width rule by name, or a rule object (then ``width`` must be omitted).

        Raises
        ------
        PdenetsError
            On an unknown rule or solver, a bad count, or a width grid that leaves some input
            cell without a node (the output could not be read back on it).
        """
        old = self.net.discretization
        if isinstance(rule, QuadratureRule):
            if width is not None:
                raise PdenetsError("PDEBlock.discretize: give width or a rule object, not both")
            if rule.dim != self.dim:
                raise PdenetsError(f"PDEBlock.discretize: the rule is {rule.dim}-D but the block "
                                   f"is {self.dim}-D")
            new_rule = rule
        elif width is None and rule is None:
            new_rule = old.width
        else:
            if rule is not None and not isinstance(rule, str):
                raise PdenetsError(f"PDEBlock.discretize: rule must be a name or a "
                                   f"QuadratureRule, got {rule!r}")
            name = old.width.name if rule is None else rule
            n = old.width.sizes if width is None else width
            if isinstance(n, list):
                n = tuple(n)
            if self.dim == 1 and isinstance(n, tuple) and len(n) == 1:
                n = n[0]
            kwargs = {"seed": old.width.seed} if (rule is None and hasattr(old.width, "seed")) \
                else {}
            new_rule = make_rule(name, n, self.dim, **kwargs)
        new_solver = old.solver if solver is None else make_solver(solver)
        new = Discretization(new_rule, new_solver, old.steps if steps is None else steps)
        self._check_cells(new_rule)
        self.net.discretization = new
        self._warm()
        return self

    def _warm(self) -> None:
        """Build the grid, lifting index and readout matrix of the stored discretization now
        (all cached on the grid), so a
        compiled forward finds them ready (no data-dependent checks, no recompilation)."""
        with torch.no_grad():
            grid = self.net.grid(self.net.discretization.width)
            self.net.readout.matrix(grid)
            self.net.lifting(torch.zeros(1, self.features, dtype=grid.dtype, device=grid.device),
                             grid)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .double(): re-warm the caches
        out = super()._apply(fn, recurse)
        self._warm()
        return out

    def _check_cells(self, rule: QuadratureRule) -> None:
        nodes = rule.grid(torch.float64).nodes
        filled = torch.zeros(self.features, dtype=torch.bool)
        filled[cell_index(nodes, self.shape)] = True
        if not bool(filled.all()):
            raise PdenetsError(
                f"PDEBlock: the width rule {rule!r} leaves {int((~filled).sum())} of the "
                f"{self.features} input cells without a node; use at least the natural width "
                f"{self.shape if self.dim == 2 else self.shape[0]}"
            )

    def regularization(self, alpha: float = 0.0, beta: float = 0.0,
                       gamma: float = 0.0) -> torch.Tensor:
        """(α/2)∫‖w‖²+‖b‖² dt + (β/2)∫‖∂_t w‖²+‖∂_t b‖² dt of MODEL.md §4, computed exactly
        (independent of the discretization), plus the optional H¹-in-width term (γ/2)∫‖∇θ‖² of
        :class:`~pdenets.Objective`. Differentiable; add it to the training loss."""
        return Objective("mse", alpha=alpha, beta=beta, gamma=gamma).regularization(self.net)

    def extra_repr(self) -> str:
        d = self.discretization
        feats = self.shape[0] if self.dim == 1 else self.shape
        return (f"features={feats}, T={self.T}, width={d.width!r}, solver={d.solver!r}, "
                f"steps={d.steps}, adjoint={self.adjoint!r}")

    # -- forward ---------------------------------------------------------------------------
    def _to_field(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Validate ``x`` and return it as ``(B, C, n)`` with C the number of channels found
        (the caller restores the input's shape)."""
        if not torch.is_tensor(x):
            raise PdenetsError(f"PDEBlock: input must be a tensor, got {type(x).__name__}")
        n, s = self.features, self.shape
        tail = tuple(x.shape[1:])
        if x.dim() >= 2 and tail in (s, (n,)):
            return x.reshape(x.shape[0], 1, n), 1
        if x.dim() == 2 + self.dim and tail[1:] == s:
            return x.reshape(x.shape[0], tail[0], n), tail[0]
        want = (f"(B, {n}) or (B, 1, {n})" if self.dim == 1 else
                f"(B, {s[0]}, {s[1]}), (B, 1, {s[0]}, {s[1]}) or (B, {n})")
        raise PdenetsError(f"PDEBlock: input has shape {tuple(x.shape)}; this block takes {want}")

    def forward(self, x: torch.Tensor, disc: Discretization | None = None,
                adjoint: Adjoint | None = None) -> torch.Tensor:
        """u(·, T) at the input's cells, in the input's shape.

        Parameters
        ----------
        x : torch.Tensor
            Input fields (see the module docstring for the accepted shapes).
        disc : Discretization, optional
            Overrides the stored discretization for this call.
        adjoint : Adjoint, optional
            Overrides the stored gradient strategy for this call.
        """
        u, c = self._to_field(x)
        if c != self.channels:
            raise PdenetsError(
                f"PDEBlock: input has {c} channels (shape {tuple(x.shape)}); this block has "
                f"{self.channels}"
            )
        out = self.net(u[:, 0], disc, self.adjoint if adjoint is None else adjoint)
        return out.reshape(x.shape)
