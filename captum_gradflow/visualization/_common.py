"""Shared converters and drawing helpers of the figures (2-D images; volumes are sliced first).

Coordinate convention (shared with :mod:`captum_gradflow.metrics`): ``x`` is the column and
``y`` the row, and pixel ``(r, c)`` is the unit square ``[c, c+1] x [r, r+1]``. Images are
drawn with ``extent=(0, W, H, 0)`` so region hulls land exactly on the pixels they cover.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Polygon as PolygonPatch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray]
_SIGNS = ("absolute", "all", "positive", "negative")
_HULL_COLOR = "#00e5ff"


def _numpy(t: Any, name: str) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().cpu().double().numpy()
    if isinstance(t, np.ndarray):
        return t.astype(np.float64)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(t).__name__}")


def _as_image(image: ArrayLike, name: str = "image") -> np.ndarray:
    """One image as ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB) floats scaled to [0, 1]."""
    a = _numpy(image, name)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(
            f"{name} must be one image of shape (H, W), (1 or 3, H, W) or (H, W, 1 or 3); "
            f"got {tuple(np.shape(image))}"
        )
    return _unit_range(a, name)


def _unit_range(a: np.ndarray, name: str) -> np.ndarray:
    """Image (or volume) values in [0, 1]; NaN or Inf is an error naming ``name``."""
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    lo, hi = a.min(), a.max()
    # Only rescale when the image leaves [0, 1]; a dark image must stay dark.
    return (a - lo) / (hi - lo) if (lo < 0 or hi > 1) and hi > lo else np.clip(a, 0, 1)


def _check_sign(sign: str) -> None:
    if sign not in _SIGNS:
        raise ValueError(f"sign must be one of {_SIGNS}, got {sign!r}")


def _signed_heat(a: np.ndarray, sign: str, channel_axis: Optional[int], shape: Tuple[int, ...],
                 name: str, what: str) -> np.ndarray:
    """One example's map following ``sign``: channels summed (of absolute values for
    ``"absolute"``) over ``channel_axis`` (None: no channel axis), checked against the
    ``shape`` of the ``what`` it is drawn on, and clipped for ``"positive"``/``"negative"``."""
    if sign == "absolute":
        a = np.abs(a)
    if channel_axis is not None:
        a = a.sum(channel_axis)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} reduces to shape {a.shape}, but the {what} is {tuple(shape)}")
    if sign == "positive":
        a = np.clip(a, 0, None)
    elif sign == "negative":
        a = np.clip(-a, 0, None)
    return a


def _as_heat(attr: ArrayLike, sign: str, shape: Tuple[int, int], name: str) -> np.ndarray:
    """Reduce an attribution of one example to an ``(H, W)`` map, following ``sign``."""
    _check_sign(sign)
    a = _numpy(attr, name)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    axis = None
    if a.ndim == 3:
        # Channels first unless the last axis is clearly the channel axis.
        axis = -1 if a.shape[-1] in (1, 3) and a.shape[:2] == shape else 0
    return _signed_heat(a, sign, axis, shape, name, "image")


def _polygon_vertex_lists(polygons: Any) -> List[np.ndarray]:
    """Shapely geometries or ``[(x, y), ...]`` vertex lists -> list of ``(k, 2)`` arrays."""
    if polygons is None:
        return []
    if hasattr(polygons, "geom_type"):  # one shapely geometry
        kind = polygons.geom_type
        if polygons.is_empty:
            return []
        if kind == "Polygon":
            return [np.asarray(polygons.exterior.coords, dtype=float)]
        if kind in ("MultiPolygon", "GeometryCollection"):
            return [v for g in polygons.geoms for v in _polygon_vertex_lists(g)]
        if kind in ("LineString", "LinearRing"):
            return [np.asarray(polygons.coords, dtype=float)]
        if kind in ("Point", "MultiPoint", "MultiLineString"):
            return []  # zero area: nothing to outline
        raise TypeError(f"cannot draw a shapely {kind} as a region outline")
    arr = None
    try:
        arr = np.asarray(polygons, dtype=float)
    except (TypeError, ValueError):
        pass  # ragged: a sequence of polygons
    if arr is not None and arr.ndim == 2 and arr.shape[1] == 2:
        if len(arr) < 2:
            raise ValueError(f"a polygon needs at least 2 vertices, got {len(arr)}")
        return [arr]
    if isinstance(polygons, (list, tuple)):
        return [v for p in polygons for v in _polygon_vertex_lists(p)]
    raise TypeError(
        "polygons must be shapely geometries, lists of (x, y) vertices, or sequences of them; "
        f"got {type(polygons).__name__}"
    )


def _draw_polygons(ax: Axes, polygons: Any, color: str = _HULL_COLOR) -> int:
    verts = _polygon_vertex_lists(polygons)
    for v in verts:
        ax.add_patch(PolygonPatch(v, closed=True, fill=False, edgecolor=color, linewidth=1.6))
    return len(verts)


def _image_axes(ax: Axes, img: np.ndarray, title: str) -> None:
    h, w = img.shape[:2]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1,
              extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Axes, heat: np.ndarray, sign: str, alpha: float, hide_zeros: bool,
             vmax: Optional[float] = None):
    h, w = heat.shape
    if vmax is None:
        vmax = float(np.nanmax(np.abs(heat))) if heat.size else 0.0
    vmax = vmax if vmax > 0 else 1.0
    if sign == "all":
        cmap, vmin = "RdBu_r", -vmax
    else:
        cmap, vmin = "inferno", 0.0
    shown = np.ma.masked_where(heat == 0, heat) if hide_zeros else heat
    return ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha,
                     extent=(0, w, h, 0), interpolation="nearest")


def _sign_label(sign: str) -> str:
    return {"absolute": "|attribution|", "all": "attribution", "positive": "attribution > 0",
            "negative": "−attribution > 0"}[sign]


def save_figure(fig: Figure, path: Union[str, Path], dpi: int = 120) -> Path:
    """Write ``fig`` as an image (format from the suffix) and free it; returns the path.

    Examples::

        >>> import tempfile, torch
        >>> from captum_gradflow.visualization import plot_attribution, save_figure
        >>> out = save_figure(plot_attribution(torch.rand(8, 8), torch.rand(8, 8)),
        ...                   tempfile.mkdtemp() + "/attr.png")
        >>> out.stat().st_size > 0
        True
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.clear()
    return path
