"""Attribution figures: one map with its region hulls, and GAD against its base method."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from captum_gradflow.visualization.volumes import (
    hull_lists,
    hull_sections,
    is_volume,
    slice_plan,
    slice_title,
    take_slice,
    volume_heat,
    volume_image,
)
from captum_gradflow.visualization._common import (
    ArrayLike,
    _as_heat,
    _as_image,
    _draw_polygons,
    _image_axes,
    _numpy,
    _overlay,
    _sign_label,
)

__all__ = ["plot_attribution", "plot_gad_comparison"]


def plot_attribution(
    image: ArrayLike,
    attribution: ArrayLike,
    polygons: Any = None,
    title: str = "attribution",
    sign: str = "absolute",
    alpha: float = 0.6,
    hide_zeros: bool = True,
    ax: Optional[Axes] = None,
    view: str = "orthogonal",
    n_slices: int = 6,
) -> Figure:
    """Image with the attribution as a heat map on top and region hulls outlined.

    A volume is drawn as three orthogonal slices through the attribution's maximum
    (``view="orthogonal"``) or as ``n_slices`` slices along depth (``view="montage"``), each
    with the cross-sections of the region hulls it cuts.

    Args:
        image: One image, ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` with C in {1, 3}, or
            one volume ``(C, D, H, W)`` or ``(1, C, D, H, W)``.
        attribution: Attribution of that image, same spatial size; channels are reduced (sum
            of absolute values for ``sign="absolute"``, plain sum otherwise).
        polygons: Region hulls to outline: shapely polygons (as returned by
            :func:`captum_gradflow.metrics.attribution_regions`) or lists of ``(x, y)``
            vertices in pixel units (x = column, y = row), or a sequence of either. For a
            volume: hull vertex arrays ``(V, 3)`` in voxel corners ``(z, y, x)``, as in
            ``VolumeRegions.hulls[i]``.
        title: Axes title.
        sign: ``"absolute"``, ``"all"`` (diverging colours around 0), ``"positive"`` or
            ``"negative"``, as in Captum's ``visualize_image_attr``.
        alpha: Opacity of the heat map.
        hide_zeros: Leave pixels whose attribution is exactly 0 transparent (a GAD map is
            zero outside its consistency mask).
        ax: Draw into this axes (its figure is returned) instead of a new figure (images
            only: a volume needs one axes per slice).
        view: ``"orthogonal"`` or ``"montage"`` (volumes only).
        n_slices: Slices of a montage.

    Returns:
        The figure: one image axes (one per slice for a volume) and a colour bar.

    Examples::

        >>> import torch
        >>> from captum_gradflow.visualization import plot_attribution, save_figure
        >>> x, attr = torch.rand(1, 16, 16), torch.randn(1, 16, 16)
        >>> fig = plot_attribution(x, attr, polygons=[[(2, 2), (6, 2), (6, 5), (2, 5)]])
        >>> len(fig.axes)  # image + colour bar
        2
    """
    if is_volume(_numpy(image, "image")):
        if ax is not None:
            raise ValueError("a volume is drawn as several slices: pass ax=None")
        return _volume_attribution(image, attribution, polygons, title, sign, alpha, hide_zeros,
                                   view, n_slices)
    img = _as_image(image)
    heat = _as_heat(attribution, sign, img.shape[:2], "attribution")
    fig = ax.figure if ax is not None else Figure(figsize=(4.2, 3.6), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    _image_axes(ax, img, title)
    im = _overlay(ax, heat, sign, alpha, hide_zeros)
    _draw_polygons(ax, polygons)
    fig.colorbar(im, ax=ax, shrink=0.85, label=_sign_label(sign))
    return fig


def plot_gad_comparison(
    images: ArrayLike,
    base: ArrayLike,
    gad: ArrayLike,
    base_polygons: Optional[Sequence[Any]] = None,
    gad_polygons: Optional[Sequence[Any]] = None,
    method: str = "base",
    row_labels: Optional[Sequence[str]] = None,
    sign: str = "absolute",
    alpha: float = 0.65,
    view: str = "orthogonal",
    n_slices: int = 6,
) -> Figure:
    """Base attribution and its GAD version side by side, one row per example.

    Each row shows the input, the base map with its region hulls and the GAD map with its
    hulls. Both maps of a row share one colour scale (the GAD map keeps base values on its
    mask, so the same scale shows exactly what was removed). Volumes give one row per slice
    (see :func:`plot_attribution`; the slices follow the base map's maximum).

    Args:
        images: ``(N, C, H, W)`` batch (or one image), or volumes ``(N, C, D, H, W)``.
        base, gad: Attributions of the same shape as ``images``.
        base_polygons, gad_polygons: Per example, the hulls to outline (see
            :func:`plot_attribution`; for volumes also a ``VolumeRegions``), or None.
        method: Name of the base method, used in the column titles.
        row_labels: Optional label per row (for example the class), shown on the left.
        sign, alpha, view, n_slices: As in :func:`plot_attribution`.

    Returns:
        The figure: ``3`` image axes per row plus one colour bar per row.

    Examples::

        >>> import torch
        >>> from captum_gradflow.visualization import plot_gad_comparison
        >>> x, a = torch.rand(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
        >>> fig = plot_gad_comparison(x, a, a * (a.abs() > 1), method="Saliency")
        >>> len(fig.axes)
        8
    """
    x, b, g = (_numpy(t, n) for t, n in ((images, "images"), (base, "base"), (gad, "gad")))
    if x.ndim == 3:
        x, b, g = x[None], b[None], g[None]
    if x.ndim not in (4, 5):
        raise ValueError(f"images must have shape (N, C, H, W) or (N, C, D, H, W), got {x.shape}")
    if b.shape != x.shape or g.shape != x.shape:
        raise ValueError(f"base {b.shape} and gad {g.shape} must have the shape of images {x.shape}")
    n = x.shape[0]
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {n} images")
    if x.ndim == 5:
        rows = _volume_rows(x, b, g, base_polygons, gad_polygons, row_labels, sign, view, n_slices)
    else:
        for name, polys in (("base_polygons", base_polygons), ("gad_polygons", gad_polygons)):
            if polys is not None and len(polys) != n:
                raise ValueError(f"{name} has {len(polys)} entries for {n} images")
        rows = []
        for i in range(n):
            img = _as_image(x[i], "images")
            rows.append((img, _as_heat(b[i], sign, img.shape[:2], "base"),
                         _as_heat(g[i], sign, img.shape[:2], "gad"),
                         None if base_polygons is None else base_polygons[i],
                         None if gad_polygons is None else gad_polygons[i],
                         None if row_labels is None else str(row_labels[i])))
    return _draw_rows(rows, method, sign, alpha)


Row = Tuple[np.ndarray, np.ndarray, np.ndarray, Any, Any, Optional[str]]


def _volume_rows(
    x: np.ndarray, b: np.ndarray, g: np.ndarray, base_polygons: Any, gad_polygons: Any,
    row_labels: Optional[Sequence[str]], sign: str, view: str, n_slices: int,
) -> List[Row]:
    """One row per slice of each volume: the slices through the base map's maximum."""
    n = x.shape[0]
    hb_all = hull_lists(base_polygons, n, "base_polygons")
    hg_all = hull_lists(gad_polygons, n, "gad_polygons")
    rows = []
    for i in range(n):
        vol = volume_image(x[i], "images")
        hb = volume_heat(b[i], sign, vol.shape[:3], "base")
        hg = volume_heat(g[i], sign, vol.shape[:3], "gad")
        for where in slice_plan(hb, view, n_slices):
            label = slice_title(where)
            label = label if row_labels is None else f"{row_labels[i]}, {label}"
            rows.append((take_slice(vol, where), take_slice(hb, where), take_slice(hg, where),
                         hull_sections(hb_all[i], where), hull_sections(hg_all[i], where), label))
    return rows


def _draw_rows(rows: List[Row], method: str, sign: str, alpha: float) -> Figure:
    fig = Figure(figsize=(8.4, 2.6 * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for i, (img, hb, hg, pb, pg, label) in enumerate(rows):
        vmax = float(max(np.abs(hb).max(), np.abs(hg).max()))
        _image_axes(axes[i, 0], img, "input" if i == 0 else "")
        if label is not None:
            axes[i, 0].set_ylabel(label, fontsize=10)
        for j, (heat, polys, title) in enumerate(
            ((hb, pb, method), (hg, pg, f"GAD({method})")), start=1
        ):
            kept = int((heat != 0).sum())
            _image_axes(axes[i, j], img, f"{title} ({kept} px)")
            im = _overlay(axes[i, j], heat, sign, alpha, True, vmax=vmax)
            _draw_polygons(axes[i, j], polys)
        fig.colorbar(im, ax=list(axes[i, 1:]), shrink=0.85, label=_sign_label(sign))
    return fig


def _volume_attribution(
    image: ArrayLike, attribution: ArrayLike, hulls: Any, title: str, sign: str, alpha: float,
    hide_zeros: bool, view: str, n_slices: int,
) -> Figure:
    vol = volume_image(image)
    heat = volume_heat(attribution, sign, vol.shape[:3], "attribution")
    plan = slice_plan(heat, view, n_slices)
    hulls = hull_lists(None if hulls is None else [hulls], 1, "polygons")[0]
    fig = Figure(figsize=(2.9 * len(plan) + 0.9, 3.2), layout="constrained")
    axes = fig.subplots(1, len(plan), squeeze=False)[0]
    vmax = float(np.abs(heat).max())
    for ax, where in zip(axes, plan):
        img = take_slice(vol, where)
        _image_axes(ax, img, f"{title}: {slice_title(where)}")
        im = _overlay(ax, take_slice(heat, where), sign, alpha, hide_zeros, vmax=vmax)
        _draw_polygons(ax, hull_sections(hulls, where))
    fig.colorbar(im, ax=list(axes), shrink=0.85, label=_sign_label(sign))
    return fig
