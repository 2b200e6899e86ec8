"""The volume of the union of a volume's hulls: what overlapping hulls count twice.

Hulls whose bounding boxes do not overlap are disjoint and their volumes add exactly. Of the
pairs whose boxes overlap, a hull inside another is dropped with its exact volume and a pair
split by a facet plane of the larger hull is disjoint (both exact). For the pairs left, the
doubly counted volume is measured on the voxel grid with ``s^3`` points per voxel, at the
centres of its ``s x s x s`` sub-voxels: each point strictly inside ``m > 1`` hulls removes
``(m - 1) / s^3``. Each hull of such a pair is tested only on the voxels of the pair's box
intersection and only against its facet planes that cut that box; voxels whose points are
all inside (or all outside) a hull count whole, the others are sampled. Hulls that only
touch remove nothing, so the union of disjoint hulls stays exact.

Speed. Pairs, boxes and planes are handled as flat arrays (a ragged list of planes per
hull, expanded with ``np.repeat``) rather than one pair or box at a time; a plane's extreme
value over a box is read off its centre and half-extents instead of its eight corners;
boxes of one shape are evaluated together; a box crossed by many planes of a large hull is
halved first, since each half is crossed by fewer of them. None of this changes a value:
every shortcut drops only planes that cannot decide any sample point.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from captum_gradflow.metrics._volumes import CORNERS, EPS, I64, VoxelComponents, box_pairs, planes
from captum_gradflow.metrics._ragged import expand
from captum_gradflow.metrics._voxel_hulls import small_hull_planes

MANY_PLANES = 24  # a box cut by more planes is halved (``_halve``), SPLITS times at most
SPLITS = 1


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
    inside, apart = classify_pairs(c, big, small, hulls)
    swallowed = np.zeros(len(c), dtype=bool)
    swallowed[small[inside]] = True
    np.add.at(correction, c.example[swallowed], -volume[swallowed])
    left = ~inside & ~apart & ~swallowed[big] & ~swallowed[small]
    if left.any():
        correction += sampled_overlap(
            c, big[left], small[left], n_examples, depth, shape, s, hulls
        )
    return correction


def ragged_planes(c: VoxelComponents, ks: np.ndarray, hulls: dict) -> Tuple[np.ndarray, ...]:
    """The facet planes of the hulls ``ks`` in one ``(F, 4)`` array, and per entry of ``ks``
    the first row and the number of its planes (a hull listed twice shares its rows)."""
    uniq, inverse = np.unique(ks, return_inverse=True)
    is_box = c.is_box
    todo = [k for k in uniq.tolist() if ("planes", k) not in hulls and not is_box[k]]  # boxes: planes()
    for k, eq in small_hull_planes(c, np.array(todo, dtype=I64)).items():
        hulls[("planes", k)] = eq  # in bulk, without Qhull
    eqs = [planes(c, int(k), hulls) for k in uniq]
    n = np.array([len(e) for e in eqs], dtype=I64)
    first = np.r_[0, np.cumsum(n)[:-1]].astype(I64)
    return np.concatenate(eqs + [np.zeros((0, 4))]), first[inverse], n[inverse]


def box_extremes(eq: np.ndarray, centre: np.ndarray, half: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Lowest and highest value of each plane ``eq`` (rows) over the box ``centre +- half``."""
    mid = (centre * eq[:, :3]).sum(1) + eq[:, 3]
    reach = (np.abs(eq[:, :3]) * half).sum(1)
    return mid - reach, mid + reach


def classify_pairs(
    c: VoxelComponents, big: np.ndarray, small: np.ndarray, hulls: dict
) -> Tuple[np.ndarray, np.ndarray]:
    """Per pair: is the small hull inside the big one; is a facet plane of the big one
    separating them (both exact, up to a 1e-9 tolerance on integer geometry).

    The small hull's bounding box decides most pairs and most planes: a plane that holds the
    box on one side holds the hull there too. Only the planes that cut the box are tested
    on the small component's cube corners. A box holds a box or sticks out of it.
    """
    size = c.hi - c.lo + 1
    is_box = c.is_box
    inside = np.all((c.lo[small] >= c.lo[big]) & (c.hi[small] <= c.hi[big]), axis=1)
    apart = np.zeros(len(big), dtype=bool)
    centre = c.lo[small] + size[small] / 2.0 - c.lo[big]  # the small box, relative to big's
    cut_pair, cut_eq = [], []
    many = np.bincount(big[~is_box[big]], minlength=len(c)) >= 64
    for k in np.flatnonzero(many):  # a large hull with many partners: one matrix product
        rows = np.flatnonzero(big == k)
        eq = planes(c, k, hulls)
        mid = centre[rows] @ eq[:, :3].T + eq[:, 3]
        reach = (size[small[rows]] / 2.0) @ np.abs(eq[:, :3]).T
        low, high = mid - reach, mid + reach  # (partners, planes) over each partner's box
        inside[rows] = np.all(high <= EPS, axis=1)
        apart[rows] = np.any(low >= -EPS, axis=1)
        r, f = np.nonzero((high > EPS) & (low < -EPS) & ~(inside | apart)[rows][:, None])
        cut_pair.append(rows[r]), cut_eq.append(_global(eq[f], c.lo[k]))
    rest = np.flatnonzero(~is_box[big] & ~many[big])  # the others: all (pair, plane) at once
    eq, first, n = ragged_planes(c, big[rest], hulls)
    owner, plane = expand(first, n)
    low, high = box_extremes(eq[plane], centre[rest][owner], (size[small[rest]] / 2.0)[owner])
    inside[rest] = np.bincount(owner, high > EPS, len(rest)) == 0
    apart[rest] = np.bincount(owner, low >= -EPS, len(rest)) > 0
    cut = (high > EPS) & (low < -EPS) & ~(inside | apart)[rest][owner]
    cut_pair.append(rest[owner[cut]])
    cut_eq.append(_global(eq[plane[cut]], c.lo[big[rest[owner[cut]]]]))
    if cut_pair and sum(map(len, cut_pair)):
        pair, eq = np.concatenate(cut_pair), np.concatenate(cut_eq)
        inside_cut, apart_cut = corners_against(c, small[pair], eq)
        open_pairs = np.unique(pair)
        inside[open_pairs] = np.bincount(pair, ~inside_cut, len(big))[open_pairs] == 0
        apart[open_pairs] = np.bincount(pair, apart_cut, len(big))[open_pairs] > 0
    return inside, apart


def _global(eq: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Planes ``eq`` given relative to ``origin`` (one point, or one per plane), globally."""
    return np.c_[eq[:, :3], eq[:, 3] - (eq[:, :3] * origin).sum(-1)]


def corners_against(
    c: VoxelComponents, comps: np.ndarray, eq: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Per entry ``i``: all cube corners of component ``comps[i]`` inside or on the plane
    ``eq[i]`` (global coordinates); all outside or on it.

    Only the first and last voxel of each row of a component (its voxels along x at one
    ``(z, y)``) can hold an extreme corner: an affine function is extreme at a hull vertex.
    """
    uniq, inverse = np.unique(comps, return_inverse=True)
    comp, voxel = expand(c.start[uniq], c.count[uniq])
    row = np.r_[True, (np.diff(comp) != 0) | (np.diff(c.z[voxel]) != 0)
                | (np.diff(c.y[voxel]) != 0)]
    # a row's first voxel gives its corners at x, its last one those at x + 1
    side = np.r_[voxel[row], voxel[np.r_[row[1:], True]]]
    dx = np.repeat([0, 1], int(row.sum()))
    order = np.argsort(np.r_[comp[row], comp[np.r_[row[1:], True]]], kind="stable")
    side, dx = side[order], dx[order]
    n_side = 2 * np.bincount(comp[row], minlength=len(uniq))
    first = np.r_[0, np.cumsum(n_side)[:-1]]
    entry, j = expand(first[inverse], n_side[inverse])
    e, voxel, dx = eq[entry], side[j], dx[j]
    # the plane at the row end's corner (0, 0, dx), then the four (z, y) offsets
    base = c.z[voxel] * e[:, 0] + c.y[voxel] * e[:, 1] + (c.x[voxel] + dx) * e[:, 2] + e[:, 3]
    d = base[:, None] + e[:, :2] @ CORNERS[::2, :2].T.astype(np.float64)
    n = len(comps)
    inside = np.bincount(entry, (d > EPS).any(1), n) == 0
    apart = np.bincount(entry, (d < -EPS).any(1), n) == 0
    return inside, apart


def sampled_overlap(
    c: VoxelComponents, a: np.ndarray, b: np.ndarray, n_examples: int, depth: int,
    shape: Tuple[int, int], s: int, hulls: dict,
) -> np.ndarray:
    """Minus the doubly counted volume of pairs ``(a, b)``, on ``s^3`` points per voxel.

    A point counted twice lies in some pair's box intersection, so each hull of a pair is
    tested on that box's voxels only (see ``box_rows``).
    """
    lo = np.maximum(c.lo[a], c.lo[b])
    size = np.minimum(c.hi[a], c.hi[b]) + 1 - lo
    gid, state, el_row, el_dist, el_normal = box_rows(
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
        inside = inside_points(el_dist[sel], el_normal[sel], e_row, s)
        point = slot[vidx[np.unique(e_row)]][:, None] * s ** 3 + np.arange(s ** 3)
        hits += np.bincount(point[inside], minlength=hits.size).reshape(hits.shape)
    extra[need] = np.maximum(hits - 1, 0).sum(1) / float(s ** 3)
    per_example = depth * shape[0] * shape[1]
    return -np.bincount(voxels // per_example, weights=extra, minlength=n_examples)


def inside_points(dist: np.ndarray, normal: np.ndarray, row: np.ndarray, s: int) -> np.ndarray:
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


def box_rows(
    c: VoxelComponents, hull: np.ndarray, box_lo: np.ndarray, box_size: np.ndarray,
    depth: int, shape: Tuple[int, int], s: int, hulls: dict,
) -> Tuple[np.ndarray, ...]:
    """Hull ``hull[i]`` against the voxels of box ``i``, one row per (hull, voxel).

    Returns per row the voxel's global id and its state (0: none of its ``s^3`` points is
    strictly inside the hull, 1: all are, 2: the boundary passes between them), and for
    cut rows, grouped by row, the facet planes passing near its points: row, distance of
    the voxel centre, normal. Only planes that cut the box's points are evaluated (a
    half-space holding them all excludes nothing); a box hull holds all its voxels' points.
    Boxes of one shape are evaluated together, their planes padded with ``0 <= 1``.
    """
    half = 0.5 - 0.5 / s  # from a voxel's centre to its outermost points, along each axis
    eq, first, n = ragged_planes(c, hull, hulls)
    owner, plane = expand(first, n)
    keep = ~c.is_box[hull[owner]]
    owner, plane = _prune(c, hull, box_lo, box_size, eq[plane[keep]], owner[keep], plane[keep], half)
    for _ in range(SPLITS):
        hull, box_lo, box_size, owner, plane = _halve(hull, box_lo, box_size, owner, plane)
        owner, plane = _prune(c, hull, box_lo, box_size, eq[plane], owner, plane, half)
    shapes, group = np.unique(box_size, axis=0, return_inverse=True)
    by_group = np.argsort(group, kind="stable")  # boxes of one shape, then their planes,
    rank = np.empty_like(by_group)  # in contiguous runs
    rank[by_group] = np.arange(len(by_group))
    order = np.argsort(rank[owner], kind="stable")
    owner, plane = rank[owner[order]], plane[order]
    hull, box_lo, group = hull[by_group], box_lo[by_group], group[by_group]
    slot = np.arange(len(owner)) - np.searchsorted(owner, owner)  # rank among its box's planes
    e_bounds = np.searchsorted(group, np.arange(len(shapes) + 1))
    p_bounds = np.searchsorted(owner, e_bounds)
    parts = []
    for g, sz in enumerate(shapes):
        e0, e1, p0, p1 = e_bounds[g], e_bounds[g + 1], p_bounds[g], p_bounds[g + 1]
        pad = np.zeros((e1 - e0, max(int(slot[p0:p1].max(initial=0)) + 1, 1), 4))
        pad[..., 3] = -1.0
        pad[owner[p0:p1] - e0, slot[p0:p1]] = eq[plane[p0:p1]]
        parts.append(_box_group(c, hull[e0:e1], box_lo[e0:e1], sz, pad, half, depth, shape))
    gid, state, key, n_row, dist, normal, row = (
        [p[i] for p in parts] for i in range(7))
    offset = np.r_[0, np.cumsum(n_row)[:-1]]
    row = np.concatenate([r + o for r, o in zip(row, offset)])
    _, keep_at = np.unique(np.concatenate(key), return_index=True)  # one row per (hull, voxel)
    keep = np.zeros(int(sum(map(len, gid))), dtype=bool)
    keep[keep_at] = True
    new_index = np.cumsum(keep) - 1
    sel = keep[row]
    return (np.concatenate(gid)[keep], np.concatenate(state)[keep], new_index[row[sel]],
            np.concatenate(dist)[sel], np.concatenate(normal)[sel])


def _prune(
    c: VoxelComponents, hull: np.ndarray, box_lo: np.ndarray, box_size: np.ndarray,
    eq: np.ndarray, owner: np.ndarray, plane: np.ndarray, half: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """Of the entries ``(owner, plane)`` (plane equations ``eq``), those whose plane cuts the
    sample points of box ``owner`` (a half-space that holds them all excludes nothing)."""
    centre = box_lo[owner] - c.lo[hull[owner]] + box_size[owner] / 2.0
    _, high = box_extremes(eq, centre, box_size[owner] / 2.0 - 0.5 + half)
    return owner[high >= -EPS], plane[high >= -EPS]


def _halve(
    hull: np.ndarray, box_lo: np.ndarray, box_size: np.ndarray, owner: np.ndarray,
    plane: np.ndarray,
) -> Tuple[np.ndarray, ...]:
    """Boxes cut by more than ``MANY_PLANES`` planes, halved along each axis of two or more
    voxels; each part starts from its box's planes (entries ``(owner, plane)``, by owner).
    Near a large hull's boundary many facet planes cross a box, few cross each part."""
    n_cut = np.bincount(owner, minlength=len(hull))
    split = (n_cut > MANY_PLANES) & (box_size.max(1) >= 2)
    if not split.any():
        return hull, box_lo, box_size, owner, plane
    parent = np.flatnonzero(split)
    full = box_size[parent][:, None, :]
    low = np.where(full < 2, full, full // 2)  # the first part; a 1-voxel axis stays whole
    size = np.where(CORNERS[None] == 0, low, full - low).reshape(-1, 3)
    lo = (box_lo[parent][:, None, :] + CORNERS[None] * low).reshape(-1, 3)
    part = (size > 0).all(1)
    child = np.repeat(parent, 8)[part]
    stay = np.flatnonzero(~split)
    where = np.full(len(hull), -1)
    where[stay] = np.arange(len(stay))
    kept = where[owner] >= 0
    # a part's planes are its box's: each box's entries are one block of (owner, plane)
    n_child, idx = expand(np.searchsorted(owner, child), n_cut[child])
    return (np.r_[hull[stay], hull[child]], np.r_[box_lo[stay], lo[part]],
            np.r_[box_size[stay], size[part]], np.r_[where[owner[kept]], len(stay) + n_child],
            np.r_[plane[kept], plane[idx]])


def _box_group(
    c: VoxelComponents, hull: np.ndarray, box_lo: np.ndarray, size: np.ndarray,
    pad: np.ndarray, half: float, depth: int, shape: Tuple[int, int],
) -> Tuple[np.ndarray, ...]:
    """``box_rows`` for boxes of one ``size``, ``(E, F, 4)`` planes ``pad`` relative to each
    hull's box: per row (entry-major, voxels in raster order) gid, state, (hull, voxel) key;
    the row count; per near (row, plane) its distance, normal and row."""
    h, w = shape
    axes = [(box_lo[:, i:i + 1] - c.lo[hull, i:i + 1] + np.arange(size[i]))[:, :, None] + 0.5
            for i in range(3)]  # (E, n_i, 1) voxel centres relative to the hull's box
    e, f = len(hull), pad.shape[1]
    z = axes[0] * pad[:, None, :, 0]
    y = axes[1] * pad[:, None, :, 1]
    x = axes[2] * pad[:, None, :, 2]
    dist = (z[:, :, None, None] + y[:, None, :, None] + x[:, None, None, :]
            + pad[:, None, None, None, :, 3]).reshape(e, -1, f)
    reach = (np.abs(pad[:, None, :, :3]).sum(-1) * half)
    out = np.any(dist - reach >= -EPS, axis=2)
    near = (dist + reach >= -EPS) & ~out[..., None]
    state = np.where(out, 0, np.where(near.any(2), 2, 1)).ravel()
    zz, yy, xx = np.unravel_index(np.arange(int(np.prod(size))), tuple(size))
    pos = [box_lo[:, 0:1] + zz, box_lo[:, 1:2] + yy, box_lo[:, 2:3] + xx]
    gid = (((c.example[hull][:, None] * depth + pos[0]) * h + pos[1]) * w + pos[2]).ravel()
    stride = (int(c.example.max()) + 1) * depth * h * w
    key = np.repeat(hull, len(zz)) * stride + gid
    ei, vi, fi = np.nonzero(near)
    return gid, state, key, len(gid), dist[ei, vi, fi], pad[ei, fi, :3], ei * len(zz) + vi
