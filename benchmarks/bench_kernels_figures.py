"""Structured kernels — the acceptance figures of issue 14 (MODEL.md §10).

1. Digits: the default (dense) model and the conv family (lattice conv, 2 channels), test
   accuracy and wall time per seed (3 seeds), mean.
2. ``signals`` (length 40, 4000 train / 1000 test): the default (dense) configuration vs
   the conv family (``SIGNALS_CONV``, 4 channels, 30 epochs), per seed.
3. ``shapes`` (16×16, 3 input channels; ``SHAPES_CONV``): conv accuracy and time, the
   configuration of ``examples/shapes_conv.py``.
4. A 64×64, C = 16 conv model: seconds per training batch (a few batches of 16).

Prints one line per figure and the load average (the machine may be shared).

Usage: ``python -m benchmarks.bench_kernels_figures [--fast] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from pdenets.config import Config
from pdenets.data import load_dataset_config
from pdenets.training import make_trainer
from pdenets.training.trainer import evaluate

#: the conv configuration of the signals rows (with channels=4, 30 epochs; docs/kernels.md):
#: local kernels (radius 0.1: 8 displacement cells of one sample each, a lattice kernel) and
#: 8 depth intervals; wider radii, more channels, conv+lowrank, ReLU or a coarser control grid
#: were no better (or overfitted) at this budget
SIGNALS_CONV = {"kernel_radius": 0.1, "intervals": 8}

#: the conv configuration of the shapes row (with channels=8, 60 epochs, method adam; 3000
#: images of 16×16; docs/kernels.md, examples/shapes_conv.py): local kernels (radius 2
#: pixels, a lattice kernel), explicit Euler with 4 steps
SHAPES_CONV = {"kernel_radius": 0.125, "solver": "euler", "steps": 4}


def train_case(data: str, kernel: str, channels: int, seed: int, epochs: int | None = None,
               model: dict | None = None, method: str | None = None, **data_opts) -> dict:
    """Train one configuration; ``{"accuracy" (test, %), "seconds"}``. ``model``: further
    ``cfg.model`` fields (e.g. ``kernel_radius``, ``intervals``); ``method``: the training
    method (default: the configuration's)."""
    cfg = Config()
    cfg.seed = seed
    cfg.data.name = data
    for k, v in data_opts.items():
        setattr(cfg.data, k, v)
    cfg.model.kernel, cfg.model.channels = kernel, channels
    for k, v in (model or {}).items():
        setattr(cfg.model, k, v)
    if epochs:
        cfg.train.epochs = epochs
    if method:
        cfg.train.method = method
    tr = make_trainer(cfg, load_dataset_config(cfg.data))
    t0 = time.perf_counter()
    net = tr.fit().net
    sec = time.perf_counter() - t0
    with torch.no_grad():
        acc = evaluate(net, *tr.data["test"], "cross_entropy", tr.disc)["accuracy"]
    return {"data": data, "kernel": kernel, "channels": channels, "seed": seed,
            **(model or {}), "accuracy": 100 * acc, "seconds": sec}


def big_model(batches: int = 3) -> dict:
    """Seconds per training batch of a 64×64, C = 16 conv model (batch 16, 4 steps)."""
    from pdenets import ContinuumNetwork
    from pdenets.network import Discretization
    from pdenets.objective import Objective

    net = ContinuumNetwork.create((64, 64), 4, kernel="conv", channels=16, in_channels=3,
                                  space_basis="constant", kernel_radius=0.1, intervals=2,
                                  init_scale=0.5, seed=0).to(torch.float32)
    disc = Discretization.make("midpoint", (64, 64), 2, "euler", 4)
    x = torch.rand(16, 3, 64, 64)
    y = torch.randint(0, 4, (16,))
    obj = Objective("cross_entropy", 1e-3, 1e-4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    times = []
    for _ in range(batches + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = obj(net, x, y, disc)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    plan = net.controls.kernel.plan(net.grid(disc.width))
    return {"seconds_per_batch": min(times[1:]), "plan": plan, "loss": float(loss.detach())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="1 seed, fewer epochs and samples")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    seeds = (0,) if a.fast else (0, 1, 2)
    ep = 10 if a.fast else None
    out: dict = {"load_before": os.getloadavg()}
    rows = []
    for kernel, C in (("dense", 1), ("conv", 2)):
        for s in seeds:
            rows.append(train_case("digits", kernel, C, s, ep))
            print(json.dumps(rows[-1]), flush=True)
    n = 1000 if a.fast else 5000
    for s in seeds:  # the default (dense) configuration vs SIGNALS_CONV
        for kernel, C, ep, opts in (("dense", 1, None, None), ("conv", 4, 30, SIGNALS_CONV)):
            rows.append(train_case("signals", kernel, C, s, 10 if a.fast else ep, opts,
                                   n_samples=n, test_fraction=0.2, length=40))
            print(json.dumps(rows[-1]), flush=True)
    for s in seeds:  # the example's configuration (fast: its --fast sizes)
        rows.append(train_case("shapes", "conv", 8, s, 25 if a.fast else 60, SHAPES_CONV,
                               "adam", n_samples=2000 if a.fast else 3000, image_size=16))
        print(json.dumps(rows[-1]), flush=True)
    out["rows"] = rows
    out["big_model"] = big_model()
    print(json.dumps(out["big_model"]), flush=True)
    out["load_after"] = os.getloadavg()
    if a.json:
        print(json.dumps(out))
    else:
        print("load average before/after:", out["load_before"], out["load_after"])


if __name__ == "__main__":
    main()
