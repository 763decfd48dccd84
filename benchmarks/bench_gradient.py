"""Figure 2 — gradient cost: (forward + gradient) time ÷ forward time, per gradient strategy.

The forward time is one inference solve (``torch.no_grad``); the gradient time is one
``loss.backward()`` of the cross-entropy of the outputs, forward included, with each strategy:

* ``discrete`` — ``DiscreteAdjoint()``: autograd through the steps (the exact discrete gradient);
* ``discrete_checkpointed`` — ``DiscreteAdjoint(checkpoint=k)``, k = round(√S);
* ``continuous`` — ``ContinuousAdjoint()``: the costate equation solved backward (MODEL.md §5).

For reference the same ratio is measured for autograd through the equivalent plain PyTorch
ResNet (:class:`benchmarks.peers.TorchResNet`, same weights, explicit Euler). Best of
``repeats`` after a warm-up; float32. Target: ratio ≤ 3.

Usage: ``python -m benchmarks.bench_gradient [--batch 1024 --width 256 --steps 64] [--json]``
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

import pdenets as pn

from ._common import FULL, Sizes, apply_threads, best_time, make_batch, make_net, script_parser
from .peers import TorchResNet


def strategies(steps: int) -> dict[str, pn.Adjoint]:
    """The gradient strategies compared (checkpoint interval k = round(√S))."""
    k = max(1, round(math.sqrt(steps)))
    return {
        "discrete": pn.DiscreteAdjoint(),
        "discrete_checkpointed": pn.DiscreteAdjoint(checkpoint=k),
        "continuous": pn.ContinuousAdjoint(),
    }


def grad_cost(batch: int = 1024, width: int = 256, steps: int = 64,
              dtype: torch.dtype = torch.float32, device: str = "cpu", repeats: int = 3,
              solver: str = "euler") -> dict:
    """Seconds of a forward and of forward + gradient per strategy, and their ratios."""
    net, disc = make_net(width, dtype, device, solver, steps)
    x, y = make_batch(batch, dtype, device)

    def forward():
        with torch.no_grad():
            net(x, disc)

    def gradient(adjoint):
        def fn():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x, disc, adjoint), y).backward()
        return fn

    t_fwd = best_time(forward, repeats, device)
    out = {"batch": batch, "width": width, "steps": steps, "solver": solver,
           "dtype": str(dtype).replace("torch.", ""), "forward_seconds": t_fwd,
           "strategies": {}}
    for name, adj in strategies(steps).items():
        t = best_time(gradient(adj), repeats, device)
        out["strategies"][name] = {"seconds": t, "ratio": t / t_fwd, "adjoint": adj.config()}
    if solver == "euler":
        res = TorchResNet.from_pdenets(net, disc)
        for p in res.parameters():
            p.requires_grad_(True)

        def res_fwd():
            with torch.no_grad():
                res(x)

        def res_grad():
            res.zero_grad(set_to_none=True)
            F.cross_entropy(res(x), y).backward()

        tf = best_time(res_fwd, repeats, device)
        tg = best_time(res_grad, repeats, device)
        out["torch_resnet"] = {"forward_seconds": tf, "seconds": tg, "ratio": tg / tf}
    return out


def run(sizes: Sizes = FULL, device: str = "cpu") -> dict:
    """Figure 2 for the suite: ``{"ratio": {strategy: ratio}, "detail": grad_cost(...)}``."""
    d = grad_cost(sizes.grad_batch, sizes.grad_width, sizes.grad_steps, torch.float32, device,
                  sizes.grad_repeats)
    return {"ratio": {k: v["ratio"] for k, v in d["strategies"].items()}, "detail": d}


def main(argv=None) -> None:
    p = script_parser(__doc__)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--solver", default="euler")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    a = p.parse_args(argv)
    apply_threads(a)
    d = grad_cost(a.batch, a.width, a.steps, getattr(torch, a.dtype), a.device, a.repeats,
                  a.solver)
    if a.json:
        print(json.dumps(d))
        return
    print(f"B={a.batch} N={a.width} S={a.steps} {a.solver} {a.dtype} device={a.device} "
          f"(best of {a.repeats}); forward {d['forward_seconds'] * 1e3:.1f} ms")
    print(f"{'strategy':24} {'fwd+grad ms':>12} {'ratio':>6}")
    for k, v in d["strategies"].items():
        print(f"{k:24} {v['seconds'] * 1e3:12.1f} {v['ratio']:6.2f}")
    if "torch_resnet" in d:
        r = d["torch_resnet"]
        print(f"{'(torch ResNet autograd)':24} {r['seconds'] * 1e3:12.1f} {r['ratio']:6.2f}")


if __name__ == "__main__":
    main()
