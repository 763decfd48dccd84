"""Tests of ``pdenets analyze`` (MODEL.md §3, §6, §9, §1 on the command line)."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from pdenets import ContinuumNetwork, save_model
from pdenets.cli import analyze as analyze_cli
from pdenets.cli import main


def run_json(capsys, *argv) -> dict:
    rc = main(["analyze", *argv, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)  # exactly one JSON object on stdout


def run_err(capsys, *argv) -> str:
    rc = main(["analyze", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdenets: error:")
    return lines[0]


def test_analyze_lists_its_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["analyze", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("stability", "hessian", "controllability", "steady-state"):
        assert name in out
    assert main(["analyze"]) == 0  # no analysis: help, success


def test_optional_analyzer_module_is_picked_up(capsys, monkeypatch):
    """The hook: ``pdenets.cli.analyze_<name>`` for each name in ANALYZERS, if it exists."""
    assert "pmp" in analyze_cli.ANALYZERS
    mod = types.ModuleType("pdenets.cli.analyze_fake")

    def register(asub):
        p = asub.add_parser("fake")
        p.set_defaults(func=lambda args: print("fake ran") or 0)

    mod.register = register
    monkeypatch.setitem(sys.modules, "pdenets.cli.analyze_fake", mod)
    monkeypatch.setattr(analyze_cli, "ANALYZERS", (*analyze_cli.ANALYZERS, "fake", "absent"))
    assert main(["analyze", "fake"]) == 0
    assert "fake ran" in capsys.readouterr().out


def test_hessian_saddle_example(capsys, tmp_path):
    d = run_json(capsys, "hessian", "--example", "saddle", "--out", str(tmp_path / "h"))
    # y = T ⟨c, b⟩ by the 8-node midpoint rule, target 2, T = 1.5: λ_min = −2·1.5·λ_max(G)
    x = (np.arange(8) + 0.5) / 8
    P = np.stack([1 - x, x], 1)
    lam_g = np.linalg.eigvalsh(P.T @ P / 8)[-1]
    assert d["verdict"] == "saddle"
    assert d["lambda_min"] == pytest.approx(-2.0 * 1.5 * lam_g, rel=1e-10)
    assert d["descent"]["decreased"] and d["descent"]["best_decrease"] > 0
    assert d["parameters"] == ["controls.b", "readout.c"]
    assert (tmp_path / "h" / "hessian.png").stat().st_size > 1000
    rep = json.loads((tmp_path / "h" / "report.json").read_text())
    assert rep["verdict"] == "saddle"


def test_hessian_convex_example_is_a_strict_minimizer(capsys, tmp_path):
    d = run_json(capsys, "hessian", "--example", "convex", "--out", str(tmp_path / "c"))
    assert d["verdict"] == "strict local minimizer"
    assert d["grad_norm"] < 1e-6 and d["lambda_min"] > 0 and d["exact"]
    # without the L-BFGS polish the same point is not critical
    d0 = run_json(capsys, "hessian", "--example", "convex", "--optimize", "0",
                  "--out", str(tmp_path / "c0"))
    assert d0["verdict"] == "not a critical point"
    assert d0["lambda_min"] == pytest.approx(d["lambda_min"], rel=1e-8)  # J is quadratic


@pytest.mark.parametrize("name,a", [("stable", -1.0), ("unstable", 1.0)])
def test_steady_state_examples(capsys, tmp_path, name, a):
    d = run_json(capsys, "steady-state", "--example", name, "--horizon", "12",
                 "--out", str(tmp_path / name))
    n, eps = 16, 0.05
    mu1 = -4.0 * n**2 * math.sin(math.pi / (2 * n)) ** 2
    assert d["max_real"] == pytest.approx(max(a, eps * mu1), rel=1e-9)
    assert d["verdict"] == ("asymptotically stable" if a < 0 else "unstable")
    assert d["agrees"] is True
    np.testing.assert_allclose(d["u"], -0.5 / a, atol=1e-12)
    assert (tmp_path / name / "steady_state.png").exists()


def test_controllability_obstructed_example(capsys, tmp_path):
    d = run_json(capsys, "controllability", "--example", "obstructed", "--alphas", "1e-2,1e-4",
                 "--horizons", "", "--samples", "1,3", "--iters", "60",
                 "--out", str(tmp_path / "o"))
    assert d["controllable"] is False
    assert [r["alpha"] for r in d["alpha"]] == [1e-2, 1e-4]
    assert all(r["misfit_max"] > 1.0 for r in d["alpha"] + d["samples"])
    assert [r["samples"] for r in d["samples"]] == [1, 3]
    assert (tmp_path / "o" / "controllability.png").exists()


def test_model_file_with_data(capsys, tmp_path):
    net = ContinuumNetwork.create(4, 2, width=8, steps=8, intervals=2, seed=3,
                                  readout="cell_average")
    save_model(net, tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((3, 4)), y=rng.standard_normal((3, 2)))
    d = run_json(capsys, "stability", str(tmp_path / "m.safetensors"), "--data",
                 str(tmp_path / "d.npz"), "--directions", "2", "--out", str(tmp_path / "s"))
    assert d["input"]["holds"] is True and d["control"]["holds"] is True
    assert d["lipschitz"]["value"] <= d["gronwall"] * (1 + 1e-9)
    assert d["gronwall_certified"] is True  # GridControls: a proven upper bound
    assert len(d["lipschitz"]["per_input"]) == 3
    assert (tmp_path / "s" / "stability.png").exists()
    h = run_json(capsys, "hessian", str(tmp_path / "m.safetensors"), "--data",
                 str(tmp_path / "d.npz"), "--params", "controls.b", "--alpha", "0.1",
                 "--k", "5", "--out", str(tmp_path / "hh"))
    assert h["n_params"] == net.controls.b.numel() and h["lanczos_steps"] == 5


def test_bad_input_gives_one_line_error(capsys, tmp_path):
    assert "model file or --example" in run_err(capsys, "hessian")
    assert "does not exist" in run_err(capsys, "stability", str(tmp_path / "none.safetensors"))
    net = ContinuumNetwork.create(4, 2, width=8, steps=4, readout="cell_average")
    save_model(net, tmp_path / "m.safetensors")
    assert "--data" in run_err(capsys, "hessian", str(tmp_path / "m.safetensors"))
    np.savez(tmp_path / "nox.npz", y=np.zeros((2, 2)))
    assert "'x' and 'y'" in run_err(capsys, "hessian", str(tmp_path / "m.safetensors"),
                                    "--data", str(tmp_path / "nox.npz"))
    assert "comma-separated" in run_err(capsys, "controllability", "--example", "controllable",
                                        "--alphas", "a,b")
    assert "unknown parameter" in run_err(capsys, "hessian", "--example", "saddle",
                                          "--params", "nothing")
    assert "depend on depth" in run_err(capsys, "steady-state", "--example", "demo1d",
                                        "--out", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # failed analyses leave no output directory
