"""Adjoint memory: peak memory of one gradient against the number of depth steps.

Two ways to differentiate the discretized learning problem (MODEL.md §5): the discrete adjoint
(automatic differentiation through the solver; it keeps every step's state, so its memory
grows linearly in S — with checkpointing every ~√S steps it grows like √S) and the continuous
adjoint (the adjoint PDE solved backward with its own integrator, re-anchored at a fixed number
of stored states: memory independent of S). Peak memory is measured on the CPU with the torch
profiler (``profile_memory=True``): the running sum of all allocations and frees during the
forward solve and ``backward()``, its maximum above the starting level. The two gradients also
agree more closely as S grows (the continuous adjoint is consistent, MODEL.md §5).

MODEL.md §5 (adjoint and gradient), §4 (objective).

    python examples/adjoint_memory.py --out DIR [--fast] [--json]
"""

from __future__ import annotations

import math

import _gallery
import torch
from torch.profiler import ProfilerActivity, profile

import pdenets as pn


def peak_bytes(fn) -> int:
    """Peak of the running sum of CPU allocations (bytes) while ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def main(argv=None) -> None:
    args = _gallery.parse_args(__doc__, argv)
    steps = (8, 16, 32, 64) if args.fast else (16, 32, 64, 128, 256, 512)
    batch, width = (32, 32) if args.fast else (64, 64)
    net = pn.ContinuumNetwork.create(16, 4, intervals=4, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.readout.c.normal_(0.0, 1.0, generator=g)
    x = torch.randn(batch, 16, generator=g)
    y = torch.randint(0, 4, (batch,), generator=g)
    J = pn.Objective("cross_entropy")

    def gradient(adjoint, S):
        disc = pn.Discretization(pn.Midpoint(width), pn.Euler(), S)
        net.zero_grad()
        J(net, x, y, disc, adjoint=adjoint).backward()

    strategies = {
        "discrete": lambda S: pn.DiscreteAdjoint(),
        "checkpointed": lambda S: pn.DiscreteAdjoint(checkpoint=max(1, round(math.sqrt(S)))),
        "continuous": lambda S: pn.ContinuousAdjoint(),
    }
    peak_bytes(lambda: gradient(pn.DiscreteAdjoint(), 2))  # warm up the profiler
    peaks: dict[str, list[float]] = {k: [] for k in strategies}
    rel_diff = []
    for S in steps:
        grads = {}
        for name, make in strategies.items():
            peaks[name].append(peak_bytes(lambda make=make, S=S: gradient(make(S), S)) / 2**20)
            grads[name] = net.controls.w.grad.detach().clone()
        rel_diff.append(float((grads["continuous"] - grads["discrete"]).norm()
                              / grads["discrete"].norm()))

    def slope(v):
        return math.log(v[-1] / v[0]) / math.log(steps[-1] / steps[0])

    slopes = {k: slope(v) for k, v in peaks.items()}

    plt = _gallery.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, v), m in zip(peaks.items(), "os^"):
        a1.loglog(steps, v, m + "-", label=f"{name} (slope {slopes[name]:.2f})")
    a1.set_xlabel("depth steps S")
    a1.set_ylabel("peak gradient memory [MiB]")
    a1.set_title(f"B = {batch}, N = {width}, float32, Euler", fontsize=9)
    a1.legend(fontsize=7)
    a2.loglog(steps, rel_diff, "ko-", label="‖∇_cont − ∇_disc‖ / ‖∇_disc‖")
    a2.loglog(steps, [rel_diff[0] * steps[0] / s for s in steps], "r--", label="slope −1")
    a2.set_xlabel("depth steps S")
    a2.set_title("continuous adjoint → discrete gradient (Euler: order 1)", fontsize=9)
    a2.legend(fontsize=7)
    path = _gallery.save_figure(fig, args.out, "adjoint_memory")

    lines = [f"{'S':>5} " + " ".join(f"{k:>13}" for k in peaks) + "  rel. grad diff",
             *(f"{S:>5} " + " ".join(f"{peaks[k][i]:>9.3f} MiB" for k in peaks)
               + f"  {rel_diff[i]:.2e}" for i, S in enumerate(steps)),
             "log-log slope of memory in S: "
             + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()),
             f"figure: {path}"]
    _gallery.report(args, lines, {
        "steps": list(steps), "batch": batch, "width": width, "peak_mib": peaks,
        "slopes": slopes, "rel_grad_diff": rel_diff, "figure": str(path),
    })


if __name__ == "__main__":
    main()
