"""Hamiltonian and PMP residual (MODEL.md §7; see :mod:`pdenets.pontryagin` for the discrete
pairing and the identity ∇_θJ = −∫φ ∇_θH dt that these diagnostics check)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import cast

import torch

from ..controls import GridControls
from ..errors import PdenetsError
from ..kernels import KernelControls
from ..network import ContinuumNetwork, Discretization
from ..objective import Objective, control_norms
from .pmp_params import parameter_identity
from .sweep import (
    Sweep,
    _dual_sq,
    _knot_integrals,
    _knot_matrices,
    _mass,
    costate_sweep,
    forward_sweep,
)

# ------------------------------------------------------------------------------------------
# Hamiltonian and PMP residual


def _grid_controls(sweep: Sweep, what: str) -> GridControls:
    """The sweep's controls, which must be :class:`~pdenets.controls.GridControls` for ``what``
    (the knot-value derivatives of MODEL.md §7 need the control-grid basis and mass matrix)."""
    ctrl = sweep.net.controls
    if not isinstance(ctrl, GridControls):
        raise PdenetsError(f"{what} needs GridControls (knot values on a control grid), got "
                           f"{type(ctrl).__name__}")
    return ctrl


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
    ctrl = _grid_controls(sweep, "stage_hamiltonian_gradients")
    with torch.no_grad():
        Wt = torch.einsum("sj,jab->sab", sweep.knot_weights, ctrl.w)
        Bt = sweep.knot_weights @ ctrl.b
    Wl = Wt.clone().requires_grad_(True)
    Bl = Bt.clone().requires_grad_(True)
    lam = sweep.Lam / sweep.weights[:, None, None]
    with torch.enable_grad():
        A, b = _knot_matrices(ctrl, sweep.grid, Wl, Bl)
        F = net.dynamics.reaction_batched(sweep.Y, A, b)
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
        ctrl = _grid_controls(sweep, "hamiltonian with alpha > 0")
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
    dt = next(ctrl.parameters()).dtype
    xs = xs.to(dt)
    ys = torch.as_tensor(targets)
    if objective.loss == "mse":
        ys = ys.to(dt)
    sw = forward_sweep(net, xs, disc)
    costate_sweep(sw, ys, objective.loss)
    if not isinstance(ctrl, GridControls):
        return _pmp_report_params(sw, objective, xs, ys, disc)
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
                                     allow_unused=True, retain_graph=True)  # dsq shares it
    if gw_a is not None:
        Pw = Pw - gw_a
        Pb = Pb - gb_a
    # ∇J by automatic differentiation of the objective (independent of the sweep above)
    net.zero_grad(set_to_none=True)
    with torch.enable_grad():
        J = objective(net, xs, ys, disc)
        gJw, gJb = torch.autograd.grad(J, [ctrl.w, ctrl.b])
    beta_w: torch.Tensor | float = 0.0
    beta_b: torch.Tensor | float = 0.0
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
        assert sw.outputs is not None, "costate_sweep above fills the outputs"
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


def _pmp_report_params(sw: Sweep, objective: Objective, xs, ys,
                       disc: Discretization) -> PMPReport:
    """:func:`pmp_residual` for structured kernels (MODEL.md §10): the same report in parameter
    coordinates (Euclidean norms; see :mod:`.pmp_params`)."""
    net = sw.net
    ctrl = cast(KernelControls, net.controls)
    G, P, gJ, J = parameter_identity(sw, objective, xs, ys, disc)
    assert sw.Lam is not None
    H = -(sw.Lam / sw.weights[:, None, None] * sw.slopes_tensor()).sum((1, 2))

    def sq(d: dict, names) -> torch.Tensor:
        return sum((v.reshape(v.shape[0], -1) ** 2).sum(1) for n, v in d.items() if n in names)

    b_names = {"b"}
    w_names = set(G) - b_names
    res_w = torch.as_tensor(sq(G, w_names)).sqrt()
    res_b = torch.as_tensor(sq(G, b_names)).sqrt()
    res = (res_w ** 2 + res_b ** 2).sqrt()
    gnorm = float(torch.sqrt(sum((v ** 2).sum() for v in gJ.values())))
    pnorm = float(torch.sqrt(sum((v ** 2).sum() for v in P.values())))
    err = float(torch.sqrt(sum(((gJ[n] + P[n]) ** 2).sum() for n in gJ))) / max(gnorm, 1e-300)
    tm = ctrl.kernel.time
    K, d = int(tm.n_knots), float(tm.T) / tm.intervals
    mj = torch.full((K,), d, dtype=sw.weights.dtype)
    if tm.basis != "constant":
        mj[0] = mj[-1] = d / 2
    knot_res = torch.as_tensor(sq(P, set(P))).sqrt() / mj
    knot_gj = torch.as_tensor(sq(gJ, set(gJ))).sqrt() / mj
    acc = None
    if objective.loss == "cross_entropy" and sw.outputs is not None:
        acc = float((sw.outputs.argmax(1) == ys).double().mean())
    notes = ["structured kernel: residuals in parameter coordinates (Euclidean norms); H(t) "
             "without the running cost"]
    if objective.beta:
        notes.append("β > 0: the PMP holds for β = 0; the identity includes the β gradient")
    knot_times = [float(t) for t in tm.knot_times()]
    return PMPReport(
        J=J, loss=sw.loss, accuracy=acc, alpha=objective.alpha, beta=objective.beta,
        samples=int(xs.shape[0]), steps=disc.steps, solver=disc.solver.name,
        times=sw.times.tolist(), hamiltonian=H.tolist(), residual=res.tolist(),
        residual_w=res_w.tolist(), residual_b=res_b.tolist(), knot_times=knot_times,
        knot_residual=knot_res.tolist(), knot_grad_J=knot_gj.tolist(),
        max_residual=float(res.max()), mean_residual=float((sw.weights * res).sum()) / float(
            net.T), max_knot_residual=float(knot_res.max()), grad_J_norm=gnorm,
        projected_H_norm=pnorm, identity_error=err, notes=notes)


def plot_pmp(report: PMPReport, path) -> None:
    """Two panels: the residual ‖∇_θH(t)‖_* over depth (w, b, total; knot-projected values
    as markers) and H(t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

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


