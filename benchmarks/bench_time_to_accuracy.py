"""Figure 4 — time to accuracy on digits: pdenets vs a PyTorch ResNet vs a torchdiffeq neural ODE.

Contenders (all on the same fixed splits of ``digits``, 8×8 images, 10 classes, in the dtype and
on the device of the run; hyper-parameters from ``pdenets.config.load_config()`` — the default
digits configuration, read at run time):

* ``pdenets-adam``, ``pdenets-lbfgs`` — :class:`pdenets.training.Trainer` with the default
  configuration and ``train.method`` = adam / lbfgs (pdenets' figure is its best method);
* ``torch-resnet`` — :class:`~benchmarks.peers.TorchResNet`: width 64 (one neuron per pixel),
  depth = ``model.steps`` residual layers ``x + tanh(W_k x + b_k)``, linear readout, PyTorch
  default initialization, trained by backprop with Adam at the configuration's learning rate,
  batch size, epochs and learning-rate schedule;
* ``torchdiffeq-node`` — :class:`~benchmarks.peers.NeuralODE`: ``du/dt = tanh(W(t)u + b(t))``
  of width 64 with W, b piecewise linear on ``model.intervals`` depth intervals, dopri5
  (rtol 1e-3, atol 1e-4) with ``odeint_adjoint``, same optimizer settings as the ResNet.
  Reported as skipped when torchdiffeq is not installed.

Each run trains epoch by epoch; only the training epochs are timed (the test-accuracy check after
every epoch is not). A run stops at the accuracy cap (95 %), at its epoch budget or when its
training time exceeds ``budget_s``. The **common target** is the highest test accuracy that every
run of every tool reached (for a tool with several methods: of its best method), capped at 95 %.
A tool's time is the training time until its first epoch at or above the target — the median
over seeds, and for pdenets the best method's. The figure is pdenets' time ÷ the best peer's
time (goal: ≤ 0.5).

:func:`run_975` measures ``time_to_accuracy_ratio_975`` (figure 6): the time to a fixed 97.5 %
test accuracy of pdenets with its default configuration (no choice of method) ÷ the ResNet's,
median of 3 seeds; the same with the dense kernel is reported as a detail (``ratio_dense``).

Usage: ``python -m benchmarks.bench_time_to_accuracy [--quick] [--json] [--975]``
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from ._common import FULL, QUICK, Sizes, apply_threads, jsonable, script_parser, sync
from .peers import HAVE_TORCHDIFFEQ, NeuralODE, TorchResNet

CAP = 0.95
#: target test accuracy of ``time_to_accuracy_ratio_975`` (:func:`run_975`)
TARGET_975 = 0.975
PDENETS_METHODS = ("adam", "lbfgs")
#: the default configuration with the dense kernel (a detail of ``run_975``: the default kernel
#: "auto" is the continuum CNN for images)
DENSE = ("model.kernel=dense", "train.fine_fraction=0.125")


def _config(method: str | None, seed: int, sizes: Sizes, device: str, epochs: int | None = -1,
            extra: tuple[str, ...] = ()):
    """The default digits configuration with the benchmark's overrides (``method`` None: the
    configured default method; ``epochs`` -1: ``sizes.tta_epochs``, None: the config's)."""
    from pdenets.config import load_config

    over = [f"seed={seed}", "data.name=digits", *extra]
    if method is not None:
        over.append(f"train.method={method}")
    epochs = sizes.tta_epochs if epochs == -1 else epochs
    if epochs is not None:
        over.append(f"train.epochs={epochs}")
    if sizes.tta_lbfgs_iterations is not None:
        over.append(f"train.lbfgs_iterations={sizes.tta_lbfgs_iterations}")
    if torch.device(device).type == "cuda":
        over += [f"device={device}", "dtype=float32"]
    return load_config(None, over)


def _dataset(cfg, sizes: Sizes):
    from pdenets.data import load_dataset

    ds = load_dataset(cfg.data.name, seed=cfg.data.seed, test_fraction=cfg.data.test_fraction,
                      val_fraction=cfg.data.val_fraction)
    if sizes.tta_max_train:
        n = sizes.tta_max_train
        ds = dataclasses.replace(ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n])
    return ds


def _train_loop(epoch_fn, accuracy_fn, cfg, budget_s: float, device: str,
                cap: float = CAP) -> list[list[float]]:
    """Run ``epoch_fn(epoch)`` until the cap, the epoch budget or the time budget; returns the
    curve [[cumulative training seconds, test accuracy], ...]."""
    elapsed, curve = 0.0, []
    for epoch in range(cfg.train.epochs):
        sync(device)
        t0 = time.perf_counter()
        epoch_fn(epoch)
        sync(device)
        elapsed += time.perf_counter() - t0
        acc = accuracy_fn()
        curve.append([elapsed, acc])
        if acc >= cap - 1e-12 or elapsed >= budget_s:
            break
    return curve


def run_pdenets(method: str | None, seed: int, sizes: Sizes, device: str = "cpu", *,
                cap: float = CAP, budget_s: float | None = None,
                epochs: int | None = -1, extra: tuple[str, ...] = ()) -> list[list[float]]:
    """Training curve of pdenets' Trainer with ``train.method = method`` (None: the default
    configuration's method), stopped at ``cap``, ``budget_s`` (default ``sizes.tta_budget_s``)
    or ``epochs`` (-1: ``sizes.tta_epochs``, None: the configuration's)."""
    from pdenets.training import Trainer, evaluate, lr_factor

    cfg = _config(method, seed, sizes, device, epochs, extra)
    ds = _dataset(cfg, sizes)
    torch.manual_seed(cfg.seed)
    tr = Trainer(cfg, ds)
    x_te, y_te = ds.tensors("test", tr.dtype, tr.device)

    def epoch_fn(epoch):  # as Trainer.fit, without its per-epoch validation
        tr.epoch = epoch  # the method's clock (multilevel: the level of this epoch)
        for g in tr.optimizer.param_groups:
            g["lr"] = g.setdefault("initial_lr", g["lr"]) * lr_factor(cfg, epoch)
        tr.net.train()
        tr.train_epoch()

    def accuracy_fn():
        return evaluate(tr.net, x_te, y_te, "cross_entropy", tr.disc)["accuracy"]

    budget = sizes.tta_budget_s if budget_s is None else budget_s
    return _train_loop(epoch_fn, accuracy_fn, cfg, budget, device, cap)


def make_peer(kind: str, cfg, ds, seed: int, device: str) -> torch.nn.Module:
    """The peer model ``torch-resnet`` or ``torchdiffeq-node`` for the digits configuration."""
    from pdenets.training import DTYPES

    dtype = DTYPES[cfg.dtype]
    n_in = math.prod(ds.input_shape)
    if kind == "torch-resnet":
        return TorchResNet.plain(n_in, cfg.model.steps, ds.n_outputs, 1.0, seed=seed,
                                 dtype=dtype, device=device)
    return NeuralODE(n_in, ds.n_outputs, cfg.model.intervals, cfg.model.T, seed=seed,
                     dtype=dtype, device=device)


def run_peer(kind: str, seed: int, sizes: Sizes, device: str = "cpu", *, cap: float = CAP,
             budget_s: float | None = None, epochs: int | None = -1) -> list[list[float]]:
    """Training curve of a peer (Adam by backprop, the configuration's optimizer settings;
    ``cap``, ``budget_s``, ``epochs`` as for :func:`run_pdenets`)."""
    from pdenets.training import lr_factor

    cfg = _config("adam", seed, sizes, device, epochs)
    ds = _dataset(cfg, sizes)
    model = make_peer(kind, cfg, ds, seed, device)
    dtype = next(model.parameters()).dtype
    x, y = ds.tensors("train", dtype, device)
    x_te, y_te = ds.tensors("test", dtype, device)
    t = cfg.train
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def epoch_fn(epoch):
        for g in opt.param_groups:
            g["lr"] = t.lr * lr_factor(cfg, epoch)
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), t.batch_size):
            idx = perm[i:i + t.batch_size].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            if t.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
            opt.step()

    @torch.no_grad()
    def accuracy_fn():
        model.eval()
        return float((model(x_te).argmax(1) == y_te).double().mean())

    budget = sizes.tta_budget_s if budget_s is None else budget_s
    return _train_loop(epoch_fn, accuracy_fn, cfg, budget, device, cap)


def _first_time(curve, target: float) -> float:
    for t, acc in curve:
        if acc >= target - 1e-12:
            return t
    return math.inf


def run(sizes: Sizes = QUICK, device: str = "cpu", log=None) -> dict:
    """Figure 4 for the suite: curves of every contender and seed, the target and the ratio."""
    tools = {"pdenets": [f"pdenets-{m}" for m in PDENETS_METHODS],
             "torch-resnet": ["torch-resnet"], "torchdiffeq-node": ["torchdiffeq-node"]}
    curves: dict[str, list] = {}
    skipped: dict[str, str] = {}
    if not HAVE_TORCHDIFFEQ:
        skipped["torchdiffeq-node"] = "torchdiffeq is not installed (pip install '.[bench]')"
        tools.pop("torchdiffeq-node")
    for seed in sizes.tta_seeds:
        for tool, names in tools.items():
            for name in names:
                if tool == "pdenets":
                    c = run_pdenets(name.split("-", 1)[1], seed, sizes, device)
                else:
                    c = run_peer(name, seed, sizes, device)
                curves.setdefault(name, []).append(c)
                if log:
                    log(f"  {name} seed {seed}: {len(c)} epochs, {c[-1][0]:.1f} s, "
                        f"peak {max(a for _, a in c):.3f}")
    # highest accuracy every run of the tool's best method reached
    reach = {name: min(max(a for _, a in c) for c in cs) for name, cs in curves.items()}
    tool_reach = {tool: max(reach[n] for n in names) for tool, names in tools.items()}
    target = min([CAP, *tool_reach.values()])
    med = {name: statistics.median(_first_time(c, target) for c in cs)
           for name, cs in curves.items()}
    tool_time = {tool: min(med[n] for n in names) for tool, names in tools.items()}
    peers = {k: v for k, v in tool_time.items() if k != "pdenets"}
    best_peer = min(peers, key=peers.get) if peers else None
    ratio = tool_time["pdenets"] / peers[best_peer] if best_peer else math.nan
    best_method = min(tools["pdenets"], key=med.get)
    cfg = _config("adam", sizes.tta_seeds[0], sizes, device)
    return {
        "ratio": ratio, "target_accuracy": target, "cap": CAP, "seeds": list(sizes.tta_seeds),
        "seconds": tool_time, "best_peer": best_peer, "pdenets_best_method": best_method,
        "method_seconds": med, "reached": reach, "skipped": skipped,
        "epochs": cfg.train.epochs, "budget_s": sizes.tta_budget_s,
        "dtype": cfg.dtype, "curves": curves,
        "config": {"lr": cfg.train.lr, "batch_size": cfg.train.batch_size,
                   "schedule": cfg.train.schedule, "steps": cfg.model.steps,
                   "solver": cfg.model.solver, "intervals": cfg.model.intervals,
                   "lbfgs_iterations": cfg.train.lbfgs_iterations},
    }


def run_975(sizes: Sizes = QUICK, device: str = "cpu", log=None) -> dict:
    """``time_to_accuracy_ratio_975``: training seconds until 97.5 % test accuracy on digits,
    pdenets with the default configuration (its default method, epochs and learning-rate
    schedule — only stopped early at the target) ÷ the PyTorch ResNet peer; each the median
    over ``sizes.tta975_seeds``, training time only. A tool that misses the target within
    ``sizes.tta975_budget_s`` training seconds counts as infinite for that seed; the ratio is
    None (in JSON) when the median of either is infinite."""
    target = TARGET_975
    curves: dict[str, list] = {"pdenets": [], "torch-resnet": [], "pdenets-dense": []}
    for seed in sizes.tta975_seeds:
        for name in curves:
            kw = {"cap": target, "budget_s": sizes.tta975_budget_s,
                  "epochs": sizes.tta975_epochs}
            if name == "pdenets":
                c = run_pdenets(None, seed, sizes, device, **kw)
            elif name == "pdenets-dense":  # a detail: the default with the dense kernel
                c = run_pdenets(None, seed, sizes, device, extra=DENSE, **kw)
            else:
                c = run_peer(name, seed, sizes, device, **kw)
            curves[name].append(c)
            if log:
                log(f"  {name} seed {seed}: {len(c)} epochs, {c[-1][0]:.1f} s, "
                    f"peak {max(a for _, a in c):.3f}")
    times = {name: [_first_time(c, target) for c in cs] for name, cs in curves.items()}
    epochs = {name: [next((i + 1 for i, (_, a) in enumerate(c) if a >= target - 1e-12), None)
                     for c in cs] for name, cs in curves.items()}
    med = {name: statistics.median(ts) for name, ts in times.items()}
    pd, rn = med["pdenets"], med["torch-resnet"]
    ratio = pd / rn if math.isfinite(pd) and math.isfinite(rn) and rn > 0 else math.nan
    pdd = med["pdenets-dense"]
    ratio_dense = pdd / rn if math.isfinite(pdd) and math.isfinite(rn) and rn > 0 else math.nan
    cfg = _config(None, sizes.tta975_seeds[0], sizes, device, sizes.tta975_epochs)
    return {"ratio": ratio, "ratio_dense": ratio_dense, "dense_overrides": list(DENSE),
            "target_accuracy": target, "seeds": list(sizes.tta975_seeds),
            "seconds": med, "seed_seconds": times, "epochs_to_target": epochs,
            "method": cfg.train.method, "solver": cfg.model.solver, "dtype": cfg.dtype,
            "max_epochs": cfg.train.epochs, "budget_s": sizes.tta975_budget_s,
            "curves": curves}


def main(argv=None) -> None:
    p = script_parser(__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--975", dest="t975", action="store_true",
                   help="time to 97.5 %%, pdenets default vs the ResNet (run_975)")
    a = p.parse_args(argv)
    apply_threads(a)
    if a.t975:
        r = run_975(QUICK if a.quick else FULL, a.device, log=None if a.json else print)
        print(json.dumps(jsonable(r)) if a.json else
              f"time to 97.5 %: pdenets {r['seconds']['pdenets']:.2f} s, ResNet "
              f"{r['seconds']['torch-resnet']:.2f} s; ratio {r['ratio']:.2f}")
        return
    r = run(QUICK if a.quick else FULL, a.device, log=None if a.json else print)
    if a.json:
        print(json.dumps(jsonable(r)))
        return
    print(f"target test accuracy {r['target_accuracy']:.3f} (cap {CAP}); median of seeds "
          f"{r['seeds']}")
    for k, v in r["method_seconds"].items():
        print(f"  {k:18} {v:8.2f} s   (every seed reached {r['reached'][k]:.3f})")
    for k, v in r["skipped"].items():
        print(f"  {k:18} skipped: {v}")
    print(f"pdenets ({r['pdenets_best_method']}) ÷ best peer ({r['best_peer']}): "
          f"{r['ratio']:.2f}")


if __name__ == "__main__":
    main()
