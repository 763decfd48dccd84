"""Private helpers shared by CLI commands: JSON output, atomic output directories, inputs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import PdenetsError


def emit(args, payload: dict, text: str) -> None:
    """Print exactly one JSON object (``--json``) or the human-readable ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_jsonable))
    else:
        print(text)


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out`` atomically.

    On any exception the temporary directory is removed and ``out`` is left untouched, so a
    failed command never leaves a directory that looks complete.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    except OSError as e:
        raise PdenetsError(f"cannot write output directory {str(out)!r}: {e.strerror}") from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the usual directory mode
        if out.exists():
            if not overwrite:
                raise PdenetsError(f"output directory {str(out)!r} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_array(path: str | os.PathLike, name: str = "input") -> np.ndarray:
    """Load a numeric array from ``.npy``, ``.npz`` (key ``x``/``X``/``inputs``, else its only
    array), ``.csv`` or ``.txt`` with the one hardened reader, :func:`pdenets.data.load_array`
    (headers checked before loading; complex, non-numeric, empty and non-finite data
    refused)."""
    from ..data import load_array as read

    return read(path, name)


def check_result(value, what: str) -> None:
    """Raise :class:`PdenetsError` when a result (tensor, array or number) holds NaN or Inf.

    Commands call it once per result, after the computation (never inside solver steps)."""
    import math

    import torch

    if value is None:
        return
    if isinstance(value, float | int):
        bad = 0 if math.isfinite(value) else 1
    else:
        t = torch.as_tensor(value)
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
    if bad:
        raise PdenetsError(f"{what} contain(s) {bad} NaN or Inf value(s): the computation "
                           f"diverged or overflowed (try smaller inputs, more depth steps, "
                           f"float64, or check the model)")


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
