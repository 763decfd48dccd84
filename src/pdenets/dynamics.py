"""Right-hand sides of the continuum network: the standard form and its variants (MODEL.md §1).

With the discretized integral operator ``A`` (``(u @ A.T)[i] ≈ ∫ w(x_i, y) u(y) dy``) and bias
``b``, a :class:`Dynamics` computes for a batch of fields u (shape ``(B, N)``):

=============  ===========================================  =====================
class          f(u)                                          MODEL.md
=============  ===========================================  =====================
``Standard``   σ(∫ w u dy + b) + ε Δ_x u                    §1 (ResNet limit)
``Field``      ∫ w σ(u) dy + b + ε Δ_x u                    §1 variant "field"
``Selection``  u · σ(∫ w u dy + b) + ε Δ_x u                §1 variant "selection"
=============  ===========================================  =====================

Each also provides :meth:`Dynamics.vjp`, the hand-written vector–Jacobian products used by the
adjoint equation of MODEL.md §5: given a costate λ it returns λᵀ ∂f/∂u and the contributions
to ∂/∂A and ∂/∂b; :meth:`Dynamics.reaction_batched` and :meth:`Dynamics.vjp_u_batched`, the
same quantities for a stack of E stages with their own (A_e, b_e) at once (batched matrix
products; used by the PMP/MSA layer of MODEL.md §7); and :meth:`Dynamics.system`, the
semi-discrete right-hand side that the integrators advance. A new subclass only needs
:meth:`Dynamics.reaction`: the base class derives the rest (by ``torch.func.vmap`` and
automatic differentiation), and may override them with hand-written forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_choice, check_nonnegative
from ._laplacian import NeumannLaplacian, laplacian_for
from .activations import Activation, get_activation
from .errors import PdenetsError
from .integrators import System
from .kernels import KernelOp, lin, lin_param_vjp, lin_T

#: the operators of a stack of E stages: ``(E, N, N)`` matrices or E kernel operators
BatchedOperator = torch.Tensor | Sequence[KernelOp]


class Dynamics:
    """Base class; see the module docstring.

    Parameters
    ----------
    activation : str or Activation
        σ, by name (``tanh``, ``relu``, ``sigmoid``, ``softplus``, ``identity``) or custom.
    eps : float
        Diffusion coefficient ε ≥ 0 (homogeneous Neumann boundary conditions).
    """

    kind: str = "base"

    def __init__(self, activation: str | Activation = "tanh", eps: float = 0.0) -> None:
        self.activation = get_activation(activation)
        check_nonnegative(eps, "eps")
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(activation={self.activation.name!r}, eps={self.eps})"

    def config(self) -> dict:
        """JSON-serializable description (for model files)."""
        return {"kind": self.kind, "activation": self.activation.name, "eps": self.eps}

    def reaction(self, u: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The non-diffusive part of f(u)."""
        raise NotImplementedError

    def __call__(self, u, A, b, lap=None) -> torch.Tensor:
        """f(u) = reaction(u) + ε Δu (``lap`` is the grid Laplacian when ε > 0)."""
        out = self.reaction(u, A, b)
        if self.eps > 0.0:
            out = out + self.eps * lap(u)
        return out

    def vjp(self, u, A, b, lam, lap=None):
        """Return ``(λᵀ ∂f/∂u, ∂⟨λ,f⟩/∂A, ∂⟨λ,f⟩/∂b)`` (sums over the batch for A and b).

        Inner products are plain sums over nodes (the discrete adjoint convention); the
        Laplacian's adjoint in that pairing is its transpose, applied via ``lap.T``.
        """
        raise NotImplementedError

    def reaction_and_vjp(self, u, A, b, lam):
        """``(reaction(u), λᵀ ∂R/∂u, ∂⟨λ,R⟩/∂A, ∂⟨λ,R⟩/∂b)`` for the non-diffusive part R,
        sharing intermediate products (used by the continuous adjoint's backward sweep).
        This generic version uses automatic differentiation; the variants override it."""
        with torch.enable_grad():
            uu, bb = (x.detach().requires_grad_(True) for x in (u, b))
            if isinstance(A, torch.Tensor):
                AA = A.detach().requires_grad_(True)
                f = self.reaction(uu, AA, bb)
                du, gA, gb = torch.autograd.grad(f, (uu, AA, bb), lam)
                return f.detach(), du, gA, gb
            ts = [x.detach().requires_grad_(True) for x in A.tensors]
            f = self.reaction(uu, A.rebuild(ts), bb)
            du, gb, *gts = torch.autograd.grad(f, (uu, bb, *ts), lam)
        return f.detach(), du, tuple(gts), gb

    def system(self, schedule, grid) -> System:
        """The semi-discrete right-hand side on ``grid`` (MODEL.md §2) for the controls
        ``schedule`` (a :class:`~pdenets.controls.KernelSchedule` on that grid)."""
        lap: NeumannLaplacian | ChannelLaplacian | None = (
            laplacian_for(grid) if self.eps > 0.0 else None)
        channels = getattr(schedule, "channels", 1)
        if lap is not None and channels > 1:
            lap = ChannelLaplacian(lap, channels)

        def reaction(t, u, t0, t1):
            A, b = schedule.at(t, t0, t1)
            return self.reaction(u, A, b)

        return System(reaction, self.eps, lap)

    def reaction_batched(self, Y: torch.Tensor, A: BatchedOperator, b: torch.Tensor
                         ) -> torch.Tensor:
        """The reaction for a stack of stages: Y ``(E, B, N)``, A ``(E, N, N)`` (dense
        matrices) or a sequence of E :class:`~pdenets.kernels.KernelOp` (structured kernels,
        MODEL.md §10), b ``(E, N)`` → ``(E, B, N)`` (the θ-dependent part of f; diffusion
        does not depend on θ). Generic version: ``torch.func.vmap`` of :meth:`reaction` for
        matrices, one :meth:`reaction` per stage for operators."""
        if not isinstance(A, torch.Tensor):
            return self._per_stage(Y, A, b)
        return torch.func.vmap(self.reaction)(Y, A, b)

    def _per_stage(self, Y: torch.Tensor, ops: Sequence[KernelOp], b: torch.Tensor
                   ) -> torch.Tensor:
        """:meth:`reaction` stage by stage for a sequence of kernel operators."""
        ops = list(ops)
        if len(ops) != Y.shape[0] or b.shape[0] != Y.shape[0]:
            raise PdenetsError(f"reaction_batched: {Y.shape[0]} stages but {len(ops)} "
                               f"operators and {b.shape[0]} biases")
        return torch.stack([self.reaction(Y[e], op, b[e])  # type: ignore[arg-type]
                            for e, op in enumerate(ops)])

    def vjp_u_batched(self, Y: torch.Tensor, A: BatchedOperator, b: torch.Tensor,
                      p: torch.Tensor) -> torch.Tensor:
        """pᵀ ∂R/∂u per sample for a stack of stages (shapes as :meth:`reaction_batched`, p
        like Y; A a matrix stack or a sequence of kernel operators); differentiable in A (its
        tensors) and b. Generic version: automatic differentiation."""
        graph = torch.is_grad_enabled()
        Yg = Y.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self.reaction_batched(Yg, A, b)
            g = torch.autograd.grad((f * p).sum(), Yg, create_graph=graph)[0]
        return g if graph else g.detach()

    def _diffusion_vjp(self, lam, lap):
        return self.eps * lap.transpose_apply(lam)

    def steady_state_residual(self, u, A, b) -> torch.Tensor:
        """Residual of the steady-state equation f(u*) = 0 (without diffusion)."""
        return self.reaction(u, A, b)


class ChannelLaplacian:
    """The Laplacian acting on each of C channels of a state ``(B, C·N)`` (MODEL.md §10)."""

    def __init__(self, lap, channels: int) -> None:
        self.lap, self.channels = lap, int(channels)
        self.spectral_radius = lap.spectral_radius
        self.eigenvalues = lap.eigenvalues

    def _per_channel(self, fn, u: torch.Tensor) -> torch.Tensor:
        B = u.shape[0]
        return fn(u.reshape(B * self.channels, -1)).reshape(B, -1)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self._per_channel(self.lap, u)

    def transpose_apply(self, lam: torch.Tensor) -> torch.Tensor:
        return self._per_channel(self.lap.transpose_apply, lam)

    def apply_function(self, u: torch.Tensor, f) -> torch.Tensor:
        return self._per_channel(lambda v: self.lap.apply_function(v, f), u)


class Standard(Dynamics):
    """∂_t u = σ(∫ w u dy + b) + ε Δ_x u — the continuum ResNet (MODEL.md §1)."""

    kind = "standard"

    def reaction(self, u, A, b):
        return self.activation.apply_(lin(u, A, b))

    def vjp(self, u, A, b, lam, lap=None):
        z = lin(u, A, b)
        g = self.activation.derivative(z) * lam
        du = lin_T(g, A)
        if self.eps > 0.0:
            du = du + self._diffusion_vjp(lam, lap)
        return du, lin_param_vjp(g, u, A), g.sum(0)

    def reaction_and_vjp(self, u, A, b, lam):
        z = lin(u, A, b)
        g = self.activation.derivative(z) * lam
        return self.activation.fn(z), lin_T(g, A), lin_param_vjp(g, u, A), g.sum(0)

    def reaction_batched(self, Y, A, b):
        if not isinstance(A, torch.Tensor):
            return self._per_stage(Y, A, b)
        return self.activation.fn(torch.baddbmm(b[:, None, :], Y, A.transpose(1, 2)))

    def vjp_u_batched(self, Y, A, b, p):
        if not isinstance(A, torch.Tensor):
            return super().vjp_u_batched(Y, A, b, p)
        Z = torch.baddbmm(b[:, None, :], Y, A.transpose(1, 2))
        return torch.bmm(self.activation.derivative(Z) * p, A)


class Field(Dynamics):
    """∂_t u = ∫ w σ(u) dy + b + ε Δ_x u — neural-field (Wilson–Cowan) variant (MODEL.md §1)."""

    kind = "field"

    def reaction(self, u, A, b):
        return lin(self.activation.fn(u), A, b)

    def vjp(self, u, A, b, lam, lap=None):
        du = self.activation.derivative(u) * lin_T(lam, A)
        if self.eps > 0.0:
            du = du + self._diffusion_vjp(lam, lap)
        return du, lin_param_vjp(lam, self.activation.fn(u), A), lam.sum(0)

    def reaction_and_vjp(self, u, A, b, lam):
        s = self.activation.fn(u)
        return (lin(s, A, b), self.activation.derivative(u) * lin_T(lam, A),
                lin_param_vjp(lam, s, A), lam.sum(0))

    def reaction_batched(self, Y, A, b):
        if not isinstance(A, torch.Tensor):
            return self._per_stage(Y, A, b)
        return torch.baddbmm(b[:, None, :], self.activation.fn(Y), A.transpose(1, 2))

    def vjp_u_batched(self, Y, A, b, p):
        if not isinstance(A, torch.Tensor):
            return super().vjp_u_batched(Y, A, b, p)
        return self.activation.derivative(Y) * torch.bmm(p, A)


class Selection(Dynamics):
    """∂_t u = u · σ(∫ w u dy + b) + ε Δ_x u — selection (replicator) variant (MODEL.md §1)."""

    kind = "selection"

    def reaction(self, u, A, b):
        return u * self.activation.apply_(lin(u, A, b))

    def vjp(self, u, A, b, lam, lap=None):
        z = lin(u, A, b)
        g = self.activation.derivative(z) * lam * u
        du = lam * self.activation.fn(z) + lin_T(g, A)
        if self.eps > 0.0:
            du = du + self._diffusion_vjp(lam, lap)
        return du, lin_param_vjp(g, u, A), g.sum(0)

    def reaction_and_vjp(self, u, A, b, lam):
        z = lin(u, A, b)
        s = self.activation.fn(z)
        g = self.activation.derivative(z) * lam * u
        return u * s, lam * s + lin_T(g, A), lin_param_vjp(g, u, A), g.sum(0)

    def reaction_batched(self, Y, A, b):
        if not isinstance(A, torch.Tensor):
            return self._per_stage(Y, A, b)
        return Y * self.activation.fn(torch.baddbmm(b[:, None, :], Y, A.transpose(1, 2)))

    def vjp_u_batched(self, Y, A, b, p):
        if not isinstance(A, torch.Tensor):
            return super().vjp_u_batched(Y, A, b, p)
        act = self.activation
        Z = torch.baddbmm(b[:, None, :], Y, A.transpose(1, 2))
        return p * act.fn(Z) + torch.bmm(act.derivative(Z) * p * Y, A)


DYNAMICS: dict[str, type[Dynamics]] = {"standard": Standard, "field": Field, "selection": Selection}


def make_dynamics(
    kind: str = "standard", activation: str | Activation = "tanh", eps: float = 0.0
) -> Dynamics:
    """Build dynamics by name: ``standard``, ``field`` or ``selection``."""
    return DYNAMICS[check_choice(kind, DYNAMICS, "dynamics")](activation, eps)
