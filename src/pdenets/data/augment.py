"""Image augmentation (MODEL.md §4): random small affine deformations of the width domain."""

from __future__ import annotations

import math

import torch

from ..errors import PdenetsError


def affine_images(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor,
                  shift: torch.Tensor) -> torch.Tensor:
    """Images deformed by the affine maps φ_k(r) = s_k R(θ_k) r + δ_k of the pixel plane.

    The output is ``x_k ∘ φ_k⁻¹``: rotation by ``angle`` (radians) and scaling by ``scale``
    about the image centre, then translation by ``shift = (rows, cols)`` pixels; values
    between pixel centres are bilinear, and the image is zero outside its pixel grid (the
    convention of ``scipy.ndimage.affine_transform(order=1, mode="grid-constant")``).
    On the width domain this is u(x, 0) = (Eξ)(φ⁻¹(x)) — the lifted field moved by a map
    close to the identity.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(B, p, q)``.
    angle, scale : torch.Tensor
        ``(B,)``; ``scale > 0``.
    shift : torch.Tensor
        ``(B, 2)`` in pixels.
    """
    if x.dim() != 3:
        raise PdenetsError(f"affine_images needs images (B, p, q), got shape {tuple(x.shape)}")
    B, p, q = x.shape
    dt, dev = x.dtype, x.device
    angle, scale, shift = (torch.as_tensor(a, dtype=dt, device=dev) for a in (angle, scale, shift))
    if angle.shape != (B,) or scale.shape != (B,) or shift.shape != (B, 2):
        raise PdenetsError("affine_images: angle, scale must have shape (B,), shift (B, 2)")
    # φ⁻¹(r) = R(−θ)(r − δ)/s about the image centre, in the normalized coordinates of
    # ``affine_grid``/``grid_sample`` (align_corners=False: pixel centre c ↦ (2c + 1)/q − 1, so a
    # centred pixel offset C is 2C/q); zero padding gives the zero-outside convention.
    cos, sin = torch.cos(angle), torch.sin(angle)
    dr, dc = shift[:, 0], shift[:, 1]
    theta = torch.stack([
        torch.stack([cos / scale, -sin * p / (q * scale),
                     2 * (sin * dr - cos * dc) / (q * scale)], 1),
        torch.stack([sin * q / (p * scale), cos / scale,
                     -2 * (cos * dr + sin * dc) / (p * scale)], 1),
    ], 1)
    grid = torch.nn.functional.affine_grid(theta, [B, 1, p, q], align_corners=False)
    return torch.nn.functional.grid_sample(x[:, None], grid, mode="bilinear",
                                           padding_mode="zeros", align_corners=False)[:, 0]


def random_affine(x: torch.Tensor, generator: torch.Generator, *, rotate: float = 0.0,
                  shift: float = 0.0, scale: float = 0.0) -> torch.Tensor:
    """:func:`affine_images` with independent uniform draws per image: angle in ±``rotate``
    degrees, translation in ±``shift`` pixels per axis, scale factor in 1 ± ``scale``.

    The draws come from ``generator`` (CPU), in a fixed order, so that a resumed training run
    sees the same deformations. All zero returns ``x`` itself.
    """
    if rotate == shift == scale == 0:
        return x
    B = x.shape[0]

    def u():
        return 2 * torch.rand(B, generator=generator, dtype=torch.float64) - 1

    angle = u() * (rotate * math.pi / 180)
    sc = 1 + u() * scale
    sh = torch.stack([u() * shift, u() * shift], 1)
    return affine_images(x, angle.to(x.device), sc.to(x.device), sh.to(x.device))
