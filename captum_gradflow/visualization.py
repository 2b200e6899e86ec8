"""Matplotlib figures for attributions, region hulls, gradient flows and alignment tests.

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, so it
is safe under the Agg backend, in threads and in notebooks), returns it, and never calls
``show``. Save with :func:`save_figure`, which also releases the figure's memory.

Coordinate convention (shared with :mod:`captum_gradflow.metrics`): ``x`` is the column and
``y`` the row, and pixel ``(r, c)`` is the unit square ``[c, c+1] x [r, r+1]``. Images are
drawn with ``extent=(0, W, H, 0)`` so region hulls land exactly on the pixels they cover.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Polygon as PolygonPatch
from torch import Tensor

__all__ = [
    "plot_attribution",
    "plot_gad_comparison",
    "plot_flow",
    "plot_alignment_vs_noise",
    "save_figure",
]

ArrayLike = Union[Tensor, np.ndarray]
_SIGNS = ("absolute", "all", "positive", "negative")
_HULL_COLOR = "#00e5ff"


# -- small converters -----------------------------------------------------------------------
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
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    lo, hi = a.min(), a.max()
    # Only rescale when the image leaves [0, 1]; a dark image must stay dark.
    return (a - lo) / (hi - lo) if (lo < 0 or hi > 1) and hi > lo else np.clip(a, 0, 1)


def _as_heat(attr: ArrayLike, sign: str, shape: Tuple[int, int], name: str) -> np.ndarray:
    """Reduce an attribution of one example to an ``(H, W)`` map, following ``sign``."""
    if sign not in _SIGNS:
        raise ValueError(f"sign must be one of {_SIGNS}, got {sign!r}")
    a = _numpy(attr, name)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        # Channels first unless the last axis is clearly the channel axis.
        ch_last = a.shape[-1] in (1, 3) and a.shape[:2] == shape
        a = np.abs(a).sum(-1 if ch_last else 0) if sign == "absolute" else a.sum(-1 if ch_last else 0)
    elif sign == "absolute":
        a = np.abs(a)
    if a.shape != shape:
        raise ValueError(f"{name} reduces to shape {a.shape}, but the image is {shape}")
    if sign == "positive":
        a = np.clip(a, 0, None)
    elif sign == "negative":
        a = np.clip(-a, 0, None)
    return a


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


def _overlay(ax: Axes, img: np.ndarray, heat: np.ndarray, sign: str, alpha: float,
             hide_zeros: bool, vmax: Optional[float] = None):
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


# -- public figures -------------------------------------------------------------------------
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


def plot_flow(
    path: ArrayLike,
    arc_length: Optional[ArrayLike] = None,
    alignment: Optional[Union[Mapping[str, ArrayLike], ArrayLike]] = None,
    margin: Optional[ArrayLike] = None,
    n_frames: int = 5,
    reached_boundary: Optional[bool] = None,
    title: str = "gradient flow toward the decision boundary",
) -> Figure:
    """A strip of frames along one example's gradient flow, with alignment along the path.

    Top row: ``n_frames`` images evenly spaced in arc length from the input ``γ(0)`` to the
    end point ``γ(L)``, then the change ``γ(L) − γ(0)``. Bottom: each feature's squared
    cosine ``S^m_g`` against arc length (and the decision margin on a second axis), with
    the frames' positions marked.

    Args:
        path: The points of the flow for one example, ``(T, C, H, W)`` or ``(T, H, W)``
            (first = input, last = end point).
        arc_length: Arc length ``s`` of each point, shape ``(T,)``; the step index if None.
        alignment: ``{feature name: (T,) values}`` or a ``(T, m)`` array of S along the path.
        margin: Decision margin ``m(γ(s))`` at each point, ``(T,)``.
        n_frames: Number of frames in the strip (at least 2: input and end point).
        reached_boundary: Whether the flow stopped on the boundary; labels the last frame.
        title: Figure title.

    Returns:
        The figure: ``n_frames + 1`` image axes (the change carries its colour bar as an
        inset) and, if ``alignment`` or ``margin`` is given, the line-plot axes (two when
        both are given: the margin has its own y axis).

    Examples::

        >>> import torch
        >>> from captum_gradflow.visualization import plot_flow
        >>> path = torch.rand(12, 1, 16, 16)
        >>> fig = plot_flow(path, torch.linspace(0, 3, 12), {"brightness": torch.rand(12)})
        >>> len(fig.axes)  # 5 frames, the change, the line plot
        7
    """
    p = _numpy(path, "path")
    if p.ndim == 3:
        p = p[:, None]
    if p.ndim != 4 or p.shape[0] < 2:
        raise ValueError(f"path must have shape (T, C, H, W) or (T, H, W) with T >= 2, got {p.shape}")
    t = p.shape[0]
    s = np.arange(t, dtype=float) if arc_length is None else _numpy(arc_length, "arc_length").ravel()
    if s.shape != (t,):
        raise ValueError(f"arc_length has {s.size} values for {t} path points")
    if n_frames < 2:
        raise ValueError(f"n_frames must be at least 2, got {n_frames}")
    curves = _curves(alignment, t)
    mvals = None if margin is None else _numpy(margin, "margin").ravel()
    if mvals is not None and mvals.shape != (t,):
        raise ValueError(f"margin has {mvals.size} values for {t} path points")

    # Frames evenly spaced in arc length, always including both ends.
    wanted = np.linspace(s[0], s[-1], n_frames)
    idx = np.unique(np.r_[0, [int(np.argmin(np.abs(s - w))) for w in wanted[1:-1]], t - 1])
    lo, hi = float(p.min()), float(p.max())
    has_lines = bool(curves) or mvals is not None
    fig = Figure(figsize=(1.9 * (len(idx) + 1) + 0.6, 4.6 if has_lines else 2.5), layout="constrained")
    grid = fig.add_gridspec(2 if has_lines else 1, len(idx) + 1, height_ratios=[1, 1.1] if has_lines else [1])
    for k, i in enumerate(idx):
        ax = fig.add_subplot(grid[0, k])
        frame = (p[i] - lo) / (hi - lo) if hi > lo else np.zeros_like(p[i])
        if k == 0:
            label = "input"
        elif k == len(idx) - 1:
            label = "end" if reached_boundary is None else ("on boundary" if reached_boundary else "stopped")
        else:
            label = "on the flow"
        _image_axes(ax, _as_image(frame, "path"), f"{label}\ns = {s[i]:.2f}")
    ax = fig.add_subplot(grid[0, len(idx)])
    delta = _as_heat(p[-1] - p[0], "all", p.shape[2:], "path")
    vmax = float(np.abs(delta).max()) or 1.0
    h, w = delta.shape
    im = ax.imshow(delta, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_title("end − input", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    # An inset colour bar hugs the square image instead of the wider grid cell.
    fig.colorbar(im, cax=ax.inset_axes([1.05, 0.05, 0.07, 0.9]))
    if has_lines:
        lax = fig.add_subplot(grid[1, :])
        for name, values in curves.items():
            lax.plot(s, values, marker="." if t <= 40 else None, label=name)
        if curves:
            lax.set_ylabel("alignment S along the flow")
            lax.set_ylim(bottom=0)
        for i in idx:
            lax.axvline(s[i], color="0.8", linewidth=0.8, zorder=0)
        lax.set_xlabel("arc length s")
        lax.set_xlim(s[0], s[-1] if s[-1] > s[0] else s[0] + 1)
        line_axes = [lax]
        if mvals is not None:
            max_ = lax.twinx() if curves else lax
            max_.plot(s, mvals, color="0.3", linestyle="--", label="margin m")
            max_.axhline(0, color="0.3", linewidth=0.6)
            max_.set_ylabel("decision margin m")
            line_axes.append(max_)
        handles = [hd for a in dict.fromkeys(line_axes) for hd in a.get_legend_handles_labels()[0]]
        if handles:
            lax.legend(handles=handles, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0),
                       frameon=False, ncol=min(5, len(handles)), borderaxespad=0.1)
    fig.suptitle(title, fontsize=11)
    return fig


def _curves(alignment: Any, t: int) -> Dict[str, np.ndarray]:
    if alignment is None:
        return {}
    if isinstance(alignment, Mapping):
        curves = {str(k): _numpy(v, f"alignment[{k!r}]").ravel() for k, v in alignment.items()}
    else:
        a = _numpy(alignment, "alignment")
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2:
            raise ValueError(f"alignment must be (T,) or (T, m), got shape {a.shape}")
        curves = {f"feature {j}": a[:, j] for j in range(a.shape[1])}
    for k, v in curves.items():
        if v.shape != (t,):
            raise ValueError(f"alignment for {k!r} has {v.size} values for {t} path points")
    return curves


def plot_alignment_vs_noise(
    feature_scores: Union[Mapping[str, ArrayLike], ArrayLike],
    noise_scores: ArrayLike,
    p_values: Optional[Union[Mapping[str, float], Sequence[float], ArrayLike]] = None,
    feature_names: Optional[Sequence[str]] = None,
    ylabel: str = "mean alignment S",
    title: str = "feature alignment vs. random directions",
    log_scale: bool = True,
    ax: Optional[Axes] = None,
) -> Figure:
    """Bar per feature (mean S over examples) next to the distribution of noise features.

    Each bar is the mean over examples of a feature's alignment (NaNs skipped, their count
    shown under the bar), with a standard-error whisker. The noise baseline is drawn as one
    dot per random direction (its mean over examples) with a box over them and a dashed line
    at their mean, so a bar is read against the noise and not in absolute terms. Each bar
    is annotated with its p-value when given.

    Args:
        feature_scores: ``{name: (N,) values}``, or an ``(N, m)`` array (or ``(m,)`` means).
        noise_scores: ``(N, M)`` per-example alignments of M noise features, or ``(M,)``.
        p_values: One p-value per feature (mapping by name, or a sequence in order).
        feature_names: Names for an array ``feature_scores``.
        ylabel, title: Axis label and title.
        log_scale: Logarithmic y axis (features and noise often differ by orders of magnitude).
        ax: Draw into this axes instead of a new figure.

    Returns:
        The figure (one axes unless ``ax`` belonged to a larger one).

    Examples::

        >>> import torch
        >>> from captum_gradflow.visualization import plot_alignment_vs_noise
        >>> s = {"brightness": torch.rand(20) * 0.1, "extent": torch.rand(20) * 0.01}
        >>> fig = plot_alignment_vs_noise(s, torch.rand(20, 32) * 1e-3, p_values=[0.001, 0.4])
        >>> len(fig.axes[0].patches)  # two bars and the noise box
        3
    """
    names, cols = _feature_columns(feature_scores, feature_names)
    noise = _numpy(noise_scores, "noise_scores")
    noise = noise[None] if noise.ndim == 1 else noise
    if noise.ndim != 2 or noise.shape[1] == 0:
        raise ValueError(f"noise_scores must be (N, M) or (M,) with M >= 1, got shape {noise.shape}")
    noise_means = np.nanmean(noise, axis=0) if np.isfinite(noise).any() else np.full(noise.shape[1], np.nan)
    pv = _p_values(p_values, names)

    fig = ax.figure if ax is not None else Figure(figsize=(1.1 * len(names) + 2.6, 3.8), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    means = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in cols])
    sems = np.array([np.nanstd(c) / np.sqrt(max(1, np.isfinite(c).sum())) for c in cols])
    nans = [int(np.isnan(c).sum()) for c in cols]
    xs = np.arange(len(names))
    colors = [f"C{i % 10}" for i in range(len(names))]
    ax.bar(xs, np.nan_to_num(means), yerr=np.nan_to_num(sems), color=colors, width=0.6,
           capsize=3, edgecolor="black", linewidth=0.6)
    xn = len(names)
    finite_noise = noise_means[np.isfinite(noise_means)]
    jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(noise_means))
    ax.scatter(xn + jitter, noise_means, s=10, color="0.35", zorder=3, label="noise directions")
    if finite_noise.size:
        ax.boxplot([finite_noise], positions=[xn], widths=0.5, patch_artist=True, showfliers=False,
                   boxprops=dict(facecolor="0.9", edgecolor="0.4"), medianprops=dict(color="0.2"))
        ax.axhline(float(finite_noise.mean()), color="0.4", linestyle="--", linewidth=0.9,
                   label=f"noise mean {finite_noise.mean():.2g}")
    ax.set_xticks(list(xs) + [xn])
    ax.set_xticklabels([n + (f"\n({k} NaN)" if k else "") for n, k in zip(names, nans)]
                       + [f"noise\n(M={noise.shape[1]})"])
    ax.set_xlim(-0.6, xn + 0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    if log_scale:
        positive = np.r_[means[means > 0], finite_noise[finite_noise > 0]]
        if positive.size:
            ax.set_yscale("log")
            ax.set_ylim(positive.min() / 3, positive.max() * 6)
    top = ax.get_ylim()[1]
    for x, m, e, p in zip(xs, means, sems, pv):
        if p is None:
            continue
        y = (m + e) * 1.3 if log_scale and m > 0 else (m + e) + 0.03 * top
        ax.annotate(_format_p(p), (x, y), ha="center", va="bottom", fontsize=8)
    ax.legend(fontsize=8, loc="upper right", frameon=False)
    return fig


def _feature_columns(scores: Any, names: Optional[Sequence[str]]) -> Tuple[List[str], List[np.ndarray]]:
    if isinstance(scores, Mapping):
        return [str(k) for k in scores], [_numpy(v, f"feature_scores[{k!r}]").ravel() for k, v in scores.items()]
    a = _numpy(scores, "feature_scores")
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"feature_scores must be (N, m) or (m,) with m >= 1, got shape {a.shape}")
    names = list(names) if names is not None else [f"feature {j}" for j in range(a.shape[1])]
    if len(names) != a.shape[1]:
        raise ValueError(f"feature_names has {len(names)} names for {a.shape[1]} features")
    return names, [a[:, j] for j in range(a.shape[1])]


def _p_values(p_values: Any, names: List[str]) -> List[Optional[float]]:
    if p_values is None:
        return [None] * len(names)
    if isinstance(p_values, Mapping):
        missing = [n for n in names if n not in p_values]
        if missing:
            raise ValueError(f"p_values has no entry for features {missing}")
        return [float(p_values[n]) for n in names]
    pv = _numpy(torch.as_tensor(p_values) if not isinstance(p_values, (Tensor, np.ndarray)) else p_values,
                "p_values").ravel()
    if pv.size != len(names):
        raise ValueError(f"p_values has {pv.size} values for {len(names)} features")
    return [float(p) for p in pv]


def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return "p = n/a"
    return f"p = {p:.2g}" if p >= 1e-3 else "p < 0.001"


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
