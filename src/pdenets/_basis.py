"""Private: the spatial bases of functions stored on a control grid of [0,1]^d.

``"linear"`` (multilinear "hat" basis, vertex-centred)
    ``size[a]`` ≥ 2 equispaced vertices per axis a, including 0 and 1. A function stored by its
    values at the vertices is evaluated anywhere by multilinear interpolation, which reproduces
    constants and functions affine in each coordinate exactly.
``"constant"`` (cell indicators, cell-centred)
    ``size[a]`` ≥ 1 equal cells per axis; a function is stored by its value on each cell
    (piecewise constant, discontinuous across cell faces). A point on a face belongs to the
    cell on its right (the last face to the last cell).

The ``basis_*`` functions dispatch on the basis name; the others are the hat-basis kernels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import PdenetsError

SPACE_BASES = ("linear", "constant")


def control_nodes(size: tuple[int, ...], dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Vertices of the control grid, shape ``(prod(size), d)``, row-major order."""
    axes = [torch.linspace(0.0, 1.0, k, dtype=dtype, device=device) for k in size]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def _hat_1d(x: torch.Tensor, k: int) -> torch.Tensor:
    """Values of the k hat functions on [0,1] at points x: shape ``(len(x), k)``."""
    idx = torch.arange(k, dtype=x.dtype, device=x.device)
    return torch.clamp(1.0 - torch.abs(x[:, None] * (k - 1) - idx[None, :]), min=0.0)


def hat_matrix(nodes: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Interpolation matrix P with ``P[i, c] = φ_c(x_i)``; shape ``(N, prod(size))``.

    ``f(x_i) = Σ_c P[i, c] f_c`` for a function with vertex values ``f_c``.
    """
    x = torch.clamp(nodes, 0.0, 1.0)
    P = _hat_1d(x[:, 0], size[0])
    for a in range(1, len(size)):
        Pa = _hat_1d(x[:, a], size[a])
        P = (P[:, :, None] * Pa[:, None, :]).reshape(P.shape[0], -1)
    return P


def mass_matrix_1d(k: int, dtype=torch.float64) -> torch.Tensor:
    """Exact L²(0,1) Gram matrix of the k hat functions (tridiagonal)."""
    h = 1.0 / (k - 1)
    M = np.zeros((k, k))
    for i in range(k - 1):
        M[i, i] += h / 3
        M[i + 1, i + 1] += h / 3
        M[i, i + 1] += h / 6
        M[i + 1, i] += h / 6
    return torch.as_tensor(M, dtype=dtype)


def mass_matrix(size: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """Exact L²([0,1]^d) Gram matrix of the tensor-product hat basis."""
    M = mass_matrix_1d(size[0], dtype)
    for a in range(1, len(size)):
        M = torch.kron(M, mass_matrix_1d(size[a], dtype))
    return M


def prolong_1d(k_from: int, k_to: int, dtype=torch.float64) -> torch.Tensor:
    """Matrix (k_to × k_from) evaluating a k_from-vertex piecewise-linear function at the
    k_to vertices of a finer grid (exact when (k_to − 1) is a multiple of (k_from − 1))."""
    x = torch.linspace(0.0, 1.0, k_to, dtype=dtype)
    return _hat_1d(x, k_from)


def prolong(size_from: tuple[int, ...], size_to: tuple[int, ...], dtype=torch.float64):
    """Tensor-product prolongation matrix between control grids.

    Shape ``(prod(size_to), prod(size_from))``.
    """
    P = prolong_1d(size_from[0], size_to[0], dtype)
    for a in range(1, len(size_from)):
        P = torch.kron(P, prolong_1d(size_from[a], size_to[a], dtype))
    return P


def stiffness_matrix_1d(k: int, dtype=torch.float64) -> torch.Tensor:
    """Exact Gram matrix ∫ φ_i' φ_j' dx of the k hat functions on [0,1]."""
    h = 1.0 / (k - 1)
    K = np.zeros((k, k))
    for i in range(k - 1):
        K[i, i] += 1 / h
        K[i + 1, i + 1] += 1 / h
        K[i, i + 1] -= 1 / h
        K[i + 1, i] -= 1 / h
    return torch.as_tensor(K, dtype=dtype)


def stiffness_matrix(size: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """Exact Gram matrix ∫ ∇φ_i · ∇φ_j dx of the tensor-product hat basis on [0,1]^d."""
    if len(size) == 1:
        return stiffness_matrix_1d(size[0], dtype)
    M0, M1 = mass_matrix_1d(size[0], dtype), mass_matrix_1d(size[1], dtype)
    K0, K1 = stiffness_matrix_1d(size[0], dtype), stiffness_matrix_1d(size[1], dtype)
    return torch.kron(K0, M1) + torch.kron(M0, K1)


# ------------------------------------------------------------------------------------------
# piecewise-constant cell basis and dispatch on the basis name


def cell_index(nodes: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Index of the equal cell (row-major over ``shape``) containing each node."""
    idx = torch.zeros(nodes.shape[0], dtype=torch.long, device=nodes.device)
    for a, n in enumerate(shape):
        k = torch.clamp(torch.floor(nodes[:, a] * n).long(), 0, n - 1)
        idx = idx * n + k
    return idx


def check_size(size, dim: int, basis: str, what: str) -> tuple[int, ...]:
    """Validate a control-grid size (vertices ≥ 2 for ``linear``, cells ≥ 1 for ``constant``)."""
    if basis not in SPACE_BASES:
        raise PdenetsError(f"{what}: unknown space basis {basis!r}; choose one of "
                           f"{', '.join(SPACE_BASES)}")
    sz = tuple(size) if isinstance(size, tuple | list) else (size,) * dim
    least = 2 if basis == "linear" else 1
    if len(sz) != dim or any(isinstance(k, bool) or int(k) != k or int(k) < least for k in sz):
        unit = "vertices" if basis == "linear" else "cells"
        raise PdenetsError(f"{what}: size must give >= {least} {unit} per axis for the "
                           f"{basis!r} space basis, got {size!r}")
    return tuple(int(k) for k in sz)


def basis_nodes(size: tuple[int, ...], basis: str, dtype=torch.float64,
                device="cpu") -> torch.Tensor:
    """Points carrying the stored values: vertices (linear) or cell centres (constant)."""
    if basis == "linear":
        return control_nodes(size, dtype, device)
    axes = [(torch.arange(k, dtype=dtype, device=device) + 0.5) / k for k in size]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def basis_matrix(nodes: torch.Tensor, size: tuple[int, ...], basis: str) -> torch.Tensor:
    """Evaluation matrix ``(N, prod(size))``: ``f(x_i) = Σ_c P[i, c] f_c``."""
    if basis == "linear":
        return hat_matrix(nodes, size)
    idx = cell_index(torch.clamp(nodes, 0.0, 1.0), size)
    P = torch.zeros(nodes.shape[0], math.prod(size), dtype=nodes.dtype, device=nodes.device)
    # scatter with a scalar: no host tensor is copied to the device (CUDA-graph safe)
    return P.scatter_(1, idx[:, None], 1.0)


def grid_matrix(grid, size: tuple[int, ...], basis: str, dtype) -> torch.Tensor | None:
    """The evaluation matrix :func:`basis_matrix` at the nodes of ``grid`` in ``dtype``, built
    once per grid and cached on it (every forward pass reads it: no rebuild, no host-to-device
    copy); ``None`` when it is the identity (the control grid *is* the width grid, e.g. one
    piecewise-constant cell per midpoint node), so callers skip the products."""
    key = ("basis-matrix", tuple(size), basis, dtype)
    cache = grid._cache
    if key not in cache:
        P = basis_matrix(grid.nodes, tuple(size), basis).to(dtype)
        ident = P.shape[0] == P.shape[1] and bool(
            torch.equal(P, torch.eye(P.shape[0], dtype=dtype, device=P.device)))
        cache[key] = None if ident else P
    return cache[key]


def basis_mass(size: tuple[int, ...], basis: str, dtype=torch.float64) -> torch.Tensor:
    """Exact L²([0,1]^d) Gram matrix of the basis (diagonal 1/#cells for ``constant``)."""
    if basis == "linear":
        return mass_matrix(size, dtype)
    n = math.prod(size)
    return torch.eye(n, dtype=dtype) / n


def basis_stiffness(size: tuple[int, ...], basis: str, dtype=torch.float64) -> torch.Tensor:
    """Gram matrix of the gradients; only the continuous (``linear``) basis has one."""
    if basis != "linear":
        raise PdenetsError("the H¹-in-width penalty (gamma > 0) needs controls in the "
                           "'linear' space basis: piecewise-constant controls have no "
                           "square-integrable gradient")
    return stiffness_matrix(size, dtype)


def basis_prolong(size_from: tuple[int, ...], size_to: tuple[int, ...], basis: str,
                  dtype=torch.float64) -> torch.Tensor:
    """Prolongation ``(prod(size_to), prod(size_from))`` to a finer grid of the same basis;
    exact when ``size_to − 1`` (linear) or ``size_to`` (constant) is a multiple of the
    coarse one per axis."""
    if basis == "linear":
        return prolong(size_from, size_to, dtype)
    return basis_matrix(basis_nodes(size_to, basis, dtype), size_from, basis)


def time_grams(T: float, intervals: int, time_basis: str, dtype=torch.float64):
    """``(G_mass, G_jump)``: K×K matrices with ∫_0^T ‖θ(t)‖² dt = Σ_kl G_mass[k,l] ⟨θ_k, θ_l⟩ and
    the β term Σ_k ‖θ_{k+1} − θ_k‖² / Δ = Σ_kl G_jump[k,l] ⟨θ_k, θ_l⟩ for knot values θ_k of
    the depth interpolation (``linear``: the P1 mass matrix of the knots; ``constant``: Δ·I)."""
    delta = T / intervals
    K = intervals + (1 if time_basis == "linear" else 0)
    if time_basis == "constant":
        mass = delta * torch.eye(K, dtype=dtype)
    else:  # ∫ over [t_k, t_k+1] of ((1-s) a + s b)² = Δ/3 (a² + ab + b²)
        mass = torch.zeros(K, K, dtype=dtype)
        for k in range(K - 1):
            mass[k, k] += delta / 3
            mass[k + 1, k + 1] += delta / 3
            mass[k, k + 1] += delta / 6
            mass[k + 1, k] += delta / 6
    D = torch.zeros(max(K - 1, 0), K, dtype=dtype)
    for k in range(K - 1):
        D[k, k], D[k, k + 1] = -1.0, 1.0
    return mass, (D.T @ D) / delta
