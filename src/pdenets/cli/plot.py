"""``pdenets plot``: (re)draw the plots of a training run directory."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PdenetsError
from ._common import add_json_flag, emit


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw loss/accuracy curves, fields u(x,t), decision regions",
                       description="Redraw the plots of RUN_DIR (written by pdenets train): "
                       "curves.png, field.png and, for 2-feature data, decision_regions.png.")
    p.add_argument("run_dir")
    p.add_argument("--inputs", type=int, default=4, help="number of test inputs in field.png")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..data import load_dataset
    from ..modelfile import load_model
    from ..plotting import plot_curves, plot_decision_regions, plot_depth_slices

    d = Path(args.run_dir)
    if not (d / "model.safetensors").is_file():
        raise PdenetsError(f"{str(d)!r} is not a complete run directory (no model.safetensors)")
    net = load_model(d / "model.safetensors")
    files = []
    log = d / "metrics.jsonl"
    if log.is_file():
        try:
            hist = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        except ValueError:
            raise PdenetsError(f"{str(log)!r} is not valid JSON lines") from None
        if hist:
            plot_curves(hist, d / "curves.png", d.name)
            files.append("curves.png")
    dcfg = net.extra.get("data", {})
    if dcfg.get("name"):
        ds = load_dataset(dcfg["name"], seed=dcfg.get("seed", 0),
                          test_fraction=dcfg.get("test_fraction", 0.25),
                          val_fraction=dcfg.get("val_fraction", 0.1),
                          n_samples=dcfg.get("n_samples", 1000),
                          standardize=dcfg.get("standardize", True))
        k = max(1, min(args.inputs, len(ds.x_test)))
        x = torch.as_tensor(ds.x_test[:k], dtype=next(net.parameters()).dtype)
        plot_depth_slices(net, x, list(ds.y_test[:k]), net.discretization, d / "field.png")
        files.append("field.png")
        if ds.input_shape == (2,) and ds.task == "classification":
            plot_decision_regions(net, ds, d / "decision_regions.png")
            files.append("decision_regions.png")
    emit(args, {"run_dir": str(d), "files": files},
         f"wrote {', '.join(files)} in {d}/")
    return 0
