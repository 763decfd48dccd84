"""Parameter bookkeeping shared by the analyses (private)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def frozen_parameters(params: nn.Module | Iterable[torch.Tensor]) -> Iterator[None]:
    """Temporarily switch off ``requires_grad`` of parameters; restored on exit.

    Parameters
    ----------
    params : torch.nn.Module or iterable of torch.Tensor
        A module (all its parameters) or the parameters themselves. Only those that require
        gradients on entry are switched off, and exactly those are switched back on, also when
        the body raises.
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    switched = [p for p in params if p.requires_grad]
    for p in switched:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in switched:
            p.requires_grad_(True)
