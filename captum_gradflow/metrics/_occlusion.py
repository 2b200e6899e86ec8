"""Occlusion for region sensitivity: masks from regions, baselines, batched occluded scores.

Inputs are images ``(N, C, H, W)`` / ``(N, H, W)`` or volumes ``(N, C, D, H, W)``; a mask
covers the spatial axes and is broadcast over channels.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_gradflow._common import (
    TargetType,
    check_finite,
    decision_margin,
    format_additional_args,
    run_forward,
    select_target,
)
from captum_gradflow.metrics.regions import Regions, VolumeRegions, attribution_regions

RegionsLike = Union[Regions, VolumeRegions, Tensor, np.ndarray]
ScoreType = Union[str, Callable[[Tensor, TargetType], Tensor]]
BaselineType = Union[str, int, float, Tensor]


def masks_for(
    regions: Any,
    xs: Tuple[Tensor, ...],
    was_tuple: bool,
    region_kwargs: Optional[Dict[str, Any]],
    name: str = "regions",
) -> Tuple[Optional[Tensor], ...]:
    """One bool mask ``(N, *spatial)`` (or None) per input, on the input's device."""
    if was_tuple:
        if not isinstance(regions, (tuple, list)) or len(regions) != len(xs):
            raise ValueError(
                f"{name}: tuple inputs need a tuple with one entry per input ({len(xs)})"
            )
        entries = list(regions)
    else:
        if isinstance(regions, (tuple, list)) and len(regions) == 1:
            regions = regions[0]  # Captum returns one-element tuples for single inputs
        entries = [regions]
    if all(e is None for e in entries):
        raise ValueError(f"{name}: no regions given (every entry is None)")
    return tuple(
        None if e is None else _mask(e, x, region_kwargs, f"{name}[{i}]" if was_tuple else name)
        for i, (e, x) in enumerate(zip(entries, xs))
    )


def _spatial(x: Tensor) -> Tuple[int, ...]:
    """The spatial shape of an input: the last three axes of a volume, else the last two."""
    return tuple(x.shape[-3:]) if x.dim() == 5 else tuple(x.shape[-2:])


def _mask(
    entry: RegionsLike, x: Tensor, region_kwargs: Optional[Dict[str, Any]], name: str
) -> Tensor:
    if isinstance(entry, np.ndarray):
        entry = torch.from_numpy(entry)
    spatial = _spatial(x)
    k = len(spatial)
    if isinstance(entry, (Regions, VolumeRegions)):
        mask = entry.mask
    elif isinstance(entry, Tensor) and entry.dtype == torch.bool:
        mask = entry[:, 0] if entry.dim() == k + 2 and entry.shape[1] == 1 else entry
        if mask.dim() != k + 1:
            axes = "D, H, W" if k == 3 else "H, W"
            raise ValueError(
                f"{name}: a bool mask must be (N, {axes}) or (N, 1, {axes}), got "
                f"{tuple(entry.shape)}"
            )
    elif isinstance(entry, Tensor):
        if entry.dim() >= 3 and tuple(entry.shape[-k:]) != spatial:
            raise ValueError(
                f"{name}: attribution maps of shape {tuple(entry.shape)} do not match inputs of "
                f"shape {tuple(x.shape)}"
            )
        mask = attribution_regions(entry, **(region_kwargs or {})).mask
    else:
        raise TypeError(
            f"{name} must be Regions, a bool mask or attribution maps, got {type(entry).__name__}"
        )
    if mask.shape[0] != x.shape[0] or tuple(mask.shape[1:]) != spatial:
        raise ValueError(
            f"{name}: regions of shape {tuple(mask.shape)} do not match inputs of shape "
            f"{tuple(x.shape)} (need (N, *spatial) = {(x.shape[0], *spatial)})"
        )
    return mask.to(x.device)


def occluded_fraction(masks: Tuple[Optional[Tensor], ...], xs: Tuple[Tensor, ...]) -> Tensor:
    occluded = sum(m.flatten(1).sum(1).double() for m in masks if m is not None)
    pixels = sum(int(np.prod(_spatial(x))) for x in xs)
    return (occluded / pixels).cpu()


def baselines_for(baseline: Any, xs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    if isinstance(baseline, tuple):
        if len(baseline) != len(xs):
            raise ValueError(f"baseline tuple has {len(baseline)} entries for {len(xs)} inputs")
        return tuple(_baseline(b, x, i, len(xs)) for i, (b, x) in enumerate(zip(baseline, xs)))
    return tuple(_baseline(baseline, x, i, len(xs)) for i, x in enumerate(xs))


def _baseline(b: BaselineType, x: Tensor, index: int, n_inputs: int) -> Tensor:
    """A tensor broadcastable to ``x`` (per-example when its leading dim is N); checks ``x``.

    The per-example means double as the finiteness check of the inputs: NaN or Inf shows in
    them, so the inputs are read once more only to name the problem.
    """
    if x.dim() < 3:
        raise ValueError(
            f"inputs must be images (N, H, W) or (N, C, H, W) or volumes (N, C, D, H, W), got "
            f"shape {tuple(x.shape)}"
        )
    x = x.detach()
    axes = tuple(range(-len(_spatial(x)), 0))
    means = x.mean(dim=axes, keepdim=True) if x.is_floating_point() else None
    if means is not None and not torch.isfinite(means).all():
        check_finite((x,), "inputs" if n_inputs == 1 else f"inputs[{index}]")
    if isinstance(b, str):
        if b != "mean":
            raise ValueError(f'baseline must be "mean", a number or a tensor, got {b!r}')
        return means if means is not None else x.double().mean(dim=axes, keepdim=True)
    if isinstance(b, bool) or not isinstance(b, (int, float, Tensor)):
        raise TypeError(f'baseline must be "mean", a number or a tensor, got {type(b).__name__}')
    t = torch.as_tensor(b, dtype=x.dtype, device=x.device).detach()
    try:
        shape = torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"baseline of shape {tuple(t.shape)} does not broadcast to inputs {tuple(x.shape)}"
        )
    if not torch.isfinite(t).all():
        raise ValueError("baseline contains NaN or Inf values")
    return t


def _per_example(t: Tensor, x: Tensor) -> bool:
    return t.dim() == x.dim() and t.shape[0] == x.shape[0] and x.shape[0] > 1


def _take_target(target: TargetType, e: Tensor, n: int) -> TargetType:
    """The targets of rows ``e`` (example indices) of an expanded batch."""
    if isinstance(target, Tensor) and target.numel() > 1:
        if target.numel() != n:
            raise ValueError(
                f"target tensor has shape {tuple(target.shape)}; expected a single value or one "
                f"per example ({n})"
            )
        return target.reshape(-1)[e.to(target.device)]
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"target list has {len(target)} entries for {n} examples")
        return [target[i] for i in e.tolist()]
    return target


def _score(out: Tensor, target: TargetType, score: ScoreType) -> Tensor:
    n = out.shape[0]
    if callable(score):
        s = score(out, target)
        if not isinstance(s, Tensor) or s.shape != (n,):
            raise ValueError(f"score callable must return a tensor of shape ({n},)")
        return s
    if score == "margin":
        return decision_margin(out, target)
    if score == "probability":
        if out[0].numel() == 1:
            return torch.sigmoid(out.reshape(n))
        if out.dim() != 2:
            raise ValueError(f'score="probability" needs (N, K) outputs, got {tuple(out.shape)}')
        return select_target(torch.softmax(out, dim=1), target)
    raise ValueError(f'score must be "margin", "probability" or a callable, got {score!r}')


def scores_with_occlusions(
    forward_func: Callable[..., Tensor],
    xs: Tuple[Tensor, ...],
    mask_sets: List[Tuple[Optional[Tensor], ...]],
    baselines: Tuple[Tensor, ...],
    target: TargetType,
    score: ScoreType,
    additional_forward_args: Any,
    max_examples_per_batch: Optional[int],
) -> Tensor:
    """Scores ``(1 + M, N)``: row 0 the clean inputs, row m the m-th occlusion set.

    The rows of all copies are laid end to end (copy-major) and cut into forward passes of
    at most ``max_examples_per_batch`` rows; each pass is assembled from contiguous slices
    (views for the clean copy, one ``torch.where`` per occluded piece), so the only work
    besides the forward passes is writing the occluded pixels once.
    """
    if isinstance(score, str) and score not in ("margin", "probability"):
        raise ValueError(f'score must be "margin", "probability" or a callable, got {score!r}')
    if max_examples_per_batch is not None and (
        isinstance(max_examples_per_batch, bool)
        or not isinstance(max_examples_per_batch, int)
        or max_examples_per_batch < 1
    ):
        raise ValueError(
            f"max_examples_per_batch must be a positive int, got {max_examples_per_batch!r}"
        )
    n = xs[0].shape[0]
    rows = (1 + len(mask_sets)) * n
    step = rows if max_examples_per_batch is None else max_examples_per_batch
    extra = format_additional_args(additional_forward_args)
    out_scores = []
    with torch.no_grad():
        for a in range(0, rows, step):
            b = min(a + step, rows)
            # (copy, first example, end example) of each contiguous piece of this pass
            pieces = [(c, max(a, c * n) - c * n, min(b, (c + 1) * n) - c * n)
                      for c in range(a // n, (b - 1) // n + 1)]
            chunk = tuple(
                _assemble(x, base, [(None if c == 0 else mask_sets[c - 1][j], lo, hi)
                                    for c, lo, hi in pieces])
                for j, (x, base) in enumerate(zip(xs, baselines))
            )
            e = torch.cat([torch.arange(lo, hi) for _, lo, hi in pieces])
            args = tuple(
                torch.cat([t[lo:hi] for _, lo, hi in pieces])
                if isinstance(t, Tensor) and t.dim() and t.shape[0] == n else t
                for t in extra
            )
            out = run_forward(forward_func, chunk, args if extra else None)
            scores = _score(out, _take_target(target, e, n), score)
            out_scores.append(scores.detach().double().cpu())
    return torch.cat(out_scores).reshape(-1, n)


def _assemble(x: Tensor, base: Tensor, pieces: List[Tuple[Optional[Tensor], int, int]]) -> Tensor:
    """One forward batch: examples ``lo:hi`` of ``x`` per piece, masked pixels set to ``base``.

    A lone clean piece is a view; otherwise every piece is written once into one buffer.
    """
    if len(pieces) == 1 and pieces[0][0] is None:
        return x[pieces[0][1]:pieces[0][2]]
    size = sum(hi - lo for _, lo, hi in pieces)
    out = torch.empty((size, *x.shape[1:]), dtype=torch.promote_types(x.dtype, base.dtype),
                      device=x.device)
    at = 0
    for mask, lo, hi in pieces:
        dest = out[at:at + hi - lo]
        if mask is None:
            dest.copy_(x[lo:hi])
        else:
            spatial = _spatial(x)
            m = mask[lo:hi].reshape(hi - lo, *([1] * (x.dim() - 1 - len(spatial))), *spatial)
            torch.where(m, base[lo:hi] if _per_example(base, x) else base, x[lo:hi], out=dest)
        at += hi - lo
    return out
