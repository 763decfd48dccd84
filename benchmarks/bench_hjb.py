"""Benchmark of the HJB grid solver (MODEL.md §8): throughput and peak memory against D and n.

For each state dimension D (= width nodes, one sample) and points per dimension n, one solve of
a short horizon (about ``--steps`` CFL steps) runs in a fresh subprocess, which reports

* grid points × time steps per second (the solver's own timer, excluding start-up),
* the peak resident memory added by the solve (``resource.getrusage`` high-water mark minus the
  mark before the solve; torch's CPU allocations are invisible to tracemalloc),
* the solver's a-priori estimate (``pdenets.hjb.estimate_memory``).

Two Hamiltonians: ``tanh`` (w and b controls, discrete control set + Newton per row) and
``affine`` (σ = identity, bias control, closed-form infimum). The table ends with the largest n
per D that the default memory limit admits — where the grid solver stops scaling.

Usage::

    python benchmarks/bench_hjb.py --quick          # < 60 s
    python benchmarks/bench_hjb.py                  # full sweep
    python benchmarks/bench_hjb.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

QUICK = {
    "tanh": {1: [1601], 2: [41, 81], 3: [17, 33], 4: [9, 13]},
    "affine": {2: [81], 4: [13]},
}
FULL = {
    "tanh": {1: [401, 1601, 6401], 2: [41, 81, 161, 321], 3: [17, 33, 49, 65],
             4: [9, 13, 17, 21, 25]},
    "affine": {1: [1601, 6401], 2: [161, 321], 3: [33, 65], 4: [17, 25]},
}


def _problem(kind: str, D: int, steps: int, n: int):
    import pdenets as pn
    from pdenets.hjb import ReducedProblem, StateGrid

    grid = StateGrid(-1.0, 1.0, n, D)
    h = 2.0 / (n - 1)
    if kind == "tanh":
        # |f_d| <= 1 for tanh, so the CFL step is 0.9 h / D: T gives about `steps` steps
        T = steps * 0.9 * h / D
        prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(D), 1, "wb", alpha=0.2, T=T,
                              target=[0.3] * D)
    else:
        # speeds |b*_d| = |p_d|/(α ω_d) <= |v_d − y_d| / α · (1 + ...) ~ 2.6 D at t = T
        T = steps * 0.9 * h / (2.6 * D * D)
        prob = ReducedProblem(pn.Standard("identity"), pn.Midpoint(D), 1, "b", alpha=0.5,
                              T=T, target=[0.3] * D)
    return prob, grid


def child(spec: dict) -> dict:
    """Run one configuration (in a fresh process) and return its measurements."""
    import torch

    from pdenets.hjb import HJBOptions, estimate_memory, solve_hjb

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    prob, grid = _problem(spec["kind"], spec["D"], spec["steps"], spec["n"])
    opts = HJBOptions(snapshots=2)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sol = solve_hjb(prob, grid, opts)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **spec, "points": grid.size, "time_steps": sol.stats["steps"],
        "seconds": sol.stats["seconds"], "rate": sol.stats["point_steps_per_second"],
        "estimate_mib": estimate_memory(prob, grid, opts) / 2**20,
        "peak_mib": max(rss1 - rss0, 0) / 1024.0,  # ru_maxrss is in KiB on Linux
        "threads_used": torch.get_num_threads(),
    }


def limits_table() -> list[dict]:
    """Largest points per dimension admitted by the default memory limit, per D (tanh)."""
    import pdenets as pn
    from pdenets.hjb import HJBOptions, ReducedProblem, _default_memory_limit, estimate_memory

    limit = _default_memory_limit()
    rows = []
    for D in range(1, 7):
        prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(D), 1, "wb")
        lo, hi = 3, 10**7
        while lo < hi:  # largest n with estimate <= limit (snapshots=11)
            mid = (lo + hi + 1) // 2
            est = estimate_memory(prob, _Fake(mid, D), HJBOptions())  # type: ignore[arg-type]
            if est <= limit:
                lo = mid
            else:
                hi = mid - 1
        rows.append({"D": D, "max_points_per_dim": lo, "grid_points": lo**D,
                     "limit_gib": limit / 2**30})
    return rows


class _Fake:
    """A stand-in with the attributes :func:`estimate_memory` reads (no allocation)."""

    def __init__(self, n: int, D: int) -> None:
        self.size, self.D, self.shape = n**D, D, (n,) * D


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sweep (< 60 s)")
    ap.add_argument("--steps", type=int, default=None,
                    help="time steps per solve, about (default 10; 6 with --quick)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    sweep = QUICK if args.quick else FULL
    if args.steps is None:
        args.steps = 6 if args.quick else 10
    rows = []
    t0 = time.perf_counter()
    for kind, per_d in sweep.items():
        for D, ns in per_d.items():
            for n in ns:
                spec = {"kind": kind, "D": D, "n": n, "steps": args.steps,
                        "threads": args.threads}
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                if not args.json:
                    r = rows[-1]
                    print(f"{kind:6s} D={D} n={n:5d} P={r['points']:>9d} steps={r['time_steps']:3d}"
                          f" {r['seconds']:7.2f}s {r['rate']:12.4g} pt-steps/s "
                          f"est {r['estimate_mib']:8.1f} MiB  peak +{r['peak_mib']:8.1f} MiB",
                          flush=True)
    lim = limits_table()
    elapsed = time.perf_counter() - t0
    # where it stops scaling: throughput per kind relative to its best
    notes = []
    for kind in sweep:
        rk = [r for r in rows if r["kind"] == kind]
        best = max(r["rate"] for r in rk)
        slow = [r for r in rk if r["rate"] < 0.5 * best]
        if slow:
            notes.append(f"{kind}: throughput falls below half its best ({best:.3g} pt-steps/s) "
                         "at " + ", ".join(f"D={r['D']} n={r['n']}" for r in slow))
        else:
            notes.append(f"{kind}: throughput within 2x of its best ({best:.3g} pt-steps/s) "
                         "for all sizes run")
    if args.json:
        print(json.dumps({"rows": rows, "limits": lim, "notes": notes, "seconds": elapsed}))
        return 0
    print("\nlargest grid admitted by the default memory limit "
          f"({lim[0]['limit_gib']:.3g} GiB), tanh, 11 snapshots:")
    for r in lim:
        cap = " (search cap)" if r["max_points_per_dim"] >= 10**7 else ""
        print(f"  D={r['D']}: n <= {r['max_points_per_dim']} per dimension{cap} "
              f"({r['grid_points']:.3g} points)")
    print("\n" + "\n".join(notes))
    print(f"\n(total {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
