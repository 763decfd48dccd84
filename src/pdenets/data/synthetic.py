"""Synthetic datasets (MODEL.md §4): two spirals, 1-D signals of five shapes, and
three-channel images of four shapes (16×16, 32×32, ...); all seeded and generated without
network access."""

from __future__ import annotations

import math

import numpy as np

from ..errors import PdenetsError


def two_spirals(n: int = 1000, noise: float = 0.05, turns: float = 1.75, seed: int = 0):
    """Two interleaved spirals in the plane (n points, balanced classes)."""
    rng = np.random.default_rng(seed)
    m = n // 2
    t = np.sqrt(rng.random(m)) * turns * 2 * math.pi
    r = t / (turns * 2 * math.pi)
    a = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    x = np.concatenate([a, -a]) + noise * rng.normal(size=(2 * m, 2))
    y = np.concatenate([np.zeros(m, int), np.ones(m, int)])
    return x, y


SIGNAL_CLASSES = ("bump", "pulse", "chirp", "sawtooth", "doublet")


def _template(kind: str, s: np.ndarray) -> np.ndarray:
    """A template on s ∈ R (support about [−1, 1])."""
    if kind == "bump":
        return np.exp(-4.0 * s**2)
    if kind == "pulse":
        return (np.abs(s) < 0.6).astype(float)
    if kind == "chirp":
        return np.sin(2 * np.pi * (1.0 + 1.5 * (s + 1)) * s) * (np.abs(s) < 1)
    if kind == "sawtooth":
        return np.where(np.abs(s) < 1, (s + 1) / 2 - 0.5, 0.0) * 2
    return np.exp(-16 * (s - 0.45) ** 2) - np.exp(-16 * (s + 0.45) ** 2)


def signals(n: int = 1000, length: int = 40, seed: int = 0, noise: float = 0.3,
            corr_noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic 1-D signals ``(n, length)`` of 5 template classes (bump, pulse,
    chirp, sawtooth, doublet), each with a random translation (±25 % of the length), scaling
    (width ×0.6-1.4, amplitude ×0.7-1.3), shear (a random linear trend), correlated noise
    (a smoothed random walk of size ``corr_noise``) and iid Gaussian noise ``noise``.
    Balanced classes; lengths 40 to 4096."""
    if not (40 <= int(length) <= 4096):
        raise PdenetsError(f"signals: length must lie in [40, 4096], got {length}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(SIGNAL_CLASSES)
    rng.shuffle(y)
    x = np.linspace(-1.0, 1.0, int(length))
    shift = rng.uniform(-0.5, 0.5, n)
    width = rng.uniform(0.25, 0.55, n) * rng.uniform(0.6, 1.4, n) / 0.4
    amp = rng.uniform(0.7, 1.3, n)
    trend = rng.uniform(-0.5, 0.5, n)
    out = np.empty((n, int(length)))
    for i in range(n):
        s = (x - shift[i]) / (0.4 * width[i])
        out[i] = amp[i] * _template(SIGNAL_CLASSES[y[i]], s) + trend[i] * x
    walk = np.cumsum(rng.normal(size=(n, int(length))), axis=1)
    k = max(1, int(length) // 10)
    walk = np.apply_along_axis(lambda r: np.convolve(r, np.ones(k) / k, "same"), 1, walk)
    walk -= walk.mean(1, keepdims=True)
    walk /= walk.std(1, keepdims=True) + 1e-12
    out += corr_noise * walk + noise * rng.normal(size=out.shape)
    return out, y


SHAPE_CLASSES = ("disc", "square", "triangle", "cross")

#: per-channel contrast of a ``shapes`` foreground over its background (fixed polarity)
SHAPE_CONTRAST = (0.25, 0.5)


def shapes(n: int = 1000, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic colour images of 4 shape classes (MODEL.md §10 channels).

    Each image holds one shape — disc, square, triangle or cross — with a random position
    (centre in [0.3, 0.7]²), size (radius 0.14-0.26 of the side) and rotation, on a smooth
    colour background: a linear ramp in a random direction between two colours, each channel
    in [0.1, 0.45] and the two ends at most 0.1 apart. The shape is the background *plus* a
    contrast drawn per image and per channel from [0.25, 0.5] (``SHAPE_CONTRAST``): it is
    always visible and always brighter, in every channel. Then iid Gaussian pixel noise
    (σ = 0.05) and clipping to [0, 1]. The colours and contrasts are drawn independently of
    the class, so the colour carries no class information: the classes differ by shape only.
    Balanced classes.

    (Before this version the foreground colour was uniform in [0, 1]³ on a background in
    [0.25, 0.75]³: the contrast could vanish and its sign varied, and no model tried, a
    PyTorch CNN included, learned the raw images above chance.)

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side p = q of the images, 8 to 128 (e.g. 16 or 32).
    seed : int
        Seed of the generator.

    Returns
    -------
    x : np.ndarray
        Images ``(n, 3, size, size)`` in [0, 1].
    y : np.ndarray
        Labels ``(n,)`` in {0, 1, 2, 3} (indices into ``SHAPE_CLASSES``).
    """
    if not (8 <= int(size) <= 128):
        raise PdenetsError(f"shapes: size must lie in [8, 128], got {size}")
    size = int(size)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(y)
    g = (np.arange(size) + 0.5) / size
    X, Y = np.meshgrid(g, g, indexing="ij")
    out = np.empty((n, 3, size, size))
    lo, hi = SHAPE_CONTRAST
    for i in range(n):
        cx, cy = rng.uniform(0.35, 0.65, 2)
        r = rng.uniform(0.18, 0.3)
        th = rng.uniform(-np.pi / 12, np.pi / 12)
        u = (X - cx) * np.cos(th) + (Y - cy) * np.sin(th)
        v = -(X - cx) * np.sin(th) + (Y - cy) * np.cos(th)
        kind = SHAPE_CLASSES[y[i]]
        if kind == "disc":
            m = u**2 + v**2 < r**2
        elif kind == "square":
            m = (np.abs(u) < 0.8 * r) & (np.abs(v) < 0.8 * r)
        elif kind == "triangle":
            m = (v > -0.5 * r) & (v < r - np.sqrt(3) * np.abs(u))
        else:
            m = ((np.abs(u) < 0.3 * r) & (np.abs(v) < r)) | ((np.abs(v) < 0.3 * r)
                                                             & (np.abs(u) < r))
        bg0 = rng.uniform(0.1, 0.45, 3)
        bg1 = np.clip(bg0 + rng.uniform(-0.1, 0.1, 3), 0.1, 0.45)
        phi = rng.uniform(0, 2 * np.pi)
        ramp = (X * np.cos(phi) + Y * np.sin(phi))
        ramp = ((ramp - ramp.min()) / (ramp.max() - ramp.min()))[None]
        bg = bg0[:, None, None] * (1 - ramp) + bg1[:, None, None] * ramp
        contrast = rng.uniform(lo, hi, 3)
        img = bg + contrast[:, None, None] * m[None]
        out[i] = np.clip(img + 0.05 * rng.normal(size=img.shape), 0.0, 1.0)
    return out, y
