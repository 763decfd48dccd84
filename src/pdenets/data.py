"""Training data (MODEL.md §4): bundled, synthetic and user datasets with fixed splits.

No network access is ever needed: the real datasets are the ones bundled with scikit-learn.

======================  ====================  ==========  =============================
name                    inputs                d (Ω)       task
======================  ====================  ==========  =============================
``digits``              8×8 images            2           10 classes
``breast_cancer``       30 features           1           2 classes
``wine``                13 features           1           3 classes
``iris``                4 features            1           3 classes
``spirals``             2 features            1           2 classes (two spirals)
``moons``, ``circles``  2 features            1           2 classes
file ``*.npz``          arrays ``x``, ``y``   by x.ndim   classes (int y) or regression
file ``*.csv``          last column = label   1           classes (int y) or regression
======================  ====================  ==========  =============================

Splits are fixed and seeded: a stratified test split (25 % by default; digits: 25 %,
stratified, seed 0), then a stratified validation split of the rest. Tabular features are
standardized with the training split's mean and standard deviation; images are scaled to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._checks import check_choice
from .errors import PdenetsError

BUILTIN = ("digits", "breast_cancer", "wine", "iris", "spirals", "moons", "circles")


@dataclass
class Dataset:
    """Fixed train/validation/test splits of one dataset.

    Attributes
    ----------
    name : str
    x_train, x_val, x_test : np.ndarray
        Inputs, shape ``(n, *input_shape)``.
    y_train, y_val, y_test : np.ndarray
        Integer labels ``(n,)`` (classification) or float targets ``(n, m)`` (regression).
    input_shape : tuple of int
        ``(n_features,)`` or ``(p, q)`` for images.
    n_outputs : int
        Number of classes or regression outputs.
    task : {"classification", "regression"}
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    n_outputs: int
    task: str
    #: how raw inputs were transformed: {"kind": "scale", "factor": f} or
    #: {"kind": "standardize", "mean": [...], "std": [...]} or {} (see :func:`preprocess`)
    preprocess: dict = field(default_factory=dict)

    @property
    def loss(self) -> str:
        """The natural loss: cross-entropy or squared error."""
        return "cross_entropy" if self.task == "classification" else "mse"

    def tensors(self, split: str, dtype=torch.float64, device="cpu"):
        """``(x, y)`` of ``split`` (``train``, ``val``, ``test``) as tensors."""
        check_choice(split, ("train", "val", "test"), "split")
        x = torch.as_tensor(getattr(self, f"x_{split}"), dtype=dtype, device=device)
        y = getattr(self, f"y_{split}")
        y = torch.as_tensor(y, dtype=torch.long if self.task == "classification" else dtype,
                            device=device)
        return x, y

    def summary(self) -> dict:
        return {"name": self.name, "train": len(self.x_train), "val": len(self.x_val),
                "test": len(self.x_test), "input_shape": list(self.input_shape),
                "outputs": self.n_outputs, "task": self.task}


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


def _raw(name: str, seed: int, n_samples: int):
    from sklearn import datasets as skd

    if name == "digits":
        d = skd.load_digits()
        return d.images / 16.0, d.target, True
    if name == "breast_cancer":
        d = skd.load_breast_cancer()
        return d.data, d.target, False
    if name == "wine":
        d = skd.load_wine()
        return d.data, d.target, False
    if name == "iris":
        d = skd.load_iris()
        return d.data, d.target, False
    if name == "spirals":
        x, y = two_spirals(n_samples, seed=seed)
        return x, y, False
    if name == "moons":
        x, y = skd.make_moons(n_samples, noise=0.1, random_state=seed)
        return x, y, False
    x, y = skd.make_circles(n_samples, noise=0.05, factor=0.5, random_state=seed)
    return x, y, False


def validate_arrays(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check types, shapes and finiteness of user data; return (x float64, y)."""
    x, y = np.asarray(x), np.asarray(y)
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise PdenetsError(f"{source}: x and y must be numeric (got {x.dtype}, {y.dtype})")
    if x.ndim not in (2, 3):
        raise PdenetsError(f"{source}: x must have shape (n, features) or (n, p, q), "
                           f"got {x.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise PdenetsError(f"{source}: y has shape {y.shape}; expected ({x.shape[0]},) or "
                           f"({x.shape[0]}, m) to match x with {x.shape[0]} samples")
    if x.shape[0] < 10:
        raise PdenetsError(f"{source}: at least 10 samples are needed, got {x.shape[0]}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise PdenetsError(f"{source}: x contains {int((~np.isfinite(x)).sum())} NaN/Inf values")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise PdenetsError(f"{source}: y contains NaN/Inf values")
    return x, y


def _load_file(path: Path):
    if not path.is_file():
        raise PdenetsError(f"data file {str(path)!r} does not exist (known datasets: "
                           f"{', '.join(BUILTIN)})")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z or "y" not in z:
                    raise PdenetsError(f"{path}: an npz data file needs arrays 'x' and 'y'")
                x, y = z["x"], z["y"]
        elif path.suffix in (".csv", ".txt"):
            arr = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
            if arr.shape[1] < 2:
                raise PdenetsError(f"{path}: a CSV data file needs feature columns and a label")
            x, y = arr[:, :-1], arr[:, -1]
        else:
            raise PdenetsError(f"{path}: unsupported data file type {path.suffix!r} "
                               f"(use .npz or .csv)")
    except PdenetsError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise PdenetsError(f"cannot read data file {str(path)!r}: {e}") from None
    x, y = validate_arrays(x, y, str(path))
    if y.ndim == 1 and np.allclose(y, np.round(y)) and len(np.unique(y)) <= max(
            2, len(y) // 5):
        y = np.round(y).astype(np.int64)
        if y.min() < 0:
            raise PdenetsError(f"{path}: class labels must be >= 0")
    return x, y, x.ndim == 3


def load_dataset(
    name: str, *, seed: int = 0, test_fraction: float = 0.25, val_fraction: float = 0.1,
    n_samples: int = 1000, standardize: bool = True,
) -> Dataset:
    """Load a dataset by name (see module docstring) or from a ``.npz``/``.csv`` file.

    Parameters
    ----------
    name : str
        A built-in name or a file path.
    seed : int
        Seed of the splits (and of synthetic data).
    test_fraction, val_fraction : float
        Fractions of all samples for test, and of the rest for validation.
    n_samples : int
        Size of synthetic datasets.
    standardize : bool
        Standardize tabular features with training statistics.
    """
    from sklearn.model_selection import train_test_split

    if not (0 < test_fraction < 1) or not (0 <= val_fraction < 1):
        raise PdenetsError(f"split fractions must lie in (0, 1): test {test_fraction}, "
                           f"val {val_fraction}")
    if name in BUILTIN:
        x, y, image = _raw(name, seed, n_samples)
        label = name
    else:
        x, y, image = _load_file(Path(name))
        label = Path(name).stem
    classification = np.issubdtype(np.asarray(y).dtype, np.integer)
    strat = y if classification else None
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction,
                                                  random_state=seed, stratify=strat)
        if val_fraction > 0:
            x_tr, x_va, y_tr, y_va = train_test_split(
                x_tr, y_tr, test_size=val_fraction, random_state=seed,
                stratify=y_tr if classification else None)
        else:
            x_va, y_va = x_tr[:0], y_tr[:0]
    except ValueError as e:
        raise PdenetsError(f"{label}: cannot split the data: {e}") from None
    pre: dict = {"kind": "scale", "factor": 1 / 16} if name == "digits" else {}
    if standardize and not image:
        mu, sd = x_tr.mean(0), x_tr.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        x_tr, x_va, x_te = ((a - mu) / sd for a in (x_tr, x_va, x_te))
        pre = {"kind": "standardize", "mean": mu.tolist(), "std": sd.tolist()}
    if classification:
        n_out = int(max(y.max() + 1, 2))
        task = "classification"
    else:
        if y.ndim == 1:
            y_tr, y_va, y_te = (a.reshape(-1, 1) for a in (y_tr, y_va, y_te))
        n_out = y_tr.shape[1]
        task = "regression"
    return Dataset(label, x_tr, y_tr, x_va, y_va, x_te, y_te, tuple(x.shape[1:]), n_out, task,
                   pre)


def load_dataset_config(cfg) -> Dataset:
    """:func:`load_dataset` with the options of a ``[data]`` config section — a
    :class:`~pdenets.config.DataConfig` or its dict (as stored in model files); missing keys
    take the defaults."""
    d = cfg if isinstance(cfg, dict) else vars(cfg)
    if not d.get("name"):
        raise PdenetsError("no dataset named (give --data NAME|FILE)")
    return load_dataset(str(d["name"]), seed=int(d.get("seed", 0)),
                        test_fraction=float(d.get("test_fraction", 0.25)),
                        val_fraction=float(d.get("val_fraction", 0.1)),
                        n_samples=int(d.get("n_samples", 1000)),
                        standardize=bool(d.get("standardize", True)))


def preprocess(x: np.ndarray, pre: dict) -> np.ndarray:
    """Apply the stored preprocessing ``pre`` (:attr:`Dataset.preprocess`) to raw inputs."""
    x = np.asarray(x, dtype=np.float64)
    kind = pre.get("kind")
    if kind == "scale":
        return x * float(pre["factor"])
    if kind == "standardize":
        mu, sd = np.asarray(pre["mean"]), np.asarray(pre["std"])
        if x.shape[-mu.ndim:] != mu.shape:
            raise PdenetsError(f"inputs have {x.shape[1:]} features; the model expects "
                               f"{mu.shape}")
        return (x - mu) / sd
    return x


# ------------------------------------------------------------------------------------------
# image augmentation: random small deformations of the width domain


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
    cr, cc = (p - 1) / 2, (q - 1) / 2
    R, C = torch.meshgrid(torch.arange(p, dtype=dt, device=dev) - cr,
                          torch.arange(q, dtype=dt, device=dev) - cc, indexing="ij")
    dr = R[None] - shift[:, 0, None, None]
    dc = C[None] - shift[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    s = scale[:, None, None]
    src_r = (cos * dr + sin * dc) / s + cr          # φ⁻¹ = R(−θ)(· − δ)/s
    src_c = (-sin * dr + cos * dc) / s + cc
    r0, c0 = torch.floor(src_r), torch.floor(src_c)
    fr, fc = src_r - r0, src_c - c0
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))     # zero ring: index 0 and p+1 / q+1
    r0, c0 = r0.long() + 1, c0.long() + 1
    b = torch.arange(B, device=dev)[:, None, None]

    def at(ri, ci):
        return xp[b, ri.clamp(0, p + 1), ci.clamp(0, q + 1)]

    return ((1 - fr) * (1 - fc) * at(r0, c0) + (1 - fr) * fc * at(r0, c0 + 1)
            + fr * (1 - fc) * at(r0 + 1, c0) + fr * fc * at(r0 + 1, c0 + 1))


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
