"""Private input-validation helpers shared by all modules."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from .errors import PdenetsError

_VALUE_CHECKS = True


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Switch the per-call *value* checks (finite inputs, label ranges) on or off.

    These checks read device values back to the host (a synchronization); the training loop
    checks its data once and runs its steps with them off (the hot path of MODEL.md §2).
    Shape and type checks are not affected."""
    global _VALUE_CHECKS
    old, _VALUE_CHECKS = _VALUE_CHECKS, bool(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS = old


def value_checks_enabled() -> bool:
    """Whether per-call value checks run (off inside :func:`value_checks(False)
    <value_checks>` and while ``torch.compile`` traces)."""
    return _VALUE_CHECKS and not torch.compiler.is_compiling()


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`PdenetsError` when ``x`` contains NaN or Inf (a host synchronization;
    skipped where :func:`value_checks` switched the value checks off, and
    while ``torch.compile`` traces: the data-dependent test would split the graph)."""
    if not torch.is_tensor(x):
        raise PdenetsError(f"{name} must be a tensor, got {type(x).__name__}")
    if (x.is_floating_point() and value_checks_enabled()
            and not bool(torch.isfinite(x).all())):
        n_bad = int((~torch.isfinite(x)).sum())
        raise PdenetsError(f"{name} contains {n_bad} non-finite value(s) (NaN or Inf)")
    return x


def check_positive(value: float, name: str, *, integer: bool = False) -> None:
    """Raise unless ``value`` is a finite positive number (an integer ≥ 1 if ``integer``)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PdenetsError(f"{name} must be a positive integer, got {value!r}")
        return
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PdenetsError(f"{name} must be a finite positive number, got {value!r}")


def check_nonnegative(value: float, name: str) -> None:
    """Raise unless ``value`` is a finite number ≥ 0."""
    try:
        ok = math.isfinite(float(value)) and float(value) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PdenetsError(f"{name} must be a finite number >= 0, got {value!r}")


def check_choice(value: str, choices: Iterable[str], name: str) -> str:
    """Raise unless ``value`` is one of ``choices``; the message lists them."""
    choices = list(choices)
    if value not in choices:
        raise PdenetsError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value
