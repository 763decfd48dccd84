"""Step-size controllers of the adaptive solvers (MODEL.md §2): I and PI control
(Hairer–Wanner II §IV.2; Gustafsson 1991; Söderlind 2002)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._checks import check_choice
from ..errors import PdenetsError


class StepSizeController:
    """Base class of step-size controllers (cf. Diffrax's ``AbstractStepSizeController``).

    A controller is stateless; the state of one integration (e.g. the previous error) is
    created by :meth:`init` and threaded through :meth:`adapt`.
    """

    name = "controller"

    def init(self) -> Any:
        """State at the start of an integration."""
        return None

    def adapt(self, h: float, err: float, error_order: int, state: Any
              ) -> tuple[bool, float, Any]:
        """Decide on an attempted step of size |h| with scaled error norm ``err`` (accept if
        ≤ 1) of an embedded pair of error order k (the lower order + 1).

        Returns ``(accept, next |h|, new state)``.
        """
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class IController(StepSizeController):
    """Integral (elementary) controller: h_new = h · clip(safety · err^(−1/k)),
    clipped to [factor_min, factor_max] after an accepted step and to [factor_reject, 1] after a
    rejected one; a non-finite error divides h by 10 (Hairer–Nørsett–Wanner I, §II.4)."""

    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 5.0
    factor_reject: float = 0.1
    name = "i"

    def adapt(self, h, err, error_order, state):
        if not math.isfinite(err):
            return False, h * self.factor_reject, state
        fac = self.safety * (max(err, 1e-10) ** (-1 / error_order))
        if err <= 1.0:
            return True, h * min(self.factor_max, max(self.factor_min, fac)), state
        return False, h * min(1.0, max(self.factor_reject, fac)), state

    def config(self) -> dict:
        return {"name": self.name, "safety": self.safety}


@dataclass(frozen=True)
class PIController(StepSizeController):
    """Proportional–integral controller (Gustafsson 1991; Hairer–Wanner II, §IV.2, eq. 2.43c;
    Söderlind 2002; Diffrax's ``PIDController(pcoeff, icoeff)``): after an accepted step

        h_new = h · clip( safety · err_n^(−(pcoeff + icoeff)/k) · err_{n−1}^(pcoeff/k) ),

    with err_{n−1} the error of the previous accepted step (floored at 1e-4, 1 at the start),
    clipped to [factor_min, factor_max] — and to at most 1 right after a rejection. A rejected
    step is retried with the integral factor safety · err^(−1/k) clipped to
    [factor_reject, 1]. The defaults pcoeff = 0.4, icoeff = 0.3 are Gustafsson's
    (β₁ = 0.7/k, β₂ = 0.4/k); pcoeff = 0 is the I controller.
    """

    pcoeff: float = 0.4
    icoeff: float = 0.3
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 5.0
    factor_reject: float = 0.1
    name = "pi"

    def __post_init__(self) -> None:
        if not (self.icoeff > 0 and self.pcoeff >= 0):
            raise PdenetsError(
                f"PIController needs icoeff > 0 and pcoeff >= 0, got icoeff={self.icoeff!r}, "
                f"pcoeff={self.pcoeff!r}")

    def init(self):
        return (1.0, False)  # previous accepted error, last attempt rejected

    def adapt(self, h, err, error_order, state):
        prev, rejected = state
        if not math.isfinite(err):
            return False, h * self.factor_reject, (prev, True)
        e = max(err, 1e-10)
        if err <= 1.0:
            k = float(error_order)
            fac = self.safety * e ** (-(self.pcoeff + self.icoeff) / k) * prev ** (self.pcoeff / k)
            fac = min(self.factor_max, max(self.factor_min, fac))
            if rejected:
                fac = min(fac, 1.0)
            return True, h * fac, (max(err, 1e-4), False)
        fac = self.safety * e ** (-1.0 / error_order)
        return False, h * min(1.0, max(self.factor_reject, fac)), (prev, True)

    def config(self) -> dict:
        return {"name": self.name, "pcoeff": self.pcoeff, "icoeff": self.icoeff,
                "safety": self.safety}


CONTROLLERS: dict[str, type[StepSizeController]] = {"i": IController, "pi": PIController}


def make_controller(controller: str | StepSizeController | None) -> StepSizeController:
    """A step-size controller by name (``i``, ``pi``) or instance (default: I)."""
    if controller is None:
        return IController()
    if isinstance(controller, StepSizeController):
        return controller
    if not isinstance(controller, str):
        raise PdenetsError(f"controller must be a name or a StepSizeController, got "
                           f"{controller!r}")
    return CONTROLLERS[check_choice(controller, CONTROLLERS, "step-size controller")]()
