"""The size limits (pdenets._limits) and the one reader of array files (pdenets.data)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from pdenets import _limits
from pdenets.config import Config
from pdenets.data import load_array, load_dataset, load_xy, read_arrays
from pdenets.errors import PdenetsError


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(_limits.ENV_VAR, raising=False)


# ---------------------------------------------------------------------------------------------
# reader: what it accepts comes back unchanged
# ---------------------------------------------------------------------------------------------
def test_reader_round_trips_every_format(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3))
    np.save(tmp_path / "c.npy", a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.save(tmp_path / "i.npy", np.arange(15, dtype=np.int32).reshape(5, 3))
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    np.savez_compressed(tmp_path / "z.npz", other=np.zeros(2), x=a)
    np.savez(tmp_path / "one.npz", inputs_of_mine=a)
    np.savetxt(tmp_path / "t.csv", a, delimiter=",")
    np.savetxt(tmp_path / "t.txt", a)
    for name in ("c.npy", "f.npy", "v2.npy", "z.npz", "one.npz", "t.csv", "t.txt"):
        got = load_array(tmp_path / name)
        assert got.dtype == np.float64 and np.array_equal(got, a), name
    assert np.array_equal(load_array(tmp_path / "i.npy"), np.arange(15.0).reshape(5, 3))
    # data files: npz x/y, or a table whose last column is the label
    np.savez(tmp_path / "xy.npz", x=a, y=np.arange(5))
    x, y = load_xy(tmp_path / "xy.npz")
    assert np.array_equal(x, a) and np.array_equal(y, np.arange(5))
    np.savetxt(tmp_path / "xy.csv", np.column_stack([a, np.arange(5)]), delimiter=",")
    x, y = load_xy(tmp_path / "xy.csv")
    assert np.array_equal(x, a) and np.array_equal(y, np.arange(5.0))
    x, y = load_xy(tmp_path / "z.npz", need_y=False)
    assert y is None and np.array_equal(x, a)


def test_dataset_from_a_file_still_loads(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3))
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert ds.task == "classification" and ds.input_shape == (3,)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 40


# ---------------------------------------------------------------------------------------------
# reader: what it refuses, with the file and the problem named
# ---------------------------------------------------------------------------------------------
def _header_only(path, shape, descr="<f8"):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": descr, "fortran_order": False, "shape": shape})


BAD = [
    ("complex.npy", lambda p: np.save(p, np.ones((2, 2), complex)), "complex"),
    ("bool.npy", lambda p: np.save(p, np.ones((2, 2), bool)), "not numeric"),
    ("str.npy", lambda p: np.save(p, np.array([["a", "b"]])), "not numeric"),
    ("obj.npy", lambda p: np.save(p, np.array([[None, 1]], object)), "Python objects"),
    ("rec.npy", lambda p: np.save(p, np.zeros(2, dtype=[("a", "f8"), ("b", "i4")])),
     "records"),
    ("empty_rows.npy", lambda p: np.save(p, np.zeros((0, 3))), "empty"),
    ("empty_cols.npy", lambda p: np.save(p, np.zeros((3, 0))), "empty"),
    ("nan.npy", lambda p: np.save(p, np.array([[0.0, np.nan, np.nan]])), "2 NaN or Inf"),
    ("inf.npy", lambda p: np.save(p, np.array([[-np.inf, 1.0]])), "1 NaN or Inf"),
    ("huge.npy", lambda p: _header_only(p, (100000, 100000)), "truncated"),
    ("short.npy", lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"\x10"),
     "not a valid .npy"),
    ("magic.npy", lambda p: p.write_bytes(b"NUMPY? no"), "not a valid .npy"),
    ("garbage.npz", lambda p: p.write_bytes(b"not a zip archive"), "not a valid .npz"),
    ("text.csv", lambda p: p.write_text("1,2\n3,x\n"), "cannot read"),
    ("ragged.csv", lambda p: p.write_text("1,2\n3\n"), "cannot read"),
    ("blank.csv", lambda p: p.write_text("\n"), "empty"),
    ("data.json", lambda p: p.write_text("[1, 2]"), "unsupported file type"),
]


@pytest.mark.parametrize("name,make,message", BAD, ids=[b[0] for b in BAD])
def test_reader_refuses_bad_files(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(PdenetsError, match=message) as e:
        load_array(path)
    assert name in str(e.value)


def test_reader_checks_npz_members_before_loading(tmp_path):
    _header_only(tmp_path / "m.npy", (100000, 100000))
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:
        z.write(tmp_path / "m.npy", "x.npy")
    with pytest.raises(PdenetsError, match=r"array 'x'.*\(100000, 100000\)"):
        load_array(tmp_path / "h.npz")
    np.savez(tmp_path / "c.npz", x=np.ones((2, 2), complex), y=np.zeros(2))
    with pytest.raises(PdenetsError, match="array 'x' is complex"):
        load_xy(tmp_path / "c.npz")
    np.savez(tmp_path / "noy.npz", x=np.ones((2, 2)))
    with pytest.raises(PdenetsError, match=r"'x' and 'y' \(found: x\)"):
        load_xy(tmp_path / "noy.npz")
    np.savez(tmp_path / "mis.npz", x=np.ones((3, 2)), y=np.zeros(2))
    with pytest.raises(PdenetsError, match="3 samples"):
        load_xy(tmp_path / "mis.npz")
    np.savez(tmp_path / "two.npz", a=np.ones((3, 2)), b=np.zeros(2))
    with pytest.raises(PdenetsError, match="exactly one array"):
        load_array(tmp_path / "two.npz")
    with pytest.raises(PdenetsError, match="does not exist"):
        read_arrays(tmp_path / "none.npy")


def test_reader_refuses_arrays_beyond_the_memory_limit_before_reading(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((4, 8192)))  # 256 KiB (+ a float64 copy)
    monkeypatch.setattr(_limits, "physical_memory", lambda: 2**20)  # limit 512 KiB
    assert load_array(tmp_path / "a.npy").shape == (4, 8192)
    np.save(tmp_path / "b.npy", np.zeros((8, 8192)))  # 512 KiB + 512 KiB > limit
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("data read before check"))
    with pytest.raises(_limits.SizeLimitError, match=r"\(8, 8192\) float64.*512 KiB"):
        load_array(tmp_path / "b.npy")
    with _limits.allow_large():
        with pytest.raises(pytest.fail.Exception):  # now it gets as far as reading
            load_array(tmp_path / "b.npy")


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------
def test_memory_limit_is_half_the_physical_memory_and_the_override(monkeypatch):
    monkeypatch.setattr(_limits, "physical_memory", lambda: 1000)
    assert _limits.memory_limit() == 500
    _limits.check_memory(500, "--x", "it")
    with pytest.raises(_limits.SizeLimitError) as e:
        _limits.check_memory(501, "--steps", "the solve", 7)
    assert "--steps = 7" in str(e.value) and "500 B" in str(e.value)
    assert "--allow-large" in str(e.value) and _limits.ENV_VAR in str(e.value)
    with pytest.raises(_limits.SizeLimitError):
        _limits.check_memory(float("nan"), "--x", "it")
    with _limits.allow_large():
        _limits.check_memory(10**30, "--x", "it")
    with _limits.allow_large(False):
        with pytest.raises(_limits.SizeLimitError):
            _limits.check_memory(501, "--x", "it")
    for value, active in (("1", True), ("yes", True), ("0", False), ("false", False),
                          ("", False)):
        monkeypatch.setenv(_limits.ENV_VAR, value)
        assert _limits.override_active() is active


def test_flop_budget():
    budget = _limits.FLOP_RATE * _limits.TIME_BUDGET_SECONDS
    assert _limits.flop_budget() == budget
    _limits.check_flops(budget, "--x", "it")
    with pytest.raises(_limits.SizeLimitError, match="operations"):
        _limits.check_flops(budget * 1.01, "--x", "it")


def test_solve_cost_counts():
    """The work includes the matrix products counted independently (2·B·N² per evaluation,
    S·stages evaluations) and grows linearly in the steps; each saved state costs B·N
    values; the tape adds one N×N kernel per evaluation."""
    B, N, S, st = 3, 50, 40, 4
    c = _limits.solve_cost(nodes=N, batch=B, steps=S, stages=st, itemsize=8)
    assert c.flops >= 2 * B * N * N * S * st
    c2 = _limits.solve_cost(nodes=N, batch=B, steps=2 * S, stages=st, itemsize=8)
    c3 = _limits.solve_cost(nodes=N, batch=B, steps=3 * S, stages=st, itemsize=8)
    assert c3.flops - c2.flops == pytest.approx(c2.flops - c.flops)
    s1 = _limits.solve_cost(nodes=N, batch=B, steps=S, saves=10, itemsize=4)
    s2 = _limits.solve_cost(nodes=N, batch=B, steps=S, saves=11, itemsize=4)
    assert s2.nbytes - s1.nbytes == 4 * B * N
    t = _limits.solve_cost(nodes=N, batch=B, steps=S, stages=st, itemsize=8, tape=True)
    assert t.nbytes - c.nbytes >= 8 * S * st * N * N
    assert _limits.solve_cost(nodes=1e300, batch=1e300, steps=1).flops == float("inf")
    assert _limits.power(41, 10**9) == float("inf") and _limits.count(10**400) == float("inf")


def test_network_estimate_bounds_the_real_allocations():
    """The memory estimate of a solve with saved states is at least the bytes of the tensors
    it really allocates (saved trajectory, kernel schedule)."""
    from pdenets.examples import example_network

    net, xi = example_network("demo1d")
    disc = net.discretization
    with torch.no_grad():
        sol = net.solve(torch.as_tensor(xi), disc, saveat="steps")
        sched = net.controls.discretize(sol.grid)
    real = sol.us.nbytes + sched.A.nbytes + sol.u.nbytes
    est = _limits.network_cost(net, disc, len(xi), saves=len(sol.ts))
    assert est.nbytes >= real
    assert est.nbytes < 50 * real  # an estimate, not a blanket refusal


def test_training_estimate_passes_the_defaults_and_names_the_culprit(monkeypatch):
    cfg = Config()
    c = _limits.training_cost(cfg)
    assert c.nbytes < 2**30 and c.flops < _limits.flop_budget() / 10
    _limits.check_training(cfg)
    cfg.train.batch_size = 10**12
    cfg.train.epochs = 3  # changed too, but harmless: not named
    with pytest.raises(_limits.SizeLimitError) as e:
        _limits.check_training(cfg)
    assert str(e.value).startswith("train.batch_size = 1000000000000: the training run")
    cfg.train.batch_size = 64
    cfg.model.steps = 10**9
    with pytest.raises(_limits.SizeLimitError, match="^model.steps = 1000000000"):
        _limits.check_training(cfg)
