"""The gallery (examples/*.py): each script runs in fast mode, writes a valid PNG atomically,
and the numbers it prints obey the mathematics — convergence orders, memory growth in the
number of steps, closed forms recomputed here independently of the scripts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GALLERY = sorted(p.stem for p in EXAMPLES.glob("[a-z]*.py"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--out", str(out),
                           *extra], capture_output=True, text=True, env=env, timeout=300)


def gallery_run(name: str, out: Path) -> dict:
    """Run ``name`` in fast mode with --json; check its figure; return the JSON object."""
    proc = run_example(name, out, "--fast", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # exactly one JSON object on stdout
    fig = out / f"{name}.png"
    assert Path(payload["figure"]) == fig
    # written atomically: the figure and nothing else (no temporary file left behind)
    assert sorted(p.name for p in out.iterdir()) == [fig.name]
    data = fig.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    img = matplotlib.image.imread(fig)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    assert float(img[..., :3].std()) > 0.01  # something is drawn
    return payload


def test_gallery_lists_the_expected_examples():
    assert set(GALLERY) >= {"discretization_invariance", "adjoint_memory", "pmp_diagnostic",
                            "hjb_closed_loop", "steady_states", "hybrid_pdeblock",
                            "shapes_conv"}
    for name in GALLERY:  # each has a docstring: title, what it shows, MODEL.md section
        text = (EXAMPLES / f"{name}.py").read_text()
        assert text.startswith('"""') and "MODEL.md §" in text.split('"""')[1], name


def test_discretization_invariance(tmp_path):
    r = gallery_run("discretization_invariance", tmp_path)
    gaps = r["gaps"]
    assert len(gaps) >= 2 and all(b < a for a, b in zip(gaps, gaps[1:])), gaps
    # midpoint width rule (order 2) dominates RK4 in depth (order 4): gaps shrink ×4
    assert all(abs(p - 2) < 0.3 for p in r["orders"]), r["orders"]
    assert r["richardson_error"] == pytest.approx(gaps[-1] / 3)
    assert r["same_class"] is True
    w, S = r["widths"], r["steps"]
    assert all(b == 2 * a for a, b in zip(w, w[1:])) and all(b == 2 * a for a, b in zip(S, S[1:]))


def test_adjoint_memory(tmp_path):
    r = gallery_run("adjoint_memory", tmp_path)
    steps = np.array(r["steps"], float)
    peak = {k: np.array(v) for k, v in r["peak_mib"].items()}
    # the continuous adjoint's memory does not depend on the number of steps: no growth over
    # the last doublings of S, and at most a fixed small overhead over the whole range (the
    # fast mode's field is tiny: 8 KiB of per-solve bookkeeping are 7 % of it)
    c = peak["continuous"]
    assert c[-1] <= 1.01 * c[-3], c
    assert c.max() <= 1.10 * c.min(), c
    # autograd keeps every step: memory grows (asymptotically linearly) with S
    assert np.all(np.diff(peak["discrete"]) > 0)
    inc = np.diff(peak["discrete"]) / np.diff(steps)  # bytes per extra step: constant
    assert inc.max() <= 1.1 * inc.min(), inc
    assert peak["discrete"][-1] > 4 * peak["continuous"][-1]
    # checkpointing every ~√S steps: grows, but sublinearly
    assert np.all(np.diff(peak["checkpointed"]) > 0)
    assert 0.15 < r["slopes"]["checkpointed"] < 0.7 < r["slopes"]["discrete"]
    assert np.all(peak["checkpointed"] < peak["discrete"])
    # the continuous adjoint is consistent: with Euler its gradient approaches the discrete
    # one at first order in h = T/S
    d = np.array(r["rel_grad_diff"])
    orders = np.log2(d[:-1] / d[1:])
    assert np.all(np.abs(orders - 1) < 0.15), orders


def test_pmp_diagnostic(tmp_path):
    r = gallery_run("pmp_diagnostic", tmp_path)
    b, a = r["before"], r["after"]
    # the discrete PMP identity ∇J = −∫φ∇_θH holds to rounding at any controls
    assert b["identity_error"] < 1e-10 and a["identity_error"] < 1e-8
    assert b["projected_H_norm"] == pytest.approx(b["grad_J_norm"], rel=1e-10)
    # training reaches a critical point: knot residual ∝ ‖∇J‖, pointwise residual falls
    assert a["J"] < b["J"]
    assert a["grad_J_norm"] < 1e-5
    assert a["max_knot_residual"] < 1e-4 * b["max_knot_residual"]
    assert a["max_residual"] < 0.2 * b["max_residual"]
    assert a["mean_residual"] < 0.1 * b["mean_residual"]
    # autonomous problem: H is (nearly) constant in depth along the optimal trajectory
    assert a["hamiltonian_spread"] < 0.05 * b["hamiltonian_spread"]


def test_hjb_closed_loop(tmp_path):
    r = gallery_run("hjb_closed_loop", tmp_path)
    alpha, T = r["alpha"], r["T"]
    y, v0 = np.array(r["target"]), np.array(r["v0"])
    omega = np.array([0.5, 0.5])  # midpoint rule with two nodes
    V = float(((v0 - y) ** 2) @ omega / (2 * (1 + T / alpha)))  # MODEL.md §8
    assert r["exact_value_v0"] == pytest.approx(V, rel=1e-12)
    grids = r["grids"]
    errs = [g["max_value_error"] for g in grids]
    hs = [g["h"] for g in grids]
    orders = [math.log(e0 / e1) / math.log(h0 / h1)
              for e0, e1, h0, h1 in zip(errs, errs[1:], hs, hs[1:])]
    assert all(abs(p - 1) < 0.3 for p in orders), (errs, orders)  # monotone scheme: order 1
    uT = y + (v0 - y) * alpha / (alpha + T)
    for g in grids:
        # no admissible control beats the optimum; the feedback's cost approaches it
        assert V - 1e-9 <= g["closed_loop_cost"] < V + 2e-4, (g["closed_loop_cost"], V)
        assert np.abs(np.array(g["terminal_state"]) - uT).max() < 1e-2
        # the grid value carries the scheme's numerical diffusion, from above here
        assert g["value_v0"] > V
    assert grids[-1]["closed_loop_cost"] <= grids[0]["closed_loop_cost"]
    assert max(r["start_path_errors"]) < 1e-2


def test_steady_states(tmp_path):
    r = gallery_run("steady_states", tmp_path)
    n, eps = r["n"], r["eps"]
    mu = [-4 * n**2 * math.sin(j * math.pi / (2 * n)) ** 2 for j in range(1, n)]
    for name, a, u_star, verdict in (("stable (w ≡ −1)", -1.0, 0.3, "asymptotically stable"),
                                     ("unstable (w ≡ +1)", 1.0, -0.3, "unstable")):
        c = r["cases"][name]
        # tanh(a ∫u* + 0.3) = 0 and Δu* = 0  ⇒  u* ≡ −0.3/a
        assert c["u_min"] == pytest.approx(u_star, abs=1e-10)
        assert c["u_max"] == pytest.approx(u_star, abs=1e-10)
        # f'(u*) = tanh'(0)·A + εΔ, A = a·(rank one, mean): spectrum {a} ∪ {ε μ_j}
        exact = sorted([a] + [eps * m for m in mu], reverse=True)
        np.testing.assert_allclose(c["eigenvalues_real"], exact, rtol=1e-8, atol=1e-10)
        assert max(abs(v) for v in c["eigenvalues_imag"]) < 1e-8
        assert c["verdict"] == verdict and c["agrees"] is True
        assert c["observed_rate"] == pytest.approx(max(exact), rel=0.02)
    c = r["cases"]["non-uniform kernel"]
    assert c["residual"] < 1e-10 and c["agrees"] is True
    assert c["observed_rate"] == pytest.approx(c["max_real"], rel=0.02)


@pytest.fixture()
def gallery_helpers(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import _gallery

    return _gallery


def test_bad_out_is_a_one_line_error(tmp_path, capsys, gallery_helpers):
    f = tmp_path / "not-a-dir"
    f.write_text("user data")
    with pytest.raises(SystemExit) as e:
        gallery_helpers.parse_args("Title.", ["--out", str(f), "--fast"], prog="demo.py")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("demo.py: error: --out ")
    assert "not a directory" in err
    assert f.read_text() == "user data"  # never overwritten


def test_fast_mode_from_the_environment(tmp_path, monkeypatch, gallery_helpers):
    monkeypatch.setenv("PDENETS_GALLERY_FAST", "1")
    args = gallery_helpers.parse_args("Title.", ["--out", str(tmp_path / "new" / "dir")],
                                      prog="demo.py")
    assert args.fast and args.out.is_dir() and args.threads == 1


def test_figures_are_replaced_atomically(tmp_path, gallery_helpers):
    plt = gallery_helpers.pyplot()
    (tmp_path / "fig.png").write_bytes(b"old")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = gallery_helpers.save_figure(fig, tmp_path, "fig")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]

    def broken(f, **kwargs):
        f.write(b"partial")
        raise RuntimeError("render failed")

    fig, ax = plt.subplots()
    fig.savefig = broken
    with pytest.raises(RuntimeError, match="render failed"):
        gallery_helpers.save_figure(fig, tmp_path, "fig")
    # the previous figure is intact and no temporary file is left
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_hybrid_pdeblock(tmp_path):
    r = gallery_run("hybrid_pdeblock", tmp_path)
    # a plain PyTorch loop trains the hybrid model: the loss falls from about log 10 and the
    # test accuracy is far above chance (0.1) after the fast mode's few epochs
    losses = np.array(r["losses"])
    assert abs(losses[0] - np.log(10)) < 0.3 and losses[-3:].mean() < 0.75 * losses[0]
    assert r["test_accuracy"] > 0.5
    # the trained block is a continuum model: at 2× width and steps its outputs barely move
    assert r["relative_output_change_refined"] < 1e-2
    assert abs(r["test_accuracy_refined"] - r["test_accuracy"]) <= 0.01


def test_shapes_conv(tmp_path):
    r = gallery_run("shapes_conv", tmp_path)
    # the continuum CNN learns the 4 shape classes: test accuracy (on held-out images) far
    # above chance (0.25), recomputed here from the confusion matrix it reports
    conf = np.array(r["confusion"])
    assert conf.shape == (4, 4) and conf.sum() == r["test_samples"]
    assert np.trace(conf) / conf.sum() == pytest.approx(r["test_accuracy"])
    assert r["test_accuracy"] >= 0.5
    # every class is recognised more often than chance, not just one class predicted
    assert np.all(np.diag(conf) / conf.sum(1) > 0.3), conf
    # the training objective fell well below log 4, the cross-entropy of the zero readout
    losses = np.array(r["losses"])
    assert losses[-1] < min(0.8 * np.log(4), losses[0])
    # a learned multi-channel convolution: (knots, C, C, cells) with C = 8, channels coupled
    assert r["kernel_shape"][1:3] == [8, 8] and min(r["kernel_pair_norms"]) > 0
