"""Stability of the forward problem: the Gronwall estimate of MODEL.md §3.

For Lipschitz σ (constant L_σ) and bounded w, two solutions of the standard or field dynamics
satisfy

    ‖u₁(T) − u₂(T)‖ ≤ exp( L_σ ∫_0^T ‖w(t)‖ dt ) ‖u₁(0) − u₂(0)‖,

with ‖w(t)‖ the operator norm of the integral operator on L²(Ω) (the Neumann diffusion term is
dissipative and does not enlarge the bound). On a width grid the same holds for the
semi-discrete problem in the weighted norm ‖v‖_ω² = Σ ω_i v_i² with the discrete operator norm
of ``A(t)``, which is what :func:`gronwall_factor` computes. The depth integral is a certified
upper bound for knot-based and depth-independent controls and a conservative estimate
(adaptive quadrature plus its error estimate) for depth-dependent callables
(:func:`operator_norm_integral` says which).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import PdenetsError
from ..quadrature import Grid
from ._params import frozen_parameters
from .gronwall import (  # noqa: F401 - re-exported (the former home of these names)
    NormIntegral,
    _adaptive_integral,
    _gk15,
    _is_kernel_controls,
    _kernel_norm_integral,
    gronwall_factor,
    integrated_operator_norm,
    operator_norm,
    operator_norm_integral,
)

# ---------------------------------------------------------------------------------------------
# Observed sensitivities and Lipschitz estimates (MODEL.md §3)
# ---------------------------------------------------------------------------------------------


def _grid_for(controls, disc, grid: Grid | None) -> Grid:
    if grid is not None:
        return grid
    p = next(iter(controls.parameters()), None)
    dtype = p.dtype if p is not None else torch.float64
    device = p.device if p is not None else "cpu"
    return disc.width.grid(dtype, device)


def weighted_norm(v: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """‖v‖_ω = (Σ_i ω_i v_i²)^{1/2} along the last axis (the grid's discrete L²(Ω) norm)."""
    return torch.sqrt(torch.clamp((v * v) @ weights, min=0.0))


def flow_map(controls, dynamics, disc, grid: Grid | None = None):
    """The depth-T flow u(0) ↦ u(T) of the semi-discrete forward problem, as a function of a
    batch ``(B, N)`` of initial fields (differentiable, usable with :mod:`torch.func`)."""
    from ..network import solve

    g = _grid_for(controls, disc, grid)

    def flow(u0: torch.Tensor) -> torch.Tensor:
        return solve(controls, u0, dynamics, disc, grid=g).u

    return flow


def _state_weights(controls, grid: Grid) -> torch.Tensor:
    """Quadrature weights of the state ``(B, C·N)``: ω repeated for each of C channels
    (MODEL.md §10; C = 1 without channels)."""
    return grid.weights.repeat(int(getattr(controls, "channels", 1)))


def _as_batch(u0: torch.Tensor, grid: Grid, n: int | None = None) -> torch.Tensor:
    n = grid.n if n is None else n
    u0 = torch.as_tensor(u0, dtype=grid.dtype, device=grid.device)
    if u0.dim() == 1:
        u0 = u0[None, :]
    if u0.dim() != 2 or u0.shape[1] != n:
        raise PdenetsError(
            f"initial fields have shape {tuple(u0.shape)}; expected (B, {n}) on this grid"
        )
    return u0.detach()


def _random_directions(shape, weights, gen) -> torch.Tensor:
    d = torch.randn(*shape, generator=gen, dtype=torch.float64).to(weights.dtype)
    d = d.to(weights.device)
    return d / weighted_norm(d, weights)[..., None]


@dataclass
class LipschitzEstimate:
    """Power-iteration estimate of the local Lipschitz constant of u(0) ↦ u(T).

    Attributes
    ----------
    per_input : list of float
        ‖∂u(T)/∂u(0)‖ (ω-weighted operator norm) at each initial field of the batch.
    value : float
        The largest of them: a lower bound of the global Lipschitz constant of the flow, to
        compare with the Gronwall factor (an upper bound, MODEL.md §3).
    iterations : int
        Power iterations performed.
    converged : bool
        Whether every estimate changed by less than ``rtol`` (relative) in the last iteration.
    """

    per_input: list[float]
    value: float
    iterations: int
    converged: bool

    def as_dict(self) -> dict:
        return asdict(self)


def lipschitz_estimate(
    controls, dynamics, u0: torch.Tensor, disc, *, grid: Grid | None = None,
    iters: int = 100, rtol: float = 1e-10, seed: int = 0,
) -> LipschitzEstimate:
    """Largest singular value of the linearized flow, by power iteration (MODEL.md §3).

    For each initial field u₀ of the batch, J = ∂u(T)/∂u(0) at u₀ is applied through a
    Jacobian-vector product and its ω-adjoint J* = W⁻¹ Jᵀ W (W = diag ω) through a
    vector-Jacobian product, both by reverse-mode autograd on one recorded forward solve (the
    JVP by the double-backward trick J v = ∂⟨Jᵀy, v⟩/∂y, which is much cheaper here than
    :func:`torch.func.jvp`'s per-operation forward mode); power iteration
    on J*J converges to ‖J‖²_ω = λ_max(J*J), the square of the local Lipschitz constant in
    the weighted norm ‖v‖_ω² = Σ ω_i v_i². The batch is iterated jointly (the flow acts on
    each field independently, so J is block diagonal).

    Parameters
    ----------
    controls, dynamics, disc
        The model (see :func:`pdenets.solve`).
    u0 : torch.Tensor
        Initial fields, shape ``(B, N)`` or ``(N,)``.
    grid : Grid, optional
    iters : int
        Maximum number of power iterations.
    rtol : float
        Stop when every estimate changes by less than ``rtol`` relative.
    seed : int
        Seed of the random start vectors.

    Returns
    -------
    LipschitzEstimate
    """
    g = _grid_for(controls, disc, grid)
    w = _state_weights(controls, g)
    u0 = _as_batch(u0, g, w.numel())
    flow = flow_map(controls, dynamics, disc, g)
    gen = torch.Generator().manual_seed(seed)
    v = _random_directions(u0.shape, w, gen)
    est = torch.zeros(u0.shape[0], dtype=u0.dtype, device=u0.device)
    converged = False
    it = 0
    with frozen_parameters(controls), torch.enable_grad():
        u = u0.clone().requires_grad_(True)
        uT = flow(u)
        # Jᵀy as a (linear) differentiable function of y: J v = ∂⟨Jᵀy, v⟩/∂y
        y = torch.zeros_like(uT, requires_grad=True)
        (JTy,) = torch.autograd.grad(uT, u, y, create_graph=True)

        def apply_J(vec):
            return torch.autograd.grad(JTy, y, vec, retain_graph=True)[0]

        def apply_JT(vec):
            return torch.autograd.grad(uT, u, vec, retain_graph=True)[0]

        for it in range(1, iters + 1):  # noqa: B007
            Jv = apply_J(v)
            new = weighted_norm(Jv, w)  # ‖Jv‖_ω with ‖v‖_ω = 1
            z = apply_JT(Jv * w) / w  # J* J v with J* = W⁻¹ Jᵀ W
            nz = weighted_norm(z, w)
            if bool((nz == 0).any()):
                raise PdenetsError("the linearized flow vanished on a start vector")
            v = z / nz[:, None]
            change = torch.abs(new - est) / torch.clamp(new, min=1e-300)
            est = new.detach()
            if it > 1 and bool((change < rtol).all()):
                converged = True
                break
        est = torch.maximum(est, weighted_norm(apply_J(v), w).detach())
    per = [float(x) for x in est]
    return LipschitzEstimate(per, max(per), it, converged)


@dataclass
class SensitivityReport:
    """Observed sensitivity of u(T) to perturbations, against the Gronwall bound (§3).

    Attributes
    ----------
    kind : str
        ``"input"`` (perturbations of u(0)) or ``"control"`` (perturbations of θ = (w, b)).
    scales : list of float
        Perturbation sizes: ‖δu(0)‖_ω for inputs; the L² size
        (∫_0^T ‖δw‖² + ‖δb‖² dt)^{1/2} for controls.
    responses : list of float
        Largest observed ‖u₁(T) − u₂(T)‖_ω over the batch and random directions, per scale.
    bounds : list of float or None
        The Gronwall bound of each response (None for the selection variant, which has none).
    ratios : list of float
        ``responses / bounds`` (≤ 1 when the bound holds).
    holds : bool or None
        Whether every observed response lies below its bound.
    gronwall : float or None
        exp(L_σ ∫_0^T ‖w(t)‖ dt) for the (unperturbed, resp. perturbed worst-case) controls.
    """

    kind: str
    scales: list[float]
    responses: list[float]
    bounds: list[float] | None
    ratios: list[float] | None
    holds: bool | None
    gronwall: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _gronwall_or_none(controls, dynamics, grid) -> float | None:
    if dynamics.kind == "selection":
        return None
    return gronwall_factor(controls, dynamics, grid)


def input_sensitivity(
    controls, dynamics, u0: torch.Tensor, disc, *, grid: Grid | None = None,
    scales=(1e-4, 1e-2, 1e-1, 1.0), directions: int = 4, seed: int = 0,
) -> SensitivityReport:
    """Observed ‖u₁(T) − u₂(T)‖_ω for random input perturbations vs the Gronwall bound.

    For each scale s and each of ``directions`` random ω-unit directions δ per input,
    u₂(0) = u₁(0) + s δ is solved alongside u₁ (one batched solve per scale) and the largest
    response is compared with exp(L_σ∫‖w‖) · s (MODEL.md §3).
    """
    g = _grid_for(controls, disc, grid)
    w = _state_weights(controls, g)
    n = w.numel()
    u0 = _as_batch(u0, g, n)
    flow = flow_map(controls, dynamics, disc, g)
    G = _gronwall_or_none(controls, dynamics, g)
    gen = torch.Generator().manual_seed(seed)
    B = u0.shape[0]
    responses = []
    with torch.no_grad():
        base = flow(u0)
        for s in scales:
            d = _random_directions((directions, B, n), w, gen)
            pert = (u0[None] + float(s) * d).reshape(directions * B, n)
            out = flow(pert).reshape(directions, B, n)
            responses.append(float(weighted_norm(out - base[None], w).max()))
    return _report("input", [float(s) for s in scales], responses,
                   None if G is None else [G * float(s) for s in scales], G)


def _report(kind, scales, responses, bounds, G) -> SensitivityReport:
    if bounds is None:
        return SensitivityReport(kind, scales, responses, None, None, None, G)
    ratios = [r / b if b > 0 else (0.0 if r == 0 else math.inf) for r, b in zip(responses, bounds)]
    holds = all(r <= b * (1 + 1e-9) + 1e-14 for r, b in zip(responses, bounds))
    return SensitivityReport(kind, scales, responses, bounds, ratios, holds, G)


def _knot_norm_integral(values: torch.Tensor, basis: str, delta: float, norm) -> float:
    """Upper bound of ∫ ‖v(t)‖ dt for knot values interpolated in depth (exact if constant)."""
    n = [float(norm(values[k])) for k in range(values.shape[0])]
    if basis == "constant":
        return delta * sum(n)
    return delta * (sum(n) - 0.5 * (n[0] + n[-1]))


def control_sensitivity(
    controls, dynamics, u0: torch.Tensor, disc, *, grid: Grid | None = None,
    scales=(1e-4, 1e-2, 1e-1), directions: int = 4, seed: int = 0,
) -> SensitivityReport:
    """Observed ‖u(T; θ + δθ) − u(T; θ)‖_ω for random control perturbations vs the bound.

    The Gronwall argument of MODEL.md §3 applied to e(t) = ‖u₁(t) − u₂(t)‖_ω with controls
    θ₁ = θ + δθ, θ₂ = θ gives, for the standard dynamics σ(∫wu + b),

        e(T) ≤ G₁ · L_σ ( sup_t ‖u₂(t)‖_ω ∫_0^T ‖δw(t)‖ dt + ∫_0^T ‖δb(t)‖_ω dt ),

    with G₁ = exp(L_σ ∫_0^T ‖w₁(t)‖ dt) and ‖δw(t)‖ the operator norm of the perturbation's
    integral operator; for the field variant ∫wσ(u) + b the factor L_σ sup‖u₂‖ becomes
    sup ‖σ(u₂(t))‖_ω and the δb term has no L_σ. Depth integrals of norms of knot-interpolated
    quantities are bounded by the trapezoid sum over knots (the norm is convex along linear
    interpolation). sup_t ‖u₂(t)‖ is taken over the depth steps of the unperturbed solve.

    Requires :class:`~pdenets.controls.GridControls` (perturbations are random knot values,
    scaled to L² size ``scale``).
    """
    from ..controls import GridControls
    from ..network import solve
    from ..objective import control_norms

    if not isinstance(controls, GridControls):
        raise PdenetsError("control perturbations need GridControls (knot values)")
    g = _grid_for(controls, disc, grid)
    u0 = _as_batch(u0, g)
    gen = torch.Generator().manual_seed(seed)
    sig = dynamics.activation
    lip = sig.lipschitz
    selection = dynamics.kind == "selection"

    def make(w, b):
        return controls.like(w=w, b=b)

    with torch.no_grad():
        w0, b0 = controls.w.detach(), controls.b.detach()
        ts = [k * controls.T / disc.steps for k in range(disc.steps + 1)]
        ref = solve(controls, u0, dynamics, disc, grid=g, saveat=ts)
        traj = ref.us  # (n_t, B, N)
        assert traj is not None, "solve with saveat returns the saved states"
        if dynamics.kind == "field":
            u_sup = float(weighted_norm(sig.fn(traj), g.weights).max())
            coef_w, coef_b = u_sup, 1.0
        else:
            u_sup = float(weighted_norm(traj, g.weights).max())
            coef_w, coef_b = lip * u_sup, lip
        responses, bounds = [], []
        delta = controls.T / controls.intervals
        for s in scales:
            worst_r, worst_b = 0.0, 0.0
            for _ in range(directions):
                dw = torch.randn(w0.shape, generator=gen, dtype=torch.float64).to(w0)
                db = torch.randn(b0.shape, generator=gen, dtype=torch.float64).to(b0)
                size = math.sqrt(float(control_norms(make(dw, db))[0]))
                dw, db = dw * (float(s) / size), db * (float(s) / size)
                pert = make(w0 + dw, b0 + db)
                out = solve(pert, u0, dynamics, disc, grid=g).u
                r = float(weighted_norm(out - ref.u, g.weights).max())
                worst_r = max(worst_r, r)
                if not selection:
                    dsched = make(dw, db).discretize(g)
                    int_dA = integrated_operator_norm(make(dw, db), g)
                    int_db = _knot_norm_integral(
                        dsched.b, controls.time_basis, delta, lambda v: weighted_norm(v, g.weights)
                    )
                    G1 = gronwall_factor(pert, dynamics, g)
                    bound = G1 * (coef_w * int_dA + coef_b * int_db)
                    # compare each direction's response with its own bound
                    worst_b = max(worst_b, r / bound if bound > 0 else math.inf)
            responses.append(worst_r)
            bounds.append(worst_b)
    if selection:
        return SensitivityReport("control", [float(s) for s in scales], responses,
                                 None, None, None, None)
    ratios = bounds  # worst response/bound ratio per scale
    holds = all(r <= 1 + 1e-9 for r in ratios)
    # report the bound that the worst ratio refers to: response / ratio
    bnds = [r / q if q > 0 else math.inf for r, q in zip(responses, ratios)]
    return SensitivityReport("control", [float(s) for s in scales], responses, bnds, ratios,
                             holds, _gronwall_or_none(controls, dynamics, g))


@dataclass
class StabilityReport:
    """Everything :func:`stability_report` measures (see there).

    ``gronwall_certified`` says whether ``gronwall`` is a proven upper bound (knot-based or
    depth-independent controls) or a conservative estimate (depth-dependent callables; see
    :func:`operator_norm_integral`); ``gronwall_method`` how ∫‖w(t)‖dt was obtained.
    """

    integrated_operator_norm: float
    lipschitz_sigma: float
    gronwall: float | None
    lipschitz: LipschitzEstimate
    input: SensitivityReport
    control: SensitivityReport | None
    gronwall_certified: bool | None = None
    gronwall_method: str | None = None

    def as_dict(self) -> dict:
        return {
            "integrated_operator_norm": self.integrated_operator_norm,
            "lipschitz_sigma": self.lipschitz_sigma,
            "gronwall": self.gronwall,
            "gronwall_certified": self.gronwall_certified,
            "gronwall_method": self.gronwall_method,
            "lipschitz": self.lipschitz.as_dict(),
            "input": self.input.as_dict(),
            "control": None if self.control is None else self.control.as_dict(),
        }


def stability_report(
    net, xi: torch.Tensor, disc=None, *, directions: int = 4, iters: int = 100, seed: int = 0,
) -> StabilityReport:
    """Gronwall bound, observed input/control sensitivity and Lipschitz estimate of a
    :class:`~pdenets.network.ContinuumNetwork` at inputs ``xi`` (MODEL.md §3).

    Control sensitivity is measured only for :class:`~pdenets.controls.GridControls`.
    """
    from ..controls import GridControls

    disc = disc or net.discretization
    g = net.grid(disc.width)
    with torch.no_grad():
        u0 = net.initial_state(torch.as_tensor(xi), g).detach()
    ctrl, dyn = net.controls, net.dynamics
    lip = lipschitz_estimate(ctrl, dyn, u0, disc, grid=g, iters=iters, seed=seed)
    inp = input_sensitivity(ctrl, dyn, u0, disc, grid=g, directions=directions, seed=seed)
    con = (control_sensitivity(ctrl, dyn, u0, disc, grid=g, directions=directions, seed=seed)
           if isinstance(ctrl, GridControls) else None)
    integral = operator_norm_integral(ctrl, g)
    selection = dyn.kind == "selection"
    return StabilityReport(integral.value, dyn.activation.lipschitz, inp.gronwall, lip, inp, con,
                           None if selection else integral.certified,
                           None if selection else integral.method)


def plot_stability(report: StabilityReport, path) -> None:
    """Observed responses vs Gronwall bounds (log–log) and the Lipschitz estimates."""
    import numpy as np

    from ..plotting import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for rep, mk in ((report.input, "o"), (report.control, "s")):
        if rep is None:
            continue
        ax.loglog(rep.scales, rep.responses, mk + "-", label=f"observed ({rep.kind})")
        if rep.bounds is not None:
            ax.loglog(rep.scales, rep.bounds, mk + "--", label=f"Gronwall bound ({rep.kind})")
    ax.set_xlabel("perturbation size")
    ax.set_ylabel("‖u₁(T) − u₂(T)‖_ω")
    ax.set_title("sensitivity vs Gronwall bound (MODEL.md §3)", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    per = np.asarray(report.lipschitz.per_input)
    ax.bar(np.arange(len(per)), per, label="local Lipschitz (power iteration)")
    if report.gronwall is not None:
        ax.axhline(report.gronwall, color="k", ls="--", label="Gronwall factor")
    ax.set_xlabel("input index")
    ax.set_title("Lipschitz constant of u(0) ↦ u(T)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
