"""The learning problem: loss + regularization of the controls (MODEL.md §4).

    J(θ) = (1/K) Σ_k ℓ(R u_k(T), y_k)
           + (α/2) ∫_0^T (‖w(t)‖²_{L²(Ω×Ω)} + ‖b(t)‖²_{L²(Ω)}) dt
           + (β/2) ∫_0^T (‖∂_t w‖² + ‖∂_t b‖²) dt

The regularization terms are computed *exactly* for :class:`~pdenets.controls.GridControls`
(the multilinear basis has an exact mass matrix; piecewise-linear or piecewise-constant depth
interpolation is integrated in closed form), so they do not depend on the discretization used
for the data term. For piecewise-constant controls ∂_t w is a sum of jumps; the β term then
penalizes the H¹ seminorm of the piecewise-linear interpolant of the interval values,
Σ_k ‖θ_{k+1} − θ_k‖² / Δ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _basis
from ._checks import check_choice, check_finite, check_nonnegative
from .controls import GridControls
from .errors import PdenetsError

LOSSES = ("cross_entropy", "mse")


def data_loss(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss ℓ over the batch: cross-entropy (integer class labels) or squared error
    (ℓ = ½‖y − target‖², targets of the outputs' shape)."""
    check_choice(loss, LOSSES, "loss")
    if loss == "cross_entropy":
        if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise PdenetsError("cross_entropy needs integer class labels as targets")
        if targets.dim() != 1 or targets.shape[0] != outputs.shape[0]:
            raise PdenetsError(
                f"labels have shape {tuple(targets.shape)}; expected ({outputs.shape[0]},)"
            )
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= outputs.shape[1]):
            raise PdenetsError(
                f"labels must lie in [0, {outputs.shape[1] - 1}] for {outputs.shape[1]} outputs"
            )
        return F.cross_entropy(outputs, targets.long())
    targets = targets.to(outputs.dtype)
    if targets.dim() == 1 and outputs.shape[1] == 1:
        targets = targets[:, None]
    if targets.shape != outputs.shape:
        raise PdenetsError(
            f"regression targets have shape {tuple(targets.shape)}; expected "
            f"{tuple(outputs.shape)}"
        )
    check_finite(targets, "targets")
    return 0.5 * ((outputs - targets) ** 2).sum(1).mean()


def _mass(size, dtype, device):
    return _basis.mass_matrix(size, dtype).to(device)


def control_norms(ctrl: GridControls) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(∫_0^T ‖w‖² + ‖b‖² dt, ∫_0^T ‖∂_t w‖² + ‖∂_t b‖² dt)`` of grid controls
    (differentiable in the knot values)."""
    M = _mass(ctrl.size, ctrl.w.dtype, ctrl.w.device)
    W, Bv = ctrl.w, ctrl.b
    # <U, V>_{L²(Ω×Ω)} = tr(Uᵀ M V M); <u, v>_{L²(Ω)} = uᵀ M v
    MW = torch.matmul(M, W)  # (K, Nc, Nc)
    WM = torch.matmul(W, M)
    MB = Bv @ M

    delta = ctrl.T / ctrl.intervals
    K = W.shape[0]
    if ctrl.time_basis == "constant":
        sq = ((MW * WM).sum() + (MB * Bv).sum()) * delta
    else:
        diag_w = (MW * WM).sum((1, 2))
        diag_b = (MB * Bv).sum(1)
        cross_w = (torch.matmul(M, W[:-1]) * torch.matmul(W[1:], M)).sum((1, 2))
        cross_b = (MB[:-1] * Bv[1:]).sum(1)
        sq = (delta / 3.0) * (
            diag_w[:-1].sum() + diag_w[1:].sum() + cross_w.sum()
            + diag_b[:-1].sum() + diag_b[1:].sum() + cross_b.sum()
        )
    if K > 1:
        dW = W[1:] - W[:-1]
        dB = Bv[1:] - Bv[:-1]
        dsq = ((torch.matmul(M, dW) * torch.matmul(dW, M)).sum() + ((dB @ M) * dB).sum()) / delta
    else:
        dsq = W.new_zeros(())
    return sq, dsq


@dataclass(frozen=True)
class Objective:
    """J of MODEL.md §4: ``loss`` (``cross_entropy`` or ``mse``), α ≥ 0 and β ≥ 0."""

    loss: str = "cross_entropy"
    alpha: float = 0.0
    beta: float = 0.0

    def __post_init__(self) -> None:
        check_choice(self.loss, LOSSES, "loss")
        check_nonnegative(self.alpha, "alpha")
        check_nonnegative(self.beta, "beta")

    def regularization(self, net) -> torch.Tensor:
        """(α/2)∫‖θ‖² dt + (β/2)∫‖∂_tθ‖² dt (zero for non-grid controls)."""
        ctrl = net.controls
        p = next(net.parameters(), None)
        zero = torch.zeros((), dtype=p.dtype if p is not None else torch.float64)
        if not isinstance(ctrl, GridControls) or (self.alpha == 0 and self.beta == 0):
            return zero
        sq, dsq = control_norms(ctrl)
        return 0.5 * self.alpha * sq + 0.5 * self.beta * dsq

    def __call__(self, net, inputs, targets, disc=None, adjoint=None) -> torch.Tensor:
        """J for a batch (inputs, targets) at discretization ``disc``; differentiable with the
        gradient strategy ``adjoint`` (MODEL.md §5; default: discrete, by autograd)."""
        outputs = net(inputs, disc, adjoint)
        return data_loss(outputs, torch.as_tensor(targets, device=outputs.device), self.loss) \
            + self.regularization(net)
