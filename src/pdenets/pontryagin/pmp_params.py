"""PMP diagnostics in parameter coordinates, for any knot-based parameterization of the
controls: structured kernels and channels (MODEL.md §7, §10).

For :class:`~pdenets.kernels.KernelControls` every parameter (the kernel's tensors — conv
stencil values k, low-rank factors g, h, dense values w — and the bias b) has a leading axis
of depth knots, and θ(t) = Σ_j φ_j(t) θ_j with the depth basis φ_j. The discrete PMP identity
of :mod:`pdenets.pontryagin` holds in these coordinates as it does for grid controls:

    ∂J/∂θ_j = −Σ_s w_s φ_j(t_s) ∇_θ H_data(t_s) + ∂/∂θ_j [(α/2)∫‖θ‖² + (β/2)∫‖∂_tθ‖²],

with ∇_θ H_data(t_s) = −∂_θ ⟨λ̃_s, f(Y_s, θ)⟩ at θ = θ(t_s), here taken by automatic
differentiation through the kernel's own operator (conv, low rank, their sum). The residual
norms are Euclidean in parameter coordinates (the dual L² norm of the grid-controls report
needs the control grid's mass matrix, which a conv stencil or a low-rank factorization does
not have).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _basis
from ..objective import Objective


class _StageCall(nn.Module):
    """Evaluates the controls' kernel knot tensors and nodal bias on a grid as ``forward``, so
    that :func:`torch.func.functional_call` can evaluate them at any stack of parameter values
    (one "knot" per stage) in place of the knot values."""

    def __init__(self, ctrl) -> None:
        super().__init__()
        self.ctrl = ctrl

    def forward(self, grid):
        ctrl = self.ctrl
        b = ctrl.b
        P = _basis.grid_matrix(grid, ctrl.size, ctrl.space_basis, b.dtype)
        bn = (b if P is None else b @ P.T).reshape(b.shape[0], -1)
        return ctrl.kernel.knot_tensors(grid), bn


def stage_operators(ctrl, grid, values: dict[str, torch.Tensor]):
    """``(A, b)`` of :class:`~pdenets.kernels.KernelControls` at E parameter values.

    ``values`` maps every parameter name of ``ctrl.named_parameters()`` to a stack
    ``(E, *shape[1:])`` of values (e.g. θ(t_s) at the stages); the result is differentiable
    in them. ``A`` is an ``(E, C·N, C·N)`` matrix stack where the kernel is dense on ``grid``
    (:meth:`Kernel.is_dense_on <pdenets.kernels.Kernel.is_dense_on>`), otherwise a list of E
    :class:`~pdenets.kernels.KernelOp`; ``b`` is ``(E, C·N)``. Both are what
    :meth:`Dynamics.reaction_batched <pdenets.dynamics.Dynamics.reaction_batched>` takes.
    """
    knots, b = torch.func.functional_call(
        _StageCall(ctrl), {f"ctrl.{n}": v for n, v in values.items()}, (grid,))
    kern = ctrl.kernel
    if kern.is_dense_on(grid):
        return knots[0], b
    return [kern.make_op([x[e] for x in knots], grid) for e in range(b.shape[0])], b


def stage_parameter_gradients(sweep) -> dict[str, torch.Tensor]:
    """∇_θ H_data(t_s) at every stage in parameter coordinates: ``{name: (S, *shape[1:])}``
    for every parameter of the controls (names as in ``controls.named_parameters()``).

    The stage values θ(t_s) = Σ_j φ_j(t_s) θ_j are leaves; the kernel's knot tensors are
    evaluated from them (one "knot" per stage, :func:`stage_operators`), and
    −Σ_s ⟨λ̃_s, f(Y_s, θ(t_s))⟩ differentiated once.
    """
    net, grid = sweep.net, sweep.grid
    ctrl = net.controls
    kw = sweep.knot_weights
    params = dict(ctrl.named_parameters())
    with torch.no_grad():
        stage = {n: torch.tensordot(kw, p.detach(), dims=([1], [0])) for n, p in params.items()}
    leaves = {n: v.clone().requires_grad_(True) for n, v in stage.items()}
    lam = sweep.Lam / sweep.weights[:, None, None]
    with torch.enable_grad():
        A, b = stage_operators(ctrl, grid, leaves)
        F = net.dynamics.reaction_batched(sweep.Y, A, b)
        names = list(leaves)
        grads = torch.autograd.grad((lam * F).sum(), [leaves[n] for n in names],
                                    allow_unused=True)
    return {n: (-g if g is not None else torch.zeros_like(leaves[n]))
            for n, g in zip(names, grads)}


def parameter_identity(sweep, objective: Objective, xs, ys, disc):
    """``(G, P, gJ, Jval)``: stage gradients G (as :func:`stage_parameter_gradients`), the
    knot projections P_j = Σ_s w_s φ_j(t_s) G_s − ∂[(α/2)∫‖θ‖² + (β/2)∫‖∂_tθ‖²]/∂θ_j and ∇J
    by automatic differentiation of the objective (independent of the sweep), all as
    ``{name: tensor}``; the discrete PMP identity is ∇J + P = 0 (to rounding)."""
    net = sweep.net
    ctrl = net.controls
    G = stage_parameter_gradients(sweep)
    wk = sweep.weights[:, None] * sweep.knot_weights                      # (S, K)
    P = {n: torch.tensordot(wk.T, g, dims=([1], [0])) for n, g in G.items()}
    params = dict(ctrl.named_parameters())
    names = list(params)
    with torch.enable_grad():
        sq, dsq = ctrl.norms()[:2]
        reg = 0.5 * objective.alpha * sq + 0.5 * objective.beta * dsq
        if reg.requires_grad:
            gr = torch.autograd.grad(reg, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, gr):
                if g is not None:
                    P[n] = P[n] - g
        net.zero_grad(set_to_none=True)
        J = objective(net, xs, ys, disc)
        gJ = torch.autograd.grad(J, [params[n] for n in names], allow_unused=True)
    gJd = {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, gJ)}
    return G, P, gJd, float(J.detach())
