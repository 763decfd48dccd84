import math

import numpy as np
import pytest
import torch

import pdenets as pn
from pdenets.errors import ModelFileError, PdenetsError


def test_piecewise_constant_lifting_2d_places_pixels():
    lift = pn.PiecewiseConstantLifting((2, 3))
    img = torch.arange(6, dtype=torch.float64).reshape(1, 2, 3)
    grid = pn.Midpoint((4, 6), dim=2).grid()
    u0 = lift(img, grid)
    for i, (x0, x1) in enumerate(grid.nodes.tolist()):
        assert u0[0, i] == img[0, int(x0 * 2), int(x1 * 3)]
    # the lifted field integrates to the mean pixel value
    assert float(grid.integrate(u0[0])) == pytest.approx(2.5)


def test_readouts():
    grid = pn.GaussLegendre(6).grid()
    u = (2 * grid.nodes[:, 0] + 1)[None]
    ro = pn.LinearReadout(1, 1, 2, c=torch.ones(1, 2, dtype=torch.float64),
                          d=torch.tensor([0.5], dtype=torch.float64))
    assert float(ro(u, grid)) == pytest.approx(2.0 + 0.5)  # ∫(2x+1) + d
    avg = pn.CellAverageReadout(2)
    assert torch.allclose(avg(torch.full((1, 6), 3.0, dtype=torch.float64), grid),
                          torch.full((1, 2), 3.0, dtype=torch.float64))
    with pytest.raises(PdenetsError, match="no width node"):
        pn.CellAverageReadout(8)(u, pn.Midpoint(4).grid())


def test_learnable_lifting_initialised_to_piecewise_constant():
    lift = pn.LearnableLifting(4, 5)
    grid = pn.Midpoint(8).grid()
    xi = torch.randn(2, 4, dtype=torch.float64)
    u = lift(xi, grid)
    assert u.shape == (2, 8) and bool(torch.isfinite(u).all())


def test_trajectories_and_batching():
    net = pn.ContinuumNetwork.create(4, 2, control_size=3, intervals=2, seed=1)
    disc = pn.Discretization(pn.Midpoint(8), pn.RK4(), 8)
    xi = torch.randn(5, 4, dtype=torch.float64)
    sol = net.solve(xi, disc, saveat=[0.0, 0.5, 1.0])
    assert sol.us.shape == (3, 5, 8)
    assert torch.allclose(sol.us[-1], sol.u) and torch.allclose(sol.us[0],
                                                                net.initial_state(xi, sol.grid))
    # batching: each sample solved alone gives the same result
    single = torch.stack([net.solve(xi[k:k + 1], disc).u[0] for k in range(5)])
    assert torch.allclose(single, sol.u, atol=1e-13)
    assert net.solve(xi, disc, saveat="steps").us.shape == (9, 5, 8)
    with pytest.raises(PdenetsError, match="not on the depth grid"):
        net.solve(xi, disc, saveat=[0.3])
    sol = net.solve(xi, pn.Discretization(pn.Midpoint(8), pn.Dopri5(), 1), saveat=[0.3, 1.0])
    assert sol.us.shape == (2, 5, 8)


def test_float32_close_to_float64():
    net = pn.ContinuumNetwork.create((4, 4), 3, seed=2)
    xi = torch.rand(7, 4, 4, dtype=torch.float64)
    y64 = net(xi)
    y32 = net.to(torch.float32)(xi.float())
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y64, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():  # pragma: no cover - only where a GPU exists
    net = pn.ContinuumNetwork.create((8, 8), 10, seed=2)
    with torch.no_grad():
        net.readout.c.normal_()
    xi = torch.rand(16, 8, 8, dtype=torch.float64)
    y = net(xi)
    yc = net.to("cuda")(xi.to("cuda"))
    assert yc.device.type == "cuda" and torch.allclose(yc.cpu(), y, atol=1e-10)


def test_bad_inputs_are_named():
    net = pn.ContinuumNetwork.create(4, 2)
    with pytest.raises(PdenetsError, match="inputs have shape"):
        net(torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(PdenetsError, match="batch axis"):
        net(torch.randn(4, dtype=torch.float64))
    bad = torch.randn(3, 4, dtype=torch.float64)
    bad[1, 2] = math.nan
    with pytest.raises(PdenetsError, match="non-finite"):
        net(bad)
    bad[1, 2] = math.inf
    with pytest.raises(PdenetsError, match="non-finite"):
        net(bad)
    with pytest.raises(PdenetsError, match="steps"):
        pn.Discretization(pn.Midpoint(4), pn.RK4(), 0)
    with pytest.raises(PdenetsError, match="unknown depth solver 'rk3'"):
        pn.make_solver("rk3")
    with pytest.raises(PdenetsError, match="u0 has shape"):
        pn.solve(net.controls, torch.zeros(2, 3, dtype=torch.float64), net.dynamics,
                 pn.Discretization(pn.Midpoint(4)))
    with pytest.raises(PdenetsError, match="rtol"):
        pn.Dopri5(rtol=-1)


# -- model files ---------------------------------------------------------------------------

def _net():
    net = pn.ContinuumNetwork.create((4, 4), 3, intervals=2, seed=5, learnable_lifting=True)
    with torch.no_grad():
        net.readout.c.normal_()
    return net


def test_model_file_roundtrip(tmp_path):
    net = _net()
    p = tmp_path / "m.safetensors"
    pn.save_model(net, p, extra={"note": "x"})
    net2 = pn.load_model(p)
    xi = torch.rand(3, 4, 4, dtype=torch.float64)
    assert torch.equal(net(xi), net2(xi))
    assert net2.extra == {"note": "x"}
    # the file is plain safetensors: readable without pdenets
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        assert set(f.keys()) == {"controls.w", "controls.b", "readout.c", "readout.d",
                                 "lifting.phi"}
        assert "pdenets" in f.metadata()


def _rewrite(path, tensors=None, meta=None):
    import json

    from safetensors.torch import load_file, save_file

    t = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        m = json.loads(f.metadata()["pdenets"])
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    save_file(t, str(path), metadata={"pdenets": json.dumps(m)})


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt|truncated"),
    (lambda p: p.write_bytes(b"\x00" * 3), "truncated"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)), "corrupt|truncated"),
    (lambda p: _rewrite(p, tensors=lambda t: t.update(evil=torch.zeros(2))), "unexpected tensor"),
    (lambda p: _rewrite(p, tensors=lambda t: t.pop("readout.d")), "missing tensor"),
    (lambda p: _rewrite(p, tensors=lambda t: t.update({"controls.b": torch.zeros(3, 2)})),
     "controls.b do not hold"),
    (lambda p: _rewrite(p, tensors=lambda t: t.update({"controls.b": torch.zeros(16, 3)})),
     "tensor controls.b has shape"),
    (lambda p: _rewrite(p, tensors=lambda t: t["controls.w"].fill_(float("nan"))), "NaN"),
    (lambda p: _rewrite(p, meta=lambda m: m.update(format="other")), "not a pdenets model"),
    (lambda p: _rewrite(p, meta=lambda m: m["dynamics"].update(activation="evil")),
     "unknown activation"),
    (lambda p: _rewrite(p, meta=lambda m: m["controls"].update(size=[10**9, 2])), "controls.size"),
    (lambda p: _rewrite(p, meta=lambda m: m.update(T=-1.0)), "T"),
    # hostile headers: sizes that would allocate far more than the file holds
    (lambda p: _rewrite(p, meta=lambda m: m["controls"].update(size=[65536, 65536])),
     "do not hold"),
    (lambda p: _rewrite(p, meta=lambda m: m["controls"].update(intervals=10**6)),
     "do not hold"),
    (lambda p: _rewrite(p, meta=lambda m: m["discretization"].update(steps=10**12)),
     "out of range"),
    (lambda p: _rewrite(p, meta=lambda m: m["readout"].update(outputs=10**7)), "readout"),
    (lambda p: _rewrite(p, meta=lambda m: m.pop("readout")), "missing key"),
])
def test_bad_model_files_rejected(tmp_path, damage, match):
    p = tmp_path / "m.safetensors"
    pn.save_model(_net(), p)
    damage(p)
    with pytest.raises(ModelFileError, match=match):
        pn.load_model(p)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        pn.load_model(tmp_path / "nope.safetensors")


def test_custom_activation_not_saved(tmp_path):
    net = _net()
    net.dynamics = pn.Standard(pn.Activation("c", torch.sin, torch.cos))
    with pytest.raises(PdenetsError, match="custom activation"):
        pn.save_model(net, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
