"""region_sensitivity (RS) and the paired GAD comparison, on models whose answer is known."""
import warnings

import pytest
import torch
from torch import nn

from captum_gradflow.metrics import (
    RegionSensitivity,
    attribution_regions,
    compare_region_sensitivity,
    region_sensitivity,
)

SIZE = 16


class CornerModel(nn.Module):
    """Two logits that depend only on the 6x6 block at rows/cols 2..7 (channel sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls = 0
        self.rows = 0

    def forward(self, x, gain=None):
        self.calls += 1
        self.rows += x.shape[0]
        s = self.scale * x[..., 2:8, 2:8].flatten(1).sum(1)
        if gain is not None:
            s = s * gain
        return torch.stack([s, -s], 1)


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g)
    x[..., 2:8, 2:8] += 1.0  # brighter than the mean: occluding it lowers logit 0
    return x


def block_mask(n, r0, c0, side=4):
    m = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    m[:, r0:r0 + side, c0:c0 + side] = True
    return m


def test_occluding_the_used_region_beats_every_region_outside_it():
    model, x = CornerModel(), images()
    inside = region_sensitivity(model, x, block_mask(4, 3, 3), target=0)
    assert (inside > 0).all()
    for r0, c0 in [(10, 10), (0, 10), (10, 0), (8, 8), (12, 4)]:
        outside = region_sensitivity(model, x, block_mask(4, r0, c0), target=0)
        assert (inside > outside).all()
        assert torch.equal(outside, torch.zeros(4, dtype=torch.float64))


def test_value_is_margin_drop_per_occluded_fraction_with_mean_fill():
    model, x = CornerModel(), images(2)
    mask = block_mask(2, 2, 2, side=6)
    mean = x.mean(dim=(-2, -1)).flatten()
    clean = 2 * x[..., 2:8, 2:8].flatten(1).sum(1)  # margin = logit0 - logit1
    expected = (clean - 2 * 36 * mean) / (36 / SIZE**2)
    rs = region_sensitivity(model, x, mask, target=0)
    assert torch.allclose(rs, expected.double(), rtol=1e-5)
    zero_fill = region_sensitivity(model, x, mask, target=0, baseline=0.0)
    assert torch.allclose(zero_fill, (clean / (36 / SIZE**2)).double(), rtol=1e-5)
    per_example = region_sensitivity(model, x, mask, target=0, baseline=mean.reshape(2, 1, 1, 1))
    assert torch.allclose(per_example, rs, rtol=1e-6)


def test_targets_scores_and_details():
    model, x = CornerModel(), images()
    mask = block_mask(4, 3, 3)
    by_int = region_sensitivity(model, x, mask, target=0)
    assert torch.equal(region_sensitivity(model, x, mask, target=[0, 0, 0, 0]), by_int)
    by_tensor = region_sensitivity(model, x, mask, target=torch.zeros(4, dtype=torch.long))
    assert torch.equal(by_tensor, by_int)
    assert torch.equal(region_sensitivity(model, x, mask, target=1), -by_int)
    prob = region_sensitivity(model, x, mask, target=0, score="probability")
    assert (prob >= 0).all() and (prob * 16 / SIZE**2 <= 1).all()
    details = region_sensitivity(model, x, mask, target=0, return_details=True)
    assert isinstance(details, RegionSensitivity)
    assert torch.equal(details.values, by_int) and details.n_undefined == 0
    assert torch.allclose(details.fraction, torch.full((4,), 16 / SIZE**2, dtype=torch.float64))
    assert (details.score > details.occluded_score).all()


def test_batching_is_invisible_and_forward_passes_are_shared():
    model, x = CornerModel(), images(5)
    mask = block_mask(5, 3, 3)
    whole = region_sensitivity(model, x, mask, target=0)
    assert model.calls == 1 and model.rows == 10  # clean + occluded in one pass
    for step in (1, 3, 4, 7):
        model.calls = 0
        assert torch.equal(region_sensitivity(model, x, mask, target=[0, 1, 0, 1, 0],
                                              max_examples_per_batch=step)[::2], whole[::2])
        assert model.calls == -(-10 // step)


def test_additional_forward_args_follow_their_examples():
    model, x = CornerModel(), images(4)
    gain = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = block_mask(4, 3, 3)
    base = region_sensitivity(model, x, mask, target=0)
    for step in (None, 3):
        rs = region_sensitivity(model, x, mask, target=0, additional_forward_args=(gain,),
                                max_examples_per_batch=step)
        assert torch.allclose(rs, base * gain.double())


def test_tuple_inputs_and_regions_from_attributions():
    class Two(nn.Module):
        def forward(self, a, b):
            s = a[..., 2:8, 2:8].flatten(1).sum(1) + 0 * b.flatten(1).sum(1)
            return torch.stack([s, -s], 1)

    x = images(3)
    attr = torch.zeros(3, 1, SIZE, SIZE)
    attr[..., 3:7, 3:7] = 1.0
    rs = region_sensitivity(Two(), (x, x.clone()), (attr, None), target=0, region_kwargs={"q": 1.0})
    single = region_sensitivity(CornerModel(), x, attribution_regions(attr, q=1.0), target=0)
    # half of the pixels are in the untouched second input: the fraction halves, RS doubles
    assert torch.allclose(rs, single * 2)


def test_model_inputs_and_flags_are_untouched_even_under_no_grad():
    model, x = CornerModel().train(), images()
    x.requires_grad_(True)
    before = x.detach().clone()
    with torch.no_grad():
        rs = region_sensitivity(model, x, block_mask(4, 3, 3), target=0)
    assert torch.isfinite(rs).all()
    assert model.training and model.scale.requires_grad and model.scale.grad is None
    assert x.requires_grad and torch.equal(x.detach(), before)


def test_empty_region_gives_nan_with_reason_and_warning():
    model, x = CornerModel(), images(3)
    mask = block_mask(3, 3, 3)
    mask[1] = False
    with pytest.warns(RuntimeWarning, match="1 of 3 values are NaN.*empty region"):
        rs = region_sensitivity(model, x, mask, target=0)
    assert torch.isnan(rs[1]) and torch.isfinite(rs[[0, 2]]).all()
    details = region_sensitivity(model, x, mask, target=0, return_details=True)
    assert details.n_undefined == 1 and "empty region" in details.reasons[1]


def test_compare_finds_that_gad_kept_what_matters():
    model, x = CornerModel(), images(8, seed=2)
    base = torch.zeros(8, 1, SIZE, SIZE)
    base[..., 2:8, 2:14] = 1.0  # the used block and a useless block beside it
    gad = base.clone()
    gad[..., :, 8:] = 0.0  # GAD keeps the used block only
    result = compare_region_sensitivity(model, x, gad, base, target=0, region_kwargs={"q": 1.0})
    assert result.n_pairs == 8 and result.n_undefined == 0
    assert result.win_rate == 1.0
    with pytest.warns(DeprecationWarning, match="win_rate"):
        assert result.gad_wins == result.win_rate  # the old name still reads the rate
    assert torch.equal(result.rest, torch.zeros(8, dtype=torch.float64))
    assert result.p_value == pytest.approx(1 / 256)  # exact one-sided test, 8 positive pairs
    assert torch.allclose(result.gad_fraction, torch.full((8,), 36 / SIZE**2, dtype=torch.float64))
    reverse = compare_region_sensitivity(model, x, base - gad, base, target=0,
                                         region_kwargs={"q": 1.0})
    assert reverse.win_rate == 0.0 and reverse.p_value > 0.99


def test_compare_reports_undefined_pairs():
    model, x = CornerModel(), images(4)
    base = torch.zeros(4, 1, SIZE, SIZE)
    base[..., 2:8, 2:8] = 1.0
    gad = base.clone()
    gad[0] = 0.0  # GAD empty
    result = compare_region_sensitivity(model, x, gad, base, target=0, region_kwargs={"q": 1.0})
    # example 0: GAD empty; the others: GAD == base, nothing left to compare with
    assert result.n_undefined == 4 and result.n_pairs == 0
    assert "GAD: empty region" in result.reasons[0] and "base minus GAD" in result.reasons[1]
    assert result.test_note and torch.isnan(torch.tensor(result.p_value))


def test_bad_input_raises_clear_errors_and_changes_nothing():
    model, x = CornerModel(), images()
    mask = block_mask(4, 3, 3)
    with pytest.raises(ValueError, match="do not match"):
        region_sensitivity(model, x, block_mask(3, 3, 3), target=0)
    with pytest.raises(ValueError, match="do not match"):
        region_sensitivity(model, x, torch.rand(4, 1, 8, 8), target=0)
    bad = x.clone()
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        region_sensitivity(model, bad, mask, target=0)
    with pytest.raises(ValueError, match="score"):
        region_sensitivity(model, x, mask, target=0, score="logit")
    with pytest.raises(ValueError, match="baseline"):
        region_sensitivity(model, x, mask, target=0, baseline="median")
    with pytest.raises(ValueError, match="broadcast"):
        region_sensitivity(model, x, mask, target=0, baseline=torch.zeros(3, 1, 1, 1))
    with pytest.raises(ValueError, match="max_examples_per_batch"):
        region_sensitivity(model, x, mask, target=0, max_examples_per_batch=0)
    with pytest.raises(IndexError):
        region_sensitivity(model, x, mask, target=5)
    with pytest.raises(ValueError, match="alternative"):
        compare_region_sensitivity(model, x, mask, mask, target=0, alternative="bigger")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(x, images())  # inputs untouched by the failed calls


class CubeModel(nn.Module):
    """Logit 0 is the sum over the 4x4x4 block at 2..5 of a volume; BatchNorm for the guard."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm3d(1)

    def forward(self, x):
        block = (..., slice(2, 6), slice(2, 6), slice(2, 6))
        s = self.norm(x)[block].flatten(1).sum(1) + x[block].flatten(1).sum(1)
        return torch.stack([s, -s], 1)


def volumes(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 10, 10, 10, generator=g)
    x[..., 2:6, 2:6, 2:6] += 1.0
    return x


def test_region_sensitivity_occludes_voxels():
    model, x = CubeModel().eval(), volumes()
    mask = torch.zeros(5, 10, 10, 10, dtype=torch.bool)
    mask[:, 2:6, 2:6, 2:6] = True
    details = region_sensitivity(model, x, mask, target=0, return_details=True)
    assert torch.allclose(details.fraction, torch.full((5,), 64 / 1000, dtype=torch.float64))
    # the block is replaced by each example's mean: the score drops by the block's excess
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    occluded = torch.where(mask[:, None], mean, x)
    margin = lambda out: out[:, 0] - out[:, 1]  # noqa: E731
    expected = (margin(model(x)) - margin(model(occluded))).double() / (64 / 1000)
    assert torch.allclose(details.values, expected.detach(), rtol=1e-5)
    attr = mask[:, None].float()
    via_regions = region_sensitivity(model, x, attribution_regions(attr, q=1.0), target=0)
    via_maps = region_sensitivity(model, x, attr, target=0, region_kwargs={"q": 1.0})
    assert torch.allclose(via_regions, details.values) and torch.allclose(via_maps, details.values)
    with pytest.raises(ValueError, match="do not match"):
        region_sensitivity(model, x, mask[:, :5], target=0)


def test_compare_region_sensitivity_on_volumes_and_the_guard():
    model, x = CubeModel().train(), volumes(6)
    stats = model.norm.running_mean.clone()
    base = torch.zeros(6, 1, 10, 10, 10)
    base[..., 2:8] = 1.0  # the used block and more
    gad = base.clone()
    gad[..., 6:, :, :] = 0.0
    gad[..., :, 6:, :] = 0.0
    gad[..., :, :, 6:] = 0.0
    with pytest.warns(UserWarning, match="train mode"):
        result = compare_region_sensitivity(model, x, gad, base, target=0, region_kwargs={"q": 1.0})
    assert result.n_pairs == 6 and result.win_rate == 1.0
    assert model.training and torch.equal(model.norm.running_mean, stats)
    with pytest.raises(ValueError, match="empty batch"):
        compare_region_sensitivity(model, x[:0], gad[:0], base[:0], target=0)
