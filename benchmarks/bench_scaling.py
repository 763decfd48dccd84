"""Figure 5 — scaling: forward and gradient time against width N, steps S and batch B.

From a base size (B, N, S), one of N, S, B is varied at a time; the forward time (inference,
``torch.no_grad``) and the gradient time (forward + ``backward()`` with the default discrete
adjoint, autograd) are measured, best of ``repeats`` after a warm-up, float32, explicit Euler.
The exponents are least-squares slopes in log-log coordinates; the cost model O(S·B·N²)
predicts 2 in N and 1 in S and B (small sizes fall short of it: fixed per-step overheads).
A log-log plot with the fitted exponents is written as a PNG.

Usage: ``python -m benchmarks.bench_scaling [--quick] [--out bench-results] [--json]``
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ._common import (
    FULL,
    QUICK,
    Sizes,
    apply_threads,
    best_time,
    fit_exponent,
    make_batch,
    make_net,
    script_parser,
)

EXPECTED = {"N": 2.0, "S": 1.0, "B": 1.0}


def time_case(batch: int, width: int, steps: int, device: str = "cpu", repeats: int = 3,
              dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(forward seconds, forward + gradient seconds) at one size."""
    net, disc = make_net(width, dtype, device, "euler", steps)
    x, y = make_batch(batch, dtype, device)

    def fwd():
        with torch.no_grad():
            net(x, disc)

    def grad():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, disc), y).backward()

    return best_time(fwd, repeats, device), best_time(grad, repeats, device)


def run(sizes: Sizes = FULL, device: str = "cpu", plot: str | Path | None = None) -> dict:
    """Figure 5 for the suite: ``{"exponents": {"forward": {...}, "gradient": {...}}, ...}``."""
    B0, N0, S0 = sizes.scl_base
    sweeps = {"N": sizes.scl_N, "S": sizes.scl_S, "B": sizes.scl_B}
    data: dict = {}
    for var, values in sweeps.items():
        rows = []
        for v in values:
            size = {"B": B0, "N": N0, "S": S0, var: v}
            tf, tg = time_case(size["B"], size["N"], size["S"], device, sizes.scl_repeats)
            rows.append({var: v, "forward_seconds": tf, "gradient_seconds": tg})
        data[var] = rows
    exps = {kind: {var: fit_exponent([r[var] for r in rows],
                                     [r[f"{kind}_seconds"] for r in rows])
                   for var, rows in data.items()}
            for kind in ("forward", "gradient")}
    out = {"exponents": exps, "expected": EXPECTED, "base": {"B": B0, "N": N0, "S": S0},
           "times": data}
    if plot is not None:
        out["plot"] = str(plot_scaling(out, plot))
    return out


def plot_scaling(res: dict, path: str | Path) -> Path:
    """Log-log plot of the times of :func:`run` with the fitted exponents; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    base = res["base"]
    for ax, (var, rows) in zip(axes, res["times"].items()):
        xs = [r[var] for r in rows]
        for kind, marker in (("forward", "o"), ("gradient", "s")):
            ys = [r[f"{kind}_seconds"] for r in rows]
            ax.loglog(xs, ys, marker=marker, base=2,
                      label=f"{kind}: slope {res['exponents'][kind][var]:.2f}")
        # reference slope through the first gradient point
        ref = [rows[0]["gradient_seconds"] * (x / xs[0]) ** res["expected"][var] for x in xs]
        ax.loglog(xs, ref, "k:", base=2, label=f"slope {res['expected'][var]:g} (model)")
        fixed = ", ".join(f"{k}={v}" for k, v in base.items() if k != var)
        ax.set_xlabel(f"{var}  ({fixed})")
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("pdenets scaling: forward and gradient time (explicit Euler, float32)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    p = script_parser(__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench-results")
    a = p.parse_args(argv)
    apply_threads(a)
    r = run(QUICK if a.quick else FULL, a.device, Path(a.out) / "scaling.png")
    if a.json:
        print(json.dumps(r))
        return
    print(f"base {r['base']}; exponents (expected {r['expected']}); plot {r['plot']}")
    for kind, e in r["exponents"].items():
        print(f"  {kind:9} " + "  ".join(f"{k}: {v:.2f}" for k, v in e.items()))


if __name__ == "__main__":
    main()
