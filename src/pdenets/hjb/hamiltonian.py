"""The infimum over the controls in the Hamiltonian of MODEL.md §8.

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

* **Closed form** when ψ is affine, ψ(z) = a z + ψ(0) (``Activation.affine``, or ``Field``
  dynamics where ψ = identity: control-affine right-hand sides): c = −a q / (α ω_i),
  H = ⟨p, f0⟩ − a² Σ_i qᵀ G q / (2 α ω_i) (:meth:`pdenets.hjb.ReducedProblem.minimize`).
* **Otherwise** (tanh, sigmoid, …; :func:`minimize_rows`) a discrete control set followed by
  Newton polishing: every stationary point satisfies c = −q σ'(z)/(α ω_i), so a global
  minimizer lies in the box |c_k| ≤ L_σ |q_k| / (α ω_i), and on its one-signed half
  c_k q_k ≤ 0 when σ' ≥ 0 (``Activation.monotone``: tanh, sigmoid, softplus, ReLU). The box is
  sampled by a tensor grid of ``inner_points`` per dimension (quadratically spaced towards
  c = 0, at most 256 candidates in all), and the best candidate is refined by Newton steps on
  c + q σ'(z)/(α ω_i) = 0 (Jacobian from ``Activation.derivatives``; steepest descent where the
  Newton direction does not descend) with a backtracking line search on the objective. For
  B = 1 and no fixed pre-activation the row problem is unimodal for tanh (its stationary point
  is unique), so the global minimum is found.

Everything is batched over (state, node) pairs and runs on the device of its inputs.
"""

from __future__ import annotations

import math

import torch

from ..activations import Activation

#: most candidates of the discrete control set per (state, node) pair
_MAX_CANDIDATES = 256


def candidates_per_dim(B: int, inner_points: int) -> int:
    """Candidates per dimension of the discrete control set (≥ 2, at most 256 in all)."""
    return max(2, min(int(inner_points), int(math.floor(_MAX_CANDIDATES ** (1.0 / B) + 1e-9))))


def _matvec(G: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(G c) over the last axis by broadcasting (tiny batched matmuls are slow on CPU)."""
    return (G * c.unsqueeze(-2)).sum(-1)


def _line_search(phi, c, d, lo, hi, fractions):
    """Best of c + τ d (τ in ``fractions``, clamped to the box) per row: (c_new, φ(c_new))."""
    cand = torch.clamp(c[:, None] + fractions * d[:, None], lo[:, None], hi[:, None])
    val = phi(cand)
    val = torch.where(torch.isfinite(val), val, torch.inf)
    best, pick = val.min(-1)
    return cand[torch.arange(c.shape[0], device=c.device), pick], best


def minimize_rows(
    q: torch.Tensor, z0: torch.Tensor, G: torch.Tensor, kap: torch.Tensor, act: Activation,
    inner_points: int, newton_iters: int,
) -> torch.Tensor:
    """min_c Σ_k q_k σ(z0_k + (G c)_k) + (κ/2) cᵀ G c per (point, node); returns ``(M, B, N)``.

    Discrete candidate set in the box |c_k| ≤ L_σ |q_k| / κ followed by safeguarded Newton
    (module docstring). ``q``, ``z0``: ``(M, B, N)``; ``G``: ``(M, B, B)``; ``kap``: ``(N,)``.
    """
    M, B, N = q.shape
    qt = q.transpose(1, 2)  # (M, N, B)
    z0t = z0.transpose(1, 2)
    k = kap[None, :, None]  # (1, N, 1)
    Gx = G[:, None]  # (M, 1, B, B)
    radius = act.lipschitz * qt.abs() / k
    m = candidates_per_dim(B, inner_points)
    if act.monotone:
        # σ' >= 0: a stationary point has c_k = −q_k σ'(z_k)/κ, i.e. c_k q_k <= 0
        # quadratically spaced: denser near c = 0
        lin = torch.linspace(0.0, 1.0, m, dtype=q.dtype, device=q.device) ** 2
        lo_box = torch.where(qt > 0, -radius, torch.zeros_like(radius))
        hi_box = torch.where(qt > 0, torch.zeros_like(radius), radius)
    else:
        lin = torch.linspace(-1.0, 1.0, m, dtype=q.dtype, device=q.device)
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
    eye = torch.eye(B, dtype=q.dtype, device=q.device)
    # backtracking line search fractions 1/2, …, 1/256
    fractions = 0.5 ** torch.arange(1, 9, dtype=q.dtype, device=q.device)[:, None]
    for _ in range(newton_iters):
        s = _matvec(Gx, c)
        z = z0t + s
        d1, d2 = act.derivatives(z)  # σ', σ'' (Activation facts)
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
