"""Discretization invariance: one set of controls at (N, S), (2N, 2S), (4N, 4S), ...

Controls are functions (MODEL.md §2), so one network — here a freshly created 1-D
``ContinuumNetwork`` with a random readout — runs at any width N and any number of depth steps
S. Refining both by 2 each time, the outputs converge: the gaps between consecutive levels
shrink by the factor 2^p of the dominant order (midpoint width rule: p = 2; RK4 in depth: 4),
and the last gap divided by 2^p − 1 estimates the error of the finest level (Richardson). The
figure shows u(x, T) of one input at every resolution and the gaps against N.

MODEL.md §2 (discretization), §1 (lifting, readout).

    python examples/discretization_invariance.py --out DIR [--fast] [--json]
"""

from __future__ import annotations

import math

import _gallery
import torch

import pdenets as pn


def main(argv=None) -> None:
    args = _gallery.parse_args(__doc__, argv)
    levels = (1, 2, 4) if args.fast else (1, 2, 4, 8)
    N0, S0 = 16, 8
    net = pn.ContinuumNetwork.create(8, 3, control_size=5, intervals=4, init_scale=0.45, seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.readout.c.normal_(0.0, 1.0, generator=g)
    xi = torch.randn(16, 8, generator=g, dtype=torch.float64)

    outputs, fields = {}, {}
    for f in levels:
        disc = pn.Discretization(pn.Midpoint(N0 * f), pn.RK4(), S0 * f)
        with torch.no_grad():
            sol = net.solve(xi, disc)
            outputs[f] = net(xi, disc)
        fields[f] = (sol.grid.nodes[:, 0].numpy(), sol.u[0].numpy())
    gaps = [float((outputs[a] - outputs[b]).abs().max()) for a, b in zip(levels, levels[1:])]
    orders = [math.log2(a / b) for a, b in zip(gaps, gaps[1:])]
    p = 2  # the midpoint rule's order dominates RK4's 4
    richardson = gaps[-1] / (2**p - 1)
    same_class = all(torch.equal(outputs[levels[0]].argmax(1), outputs[f].argmax(1))
                     for f in levels)

    plt = _gallery.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for f in levels:
        x, u = fields[f]
        a1.plot(x, u, drawstyle="steps-mid", label=f"N = {N0 * f}, S = {S0 * f}")
    a1.set_xlabel("neuron position x")
    a1.set_ylabel("u(x, T)")
    a1.set_title("terminal field of one input at every resolution", fontsize=9)
    a1.legend(fontsize=7)
    Ns = [N0 * f for f in levels[:-1]]
    a2.loglog(Ns, gaps, "ko-", label="max |y(N,S) − y(2N,2S)|")
    a2.loglog(Ns, [gaps[0] * (Ns[0] / n) ** 2 for n in Ns], "r--", label="slope −2")
    a2.set_xlabel("N (and S = N/2)")
    a2.set_ylabel("output gap")
    a2.set_title("outputs converge under refinement", fontsize=9)
    a2.legend(fontsize=7)
    path = _gallery.save_figure(fig, args.out, "discretization_invariance")

    lines = [f"{'N':>5} {'S':>5}  max |y − y(next)|   observed order"]
    for i, f in enumerate(levels[:-1]):
        order = f"{orders[i - 1]:.3f}" if i > 0 else ""
        lines.append(f"{N0 * f:>5} {S0 * f:>5}  {gaps[i]:.3e}          {order}")
    lines += [f"Richardson error estimate at N = {N0 * levels[-1]}: {richardson:.2e}",
              f"same predicted class at every resolution: {same_class}",
              f"figure: {path}"]
    _gallery.report(args, lines, {
        "widths": [N0 * f for f in levels], "steps": [S0 * f for f in levels],
        "gaps": gaps, "orders": orders, "richardson_error": richardson,
        "same_class": same_class, "figure": str(path),
    })


if __name__ == "__main__":
    main()
