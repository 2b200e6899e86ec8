"""Fusion of the original and support-model maps (docs/definitions.md, section 3.3, Algorithm 2).

Each map is reduced over channels, normalised to [0, 1] per example and binarised to its top
``q`` fraction (``B_t``), with the map toolkit (:mod:`captum_gradflow.maps`) that the region
metrics use too. The consistency mask ``C = [sum_t B_t >= agreement * (T + 1)]``
keeps what the maps agree on, and the GAD attribution is ``A_0 * C``: the base map, same
shape and sign, with the inconsistent part set to zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch import Tensor

from captum_gradflow.maps import Reduce, TopQ, check_q, check_reduce, reduce_channels, top_q_mask

__all__ = ["FusionResult", "binarise", "check_fusion_args", "consistency_mask", "fuse_maps"]


def check_fusion_args(q: float, agreement: float, reduce: Reduce) -> None:
    """Raise a clear error for a ``q``, ``agreement`` or ``reduce`` that fusion cannot use."""
    check_q(q, "q is the fraction of pixels kept per map")
    if isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not 0 < agreement <= 1:
        raise ValueError(f"agreement must be in (0, 1], got {agreement!r}")
    check_reduce(reduce)


def binarise(attr: Tensor, q: float = 0.2, reduce: Reduce = "sum_abs") -> TopQ:
    """``B_t`` of one map: reduce channels, normalise to [0, 1], keep the top ``q`` fraction.

    The normalisation is a shift by the minimum followed by a positive scale, and the scale
    does not change which locations are selected, so only the shift is done: the minimum
    becomes exactly 0 and is therefore never kept; a constant or non-finite map keeps nothing.
    The mask keeps a channel axis of size one, ``(N, 1, *spatial)``, to broadcast over ``A_0``.
    """
    r = reduce_channels(attr.detach(), reduce, keepdim=True)
    lo = r.reshape(r.shape[0], -1).amin(1).reshape(-1, *([1] * (r.dim() - 1)))
    return top_q_mask(r - lo, q)


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
        b, d = binarise(m, q, reduce)
        masks.append(b)
        degenerate.append(d)
    c = consistency_mask(masks, agreement)
    a0 = maps[0]
    attribution = torch.where(c, a0, 0.0)
    return FusionResult(attribution, masks, c, torch.stack(degenerate))
