"""The per-example table's columns and the dataset-level statistics computed from it.

Statistics are computed once, on the merged table, so they do not depend on how the data
set was split over processes. The noise tests rebuild a :class:`~captum_gradflow.NoiseComparison`
from the stored per-example alignments (docs/definitions.md section 2.3); the GAD test is
the paired test of :func:`~captum_gradflow.compare_region_sensitivity` (section 4).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from captum_gradflow._stats import paired_wilcoxon
from captum_gradflow.metrics.sensitivity import NO_PAIR
from captum_gradflow.noise_comparison import NoiseComparison

__all__ = ["columns", "summarize", "render_markdown"]


def columns(prefix: str, names: Sequence[str], n_noise: int) -> Dict[str, Any]:
    """Column names of one alignment measure (``prefix`` "" for S, "F_" for the flow)."""
    head = prefix or "S_"
    return {
        "value": [f"{head}{n}" for n in names],
        "ratio": [f"{prefix}ratio_{n}" for n in names],
        "p": [f"{prefix}p_{n}" for n in names],
        "noise": [f"{prefix}noise_{j}" for j in range(n_noise)],
        "noise_mean": f"{prefix}noise_mean",
    }


def comparison_columns(report: NoiseComparison, prefix: str) -> Dict[str, np.ndarray]:
    """A :class:`NoiseComparison` as table columns (per example)."""
    cols = columns(prefix, report.feature_names, report.n_noise)
    out: Dict[str, np.ndarray] = {}
    for j in range(len(report.feature_names)):
        out[cols["value"][j]] = report.S[:, j].numpy()
    out[cols["noise_mean"]] = report.noise_mean.numpy()
    for j in range(len(report.feature_names)):
        out[cols["ratio"][j]] = report.ratio[:, j].numpy()
        out[cols["p"][j]] = report.p_value[:, j].numpy()
    for j in range(report.n_noise):
        out[cols["noise"][j]] = report.S_noise[:, j].numpy()
    return out


def _comparison(table: Any, prefix: str, names: Sequence[str], n_noise: int) -> NoiseComparison:
    cols = columns(prefix, names, n_noise)
    s = torch.from_numpy(table[cols["value"]].to_numpy(dtype=np.float64, copy=True))
    noise = torch.from_numpy(table[cols["noise"]].to_numpy(dtype=np.float64, copy=True))
    return NoiseComparison(s, noise, list(names))


def _finite(v: float) -> Optional[float]:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _feature_stats(report: NoiseComparison, key: str) -> Dict[str, Dict[str, Any]]:
    p = report.wilcoxon_p
    return {
        name: {
            "n": report.n_examples,
            "n_undefined": int(report.n_skipped[j]),
            key: _finite(report.mean_S[j]),
            "mean_ratio": _finite(report.mean_ratio[j]),
            "wilcoxon_p": _finite(p[j]),
        }
        for j, name in enumerate(report.feature_names)
    }


def summarize(table: Any, names: List[str], n_noise: int, flow: bool, gad: bool,
              settings: Dict[str, Any]) -> Dict[str, Any]:
    """Dataset-level statistics of the merged table (NaN is reported as ``None``).

    Per feature: ``n``, ``n_undefined`` (examples whose value or noise mean is NaN, left out),
    the mean alignment, the mean ratio to the noise and the one-sided Wilcoxon p-value of
    ``S - noise_mean > 0``; the same for the flow ``F``; the joint alignment's mean; for GAD
    the median RC, the fraction of examples where the kept regions' RS beats the dropped
    regions' and the one-sided Wilcoxon p-value of that.
    """
    j = table["J"].to_numpy(dtype=np.float64)
    out: Dict[str, Any] = {
        "n_examples": int(len(table)),
        "settings": settings,
        "S": _feature_stats(_comparison(table, "", names, n_noise), "mean_S"),
        "J": {"mean": _finite(np.nanmean(j)) if np.isfinite(j).any() else None,
              "n_undefined": int(np.isnan(j).sum())},
    }
    if flow:
        out["F"] = _feature_stats(_comparison(table, "F_", names, n_noise), "mean_F")
        out["F_reached_boundary"] = float(table["reached_boundary"].astype(bool).mean())
    if gad:
        out["GAD"] = _gad_stats(table)
    return out


def _gad_stats(table: Any) -> Dict[str, Any]:
    rc = table["RC"].to_numpy(dtype=np.float64)
    kept, dropped = (table[c].to_numpy(dtype=np.float64) for c in ("RS_kept", "RS_dropped"))
    both = np.isfinite(kept) & np.isfinite(dropped)
    diff = (kept - dropped)[both]
    _, p, note = paired_wilcoxon(diff, no_pair=NO_PAIR)
    return {
        "n": int(len(table)),
        "RC_n_undefined": int(np.isnan(rc).sum()),
        "median_RC": _finite(np.nanmedian(rc)) if np.isfinite(rc).any() else None,
        "RS_n_pairs": int(both.sum()),
        "RS_win_rate": _finite(float((diff > 0).mean())) if len(diff) else None,
        "RS_wilcoxon_p": _finite(p),
        "RS_test_note": note,
    }


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def render_markdown(summary: Dict[str, Any]) -> str:
    """``summary.md``: the statistics as markdown tables."""
    lines = [
        f"# Evaluation summary ({summary['n_examples']} examples)", "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["settings"].items())), "",
    ]
    for key, title in (("S", "Pointwise alignment S"), ("F", "Flow alignment F")):
        if key not in summary:
            continue
        mean_key = f"mean_{key}"
        lines += [f"## {title} against the noise baseline", "",
                  f"| feature | n | n undefined | {mean_key.replace('_', ' ')} | mean ratio | Wilcoxon p |",
                  "|---|---|---|---|---|---|"]
        for name, st in summary[key].items():
            lines.append(f"| {name} | {st['n']} | {st['n_undefined']} | {_fmt(st[mean_key])} | "
                         f"{_fmt(st['mean_ratio'])} | {_fmt(st['wilcoxon_p'])} |")
        lines.append("")
    lines += [f"Joint alignment J: mean {_fmt(summary['J']['mean'])} "
              f"({summary['J']['n_undefined']} undefined).", ""]
    if "F_reached_boundary" in summary:
        lines += [f"Flows that reached the decision boundary: {summary['F_reached_boundary']:.1%}.", ""]
    if "GAD" in summary:
        g = summary["GAD"]
        lines += ["## GAD regions", "",
                  f"Median RC {_fmt(g['median_RC'])} ({g['RC_n_undefined']} undefined); RS of kept "
                  f"regions beats RS of dropped regions in {_fmt(g['RS_win_rate'])} of "
                  f"{g['RS_n_pairs']} pairs, one-sided Wilcoxon p = {_fmt(g['RS_wilcoxon_p'])}"
                  + (f" ({g['RS_test_note']})" if g["RS_test_note"] else "") + ".", ""]
    return "\n".join(lines)
