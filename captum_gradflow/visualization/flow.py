"""The gradient-flow figure: frames along one example's flow and the alignment along it."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from matplotlib.figure import Figure

from captum_gradflow.visualization._common import ArrayLike, _as_heat, _as_image, _image_axes, _numpy
from captum_gradflow.visualization.volumes import slice_plan, slice_title

__all__ = ["plot_flow"]


def plot_flow(
    path: ArrayLike,
    arc_length: Optional[ArrayLike] = None,
    alignment: Optional[Union[Mapping[str, ArrayLike], ArrayLike]] = None,
    margin: Optional[ArrayLike] = None,
    n_frames: int = 5,
    reached_boundary: Optional[bool] = None,
    title: str = "gradient flow toward the decision boundary",
    view: str = "orthogonal",
    n_slices: int = 6,
) -> Figure:
    """A strip of frames along one example's gradient flow, with alignment along the path.

    Top row: ``n_frames`` images evenly spaced in arc length from the input ``γ(0)`` to the
    end point ``γ(L)``, then the change ``γ(L) − γ(0)``. Bottom: each feature's squared
    cosine ``S^m_g`` against arc length (and the decision margin on a second axis), with
    the frames' positions marked. A volume path gives one strip per slice: three orthogonal
    slices through the largest change ``|γ(L) − γ(0)|`` (``view="orthogonal"``) or
    ``n_slices`` slices along depth (``view="montage"``).

    Args:
        path: The points of the flow for one example, ``(T, C, H, W)`` or ``(T, H, W)``, or
            volumes ``(T, C, D, H, W)`` (first = input, last = end point).
        arc_length: Arc length ``s`` of each point, shape ``(T,)``; the step index if None.
        alignment: ``{feature name: (T,) values}`` or a ``(T, m)`` array of S along the path.
        margin: Decision margin ``m(γ(s))`` at each point, ``(T,)``.
        n_frames: Number of frames in the strip (at least 2: input and end point).
        reached_boundary: Whether the flow stopped on the boundary; labels the last frame.
        title: Figure title.
        view, n_slices: How a volume path is sliced (see above).

    Returns:
        The figure: ``n_frames + 1`` image axes per strip (the change carries its colour bar as an
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
    if p.ndim not in (4, 5) or p.shape[0] < 2:
        raise ValueError(
            "path must have shape (T, C, H, W), (T, H, W) or (T, C, D, H, W) with T >= 2, got "
            f"{p.shape}"
        )
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
    # A volume becomes one strip of 2-D frames per slice (channels stay first: (T, C, h, w)).
    strips: List[Tuple[Optional[str], np.ndarray]] = [(None, p)]
    if p.ndim == 5:
        plan = slice_plan(np.abs(p[-1] - p[0]).sum(0), view, n_slices)
        strips = [(slice_title(w), np.take(p, w[1], axis=2 + w[0])) for w in plan]
    has_lines = bool(curves) or mvals is not None
    rows = len(strips) + int(has_lines)
    height = 2.3 * len(strips) + (2.3 if has_lines else 0.2)
    fig = Figure(figsize=(1.9 * (len(idx) + 1) + 0.6, height), layout="constrained")
    ratios = [1] * len(strips) + [1.1] * int(has_lines)
    grid = fig.add_gridspec(rows, len(idx) + 1, height_ratios=ratios)
    for r, (where, frames) in enumerate(strips):
        _frame_strip(fig, grid, r, frames, idx, s, reached_boundary, where, (lo, hi))
    if has_lines:
        _line_plot(fig.add_subplot(grid[len(strips), :]), s, idx, curves, mvals)
    fig.suptitle(title, fontsize=11)
    return fig


def _line_plot(lax: Any, s: np.ndarray, idx: np.ndarray, curves: Dict[str, np.ndarray],
               mvals: Optional[np.ndarray]) -> None:
    """Alignment along the flow against arc length (the margin on a twin axis), frames marked."""
    for name, values in curves.items():
        lax.plot(s, values, marker="." if len(s) <= 40 else None, label=name)
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


def _frame_strip(
    fig: Figure, grid: Any, row: int, p: np.ndarray, idx: np.ndarray, s: np.ndarray,
    reached_boundary: Optional[bool], where: Optional[str], span: Tuple[float, float],
) -> None:
    """One row: frames ``idx`` of the 2-D path ``p`` (scaled by the whole path's ``span``),
    then the change."""
    lo, hi = span
    for k, i in enumerate(idx):
        ax = fig.add_subplot(grid[row, k])
        if k == 0:
            label = "input"
        elif k == len(idx) - 1:
            label = "end" if reached_boundary is None else ("on boundary" if reached_boundary else "stopped")
        else:
            label = "on the flow"
        frame = (p[i] - lo) / (hi - lo) if hi > lo else np.zeros_like(p[i])
        _image_axes(ax, _as_image(frame, "path"), f"{label}\ns = {s[i]:.2f}")
        if k == 0 and where is not None:
            ax.set_ylabel(where, fontsize=10)
    ax = fig.add_subplot(grid[row, len(idx)])
    delta = _as_heat(p[-1] - p[0], "all", p.shape[2:], "path")
    vmax = float(np.abs(delta).max()) or 1.0
    h, w = delta.shape
    im = ax.imshow(delta, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_title("end − input", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    # An inset colour bar hugs the square image instead of the wider grid cell.
    fig.colorbar(im, cax=ax.inset_axes([1.05, 0.05, 0.07, 0.9]))


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
