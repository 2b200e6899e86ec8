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

* between two consecutive integer heights every hull is a trapezoid with exact rational
  sides (``_trapezoids``), read off the chains without building edges;
* hull areas are exact: summed over the rows of one edge, the trapezoid rule gives twice the
  integral along that edge, so twice each hull's area is an integer (single rows need not be).

Speed. The maps of real networks give tens of thousands of rows per pass, so the cost is
the number of passes over arrays of that length: the code avoids boolean-mask indexing,
``np.where`` with irregular masks, ``reduceat`` and sorts on wide keys, which cost several
times an index gather there.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence, Tuple

import numpy as np
import shapely

from captum_gradflow.metrics._ragged import expand
from captum_gradflow.metrics._trapezoids import I64, Trapezoids


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
        ring, pos = expand(np.zeros(len(idx), dtype=I64), length)
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
) -> Tuple["ChunkHulls", "Trapezoids", np.ndarray]:
    """Hulls of components ``1..n_labels`` of a 2-D label image, their row trapezoids, and
    the trapezoids listed by row, then by the leftmost pixel of their component there.

    ``labels`` and the bool ``inside = labels > 0`` carry one empty column on each side;
    the coordinates returned are those of the image without them.
    """
    if n_labels == 0:
        z = np.zeros(0, dtype=I64)
        side = Chain(z, z, np.zeros(0, dtype=bool))
        return ChunkHulls(side, side, z, z, z, z, z), Trapezoids.empty(), z
    rows, left, right, by_row = _rows_and_chains(labels, inside, n_labels)
    l0, l1, dl, left_sum = _boundary_rows(left, rows)
    r0, r1, dr, right_sum = _boundary_rows(right, rows)
    # twice the area: per row, the right edge's two end x minus the left edge's
    both = left_sum + right_sum
    total = np.cumsum(both)
    area2 = total[rows.first] - total[rows.last] - both[rows.first]
    hulls = ChunkHulls(left, right, rows.row, rows.k, rows.y_bottom, area2, rows.row[rows.first])
    return hulls, Trapezoids(rows.k, rows.row, l0, l1, dl, -r0, -r1, dr), by_row


def _rows_and_chains(
    labels: np.ndarray, inside: np.ndarray, n_labels: int
) -> Tuple["_Rows", "Chain", "Chain", np.ndarray]:
    """The rows of all hulls, their left and (negated) right chains pruned to the hull
    vertices, and the rows listed by row, then by left edge."""
    lab, row, xl, xr, by_row = _row_spans(labels, inside, n_labels)
    new = np.empty(len(lab), dtype=bool)
    new[0] = True
    np.not_equal(lab[1:], lab[:-1], out=new[1:])
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(lab) - 1]
    rows = _Rows(new, first, last, np.cumsum(new) - 1, row, row[last] + 1)
    # the right chain is the lower envelope of -x: one code for both sides
    left = _envelope(_chain(xl, np.minimum, rows), rows)
    right = _envelope(_chain(xr, np.maximum, rows, negate=True), rows)
    return rows, left, right, by_row


@dataclass(frozen=True)
class _Rows:
    """The rows of all hulls, by hull then row: ``new`` marks each hull's first row,
    ``first``/``last`` index each hull's first and last row, ``k`` is the hull of each row,
    ``y_bottom`` the height below each hull's last row."""

    new: np.ndarray
    first: np.ndarray
    last: np.ndarray
    k: np.ndarray
    row: np.ndarray
    y_bottom: np.ndarray


@dataclass(frozen=True)
class Chain:
    """One side of every hull as a chain with one point per integer height: ``top`` the x
    at the top of each row (by hull, then row), ``bottom`` the x below each hull's last row;
    ``alive`` marks the top points that are hull vertices (the first and the bottom one of
    each hull always are)."""

    top: np.ndarray
    bottom: np.ndarray
    alive: np.ndarray


@dataclass(frozen=True)
class ChunkHulls:
    """Hulls of one chunk of maps before their vertices are gathered (only polygons need them).

    ``left`` and ``right`` are the left and the negated right chains (rows ``row`` of hull
    ``k``, heights ``y_bottom`` below each hull); ``area2`` is twice each exact area,
    ``top`` each hull's first row.
    """

    left: Chain
    right: Chain
    row: np.ndarray
    k: np.ndarray
    y_bottom: np.ndarray
    area2: np.ndarray
    top: np.ndarray

    def __len__(self) -> int:
        return len(self.area2)

    def vertices(self) -> Hulls:
        lx, ly, lk = self._vertices(self.left)
        rx, ry, rk = self._vertices(self.right)
        return Hulls(lx, ly, lk, -rx, ry, rk, self.area2, self.top)

    def _vertices(self, chain: Chain) -> Tuple[np.ndarray, ...]:
        """A side's vertices in chain order: each hull's live top points, then its bottom."""
        n = len(self)
        live = np.flatnonzero(chain.alive)
        k = self.k[live]
        # each earlier hull puts its bottom point before a top point
        at_top = np.arange(len(live)) + k
        at_bottom = np.cumsum(np.bincount(k, minlength=n)) + np.arange(n)
        x, y, kk = (np.empty(len(live) + n, dtype=I64) for _ in range(3))
        x[at_top], y[at_top], kk[at_top] = chain.top[live], self.row[live], k
        x[at_bottom], y[at_bottom], kk[at_bottom] = chain.bottom, self.y_bottom, np.arange(n)
        return x, y, kk


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
        self._k0 = np.cumsum([0] + [len(c) for c in self._chunks[:-1]])  # first hull of each chunk

    @cached_property
    def hulls(self) -> Hulls:
        parts = [c.vertices() for c in self._chunks]
        k0 = self._k0
        zero = [0] * len(parts)
        return Hulls(*(_cat(parts, f, d) for f, d in (
            ("lx", zero), ("ly", self._row0), ("lk", k0), ("rx", zero), ("ry", self._row0),
            ("rk", k0), ("area2", zero), ("top", self._row0))))

    @cached_property
    def trapezoids(self) -> "Trapezoids":
        k0 = self._k0
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
    change = np.empty(len(lab), dtype=bool)
    change[0] = True
    np.not_equal(lab[1:], lab[:-1], out=change[1:])
    change[1:] |= row[1:] != row[:-1]
    first = np.flatnonzero(change)
    last = np.r_[first[1:] - 1, len(lab) - 1]
    # the (label, row) entries in raster order of their leftmost run, without a sort
    raster = order[first]
    at = np.empty(len(order), dtype=I64)
    at[raster] = np.arange(len(first))
    mark = np.zeros(len(order), dtype=bool)
    mark[raster] = True
    by_row = at[np.flatnonzero(mark)]
    row, x0 = row[first], start[first]
    x0 -= row * (w + 1)  # cheaper than % (w + 1)
    x1 = stop[last] - row * (w + 1)
    return lab[first], row, x0, x1, by_row


def _chain(edge: np.ndarray, pick, rows: _Rows, negate: bool = False) -> Chain:
    """A side's chain before pruning: at height y between rows y - 1 and y the left boundary
    is the smaller of the two rows' left edges (the right boundary the larger of their
    right edges); the top and bottom heights take their single row's edges. ``negate``
    gives -x."""
    top = np.empty_like(edge)
    top[0] = edge[0]
    pick(edge[1:], edge[:-1], out=top[1:])
    top[rows.first] = edge[rows.first]
    bottom = edge[rows.last]
    if negate:
        np.negative(top, out=top)
        np.negative(bottom, out=bottom)
    return Chain(top, bottom, np.ones(len(edge), dtype=bool))


def _next(chain: Chain, rows: _Rows) -> np.ndarray:
    """The x of each top point's successor on its chain (the bottom point after a hull's
    last row)."""
    nxt = np.empty_like(chain.top)
    nxt[:-1] = chain.top[1:]
    nxt[rows.last] = chain.bottom
    return nxt


def _envelope(chain: Chain, rows: _Rows) -> Chain:
    """The chain's lower convex envelope (x as a function of y): its vertices ``alive``.

    The first pass of the parallel removal needs no gathering: heights are consecutive, so
    a point is on or right of its neighbours' chord when twice its x is at least their sum.
    Only the hulls that lost a point go on to :func:`_prune`.
    """
    x = chain.top
    nxt = _next(chain, rows)
    drop = x + x
    drop = drop[1:] >= x[:-1] + nxt[1:]
    drop[rows.first[1:] - 1] = False  # a hull's first point stays
    if not drop.any():
        return chain
    alive = np.ones(len(x), dtype=bool)
    alive[1:] = ~drop
    m, n = len(x), len(chain.bottom)
    lost = np.zeros(n, dtype=bool)
    lost[rows.k[np.flatnonzero(drop) + 1]] = True
    # the remaining points of those hulls, in chain order over [top points, bottom points]
    live = np.flatnonzero(alive & lost[rows.k])
    hulls = np.flatnonzero(lost)
    rank = np.cumsum(lost) - 1
    work = np.empty(len(live) + len(hulls), dtype=I64)
    work[np.arange(len(live)) + rank[rows.k[live]]] = live
    ends = np.cumsum(np.bincount(rows.k[live], minlength=n))[hulls] + np.arange(len(hulls))
    work[ends] = m + hulls
    kept = _prune(
        np.r_[x, chain.bottom], np.r_[rows.row, rows.y_bottom], np.r_[rows.k, np.arange(n)],
        work, n,
    )
    alive &= kept[:m]
    return Chain(x, chain.bottom, alive)


def _prune(
    x: np.ndarray, y: np.ndarray, cid: np.ndarray, work: np.ndarray, n_chains: int
) -> np.ndarray:
    """Lower convex envelope of each chain (x as a function of y), by parallel removal.

    ``work`` are the points of the chains that may lose points, in chain order. A point on
    or right of its neighbours' chord is never a vertex of the envelope, so all such points
    go at once; a chain with nothing removed in a pass is final and leaves the working set,
    so later passes only touch the few chains still changing. Returns which points are left.
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


def _boundary_rows(chain: Chain, rows: _Rows) -> Tuple[np.ndarray, ...]:
    """One side's boundary over each row: ``(n0, n1, d, s)``.

    The row lies on the hull edge from the last vertex at or above it to the first below
    it: at the row's top and bottom heights the boundary is ``n0 / d`` and ``n1 / d``.
    ``s``: summed over the rows of one edge, twice the integral of x along that edge (the
    trapezoid rule, exact for a straight edge); a single row's ``s`` need not be its own.
    """
    if chain.alive.all():  # nothing pruned: every row is its own edge
        nxt = _next(chain, rows)
        return chain.top, nxt, np.ones(len(nxt), dtype=I64), chain.top + nxt
    return _edges_over_rows(chain, rows)


def _edges_over_rows(chain: Chain, rows: _Rows) -> Tuple[np.ndarray, ...]:
    """:func:`_boundary_rows` where vertices were removed: each row's enclosing edge."""
    x, m = chain.top, len(chain.top)
    live = np.flatnonzero(chain.alive)
    seen = np.cumsum(chain.alive)  # vertices up to each row's top point
    before = live[seen - 1]
    after = np.r_[live, m][seen]  # the first vertex below the row's top point
    # past a hull's last top vertex the edge ends at the hull's bottom point, which sits
    # at m + k in the points [top points, bottom points]
    cross = np.r_[rows.new, True][after]
    after += cross * (m + rows.k - after)
    xa = np.r_[x, chain.bottom][after]
    ya = np.r_[rows.row, rows.y_bottom][after]
    xb, yb = x[before], rows.row[before]
    d, dx = ya - yb, xa - xb
    n0 = xb * d + (rows.row - yb) * dx
    return n0, n0 + dx, d, xb + xa
