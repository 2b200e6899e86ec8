"""Attribution regions: convex hulls of the connected components of a map's top pixels (DESIGN 4).

A region is the convex hull of one connected component of the kept pixels, where pixel
``(r, c)`` is the unit square ``[c, c + 1] x [r, r + 1]`` (x = column, y = row). A single pixel
is therefore a unit square and a one-pixel-wide line a rectangle of its true area, never a
degenerate polygon of area 0.

Everything is batched over examples: the kept pixels of all maps are labelled in one
scikit-image call (maps stacked with an empty row between them) and the hulls of all
components are computed together in exact integer arithmetic (``_hulls``); shapely is used
for the polygons handed to the user and for the exact union of the few hulls that overlap.
"""
from __future__ import annotations

import math
from functools import cached_property
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import shapely
import torch
from shapely.geometry.base import BaseGeometry
from skimage.measure import label as _label_components
from torch import Tensor

from captum_gradflow.metrics._hulls import (
    Hulls,
    component_hulls,
    overlapping_pairs,
    rasterise,
    union_correction,
)

__all__ = ["Regions", "attribution_regions", "reduce_channels"]

Reduce = Union[str, Callable[[Tensor], Tensor]]
_REDUCTIONS = ("sum_abs", "sum", "max_abs", "none")


class Regions:
    """Regions of a batch of attribution maps, as returned by :func:`attribution_regions`.

    Attributes:
        area: ``(N,)`` float64, exact area (in pixels) of the union of each example's hulls.
        n_regions: ``(N,)`` int64, number of regions (components kept) per example.
        kept: ``(N, H, W)`` bool, the kept pixels (top-q or above threshold, after
            ``min_size``).
        mask: ``(N, H, W)`` bool, the rasterised union of hulls: a pixel belongs to it when
            its centre lies inside or on a hull. It covers every kept pixel.
        notes: Per example, ``""`` or why its regions are degenerate (an all-zero map, a
            constant map whose pixels all tie).
        polygons: Per example, the list of hull polygons (shapely), one per region, in
            pixel-corner coordinates (x = column, y = row). Built on first access.
        unions: Per example, the union of its hulls (shapely; empty where there is none).
            Built on first access.

    Indexing with an int or a slice gives the regions of those examples.
    """

    def __init__(
        self,
        area: Tensor,
        n_regions: Tensor,
        kept: Tensor,
        mask: Tensor,
        notes: List[str],
        hulls: Hulls,
        first_hull: np.ndarray,
        row0: np.ndarray,
    ) -> None:
        self.area = area
        self.n_regions = n_regions
        self.kept = kept
        self.mask = mask
        self.notes = notes
        self._hulls = hulls
        self._first_hull = first_hull  # index of each example's first hull
        self._row0 = row0  # each example's first row in the stacked label image

    def __len__(self) -> int:
        return len(self.notes)

    def __repr__(self) -> str:
        return (
            f"Regions(n={len(self)}, shape={tuple(self.shape)}, "
            f"n_regions={self.n_regions.tolist()}, area={self.area.tolist()})"
        )

    @property
    def shape(self) -> torch.Size:
        """``(N, H, W)`` of the maps the regions came from."""
        return self.mask.shape

    @cached_property
    def polygons(self) -> List[List[BaseGeometry]]:
        counts = self.n_regions.numpy()
        idx = np.repeat(self._first_hull - np.r_[0, np.cumsum(counts)[:-1]], counts)
        idx = idx + np.arange(int(counts.sum()))
        polys = self._hulls.polygons(idx, np.repeat(self._row0, counts))
        bounds = np.r_[0, np.cumsum(counts)]
        return [polys[bounds[i]:bounds[i + 1]].tolist() for i in range(len(self))]

    @cached_property
    def unions(self) -> List[BaseGeometry]:
        return [
            p[0] if len(p) == 1 else shapely.union_all(np.asarray(p, dtype=object))
            for p in self.polygons
        ]

    def __getitem__(self, idx: Union[int, slice]) -> "Regions":
        if isinstance(idx, int):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"example index {idx} is out of range for {n} examples")
            idx = slice(idx % n, idx % n + 1)
        if not isinstance(idx, slice):
            raise TypeError(f"Regions can be indexed by an int or a slice, got {type(idx).__name__}")
        return Regions(
            self.area[idx], self.n_regions[idx], self.kept[idx], self.mask[idx],
            self.notes[idx], self._hulls, self._first_hull[idx], self._row0[idx],
        )


def reduce_channels(attr: Tensor, reduce: Reduce = "sum_abs") -> Tensor:
    """Reduce an ``(N, C, H, W)`` (or ``(N, H, W)``) map to ``(N, H, W)``.

    Args:
        attr: Attribution maps.
        reduce: ``"sum_abs"`` (sum of absolute values over channels, the default),
            ``"sum"`` (signed sum), ``"max_abs"``, ``"none"`` (the map must have one
            channel), or a callable ``(N, C, H, W) -> (N, H, W)``.

    Returns:
        The reduced maps, ``(N, H, W)``.

    Examples::

        >>> import torch
        >>> from captum_gradflow.metrics import reduce_channels
        >>> reduce_channels(torch.tensor([[[[1.0]], [[-2.0]]]])).item()
        3.0
    """
    if attr.dim() == 3:
        attr = attr.unsqueeze(1)
    if attr.dim() != 4:
        raise ValueError(
            f"attribution maps must have shape (N, H, W) or (N, C, H, W), got {tuple(attr.shape)}"
        )
    if callable(reduce):
        out = reduce(attr)
        expected = (attr.shape[0], *attr.shape[2:])
        if not isinstance(out, Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"reduce callable must return a tensor of shape {expected}, got {got}")
        return out
    if reduce == "sum_abs":
        return attr.abs().sum(1)
    if reduce == "sum":
        return attr.sum(1)
    if reduce == "max_abs":
        return attr.abs().amax(1)
    if reduce == "none":
        if attr.shape[1] != 1:
            raise ValueError(f'reduce="none" needs one channel, got {attr.shape[1]}')
        return attr[:, 0]
    raise ValueError(f"reduce must be one of {_REDUCTIONS} or a callable, got {reduce!r}")


def attribution_regions(
    attr: Union[Tensor, np.ndarray],
    q: float = 0.2,
    threshold: Optional[float] = None,
    connectivity: int = 2,
    min_size: int = 1,
    reduce: Reduce = "sum_abs",
) -> Regions:
    r"""Convex-hull regions of the most important pixels of each attribution map.

    Per example: reduce channels, keep the top ``q`` fraction of pixels (or, with
    ``threshold``, those above it), label the connected components of the kept pixels
    (scikit-image), drop components of fewer than ``min_size`` pixels, and take the convex
    hull of each component's pixel squares (shapely).

    A pixel is kept only where the reduced value is strictly positive, so an exactly-zero
    pixel is never kept (an already sparse map, such as a GAD map, keeps only its support)
    and with ``reduce="sum"`` only positive evidence counts. Ties at the top-q cut are all
    kept, so a map with many equal values may keep more than ``q``; a constant map keeps
    every pixel (and says so in ``notes``), an all-zero map keeps none (empty regions, area
    0, noted).

    Args:
        attr: Maps of shape ``(N, C, H, W)`` or ``(N, H, W)`` (a tensor, a numpy array, or a
            one-element tuple as Captum returns for single inputs).
        q: Fraction of pixels kept per example, in ``(0, 1]``; ignored when ``threshold`` is
            given.
        threshold: Keep pixels whose reduced value is above this non-negative number.
        connectivity: 1 (4-neighbourhood) or 2 (8-neighbourhood, the default).
        min_size: Components with fewer pixels are dropped (default 1: none dropped).
        reduce: Channel reduction, see :func:`reduce_channels`.

    Returns:
        :class:`Regions`: per example the hull polygons, their union and its exact area, the
        number of regions, the kept pixels and the rasterised union as ``(N, H, W)`` bool
        tensors.

    Examples::

        >>> import torch
        >>> from captum_gradflow.metrics import attribution_regions
        >>> attr = torch.zeros(1, 1, 8, 8)
        >>> attr[0, 0, 1, 1] = attr[0, 0, 2, 1] = attr[0, 0, 2, 2] = 1.0  # an L of 3 pixels
        >>> regions = attribution_regions(attr, threshold=0.0)
        >>> regions.n_regions.tolist(), regions.area.tolist()  # hull of the L: 3.5
        ([1], [3.5])
    """
    maps = _validated_maps(attr, q, threshold, connectivity, min_size, reduce)
    n, h, w = maps.shape
    kept, notes = _keep_pixels(maps, q, threshold)
    labels, n_labels = _label(kept, connectivity, min_size)
    if min_size > 1:
        kept = labels.reshape(n, h + 1, w)[:, :h] > 0
    hulls, trapezoids = component_hulls(labels, n_labels)
    # Labels follow the raster order of the stacked maps: each example owns a contiguous range.
    example_of_hull = hulls.top // (h + 1)
    counts = np.bincount(example_of_hull, minlength=n).astype(np.int64)
    first = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    row0 = np.arange(n, dtype=np.int64) * (h + 1)
    area = np.bincount(example_of_hull, weights=hulls.area2, minlength=n) / 2.0
    # Where hulls overlap, subtract the doubly counted area (exact, per row of pixels).
    rows, correction = union_correction(trapezoids, *overlapping_pairs(trapezoids))
    area += np.bincount(rows // (h + 1), weights=correction, minlength=n)
    return Regions(
        area=torch.as_tensor(area, dtype=torch.float64),
        n_regions=torch.from_numpy(counts),
        kept=torch.from_numpy(kept),
        mask=torch.from_numpy(rasterise(trapezoids, n, h, w)),
        notes=notes,
        hulls=hulls,
        first_hull=first,
        row0=row0,
    )


def _validated_maps(
    attr: Union[Tensor, np.ndarray, Sequence[Tensor]],
    q: float,
    threshold: Optional[float],
    connectivity: int,
    min_size: int,
    reduce: Reduce,
) -> np.ndarray:
    """Check every argument before any work, and return the reduced ``(N, H, W)`` maps."""
    if isinstance(attr, (tuple, list)):
        if len(attr) != 1:
            raise ValueError(
                f"attribution_regions takes one map tensor; got a tuple of {len(attr)} "
                "(call it once per input)"
            )
        attr = attr[0]
    if isinstance(attr, np.ndarray):
        attr = torch.from_numpy(attr)
    if not isinstance(attr, Tensor):
        raise TypeError(f"attr must be a Tensor or numpy array, got {type(attr).__name__}")
    if not attr.is_floating_point():
        attr = attr.double()
    if threshold is None:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
            raise ValueError(f"q must be a fraction in (0, 1], got {q!r}")
    elif not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite non-negative number, got {threshold!r}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2 for 2-D maps, got {connectivity!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be an int >= 1, got {min_size!r}")
    if attr.dim() not in (3, 4):
        raise ValueError(
            f"attribution maps must have shape (N, H, W) or (N, C, H, W), got {tuple(attr.shape)}"
        )
    if attr.shape[-1] == 0 or attr.shape[-2] == 0:
        raise ValueError(f"attribution maps are empty, shape {tuple(attr.shape)}")
    attr = attr.detach()
    if isinstance(reduce, str) and reduce in _REDUCTIONS:
        # numpy for the built-in reductions: these small ops run single-threaded there, which
        # is faster than torch's thread pool on a busy CPU
        a = attr.to(device="cpu", dtype=attr.dtype if attr.dtype == torch.float64 else torch.float32)
        a = a.numpy()
        a = a[:, None] if a.ndim == 3 else a
        if reduce == "none" and a.shape[1] != 1:
            raise ValueError(f'reduce="none" needs one channel, got {a.shape[1]}')
        if a.shape[1] == 1:
            maps = np.abs(a[:, 0]) if reduce in ("sum_abs", "max_abs") else a[:, 0].copy()
        elif reduce == "sum_abs":
            maps = np.abs(a).sum(1)
        elif reduce == "max_abs":
            maps = np.abs(a).max(1)
        else:
            maps = a.sum(1)
    else:
        maps = reduce_channels(attr, reduce).to(device="cpu", dtype=torch.float64).numpy()
    finite = np.isfinite(maps)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(maps), -1).all(1)).tolist()
        raise ValueError(
            f"attribution maps contain {int((~finite).sum())} NaN or Inf values "
            f"(examples {bad}); regions are undefined there"
        )
    return maps


def _keep_pixels(
    maps: np.ndarray, q: float, threshold: Optional[float]
) -> "tuple[np.ndarray, List[str]]":
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)
    if threshold is not None:
        kept = flat > threshold
    else:
        # The k-th largest value by partial sort; ties with it are kept, so ranking is
        # deterministic and translation invariant.
        k = max(1, math.ceil(q * h * w - 1e-9))
        # Pixels that can never be kept get distinct negative values first: a sparse map's
        # many equal zeros would otherwise make the selection crawl.
        distinct = np.where(flat > 0, flat, -1.0 - np.arange(h * w, dtype=flat.dtype))
        cut = np.partition(distinct, h * w - k, axis=1)[:, h * w - k] if n else np.zeros(0)
        kept = (flat >= cut[:, None]) & (flat > 0)
    hi, lo = (flat.max(1), flat.min(1)) if n else (np.zeros(0), np.zeros(0))
    notes = []
    for i in range(n):
        if hi[i] <= 0:
            notes.append("map has no positive value (all-zero map): no region")
        elif not kept[i].any():
            notes.append(f"no pixel above threshold {threshold}: no region")
        elif hi[i] == lo[i]:
            notes.append("constant map: every pixel ties, all kept")
        else:
            notes.append("")
    return kept.reshape(n, h, w), notes


def _label(kept: np.ndarray, connectivity: int, min_size: int) -> "tuple[np.ndarray, int]":
    """Label all maps in one call: stacked vertically with an empty row between them."""
    n, h, w = kept.shape
    stacked = np.zeros((n, h + 1, w), dtype=bool)
    stacked[:, :h] = kept
    labels, n_labels = _label_components(
        stacked.reshape(n * (h + 1), w), connectivity=connectivity, return_num=True
    )
    if min_size > 1 and n_labels:
        sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)
        keep = sizes >= min_size
        keep[0] = False
        remap = np.cumsum(keep) * keep  # dropped -> 0, kept -> consecutive labels
        labels = remap[labels]
        n_labels = int(keep.sum())
    return labels, int(n_labels)
