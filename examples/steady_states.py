"""Steady states of weight-tied networks: Newton, spectrum, and a confirming simulation.

Time-independent controls make the forward problem autonomous (a weight-tied network, MODEL.md
§1); its steady states solve σ(∫ w u* dy + b) + ε Δu* = 0 and their stability is read off the
spectrum of the linearization. ``pdenets.analysis.analyze_steady_state`` finds u* by damped
Newton, computes the spectrum of f'(u*), gives the verdict (max Re λ < 0: asymptotically
stable) and confirms it by a long forward solve from perturbations of u*.

Three cases, σ = tanh, ε = 0.05, midpoint width rule:

* w ≡ −1, b ≡ 0.3: u* ≡ 0.3, spectrum {−1} ∪ {ε μ_j} with the eigenvalues
  μ_j = −4n² sin²(jπ/2n) of the discrete Neumann Laplacian — stable;
* w ≡ +1, b ≡ 0.3: u* ≡ −0.3, spectrum {+1} ∪ {ε μ_j} — unstable;
* a non-uniform kernel w(x, y) = −2 exp(−(x − y)²/0.05) and b(x) = 0.5 sin(2πx): no closed
  form; the simulated decay rate matches max Re λ.

MODEL.md §1 (weight-tied networks, steady states), §3 (stability).

    python examples/steady_states.py --out DIR [--fast] [--json]
"""

from __future__ import annotations

import math

import _gallery
import numpy as np
import torch

import pdenets as pn
from pdenets.analysis import analyze_steady_state

EPS = 0.05
TOP = 8  # eigenvalues shown in the figure


def constant_controls(a: float, beta: float) -> pn.FunctionControls:
    """w ≡ a, b ≡ beta (independent of depth)."""
    return pn.FunctionControls(lambda x, y, t: a + 0.0 * (x[..., 0] + y[..., 0]),
                               lambda x, t: beta + 0.0 * x[..., 0], time_dependent=False)


def nonuniform_controls() -> pn.FunctionControls:
    return pn.FunctionControls(
        lambda x, y, t: -2.0 * torch.exp(-((x[..., 0] - y[..., 0]) ** 2) / 0.05),
        lambda x, t: 0.5 * torch.sin(2 * math.pi * x[..., 0]), time_dependent=False)


def main(argv=None) -> None:
    args = _gallery.parse_args(__doc__, argv)
    n = 12 if args.fast else 32
    horizon = 10.0 if args.fast else 20.0
    grid = pn.Midpoint(n).grid()
    dynamics = pn.Standard("tanh", eps=EPS)
    cases = {"stable (w ≡ −1)": constant_controls(-1.0, 0.3),
             "unstable (w ≡ +1)": constant_controls(1.0, 0.3),
             "non-uniform kernel": nonuniform_controls()}
    reports = {name: analyze_steady_state(ctrl, dynamics, grid, horizon=horizon)
               for name, ctrl in cases.items()}

    plt = _gallery.pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.8))
    fig.subplots_adjust(wspace=0.3)
    x = grid.nodes[:, 0].numpy()
    mu = np.array([-4 * n**2 * math.sin(j * math.pi / (2 * n)) ** 2 for j in range(1, n)])
    for (name, rep), c in zip(reports.items(), ("tab:blue", "tab:red", "tab:green")):
        a1.plot(x, rep.u.numpy(), ".-", color=c, label=name)
        a2.plot(range(1, TOP + 1), rep.eigenvalues_real[:TOP], "o", color=c, mfc="none",
                label=name)
        if rep.simulation is not None:
            a3.semilogy(rep.simulation.times, rep.simulation.distances, color=c,
                        label=f"{name}: rate {rep.simulation.observed_rate:.3f}")
    for a, c in ((-1.0, "tab:blue"), (1.0, "tab:red")):
        closed = np.sort(np.r_[a, EPS * mu])[::-1][:TOP]
        a2.plot(range(1, TOP + 1), closed, "x", color=c, ms=6)
    a1.set_xlabel("x")
    a1.set_ylabel("u*(x)")
    a1.set_title("steady states (Newton)", fontsize=9)
    a1.legend(fontsize=7)
    a2.set_xlabel("k")
    a2.set_ylabel("Re λ_k (largest first)")
    a2.set_title(f"top {TOP} of the spectrum of f'(u*) (×: closed form {{a}} ∪ {{εμ_j}})",
                 fontsize=9)
    a2.axhline(0.0, color="k", lw=0.5)
    a2.legend(fontsize=7)
    a3.set_xlabel("t")
    a3.set_ylabel("max ‖u(t) − u*‖_ω")
    a3.set_title("simulation from perturbations of u*", fontsize=9)
    a3.legend(fontsize=7)
    path = _gallery.save_figure(fig, args.out, "steady_states")

    payload: dict = {"n": n, "eps": EPS, "horizon": horizon, "cases": {},
                     "figure": str(path)}
    lines = [f"σ = tanh, ε = {EPS}, midpoint n = {n}"]
    for name, rep in reports.items():
        sim = rep.simulation
        u = rep.u.numpy()
        payload["cases"][name] = {
            "u_min": float(u.min()), "u_max": float(u.max()), "residual": rep.residual,
            "eigenvalues_real": rep.eigenvalues_real, "eigenvalues_imag": rep.eigenvalues_imag,
            "max_real": rep.max_real, "verdict": rep.verdict, "agrees": rep.agrees,
            "observed_rate": None if sim is None else sim.observed_rate,
            "simulation_verdict": None if sim is None else sim.verdict,
        }
        lines.append(f"{name}: u* in [{u.min():.6f}, {u.max():.6f}] (residual "
                     f"{rep.residual:.1e}), max Re λ = {rep.max_real:.6f} → {rep.verdict}; "
                     f"simulation {sim.verdict if sim else '-'}, observed rate "
                     f"{sim.observed_rate if sim else float('nan'):.4f}")
    lines.append(f"closed form ε μ_1 = {EPS * mu[0]:.6f}")
    lines.append(f"figure: {path}")
    _gallery.report(args, lines, payload)


if __name__ == "__main__":
    main()
