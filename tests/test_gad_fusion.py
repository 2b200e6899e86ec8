"""Algorithm 2: channel reduction, per-example normalisation, top-q masks, consistency."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_gradflow.gad import consistency_mask, fuse_maps, normalize_per_example, reduce_channels, top_q_mask


def test_reduce_channels_variants():
    a = torch.tensor([[[[1.0, -2.0]], [[-3.0, 1.0]]]])  # (1, 2, 1, 2)
    # one function for fusion and the region metrics: (N, C, *S) -> (N, *S), or keepdim
    assert reduce_channels(a).tolist() == [[[4.0, 3.0]]]
    assert reduce_channels(a, keepdim=True).tolist() == [[[[4.0, 3.0]]]]
    assert reduce_channels(a, "abs_sum", keepdim=True).tolist() == [[[[2.0, 1.0]]]]
    assert reduce_channels(a, "sum", keepdim=True).tolist() == [[[[-2.0, -1.0]]]]
    assert reduce_channels(a, "max_abs", keepdim=True).tolist() == [[[[3.0, 2.0]]]]
    flat = torch.tensor([[1.0, -5.0, 2.0]])
    assert reduce_channels(flat).tolist() == [[1.0, 5.0, 2.0]]
    custom = reduce_channels(a, lambda t: t[:, :1].abs(), keepdim=True)
    assert custom.tolist() == [[[[1.0, 2.0]]]]
    with pytest.raises(ValueError, match="reduce returned"):
        reduce_channels(a, lambda t: t.sum())


def test_normalize_marks_constant_maps_undefined():
    r = torch.stack([torch.arange(4.0).reshape(1, 2, 2), torch.full((1, 2, 2), 3.0)])
    norm, degenerate = normalize_per_example(r)
    assert degenerate.tolist() == [False, True]
    assert norm[0].min() == 0 and norm[0].max() == 1
    assert torch.isnan(norm[1]).all()


def test_top_q_keeps_the_top_fraction_never_the_minimum():
    r = torch.arange(10.0).reshape(1, 1, 2, 5)
    mask, _ = top_q_mask(r, q=0.3)
    assert mask.flatten().tolist() == [False] * 7 + [True] * 3
    full, _ = top_q_mask(r, q=1.0)
    assert full.sum() == 9 and not full.flatten()[0]
    ties = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5]])
    assert top_q_mask(ties, q=0.2)[0].tolist() == [[False, True, True, True, False]]
    zero, degenerate = top_q_mask(torch.zeros(2, 1, 3, 3), 0.2)
    assert not zero.any() and degenerate.all()


def test_consistency_mask_counts_votes():
    a = torch.tensor([True, True, False, True])
    b = torch.tensor([True, False, False, True])
    c = torch.tensor([True, False, True, False])
    assert consistency_mask([a, b, c], 1.0).tolist() == [True, False, False, False]
    assert consistency_mask([a, b, c], 0.5).tolist() == [True, False, False, True]
    assert consistency_mask([a, b, c], 0.01).tolist() == [True, True, True, True]


def test_fuse_keeps_base_values_where_all_agree():
    a0 = torch.tensor([[[[4.0, -3.0], [1.0, 0.5]]]])
    a1 = torch.tensor([[[[0.0, 3.0], [1.0, 4.0]]]])
    result = fuse_maps([a0, a1], q=0.5)
    assert result.attribution.tolist() == [[[[0.0, -3.0], [0.0, 0.0]]]]  # sign of A_0 kept
    assert result.consistency.tolist() == [[[[False, True], [False, False]]]]
    assert len(result.masks) == 2 and result.degenerate.shape == (2, 1)


def test_fuse_rejects_bad_arguments():
    a = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        fuse_maps([a, torch.rand(2, 1, 4, 5)])
    with pytest.raises(ValueError, match="q is the fraction"):
        fuse_maps([a], q=0.0)
    with pytest.raises(ValueError, match="agreement"):
        fuse_maps([a], agreement=1.5)
    with pytest.raises(ValueError, match="reduce must be"):
        fuse_maps([a], reduce="median")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_maps=st.integers(1, 4),
    channels=st.integers(1, 3),
    q=st.floats(0.05, 1.0),
)
def test_full_agreement_keeps_a_subset_of_the_base_top_q(seed, n_maps, channels, q):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(3, channels, 5, 6, generator=g) for _ in range(n_maps)]
    result = fuse_maps(maps, q=q, agreement=1.0)
    assert not (result.consistency & ~result.masks[0]).any()
    kept = result.attribution != 0
    assert torch.equal(result.attribution[kept], maps[0][kept])
    # each mask keeps ceil(q * P) locations (random maps have no ties), never the minimum
    expected = min(math.ceil(q * 30 - 1e-9), 29)
    assert (result.masks[0].flatten(1).sum(1) == expected).all()


@pytest.mark.parametrize("spatial", [(9,), (5, 6), (4, 5, 6)])
def test_fusion_on_signals_images_and_volumes(spatial):
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 2, *spatial, generator=g) for _ in range(3)]
    result = fuse_maps(maps, q=0.3)
    assert result.attribution.shape == maps[0].shape
    assert result.masks[0].shape == (2, 1, *spatial)
    kept = result.attribution != 0
    assert torch.equal(result.attribution[kept], maps[0][kept])
    assert not (result.consistency & ~result.masks[0]).any()
    expected = math.ceil(0.3 * math.prod(spatial) - 1e-9)
    assert (result.masks[0].flatten(1).sum(1) == expected).all()
