"""The extended MSA (MODEL.md §7) with structured kernels and channels (§10): the discrete PMP
identity at the MSA's recorded sweep in the kernel family's own parameters, monotone decrease
of J, the exact block-Jacobi regularization share, and ``pdenets train`` with ``msa``."""

import json
import os
import subprocess
import sys

import pytest
import torch

import pdenets as pn
from pdenets.objective import Objective
from pdenets.pontryagin import MSA, costate_sweep, forward_sweep

F64 = torch.float64
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _net(family, channels=1, dim=1, time_basis="linear", direct=False, seed=3):
    shape = 6 if dim == 1 else (4, 4)
    net = pn.ContinuumNetwork.create(
        shape, 3, kernel=family, channels=channels, intervals=2, kernel_radius=0.4, rank=2,
        init_scale=0.8, seed=seed, steps=3, time_basis=time_basis,
        in_channels=2 if channels > 1 else 1, width=6 if dim == 1 else (4, 4))
    kern = net.controls.kernel
    if direct:  # real convolution operators (not their matrices): the list-of-operators path
        for m in [kern, *getattr(kern, "parts", [])]:
            if hasattr(m, "method"):
                m.method = "direct"
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for p in net.readout.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        for p in net.controls.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=F64))
    x = torch.randn(4, *((channels,) if channels > 1 else ()),
                    *((6,) if dim == 1 else (4, 4)), generator=g, dtype=F64)
    return net, x, torch.tensor([0, 1, 2, 1])


def _gradJ(net, obj, x, y, names):
    params = dict(net.controls.named_parameters())
    with torch.enable_grad():
        J = obj(net, x, y)
        g = torch.autograd.grad(J, [params[n] for n in names])
    return dict(zip(names, g))


CASES = [("conv", 1, 1, "linear", True), ("conv", 2, 1, "constant", False),
         ("lowrank", 1, 1, "constant", False), ("lowrank", 2, 1, "linear", False),
         ("conv+lowrank", 1, 1, "linear", False), ("conv+lowrank", 2, 1, "linear", True),
         ("conv", 2, 2, "linear", False), ("conv+lowrank", 1, 2, "constant", False)]


@pytest.mark.parametrize("family,channels,dim,basis,direct", CASES)
def test_pmp_identity_at_the_msa_sweep(family, channels, dim, basis, direct):
    """∇ of the inner objective at θ_old = −∇J (autograd of J), for ρ = 0 and ρ > 0 (every
    penalty vanishes to second order at θ_old), with α, β > 0."""
    net, x, y = _net(family, channels, dim, basis, direct)
    obj = Objective("cross_entropy", alpha=0.05, beta=0.02)
    msa = MSA(net, obj, rho=3.0, readout_steps=0)
    sw = costate_sweep(forward_sweep(net, x), y, obj.loss)
    prob = msa.inner_problem(sw)
    assert any("kernel." in n for n in prob.names) and "b" in prob.names
    gJ = _gradJ(net, obj, x, y, prob.names)
    scale = sum(float((g ** 2).sum()) for g in gJ.values()) ** 0.5
    assert scale > 1e-3
    for rho in (0.0, 3.0):
        th = prob.start()
        with torch.enable_grad():
            v = prob.value(th, rho=rho)
            gs = torch.autograd.grad(v, [th[n] for n in prob.names])
        err = sum(float(((g + gJ[n]) ** 2).sum()) for n, g in zip(prob.names, gs)) ** 0.5
        assert err < 1e-10 * scale, (rho, err / scale)


def test_regularization_share_is_the_exact_block_jacobi_restriction():
    """Σ_j [R(θ_old + E_jΔ) − R(θ_old)], evaluated by moving the network's own parameters
    knot by knot (independent of the functional evaluation), also for the quartic low-rank
    norm."""
    net, x, y = _net("conv+lowrank", 2)
    obj = Objective("cross_entropy", alpha=0.3, beta=0.1)
    sw = costate_sweep(forward_sweep(net, x), y, obj.loss)
    prob = MSA(net, obj, readout_steps=0).inner_problem(sw)
    g = torch.Generator().manual_seed(7)
    new = {n: v + 0.3 * torch.randn(v.shape, generator=g, dtype=F64)
           for n, v in prob.old.items()}
    with torch.no_grad():
        share = float(prob.regularization_share(new))
        params = dict(net.controls.named_parameters())
        R0 = float(obj.regularization(net))
        ref = 0.0
        for j in range(net.controls.n_knots):
            for n, p in params.items():
                p[j].copy_(new[n][j])
            ref += float(obj.regularization(net)) - R0
            for n, p in params.items():
                p.copy_(prob.old[n])
    assert abs(ref) > 1e-3
    assert share == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("family,channels,dim,direct", [
    ("conv", 1, 1, False), ("conv", 2, 1, True), ("lowrank", 1, 1, False),
    ("lowrank", 2, 1, False), ("conv+lowrank", 2, 1, False), ("conv", 1, 2, False)])
def test_msa_iterations_decrease_J(family, channels, dim, direct):
    """Monotone with acceptance / fallback, and a real decrease after 5 iterations (the
    learnable lifting of C > 1 is frozen: its gradient step after the acceptance test is not
    monotone)."""
    net, x, y = _net(family, channels, dim, direct=direct)
    for p in net.lifting.parameters():
        p.requires_grad_(False)
    obj = Objective("cross_entropy", alpha=1e-3, beta=1e-3)
    msa = MSA(net, obj, rho=1.0, inner_steps=8)
    recs = msa.run(x, y, iterations=5, tol=0.0)
    assert len(recs) == 5
    J0 = recs[0].J_before
    for r in recs:
        assert r.J_after_readout <= r.J_before + 1e-12
        assert r.J_after <= r.J_after_readout + 1e-12
        assert r.H_gain >= 0.0
        assert r.fallback == (not r.accepted)
    for a, b in zip(recs, recs[1:]):
        assert b.J_before == pytest.approx(a.J_after, rel=1e-12)
    with torch.no_grad():
        J5 = float(obj(net, x, y))
    assert J5 == pytest.approx(recs[-1].J_after, rel=1e-12)
    assert J5 < 0.95 * J0
    assert sum(r.accepted for r in recs) >= 3  # the Hamiltonian steps do the work


def test_msa_fallback_with_kernels_never_increases_J():
    """ρ = 0 and many inner steps: rejected Hamiltonian steps fall back to gradient steps."""
    net, x, y = _net("lowrank", 2)
    msa = MSA(net, Objective("cross_entropy"), rho=0.0, inner_steps=25, readout_steps=0)
    recs = msa.run(x, y, iterations=4, tol=0.0)
    for r in recs:
        assert r.J_after <= r.J_before + 1e-12
    assert msa.fallbacks == sum(r.fallback for r in recs)


def test_cli_train_msa_with_conv_kernel(tmp_path):
    out = tmp_path / "run"
    sets = ["data.name=iris", "train.epochs=2", "train.batch_size=64", "model.steps=2",
            "model.intervals=2", "model.width=8", "model.control_size=3", "model.kernel=conv",
            "train.method=msa", "train.msa_inner_steps=3", "dtype=float64"]
    r = subprocess.run([sys.executable, "-m", "pdenets", "train",
                        *sum([["--set", s] for s in sets], []), "--out", str(out),
                        "--no-plots", "--json"], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["method"] == "msa" and m["msa_iterations"] == 4
    assert (out / "model.safetensors").is_file()
    net = pn.load_model(out / "model.safetensors")
    assert type(net.controls).__name__ == "KernelControls"
    assert net.controls.kernel.kind == "conv"
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_objective"] <= hist[0]["train_objective"] + 1e-12
