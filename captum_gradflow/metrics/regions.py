"""Attribution regions: convex hulls of the connected components of a map's top pixels
(docs/definitions.md, section 4); volumes are in ``volume_regions``.

A region is the convex hull of one connected component of the kept pixels, where pixel
``(r, c)`` is the unit square ``[c, c + 1] x [r, r + 1]`` (x = column, y = row). A single pixel
is therefore a unit square and a one-pixel-wide line a rectangle of its true area, never a
degenerate polygon of area 0.

Everything is batched over examples: the kept pixels of all maps are labelled in one
scikit-image call (maps stacked with an empty row between them and an empty column on each
side), and the hulls of all components are computed together in exact integer arithmetic
(``_hulls``; their overlaps and rasterisation in ``_trapezoids``). Shapely builds the
polygons handed to the user, on first access; the areas do not need it.
"""
from __future__ import annotations

import math
from functools import cached_property
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import shapely
import torch
from shapely.geometry.base import BaseGeometry
from torch import Tensor

from captum_gradflow.maps import (  # noqa: F401  (reduce_channels: re-exported)
    Reduce,
    check_q,
    check_reduce,
    reduce_channels,
    reduce_channels_numpy,
    top_k_count,
    top_k_numpy,
)
from captum_gradflow.metrics._hulls import ChunkHulls, HullGeometry, component_hulls
from captum_gradflow.metrics._trapezoids import (
    Trapezoids,
    overlapping_pairs,
    rasterise,
    union_correction,
)
from captum_gradflow.metrics.volume_regions import (
    RegionSet,
    VolumeRegions,
    label_components,
    regions_of_volumes,
)

__all__ = ["Regions", "VolumeRegions", "attribution_regions", "reduce_channels"]

CHUNK_PIXELS = 2 ** 18  # pixels per pass of the 2-D hull computation (at least one map)

MapsLike = Union[Tensor, np.ndarray, Sequence[Tensor]]
AnyRegions = Union["Regions", VolumeRegions]


class Regions(RegionSet):
    """Regions of a batch of attribution maps, as returned by :func:`attribution_regions`.

    Attributes:
        area: ``(N,)`` float64, exact area (in pixels) of the union of each example's hulls.
        n_regions: ``(N,)`` int64, number of regions (components kept) per example.
        kept: ``(N, H, W)`` bool, the kept pixels (top-q or above threshold, after
            ``min_size``).
        notes: Per example, ``""`` or why its regions are degenerate (an all-zero map, a
            constant map whose pixels all tie).
        mask: ``(N, H, W)`` bool, the rasterised union of hulls: a pixel belongs to it when
            its centre lies inside or on a hull, so it covers every kept pixel. Built on
            first access.
        polygons: Per example, the list of hull polygons (shapely), one per region, in
            pixel-corner coordinates (x = column, y = row). Built on first access.
        unions: Per example, the union of its hulls (shapely; an empty geometry where there
            is none). Built on first access.

    Indexing with an int or a slice gives the regions of those examples.
    """

    def __init__(
        self,
        area: Tensor,
        n_regions: Tensor,
        kept: Tensor,
        notes: List[str],
        geometry: HullGeometry,
        first_hull: np.ndarray,
        stacked_index: np.ndarray,
    ) -> None:
        super().__init__(area, n_regions, kept, notes)
        self._geometry = geometry  # hulls and trapezoids of the whole batch, merged on use
        self._first_hull = first_hull  # index of each example's first hull
        self._stacked_index = stacked_index  # each example's position in the stacked image

    @cached_property
    def mask(self) -> Tensor:
        _, h, w = self.kept.shape
        return torch.from_numpy(rasterise(self._geometry.trapezoids, self._stacked_index, h, w))

    @cached_property
    def polygons(self) -> List[List[BaseGeometry]]:
        counts = self.n_regions.numpy()
        bounds = np.r_[0, np.cumsum(counts)]
        idx = np.repeat(self._first_hull - bounds[:-1], counts) + np.arange(int(bounds[-1]))
        row0 = self._stacked_index * (self.kept.shape[1] + 1)
        polys = self._geometry.hulls.polygons(idx, np.repeat(row0, counts))
        return [polys[bounds[i]:bounds[i + 1]].tolist() for i in range(len(self))]

    @cached_property
    def unions(self) -> List[BaseGeometry]:
        return [
            p[0] if len(p) == 1 else shapely.union_all(np.asarray(p, dtype=object))
            for p in self.polygons
        ]

    def _select(self, idx: slice, pick: np.ndarray) -> "Regions":
        return Regions(
            self.area[idx], self.n_regions[idx], self.kept[idx],
            [self.notes[i] for i in pick], self._geometry,
            self._first_hull[pick], self._stacked_index[pick],
        )


def attribution_regions(
    attr: MapsLike,
    q: float = 0.2,
    threshold: Optional[float] = None,
    connectivity: Optional[int] = None,
    min_size: int = 1,
    reduce: Reduce = "sum_abs",
    supersampling: int = 4,
) -> AnyRegions:
    r"""Convex-hull regions of the most important pixels (voxels) of each attribution map.

    Per example: reduce channels, keep the top ``q`` fraction of pixels (or, with
    ``threshold``, those above it), label the connected components of the kept pixels
    (scikit-image), drop components of fewer than ``min_size`` pixels, and take the convex
    hull of each component's pixel squares (exact integer geometry, batched over all
    components; shapely polygons on request) or, for volumes, voxel cubes (exact volumes;
    Qhull through ``scipy.spatial.ConvexHull``).

    Channel reduction and selection are those of :mod:`captum_gradflow.maps`, the code GAD's
    fusion uses. A pixel is kept only where the reduced value is strictly positive, so an
    exactly-zero pixel is never kept (an already sparse map, such as a GAD map, keeps only
    its support) and with ``reduce="sum"`` only positive evidence counts. Ties at the top-q
    cut are all kept, so a map with many equal values may keep more than ``q``; a constant
    map keeps every pixel (and says so in ``notes``), an all-zero map keeps none (empty
    regions, area 0, noted).

    In 3-D the hull volumes are exact; hulls whose bounding boxes do not overlap add exactly,
    and where they do, the doubly counted volume is measured with ``supersampling^3`` points
    per contested voxel (the centres of its sub-voxels; a point strictly inside ``m`` hulls
    counts ``m - 1`` times). Hulls that only touch count nothing twice.

    Args:
        attr: Maps of shape ``(N, C, H, W)`` or ``(N, H, W)``, or volumes
            ``(N, C, D, H, W)`` (a tensor, a numpy array, or a one-element tuple as Captum
            returns for single inputs).
        q: Fraction of pixels kept per example, in ``(0, 1]``; ignored when ``threshold`` is
            given.
        threshold: Keep pixels whose reduced value is above this non-negative number.
        connectivity: Neighbourhood of the components: 1 (faces only) up to the number of
            spatial axes; ``None`` (default) is full connectivity, 8 in 2-D and 26 in 3-D.
        min_size: Components with fewer pixels are dropped (default 1: none dropped).
        reduce: Channel reduction, see :func:`captum_gradflow.maps.reduce_channels`.
        supersampling: Sub-voxels per voxel edge when overlapping 3-D hulls are measured.

    Returns:
        :class:`Regions` for images: per example the exact area of the union of hulls, the
        number of regions and the kept pixels; the rasterised union (``mask``, ``(N, H, W)``
        bool), the hull polygons and their union (shapely) are built on first access.
        :class:`VolumeRegions` for volumes, with the same attributes (``area`` is the volume).

    Examples::

        >>> import torch
        >>> from captum_gradflow.metrics import attribution_regions
        >>> attr = torch.zeros(1, 1, 8, 8)
        >>> attr[0, 0, 1, 1] = attr[0, 0, 2, 1] = attr[0, 0, 2, 2] = 1.0  # an L of 3 pixels
        >>> regions = attribution_regions(attr, threshold=0.0)
        >>> regions.n_regions.tolist(), regions.area.tolist()  # hull of the L: 3.5
        ([1], [3.5])
        >>> vol = torch.zeros(1, 1, 4, 4, 4)
        >>> vol[0, 0, 0, 0, 0] = vol[0, 0, 1, 1, 1] = 1.0  # two voxels touching at a corner
        >>> attribution_regions(vol, threshold=0.0).area.tolist()  # a cube swept along (1,1,1)
        [4.0]
    """
    maps = reduced_maps(attr, reduce)
    check_region_args(q, threshold, connectivity, min_size, maps.ndim - 1, supersampling)
    return regions_of_maps(maps, q, threshold, connectivity, min_size, supersampling)


def check_region_args(
    q: float, threshold: Optional[float], connectivity: Optional[int], min_size: int,
    spatial: int = 2, supersampling: int = 4,
) -> None:
    """Raise a clear error for a bad region argument, before any work is done."""
    if threshold is None:
        check_q(q, "q must be the fraction of locations kept per map")
    elif (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold) or threshold < 0
    ):
        raise ValueError(f"threshold must be a finite non-negative number, got {threshold!r}")
    if connectivity is not None and (
        isinstance(connectivity, bool) or connectivity not in range(1, spatial + 1)
    ):
        raise ValueError(
            f"connectivity must be None or 1..{spatial} for {spatial}-D maps, got {connectivity!r}"
        )
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be an int >= 1, got {min_size!r}")
    if isinstance(supersampling, bool) or not isinstance(supersampling, int) or supersampling < 1:
        raise ValueError(f"supersampling must be an int >= 1, got {supersampling!r}")


def as_map_tensor(attr: MapsLike, name: str = "attr") -> Tensor:
    """A map tensor ``(N, C, H, W)`` or ``(N, C, D, H, W)`` from a tensor, array or 1-tuple.

    ``(N, H, W)`` maps (no channel axis) get one.
    """
    if isinstance(attr, (tuple, list)) and all(isinstance(t, (Tensor, np.ndarray)) for t in attr):
        if len(attr) != 1:
            raise ValueError(
                f"{name}: expected one map tensor, got a tuple of {len(attr)} "
                "(give the maps of one input at a time)"
            )
        attr = attr[0]
    if isinstance(attr, np.ndarray):
        attr = torch.from_numpy(attr)
    if not isinstance(attr, Tensor):
        raise TypeError(
            f"{name} must be a Tensor or numpy array of maps, got {type(attr).__name__}"
        )
    if attr.dim() not in (3, 4, 5):
        raise ValueError(
            f"{name}: attribution maps must have shape (N, H, W), (N, C, H, W) or volumes "
            f"(N, C, D, H, W), got {tuple(attr.shape)}"
        )
    if attr.dim() == 3:
        attr = attr.unsqueeze(1)
    if any(s == 0 for s in attr.shape[2:]):
        raise ValueError(f"{name}: attribution maps are empty, shape {tuple(attr.shape)}")
    return attr.detach()


def reduced_maps(attr: MapsLike, reduce: Reduce, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Channel-reduced ``(N, *spatial)`` numpy maps, checked finite (into ``out`` if given)."""
    check_reduce(reduce)
    maps = reduce_channels_numpy(as_map_tensor(attr), reduce, out=out)
    if not np.isfinite(maps.sum(dtype=np.float64)):  # one cheap pass; details only if needed
        bad = ~np.isfinite(maps)
        if bad.any():
            examples = np.flatnonzero(bad.reshape(len(maps), -1).any(1)).tolist()
            raise ValueError(
                f"attribution maps contain {int(bad.sum())} NaN or Inf values (examples "
                f"{examples}); regions are undefined there"
            )
    return maps


def regions_of_maps(
    maps: np.ndarray, q: float, threshold: Optional[float], connectivity: Optional[int],
    min_size: int, supersampling: int = 4,
) -> AnyRegions:
    """:func:`attribution_regions` of reduced ``(N, H, W)`` or ``(N, D, H, W)`` maps."""
    if maps.ndim == 4:
        kept, notes = keep_pixels(maps, q, threshold)
        return regions_of_volumes(kept, notes, connectivity, min_size, supersampling)
    n, h, w = maps.shape
    # A few maps per pass: their temporaries are reused from pass to pass instead of being
    # page-faulted afresh, which on noisy maps costs more than the arithmetic.
    chunk = max(1, CHUNK_PIXELS // (h * w))
    notes: List[str] = []
    parts = []
    for i in range(0, n, chunk):
        kept, chunk_notes = keep_pixels(maps[i:i + chunk], q, threshold)
        notes += chunk_notes
        parts.append(_regions_of_chunk(kept, connectivity or 2, min_size))
    geometry = HullGeometry(
        [p[1] for p in parts], [p[2] for p in parts], [i * (h + 1) for i in range(0, n, chunk)]
    )
    counts = np.concatenate([p[4] for p in parts])
    return Regions(
        area=torch.from_numpy(np.concatenate([p[3] for p in parts])),
        n_regions=torch.from_numpy(counts),
        kept=torch.from_numpy(np.ascontiguousarray(np.concatenate([p[0] for p in parts]))),
        notes=notes,
        geometry=geometry,
        first_hull=np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64),
        stacked_index=np.arange(n, dtype=np.int64),
    )


def _regions_of_chunk(
    kept: np.ndarray, connectivity: int, min_size: int
) -> Tuple[np.ndarray, ChunkHulls, Trapezoids, np.ndarray, np.ndarray]:
    """Kept pixels (after ``min_size``), hulls, trapezoids, union areas and region counts
    of a few ``(n, H, W)`` maps, in the stacked coordinates of these maps."""
    n, h, w = kept.shape
    labels, inside, n_labels = _label(kept, connectivity, min_size)
    if min_size > 1:
        kept = inside.reshape(n, h + 1, w + 2)[:, :h, 1:-1]
    hulls, trapezoids, by_row = component_hulls(labels, inside, n_labels)
    # Labels follow the raster order of the stacked maps: each example owns a contiguous range.
    example_of_hull = hulls.top // (h + 1)
    counts = np.bincount(example_of_hull, minlength=n).astype(np.int64)
    area = np.bincount(example_of_hull, weights=hulls.area2, minlength=n) / 2.0
    # Where hulls overlap, subtract the doubly counted area (exact, per row of pixels).
    rows, correction = union_correction(trapezoids, *overlapping_pairs(trapezoids, by_row))
    area += np.bincount(rows // (h + 1), weights=correction, minlength=n)
    return kept, hulls, trapezoids, area, counts


def keep_pixels(
    maps: np.ndarray, q: float, threshold: Optional[float]
) -> Tuple[np.ndarray, List[str]]:
    """The kept pixels of reduced, finite maps (top-q of :mod:`captum_gradflow.maps`) and
    notes."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    p = flat.shape[1]
    k = p if threshold is not None else top_k_count(q, p)
    # top_q_mask's selection on finite CPU maps (checked by reduced_maps), called without
    # its torch reductions: with the default thread pool on a busy CPU those took several
    # milliseconds per map, more than everything else here
    kept = flat > threshold if threshold is not None else top_k_numpy(flat, k)
    n_kept = np.count_nonzero(kept, axis=1)
    notes = []
    for i in range(n):
        if n_kept[i] == 0:
            notes.append(
                f"no pixel above threshold {threshold}: no region" if (flat[i] > 0).any()
                else "map has no positive value (all-zero map): no region"
            )
        elif (n_kept[i] > k or n_kept[i] == p) and (flat[i] == flat[i, 0]).all():
            notes.append("constant map: every pixel ties, all kept")
        else:
            notes.append("")
    return kept.reshape(maps.shape), notes


def _label(
    kept: np.ndarray, connectivity: int, min_size: int
) -> Tuple[np.ndarray, np.ndarray, int]:
    """Label all maps in one call, stacked with an empty row below each and empty side columns.

    Returns the labels, the bool image of labelled pixels (same layout) and their count.
    """
    n, h, w = kept.shape
    inside = np.zeros((n, h + 1, w + 2), dtype=bool)
    inside[:, :h, 1:-1] = kept
    inside = inside.reshape(n * (h + 1), w + 2)
    labels, n_labels = label_components(inside, connectivity, min_size)
    if min_size > 1:
        inside = labels > 0
    return labels, inside, n_labels
