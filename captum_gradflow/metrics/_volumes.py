"""Convex hulls of labelled voxel components, their exact volumes and the volume of their union.

Geometry. Voxel ``(z, y, x)`` is the unit cube ``[z, z + 1] x [y, y + 1] x [x, x + 1]``; a
component's region is the convex hull of its cubes. That hull always has volume (it contains
a cube), so it is never degenerate, whatever the component's shape (one voxel, a line, a flat
sheet).

Speed. Only points that can be hull vertices go to Qhull: of the cube corners on each line
parallel to x, the two extremes (read off a grid of the components' row ends). Components
whose hull is known in closed form skip Qhull: a component that fills its bounding box is
that box, and two to four voxels give a Minkowski sum with the unit cube.

Union. Hulls whose bounding boxes do not overlap are disjoint and their volumes add exactly.
Of the pairs whose boxes overlap, a hull inside another is dropped with its exact volume and
a pair split by a facet plane is disjoint (both exact). For the pairs left, the doubly
counted volume is measured on the voxel grid with ``s^3`` points per voxel, at the centres
of its ``s x s x s`` sub-voxels: each point strictly inside ``m > 1`` hulls removes
``(m - 1) / s^3``. Each hull of such a pair is tested only on the voxels of the pair's box
intersection and only against its facet planes that cut that box; voxels whose points are
all inside (or all outside) a hull count whole, the others are sampled. Hulls that only
touch remove nothing, so the union of disjoint hulls stays exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy.spatial import ConvexHull

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
    """
    size = c.hi - c.lo + 1
    box = np.prod(size, axis=1)
    volume = np.full(len(c), np.nan)
    is_box = c.count == box
    volume[is_box] = box[is_box]
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
    return volume, is_box | small


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
    a = np.repeat(np.arange(n), count)
    b = a + 1 + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    a, b = order[a], order[b]
    hit = np.all((c.lo[a] <= c.hi[b]) & (c.lo[b] <= c.hi[a]), axis=1)
    return a[hit], b[hit]


def overlap_corrections(
    c: VoxelComponents, volume: np.ndarray, n_examples: int, depth: int,
    shape: Tuple[int, int], s: int, hulls: dict,
) -> np.ndarray:
    """Per example, minus the doubly counted volume of its overlapping hulls.

    Pairs with overlapping boxes are sorted out exactly first: a hull inside another one is
    dropped with its exact volume (the common case: small regions inside a large one); a
    pair separated by a facet plane of the larger hull is disjoint. Only the pairs left
    are measured on the grid (see the module docstring).
    """
    correction = np.zeros(n_examples)
    a, b = box_pairs(c)
    if len(a) == 0:
        return correction
    swap = (volume[a] < volume[b]) | ((volume[a] == volume[b]) & (a > b))
    big, small = np.where(swap, b, a), np.where(swap, a, b)
    inside, apart = _classify_pairs(c, big, small, hulls)
    swallowed = np.zeros(len(c), dtype=bool)
    swallowed[small[inside]] = True
    np.add.at(correction, c.example[swallowed], -volume[swallowed])
    left = ~inside & ~apart & ~swallowed[big] & ~swallowed[small]
    if left.any():
        correction += _sampled_overlap(
            c, big[left], small[left], n_examples, depth, shape, s, hulls
        )
    return correction


def _classify_pairs(
    c: VoxelComponents, big: np.ndarray, small: np.ndarray, hulls: dict
) -> Tuple[np.ndarray, np.ndarray]:
    """Per pair: is the small hull inside the big one; is a facet plane of the big one
    separating them (both exact, up to a 1e-9 tolerance on integer geometry)."""
    inside = np.zeros(len(big), dtype=bool)
    apart = np.zeros(len(big), dtype=bool)
    is_box = c.count == np.prod(c.hi - c.lo + 1, axis=1)
    order = np.argsort(big, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(big[order])) + 1, len(order)]
    for lo_, hi_ in zip(bounds[:-1], bounds[1:]):
        rows = order[lo_:hi_]
        k, partners = int(big[rows[0]]), small[rows]
        if is_box[k]:  # the hull is the box: containment of boxes decides
            inside[rows] = np.all((c.lo[partners] >= c.lo[k]) & (c.hi[partners] <= c.hi[k]), 1)
            continue
        eq = planes(c, k, hulls)
        # the partner's bounding box inside the hull: so is the partner's hull
        box_pts = (c.lo[partners][:, None] + CORNERS[None] * (c.hi - c.lo + 1)[partners][:, None])
        dist = (box_pts - c.lo[k]).reshape(-1, 3) @ eq[:, :3].T + eq[:, 3]
        inside[rows] = np.all(dist.reshape(len(rows), 8, -1) <= EPS, axis=(1, 2))
        rest = rows[~inside[rows]]
        few = c.count[small[rest]] <= 16  # all corners, at once; larger ones filtered first
        if few.any():
            inside[rest[few]], apart[rest[few]] = _corners_against(c, small[rest[few]], eq, c.lo[k])
        for r in rest[~few]:
            pts = candidate_points(c, int(small[r])) + c.lo[small[r]] - c.lo[k]
            d = pts @ eq[:, :3].T + eq[:, 3]
            inside[r] = bool(np.all(d <= EPS))
            apart[r] = bool(np.any(np.all(d >= -EPS, axis=0)))
    return inside, apart


def _corners_against(
    c: VoxelComponents, comps: np.ndarray, eq: np.ndarray, origin: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Per component: all its cube corners inside the planes ``eq``; all outside one plane."""
    count = c.count[comps]
    first = c.start[comps] - np.r_[0, np.cumsum(count)[:-1]]
    voxel = np.repeat(first, count) + np.arange(count.sum())
    pts = np.stack([c.z[voxel], c.y[voxel], c.x[voxel]], 1) - origin
    d = ((pts[:, None, :] + CORNERS[None]).reshape(-1, 3)) @ eq[:, :3].T + eq[:, 3]
    starts = np.r_[0, np.cumsum(8 * count)[:-1]]
    inside = np.logical_and.reduceat(np.all(d <= EPS, axis=1), starts)
    apart = np.logical_and.reduceat(d >= -EPS, starts, axis=0).any(axis=1)
    return inside, apart


def _sampled_overlap(
    c: VoxelComponents, a: np.ndarray, b: np.ndarray, n_examples: int, depth: int,
    shape: Tuple[int, int], s: int, hulls: dict,
) -> np.ndarray:
    """Minus the doubly counted volume of pairs ``(a, b)``, on ``s^3`` points per voxel.

    A point counted twice lies in some pair's box intersection, so each hull of a pair is
    tested on that box's voxels only (see ``_box_rows``).
    """
    lo = np.maximum(c.lo[a], c.lo[b])
    size = np.minimum(c.hi[a], c.hi[b]) + 1 - lo
    gid, state, el_row, el_dist, el_normal = _box_rows(
        c, np.r_[a, b], np.r_[lo, lo], np.r_[size, size], depth, shape, s, hulls
    )
    # Pass 1, whole voxels: per voxel the hulls holding it whole and those whose boundary
    # cuts it; only voxels that two hulls may share and one boundary cuts are sampled.
    voxels, vidx = np.unique(gid, return_inverse=True)
    n_whole = np.bincount(vidx, weights=state == 1, minlength=len(voxels)).astype(I64)
    n_cut = np.bincount(vidx, weights=state == 2, minlength=len(voxels)).astype(I64)
    extra = np.maximum(n_whole - 1, 0).astype(np.float64)
    need = (n_cut > 0) & (n_whole + n_cut >= 2)
    # Pass 2: s^3 sub-voxel centres of those voxels; a point strictly inside m hulls is
    # counted m - 1 times too often.
    slot = np.cumsum(need) - 1
    hits = np.repeat(n_whole[need][:, None].astype(np.int32), s ** 3, axis=1)
    sel = need[vidx[el_row]]
    e_row = el_row[sel]
    if len(e_row):
        inside = _inside_points(el_dist[sel], el_normal[sel], e_row, s)
        point = slot[vidx[np.unique(e_row)]][:, None] * s ** 3 + np.arange(s ** 3)
        hits += np.bincount(point[inside], minlength=hits.size).reshape(hits.shape)
    extra[need] = np.maximum(hits - 1, 0).sum(1) / float(s ** 3)
    per_example = depth * shape[0] * shape[1]
    return -np.bincount(voxels // per_example, weights=extra, minlength=n_examples)


def _inside_points(dist: np.ndarray, normal: np.ndarray, row: np.ndarray, s: int) -> np.ndarray:
    """Per row (elements grouped by row), which of the ``s^3`` sub-voxel centres of its voxel
    are strictly inside all of its planes; ``dist`` is each plane's distance at the centre.

    Worked in chunks of rows: small temporaries stay in cache (large fresh arrays cost more
    in page faults than in arithmetic).
    """
    sub = (np.arange(s) + 0.5) / s - 0.5
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    inside = np.empty((len(starts), s ** 3), dtype=bool)
    bounds = np.r_[starts, len(row)]
    chunk = max(1, 2 ** 16 // s ** 3)
    for g0 in range(0, len(starts), chunk):
        g1 = min(g0 + chunk, len(starts))
        e0, e1 = bounds[g0], bounds[g1]
        part = [normal[e0:e1, i:i + 1] * sub for i in range(3)]  # separable: z, y, x offsets
        zy = (dist[e0:e1, None] + part[0])[:, :, None] + part[1][:, None, :]
        outside = (zy[..., None] + part[2][:, None, None, :] >= -EPS).reshape(e1 - e0, -1)
        inside[g0:g1] = ~np.logical_or.reduceat(outside, starts[g0:g1] - e0, axis=0)
    return inside


def _box_rows(
    c: VoxelComponents, hull: np.ndarray, box_lo: np.ndarray, box_size: np.ndarray,
    depth: int, shape: Tuple[int, int], s: int, hulls: dict,
) -> Tuple[np.ndarray, ...]:
    """Hull ``hull[i]`` against the voxels of box ``i``, one row per (hull, voxel).

    Returns per row the voxel's global id and its state (0: none of its ``s^3`` points is
    strictly inside the hull, 1: all are, 2: the boundary passes between them), and for
    cut rows, grouped by row, the facet planes passing near its points: row, distance of
    the voxel centre, normal. Only planes that cut the box's points are evaluated (a
    half-space holding them all excludes nothing); a box hull holds all its voxels' points.
    """
    h, w = shape
    gids, states, keys, rows, dists, normals = [], [], [], [], [], []
    n_rows = 0
    stride = (int(c.example.max()) + 1) * depth * h * w
    is_box = c.count == np.prod(c.hi - c.lo + 1, axis=1)
    half = 0.5 - 0.5 / s  # from a voxel's centre to its outermost points, along each axis
    for k, l, sz in zip(hull.tolist(), box_lo, box_size):
        zz, yy, xx = np.unravel_index(np.arange(int(np.prod(sz))), tuple(sz))
        gid = ((c.example[k] * depth + zz + l[0]) * h + yy + l[1]) * w + xx + l[2]
        gids.append(gid), keys.append(k * stride + gid)
        if is_box[k]:
            states.append(np.ones(len(gid), dtype=I64))
            n_rows += len(gid)
            continue
        eq = planes(c, k, hulls)
        rel = l - c.lo[k]
        corner = (rel + 0.5 - half + CORNERS * (sz - 1 + 2 * half)) @ eq[:, :3].T + eq[:, 3]
        eq = eq[corner.max(0) >= -EPS]
        axes = [np.arange(n) + r + 0.5 for n, r in zip(sz, rel)]
        dist = (axes[0][:, None, None, None] * eq[:, 0] + axes[1][None, :, None, None] * eq[:, 1]
                + axes[2][None, None, :, None] * eq[:, 2] + eq[:, 3]).reshape(len(gid), len(eq))
        reach = np.abs(eq[:, :3]).sum(1) * half
        out = np.any(dist - reach >= -EPS, axis=1)
        near = (dist + reach >= -EPS) & ~out[:, None]
        state = np.where(out, 0, np.where(near.any(1), 2, 1))
        states.append(state)
        r, p = np.nonzero(near)
        rows.append(r + n_rows), dists.append(dist[r, p]), normals.append(eq[p, :3])
        n_rows += len(dist)
    key = np.concatenate(keys)
    _, first = np.unique(key, return_index=True)  # the same (hull, voxel) from two boxes
    keep = np.zeros(len(key), dtype=bool)
    keep[first] = True
    new_index = np.cumsum(keep) - 1
    row = np.concatenate(rows + [np.zeros(0, dtype=I64)])
    sel = keep[row]
    return (np.concatenate(gids)[keep], np.concatenate(states)[keep], new_index[row[sel]],
            np.concatenate(dists + [np.zeros(0)])[sel],
            np.concatenate(normals + [np.zeros((0, 3))])[sel])


def planes(c: VoxelComponents, k: int, hulls: dict) -> np.ndarray:
    """Facet planes ``(F, 4)`` of component ``k``'s hull, relative to its box, unit normals
    pointing out (``n . p + d <= 0`` inside). A box's six planes need no Qhull."""
    key = ("planes", k)
    if key not in hulls:
        size = (c.hi[k] - c.lo[k] + 1).astype(np.float64)
        if c.count[k] == np.prod(size):
            eye = np.eye(3)
            hulls[key] = np.c_[np.r_[eye, -eye], np.r_[-size, np.zeros(3)]]
        else:
            eq = hull_of(c, k, hulls).equations
            # Qhull gives one plane per triangle: coplanar triangles repeat a facet's plane
            _, first = np.unique(np.round(eq, 9), axis=0, return_index=True)
            hulls[key] = eq[np.sort(first)]
    return hulls[key]


def hull_of(c: VoxelComponents, k: int, hulls: dict) -> ConvexHull:
    """Qhull of component ``k``, memoised in ``hulls``."""
    if k not in hulls:
        hulls[k] = qhull(c, k)
    return hulls[k]
