"""Multilevel training (MODEL.md §2): exact prolongation of whole networks, level schedule,
every optimizer per level, resume across a level change, CLI."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import pdenets as pn
from pdenets.config import load_config
from pdenets.data import load_dataset
from pdenets.errors import ConfigError
from pdenets.multilevel import MultilevelTrainer, level_configs, prolong_network

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["data.name=iris", "train.batch_size=32", "model.steps=4", "model.intervals=2",
         "model.width=8", "model.control_size=5", "train.method=multilevel", "train.levels=2",
         "train.level_coarsen=all", "train.level_solver=", "train.fine_fraction=0"]


def _rough(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


@pytest.mark.parametrize("dim,basis,lifting", [(1, "linear", True), (1, "constant", False),
                                               (2, "linear", False)])
def test_prolongation_is_exact_for_nested_grids(dim, basis, lifting):
    shape = 4 if dim == 1 else (4, 4)
    net = _rough(pn.ContinuumNetwork.create(shape, 3, control_size=3, intervals=2,
                                            time_basis=basis, learnable_lifting=lifting,
                                            width=8, steps=4, init_scale=1.0, seed=2))
    fine_disc = pn.Discretization(pn.Midpoint(16 if dim == 1 else 8, dim), pn.RK4(), 8)
    fine = prolong_network(net, 5, 4, fine_disc)
    assert fine.controls.size == (5,) * dim and fine.controls.intervals == 4
    assert fine.readout.size == (5,) * dim
    if lifting:
        assert fine.lifting.size == (5,)
    x = torch.randn(6, *((4,) if dim == 1 else (4, 4)), dtype=torch.float64)
    with torch.no_grad():
        a, b = net(x, fine_disc), fine(x, fine_disc)
    assert float(a.abs().max()) > 0.1
    assert torch.allclose(a, b, atol=1e-12, rtol=1e-12)
    # fine network defaults to the new discretization; the coarse one is untouched
    assert fine.discretization.steps == 8 and net.controls.intervals == 2


def test_prolongation_interpolates_non_nested_grids():
    """Smooth controls on a non-nested finer grid: outputs agree up to interpolation error,
    which shrinks as the coarse grid resolves the controls better."""
    errs = []
    for size in (3, 5, 9):
        ctrl = pn.GridControls.from_functions(
            lambda x, y, t: torch.sin(3 * x[..., 0]) * torch.cos(2 * y[..., 0]) * (1 + t),
            lambda x, t: torch.cos(2 * x[..., 0]) - t, 1, size, 2)
        net = pn.ContinuumNetwork(ctrl, pn.make_dynamics("standard", "tanh"),
                                  pn.PiecewiseConstantLifting(4),
                                  pn.LinearReadout(2, 1, size, c=torch.ones(2, size)))
        disc = pn.Discretization(pn.Midpoint(32), pn.RK4(), 8)
        fine = prolong_network(net, 2 * size, 3, disc)  # neither nested in x nor in t
        x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
        with torch.no_grad():
            errs.append(float((net(x, disc) - fine(x, disc)).abs().max()))
    assert errs[-1] < 0.02 and errs[-1] < errs[0]


def test_level_configs_coarsen_by_two():
    cfg = load_config(None, SMALL + ["train.levels=3", "model.intervals=4", "model.steps=8",
                                     "model.width=16", "model.control_size=9",
                                     "train.level_epochs=3,2,1"])
    ds = load_dataset("iris")
    cs = level_configs(cfg, ds)
    assert [c.model.width for c in cs] == [4, 8, 16]
    assert [c.model.steps for c in cs] == [2, 4, 8]
    assert [c.model.control_size for c in cs] == [3, 5, 9]
    assert [c.model.intervals for c in cs] == [1, 2, 4]
    assert [c.train.epochs for c in cs] == [3, 2, 1]
    cs = level_configs(load_config(None, SMALL + ["train.level_coarsen=discretization"]), ds)
    assert [c.model.control_size for c in cs] == [5, 5]
    assert [c.model.steps for c in cs] == [2, 4]
    cs = level_configs(load_config(None, SMALL + ["train.level_coarsen=depth"]), ds)
    assert [c.model.steps for c in cs] == [2, 4] and [c.model.width for c in cs] == [8, 8]
    assert [c.model.control_size for c in cs] == [5, 5]
    cs = level_configs(load_config(None, SMALL + ["train.level_coarsen=none",
                                                  "train.level_solver=euler"]), ds)
    assert [c.model.steps for c in cs] == [4, 4] and [c.model.width for c in cs] == [8, 8]
    assert [c.model.solver for c in cs] == ["euler", cfg.model.solver]
    with pytest.raises(ConfigError, match="level_solver"):
        load_config(None, SMALL + ["train.level_solver=rk5"])
    with pytest.raises(ConfigError, match="level_epochs"):
        load_config(None, SMALL + ["train.level_epochs=1,2,3"])
    with pytest.raises(ConfigError, match="level_method"):
        load_config(None, SMALL + ["train.level_method=multilevel"])


@pytest.mark.parametrize("method,extra", [
    ("adam", ["train.lr=0.1"]), ("sgd", ["train.lr=0.1"]),
    ("lbfgs", ["train.lbfgs_iterations=3"]), ("msa", ["train.msa_inner_steps=3"])])
def test_multilevel_trains_with_every_optimizer(method, extra):
    cfg = load_config(None, SMALL + [f"train.level_method={method}", "train.level_epochs=2,2",
                                     *extra])
    ds = load_dataset("iris")
    tr = MultilevelTrainer(cfg, ds)
    assert tr.net.controls.size == (3,) and tr.disc.steps == 2
    res = tr.fit()
    net = res.net
    assert net.controls.size == (5,) and net.controls.intervals == 2
    assert net.discretization.steps == 4 and net.discretization.width.sizes == (8,)
    assert [h["level"] for h in res.history] == [0, 0, 1, 1]
    assert res.history[-1]["train_objective"] < res.history[0]["train_objective"]
    assert res.metrics["levels"][0]["method"] == method
    assert res.best_epoch in (3, 4)  # best selection within the finest level
    if method == "msa":
        assert "msa_fallbacks" in res.history[-1] and "msa_fallbacks" in res.metrics


def test_euler_then_rk4_levels_train_the_same_controls_and_end_at_the_fine_solver():
    """level_coarsen = none, level_solver = euler: the coarse level is the explicit-Euler
    ResNet of the same controls; the level change is an exact copy (same functions, so the
    same outputs at any discretization) and the result carries the configured solver."""
    cfg = load_config(None, SMALL + ["train.level_coarsen=none", "train.level_solver=euler",
                                     "train.level_epochs=2,1", "train.lr=0.05"])
    ds = load_dataset("iris")
    tr = MultilevelTrainer(cfg, ds)
    assert isinstance(tr.disc.solver, pn.Euler)
    tr.fit(max_epochs=2)
    fine_disc = tr.method._template(1).discretization
    assert isinstance(fine_disc.solver, type(pn.make_solver(cfg.model.solver)))
    x = torch.as_tensor(ds.x_test, dtype=torch.float64)
    with torch.no_grad():
        coarse_out = tr.net(x, fine_disc)
        tr.method._advance(tr)
        assert torch.allclose(tr.net(x, fine_disc), coarse_out, rtol=0, atol=1e-13)
    res = tr.fit()
    assert isinstance(res.net.discretization.solver, type(fine_disc.solver))
    assert res.net.discretization.steps == cfg.model.steps
    assert [h["level"] for h in res.history] == [0, 0, 1]


def test_multilevel_resume_across_level_change_equals_uninterrupted(tmp_path):
    cfg = load_config(None, SMALL + ["train.level_epochs=2,2", "train.lr=0.1"])
    ds = load_dataset("iris")
    full = MultilevelTrainer(cfg, ds)
    full.fit()
    part = MultilevelTrainer(cfg, ds, checkpoint_path=tmp_path / "ck.safetensors")
    part.fit(max_epochs=3)  # one epoch into the fine level
    resumed = MultilevelTrainer(cfg, ds)
    resumed.load_checkpoint(tmp_path / "ck.safetensors")
    assert resumed.epoch == 3 and resumed.level == 1
    resumed.fit()
    for (k, a), (_, b) in zip(full.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert [r["train_objective"] for r in full.history] == \
        [r["train_objective"] for r in resumed.history]


def test_cli_train_multilevel(tmp_path):
    out = tmp_path / "ml"
    sets = SMALL + ["train.epochs=2", "train.level_method=msa", "train.msa_inner_steps=2"]
    r = subprocess.run([sys.executable, "-m", "pdenets", "train",
                        *sum([["--set", s] for s in sets], []), "--out", str(out),
                        "--no-plots", "--json"], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["method"] == "multilevel" and len(m["levels"]) == 2 and m["epochs_run"] == 2
    assert math.isfinite(m["test_loss"])
    net = pn.load_model(out / "model.safetensors")
    assert net.controls.size == (5,) and net.discretization.steps == 4


def test_multilevel_is_a_registered_method_resolved_by_name():
    """``make_trainer`` finds the method through the registry (its module imported by name):
    the same run as :class:`MultilevelTrainer`, bit for bit."""
    from pdenets.training import make_trainer
    from pdenets.training.methods import PLUGINS, get_method

    assert PLUGINS["multilevel"] == "pdenets.multilevel"
    assert get_method("multilevel").__name__ == "MultilevelMethod"
    cfg = load_config(None, SMALL + ["train.method=multilevel", "train.level_epochs=1,2"])
    ds = load_dataset("iris")
    a = make_trainer(cfg, ds).fit()
    b = MultilevelTrainer(cfg, ds).fit()
    for (k, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(x, y), k
    assert a.metrics["levels"] == b.metrics["levels"] and len(a.history) == 3


def test_multilevel_msa_resume_restores_the_inner_counters(tmp_path):
    """Resumed within the finest level, the inner MSA gets ρ and its counters back from the
    history: the resumed run equals the uninterrupted one."""
    cfg = load_config(None, SMALL + ["train.level_method=msa", "train.level_epochs=1,2",
                                     "train.msa_inner_steps=2"])
    ds = load_dataset("iris")
    full = MultilevelTrainer(cfg, ds)
    rf = full.fit()
    part = MultilevelTrainer(cfg, ds, checkpoint_path=tmp_path / "ck.safetensors")
    part.fit(max_epochs=2)
    resumed = MultilevelTrainer(cfg, ds)
    resumed.load_checkpoint(tmp_path / "ck.safetensors")
    assert resumed.level == 1
    assert resumed.inner.method.msa.state() == {k: part.history[-1][k] for k in (
        "msa_rho", "msa_iterations", "msa_fallbacks", "msa_rejected")}
    rr = resumed.fit()
    assert torch.equal(rf.net.controls.w, rr.net.controls.w)
    assert [h["msa_rho"] for h in rf.history] == [h["msa_rho"] for h in rr.history]
    assert rf.metrics["msa_iterations"] == rr.metrics["msa_iterations"]
