"""``pdenets train``: train a continuum network and write a results directory."""

from __future__ import annotations

import os
import sys

from ..config import load_config
from ._common import add_json_flag, add_out_arguments, emit


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a network (default: the embedded digits configuration)",
        description="Train the continuum network (MODEL.md §4-5). With no arguments it trains "
        "the embedded default on scikit-learn's digits and writes runs/digits/: config.toml, "
        "metrics.json, metrics.jsonl, model.safetensors, curves.png, field.png.",
    )
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.method=lbfgs (repeatable)")
    add_out_arguments(p, None, claim=False, help="results directory (default: runs/<dataset>)")
    p.add_argument("--resume", action="store_true",
                   help="resume the interrupted run in OUT.partial from its checkpoint")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training in N local worker processes (torch.distributed: "
                   "gloo on CPU, NCCL on CUDA), equal to the 1-process run to rounding; for "
                   "several machines launch `torchrun ... -m pdenets train` instead (default 1)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import PdenetsError
    from ..training import distributed, run_training

    if args.nproc < 1:
        raise PdenetsError(f"--nproc: must be >= 1, got {args.nproc}")
    cfg = load_config(args.config, args.set)
    cores = os.cpu_count() or 1
    if args.nproc > cores and not cfg.device.startswith("cuda"):
        print(f"pdenets: warning: --nproc {args.nproc} processes on {cores} CPU core(s) "
              f"oversubscribe them; the run will be slower than with fewer", file=sys.stderr)
    out = args.out or str(Path("runs") / Path(cfg.data.name).stem)
    main_rank = distributed.env_rank() == 0  # under torchrun only rank 0 reports
    m = run_training(cfg, out, resume=args.resume,
                     progress=main_rank and not (args.quiet or args.json),
                     plots=not args.no_plots, overwrite=args.overwrite, nproc=args.nproc)
    if not main_rank:
        return 0
    acc = m["test_accuracy"]
    line = (f"{m['dataset']}: test accuracy {100 * acc:.2f}%, " if acc == acc else
            f"{m['dataset']}: ") + (
        f"test loss {m['test_loss']:.4f}, model of epoch {m['kept_epoch']}/{m['epochs_run']}, "
        f"{m['wall_seconds']:.1f} s; results in {out}/")
    emit(args, m, line)
    return 0
