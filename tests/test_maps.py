"""The map toolkit: one channel reduction, normalisation and top-q selection for 1-3 axes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_gradflow import maps
from captum_gradflow.gad import fuse_maps
from captum_gradflow.maps import normalize_per_example, reduce_channels, top_q_mask
from captum_gradflow.metrics import attribution_regions, region_complexity


@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)])
def test_reduce_channels_any_number_of_axes(spatial):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
    assert torch.allclose(reduce_channels(a), a.abs().sum(1))
    assert torch.allclose(reduce_channels(a, "abs_sum"), a.sum(1).abs())
    assert torch.allclose(reduce_channels(a, "sum"), a.sum(1))
    assert torch.allclose(reduce_channels(a, "max_abs"), a.abs().amax(1))
    assert reduce_channels(a, keepdim=True).shape == (2, 1, *spatial)
    for name in ("sum_abs", "abs_sum", "sum", "max_abs"):
        assert np.allclose(maps.reduce_channels_numpy(a, name), reduce_channels(a, name).numpy())
    with pytest.raises(ValueError, match='reduce="none" needs one channel'):
        reduce_channels(a, "none")
    with pytest.raises(ValueError, match="reduce must be one of"):
        reduce_channels(a, "median")


def test_metrics_and_gad_share_one_reduce_channels():
    from captum_gradflow import gad, metrics

    assert metrics.reduce_channels is maps.reduce_channels is gad.reduce_channels
    assert gad.top_q_mask is maps.top_q_mask


def test_top_q_ties_zeros_and_non_finite():
    r = torch.tensor([[3.0, 2.0, 2.0, 2.0, 0.0, 0.0], [0.0] * 6, [1.0, float("nan"), 2, 3, 4, 5]])
    mask, degenerate = top_q_mask(r, q=0.34)  # k = 3
    assert mask[0].tolist() == [True, True, True, True, False, False]  # ties with the cut kept
    assert not mask[1].any() and not mask[2].any()  # zeros never kept; NaN keeps nothing
    assert degenerate.tolist() == [False, True, True]
    full, _ = top_q_mask(r[:1], q=1.0)
    assert full[0].tolist() == [True] * 4 + [False] * 2  # exact zeros never kept
    above, _ = top_q_mask(r[:1], threshold=2.0)
    assert above[0].tolist() == [True] + [False] * 5


def test_top_q_is_the_same_on_every_device_path():
    g = torch.Generator().manual_seed(3)
    r = torch.randint(0, 5, (4, 2, 3, 4), generator=g).double()
    numpy_path = top_q_mask(r, q=0.3).mask
    torch_path = top_q_mask(r.to(torch.float16), q=0.3).mask  # no numpy fast path
    assert torch.equal(numpy_path, torch_path)


def test_normalize_per_example_volumes():
    r = torch.arange(2 * 8.0).reshape(2, 2, 2, 2)
    out, degenerate = normalize_per_example(r)
    assert out.shape == r.shape and not degenerate.any()
    assert out[0].min() == 0 and out[1].max() == 1


def test_gad_regions_never_exceed_the_base_regions_on_volumes():
    """RC <= 1 by construction: fusion and regions select with the same code."""
    g = torch.Generator().manual_seed(0)
    smooth = lambda t: torch.nn.functional.avg_pool3d(t, 3, 1, 1)  # noqa: E731
    base, other = (smooth(torch.randn(3, 2, 12, 12, 12, generator=g)) for _ in range(2))
    for q in (0.05, 0.2, 0.5):
        fused = fuse_maps([base, other], q=q)
        assert fused.attribution.shape == base.shape
        gad_kept = attribution_regions(fused.attribution, q=q).kept
        base_kept = attribution_regions(base, q=q).kept
        assert not (gad_kept & ~base_kept).any()
        rc = region_complexity(fused.attribution, base, q=q).rc
        assert (rc <= 1 + 1e-12).all() and (rc > 0).all()


def test_top_k_count():
    # regions.keep_pixels and top_q_mask both use it (test_metrics_regions checks they agree)
    assert maps.top_k_count(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    assert maps.top_k_count(0.01, 10) == 1 and maps.top_k_count(1.0, 7) == 7
