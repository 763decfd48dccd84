"""The Hamiltonian maximization of the extended MSA for structured kernels and channels
(:class:`~pdenets.kernels.KernelControls`, MODEL.md §7, §10; the algorithm is described in
:mod:`pdenets.pontryagin`).

The maximization runs over the kernel family's own parameters — conv displacement values
``kernel.k``, low-rank factors ``kernel.g``, ``kernel.h``, dense values ``kernel.w``, the parts
``kernel.parts.i.*`` of a sum, and the bias ``b`` — each with a leading axis of depth knots
θ_j. The stage operators are built from the parameter values by the kernel itself
(:func:`~pdenets.pontryagin.pmp_params.stage_operators`, the machinery of the parameter-space
PMP identity), so every family, every evaluation plan (matrix, direct, FFT, dense) and any
number of channels C is handled alike. The objective is the sum of the knots' block-Jacobi
shares of ∫H̃ dt, exactly as for :class:`~pdenets.controls.GridControls`:

    Σ_e −⟨Λ_e, f(Y_e, θ_e)⟩ − (ρ/2)(1/B) Σ_e w_e (‖f(Y_e, θ_e) − f(Y_e, θ_e^old)‖²_ω
        + ‖∂_uH(θ_e) − ∂_uH(θ_e^old)‖²_{ω⁻¹})
    − Σ_j [R(θ^old + E_j(θ − θ^old)) − R(θ^old)] − (ρ/2) Σ_j m_j ‖θ_j − θ_j^old‖²_P,

over the entries e = (stage s, owner knot j) with θ_e = φ_j(t_s) θ_j + φ_i(t_s) θ_i^old (the
stage's other knot i held at its old value); ω is the width quadrature repeated over the C
channels. R = (α/2)∫‖θ‖² + (β/2)∫‖∂_tθ‖² (+ (γ/2)∫‖∇θ‖²) is the controls' exact
regularization (:meth:`KernelControls.norms <pdenets.kernels.KernelControls.norms>`), and
R(θ^old + E_j(θ − θ^old)) — R with knot j alone moved — is its exact block-Jacobi restriction
(for the quadratic norms of dense, conv and bias parameters this is the gradient plus the
diagonal knot block of the Hessian used by the GridControls path; for the bilinear low-rank
kernel it is the exact quartic).

The last term is a **proximal term in parameter space (choice)**: m_j = ∫φ_j² dt and

    ‖Δθ_j‖²_P = Σ_p ‖Δθ_{p,j}‖²₂ / n_p,

n_p the number of spatial basis coefficients of parameter p per channel block (Nc for b, g
and h; Mk for a conv k; Nc² for a dense w): the mean square of the coefficients, i.e. the L²
norm of each parameter as a function on its own (unit-volume) grid, independent of the
resolution of that grid. The state-space penalties of the extended Hamiltonian do not see
parameter directions without effect on f at the recorded stages (kernel values out of reach
of the data, the scaling gauge g ↦ cg, h ↦ h/c of a low-rank kernel); the proximal term keeps
the step bounded along them. Every penalty vanishes to second order at θ^old, so the gradient
of the objective at θ^old is exactly −∇J (the discrete PMP identity in parameter coordinates,
:mod:`.pmp_params`) and fixed points are critical points of J.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PdenetsError
from ..kernels import KernelControls
from .pmp_params import stage_operators
from .sweep import Sweep, _stage_entries, _time_mass_diag


class _RegCall(nn.Module):
    """The regularization R of the objective from ``ctrl.norms()`` as ``forward`` (for
    :func:`torch.func.functional_call` at other parameter values)."""

    def __init__(self, ctrl, alpha: float, beta: float, gamma: float) -> None:
        super().__init__()
        self.ctrl = ctrl
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def forward(self):
        if self.gamma > 0:
            sq, dsq, grad = self.ctrl.norms(spatial=True)
            return 0.5 * (self.alpha * sq + self.beta * dsq + self.gamma * grad)
        sq, dsq = self.ctrl.norms()[:2]
        return 0.5 * (self.alpha * sq + self.beta * dsq)


def _spatial_size(name: str, p: torch.Tensor) -> int:
    """n_p of the proximal norm: coefficients per channel block (see the module docstring)."""
    lead = 2 if name == "b" else 3
    return max(1, math.prod(p.shape[lead:]))


class KernelInner:
    """The separable objective of one MSA Hamiltonian maximization for
    :class:`~pdenets.kernels.KernelControls` (module docstring), built from a recorded sweep
    with its costates.

    Parameters
    ----------
    sweep : Sweep
        After :func:`~pdenets.pontryagin.costate_sweep`.
    objective : Objective
        Its α, β, γ define R.
    rho : float
        The penalty ρ ≥ 0.

    Attributes
    ----------
    old : dict
        θ^old, ``{name: tensor}`` (names as in ``controls.named_parameters()``).
    names : list of str
        The parameters that are optimized (those with ``requires_grad``; the others are held).
    """

    def __init__(self, sweep: Sweep, objective, rho: float) -> None:
        if sweep.Lam is None:
            raise PdenetsError("MSA: run costate_sweep before the Hamiltonian maximization")
        net = sweep.net
        ctrl = net.controls
        if not isinstance(ctrl, KernelControls):
            raise PdenetsError(f"KernelInner needs KernelControls, got {type(ctrl).__name__}")
        self.ctrl: KernelControls = ctrl
        self.dyn, self.grid, self.rho = net.dynamics, sweep.grid, float(rho)
        params = dict(ctrl.named_parameters())
        self.old = {n: p.detach().clone() for n, p in params.items()}
        self.names = [n for n, p in params.items() if p.requires_grad]
        self.st, self.own, self.wown, self.oth, self.woth = _stage_entries(sweep.knot_weights)
        self.Y = sweep.Y[self.st]
        self.Lam = sweep.Lam[self.st]
        self.w = sweep.weights[self.st]
        self.B = sweep.batch
        dt = self.Y.dtype
        self.omega = self.grid.weights.to(dt).repeat(int(getattr(ctrl, "channels", 1)))
        # the other knot's share of θ_e (held at its old value)
        self.held = {n: self._bcast(self.woth, v) * v[self.oth] for n, v in self.old.items()}
        with torch.no_grad():
            A, b = stage_operators(ctrl, self.grid, self.stage_values(self.old))
            self.F_old = self.dyn.reaction_batched(self.Y, A, b)
            self.P = -self.B * self.Lam / self.w[:, None, None]
            self.g_old = self.dyn.vjp_u_batched(self.Y, A, b, self.P)
        m, _ = _time_mass_diag(ctrl)
        self.m = m.to(dtype=dt, device=self.Y.device)
        self.n_p = {n: _spatial_size(n, v) for n, v in self.old.items()}
        a, be = objective.alpha, objective.beta
        g = getattr(objective, "gamma", 0.0)
        self.reg = _RegCall(ctrl, a, be, g) if (a or be or g) else None
        if self.reg is not None:
            with torch.no_grad():
                self.R_old = self._R(self.old)

    @staticmethod
    def _bcast(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return w.reshape(-1, *([1] * (v.dim() - 1)))

    def stage_values(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """θ_e = φ_j(t_s) θ_j + φ_i(t_s) θ_i^old for every entry, ``{name: (E, ...)}``."""
        out = {}
        for n, v0 in self.old.items():
            v = values.get(n, v0)
            out[n] = self._bcast(self.wown, v) * v[self.own] + self.held[n]
        return out

    def _R(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.reg is not None
        return torch.func.functional_call(
            self.reg, {f"ctrl.{n}": v for n, v in values.items()}, ())

    def regularization_share(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_j [R(θ^old + E_j(θ − θ^old)) − R(θ^old)]: the knots' exact block-Jacobi shares."""
        if self.reg is None:
            return self.Y.new_zeros(())
        tot = self.Y.new_zeros(())
        for j in range(self.ctrl.n_knots):
            vj = {}
            for n, v0 in self.old.items():
                v = values.get(n, v0)
                vj[n] = torch.cat([v0[:j], v[j:j + 1], v0[j + 1:]]) if v is not v0 else v0
            tot = tot + (self._R(vj) - self.R_old)
        return tot

    def proximal(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_j m_j ‖θ_j − θ_j^old‖²_P (module docstring)."""
        tot = self.Y.new_zeros(())
        for n, v in values.items():
            d = (v - self.old[n]).reshape(v.shape[0], -1)
            tot = tot + (self.m * (d * d).sum(1)).sum() / self.n_p[n]
        return tot

    def value(self, values: dict[str, torch.Tensor], rho: float | None = None) -> torch.Tensor:
        """The objective at parameter values ``values`` (``{name: (K, ...)}``; missing names
        are held at θ^old); ``rho`` overrides the penalty."""
        rho = self.rho if rho is None else float(rho)
        A, b = stage_operators(self.ctrl, self.grid, self.stage_values(values))
        F = self.dyn.reaction_batched(self.Y, A, b)
        val = -(self.Lam * F).sum()
        if rho:
            pf = (((F - self.F_old) ** 2) * self.omega).sum((1, 2))
            g = self.dyn.vjp_u_batched(self.Y, A, b, self.P)
            pg = (((g - self.g_old) ** 2) / self.omega).sum((1, 2))
            val = val - 0.5 * rho * ((self.w * (pf + pg)).sum() / self.B + self.proximal(values))
        return val - self.regularization_share(values)

    def start(self) -> dict[str, torch.Tensor]:
        """Leaves at θ^old for the optimized parameters."""
        return {n: self.old[n].clone().requires_grad_(True) for n in self.names}
