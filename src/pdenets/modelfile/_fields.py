"""Typed readers of model-file metadata entries (:mod:`pdenets.modelfile`).

Each reads one entry of a parsed JSON object and raises
:class:`~pdenets.errors.ModelFileError` naming the entry when it is missing, of the wrong type
or out of range; unknown keys are rejected (a damaged key name must not silently select a
default).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ModelFileError


def _get(d: dict, key: str, typ, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ModelFileError(f"model file: missing key {where}.{key}")
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise ModelFileError(f"model file: {where}.{key} has the wrong type ({type(v).__name__})")
    return v


def _number(d: dict, key: str, where: str, lo: float, hi: float, *, open_lo: bool = False,
            integer: bool = False) -> Any:
    """A number (an int if ``integer``) in [lo, hi] — (lo, hi] if ``open_lo``; NaN fails."""
    v = _get(d, key, int if integer else float, where)
    if not ((lo < v if open_lo else lo <= v) and v <= hi):
        interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
        raise ModelFileError(f"model file: {where}.{key} = {v!r} is out of range {interval}")
    return v


def _keys(d: dict, allowed: set[str], where: str) -> dict:
    """Reject unknown keys: a damaged key name must not silently select a default."""
    if not isinstance(d, dict):
        raise ModelFileError(f"model file: {where} must be a JSON object")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ModelFileError(f"model file: unknown key(s) in {where}: "
                             f"{', '.join(map(repr, unknown))[:200]}")
    return d


def _int_list(v, where: str, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or not all(
        isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 65536 for k in v
    ):
        raise ModelFileError(f"model file: {where} must be a list of positive integers")
    if length is not None and len(v) != length:
        raise ModelFileError(f"model file: {where} must have {length} entries")
    return tuple(v)


def _grid_size(d: dict, key: str, where: str, dim: int, limit: int) -> tuple[int, ...]:
    size = _int_list(d.get(key), f"{where}.{key}", dim)
    if math.prod(size) > limit:
        raise ModelFileError(f"model file: {where}.{key} {list(size)} has {math.prod(size)} "
                             f"points; the limit is {limit}")
    return size


def _opt_str(d: dict, key: str, where: str, default: str = "linear") -> str:
    """An optional string entry (files written before the entry existed lack it)."""
    return _get(d, key, str, where) if key in d else default
