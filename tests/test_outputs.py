"""Output directories (pdenets._outputs): a user's files survive every command that writes,
--overwrite, refused targets, the marker, the one-writer lock, permissions, resolved config."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import torch

from pdenets import _outputs
from pdenets._outputs import MARKER, OutputLock, read_marker
from pdenets.cli import main
from pdenets.errors import PdenetsError

TRAIN = ["--set", "data.name=iris", "--set", "train.epochs=2", "--set", "train.batch_size=64",
         "--set", "model.steps=2", "--set", "model.intervals=1", "--set", "model.width=4",
         "--set", "model.control_size=2"]
HJB = """
[problem]
activation = "identity"
controls = "b"
alpha = 0.5
width = 1
target = 0.2
v0 = 0.8
[grid]
points = 21
[closed_loop]
steps = 5
starts = [[-0.5]]
[plot]
depths = 2
"""

#: every command that writes an output directory, with tiny problems (plot: see below)
COMMANDS = {
    "simulate": ["simulate", "--example", "demo1d", "--steps", "4", "--saves", "3"],
    "train": ["train", "--quiet", *TRAIN],
    "analyze stability": ["analyze", "stability", "--example", "saddle", "--directions", "1",
                          "--iters", "3"],
    "analyze hessian": ["analyze", "hessian", "--example", "saddle", "--k", "2"],
    "analyze controllability": ["analyze", "controllability", "--example", "obstructed",
                                "--alphas", "1e-2", "--horizons", "", "--samples", "1",
                                "--iters", "2"],
    "analyze steady-state": ["analyze", "steady-state", "--example", "stable", "--horizon",
                             "1"],
    "analyze pmp": ["analyze", "pmp", "--example", "saddle"],
    "hjb": ["hjb", "--config", "{tmp}/hjb.toml"],
}


def argv(name: str, tmp_path) -> list[str]:
    (tmp_path / "hjb.toml").write_text(HJB)
    return [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[name]]


def user_files(d):
    """A user's files in ``d``: a file and a subdirectory with a file."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "thesis.tex").write_text("\\documentclass{article}")
    (d / "sub").mkdir()
    (d / "sub" / "data.csv").write_text("1,2,3\n")
    return {"thesis.tex": "\\documentclass{article}", "sub/data.csv": "1,2,3\n"}


def assert_user_files(d, files):
    for name, text in files.items():
        assert (d / name).read_text() == text, name


def one_line_error(capsys, rc) -> str:
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdenets: error:"), err
    return err[0]


def leftovers(parent, out_name):
    """Hidden staging directories, lock files or temporary files pdenets left beside OUT."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{out_name}.")]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_user_files_survive_every_command(tmp_path, capsys, name):
    out = tmp_path / "results"
    mine = user_files(out)
    before = sorted(p.name for p in out.iterdir())
    rc = main([*argv(name, tmp_path), "--out", str(out)])
    msg = one_line_error(capsys, rc)
    assert "--overwrite" in msg and "'thesis.tex'" in msg
    assert sorted(p.name for p in out.iterdir()) == before  # refused: nothing written
    assert_user_files(out, mine)
    assert main([*argv(name, tmp_path), "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert_user_files(out, mine)
    marker = read_marker(out)
    assert marker is not None and marker["command"] == name
    assert marker["files"] and "thesis.tex" not in marker["files"]
    for f in marker["files"]:
        assert (out / f).is_file(), f
    assert not leftovers(tmp_path, "results")
    assert not (tmp_path / "results.partial").exists()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", "--quiet", *TRAIN, "--out", str(d)]) == 0
    return d


def test_plot_keeps_user_files(tmp_path, capsys, run_dir):
    d = tmp_path / "r"
    shutil.copytree(run_dir, d)
    (d / "curves.png").unlink()
    model = (d / "model.safetensors").read_bytes()
    mine = user_files(d)
    assert main(["plot", str(d)]) == 0  # into the train run's directory: its marker allows it
    assert (d / "curves.png").is_file() and (d / "model.safetensors").read_bytes() == model
    assert_user_files(d, mine)
    m = read_marker(d)
    assert m["command"] == "train" and {"curves.png", "model.safetensors"} <= set(m["files"])
    other = tmp_path / "figs"
    mine2 = user_files(other)
    msg = one_line_error(capsys, main(["plot", str(d), "--out", str(other)]))
    assert "--overwrite" in msg and not (other / "curves.png").exists()
    assert main(["plot", str(d), "--out", str(other), "--overwrite"]) == 0
    assert (other / "curves.png").is_file() and read_marker(other)["command"] == "plot"
    assert_user_files(other, mine2)
    assert not leftovers(tmp_path, "r") and not leftovers(tmp_path, "figs")


def test_rerun_on_own_output_and_stale_files(tmp_path, capsys):
    """Re-running a command on its own marked output needs no --overwrite; a file of the
    previous run is removed only if the marker lists it and it is unchanged."""
    out = tmp_path / "sim"
    cmd = [*argv("simulate", tmp_path), "--out", str(out)]
    assert main(cmd) == 0
    mine = {"thesis.tex": "mine"}
    (out / "thesis.tex").write_text("mine")
    # pretend the previous run also wrote old.dat and edited.dat (the user changed the latter)
    (out / "old.dat").write_text("old")
    (out / "edited.dat").write_text("edited by the user")
    doc = json.loads((out / MARKER).read_text())
    st = (out / "old.dat").stat()
    doc["files"]["old.dat"] = [st.st_size, st.st_mtime_ns]
    doc["files"]["edited.dat"] = [3, st.st_mtime_ns]
    doc["files"]["../outside.txt"] = [3, st.st_mtime_ns]  # never trusted
    (tmp_path / "outside.txt").write_text("out")
    (out / MARKER).write_text(json.dumps(doc))
    assert main(cmd) == 0
    assert "kept" in capsys.readouterr().err and not (out / "old.dat").exists()
    assert (out / "edited.dat").read_text() == "edited by the user"
    assert (tmp_path / "outside.txt").read_text() == "out"
    assert_user_files(out, mine)
    assert set(read_marker(out)["files"]) == {"field.npz", "field.png"}
    # another command's output is refused without --overwrite
    msg = one_line_error(capsys, main([*argv("hjb", tmp_path), "--out", str(out)]))
    assert "written by `pdenets simulate`" in msg


def test_train_twice_into_the_same_directory(tmp_path, capsys):
    """`make demo` twice: the second run replaces the first's files, user files stay."""
    out = tmp_path / "runs" / "iris"
    cmd = ["train", "--quiet", "--no-plots", *TRAIN, "--out", str(out)]
    assert main(cmd) == 0
    (out / "notes.txt").write_text("mine")
    first = read_marker(out)["files"]
    assert main(cmd) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert set(read_marker(out)["files"]) == set(first)
    assert not (tmp_path / "runs" / "iris.partial").exists()
    assert not leftovers(tmp_path / "runs", "iris")


def test_train_keeps_user_files_in_a_directory_named_like_its_work_directory(tmp_path, capsys):
    """A user's directory that happens to be called OUT.partial, holding files with the names
    a run writes (config.toml, a plot), is not a pdenets work directory: refused, untouched."""
    out = tmp_path / "runs" / "iris"
    work = tmp_path / "runs" / "iris.partial"
    work.mkdir(parents=True)
    (work / "config.toml").write_text("mine")
    (work / "curves.png").write_bytes(b"mine")
    msg = one_line_error(capsys, main(["train", "--quiet", "--no-plots", *TRAIN,
                                       "--out", str(out)]))
    assert "not the work directory of a pdenets training run" in msg
    assert (work / "config.toml").read_text() == "mine"
    assert (work / "curves.png").read_bytes() == b"mine"
    assert not out.exists()


@pytest.mark.parametrize("target", ["cwd", "dot", "parent", "ancestor", "empty", "file",
                                    "dangling"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_refused_targets(tmp_path, capsys, monkeypatch, target, overwrite):
    """The current directory, its ancestors, existing files and dangling links are refused
    even with --overwrite — before anything is computed."""
    import pdenets.cli.simulate as sim

    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    for d in (tmp_path, tmp_path / "a", cwd):
        (d / "keep.txt").write_text("x")
    (cwd / "f.npz").write_text("not a directory")
    (cwd / "link").symlink_to(cwd / "missing")
    monkeypatch.chdir(cwd)

    def boom(*a, **k):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(sim, "example_network", boom)
    out = {"cwd": str(cwd), "dot": ".", "parent": "..", "ancestor": str(tmp_path),
           "empty": "", "file": "f.npz", "dangling": "link"}[target]
    rc = main(["simulate", "--example", "demo1d", "--out", out,
               *(["--overwrite"] if overwrite else [])])
    msg = one_line_error(capsys, rc)
    want = {"file": "existing file", "dangling": "dangling"}.get(target, "current directory")
    assert want in msg
    for d in (tmp_path, tmp_path / "a", cwd):
        assert (d / "keep.txt").read_text() == "x"
    assert (cwd / "f.npz").read_text() == "not a directory" and (cwd / "link").is_symlink()
    if target in ("cwd", "dot"):  # train refuses too (before it loads any data)
        assert main(["train", "--quiet", *TRAIN, "--out", out, "--overwrite"]) == 2
        assert "current directory" in capsys.readouterr().err
        assert sorted(p.name for p in cwd.iterdir()) == ["f.npz", "keep.txt", "link"]


def test_out_checked_before_computing(tmp_path, capsys, monkeypatch):
    """An unwritable --out fails before the command computes; parent directories created
    for a command that then fails are removed again."""
    import pdenets.cli.simulate as sim

    calls = []

    def fail(*a, **k):
        calls.append(1)
        raise PdenetsError("model broke")

    monkeypatch.setattr(sim, "example_network", fail)
    (tmp_path / "file").write_text("x")
    msg = one_line_error(capsys, main(["simulate", "--example", "demo1d", "--out",
                                       str(tmp_path / "file" / "o")]))
    assert "cannot write output directory" in msg and not calls
    msg = one_line_error(capsys, main(["simulate", "--example", "demo1d", "--out",
                                       str(tmp_path / "new" / "deeper" / "o")]))
    assert "model broke" in msg and calls == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not restrict root")
def test_read_only_parent_is_refused_before_computing(tmp_path, capsys, monkeypatch):
    import pdenets.cli.simulate as sim

    monkeypatch.setattr(sim, "example_network", lambda *a: pytest.fail("computed"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        msg = one_line_error(capsys, main(["simulate", "--example", "demo1d", "--out",
                                           str(ro / "o")]))
    finally:
        ro.chmod(0o755)
    assert "cannot write output directory" in msg


def test_lock_second_writer_refused(tmp_path, capsys):
    out = tmp_path / "o"
    cmd = [*argv("simulate", tmp_path), "--out", str(out)]
    with OutputLock(out):
        assert (tmp_path / ".o.lock").read_text().strip() == str(os.getpid())
        msg = one_line_error(capsys, main(cmd))
        assert "in use by another pdenets command" in msg and f"pid {os.getpid()}" in msg
        assert not out.exists()
    assert not (tmp_path / ".o.lock").exists()  # released: the lock file is gone
    assert main(cmd) == 0 and not (tmp_path / ".o.lock").exists()


def test_lock_unlink_race(tmp_path, monkeypatch):
    """B opens the lock file, the holder A releases (unlinking it) and D locks a new one
    before B's flock succeeds on the old, unlinked file: B must notice and be refused."""
    p = tmp_path / "o"
    a, b, d = OutputLock(p), OutputLock(p), OutputLock(p)
    a.acquire()
    real = _outputs.fcntl.flock
    raced = []

    def racing(fd, op):
        if not raced:
            raced.append(1)
            a.release()
            d.acquire()
        return real(fd, op)

    monkeypatch.setattr(_outputs.fcntl, "flock", racing)
    with pytest.raises(PdenetsError, match="in use"):
        b.acquire()
    assert raced and b.fd is None and d.fd is not None
    d.release()
    b.acquire()
    b.release()


def forked(argv) -> int:
    """Run ``pdenets ARGV`` in a child process (fork); returns its pid. The child runs with one
    intra-op thread: it must not enter an OpenMP pool its parent started (libgomp is not
    fork-safe; the child would wait forever)."""
    pid = os.fork()
    if pid == 0:
        code = 97
        try:
            code = main([argv[0], "--threads", "1", *argv[1:]])
        finally:
            os._exit(code)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_lock_across_processes(tmp_path, capsys):
    """A second command on the output of a running `pdenets train` (another process) fails at
    once; the first one completes."""
    out = tmp_path / "r"
    sets = [s.replace("train.epochs=2", "train.epochs=40") for s in TRAIN]
    pid = forked(["train", "--quiet", "--no-plots", *sets, "--out", str(out)])
    try:
        t0 = time.monotonic()
        while not (tmp_path / ".r.lock").exists():
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "first run ended early"
            assert time.monotonic() - t0 < 120
            time.sleep(0.005)
        assert main(["train", "--quiet", *TRAIN, "--out", str(out)]) == 2
        assert main([*argv("simulate", tmp_path), "--out", str(out) + ".partial"]) == 2
        err = capsys.readouterr().err
        assert err.count("in use by another pdenets command") == 2, err
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    m = read_marker(out)
    assert m["command"] == "train"
    for f in ("config.toml", "metrics.json", "metrics.jsonl", "model.safetensors",
              "checkpoint.safetensors"):
        assert f in m["files"] and (out / f).is_file(), f
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hjb.toml", "r"]
    # a lock held on OUT.partial alone stops another process before it writes anything
    other = tmp_path / "s"
    with OutputLock(tmp_path / "s.partial"):
        _, status = os.waitpid(forked(["train", *TRAIN, "--out", str(other)]), 0)
    assert os.waitstatus_to_exitcode(status) == 2  # (its stderr went to the child's capsys)
    assert not other.exists() and not (tmp_path / "s.partial").exists()


def test_permissions_follow_umask(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert main([*argv("simulate", tmp_path), "--out", str(tmp_path / "sim")]) == 0
        assert main(["train", "--quiet", "--no-plots", *TRAIN, "--out", str(tmp_path / "run")]) == 0
        assert main(["plot", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    for d in (tmp_path / "sim", tmp_path / "run"):
        assert d.stat().st_mode & 0o777 == 0o750, d
        names = [p for p in d.iterdir()]
        assert len(names) >= 3
        for p in names:
            assert p.stat().st_mode & 0o777 == 0o640, p


def test_resolved_config_holds_resolved_sizes(tmp_path):
    """config.toml stores the width and control size a run used, not 0 = automatic; the
    resolved configuration builds the same network."""
    import pdenets as pn
    from pdenets.config import load_config
    from pdenets.data import load_dataset
    from pdenets.training import build_network

    out = tmp_path / "r"
    sets = ["data.name=iris", "train.epochs=1", "model.steps=2", "model.intervals=1",
            "model.width=0", "model.control_size=0"]
    assert main(["train", "--quiet", "--no-plots", *sum([["--set", s] for s in sets], []),
                 "--out", str(out)]) == 0
    cfg = load_config(out / "config.toml")
    n = 4  # iris features; width: the least multiple of n that is >= 32 (default_sizes)
    width = n * math.ceil(32 / n)
    k = max(d for d in range(1, 17) if width % d == 0)  # constant basis: k cells
    assert (cfg.model.width, cfg.model.control_size) == (width, k) == (32, 16)
    net = pn.load_model(out / "model.safetensors")
    assert net.discretization.width.sizes in ((width,), width)
    assert tuple(net.controls.size) == (k,)
    ds = load_dataset("iris")
    a, b = build_network(load_config(None, sets), ds), build_network(cfg, ds)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
