"""The benchmark suite: the reference ResNet equals pdenets' Euler forward, and the runner's JSON
has every required key on a tiny configuration (no timing assertions)."""

from __future__ import annotations

import dataclasses
import json
import math
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
            "quick", "sizes", "time_to_accuracy_ratio_975", "epoch_time_ratio")


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
    # the epoch-time figure compares the same sizes: width 8×8, depth model.steps, batch
    shape = res["details"]["epoch_time"]["shape"]
    assert shape == {"width": 64, "steps": 8, "batch": 64}
    assert "time to 97.5 %" in table and "epoch time" in table


def test_runner_reports_missing_torchdiffeq_as_skipped(monkeypatch):
    from benchmarks import bench_time_to_accuracy as tta

    monkeypatch.setattr(tta, "HAVE_TORCHDIFFEQ", False)
    monkeypatch.setattr(tta, "run_pdenets", lambda *a, **k: [[1.0, 0.5], [2.0, 0.9]])
    monkeypatch.setattr(tta, "run_peer", lambda *a, **k: [[0.5, 0.8]])
    r = tta.run(TINY)
    assert "torchdiffeq-node" in r["skipped"]
    assert r["target_accuracy"] == pytest.approx(0.8)
    assert r["ratio"] == pytest.approx(2.0 / 0.5)


def test_time_to_975_is_median_over_seeds_and_undefined_when_missed(monkeypatch):
    from benchmarks import bench_time_to_accuracy as tta

    sizes = dataclasses.replace(TINY, tta975_seeds=(0, 1, 2))
    pd = {0: [[1.0, 0.9], [2.0, 0.976]], 1: [[1.5, 0.97], [3.0, 0.99]],
          2: [[1.0, 0.96], [5.0, 0.975]]}
    rn = {0: [[0.2, 0.98]], 1: [[0.3, 0.95], [0.5, 0.975]], 2: [[0.4, 0.99]]}
    dense = {0: [[0.3, 0.98]], 1: [[0.1, 0.97], [0.6, 0.98]], 2: [[0.5, 0.99]]}
    monkeypatch.setattr(tta, "run_pdenets", lambda m, seed, *a, **k: (
        dense if k.get("extra") == tta.DENSE else pd)[seed])
    monkeypatch.setattr(tta, "run_peer", lambda kind, seed, *a, **k: rn[seed])
    r = tta.run_975(sizes)
    # medians of 2,3,5 / .2,.5,.4 / .3,.6,.5
    assert r["seconds"] == {"pdenets": 3.0, "torch-resnet": 0.4, "pdenets-dense": 0.5}
    assert r["ratio"] == pytest.approx(3.0 / 0.4)
    assert r["ratio_dense"] == pytest.approx(0.5 / 0.4)
    assert r["epochs_to_target"]["pdenets"] == [2, 2, 2]
    pd[1] = pd[2] = [[1.0, 0.97]]  # two of three seeds miss 97.5 %: the median is infinite
    r = tta.run_975(sizes)
    assert math.isinf(r["seconds"]["pdenets"]) and math.isnan(r["ratio"])
    assert runner.jsonable(r)["ratio"] is None


def _results(threads: int, f32: float, r975: float | None, epoch: float) -> dict:
    """A hand-made result object (figures not run are None), as run_suite writes it."""
    return {
        "forward_gemm_ratio_f32": f32, "forward_gemm_ratio_f64": 0.9, "grad_cost_ratio": None,
        "grad_memory_ratio": None, "time_to_accuracy_ratio": None, "scaling_exponents": None,
        "time_to_accuracy_ratio_975": r975, "epoch_time_ratio": epoch,
        "machine": {"cpu": "Test CPU", "cores": 2, "torch": "9.9", "threads": threads,
                    "python": "3.11", "platform": "x", "pdenets": "0", "device": "cpu",
                    "torchdiffeq": None, "wait_policy": "PASSIVE", "load_average": 0.5},
        "quick": True, "preset": "quick", "sizes": TINY.as_dict(), "targets": runner.TARGETS,
        "wall_seconds": 12.0,
        "details": {
            "forward": {"solver": "euler"},
            "time_to_accuracy_975": {
                "seeds": [0, 1, 2], "max_epochs": 80, "budget_s": 30.0, "method": "adam",
                "solver": "rk4", "dtype": "float32",
                "seconds": {"pdenets": 4.25, "torch-resnet": None if r975 is None else 0.5},
                "epochs_to_target": {"pdenets": [20, 24, 30],
                                     "torch-resnet": [7, None, 14]}},
            "epoch_time": {"shape": {"width": 64, "steps": 8, "batch": 64}, "repeats": 3,
                           "seconds": {"pdenets-euler": 0.12, "torch-resnet": 0.1,
                                       "pdenets-euler-augmented": 0.15}},
        },
    }


def test_docs_writer_renders_results_between_markers(tmp_path):
    from benchmarks import docs

    page = tmp_path / "benchmarks.md"
    readme = tmp_path / "README.md"
    page.write_text(f"# Bench\n\nhand-written intro\n\n{docs.BEGIN}\nstale table\n{docs.END}\n"
                    "\nhand-written reading\n")
    readme.write_text(f"# pdenets\n\n## Benchmarks\n\n{docs.BEGIN}\nold\n{docs.END}\n\n## Next\n")
    runs = [_results(1, 0.81, 8.5, 1.2), _results(2, 0.64, None, 1.35)]
    # through JSON, as the CLI reads results.json
    runs = [json.loads(json.dumps(r)) for r in runs]
    docs.write_docs(runs, page, readme)
    text = page.read_text()
    assert text.startswith("# Bench\n\nhand-written intro\n\n" + docs.BEGIN)
    assert text.endswith(docs.END + "\n\nhand-written reading\n")
    assert "stale table" not in text
    assert "### `python -m benchmarks --quick --threads 1`" in text
    assert "### `python -m benchmarks --quick --threads 2`" in text
    assert "| forward efficiency float32 | 0.81 | ≥ 0.8 | yes |" in text
    assert "| forward efficiency float32 | 0.64 | ≥ 0.8 | **no** |" in text
    assert ("| time to 97.5 % ÷ ResNet (pdenets default) | 8.50 | ≤ 1.0 (goal 0.5) | **no** |"
            in text)
    assert "| time to 97.5 % ÷ ResNet (pdenets default) | n/a |" in text
    assert "pdenets default (adam, rk4, float32) 4.25 s (20–30 epochs)" in text
    assert "ResNet 0.50 s (7–14 epochs, 1 seed(s) not reached)" in text
    assert "| epoch time ÷ ResNet (Euler, same size) | 1.20 | ≤ 1.2 | yes |" in text
    assert "| epoch time ÷ ResNet (Euler, same size) | 1.35 | ≤ 1.2 | **no** |" in text
    assert "width 64, depth 8, batch 64" in text
    assert "wait policy PASSIVE, load average 0.5" in text
    r = readme.read_text()
    assert r.startswith("# pdenets\n\n## Benchmarks\n\n" + docs.BEGIN)
    assert r.endswith(docs.END + "\n\n## Next\n") and "\nold\n" not in r
    assert "| figure | 1 thread(s) | 2 thread(s) | target |" in r
    assert "| 0.81 / 0.90 | 0.64 / 0.90 | ≥ 0.8 |" in r
    assert "| 8.50 (4.25 s vs 0.50 s) | n/a (4.25 s vs n/a s) |" in r
    assert "| 1.20 (0.120 s vs 0.100 s) | 1.35 (0.120 s vs 0.100 s) | ≤ 1.2 |" in r
    # idempotent: rendering the same results again changes nothing
    before = (page.read_text(), readme.read_text())
    docs.write_docs(runs, page, readme)
    assert (page.read_text(), readme.read_text()) == before


@pytest.mark.parametrize("text", ["no markers", "<!-- bench:end --> <!-- bench:begin -->",
                                  "<!-- bench:begin --> <!-- bench:begin --> <!-- bench:end -->"])
def test_docs_writer_needs_one_marker_pair(text):
    from benchmarks import docs

    with pytest.raises(ValueError, match="bench:begin"):
        docs.replace_block(text, "table")


def test_repository_pages_have_the_markers():
    from benchmarks import docs

    for path in (docs.DOCS, docs.README):
        text = path.read_text()
        assert docs.replace_block(text, "x").count("x") >= 1
