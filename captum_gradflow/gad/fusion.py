"""Fusion of the original and support-model maps (DESIGN 3.3, Algorithm 2).

Each map is reduced over channels, normalised to [0, 1] per example and binarised to its top
``q`` fraction (``B_t``). The consistency mask ``C = [sum_t B_t >= agreement * (T + 1)]``
keeps what the maps agree on, and the GAD attribution is ``A_0 * C``: the base map, same
shape and sign, with the inconsistent part set to zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "FusionResult",
    "check_fusion_args",
    "reduce_channels",
    "normalize_per_example",
    "top_q_mask",
    "consistency_mask",
    "fuse_maps",
]

Reduce = Union[str, Callable[[Tensor], Tensor]]

# name -> function of a (N, C, ...) tensor giving (N, 1, ...)
REDUCTIONS = {
    "sum_abs": lambda a: a.abs().sum(dim=1, keepdim=True),
    "abs_sum": lambda a: a.sum(dim=1, keepdim=True).abs(),
    "sum": lambda a: a.sum(dim=1, keepdim=True),
    "max_abs": lambda a: a.abs().amax(dim=1, keepdim=True),
}


def check_fusion_args(q: float, agreement: float, reduce: Reduce) -> None:
    """Raise a clear error for a ``q``, ``agreement`` or ``reduce`` that fusion cannot use."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise ValueError(f"q is the fraction of pixels kept per map and must be in (0, 1], got {q!r}")
    if isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not 0 < agreement <= 1:
        raise ValueError(f"agreement must be in (0, 1], got {agreement!r}")
    if not callable(reduce) and reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {sorted(REDUCTIONS)} or a callable, got {reduce!r}")


def reduce_channels(attr: Tensor, reduce: Reduce = "sum_abs") -> Tensor:
    """One importance value per location: ``(N, C, *S) -> (N, 1, *S)``.

    A 2-D map ``(N, D)`` has no channel dimension: each entry is its own location (``sum_abs``
    is then ``abs``). A callable ``reduce`` receives the map and must return a tensor that
    broadcasts against it with ``N`` rows.
    """
    if attr.dim() < 2:
        raise ValueError(f"an attribution map needs a batch and at least one more dimension, got {tuple(attr.shape)}")
    if callable(reduce):
        r = reduce(attr)
        if not isinstance(r, Tensor) or r.dim() != attr.dim() or r.shape[0] != attr.shape[0]:
            raise ValueError(
                f"reduce returned {getattr(r, 'shape', type(r).__name__)}; expected a tensor of "
                f"{attr.dim()} dimensions with {attr.shape[0]} rows that broadcasts to {tuple(attr.shape)}"
            )
        torch.broadcast_shapes(r.shape, attr.shape)
        return r
    fn = REDUCTIONS[reduce]
    if attr.dim() == 2:
        return fn(attr.unsqueeze(1)).squeeze(1)
    return fn(attr)


def normalize_per_example(r: Tensor) -> Tuple[Tensor, Tensor]:
    """Min-max normalise each example to [0, 1].

    Returns ``(normalised, degenerate)``; ``degenerate`` marks examples whose map is constant
    or not finite (their normalisation is undefined: rows of NaN).
    """
    flat = r.reshape(r.shape[0], -1)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = hi - lo
    degenerate = ~torch.isfinite(flat).all(dim=1) | ~(span.reshape(-1) > 0)
    out = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(degenerate[:, None], torch.full_like(out, float("nan")), out)
    return out.reshape(r.shape), degenerate


def top_q_mask(r: Tensor, q: float = 0.2) -> Tuple[Tensor, Tensor]:
    """Binarise each example's map to its top ``q`` fraction of locations.

    Equivalent to thresholding the [0, 1]-normalised map (:func:`normalize_per_example`),
    which is a monotone rescaling, so the normalisation itself is skipped. Ties at the
    threshold are all kept; the minimum of a map is never kept. A degenerate map (constant or
    not finite) keeps nothing: it says nothing about which location matters.

    Returns ``(mask, degenerate)`` with ``mask`` bool, shape of ``r``.
    """
    flat = r.reshape(r.shape[0], -1)
    p = flat.shape[1]
    k = max(1, math.ceil(q * p - 1e-9))
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    # NaN and Inf propagate to the extremes, so this is cheaper than isfinite on every entry
    finite = (torch.isfinite(lo) & torch.isfinite(hi)).reshape(-1)
    if not bool(finite.all()):
        flat = torch.where(finite[:, None], flat, torch.zeros_like(flat))
        lo = torch.where(finite[:, None], lo, torch.zeros_like(lo))
        hi = torch.where(finite[:, None], hi, torch.zeros_like(hi))
    degenerate = ~finite | ~(hi > lo).reshape(-1)
    thr = _kth_largest(flat, k)
    mask = flat >= thr
    if bool((thr <= lo).any()):  # the threshold hit the minimum: drop the minimum
        mask &= flat > lo
    if bool(degenerate.any()):
        mask &= ~degenerate[:, None]
    return mask.reshape(r.shape), degenerate


def _kth_largest(flat: Tensor, k: int) -> Tensor:
    """``k``-th largest value of each row, ``(N, 1)``.

    On CPU, NumPy's introselect is about ten times faster than ``torch.kthvalue``, and this
    selection is most of fusion's cost.
    """
    p = flat.shape[1]
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        part = np.partition(flat.detach().numpy(), p - k, axis=1)[:, p - k]
        return torch.from_numpy(np.ascontiguousarray(part)).reshape(-1, 1)
    return torch.kthvalue(flat, p - k + 1, dim=1, keepdim=True).values


def consistency_mask(masks: Sequence[Tensor], agreement: float = 1.0) -> Tensor:
    """``C = [sum_t B_t >= agreement * M]`` for ``M`` masks (at least one must agree)."""
    need = max(1, math.ceil(agreement * len(masks) - 1e-9))
    if need == len(masks):  # the default: a plain AND, cheaper than counting votes
        out = masks[0]
        for m in masks[1:]:
            out = out & m
        return out
    votes = torch.stack([m.to(torch.int32) for m in masks]).sum(0)
    return votes >= need


@dataclass
class FusionResult:
    """Output of :func:`fuse_maps` for one input tensor.

    ``attribution`` is ``A_0 * C``; ``masks`` the binarised ``B_t`` (index 0: the original
    model); ``consistency`` is ``C``; ``degenerate`` is ``(M, N)`` bool, the maps whose mask is
    empty because the map was constant or not finite.
    """

    attribution: Tensor
    masks: List[Tensor]
    consistency: Tensor
    degenerate: Tensor


def fuse_maps(
    maps: Sequence[Tensor], q: float = 0.2, agreement: float = 1.0, reduce: Reduce = "sum_abs"
) -> FusionResult:
    """Algorithm 2 on one input tensor's maps ``[A_0, A_1, ..., A_T]`` (all the same shape).

    Examples::

        >>> import torch
        >>> from captum_gradflow.gad import fuse_maps
        >>> a0 = torch.tensor([[[[4.0, 3.0], [1.0, 0.0]]]])
        >>> a1 = torch.tensor([[[[0.0, 3.0], [1.0, 4.0]]]])
        >>> fuse_maps([a0, a1], q=0.5).attribution
        tensor([[[[0., 3.],
                  [0., 0.]]]])
    """
    check_fusion_args(q, agreement, reduce)
    if not maps:
        raise ValueError("fuse_maps needs at least one map")
    shape = maps[0].shape
    for i, m in enumerate(maps):
        if not isinstance(m, Tensor) or m.shape != shape:
            raise ValueError(
                f"map {i} has shape {tuple(getattr(m, 'shape', ()))}; every model's map must have the "
                f"shape of the original's {tuple(shape)}"
            )
    masks, degenerate = [], []
    for m in maps:
        b, d = top_q_mask(reduce_channels(m.detach(), reduce), q)
        masks.append(b)
        degenerate.append(d)
    c = consistency_mask(masks, agreement)
    a0 = maps[0]
    attribution = torch.where(c, a0, 0.0)
    return FusionResult(attribution, masks, c, torch.stack(degenerate))
