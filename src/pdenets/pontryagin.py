"""Pontryagin maximum principle and the method of successive approximations (MODEL.md §7).

Continuous setting
------------------
With the costate λ_k of MODEL.md §5 and p_k = −K λ_k, the Hamiltonian of the learning problem is

    H(t, u, p, θ) = (1/K) Σ_k ∫_Ω p_k(x) f(u_k, θ)(x) dx − (α/2)(‖w(t)‖² + ‖b(t)‖²),

and (β = 0) ∇_θ J = −∫_0^T ∇_θ H dt in the sense of the gradient of J with respect to θ(t):
optimal controls maximize H(t, u*(t), p*(t), ·) for almost every t (the PMP).

Discrete pairing used here
--------------------------
The repository's costate is the *discrete* one: λ is the plain gradient of the data term with
respect to the nodal values of u (plain sums over nodes, see :meth:`pdenets.dynamics.Dynamics.vjp`),
so λ_i ≈ ω_i λ(x_i) is a density times the quadrature weight, and the plain sum
Σ_i λ_i f_i is the quadrature of ∫ λ f dx. Accordingly, for one depth t,

    H(t) = −Σ_k Σ_i λ_{k,i}(t) f_i(u_k(t), θ(t)) − (α/2)(‖w(t)‖²_{L²} + ‖b(t)‖²_{L²})
         = (1/K) Σ_k Σ_i p_{k,i} f_i(u_k, θ) − L(θ(t)),       p_k = −K λ_k,

with L the exact L² running cost of the represented control functions (mass matrices of the
control grid). K is the number of samples of the batch (the data term is a mean).

The depth solver is an explicit Runge–Kutta method (Euler, Heun, RK4) with S equal steps. Its
stages s (step n, stage i, depth t_s = t_n + c_i h, quadrature weight w_s = h b_i) carry the
stage state Y_s and the *stage costate* λ̃_s = Λ_s / w_s, where Λ_s = ∂Φ/∂k_s is the derivative
of the discrete data term Φ with respect to the stage slope k_s = f(Y_s, θ(t_s)) (Hager 2000:
λ̃_s approximates λ(t_s)). Because θ enters the discrete forward map only through the k_s,

    ∂Φ/∂θ_j = Σ_s w_s φ_j(t_s) ∂_θ ⟨λ̃_s, f(Y_s, θ(t_s))⟩

exactly, for every knot value θ_j with depth basis function φ_j (hat or indicator). Hence the
**discrete PMP identity** tested in ``tests/test_pontryagin.py``:

    ∂J/∂θ_j = −[ Σ_s w_s φ_j(t_s) ∇_θ H_data(t_s) − ∂/∂θ_j (α/2)∫_0^T ‖θ(t)‖² dt ]
              + ∂/∂θ_j (β/2)∫_0^T ‖∂_t θ‖² dt,

i.e. the knot-weighted integral of ∇_θ H equals −∇_θ J (β = 0), with the data part integrated by
the solver's own stage quadrature and the running cost integrated exactly (as J does).
∇_θ H(t) is taken with respect to the control-grid values of θ(t) = (w(t), b(t)); its size is
reported in the dual L² norm of the control space, ‖G‖_* = √(⟨G, M⁻¹ G M⁻¹⟩ + g_bᵀ M⁻¹ g_b)
(M the mass matrix of the control grid), the norm of the L² Riesz representer, which does not
depend on the width discretization.

Method of successive approximations
-----------------------------------
:class:`MSA` implements the extended MSA of Li, Chen, Tai & E (JMLR 18, 2018) for
:class:`~pdenets.controls.GridControls`. One iteration on a batch:

1. **state sweep**: forward solve, recording Y_s and the slopes k_s;
2. **readout**: the linear readout (c, d) minimizes the terminal loss on the fixed u(T) plus the
   proximal penalty (ρ/2)(1/K)Σ_k ‖(R − R_old) u_k(T) + d − d_old‖² (a convex problem; a few
   L-BFGS iterations, ``train.msa_readout_steps``);
3. **costate sweep**: Λ_s = ∂Φ/∂k_s by reverse-mode differentiation of the recorded sweep;
4. **Hamiltonian maximization, every knot independently and all at once**: knot j maximizes
   its share of ∫ H̃ dt, the part of the integral over the support of its depth basis function
   φ_j *as a function of θ_j alone*, the neighbouring knots held at their old values
   (block-Jacobi). For piecewise-constant controls this is exactly ∫_{I_j} H̃(t, θ_j) dt over
   the knot's interval; for piecewise-linear controls the stages between knots j and j+1 enter
   both problems, each with its own mixture (1−s)θ_j + s θ_{j+1}^{old} resp.
   (1−s)θ_j^{old} + s θ_{j+1}. H̃ is the extended Hamiltonian

       H̃ = H − (ρ/2)(1/K)Σ_k ( ‖f(Y, θ) − f(Y, θ_old)‖²_ω + ‖∂_u H_k(θ) − ∂_u H_k(θ_old)‖²_{ω⁻¹} )

   (∂_u H_k = p_kᵀ ∂f/∂u per sample; the ω-norm of fields and the ω⁻¹ norm of its dual
   quantities are the discrete L² norms), and the running cost's share is the exact
   block-Jacobi restriction of (α/2)∫‖θ‖² + (β/2)∫‖∂_tθ‖² (β > 0 is allowed here).
   The per-knot problems are summed into one separable objective and maximized with
   ``train.msa_inner_steps`` iterations of L-BFGS (default) or Adam (per-coordinate, so the
   knots stay exactly independent; ``train.msa_inner_solver``), vectorized over all stages
   and knots (batched matrix products). At θ = θ_old the gradient of the separable objective
   is exactly −∇J, so fixed points of the iteration are critical points of J.
5. **acceptance**: J at the new controls is compared with J(θ_old) (new readout). If it did
   not decrease, the step is rejected and replaced by a **fallback gradient step** on the
   controls (Armijo backtracking along −∇J from the costate sweep, first trial length = the
   MSA step's length), and ρ is doubled; after an accepted step ρ decays by 0.9, never below
   ``train.msa_rho`` (``train.msa_adapt_rho = false`` keeps ρ fixed). Fallbacks are counted
   (``fallbacks`` in the per-iteration records, ``msa_fallbacks`` in the training history and
   metrics).

A learnable lifting gets one gradient step per iteration (its derivative λ(0)ᵀ ∂u(0)/∂φ from
the same costate sweep) after the acceptance test.

References
----------
Li, Chen, Tai & E (2018), Maximum principle based algorithms for deep learning, JMLR 18(165).
Hager (2000), Runge–Kutta methods in optimal control and the transformed adjoint system,
Numer. Math. 87. Pontryagin et al. (1962), The Mathematical Theory of Optimal Processes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .adjoint import _knot_weights
from .controls import GridControls
from .errors import PdenetsError
from .integrators import ExplicitRK
from .network import ContinuumNetwork, Discretization, make_system
from .objective import Objective, control_norms, data_loss
from .readout import LinearReadout
from .training import Trainer

__all__ = [
    "Sweep", "forward_sweep", "costate_sweep", "stage_hamiltonian_gradients", "hamiltonian",
    "PMPReport", "pmp_residual", "plot_pmp", "MSA", "MSATrainer",
]

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
    grid: object
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
    """Raise unless the PMP machinery applies: grid controls and a fixed-step explicit RK."""
    if not isinstance(net.controls, GridControls):
        raise PdenetsError("PMP/MSA needs GridControls (knot-based controls)")
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

    The arithmetic is that of :func:`pdenets.integrators.integrate` (same system, same
    tableau), kept in an autograd graph so that :func:`costate_sweep` can differentiate it.
    """
    disc = disc or net.discretization
    check_network(net, disc)
    solver = disc.solver
    grid = net.grid(disc.width)
    u = net.initial_state(inputs, grid)
    sched = net.controls.discretize(grid)
    system = make_system(net.dynamics, sched, grid)
    T = float(net.T)
    h = T / disc.steps
    solver.check_stable(system, h)
    nk = net.controls.n_knots
    times, weights, t0s, t1s, ys, ks, kw = [], [], [], [], [], [], []
    for n in range(disc.steps):
        t0, t1 = n * h, (n + 1) * h
        stage_y, stage_k = solver.stages(system, t0, h, u)
        for i, (ci, y, k) in enumerate(zip(solver.c, stage_y, stage_k)):
            t = t0 + ci * h
            times.append(t)
            weights.append(h * solver.b[i])
            t0s.append(t0)
            t1s.append(t1)
            ys.append(y.detach())
            ks.append(k)
            row = [0.0] * nk
            for j, s in _knot_weights(sched, t, t0, t1):
                row[j] += s
            kw.append(row)
        for bi, k in zip(solver.b, stage_k):
            u = u + (h * bi) * k
    dt = net.controls.w.dtype
    dev = net.controls.w.device
    return Sweep(net, disc, grid, torch.tensor(times, dtype=dt, device=dev),
                 torch.tensor(weights, dtype=dt, device=dev), t0s, t1s, torch.stack(ys),
                 torch.tensor(kw, dtype=dt, device=dev), u, ks)


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
    A ``(E, N, N)``, b ``(E, N)`` → ``(E, B, N)`` (diffusion does not depend on θ)."""
    sig = dynamics.activation.fn
    kind = getattr(dynamics, "kind", None)
    if kind == "standard":
        return sig(torch.baddbmm(b[:, None, :], Y, A.transpose(1, 2)))
    if kind == "field":
        return torch.baddbmm(b[:, None, :], sig(Y), A.transpose(1, 2))
    if kind == "selection":
        return Y * sig(torch.baddbmm(b[:, None, :], Y, A.transpose(1, 2)))
    return torch.stack([dynamics.reaction(Y[e], A[e], b[e]) for e in range(len(Y))])


def costate_rhs_batched(dynamics, Y, A, b, p) -> torch.Tensor:
    """pᵀ ∂f/∂u per sample for a stack of stages (the θ-dependent part of ∂_u H)."""
    act = dynamics.activation
    kind = getattr(dynamics, "kind", None)
    if kind in ("standard", "selection"):
        Z = torch.baddbmm(b[:, None, :], Y, A.transpose(1, 2))
        if kind == "standard":
            return torch.bmm(act.derivative(Z) * p, A)
        return p * act.fn(Z) + torch.bmm(act.derivative(Z) * p * Y, A)
    if kind == "field":
        return act.derivative(Y) * torch.bmm(p, A)
    Yg = Y.detach().requires_grad_(True)
    with torch.enable_grad():
        f = reaction_batched(dynamics, Yg, A, b)
        return torch.autograd.grad((f * p).sum(), Yg, create_graph=True)[0]


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


def _time_mass_diag(ctrl: GridControls) -> tuple[torch.Tensor, torch.Tensor]:
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


def _knot_integrals(ctrl: GridControls) -> torch.Tensor:
    """∫_0^T φ_j dt per knot."""
    K, d = ctrl.n_knots, ctrl.T / ctrl.intervals
    if ctrl.time_basis == "constant":
        return torch.full((K,), d, dtype=torch.float64)
    m = torch.full((K,), d, dtype=torch.float64)
    m[0] = m[-1] = d / 2
    return m


# ------------------------------------------------------------------------------------------
# Hamiltonian and PMP residual


def stage_hamiltonian_gradients(sweep: Sweep, alpha: float = 0.0):
    """∇_θ H(t_s) at every stage, in control-grid coordinates (plain partial derivatives with
    respect to the vertex values of w(·,·,t_s) and b(·,t_s)).

    Returns ``(Gw, Gb)`` of shapes ``(S, Nc, Nc)`` and ``(S, Nc)``: the data part
    −∂_θ⟨λ̃_s, f(Y_s, θ)⟩ minus the running cost's α M θ(t_s) M (resp. α M b(t_s)).
    One batched autograd evaluation over all stages.
    """
    if sweep.Lam is None:
        raise PdenetsError("run costate_sweep first")
    net = sweep.net
    ctrl = net.controls
    with torch.no_grad():
        Wt = torch.einsum("sj,jab->sab", sweep.knot_weights, ctrl.w)
        Bt = sweep.knot_weights @ ctrl.b
    Wl = Wt.clone().requires_grad_(True)
    Bl = Bt.clone().requires_grad_(True)
    lam = sweep.Lam / sweep.weights[:, None, None]
    with torch.enable_grad():
        A, b = _knot_matrices(ctrl, sweep.grid, Wl, Bl)
        F = reaction_batched(net.dynamics, sweep.Y, A, b)
        gw, gb = torch.autograd.grad((lam * F).sum(), [Wl, Bl])
    Gw, Gb = -gw, -gb
    if alpha:
        M = _mass(ctrl)
        Gw = Gw - alpha * torch.matmul(torch.matmul(M, Wt), M)
        Gb = Gb - alpha * (Bt @ M)
    return Gw, Gb


def hamiltonian(sweep: Sweep, alpha: float = 0.0) -> torch.Tensor:
    """H(t_s) at every stage (see the module docstring; includes the diffusion term, which
    does not depend on θ): ``−⟨λ̃_s, k_s⟩ − (α/2)(‖w(t_s)‖² + ‖b(t_s)‖²)``, shape ``(S,)``."""
    if sweep.Lam is None:
        raise PdenetsError("run costate_sweep first")
    lam = sweep.Lam / sweep.weights[:, None, None]
    H = -(lam * sweep.slopes_tensor()).sum((1, 2))
    if alpha:
        ctrl = sweep.net.controls
        M = _mass(ctrl)
        with torch.no_grad():
            Wt = torch.einsum("sj,jab->sab", sweep.knot_weights, ctrl.w)
            Bt = sweep.knot_weights @ ctrl.b
            L = (torch.matmul(M, Wt) * torch.matmul(Wt, M)).sum((1, 2)) + ((Bt @ M) * Bt).sum(1)
        H = H - 0.5 * alpha * L
    return H


@dataclass
class PMPReport:
    """PMP diagnostics of a model on data (see :func:`pmp_residual`)."""

    J: float
    loss: float
    accuracy: float | None
    alpha: float
    beta: float
    samples: int
    steps: int
    solver: str
    times: list[float]
    hamiltonian: list[float]
    residual: list[float]
    residual_w: list[float]
    residual_b: list[float]
    knot_times: list[float]
    knot_residual: list[float]
    knot_grad_J: list[float]
    max_residual: float
    mean_residual: float
    max_knot_residual: float
    grad_J_norm: float
    projected_H_norm: float
    identity_error: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        acc = "" if self.accuracy is None else f", accuracy {100 * self.accuracy:.2f}%"
        i = max(range(len(self.residual)), key=lambda s: self.residual[s])
        return "\n".join([
            f"J = {self.J:.6g} (data loss {self.loss:.6g}{acc}) on {self.samples} samples, "
            f"α = {self.alpha:g}, β = {self.beta:g}; {self.steps} {self.solver} steps, "
            f"{len(self.times)} stages",
            f"pointwise PMP residual ‖∇_θH(t)‖_*: max {self.max_residual:.4e} at t = "
            f"{self.times[i]:.4g}, depth average {self.mean_residual:.4e}",
            f"knot-projected residual ‖∫φ_j∇_θH dt‖_*/∫φ_j: max {self.max_knot_residual:.4e} "
            f"over {len(self.knot_times)} knots",
            f"‖∇_θJ‖ = {self.grad_J_norm:.6e}, ‖∫φ_j ∇_θH dt‖ = {self.projected_H_norm:.6e} "
            f"(identity ∇J = −∫φ∇H: relative error {self.identity_error:.1e})",
            f"H(t): from {self.hamiltonian[0]:.4g} (t=0) to {self.hamiltonian[-1]:.4g} (t=T)",
        ])


def pmp_residual(net: ContinuumNetwork, inputs: torch.Tensor, targets: torch.Tensor,
                 objective: Objective | None = None,
                 disc: Discretization | None = None) -> PMPReport:
    """Hamiltonian and PMP residual of ``net`` on (inputs, targets) over depth.

    Computes, at every RK stage t_s: H(t_s), the pointwise residual ‖∇_θ H(t_s)‖_* (dual L²
    norm of the control space, for w and b and together); per knot j the projected residual
    ‖∫φ_j ∇_θH dt‖_* / ∫φ_j dt and ‖∂J/∂θ_j‖_* / ∫φ_j dt (equal when β = 0, by the discrete PMP
    identity of the module docstring); and the Euclidean norms ‖∇_θJ‖ (knot coordinates, by
    automatic differentiation of J) and ‖(∫φ_j ∇_θH dt)_j‖ with the relative error of the
    identity ∇_θJ = −∫φ∇_θH (+ the β term).

    At a critical point of the discrete J the projected residual vanishes; the pointwise one
    vanishes only as far as the control grid can represent the PMP's optimal control (for a
    finite control basis, only the Galerkin projection of ∇_θH is zero).
    """
    objective = objective or Objective("cross_entropy")
    disc = disc or net.discretization
    ctrl = net.controls
    xs = torch.as_tensor(inputs)
    dt = ctrl.w.dtype
    xs = xs.to(dt)
    ys = torch.as_tensor(targets)
    if objective.loss == "mse":
        ys = ys.to(dt)
    sw = forward_sweep(net, xs, disc)
    costate_sweep(sw, ys, objective.loss)
    Gw_data, Gb_data = stage_hamiltonian_gradients(sw, 0.0)
    H = hamiltonian(sw, objective.alpha)
    M = _mass(ctrl)
    Minv = torch.linalg.inv(M)
    Gw, Gb = Gw_data, Gb_data
    if objective.alpha:
        with torch.no_grad():
            Wt = torch.einsum("sj,jab->sab", sw.knot_weights, ctrl.w)
            Bt = sw.knot_weights @ ctrl.b
        Gw = Gw - objective.alpha * torch.matmul(torch.matmul(M, Wt), M)
        Gb = Gb - objective.alpha * (Bt @ M)
    res_w = _dual_sq(Gw, torch.zeros_like(Gb), Minv).clamp_min(0).sqrt()
    res_b = _dual_sq(torch.zeros_like(Gw), Gb, Minv).clamp_min(0).sqrt()
    res = (res_w ** 2 + res_b ** 2).sqrt()
    # knot projections: data part by the stage quadrature, running cost exactly
    wk = sw.weights[:, None] * sw.knot_weights                       # (S, Kn)
    Pw = torch.einsum("sj,sab->jab", wk, Gw_data)
    Pb = wk.T @ Gb_data
    W = ctrl.w.detach().clone().requires_grad_(True)
    Bv = ctrl.b.detach().clone().requires_grad_(True)
    tmp = ctrl.like(dtype=dt)
    tmp.w, tmp.b = torch.nn.Parameter(W), torch.nn.Parameter(Bv)
    sq, dsq = control_norms(tmp)
    gw_a, gb_a = torch.autograd.grad(0.5 * objective.alpha * sq, [tmp.w, tmp.b],
                                     allow_unused=True)
    if gw_a is not None:
        Pw = Pw - gw_a
        Pb = Pb - gb_a
    # ∇J by automatic differentiation of the objective (independent of the sweep above)
    net.zero_grad(set_to_none=True)
    with torch.enable_grad():
        J = objective(net, xs, ys, disc)
        gJw, gJb = torch.autograd.grad(J, [ctrl.w, ctrl.b])
    beta_w = beta_b = 0.0
    if objective.beta:
        gw_b, gb_b = torch.autograd.grad(0.5 * objective.beta * dsq, [tmp.w, tmp.b])
        beta_w, beta_b = gw_b, gb_b
    # identity: ∇J = −P + β-term
    ew = gJw + Pw - beta_w
    eb = gJb + Pb - beta_b
    gnorm = float(torch.sqrt((gJw ** 2).sum() + (gJb ** 2).sum()))
    pnorm = float(torch.sqrt((Pw ** 2).sum() + (Pb ** 2).sum()))
    err = float(torch.sqrt((ew ** 2).sum() + (eb ** 2).sum())) / max(gnorm, 1e-300)
    mj = _knot_integrals(ctrl).to(dt)
    knot_res = _dual_sq(Pw, Pb, Minv).clamp_min(0).sqrt() / mj
    knot_gj = _dual_sq(gJw, gJb, Minv).clamp_min(0).sqrt() / mj
    acc = None
    if objective.loss == "cross_entropy":
        acc = float((sw.outputs.argmax(1) == ys).double().mean())
    T = float(net.T)
    mean_res = float((sw.weights * res).sum()) / T
    notes = []
    if objective.beta:
        notes.append("β > 0: the PMP holds for β = 0; the identity includes the β gradient")
    return PMPReport(
        J=float(J.detach()), loss=sw.loss, accuracy=acc, alpha=objective.alpha,
        beta=objective.beta, samples=int(xs.shape[0]), steps=disc.steps,
        solver=disc.solver.name, times=sw.times.tolist(), hamiltonian=H.tolist(),
        residual=res.tolist(), residual_w=res_w.tolist(), residual_b=res_b.tolist(),
        knot_times=ctrl.knot_times().tolist(), knot_residual=knot_res.tolist(),
        knot_grad_J=knot_gj.tolist(), max_residual=float(res.max()), mean_residual=mean_res,
        max_knot_residual=float(knot_res.max()), grad_J_norm=gnorm, projected_H_norm=pnorm,
        identity_error=err, notes=notes)


def plot_pmp(report: PMPReport, path) -> None:
    """Two panels: the residual ‖∇_θH(t)‖_* over depth (w, b, total; knot-projected values
    as markers) and H(t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import save_figure

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    t = report.times
    a1.semilogy(t, [max(v, 1e-300) for v in report.residual], "k.-", label="‖∇θH(t)‖* (stages)")
    a1.semilogy(t, [max(v, 1e-300) for v in report.residual_w], ":", label="w part")
    a1.semilogy(t, [max(v, 1e-300) for v in report.residual_b], "--", label="b part")
    a1.semilogy(report.knot_times, [max(v, 1e-300) for v in report.knot_residual], "rs",
                label="knot-projected ∫φ∇H/∫φ")
    a1.set_xlabel("depth t")
    a1.set_ylabel("PMP residual")
    a1.set_title(f"max ‖∇θH‖* = {report.max_residual:.3g}, ‖∇J‖ = {report.grad_J_norm:.3g}",
                 fontsize=9)
    a1.legend(fontsize=7)
    a2.plot(t, report.hamiltonian, "b.-")
    a2.set_xlabel("depth t")
    a2.set_ylabel("H(t)")
    a2.set_title("Hamiltonian along the trajectory", fontsize=9)
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------
# method of successive approximations


@dataclass
class MSAStep:
    """Record of one MSA iteration."""

    J_before: float
    J_after_readout: float
    J_after: float
    accepted: bool
    fallback: bool
    rho: float
    grad_norm: float
    step_norm: float
    H_gain: float

    def as_dict(self) -> dict:
        return asdict(self)


class MSA:
    """Extended method of successive approximations on a :class:`ContinuumNetwork`.

    See the module docstring for the algorithm. Works on any batch: :meth:`step` performs one
    iteration (state sweep, readout, costate sweep, Hamiltonian maximization, acceptance /
    fallback) on (inputs, targets); :meth:`run` iterates on one batch until J stalls.

    Parameters
    ----------
    net : ContinuumNetwork
        With :class:`~pdenets.controls.GridControls` and a fixed-step explicit RK solver.
    objective : Objective
    rho : float
        Penalty ρ ≥ 0 of the extended Hamiltonian (also the floor of the adaptive ρ).
    inner_steps : int
        Iterations of the Hamiltonian maximization.
    inner_lr : float
        Learning rate of the inner Adam (``inner_solver="adam"``); L-BFGS uses unit steps
        with a strong-Wolfe line search.
    inner_solver : {"lbfgs", "adam"}
    readout_steps : int
        L-BFGS iterations of the readout subproblem (0: keep the readout fixed).
    adapt_rho : bool
        Double ρ after a failed step, decay by 0.9 (not below ``rho``) after a successful one.
    disc : Discretization, optional
        Default: the network's.
    other_optimizer : torch.optim.Optimizer, optional
        Optimizer used for the gradient step of remaining parameters (learnable lifting); by
        default Adam with ``lifting_lr``.
    """

    def __init__(self, net: ContinuumNetwork, objective: Objective, *, rho: float = 1.0,
                 inner_steps: int = 10, inner_lr: float = 0.05, inner_solver: str = "lbfgs",
                 readout_steps: int = 10, adapt_rho: bool = True,
                 disc: Discretization | None = None,
                 other_optimizer: torch.optim.Optimizer | None = None,
                 lifting_lr: float = 0.01) -> None:
        if inner_solver not in ("lbfgs", "adam"):
            raise PdenetsError(f"MSA inner_solver must be 'lbfgs' or 'adam', got {inner_solver!r}")
        if rho < 0 or inner_steps < 1 or inner_lr <= 0 or readout_steps < 0:
            raise PdenetsError("MSA: need rho >= 0, inner_steps >= 1, inner_lr > 0, "
                               "readout_steps >= 0")
        self.net, self.objective = net, objective
        self.disc = disc or net.discretization
        check_network(net, self.disc)
        self.rho_min = float(rho)
        self.rho = float(rho)
        self.inner_steps, self.inner_lr, self.inner_solver = inner_steps, inner_lr, inner_solver
        self.readout_steps, self.adapt_rho = readout_steps, adapt_rho
        self.iterations = 0
        self.fallbacks = 0
        self.rejected = 0
        self.history: list[MSAStep] = []
        ctrl_ids = {id(net.controls.w), id(net.controls.b)}
        ro_ids = {id(p) for p in net.readout.parameters()}
        self.others = [p for p in net.parameters()
                       if p.requires_grad and id(p) not in ctrl_ids | ro_ids]
        self.other_optimizer = other_optimizer
        if other_optimizer is None and self.others:
            self.other_optimizer = torch.optim.Adam(self.others, lr=lifting_lr)

    # -- pieces ---------------------------------------------------------------------------
    def _J(self, x, y) -> float:
        with torch.no_grad():
            return float(self.objective(self.net, x, y, self.disc))

    def _readout_update(self, uT: torch.Tensor, y, grid) -> None:
        ro = self.net.readout
        if not isinstance(ro, LinearReadout) or self.readout_steps == 0:
            return
        params = [p for p in (ro.c, ro.d) if p.requires_grad]
        if not params:
            return
        with torch.no_grad():
            R0, d0 = ro.matrix(grid)
            R0, d0 = R0.clone(), d0.clone()
        rho, loss = self.rho, self.objective.loss
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=self.readout_steps,
                                history_size=10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                R, d = ro.matrix(grid)
                out = torch.addmm(d, uT, R.T)
                diff = uT @ (R - R0).T + (d - d0)
                val = data_loss(out, y, loss) + 0.5 * rho * (diff ** 2).sum(1).mean()
                val.backward()
            return val

        opt.step(closure)
        ro.zero_grad(set_to_none=True)

    def _reg_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.net.controls
        if not (self.objective.alpha or self.objective.beta):
            return torch.zeros_like(c.w), torch.zeros_like(c.b)
        with torch.enable_grad():
            R = self.objective.regularization(self.net)
            gw, gb = torch.autograd.grad(R, [c.w, c.b])
        return gw.detach(), gb.detach()

    def _maximize(self, sw: Sweep, gRw, gRb) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Block-Jacobi maximization of the knots' shares of ∫H̃ dt (module docstring)."""
        net = self.net
        ctrl = net.controls
        dyn = net.dynamics
        grid = sw.grid
        W0 = ctrl.w.detach().clone()
        B0 = ctrl.b.detach().clone()
        # entries: (stage, owner knot, owner weight, other knot, other weight)
        kw = sw.knot_weights
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
        dev, dt = W0.device, W0.dtype
        st_t = torch.tensor(st, device=dev)
        own_t, oth_t = torch.tensor(own, device=dev), torch.tensor(oth, device=dev)
        wown_t = torch.tensor(wown, dtype=dt, device=dev)
        woth_t = torch.tensor(woth, dtype=dt, device=dev)
        Y = sw.Y[st_t]
        Lam = sw.Lam[st_t]
        wst = sw.weights[st_t]
        Bsz = sw.batch
        omega = grid.weights.to(dt)
        with torch.no_grad():
            A0, b0 = _knot_matrices(ctrl, grid, W0, B0)
            Aoth = woth_t[:, None, None] * A0[oth_t]
            both = woth_t[:, None] * b0[oth_t]
            Aold = wown_t[:, None, None] * A0[own_t] + Aoth
            bold = wown_t[:, None] * b0[own_t] + both
            Fold = reaction_batched(dyn, Y, Aold, bold)
            P = -Bsz * Lam / wst[:, None, None]
            gold = costate_rhs_batched(dyn, Y, Aold, bold, P)
        rho = self.rho
        alpha, beta = self.objective.alpha, self.objective.beta
        M = _mass(ctrl)
        m, deg = _time_mass_diag(ctrl)
        cj = (alpha * m + beta * deg / (ctrl.T / ctrl.intervals)).to(dt).to(dev)
        W = W0.clone().requires_grad_(True)
        Bv = B0.clone().requires_grad_(True)

        def objective() -> torch.Tensor:
            A, b = _knot_matrices(ctrl, grid, W, Bv)
            Ae = wown_t[:, None, None] * A[own_t] + Aoth
            be = wown_t[:, None] * b[own_t] + both
            F = reaction_batched(dyn, Y, Ae, be)
            val = -(Lam * F).sum()
            if rho:
                pf = (((F - Fold) ** 2) * omega).sum((1, 2))
                g = costate_rhs_batched(dyn, Y, Ae, be, P)
                pg = (((g - gold) ** 2) / omega).sum((1, 2))
                val = val - 0.5 * rho * (wst * (pf + pg)).sum() / Bsz
            dW, dB = W - W0, Bv - B0
            q = (torch.matmul(M, dW) * torch.matmul(dW, M)).sum((1, 2)) + ((dB @ M) * dB).sum(1)
            val = val - (gRw * dW).sum() - (gRb * dB).sum() - 0.5 * (cj * q).sum()
            return val

        with torch.no_grad():
            v0 = float(objective())
        if self.inner_solver == "adam":
            opt = torch.optim.Adam([W, Bv], lr=self.inner_lr)
            for _ in range(self.inner_steps):
                opt.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = -objective()
                    loss.backward()
                opt.step()
        else:
            opt = torch.optim.LBFGS([W, Bv], lr=1.0, max_iter=self.inner_steps,
                                    history_size=10, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = -objective()
                    loss.backward()
                return loss

            opt.step(closure)
        with torch.no_grad():
            v1 = float(objective())
        return W.detach(), Bv.detach(), v1 - v0

    # -- one iteration --------------------------------------------------------------------
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> MSAStep:
        """One MSA iteration on the batch (inputs, targets); returns its record."""
        net, obj = self.net, self.objective
        ctrl = net.controls
        x = torch.as_tensor(inputs)
        y = torch.as_tensor(targets)
        with torch.enable_grad():
            sw = forward_sweep(net, x, self.disc)
            with torch.no_grad():
                out = net.readout(sw.uT, sw.grid)
                Rv = float(obj.regularization(net))
                J0 = float(data_loss(out, y, obj.loss)) + Rv
            self._readout_update(sw.uT.detach(), y, sw.grid)
            costate_sweep(sw, y, obj.loss)
        J1 = sw.loss + Rv
        gRw, gRb = self._reg_gradient()
        gw = (sw.grads.get("controls.w") if sw.grads.get("controls.w") is not None
              else torch.zeros_like(ctrl.w)) + gRw
        gb = (sw.grads.get("controls.b") if sw.grads.get("controls.b") is not None
              else torch.zeros_like(ctrl.b)) + gRb
        gnorm = float(torch.sqrt((gw ** 2).sum() + (gb ** 2).sum()))
        W0, B0 = ctrl.w.detach().clone(), ctrl.b.detach().clone()
        Wn, Bn, gain = self._maximize(sw, gRw, gRb)
        step_norm = float(torch.sqrt(((Wn - W0) ** 2).sum() + ((Bn - B0) ** 2).sum()))
        with torch.no_grad():
            ctrl.w.copy_(Wn)
            ctrl.b.copy_(Bn)
        J2 = self._J(x, y)
        accepted = math.isfinite(J2) and J2 < J1
        fallback = False
        if accepted:
            if self.adapt_rho:
                self.rho = max(self.rho_min, 0.9 * self.rho)
        else:
            fallback = True
            self.fallbacks += 1
            if self.adapt_rho:
                self.rho = max(2.0 * self.rho, 1e-3)
            J2 = self._fallback(x, y, W0, B0, gw, gb, gnorm, step_norm, J1)
        # remaining parameters (learnable lifting): one gradient step
        if self.others and self.other_optimizer is not None:
            self.other_optimizer.zero_grad(set_to_none=True)
            for n, p in net.named_parameters():
                if any(p is o for o in self.others) and sw.grads.get(n) is not None:
                    p.grad = sw.grads[n].detach().clone()
            self.other_optimizer.step()
            self.other_optimizer.zero_grad(set_to_none=True)
        self.iterations += 1
        rec = MSAStep(J0, J1, J2, accepted, fallback, self.rho, gnorm, step_norm, gain)
        self.history.append(rec)
        return rec

    def _fallback(self, x, y, W0, B0, gw, gb, gnorm, step_norm, J1) -> float:
        """Armijo backtracking along −∇J from the old controls; returns the new J."""
        ctrl = self.net.controls
        if gnorm == 0.0 or not math.isfinite(gnorm):
            with torch.no_grad():
                ctrl.w.copy_(W0)
                ctrl.b.copy_(B0)
            self.rejected += 1
            return J1
        eta = (step_norm if step_norm > 0 and math.isfinite(step_norm) else 1.0) / gnorm
        for _ in range(12):
            with torch.no_grad():
                ctrl.w.copy_(W0 - eta * gw)
                ctrl.b.copy_(B0 - eta * gb)
            J = self._J(x, y)
            if math.isfinite(J) and J <= J1 - 1e-4 * eta * gnorm ** 2:
                return J
            eta *= 0.5
        with torch.no_grad():
            ctrl.w.copy_(W0)
            ctrl.b.copy_(B0)
        self.rejected += 1
        return J1

    def run(self, inputs, targets, iterations: int = 50, tol: float = 1e-8) -> list[MSAStep]:
        """Iterate :meth:`step` on one batch until ``iterations`` or a relative decrease of J
        below ``tol`` (convergence monitoring); returns the records of this call."""
        recs = []
        for _ in range(iterations):
            r = self.step(inputs, targets)
            recs.append(r)
            if abs(r.J_before - r.J_after) <= tol * max(1.0, abs(r.J_before)):
                break
        return recs

    def state(self) -> dict:
        return {"msa_rho": self.rho, "msa_iterations": self.iterations,
                "msa_fallbacks": self.fallbacks, "msa_rejected": self.rejected}

    def load_state(self, d: dict) -> None:
        self.rho = float(d.get("msa_rho", self.rho))
        self.iterations = int(d.get("msa_iterations", 0))
        self.fallbacks = int(d.get("msa_fallbacks", 0))
        self.rejected = int(d.get("msa_rejected", 0))


# ------------------------------------------------------------------------------------------
# trainer


class MSATrainer(Trainer):
    """:class:`~pdenets.training.Trainer` whose epoch is a pass of MSA iterations over
    minibatches of ``train.batch_size`` (``train.method = "msa"``).

    Options: ``train.msa_rho``, ``msa_inner_steps``, ``msa_inner_lr``, ``msa_inner_solver``,
    ``msa_readout_steps``, ``msa_adapt_rho``. The per-epoch history records carry
    ``msa_iterations``, ``msa_fallbacks`` (cumulative), ``msa_epoch_fallbacks``, ``msa_rho``
    and ``grad_norm``; the final metrics carry the totals. ``train.gradient`` is not used (the
    costate is the discrete one of the recorded sweep); the learnable lifting, if any, is
    stepped with the trainer's Adam optimizer (``train.lr``), which is checkpointed.
    """

    def __init__(self, cfg, ds, net=None, **kwargs) -> None:
        super().__init__(cfg, ds, net, **kwargs)
        t = cfg.train
        self.msa = MSA(self.net, self.objective, rho=t.msa_rho, inner_steps=t.msa_inner_steps,
                       inner_lr=t.msa_inner_lr,
                       inner_solver=getattr(t, "msa_inner_solver", "lbfgs"),
                       readout_steps=getattr(t, "msa_readout_steps", 10),
                       adapt_rho=getattr(t, "msa_adapt_rho", True), disc=self.disc,
                       other_optimizer=self.optimizer)
        self._epoch_extra: dict = {}
        self.method_step = self._epoch_msa

    def _epoch_msa(self) -> float:
        x, y = self.data["train"]
        n = len(x)
        total = 0.0
        f0 = self.msa.fallbacks
        gn = []
        for idx in self.minibatches():
            r = self.msa.step(x[idx], y[idx])
            total += r.J_after * len(idx)
            gn.append(r.grad_norm)
        self._epoch_extra = {**self.msa.state(), "msa_epoch_fallbacks": self.msa.fallbacks - f0,
                             "grad_norm": sum(gn) / max(len(gn), 1)}
        return total / n

    def epoch_record(self) -> dict:
        extra, self._epoch_extra = self._epoch_extra, {}
        return extra

    def load_checkpoint(self, path) -> None:
        super().load_checkpoint(path)
        if self.history:
            self.msa.load_state(self.history[-1])

    def _result(self, stopped: bool):
        res = super()._result(stopped)
        res.metrics.update(self.msa.state())
        return res
