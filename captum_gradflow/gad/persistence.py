"""Saving and loading fitted GAD support models (docs/definitions.md, section 3.2).

A save file is one ``torch.save`` dictionary of plain Python values and tensors: the format
tag and version, the :class:`~captum_gradflow.gad.GADConfig`, the distancing plan, the
schedule, the training history, the support models' state dicts, and checksums. Every
tensor has a SHA-256 digest of its dtype, shape and bytes, and the plain-Python part has one
of its canonical JSON text; loading reads the file with ``weights_only=True`` (no pickled
code runs) and recomputes every digest, so a file with flipped bytes is a ``ValueError``
naming the file, never a model with altered weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import Tensor, nn

from captum_gradflow.gad.config import GADConfig
from captum_gradflow.gad.distancing import DistancingPlan

__all__ = ["FORMAT", "VERSION", "tensor_digest", "model_digest", "write_save", "read_save"]

FORMAT = "captum_gradflow.GADWrapper"
VERSION = 2
PathLike = Union[str, "os.PathLike[str]"]


def tensor_digest(t: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (on CPU, contiguous)."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    data = t.detach().to("cpu").contiguous()
    h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def model_digest(model: nn.Module) -> Tensor:
    """Sum and sum of squares of every floating parameter and buffer: cheap evidence of the
    same weights (tells a loaded file that the method explains another model)."""
    rows = [
        torch.stack([t.detach().double().sum(), t.detach().double().square().sum()]).cpu()
        for t in list(model.parameters()) + list(model.buffers())
        if t.is_floating_point()
    ]
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def _tensors(payload: Dict[str, Any]) -> List[Tuple[str, Tensor]]:
    named = [("alphas", payload["alphas"]), ("model_digest", payload["model_digest"])]
    for i, sd in enumerate(payload["state_dicts"]):
        named += [(f"state_dicts[{i}].{k}", v) for k, v in sd.items()]
    return named


def _meta_digest(payload: Dict[str, Any]) -> str:
    meta = {k: payload[k] for k in ("format", "version", "model_class", "config", "plan", "history")}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def write_save(
    path: PathLike,
    model: nn.Module,
    config: GADConfig,
    plan: DistancingPlan,
    alphas: Tensor,
    history: List[List[float]],
    support_models: List[nn.Module],
) -> None:
    """Write a checksummed save file (see the module docstring)."""
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": type(model).__qualname__,
        "model_digest": model_digest(model),
        "config": config.to_dict(),
        "plan": plan.to_config(),
        "alphas": alphas.detach().clone().cpu(),
        "history": [[float(v) for v in h] for h in history],
        "state_dicts": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in support_models],
    }
    payload["checksums"] = {
        "tensors": {name: tensor_digest(t) for name, t in _tensors(payload)},
        "meta": _meta_digest(payload),
    }
    torch.save(payload, path)


def _read(path: PathLike) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no GAD save file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ValueError(f"could not read GAD save file {path}: {type(err).__name__}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a GADWrapper save file (saved by GADWrapper.save)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has GAD save format version {payload.get('version')}; expected {VERSION}")
    return payload


def _verify(path: PathLike, payload: Dict[str, Any]) -> None:
    """Recompute every digest; a mismatch means the file was altered after it was written."""
    try:
        expected = payload["checksums"]
        named = _tensors(payload)
        bad = [name for name, t in named if expected["tensors"].get(name) != tensor_digest(t)]
        missing = sorted(set(expected["tensors"]) - {name for name, _ in named})
        meta_ok = expected["meta"] == _meta_digest(payload)
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"GAD save file {path} is incomplete: {err!r}") from None
    if bad or missing or not meta_ok:
        what = bad[:3] + missing[:3] + ([] if meta_ok else ["the configuration"])
        raise ValueError(
            f"GAD save file {path} is corrupt: the checksum of {', '.join(what)}"
            f"{' and more' if len(bad) + len(missing) > 3 else ''} does not match; the file was "
            "altered after it was saved. Refit and save again"
        )


def read_save(path: PathLike, model: nn.Module) -> Dict[str, Any]:
    """Read and verify a save file for the method's ``model``.

    Returns ``config`` (:class:`GADConfig`), ``plan``, ``alphas``, ``history`` and
    ``state_dicts``. Raises ``ValueError`` for a file that is not a GAD save, is corrupt or
    incomplete, or was fitted for another class of model; warns when the weights differ from
    the ones the support models were fitted from.
    """
    payload = _read(path)
    _verify(path, payload)
    try:
        out = {
            "config": GADConfig.from_dict(dict(payload["config"])),
            "plan": DistancingPlan.from_config(payload["plan"]),
            "alphas": payload["alphas"].to(torch.float64),
            "history": [list(h) for h in payload["history"]],
            "state_dicts": list(payload["state_dicts"]),
        }
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"GAD save file {path} is incomplete or invalid: {err}") from None
    if len(out["state_dicts"]) != out["alphas"].shape[0]:
        raise ValueError(f"GAD save file {path} has {len(out['state_dicts'])} models for {out['alphas'].shape[0]} alphas")
    if payload.get("model_class") != type(model).__qualname__:
        raise ValueError(
            f"GAD save file {path} was fitted for a {payload.get('model_class')}, but the method "
            f"explains a {type(model).__qualname__}"
        )
    saved, now = payload["model_digest"], model_digest(model)
    if saved.shape != now.shape or not torch.allclose(saved, now, rtol=1e-5, atol=1e-6):
        warnings.warn(
            f"the model of the method differs from the one the support models in {path} were "
            "fitted from; GAD maps would compare different models. Refit if this is not intended",
            UserWarning,
            stacklevel=3,
        )
    return out
