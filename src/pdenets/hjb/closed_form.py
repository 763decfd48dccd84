"""The closed-form case of MODEL.md §8: ∂_t u = b (w ≡ 0, σ = identity), bias control."""

from __future__ import annotations

import torch

from ._tensors import _DTYPE


def closed_form_value(t: float, v, target, alpha: float, T: float, weights=None) -> torch.Tensor:
    """V(t, v) = ‖v − y‖²_ω / (2 (1 + (T − t)/α)) for ∂_t u = b (w ≡ 0, σ = identity),
    cost (α/2)∫‖b‖²_ω + ½‖u(T) − y‖²_ω (MODEL.md §8); ``weights`` ω default to ones."""
    v = torch.as_tensor(v, dtype=_DTYPE)
    r = v - torch.as_tensor(target, dtype=_DTYPE)
    om = torch.ones(v.shape[-1], dtype=_DTYPE) if weights is None else torch.as_tensor(
        weights, dtype=_DTYPE)
    return (r * r) @ om / (2.0 * (1.0 + (T - t) / alpha))


def closed_form_feedback(t: float, v, target, alpha: float, T: float) -> torch.Tensor:
    """b*(t, v) = −(v − y)/(α + T − t) (MODEL.md §8)."""
    v = torch.as_tensor(v, dtype=_DTYPE)
    return -(v - torch.as_tensor(target, dtype=_DTYPE)) / (alpha + T - t)
