"""Exact resume (pdenets train --resume) after a SIGKILL at every kind of point: before the
first checkpoint, mid-checkpoint (leftover temporary file), between checkpoints, after an early
stop, mid model write, while the files move into an existing OUT. The resumed result must be
bit-identical to the uninterrupted run. A damaged checkpoint gives a clean error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pdenets import _outputs
from pdenets._outputs import is_temp_name, read_marker
from pdenets.cli import main

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")

# early stopping (patience 1: the uninterrupted run stops after epoch 5 of 12), the best
# epoch's controls kept, a checkpoint every 2 epochs
SETS = ["data.name=iris", "train.method=adam", "train.epochs=12", "train.patience=1",
        "train.lr=0.02", "train.schedule=constant", "train.keep=best", "train.checkpoint_every=2",
        "train.batch_size=32", "model.steps=4", "model.intervals=2", "model.width=8",
        "model.control_size=5"]
# one intra-op thread: the killed runs are forked children, and a forked child must not enter
# an OpenMP pool its parent started (libgomp is not fork-safe: the child would wait forever)
ARGS = ["train", "--quiet", "--no-plots", "--threads", "1",
        *sum([["--set", s] for s in SETS], [])]
TIMING = {"seconds", "samples_per_second", "train_seconds", "wall_seconds", "out"}


def killed_run(out: Path, point: str, n: int) -> int:
    """Run ``pdenets train`` in a child process that SIGKILLs itself at the ``n``-th ``point``:
    ``call:NAME`` (entry of Trainer.NAME or training.NAME), ``rename:FILE`` (the atomic
    rename of FILE, its temporary file written) or ``move`` (a finished file moved from
    OUT.partial into an existing OUT). Returns the child's exit code (-9 when killed)."""
    pid = os.fork()
    if pid == 0:  # child: patch, run, and never return into pytest
        code = 97
        try:
            import pdenets.training as T

            seen = [0]

            def hit():
                seen[0] += 1
                if seen[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)

            def before(obj, name, cond=lambda *a, **k: True):
                real = getattr(obj, name)

                def wrapper(*a, **k):
                    if cond(*a, **k):
                        hit()
                    return real(*a, **k)

                setattr(obj, name, wrapper)

            kind, _, arg = point.partition(":")
            if kind == "call":
                before(T.Trainer if hasattr(T.Trainer, arg) else T, arg)
            elif kind == "rename":
                before(os, "replace", lambda src, dst, *a, **k: Path(dst).name == arg)
            elif kind == "move":
                before(os, "replace", lambda src, dst, *a, **k:
                       Path(src).parent != Path(dst).parent)
            code = main([*ARGS, "--out", str(out)])
        finally:
            os._exit(code)
    deadline = time.monotonic() + 300
    while True:  # never hang the suite on a stuck child: fail instead
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child run ({point}, n={n}) did not finish within 300 s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_early"] and m["epochs_run"] == 5 and m["kept_epoch"] == 4
    return out


def records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in path.read_text().splitlines()]


def assert_same_run(out: Path, ref: Path) -> None:
    """Bit-identical tensors (model and final checkpoint: controls, best controls, optimizer
    state, shuffling generator), the same history and metrics up to timings, the same files."""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert not [p for p in out.iterdir() if is_temp_name(p.name)]
    for f in ("model.safetensors", "checkpoint.safetensors"):
        a, b = load_file(out / f), load_file(ref / f)
        assert a.keys() == b.keys(), f
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)
    assert records(out / "metrics.jsonl") == records(ref / "metrics.jsonl")
    m, r = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    assert {k: v for k, v in m.items() if k not in TIMING} == \
        {k: v for k, v in r.items() if k not in TIMING}
    assert (out / "config.toml").read_text() == (ref / "config.toml").read_text()
    assert read_marker(out)["files"].keys() == read_marker(ref)["files"].keys()


SCENARIOS = {
    # killed before the first checkpoint: resumes by starting afresh
    "config-write": ("rename:config.toml", 1, None),
    "before-first-checkpoint": ("call:save_checkpoint", 1, None),
    "mid-first-checkpoint": ("rename:checkpoint.safetensors", 1, None),
    # killed between checkpoints (last one: epoch 2) and while writing one (epoch 4)
    "between-checkpoints": ("call:train_epoch", 4, 2),
    "mid-checkpoint": ("rename:checkpoint.safetensors", 3, 2),
    # killed after the early stop (epoch 5) was checkpointed: no further epoch on resume
    "after-early-stop": ("call:save_model", 1, 5),
    "mid-model-write": ("rename:model.safetensors", 1, 5),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_and_resume_is_exact(tmp_path, reference, scenario):
    point, n, epoch = SCENARIOS[scenario]
    out = tmp_path / "run"
    assert killed_run(out, point, n) == -signal.SIGKILL
    work = tmp_path / "run.partial"
    assert work.is_dir() and not out.exists()
    ckpt = work / "checkpoint.safetensors"
    if epoch is None:
        assert not ckpt.exists()
    else:
        info = json.loads(load_file_metadata(ckpt)["pdenets"])
        assert info["epoch"] == epoch and info["stopped"] == (epoch == 5)
    if point.startswith("rename:"):  # the killed write left its temporary file behind
        assert [p for p in work.iterdir() if is_temp_name(p.name)]
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert_same_run(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_kill_while_moving_into_existing_out(tmp_path, reference):
    """OUT exists (an earlier run of the same command): the files move in one by one, the
    checkpoint last, so a run killed half-way still resumes — and the user's file stays."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "model.safetensors").write_bytes(b"stale")  # an older result, to be replaced
    (out / "notes.txt").write_text("mine")
    assert killed_run(out, "move", 3) == -signal.SIGKILL
    assert (tmp_path / "run.partial" / "checkpoint.safetensors").is_file()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert_same_run(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def load_file_metadata(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))["__metadata__"]


def test_resume_without_partial_and_damaged_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert killed_run(out, "call:train_epoch", 2) == -signal.SIGKILL
    ckpt = tmp_path / "run.partial" / "checkpoint.safetensors"
    good = ckpt.read_bytes()
    for bad in (b"\xff" * 40, good[:8] + b"{not json" + good[17:], good[: len(good) // 2],
                b"\x00" * 3):
        ckpt.write_bytes(bad)
        assert main([*ARGS, "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pdenets: error: checkpoint"), err
        assert "damaged" in err[0] or "corrupt" in err[0]
        assert ckpt.read_bytes() == bad and not out.exists()
    ckpt.write_bytes(good)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0


def test_multilevel_damaged_checkpoint(tmp_path):
    from pdenets.config import load_config
    from pdenets.data import load_dataset
    from pdenets.errors import ModelFileError
    from pdenets.multilevel import MultilevelTrainer

    cfg = load_config(None, ["data.name=iris", "train.method=multilevel", "train.levels=2",
                             "train.epochs=2", "model.width=8", "model.steps=4"])
    t = MultilevelTrainer(cfg, load_dataset("iris"))
    p = tmp_path / "ck.safetensors"
    for bad in (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", b"\xff" * 12):
        p.write_bytes(bad)
        with pytest.raises(ModelFileError, match="corrupt"):
            t.load_checkpoint(p)


def test_temp_name_pattern():
    assert is_temp_name(".checkpoint.safetensors.a1b2_c3d.tmp")
    assert not is_temp_name("checkpoint.safetensors") and not is_temp_name(".x.tmp")
    assert _outputs.MARKER == ".pdenets-output.json"
