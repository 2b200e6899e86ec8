"""The one paired test (captum_gradflow._stats): scipy's Wilcoxon with undefined pairs left out."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from captum_gradflow._stats import ALL_ZERO, NO_PAIR, paired_wilcoxon


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_matches_scipy_on_the_defined_pairs(alternative):
    d = np.random.default_rng(0).normal(0.3, 1.0, size=25)
    with_nan = np.concatenate([d, [np.nan, np.inf, -np.inf]])
    res = paired_wilcoxon(with_nan, alternative)
    ref = wilcoxon(d, alternative=alternative)
    assert res == (float(ref.statistic), float(ref.pvalue), "")


def test_an_untestable_sample_is_nan_with_the_reason():
    empty = paired_wilcoxon([np.nan], no_pair="nothing to pair")
    assert math.isnan(empty.p_value) and math.isnan(empty.statistic) and empty.note == "nothing to pair"
    assert paired_wilcoxon([]).note == NO_PAIR
    zeros = paired_wilcoxon(np.zeros(5))
    assert math.isnan(zeros.p_value) and zeros.note == ALL_ZERO


def test_a_clear_shift_is_significant_one_sided():
    d = np.linspace(0.1, 2.0, 20)
    assert paired_wilcoxon(d).p_value < 1e-5 < 0.99 < paired_wilcoxon(-d).p_value
