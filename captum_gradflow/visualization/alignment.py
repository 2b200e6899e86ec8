"""The alignment figure: each feature's mean S against the distribution of noise features."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from captum_gradflow.visualization._common import ArrayLike, _numpy

__all__ = ["plot_alignment_vs_noise"]


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
    noise = _score_matrix(noise_scores, "noise_scores", "M")
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
    a = _score_matrix(scores, "feature_scores", "m")
    names = list(names) if names is not None else [f"feature {j}" for j in range(a.shape[1])]
    if len(names) != a.shape[1]:
        raise ValueError(f"feature_names has {len(names)} names for {a.shape[1]} features")
    return names, [a[:, j] for j in range(a.shape[1])]


def _score_matrix(scores: Any, name: str, columns: str) -> np.ndarray:
    """Scores as ``(N, k)`` from ``(N, k)`` or one row ``(k,)``, with at least one column."""
    a = _numpy(scores, name)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name} must be (N, {columns}) or ({columns},) with {columns} >= 1, got shape {a.shape}")
    return a


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
