"""region_complexity (RC): exact ratios, invariances, undefined cases and bad input."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_gradflow.metrics import RegionComplexity, attribution_regions, region_complexity


def blob_map(n=3, size=24, seed=0):
    """Smooth random maps: a few blobs each, like real saliency."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def test_rc_of_a_map_against_itself_is_one():
    a = blob_map()
    result = region_complexity(a, a)
    assert isinstance(result, RegionComplexity)
    assert torch.equal(result.rc, torch.ones(3, dtype=torch.float64))
    assert torch.equal(result.n_regions, result.reference_n_regions)
    assert result.n_undefined == 0 and result.reasons == ["", "", ""]


def test_exact_ratio_of_hand_made_maps():
    base = torch.zeros(2, 1, 16, 16)
    base[:, :, 2:10, 2:10] = 1.0  # 64 pixels
    gad = base.clone()
    gad[0, :, 6:10] = 0.0  # the top half: 32
    gad[1] = 0.0
    gad[1, 0, 3, 3] = gad[1, 0, 8, 8] = 1.0  # two single pixels: 2
    result = region_complexity(gad, base, q=1.0)
    assert result.rc.tolist() == [0.5, 2.0 / 64.0]
    assert result.n_regions.tolist() == [1, 2] and result.reference_n_regions.tolist() == [1, 1]
    assert result.area.tolist() == [32.0, 2.0] and result.reference_area.tolist() == [64.0, 64.0]


def test_translation_does_not_change_rc():
    gad = torch.zeros(1, 1, 32, 32)
    gad[0, 0, 3:6, 4:9] = 1.0
    gad[0, 0, 7, 2] = 0.5
    base = gad.clone()
    base[0, 0, 3:11, 2:12] += 0.2
    base[0, 0, 12, 12] = 0.7
    first = region_complexity(gad, base, q=1.0)
    shift = lambda t: torch.roll(t, (9, 13), (2, 3))  # noqa: E731 - zero border: no wrap
    moved = region_complexity(shift(gad), shift(base), q=1.0)
    assert first.rc.item() == moved.rc.item()
    assert first.area.item() == moved.area.item()
    assert first.reference_area.item() == moved.reference_area.item()
    assert 0 < first.rc.item() < 1


def test_gad_like_subset_has_rc_at_most_one():
    base = blob_map(n=4, seed=1)
    top = base.flatten(1) >= base.flatten(1).quantile(0.8, dim=1, keepdim=True)
    gad = base * (top.reshape(base.shape) & (torch.rand(base.shape) < 0.7))
    result = region_complexity(gad, base)
    assert (result.rc <= 1.0).all() and (result.rc > 0).all()


def test_empty_attr_gives_zero_and_empty_reference_gives_nan_with_reason():
    a, ref = blob_map(n=2), blob_map(n=2, seed=3)
    a[0] = 0.0
    ref[1] = 0.0
    result = region_complexity(a, ref)
    assert result.rc[0].item() == 0.0
    assert torch.isnan(result.rc[1]) and result.n_undefined == 1
    assert "reference has no region" in result.reasons[1] and result.reasons[0] == ""
    assert result.mean() == 0.0  # NaN skipped


def test_accepts_regions_numpy_and_mixed_channels():
    a, ref = blob_map(seed=4), blob_map(seed=5)
    expected = region_complexity(a, ref).rc
    regions = attribution_regions(ref)
    assert torch.equal(region_complexity(a, regions).rc, expected)
    assert torch.equal(region_complexity(a.numpy(), ref.numpy()).rc, expected)
    assert torch.equal(region_complexity(a.repeat(1, 3, 1, 1) / 3, ref).rc, expected)


def test_separate_calls_equal_the_batched_one():
    a, ref = blob_map(seed=6), blob_map(seed=7)
    together = region_complexity(a, ref, q=0.3)
    alone = attribution_regions(a, q=0.3).area / attribution_regions(ref, q=0.3).area
    assert torch.allclose(together.rc, alone, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    maps=arrays(np.float32, st.tuples(st.just(2), st.integers(1, 8), st.integers(1, 8)),
                elements=st.sampled_from([0.0, 0.25, 1.0, 4.0])),
    q=st.floats(0.05, 1.0),
)
def test_rc_is_non_negative_or_nan(maps, q):
    result = region_complexity(torch.from_numpy(maps[:1]), torch.from_numpy(maps[1:]), q=q)
    rc = result.rc
    assert bool(torch.isnan(rc).item()) == (result.reference_area.item() == 0)
    assert torch.isnan(rc).item() or rc.item() >= 0


def test_bad_input_raises_clear_errors():
    a = blob_map()
    with pytest.raises(ValueError, match="differ in shape"):
        region_complexity(a, blob_map(size=28))
    with pytest.raises(ValueError, match="differ in shape"):
        region_complexity(a, a[:2])
    with pytest.raises(ValueError, match="q must be"):
        region_complexity(a, a, q=0.0)
    bad = a.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        region_complexity(bad, a)
    with pytest.raises(TypeError):
        region_complexity(a, [1, 2, 3])
