"""Attribution figures: one map with its region hulls, and GAD against its base method."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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
) -> Figure:
    """Image with the attribution as a heat map on top and region hulls outlined.

    Args:
        image: One image, ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` with C in {1, 3}.
        attribution: Attribution of that image, same spatial size; channels are reduced (sum
            of absolute values for ``sign="absolute"``, plain sum otherwise).
        polygons: Region hulls to outline: shapely polygons (as returned by
            :func:`captum_gradflow.metrics.attribution_regions`) or lists of ``(x, y)``
            vertices in pixel units (x = column, y = row), or a sequence of either.
        title: Axes title.
        sign: ``"absolute"``, ``"all"`` (diverging colours around 0), ``"positive"`` or
            ``"negative"``, as in Captum's ``visualize_image_attr``.
        alpha: Opacity of the heat map.
        hide_zeros: Leave pixels whose attribution is exactly 0 transparent (a GAD map is
            zero outside its consistency mask).
        ax: Draw into this axes (its figure is returned) instead of a new figure.

    Returns:
        The figure: one image axes and its colour bar.

    Examples::

        >>> import torch
        >>> from captum_gradflow.visualization import plot_attribution, save_figure
        >>> x, attr = torch.rand(1, 16, 16), torch.randn(1, 16, 16)
        >>> fig = plot_attribution(x, attr, polygons=[[(2, 2), (6, 2), (6, 5), (2, 5)]])
        >>> len(fig.axes)  # image + colour bar
        2
    """
    img = _as_image(image)
    heat = _as_heat(attribution, sign, img.shape[:2], "attribution")
    fig = ax.figure if ax is not None else Figure(figsize=(4.2, 3.6), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    _image_axes(ax, img, title)
    im = _overlay(ax, img, heat, sign, alpha, hide_zeros)
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
) -> Figure:
    """Base attribution and its GAD version side by side, one row per example.

    Each row shows the input, the base map with its region hulls and the GAD map with its
    hulls. Both maps of a row share one colour scale (the GAD map keeps base values on its
    mask, so the same scale shows exactly what was removed).

    Args:
        images: ``(N, C, H, W)`` batch (or one image).
        base, gad: Attributions of the same shape as ``images``.
        base_polygons, gad_polygons: Per example, the hulls to outline (see
            :func:`plot_attribution`), or None.
        method: Name of the base method, used in the column titles.
        row_labels: Optional label per row (for example the class), shown on the left.
        sign, alpha: As in :func:`plot_attribution`.

    Returns:
        The figure: ``3 N`` image axes plus one colour bar per row.

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
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {x.shape}")
    if b.shape != x.shape or g.shape != x.shape:
        raise ValueError(f"base {b.shape} and gad {g.shape} must have the shape of images {x.shape}")
    n = x.shape[0]
    for name, polys in (("base_polygons", base_polygons), ("gad_polygons", gad_polygons)):
        if polys is not None and len(polys) != n:
            raise ValueError(f"{name} has {len(polys)} entries for {n} images")
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {n} images")
    fig = Figure(figsize=(8.4, 2.6 * n + 0.3), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        img = _as_image(x[i], "images")
        hb = _as_heat(b[i], sign, img.shape[:2], "base")
        hg = _as_heat(g[i], sign, img.shape[:2], "gad")
        vmax = float(max(np.abs(hb).max(), np.abs(hg).max()))
        _image_axes(axes[i, 0], img, "input" if i == 0 else "")
        if row_labels is not None:
            axes[i, 0].set_ylabel(str(row_labels[i]), fontsize=10)
        for j, (heat, polys, title) in enumerate(
            ((hb, base_polygons, method), (hg, gad_polygons, f"GAD({method})")), start=1
        ):
            kept = int((heat != 0).sum())
            _image_axes(axes[i, j], img, f"{title} ({kept} px)")
            im = _overlay(axes[i, j], img, heat, sign, alpha, True, vmax=vmax)
            _draw_polygons(axes[i, j], None if polys is None else polys[i])
        fig.colorbar(im, ax=list(axes[i, 1:]), shrink=0.85, label=_sign_label(sign))
    return fig
