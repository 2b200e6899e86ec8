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
from functools import cached_property
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


def component_hulls(
    labels: np.ndarray, inside: np.ndarray, n_labels: int
) -> Tuple["ChunkHulls", "Trapezoids", np.ndarray]:
    """Hulls of components ``1..n_labels`` of a 2-D label image, their row trapezoids, and
    the trapezoids listed by row, then by the leftmost pixel of their component there.

    ``labels`` and the bool ``inside = labels > 0`` carry one empty column on each side;
    the coordinates returned are those of the image without them.
    """
    if n_labels == 0:
        z = np.zeros(0, dtype=I64)
        none = np.zeros(0, dtype=bool)
        return ChunkHulls(z, z, z, z, none, none, z, z), Trapezoids.empty(), z
    lab, row, xl, xr, by_row = _row_spans(labels, inside, n_labels)
    new = np.r_[True, lab[1:] != lab[:-1]]
    first = np.flatnonzero(new)
    k = np.cumsum(new) - 1
    lx, rx, y, cid, pos = _chains(new, k, row, xl, xr)
    # chains of one or two points (components of one row) have nothing to prune
    chain_len = np.diff(np.r_[first, len(row)]) + 1
    work = np.flatnonzero(np.repeat(chain_len > 2, chain_len))
    left_alive = _prune(lx, y, cid, work, n_labels)
    right_alive = _prune(rx, y, cid, work, n_labels)
    l0, l1, dl, left_sum = _boundary_rows(lx, y, left_alive, pos, row)
    r0, r1, dr, right_sum = _boundary_rows(rx, y, right_alive, pos, row)
    # twice the area: per row, the right edge's two end x minus the left edge's (rx is -x)
    area2 = -np.add.reduceat(left_sum + right_sum, first)
    hulls = ChunkHulls(lx, rx, y, cid, left_alive, right_alive, area2, row[first])
    return hulls, Trapezoids(k, row, l0, l1, dl, -r0, -r1, dr), by_row


@dataclass(frozen=True)
class ChunkHulls:
    """Hulls of one chunk of maps before their vertices are gathered (only polygons need them).

    ``lx`` and ``rx`` are the left and the negated right chain of every hull with one point
    per integer height ``y`` (hull ``cid``), ``left_alive``/``right_alive`` mark the hull
    vertices among them; ``area2`` is twice each exact area, ``top`` each hull's first row.
    """

    lx: np.ndarray
    rx: np.ndarray
    y: np.ndarray
    cid: np.ndarray
    left_alive: np.ndarray
    right_alive: np.ndarray
    area2: np.ndarray
    top: np.ndarray

    def __len__(self) -> int:
        return len(self.area2)

    def vertices(self) -> Hulls:
        la, ra = self.left_alive, self.right_alive
        return Hulls(
            self.lx[la], self.y[la], self.cid[la], -self.rx[ra], self.y[ra], self.cid[ra],
            self.area2, self.top,
        )


class HullGeometry:
    """Hulls and row trapezoids of all chunks of a batch as one set, built on first use.

    Chunk ``i``'s rows move down by ``row0[i]`` and its hull indices follow those of the
    chunks before it. Only the mask and the polygons need the merged set.
    """

    def __init__(
        self, chunks: Sequence[ChunkHulls], trapezoids: Sequence["Trapezoids"],
        row0: Sequence[int],
    ) -> None:
        self._chunks, self._trapezoids, self._row0 = list(chunks), list(trapezoids), list(row0)

    @cached_property
    def hulls(self) -> Hulls:
        parts = [c.vertices() for c in self._chunks]
        k0 = np.cumsum([0] + [len(c) for c in self._chunks[:-1]])
        zero = [0] * len(parts)
        return Hulls(*(_cat(parts, f, d) for f, d in (
            ("lx", zero), ("ly", self._row0), ("lk", k0), ("rx", zero), ("ry", self._row0),
            ("rk", k0), ("area2", zero), ("top", self._row0))))

    @cached_property
    def trapezoids(self) -> "Trapezoids":
        k0 = np.cumsum([0] + [len(c) for c in self._chunks[:-1]])
        zero = [0] * len(self._trapezoids)
        return Trapezoids(*(_cat(self._trapezoids, f, d) for f, d in (
            ("hull", k0), ("row", self._row0), ("l0", zero), ("l1", zero), ("dl", zero),
            ("r0", zero), ("r1", zero), ("dr", zero))))


def _cat(parts: Sequence[object], name: str, shift: Sequence[int]) -> np.ndarray:
    return np.concatenate([getattr(p, name) + d for p, d in zip(parts, shift)])


def _row_spans(labels: np.ndarray, inside: np.ndarray, n_labels: int) -> Tuple[np.ndarray, ...]:
    """Per (label, row), sorted by label then row: the left edge and the right edge; and
    these entries listed by row, then by left edge (``by_row``)."""
    w = labels.shape[1] - 2
    # In a row padded with empty columns, runs start and end alternately where it changes.
    edge = np.flatnonzero(inside[:, 1:] ^ inside[:, :-1])
    start, stop = edge[0::2], edge[1::2]
    row = start // (w + 1)
    lab = labels.reshape(-1)[start + row + 1]  # the run's first pixel in the padded image
    # A stable sort by label keeps raster order inside a label (rows, then columns
    # ascend); on 16-bit keys NumPy's stable sort is a radix sort, several times faster.
    key = lab.astype(np.uint16) if n_labels < 2 ** 16 else lab
    order = np.argsort(key, kind="stable")
    lab, row, start, stop = lab[order], row[order], start[order], stop[order]
    change = (lab[1:] != lab[:-1]) | (row[1:] != row[:-1])
    first, last = np.r_[True, change], np.r_[change, True]
    # the (label, row) entries in raster order of their leftmost run, without a sort
    at = np.full(len(order), -1, dtype=I64)
    at[order[first]] = np.arange(int(first.sum()))
    by_row = at[at >= 0]
    return lab[first], row[first], start[first] % (w + 1), stop[last] % (w + 1), by_row


def _chains(
    new: np.ndarray, k: np.ndarray, row: np.ndarray, xl: np.ndarray, xr: np.ndarray
) -> Tuple[np.ndarray, ...]:
    """Left chain (x) and right chain (-x) of every component, one point per integer height.

    At height y between rows y - 1 and y the left boundary is the smaller of the two rows'
    left edges (the right boundary the larger of their right edges); the top and bottom
    heights take their single row's edges. Returns both chains, the heights, the hull of
    each point and where each row's top point is (``pos``).
    """
    last = np.r_[new[1:], True]
    m = len(row)
    pos = np.arange(m) + k  # one extra (bottom) point per earlier label
    bottom = pos[last] + 1
    size = m + int(k[-1]) + 1

    def chain(edge: np.ndarray, pick) -> np.ndarray:
        out = np.empty(size, dtype=I64)
        out[pos] = pick(edge, np.where(new, edge, np.r_[edge[:1], edge[:-1]]))
        out[bottom] = edge[last]
        return out

    y = np.empty(size, dtype=I64)
    y[pos] = row
    y[bottom] = row[last] + 1
    cid = np.empty(size, dtype=I64)
    cid[pos] = k
    cid[bottom] = k[last]
    return chain(xl, np.minimum), -chain(xr, np.maximum), y, cid, pos


def _prune(
    x: np.ndarray, y: np.ndarray, cid: np.ndarray, work: np.ndarray, n_chains: int
) -> np.ndarray:
    """Lower convex envelope of each chain (x as a function of y), by parallel removal.

    ``work`` are the points of the chains that may lose points (those of three or more).
    A chain with nothing removed in a pass is final and leaves the working set, so later
    passes only touch the few chains still changing. Returns which points are vertices.
    """
    alive = np.ones(len(x), dtype=bool)
    flag = np.zeros(n_chains, dtype=bool)
    idx = work
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
    return alive


def _boundary_rows(
    x: np.ndarray, y: np.ndarray, alive: np.ndarray, pos: np.ndarray, row: np.ndarray
) -> Tuple[np.ndarray, ...]:
    """One chain's boundary over each row ``row`` (from point ``pos`` to ``pos + 1``).

    The row lies on the hull edge between the last vertex at or above it and the first
    below it: at heights ``row`` and ``row + 1`` the boundary is ``n0 / d`` and
    ``(n0 + dx) / d``. Also returns the sum of the edge's two end x, twice the integral of
    x over the row (the trapezoid rule, exact for a straight edge).
    """
    if alive.all():  # nothing pruned: every row is its own edge
        before, after = pos, pos + 1
    else:
        at = np.arange(len(x))
        before = np.maximum.accumulate(np.where(alive, at, 0))[pos]
        after = np.minimum.accumulate(np.where(alive, at, len(x))[::-1])[::-1][pos + 1]
    xb, yb, xa = x[before], y[before], x[after]
    d, dx = y[after] - yb, xa - xb
    n0 = xb * d + (row - yb) * dx
    return n0, n0 + dx, d, xb + xa


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
