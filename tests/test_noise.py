"""NoiseComparison: per-example ratios and p-values, the dataset-level test, pooling (DESIGN 2.3)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from captum_gradflow import NoiseComparison


def test_per_example_ratio_and_empirical_p_value():
    s = torch.tensor([[0.5, 0.01], [0.2, 0.3]])
    noise = torch.tensor([[0.1, 0.3, 0.6, 0.2], [0.1, 0.1, 0.1, 0.1]])
    r = NoiseComparison(s, noise, ["a", "b"])
    assert torch.allclose(r.ratio, torch.tensor([[0.5 / 0.3, 0.01 / 0.3], [2.0, 3.0]], dtype=torch.float64))
    # Example 0: one noise value >= 0.5 for a, all four >= 0.01 for b.
    assert torch.allclose(r.p_value, torch.tensor([[2 / 5, 5 / 5], [1 / 5, 1 / 5]], dtype=torch.float64))
    assert float(r.p_value.min()) >= 1 / (r.n_noise + 1)
    assert torch.allclose(r.mean_ratio, r.ratio.mean(0))


def test_wilcoxon_matches_scipy_and_detects_a_used_feature():
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(40, 8, generator=gen, dtype=torch.float64) * 0.1
    used = noise.mean(1, keepdim=True) + 0.02 + 0.01 * torch.rand(40, 1, generator=gen, dtype=torch.float64)
    unused = torch.rand(40, 1, generator=gen, dtype=torch.float64) * 0.1
    r = NoiseComparison(torch.cat([used, unused], 1), noise, ["used", "unused"])
    for j in range(2):
        d = (r.S[:, j] - noise.mean(1)).numpy()
        assert math.isclose(float(r.wilcoxon_p[j]), wilcoxon(d, alternative="greater").pvalue)
    assert r.wilcoxon_p[0] < 1e-6 < 0.01 < r.wilcoxon_p[1]
    assert r.beats_noise(0.01).tolist() == [True, False]


def test_nans_are_skipped_and_counted():
    s = torch.tensor([[0.5], [float("nan")], [0.4], [0.6]])
    noise = torch.tensor([[0.1, 0.2], [0.1, 0.1], [float("nan"), float("nan")], [0.2, float("nan")]])
    r = NoiseComparison(s, noise, ["f"])
    assert r.n_skipped.tolist() == [2]
    assert torch.isnan(r.ratio[1:3, 0]).all() and torch.isnan(r.p_value[1:3, 0]).all()
    # Example 3 has one defined noise value: p = (1 + 0) / (1 + 1).
    assert float(r.p_value[3, 0]) == pytest.approx(0.5)
    assert float(r.mean_ratio[0]) == pytest.approx((0.5 / 0.15 + 0.6 / 0.2) / 2)
    allnan = NoiseComparison(torch.full((3, 1), float("nan")), torch.rand(3, 2), ["f"])
    assert torch.isnan(allnan.wilcoxon_p).all() and allnan.n_skipped.tolist() == [3]


def test_concat_pools_batches_like_one_report():
    gen = torch.Generator().manual_seed(1)
    s, noise = torch.rand(10, 2, generator=gen), torch.rand(10, 5, generator=gen) * 0.5
    whole = NoiseComparison(s, noise, ["a", "b"])
    pooled = NoiseComparison.concat([NoiseComparison(s[:4], noise[:4], ["a", "b"]),
                                     NoiseComparison(s[4:], noise[4:], ["a", "b"])])
    assert pooled.n_examples == 10
    for name in ("ratio", "p_value", "mean_ratio", "wilcoxon_p", "n_skipped"):
        assert torch.allclose(getattr(pooled, name).double(), getattr(whole, name).double(), equal_nan=True)
    with pytest.raises(ValueError, match="different features"):
        NoiseComparison.concat([whole, NoiseComparison(s, noise, ["a", "c"])])
    with pytest.raises(ValueError, match="at least one"):
        NoiseComparison.concat([])


def test_table_is_readable():
    r = NoiseComparison(torch.tensor([[0.5, 0.1]] * 3), torch.full((3, 4), 0.05), ["brightness", "extent"])
    text = str(r)
    lines = text.splitlines()
    assert "4 noise features on 3 examples" in lines[0]
    assert "Wilcoxon p" in lines[1] and "mean ratio" in lines[1]
    assert lines[3].startswith("brightness") and lines[4].startswith("extent")
    assert "10" in lines[3]  # mean ratio 0.5 / 0.05


def test_shape_errors():
    with pytest.raises(ValueError, match="same N"):
        NoiseComparison(torch.rand(3, 1), torch.rand(4, 2), ["f"])
    with pytest.raises(ValueError, match="names"):
        NoiseComparison(torch.rand(3, 2), torch.rand(3, 2), ["f"])
    with pytest.raises(TypeError, match="tensors"):
        NoiseComparison(np.zeros((3, 1)), torch.rand(3, 2), ["f"])
