"""Every bad input on every command: exit status 2, one line ``pdenets: error: ...`` on stderr,
no traceback, nothing on stdout, and fast (issue 11 items 2, 3, 8a).

The table covers, per command, bad shapes (also empty), NaN/Inf, complex and non-numeric data,
unknown options and choices, invalid config keys/values/types, huge sizes of every kind (also an
``.npy`` header that claims a huge array) and missing files. Cases run in-process under an
alarm (a hang fails the test instead of stalling the suite); a sample also runs as a real
subprocess, where a traceback or a stray warning would show on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pdenets as pn
from pdenets import _limits
from pdenets.cli import main

#: seconds a refusal may take (in-process; the alarm fails a hanging case)
FAST = 20
HUGE = "1000000000"


# ---------------------------------------------------------------------------------------------
# fixtures: a tiny model, a run directory, data and config files
# ---------------------------------------------------------------------------------------------
def _npy_header_only(path: Path, shape, dtype="<f8") -> None:
    """An .npy file whose header claims ``shape`` but that holds no data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})


_HJB = """
[problem]
dynamics = "standard"
activation = "identity"
controls = "b"
alpha = 0.5
T = 1.0
width = 1
samples = 1
target = 0.2
v0 = 0.8
[grid]
lo = -1.0
hi = 1.0
points = 21
[solver]
snapshots = 3
[closed_loop]
steps = 5
[plot]
depths = 2
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    f: dict[str, str] = {"dir": str(d)}
    # a 4-feature, 3-class model (fits iris) and a run directory for `plot`
    net = pn.ContinuumNetwork.create(4, 3, width=8, steps=4, intervals=2,
                                     readout="cell_average", seed=0)
    pn.save_model(net, d / "m.safetensors", extra={"data": {"name": "iris"},
                                                   "task": "classification"})
    f["m"] = str(d / "m.safetensors")
    run = d / "run"
    run.mkdir()
    pn.save_model(net, run / "model.safetensors", extra={"data": {"name": "iris"}})
    f["run"] = str(run)
    broken = d / "broken_run"
    broken.mkdir()
    pn.save_model(net, broken / "model.safetensors")
    (broken / "metrics.jsonl").write_text("{not json\n")
    f["broken_run"] = str(broken)
    (d / "garbage.safetensors").write_bytes(b"\x00garbage" * 10)
    f["garbage"] = str(d / "garbage.safetensors")
    # inputs
    np.save(d / "good.npy", rng.standard_normal((2, 4)))
    np.save(d / "good8.npy", rng.standard_normal((2, 8)))
    np.save(d / "empty.npy", np.zeros((0, 4)))
    np.save(d / "empty_cols.npy", np.zeros((3, 0)))
    np.save(d / "nan.npy", np.array([[1.0, np.nan, 0.0, 1.0]]))
    np.save(d / "inf.npy", np.array([[1.0, np.inf, 0.0, 1.0]] * 2))
    np.save(d / "complex.npy", np.ones((2, 4), complex))
    np.save(d / "strings.npy", np.array([["a", "b", "c", "d"]]))
    np.save(d / "bools.npy", np.ones((2, 4), bool))
    np.save(d / "objects.npy", np.array([[1, None, 2, 3]], dtype=object), allow_pickle=True)
    np.save(d / "wrong_features.npy", np.ones((2, 5)))
    np.save(d / "wrong_features8.npy", np.ones((2, 5)))
    np.save(d / "rank4.npy", np.ones((2, 1, 2, 2)))
    _npy_header_only(d / "huge_header.npy", (100000, 100000))
    _npy_header_only(d / "negative_header.npy", (-1, 4))
    (d / "not_npy.npy").write_bytes(b"this is not an npy file at all")
    (d / "text.csv").write_text("1,2,abc,4\n")
    (d / "empty.csv").write_text("")
    (d / "x.xyz").write_text("1 2 3 4\n")
    # data files (x, y)
    np.savez(d / "d.npz", x=rng.standard_normal((3, 4)), y=rng.standard_normal((3, 3)))
    np.savez(d / "d_nan.npz", x=np.full((3, 4), np.nan), y=np.zeros((3, 3)))
    np.savez(d / "d_complex.npz", x=np.ones((3, 4), complex), y=np.zeros((3, 3)))
    np.savez(d / "d_empty.npz", x=np.zeros((0, 4)), y=np.zeros((0, 3)))
    np.savez(d / "d_noy.npz", x=np.zeros((3, 4)))
    np.savez(d / "d_mismatch.npz", x=np.zeros((3, 4)), y=np.zeros((2, 3)))
    np.savez(d / "d_shape.npz", x=np.zeros((3, 5)), y=np.zeros((3, 3)))
    np.savez(d / "d_strings.npz", x=np.array([["a"] * 4] * 3), y=np.zeros((3, 3)))
    with open(d / "huge_x.npy", "wb") as g:  # a member whose header claims 10^10 values
        np.lib.format.write_array_header_1_0(
            g, {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)})
    import zipfile

    with zipfile.ZipFile(d / "d_huge.npz", "w") as z:
        z.write(d / "huge_x.npy", "x.npy")
        z.write(d / "huge_x.npy", "y.npy")
    (d / "d_garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    # training data file with too few samples, and a csv with a label column
    (d / "tiny.csv").write_text("1,2,0\n3,4,1\n")
    # train configs
    for name, text in {
        "cfg_type": 'seed = 0\n[train]\nepochs = "5"\n',
        "cfg_nan": "[train]\nlr = nan\n",
        "cfg_inf": "[model]\nT = inf\n",
        "cfg_bool": "[train]\nepochs = true\n",
        "cfg_float_int": "[train]\nepochs = 2.5\n",
        "cfg_unknown_key": "[train]\nepocs = 3\n",
        "cfg_unknown_section": "[trainer]\nepochs = 3\n",
        "cfg_choice": '[train]\nmethod = "newton"\n',
        "cfg_huge_batch": "[train]\nbatch_size = 1000000000000\n",
        "cfg_huge_epochs": f"[train]\nepochs = {HUGE}\n",
        "cfg_huge_width": "[model]\nwidth = 4000000\n",
        "cfg_huge_steps": f"[model]\nsteps = {HUGE}\n",
        "cfg_huge_samples": '[data]\nname = "spirals"\nn_samples = 1000000000000\n',
        "cfg_bad_toml": "[train\nepochs = 3\n",
        "cfg_negative": "[train]\nepochs = -3\n",
        "cfg_section_value": "train = 3\n",
    }.items():
        (d / f"{name}.toml").write_text(text)
        f[name] = str(d / f"{name}.toml")
    # hjb configs
    (d / "hjb_ok.toml").write_text(_HJB)
    for name, (old, new) in {
        "hjb_samples": ("samples = 1", f"samples = {HUGE}"),
        "hjb_T": ("T = 1.0", "T = 1e12"),
        "hjb_points": ("points = 21", f"points = {HUGE}"),
        "hjb_points_list": ("points = 21", "points = [21, 21]"),
        "hjb_width": ("width = 1", "width = 100000"),
        "hjb_snapshots": ("snapshots = 3", f"snapshots = {HUGE}"),
        "hjb_cl_steps": ("[closed_loop]\nsteps = 5", f"[closed_loop]\nsteps = {HUGE}000"),
        "hjb_direct": ("[plot]", f"[direct]\nintervals = 4\nmax_iter = {HUGE}\n[plot]"),
        "hjb_nan": ("alpha = 0.5", "alpha = nan"),
        "hjb_type": ("alpha = 0.5", 'alpha = "half"'),
        "hjb_unknown": ("alpha = 0.5", "alpha = 0.5\nbeta = 1"),
        "hjb_choice": ('activation = "identity"', 'activation = "swish2"'),
        "hjb_v0_complex": ("v0 = 0.8", 'v0 = "1+2j"'),
        "hjb_negative": ("[closed_loop]\nsteps = 5", "[closed_loop]\nsteps = -5"),
        "hjb_empty_v0": ("v0 = 0.8", "v0 = []"),
    }.items():
        text = _HJB.replace(old, new)
        assert text != _HJB, name
        (d / f"{name}.toml").write_text(text)
        f[name] = str(d / f"{name}.toml")
    return f


# ---------------------------------------------------------------------------------------------
# the table: (command line, a fragment the one-line message must contain)
# ---------------------------------------------------------------------------------------------
SIM = ["simulate", "--example", "demo1d", "--out", "{dir}/o_sim"]
SIMM = ["simulate", "{m}", "--out", "{dir}/o_simm"]
ST = ["analyze", "stability", "--out", "{dir}/o_st"]
HE = ["analyze", "hessian", "--out", "{dir}/o_he"]
CO = ["analyze", "controllability", "--out", "{dir}/o_co"]
SS = ["analyze", "steady-state", "--out", "{dir}/o_ss"]
PMP = ["analyze", "pmp", "--out", "{dir}/o_pmp"]
TR = ["train", "--out", "{dir}/o_tr", "--quiet", "--no-plots"]
HJB = ["hjb", "--out", "{dir}/o_hjb", "--config"]

CASES: list[tuple[str, list[str], str]] = [
    # -- top level -------------------------------------------------------------------------
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("unknown-top-option", ["--frobnicate"], "unrecognized"),
    # -- simulate --------------------------------------------------------------------------
    ("sim-unknown-option", SIM + ["--bogus"], "unrecognized"),
    ("sim-unknown-example", ["simulate", "--example", "demo3d"], "invalid choice"),
    ("sim-unknown-solver", SIM + ["--solver", "rk45"], "invalid choice"),
    ("sim-non-numeric-steps", SIM + ["--steps", "many"], "invalid int"),
    ("sim-float-steps", SIM + ["--steps", "2.5"], "invalid int"),
    ("sim-nan-rtol", SIM + ["--solver", "dopri5", "--rtol", "nan"], "finite"),
    ("sim-inf-atol", SIM + ["--atol", "inf"], "finite"),
    ("sim-zero-steps", SIM + ["--steps", "0"], "steps"),
    ("sim-negative-width", SIM + ["--width", "-4"], "width"),
    ("sim-one-save", SIM + ["--saves", "1"], "saves"),
    ("sim-huge-steps", SIM + ["--steps", HUGE], "--steps"),
    ("sim-huge-steps-euler", SIM + ["--steps", HUGE + "000", "--solver", "euler"], "--steps"),
    ("sim-huge-width", SIM + ["--width", HUGE], "width"),
    ("sim-huge-saves", SIM + ["--solver", "dopri5", "--saves", HUGE], "--saves"),
    ("sim-no-source", ["simulate", "--out", "{dir}/o"], "--example"),
    ("sim-model-no-input", SIMM, "--input"),
    ("sim-missing-model", ["simulate", "{dir}/none.safetensors", "--input", "{dir}/good.npy"],
     "does not exist"),
    ("sim-garbage-model", ["simulate", "{garbage}", "--input", "{dir}/good.npy"], "model file"),
    ("sim-missing-input", SIM + ["--input", "{dir}/none.npy"], "does not exist"),
    ("sim-input-is-dir", SIM + ["--input", "{dir}"], "does not exist"),
    ("sim-empty-input", SIMM + ["--input", "{dir}/empty.npy"], "empty"),
    ("sim-empty-columns", SIMM + ["--input", "{dir}/empty_cols.npy"], "empty"),
    ("sim-empty-csv", SIMM + ["--input", "{dir}/empty.csv"], "empty"),
    ("sim-nan-input", SIMM + ["--input", "{dir}/nan.npy"], "NaN"),
    ("sim-inf-input", SIMM + ["--input", "{dir}/inf.npy"], "Inf"),
    ("sim-complex-input", SIMM + ["--input", "{dir}/complex.npy"], "complex"),
    ("sim-string-input", SIMM + ["--input", "{dir}/strings.npy"], "not numeric"),
    ("sim-bool-input", SIMM + ["--input", "{dir}/bools.npy"], "not numeric"),
    ("sim-object-input", SIMM + ["--input", "{dir}/objects.npy"], "objects"),
    ("sim-text-csv", SIMM + ["--input", "{dir}/text.csv"], "cannot read"),
    ("sim-unknown-suffix", SIMM + ["--input", "{dir}/x.xyz"], "unsupported"),
    ("sim-not-npy", SIMM + ["--input", "{dir}/not_npy.npy"], "not a valid .npy"),
    ("sim-huge-header", SIMM + ["--input", "{dir}/huge_header.npy"], "100000, 100000"),
    ("sim-negative-header", SIMM + ["--input", "{dir}/negative_header.npy"], "npy"),
    ("sim-wrong-features", SIMM + ["--input", "{dir}/wrong_features.npy"], "features"),
    ("sim-rank4", SIMM + ["--input", "{dir}/rank4.npy"], "shape"),
    ("sim-npz-no-x", SIMM + ["--input", "{dir}/d_garbage.npz"], "npz"),
    ("sim-npz-huge", SIMM + ["--input", "{dir}/d_huge.npz"], "100000, 100000"),
    # -- train -----------------------------------------------------------------------------
    ("train-unknown-option", TR + ["--epochs", "3"], "unrecognized"),
    ("train-missing-config", TR + ["--config", "{dir}/none.toml"], "does not exist"),
    ("train-bad-toml", TR + ["--config", "{cfg_bad_toml}"], "TOML"),
    ("train-type-in-file", TR + ["--config", "{cfg_type}"], "train.epochs"),
    ("train-bool-in-file", TR + ["--config", "{cfg_bool}"], "train.epochs"),
    ("train-float-for-int", TR + ["--config", "{cfg_float_int}"], "train.epochs"),
    ("train-nan-in-file", TR + ["--config", "{cfg_nan}"], "finite"),
    ("train-inf-in-file", TR + ["--config", "{cfg_inf}"], "finite"),
    ("train-unknown-key-file", TR + ["--config", "{cfg_unknown_key}"], "did you mean"),
    ("train-unknown-section", TR + ["--config", "{cfg_unknown_section}"], "unknown config"),
    ("train-section-value", TR + ["--config", "{cfg_section_value}"], "section"),
    ("train-choice-in-file", TR + ["--config", "{cfg_choice}"], "newton"),
    ("train-negative-in-file", TR + ["--config", "{cfg_negative}"], "train.epochs"),
    ("train-huge-batch-file", TR + ["--config", "{cfg_huge_batch}"], "batch_size"),
    ("train-huge-epochs-file", TR + ["--config", "{cfg_huge_epochs}"], "epochs"),
    ("train-huge-width-file", TR + ["--config", "{cfg_huge_width}"], "width"),
    ("train-huge-steps-file", TR + ["--config", "{cfg_huge_steps}"], "steps"),
    ("train-huge-samples-file", TR + ["--config", "{cfg_huge_samples}"], "n_samples"),
    ("train-set-nan-clip", TR + ["--set", "train.clip_norm=nan"], "clip_norm"),
    ("train-set-inf-lr", TR + ["--set", "train.lr=inf"], "train.lr"),
    ("train-set-type", TR + ["--set", "train.epochs=five"], "train.epochs"),
    ("train-set-no-equals", TR + ["--set", "train.epochs"], "key=value"),
    ("train-set-typo", TR + ["--set", "train.bacth_size=3"], "did you mean"),
    ("train-set-choice", TR + ["--set", "model.activation=swish2"], "swish2"),
    ("train-set-huge-batch", TR + ["--set", "train.batch_size=" + "1" + "0" * 12], "batch_size"),
    ("train-set-huge-eval-batch", TR + ["--set", "train.eval_batch_size=" + "1" + "0" * 12],
     "batch_size"),
    ("train-set-huge-epochs", TR + ["--set", "train.epochs=" + HUGE], "epochs"),
    ("train-set-huge-lbfgs", TR + ["--set", "train.method=lbfgs",
                                   "--set", "train.lbfgs_iterations=" + HUGE], "training run"),
    ("train-set-huge-intervals", TR + ["--set", "model.intervals=" + HUGE], "intervals"),
    ("train-set-huge-control", TR + ["--set", "model.control_size=" + HUGE], "control_size"),
    ("train-set-negative-seed", TR + ["--set", "seed=-1"], "seed"),
    ("train-set-bad-device", TR + ["--set", "device=tpu"], "device"),
    ("train-missing-data", TR + ["--set", "data.name={dir}/none.csv"], "does not exist"),
    ("train-nan-data", TR + ["--set", "data.name={dir}/d_nan.npz"], "NaN"),
    ("train-complex-data", TR + ["--set", "data.name={dir}/d_complex.npz"], "complex"),
    ("train-empty-data", TR + ["--set", "data.name={dir}/d_empty.npz"], "empty"),
    ("train-tiny-data", TR + ["--set", "data.name={dir}/tiny.csv"], "samples"),
    ("train-huge-data", TR + ["--set", "data.name={dir}/d_huge.npz"], "100000, 100000"),
    ("train-unknown-dataset", TR + ["--set", "data.name=mnist"], "mnist"),
    # -- evaluate --------------------------------------------------------------------------
    ("eval-missing-model", ["evaluate", "{dir}/none.safetensors"], "does not exist"),
    ("eval-garbage-model", ["evaluate", "{garbage}"], "model file"),
    ("eval-unknown-split", ["evaluate", "{m}", "--split", "dev"], "invalid choice"),
    ("eval-unknown-method", ["evaluate", "{m}", "--method", "rk5"], "invalid choice"),
    ("eval-zero-steps", ["evaluate", "{m}", "--steps", "0"], "steps"),
    ("eval-huge-steps", ["evaluate", "{m}", "--steps", HUGE], "--steps"),
    ("eval-huge-width", ["evaluate", "{m}", "--width", HUGE], "width"),
    ("eval-wrong-data", ["evaluate", "{m}", "--data", "digits"], "expects"),
    ("eval-missing-data", ["evaluate", "{m}", "--data", "{dir}/none.npz"], "does not exist"),
    ("eval-nan-data", ["evaluate", "{m}", "--data", "{dir}/d_nan.npz"], "NaN"),
    ("eval-complex-data", ["evaluate", "{m}", "--data", "{dir}/d_complex.npz"], "complex"),
    ("eval-huge-data", ["evaluate", "{m}", "--data", "{dir}/d_huge.npz"], "100000, 100000"),
    ("eval-non-numeric-width", ["evaluate", "{m}", "--width", "wide"], "invalid int"),
    # -- predict ---------------------------------------------------------------------------
    ("pred-missing-input", ["predict", "{m}", "{dir}/none.npy"], "does not exist"),
    ("pred-no-input", ["predict", "{m}"], "required"),
    ("pred-empty", ["predict", "{m}", "{dir}/empty.npy"], "empty"),
    ("pred-nan", ["predict", "{m}", "{dir}/nan.npy"], "NaN"),
    ("pred-complex", ["predict", "{m}", "{dir}/complex.npy"], "complex"),
    ("pred-strings", ["predict", "{m}", "{dir}/strings.npy"], "not numeric"),
    ("pred-text", ["predict", "{m}", "{dir}/text.csv"], "cannot read"),
    ("pred-wrong-features", ["predict", "{m}", "{dir}/wrong_features.npy"], "features"),
    ("pred-rank4", ["predict", "{m}", "{dir}/rank4.npy"], "shape"),
    ("pred-huge-header", ["predict", "{m}", "{dir}/huge_header.npy"], "100000, 100000"),
    ("pred-huge-steps", ["predict", "{m}", "{dir}/good.npy", "--steps", HUGE], "--steps"),
    ("pred-huge-width", ["predict", "{m}", "{dir}/good.npy", "--width", HUGE], "width"),
    ("pred-unknown-rule", ["predict", "{m}", "{dir}/good.npy", "--rule", "simpson"],
     "invalid choice"),
    # -- plot ------------------------------------------------------------------------------
    ("plot-missing-dir", ["plot", "{dir}/none"], "run directory"),
    ("plot-not-a-run", ["plot", "{dir}"], "run directory"),
    ("plot-broken-metrics", ["plot", "{broken_run}", "--overwrite"], "JSON"),
    ("plot-non-numeric-inputs", ["plot", "{run}", "--inputs", "four"], "invalid int"),
    ("plot-unknown-option", ["plot", "{run}", "--dpi", "3"], "unrecognized"),
    # -- analyze ---------------------------------------------------------------------------
    ("an-unknown-analysis", ["analyze", "spectrum"], "invalid choice"),
    ("st-unknown-example", ST + ["--example", "chaotic"], "invalid choice"),
    ("st-no-source", ST, "--example"),
    ("st-missing-model", ST + ["{dir}/none.safetensors", "--data", "{dir}/d.npz"],
     "does not exist"),
    ("st-zero-iters", ST + ["--example", "demo1d", "--iters", "0"], "iters"),
    ("st-huge-iters", ST + ["--example", "demo1d", "--iters", HUGE], "--iters"),
    ("st-huge-steps", ST + ["--example", "demo1d", "--steps", HUGE], "--steps"),
    ("st-huge-width", ST + ["--example", "demo1d", "--width", HUGE], "width"),
    ("st-data-csv", ST + ["{m}", "--data", "{dir}/text.csv"], "npz"),
    ("st-data-nan", ST + ["{m}", "--data", "{dir}/d_nan.npz"], "NaN"),
    ("st-data-complex", ST + ["{m}", "--data", "{dir}/d_complex.npz"], "complex"),
    ("st-data-empty", ST + ["{m}", "--data", "{dir}/d_empty.npz"], "empty"),
    ("st-data-strings", ST + ["{m}", "--data", "{dir}/d_strings.npz"], "not numeric"),
    ("st-data-shape", ST + ["{m}", "--data", "{dir}/d_shape.npz"], "features"),
    ("st-data-huge", ST + ["{m}", "--data", "{dir}/d_huge.npz"], "100000, 100000"),
    ("st-data-garbage", ST + ["{m}", "--data", "{dir}/d_garbage.npz"], "npz"),
    ("he-nan-alpha", HE + ["--example", "saddle", "--alpha", "nan"], "finite"),
    ("he-zero-k", HE + ["--example", "saddle", "--k", "0"], "--k"),
    ("he-huge-k", HE + ["--example", "saddle", "--k", HUGE], "--k"),
    ("he-huge-steps", HE + ["--example", "saddle", "--steps", HUGE], "--steps"),
    ("he-huge-optimize", HE + ["--example", "convex", "--optimize", HUGE], "--optimize"),
    ("he-unknown-loss", HE + ["--example", "saddle", "--loss", "hinge"], "invalid choice"),
    ("he-unknown-params", HE + ["--example", "saddle", "--params", "nothing"], "parameter"),
    ("he-no-targets", HE + ["{m}", "--data", "{dir}/d_noy.npz"], "'y'"),
    ("he-mismatch", HE + ["{m}", "--data", "{dir}/d_mismatch.npz"], "samples"),
    ("co-bad-alphas", CO + ["--example", "controllable", "--alphas", "a,b"], "comma-separated"),
    ("co-nan-alphas", CO + ["--example", "controllable", "--alphas", "nan"], "finite"),
    ("co-bad-samples", CO + ["--example", "controllable", "--samples", "1.5"], "integers"),
    ("co-zero-samples", CO + ["--example", "controllable", "--samples", "0"], "positive"),
    ("co-huge-samples", CO + ["--example", "controllable", "--samples", "1e12"], "sample"),
    ("co-huge-horizon", CO + ["--example", "controllable", "--horizons", "1e12"], "horizons"),
    ("co-huge-iters", CO + ["--example", "controllable", "--iters", HUGE], "--iters"),
    ("ss-nan-horizon", SS + ["--example", "stable", "--horizon", "nan"], "finite"),
    ("ss-negative-horizon", SS + ["--example", "stable", "--horizon", "-1"], "horizon"),
    ("ss-huge-width", SS + ["--example", "stable", "--width", HUGE], "width"),
    ("ss-unknown-init", SS + ["--example", "stable", "--init", "random"], "invalid choice"),
    ("ss-time-dependent", SS + ["--example", "demo1d"], "depend on depth"),
    ("pmp-unknown-split", PMP + ["{m}", "--split", "dev"], "invalid choice"),
    ("pmp-huge-steps", PMP + ["--example", "convex", "--steps", HUGE], "--steps"),
    ("pmp-zero-samples", PMP + ["{m}", "--max-samples", "0"], "max-samples"),
    ("pmp-negative-alpha", PMP + ["--example", "convex", "--alpha", "-1"], "alpha"),
    ("pmp-inf-beta", PMP + ["--example", "convex", "--beta", "inf"], "finite"),
    ("pmp-wrong-data", PMP + ["{m}", "--data", "digits"], "expects"),
    # -- hjb -------------------------------------------------------------------------------
    ("hjb-no-config", ["hjb"], "required"),
    ("hjb-missing-config", HJB + ["{dir}/none.toml"], "does not exist"),
    ("hjb-huge-samples", HJB + ["{hjb_samples}"], "samples"),
    ("hjb-huge-T", HJB + ["{hjb_T}"], "T = 1e+12"),
    ("hjb-huge-points", HJB + ["{hjb_points}"], "points"),
    ("hjb-points-mismatch", HJB + ["{hjb_points_list}"], "grid"),
    ("hjb-huge-width", HJB + ["{hjb_width}"], "width"),
    ("hjb-huge-snapshots", HJB + ["{hjb_snapshots}"], "points"),
    ("hjb-huge-closed-loop", HJB + ["{hjb_cl_steps}"], "closed_loop"),
    ("hjb-huge-direct", HJB + ["{hjb_direct}"], "max_iter"),
    ("hjb-nan", HJB + ["{hjb_nan}"], "finite"),
    ("hjb-type", HJB + ["{hjb_type}"], "alpha"),
    ("hjb-unknown-key", HJB + ["{hjb_unknown}"], "beta"),
    ("hjb-unknown-choice", HJB + ["{hjb_choice}"], "swish2"),
    ("hjb-complex-v0", HJB + ["{hjb_v0_complex}"], "v0"),
    ("hjb-negative-steps", HJB + ["{hjb_negative}"], "steps"),
    ("hjb-empty-v0", HJB + ["{hjb_empty_v0}"], "v0"),
    ("hjb-huge-threads", HJB + ["{dir}/hjb_ok.toml", "--threads", HUGE], "threads"),
]


def _argv(args: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in args]


class _Hang(Exception):
    pass


def _run_in_process(argv: list[str], capsys) -> tuple[int, str, str, float]:
    def alarm(signum, frame):
        raise _Hang(f"no answer within {FAST} s: {argv}")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(FAST)
    t0 = time.perf_counter()
    try:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse usage errors
            rc = int(e.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err, time.perf_counter() - t0


def _assert_clean_error(rc: int, out: str, err: str, fragment: str) -> None:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdenets: error: "), err
    assert fragment in lines[0], lines[0]
    assert out == "", out


@pytest.mark.parametrize("name,args,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(name, args, fragment, files, capsys, monkeypatch):
    monkeypatch.delenv(_limits.ENV_VAR, raising=False)
    before = set(os.listdir(files["dir"]))
    rc, out, err, seconds = _run_in_process(_argv(args, files), capsys)
    _assert_clean_error(rc, out, err, fragment)
    assert seconds < FAST
    # a failed command leaves no output (directory or partial directory) behind
    assert set(os.listdir(files["dir"])) <= before


# a sample that also runs as a real process: exit status, stderr, no traceback or warning
SUBPROCESS = ["sim-huge-steps", "sim-huge-header", "sim-complex-input", "sim-unknown-option",
              "train-set-nan-clip", "he-huge-steps", "hjb-huge-T", "pred-nan"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_in_a_real_process(name, files):
    args = next(c for c in CASES if c[0] == name)
    env = {k: v for k, v in os.environ.items() if k != _limits.ENV_VAR}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pdenets", *_argv(args[1], files)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert time.perf_counter() - t0 < 120
    _assert_clean_error(r.returncode, r.stdout, r.stderr, args[2])


# ---------------------------------------------------------------------------------------------
# the override, and NaN produced during a run
# ---------------------------------------------------------------------------------------------
def test_allow_large_overrides_the_size_checks(files, capsys, monkeypatch, tmp_path):
    """With a (pretend) 64 KiB machine the default demo solve is refused — naming the limit —
    unless --allow-large or PDENETS_ALLOW_LARGE is given."""
    monkeypatch.delenv(_limits.ENV_VAR, raising=False)
    monkeypatch.setattr(_limits, "physical_memory", lambda: 64 * 1024)
    argv = ["simulate", "--example", "demo1d", "--out", str(tmp_path / "s")]
    rc, out, err, _ = _run_in_process(argv, capsys)
    _assert_clean_error(rc, out, err, "limit of 32 KiB")
    assert "--allow-large" in err
    rc, out, err, _ = _run_in_process(argv + ["--allow-large"], capsys)
    assert rc == 0 and err == "" and (tmp_path / "s" / "field.npz").is_file()
    monkeypatch.setenv(_limits.ENV_VAR, "1")
    rc, out, err, _ = _run_in_process(argv + ["--json"], capsys)
    assert rc == 0 and json.loads(out)["steps"] == 32


def test_memory_check_reads_the_header_before_the_data(files, capsys, monkeypatch, tmp_path):
    """A genuine 1 MiB array is refused on a (pretend) 1 MiB machine before it is loaded."""
    monkeypatch.delenv(_limits.ENV_VAR, raising=False)
    np.save(tmp_path / "big.npy", np.zeros((2, 65536)))
    monkeypatch.setattr(_limits, "physical_memory", lambda: 2**20)
    loads = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a))
    rc, out, err, _ = _run_in_process(["predict", files["m"], str(tmp_path / "big.npy")],
                                      capsys)
    _assert_clean_error(rc, out, err, "(2, 65536) float64")
    assert loads == []


def test_nan_produced_during_a_run_is_an_error(tmp_path, capsys):
    """A model whose solve overflows (large kernel, identity activation, huge inputs) gives
    NaN/Inf outputs: simulate and predict report an error instead of returning them. (The model
    file itself is sane: it loads, and its load-time probe on inputs of size 1 is finite.)"""
    import torch

    net = pn.ContinuumNetwork.create(4, 2, width=8, steps=4, activation="identity",
                                     readout="cell_average", seed=0)
    with torch.no_grad():
        net.controls.w.fill_(100.0)
    pn.save_model(net, tmp_path / "big.safetensors")
    np.save(tmp_path / "x.npy", np.full((2, 4), 1e306))
    for argv, what in (
        (["simulate", str(tmp_path / "big.safetensors"), "--input", str(tmp_path / "x.npy"),
          "--out", str(tmp_path / "o")], "outputs"),
        (["predict", str(tmp_path / "big.safetensors"), str(tmp_path / "x.npy")], "outputs"),
    ):
        rc, out, err, _ = _run_in_process(argv, capsys)
        _assert_clean_error(rc, out, err, "NaN or Inf")
        assert what in err
    assert not (tmp_path / "o").exists()
