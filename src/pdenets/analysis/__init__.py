"""Analysis toolkit (MODEL.md §3, §6, §9 and large-time behaviour).

* :mod:`.stability` — Gronwall bounds vs observed sensitivities, Lipschitz estimates (§3).
"""

from .stability import gronwall_factor

__all__ = ["gronwall_factor"]
