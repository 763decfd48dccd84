"""Training layer: config, data, resume-equals-uninterrupted, results directory, bad input,
method registry, trainer on given parts."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import pdenets as pn
from pdenets.config import load_config
from pdenets.data import load_dataset, preprocess
from pdenets.errors import ConfigError, PdenetsError
from pdenets.training import Trainer, run_training

SMALL = ["data.name=iris", "train.method=adam", "train.epochs=4", "train.batch_size=32",
         "model.steps=4", "model.intervals=2", "model.width=8", "model.control_size=5"]


def test_config_defaults_overrides_and_errors(tmp_path):
    cfg = load_config()
    assert cfg.data.name == "digits" and cfg.train.method == "multilevel"
    assert cfg.train.level_solver == "euler" and cfg.model.solver == "rk4"
    from pdenets import _limits

    with _limits.allow_large():  # digits at 32×32 nodes, full-batch L-BFGS: ~40 h estimated
        cfg = load_config(None, ["train.method=lbfgs", "model.width=32", "objective.alpha=0.5",
                                 "model.learnable_lifting=true"])
    assert (cfg.train.method, cfg.model.width, cfg.objective.alpha,
            cfg.model.learnable_lifting) == ("lbfgs", 32, 0.5, True)
    f = tmp_path / "c.toml"
    f.write_text('seed = 3\n[train]\nmethod = "sgd"\nlr = 1\n[model]\nsolver = "heun"\n')
    cfg = load_config(f, ["train.lr=0.5"])
    assert cfg.seed == 3 and cfg.train.method == "sgd" and cfg.train.lr == 0.5
    assert cfg.model.solver == "heun"
    # the resolved config round-trips through TOML
    (tmp_path / "r.toml").write_text(cfg.to_toml())
    assert load_config(tmp_path / "r.toml") == cfg
    bad = [
        (["train.methd=adam"], "did you mean 'train.method'"),
        (["trian.method=adam"], "unknown config key"),
        (["train.method=newton"], "train.method: unknown value 'newton'"),
        (["model.width=abc"], "model.width: expected a int"),
        (["model.steps=0"], "model.steps: must be > 0"),
        (["train.lr=-1"], "train.lr"),
        (["data.test_fraction=1.5"], "data.test_fraction"),
        (["model.activation=gelu"], "model.activation"),
        (["noequals"], "key=value"),
        (["train=3"], "is a section"),
        (["model.eps=0.1", "train.gradient=continuous"], "continuous"),
    ]
    for sets, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, sets)
    f.write_text("[train\nmethod=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    f.write_text('[train]\nepochs = "many"\n')
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(f)


def test_datasets_splits_are_fixed_and_stratified():
    ds = load_dataset("digits")
    assert ds.input_shape == (8, 8) and ds.n_outputs == 10
    n = len(ds.x_train) + len(ds.x_val) + len(ds.x_test)
    assert n == 1797 and len(ds.x_test) == 450  # 25 % test
    # stratified: each class's test count is 25 % of its total, within one sample
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)
    counts = np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(counts - 0.25 * totals) <= 1)
    again = load_dataset("digits")
    assert np.array_equal(ds.x_test, again.x_test)
    assert ds.x_train.max() <= 1.0 and ds.x_train.min() >= 0.0
    bc = load_dataset("breast_cancer")
    assert abs(bc.x_train.mean()) < 1e-12 and bc.input_shape == (30,)
    raw = bc.x_test * np.asarray(bc.preprocess["std"]) + np.asarray(bc.preprocess["mean"])
    assert np.allclose(preprocess(raw, bc.preprocess), bc.x_test)
    sp = load_dataset("spirals", n_samples=400)
    assert sp.input_shape == (2,) and len(sp.x_test) == 100


def test_user_data_files_validated(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int)
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "ok.npz"))
    assert ds.task == "classification" and ds.input_shape == (3,)
    np.savetxt(tmp_path / "ok.csv", np.column_stack([x, y]), delimiter=",")
    assert load_dataset(str(tmp_path / "ok.csv")).n_outputs == 2
    np.savez(tmp_path / "reg.npz", x=x, y=x[:, 0] * 0.37 + 0.01 * np.arange(60))
    assert load_dataset(str(tmp_path / "reg.npz")).task == "regression"
    xn = x.copy()
    xn[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=xn, y=y)
    with pytest.raises(PdenetsError, match="NaN"):
        load_dataset(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "shape.npz", x=x, y=y[:50])
    with pytest.raises(PdenetsError, match="y has shape"):
        load_dataset(str(tmp_path / "shape.npz"))
    np.savez(tmp_path / "nox.npz", a=x)
    with pytest.raises(PdenetsError, match="'x' and 'y'"):
        load_dataset(str(tmp_path / "nox.npz"))
    (tmp_path / "bad.csv").write_text("1,2,x\n3,4,5\n")
    with pytest.raises(PdenetsError, match="cannot read"):
        load_dataset(str(tmp_path / "bad.csv"))
    with pytest.raises(PdenetsError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npz"))


def full_and_resumed(cfg, ds, tmp_path, after):
    """An uninterrupted run, and one interrupted after ``after`` epochs and resumed from its
    checkpoint by a fresh trainer."""
    full = Trainer(cfg, ds)
    full.fit()
    part = Trainer(cfg, ds, checkpoint_path=tmp_path / "ck.safetensors")
    part.fit(max_epochs=after)
    resumed = Trainer(cfg, ds)
    resumed.load_checkpoint(tmp_path / "ck.safetensors")
    assert resumed.epoch == after
    resumed.fit()
    return full, resumed


@pytest.mark.parametrize("method,extra", [("adam", []), ("sgd", ["train.lr=0.1"]),
                                          ("lbfgs", ["train.lbfgs_iterations=3"]),
                                          ("adam", ["train.gradient=continuous"])])
def test_resume_equals_uninterrupted(tmp_path, method, extra):
    sets = SMALL + [f"train.method={method}", *extra]
    cfg = load_config(None, sets)
    ds = load_dataset("iris")
    full, resumed = full_and_resumed(cfg, ds, tmp_path, after=2)
    assert resumed.epoch == cfg.train.epochs
    for (k, a), (_, b) in zip(full.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert [r["train_objective"] for r in full.history] == \
        [r["train_objective"] for r in resumed.history]


def test_training_reduces_objective_and_writes_results(tmp_path):
    cfg = load_config(None, SMALL + ["train.epochs=15", "train.lr=0.2"])
    m = run_training(cfg, tmp_path / "run", progress=False)
    d = tmp_path / "run"
    for f in ("config.toml", "metrics.json", "metrics.jsonl", "model.safetensors",
              "checkpoint.safetensors", "curves.png", "field.png"):
        assert (d / f).is_file(), f
    assert not (tmp_path / "run.partial").exists()
    metrics = json.loads((d / "metrics.json").read_text())
    for key in ("train_loss", "val_accuracy", "test_accuracy", "test_loss", "wall_seconds"):
        assert key in metrics
    hist = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 15 and hist[-1]["train_objective"] < hist[0]["train_objective"]
    assert m["test_accuracy"] > 0.8  # iris is easy; chance is 1/3
    net = pn.load_model(d / "model.safetensors")
    assert net.extra["data"]["name"] == "iris"
    assert load_config(d / "config.toml").train.epochs == 15


def run_cli(*args, cwd=None):
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pdenets", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=env)


def test_cli_train_evaluate_predict_plot(tmp_path):
    out = tmp_path / "r"
    r = run_cli("train", "--out", str(out), "--json", *sum([["--set", s] for s in SMALL], []))
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["out"] == str(out)
    r = run_cli("evaluate", str(out / "model.safetensors"), "--width", "16", "--steps", "8",
                "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["width_nodes"] == [16] and 0 <= ev["accuracy"] <= 1 and ev["loss"] > 0
    r = run_cli("evaluate", str(out / "model.safetensors"), "--json")
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(m["test_accuracy"])
    from sklearn.datasets import load_iris

    np.save(tmp_path / "x.npy", load_iris().data[:5])
    r = run_cli("predict", str(out / "model.safetensors"), str(tmp_path / "x.npy"), "--json")
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)
    assert len(pred["classes"]) == 5 and np.allclose(np.sum(pred["probabilities"], 1), 1)
    (out / "curves.png").unlink()
    r = run_cli("plot", str(out), "--json")
    assert r.returncode == 0 and (out / "curves.png").is_file()


@pytest.mark.parametrize("args,msg", [
    (["--set", "train.methd=adam"], "did you mean"),
    (["--set", "data.name=nosuchdata"], "data.name"),
    (["--set", "model.width=-2"], "model.width"),
    (["--config", "/nonexistent.toml"], "does not exist"),
])
def test_cli_train_bad_input(tmp_path, args, msg):
    r = run_cli("train", "--out", str(tmp_path / "r"), *args)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.iterdir())


def test_cli_train_unwritable_and_nan_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("train", "--out", str(blocker / "sub"), *sum([["--set", s] for s in SMALL], []))
    assert r.returncode == 2 and "cannot write output directory" in r.stderr
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[0, 0] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=(np.arange(40) % 2))
    r = run_cli("train", "--out", str(tmp_path / "r"), "--set", f"data.name={tmp_path}/d.npz")
    assert r.returncode == 2 and "NaN" in r.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()
    r = run_cli("evaluate", str(tmp_path / "nomodel.safetensors"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cli_resume(tmp_path):
    out = tmp_path / "r"
    sets = sum([["--set", s] for s in SMALL], [])
    # a run that fails mid-way leaves only OUT.partial with a checkpoint
    from pdenets.cli import main

    cfg = load_config(None, SMALL)
    ds = load_dataset("iris")
    t = Trainer(cfg, ds, checkpoint_path=tmp_path / "r.partial" / "checkpoint.safetensors")
    (tmp_path / "r.partial").mkdir()
    t.fit(max_epochs=2)
    assert main(["train", "--out", str(out), "--resume", "--quiet", *sets]) == 0
    assert (out / "metrics.json").is_file() and not (tmp_path / "r.partial").exists()
    hist = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in hist] == [1, 2, 3, 4]
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2


def test_affine_image_augmentation_against_scipy():
    from scipy.ndimage import affine_transform

    from pdenets.data import affine_images, random_affine

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.random((4, 5, 7)))
    # integer translations: the zero-filled translate (to rounding: grid_sample's normalized
    # coordinates are not exact integers in binary)
    out = affine_images(x[:1], torch.zeros(1), torch.ones(1), torch.tensor([[1.0, -2.0]]))
    ref = torch.zeros(5, 7, dtype=torch.float64)
    ref[1:, :5] = x[0, :4, 2:]
    assert torch.allclose(out[0], ref, rtol=0, atol=1e-15)
    # rotation, scaling, sub-pixel shift: bilinear with zeros outside (scipy's convention)
    ang = torch.tensor([0.3, -0.2, 0.0, 1.0])
    sc = torch.tensor([1.1, 0.9, 1.0, 1.3])
    sh = torch.tensor([[0.4, -0.3], [-1.2, 0.7], [0.25, 0.5], [0.0, 0.0]])
    out = affine_images(x, ang, sc, sh)
    c = np.array([2.0, 3.0])
    for k in range(4):
        a, s = float(ang[k]), float(sc[k])
        Minv = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / s
        offset = c - Minv @ (c + sh[k].numpy())
        want = affine_transform(x[k].numpy(), Minv, offset=offset, order=1,
                                mode="grid-constant", cval=0.0)
        assert np.allclose(out[k].numpy(), want, atol=1e-12), k
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_affine(x, g1, rotate=10, shift=0.5, scale=0.1),
                       random_affine(x, g2, rotate=10, shift=0.5, scale=0.1))
    assert random_affine(x, g1) is x


def test_image_augmentation_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((60, 4, 4))
    y = (x[:, :2].mean((1, 2)) > x[:, 2:].mean((1, 2))).astype(int)
    np.savez(tmp_path / "img.npz", x=x, y=y)
    sets = [f"data.name={tmp_path}/img.npz", "train.epochs=3", "train.batch_size=16",
            "model.steps=2", "model.intervals=1", "train.augment_shift=1",
            "train.augment_rotate=20", "train.augment_scale=0.2"]
    cfg = load_config(None, sets)
    ds = load_dataset(cfg.data.name)
    t = Trainer(cfg, ds)
    xb = torch.as_tensor(x[:8])
    moved = t.augment(xb)
    assert moved.shape == xb.shape and not torch.allclose(moved, xb)
    assert torch.equal(t.augment(torch.as_tensor(x[:8, 0])), torch.as_tensor(x[:8, 0]))
    full, resumed = full_and_resumed(cfg, ds, tmp_path, after=1)
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_or_last_iterate():
    sets = ["data.name=moons", "data.n_samples=200", "train.epochs=5", "model.steps=2",
            "model.intervals=1", "train.lr=0.05"]
    ds = load_dataset("moons", n_samples=200)
    last = Trainer(load_config(None, sets + ["train.keep=last"]), ds)
    r_last = last.fit()
    best = Trainer(load_config(None, sets + ["train.keep=best"]), ds)
    r_best = best.fit()
    assert r_last.metrics["kept_epoch"] == 5
    losses = [h["val_loss"] for h in r_best.history]
    assert losses == [h["val_loss"] for h in r_last.history]  # same run up to the choice
    k = r_best.metrics["kept_epoch"]
    assert losses[k - 1] == min(losses)
    assert r_best.metrics["val_loss"] == pytest.approx(losses[k - 1], rel=1e-6)
    assert r_last.metrics["val_loss"] == pytest.approx(losses[-1], rel=1e-6)


def test_method_registry_and_a_registered_method(monkeypatch):
    """Names resolve through the registry (plug-ins on first use); a new method registered
    with ``register_method`` is accepted by the configuration and drives the trainer: one epoch
    of full-batch gradient descent equals θ − η ∇J from autograd on a copy of the network."""
    from pdenets.training import make_trainer
    from pdenets.training import methods as M

    for name in ("adam", "sgd", "lbfgs", "msa", "multilevel"):
        assert M.get_method(name).name == name
    with pytest.raises(ConfigError, match="train.method: unknown value 'newton'"):
        M.get_method("newton")
    monkeypatch.setattr(M, "_REGISTRY", dict(M._REGISTRY))
    monkeypatch.setattr(M, "METHODS", M.METHODS)

    @M.register_method("gd")
    class GradientDescent(M.Method):
        def make_optimizer(self, trainer):
            return torch.optim.SGD(trainer.params, lr=self.cfg.train.lr)

        def train_epoch(self, trainer):
            x, y = trainer.data["train"]
            trainer.optimizer.zero_grad()
            J = trainer.loss(x, y)
            J.backward()
            trainer.optimizer.step()
            return float(J.detach())

    assert "gd" in M.METHODS and M.get_method("gd") is GradientDescent
    cfg = load_config(None, SMALL + ["train.method=gd", "train.epochs=1", "dtype=float64",
                                     "train.schedule=constant", "train.lr=0.3"])
    ds = load_dataset("iris")
    tr = make_trainer(cfg, ds)
    assert isinstance(tr.method, GradientDescent)
    ref = {k: v.clone() for k, v in tr.net.state_dict().items()}
    net = copy.deepcopy(tr.net)
    x, y = ds.tensors("train", torch.float64)
    J = tr.objective(net, x, y)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(J, [p for p in net.parameters() if p.requires_grad])
    res = tr.fit()
    assert res.history[0]["train_objective"] == pytest.approx(float(J), rel=1e-12)
    for n, g in zip(names, grads):
        assert torch.allclose(res.net.state_dict()[n], ref[n] - 0.3 * g, rtol=1e-10,
                              atol=1e-12), n
    assert res.metrics["method"] == "gd"


def test_trainer_on_tensors_with_given_parts_equals_the_configured_one():
    """Any network, data tensors, objective and gradient strategy: the same run as the trainer
    built from the configuration (same seed → same shuffles), bit for bit."""
    from pdenets.training import build_network, make_adjoint_from_config, make_objective
    from pdenets.training.methods import Adam

    cfg = load_config(None, SMALL + ["train.keep=best"])
    ds = load_dataset("iris")
    ref = Trainer(cfg, ds).fit()
    data = {s: ds.tensors(s, torch.float32) for s in ("train", "val", "test")}
    tr = Trainer(cfg, data, build_network(cfg, ds), method=Adam(cfg),
                 objective=make_objective(cfg, ds), adjoint=make_adjoint_from_config(cfg))
    res = tr.fit()
    for (k, a), (_, b) in zip(ref.net.state_dict().items(), res.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in ref.history]
    assert res.metrics["dataset"] == "tensors" and res.metrics["kept_epoch"] == \
        ref.metrics["kept_epoch"]
    with pytest.raises(PdenetsError, match="needs the network and the objective"):
        Trainer(cfg, data)
    with pytest.raises(PdenetsError, match="splits"):
        Trainer(cfg, {"training": data["train"]}, tr.net, objective=tr.objective)


def test_config_from_dict_and_checkpoint_config(tmp_path):
    from safetensors.torch import save_file

    from pdenets.config import config_from_dict
    from pdenets.errors import ModelFileError
    from pdenets.training import checkpoint_config

    cfg = load_config(None, SMALL + ["train.method=multilevel", "train.levels=2",
                                     "train.level_epochs=1,3", "objective.alpha=0"])
    assert config_from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["train"]["levels"] = 3  # level_epochs no longer matches: validated like a file
    with pytest.raises(ConfigError, match="train.level_epochs"):
        config_from_dict(d)
    with pytest.raises(ConfigError, match="model.width: expected a int"):
        config_from_dict({"model": {"width": "wide"}})
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="table"):
        config_from_dict(["train"])
    t = Trainer(cfg, load_dataset("iris"))
    t.save_checkpoint(tmp_path / "ck.safetensors")
    assert checkpoint_config(tmp_path / "ck.safetensors") == cfg
    save_file({"a": torch.zeros(2)}, tmp_path / "plain.safetensors")
    save_file({"a": torch.zeros(2)}, tmp_path / "meta.safetensors",
              metadata={"pdenets": '{"format": "pdenets-model"}'})
    for name in ("plain", "meta"):
        with pytest.raises(ModelFileError, match="is damaged"):
            checkpoint_config(tmp_path / f"{name}.safetensors")
