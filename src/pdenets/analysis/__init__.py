"""Analysis toolkit (MODEL.md §3, §6, §9 and the large-time behaviour of §1).

* :mod:`.stability` (the bound itself in :mod:`.gronwall`) — Gronwall bounds against observed
  sensitivities to input and control perturbations; power-iteration Lipschitz estimates of
  u(0) ↦ u(T) (§3).
* :mod:`.hessian` — reduced objective, Hessian-vector products, Lanczos, second-order
  certification of critical points: strict minimizer / saddle (with a verified descent
  direction) / degenerate (§6).
* :mod:`.controllability` — terminal misfit against α → 0, depth T and sample count K, by
  L-BFGS (§9).
* :mod:`.steady_state` — steady states of time-independent controls by Newton, the spectrum of
  the linearization, stability verdict and a confirming large-time simulation (§1).

See ``docs/analysis.md`` for usage and the command-line front end ``pdenets analyze``.
"""

from .controllability import (
    ControllabilityReport,
    FitResult,
    controllability_study,
    fit,
    misfit_vs_alpha,
    misfit_vs_horizon,
    misfit_vs_samples,
    terminal_misfit,
)
from .hessian import (
    HessianReport,
    LanczosResult,
    ReducedObjective,
    certify,
    lanczos,
    select_parameters,
)
from .stability import (
    LipschitzEstimate,
    NormIntegral,
    SensitivityReport,
    StabilityReport,
    control_sensitivity,
    flow_map,
    gronwall_factor,
    input_sensitivity,
    integrated_operator_norm,
    lipschitz_estimate,
    operator_norm,
    operator_norm_integral,
    stability_report,
    weighted_norm,
)
from .steady_state import (
    FrozenControls,
    SteadyStateReport,
    analyze_steady_state,
    find_steady_state,
    frozen_operator,
    linearization,
    simulate_near,
)

__all__ = [
    "ControllabilityReport", "FitResult", "FrozenControls", "HessianReport", "LanczosResult",
    "LipschitzEstimate", "NormIntegral", "ReducedObjective", "SensitivityReport",
    "StabilityReport", "SteadyStateReport", "analyze_steady_state", "certify",
    "control_sensitivity", "controllability_study", "find_steady_state", "fit", "flow_map",
    "frozen_operator", "gronwall_factor", "input_sensitivity",
    "integrated_operator_norm", "lanczos", "linearization", "lipschitz_estimate",
    "misfit_vs_alpha", "misfit_vs_horizon", "misfit_vs_samples", "operator_norm",
    "operator_norm_integral", "select_parameters", "simulate_near", "stability_report",
    "terminal_misfit", "weighted_norm",
]
