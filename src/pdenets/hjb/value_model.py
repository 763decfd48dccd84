"""A learned value function for the sampled HJB method (MODEL.md §8, "High state dimension").

:class:`ValueModel` represents

    V(t, v) = q(t, v) + n(t, v),
    q(t, v) = Σ_{j ≤ K} P_j(τ) [c_j + g_jᵀ v + ½ Σ_d h_jd v_d²],   τ = 2t/T − 1,

a quadratic part with diagonal Hessian whose coefficients are Legendre polynomials P_j of
degree ≤ K in the depth, plus a small tanh network n(t, v) (input (τ, v), last layer
initialised at zero) for what the quadratic part misses (cross terms, non-quadratic shape).
The quadratic part alone is exact in v for the closed form of §8 (V = ‖v − y‖²_ω/(2(1 +
(T − t)/α)); the depth factor is smooth on [0, T], so K = 6 resolves it to ~10⁻⁵).

:func:`fit_value_model` fits values *and* gradients (Sobolev regression, as in
Nakamura-Zimmer, Gong & Kang 2021): the loss is

    mean (V_model − V)² / mean V² + mean ‖∇V_model − ∇V‖² / mean ‖∇V‖²,

minimized by L-BFGS, first over the quadratic part (a convex least-squares problem) and then
jointly with the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._tensors import _DTYPE


def _legendre(tau: torch.Tensor, K: int) -> torch.Tensor:
    """P_0..P_K at ``tau`` (``(M,)``) as ``(M, K + 1)`` (three-term recurrence)."""
    P = [torch.ones_like(tau), tau]
    for j in range(1, K):
        P.append(((2 * j + 1) * tau * P[j] - j * P[j - 1]) / (j + 1))
    return torch.stack(P[: K + 1], -1)


class ValueModel(nn.Module):
    """V(t, v) = quadratic part + small network (module docstring).

    Parameters
    ----------
    D : int
        State dimension.
    T : float
        Final depth (the depth is mapped to τ = 2t/T − 1).
    degree : int
        Degree K of the Legendre polynomials in depth.
    hidden : int
        Width of the network's hidden layers (0: no network).
    layers : int
        Number of hidden layers.
    """

    def __init__(self, D: int, T: float, degree: int = 6, hidden: int = 32,
                 layers: int = 2) -> None:
        super().__init__()
        self.D, self.T, self.degree = D, float(T), degree
        K1 = degree + 1
        self.c = nn.Parameter(torch.zeros(K1, dtype=_DTYPE))
        self.g = nn.Parameter(torch.zeros(K1, D, dtype=_DTYPE))
        self.h = nn.Parameter(torch.zeros(K1, D, dtype=_DTYPE))
        self.net: nn.Sequential | None = None
        if hidden > 0:
            mods: list[nn.Module] = []
            width = D + 1
            for _ in range(layers):
                mods += [nn.Linear(width, hidden, dtype=_DTYPE), nn.Tanh()]
                width = hidden
            last = nn.Linear(width, 1, dtype=_DTYPE)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.net = nn.Sequential(*mods, last)
        #: centre and scale of the network's input states (set by the fit)
        self.v_mean: torch.Tensor
        self.v_scale: torch.Tensor
        self.register_buffer("v_mean", torch.zeros(D, dtype=_DTYPE))
        self.register_buffer("v_scale", torch.ones(D, dtype=_DTYPE))

    def quadratic_parameters(self) -> list[nn.Parameter]:
        return [self.c, self.g, self.h]

    def forward(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """V at depths ``t`` (``(M,)``) and states ``v`` (``(M, D)``); returns ``(M,)``."""
        tau = 2.0 * t / self.T - 1.0
        P = _legendre(tau, self.degree)  # (M, K+1)
        q = P @ self.c + ((P @ self.g) * v).sum(-1) + 0.5 * ((P @ self.h) * v * v).sum(-1)
        if self.net is None:
            return q
        x = torch.cat([tau[:, None], (v - self.v_mean) / self.v_scale], -1)
        return q + self.net(x)[:, 0]

    def value_and_gradient(self, t: torch.Tensor, v: torch.Tensor, create_graph: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """V and ∇_v V at ``(t, v)`` (autograd; ``create_graph`` for training on gradients)."""
        with torch.enable_grad():
            vv = v if (create_graph and v.requires_grad) else v.detach().requires_grad_(True)
            val = self(t, vv)
            (grad,) = torch.autograd.grad(val.sum(), vv, create_graph=create_graph)
        if not create_graph:
            return val.detach(), grad.detach()
        return val, grad


@dataclass
class FitResult:
    """Loss of :func:`fit_value_model` and the relative value / gradient errors on the data."""

    loss: float
    value_error: float
    gradient_error: float


def _loss(model: ValueModel, t, v, V, G, sV: float, sG: float):
    val, grad = model.value_and_gradient(t, v, create_graph=True)
    lv = ((val - V) ** 2).mean() / sV
    lg = ((grad - G) ** 2).sum(-1).mean() / sG
    return lv + lg, lv, lg


def fit_value_model(model: ValueModel, t: torch.Tensor, v: torch.Tensor, V: torch.Tensor,
                    G: torch.Tensor, iters: int = 200) -> FitResult:
    """Fit ``model`` to values ``V`` (``(M,)``) and gradients ``G`` (``(M, D)``) at depths
    ``t`` and states ``v`` (module docstring): L-BFGS over the quadratic part, then over all
    parameters. Returns the final loss and the RMS relative value / gradient errors."""
    sV = float((V * V).mean()) + 1e-300
    sG = float((G * G).sum(-1).mean()) + 1e-300
    model.v_mean.copy_(v.mean(0))
    model.v_scale.copy_(v.std(0).clamp(min=1e-3) if v.shape[0] > 1 else torch.ones_like(v[0]))
    groups = [model.quadratic_parameters()]
    if model.net is not None:
        groups.append(list(model.parameters()))
    for params in groups:
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=50,
                                tolerance_grad=1e-12, tolerance_change=1e-15,
                                line_search_fn="strong_wolfe")

        def closure(opt=opt):
            opt.zero_grad()
            loss = _loss(model, t, v, V, G, sV, sG)[0]
            loss.backward()
            return loss

        opt.step(closure)
    loss, lv, lg = (x.detach() for x in _loss(model, t, v, V, G, sV, sG))
    return FitResult(float(loss), float(lv) ** 0.5, float(lg) ** 0.5)
