"""Volumes in figures: which slices to draw, and where region hulls cut them.

A volume ``(C, D, H, W)`` is shown as 2-D slices: three orthogonal slices through the voxel
where the attribution is largest (``view="orthogonal"``), or ``n_slices`` slices evenly
spaced along depth (``view="montage"``). A region hull (the convex hull of voxel cubes, with
vertices in voxel-corner coordinates ``(z, y, x)``) is outlined by its cross-section with the
plane through the slice's voxel centres.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from captum_gradflow.visualization._common import _check_sign, _numpy, _signed_heat, _unit_range

__all__ = ["VIEWS", "Slice", "is_volume", "volume_image", "volume_heat", "slice_plan",
           "take_slice", "hull_sections", "hull_lists", "plane_section"]

VIEWS = ("orthogonal", "montage")
Slice = Tuple[int, int]  # (axis of the volume: 0 = depth z, 1 = y, 2 = x; index)
_AXIS = ("z", "y", "x")


def is_volume(a: np.ndarray) -> bool:
    """One example ``(C, D, H, W)`` or ``(1, C, D, H, W)`` (an image is ``(1, C, H, W)``)."""
    if a.ndim == 5:
        return a.shape[0] == 1
    return a.ndim == 4 and not (a.shape[0] == 1 and a.shape[1] in (1, 3))


def _channels_first(a: np.ndarray, name: str) -> np.ndarray:
    a = a[0] if a.ndim == 5 else a
    if a.ndim != 4:
        raise ValueError(
            f"{name} must be one volume (C, D, H, W) or (1, C, D, H, W), got {a.shape}"
        )
    return a


def volume_image(image: Any, name: str = "image") -> np.ndarray:
    """``(D, H, W)`` gray (or ``(D, H, W, 3)`` colour) in [0, 1], scaled like images are."""
    a = _channels_first(_numpy(image, name), name)
    if a.shape[0] not in (1, 3):
        raise ValueError(f"{name}: a volume needs 1 or 3 channels, got {a.shape[0]}")
    return _unit_range(a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1), name)


def volume_heat(attr: Any, sign: str, shape: Sequence[int], name: str) -> np.ndarray:
    """One example's attribution as a ``(D, H, W)`` map following ``sign`` (channels reduced)."""
    _check_sign(sign)
    return _signed_heat(_channels_first(_numpy(attr, name), name), sign, 0, shape, name, "volume")


def slice_plan(heat: np.ndarray, view: str = "orthogonal", n_slices: int = 6) -> List[Slice]:
    """The slices to draw: orthogonal through the largest ``|heat|``, or a depth montage."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if view == "orthogonal":
        peak = np.unravel_index(int(np.argmax(np.abs(heat))), heat.shape)
        return [(axis, int(peak[axis])) for axis in range(3)]
    if isinstance(n_slices, bool) or not isinstance(n_slices, int) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive int, got {n_slices!r}")
    depth = heat.shape[0]
    return [(0, int(i)) for i in np.unique(np.linspace(0, depth - 1, min(n_slices, depth)).round())]


def take_slice(volume: np.ndarray, where: Slice) -> np.ndarray:
    """The 2-D slice of a ``(D, H, W[, 3])`` volume: rows and columns as drawn."""
    axis, index = where
    return np.take(volume, index, axis=axis)


def slice_title(where: Slice) -> str:
    return f"{_AXIS[where[0]]} = {where[1]}"


def hull_lists(hulls: Any, n: int, name: str) -> List[Optional[List[np.ndarray]]]:
    """Per example, a list of ``(V, 3)`` hull vertex arrays (from ``VolumeRegions`` or lists)."""
    if hulls is None:
        return [None] * n
    if hasattr(hulls, "hulls"):  # VolumeRegions
        hulls = hulls.hulls
    if len(hulls) != n:
        raise ValueError(f"{name} has {len(hulls)} entries for {n} volumes")
    return [None if h is None else [np.asarray(v, dtype=float) for v in h] for h in hulls]


def hull_sections(hulls: Optional[Sequence[np.ndarray]], where: Slice) -> List[np.ndarray]:
    """Outlines ``(k, 2)`` in ``(x = column, y = row)`` of the slice where the hulls cut it."""
    if not hulls:
        return []
    axis, index = where
    rings = []
    for vertices in hulls:
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(
                f"a volume hull must be (V, 3) vertices (z, y, x), got {vertices.shape}"
            )
        # the other two coordinates come (row, column) in order: drawn as (column, row)
        rings += [ring[:, ::-1] for ring in plane_section(vertices, axis, index + 0.5)]
    return rings


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
