"""The benchmark suite: the reference ResNet equals pdenets' Euler forward, and the runner's JSON
has every required key on a tiny configuration (no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import pdenets as pn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import __main__ as runner  # noqa: E402
from benchmarks import bench_memory  # noqa: E402
from benchmarks._common import TINY, fit_exponent  # noqa: E402
from benchmarks.peers import TorchResNet  # noqa: E402

REQUIRED = ("forward_gemm_ratio_f32", "forward_gemm_ratio_f64", "grad_cost_ratio",
            "grad_memory_ratio", "time_to_accuracy_ratio", "scaling_exponents", "machine",
            "quick", "sizes")


def _random_readout(net, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.readout.c.normal_(0.0, 1.0, generator=gen)
        net.readout.d.normal_(0.0, 1.0, generator=gen)


@pytest.mark.parametrize("case", [
    {"shape": (8, 8), "width": (8, 8), "dim": 2, "basis": "linear", "steps": 8},
    {"shape": (8, 8), "width": (16, 16), "dim": 2, "basis": "linear", "steps": 13},
    {"shape": 16, "width": 48, "dim": 1, "basis": "constant", "steps": 10},
])
def test_reference_resnet_equals_pdenets_euler(case):
    net = pn.ContinuumNetwork.create(case["shape"], 10, intervals=3, time_basis=case["basis"],
                                     seed=1, dtype=torch.float64)
    _random_readout(net)
    disc = pn.Discretization(pn.make_rule("midpoint", case["width"], case["dim"]), pn.Euler(),
                             case["steps"])
    shape = case["shape"] if isinstance(case["shape"], tuple) else (case["shape"],)
    x = torch.rand(7, *shape, dtype=torch.float64)
    res = TorchResNet.from_pdenets(net, disc)
    assert len(res.layers) == case["steps"]
    assert all(isinstance(layer, torch.nn.Linear) for layer in res.layers)
    with torch.no_grad():
        ref = net(x, disc)
        out = res(x)
    assert out.dtype == torch.float64
    assert torch.allclose(out, ref, rtol=0.0, atol=1e-12)
    # the hidden state too (the readout is not hiding a mismatch)
    with torch.no_grad():
        sol = net.solve(x, disc)
        assert torch.allclose(res.hidden(x), sol.u, rtol=0.0, atol=1e-12)


def test_reference_resnet_rejects_other_solvers():
    net = pn.ContinuumNetwork.create(4, 2, seed=0)
    with pytest.raises(ValueError, match="Euler"):
        TorchResNet.from_pdenets(net, pn.Discretization(pn.Midpoint(8), pn.RK4(), 4))


def test_fit_exponent():
    xs = [1.0, 2.0, 4.0, 8.0]
    assert fit_exponent(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)


def test_memory_worker_in_subprocess():
    r = bench_memory.peak_memory("continuous", 8, 4, 8, threads=1)
    assert r["strategy"] == "continuous" and r["peak_bytes"] >= 0


def test_runner_json_has_required_keys(tmp_path, monkeypatch):
    # the memory cases run in-process here (one real subprocess is tested above)
    def in_process(strategy, steps, batch, width, device="cpu", dtype="float32", threads=0,
                   timeout=600.0):
        return bench_memory._worker({"strategy": strategy, "steps": steps, "batch": batch,
                                     "width": width, "device": device, "dtype": dtype,
                                     "threads": threads})

    monkeypatch.setattr(bench_memory, "peak_memory", in_process)
    out = tmp_path / "bench"
    res = runner.run_suite(TINY, "cpu", out)
    for key in REQUIRED:
        assert key in res, key
    assert set(res["grad_cost_ratio"]) == {"discrete", "discrete_checkpointed", "continuous"}
    assert set(res["grad_memory_ratio"]) == {"discrete", "discrete_checkpointed", "continuous"}
    assert set(res["scaling_exponents"]) == {"forward", "gradient"}
    assert set(res["scaling_exponents"]["forward"]) == {"N", "S", "B"}
    for key in ("cpu", "cores", "torch", "threads"):
        assert key in res["machine"]
    assert res["quick"] is True and res["sizes"]["name"] == "tiny"
    saved = json.loads((out / "results.json").read_text())
    assert set(REQUIRED) <= set(saved)
    table = (out / "results.md").read_text()
    assert "| figure |" in table and "time to accuracy" in table
    assert (out / "scaling.png").is_file()


def test_runner_reports_missing_torchdiffeq_as_skipped(monkeypatch):
    from benchmarks import bench_time_to_accuracy as tta

    monkeypatch.setattr(tta, "HAVE_TORCHDIFFEQ", False)
    monkeypatch.setattr(tta, "run_pdenets", lambda *a, **k: [[1.0, 0.5], [2.0, 0.9]])
    monkeypatch.setattr(tta, "run_peer", lambda *a, **k: [[0.5, 0.8]])
    r = tta.run(TINY)
    assert "torchdiffeq-node" in r["skipped"]
    assert r["target_accuracy"] == pytest.approx(0.8)
    assert r["ratio"] == pytest.approx(2.0 / 0.5)
