"""The reduced optimal control problem of the HJB solver (MODEL.md §8).

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
control) holds verbatim with weighted norms (:func:`pdenets.hjb.closed_form_value`).

The infimum over θ is :meth:`ReducedProblem.minimize` (the representer reduction is described
in :mod:`pdenets.hjb.hamiltonian`). The activation facts it needs — affine, bounded (sup|σ|),
monotone, σ'' — come from :class:`pdenets.activations.Activation`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_positive
from .._laplacian import laplacian_for
from ..dynamics import Dynamics, Field, Selection
from ..errors import PdenetsError
from ..quadrature import QuadratureRule
from ._tensors import _DTYPE, _as_tensor
from .hamiltonian import minimize_rows

CONTROL_SETS = ("b", "w", "wb")
TERMINALS = ("state", "mean")


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
        #: control-affine right-hand side: closed-form Hamiltonian minimizer
        self.affine = isinstance(dynamics, Field) or act.affine
        #: slope a of an affine ψ (ψ = identity for Field dynamics): minimizer c = −a q / (α ω)
        self.psi_slope = 1.0 if isinstance(dynamics, Field) or not act.affine else float(
            act.derivative(torch.zeros((), dtype=_DTYPE)))
        self.selection = isinstance(dynamics, Selection)
        #: sup|ψ| (ψ = σ outside Field dynamics) when finite: exact speed bounds
        self.sup_psi = None if isinstance(dynamics, Field) or not act.bounded else act.sup_abs
        self.kappa = self.alpha * self.weights  # α ω_i

    # -- helpers -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the problem's tensors."""
        return self.weights.device

    def to(self, device: str | torch.device) -> ReducedProblem:
        """A copy whose tensors (weights, targets, fixed controls, Laplacian) live on
        ``device``; ``self`` if they already do."""
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise PdenetsError(f"device {str(device)!r} requested but CUDA is not available")
        if self.device == dev:
            return self
        new = copy.copy(self)
        new.grid = self.width.grid(_DTYPE, dev)
        new.nodes, new.weights = new.grid.nodes, new.grid.weights
        new.target, new.w0, new.b0 = (x.to(dev) for x in (self.target, self.w0, self.b0))
        new.lap = laplacian_for(new.grid) if self.lap is not None else None
        new.kappa = new.alpha * new.weights
        return new

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
        total = torch.zeros((), dtype=_DTYPE, device=om.device)
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
            c = -q / kap if self.psi_slope == 1.0 else -(self.psi_slope * q) / kap
        else:
            c = minimize_rows(q, z0, G, kap, self.dynamics.activation, inner_points,
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
