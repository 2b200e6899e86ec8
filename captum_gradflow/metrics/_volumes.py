"""Convex hulls of labelled voxel components, their exact volumes and the volume of their union.

Geometry. Voxel ``(z, y, x)`` is the unit cube ``[z, z + 1] x [y, y + 1] x [x, x + 1]``; a
component's region is the convex hull of its cubes. That hull always has volume (it contains
a cube), so it is never degenerate, whatever the component's shape (one voxel, a line, a flat
sheet).

Speed. Only points that can be hull vertices go to Qhull: of the cube corners on each line
parallel to x, the two extremes (read off a grid of the components' row ends). Components
whose hull is known in closed form skip Qhull: a component that fills its bounding box is
that box; two to four voxels give a Minkowski sum with the unit cube, and a component one
voxel thick along an axis is the 2-D hull of its squares in that slice, measured by the 2-D
region code (``closed_form_volumes``). On the
benchmark's attribution maps about two fifths of the components that would go to Qhull
are flat.

Union. Measured in ``_voxel_overlap``: exact where hulls do not overlap, on the voxel grid
where they do.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Tuple

import numpy as np
from scipy.spatial import ConvexHull

from captum_gradflow.metrics._hulls import component_hulls
from captum_gradflow.metrics._ragged import expand, pairs_after
from captum_gradflow.metrics._voxel_hulls import solid_volumes

I64 = np.int64
EPS = 1e-9
CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=I64)


@dataclass
class VoxelComponents:
    """Components of a stacked label volume, sorted by label (voxels in raster order).

    ``z, y, x`` are the voxel coordinates inside each example (z within the example);
    ``example`` the example of each component; ``start``/``count`` its voxel range;
    ``lo``/``hi`` its bounding box (inclusive voxel indices), ``(K, 3)``.
    """

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    example: np.ndarray
    start: np.ndarray
    count: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def __len__(self) -> int:
        return len(self.count)

    @cached_property
    def is_box(self) -> np.ndarray:
        """``(K,)`` bool: the components that fill their bounding box (their hull is it)."""
        return self.count == np.prod(self.hi - self.lo + 1, axis=1)

    def voxels(self, k: int) -> np.ndarray:
        """``(count, 3)`` voxel coordinates ``(z, y, x)`` of component ``k``."""
        s = slice(self.start[k], self.start[k] + self.count[k])
        return np.stack([self.z[s], self.y[s], self.x[s]], 1)


def components(labels: np.ndarray, n_labels: int, depth: int) -> VoxelComponents:
    """The components ``1..n_labels`` of a ``(N * (depth + 1), H, W)`` stacked label volume."""
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx].astype(I64)
    # stable: raster order inside a label; 16-bit labels sort by radix
    order = np.argsort(lab.astype(np.uint16) if n_labels < 2 ** 16 else lab, kind="stable")
    idx, lab = idx[order], lab[order]
    zz, y, x = np.unravel_index(idx, labels.shape)
    count = np.bincount(lab, minlength=n_labels + 1)[1:].astype(I64)
    start = np.r_[0, np.cumsum(count)[:-1]].astype(I64)
    zz, y, x = zz.astype(I64), y.astype(I64), x.astype(I64)
    if n_labels == 0:
        z3 = np.zeros((0, 3), dtype=I64)
        return VoxelComponents(zz, y, x, np.zeros(0, I64), start, count, z3, z3)
    pts = np.stack([zz, y, x], 1)
    lo = np.minimum.reduceat(pts, start, axis=0)
    hi = np.maximum.reduceat(pts, start, axis=0)
    example = lo[:, 0] // (depth + 1)
    z = zz - np.repeat(example, count) * (depth + 1)
    lo[:, 0] -= example * (depth + 1)
    hi[:, 0] -= example * (depth + 1)
    return VoxelComponents(z, y, x, example, start, count, lo, hi)


def candidate_points(c: VoxelComponents, k: int) -> np.ndarray:
    """Corners of component ``k``'s cubes that can be hull vertices, relative to its box.

    Every corner lies on a line parallel to x through integer ``(z, y)``; only the two
    extreme corners of each line can be hull vertices (the others lie between them). A
    line's extremes come from the first and last voxels of the (up to four) rows of voxels
    that touch it, read off a small grid without sorting; a ball keeps about its surface.
    """
    v = c.voxels(k) - c.lo[k]
    if len(v) <= 16:  # filtering would cost more than Qhull saves
        return (v[:, None, :] + CORNERS[None]).reshape(-1, 3)
    dz, dy, dx = c.hi[k] - c.lo[k] + 1
    key = v[:, 0] * dy + v[:, 1]  # voxels are in raster order: rows are runs of one key
    first = v[np.r_[True, key[1:] != key[:-1]]]
    last = v[np.r_[key[1:] != key[:-1], True]]
    low = np.full((dz + 2, dy + 2), dx + 1, dtype=I64)  # padded: row (z, y) at (z+1, y+1)
    high = np.full((dz + 2, dy + 2), -1, dtype=I64)
    low[first[:, 0] + 1, first[:, 1] + 1] = first[:, 2]
    high[last[:, 0] + 1, last[:, 1] + 1] = last[:, 2] + 1
    # corner line (z, y) touches rows z - 1 and z, y - 1 and y
    low = np.minimum(np.minimum(low[:-1, :-1], low[1:, :-1]),
                     np.minimum(low[:-1, 1:], low[1:, 1:]))
    high = np.maximum(np.maximum(high[:-1, :-1], high[1:, :-1]),
                      np.maximum(high[:-1, 1:], high[1:, 1:]))
    zz, yy = np.nonzero(high >= 0)
    return np.r_[np.stack([zz, yy, low[zz, yy]], 1), np.stack([zz, yy, high[zz, yy]], 1)]


def closed_form_volumes(c: VoxelComponents) -> Tuple[np.ndarray, np.ndarray]:
    """Volumes of the hulls known in closed form (NaN elsewhere), and which those are.

    The hull of the cubes is the hull ``P`` of the voxel positions plus the unit cube
    (a Minkowski sum), whose volume is ``vol(P) + sum_i A_i + sum_i w_i + 1`` with ``A_i``
    the area of ``P`` projected along axis ``i`` and ``w_i`` its extent along axis ``i``.
    A box is its bounding box; for two, three and four voxels ``P`` is a segment, a triangle
    and a tetrahedron, and the projected areas of four points are half the sum of their
    four triangles' areas (the two triangulations of four points use each triangle once).
    Components one voxel thick: :func:`flat_volumes`.
    """
    size = c.hi - c.lo + 1
    volume = np.full(len(c), np.nan)
    is_box = c.is_box
    volume[is_box] = c.count[is_box]
    small = ~is_box & (c.count <= 4)
    for n in (2, 3, 4):
        k = np.flatnonzero(small & (c.count == n))
        if len(k) == 0:
            continue
        idx = c.start[k][:, None] + np.arange(n)
        p = np.stack([c.z[idx], c.y[idx], c.x[idx]], -1).astype(np.float64)  # (K, n, 3)
        v = 1.0 + (size[k] - 1).sum(1)
        if n == 3:
            v += np.abs(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])).sum(1) / 2
        elif n == 4:
            d = p[:, 1:] - p[:, :1]
            v += np.abs(np.linalg.det(d)) / 6
            for i, j, m in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)):
                v += np.abs(np.cross(p[:, j] - p[:, i], p[:, m] - p[:, i])).sum(1) / 4
        volume[k] = v
    flat = np.flatnonzero(~is_box & ~small & (size.min(1) == 1))
    volume[flat] = flat_volumes(c, flat)
    known = is_box | small
    known[flat] = True
    solid = np.flatnonzero(~known)
    volume[solid], known[solid] = solid_volumes(c, solid)
    return volume, known


def flat_volumes(c: VoxelComponents, ks: np.ndarray) -> np.ndarray:
    """Hull volumes of components ``ks``, each one voxel thick along one axis (not boxes).

    The hull of such a component's cubes is the hull of its unit squares in that slice, one
    voxel thick: its volume is that 2-D hull's exact area, which the 2-D region code computes
    (:func:`~captum_gradflow.metrics._hulls.component_hulls`). The slices are packed into one
    label image, one component per band of rows with an empty row between bands.
    """
    if len(ks) == 0:
        return np.zeros(0)
    size = c.hi[ks] - c.lo[ks] + 1
    axes = np.argsort(size, axis=1, kind="stable")  # the flat axis, then rows, then columns
    entry, voxel = expand(c.start[ks], c.count[ks])
    pos = np.stack([c.z[voxel], c.y[voxel], c.x[voxel]], 1) - c.lo[ks][entry]
    row = np.take_along_axis(pos, axes[entry, 1:2], 1)[:, 0]
    col = np.take_along_axis(pos, axes[entry, 2:3], 1)[:, 0]
    height = np.take_along_axis(size, axes[:, 1:2], 1)[:, 0] + 1
    first_row = np.r_[0, np.cumsum(height)[:-1]]
    labels = np.zeros((int(height.sum()), int(size.max()) + 2), dtype=I64)  # an empty column each side
    labels[first_row[entry] + row, col + 1] = entry + 1
    hulls, _, _ = component_hulls(labels, labels > 0, len(ks))
    return hulls.area2 / 2.0


def qhull(c: VoxelComponents, k: int) -> ConvexHull:
    """Qhull of component ``k``'s candidate corners, in coordinates relative to its box.

    Relative integer coordinates make the result exactly translation invariant.
    """
    return ConvexHull(candidate_points(c, k).astype(np.float64))


def hull_volumes(c: VoxelComponents, hulls: dict) -> np.ndarray:
    """Exact hull volume of every component (closed form where known, Qhull elsewhere)."""
    volume, known = closed_form_volumes(c)
    for k in np.flatnonzero(~known):
        volume[k] = hull_of(c, int(k), hulls).volume
    return volume


def box_pairs(c: VoxelComponents) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs of components of one example whose bounding boxes overlap with volume."""
    n = len(c)
    if n < 2:
        return np.zeros(0, I64), np.zeros(0, I64)
    # Sorted by (example, z_lo): the partners of i follow it while their z_lo is within i's box.
    stride = int(c.hi[:, 0].max()) + 2
    key = c.example * stride + c.lo[:, 0]
    order = np.argsort(key, kind="stable")
    stop = np.searchsorted(key[order], c.example[order] * stride + c.hi[order, 0], side="right")
    count = np.maximum(stop - np.arange(n) - 1, 0)
    a, b = pairs_after(count)
    a, b = order[a], order[b]
    hit = np.all((c.lo[a] <= c.hi[b]) & (c.lo[b] <= c.hi[a]), axis=1)
    return a[hit], b[hit]


def planes(c: VoxelComponents, k: int, hulls: dict) -> np.ndarray:
    """Facet planes ``(F, 4)`` of component ``k``'s hull, relative to its box, unit normals
    pointing out (``n . p + d <= 0`` inside). A box's six planes need no Qhull."""
    key = ("planes", k)
    if key not in hulls:
        if c.is_box[k]:
            size = (c.hi[k] - c.lo[k] + 1).astype(np.float64)
            eye = np.eye(3)
            hulls[key] = np.c_[np.r_[eye, -eye], np.r_[-size, np.zeros(3)]]
        else:
            eq = hull_of(c, k, hulls).equations
            # Qhull gives one plane per triangle: coplanar triangles repeat a facet's plane
            r = np.round(eq, 9)
            order = np.lexsort(r.T[::-1])  # stable: the first of equal rows leads
            new = np.r_[True, np.any(r[order[1:]] != r[order[:-1]], axis=1)]
            hulls[key] = eq[np.sort(order[new])]
    return hulls[key]


def hull_of(c: VoxelComponents, k: int, hulls: dict) -> ConvexHull:
    """Qhull of component ``k``, memoised in ``hulls``."""
    if k not in hulls:
        hulls[k] = qhull(c, k)
    return hulls[k]
