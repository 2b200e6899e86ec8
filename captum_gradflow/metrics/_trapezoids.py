"""Hulls cut into row trapezoids: rasterisation, overlapping pairs, and the exact area of
the union of overlapping hulls.

The hulls of ``_hulls`` have integer vertices, so between two consecutive integer heights
every hull is a trapezoid with exact rational boundaries. Rasterising them (pixel centres
inside or on a hull) and testing whether two of them overlap are exact integer comparisons.
Two hulls can only overlap inside rows where both have a trapezoid, so the overlapping pairs
are found per row, and only the rows with an overlap are measured: the union of their
trapezoids minus the sum of their areas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from captum_gradflow.metrics._ragged import expand, pairs_after

I64 = np.int64


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
        mask[expand(start, length)[1]] = True
    return mask.reshape(n, h, w)


def overlapping_pairs(t: Trapezoids, by_row: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs of trapezoids (indices into ``t``) of one row whose interiors overlap.

    ``by_row`` lists the trapezoids by row, then by the leftmost kept pixel of their
    component in that row. Candidates are trapezoids of the same row whose x ranges overlap
    (float, generous); the exact test: two trapezoids between heights 0 and 1 overlap with
    positive area iff their intervals overlap at height 0 or at height 1, or their midpoints
    swap order in between (their widths are positive inside, so a swap forces an overlap).
    """
    none = (np.zeros(0, dtype=I64), np.zeros(0, dtype=I64))
    if len(t.hull) < 2:
        return none
    lo = np.minimum(t.l0, t.l1) / t.dl
    hi = np.maximum(t.r0, t.r1) / t.dr + 1e-6
    # x stays within [0, w], far below the stride: row * stride + x keeps rows apart
    stride = float(np.ceil(max(hi.max(), 0.0)) + 4.0)
    cand = by_row[_meets_another(lo[by_row], hi[by_row], t.row[by_row] * stride)]
    if len(cand) < 2:
        return none
    # Sorted by (row, lo): the partners of i are the following entries of its row whose lo
    # is below hi_i.
    key = t.row[cand] * stride + lo[cand]
    order = np.argsort(key)
    key, order = key[order], cand[order]
    stop = np.searchsorted(key, t.row[order] * stride + hi[order], side="left")
    count = np.maximum(stop - np.arange(len(key)) - 1, 0)
    if count.sum() == 0:
        return none
    a, b = pairs_after(count)
    a, b = order[a], order[b]
    hit = _trapezoids_overlap(t, a, b)
    return a[hit], b[hit]


def _meets_another(lo: np.ndarray, hi: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Which x ranges ``[lo, hi]`` meet another of their row, for ranges listed by row and
    then by the leftmost kept pixel inside each (``shift`` keeps the rows apart).

    In that order a range starts at or before its pixel, left of every later range's pixel,
    and ends after its own pixel: ranges ``i`` before ``j`` meet iff ``lo_j < hi_i``. So
    ``j`` meets an earlier range iff ``lo_j`` is below the running maximum of ``hi`` before
    it, and ``i`` a later one iff ``hi_i`` exceeds the minimum of ``lo`` after it: no sort.
    """
    lo, hi = lo + shift, hi + shift
    meets = np.zeros(len(lo), dtype=bool)
    meets[1:] = lo[1:] < np.maximum.accumulate(hi)[:-1]
    meets[:-1] |= hi[:-1] > np.minimum.accumulate(lo[::-1])[::-1][1:]
    return meets


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
    involved = np.zeros(len(t.hull), dtype=bool)
    involved[a] = involved[b] = True
    members = np.flatnonzero(involved)
    members = members[np.argsort(t.row[members], kind="stable")]
    rows = t.row[members]
    first = np.r_[True, rows[1:] != rows[:-1]]
    seg = np.cumsum(first) - 1
    start = np.flatnonzero(first)
    k = np.diff(np.r_[start, len(members)])
    l0, l1 = t.l0[members] / t.dl[members], t.l1[members] / t.dl[members]
    r0, r1 = t.r0[members] / t.dr[members], t.r1[members] / t.dr[members]

    # all pairs inside each row, and the heights in (0, 1) where two boundaries cross
    i, j = pairs_after(start[seg] + k[seg] - 1 - np.arange(len(members)))
    cross_t, cross_seg = [np.zeros(len(start)), np.ones(len(start))], [np.arange(len(start))] * 2
    for p0, p1, q0, q1 in ((l0, l1, l0, l1), (r0, r1, r0, r1), (l0, l1, r0, r1), (r0, r1, l0, l1)):
        g0, g1 = p0[i] - q0[j], p1[i] - q1[j]
        x = np.flatnonzero(g0 * g1 < 0)  # indices: boolean masks this irregular are slow
        g0 = g0[x]
        cross_t.append(g0 / (g0 - g1[x]))
        cross_seg.append(seg[i[x]])
    ts, ss = np.concatenate(cross_t), np.concatenate(cross_seg)
    order = np.lexsort((ts, ss))
    ts, ss = ts[order], ss[order]

    # union length at every sample height: intervals sorted by left end, merged with a
    # running maximum of right ends (offset per sample so it restarts at each sample)
    size = k[ss]
    sample, member = expand(start[ss], size)
    tt = ts[sample]
    left = l0[member] + tt * (l1[member] - l0[member])
    right = r0[member] + tt * (r1[member] - r0[member])
    offset = sample * (float(max(right.max(), 0.0)) + 2.0)
    left += offset
    right += offset
    # one sort of the offset keys orders by sample, then by left end (x stays in [0, w])
    by_left = np.argsort(left, kind="stable")
    left, right = left[by_left], right[by_left]
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
