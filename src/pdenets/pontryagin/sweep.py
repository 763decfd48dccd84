"""State and costate sweeps of the PMP layer (MODEL.md §7; see :mod:`pdenets.pontryagin`).

The state sweep is the forward solve through :func:`pdenets.integrators.integrate`, recording
every Runge–Kutta stage with the integrator's per-stage hook; the costate sweep differentiates
the recorded slopes. Also the control-grid helpers shared by :mod:`.pmp` and :mod:`.msa`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..adjoint import _knot_weights
from ..controls import GridControls
from ..errors import PdenetsError
from ..integrators import ExplicitRK, Stage, integrate
from ..kernels import KernelControls
from ..network import ContinuumNetwork, Discretization
from ..objective import data_loss
from ..quadrature import Grid

# ------------------------------------------------------------------------------------------
# state and costate sweeps


@dataclass
class Sweep:
    """A recorded forward solve (state sweep) and, after :func:`costate_sweep`, its costates.

    Attributes
    ----------
    times, weights : torch.Tensor
        Stage depths t_s and quadrature weights w_s = h b_i, shape ``(S,)``.
    t0, t1 : list of float
        The step containing each stage.
    Y : torch.Tensor
        Stage states, ``(S, B, N)`` (detached).
    knot_weights : torch.Tensor
        ``(S, n_knots)``: φ_j(t_s), the depth basis functions at the stages.
    uT : torch.Tensor
        u(·, T) (part of the autograd graph while the sweep is alive).
    slopes : list of torch.Tensor
        k_s = f(Y_s, θ(t_s)) (in the graph).
    Lam : torch.Tensor or None
        Λ_s = ∂Φ/∂k_s, ``(S, B, N)``; the stage costate is λ̃_s = Λ_s / w_s.
    loss : float
        Data term Φ (mean loss over the batch) with the readout at costate time.
    grads : dict
        ∂Φ/∂(parameter) for every parameter of the network (name → tensor or None).
    """

    net: ContinuumNetwork
    disc: Discretization
    grid: Grid
    times: torch.Tensor
    weights: torch.Tensor
    t0: list[float]
    t1: list[float]
    Y: torch.Tensor
    knot_weights: torch.Tensor
    uT: torch.Tensor
    slopes: list[torch.Tensor]
    Lam: torch.Tensor | None = None
    loss: float = math.nan
    outputs: torch.Tensor | None = None
    grads: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.Y.shape[1])

    def slopes_tensor(self) -> torch.Tensor:
        return torch.stack([k.detach() for k in self.slopes])


def check_network(net: ContinuumNetwork, disc: Discretization) -> None:
    """Raise unless the PMP machinery applies: grid controls or structured
    :class:`~pdenets.kernels.KernelControls` (MODEL.md §10; every family, any channels) and a
    fixed-step explicit RK solver."""
    ctrl = net.controls
    if not isinstance(ctrl, (GridControls, KernelControls)):
        raise PdenetsError("PMP/MSA needs GridControls or KernelControls (knot-based "
                           f"controls), got {type(ctrl).__name__}")
    s = disc.solver
    if not isinstance(s, ExplicitRK) or s.adaptive:
        raise PdenetsError(
            f"PMP/MSA needs a fixed-step explicit Runge-Kutta solver (euler, heun, rk4), got "
            f"{s!r}")
    if any(b == 0.0 for b in s.b):
        raise PdenetsError(f"PMP/MSA: solver {s!r} has a zero quadrature weight b_i")


def forward_sweep(net: ContinuumNetwork, inputs: torch.Tensor,
                  disc: Discretization | None = None) -> Sweep:
    """State sweep: the forward solve of ``net`` at ``disc``, recording every RK stage.

    The solve is :func:`pdenets.integrators.integrate` itself (same system, same tableau); its
    per-stage hook records the stages, and the slopes stay in the autograd graph so that
    :func:`costate_sweep` can differentiate them.
    """
    disc = disc or net.discretization
    check_network(net, disc)
    grid = net.grid(disc.width)
    u = net.initial_state(inputs, grid)
    ctrl = net.controls
    assert isinstance(ctrl, (GridControls, KernelControls)), "check_network admits only these"
    sched = ctrl.discretize(grid)
    system = net.dynamics.system(sched, grid)
    nk = ctrl.n_knots
    times, weights, t0s, t1s, ys, ks, kw = [], [], [], [], [], [], []

    def record(st: Stage) -> None:
        times.append(st.t)
        weights.append(st.weight)
        t0s.append(st.lo)
        t1s.append(st.hi)
        ys.append(st.y.detach())
        ks.append(st.k)
        row = [0.0] * nk
        for j, s in _knot_weights(sched, st.t, st.lo, st.hi):
            row[j] += s
        kw.append(row)

    uT, _, _ = integrate(system, u, float(net.T), disc.steps, disc.solver, hook=record)
    p0 = next(net.controls.parameters())
    dt, dev = p0.dtype, p0.device
    return Sweep(net, disc, grid, torch.tensor(times, dtype=dt, device=dev),
                 torch.tensor(weights, dtype=dt, device=dev), t0s, t1s, torch.stack(ys),
                 torch.tensor(kw, dtype=dt, device=dev), uT, ks)


def costate_sweep(sweep: Sweep, targets: torch.Tensor, loss: str,
                  retain_graph: bool = False) -> Sweep:
    """Costate sweep: Λ_s = ∂Φ/∂k_s and ∂Φ/∂(parameters) by reverse-mode differentiation.

    The readout is applied now (so a readout updated after the state sweep is used). Fills
    ``sweep.Lam``, ``sweep.loss``, ``sweep.outputs`` and ``sweep.grads`` and returns ``sweep``.
    """
    net = sweep.net
    out = net.readout(sweep.uT, sweep.grid)
    phi = data_loss(out, torch.as_tensor(targets, device=out.device), loss)
    names, params = zip(*[(n, p) for n, p in net.named_parameters() if p.requires_grad]) \
        if any(p.requires_grad for p in net.parameters()) else ((), ())
    gs = torch.autograd.grad(phi, [*sweep.slopes, *params], allow_unused=True,
                             retain_graph=retain_graph)
    S = len(sweep.slopes)
    sweep.Lam = torch.stack([torch.zeros_like(sweep.Y[0]) if g is None else g for g in gs[:S]])
    sweep.grads = {n: g for n, g in zip(names, gs[S:])}
    sweep.loss = float(phi.detach())
    sweep.outputs = out.detach()
    return sweep


# ------------------------------------------------------------------------------------------
# batched dynamics at many stages at once


def reaction_batched(dynamics, Y: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The θ-dependent part f(Y_e; A_e, b_e) for a stack of stages: Y ``(E, B, N)``,
    A ``(E, N, N)``, b ``(E, N)`` → ``(E, B, N)`` (:meth:`Dynamics.reaction_batched
    <pdenets.dynamics.Dynamics.reaction_batched>`)."""
    return dynamics.reaction_batched(Y, A, b)


def costate_rhs_batched(dynamics, Y, A, b, p) -> torch.Tensor:
    """pᵀ ∂f/∂u per sample for a stack of stages (the θ-dependent part of ∂_u H;
    :meth:`Dynamics.vjp_u_batched <pdenets.dynamics.Dynamics.vjp_u_batched>`)."""
    return dynamics.vjp_u_batched(Y, A, b, p)


def _stage_entries(kw: torch.Tensor):
    """The block-Jacobi entries of the MSA (see :mod:`pdenets.pontryagin`): one per stage s and
    knot j with φ_j(t_s) ≠ 0, as tensors ``(stage, owner knot, owner weight, other knot,
    other weight)`` (the other knot is the stage's second nonzero basis function, if any, held
    at its old value; else the owner with weight 0)."""
    st, own, wown, oth, woth = [], [], [], [], []
    for s in range(kw.shape[0]):
        nz = [(j, float(kw[s, j])) for j in range(kw.shape[1]) if float(kw[s, j]) != 0.0]
        for j, wj in nz:
            rest = [(i, wi) for i, wi in nz if i != j]
            st.append(s)
            own.append(j)
            wown.append(wj)
            oth.append(rest[0][0] if rest else j)
            woth.append(rest[0][1] if rest else 0.0)
    dev, dt = kw.device, kw.dtype
    return (torch.tensor(st, device=dev), torch.tensor(own, device=dev),
            torch.tensor(wown, dtype=dt, device=dev), torch.tensor(oth, device=dev),
            torch.tensor(woth, dtype=dt, device=dev))


def _knot_matrices(ctrl: GridControls, grid, W: torch.Tensor, B: torch.Tensor):
    """Nodal (A_j, b_j) of knot values (W, B) on ``grid`` (as GridControls.discretize)."""
    P = ctrl.basis_matrix(grid.nodes).to(W.dtype)
    A = torch.matmul(torch.matmul(P, W), P.T) * grid.weights.to(W.dtype)
    return A, B @ P.T


def _mass(ctrl: GridControls) -> torch.Tensor:
    return ctrl.mass_matrix()


def _dual_sq(Gw: torch.Tensor, Gb: torch.Tensor, Minv: torch.Tensor) -> torch.Tensor:
    """Squared dual L² norms ⟨G, M⁻¹GM⁻¹⟩ + g M⁻¹ g over the trailing axes."""
    w = (torch.matmul(torch.matmul(Minv, Gw), Minv) * Gw).sum((-1, -2))
    return w + ((Gb @ Minv) * Gb).sum(-1)


def _time_mass_diag(ctrl: GridControls | KernelControls) -> tuple[torch.Tensor, torch.Tensor]:
    """(∫φ_j² dt, number of depth neighbours of knot j) of the depth basis."""
    K, d = ctrl.n_knots, ctrl.T / ctrl.intervals
    if ctrl.time_basis == "constant":
        m = torch.full((K,), d, dtype=torch.float64)
    else:
        m = torch.full((K,), 2 * d / 3, dtype=torch.float64)
        m[0] = m[-1] = d / 3
    deg = torch.full((K,), 2.0, dtype=torch.float64)
    deg[0] = deg[-1] = 1.0
    if K == 1:
        deg[0] = 0.0
    return m, deg


def _knot_integrals(ctrl: GridControls | KernelControls) -> torch.Tensor:
    """∫_0^T φ_j dt per knot."""
    K, d = ctrl.n_knots, ctrl.T / ctrl.intervals
    if ctrl.time_basis == "constant":
        return torch.full((K,), d, dtype=torch.float64)
    m = torch.full((K,), d, dtype=torch.float64)
    m[0] = m[-1] = d / 2
    return m


