"""Structured kernels — conv/dense forward time ratio (MODEL.md §10).

For 1-D widths N = 256, 1024, 4096 and 2-D widths 16², 32², 64², times the forward solve
(inference, ``torch.no_grad``, float32, explicit Euler) of a network with a dense kernel and of
the same network with a convolution kernel (radius 0.1; direct or FFT by the cost model), best
of ``repeats`` after a warm-up, and prints the ratio t_conv / t_dense (< 1: conv is faster) with
the evaluation the cost model chose.

Usage: ``python -m benchmarks.bench_kernels [--quick] [--threads K] [--json]``
"""

from __future__ import annotations

import json

import torch

import pdenets as pn

from ._common import apply_threads, best_time, script_parser

WIDTHS_1D = (256, 1024, 4096)
WIDTHS_2D = (16, 32, 64)


def time_case(kernel: str, dim: int, width: int, batch: int, steps: int, repeats: int,
              radius: float = 0.1, device: str = "cpu") -> tuple[float, str]:
    """(forward seconds, evaluation) of a ``kernel`` network at ``width`` nodes per axis."""
    shape = (16,) if dim == 1 else (8, 8)
    net = pn.ContinuumNetwork.create(shape, 10, control_size=16 if dim == 1 else 8,
                                     intervals=4, kernel=kernel, kernel_radius=radius, seed=0)
    net = net.to(dtype=torch.float32, device=device)
    disc = pn.Discretization.make("midpoint", width, dim, "euler", steps)
    x = torch.rand(batch, *shape, dtype=torch.float32, device=device)

    def fwd():
        with torch.no_grad():
            net(x, disc)

    plan = "dense"
    if kernel != "dense":
        sched = net.controls.discretize(net.grid(disc.width))
        op, _ = sched.at(0.0, 0.0, 1.0)
        plan = getattr(op, "plan", "dense")
    return best_time(fwd, repeats, device), plan


def run(quick: bool = False, device: str = "cpu") -> dict:
    """``{"rows": [{"dim", "width", "N", "dense_seconds", "conv_seconds", "ratio", "plan"}]}``."""
    batch, steps, repeats = (32, 4, 2) if quick else (64, 8, 3)
    rows = []
    for dim, widths in ((1, WIDTHS_1D), (2, WIDTHS_2D)):
        for w in widths:
            td, _ = time_case("dense", dim, w, batch, steps, repeats, device=device)
            tc, plan = time_case("conv", dim, w, batch, steps, repeats, device=device)
            rows.append({"dim": dim, "width": w, "N": w ** dim, "dense_seconds": td,
                         "conv_seconds": tc, "ratio": tc / td, "plan": plan})
    return {"batch": batch, "steps": steps, "radius": 0.1, "rows": rows}


def main(argv=None) -> None:
    p = script_parser(__doc__)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    apply_threads(a)
    r = run(a.quick, a.device)
    if a.json:
        print(json.dumps(r))
        return
    print(f"forward, batch {r['batch']}, {r['steps']} Euler steps, conv radius {r['radius']}")
    for row in r["rows"]:
        w = f"{row['width']}" if row["dim"] == 1 else f"{row['width']}²"
        print(f"  d={row['dim']} N={w:>6}: dense {row['dense_seconds'] * 1e3:9.2f} ms  "
              f"conv ({row['plan']:6}) {row['conv_seconds'] * 1e3:8.2f} ms  "
              f"ratio conv/dense {row['ratio']:.3f}")


if __name__ == "__main__":
    main()
