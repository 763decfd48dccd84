"""``pdenets predict``: outputs (and classes) of a trained model for raw inputs."""

from __future__ import annotations

import numpy as np
import torch

from ._common import add_json_flag, check_result, emit, load_array
from .evaluate import add_discretization_flags, check_forward, checked_discretization


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict outputs for inputs in a file",
                       description="Apply MODEL to the raw inputs in INPUT (.npy/.npz/.csv, "
                       "shape (B, features) or (B, p, q)); the model's stored preprocessing "
                       "(scaling/standardization) is applied first.")
    p.add_argument("model")
    p.add_argument("input")
    add_discretization_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import preprocess
    from ..modelfile import load_model

    net = load_model(args.model)
    x = load_array(args.input)
    if x.ndim == 1:
        x = x[None]
    x = preprocess(x, getattr(net, "extra", {}).get("preprocess", {}))
    disc = checked_discretization(net, args)
    check_forward(net, disc, len(x), "the prediction", chunk=len(x))
    with torch.no_grad():
        out = net(torch.as_tensor(x, dtype=next(net.parameters()).dtype), disc)
    check_result(out, "the predicted outputs")
    out = out.numpy()
    task = getattr(net, "extra", {}).get("task", "classification")
    payload: dict = {"outputs": out.tolist()}
    if task == "classification":
        e = np.exp(out - out.max(1, keepdims=True))
        payload["classes"] = out.argmax(1).tolist()
        payload["probabilities"] = (e / e.sum(1, keepdims=True)).tolist()
    text = "\n".join(
        (f"{i}: class {payload['classes'][i]}  " if "classes" in payload else f"{i}: ")
        + " ".join(f"{v:.4f}" for v in row) for i, row in enumerate(out))
    emit(args, payload, text)
    return 0
