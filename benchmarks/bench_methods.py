"""Benchmark: time to a target accuracy for the training methods of MODEL.md §4–7.

Methods (all at the same final discretization, the configured model):

* ``adam``        Adam with backprop through the discrete network (baseline; ``train.*`` as
                  configured);
* ``lbfgs-adj``   full-batch L-BFGS with the continuous adjoint (``train.gradient=continuous``);
* ``msa``         extended method of successive approximations (:mod:`pdenets.pontryagin`);
* ``multilevel``  coarse-to-fine training with Adam per level (:mod:`pdenets.multilevel`);
                  only epochs at the finest level may count as reaching the target.

Target: the median over seeds of the best validation accuracy Adam reaches within its epochs,
minus ``--slack`` (default 0.01). Time = cumulative training seconds (evaluation excluded) up
to the first epoch whose validation accuracy reaches the target; ∞ when never reached.
Medians over ``--seeds`` seeds; a table on stdout, ``bench_methods.png`` and
``bench_methods.json`` in ``--out``. Configurations are read at run time from
:func:`pdenets.config.load_config` (the package defaults, plus ``--set`` overrides for all
methods), so tuning of the defaults is picked up.

Usage::

    python benchmarks/bench_methods.py --quick            # < 3 min smoke run
    python benchmarks/bench_methods.py --seeds 3 --out bench-out
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

METHODS: dict[str, list[str]] = {
    "adam": ["train.method=adam"],
    "lbfgs-adj": ["train.method=lbfgs", "train.gradient=continuous"],
    "msa": ["train.method=msa"],
    "multilevel": ["train.method=multilevel", "train.level_method=adam", "train.levels=2"],
}


def run_one(dataset: str, method: str, seed: int, sets: list[str], epochs: int,
            method_sets: dict[str, list[str]]) -> dict:
    from pdenets.config import load_config
    from pdenets.data import load_dataset
    from pdenets.training import make_trainer

    cfg = load_config(None, [f"data.name={dataset}", f"seed={seed}", f"train.epochs={epochs}",
                             *sets, *METHODS[method], *method_sets.get(method, [])])
    ds = load_dataset(cfg.data.name, seed=cfg.data.seed, test_fraction=cfg.data.test_fraction,
                      val_fraction=cfg.data.val_fraction, n_samples=cfg.data.n_samples,
                      standardize=cfg.data.standardize)
    torch.manual_seed(seed)
    tr = make_trainer(cfg, ds)
    t0 = time.perf_counter()
    res = tr.fit()
    wall = time.perf_counter() - t0
    final_level = max((h.get("level", 0) for h in res.history), default=0)
    curve, tsum = [], 0.0
    for h in res.history:
        tsum += h["seconds"]
        curve.append({"t": tsum, "val_accuracy": h["val_accuracy"],
                      "objective": h["train_objective"],
                      "fine": h.get("level", 0) == final_level})
    return {"dataset": dataset, "method": method, "seed": seed, "curve": curve, "wall": wall,
            "test_accuracy": res.metrics["test_accuracy"],
            "best_val": max(h["val_accuracy"] for h in res.history),
            "fallbacks": res.metrics.get("msa_fallbacks"),
            "epochs": len(res.history)}


def time_to(run: dict, target: float) -> float:
    for p in run["curve"]:
        if p["fine"] and p["val_accuracy"] >= target - 1e-12:
            return p["t"]
    return math.inf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (< 3 min)")
    ap.add_argument("--datasets", default="digits,spirals")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="epochs per run (default: the config's; quick: 3)")
    ap.add_argument("--slack", type=float, default=0.01, help="target = Adam's median best "
                    "validation accuracy minus this")
    ap.add_argument("--set", action="append", default=[], help="config override for all runs")
    ap.add_argument("--method-set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="override for one method, e.g. msa:train.msa_rho=0.5")
    ap.add_argument("--out", default="bench-methods")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from pdenets.config import load_config

    datasets = [d for d in a.datasets.split(",") if d]
    methods = [m for m in a.methods.split(",") if m]
    if "adam" not in methods:
        methods.insert(0, "adam")
    method_sets: dict[str, list[str]] = {}
    for item in a.method_set:
        m, _, kv = item.partition(":")
        method_sets.setdefault(m, []).append(kv)
    sets = list(a.set)
    if a.quick:
        sets = ["data.n_samples=300", "train.lbfgs_iterations=5", *sets]
        method_sets.setdefault("msa", [])[:0] = ["train.msa_inner_steps=3",
                                                 "train.msa_readout_steps=5"]
    results, summary = [], {}
    for ds in datasets:
        epochs = a.epochs or (3 if a.quick else
                              load_config(None, [f"data.name={ds}", *sets]).train.epochs)
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for m in methods:
            for s in range(a.seeds):
                r = run_one(ds, m, s, sets if ds != "digits" or not a.quick
                            else [s_ for s_ in sets if not s_.startswith("data.n_samples")],
                            epochs, method_sets)
                runs[m].append(r)
                results.append(r)
                print(f"  {ds:8s} {m:11s} seed {s}: best val {r['best_val']:.4f}, "
                      f"{r['wall']:.1f} s", file=sys.stderr, flush=True)
        target = statistics.median(r["best_val"] for r in runs["adam"]) - a.slack
        base = statistics.median(time_to(r, target) for r in runs["adam"])
        rows = {}
        for m in methods:
            tt = [time_to(r, target) for r in runs[m]]
            med = statistics.median(tt)
            rows[m] = {
                "time_to_target": med, "reached": sum(math.isfinite(v) for v in tt),
                "speedup_vs_adam": base / med if math.isfinite(med) and med > 0 else 0.0,
                "best_val_median": statistics.median(r["best_val"] for r in runs[m]),
                "test_median": statistics.median(r["test_accuracy"] for r in runs[m]),
                "seconds_median": statistics.median(r["curve"][-1]["t"] for r in runs[m]),
                "fallbacks": [r["fallbacks"] for r in runs[m]] if m == "msa" else None,
            }
        summary[ds] = {"target": target, "epochs": epochs, "methods": rows}
    # table
    print(f"\n{'dataset':9s} {'method':11s} {'t->target [s]':>14s} {'reached':>8s} "
          f"{'speedup':>8s} {'best val':>9s} {'test':>7s} {'train s':>8s}")
    for ds, sm in summary.items():
        print(f"-- {ds}: target val accuracy {sm['target']:.4f} (Adam median best − "
              f"{a.slack}), {sm['epochs']} epochs, {a.seeds} seeds")
        for m, r in sm["methods"].items():
            t = r["time_to_target"]
            print(f"{ds:9s} {m:11s} {t:14.2f} {r['reached']:>5d}/{a.seeds:<2d} "
                  f"{r['speedup_vs_adam']:8.2f} {r['best_val_median']:9.4f} "
                  f"{r['test_median']:7.4f} {r['seconds_median']:8.1f}"
                  + (f"  fallbacks {r['fallbacks']}" if r["fallbacks"] is not None else ""))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_methods.json").write_text(json.dumps(
        {"summary": summary, "runs": results, "argv": sys.argv[1:]}, indent=1,
        default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else o))
    _plot(results, summary, out / "bench_methods.png")
    print(f"wrote {out}/bench_methods.png and bench_methods.json")
    return 0


def _plot(results, summary, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdenets.plotting import save_figure

    dss = list(summary)
    fig, axes = plt.subplots(1, len(dss), figsize=(5.5 * len(dss), 4), squeeze=False)
    colors = dict(zip(METHODS, ("k", "tab:blue", "tab:red", "tab:green")))
    for ax, ds in zip(axes[0], dss):
        for r in results:
            if r["dataset"] != ds:
                continue
            t = [p["t"] for p in r["curve"]]
            v = [p["val_accuracy"] for p in r["curve"]]
            ax.plot(t, v, "-", color=colors.get(r["method"], "gray"), alpha=0.6, lw=1,
                    label=r["method"] if r["seed"] == 0 else None)
        ax.axhline(summary[ds]["target"], color="gray", ls="--", lw=0.8, label="target")
        ax.set_xscale("log")
        ax.set_xlabel("training seconds (cumulative)")
        ax.set_ylabel("validation accuracy")
        ttl = ", ".join(f"{m} {v['time_to_target']:.1f}s"
                        for m, v in summary[ds]["methods"].items())
        ax.set_title(f"{ds}: time to target — {ttl}", fontsize=7)
        ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
