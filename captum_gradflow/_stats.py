"""The one paired significance test of the package: the Wilcoxon signed-rank test.

Used wherever a method is said to beat another "per example": a feature's alignment against
its noise baseline (docs/definitions.md, section 2.3), the GAD regions' sensitivity against
the dropped regions' (section 4), and the demo's paired comparisons. Undefined pairs are left
out, and a test with nothing to rank is NaN with the reason, never an error.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import wilcoxon

__all__ = ["PairedTest", "paired_wilcoxon"]

NO_PAIR = "no pair with both values defined"
ALL_ZERO = "all paired differences are zero"


class PairedTest(NamedTuple):
    """Result of :func:`paired_wilcoxon`: NaN statistic and p-value with a ``note`` saying why
    when the test cannot be run, ``note == ""`` otherwise."""

    statistic: float
    p_value: float
    note: str


def paired_wilcoxon(diff: Any, alternative: str = "greater", no_pair: str = NO_PAIR) -> PairedTest:
    """Wilcoxon signed-rank test of the paired differences ``diff`` (``scipy.stats.wilcoxon``).

    Non-finite differences (a pair with an undefined value) are left out. With none left the
    result is NaN with the note ``no_pair``; with only zero differences (nothing to rank) it
    is NaN with a note saying so. scipy's small-sample notes are silenced: the p-value stands.

    Args:
        diff: Paired differences ``a - b``, any array-like of numbers.
        alternative: ``"greater"`` (the default, ``a > b``), ``"less"`` or ``"two-sided"``.
        no_pair: The note when no finite difference is left, in the caller's words.

    Examples::

        >>> paired_wilcoxon([0.5, 1.0, 2.0, float("nan")]).p_value
        0.125
        >>> paired_wilcoxon([0.0, 0.0]).note
        'all paired differences are zero'
    """
    d = np.asarray(diff, dtype=np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return PairedTest(math.nan, math.nan, no_pair)
    if np.count_nonzero(d) == 0:
        return PairedTest(math.nan, math.nan, ALL_ZERO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = wilcoxon(d, alternative=alternative)
    return PairedTest(float(res.statistic), float(res.pvalue), "")
