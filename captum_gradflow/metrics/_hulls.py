"""Batched convex hulls of labelled pixel components, in exact integer arithmetic.

Why not one shapely call per component: attribution maps of real networks have hundreds to
thousands of components each, and per-component Python (or per-point GEOS objects) costs
milliseconds per map. Everything here is vectorised over all components of all maps.

Geometry. Pixel ``(r, c)`` is the square ``[c, c + 1] x [r, r + 1]`` (x = column, y = row).
A component occupies a contiguous range of rows; per row, only its leftmost and rightmost
pixel edges matter for the hull. The hull's left boundary is the lower convex envelope of
those left edges as a function of y (its right boundary the upper envelope of the right
edges), so each hull is two y-monotone chains, found by removing in parallel every point
that is not strictly convex w.r.t. its neighbours until none is left (a removed point is
never a vertex of the envelope, so removing many at once is safe). All vertices are integer
points, hence:

* hull areas come exactly from the shoelace formula;
* between two consecutive integer heights every hull is a trapezoid, so the rasterisation
  (pixel centres inside or on a hull) and the test whether two hulls overlap are exact
  integer comparisons;
* only groups of hulls that really overlap need a polygon union (shapely), for the exact
  area of the union.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import shapely

I64 = np.int64


@dataclass(frozen=True)
class Hulls:
    """Hulls of all components, ordered by label (label ``k + 1`` is hull ``k``).

    Each hull is its left chain ``(lx, ly)`` and right chain ``(rx, ry)``, both top to bottom,
    in stacked coordinates: x = column, y = row of the stacked label image (example ``i``
    starts at row ``i * (h + 1)``); ``lk``/``rk`` give the hull of each point. ``area2`` is
    twice each exact area; ``top`` the first row of each hull.
    """

    lx: np.ndarray
    ly: np.ndarray
    lk: np.ndarray
    rx: np.ndarray
    ry: np.ndarray
    rk: np.ndarray
    area2: np.ndarray
    top: np.ndarray

    def __len__(self) -> int:
        return len(self.area2)

    def polygons(self, idx: np.ndarray, row_shift: np.ndarray) -> np.ndarray:
        """Shapely polygons of hulls ``idx``, moved up by ``row_shift`` rows each.

        Rings are the left chain top to bottom, the right chain bottom to top, closed.
        """
        idx = np.asarray(idx, dtype=I64)
        if len(idx) == 0:
            return np.empty(0, dtype=object)
        n = len(self)
        n_left = np.bincount(self.lk, minlength=n)
        n_right = np.bincount(self.rk, minlength=n)
        left0 = np.r_[0, np.cumsum(n_left)[:-1]]
        right0 = np.r_[0, np.cumsum(n_right)[:-1]]
        nl, nr = n_left[idx], n_right[idx]
        length = nl + nr + 1
        ring = np.repeat(np.arange(len(idx)), length)
        pos = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length)
        on_left = pos < nl[ring]
        on_right = ~on_left & (pos < length[ring] - 1)
        li = np.where(on_left, left0[idx][ring] + pos, left0[idx][ring])  # closing -> first
        ri = right0[idx][ring] + (nr[ring] - 1 - (pos - nl[ring]))
        x = np.where(on_right, self.rx[np.where(on_right, ri, 0)], self.lx[li])
        y = np.where(on_right, self.ry[np.where(on_right, ri, 0)], self.ly[li])
        xy = np.stack([x, y - np.repeat(np.asarray(row_shift, dtype=I64), length)], 1)
        rings = np.r_[0, np.cumsum(length)].astype(I64)
        return shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, xy.astype(np.float64),
            (rings, np.arange(len(idx) + 1, dtype=I64)),
        )


def component_hulls(
    labels: np.ndarray, inside: np.ndarray, n_labels: int
) -> Tuple[Hulls, "Trapezoids"]:
    """Hulls of components ``1..n_labels`` of a 2-D label image, and their row trapezoids.

    ``labels`` and the bool ``inside = labels > 0`` carry one empty column on each side;
    the coordinates returned are those of the image without them.
    """
    if n_labels == 0:
        z = np.zeros(0, dtype=I64)
        return Hulls(z, z, z, z, z, z, z, z), Trapezoids.empty()
    lab, row, xl, xr = _row_spans(labels, inside)
    top = row[np.r_[True, lab[1:] != lab[:-1]]]
    x, y, cid = _chains(lab, row, xl, xr)
    x, y, cid = _prune(x, y, cid)
    left = cid % 2 == 0
    lx, ly, lk = x[left], y[left], cid[left] // 2
    rx, ry, rk = -x[~left], y[~left], cid[~left] // 2
    # twice the area: integral of x dy along the right chain minus along the left chain
    area2 = _integral_x_dy(rx, ry, rk, n_labels) - _integral_x_dy(lx, ly, lk, n_labels)
    hulls = Hulls(lx, ly, lk, rx, ry, rk, area2, top)
    return hulls, _trapezoids(lx, ly, lk, rx, ry, rk)


def concat_hulls(
    hulls: Sequence[Hulls], trapezoids: Sequence["Trapezoids"], row0: Sequence[int]
) -> Tuple[Hulls, "Trapezoids"]:
    """Hulls and trapezoids of consecutive chunks of maps as one set: chunk ``i``'s rows
    move down by ``row0[i]`` and its hull indices follow those of the chunks before it."""
    if len(hulls) == 1:
        return hulls[0], trapezoids[0]
    k0 = np.cumsum([0] + [len(h) for h in hulls[:-1]])

    def cat(parts, name, shift):
        return np.concatenate([getattr(p, name) + d for p, d in zip(parts, shift)])

    zero = [0] * len(hulls)
    merged = Hulls(*(cat(hulls, f, d) for f, d in (
        ("lx", zero), ("ly", row0), ("lk", k0), ("rx", zero), ("ry", row0), ("rk", k0),
        ("area2", zero), ("top", row0))))
    merged_t = Trapezoids(*(cat(trapezoids, f, d) for f, d in (
        ("hull", k0), ("row", row0), ("l0", zero), ("l1", zero), ("dl", zero), ("r0", zero),
        ("r1", zero), ("dr", zero))))
    return merged, merged_t


def _integral_x_dy(x: np.ndarray, y: np.ndarray, k: np.ndarray, n: int) -> np.ndarray:
    """Per chain, twice the integral of x dy (trapezoid rule, exact for straight edges)."""
    same = k[1:] == k[:-1]
    term = (x[1:] + x[:-1]) * (y[1:] - y[:-1])
    return np.bincount(k[:-1][same], weights=term[same], minlength=n).astype(I64)


def _row_spans(labels: np.ndarray, inside: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Per (label, row), sorted by label then row: the left edge and the right edge."""
    n_rows, w = labels.shape[0], labels.shape[1] - 2
    # In a row padded with empty columns, runs start and end alternately where it changes.
    edge = np.flatnonzero(inside[:, 1:] ^ inside[:, :-1])
    row, start, stop = edge[0::2] // (w + 1), edge[0::2] % (w + 1), edge[1::2] % (w + 1)
    lab = labels[row, start + 1].astype(I64)
    # Stable sort by label keeps raster order inside a label: rows ascend, columns ascend.
    order = np.argsort(lab, kind="stable")
    lab, row, start, stop = lab[order], row[order], start[order], stop[order]
    key = lab * n_rows + row
    first = np.r_[True, key[1:] != key[:-1]]
    last = np.r_[key[1:] != key[:-1], True]
    return lab[first], row[first], start[first], stop[last]


def _chains(
    lab: np.ndarray, row: np.ndarray, xl: np.ndarray, xr: np.ndarray
) -> Tuple[np.ndarray, ...]:
    """Left chain (x) and right chain (-x) of every component, one point per integer height.

    At height y between rows y - 1 and y the left boundary is the smaller of the two rows'
    left edges (the right boundary the larger of their right edges); the top and bottom
    heights take their single row's edges. Chain ``2k`` is hull k's left, ``2k + 1`` its right.
    """
    new = np.r_[True, lab[1:] != lab[:-1]]
    last = np.r_[lab[1:] != lab[:-1], True]
    k = np.cumsum(new) - 1
    m, n_lab = len(lab), int(k[-1]) + 1
    pos = np.arange(m) + k  # one extra (bottom) point per earlier label
    bottom = np.flatnonzero(last)
    size = m + n_lab

    def chain(edge: np.ndarray, pick) -> np.ndarray:
        prev = np.where(new, edge, np.r_[edge[:1], edge[:-1]])
        out = np.empty(size, dtype=I64)
        out[pos] = pick(edge, prev)
        out[pos[bottom] + 1] = edge[bottom]
        return out

    y = np.empty(size, dtype=I64)
    y[pos] = row
    y[pos[bottom] + 1] = row[bottom] + 1
    kk = np.empty(size, dtype=I64)
    kk[pos] = k
    kk[pos[bottom] + 1] = k[bottom]
    x = np.concatenate([chain(xl, np.minimum), -chain(xr, np.maximum)])
    return x, np.concatenate([y, y]), np.concatenate([2 * kk, 2 * kk + 1])


def _prune(x: np.ndarray, y: np.ndarray, cid: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Lower convex envelope of each chain (x as a function of y), by parallel removal.

    A chain with nothing removed in a pass is final and leaves the working set, so later
    passes only touch the few chains still changing; chains of one or two points (components
    of one row) never enter it.
    """
    alive = np.ones(len(x), dtype=bool)
    start = np.r_[True, cid[1:] != cid[:-1]]
    chain_len = np.diff(np.r_[np.flatnonzero(start), len(x)])
    idx = np.flatnonzero(np.repeat(chain_len > 2, chain_len))
    flag = np.zeros(int(cid.max()) + 1 if len(cid) else 0, dtype=bool)
    while len(idx) >= 3:
        xs, ys, cs = x[idx], y[idx], cid[idx]
        inner = (cs[1:-1] == cs[:-2]) & (cs[1:-1] == cs[2:])
        dx0, dy0 = xs[1:-1] - xs[:-2], ys[1:-1] - ys[:-2]
        dx2, dy2 = xs[2:] - xs[:-2], ys[2:] - ys[:-2]
        drop = np.flatnonzero(inner & (dx0 * dy2 >= dx2 * dy0)) + 1  # on/right of the chord
        if len(drop) == 0:
            break
        alive[idx[drop]] = False
        flag[cs[drop]] = True
        active = flag[cs]
        flag[cs[drop]] = False
        active[drop] = False
        idx = idx[active]
    return x[alive], y[alive], cid[alive]


@dataclass(frozen=True)
class Trapezoids:
    """Each hull cut at consecutive integer heights ``row`` and ``row + 1``.

    Left boundary at ``row`` is ``l0 / dl`` and at ``row + 1`` is ``l1 / dl``; right boundary
    ``r0 / dr``, ``r1 / dr`` (exact rationals, positive denominators). ``hull`` is the index.
    """

    hull: np.ndarray
    row: np.ndarray
    l0: np.ndarray
    l1: np.ndarray
    dl: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    dr: np.ndarray

    @staticmethod
    def empty() -> "Trapezoids":
        z = np.zeros(0, dtype=I64)
        return Trapezoids(z, z, z, z, z, z, z, z)


def _edge_rows(x, y, k) -> Tuple[np.ndarray, ...]:
    """Expand a chain's edges to one entry per integer row they span."""
    same = k[1:] == k[:-1]
    xa, ya, xb, yb, kk = x[:-1][same], y[:-1][same], x[1:][same], y[1:][same], k[:-1][same]
    span = yb - ya
    if (span == 1).all():  # nothing pruned: one row per edge
        return kk, ya, xa, xb, span
    # repeating each edge's values is cheaper than gathering them through an index
    step = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
    d, dx = np.repeat(span, span), np.repeat(xb - xa, span)
    n0 = np.repeat(xa, span) * d + step * dx
    return np.repeat(kk, span), np.repeat(ya, span) + step, n0, n0 + dx, d


def _trapezoids(lx, ly, lk, rx, ry, rk) -> Trapezoids:
    # Both chains of a hull cover the same rows in the same order, so entries align 1:1.
    hull, row, l0, l1, dl = _edge_rows(lx, ly, lk)
    _, _, r0, r1, dr = _edge_rows(rx, ry, rk)
    return Trapezoids(hull, row, l0, l1, dl, r0, r1, dr)


def rasterise(t: Trapezoids, examples: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(len(examples), h, w)`` bool: pixels whose centre lies inside or on a hull.

    ``examples`` are positions in the stacked image (example ``i`` starts at row
    ``i * (h + 1)``). At the pixel-centre height the left boundary is ``(l0 + l1) / (2 dl)``;
    pixel ``c`` is in when ``c + 1/2`` lies between the two boundaries, decided in integers.
    """
    n = len(examples)
    mask = np.zeros(n * h * w, dtype=bool)
    if len(t.hull) and n:
        where = np.full(int(max(examples.max(), t.row.max() // (h + 1))) + 1, -1, dtype=I64)
        where[examples] = np.arange(n)
        slot = where[t.row // (h + 1)]
        sel = slot >= 0
        nl = t.l0[sel] + t.l1[sel] - t.dl[sel]
        nr = t.r0[sel] + t.r1[sel] - t.dr[sel]
        c0 = np.clip(-((-nl) // (2 * t.dl[sel])), 0, w)
        c1 = np.clip(nr // (2 * t.dr[sel]) + 1, 0, w)
        start = (slot[sel] * h + t.row[sel] % (h + 1)) * w + c0
        length = np.maximum(c1 - c0, 0)
        # fill each row run directly: work grows with the covered pixels, not the image
        run_start = np.cumsum(length) - length
        mask[np.repeat(start - run_start, length) + np.arange(int(length.sum()))] = True
    return mask.reshape(n, h, w)


def overlapping_pairs(t: Trapezoids) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs of trapezoids (indices into ``t``) of one row whose interiors overlap.

    Candidates are trapezoids of the same row whose x ranges overlap (float, generous); the
    exact test: two trapezoids between heights 0 and 1 overlap with positive area iff their
    intervals overlap at height 0 or at height 1, or their midpoints swap order in between
    (their widths are positive inside, so a swap forces an overlap).
    """
    none = (np.zeros(0, dtype=I64), np.zeros(0, dtype=I64))
    if len(t.hull) < 2:
        return none
    lo = np.minimum(t.l0, t.l1) / t.dl
    hi = np.maximum(t.r0, t.r1) / t.dr
    # Sorted by (row, lo): the partners of i are the following entries of its row whose lo
    # is below hi_i. The key keeps rows apart (x stays within [0, w], far below the stride).
    stride = float(np.ceil(max(hi.max(), 0.0)) + 4.0)
    key = t.row * stride + lo
    order = np.argsort(key)
    key, hi_s = key[order], hi[order]
    stop = np.searchsorted(key, t.row[order] * stride + hi_s + 1e-6, side="left")
    count = np.maximum(stop - np.arange(len(key)) - 1, 0)
    if count.sum() == 0:
        return none
    a = np.repeat(np.arange(len(key)), count)
    b = a + 1 + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    a, b = order[a], order[b]
    hit = _trapezoids_overlap(t, a, b)
    return a[hit], b[hit]


def union_correction(t: Trapezoids, a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per row with overlaps: area of the union of its overlapping trapezoids minus their sum.

    Inside one row every boundary is a straight segment, so the length of the union of the
    cross-sections is linear between the heights where two boundaries cross; it is
    evaluated at those heights (sorting and merging the intervals) and integrated by the
    trapezoid rule, which is exact for a piecewise-linear function. Returns ``(rows,
    correction)`` with ``correction <= 0``.
    """
    if len(a) == 0:
        return np.zeros(0, dtype=I64), np.zeros(0)
    members = np.unique(np.r_[a, b])
    members = members[np.argsort(t.row[members], kind="stable")]
    rows = t.row[members]
    first = np.r_[True, rows[1:] != rows[:-1]]
    seg = np.cumsum(first) - 1
    start = np.flatnonzero(first)
    k = np.diff(np.r_[start, len(members)])
    l0, l1 = t.l0[members] / t.dl[members], t.l1[members] / t.dl[members]
    r0, r1 = t.r0[members] / t.dr[members], t.r1[members] / t.dr[members]

    # all pairs inside each row, and the heights in (0, 1) where two boundaries cross
    pos = np.arange(len(members)) - start[seg]
    n_after = k[seg] - 1 - pos
    i = np.repeat(np.arange(len(members)), n_after)
    j = i + 1 + np.arange(int(n_after.sum())) - np.repeat(np.cumsum(n_after) - n_after, n_after)
    cross_t, cross_seg = [np.zeros(len(start)), np.ones(len(start))], [np.arange(len(start))] * 2
    for p0, p1, q0, q1 in ((l0, l1, l0, l1), (r0, r1, r0, r1), (l0, l1, r0, r1), (r0, r1, l0, l1)):
        g0, g1 = p0[i] - q0[j], p1[i] - q1[j]
        x = g0 * g1 < 0
        cross_t.append(g0[x] / (g0[x] - g1[x]))
        cross_seg.append(seg[i[x]])
    ts, ss = np.concatenate(cross_t), np.concatenate(cross_seg)
    order = np.lexsort((ts, ss))
    ts, ss = ts[order], ss[order]

    # union length at every sample height: intervals sorted by left end, merged with a
    # running maximum of right ends (offset per sample so it restarts at each sample)
    size = k[ss]
    sample = np.repeat(np.arange(len(ts)), size)
    member = start[ss][sample] + np.arange(int(size.sum()))
    member -= np.repeat(np.cumsum(size) - size, size)
    tt = ts[sample]
    left = l0[member] + tt * (l1[member] - l0[member])
    right = r0[member] + tt * (r1[member] - r0[member])
    offset = sample * (float(max(right.max(), 0.0)) + 2.0)
    by_left = np.lexsort((left, sample))
    left, right = left[by_left] + offset[by_left], right[by_left] + offset[by_left]
    covered = np.maximum.accumulate(right)
    reach = np.maximum(left, np.r_[-np.inf, covered[:-1]])
    length = np.bincount(sample[by_left], weights=np.maximum(right - reach, 0.0), minlength=len(ts))

    same = ss[1:] == ss[:-1]
    piece = np.diff(ts) * (length[1:] + length[:-1]) / 2.0
    union = np.bincount(ss[:-1][same], weights=piece[same], minlength=len(start))
    own = np.bincount(seg, weights=((r0 - l0) + (r1 - l1)) / 2.0, minlength=len(start))
    return rows[start], np.minimum(union - own, 0.0)


def _less(n1: np.ndarray, d1: np.ndarray, n2: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """``n1 / d1 < n2 / d2`` for positive denominators, exactly."""
    return n1 * d2 < n2 * d1


def _trapezoids_overlap(t: Trapezoids, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def at(i, top: bool):
        return (t.l0[i] if top else t.l1[i]), t.dl[i], (t.r0[i] if top else t.r1[i]), t.dr[i]

    hit = np.zeros(len(a), dtype=bool)
    sign = []
    for top in (True, False):
        la, dla, ra, dra = at(a, top)
        lb, dlb, rb, drb = at(b, top)
        hit |= _less(lb, dlb, ra, dra) & _less(la, dla, rb, drb)
        # midpoint order: (la/dla + ra/dra) vs (lb/dlb + rb/drb), over common denominators
        ma = (la * dra + ra * dla) * (dlb * drb)
        mb = (lb * drb + rb * dlb) * (dla * dra)
        sign.append(np.sign(ma - mb))
    return hit | (sign[0] * sign[1] < 0)
