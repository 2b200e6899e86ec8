"""Convex hulls of labelled voxel components, their exact volumes and the volume of their union.

Geometry. Voxel ``(z, y, x)`` is the unit cube ``[z, z + 1] x [y, y + 1] x [x, x + 1]``; a
component's region is the convex hull of its cubes. That hull always has volume (it contains
a cube), so it is never degenerate, whatever the component's shape (one voxel, a line, a flat
sheet).

Speed. Only points that can be hull vertices go to Qhull: per row of a component only the two
end voxels matter, and of the corners left, only the two extremes along each axis line
(points between two others on a line are inside their segment). Components whose hull is
known in closed form skip Qhull: a component that fills its bounding box is that box, and two
voxels at offset ``v`` give the cube swept along ``v``, of volume ``1 + |v_z| + |v_y| + |v_x|``.

Union. Hulls whose bounding boxes do not overlap are disjoint and their volumes add exactly.
Where boxes overlap, the doubly counted volume is measured on the voxel grid: every voxel in
a pairwise box intersection is supersampled with ``s^3`` points at the centres of its
``s x s x s`` sub-voxels, and each point strictly inside ``m > 1`` hulls removes ``(m - 1) / s^3``.
Hulls that only touch remove nothing, so the union of disjoint hulls stays exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy.spatial import ConvexHull, QhullError

I64 = np.int64
_EPS = 1e-9
_CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=I64)


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

    def voxels(self, k: int) -> np.ndarray:
        """``(count, 3)`` voxel coordinates ``(z, y, x)`` of component ``k``."""
        s = slice(self.start[k], self.start[k] + self.count[k])
        return np.stack([self.z[s], self.y[s], self.x[s]], 1)


def components(labels: np.ndarray, n_labels: int, depth: int) -> VoxelComponents:
    """The components ``1..n_labels`` of a ``(N * (depth + 1), H, W)`` stacked label volume."""
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx].astype(I64)
    order = np.argsort(lab, kind="stable")  # stable: raster order inside a label
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

    Row ends first (per ``(z, y)`` the first and last voxel), then per axis line only the two
    extreme corners: both steps keep the hull, and a ball keeps about its surface.
    """
    v = c.voxels(k) - c.lo[k]
    key = v[:, 0] * (c.hi[k, 1] - c.lo[k, 1] + 1) + v[:, 1]
    first = np.r_[True, key[1:] != key[:-1]]
    last = np.r_[key[1:] != key[:-1], True]
    ends = np.concatenate([v[first], v[last]])
    pts = (ends[:, None, :] + _CORNERS[None]).reshape(-1, 3)
    for axis in (1, 0, 2):
        pts = _line_extremes(pts, axis)
    return pts


def _line_extremes(pts: np.ndarray, axis: int) -> np.ndarray:
    """Keep, on every line parallel to ``axis``, only the smallest and largest point."""
    others = [a for a in range(3) if a != axis]
    span = pts.max(0) + 2
    key = pts[:, others[0]] * span[others[1]] + pts[:, others[1]]
    order = np.lexsort((pts[:, axis], key))
    p, key = pts[order], key[order]
    first = np.r_[True, key[1:] != key[:-1]]
    last = np.r_[key[1:] != key[:-1], True]
    return p[first | last]


def closed_form_volumes(c: VoxelComponents) -> Tuple[np.ndarray, np.ndarray]:
    """Volumes of the hulls known in closed form (NaN elsewhere), and which those are."""
    box = np.prod(c.hi - c.lo + 1, axis=1)
    volume = np.full(len(c), np.nan)
    is_box = c.count == box
    volume[is_box] = box[is_box]
    pair = (c.count == 2) & ~is_box
    offset = c.hi[pair] - c.lo[pair]  # two voxels: their offset, up to signs
    volume[pair] = 1.0 + offset.sum(1)
    return volume, is_box | pair


def qhull(c: VoxelComponents, k: int) -> ConvexHull:
    """Qhull of component ``k``'s candidate corners, in coordinates relative to its box.

    Relative integer coordinates make the result exactly translation invariant.
    """
    return ConvexHull(candidate_points(c, k).astype(np.float64))


def hull_volumes(c: VoxelComponents) -> np.ndarray:
    """Exact hull volume of every component (closed form where known, Qhull elsewhere)."""
    volume, known = closed_form_volumes(c)
    for k in np.flatnonzero(~known):
        volume[k] = qhull(c, int(k)).volume
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
    a = np.repeat(np.arange(n), count)
    b = a + 1 + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    a, b = order[a], order[b]
    hit = np.all((c.lo[a] <= c.hi[b]) & (c.lo[b] <= c.hi[a]), axis=1)
    return a[hit], b[hit]


def overlap_corrections(
    c: VoxelComponents, n_examples: int, depth: int, shape: Tuple[int, int], s: int,
    hulls: dict,
) -> np.ndarray:
    """Per example, minus the doubly counted volume of its overlapping hulls (see module)."""
    correction = np.zeros(n_examples)
    a, b = box_pairs(c)
    if len(a) == 0:
        return correction
    h, w = shape
    contested = np.zeros((n_examples, depth, h, w), dtype=bool)
    lo = np.maximum(c.lo[a], c.lo[b])
    hi = np.minimum(c.hi[a], c.hi[b]) + 1
    for e, l, u in zip(c.example[a], lo, hi):
        contested[e, l[0]:u[0], l[1]:u[1], l[2]:u[2]] = True
    ex, vz, vy, vx = np.nonzero(contested)
    sub = (np.arange(s) + 0.5) / s
    offsets = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    hits = np.zeros((len(ex), len(offsets)), dtype=np.int32)
    voxel = np.stack([vz, vy, vx], 1)
    for k in np.unique(np.r_[a, b]):
        inside = (ex == c.example[k]) & np.all((voxel >= c.lo[k]) & (voxel <= c.hi[k]), axis=1)
        rows = np.flatnonzero(inside)
        if len(rows) == 0:
            continue
        eq = hull_of(c, int(k), hulls).equations
        pts = (voxel[rows] - c.lo[k])[:, None, :] + offsets[None]
        dist = pts @ eq[:, :3].T + eq[:, 3]
        hits[rows] += np.all(dist < -_EPS, axis=-1)
    extra = np.maximum(hits - 1, 0).sum(1) / float(s ** 3)
    np.add.at(correction, ex, -extra)
    return correction


def hull_of(c: VoxelComponents, k: int, hulls: dict) -> ConvexHull:
    """Qhull of component ``k``, memoised in ``hulls``."""
    if k not in hulls:
        hulls[k] = qhull(c, k)
    return hulls[k]


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
    where = np.full(max(n_examples, 1), -1, dtype=I64)
    where[pick] = np.arange(len(pick))
    mask = np.zeros((len(pick), depth, h, w), dtype=bool)
    size = c.hi - c.lo + 1
    is_box = c.count == np.prod(size, axis=1)
    for k in np.flatnonzero(where[c.example] >= 0):
        e, l, u = where[c.example[k]], c.lo[k], c.hi[k] + 1
        view = mask[e, l[0]:u[0], l[1]:u[1], l[2]:u[2]]
        if is_box[k]:
            view[...] = True
            continue
        eq = hull_of(c, int(k), hulls).equations
        grid = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in size[k]], indexing="ij"), -1)
        view |= np.all(grid @ eq[:, :3].T + eq[:, 3] <= _EPS, axis=-1)
    return mask


def hull_vertices(c: VoxelComponents, k: int, hulls: dict) -> np.ndarray:
    """``(V, 3)`` float vertices ``(z, y, x)`` of component ``k``'s hull, in voxel-corner units."""
    size = c.hi[k] - c.lo[k] + 1
    if c.count[k] == np.prod(size):
        return (_CORNERS * size + c.lo[k]).astype(np.float64)
    hull = hull_of(c, k, hulls)
    return hull.points[hull.vertices] + c.lo[k]


def plane_section(vertices: np.ndarray, axis: int, at: float) -> List[np.ndarray]:
    """The cross-section of a convex hull with the plane ``coordinate[axis] == at``.

    Returns ``[]`` where the plane misses it, else one ``(M, 2)`` closed ring in the other two
    coordinates (order kept): the convex hull of where the segments between vertex pairs cross
    the plane (these include every hull edge's crossing, so their hull is the section).
    """
    side = vertices[:, axis] - at
    below, above = vertices[side < 0], vertices[side > 0]
    on = vertices[side == 0]
    if len(below) == 0 and len(on) == 0 or len(above) == 0 and len(on) == 0:
        return []
    p, q = below[:, None, :], above[None, :, :]
    t = (at - p[..., axis]) / (q[..., axis] - p[..., axis])
    cross = (p + t[..., None] * (q - p)).reshape(-1, 3)
    keep = [a for a in range(3) if a != axis]
    pts = np.unique(np.concatenate([cross, on])[:, keep].round(12), axis=0)
    if len(pts) < 3:
        return [np.concatenate([pts, pts[:1]])] if len(pts) else []
    try:
        ring = ConvexHull(pts).vertices  # counter-clockwise in 2-D
    except QhullError:  # collinear points (a plane through an edge): the segment itself
        ends = pts[[np.argmin(pts[:, 0] + pts[:, 1]), np.argmax(pts[:, 0] + pts[:, 1])]]
        return [np.concatenate([ends, ends[:1]])]
    return [np.concatenate([pts[ring], pts[ring[:1]]])]
