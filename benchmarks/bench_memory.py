"""Figure 3 — memory: peak memory of one gradient, each strategy, ÷ that of autograd backprop
through the equivalent discrete PyTorch ResNet (same weights, explicit Euler).

Every case runs in a **fresh subprocess** that imports torch and pdenets, builds the network, the
inputs and (for the peer) the :class:`~benchmarks.peers.TorchResNet` with weights ``W_k =
A(t_k)``, ``b_k = b(t_k)``; that state is the baseline. It then computes one gradient
(cross-entropy of the outputs, ``backward()``) and reports the peak memory above the baseline:

* CPU: the peak resident set size. The kernel's high-water mark is reset after the set-up
  (``/proc/self/clear_refs`` ← 5) and read from ``VmHWM`` afterwards; where that is unavailable,
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the gradient minus the resident size
  before it (then an upper bound if the set-up itself peaked higher). glibc is told to serve
  every allocation above 8 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so that freed set-up
  memory is returned to the system and cannot hide the gradient's own allocations.
* CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` at the baseline.

The peer's figure includes what the ResNet needs for its gradient: saved activations and the
gradient buffers of its S weight matrices; its parameters themselves belong to the baseline, as
pdenets' controls do. float32. Target: ≤ 0.1 for the continuous adjoint at S = 1024, whose
memory is independent of S — run this script to see it stay flat against S.

Usage::

    python -m benchmarks.bench_memory [--batch 256 --width 128] [--steps 64 128 256 512 1024]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from ._common import FULL, Sizes, script_parser

STRATEGIES = ("discrete", "discrete_checkpointed", "continuous", "torch_resnet")
PEER = "torch_resnet"
_ROOT = Path(__file__).resolve().parent.parent


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(spec: dict) -> dict:
    """Run one case in this (fresh) process; see the module docstring."""
    import gc
    import resource

    import torch
    import torch.nn.functional as F

    from ._common import make_batch, make_net
    from .bench_gradient import strategies
    from .peers import TorchResNet

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    dtype = getattr(torch, spec["dtype"])
    x, y = make_batch(spec["batch"], dtype, device)
    name = spec["strategy"]

    def case(steps):
        net, disc = make_net(spec["width"], dtype, device, "euler", steps)
        if name == PEER:
            model = TorchResNet.from_pdenets(net, disc)
            for p in model.parameters():
                p.requires_grad_(True)
            return lambda: F.cross_entropy(model(x), y).backward()
        adj = strategies(steps)[name]
        return lambda: F.cross_entropy(net(x, disc, adj), y).backward()

    # warm-up on 2 steps: pages in the code, lazy imports and autograd's state, which would
    # otherwise count as a constant part of the first gradient's "memory"
    case(min(2, spec["steps"]))()
    grad = case(spec["steps"])
    gc.collect()
    out = {"strategy": name, "steps": spec["steps"]}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        grad()
        torch.cuda.synchronize()
        out.update(peak_bytes=torch.cuda.max_memory_allocated() - base,
                   method="cuda.max_memory_allocated")
        return out
    base = _rss_kib()
    reset = _reset_hwm() and _hwm_kib() is not None and _hwm_kib() <= base + 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grad()
    if reset:
        peak = _hwm_kib()
        method = "VmHWM (reset after set-up)"
        bound = False
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss"
        bound = peak <= before
    out.update(peak_bytes=max(0, peak - base) * 1024, method=method, upper_bound=bound)
    return out


def peak_memory(strategy: str, steps: int, batch: int, width: int, device: str = "cpu",
                dtype: str = "float32", threads: int = 0, timeout: float = 600.0) -> dict:
    """Peak memory of one gradient of ``strategy`` in a fresh subprocess (module docstring)."""
    spec = {"strategy": strategy, "steps": steps, "batch": batch, "width": width,
            "device": device, "dtype": dtype, "threads": threads}
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "8192"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env, cwd=str(_ROOT), timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(sizes: Sizes = FULL, device: str = "cpu", threads: int = 0) -> dict:
    """Figure 3 for the suite: ratio of each strategy's peak to the ResNet's, at S = mem_steps."""
    S, B, N = sizes.mem_steps, sizes.mem_batch, sizes.mem_width
    peaks = {s: peak_memory(s, S, B, N, device, threads=threads) for s in STRATEGIES}
    ref = peaks[PEER]["peak_bytes"]
    ratio = {s: (peaks[s]["peak_bytes"] / ref if ref > 0 else math.nan)
             for s in STRATEGIES if s != PEER}
    return {"ratio": ratio, "steps": S, "batch": B, "width": N,
            "peak_mib": {s: v["peak_bytes"] / 2**20 for s, v in peaks.items()},
            "method": peaks[PEER]["method"]}


def sweep(steps, batch: int, width: int, device: str = "cpu", threads: int = 0,
          strategies=STRATEGIES) -> list[dict]:
    """Peak memory (MiB) of each strategy against the number of steps."""
    rows = []
    for S in steps:
        row = {"steps": S}
        for s in strategies:
            row[s] = peak_memory(s, S, batch, width, device, threads=threads)["peak_bytes"] / 2**20
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = script_parser(__doc__)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=FULL.mem_batch)
    p.add_argument("--width", type=int, default=FULL.mem_width)
    p.add_argument("--steps", type=int, nargs="+", default=list(FULL.mem_sweep))
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return
    rows = sweep(a.steps, a.batch, a.width, a.device, a.threads)
    if a.json:
        print(json.dumps(rows))
        return
    print(f"peak memory of one gradient (MiB above baseline), B={a.batch} N={a.width} float32, "
          f"device={a.device}, one fresh process per cell")
    print(f"{'S':>6} " + " ".join(f"{s:>22}" for s in STRATEGIES))
    for r in rows:
        print(f"{r['steps']:6d} " + " ".join(f"{r[s]:22.1f}" for s in STRATEGIES))


if __name__ == "__main__":
    main()
