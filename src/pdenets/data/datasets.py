"""Datasets with fixed, seeded splits (MODEL.md §4): :class:`Dataset`, :func:`load_dataset`
(built-in names or files) and the stored preprocessing (:func:`preprocess`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice
from ..errors import PdenetsError
from .reader import load_xy, npz_keys, read_arrays, validate_arrays
from .synthetic import shapes, signals, two_spirals

BUILTIN = ("digits", "breast_cancer", "wine", "iris", "spirals", "moons", "circles",
           "signals", "shapes")


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
    #: number C_in of input channels (inputs ``(n, C_in, *input_shape)`` when > 1)
    channels: int = 1

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


def _raw(name: str, seed: int, n_samples: int, length: int = 40, image_size: int = 32):
    from sklearn import datasets as skd

    if name == "signals":
        x, y = signals(n_samples, length, seed)
        return x, y, False
    if name == "shapes":
        x, y = shapes(n_samples, image_size, seed)
        return x, y, True

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


def _load_file(path: Path):
    if not path.is_file():
        raise PdenetsError(f"data file {str(path)!r} does not exist (known datasets: "
                           f"{', '.join(BUILTIN)})")
    if path.suffix not in (".npz", ".csv", ".txt"):
        raise PdenetsError(f"{path}: unsupported data file type {path.suffix!r} "
                           f"(use .npz or .csv)")
    x, y = load_xy(path, "data")
    assert y is not None
    channels, spatial = 1, x.ndim - 1
    if path.suffix == ".npz" and (x.ndim == 4 or "channels" in npz_keys(path)):
        channels, spatial = _npz_channels(path, x), x.ndim - 2
        shape = x.shape
        x, y = validate_arrays(x.reshape(shape[0], -1), y, str(path))
        x = x.reshape(shape) if channels > 1 else x.reshape(shape[0], *shape[2:])
    else:
        x, y = validate_arrays(x, y, str(path))
    if y.ndim == 1 and np.allclose(y, np.round(y)) and len(np.unique(y)) <= max(
            2, len(y) // 5):
        y = np.round(y).astype(np.int64)
        if y.min() < 0:
            raise PdenetsError(f"{path}: class labels must be >= 0")
    return x, y, spatial == 2, channels


def _npz_channels(path: Path, x: np.ndarray) -> int:
    """C_in of a multi-channel ``.npz`` (see the module docstring)."""
    if "channels" in npz_keys(path):
        c = read_arrays(path, "data", ("channels",))["channels"]
        if (c.ndim != 0 or c.dtype.kind not in "iu" or x.ndim not in (3, 4)
                or int(c) != x.shape[1]):
            raise PdenetsError(f"{path}: 'channels' must be an integer scalar equal to "
                               f"x.shape[1] of an x of shape (n, C_in, L) or (n, C_in, p, q), "
                               f"got {c!r} with x of shape {x.shape}")
    if not 1 <= x.shape[1] <= 64:
        raise PdenetsError(f"{path}: x has {x.shape[1]} input channels; at most 64")
    return int(x.shape[1])


def load_dataset(
    name: str, *, seed: int = 0, test_fraction: float = 0.25, val_fraction: float = 0.1,
    n_samples: int = 1000, standardize: bool = True, length: int = 40, image_size: int = 32,
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
    length : int
        Length of the ``signals`` (40 to 4096).
    image_size : int
        Side of the ``shapes`` images (8 to 128; e.g. 16 or 32).
    """
    from sklearn.model_selection import train_test_split

    if not (0 < test_fraction < 1) or not (0 <= val_fraction < 1):
        raise PdenetsError(f"split fractions must lie in (0, 1): test {test_fraction}, "
                           f"val {val_fraction}")
    if name in BUILTIN:
        x, y, image = _raw(name, seed, n_samples, length, image_size)
        channels = 3 if name == "shapes" else 1
        label = name
    else:
        x, y, image, channels = _load_file(Path(name))
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
    if standardize and not image and channels == 1:
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
    shape = tuple(x.shape[2:] if channels > 1 else x.shape[1:])
    return Dataset(label, x_tr, y_tr, x_va, y_va, x_te, y_te, shape, n_out, task, pre,
                   channels)


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
                        standardize=bool(d.get("standardize", True)),
                        length=int(d.get("length", 40)),
                        image_size=int(d.get("image_size", 32)))


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
