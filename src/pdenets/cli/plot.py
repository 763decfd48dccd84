"""``pdenets plot``: (re)draw the plots of a training run directory."""

from __future__ import annotations

import json
from pathlib import Path

from .._outputs import Output
from ..errors import PdenetsError
from ._common import add_json_flag, add_out_arguments, emit


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw loss/accuracy curves, fields u(x,t), decision regions",
                       description="Redraw the plots of RUN_DIR (written by pdenets train): "
                       "curves.png, field.png and, for 2-feature data, decision_regions.png. "
                       "They replace the plots in RUN_DIR, or go into --out DIR.")
    p.add_argument("run_dir")
    p.add_argument("--inputs", type=int, default=4, help="number of test inputs in field.png")
    add_out_arguments(p, None, claim=False, help="output directory (default: RUN_DIR)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset_config
    from ..modelfile import load_model
    from ..plotting import plot_run

    d = Path(args.run_dir)
    out = Path(args.out) if args.out is not None else d
    # plots are added to the run directory (or a plot directory): its other files stay
    target = Output(out, "plot", overwrite=args.overwrite, accept=("train",), mode="add")
    if not (d / "model.safetensors").is_file():
        raise PdenetsError(f"{str(d)!r} is not a complete run directory (no model.safetensors)")
    with target.claim():
        net = load_model(d / "model.safetensors")
        hist = []
        log = d / "metrics.jsonl"
        if log.is_file():
            try:
                hist = [json.loads(line) for line in log.read_text().splitlines()
                        if line.strip()]
            except ValueError:
                raise PdenetsError(f"{str(log)!r} is not valid JSON lines") from None
        dcfg = net.extra.get("data", {})
        ds = load_dataset_config(dcfg) if dcfg.get("name") else None
        with target.staging() as tmp:
            files = plot_run(tmp, net, ds, hist, n_inputs=max(1, args.inputs))
    emit(args, {"run_dir": str(d), "out": str(out), "files": files},
         f"wrote {', '.join(files)} in {out}/")
    return 0
