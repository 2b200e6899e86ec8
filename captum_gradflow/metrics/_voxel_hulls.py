"""Exact hull volumes and facet planes of many small voxel components at once, without Qhull.

A component's hull is the hull ``P`` of its voxel positions plus the unit cube, of volume
``vol(P) + sum_i A_i + sum_i w_i + 1`` (``_volumes.closed_form_volumes``). Here ``P`` is
not flat (a flat one goes to Qhull; a line has no facet and ``vol(P) = A_i = 0``) and has
few extreme points: only voxels that are the first or last of
their component along all three axis-parallel lines through them can be vertices of ``P``.
Among those ``m`` points, every triple whose plane holds all points on one side spans a
supporting plane; a facet is the set of points on such a plane (so triples of one facet
agree). A facet's polygon is the facet's points that lie on a second facet (the others are
inside the polygon), ordered by angle about their centroid. With integer normals ``N``,
projected doubled areas ``a`` (dropping the axis ``j`` where ``|N_j|`` is largest) and
offsets ``d = N . p``, ``vol(P) = sum a d / (6 |N_j|)`` and ``A_i = sum a |N_i| / (4 |N_j|)``:
integer arithmetic up to the final divisions. Facet planes (for the union, ``_voxel_overlap``)
come from the same points (``small_hull_planes``). Each Qhull call costs ~60 us of fixed
overhead on a handful of points; this costs ``m^4 / 6`` operations per component, in bulk.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Tuple

import numpy as np

from captum_gradflow.metrics._ragged import expand

if TYPE_CHECKING:  # _volumes imports this module
    from captum_gradflow.metrics._volumes import VoxelComponents

I64 = np.int64
MAX_POINTS = 16  # components with more extreme points go to Qhull (cost grows as m^4)
MAX_VOXELS = 128  # larger components are not even searched for their extreme points
PLANE_POINTS = 8  # facet planes of components with more extreme points come from Qhull


def extreme_points(c: VoxelComponents, ks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per component ``ks[i]``, its voxels (relative to its box) that are first or last
    along all three axis-parallel lines: ``(entry, points)`` grouped by entry."""
    entry, voxel = expand(c.start[ks], c.count[ks])
    pos = np.stack([c.z[voxel], c.y[voxel], c.x[voxel]], 1) - c.lo[ks][entry]
    keep = np.ones(len(voxel), dtype=bool)
    span = int(pos.max(initial=0)) + 1
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        line = (entry * span + pos[:, a]) * span + pos[:, b]
        order = np.argsort(line * span + pos[:, axis])
        line = line[order]
        new = np.r_[True, line[1:] != line[:-1]]
        end = np.zeros(len(voxel), dtype=bool)
        end[order[new]] = True
        end[order[np.r_[new[1:], True]]] = True
        keep &= end
    return entry[keep], pos[keep]


def solid_volumes(c: VoxelComponents, ks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Hull volumes of components ``ks`` (NaN where not found here: flat ones, more than
    ``MAX_VOXELS`` voxels or ``MAX_POINTS`` extreme points), and where they were found."""
    volume = np.full(len(ks), np.nan)
    few = np.flatnonzero(c.count[ks] <= MAX_VOXELS)  # larger ones have more extreme points
    if len(few) == 0:
        return volume, ~np.isnan(volume)
    entry, pts = extreme_points(c, ks[few])
    m = np.zeros(len(ks), dtype=I64)
    m[few] = np.bincount(entry, minlength=len(few))
    first = np.r_[0, np.cumsum(m)[:-1]]
    for n in np.unique(m[(m >= 4) & (m <= MAX_POINTS)]):
        mine = np.flatnonzero(m == n)
        q = pts[first[mine][:, None] + np.arange(n)]  # (G, n, 3)
        vol_p, area, solid = _polytope_measures(q)
        size = c.hi[ks[mine]] - c.lo[ks[mine]] + 1
        volume[mine] = np.where(solid, vol_p + area + (size - 1).sum(1) + 1.0, np.nan)
    return volume, ~np.isnan(volume)


def _polytope_measures(q: np.ndarray) -> Tuple[np.ndarray, ...]:
    """For ``(G, n, 3)`` integer point sets: volume of each hull, the sum of its areas
    projected along the three axes, and whether it is solid (else both are NaN)."""
    g, n = q.shape[:2]
    tri, normal, side = _triple_planes(q)
    below, above = (side <= 0).all(-1), (side >= 0).all(-1)
    real = normal.any(-1)
    solid = ~(real & below & above).any(1)
    supporting = real & (below | above) & solid[:, None]
    normal = np.where(above[..., None], -normal, normal)  # outward: points on the <= side
    on = side == 0
    bits = (on * (1 << np.arange(n, dtype=I64))).sum(-1)
    gi, ti = np.nonzero(supporting)
    _, rep = np.unique(gi * (1 << n) + bits[gi, ti], return_index=True)  # one per facet
    gi, ti = gi[rep], ti[rep]
    member = on[gi, ti]  # (F, n)
    shared = np.zeros((g, n), dtype=I64)
    np.add.at(shared, gi, member.astype(I64))
    rim = member & (shared[gi] >= 2)
    nf = normal[gi, ti]
    j = np.argmax(np.abs(nf), axis=1)
    doubled = _polygon_areas(q[gi], rim, j)
    scale = doubled / np.abs(np.take_along_axis(nf, j[:, None], 1)[:, 0])
    offset = (nf * q[gi, tri[ti, 0]]).sum(1)
    vol = np.bincount(gi, scale * offset, g) / 6.0
    area = np.bincount(gi, scale * np.abs(nf).sum(1), g) / 4.0
    return np.where(solid, vol, np.nan), np.where(solid, area, np.nan), solid


def _triple_planes(q: np.ndarray) -> Tuple[np.ndarray, ...]:
    """For ``(G, n, 3)`` integer point sets, every triple of points ``tri`` ``(T, 3)``, the
    normal of its plane ``(G, T, 3)`` and each point's signed offset from it ``(G, T, n)``."""
    tri = np.array(list(itertools.combinations(range(q.shape[1]), 3)))
    p0 = q[:, tri[:, 0]]
    normal = np.cross(q[:, tri[:, 1]] - p0, q[:, tri[:, 2]] - p0)
    side = np.einsum("gtd,gnd->gtn", normal, q) - (normal * p0).sum(-1)[..., None]
    return tri, normal, side


def _polygon_areas(points: np.ndarray, rim: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Twice the area of each planar convex polygon (``rim`` marks its points among
    ``(F, n, 3)`` ``points``), projected along axis ``drop``: the points in order of angle
    about their centroid, then the shoelace formula on exact integer coordinates."""
    keep = np.array([[1, 2], [0, 2], [0, 1]])[drop]  # (F, 2)
    uv = np.take_along_axis(points, keep[:, None, :], 2).astype(np.float64)  # (F, n, 2)
    count = rim.sum(1, keepdims=True)
    centre = (uv * rim[..., None]).sum(1) / count
    angle = np.arctan2(uv[..., 1] - centre[:, 1:2], uv[..., 0] - centre[:, 0:1])
    order = np.argsort(np.where(rim, angle, np.inf), axis=1)
    uv = np.take_along_axis(uv, order[..., None], 1)
    # the points past the polygon's repeat its first one: their terms cancel
    past = np.arange(uv.shape[1])[None] >= count
    uv = np.where(past[..., None], uv[:, :1], uv)
    nxt = np.roll(uv, -1, axis=1)
    return np.abs((uv[..., 0] * nxt[..., 1] - uv[..., 1] * nxt[..., 0]).sum(1))


def small_hull_planes(c: VoxelComponents, ks: np.ndarray) -> dict:
    """Facet planes of the hulls of components ``ks`` (relative to each one's box, unit
    normals pointing out, ``n . p + d <= 0`` inside), for those with at most
    ``MAX_VOXELS`` voxels and ``MAX_POINTS`` extreme ones: ``{k: (F, 4) array}``.

    The hull is ``P`` plus the unit cube; a facet normal of such a Minkowski sum is a facet
    normal of ``P`` or of the cube, or normal to an edge of each. Candidates: the normals of
    triples of extreme voxels whose plane holds them all on one side, the axes, and each
    difference of two extreme voxels crossed with each axis. A candidate ``u`` is kept where
    the hull's face ``{p : u . p = max}`` (``P``'s face plus the cube's) spans a plane.
    """
    ks = ks[c.count[ks] <= MAX_VOXELS]
    if len(ks) == 0:
        return {}
    entry, pts = extreme_points(c, ks)
    m = np.bincount(entry, minlength=len(ks))
    first = np.r_[0, np.cumsum(m)[:-1]]
    out = {}
    for n in np.unique(m[m <= PLANE_POINTS]):
        mine = np.flatnonzero(m == n)
        q = pts[first[mine][:, None] + np.arange(n)]  # (G, n, 3)
        for g, eq in zip(ks[mine].tolist(), _minkowski_planes(q)):
            out[g] = eq
    return out


def _minkowski_planes(q: np.ndarray) -> list:
    """Per ``(n, 3)`` point set of ``q``, the facet planes of its hull plus the unit cube."""
    g, n = q.shape[:2]
    axes = np.eye(3, dtype=I64)
    pair = np.array(list(itertools.combinations(range(n), 2)), dtype=I64).reshape(-1, 2)
    edge = np.cross((q[:, pair[:, 1]] - q[:, pair[:, 0]])[:, :, None, :], axes).reshape(g, -1, 3)
    cand = [np.broadcast_to(np.r_[axes, -axes], (g, 6, 3)), edge, -edge]
    if n >= 3:  # the outward normals of triples whose plane holds all points on one side
        _, normal, side = _triple_planes(q)
        cand += [np.where((side <= 0).all(-1)[..., None], normal, 0),
                 np.where((side >= 0).all(-1)[..., None], -normal, 0)]
    u = np.concatenate(cand, 1)
    gi, ui = np.nonzero(u.any(-1))
    u = u[gi, ui] // np.gcd.reduce(np.abs(u[gi, ui]), axis=1)[:, None]  # one per direction
    order = np.lexsort((u[:, 2], u[:, 1], u[:, 0], gi))
    u, gi = u[order], gi[order]
    new = np.r_[True, (gi[1:] != gi[:-1]) | np.any(u[1:] != u[:-1], axis=1)]
    u, gi = u[new], gi[new]
    pts = q[gi]  # (C, n, 3)
    value = (u[:, None, :] * pts).sum(-1)
    top = value.max(1)
    face = value == top[:, None]  # the points on the supporting plane
    # the face's directions: from its first point to the others, and the axes u is normal to
    base = pts[np.arange(len(u)), np.argmax(face, 1)]
    dirs = np.where(face[..., None], pts - base[:, None], 0)
    dirs = np.concatenate([dirs, np.where((u == 0)[..., None], axes, 0)], 1)
    lead = dirs[np.arange(len(u)), np.argmax(dirs.any(-1), 1)]
    facet = np.cross(lead[:, None], dirs).any(-1).any(-1)  # the face spans a plane
    u, gi = u[facet], gi[facet]
    offset = top[facet] + np.maximum(u, 0).sum(1)  # the cube adds its corner furthest along u
    norm = np.sqrt((u ** 2).sum(1))
    eq = np.c_[u / norm[:, None], -offset / norm]
    return np.split(eq, np.searchsorted(gi, np.arange(1, g)))
