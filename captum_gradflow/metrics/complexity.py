"""Region complexity (RC): how much smaller an explanation's regions are than a reference's.

RC = area of the union of the convex-hull regions of ``attr`` / that of ``reference``
(docs/definitions.md, section 4); for volumes it is a volume ratio. Comparing a GAD map with
its base method's map, RC < 1 means GAD narrowed the explanation. Areas are exact polygon
areas, volumes exact hull volumes with overlaps measured on the voxel grid (see
:func:`attribution_regions`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from captum_gradflow.maps import REDUCTIONS
from captum_gradflow.metrics.regions import (
    AnyRegions,
    Reduce,
    Regions,
    VolumeRegions,
    as_map_tensor,
    check_region_args,
    reduced_maps,
    regions_of_maps,
)

__all__ = ["RegionComplexity", "region_complexity"]

MapsOrRegions = Union[Tensor, np.ndarray, Regions, VolumeRegions]
REGION_TYPES = (Regions, VolumeRegions)


@dataclass(frozen=True)
class RegionComplexity:
    """Result of :func:`region_complexity`, one entry per example.

    Attributes:
        rc: ``(N,)`` float64, ``area / reference_area``; NaN where the reference has no
            region (the reason is in ``reasons``).
        area: ``(N,)`` float64, area in pixels (volume in voxels) of the union of ``attr``'s
            regions.
        reference_area: ``(N,)`` float64, the same for ``reference``.
        n_regions: ``(N,)`` int64, number of regions of ``attr``.
        reference_n_regions: ``(N,)`` int64, number of regions of ``reference``.
        n_undefined: Number of NaN entries of ``rc``.
        reasons: Per example, ``""`` or why ``rc`` is NaN.
        regions: The :class:`Regions` of ``attr``.
        reference_regions: The :class:`Regions` of ``reference``.
    """

    rc: Tensor
    area: Tensor
    reference_area: Tensor
    n_regions: Tensor
    reference_n_regions: Tensor
    n_undefined: int
    reasons: List[str]
    regions: Regions
    reference_regions: Regions

    def mean(self) -> float:
        """Mean RC over the examples where it is defined (NaN if none is)."""
        defined = self.rc[~torch.isnan(self.rc)]
        return float(defined.mean()) if len(defined) else float("nan")


def region_complexity(
    attr: MapsOrRegions,
    reference: MapsOrRegions,
    q: float = 0.2,
    threshold: Optional[float] = None,
    connectivity: Optional[int] = None,
    min_size: int = 1,
    reduce: Reduce = "sum_abs",
    supersampling: int = 4,
) -> RegionComplexity:
    r"""Region complexity: area of ``attr``'s hull regions over that of ``reference``.

    Both maps go through :func:`attribution_regions` with the same arguments (in one batched
    call when both are maps of the same shape); either may also be given as
    :class:`Regions` already computed. An example whose reference keeps no pixel (an
    all-zero map) has RC NaN, with the reason; an empty ``attr`` against a non-empty
    reference has RC 0.

    Args:
        attr: Maps ``(N, C, H, W)`` or ``(N, H, W)`` (e.g. GAD attributions), or their
            :class:`Regions`.
        reference: Maps of the same shape (e.g. the base method's attributions), or their
            :class:`Regions`.
        q: Fraction of pixels kept per map, in ``(0, 1]``.
        threshold: Keep pixels above this value instead of the top ``q``.
        connectivity: 1 up to the number of spatial axes; ``None`` (default) is full
            connectivity (8 in 2-D, 26 in 3-D).
        min_size: Components with fewer pixels are dropped.
        reduce: Channel reduction (default ``"sum_abs"``).
        supersampling: Sub-voxels per voxel edge for overlapping 3-D hulls.

    Returns:
        :class:`RegionComplexity`, with ``rc`` of shape ``(N,)``.

    Examples::

        >>> import torch
        >>> from captum_gradflow.metrics import region_complexity
        >>> base = torch.zeros(1, 1, 16, 16)
        >>> base[0, 0, 2:10, 2:10] = 1.0
        >>> gad = base.clone()
        >>> gad[0, 0, 6:10] = 0.0  # keeps the top half of the square
        >>> region_complexity(gad, base, q=1.0).rc.tolist()
        [0.5]
    """
    regions, reference_regions = _both_regions(
        attr, reference, q=q, threshold=threshold, connectivity=connectivity,
        min_size=min_size, reduce=reduce, supersampling=supersampling,
    )
    if regions.shape != reference_regions.shape:
        raise ValueError(
            f"attr and reference maps differ in shape: {tuple(regions.shape)} vs "
            f"{tuple(reference_regions.shape)} (after channel reduction)"
        )
    ref_area = reference_regions.area
    empty = ref_area <= 0
    nan = torch.full_like(ref_area, float("nan"))
    rc = torch.where(empty, nan, regions.area / ref_area.clamp_min(1.0))
    reasons = [
        "reference has no region: " + (note or "no pixel kept") if e else ""
        for e, note in zip(empty.tolist(), reference_regions.notes)
    ]
    return RegionComplexity(
        rc=rc,
        area=regions.area,
        reference_area=ref_area,
        n_regions=regions.n_regions,
        reference_n_regions=reference_regions.n_regions,
        n_undefined=int(empty.sum()),
        reasons=reasons,
        regions=regions,
        reference_regions=reference_regions,
    )


def _both_regions(
    attr: MapsOrRegions, reference: MapsOrRegions, reduce: Reduce, supersampling: int, **kwargs
) -> "tuple[AnyRegions, AnyRegions]":
    """Regions of both; two sets of maps are reduced into one buffer and processed together."""
    if isinstance(attr, REGION_TYPES) or isinstance(reference, REGION_TYPES):
        out = []
        for m, name in ((attr, "attr"), (reference, "reference")):
            if not isinstance(m, REGION_TYPES):
                maps = reduced_maps(as_map_tensor(m, name), reduce)
                check_region_args(**kwargs, spatial=maps.ndim - 1, supersampling=supersampling)
                m = regions_of_maps(maps, **kwargs, supersampling=supersampling)
            out.append(m)
        return out[0], out[1]
    a, r = as_map_tensor(attr, "attr"), as_map_tensor(reference, "reference")
    if (a.shape[0], *a.shape[2:]) != (r.shape[0], *r.shape[2:]):
        raise ValueError(
            f"attr and reference maps differ in shape: {tuple(a.shape)} vs {tuple(r.shape)} "
            "(need the same N and spatial shape)"
        )
    check_region_args(**kwargs, spatial=a.dim() - 2, supersampling=supersampling)
    n, spatial = a.shape[0], tuple(a.shape[2:])
    builtin = isinstance(reduce, str) and reduce in REDUCTIONS
    wide = torch.float64 in (a.dtype, r.dtype) or not builtin
    buffer = np.empty((2 * n, *spatial), dtype=np.float64 if wide else np.float32)
    reduced_maps(a, reduce, out=buffer[:n])
    reduced_maps(r, reduce, out=buffer[n:])
    both = regions_of_maps(buffer, **kwargs, supersampling=supersampling)
    return both[:n], both[n:]
