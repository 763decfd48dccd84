"""Resumable training checkpoints: safetensors tensors + JSON metadata, never pickle.

A checkpoint holds everything an exactly resumed run needs (MODEL.md §4–5 training state):
the network's tensors (``model.*``), the best epoch's tensors (``best.*``), the optimizer state
(``opt.<param id>.<key>``, packed by :func:`_pack_state`), the data-shuffling generator
(``rng.shuffle``) and, in the header metadata key ``"pdenets"``, a JSON object with
``format = "pdenets-checkpoint"``, ``version = 1``, ``epoch``, ``best``, ``stale``, ``stopped``,
``history``, the optimizer's ``param_groups`` and ``opt_meta`` and the run's ``config``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .._outputs import atomic_write_bytes
from ..config import Config, config_from_dict
from ..errors import ConfigError, ModelFileError, PdenetsError

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_info", "checkpoint_config"]


def _pack_state(prefix: str, state: dict, tensors: dict, meta: dict) -> None:
    """Write an optimizer ``state`` (param id -> {key: value}) into ``tensors`` and ``meta``."""
    for pid, st in state.items():
        for key, val in st.items():
            name = f"{prefix}.{pid}.{key}"
            if torch.is_tensor(val):
                tensors[name] = val.detach().cpu().contiguous()
                meta[name] = {"type": "tensor"}
            elif isinstance(val, list) and all(torch.is_tensor(v) or v is None for v in val):
                for i, v in enumerate(val):
                    if v is not None:
                        tensors[f"{name}.{i}"] = v.detach().cpu().contiguous()
                meta[name] = {"type": "list", "len": len(val),
                              "none": [i for i, v in enumerate(val) if v is None]}
            else:
                meta[name] = {"type": "value", "value": val}


def _unpack_state(prefix: str, tensors: dict, meta: dict, device) -> dict:
    """The inverse of :func:`_pack_state`, tensors moved to ``device``."""
    state: dict = {}
    for name, info in meta.items():
        if not name.startswith(prefix + "."):
            continue
        _, pid, key = name.split(".", 2)
        st = state.setdefault(int(pid), {})
        if info["type"] == "tensor":
            st[key] = tensors[name].to(device)
        elif info["type"] == "list":
            st[key] = [None if i in info["none"] else tensors[f"{name}.{i}"].to(device)
                       for i in range(info["len"])]
        else:
            st[key] = info["value"]
    return state


def _read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of the safetensors file ``path`` (``safe_open(...).metadata()``);
    an unreadable or corrupt file raises :class:`~pdenets.errors.ModelFileError`."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"checkpoint {str(path)!r} is corrupt: {e}") from None
    return dict(meta or {})


def _metadata_of_bytes(data: bytes, path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file given as bytes (its first 8 bytes: the
    little-endian length of the JSON header that follows; ``__metadata__`` in it)."""
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > len(data) - 8:
            raise ValueError("truncated header")
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not an object")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ModelFileError(f"checkpoint {str(path)!r} is corrupt: {e}") from None
    return meta


def checkpoint_info(path: str | os.PathLike, *, data: bytes | None = None) -> dict[str, Any]:
    """The JSON metadata object of the checkpoint ``path`` (see the module docstring); a
    missing file raises :class:`~pdenets.errors.PdenetsError`, a corrupt or foreign one
    :class:`~pdenets.errors.ModelFileError`. ``data``: the file's bytes (then ``path`` only
    names it in messages)."""
    path = Path(path)
    if data is not None:
        meta = _metadata_of_bytes(data, path)
    elif not path.is_file():
        raise PdenetsError(f"checkpoint {str(path)!r} does not exist")
    else:
        meta = _read_metadata(path)
    try:
        info = json.loads(meta["pdenets"])
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"checkpoint {str(path)!r} is corrupt: "
                             f"{type(e).__name__}: {e}") from None
    if not isinstance(info, dict) or info.get("format") != "pdenets-checkpoint":
        raise ModelFileError(f"{str(path)!r} is not a pdenets checkpoint")
    return info


#: keys added to the configuration after checkpoints were first written, with the value that
#: reproduces the behaviour of a checkpoint that lacks them (not the new default)
LEGACY_VALUES = {"train": {"level_solver": "", "fine_fraction": 0.0}}


def _legacy_keys(d):
    """A saved configuration with the keys it predates set to their old behaviour."""
    if not isinstance(d, dict):
        return d
    out = dict(d)
    for section, keys in LEGACY_VALUES.items():
        sec = out.get(section)
        if isinstance(sec, dict):
            out[section] = {**keys, **sec}
    return out


def checkpoint_config(path: str | os.PathLike) -> Config:
    """The configuration stored in the checkpoint ``path``, validated like a configuration
    file; a damaged checkpoint raises :class:`~pdenets.errors.ModelFileError`."""
    path = Path(path)
    try:
        info = checkpoint_info(path)
        return config_from_dict(_legacy_keys(info["config"]))
    except (ModelFileError, ConfigError, KeyError) as e:
        msg = e if isinstance(e, PdenetsError) else f"KeyError: {e}"
        raise ModelFileError(
            f"checkpoint {str(path)!r} is damaged ({msg}); cannot resume — "
            f"run without --resume to start the run afresh") from None


def save_checkpoint(trainer: Trainer, path: str | os.PathLike) -> None:
    """Write the resumable state of ``trainer`` to ``path`` (atomically)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    for k, v in trainer.net.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in trainer.best_state.items():
        tensors[f"best.{k}"] = v.detach().cpu().contiguous()
    sd = trainer.optimizer.state_dict()
    _pack_state("opt", sd["state"], tensors, meta)
    tensors["rng.shuffle"] = trainer.generator.get_state()
    info = {
        "format": "pdenets-checkpoint", "version": 1, "epoch": trainer.epoch,
        "best": trainer.best, "stale": trainer.stale, "stopped": trainer.stopped,
        "history": trainer.history,
        "param_groups": sd["param_groups"], "opt_meta": meta,
        "config": trainer.cfg.to_dict(),
    }
    atomic_write_bytes(path, st_save(tensors, metadata={"pdenets": json.dumps(info)}),
                       make_parents=False)


def load_checkpoint(trainer: Trainer, path: str | os.PathLike, *,
                    data: bytes | None = None) -> None:
    """Restore the state written by :func:`save_checkpoint` into ``trainer``; its method's
    :meth:`~pdenets.training.methods.Method.before_load` and ``after_load`` hooks run around
    it. A damaged or foreign file raises :class:`~pdenets.errors.ModelFileError`.

    ``data``: the checkpoint file's bytes, read elsewhere (``path`` then only names it in
    messages) — the ranks of a data-parallel run restore rank 0's checkpoint this way
    (:mod:`pdenets.training.distributed`)."""
    path = Path(path)
    info = checkpoint_info(path, data=data)
    try:
        tensors = st_load(path.read_bytes() if data is None else data)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"checkpoint {str(path)!r} is corrupt: {e}") from None
    trainer.method.before_load(trainer, info)
    try:
        trainer.net.load_state_dict({k[6:]: v for k, v in tensors.items()
                                     if k.startswith("model.")})
        trainer.best_state = {k[5:]: v.to(trainer.device) for k, v in tensors.items()
                              if k.startswith("best.")}
        state = _unpack_state("opt", tensors, info["opt_meta"], trainer.device)
        trainer.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        trainer.generator.set_state(tensors["rng.shuffle"])
        trainer.epoch, trainer.best = int(info["epoch"]), info["best"]
        trainer.stale = info["stale"]
        trainer.stopped = bool(info.get("stopped", False))
        trainer.history = list(info["history"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelFileError(f"checkpoint {str(path)!r} does not match this model: {e}") \
            from None
    trainer.method.after_load(trainer)
