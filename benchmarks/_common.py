"""Shared pieces of the benchmark suite: size presets, timers, the test network, machine info.

Timings on a shared machine are noisy: every timer here reports the **best of** ``repeats``
runs after one warm-up (the minimum is the figure least disturbed by other processes), and the
time-to-accuracy figure takes the **median** over seeds.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

import pdenets as pn

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one suite run (``full``, ``quick`` or the test-only ``tiny``)."""

    name: str = "full"
    # 1. forward efficiency
    fwd_batch: int = 1024
    fwd_width: int = 256
    fwd_steps: int = 64
    fwd_repeats: int = 5
    fwd_solvers: tuple[str, ...] = ("euler", "rk4")
    # 2. gradient cost
    grad_batch: int = 1024
    grad_width: int = 256
    grad_steps: int = 64
    grad_repeats: int = 3
    # 3. memory (S steps; the sweep is for bench_memory.py)
    mem_batch: int = 256
    mem_width: int = 128
    mem_steps: int = 1024
    mem_sweep: tuple[int, ...] = (64, 128, 256, 512, 1024)
    # 4. time to accuracy on digits
    tta_seeds: tuple[int, ...] = (0, 1, 2)
    tta_epochs: int | None = None  # None: the config's train.epochs
    tta_budget_s: float = 90.0  # wall-clock cap of one training run (training time only)
    tta_max_train: int | None = None  # subsample the training split (tests only)
    tta_lbfgs_iterations: int | None = None  # None: the config's train.lbfgs_iterations
    # 5. scaling: base (B, N, S) and the values swept one at a time
    scl_base: tuple[int, int, int] = (256, 256, 16)
    scl_N: tuple[int, ...] = (128, 256, 512, 1024)
    scl_S: tuple[int, ...] = (8, 16, 32, 64)
    scl_B: tuple[int, ...] = (128, 256, 512, 1024)
    scl_repeats: int = 3
    # 6. time to 97.5 %, pdenets default vs the ResNet (epochs None: the config's)
    tta975_seeds: tuple[int, ...] = (0, 1, 2)
    tta975_epochs: int | None = None
    tta975_budget_s: float = 60.0
    # 7. epoch time, pdenets Euler vs the ResNet at the same size
    epoch_repeats: int = 5

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Sizes()
QUICK = Sizes(
    name="quick", fwd_repeats=3, fwd_solvers=("euler",),
    grad_batch=512, grad_width=128, grad_steps=32, grad_repeats=3,
    mem_batch=128, mem_width=64, mem_sweep=(64, 256, 1024),
    tta_seeds=(0,), tta_epochs=12, tta_budget_s=25.0, tta_lbfgs_iterations=None,
    scl_base=(256, 256, 16), scl_N=(128, 256, 512), scl_S=(8, 16, 32), scl_B=(128, 256, 512),
    scl_repeats=5, tta975_budget_s=30.0, epoch_repeats=3,
)
TINY = Sizes(
    name="tiny", fwd_batch=32, fwd_width=16, fwd_steps=4, fwd_repeats=1, fwd_solvers=("euler",),
    grad_batch=16, grad_width=16, grad_steps=4, grad_repeats=1,
    mem_batch=8, mem_width=8, mem_steps=16, mem_sweep=(8, 16),
    tta_seeds=(0,), tta_epochs=1, tta_budget_s=5.0, tta_max_train=96, tta_lbfgs_iterations=2,
    scl_base=(16, 16, 4), scl_N=(8, 16), scl_S=(2, 4), scl_B=(8, 16), scl_repeats=1,
    tta975_seeds=(0,), tta975_epochs=1, tta975_budget_s=5.0, epoch_repeats=1,
)
PRESETS = {"full": FULL, "quick": QUICK, "tiny": TINY}


def script_parser(doc: str | None):
    """An argument parser with the options every figure script shares: --device, --threads,
    --json (call :func:`apply_threads` on the parsed arguments)."""
    import argparse

    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: one per free core, see pdenets._threads)")
    p.add_argument("--json", action="store_true")
    return p


def apply_threads(args) -> None:
    """Set torch's thread count from ``--threads`` with :func:`pdenets._threads.apply_threads`
    (0: pdenets' default, one per available core other processes leave free)."""
    from pdenets._threads import apply_threads as apply

    apply(int(args.threads))


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Best wall-clock seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    sync(device)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def make_net(width: int, dtype: torch.dtype = torch.float32, device: str = "cpu",
             solver: str = "euler", steps: int = 16, seed: int = 0):
    """The network of the throughput figures: 1-D, 16 input features, 10 outputs, controls on
    16 vertices × 8 linear depth intervals, a random (non-zero) readout, evaluated at
    ``width`` midpoint nodes and ``steps`` steps. Returns ``(net, disc)``."""
    net = pn.ContinuumNetwork.create(16, 10, control_size=16, intervals=8, seed=seed,
                                     dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        net.readout.c.normal_(0.0, 1.0, generator=gen)
        net.readout.d.normal_(0.0, 0.1, generator=gen)
    net = net.to(dtype=dtype, device=device)
    disc = pn.Discretization(pn.Midpoint(width), pn.make_solver(solver), steps)
    return net, disc


def make_batch(batch: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Random inputs ``(batch, 16)`` and labels ``(batch,)`` for :func:`make_net`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return x, y


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else math.nan


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """Where the figures were measured."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pdenets": pn.__version__,
        "device": str(device),
    }
    from pdenets import _threads

    info["wait_policy"] = _threads.wait_policy()
    info["load_average"] = _threads.load_average()
    try:
        import torchdiffeq

        info["torchdiffeq"] = torchdiffeq.__version__
    except ImportError:
        info["torchdiffeq"] = None
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def finite_or_none(v: float | None) -> float | None:
    """JSON-safe number: inf/nan become None."""
    if v is None or not math.isfinite(v):
        return None
    return float(v)


def jsonable(obj):
    """Recursively replace non-finite floats by None and tuples by lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return finite_or_none(obj)
    return obj

