"""Attribution regions of volumes: convex hulls of 26-connected voxel components (section 4).

A region is the convex hull of one connected component of the kept voxels, where voxel
``(z, y, x)`` is the unit cube ``[z, z + 1] x [y, y + 1] x [x, x + 1]``. Hull volumes are
exact (closed form or Qhull through ``scipy.spatial.ConvexHull``); the union of overlapping
hulls is measured on the voxel grid with ``s^3`` sub-voxel samples (``_voxel_overlap``).
"""
from __future__ import annotations

from functools import cached_property
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from scipy.spatial import ConvexHull
from skimage.measure import label as _label_components
from torch import Tensor

from captum_gradflow.metrics._volumes import (
    CORNERS,
    EPS,
    VoxelComponents,
    components,
    hull_of,
    hull_volumes,
)
from captum_gradflow.metrics._voxel_overlap import overlap_corrections

__all__ = ["RegionSet", "VolumeRegions", "regions_of_volumes"]


class RegionSet:
    """What :class:`Regions` and :class:`VolumeRegions` share: length, ``shape``, ``repr``
    and indexing by an int or a slice (``_select`` builds the subset; a mask already
    rasterised is shared with it)."""

    _size_name = "area"

    def __init__(self, area: Tensor, n_regions: Tensor, kept: Tensor, notes: List[str]) -> None:
        self.area = area
        self.n_regions = n_regions
        self.kept = kept
        self.notes = notes

    def __len__(self) -> int:
        return len(self.notes)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, shape={tuple(self.shape)}, "
            f"n_regions={self.n_regions.tolist()}, {self._size_name}={self.area.tolist()})"
        )

    @property
    def shape(self) -> torch.Size:
        """``(N, *spatial)`` of the maps the regions came from."""
        return self.kept.shape

    def _select(self, idx: slice, pick: np.ndarray) -> "RegionSet":
        raise TypeError(f"{type(self).__name__} does not support indexing")

    def __getitem__(self, idx: Union[int, slice]) -> "RegionSet":
        n = len(self)
        if isinstance(idx, int) and not isinstance(idx, bool):
            if not -n <= idx < n:
                raise IndexError(f"example index {idx} is out of range for {n} examples")
            idx = slice(idx % n, idx % n + 1)
        if not isinstance(idx, slice):
            raise TypeError(
                f"{type(self).__name__} can be indexed by an int or a slice, "
                f"got {type(idx).__name__}"
            )
        # a slice of a tensor is a view: no copy of the per-pixel tensors
        out = self._select(idx, np.arange(n)[idx])
        if "mask" in self.__dict__:  # already rasterised: share it
            out.__dict__["mask"] = self.__dict__["mask"][idx]
        return out


class VolumeRegions(RegionSet):
    """Regions of a batch of attribution volumes, as returned by ``attribution_regions``.

    Attributes:
        area: ``(N,)`` float64, volume (in voxels) of the union of each example's hulls:
            exact where hulls do not overlap, measured with ``supersampling^3`` points per
            voxel where they do. Also available as ``volume``.
        n_regions: ``(N,)`` int64, number of regions per example.
        kept: ``(N, D, H, W)`` bool, the kept voxels (after ``min_size``).
        notes: Per example, ``""`` or why its regions are degenerate.
        mask: ``(N, D, H, W)`` bool, voxels whose centre lies inside or on a hull (covers
            every kept voxel). Built on first access.
        hulls: Per example, the ``(V, 3)`` vertex arrays ``(z, y, x)`` of its hulls, in
            voxel-corner coordinates. Built on first access.
        volumes: Per example, the exact volume of each hull (``(n_regions,)`` float64).

    Indexing with an int or a slice gives the regions of those examples.
    """

    _size_name = "volume"

    def __init__(
        self, area: Tensor, n_regions: Tensor, kept: Tensor, notes: List[str],
        comps: VoxelComponents, hull_volume: np.ndarray, examples: np.ndarray,
        qhulls: Dict[int, ConvexHull],
    ) -> None:
        super().__init__(area, n_regions, kept, notes)
        self._comps = comps
        self._hull_volume = hull_volume
        self._examples = examples  # each example's index in the components' numbering
        self._qhulls = qhulls  # shared memo: component -> Qhull

    @property
    def volume(self) -> Tensor:
        """Same as ``area``: the volume of the union of each example's hulls."""
        return self.area

    def _members(self, i: int) -> np.ndarray:
        return np.flatnonzero(self._comps.example == self._examples[i])

    @cached_property
    def mask(self) -> Tensor:
        n_all = int(self._comps.example.max()) + 1 if len(self._comps) else 0
        n_all = max(n_all, int(self._examples.max()) + 1 if len(self._examples) else 0)
        d, h, w = self.kept.shape[1:]
        mask = rasterise(self._comps, n_all, d, (h, w), self._qhulls, examples=self._examples)
        return torch.from_numpy(mask)

    @cached_property
    def hulls(self) -> List[List[np.ndarray]]:
        return [
            [hull_vertices(self._comps, int(k), self._qhulls) for k in self._members(i)]
            for i in range(len(self))
        ]

    @cached_property
    def volumes(self) -> List[np.ndarray]:
        return [self._hull_volume[self._members(i)] for i in range(len(self))]

    def qhull(self, example: int, region: int) -> ConvexHull:
        """The Qhull object of one region (coordinates relative to its bounding box)."""
        return hull_of(self._comps, int(self._members(example)[region]), self._qhulls)

    def _select(self, idx: slice, pick: np.ndarray) -> "VolumeRegions":
        return VolumeRegions(
            self.area[idx], self.n_regions[idx], self.kept[idx], [self.notes[i] for i in pick],
            self._comps, self._hull_volume, self._examples[pick], self._qhulls,
        )


def label_volumes(
    kept: np.ndarray, connectivity: int, min_size: int
) -> Tuple[np.ndarray, int]:
    """Label all volumes in one scikit-image call, stacked along depth with an empty slice
    after each (so no component crosses examples); drop components under ``min_size``."""
    n, d, h, w = kept.shape
    stacked = np.zeros((n, d + 1, h, w), dtype=bool)
    stacked[:, :d] = kept
    return label_components(stacked.reshape(n * (d + 1), h, w), connectivity, min_size)


def label_components(
    image: np.ndarray, connectivity: int, min_size: int
) -> Tuple[np.ndarray, int]:
    """Label the components of a bool image (scikit-image) and drop those under ``min_size``
    pixels (voxels); the labels left are consecutive from 1."""
    labels, n_labels = _label_components(image, connectivity=connectivity, return_num=True)
    if min_size > 1 and n_labels:
        sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)
        keep = sizes >= min_size
        keep[0] = False
        labels = (np.cumsum(keep) * keep)[labels]  # dropped -> 0, kept -> consecutive labels
        n_labels = int(keep.sum())
    return labels, int(n_labels)


def regions_of_volumes(
    kept: np.ndarray, notes: List[str], connectivity: Optional[int], min_size: int,
    supersampling: int = 4,
) -> VolumeRegions:
    """Regions of the kept voxels ``(N, D, H, W)`` (arguments already checked)."""
    n, d, h, w = kept.shape
    labels, n_labels = label_volumes(kept, connectivity or 3, min_size)
    comps = components(labels, n_labels, d)
    if min_size > 1:
        kept = (labels.reshape(n, d + 1, h, w) > 0)[:, :d]
    qhulls: Dict[int, ConvexHull] = {}
    volume = hull_volumes(comps, qhulls)
    total = np.bincount(comps.example, weights=volume, minlength=n).astype(np.float64)
    total += overlap_corrections(comps, volume, n, d, (h, w), supersampling, qhulls)
    return VolumeRegions(
        area=torch.from_numpy(total),
        n_regions=torch.from_numpy(np.bincount(comps.example, minlength=n).astype(np.int64)),
        kept=torch.from_numpy(np.ascontiguousarray(kept)),
        notes=notes,
        comps=comps,
        hull_volume=volume,
        examples=np.arange(n, dtype=np.int64),
        qhulls=qhulls,
    )


def rasterise(
    c: VoxelComponents, n_examples: int, depth: int, shape: Tuple[int, int], hulls: dict,
    examples: Optional[np.ndarray] = None,
) -> np.ndarray:
    """``(n, D, H, W)`` bool: voxels whose centre lies inside or on a hull.

    Boxes fill their box; every other hull tests the voxel centres of its bounding box
    against its facet planes, all centres of a hull in one matrix product.
    """
    h, w = shape
    pick = np.arange(n_examples) if examples is None else np.asarray(examples)
    where = np.full(max(n_examples, 1), -1, dtype=np.int64)
    where[pick] = np.arange(len(pick))
    mask = np.zeros((len(pick), depth, h, w), dtype=bool)
    size = c.hi - c.lo + 1
    for k in np.flatnonzero(where[c.example] >= 0):
        e, l, u = where[c.example[k]], c.lo[k], c.hi[k] + 1
        view = mask[e, l[0]:u[0], l[1]:u[1], l[2]:u[2]]
        if c.is_box[k]:
            view[...] = True
            continue
        eq = hull_of(c, int(k), hulls).equations
        grid = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in size[k]], indexing="ij"), -1)
        view |= np.all(grid @ eq[:, :3].T + eq[:, 3] <= EPS, axis=-1)
    return mask


def hull_vertices(c: VoxelComponents, k: int, hulls: dict) -> np.ndarray:
    """``(V, 3)`` float vertices ``(z, y, x)`` of component ``k``'s hull, in voxel-corner units."""
    if c.is_box[k]:
        return (CORNERS * (c.hi[k] - c.lo[k] + 1) + c.lo[k]).astype(np.float64)
    hull = hull_of(c, k, hulls)
    return hull.points[hull.vertices] + c.lo[k]
