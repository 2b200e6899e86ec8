"""The demo report's figures, each drawn from the numbers of one experiment and saved as PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from captum_gradflow import visualization as viz
from captum_gradflow.noise import NoiseComparison

__all__ = [
    "ablation_figure", "alignment_figure", "flow_figure", "gad_figures", "gad_sweep_figure", "lambda_sweep_figure",
    "noise_figure", "one_output_figure", "volume_figures",
]


def _noise_panels(axes: Sequence[Axes], reports: Sequence[NoiseComparison], titles: Sequence[str],
                  what: str) -> None:
    for ax, rep, title in zip(axes, reports, titles):
        scores = {n: rep.S[:, j] for j, n in enumerate(rep.feature_names)}
        viz.plot_alignment_vs_noise(scores, rep.S_noise, p_values=rep.wilcoxon_p.tolist(),
                                    ylabel=f"mean {what}", title=f"{what}: {title}", ax=ax)


def alignment_figure(parts: Dict[str, Any], labels: Dict[str, str], path: Path) -> Path:
    """S (top) and F (bottom) of each feature against noise, λ = 0 (left) and regularized."""
    fig = Figure(figsize=(11, 7.2), layout="constrained")
    axes = fig.subplots(2, 2, sharey="row")
    for row, (key, what) in enumerate((("point", "pointwise S"), ("flow", "flow F"))):
        _noise_panels(axes[row], [parts[m][key] for m in ("plain", "regularized")],
                      [labels["plain"], labels["regularized"]], what)
    return viz.save_figure(fig, path)


def flow_figure(example: Dict[str, Any], path: Path) -> Path:
    """One test image's gradient flow to the decision boundary."""
    return viz.save_figure(viz.plot_flow(**example), path)


def gad_figures(parts: Dict[str, Any], figdir: Path, n_rows: int = 3) -> Dict[str, Path]:
    """Base and GAD maps with their region hulls, one figure per method."""
    x, y = parts["x"], parts["y"]
    rows = _pick_rows(y, n_rows)
    figs: Dict[str, Path] = {}
    for name, m in parts["methods"].items():
        base_regions, gad_regions = m["base_regions"], m["gad_regions"]
        fig = viz.plot_gad_comparison(
            x[rows], m["base"][rows], m["gad"][rows],
            base_polygons=[base_regions.polygons[i] for i in rows],
            gad_polygons=[gad_regions.polygons[i] for i in rows],
            method=name, row_labels=[f"digit {parts['classes'][int(y[i])]}" for i in rows])
        figs[f"gad_{name}"] = viz.save_figure(fig, figdir / f"gad_{name}.png")
    return figs


def _pick_rows(y: Tensor, n: int) -> List[int]:
    """Up to ``n`` examples alternating between the classes, so both digits are shown."""
    by_class = [torch.nonzero(y == c).flatten().tolist() for c in sorted(set(y.tolist()))]
    rows: List[int] = []
    for k in range(n):
        pool = by_class[k % len(by_class)]
        if pool:
            rows.append(pool.pop(0))
    return sorted(rows)


def _value(v: Any) -> float:
    return np.nan if v is None else float(v)


def lambda_sweep_figure(sweep: Dict[str, Any], path: Path) -> Path:
    """Balanced accuracy (top) and J (bottom) against λ, with the accuracy floor and the
    chosen λ. λ values sit at even spacing (they span decades and include 0)."""
    rows = sweep["rows"]
    lams = [float(r["lambda"]) for r in rows]
    xs = np.arange(len(rows))
    acc = np.array([_value(r["balanced_accuracy"]) for r in rows])
    j = np.array([_value(r["J_mean"]) for r in rows])
    floor = acc[lams.index(0.0)] - sweep["max_accuracy_drop"]
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax_acc, ax_j = fig.subplots(2, 1, sharex=True)
    ax_acc.plot(xs, acc, "o-", color="C0")
    ax_acc.axhline(floor, color="C3", linestyle="--", linewidth=1,
                   label=f"λ = 0's accuracy − {sweep['max_accuracy_drop']:g}")
    ax_acc.set_ylabel("balanced accuracy (test)")
    ax_j.plot(xs, 100 * j, "o-", color="C2")
    ax_j.set_ylabel("J: % of gradient explained")
    chosen = sweep["chosen_lambda"]
    for ax in (ax_acc, ax_j):
        if chosen is not None:
            ax.axvline(lams.index(float(chosen)), color="0.3", linestyle=":", linewidth=1.2,
                       label=f"chosen λ = {chosen:g}")
        ax.grid(alpha=0.3)
    for x, r in zip(xs, rows):
        if r["diverged"]:
            ax_acc.annotate("diverged", (x, floor), ha="center", fontsize=8, color="C3")
    ax_acc.legend(fontsize=8, frameon=False)
    ax_acc.set_title("the trade-off: accuracy and alignment against λ", fontsize=11)
    ax_j.set_xticks(xs)
    ax_j.set_xticklabels([f"{lam:g}" for lam in lams])
    ax_j.set_xlabel(f"λ (brightness weight; extent weight = {sweep['extent_fraction']:g} λ)")
    return viz.save_figure(fig, path)


def ablation_figure(abl: Dict[str, Any], path: Path) -> Path:
    """Mean S of each feature and J, per training: λ = 0, every weight, each weight removed."""
    configs = {"λ = 0": abl["plain"], "every weight": abl["full"]}
    configs.update({f"without {f}": row for f, row in abl["removed"].items()})
    names = list(abl["full"]["S"])
    bars = names + ["J"]
    fig = Figure(figsize=(8.4, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(configs)
    xs = np.arange(len(bars))
    for k, (label, row) in enumerate(configs.items()):
        vals = [_value(row["S"][n]["mean"]) for n in names] + [_value(row["J_mean"])]
        ax.bar(xs + (k - (len(configs) - 1) / 2) * width, vals, width, color=f"C{k}",
               label=f"{label} (bal. acc. {_value(row['balanced_accuracy']):.3f})", edgecolor="black", linewidth=0.5)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"S({n})" for n in names] + ["J"])
    ax.set_ylabel("mean over test images")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.set_title("feature ablation: each regularizer weight removed in turn", fontsize=11)
    return viz.save_figure(fig, path)


def one_output_figure(parts: Dict[str, Any], models: Dict[str, Dict[str, Any]], path: Path) -> Path:
    """S against noise for the one-output model (λ = 0 and regularized), and J and balanced
    accuracy of the one- and two-output models side by side."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    _noise_panels(axes[:2], [parts["plain"]["point"], parts["regularized"]["point"]],
                  ["one output, λ = 0", "one output, regularized"], "pointwise S")
    ax = axes[2]
    xs = np.arange(len(models))
    j = [_value(m["J_mean"]) for m in models.values()]
    acc = [_value(m["balanced_accuracy"]) for m in models.values()]
    ax.bar(xs - 0.2, j, 0.4, color="C2", label="J (mean)", edgecolor="black", linewidth=0.5)
    ax.bar(xs + 0.2, acc, 0.4, color="C0", label="balanced accuracy", edgecolor="black", linewidth=0.5)
    ax.set_xticks(xs)
    ax.set_xticklabels(list(models), fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncol=2)
    ax.set_title("one output vs two outputs", fontsize=11)
    return viz.save_figure(fig, path)


def noise_figure(study: Dict[str, Any], path: Path, alpha: float = 0.05) -> Path:
    """Mean ratio of S to noise per feature under each noise construction, one panel per
    model; hatched bars do not beat noise (p >= ``alpha``)."""
    rows = study["rows"]
    names = list(rows[0]["models"]["plain"]["S"])
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    width = 0.8 / len(rows)
    xs = np.arange(len(names))
    for ax, (model, title) in zip(axes, (("plain", "λ = 0"), ("regularized", "regularized"))):
        for k, row in enumerate(rows):
            s = row["models"][model]["S"]
            ratio = [_value(s[n]["ratio"]) for n in names]
            bars = ax.bar(xs + (k - (len(rows) - 1) / 2) * width, ratio, width, color=f"C{k}",
                          edgecolor="black", linewidth=0.5, label=row["construction"])
            for bar, n in zip(bars, names):
                if not _value(s[n]["p"]) < alpha:
                    bar.set_hatch("//")
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.9)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([n + (" (decoy)" if n == study["decoy"] else "") for n in names])
        ax.set_title(f"{title}: mean S / noise (hatched: p ≥ {alpha:g})", fontsize=11)
    axes[0].set_ylabel("mean ratio of S to noise")
    axes[1].legend(fontsize=8, frameon=False, loc="upper right")
    return viz.save_figure(fig, path)


def gad_sweep_figure(table: Any, sweep: Dict[str, Any], path: Path) -> Path:
    """Kept fraction against RS win rate, one point per (setting, method); the defaults ringed."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    viz.plot_gad_sweep(table, ax=fig.subplots(), kept_max=sweep["kept_max"], win_min=sweep["win_min"],
                       highlight={"delta": sweep["defaults"]["delta"]})
    fig.axes[0].legend(fontsize=7, loc="best")  # a few points: let matplotlib keep them uncovered
    return viz.save_figure(fig, path)


def volume_figures(parts: Dict[str, Any], figdir: Path) -> Dict[str, Path]:
    """S and F against noise on the volumes, and one volume's Saliency and GAD(Saliency) maps
    as three orthogonal slices through the base map's maximum, with hull outlines."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, what in ((axes[0], "point", "pointwise S"), (axes[1], "flow", "flow F")):
        _noise_panels([ax], [parts[key]], ["3-D CNN on volumes"], what)
    figs = {"volume_alignment": viz.save_figure(fig, figdir / "volume_alignment.png")}
    i = _pick_rows(parts["y"], 1)[0]
    gad_fig = viz.plot_gad_comparison(
        parts["x"][i:i + 1], parts["base"][i:i + 1], parts["gad"][i:i + 1],
        base_polygons=parts["base_regions"][i:i + 1], gad_polygons=parts["gad_regions"][i:i + 1],
        method="Saliency", row_labels=[f"label {int(parts['y'][i])}"])
    figs["volume_gad"] = viz.save_figure(gad_fig, figdir / "volume_gad_saliency.png")
    return figs
