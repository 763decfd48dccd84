"""The learning problem: loss + regularization of the controls (MODEL.md §4).

    J(θ) = (1/K) Σ_k ℓ(R u_k(T), y_k)
           + (α/2) ∫_0^T (‖w(t)‖²_{L²(Ω×Ω)} + ‖b(t)‖²_{L²(Ω)}) dt
           + (β/2) ∫_0^T (‖∂_t w‖² + ‖∂_t b‖²) dt

The regularization terms are computed *exactly* for :class:`~pdenets.controls.GridControls`
and for the structured kernels of :class:`~pdenets.kernels.KernelControls` (MODEL.md §10: each
family integrates its own representation exactly, see :meth:`Kernel.norms
<pdenets.kernels.Kernel.norms>`)
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

from ._checks import check_choice, check_finite, check_nonnegative, value_checks_enabled
from .controls import GridControls
from .errors import PdenetsError

LOSSES = ("cross_entropy", "mse")


def data_loss(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss ℓ over the batch: cross-entropy (integer class labels) or squared error
    (ℓ = ½‖y − target‖², targets of the outputs' shape).

    The label-range and finite-target checks read values back to the host; they are skipped
    inside :func:`pdenets._checks.value_checks` ``(False)`` (the training loop checks its data
    once, MODEL.md §4)."""
    check_choice(loss, LOSSES, "loss")
    if loss == "cross_entropy":
        if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise PdenetsError("cross_entropy needs integer class labels as targets")
        if targets.dim() != 1 or targets.shape[0] != outputs.shape[0]:
            raise PdenetsError(
                f"labels have shape {tuple(targets.shape)}; expected ({outputs.shape[0]},)"
            )
        if targets.numel() and value_checks_enabled() and (
                int(targets.min()) < 0 or int(targets.max()) >= outputs.shape[1]):
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


def _time_integral(ctrl: GridControls, form) -> torch.Tensor:
    """∫_0^T q(θ(t)) dt exactly, for a quadratic form q given by its bilinear ``form(i, j)``
    between knots (vectorized over index tensors), for the control's depth interpolation."""
    delta = ctrl.T / ctrl.intervals
    K = ctrl.n_knots
    idx = torch.arange(K, device=ctrl.w.device)
    diag = form(idx, idx)
    if ctrl.time_basis == "constant":
        return delta * diag.sum()
    cross = form(idx[:-1], idx[1:])
    # ∫ over [t_k, t_k+1] of ((1-s) a + s b)² = Δ/3 (a² + ab + b²)
    return (delta / 3.0) * (diag[:-1].sum() + diag[1:].sum() + cross.sum())


def _knot_gram(ctrl: GridControls) -> torch.Tensor:
    """The K×K Gram matrix ⟨θ_k, θ_l⟩ of the knot values in L²(Ω×Ω) × L²(Ω) — one product.

    With the space mass matrix M = L Lᵀ (diagonal for the ``constant`` basis),
    ⟨W_k, W_l⟩ = tr(W_kᵀ M W_l M) is the Euclidean product of Lᵀ W_k L and Lᵀ W_l L, and
    ⟨b_k, b_l⟩ = b_k M b_lᵀ that of b_k L and b_l L, so every knot becomes one row X_k and the
    Gram matrix is X Xᵀ."""
    W, Bv = ctrl.w, ctrl.b
    K = W.shape[0]
    L = ctrl.mass_factor()
    if L.dim() == 1:  # diagonal mass: L = diag(l)
        Wh = W * (L[:, None] * L[None, :])
        Bh = Bv * L
    else:
        Wh = L.T @ W @ L
        Bh = Bv @ L
    X = torch.cat((Wh.reshape(K, -1), Bh.reshape(K, -1)), 1)
    return X @ X.T


def control_norms(ctrl: GridControls, spatial: bool = False):
    """Exact integrals of the controls (differentiable in the knot values):

    ``(∫_0^T ‖w‖² + ‖b‖² dt, ∫_0^T ‖∂_t w‖² + ‖∂_t b‖² dt)`` and, with ``spatial=True``, a third
    entry ``∫_0^T ‖∇_x w‖² + ‖∇_y w‖² + ‖∇_x b‖² dt`` (norms in L²(Ω×Ω) and L²(Ω)).

    Both norms are quadratic forms of the knot Gram matrix (see
    :func:`pdenets._basis.time_grams`), so a training step computes them with a handful of
    tensor operations whatever the number of knots.
    """
    G = _knot_gram(ctrl)
    Tm, Tj = ctrl.time_grams()
    sq, dsq = (Tm * G).sum(), (Tj * G).sum()
    if not spatial:
        return sq, dsq
    M, W, Bv = ctrl.mass_matrix(), ctrl.w, ctrl.b

    # <U, V> for the kernel with Gram matrices L (first variable x) and R (second variable y):
    # Σ U_ab V_cd L_ac R_bd = sum((L U) ⊙ (V R))
    def w_form(L, R):
        return lambda i, j: (torch.matmul(L, W[i]) * torch.matmul(W[j], R)).sum((-2, -1))

    def b_form(L):
        return lambda i, j: ((Bv[i] @ L) * Bv[j]).sum(-1)

    def both(fw, fb):
        return lambda i, j: fw(i, j) + fb(i, j)

    S = ctrl.stiffness_matrix()
    grad = _time_integral(ctrl, both(lambda i, j: w_form(S, M)(i, j) + w_form(M, S)(i, j),
                                     b_form(S)))
    return sq, dsq, grad


def unwrap(net):
    """The model inside wrappers: ``DistributedDataParallel``/``DataParallel`` (``.module``) and
    ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``), possibly nested."""
    for _ in range(16):
        inner = getattr(net, "_orig_mod", None)
        if inner is None:
            inner = getattr(net, "module", None)
        if inner is None or inner is net:
            return net
        net = inner
    return net


@dataclass(frozen=True)
class Objective:
    """J of MODEL.md §4: ``loss`` (``cross_entropy`` or ``mse``), α ≥ 0 and β ≥ 0.

    ``gamma`` ≥ 0 adds (γ/2)∫(‖∇_x w‖² + ‖∇_y w‖² + ‖∇_x b‖²) dt, an H¹-in-width penalty
    (our extension, not in MODEL.md §4): it favours kernels that vary smoothly with the
    neuron positions, the continuum analogue of local, convolution-like weights.
    """

    loss: str = "cross_entropy"
    alpha: float = 0.0
    beta: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        check_choice(self.loss, LOSSES, "loss")
        check_nonnegative(self.alpha, "alpha")
        check_nonnegative(self.beta, "beta")
        check_nonnegative(self.gamma, "gamma")

    def regularization(self, net) -> torch.Tensor:
        """(α/2)∫‖θ‖² dt + (β/2)∫‖∂_tθ‖² dt (+ γ term); zero for controls without exact
        norms (:class:`~pdenets.controls.FunctionControls`).

        ``net`` may be wrapped (DDP, ``torch.compile``; see :func:`unwrap`)."""
        net = unwrap(net)
        ctrl = net.controls
        p = next(net.parameters(), None)
        zero = torch.zeros((), dtype=p.dtype if p is not None else torch.float64)
        norms = getattr(ctrl, "norms", None)
        if isinstance(ctrl, GridControls):
            norms = lambda spatial=False: control_norms(ctrl, spatial)  # noqa: E731
        elif not callable(norms):
            return zero
        if self.alpha == self.beta == self.gamma == 0:
            return zero
        if self.gamma > 0:
            sq, dsq, grad = norms(spatial=True)
            return 0.5 * self.alpha * sq + 0.5 * self.beta * dsq + 0.5 * self.gamma * grad
        if isinstance(ctrl, GridControls):  # one quadratic form of the knot Gram matrix
            Tm, Tj = ctrl.time_grams()
            key = ("penalty", self.alpha, self.beta, ctrl.T, ctrl.intervals, ctrl.time_basis,
                   Tm.dtype, Tm.device)
            cache: dict = ctrl.__dict__.setdefault("_constants", {})
            coef = cache.get(key)
            if coef is None:
                coef = cache[key] = 0.5 * self.alpha * Tm + 0.5 * self.beta * Tj
            return (coef * _knot_gram(ctrl)).sum()
        sq, dsq = norms()
        return 0.5 * self.alpha * sq + 0.5 * self.beta * dsq

    def __call__(self, net, inputs, targets, disc=None, adjoint=None) -> torch.Tensor:
        """J for a batch (inputs, targets) at discretization ``disc``; differentiable with the
        gradient strategy ``adjoint`` (MODEL.md §5; default: discrete, by autograd).

        ``net`` may be wrapped (``DistributedDataParallel``, ``torch.compile``): the forward
        pass runs through the wrapper, the regularization reads the wrapped model's controls."""
        outputs = net(inputs, disc, adjoint)
        return data_loss(outputs, torch.as_tensor(targets, device=outputs.device), self.loss) \
            + self.regularization(net)
