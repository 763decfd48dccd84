"""Data-parallel training (pdenets.training.distributed, issue 15 item 2), 2 gloo processes on
CPU, float64:

* the gradient (and value) of J summed over the ranks' shares equals the 1-process gradient of
  the same global batch to 1e-6, for autograd, the discrete and the continuous adjoint, with
  unequal shares and with a batch smaller than the number of ranks (regularization counted
  once);
* a 2-process run (digits with augmentation and Adam; iris with full-batch L-BFGS) equals the
  1-process run with the same global batch: history, metrics and model tensors to 1e-9, and
  the same files; rank 1 never touches the output's directory;
* a 2-process run interrupted after its first epoch and resumed with ``pdenets train --nproc 2
  --resume`` is bit-identical to the uninterrupted 2-process run;
* ``torchrun --standalone --nproc-per-node 2 -m pdenets train`` equals the 1-process run;
* bad input gives one-line errors.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pdenets.adjoint import ContinuousAdjoint, DiscreteAdjoint
from pdenets.config import load_config
from pdenets.data import load_dataset_config
from pdenets.training import make_trainer, run_training
from pdenets.training.distributed import Distributed, spawn

dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TIMING = {"seconds", "samples_per_second", "train_seconds", "wall_seconds", "out"}
SMALL = ["dtype=float64", "model.steps=4", "model.intervals=2", "train.schedule=constant"]
# digits (8x8 images, augmented), Adam, batches of 101 (shares of 50 and 51; last batch 28/29)
DIGITS = [*SMALL, "data.name=digits", "model.width=4", "model.control_size=2", "train.epochs=2",
          "train.batch_size=101", "train.lr=0.05", "objective.alpha=0.01",
          "objective.beta=0.001"]
# iris, full-batch L-BFGS (the closure reduces over the ranks)
LBFGS = [*SMALL, "data.name=iris", "model.width=8", "model.control_size=5", "train.epochs=2",
         "train.method=lbfgs", "train.lbfgs_iterations=4"]


def cfg_of(sets: list[str]):
    return load_config(None, sets)


def run_args(sets: list[str]) -> list[str]:
    return sum([["--set", s] for s in sets], [])


# -- gradients --------------------------------------------------------------------------------

GRAD = [*SMALL, "data.name=iris", "model.width=8", "model.control_size=5",
        "objective.alpha=0.05", "objective.beta=0.02"]
STRATEGIES = {"autograd": lambda: None, "discrete": lambda: DiscreteAdjoint(checkpoint=2),
              "continuous": lambda: ContinuousAdjoint(steps=8)}
BATCHES = (7, 1)  # 7: unequal shares 3 and 4; 1: rank 0 has no sample


def _grads(ctx: Distributed) -> dict:
    """Per strategy and batch: the gradient and value of J reduced over the ranks."""
    cfg = cfg_of(GRAD)
    ds = load_dataset_config(cfg.data)
    res = {}
    for name, make in STRATEGIES.items():
        torch.manual_seed(cfg.seed)
        tr = make_trainer(cfg, ds, adjoint=make(), dist=ctx)
        x, y = tr.data["train"]
        for n in BATCHES:
            for p in tr.params:
                p.grad = None
            J = ctx.loss(tr, x[:n], y[:n])
            J.backward()
            J = ctx.reduce_gradients(tr.params, J.detach())
            res[name, n] = (float(J), torch.cat([p.grad.reshape(-1) for p in tr.params]))
    return res


def test_gradient_equals_one_process_gradient_of_global_batch(runs):
    base, _, _ = runs
    ref = _grads(Distributed())
    for rank in range(2):
        got = torch.load(base / "log" / f"grads{rank}.pt")
        assert set(got) == set(ref)
        for key, (J, g) in ref.items():
            J2, g2 = got[key]
            assert float(g.norm()) > 0
            assert abs(J2 - J) <= 1e-12 * abs(J), (rank, key)
            assert float((g2 - g).norm()) <= 1e-6 * float(g.norm()), (rank, key)
    # the strategies agree with one another (the continuous adjoint only to its discretization)
    assert torch.allclose(ref["discrete", 7][1], ref["autograd", 7][1], rtol=1e-10, atol=1e-12)


# -- a 2-process run equals the 1-process run ---------------------------------------------------

WATCHED = ("open", "stat", "lstat", "listdir", "scandir", "mkdir", "makedirs", "replace",
           "rename", "unlink", "rmdir", "remove")


def _watch(root: Path, seen: list[str]) -> None:
    """Record every path under ``root`` that this process opens, stats, lists or changes."""
    root_s = str(root)

    def wrap(mod, name):
        real = getattr(mod, name)

        def wrapper(*a, **k):
            for arg in a[:2]:
                if isinstance(arg, (str, os.PathLike)) and \
                        os.path.abspath(os.fspath(arg)).startswith(root_s):
                    seen.append(f"{name} {os.fspath(arg)}")
            return real(*a, **k)

        setattr(mod, name, wrapper)

    wrap(builtins, "open")
    wrap(io, "open")  # (pathlib's)
    for name in WATCHED[1:]:
        wrap(os, name)
    wrap(os, "open")


def _interrupted(ctx: Distributed, out: Path) -> str:
    """The digits run, interrupted (as by Ctrl-C) after its first epoch on every rank."""
    from pdenets.training import Trainer

    real = Trainer.fit

    def fit(self, max_epochs=None, restore_best=None):
        real(self, max_epochs=1, restore_best=restore_best)
        raise KeyboardInterrupt

    Trainer.fit = fit  # type: ignore[method-assign]
    try:
        run_training(cfg_of(DIGITS), out, progress=False, plots=False, dist=ctx)
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        Trainer.fit = real  # type: ignore[method-assign]
    return "finished"


def _worker(ctx: Distributed, base: str) -> dict:
    """Everything the tests need from 2 processes, in one spawn (process start-up is slow):
    the gradients (log/grads<rank>.pt), the runs in two/ (rank 1's accesses to two/ in
    log/seen1.json) and the interrupted run in resumed/run.partial."""
    log = Path(base) / "log"
    torch.save(_grads(ctx), log / f"grads{ctx.rank}.pt")
    seen: list[str] = []
    if ctx.rank != 0:
        _watch(Path(base) / "two", seen)
    res = {}
    for name, sets in (("digits", DIGITS), ("lbfgs", LBFGS)):
        res[name] = run_training(cfg_of(sets), Path(base) / "two" / name, progress=False,
                                 plots=False, dist=ctx)
    if ctx.rank != 0:
        (log / f"seen{ctx.rank}.json").write_text(json.dumps(seen))  # (log is elsewhere)
    res["interrupted"] = _interrupted(ctx, Path(base) / "resumed" / "run")
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1-process runs in one/, the 2-process work of :func:`_worker`."""
    base = tmp_path_factory.mktemp("ddp")
    one = {name: run_training(cfg_of(sets), base / "one" / name, progress=False, plots=False)
           for name, sets in (("digits", DIGITS), ("lbfgs", LBFGS))}
    (base / "log").mkdir()
    two = spawn(_worker, 2, str(base))
    return base, one, two


def history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_close_records(a: dict, b: dict, tol: float) -> None:
    assert set(a) == set(b)
    for k in set(a) - TIMING:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        elif isinstance(a[k], float):
            assert abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])), k
        else:
            assert a[k] == b[k], k


def assert_same_run(one: Path, two: Path, tol: float) -> None:
    files = sorted(os.listdir(one))
    assert sorted(os.listdir(two)) == files
    h1, h2 = history(one / "metrics.jsonl"), history(two / "metrics.jsonl")
    assert len(h1) == len(h2) > 0
    for a, b in zip(h1, h2, strict=True):
        assert_close_records(a, b, tol)
    assert_close_records(json.loads((one / "metrics.json").read_text()),
                         json.loads((two / "metrics.json").read_text()), tol)
    for f in ("model.safetensors", "checkpoint.safetensors"):
        t1, t2 = load_file(one / f), load_file(two / f)
        assert set(t1) == set(t2)
        for k in t1:
            if t1[k].is_floating_point():
                assert torch.allclose(t2[k], t1[k], rtol=tol, atol=tol), (f, k)
            else:
                assert torch.equal(t2[k], t1[k]), (f, k)
    assert (one / "config.toml").read_text() == (two / "config.toml").read_text()


@pytest.mark.parametrize("name", ["digits", "lbfgs"])
def test_two_process_run_equals_one_process_run(runs, name):
    base, one, two = runs
    assert_same_run(base / "one" / name, base / "two" / name, 1e-9)
    assert_close_records(one[name], two[name], 1e-9)
    assert two[name]["epochs_run"] == 2
    # training moved the model (the comparison is not between two untrained networks)
    h = history(base / "two" / name / "metrics.jsonl")
    assert h[-1]["train_objective"] < h[0]["train_objective"]


def test_only_rank_zero_touches_the_output(runs):
    base, _, _ = runs
    assert json.loads((base / "log" / "seen1.json").read_text()) == []
    assert sorted(os.listdir(base / "two")) == ["digits", "lbfgs"]  # no lock/partial left


# -- resume under 2 processes -------------------------------------------------------------------

def test_resume_under_two_processes_is_exact(runs):
    base, _, two = runs
    assert two["interrupted"] == "interrupted"
    out, work = base / "resumed" / "run", base / "resumed" / "run.partial"
    assert len(history(work / "metrics.jsonl")) == 1 and not out.exists()
    # resumed by run_training(nproc=2) (spawn), the configuration taken from the checkpoint
    m = run_training(cfg_of([]), out, resume=True, progress=False, plots=False, nproc=2)
    assert m["epochs_run"] == 2 and m["dataset"] == "digits" and not work.exists()
    assert_same_run(base / "two" / "digits", out, 0.0)  # bit-identical


# -- torchrun ---------------------------------------------------------------------------------

def test_torchrun_equals_one_process_run(runs, tmp_path):
    base, _, _ = runs
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", "-m", "pdenets", "train", "--quiet",
                        "--no-plots", "--json", "--out", str(tmp_path / "run"),
                        *run_args(LBFGS)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1  # rank 0 reports, rank 1 stays quiet
    assert_same_run(base / "one" / "lbfgs", tmp_path / "run", 1e-9)


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--nproc", "0"], "--nproc: must be >= 1"),
    (["--nproc", "2", "--set", "train.method=msa"], "does not support data-parallel"),
    (["--nproc", "2", "--set", "train.method=multilevel", "--set", "train.level_method=msa"],
     "does not support data-parallel"),
])
def test_bad_nproc(tmp_path, capsys, args, words):
    from pdenets.cli import main

    assert main(["train", "--quiet", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pdenets: error: ") and words in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_nproc_under_torchrun_is_refused(tmp_path, monkeypatch):
    from pdenets.errors import PdenetsError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(PdenetsError, match="torchrun"):
        run_training(cfg_of(LBFGS), tmp_path / "r", nproc=2)
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(PdenetsError, match="WORLD_SIZE"):
        run_training(cfg_of(LBFGS), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_shards_partition_the_batch():
    for world in (1, 2, 3, 5):
        for n in (0, 1, 2, 7, 64, 101):
            parts = [Distributed(r, world).shard(n) for r in range(world)]
            idx = [i for p in parts for i in range(n)[p]]
            assert idx == list(range(n))
            sizes = [len(range(n)[p]) for p in parts]
            assert max(sizes) - min(sizes) <= 1
