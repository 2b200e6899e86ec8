"""The trade-off figure of :func:`~captum_gradflow.gad.gad_sweep`: how much of the base map
GAD keeps against whether what it keeps matters more than what it drops."""
from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["plot_gad_sweep"]

_MARKERS = "osD^vP*X<>"


def plot_gad_sweep(
    table: "pandas.DataFrame",  # noqa: F821
    ax: Optional["matplotlib.axes.Axes"] = None,  # noqa: F821
    kept_max: float = 0.75,
    win_min: float = 0.65,
    highlight: Optional[Dict[str, Any]] = None,
) -> "matplotlib.figure.Figure":  # noqa: F821
    r"""Kept fraction (x) against RS win rate (y), one point per row of a sweep table.

    Points are coloured by ``method`` and shaped by ``dataset`` when those columns exist;
    points with ``rs_p >= 0.01`` are drawn hollow. Dashed lines mark the targets
    (``kept_fraction <= kept_max``, ``rs_win_rate >= win_min``): the upper-left quadrant is
    where GAD simplifies the map and what it keeps matters more than what it drops.

    Args:
        table: Output of :func:`~captum_gradflow.gad.gad_sweep` (several concatenated, with a
            ``dataset`` column, also work).
        ax: Axes to draw on (default: a new figure).
        kept_max, win_min: Where the target lines are drawn.
        highlight: Setting columns and values of rows to ring in black (e.g. the defaults).

    Returns:
        The matplotlib Figure.

    Examples::

        >>> import pandas as pd
        >>> from captum_gradflow.visualization import plot_gad_sweep
        >>> t = pd.DataFrame({"kept_fraction": [0.9, 0.6], "rs_win_rate": [0.5, 0.8],
        ...                   "rs_p": [0.3, 0.001], "method": ["Saliency"] * 2})
        >>> sum(len(c.get_offsets()) for c in plot_gad_sweep(t).axes[0].collections)  # one per row
        2
    """
    import matplotlib.pyplot as plt

    missing = {"kept_fraction", "rs_win_rate"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)}; pass the output of gad_sweep")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
    else:
        fig = ax.figure
    methods = list(dict.fromkeys(table["method"])) if "method" in table else [None]
    datasets = list(dict.fromkeys(table["dataset"])) if "dataset" in table else [None]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods):
        for j, dataset in enumerate(datasets):
            sel = table
            if method is not None:
                sel = sel[sel["method"] == method]
            if dataset is not None:
                sel = sel[sel["dataset"] == dataset]
            if sel.empty:
                continue
            significant = sel["rs_p"] < 0.01 if "rs_p" in sel else sel["kept_fraction"].notna()
            color = colors[i % len(colors)]
            label = " / ".join(str(v) for v in (method, dataset) if v is not None) or None
            marker = _MARKERS[j % len(_MARKERS)]
            for filled, part in ((True, sel[significant]), (False, sel[~significant])):
                if len(part):
                    ax.scatter(part["kept_fraction"], part["rs_win_rate"], s=22, marker=marker,
                               facecolors=color if filled else "none", edgecolors=color, linewidths=0.8,
                               label=label if filled or not significant.any() else None, alpha=0.8)
    if highlight:
        sel = table
        for k, v in highlight.items():
            sel = sel[sel[k] == v]
        ax.scatter(sel["kept_fraction"], sel["rs_win_rate"], s=90, facecolors="none", edgecolors="black",
                   linewidths=1.4, label="chosen defaults")
    ax.axvline(kept_max, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(win_min, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("median kept fraction of the base map's top-q pixels")
    ax.set_ylabel("RS win rate: kept regions over dropped regions")
    ax.set_title("GAD settings: simpler maps (left) that keep what matters (up)")
    if any(m is not None for m in methods) or any(d is not None for d in datasets) or highlight:
        ax.legend(fontsize=6, loc="lower left", ncol=2)
    return fig
