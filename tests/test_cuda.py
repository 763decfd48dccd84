"""The CUDA path against the CPU (skipped where no GPU exists; run on a GPU machine with
``python -m pytest tests/test_cuda.py tests/test_network.py -k cuda``)."""

import pytest
import torch

import pdenets as pn
from pdenets.config import load_config
from pdenets.data import load_dataset, random_affine
from pdenets.training import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("basis", ["linear", "constant"])
@pytest.mark.parametrize("adjoint", [None, pn.ContinuousAdjoint()])
def test_gradients_on_cuda_match_cpu(basis, adjoint):  # pragma: no cover - GPU only
    size = 9 if basis == "linear" else 8
    net = pn.ContinuumNetwork.create((8, 8), 10, control_size=size, space_basis=basis, T=2.0,
                                     learnable_lifting=True, seed=3, init_scale=1.0)
    with torch.no_grad():
        net.readout.c.normal_()
    x = torch.rand(32, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    obj = pn.Objective("cross_entropy", alpha=1e-3, beta=1e-3)
    grads = []
    for dev in ("cpu", "cuda"):
        m = net.to(dev)
        m.zero_grad()
        obj(m, x.to(dev), y.to(dev), None, adjoint).backward()
        grads.append(torch.cat([p.grad.reshape(-1).cpu() for p in m.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-11)


def test_training_and_augmentation_on_cuda():  # pragma: no cover - GPU only
    x = torch.rand(5, 8, 8, dtype=torch.float64)
    a = random_affine(x, torch.Generator().manual_seed(0), rotate=10, shift=0.5, scale=0.1)
    b = random_affine(x.cuda(), torch.Generator().manual_seed(0), rotate=10, shift=0.5,
                      scale=0.1)
    assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-12)
    sets = ["train.epochs=2", "model.steps=4", "dtype=float64"]
    ds = load_dataset("digits")
    runs = []
    for dev in ("cpu", "cuda"):
        t = Trainer(load_config(None, sets + [f"device={dev}"]), ds)
        runs.append(t.fit())
    assert runs[1].net.controls.w.device.type == "cuda"
    # same seed, same data order and deformations: the same iterates up to rounding
    assert torch.allclose(runs[0].net.controls.w, runs[1].net.controls.w.cpu(), atol=1e-6)
    assert runs[1].metrics["test_accuracy"] == pytest.approx(runs[0].metrics["test_accuracy"],
                                                             abs=0.01)
