"""Numbers as the report prints them, and the few statistics the demo's tables need."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from captum_gradflow._stats import paired_wilcoxon

__all__ = ["finite_or_none", "nanmean", "nanmedian", "p_cell", "p_is", "paired_greater", "pct"]


def pct(v: float) -> str:
    """A fraction as a percentage cell, ``n/a`` where undefined."""
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def p_cell(v: float) -> str:
    """A p-value as a table cell."""
    return "n/a" if v is None or not math.isfinite(v) else (f"{v:.2g}" if v >= 1e-4 else "< 1e-4")


def p_is(v: float) -> str:
    """A p-value in a sentence: ``p = 0.03`` or ``p < 1e-4``."""
    cell = p_cell(v)
    return f"p {cell}" if cell.startswith("<") else f"p = {cell}"


def nanmean(t: Tensor) -> float:
    """Mean over the defined entries; NaN when there are none."""
    t = t[~torch.isnan(t)]
    return float(t.mean()) if t.numel() else math.nan


def nanmedian(t: Tensor) -> float:
    """Median over the defined entries; NaN when there are none."""
    t = t[~torch.isnan(t)]
    return float(t.median()) if t.numel() else math.nan


def paired_greater(a: Tensor, b: Tensor) -> float:
    """One-sided Wilcoxon signed-rank p-value of ``a > b`` over pairs where both are defined."""
    return paired_wilcoxon((a.double() - b.double()).numpy()).p_value


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj
