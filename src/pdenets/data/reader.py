"""The one reader of user array files (MODEL.md §4): ``.npy``, ``.npz``, ``.csv``, ``.txt``.

Arrays are checked (real, numeric, non-empty, finite; headers against the file size and the
memory limits of :mod:`pdenets._limits`) before their data is read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import PdenetsError

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
    from .. import _limits

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

    from .. import _limits

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
