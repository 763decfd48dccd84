"""Structured kernels and channels through model files, configuration and the CLI (§10)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pdenets as pn
from pdenets.cli import main
from pdenets.config import load_config
from pdenets.errors import ConfigError, ModelFileError
from pdenets.kernels import KernelControls
from pdenets.modelfile import load_model, read_metadata, save_model

F64 = torch.float64


def _perturbed(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


@pytest.mark.parametrize("kernel", ["dense", "conv", "lowrank", "conv+lowrank"])
@pytest.mark.parametrize("channels,in_channels,readout,lifting", [
    (1, 1, "linear", False), (3, 2, "linear", True), (2, 1, "cell_average", False)])
def test_model_file_round_trip_per_family(tmp_path, kernel, channels, in_channels, readout,
                                          lifting):
    net = _perturbed(pn.ContinuumNetwork.create(
        (5, 4), 4, kernel=kernel, channels=channels, in_channels=in_channels, readout=readout,
        learnable_lifting=lifting, kernel_radius=0.4, rank=3, intervals=2))
    f = tmp_path / "m.safetensors"
    save_model(net, f)
    meta, _ = read_metadata(f)
    v1 = kernel == "dense" and channels == in_channels == 1
    assert meta["version"] == (1 if v1 else 2)
    net2 = load_model(f)
    assert isinstance(net2.controls, KernelControls) == (not (kernel == "dense"
                                                             and channels == 1))
    x = torch.rand(3, *((in_channels,) if in_channels > 1 else ()), 5, 4, dtype=F64)
    for disc in (None, pn.Discretization.make("midpoint", 10, 2, "heun", 5)):
        assert torch.equal(net(x, disc), net2(x, disc))


def test_version_one_files_still_load(tmp_path):
    net = _perturbed(pn.ContinuumNetwork.create(6, 3, seed=1))
    f = tmp_path / "v1.safetensors"
    save_model(net, f)
    meta, tensors = read_metadata(f)
    assert meta["version"] == 1 and set(tensors) == {"controls.w", "controls.b", "readout.c",
                                                     "readout.d"}
    x = torch.randn(2, 6, dtype=F64)
    assert torch.equal(load_model(f)(x), net(x))


def test_version_two_file_with_wrong_tensor_is_refused(tmp_path):
    net = pn.ContinuumNetwork.create(6, 3, kernel="conv", channels=2)
    f = tmp_path / "m.safetensors"
    save_model(net, f)
    meta, _ = read_metadata(f)
    tensors = load_file(f)
    tensors["controls.kernel.k"] = torch.zeros(1, 2, 2, 3, dtype=F64)
    save_file(tensors, f, metadata={"pdenets": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="controls.kernel.k"):
        load_model(f)
    meta["controls"]["kernel"]["radius"] = 3.0
    save_file(load_file(f), f, metadata={"pdenets": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="radius"):
        load_model(f)


def test_config_keys_build_structured_networks():
    from pdenets.data import load_dataset
    from pdenets.training import build_network

    cfg = load_config(None, ["model.kernel=conv+lowrank", "model.kernel_radius=0.3",
                             "model.rank=2", "model.channels=3", "data.name=iris"])
    ds = load_dataset("iris")
    net = build_network(cfg, ds)
    k = net.controls.kernel
    assert net.channels == 3 and [p.kind for p in k.parts] == ["conv", "lowrank"]
    assert k.parts[0].radius == 0.3 and k.parts[1].rank == 2
    out = net(torch.as_tensor(ds.x_test[:4], dtype=torch.float32))
    assert out.shape == (4, ds.n_outputs)


@pytest.mark.parametrize("item,msg", [("model.kernel=fourier", "model.kernel"),
                                      ("model.kernel_radius=0", "model.kernel_radius"),
                                      ("model.kernel_radius=1.5", "model.kernel_radius"),
                                      ("model.rank=0", "model.rank"),
                                      ("model.channels=0", "model.channels")])
def test_bad_kernel_config_is_refused(item, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [item])


def test_cli_runs_conv_models_at_any_width_and_steps(tmp_path, capsys):
    net = _perturbed(pn.ContinuumNetwork.create((4, 4), 3, kernel="conv", channels=2,
                                                kernel_radius=0.3))
    f = tmp_path / "m.safetensors"
    save_model(net, f)
    x = np.random.default_rng(0).random((2, 4, 4))
    np.save(tmp_path / "x.npy", x)
    outs = []
    for width, steps in (("8", "8"), ("16", "16"), ("32", "32")):
        assert main(["predict", str(f), str(tmp_path / "x.npy"), "--width", width,
                     "--steps", steps, "--json"]) == 0
        outs.append(np.asarray(json.loads(capsys.readouterr().out)["outputs"]))
    ref = net(torch.as_tensor(x), pn.Discretization.make("midpoint", 32, 2, "rk4", 32))
    assert np.allclose(outs[-1], ref.detach().numpy(), atol=1e-10)
    # a discretization-invariant model: refining width and steps changes the outputs little
    assert np.abs(outs[1] - outs[2]).max() < np.abs(outs[0] - outs[2]).max() + 1e-12
    assert main(["simulate", str(f), "--input", str(tmp_path / "x.npy"), "--width", "12",
                 "--steps", "6", "--out", str(tmp_path / "sim"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    z = np.load(tmp_path / "sim" / "field.npz")
    assert payload["width_nodes"] == 144 and z["u"].shape[-1] == 2 * 144
    assert main(["simulate", str(f), "--input", str(tmp_path / "x.npy"), "--rule",
                 "gauss-legendre", "--width", "6", "--out", str(tmp_path / "sim2")]) == 0
