import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import pdenets as pn
from pdenets.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pdenets.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "simulate" in r.stdout


def test_simulate_example_json(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--example", "demo1d", "--width", "32", "--steps", "16",
                 "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert payload["width_nodes"] == 32 and payload["steps"] == 16
    z = np.load(out / "field.npz")
    assert z["u"].shape == (17, 2, 32) and z["nodes"].shape == (32, 1)
    assert (out / "field.png").stat().st_size > 1000
    # the saved u(·,0) is the piecewise-constant lifting of the default inputs
    from pdenets.examples import example_network

    net, xi = example_network("demo1d")
    lifted = net.lifting(torch.as_tensor(xi), net.grid(pn.Midpoint(32)))
    assert np.allclose(z["u"][0], lifted.numpy())


def test_simulate_model_file_with_input(tmp_path):
    net = pn.ContinuumNetwork.create(4, 2, seed=0)
    pn.save_model(net, tmp_path / "m.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(3, 4)))
    r = run_cli("simulate", str(tmp_path / "m.safetensors"), "--input", str(tmp_path / "x.npy"),
                "--solver", "dopri5", "--rule", "gauss-legendre", "--width", "12",
                "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["solver"] == "dopri5" and payload["stats"]["steps"] > 0


@pytest.mark.parametrize("setup,args,msg", [
    (lambda d: np.save(d / "x.npy", np.full((2, 8), np.nan)), ["--input", "{d}/x.npy"], "NaN"),
    (lambda d: np.save(d / "x.npy", np.ones((2, 5))), ["--input", "{d}/x.npy"], "features"),
    (lambda d: None, ["--solver", "rk4", "--steps", "0"], "steps"),
    (lambda d: None, ["--width", "0"], "width"),
    (lambda d: (d / "x.csv").write_text("1,2,abc\n"), ["--input", "{d}/x.csv"], "cannot read"),
])
def test_simulate_bad_input_exits_nonzero_without_output(tmp_path, setup, args, msg):
    setup(tmp_path)
    out = tmp_path / "out"
    r = run_cli("simulate", "--example", "demo1d", "--out", str(out),
                *[a.format(d=tmp_path) for a in args])
    assert r.returncode != 0
    assert msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_simulate_corrupt_model(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"garbage-garbage-garbage")
    np.save(tmp_path / "x.npy", np.ones((1, 4)))
    r = run_cli("simulate", str(tmp_path / "m.safetensors"), "--input",
                str(tmp_path / "x.npy"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "model file" in r.stderr and not (tmp_path / "o").exists()


def test_failed_run_keeps_previous_output(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "--example", "demo1d", "--out", str(out)]) == 0
    before = (out / "field.npz").read_bytes()
    assert main(["simulate", "--example", "demo1d", "--out", str(out), "--steps", "-3"]) == 2
    assert (out / "field.npz").read_bytes() == before
