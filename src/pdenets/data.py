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
``signals``             1-D signals, length   1           5 classes (:func:`signals`)
                        ``data.length``
``shapes``              32×32, 3 channels     2           4 classes (:func:`shapes`)
file ``*.npz``          arrays ``x``, ``y``   by x.ndim   classes (int y) or regression
file ``*.csv``          last column = label   1           classes (int y) or regression
======================  ====================  ==========  =============================

Multi-channel inputs (MODEL.md §10): an ``.npz`` whose ``x`` has shape ``(n, C_in, p, q)``
(4-D: images with channels), or ``(n, C_in, L)`` together with an integer scalar array
``channels`` = C_in (without it a 3-D ``x`` is ``(n, p, q)`` one-channel images);
:attr:`Dataset.channels` is C_in and :attr:`Dataset.input_shape` the spatial shape.

Splits are fixed and seeded: a stratified test split (25 % by default; digits: 25 %,
stratified, seed 0), then a stratified validation split of the rest. Tabular features are
standardized with the training split's mean and standard deviation; images are scaled to [0, 1].
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._checks import check_choice
from .errors import PdenetsError

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


def shapes(n: int = 1000, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic colour images ``(n, 3, size, size)`` in [0, 1] of 4 shape classes
    (disc, square, triangle, cross) with random position, size, rotation (triangle, cross)
    and colour on a random smooth colour background with iid pixel noise. The colour carries
    no class information: the classes differ by shape only."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(y)
    g = (np.arange(size) + 0.5) / size
    X, Y = np.meshgrid(g, g, indexing="ij")
    out = np.empty((n, 3, size, size))
    for i in range(n):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        r = rng.uniform(0.14, 0.26)
        th = rng.uniform(0, 2 * np.pi)
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
        fg = rng.uniform(0, 1, 3)
        bg0, bg1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        ramp = (X * np.cos(th) + Y * np.sin(th))[None]
        bg = bg0[:, None, None] * (1 - ramp) + bg1[:, None, None] * ramp
        bg = 0.5 * bg + 0.25
        img = np.where(m[None], fg[:, None, None], bg)
        out[i] = np.clip(img + 0.05 * rng.normal(size=img.shape), 0.0, 1.0)
    return out, y


def _raw(name: str, seed: int, n_samples: int, length: int = 40):
    from sklearn import datasets as skd

    if name == "signals":
        x, y = signals(n_samples, length, seed)
        return x, y, False
    if name == "shapes":
        x, y = shapes(n_samples, 32, seed)
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


# ------------------------------------------------------------------------------------------
# the one reader of user array files (.npy, .npz, .csv, .txt)

#: dtype kinds accepted in array files: signed/unsigned integers and real floating point
_NUMERIC_KINDS = "iuf"
ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".txt")


def check_array(a: np.ndarray, label: str) -> np.ndarray:
    """Refuse arrays that are not real numeric (complex, bool, strings, objects), empty, or
    non-finite; ``label`` names the array in the message. Returns ``a`` unchanged."""
    a = np.asarray(a)
    if a.dtype.kind == "c":
        raise PdenetsError(f"{label} is complex ({a.dtype}); only real numbers are supported")
    if a.dtype.kind not in _NUMERIC_KINDS:
        raise PdenetsError(f"{label} is not numeric (dtype {a.dtype})")
    if a.size == 0:
        raise PdenetsError(f"{label} is empty (shape {a.shape})")
    if a.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise PdenetsError(f"{label} contains {bad} NaN or Inf value(s)")
    return a


def _check_header(shape: tuple[int, ...], dtype: np.dtype, data_bytes: int | None,
                  label: str) -> None:
    """Validate an array header before its data is read: dtype, emptiness, the bytes the file
    really holds (``data_bytes``) and the memory the array (plus a float64 copy) needs."""
    from . import _limits

    desc = f"shape {shape} {dtype}"
    if dtype.hasobject or dtype.fields is not None:
        raise PdenetsError(f"{label} holds Python objects or records ({dtype}); only plain "
                           f"numeric arrays are supported")
    if dtype.kind == "c":
        raise PdenetsError(f"{label} is complex ({dtype}); only real numbers are supported")
    if dtype.kind not in _NUMERIC_KINDS:
        raise PdenetsError(f"{label} is not numeric (dtype {dtype})")
    n = 1.0
    for s in shape:
        n *= _limits.count(s)
    if n == 0:
        raise PdenetsError(f"{label} is empty ({desc})")
    need = n * dtype.itemsize
    if data_bytes is not None and need > data_bytes:
        raise PdenetsError(f"{label} is truncated or corrupt: its header declares {desc} "
                           f"({_limits.format_bytes(need)}) but the file holds "
                           f"{_limits.format_bytes(data_bytes)} of data")
    _limits.check_memory(n * (dtype.itemsize + 8), label, f"an array of {desc}")


def _npy_header(fp, label: str) -> tuple[tuple[int, ...], np.dtype]:
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = npformat.read_array_header_2_0(fp)
        else:
            shape, _, dtype = npformat._read_array_header(fp, version)  # type: ignore[attr-defined]
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise PdenetsError(f"{label} is not a valid .npy array: {e}") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _read_npy(path: Path, label: str) -> np.ndarray:
    with open(path, "rb") as fp:
        shape, dtype = _npy_header(fp, label)
        data_bytes = path.stat().st_size - fp.tell()
    _check_header(shape, dtype, data_bytes, label)
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path, label: str, keys: tuple[str, ...] | None) -> dict[str, np.ndarray]:
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PdenetsError(f"{label} is not a valid .npz archive: {e}") from None
    with zf:
        members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        wanted = list(members) if keys is None else [k for k in keys if k in members]
        out: dict[str, np.ndarray] = {}
        for key in wanted:
            info = members[key]
            lab = f"{label}, array {key!r}"
            with zf.open(info) as fp:
                shape, dtype = _npy_header(fp, lab)
                data_bytes = info.file_size - fp.tell()
            _check_header(shape, dtype, data_bytes, lab)
        with np.load(path, allow_pickle=False) as z:
            for key in wanted:
                out[key] = z[key]
    return out


def npz_keys(path: str | Path) -> list[str]:
    """Names of the arrays in an ``.npz`` file (nothing is loaded); [] if it is not one."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError, EOFError):
        return []


def _read_text(path: Path, label: str) -> np.ndarray:
    import warnings

    from . import _limits

    # a text file of S bytes holds at most S/2 numbers; parsing needs a few copies of them
    _limits.check_memory(path.stat().st_size * 16, label, "parsing it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input contained no data": reported as empty below
        return np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)


def read_arrays(path: str | Path, what: str = "input",
                keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Read the arrays of a user file — the one reader of array files in pdenets.

    ``.npy`` (one array, key ``""``), ``.npz`` (the arrays named in ``keys`` that it holds;
    all when ``keys`` is None), ``.csv``/``.txt`` (one 2-D table, key ``""``). Every ``.npy``
    header (also inside ``.npz``) is read first, and its shape and dtype are checked before any
    data is loaded: complex, object/record, boolean and string dtypes, empty arrays, headers
    that declare more data than the file holds, and arrays beyond the memory limit of
    :mod:`pdenets._limits` are refused. Every returned array is real, numeric, non-empty and
    finite (:func:`check_array`).

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is (``"input"``, ``"data"``), for the messages.
    keys : tuple of str, optional
        Arrays wanted from an ``.npz`` file.

    Raises
    ------
    PdenetsError
        Naming the file and the problem.
    """
    path = Path(path)
    label = f"{what} file {str(path)!r}"
    if not path.is_file():
        raise PdenetsError(f"{label} does not exist")
    if path.suffix not in ARRAY_SUFFIXES:
        raise PdenetsError(f"{label}: unsupported file type {path.suffix!r} (use "
                           f"{', '.join(ARRAY_SUFFIXES)})")
    try:
        if path.suffix == ".npy":
            arrays = {"": _read_npy(path, label)}
        elif path.suffix == ".npz":
            arrays = _read_npz(path, label, keys)
        else:
            arrays = {"": _read_text(path, label)}
    except PdenetsError:
        raise
    except (ValueError, OSError, EOFError, MemoryError) as e:
        raise PdenetsError(f"cannot read {label}: {e}") from None
    return {k: check_array(a, label if not k else f"{label}, array {k!r}")
            for k, a in arrays.items()}


def load_array(path: str | os.PathLike, name: str = "input") -> np.ndarray:
    """One array of inputs (float64) from ``.npy``, ``.npz`` (key ``x``, ``X`` or ``inputs``,
    else its only array) or ``.csv``/``.txt`` — through :func:`read_arrays`."""
    p = Path(path)
    if p.suffix == ".npz" and p.is_file():
        keys = npz_keys(p)
        key: str | None = next((k for k in ("x", "X", "inputs") if k in keys), None)
        if not keys:
            read_arrays(p, name, ())  # not an archive at all: that message
        if key is None and len(keys) != 1:
            raise PdenetsError(f"{name} file {str(p)!r} must hold an array 'x' (or exactly "
                               f"one array); found: {', '.join(sorted(keys)) or 'none'}")
        key = key or keys[0]
        arr = read_arrays(p, name, (key,))[key]
    else:
        arr = read_arrays(p, name)[""]
    return arr.astype(np.float64)


def load_xy(path: str | Path, what: str = "data", need_y: bool = True,
            suffixes: tuple[str, ...] = (".npz", ".csv", ".txt"),
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs ``x`` and targets ``y`` of a data file, through :func:`read_arrays`: an ``.npz``
    with arrays ``x`` and ``y`` (``y`` optional unless ``need_y``), or a ``.csv``/``.txt``
    table whose last column is ``y``. ``x`` needs at least one sample and the samples of ``x``
    and ``y`` must match; ``x`` is returned as float64, ``y`` as stored."""
    p = Path(path)
    label = f"{what} file {str(p)!r}"
    if p.is_file() and p.suffix not in suffixes:
        raise PdenetsError(f"{label}: expected {' or '.join(suffixes)} (arrays x and y)")
    if p.suffix == ".npz":
        keys = npz_keys(p)
        if "x" not in keys or (need_y and "y" not in keys):
            found = ", ".join(sorted(keys)) or "none"
            read_arrays(p, what, ())  # a file that is no archive: that message first
            raise PdenetsError(f"{label} must hold arrays 'x' and 'y' (found: {found})")
        arrays = read_arrays(p, what, ("x", "y"))
        x, y = arrays["x"], arrays.get("y")
    else:
        arr = read_arrays(p, what)[""]
        if arr.shape[1] < 2:
            raise PdenetsError(f"{label}: a table needs feature columns and a label column")
        x, y = arr[:, :-1], arr[:, -1]
    if x.ndim < 2:
        raise PdenetsError(f"{label}: x must have shape (K, ...) with K samples, got {x.shape}")
    if y is not None and (y.ndim == 0 or len(y) != len(x)):
        raise PdenetsError(f"{label}: x has {len(x)} samples but y has shape {y.shape}")
    return x.astype(np.float64), y


def validate_arrays(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check types, shapes and finiteness of user data; return (x float64, y)."""
    x = check_array(np.asarray(x), f"{source}: x")
    y = check_array(np.asarray(y), f"{source}: y")
    if x.ndim not in (2, 3):
        raise PdenetsError(f"{source}: x must have shape (n, features) or (n, p, q), "
                           f"got {x.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise PdenetsError(f"{source}: y has shape {y.shape}; expected ({x.shape[0]},) or "
                           f"({x.shape[0]}, m) to match x with {x.shape[0]} samples")
    if x.shape[0] < 10:
        raise PdenetsError(f"{source}: at least 10 samples are needed, got {x.shape[0]}")
    return x.astype(np.float64), y


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
    n_samples: int = 1000, standardize: bool = True, length: int = 40,
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
    """
    from sklearn.model_selection import train_test_split

    if not (0 < test_fraction < 1) or not (0 <= val_fraction < 1):
        raise PdenetsError(f"split fractions must lie in (0, 1): test {test_fraction}, "
                           f"val {val_fraction}")
    if name in BUILTIN:
        x, y, image = _raw(name, seed, n_samples, length)
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
                        length=int(d.get("length", 40)))


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
