"""Run the whole benchmark suite: pdenets side by side with a PyTorch ResNet and a torchdiffeq ODE.

Usage::

    python -m benchmarks [--quick] [--json] [--device cpu|cuda] [--out DIR] [--threads T]
                         [--only forward gradient memory tta scaling tta975 epoch]
                         [--write-docs]

Writes ``DIR/results.json`` (keys ``forward_gemm_ratio_f32``, ``forward_gemm_ratio_f64``,
``grad_cost_ratio``, ``grad_memory_ratio``, ``time_to_accuracy_ratio``, ``scaling_exponents``,
``time_to_accuracy_ratio_975``, ``epoch_time_ratio``, ``machine``, ``quick``, ``sizes``,
``targets`` and the raw measurements under ``details``),
``DIR/results.md`` (the table, also printed) and ``DIR/scaling.png``. ``--json`` prints the JSON
instead of the table. ``--write-docs`` also writes the tables of ``docs/benchmarks.md`` and
the README's benchmark section from the results (:mod:`benchmarks.docs`; several runs, e.g.
``--threads 1`` and ``--threads 2``, are combined with ``python -m benchmarks.docs``).
``--threads 0`` (default) picks one thread per core other processes leave free
(:func:`pdenets._threads.default_threads`). On CUDA every figure runs in float32 (the float64
forward ratio too is measured). Timings are best-of-repeats (medians over seeds for time to
accuracy): the machine may be shared. ``--quick`` uses smaller sizes (listed in the output)
and finishes in about 3–4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from . import (
    bench_epoch,
    bench_forward,
    bench_gradient,
    bench_memory,
    bench_scaling,
    bench_time_to_accuracy,
)
from ._common import FULL, PRESETS, QUICK, TINY, Sizes, jsonable, machine_info

FIGURES = ("forward", "gradient", "memory", "tta", "scaling", "tta975", "epoch")
TARGETS = {
    "forward_gemm_ratio": ">= 0.8",
    "grad_cost_ratio": "<= 3",
    "grad_memory_ratio": "<= 0.1 (continuous adjoint)",
    "time_to_accuracy_ratio": "<= 0.5",
    "scaling_exponents": "N 2, S 1, B 1",
    "time_to_accuracy_ratio_975": "<= 1.0 (goal 0.5)",
    "epoch_time_ratio": "<= 1.2",
}
N_FIGURES = len(FIGURES)


def run_suite(sizes: Sizes = QUICK, device: str = "cpu", out: str | Path | None = "bench-results",
              only=FIGURES, threads: int = 0, log=None) -> dict:
    """Measure the figures ``only`` at ``sizes``; write results.json/.md to ``out`` (if given).

    Returns the JSON object (figures not run are None)."""
    if threads:
        torch.set_num_threads(threads)
    say = log or (lambda msg: None)
    t_start = time.perf_counter()
    res: dict = {
        "forward_gemm_ratio_f32": None, "forward_gemm_ratio_f64": None,
        "grad_cost_ratio": None, "grad_memory_ratio": None,
        "time_to_accuracy_ratio": None, "scaling_exponents": None,
        "time_to_accuracy_ratio_975": None, "epoch_time_ratio": None,
        "machine": machine_info(device), "quick": sizes.name != "full", "preset": sizes.name,
        "sizes": sizes.as_dict(), "targets": TARGETS, "details": {},
    }
    det = res["details"]
    if "forward" in only:
        say(f"[1/{N_FIGURES}] forward efficiency ...")
        f = bench_forward.run(sizes, device)
        res["forward_gemm_ratio_f32"], res["forward_gemm_ratio_f64"] = f["f32"], f["f64"]
        det["forward"] = f
    if "gradient" in only:
        say(f"[2/{N_FIGURES}] gradient cost ...")
        g = bench_gradient.run(sizes, device)
        res["grad_cost_ratio"] = g["ratio"]
        det["gradient"] = g["detail"]
    if "memory" in only:
        say(f"[3/{N_FIGURES}] peak memory (fresh subprocess per case) ...")
        m = bench_memory.run(sizes, device, torch.get_num_threads())
        res["grad_memory_ratio"] = m["ratio"]
        det["memory"] = m
    if "tta" in only:
        say(f"[4/{N_FIGURES}] time to accuracy on digits ...")
        t = bench_time_to_accuracy.run(sizes, device, log=say)
        res["time_to_accuracy_ratio"] = t["ratio"]
        det["time_to_accuracy"] = t
    if "scaling" in only:
        say(f"[5/{N_FIGURES}] scaling ...")
        plot = None if out is None else Path(out) / "scaling.png"
        s = bench_scaling.run(sizes, device, plot)
        res["scaling_exponents"] = s["exponents"]
        det["scaling"] = s
    if "tta975" in only:
        say(f"[6/{N_FIGURES}] time to 97.5 % on digits, pdenets default vs ResNet ...")
        t = bench_time_to_accuracy.run_975(sizes, device, log=say)
        res["time_to_accuracy_ratio_975"] = t["ratio"]
        det["time_to_accuracy_975"] = t
    if "epoch" in only:
        say(f"[7/{N_FIGURES}] epoch time, pdenets Euler vs ResNet at the same size ...")
        e = bench_epoch.run(sizes, device)
        res["epoch_time_ratio"] = e["ratio"]
        det["epoch_time"] = e
    res["wall_seconds"] = time.perf_counter() - t_start
    res = jsonable(res)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "results.md").write_text(markdown(res) + "\n")
    return res


def _f(v, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _ok(v, cond) -> str:
    if v is None:
        return "–"
    return "yes" if cond(v) else "**no**"


def markdown(res: dict) -> str:
    """The Markdown table of a result object of :func:`run_suite`."""
    s, d, m = res["sizes"], res["details"], res["machine"]
    rows = ["| figure | measured | target | met | sizes / notes |", "|---|---|---|---|---|"]
    fw = d.get("forward")
    for key, label in (("f32", "float32"), ("f64", "float64")):
        v = res[f"forward_gemm_ratio_{key}"]
        note = (f"B={s['fwd_batch']} N={s['fwd_width']} S={s['fwd_steps']}, "
                f"{fw['solver'] if fw else 'euler'}; FLOP rate ÷ same-shape GEMM")
        rows.append(f"| forward efficiency {label} | {_f(v)} | ≥ 0.8 | "
                    f"{_ok(v, lambda x: x >= 0.8)} | {note} |")
    gc = res["grad_cost_ratio"] or {}
    gdet = d.get("gradient", {})
    for k, v in gc.items():
        note = (f"B={s['grad_batch']} N={s['grad_width']} S={s['grad_steps']}, Euler, "
                f"float32; (fwd+grad) ÷ no-grad fwd")
        rows.append(f"| gradient cost: {k} | {_f(v)} | ≤ 3 | {_ok(v, lambda x: x <= 3)} | "
                    f"{note} |")
    if "torch_resnet" in gdet:
        rows.append(f"| (reference) gradient cost: torch ResNet autograd | "
                    f"{_f(gdet['torch_resnet']['ratio'])} | – | – | same weights and sizes |")
    mr = res["grad_memory_ratio"] or {}
    mdet = d.get("memory", {})
    for k, v in mr.items():
        mib = mdet.get("peak_mib", {}).get(k)
        ref = mdet.get("peak_mib", {}).get("torch_resnet")
        note = (f"S={s['mem_steps']} B={s['mem_batch']} N={s['mem_width']}: "
                f"{_f(mib, '{:.1f}')} MiB vs ResNet {_f(ref, '{:.1f}')} MiB")
        target, met = ("≤ 0.1", _ok(v, lambda x: x <= 0.1)) if k == "continuous" else ("–", "–")
        rows.append(f"| peak memory ÷ torch ResNet: {k} | {_f(v, '{:.3f}')} | {target} | {met} | "
                    f"{note} |")
    tta = d.get("time_to_accuracy")
    if tta is not None:
        sec = tta["seconds"]
        parts = [f"{k} {_f(v, '{:.1f}')} s" for k, v in sec.items()]
        parts += [f"{k} skipped" for k in tta["skipped"]]
        note = (f"digits, target acc {_f(tta['target_accuracy'], '{:.3f}')}, median of "
                f"{len(tta['seeds'])} seed(s), ≤ {tta['epochs']} epochs / {tta['budget_s']:g} s; "
                f"pdenets best = {tta['pdenets_best_method']}, best peer = {tta['best_peer']}: "
                + ", ".join(parts))
        v = res["time_to_accuracy_ratio"]
        rows.append(f"| time to accuracy ÷ best peer | {_f(v)} | ≤ 0.5 | "
                    f"{_ok(v, lambda x: x <= 0.5)} | {note} |")
    t9 = d.get("time_to_accuracy_975")
    if t9 is not None:
        sec, ep = t9["seconds"], t9["epochs_to_target"]

        def _ep(name):
            got = [e for e in ep[name] if e is not None]
            return (f"{min(got)}–{max(got)} epochs" if got else "not reached") + (
                f", {len(ep[name]) - len(got)} seed(s) not reached"
                if got and len(got) < len(ep[name]) else "")

        note = (f"digits, median of {len(t9['seeds'])} seed(s), ≤ {t9['max_epochs']} epochs / "
                f"{t9['budget_s']:g} s; pdenets default ({t9['method']}, {t9['solver']}, "
                f"{t9['dtype']}) {_f(sec['pdenets'], '{:.2f}')} s ({_ep('pdenets')}), "
                f"ResNet {_f(sec['torch-resnet'], '{:.2f}')} s ({_ep('torch-resnet')})"
                + (f"; with the dense kernel {_f(sec['pdenets-dense'], '{:.2f}')} s "
                   f"({_ep('pdenets-dense')}), ratio {_f(t9.get('ratio_dense'))}"
                   if "pdenets-dense" in sec else ""))
        v = res.get("time_to_accuracy_ratio_975")
        rows.append(f"| time to 97.5 % ÷ ResNet (pdenets default) | {_f(v)} | ≤ 1.0 (goal 0.5) "
                    f"| {_ok(v, lambda x: x <= 1.0)} | {note} |")
    et = d.get("epoch_time")
    if et is not None:
        sh, sec = et["shape"], et["seconds"]
        note = (f"digits, width {sh['width']}, depth {sh['steps']}, batch {sh['batch']}, "
                f"best of {et['repeats']} epoch(s): pdenets Euler "
                f"{_f(sec['pdenets-euler'], '{:.3f}')} s (with augmentation "
                f"{_f(sec['pdenets-euler-augmented'], '{:.3f}')} s), ResNet "
                f"{_f(sec['torch-resnet'], '{:.3f}')} s")
        v = res.get("epoch_time_ratio")
        rows.append(f"| epoch time ÷ ResNet (Euler, same size) | {_f(v)} | ≤ 1.2 | "
                    f"{_ok(v, lambda x: x <= 1.2)} | {note} |")
    se = res["scaling_exponents"]
    if se is not None:
        b = d["scaling"]["base"]
        for kind in ("forward", "gradient"):
            e = se[kind]
            rows.append(f"| scaling exponents, {kind} | N {_f(e['N'])}, S {_f(e['S'])}, "
                        f"B {_f(e['B'])} | N 2, S 1, B 1 | – | base B={b['B']} N={b['N']} "
                        f"S={b['S']}; N∈{s['scl_N']}, S∈{s['scl_S']}, B∈{s['scl_B']} |")
    load = m.get("load_average")
    head = (f"pdenets benchmark suite ({res['preset']} run"
            f"{', smaller sizes' if res['quick'] else ''}) on {m['cpu']}, {m['cores']} cores, "
            f"torch {m['torch']}, {m['threads']} thread(s)"
            f"{', wait policy ' + m['wait_policy'] if m.get('wait_policy') else ''}"
            f"{f', load average {load:.1f}' if load is not None else ''}, "
            f"device {m['device']}"
            f"{', ' + m['gpu'] if m.get('gpu') else ''}; torchdiffeq {m['torchdiffeq']}; "
            f"{res.get('wall_seconds', 0):.0f} s")
    return head + "\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, 1 seed (~2-3 min)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    p.add_argument("--out", default="bench-results", help="output directory")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: one per core other processes leave free); 1 is "
                   "steadier on shared machines")
    p.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    p.add_argument("--write-docs", action="store_true",
                   help="write the tables of docs/benchmarks.md and the README from the results")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    sizes = TINY if a.tiny else QUICK if a.quick else FULL
    assert sizes.name in PRESETS
    log = None if a.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    from pdenets._threads import resolve_threads

    res = run_suite(sizes, a.device, a.out, tuple(a.only), resolve_threads(a.threads), log)
    print(json.dumps(res, indent=2) if a.json else markdown(res))
    if a.write_docs:
        from . import docs

        for path in docs.write_docs([res]):
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
