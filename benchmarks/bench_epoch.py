"""Figure 7 — epoch time ratio: the overhead of the continuum machinery at the ResNet's exact size.

One training epoch on digits (8×8 images, 10 classes, the default splits), Adam, the default
configuration's batch size and learning rate, in the dtype and on the device of the run:

* ``pdenets`` — :class:`pdenets.training.Trainer` with the default configuration except
  ``model.solver = "euler"`` and ``model.kernel = "dense"``: explicit Euler at
  ``model.steps`` steps and width 8×8 = 64 midpoint nodes (one neuron per pixel) *is* a
  ResNet of width 64 and depth ``model.steps`` (MODEL.md §1, §3), so the remaining
  difference is the continuum machinery — control interpolation A(t), b(t), quadrature
  weights, the regularization of §4, the adjoint's bookkeeping. Augmentation is switched off
  (the peer has none); the epoch with the default augmentation is reported too, as a detail.
* ``torch-resnet`` — :class:`~benchmarks.peers.TorchResNet` of width 64 and depth
  ``model.steps``, the same optimizer, batch size and data.

Each epoch time is the best of ``sizes.epoch_repeats`` epochs after one warm-up epoch (the
least disturbed by other processes). The figure is pdenets' epoch ÷ the ResNet's (target ≤ 1.2).

Usage: ``python -m benchmarks.bench_epoch [--quick] [--json] [--threads T]``
"""

from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F

from ._common import QUICK, Sizes, apply_threads, jsonable, script_parser, sync
from .bench_time_to_accuracy import _config, _dataset, make_peer

NO_AUGMENT = ("train.augment_rotate=0", "train.augment_shift=0", "train.augment_scale=0")


def _best_epoch(epoch_fn, repeats: int, device: str) -> float:
    epoch_fn()  # warm-up
    best = math.inf
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        epoch_fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def pdenets_epoch(sizes: Sizes, device: str = "cpu", augment: bool = False,
                  seed: int = 0) -> tuple[float, dict]:
    """Best epoch seconds of the Trainer with explicit Euler (module docstring), and the
    resolved sizes ``{"width", "steps", "batch"}``."""
    from pdenets.training import Trainer, default_sizes

    # the dense kernel: its explicit Euler discretization *is* the peer ResNet (the default
    # kernel "auto" is the continuum CNN for images, which has no plain-ResNet counterpart)
    extra = ("model.solver=euler", "train.method=adam", "model.kernel=dense") + (
        () if augment else NO_AUGMENT)
    cfg = _config(None, seed, sizes, device, None, extra)
    ds = _dataset(cfg, sizes)
    torch.manual_seed(cfg.seed)
    tr = Trainer(cfg, ds)
    tr.net.train()
    width = math.prod(default_sizes(cfg, ds)[0])
    shape = {"width": width, "steps": cfg.model.steps, "batch": cfg.train.batch_size}
    return _best_epoch(tr.train_epoch, sizes.epoch_repeats, device), shape


def resnet_epoch(sizes: Sizes, device: str = "cpu", seed: int = 0) -> tuple[float, dict]:
    """Best epoch seconds of the PyTorch ResNet peer (width 64, depth ``model.steps``)."""
    cfg = _config("adam", seed, sizes, device, None)
    ds = _dataset(cfg, sizes)
    model = make_peer("torch-resnet", cfg, ds, seed, device)
    dtype = next(model.parameters()).dtype
    x, y = ds.tensors("train", dtype, device)
    t = cfg.train
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()

    def epoch_fn():
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), t.batch_size):
            idx = perm[i:i + t.batch_size].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            if t.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
            opt.step()

    shape = {"width": model.layers[0].in_features, "steps": len(model.layers),
             "batch": t.batch_size}
    return _best_epoch(epoch_fn, sizes.epoch_repeats, device), shape


def run(sizes: Sizes = QUICK, device: str = "cpu") -> dict:
    """The figure for the suite: ``{"ratio", "seconds", "shape", ...}``."""
    pd, pd_shape = pdenets_epoch(sizes, device)
    rn, rn_shape = resnet_epoch(sizes, device)
    if pd_shape != rn_shape:  # the figure is only meaningful at the same size
        raise RuntimeError(f"epoch_time_ratio: pdenets {pd_shape} != ResNet {rn_shape}")
    pd_aug, _ = pdenets_epoch(sizes, device, augment=True)
    return {"ratio": pd / rn, "seconds": {"pdenets-euler": pd, "torch-resnet": rn,
                                          "pdenets-euler-augmented": pd_aug},
            "shape": pd_shape, "repeats": sizes.epoch_repeats, "solver": "euler"}


def main(argv=None) -> None:
    p = script_parser(__doc__)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    apply_threads(a)
    from ._common import FULL

    r = run(QUICK if a.quick else FULL, a.device)
    if a.json:
        print(json.dumps(jsonable(r)))
        return
    s = r["seconds"]
    print(f"epoch, width {r['shape']['width']} depth {r['shape']['steps']} batch "
          f"{r['shape']['batch']}: pdenets Euler {s['pdenets-euler']:.3f} s (with augmentation "
          f"{s['pdenets-euler-augmented']:.3f} s), ResNet {s['torch-resnet']:.3f} s; "
          f"ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
