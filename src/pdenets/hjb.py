"""Hamilton–Jacobi–Bellman equation, value function and optimal feedback (MODEL.md §8).

For a *reduced* problem — N width nodes x_i with quadrature weights ω_i and B input samples
sharing the controls — the state of the network is the vector of node values

    v = (u_1(x_1), …, u_1(x_N), u_2(x_1), …, u_B(x_N)) ∈ R^D,   D = B · N,

(sample-major), and the value function V(t, v) of MODEL.md §8 solves

    ∂_t V + H(v, ∇_v V) = 0,   V(T, v) = Φ(v),
    H(v, p) = inf_θ [ ⟨p, f(v, θ)⟩ + L(θ) ],

with f the right-hand side of the forward problem at the nodes (``Standard``, ``Field`` or
``Selection`` dynamics, A_ij = ω_j w_ij), running cost L(θ) = (α/2)(‖w‖² + ‖b‖²) over the
*controlled* parts of θ, discretized with the width quadrature,

    ‖w‖² = Σ_ij ω_i ω_j w_ij²,   ‖b‖² = Σ_i ω_i b_i²,

and terminal cost Φ = the data loss (1/B) Σ_k ℓ_k with ``terminal="state"``:
ℓ_k = ½ ‖u_k(T) − y_k‖²_ω = ½ Σ_i ω_i (u_k(x_i, T) − y_ki)², or ``terminal="mean"``:
ℓ_k = ½ (Σ_i ω_i u_k(x_i, T) − y_k)² (fixed average readout). **Norms on the state are
ω-weighted** (choice, documented in docs/hjb.md); the pairing ⟨p, f⟩ is the Euclidean one of
R^D since p = ∇_v V. With that choice the closed-form case of §8 (w ≡ 0, σ = identity, bias
control) holds verbatim with weighted norms (:func:`closed_form_value`).

The infimum over θ
------------------
For every node i only the i-th row (w_i·, b_i) of the controls acts on f_i, and the cost
separates by rows, so H is a sum of N independent problems. Write the pre-activation of
sample k at node i as z_ki = z0_ki + a_kᵀ η_i with η_i the controlled row and a_k the
corresponding feature vector (φ_kj ω_j for w, 1 for b; φ = u for ``Standard``/``Selection``,
φ = σ(u) for ``Field``), and z0 the fixed (uncontrolled) part. By the representer argument
the cheapest η_i producing given pre-activations is η_i = Q⁻¹ Σ_k c_ki a_k with the metric Q of
the cost, so the row problem is B-dimensional:

    min_c  Σ_k q_ki ψ(z0_ki + (G c)_k) + (α ω_i / 2) cᵀ G c,
    G_kl = [b controlled] + [w controlled] Σ_j ω_j φ_kj φ_lj,

with q = p (``Selection``: q = p · u) and ψ = σ (``Standard``/``Selection``) or identity
(``Field``). Then w*_ij = Σ_k c_ki φ_kj and b*_i = Σ_k c_ki.

* **Closed form** when ψ is affine (σ = identity, or ``Field`` dynamics: control-affine
  right-hand sides): c = −q / (α ω_i), H = ⟨p, f0⟩ − Σ_i qᵀ G q / (2 α ω_i).
* **Otherwise** (tanh, sigmoid, …) a discrete control set followed by Newton polishing:
  every stationary point satisfies c = −q σ'(z)/(α ω_i), so a global minimizer lies in the box
  |c_k| ≤ L_σ |q_k| / (α ω_i), and on its one-signed half c_k q_k ≤ 0 when σ' ≥ 0 (tanh,
  sigmoid, softplus, ReLU). The box is sampled by a tensor grid of ``inner_points`` per
  dimension (quadratically spaced towards c = 0, at most 256 candidates in all), and the best
  candidate is refined by Newton steps on c + q σ'(z)/(α ω_i) = 0 (steepest descent where the
  Newton direction does not descend) with a backtracking line search on the objective. For B = 1
  and no fixed pre-activation the row problem is unimodal for tanh (its stationary point is
  unique), so the global minimum is found.

Schemes
-------
``lax-friedrichs``
    Monotone first-order Lax–Friedrichs scheme (Crandall–Lions 1984; Osher–Shu 1991) marching
    backward in t with one-sided differences p^± (upwind stencil) and the numerical Hamiltonian
    Ĥ = H(v, (p⁻ + p⁺)/2) + Σ_d α_d (p⁺_d − p⁻_d)/2, α_d ≥ |∂H/∂p_d| = |f_d(v, θ*)|.
    α_d is the exact bound sup|σ|·|mult| for bounded activations (tanh, sigmoid), otherwise
    1.1 × the grid maximum of |f_d| at p⁻, p⁺ and p̄. Step Δt = cfl / Σ_d α_d / Δv_d (CFL ≤ 1
    makes the scheme monotone, hence convergent to the viscosity solution by Barles–Souganidis).
``semi-lagrangian``
    First-order semi-Lagrangian scheme (Falcone–Ferretti 2014)
    V(t, v) = min_θ [Δt L(θ) + I[V(t + Δt)](v + Δt f(v, θ))] with multilinear interpolation I
    (monotone for every fixed θ, unconditionally stable). The minimum is taken over the
    discrete control set {θ*(v, p⁻), θ*(v, p̄), θ*(v, p⁺)} of Hamiltonian minimizers at the
    one-sided and central discrete gradients; the value is first-order insensitive to the
    control, so the error per step is O(Δt²). Δt = cfl · min_d Δv_d / α_d (any cfl is stable;
    cfl ≈ 1 balances the O(Δt) and O(Δv²/Δt) errors).

Both use CFL-adaptive steps that land on the ``snapshots`` equidistant depths at which V is
stored; the boundary of the state box uses linear extrapolation (ghost values for
Lax–Friedrichs, extrapolating interpolation for the semi-Lagrangian foot). Everything is
vectorized over the grid (torch, float64) and processed in chunks of grid points.

The **optimal feedback** θ*(t, v) (:meth:`HJBSolution.feedback`) is the minimizer above at
p = ∇V(t, v), the central difference of the interpolated value function (linear in t between
snapshots); :func:`closed_loop` runs the forward problem (``pdenets.integrators``, RK4 by
default, ``Dynamics.reaction``) under it and accumulates the cost. :func:`direct_method` solves
the same problem by piecewise-constant controls, autograd through the forward solve and
L-BFGS — an independent reference for V(0, v0).

References
----------
M. G. Crandall, P.-L. Lions, Viscosity solutions of Hamilton–Jacobi equations, Trans. AMS 277
(1983); Two approximations of solutions of Hamilton–Jacobi equations, Math. Comp. 43 (1984).
S. Osher, C.-W. Shu, High-order ENO schemes for Hamilton–Jacobi equations, SIAM J. Numer. Anal.
28 (1991). G. Barles, P. E. Souganidis, Convergence of approximation schemes for fully nonlinear
second order equations, Asymptotic Anal. 4 (1991). M. Falcone, R. Ferretti, Semi-Lagrangian
Approximation Schemes for Linear and Hamilton–Jacobi Equations, SIAM (2014). M. Bardi,
I. Capuzzo-Dolcetta, Optimal Control and Viscosity Solutions of HJB Equations, Birkhäuser (1997).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ._checks import check_choice, check_finite, check_positive
from ._laplacian import laplacian_for
from .dynamics import Dynamics, Field, Selection
from .errors import PdenetsError
from .integrators import RK4, Solver, System, integrate
from .quadrature import QuadratureRule

SCHEMES = ("lax-friedrichs", "semi-lagrangian")
CONTROL_SETS = ("b", "w", "wb")
TERMINALS = ("state", "mean")
#: sup |σ| of bounded built-in activations (exact Lax–Friedrichs dissipation bounds)
_BOUNDED = {"tanh": 1.0, "sigmoid": 1.0}
_DTYPE = torch.float64
_MAX_CANDIDATES = 256
#: built-in activations with σ' >= 0 (the inner search box is then one-signed)
_MONOTONE = ("tanh", "sigmoid", "softplus", "relu", "identity")
_CHUNK_BYTES = 48 * 2**20


def _default_memory_limit() -> int:
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        phys = 8 * 2**30
    return int(min(4 * 2**30, 0.5 * phys))


def _as_tensor(value, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """Broadcast a scalar / sequence / tensor to ``shape`` (float64), rejecting NaN/Inf."""
    try:
        t = torch.as_tensor(value, dtype=_DTYPE)
    except (TypeError, ValueError, RuntimeError) as e:
        raise PdenetsError(f"{name} must be numeric, got {value!r}") from e
    if t.numel() == math.prod(shape) and t.shape != shape:
        t = t.reshape(shape)
    try:
        t = torch.broadcast_to(t, shape).clone()
    except RuntimeError as e:
        raise PdenetsError(
            f"{name} has shape {tuple(t.shape)}; expected a scalar or shape {shape}"
        ) from e
    return check_finite(t, name)


# ---------------------------------------------------------------------------------------------
# the reduced problem
# ---------------------------------------------------------------------------------------------
@dataclass
class RowSolution:
    """The Hamiltonian minimizer at a batch of states (internal, returned for inspection).

    Attributes
    ----------
    H : torch.Tensor
        H(v, p), shape ``(M,)``.
    f : torch.Tensor
        f(v, θ*) = ∂H/∂p, shape ``(M, D)``.
    cost : torch.Tensor
        L(θ*), shape ``(M,)``.
    c : torch.Tensor
        Representer coefficients, shape ``(M, B, N)``.
    """

    H: torch.Tensor
    f: torch.Tensor
    cost: torch.Tensor
    c: torch.Tensor


class ReducedProblem:
    """The optimal control problem of MODEL.md §8 on N width nodes and B samples.

    Parameters
    ----------
    dynamics : Dynamics
        ``Standard``, ``Field`` or ``Selection`` (any activation; ε Δ_x needs a midpoint or
        trapezoid rule).
    width : QuadratureRule
        Width nodes x_i and weights ω_i (N nodes).
    samples : int
        Number B of samples sharing the controls; D = B · N.
    controls : {"wb", "w", "b"}
        Which of w and b are controls; the others are fixed to ``w0`` / ``b0`` and not charged.
    alpha : float
        Tikhonov weight α > 0 of the running cost (α/2)(‖w‖² + ‖b‖²).
    T : float
        Final depth.
    target : float, sequence or tensor
        y: shape ``(B, N)`` (``terminal="state"``) or ``(B,)`` (``"mean"``), or a scalar.
    terminal : {"state", "mean"}
        Terminal cost (1/B) Σ_k ½‖u_k − y_k‖²_ω, or (1/B) Σ_k ½(Σ_i ω_i u_ki − y_k)².
    w0, b0 : float or tensor
        Fixed kernel values w(x_i, x_j) (shape ``(N, N)``) and bias (``(N,)``) for the
        uncontrolled parts.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        width: QuadratureRule,
        samples: int = 1,
        controls: str = "wb",
        alpha: float = 1.0,
        T: float = 1.0,
        target=0.0,
        terminal: str = "state",
        w0=0.0,
        b0=0.0,
    ) -> None:
        if not isinstance(dynamics, Dynamics):
            raise PdenetsError(f"dynamics must be a Dynamics, got {dynamics!r}")
        if not isinstance(width, QuadratureRule):
            raise PdenetsError(f"width must be a QuadratureRule, got {width!r}")
        check_positive(samples, "samples", integer=True)
        check_positive(alpha, "alpha")
        check_positive(T, "T")
        self.dynamics = dynamics
        self.width = width
        self.controls = check_choice(controls, CONTROL_SETS, "control set")
        self.terminal = check_choice(terminal, TERMINALS, "terminal cost")
        self.alpha, self.T = float(alpha), float(T)
        grid = width.grid(_DTYPE)
        self.grid = grid
        self.nodes, self.weights = grid.nodes, grid.weights
        self.N, self.B = grid.n, int(samples)
        self.D = self.N * self.B
        yshape = (self.B, self.N) if self.terminal == "state" else (self.B,)
        self.target = _as_tensor(target, yshape, "target")
        self.w0 = _as_tensor(w0, (self.N, self.N), "w0")
        self.b0 = _as_tensor(b0, (self.N,), "b0")
        self.lap = laplacian_for(grid) if dynamics.eps > 0.0 else None
        act = dynamics.activation
        self.affine = isinstance(dynamics, Field) or act.name == "identity"
        self.selection = isinstance(dynamics, Selection)
        self.sup_psi = None if isinstance(dynamics, Field) else _BOUNDED.get(act.name)
        self.kappa = self.alpha * self.weights  # α ω_i

    # -- helpers -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"ReducedProblem({self.dynamics!r}, N={self.N}, B={self.B}, D={self.D}, "
            f"controls={self.controls!r}, alpha={self.alpha}, T={self.T}, "
            f"terminal={self.terminal!r})"
        )

    def unflatten(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` → ``(..., B, N)`` (sample-major state ordering)."""
        return v.reshape(*v.shape[:-1], self.B, self.N)

    def _features(self, U: torch.Tensor) -> torch.Tensor:
        return self.dynamics.activation.fn(U) if isinstance(self.dynamics, Field) else U

    def _gram(self, F: torch.Tensor) -> torch.Tensor:
        G = F.new_zeros(*F.shape[:-2], self.B, self.B)
        if "b" in self.controls:
            G = G + 1.0
        if "w" in self.controls:
            G = G + ((F * self.weights)[..., :, None, :] * F[..., None, :, :]).sum(-1)
        return G

    def _z0(self, F: torch.Tensor) -> torch.Tensor:
        z0 = F.new_zeros(F.shape)
        if "w" not in self.controls and bool((self.w0 != 0).any()):
            A0 = self.w0 * self.weights  # A_ij = w0_ij ω_j
            z0 = z0 + (F.reshape(-1, self.N) @ A0.T).reshape(F.shape)
        if "b" not in self.controls and bool((self.b0 != 0).any()):
            z0 = z0 + self.b0
        return z0

    def _drift(self, U: torch.Tensor) -> torch.Tensor | None:
        if self.lap is None:
            return None
        return self.dynamics.eps * self.lap(U.reshape(-1, self.N)).reshape(U.shape)

    def _psi(self, z):
        return z if isinstance(self.dynamics, Field) else self.dynamics.activation.fn(z)

    # -- costs ----------------------------------------------------------------------------------
    def terminal_cost(self, v: torch.Tensor) -> torch.Tensor:
        """Φ(v) for states ``v`` of shape ``(..., D)``; returns shape ``(...)``."""
        U = self.unflatten(v)
        if self.terminal == "state":
            r = U - self.target
            return 0.5 * ((r * r) @ self.weights).mean(-1)
        r = U @ self.weights - self.target
        return 0.5 * (r * r).mean(-1)

    def running_cost(self, w: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
        """L(θ) = (α/2)(‖w‖² + ‖b‖²) of the controlled parts (``w``: ``(..., N, N)``,
        ``b``: ``(..., N)``; pass None for an uncontrolled part)."""
        om = self.weights
        total = torch.zeros((), dtype=_DTYPE)
        if "w" in self.controls and w is not None:
            total = total + ((w * w) * om[:, None] * om[None, :]).sum((-1, -2))
        if "b" in self.controls and b is not None:
            total = total + (b * b) @ om
        return 0.5 * self.alpha * total

    # -- the Hamiltonian ------------------------------------------------------------------------
    def minimize(
        self, v: torch.Tensor, p: torch.Tensor, inner_points: int = 7, newton_iters: int = 8
    ) -> RowSolution:
        """The infimum over θ in H(v, p) for states ``v`` and costates ``p`` of shape
        ``(M, D)`` (closed form or discrete set + Newton, see the module docstring)."""
        U, Pm = self.unflatten(v), self.unflatten(p)
        F = self._features(U)
        G = self._gram(F)
        z0 = self._z0(F)
        q = Pm * U if self.selection else Pm
        kap = self.kappa
        if self.affine:
            c = -q / kap
        else:
            c = _minimize_rows(q, z0, G, kap, self.dynamics.activation, inner_points,
                               newton_iters)
        s = (G[:, :, :, None] * c[:, None, :, :]).sum(2)  # (G c)_ki
        z = z0 + s
        f = self._psi(z)
        if self.selection:
            f = f * U
        drift = self._drift(U)
        if drift is not None:
            f = f + drift
        cost = 0.5 * ((c * s).sum(1) * kap).sum(-1)
        fl = f.reshape(f.shape[0], self.D)
        H = (p * fl).sum(-1) + cost
        return RowSolution(H, fl, cost, c)

    def controls_from(self, v: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full controls (w, b) at the nodes — shapes ``(M, N, N)``, ``(M, N)`` — from the
        representer coefficients ``c`` (``(M, B, N)``) at states ``v`` (``(M, D)``)."""
        F = self._features(self.unflatten(v))
        M = v.shape[0]
        if "w" in self.controls:
            w = (c[:, :, :, None] * F[:, :, None, :]).sum(1)  # Σ_k c_ki φ_kj
        else:
            w = self.w0.expand(M, self.N, self.N).clone()
        b = c.sum(1) if "b" in self.controls else self.b0.expand(M, self.N).clone()
        return w, b

    def rhs(self, v: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """f(v, θ) for one state ``v`` (``(D,)``) and controls ``w`` (``(N, N)``),
        ``b`` (``(N,)``), through ``Dynamics.__call__`` (the forward problem's own code)."""
        U = self.unflatten(v)
        A = w * self.weights[None, :]
        return self.dynamics(U, A, b, self.lap).reshape(self.D)

    def speed_bound(self, v: torch.Tensor) -> torch.Tensor | None:
        """Exact bound of |f_d(v, θ)| over all θ (``(M, D)``) for bounded activations, else
        None."""
        if self.sup_psi is None:
            return None
        U = self.unflatten(v)
        s = self.sup_psi * (U.abs() if self.selection else torch.ones_like(U))
        drift = self._drift(U)
        if drift is not None:
            s = s + drift.abs()
        return s.reshape(v.shape[0], self.D)

    def describe(self) -> dict:
        """JSON-serializable description."""
        return {
            "dynamics": self.dynamics.config(), "rule": self.width.name, "width": self.N,
            "samples": self.B, "D": self.D, "controls": self.controls, "alpha": self.alpha,
            "T": self.T, "terminal": self.terminal, "target": self.target.tolist(),
        }


def _matvec(G: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(G c) over the last axis by broadcasting (tiny batched matmuls are slow on CPU)."""
    return (G * c.unsqueeze(-2)).sum(-1)


def _tanh_derivs(z):
    t = torch.tanh(z)
    d1 = 1.0 - t * t
    return d1, -2.0 * t * d1


def _sigmoid_derivs(z):
    s = torch.sigmoid(z)
    d1 = s * (1.0 - s)
    return d1, d1 * (1.0 - 2.0 * s)


def _softplus_derivs(z):
    s = torch.sigmoid(z)
    return s, s * (1.0 - s)


#: (σ', σ'') of built-in activations from one evaluation (σ'' for Newton's Jacobian)
_DERIVATIVES = {"tanh": _tanh_derivs, "sigmoid": _sigmoid_derivs, "softplus": _softplus_derivs}


def _line_search(phi, c, d, lo, hi, fractions):
    """Best of c + τ d (τ in ``fractions``, clamped to the box) per row: (c_new, φ(c_new))."""
    cand = torch.clamp(c[:, None] + fractions * d[:, None], lo[:, None], hi[:, None])
    val = phi(cand)
    val = torch.where(torch.isfinite(val), val, torch.inf)
    best, pick = val.min(-1)
    return cand[torch.arange(c.shape[0]), pick], best


def _minimize_rows(q, z0, G, kap, act, inner_points: int, newton_iters: int) -> torch.Tensor:
    """min_c Σ_k q_k σ(z0_k + (G c)_k) + (κ/2) cᵀ G c per (point, node); returns ``(M, B, N)``.

    Discrete candidate set in the box |c_k| ≤ L_σ |q_k| / κ followed by safeguarded Newton.
    """
    M, B, N = q.shape
    qt = q.transpose(1, 2)  # (M, N, B)
    z0t = z0.transpose(1, 2)
    k = kap[None, :, None]  # (1, N, 1)
    Gx = G[:, None]  # (M, 1, B, B)
    radius = act.lipschitz * qt.abs() / k
    m = max(2, min(int(inner_points), int(math.floor(_MAX_CANDIDATES ** (1.0 / B) + 1e-9))))
    if act.builtin and act.name in _MONOTONE:
        # σ' >= 0: a stationary point has c_k = −q_k σ'(z_k)/κ, i.e. c_k q_k <= 0
        lin = torch.linspace(0.0, 1.0, m, dtype=q.dtype) ** 2  # denser near c = 0
        lo_box = torch.where(qt > 0, -radius, torch.zeros_like(radius))
        hi_box = torch.where(qt > 0, torch.zeros_like(radius), radius)
    else:
        lin = torch.linspace(-1.0, 1.0, m, dtype=q.dtype)
        lin = lin.abs() * lin
        lo_box, hi_box = -radius, radius
    S = torch.cartesian_prod(*([lin] * B)).reshape(-1, B)  # (K, B)

    def objective(c):  # c (..., B) broadcast with (M, N, [K,] B)
        extra = c.dim() - qt.dim()
        Gb = Gx[:, :, None] if extra else Gx
        s = _matvec(Gb, c)
        qq = qt[:, :, None] if extra else qt
        zz = (z0t[:, :, None] if extra else z0t) + s
        kk = k[..., None] if extra else k
        return (qq * act.fn(zz)).sum(-1) + 0.5 * kk[..., 0] * (c * s).sum(-1)

    def objective_at(idx):
        """φ restricted to the (point, node) pairs ``idx``, for candidates (n, L, B)."""
        qs, zs = qt[idx], z0t[idx]
        Gs, ks = Gx.expand(M, N, B, B)[idx], k.expand(M, N, 1)[idx]

        def phi(c):
            sv = (Gs[:, None] * c[..., None, :]).sum(-1)
            return (qs[:, None] * act.fn(zs[:, None] + sv)).sum(-1) + 0.5 * ks * (c * sv).sum(-1)

        return phi

    if lin[0] == 0.0:  # one-signed box: c = −sign(q) · s · radius
        cand = -torch.sign(qt)[:, :, None, :] * S[None, None] * radius[:, :, None, :]
    else:
        cand = S[None, None] * radius[:, :, None, :]  # (M, N, K, B)
    best = objective(cand).argmin(-1)  # (M, N)
    c = torch.gather(cand, 2, best[:, :, None, None].expand(M, N, 1, B)).squeeze(2)
    obj = objective(c)
    eye = torch.eye(B, dtype=q.dtype)
    fractions = 0.5 ** torch.arange(1, 9, dtype=q.dtype)[:, None]  # backtracking line search
    derivs = _DERIVATIVES.get(act.name) if act.builtin else None
    for _ in range(newton_iters):
        s = _matvec(Gx, c)
        z = z0t + s
        if derivs is not None:
            d1, d2 = derivs(z)
        else:
            d1 = act.derivative(z)
            d2 = (act.derivative(z + 1e-6) - act.derivative(z - 1e-6)) / 2e-6
        r = qt * d1 + k * c
        J = (qt * d2)[..., :, None] * Gx + k[..., None] * eye
        if B == 1:
            det = J[..., 0, 0]
            ok = det.abs() > 0
            step = torch.where(ok[..., None], r / torch.where(ok, det, 1.0)[..., None], 0.0)
        elif B == 2:  # Cramer's rule (batched tiny solves are slow)
            a, b_, c_, d = J[..., 0, 0], J[..., 0, 1], J[..., 1, 0], J[..., 1, 1]
            det = a * d - b_ * c_
            ok = det.abs() > 1e-300
            det = torch.where(ok, det, 1.0)
            step = torch.stack([(d * r[..., 0] - b_ * r[..., 1]) / det,
                                (a * r[..., 1] - c_ * r[..., 0]) / det], -1)
            step = torch.where(ok[..., None], step, 0.0)
        else:
            step, info = torch.linalg.solve_ex(J, r.unsqueeze(-1))
            step = torch.where((info == 0)[..., None, None], step, torch.zeros_like(step))
            step = step.squeeze(-1)
        d = -step
        # Newton direction where it descends (∇φ = G r), else the scaled steepest descent
        slope = (_matvec(Gx, r) * d).sum(-1)
        d = torch.where((slope < 0)[..., None], d, -r / k)
        # full step everywhere; a backtracking line search only where it does not decrease φ
        cn = torch.clamp(c + d, lo_box, hi_box)
        on = objective(cn)
        better = torch.isfinite(on) & (on <= obj)
        bad = ~better
        if bool(bad.any()):
            idx = bad.nonzero(as_tuple=True)
            sub_c, sub_v = _line_search(objective_at(idx), c[idx], d[idx], lo_box[idx],
                                        hi_box[idx], fractions)
            cn[idx], on[idx] = sub_c, sub_v
            better = torch.isfinite(on) & (on <= obj)
        moved = float(((cn - c).abs() * better[..., None]).max())
        c = torch.where(better[..., None], cn, c)
        obj = torch.where(better, on, obj)
        if moved <= 1e-13 * (1.0 + float(radius.max())):
            break
    return c.transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# the state grid
# ---------------------------------------------------------------------------------------------
class StateGrid:
    """A tensor grid on the box Π_d [lo_d, hi_d] of the state space R^D.

    Parameters
    ----------
    lo, hi : float or sequence of float
        Box corners (broadcast to D entries), lo < hi.
    points : int or sequence of int
        Grid points per dimension (≥ 3).
    D : int
        State dimension.
    """

    def __init__(self, lo, hi, points, D: int) -> None:
        check_positive(D, "state dimension D", integer=True)
        self.D = D
        self.lo = _as_tensor(lo, (D,), "grid lo")
        self.hi = _as_tensor(hi, (D,), "grid hi")
        if not bool((self.hi > self.lo).all()):
            raise PdenetsError(f"grid: need lo < hi in every dimension, got {self.lo.tolist()} "
                               f"and {self.hi.tolist()}")
        pts = [points] * D if isinstance(points, int) else list(points)
        if len(pts) == 1 and D > 1:
            pts = pts * D
        if len(pts) != D or any(isinstance(n, bool) or not isinstance(n, int) or n < 3
                                for n in pts):
            raise PdenetsError(f"grid points must be an integer >= 3 or {D} of them, got "
                               f"{points!r}")
        self.shape = tuple(int(n) for n in pts)
        self.h = (self.hi - self.lo) / torch.tensor([n - 1 for n in self.shape], dtype=_DTYPE)
        self.size = math.prod(self.shape)
        strides = [1] * D
        for d in range(D - 2, -1, -1):
            strides[d] = strides[d + 1] * self.shape[d + 1]
        self.strides = torch.tensor(strides, dtype=torch.int64)
        self.n_tensor = torch.tensor(self.shape, dtype=torch.int64)

    def axes(self) -> list[torch.Tensor]:
        """The 1-D coordinates per dimension."""
        return [torch.linspace(float(self.lo[d]), float(self.hi[d]), n, dtype=_DTYPE)
                for d, n in enumerate(self.shape)]

    def points(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Coordinates of the flat (row-major) grid indices ``start:stop``, shape ``(M, D)``."""
        stop = self.size if stop is None else stop
        idx = torch.arange(start, stop, dtype=torch.int64)
        multi = (idx[:, None] // self.strides) % self.n_tensor
        return self.lo + multi.to(_DTYPE) * self.h

    def interpolate(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Multilinear interpolation of grid ``values`` (shape ``self.shape`` or flat) at
        points ``x`` (``(M, D)``), linear extrapolation outside the box."""
        flat = values.reshape(-1)
        s = (x - self.lo) / self.h
        i0 = torch.clamp(torch.floor(s), torch.zeros(self.D, dtype=_DTYPE),
                         (self.n_tensor - 2).to(_DTYPE))
        frac = s - i0
        i0 = i0.to(torch.int64)
        out = torch.zeros(x.shape[0], dtype=flat.dtype)
        for corner in range(2**self.D):
            bits = torch.tensor([(corner >> (self.D - 1 - d)) & 1 for d in range(self.D)],
                                dtype=torch.int64)
            wgt = torch.where(bits.bool(), frac, 1.0 - frac).prod(-1)
            out = out + wgt * flat[((i0 + bits) * self.strides).sum(-1)]
        return out

    def one_sided(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward and forward differences p⁻, p⁺ of ``V`` (grid-shaped), shape
        ``(D, *shape)`` each, with linearly extrapolated ghost values."""
        pm = torch.empty((self.D, *self.shape), dtype=V.dtype)
        pp = torch.empty_like(pm)
        for d in range(self.D):
            first = 2 * V.narrow(d, 0, 1) - V.narrow(d, 1, 1)
            last = 2 * V.narrow(d, -1, 1) - V.narrow(d, -2, 1)
            dV = torch.diff(V, dim=d, prepend=first, append=last) / float(self.h[d])
            n = self.shape[d]
            pm[d] = dV.narrow(d, 0, n)
            pp[d] = dV.narrow(d, 1, n)
        return pm, pp

    def describe(self) -> dict:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist(), "points": list(self.shape),
                "size": self.size}


# ---------------------------------------------------------------------------------------------
# solver options, memory estimate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HJBOptions:
    """Options of :func:`solve_hjb`.

    Attributes
    ----------
    scheme : {"lax-friedrichs", "semi-lagrangian"}
    cfl : float
        CFL number (≤ 1 for the monotone Lax–Friedrichs scheme; any value for
        semi-Lagrangian).
    snapshots : int
        Number (≥ 2) of equidistant depths, including 0 and T, at which V is stored.
    max_memory : int or None
        Bytes the solve may use (estimated before any allocation); default
        min(4 GiB, half the physical memory).
    inner_points : int
        Candidates per dimension of the discrete control set (non-affine Hamiltonians).
    newton_iters : int
        Newton polishing steps of the inner minimization.
    max_steps : int
        Budget of time steps.
    """

    scheme: str = "lax-friedrichs"
    cfl: float = 0.9
    snapshots: int = 11
    max_memory: int | None = None
    inner_points: int = 7
    newton_iters: int = 8
    max_steps: int = 1_000_000

    def __post_init__(self) -> None:
        check_choice(self.scheme, SCHEMES, "HJB scheme")
        check_positive(self.cfl, "cfl")
        if self.scheme == "lax-friedrichs" and self.cfl > 1.0:
            raise PdenetsError(f"cfl = {self.cfl} > 1 breaks the monotonicity of the "
                               "Lax–Friedrichs scheme; use cfl <= 1")
        check_positive(self.snapshots, "snapshots", integer=True)
        if self.snapshots < 2:
            raise PdenetsError(f"snapshots must be >= 2 (t = 0 and T), got {self.snapshots}")
        if self.max_memory is not None:
            check_positive(self.max_memory, "max_memory")
        check_positive(self.inner_points, "inner_points", integer=True)
        if isinstance(self.newton_iters, bool) or not isinstance(self.newton_iters, int) \
                or self.newton_iters < 0:
            raise PdenetsError(f"newton_iters must be an integer >= 0, got {self.newton_iters!r}")
        check_positive(self.max_steps, "max_steps", integer=True)


def _candidates(problem: ReducedProblem, opts: HJBOptions) -> int:
    if problem.affine:
        return 1
    B = problem.B
    m = max(2, min(opts.inner_points, int(math.floor(_MAX_CANDIDATES ** (1.0 / B) + 1e-9))))
    return m**B


def _per_point_bytes(problem: ReducedProblem, opts: HJBOptions) -> int:
    """Bytes of chunk temporaries per grid point (inner minimization and fluxes)."""
    B, N, D = problem.B, problem.N, problem.D
    K = _candidates(problem, opts)
    inner = N * B * (4 * K + 30) + N * B * B * (2 * K + 6)
    return 8 * (inner + 20 * D + 3 * N * N + 16)


def _chunk_size(problem: ReducedProblem, opts: HJBOptions, grid: StateGrid) -> int:
    return int(max(256, min(grid.size, _CHUNK_BYTES // _per_point_bytes(problem, opts))))


def estimate_memory(problem: ReducedProblem, grid: StateGrid, opts: HJBOptions) -> int:
    """Estimated peak bytes of :func:`solve_hjb` (grid arrays, snapshots, chunk temporaries)."""
    P, D = grid.size, grid.D
    grid_arrays = 8 * P * (6 + 3 * D + opts.snapshots + (3 if opts.scheme != "lax-friedrichs"
                                                          else 0))
    chunk = _chunk_size(problem, opts, grid) * _per_point_bytes(problem, opts)
    return int(grid_arrays + chunk)


# ---------------------------------------------------------------------------------------------
# the solution
# ---------------------------------------------------------------------------------------------
@dataclass
class HJBSolution:
    """Value function on the state grid at the snapshot depths, with feedback evaluation.

    Attributes
    ----------
    problem : ReducedProblem
    grid : StateGrid
    options : HJBOptions
    times : torch.Tensor
        Snapshot depths, increasing from 0 to T, shape ``(S,)``.
    values : torch.Tensor
        V at the snapshots, shape ``(S, *grid.shape)``.
    stats : dict
        ``steps`` (time steps), ``seconds``, ``point_steps_per_second``, ``memory_estimate``,
        ``max_speed`` (largest α_d used).
    """

    problem: ReducedProblem
    grid: StateGrid
    options: HJBOptions
    times: torch.Tensor
    values: torch.Tensor
    stats: dict = field(default_factory=dict)

    def _bracket(self, t: float) -> tuple[int, float]:
        T = self.problem.T
        if not (-1e-12 * T <= t <= T * (1 + 1e-12)):
            raise PdenetsError(f"depth t = {t} lies outside [0, T = {T}]")
        S = self.times.shape[0]
        pos = min(max(t, 0.0), T) / T * (S - 1)
        k = min(int(math.floor(pos)), S - 2)
        return k, pos - k

    def value(self, t: float, v: torch.Tensor) -> torch.Tensor:
        """V(t, v) at states ``v`` (``(M, D)`` or ``(D,)``), interpolated in v and t."""
        v = _states(v, self.problem.D)
        k, s = self._bracket(float(t))
        a = self.grid.interpolate(self.values[k], v)
        if s == 0.0:
            return a
        return (1 - s) * a + s * self.grid.interpolate(self.values[k + 1], v)

    def gradient(self, t: float, v: torch.Tensor) -> torch.Tensor:
        """∇_v V(t, v) (``(M, D)``): central differences of the interpolated value function
        with the grid spacing (exactly the nodal central differences at grid points)."""
        v = _states(v, self.problem.D)
        D, h = self.problem.D, self.grid.h
        shifts = torch.diag(h)
        pts = torch.cat([v[:, None, :] + shifts, v[:, None, :] - shifts], 1).reshape(-1, D)
        vals = self.value(t, pts).reshape(v.shape[0], 2, D)
        return (vals[:, 0] - vals[:, 1]) / (2 * h)

    def feedback(self, t: float, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Optimal feedback θ*(t, v) = (w*, b*) at the nodes, shapes ``(M, N, N)``, ``(M, N)``
        (uncontrolled parts are the fixed ``w0``/``b0``)."""
        v = _states(v, self.problem.D)
        row = self.problem.minimize(v, self.gradient(t, v), self.options.inner_points,
                                    self.options.newton_iters)
        return self.problem.controls_from(v, row.c)

    def feedback_on_grid(self, index: int, stride: int = 1) -> dict:
        """Feedback and closed-loop velocity at snapshot ``index`` on every ``stride``-th grid
        point per dimension (grid central differences). Returns numpy arrays ``points``,
        ``w``, ``b``, ``velocity`` and the sub-grid ``shape``."""
        V = self.values[index]
        pm, pp = self.grid.one_sided(V)
        sl = tuple(slice(None, None, stride) for _ in range(self.grid.D))
        pbar = (0.5 * (pm + pp))[(slice(None), *sl)]
        shape = tuple(pbar.shape[1:])
        p = pbar.reshape(self.grid.D, -1).T
        axes = [a[::stride] for a in self.grid.axes()]
        mesh = torch.meshgrid(*axes, indexing="ij")
        v = torch.stack([m.reshape(-1) for m in mesh], 1)
        row = self.problem.minimize(v, p, self.options.inner_points, self.options.newton_iters)
        w, b = self.problem.controls_from(v, row.c)
        return {"points": v.numpy(), "w": w.numpy(), "b": b.numpy(),
                "velocity": row.f.numpy(), "shape": shape}


def _states(v, D: int) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=_DTYPE)
    if v.dim() == 1:
        v = v[None]
    if v.dim() != 2 or v.shape[1] != D:
        raise PdenetsError(f"states have shape {tuple(v.shape)}; expected (M, {D})")
    return check_finite(v, "state")


# ---------------------------------------------------------------------------------------------
# the grid solver
# ---------------------------------------------------------------------------------------------
def solve_hjb(
    problem: ReducedProblem, grid: StateGrid, options: HJBOptions | None = None
) -> HJBSolution:
    """Solve the HJB equation of MODEL.md §8 backward from V(T) = Φ on ``grid``.

    Parameters
    ----------
    problem : ReducedProblem
    grid : StateGrid
        Box and grid in R^D (D must equal ``problem.D``).
    options : HJBOptions, optional

    Returns
    -------
    HJBSolution

    Raises
    ------
    PdenetsError
        If the grid dimension does not match, or the estimated memory exceeds
        ``options.max_memory`` (raised before any grid-sized allocation), or the step budget
        is exhausted.
    """
    opts = options or HJBOptions()
    if not isinstance(problem, ReducedProblem):
        raise PdenetsError(f"problem must be a ReducedProblem, got {problem!r}")
    if grid.D != problem.D:
        raise PdenetsError(f"the state grid is {grid.D}-D but the problem has D = B·N = "
                           f"{problem.B}·{problem.N} = {problem.D}")
    need = estimate_memory(problem, grid, opts)
    limit = opts.max_memory or _default_memory_limit()
    if need > limit:
        raise PdenetsError(
            f"HJB grid of {' x '.join(map(str, grid.shape))} = {grid.size:.4g} points in "
            f"D = {grid.D} needs about {need / 2**30:.3g} GiB, more than the limit "
            f"{limit / 2**30:.3g} GiB; use fewer points per dimension, fewer snapshots, a "
            f"smaller D, or raise max_memory"
        )
    t_start = time.perf_counter()
    P, D = grid.size, grid.D
    chunk = _chunk_size(problem, opts, grid)
    spans = [(s, min(s + chunk, P)) for s in range(0, P, chunk)]
    V = torch.empty(P, dtype=_DTYPE)
    bound = torch.zeros(D, dtype=_DTYPE) if problem.sup_psi is not None else None
    coords = [grid.points(s, e) for s, e in spans]
    for (s, e), x in zip(spans, coords):
        V[s:e] = problem.terminal_cost(x)
        if bound is not None:
            bound = torch.maximum(bound, problem.speed_bound(x).amax(0))
    check_finite(V, "terminal cost on the grid")
    S = opts.snapshots
    T = problem.T
    snap_t = [T * j / (S - 1) for j in range(S)]
    values = torch.empty((S, *grid.shape), dtype=_DTYPE)
    values[S - 1] = V.reshape(grid.shape)
    h = grid.h
    t = T
    j = S - 2  # next snapshot to reach, going backward
    steps = 0
    speeds_prev: torch.Tensor | None = None
    max_speed = 0.0
    while j >= 0:
        Vg = V.reshape(grid.shape)
        pm, pp = grid.one_sided(Vg)
        pm, pp = pm.reshape(D, P), pp.reshape(D, P)
        if opts.scheme == "lax-friedrichs":
            Hs = torch.empty(P, dtype=_DTYPE)
            speed = torch.zeros(D, dtype=_DTYPE)
            for (s, e), x in zip(spans, coords):
                a, b = pm[:, s:e].T, pp[:, s:e].T
                row = problem.minimize(x, 0.5 * (a + b), opts.inner_points, opts.newton_iters)
                Hs[s:e] = row.H
                if bound is None:
                    speed = torch.maximum(speed, row.f.abs().amax(0))
                    for pq in (a, b):
                        r2 = problem.minimize(x, pq, opts.inner_points, opts.newton_iters)
                        speed = torch.maximum(speed, r2.f.abs().amax(0))
            speed = bound if bound is not None else 1.1 * speed
            speed = torch.clamp(speed, min=1e-12)
            dt = opts.cfl / float((speed / h).sum())
            dt, t_new, j_new = _clip_step(dt, t, snap_t, j)
            diss = (0.5 * (pp - pm) * speed[:, None]).sum(0)
            V = V + dt * (Hs + diss)
        else:
            if speeds_prev is None:
                if bound is not None:
                    speeds_prev = bound
                else:
                    sp = torch.zeros(D, dtype=_DTYPE)
                    for (s, e), x in zip(spans, coords):
                        r = problem.minimize(x, 0.5 * (pm[:, s:e] + pp[:, s:e]).T,
                                             opts.inner_points, opts.newton_iters)
                        sp = torch.maximum(sp, r.f.abs().amax(0))
                    speeds_prev = sp
            speed = torch.clamp(1.1 * speeds_prev, min=1e-12)
            dt = opts.cfl * float((h / speed).min())
            dt, t_new, j_new = _clip_step(dt, t, snap_t, j)
            Vn = torch.empty(P, dtype=_DTYPE)
            seen = torch.zeros(D, dtype=_DTYPE)
            for (s, e), x in zip(spans, coords):
                a, b = pm[:, s:e].T, pp[:, s:e].T
                best = None
                for pq in (0.5 * (a + b), a, b):
                    r = problem.minimize(x, pq, opts.inner_points, opts.newton_iters)
                    seen = torch.maximum(seen, r.f.abs().amax(0))
                    cand = dt * r.cost + grid.interpolate(V, x + dt * r.f)
                    best = cand if best is None else torch.minimum(best, cand)
                Vn[s:e] = best
            V = Vn
            speeds_prev = seen if bound is None else bound
        max_speed = max(max_speed, float(speed.max()))
        t, j_hit = t_new, j_new
        steps += 1
        if not bool(torch.isfinite(V).all()):
            raise PdenetsError(f"HJB: non-finite values at t = {t:.6g} ({opts.scheme}); "
                               "check the box, alpha and cfl")
        if j_hit is not None:
            values[j_hit] = V.reshape(grid.shape)
            j = j_hit - 1
        if steps >= opts.max_steps and j >= 0:
            raise PdenetsError(f"HJB: more than max_steps = {opts.max_steps} time steps "
                               f"(t = {t:.6g}); coarsen the grid or raise max_steps")
    seconds = time.perf_counter() - t_start
    stats = {
        "steps": steps, "seconds": seconds, "grid_points": P,
        "point_steps_per_second": P * steps / max(seconds, 1e-12),
        "memory_estimate": estimate_memory(problem, grid, opts), "max_speed": max_speed,
        "chunk": chunk,
    }
    times = torch.tensor(snap_t, dtype=_DTYPE)
    return HJBSolution(problem, grid, opts, times, values, stats)


def _clip_step(dt: float, t: float, snap_t: list[float], j: int):
    """Backward step of at most ``dt`` from ``t``: the remaining interval to the next snapshot
    depth ``snap_t[j]`` is split into equal steps, so steps never exceed ``dt`` and land on it.
    Returns ``(step, new t, j if the snapshot is reached else None)``."""
    rest = t - snap_t[j]
    n = max(1, math.ceil(rest / dt * (1 - 1e-12)))
    if n == 1:
        return rest, snap_t[j], j
    return rest / n, t - rest / n, None


# ---------------------------------------------------------------------------------------------
# closed loop and the direct method
# ---------------------------------------------------------------------------------------------
@dataclass
class ClosedLoop:
    """Closed-loop trajectory under the HJB feedback.

    Attributes
    ----------
    ts : torch.Tensor
        Depths, shape ``(S + 1,)``.
    states : torch.Tensor
        u(t) flattened, shape ``(S + 1, D)``.
    running : float
        ∫_0^T L(θ*(t, u(t))) dt.
    terminal : float
        Φ(u(T)).
    cost : float
        running + terminal.
    """

    ts: torch.Tensor
    states: torch.Tensor
    running: float
    terminal: float
    cost: float


def closed_loop(
    solution: HJBSolution, v0, *, steps: int = 200, solver: Solver | None = None
) -> ClosedLoop:
    """Run the forward problem from ``v0`` (``(D,)``) under the feedback θ*(t, u(t)).

    The state is augmented with the accumulated running cost and integrated with
    :func:`pdenets.integrators.integrate` (RK4 by default); f is evaluated by the dynamics'
    own ``__call__`` with A = w* ω_j.
    """
    check_positive(steps, "closed-loop steps", integer=True)
    solver = solver or RK4()
    prob = solution.problem
    v0 = _states(v0, prob.D)
    if v0.shape[0] != 1:
        raise PdenetsError("closed_loop takes one initial state of shape (D,)")
    D = prob.D

    def reaction(t, X, t0, t1):
        v = X[:, :D]
        w, b = solution.feedback(t, v)
        f = prob.rhs(v[0], w[0], b[0])
        L = prob.running_cost(w[0], b[0])
        return torch.cat([f, L.reshape(1)])[None]

    X0 = torch.cat([v0, torch.zeros(1, 1, dtype=_DTYPE)], 1)
    T = prob.T
    ts = [T * k / steps for k in range(steps + 1)]
    XT, saved, _ = integrate(System(reaction), X0, T, steps, solver, ts)
    traj = torch.cat(saved, 0)
    running = float(XT[0, D])
    term = float(prob.terminal_cost(XT[:, :D])[0])
    return ClosedLoop(torch.tensor(ts, dtype=_DTYPE), traj[:, :D], running, term, running + term)


@dataclass
class DirectResult:
    """Result of :func:`direct_method`: the optimal cost, controls and forward trajectory."""

    cost: float
    running: float
    terminal: float
    w: torch.Tensor | None
    b: torch.Tensor | None
    uT: torch.Tensor
    iterations: int
    grad_norm: float


def direct_method(
    problem: ReducedProblem,
    v0,
    *,
    intervals: int = 16,
    steps: int | None = None,
    solver: Solver | None = None,
    max_iter: int = 300,
    restarts: Sequence[float] = (0.0,),
) -> DirectResult:
    """Minimize the cost over piecewise-constant-in-depth controls (direct method).

    Controls (w, b) at the nodes are constant on ``intervals`` equal depth intervals; the
    forward problem is solved by ``pdenets.integrators.integrate`` (RK4, ``steps`` a multiple
    of ``intervals``; default 4 per interval) with ``Dynamics.__call__``, the cost is
    Σ_m Δ L(θ_m) + Φ(u(T)), gradients come from torch autograd through the solve (the
    discrete adjoint, MODEL.md §5) and L-BFGS with strong-Wolfe line search minimizes it.

    Parameters
    ----------
    problem : ReducedProblem
    v0 : array-like
        Initial state, shape ``(D,)``.
    intervals : int
    steps : int, optional
    solver : Solver, optional
    max_iter : int
        L-BFGS iterations per start.
    restarts : sequence of float
        Initial controls: constant values (each a start); the best result is returned.
    """
    check_positive(intervals, "intervals", integer=True)
    steps = 4 * intervals if steps is None else steps
    check_positive(steps, "steps", integer=True)
    if steps % intervals:
        raise PdenetsError(f"steps ({steps}) must be a multiple of intervals ({intervals})")
    solver = solver or RK4()
    v0 = _states(v0, problem.D)
    if v0.shape[0] != 1:
        raise PdenetsError("direct_method takes one initial state of shape (D,)")
    U0 = problem.unflatten(v0[0])
    M, N, T = intervals, problem.N, problem.T
    delta = T / M
    best: DirectResult | None = None
    for init in restarts:
        w = torch.full((M, N, N), float(init), dtype=_DTYPE, requires_grad="w" in problem.controls)
        b = torch.full((M, N), float(init), dtype=_DTYPE, requires_grad="b" in problem.controls)
        params = [p for p in (w, b) if p.requires_grad]

        def full(w=w, b=b):
            ww = w if "w" in problem.controls else problem.w0.expand(M, N, N)
            bb = b if "b" in problem.controls else problem.b0.expand(M, N)
            return ww, bb

        def cost_fn(full=full):
            ww, bb = full()

            def reaction(t, u, t0, t1):
                k = min(int(0.5 * (t0 + t1) / delta), M - 1)
                return problem.dynamics(u, ww[k] * problem.weights, bb[k], problem.lap)

            uT, _, _ = integrate(System(reaction), U0, T, steps, solver)
            running = delta * problem.running_cost(ww, bb).sum()
            term = problem.terminal_cost(uT.reshape(1, -1))[0]
            return running + term, running, term, uT

        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=50,
                                tolerance_grad=1e-13, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure(opt=opt, cost_fn=cost_fn):
            opt.zero_grad()
            J = cost_fn()[0]
            J.backward()
            return J

        opt.step(closure)
        J, running, term, uT = cost_fn()
        grads = torch.autograd.grad(J, params)
        gnorm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
        res = DirectResult(J.item(), running.item(), term.item(),
                           w.detach() if "w" in problem.controls else None,
                           b.detach() if "b" in problem.controls else None,
                           uT.detach().reshape(-1), n_iter, gnorm)
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# the closed-form case of MODEL.md §8
# ---------------------------------------------------------------------------------------------
def closed_form_value(t: float, v, target, alpha: float, T: float, weights=None) -> torch.Tensor:
    """V(t, v) = ‖v − y‖²_ω / (2 (1 + (T − t)/α)) for ∂_t u = b (w ≡ 0, σ = identity),
    cost (α/2)∫‖b‖²_ω + ½‖u(T) − y‖²_ω (MODEL.md §8); ``weights`` ω default to ones."""
    v = torch.as_tensor(v, dtype=_DTYPE)
    r = v - torch.as_tensor(target, dtype=_DTYPE)
    om = torch.ones(v.shape[-1], dtype=_DTYPE) if weights is None else torch.as_tensor(
        weights, dtype=_DTYPE)
    return (r * r) @ om / (2.0 * (1.0 + (T - t) / alpha))


def closed_form_feedback(t: float, v, target, alpha: float, T: float) -> torch.Tensor:
    """b*(t, v) = −(v − y)/(α + T − t) (MODEL.md §8)."""
    v = torch.as_tensor(v, dtype=_DTYPE)
    return -(v - torch.as_tensor(target, dtype=_DTYPE)) / (alpha + T - t)


__all__ = [
    "SCHEMES", "ClosedLoop", "DirectResult", "HJBOptions", "HJBSolution", "ReducedProblem",
    "StateGrid", "closed_form_feedback", "closed_form_value", "closed_loop", "direct_method",
    "estimate_memory", "solve_hjb",
]
