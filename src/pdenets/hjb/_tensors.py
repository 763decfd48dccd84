"""Tensor helpers shared by the HJB modules (MODEL.md §8): dtype, coercion, validation."""

from __future__ import annotations

import math

import torch

from .._checks import check_finite
from ..errors import PdenetsError

#: the HJB solver computes in double precision
_DTYPE = torch.float64


def _as_tensor(value, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """Broadcast a scalar / sequence / tensor to ``shape`` (float64), rejecting NaN/Inf."""
    try:
        t = torch.as_tensor(value, dtype=_DTYPE)
    except (TypeError, ValueError, RuntimeError) as e:
        raise PdenetsError(f"{name} must be numeric, got {value!r}") from e
    if t.numel() == math.prod(shape) and t.shape != shape:
        t = t.reshape(shape)
    try:
        t = torch.broadcast_to(t, shape).clone()
    except RuntimeError as e:
        raise PdenetsError(
            f"{name} has shape {tuple(t.shape)}; expected a scalar or shape {shape}"
        ) from e
    return check_finite(t, name)


def _states(v, D: int) -> torch.Tensor:
    """States as a float64 tensor of shape ``(M, D)`` (a single ``(D,)`` state becomes M = 1)."""
    v = torch.as_tensor(v, dtype=_DTYPE)
    if v.dim() == 1:
        v = v[None]
    if v.dim() != 2 or v.shape[1] != D:
        raise PdenetsError(f"states have shape {tuple(v.shape)}; expected (M, {D})")
    return check_finite(v, "state")
