"""``pdenets hjb`` with the typed config: ``--set`` on every table, the high-order schemes, the
sampled method (``--set method=sampled``) and its size checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pdenets import _limits
from pdenets.cli import main
from pdenets.cli.hjb import build_sampled, load_config

EXAMPLES = Path(__file__).parents[1] / "examples"

# the closed form of MODEL.md §8 in D = 1 (w ≡ 0, σ = identity, bias control)
_CF1 = """
[problem]
activation = "identity"
controls = "b"
alpha = 0.5
width = 1
target = 0.2
v0 = 0.8

[grid]
points = 41

[closed_loop]
steps = 20

[plot]
depths = 2
"""

# the same case in D = 4 (midpoint nodes, ω = 1/4), for the sampled method
_CF4 = """
method = "sampled"

[problem]
activation = "identity"
controls = "b"
alpha = 0.5
T = 1.0
width = 4
target = [0.2, -0.1, 0.0, 0.3]
v0 = [0.6, 0.1, -0.5, 0.0]

[sampled]
lo = -0.8
hi = 0.8
starts = 12
validation = 6
batch = 6
rounds = 1
intervals = 4
steps = 2
tpbvp_iter = 60
degree = 3
hidden = 0
fit_iter = 80

[closed_loop]
steps = 20
starts = [[0.5, 0.5, -0.5, -0.5]]
"""


def _exact_V(t, v, y, alpha, T, weights):
    """V(t, v) = ‖v − y‖²_ω / (2 (1 + (T − t)/α)) (MODEL.md §8), written out here."""
    r = np.asarray(v, float) - np.asarray(y, float)
    return float(np.sum(np.asarray(weights) * r * r) / (2.0 * (1.0 + (T - t) / alpha)))


def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_set_selects_the_high_order_scheme_and_a_list_of_points(tmp_path, capsys):
    cfg = tmp_path / "cf.toml"
    cfg.write_text(_CF1)
    exact = _exact_V(0.0, [0.8], [0.2], 0.5, 1.0, [1.0])
    errors = {}
    for scheme in ("lax-friedrichs", "weno5-rk3"):
        out = tmp_path / scheme
        rc, stdout, err = _run(capsys, ["hjb", "--config", str(cfg), "--out", str(out),
                                        "--json", "--set", f"solver.scheme={scheme}",
                                        "--set", "grid.points=[41]", "--set", "solver.cfl=0.5"])
        assert rc == 0, err
        payload = json.loads(stdout)
        assert payload["scheme"] == scheme and payload["grid_points"] == [41]
        assert payload["method"] == "grid" and payload["exact_V0"] == pytest.approx(exact)
        errors[scheme] = abs(payload["V0"] - exact)
        assert json.loads((out / "summary.json").read_text())["V0"] == payload["V0"]
    # the 3rd-order scheme is far more accurate than the 1st-order one on the same grid
    assert errors["weno5-rk3"] < 0.1 * errors["lax-friedrichs"], errors


@pytest.mark.parametrize("sets, message", [
    (["solver.schme=weno5-rk3"], "did you mean 'solver.scheme'"),
    (["solver.scheme=weno9"], "unknown HJB scheme 'weno9'"),
    (["grid.points=[41, 4.5]"], "grid.points: expected a int | list[int]"),
    (["problem.alpha=nan"], "problem.alpha: must be a finite number"),
    (["method=newton"], "solver.method: unknown value 'newton'"),
    (["problem=1"], "problem is a section"),
    (["sampled.starts=0", "method=sampled"], r"\[sampled\]: starts"),
    (["sampled.lo=[0, 0, 0]", "method=sampled"], r"\[sampled\]: lo has 3 entries"),
    (["solver.device=tpu"], "device"),
])
def test_bad_set_fails_cleanly(tmp_path, capsys, sets, message):
    cfg = tmp_path / "cf.toml"
    cfg.write_text(_CF1)
    argv = ["hjb", "--config", str(cfg), "--out", str(tmp_path / "o")]
    for s in sets:
        argv += ["--set", s]
    rc, stdout, err = _run(capsys, argv)
    assert rc == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdenets: error:"), err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "o").exists()


def test_required_v0_stays_required(tmp_path, capsys):
    cfg = tmp_path / "cf.toml"
    cfg.write_text(_CF1.replace("v0 = 0.8\n", ""))
    rc, _, err = _run(capsys, ["hjb", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert rc == 2 and "missing required key 'v0' in [problem]" in err
    # --set supplies it
    rc, _, err = _run(capsys, ["hjb", "--config", str(cfg), "--out", str(tmp_path / "o"),
                               "--set", "problem.v0=0.8", "--set", "grid.points=21"])
    assert rc == 0, err


def test_sampled_method_from_the_cli(tmp_path, capsys):
    cfg = tmp_path / "cf4.toml"
    cfg.write_text(_CF4)
    out = tmp_path / "s"
    rc, stdout, err = _run(capsys, ["hjb", "--config", str(cfg), "--out", str(out), "--json"])
    assert rc == 0, err
    p = json.loads(stdout)
    y, w = [0.2, -0.1, 0.0, 0.3], [0.25] * 4
    exact = _exact_V(0.0, [0.6, 0.1, -0.5, 0.0], y, 0.5, 1.0, w)
    assert p["method"] == "sampled" and p["D"] == 4
    assert p["exact_V0"] == pytest.approx(exact, rel=1e-12)
    assert abs(p["V0"] - exact) < 0.02 * exact, (p["V0"], exact)
    # the closed-loop cost of an admissible control is >= the optimum, and near it
    assert exact * (1 - 1e-6) <= p["closed_loop_cost"] < exact * 1.002
    exact2 = _exact_V(0.0, [0.5, 0.5, -0.5, -0.5], y, 0.5, 1.0, w)
    assert p["closed_loop_costs"][1] == pytest.approx(exact2, rel=0.01)
    for key in ("grid_points", "grid_size", "time_steps", "snapshots", "grid",
                "point_steps_per_second", "memory_estimate_bytes", "direct_cost"):
        assert p[key] is None, key
    assert sorted(p["files"]) == sorted(x.name for x in out.iterdir() if x.name[0] != ".")
    with np.load(out / "closed_loop.npz") as z:
        assert z["states"].shape == (2, 21, 4) and z["t"].shape == (21,)
        np.testing.assert_allclose(z["cost"], p["closed_loop_costs"], rtol=1e-12)
        np.testing.assert_allclose(z["states"][:, 0], z["starts"])
        # ∂_t u = b* = −(u − y)/(α + T − t): u(t) − y = (u0 − y)(α + T − t)/(α + T)
        ts = z["t"][:, None]
        ref = np.asarray(y) + (z["starts"][0] - y) * (0.5 + 1.0 - ts) / 1.5
        np.testing.assert_allclose(z["states"][0], ref, atol=0.02)
    assert json.loads((out / "summary.json").read_text())["V0"] == p["V0"]


def test_set_method_sampled_switches_a_grid_config(tmp_path):
    cfg = tmp_path / "cf.toml"
    cfg.write_text(_CF1)
    c = load_config(cfg, ["method=sampled", "sampled.starts=4"])
    assert c.solver.method == "sampled" and c.sampled.starts == 4
    c2 = load_config(cfg, ["solver.method=sampled", "sampled.starts=4"])
    assert c2 == c


def test_examples_load_unchanged_and_the_sampled_example_is_within_limits():
    for name in ("hjb_closed_form.toml", "hjb_tanh.toml"):
        cfg = load_config(EXAMPLES / name)
        assert cfg.solver.method == "grid"
    cfg = load_config(EXAMPLES / "hjb_sampled.toml")
    assert cfg.solver.method == "sampled" and cfg.problem.width == 8
    problem, opts, v0 = build_sampled(cfg)
    assert problem.D == 8 and v0.shape == (8,) and opts.starts == cfg.sampled.starts


def test_sampled_sizes_are_checked_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "cf4.toml"
    cfg.write_text(_CF4)
    for sets, fragment in ((["sampled.tpbvp_iter=10000000000"], "tpbvp_iter"),
                           (["sampled.fit_iter=10000000000"], "fit_iter"),
                           (["closed_loop.steps=10000000000000"], "closed_loop")):
        rc, _, err = _run(capsys, ["hjb", "--config", str(cfg), "--out", str(tmp_path / "o"),
                                   *[x for s in sets for x in ("--set", s)]])
        assert rc == 2 and fragment in err, err
        assert not (tmp_path / "o").exists()
    with _limits.allow_large():
        build_sampled(load_config(cfg, ["sampled.tpbvp_iter=10000000000"]))
