"""Hostile model files: every variant loads into a finite network or raises ModelFileError.

A property-based generator (Hypothesis) derives variants of small valid model files: bit flips,
truncations and extensions, forged header lengths, huge headers, edited metadata, replaced
tensors, and foreign formats (pickle, zip, npz, random bytes). The property of
:func:`pdenets.load_model` checked for each variant: it raises
:class:`~pdenets.errors.ModelFileError` — never another exception, never a hang — or returns a
network with finite parameters whose forward pass on inputs in [0, 1] gives finite outputs of the
announced shape. The work a loaded network may do is bounded by the limits of the format
(module docstring of :mod:`pdenets.modelfile`); a hang guard (an alarm far above any legitimate
run) turns a hang into a failure instead of a stuck test run.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import pdenets as pn
from pdenets import modelfile
from pdenets.errors import ModelFileError

HANG_GUARD_S = 120  # far above any legitimate load + forward pass of the small variants
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- valid base files ------------------------------------------------------------------------

def _extra(n: int | None) -> dict:
    pre = ({"kind": "standardize", "mean": [0.5] * n, "std": [2.0] * n} if n is not None
           else {"kind": "scale", "factor": 0.0625})
    return {"data": {"name": "iris", "seed": 0, "test_fraction": 0.25, "val_fraction": 0.1,
                     "n_samples": 1000, "standardize": True},
            "preprocess": pre, "metrics": {"epochs_run": 1, "history": [0.5, 0.25]},
            "task": "classification"}


def _base_nets() -> list[tuple[pn.ContinuumNetwork, dict]]:
    a = pn.ContinuumNetwork.create((4, 4), 3, intervals=2, seed=5, learnable_lifting=True)
    b = pn.ContinuumNetwork.create(
        6, 4, dynamics="field", activation="relu", readout="cell_average", intervals=3,
        time_basis="constant", space_basis="constant", width=12, rule="gauss-legendre",
        solver="dopri5", seed=1, dtype=torch.float32)
    c = pn.ContinuumNetwork.create(
        (3, 5), 2, dynamics="selection", activation="sigmoid", eps=0.01, solver="imex-euler",
        rule="trapezoid", width=(6, 10), steps=4, seed=2)
    d = pn.ContinuumNetwork.create(4, 3, control_size=5, solver="heun", steps=3, seed=3,
                                   activation="softplus", T=2.5)
    for net in (a, d):
        with torch.no_grad():
            net.readout.c.normal_(generator=torch.Generator().manual_seed(7))
    return [(a, _extra(None)), (b, _extra(6)), (c, _extra(None)), (d, _extra(4))]


@functools.cache
def base_files() -> tuple[bytes, ...]:
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, (net, extra) in enumerate(_base_nets()):
            p = Path(d) / f"b{i}.safetensors"
            pn.save_model(net, p, extra=extra)
            out.append(p.read_bytes())
    return tuple(out)


def split(data: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return json.loads(header["__metadata__"]["pdenets"]), st_load(data)


def join(meta, tensors: dict[str, torch.Tensor], raw_meta: str | None = None) -> bytes:
    return st_save(tensors, metadata={"pdenets": raw_meta if raw_meta is not None
                                      else json.dumps(meta)})


# -- the property ----------------------------------------------------------------------------

class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"load or forward pass still running after {HANG_GUARD_S} s")


_DIR = Path(tempfile.mkdtemp(prefix="pdenets-hostile-"))


def check_variant(data: bytes) -> str:
    """Load ``data`` as a model file; return "rejected" or "loaded" (after checking the net)."""
    p = _DIR / "m.safetensors"
    p.write_bytes(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_GUARD_S)
    try:
        try:
            net = pn.load_model(p)
        except ModelFileError as e:
            assert str(e) and "\n" not in str(e)
            return "rejected"
        assert isinstance(net, pn.ContinuumNetwork)
        for name, t in net.named_parameters():
            assert bool(torch.isfinite(t).all()), name
        shape = tuple(net.lifting.shape)
        gen = torch.Generator().manual_seed(0)
        xi = torch.cat([torch.zeros(1, *shape), torch.ones(1, *shape),
                        torch.rand(2, *shape, generator=gen)]).double()
        with torch.no_grad():
            out = net(xi)
        assert out.shape == (4, net.readout.outputs)
        assert bool(torch.isfinite(out).all()), out
        return "loaded"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_base_files_load_and_round_trip():
    for data, (net, extra) in zip(base_files(), _base_nets()):
        assert check_variant(data) == "loaded"
        back = pn.load_model(_DIR / "m.safetensors")
        xi = torch.rand(3, *net.lifting.shape, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(back(xi), net.to(back.controls.w.dtype)(xi))
        assert back.extra == extra


# -- hostile strategies ----------------------------------------------------------------------

bases = st.integers(0, len(_base_nets()) - 1)


@st.composite
def bit_flips(draw) -> bytes:
    data = bytearray(base_files()[draw(bases)])
    n_header = 8 + int.from_bytes(data[:8], "little")
    region = draw(st.sampled_from(["length", "header", "tensors", "anywhere"]))
    lo, hi = {"length": (0, 8), "header": (8, n_header), "tensors": (n_header, len(data)),
              "anywhere": (0, len(data))}[region]
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(lo, hi - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def cut_or_extend(draw) -> bytes:
    data = base_files()[draw(bases)]
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))]
    return data + draw(st.binary(min_size=1, max_size=64))


HUGE_INTS = [0, 1, 7, 2**31 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**64 - 1]


@st.composite
def forged_lengths(draw) -> bytes:
    data = base_files()[draw(bases)]
    n = draw(st.one_of(st.sampled_from(HUGE_INTS), st.integers(0, 2**64 - 1),
                       st.integers(0, len(data) + 8)))
    return struct.pack("<Q", n) + data[8:]


@st.composite
def huge_headers(draw) -> bytes:
    meta, tensors = split(base_files()[draw(bases)])
    kind = draw(st.sampled_from(["big-extra", "deep", "many-tensors", "long-key"]))
    if kind == "big-extra":
        meta["extra"]["blob"] = "x" * draw(st.sampled_from([10**5, 10**6, 8 * 10**6]))
        return join(meta, tensors)
    if kind == "deep":  # nesting deeper than Python's recursion limit
        depth = draw(st.sampled_from([10**3, 10**5]))
        raw = json.dumps(meta)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        return join(meta, tensors, raw)
    if kind == "many-tensors":
        for i in range(draw(st.sampled_from([100, 5000]))):
            tensors[f"t{i}"] = torch.zeros(1)
        return join(meta, tensors)
    meta[draw(st.sampled_from(["controls", "readout", "extra"]))]["k" * 10**6] = 1
    return join(meta, tensors)


HOSTILE_VALUES = [
    None, True, False, 0, -1, 1, 2, 3, 64, 65, 4096, 10**5, 10**6, 10**9, 10**12, 2**63, 10**30,
    -1e308, 1e308, 1e-308, 0.5, float("nan"), float("inf"), float("-inf"), "", "x", "linear",
    "constant", "learnable", "dopri5", "selection", "relu", "identity", "monte-carlo", [], {},
    [0], [1], [2], [1, 1], [10**9, 2], [65536, 65536], [4096], [4097], [64, 64], [65, 64],
    [2**20, 2**20], [1, 1, 1], [[1]], ["a"], {"name": "rk4"}, {"name": "dopri5", "rtol": 1e-300},
    {"name": "dopri5", "rtol": "x"}, {"name": "dopri5", "atol": [1]},
    {"name": "dopri5", "rtol": 1e-12, "atol": 1e-300}, {"kind": "scale", "factor": "x"},
    {"kind": "standardize", "mean": [0.0], "std": [0.0]},
]


def _paths(obj, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) <= 8:
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def edited_metadata(draw) -> bytes:
    meta, tensors = split(base_files()[draw(bases)])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(meta)))
        parent = meta
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = draw(st.sampled_from(HOSTILE_VALUES))
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["evil", "__proto__", ""]))] = 1
    raw = json.dumps(meta)
    if draw(st.booleans()):  # sometimes the metadata is not even a JSON object
        raw = draw(st.sampled_from([raw[: len(raw) // 2], "[]", "1", "null", '"s"', "NaN"]))
    return join(meta, tensors, raw)


BAD_FILLS = [float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 3e38, 1e-320, 1e12,
             1e6, 0.0]


@st.composite
def edited_tensors(draw) -> bytes:
    meta, tensors = split(base_files()[draw(bases)])
    name = draw(st.sampled_from(sorted(tensors)))
    t = tensors[name]
    op = draw(st.sampled_from(["fill", "one", "dtype", "shape", "delete", "add", "empty"]))
    if op == "fill":
        tensors[name] = torch.full_like(t, draw(st.sampled_from(BAD_FILLS)))
    elif op == "one":
        t = t.clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(BAD_FILLS))
        tensors[name] = t
    elif op == "dtype":
        dt = draw(st.sampled_from([torch.int64, torch.int8, torch.float16, torch.bfloat16,
                                   torch.bool, torch.complex64, torch.uint8]))
        tensors[name] = t.to(dt)
    elif op == "shape":
        tensors[name] = t.reshape(-1) if draw(st.booleans()) else torch.cat([t, t])
    elif op == "delete":
        del tensors[name]
    elif op == "add":
        tensors[draw(st.sampled_from(["evil", "readout.c", "lifting.phi", "controls.w2"]))] = \
            torch.zeros(2, 2)
    else:
        tensors[name] = torch.zeros((0,) + tuple(t.shape[1:]), dtype=t.dtype)
    return join(meta, tensors)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return buf.getvalue()


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def _foreign() -> list[bytes]:
    net = _base_nets()[0][0]
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    npz = io.BytesIO()
    np.savez(npz, w=np.zeros(3))
    data = base_files()[0]
    return [buf.getvalue(), pickle.dumps(_Evil()), pickle.dumps({"controls.w": np.zeros(3)}),
            _zip({"model.safetensors": data}), npz.getvalue(), b"", b"\0" * 8, b"{}",
            json.dumps(split(data)[0]).encode(), st_save({"controls.w": torch.zeros(1)}),
            st_save({}, metadata={"pdenets": "{}"}),
            st_save({}, metadata={"format": "pdenets-model"})]


foreign = st.one_of(st.sampled_from(range(12)).map(lambda i: _foreign()[i]),
                    st.binary(min_size=0, max_size=300))


@pytest.mark.parametrize("strategy", [
    bit_flips(), cut_or_extend(), forged_lengths(), huge_headers(), edited_metadata(),
    edited_tensors(), foreign,
], ids=["bit-flips", "cut-extend", "forged-length", "huge-header", "metadata", "tensors",
        "foreign"])
def test_hostile_variants_load_finite_or_raise_model_file_error(strategy):
    @SETTINGS
    @given(strategy)
    def prop(data):
        check_variant(data)

    prop()


# -- targeted cases: each limit of the format, with the reason in the message ---------------

def _edit(i: int, f) -> bytes:
    meta, tensors = split(base_files()[i])
    f(meta, tensors)
    return join(meta, tensors)


def _rejected(data: bytes, match: str) -> None:
    p = _DIR / "t.safetensors"
    p.write_bytes(data)
    with pytest.raises(ModelFileError, match=match):
        pn.load_model(p)


def _set(section, key, value):
    def f(m, t):
        (m if section is None else m[section])[key] = value
    return f


@pytest.mark.parametrize("i,edit,match", [
    (0, _set("discretization", "steps", 1_000_000), "steps"),
    (0, _set("discretization", "steps", modelfile.MAX_STEPS + 1), "steps"),
    (0, _set(None, "T", float("nan")), "T"),
    (0, _set(None, "T", float("inf")), "T"),
    (0, _set(None, "T", 0.0), "T"),
    (0, _set(None, "T", 1e300), "T"),
    (0, _set("dynamics", "eps", float("nan")), "eps"),
    (0, _set("dynamics", "eps", 1e300), "eps"),
    (1, _set("discretization", "solver", {"name": "dopri5", "rtol": 1e-300}), "rtol"),
    (1, _set("discretization", "solver", {"name": "dopri5", "rtol": "x"}), "rtol"),
    (1, _set("discretization", "solver", {"name": "dopri5", "max_steps": 9}), "max_steps"),
    (0, _set("discretization", "dim", 1), "discretization.dim"),
    (0, _set("discretization", "width", [64, 65]), "width"),
    (0, _set("lifting", "shape", [2**15, 2**15]), "lifting.shape"),
    (1, _set("readout", "cells", [13]), "contain no width node"),  # 12 nodes
    (0, lambda m, t: t.update({"controls.w": t["controls.w"].to(torch.float16)}), "float"),
    (0, lambda m, t: t["readout.c"].view(-1).__setitem__(0, 1e300), "readout.c"),
    (0, lambda m, t: t["controls.b"].view(-1).__setitem__(1, float("inf")), "controls.b"),
    (0, _set(None, "extra", "notes"), "extra"),
    (3, lambda m, t: m["extra"]["preprocess"].update(std=[1.0, 0.0, 1.0, 1.0]), "std"),
    (3, lambda m, t: m["extra"]["preprocess"].update(mean=[1.0]), "mean"),
    (2, lambda m, t: m["extra"]["preprocess"].update(factor="x"), "factor"),
    (0, lambda m, t: m["extra"].update(task="clustering"), "task"),
    (0, lambda m, t: m["extra"]["data"].update(seed="x"), "extra.data.seed"),
])
def test_insane_metadata_rejected_with_reason(i, edit, match):
    _rejected(_edit(i, edit), match)


def test_work_limits_rejected_before_allocation():
    # 1-D width 4096 at the most steps: steps · stages · N² far above the work limit
    def wide(m, t):
        m["discretization"]["width"] = [4096]
        m["discretization"]["steps"] = modelfile.MAX_STEPS
    _rejected(_edit(3, wide), "work")

    # many control intervals at a wide grid: the kernel schedule (K, N, N) would need TiBs
    def long(m, t):
        m["controls"].update(intervals=5_000, time_basis="constant", space_basis="constant",
                             size=[1])
        m["readout"].update(size=[1], basis="constant")
        m["discretization"]["width"] = [4096]
        t["controls.w"] = torch.zeros(5_000, 1, 1, dtype=torch.float64)
        t["controls.b"] = torch.zeros(5_000, 1, dtype=torch.float64)
        t["readout.c"] = torch.zeros(3, 1, dtype=torch.float64)
    _rejected(_edit(3, long), "memory")


def test_blow_up_at_the_files_own_discretization_rejected():
    # identity activation, w ≡ 400, 100 Euler steps of h = 1/100 in float32: the field variant
    # multiplies u by (1 + 400 h) = 5 per step, 5^100 ≈ 8e69 overflows (finite weights)
    def blow(m, t):
        m["dynamics"]["activation"] = "identity"
        m["discretization"].update(solver={"name": "euler"}, steps=100)
        t["controls.w"] = torch.full_like(t["controls.w"], 400.0)
    _rejected(_edit(1, blow), "not finite")

    # an explicit step violating the diffusion stability limit (MODEL.md §2)
    def unstable(m, t):
        m["dynamics"]["eps"] = 10.0
        m["discretization"]["solver"] = {"name": "rk4"}
    _rejected(_edit(2, unstable), "stability")


def test_probe_runs_for_small_networks_only(tmp_path, monkeypatch):
    calls = []
    solve = pn.ContinuumNetwork.solve
    monkeypatch.setattr(pn.ContinuumNetwork, "solve",
                        lambda self, *a, **k: calls.append(1) or solve(self, *a, **k))
    p = tmp_path / "m.safetensors"
    p.write_bytes(base_files()[0])
    pn.load_model(p)
    assert len(calls) == 1
    # 28×28 width, 16×16 controls, 9 knots: the schedule alone costs 1.9e9 > PROBE_WORK
    big = pn.ContinuumNetwork.create((28, 28), 10, intervals=8, steps=16)
    assert modelfile._probe_cost(big) > modelfile.PROBE_WORK
    pn.save_model(big, p)
    calls.clear()
    back = pn.load_model(p)
    assert calls == [] and torch.equal(back.controls.w, big.controls.w)


def test_metadata_reader(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes(base_files()[0])
    meta = modelfile.read_safetensors_metadata(p)
    assert set(meta) == {"pdenets"} and json.loads(meta["pdenets"])["version"] == 1
    p.write_bytes(st_save({"a": torch.zeros(2)}))
    assert modelfile.read_safetensors_metadata(p) == {}
    for bad in (b"", b"\x05", struct.pack("<Q", 2**63) + b"{}", struct.pack("<Q", 10) + b"{"):
        p.write_bytes(bad)
        with pytest.raises(ModelFileError, match="corrupt|truncated"):
            modelfile.read_safetensors_metadata(p)
    with pytest.raises(ModelFileError, match="does not exist"):
        modelfile.read_safetensors_metadata(tmp_path / "nope")
    with pytest.raises(ModelFileError, match="not a regular file"):
        modelfile.read_safetensors_metadata(tmp_path)
    with pytest.raises(ModelFileError, match="^checkpoint .* corrupt"):
        modelfile.read_safetensors_metadata(p, what="checkpoint")
    for odd in ("a\0b", "x" * 5000):
        with pytest.raises(ModelFileError):
            pn.load_model(odd)


def test_large_but_sane_metadata_and_values_load():
    # a 2 MB free-form extra section and weights of size 1e3 are legitimate
    def f(m, t):
        m["extra"]["log"] = ["epoch"] * 200_000
        t["controls.w"] = t["controls.w"] * 1e3 / t["controls.w"].abs().max()
    assert check_variant(_edit(0, f)) == "loaded"


# -- the command line on hostile files -------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdenets", *args], capture_output=True,
                          text=True, timeout=300)


HOSTILE_FOR_CLI = {
    "steps": lambda: _edit(3, _set("discretization", "steps", 1_000_000)),
    "nan-T": lambda: _edit(3, _set(None, "T", float("nan"))),
    "nan-tensor": lambda: _edit(3, lambda m, t: t["controls.w"].fill_(float("nan"))),
    "pickle": lambda: _foreign()[0],
    "forged-length": lambda: struct.pack("<Q", 2**62) + base_files()[3][8:],
}


@pytest.mark.parametrize("name,command", [
    ("steps", "evaluate"), ("steps", "simulate"), ("steps", "predict"),
    ("nan-T", "simulate"), ("nan-tensor", "predict"), ("pickle", "evaluate"),
    ("forged-length", "simulate"),
])
def test_cli_refuses_hostile_files(tmp_path, name, command):
    model = tmp_path / f"{name}.safetensors"
    model.write_bytes(HOSTILE_FOR_CLI[name]())
    np.save(tmp_path / "x.npy", np.ones((2, 4)))
    args = {"evaluate": ["--data", "iris"],
            "simulate": ["--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "sim")],
            "predict": [str(tmp_path / "x.npy")]}[command]
    r = _cli(command, str(model), *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdenets: error: "), r.stderr
    assert "model file" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "sim").exists()
