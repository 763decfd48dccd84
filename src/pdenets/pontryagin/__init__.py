"""Pontryagin maximum principle and the method of successive approximations (MODEL.md §7).

The package has three modules: :mod:`.sweep` (state and costate sweeps through the common
Runge–Kutta core), :mod:`.pmp` (Hamiltonian, PMP residual and its report) and :mod:`.msa`
(the extended method of successive approximations and its trainer).

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
:class:`~pdenets.controls.GridControls` and for :class:`~pdenets.kernels.KernelControls` (every
kernel family, any channels; MODEL.md §10: the maximization then runs over the family's own
parameters with a parameter-space proximal term, see :mod:`._msa_kernels`). One iteration on a
batch:

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

from .msa import MSA, MSAStep, MSATrainer  # noqa: F401
from .pmp import PMPReport, hamiltonian, plot_pmp, pmp_residual, stage_hamiltonian_gradients
from .sweep import (  # noqa: F401 - the helpers stay importable from here
    Sweep,
    _dual_sq,
    _knot_integrals,
    _knot_matrices,
    _mass,
    _time_mass_diag,
    check_network,
    costate_rhs_batched,
    costate_sweep,
    forward_sweep,
    reaction_batched,
)

__all__ = [
    "Sweep", "forward_sweep", "costate_sweep", "stage_hamiltonian_gradients", "hamiltonian",
    "PMPReport", "pmp_residual", "plot_pmp", "MSA", "MSATrainer",
]
