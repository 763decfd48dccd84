"""Exceptions raised by pdenets.

Every error that bad input can cause is a :class:`PdenetsError` (a ``ValueError``), whose message
names the offending argument, option or file. The command-line tool turns them into a one-line
message and a non-zero exit status.
"""

from __future__ import annotations


class PdenetsError(ValueError):
    """Bad input to pdenets: wrong shape, non-finite value, unknown option, invalid setting."""


class ModelFileError(PdenetsError):
    """A model file is missing, corrupt, truncated, or holds unexpected content."""


class ConfigError(PdenetsError):
    """A configuration file or ``--set key=value`` override is invalid."""


class StabilityError(PdenetsError):
    """An explicit depth step violates the stability limit of the diffusion term (MODEL.md §2)."""
