"""Second-order certification of critical points of the reduced objective (MODEL.md §6).

The reduced objective J(θ) of MODEL.md §4 — the forward problem solved for the current
controls, then loss + regularization — is differentiated by torch autograd through the forward
solve (discretize-then-optimize, MODEL.md §5). This module provides

* :class:`ReducedObjective`: J restricted to a chosen set of parameters (the control knot
  values w, b; optionally the readout c, d or a learnable lifting), as a function of one flat
  vector θ, with J(θ), ∇J(θ) and Hessian-vector products ∇²J(θ) v (double backward: one
  recorded forward/gradient graph, then one extra backward sweep per product);
* :func:`lanczos`: the symmetric Lanczos iteration with full reorthogonalization, whose Ritz
  values approximate the extreme eigenvalues of ∇²J from k products;
* :func:`certify`: the first-order residual ‖∇J‖ and the second-order verdict — strict local
  minimizer (∇J ≈ 0, λ_min > tol), saddle (λ_min < −tol; the Ritz vector is a direction of
  negative curvature and J is verified to decrease along it), degenerate (|λ_min| ≤ tol) or not
  a critical point. The default tolerances are relative to ‖∇²J‖ (with a floor at the
  Hessian's own rounding error), so the verdict is the same for J and c·J, c > 0.

The Hessian is taken with respect to the *knot values* (Euclidean coordinates of θ). Its
inertia (signs of its eigenvalues) equals that of the L² Hessian of the continuous controls
restricted to the same finite-dimensional space (Sylvester's law of inertia), so the verdict
does not depend on that choice; the eigenvalues themselves do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..errors import PdenetsError

#: parameter-group shortcuts accepted by :class:`ReducedObjective`
GROUPS = ("controls", "readout", "lifting", "all")


def select_parameters(net, params: Sequence[str] | str = ("controls",)) -> list[str]:
    """Resolve parameter names of ``net``: full names (``controls.w``, ``controls.b``,
    ``readout.c``, ``readout.d``, ``lifting.phi``) or groups (``controls``, ``readout``,
    ``lifting``, ``all``). Order follows ``net.named_parameters()``; duplicates are dropped."""
    if isinstance(params, str):
        params = [p.strip() for p in params.split(",") if p.strip()]
    named = [n for n, _ in net.named_parameters()]
    chosen: set[str] = set()
    for p in params:
        if p == "all":
            chosen.update(named)
        elif p in named:
            chosen.add(p)
        elif any(n.startswith(p + ".") for n in named):
            chosen.update(n for n in named if n.startswith(p + "."))
        else:
            raise PdenetsError(
                f"unknown parameter {p!r}; this model has: {', '.join(named) or 'none'} "
                f"(groups: {', '.join(GROUPS)})"
            )
    if not chosen:
        raise PdenetsError("no parameters selected for the analysis")
    return [n for n in named if n in chosen]


class ReducedObjective:
    """θ ↦ J(θ) for selected parameters of a network (MODEL.md §4, §6).

    Parameters
    ----------
    net : ContinuumNetwork
    objective : Objective
    inputs, targets : torch.Tensor
        Training data (ξ_k, y_k).
    disc : Discretization, optional
        The discretization of the data term (default: the network's).
    params : sequence of str or str
        Parameters to vary (see :func:`select_parameters`); the others are held fixed.

    Notes
    -----
    The object writes θ into the network's parameters (:meth:`set`); :meth:`restore` writes
    back the values it found at construction.
    """

    def __init__(self, net, objective, inputs, targets, disc=None,
                 params: Sequence[str] | str = ("controls",)) -> None:
        self.net, self.objective = net, objective
        self.disc = disc or net.discretization
        self.names = select_parameters(net, params)
        pdict = dict(net.named_parameters())
        self.params = [pdict[n] for n in self.names]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)
        p0 = self.params[0]
        self.dtype, self.device = p0.dtype, p0.device
        self.inputs = torch.as_tensor(inputs).to(self.device)
        if self.inputs.is_floating_point():
            self.inputs = self.inputs.to(self.dtype)
        self.targets = torch.as_tensor(targets).to(self.device)
        self._theta0 = self.vector()
        self._graph: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -- θ as a flat vector ------------------------------------------------------------
    def vector(self) -> torch.Tensor:
        """The current θ (detached copy, shape ``(n,)``)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def set(self, theta: torch.Tensor) -> None:
        """Write θ into the network's parameters."""
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        if theta.shape != (self.n,):
            raise PdenetsError(f"θ has shape {tuple(theta.shape)}, expected ({self.n},)")
        with torch.no_grad():
            for p, chunk in zip(self.params, torch.split(theta, self.sizes)):
                p.copy_(chunk.reshape(p.shape))
        self._graph = None

    def restore(self) -> None:
        """Write back the parameter values found at construction."""
        self.set(self._theta0)

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into ``{name: tensor}`` of the parameters' shapes."""
        return {n: c.reshape(s) for n, c, s in zip(self.names, torch.split(v, self.sizes),
                                                    self.shapes)}

    # -- J, ∇J, ∇²J v --------------------------------------------------------------------
    def _loss(self) -> torch.Tensor:
        return self.objective(self.net, self.inputs, self.targets, self.disc)

    def value(self, theta: torch.Tensor | None = None) -> float:
        """J(θ) (at the current parameters when θ is None)."""
        if theta is not None:
            self.set(theta)
        with torch.no_grad():
            return float(self._loss())

    def _ensure_graph(self):
        if self._graph is None:
            with torch.enable_grad():
                J = self._loss()
                grads = torch.autograd.grad(J, self.params, create_graph=True, allow_unused=True)
                g = torch.cat([
                    (gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                    for gi, p in zip(grads, self.params)
                ])
            self._graph = (J, g, g.detach())
        return self._graph

    def gradient(self, theta: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """``(J(θ), ∇J(θ))``; records the graph used by :meth:`hvp`."""
        if theta is not None:
            self.set(theta)
        J, _, g = self._ensure_graph()
        return float(J.detach()), g.clone()

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """∇²J(θ) v at the current θ (double backward through the recorded graph)."""
        _, g, _ = self._ensure_graph()
        v = torch.as_tensor(v, dtype=self.dtype, device=self.device)
        if not g.requires_grad:  # J is affine in θ
            return torch.zeros_like(v)
        with torch.enable_grad():
            hv = torch.autograd.grad(g, self.params, grad_outputs=v, retain_graph=True,
                                     allow_unused=True)
        return torch.cat([
            (h if h is not None else torch.zeros_like(p)).reshape(-1)
            for h, p in zip(hv, self.params)
        ]).detach()

    def hessian(self) -> torch.Tensor:
        """The full n × n Hessian by n products (for small n; symmetrized)."""
        cols = [self.hvp(e) for e in torch.eye(self.n, dtype=self.dtype, device=self.device)]
        H = torch.stack(cols, 1)
        return 0.5 * (H + H.T)


# ---------------------------------------------------------------------------------------------
# Lanczos
# ---------------------------------------------------------------------------------------------


@dataclass
class LanczosResult:
    """Ritz values (ascending), Ritz vectors (columns) and residual norms ‖H y − θ y‖.

    ``asymmetry`` is ‖(B − Bᵀ)/2‖₂ for B = Qᵀ(HQ) assembled from the products actually
    computed: zero for an exactly symmetric operator, so for a Hessian it measures the rounding
    error of the products on the Krylov space (the symmetric part of that error, invisible,
    is of the same size).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    steps: int
    invariant: bool  # the Krylov space became invariant (Ritz values exact)
    asymmetry: float = 0.0


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor], n: int, k: int = 30, *, seed: int = 0,
    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
    start: torch.Tensor | None = None,
) -> LanczosResult:
    """Symmetric Lanczos with full reorthogonalization (MODEL.md §6).

    Builds an orthonormal basis Q of the Krylov space K_k(H, q₁) and the tridiagonal
    T = Qᵀ H Q; the eigenpairs of T give Ritz pairs (θ_i, Q s_i) whose extreme values converge
    first to the extreme eigenvalues of H. Every new vector is orthogonalized twice against all
    previous ones (classical Gram–Schmidt, repeated), which keeps Q orthonormal to rounding and
    avoids spurious copies of converged eigenvalues. Stops early when the Krylov space becomes
    invariant (then the Ritz values are exact eigenvalues of H).

    Parameters
    ----------
    matvec : callable
        v ↦ H v for a symmetric H of size n.
    n : int
    k : int
        Maximum number of Lanczos steps (min(k, n) are taken).
    seed : int
        Seed of the random start vector (used if ``start`` is None).

    Returns
    -------
    LanczosResult
    """
    if n < 1:
        raise PdenetsError("lanczos: empty operator")
    k = max(1, min(int(k), n))
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(n, generator=gen, dtype=torch.float64) if start is None
         else torch.as_tensor(start, dtype=torch.float64).reshape(-1).cpu())
    q = (q / torch.linalg.vector_norm(q)).to(dtype=dtype, device=device)
    Q = [q]
    HQ: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    invariant = False
    scale = 0.0
    for j in range(k):
        w = matvec(Q[j])
        HQ.append(w)
        a = float(torch.dot(w, Q[j]))
        alphas.append(a)
        B = torch.stack(Q, 1)
        for _ in range(2):
            w = w - B @ (B.T @ w)
        beta = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(a), beta)
        if j == k - 1:
            betas.append(beta)
            break
        if beta <= 1e-12 * max(scale, 1e-300):
            invariant = True
            betas.append(0.0)
            break
        betas.append(beta)
        Q.append(w / beta)
    m = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    vals, S = torch.linalg.eigh(T)
    Qm = torch.stack(Q[:m], 1)
    vecs = Qm @ S.to(dtype=dtype, device=device)
    # residual of Ritz pair i: |β_m s_{m,i}| (zero if the space is invariant or m == n)
    last = betas[m - 1] if (m - 1) < len(betas) else 0.0
    if invariant or m == n:
        last = 0.0
    res = torch.abs(last * S[-1, :])
    Bq = Qm.T @ torch.stack(HQ[:m], 1)
    asym = float(torch.linalg.matrix_norm(0.5 * (Bq - Bq.T), ord=2))
    return LanczosResult(vals.to(dtype), vecs, res.to(dtype), m, invariant or m == n, asym)


# ---------------------------------------------------------------------------------------------
# Certification
# ---------------------------------------------------------------------------------------------

VERDICTS = ("strict local minimizer", "saddle", "degenerate", "not a critical point")


@dataclass
class DescentCheck:
    """J along the negative-curvature direction v (unit, sign chosen with ∇J·v ≤ 0)."""

    steps: list[float]
    values: list[float]
    predicted: list[float]
    decreased: bool
    best_step: float | None
    best_decrease: float | None


@dataclass
class HessianReport:
    """Numbers behind a second-order verdict (see :func:`certify`).

    ``tol`` and ``grad_tol`` are the *effective* (absolute) thresholds the verdict used;
    ``rounding`` is the estimated rounding error of the computed Hessian (see :func:`certify`).
    """

    n_params: int
    parameters: list[str]
    J: float
    grad_norm: float
    grad_tol: float
    lambda_min: float
    lambda_max: float
    ritz_values: list[float]
    residual_min: float
    residual_max: float
    lanczos_steps: int
    exact: bool
    tol: float
    verdict: str
    condition: float | None
    descent: DescentCheck | None = None
    direction: torch.Tensor | None = field(default=None, repr=False)
    rounding: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("direction", None)
        return d


def line_profile(red: ReducedObjective, v: torch.Tensor, steps: Sequence[float]) -> list[float]:
    """J(θ + s v) for each s (θ = the current parameters; restored afterwards)."""
    theta = red.vector()
    out = []
    try:
        for s in steps:
            out.append(red.value(theta + float(s) * v))
    finally:
        red.set(theta)
    return out


def certify(
    red: ReducedObjective, *, k: int = 30, tol: float | None = None, rtol: float = 1e-6,
    grad_tol: float = 1e-6, seed: int = 0, max_halvings: int = 40,
) -> HessianReport:
    """First- and second-order optimality check at the current θ (MODEL.md §6).

    Every default threshold is proportional to the scale of J, so the verdict is the same for
    J and c·J, c > 0 (the sign of an eigenvalue and the vanishing of a gradient do not depend on
    the units of J; absolute floors would make them):

    * eigenvalues count as zero when |λ| ≤ tol with
      tol = max(rtol · ‖H‖, 10 · δH), ‖H‖ = max |Ritz value|, δH the estimated rounding error
      of the computed Hessian: the larger of the asymmetry of Qᵀ(HQ) on the Krylov space
      (:class:`LanczosResult`; an exact Hessian is symmetric) and the backward-stable floor
      n · u · ‖H‖ (u the unit roundoff of the parameters' dtype). Reported as ``rounding``;
    * θ counts as critical when ‖∇J‖ ≤ grad_tol · ‖H‖ · max(1, ‖θ‖), i.e. the step
      ‖∇J‖ / ‖H‖ that the stiffest curvature allows is at most grad_tol relative to
      max(1, ‖θ‖) (a quantity in the units of θ, free of the units of J);
    * a Ritz value proves λ_min > 0 only when it exceeds tol plus its residual (a Ritz value
      always lies above λ_min; if Lanczos did not exhaust the space the residual bounds how far
      the Ritz value is from an eigenvalue). When Lanczos is exact the residual is 0.

    Parameters
    ----------
    red : ReducedObjective
    k : int
        Lanczos steps (exact spectrum when k ≥ number of parameters).
    tol : float, optional
        Absolute eigenvalue threshold, overriding the scale-invariant default above.
    rtol : float
        Relative eigenvalue threshold of the default ``tol``.
    grad_tol : float
        Relative first-order tolerance (see above). The report's ``grad_tol`` is the absolute
        threshold it gave.
    seed : int
        Lanczos start vector seed.
    max_halvings : int
        Step halvings tried when verifying descent along the negative-curvature direction.

    Returns
    -------
    HessianReport
        ``verdict`` is one of :data:`VERDICTS`: ``saddle`` whenever λ_min < −tol (a descent
        direction exists even if ∇J ≠ 0 — reported in ``descent``), ``not a critical point``
        when ‖∇J‖ exceeds its threshold and λ_min ≥ −tol, else ``strict local minimizer``
        (λ_min > tol + Ritz residual) or ``degenerate`` (λ_min = 0 within tol, or its sign not
        established).
    """
    J, g = red.gradient()
    gnorm = float(torch.linalg.vector_norm(g))
    lz = lanczos(red.hvp, red.n, k, seed=seed, dtype=red.dtype, device=red.device)
    vals = lz.values
    lmin, lmax = float(vals[0]), float(vals[-1])
    hnorm = max(abs(lmin), abs(lmax))
    rounding = max(lz.asymmetry, red.n * torch.finfo(red.dtype).eps * hnorm)
    if tol is None:
        tol = max(rtol * hnorm, 10.0 * rounding)
    theta_norm = float(torch.linalg.vector_norm(red.vector()))
    gtol = grad_tol * hnorm * max(1.0, theta_norm)
    res_min = float(lz.residuals[0])
    if lmin < -tol:
        verdict = "saddle"
    elif gnorm > gtol:
        verdict = "not a critical point"
    elif lmin > tol + res_min:
        verdict = "strict local minimizer"
    else:
        verdict = "degenerate"
    cond = lmax / lmin if lmin > tol else None
    direction = lz.vectors[:, 0].clone()
    rep = HessianReport(
        red.n, list(red.names), J, gnorm, gtol, lmin, lmax, [float(x) for x in vals],
        res_min, float(lz.residuals[-1]), lz.steps, lz.invariant, float(tol),
        verdict, cond, None, direction, rounding,
    )
    if verdict == "saddle":
        rep.descent = verify_descent(red, direction, g, lmin, max_halvings=max_halvings)
    return rep


def verify_descent(red: ReducedObjective, v: torch.Tensor, g: torch.Tensor, curvature: float,
                   *, max_halvings: int = 40) -> DescentCheck:
    """Evaluate J(θ + s v) on s = s₀, s₀/2, … until J decreases (v turned downhill).

    s₀ = max(1, ‖θ‖) / ‖v‖; the quadratic model J + s ∇J·v + ½ s² λ is reported alongside.
    """
    v = v / torch.linalg.vector_norm(v)
    slope = float(torch.dot(g, v))
    if slope > 0:
        v, slope = -v, -slope
    J0 = red.value()
    s0 = max(1.0, float(torch.linalg.vector_norm(red.vector())))
    steps = [s0 * 0.5**i for i in range(max_halvings + 1)]
    values, pred, tried = [], [], []
    best = None
    theta = red.vector()
    try:
        for s in steps:
            Js = red.value(theta + s * v)
            tried.append(s)
            values.append(Js)
            pred.append(J0 + s * slope + 0.5 * s * s * curvature)
            if math.isfinite(Js) and Js < J0:
                best = (s, J0 - Js)
                break
    finally:
        red.set(theta)
    return DescentCheck(tried, values, pred, best is not None,
                        None if best is None else best[0], None if best is None else best[1])


def plot_hessian(report: HessianReport, red: ReducedObjective, path, points: int = 41) -> None:
    """Ritz values and J along the extreme-eigenvalue direction (quadratic model overlaid)."""
    import numpy as np

    from ..plotting import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    rv = np.asarray(report.ritz_values)
    ax.plot(np.arange(len(rv)), rv, "o")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.axhspan(-report.tol, report.tol, color="0.85")
    ax.set_yscale("symlog", linthresh=max(report.tol, 1e-12))
    ax.set_xlabel("Ritz index")
    ax.set_title(f"Ritz values of ∇²J ({report.lanczos_steps} Lanczos steps): {report.verdict}",
                 fontsize=9)
    ax = axes[1]
    v = report.direction / torch.linalg.vector_norm(report.direction)
    span = report.descent.best_step * 2 if report.descent and report.descent.best_step else (
        max(1e-3, 1.0 / math.sqrt(max(abs(report.lambda_min), 1e-12))))
    s = np.linspace(-span, span, points)
    Js = line_profile(red, v, s.tolist())
    _, g = red.gradient()
    slope = float(torch.dot(g, v))
    ax.plot(s, Js, "-", label="J(θ + s v_min)")
    ax.plot(s, report.J + slope * s + 0.5 * report.lambda_min * s**2, "--",
            label="quadratic model")
    ax.set_xlabel("s")
    ax.set_title(f"along the λ_min = {report.lambda_min:.3g} direction", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
