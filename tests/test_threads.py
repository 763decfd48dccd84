"""Threads and the OpenMP wait policy (pdenets._threads; issue 13 item 5): the thread rule, the
environment set before torch loads, and ``--threads`` on every CLI command (no timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pdenets import _threads
from pdenets.cli import _leaf_parsers, build_parser, main
from pdenets.errors import ConfigError


@pytest.mark.parametrize(("cores", "load", "expected"), [
    (2, 0.0, 2),      # idle: every core
    (2, 0.4, 2),      # a little background work: still both
    (2, 0.6, 1),      # about one core busy: one thread
    (2, 4.5, 1),      # overloaded: never below one
    (16, 3.2, 13),    # 16 cores, ~3 busy
    (16, 2.5, 14),    # a half rounds up: 16 - 2.5 = 13.5 -> 14
    (4, -1.0, 4),     # a nonsense negative load counts as idle
    (1, 0.0, 1),
])
def test_default_threads_is_free_cores_rounded(cores, load, expected):
    assert _threads.default_threads(cores, load) == expected


def test_default_threads_without_load_uses_every_core():
    assert _threads.default_threads(3, float("nan")) == 3


def test_default_threads_within_available_cores():
    n = _threads.default_threads()
    assert 1 <= n <= _threads.available_cores()
    if hasattr(os, "sched_getaffinity"):
        assert _threads.available_cores() <= len(os.sched_getaffinity(0))


def test_cgroup_quota_parsing(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert _threads._cgroup_cpu_limit(str(f)) == pytest.approx(1.5)
    f.write_text("max 100000\n")
    assert _threads._cgroup_cpu_limit(str(f)) is None
    f.write_text("garbage\n")
    assert _threads._cgroup_cpu_limit(str(f)) is None
    assert _threads._cgroup_cpu_limit(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("bad", [-1, _threads.MAX_THREADS + 1, 10**9])
def test_resolve_threads_rejects_out_of_range(bad):
    with pytest.raises(ConfigError, match="--threads must be between 0"):
        _threads.resolve_threads(bad)


def test_resolve_threads_zero_is_the_default(monkeypatch):
    monkeypatch.setattr(_threads, "default_threads", lambda: 7)
    assert _threads.resolve_threads(0) == 7
    assert _threads.resolve_threads(3) == 3


def test_set_openmp_env_fills_in_only_unset_variables():
    env: dict[str, str] = {}
    assert _threads.set_openmp_env(env) is True
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    _threads.set_openmp_env(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"


_PROBE = ("import os, sys, json{first}; import pdenets, pdenets._threads as t; "
          "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), t.wait_policy()]))")


def _probe(first: str, env_policy: str | None) -> list:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run([sys.executable, "-c", _PROBE.format(first=first)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_pdenets_sets_passive_policy_before_torch_loads():
    # a fresh interpreter: pdenets is imported first, so the variable is set before torch's
    # OpenMP runtime reads it; a user's own choice is kept; after torch, nothing is changed
    assert _probe("", None) == ["PASSIVE", "PASSIVE"]
    assert _probe("", "ACTIVE") == ["ACTIVE", "ACTIVE"]
    assert _probe("; import torch", None) == [None, "unknown"]


def test_every_cli_command_has_threads():
    parser = build_parser()
    leaves = [p for p in _leaf_parsers(parser) if p is not parser]
    assert len(leaves) >= 5
    for p in leaves:
        action = p._option_string_actions.get("--threads")
        assert action is not None, p.prog
        assert action.dest == "threads" and action.type is int
        # 0 = the default pick everywhere; hjb keeps its own option (default 1 thread)
        assert action.default == (1 if p.prog == "pdenets hjb" else 0), p.prog


def test_cli_applies_threads_for_the_command_and_restores(monkeypatch, tmp_path, capsys):
    seen = []
    real = _threads.apply_threads

    def spy(n):
        k = real(n)
        seen.append((n, k, torch.get_num_threads()))
        return k

    monkeypatch.setattr(_threads, "apply_threads", spy)
    before = torch.get_num_threads()
    target = 2 if before != 2 else 3
    rc = main(["evaluate", str(tmp_path / "missing.pdn"), "--threads", str(target)])
    assert rc == 2  # the model file does not exist: a clean error, after threads were applied
    assert seen == [(target, target, target)]
    assert torch.get_num_threads() == before


def test_cli_rejects_negative_threads(capsys):
    before = torch.get_num_threads()
    assert main(["evaluate", "model.pdn", "--threads", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdenets: error: --threads must be between 0")
    assert torch.get_num_threads() == before


def test_small_runs_use_one_thread_unless_threads_were_given():
    import torch

    from pdenets import _threads

    assert _threads.threads_for_work(2, 64 * 64) == 1  # digits: batch 64 × 64 nodes
    assert _threads.threads_for_work(2, 1024 * 256) == 2
    saved = torch.get_num_threads()
    try:
        _threads.apply_threads(2)  # explicit: kept
        assert _threads.fit_to_work(10) == 2 and torch.get_num_threads() == 2
        _threads.apply_threads(0)  # automatic: lowered for a small run
        assert _threads.fit_to_work(10) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
