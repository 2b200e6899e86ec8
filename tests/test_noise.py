"""The noise baseline: make_noise, NoiseComparison ratios, p-values, the paired test, pooling (docs/definitions.md, 2.3)."""
from __future__ import annotations

import math
import warnings

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


# ---------------------------------------------------------------- make_noise
from captum_gradflow import (  # noqa: E402
    Brightness,
    Extent,
    Feature,
    FeatureAlignment,
    LogAspectRatio,
    NoiseFeature,
)
from captum_gradflow.noise import NoiseSet, make_noise  # noqa: E402


def _disc(radius: float, size: int = 32, n: int = 1) -> torch.Tensor:
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    return torch.as_tensor((yy ** 2 + xx ** 2 <= radius ** 2).astype(np.float32))[None, None].expand(n, 1, size, size)


def test_make_noise_follows_the_features_common_mask():
    x = torch.rand(3, 1, 32, 32)
    mask = _disc(6, n=3).clone()
    shared = make_noise([Brightness(mask=mask), Extent(mask=mask)], x, None, 4)
    assert isinstance(shared, NoiseSet) and shared.mask is mask and shared.center
    assert all(isinstance(f, NoiseFeature) and f.mask is mask and f.center for f in shared.features)
    assert "the features' common mask (per-example)" in shared.description
    equal = make_noise([Brightness(mask=mask), Extent(mask=mask.clone())], x, None, 2)
    assert equal.mask is mask
    call = _disc(4)
    assert make_noise([Brightness(mask=mask)], x, call, 2).mask is call  # the call's mask wins
    with pytest.warns(RuntimeWarning, match="covers"):
        differing = make_noise([Brightness(mask=mask), Extent(mask=_disc(3))], x, None, 2)
    assert differing.mask is None and "no common mask" in differing.description
    # A feature on another input does not take part.
    other = Brightness(mask=_disc(2), input_index=1)
    assert make_noise([Brightness(mask=mask), other], (x, x), None, 2).mask is mask


def test_make_noise_auto_sigma_is_the_masks_radius_of_gyration_on_every_axis():
    x = torch.rand(2, 1, 32, 32)
    ns = make_noise([Brightness()], x, _disc(8), 3)
    rg = float(Extent()(torch.ones(1, 1, 32, 32), _disc(8)))
    assert ns.smooth_sigma == pytest.approx((rg, rg), abs=1e-3) and rg == pytest.approx(8 / 2 ** 0.5, rel=0.05)
    assert all(f.smooth_sigma == ns.smooth_sigma for f in ns.features)
    vol = torch.rand(2, 2, 6, 7, 8)
    ns3 = make_noise([Brightness()], vol, None, 2)
    assert len(ns3.smooth_sigma) == 3 and ns3.mask is None and "whole input" in ns3.description
    assert "px per axis" in ns3.description and "not centred" not in ns3.description
    assert "centred" in ns3.description
    given = make_noise([Brightness()], vol, None, 2, smooth_sigma=(1.0, 2.0, 3.0), center_noise=False)
    assert given.smooth_sigma == (1.0, 2.0, 3.0) and "not centred" in given.description
    assert make_noise([Brightness()], vol, None, 2, smooth_sigma=None).smooth_sigma is None


def test_make_noise_on_non_spatial_inputs():
    x = torch.rand(5, 10)
    lin = [Feature.from_callable(lambda t: t.sum(1), "sum")]
    ns = make_noise(lin, x, None, 3)
    assert ns.smooth_sigma is None and ns.mask is None and len(ns.features) == 3
    with pytest.raises(ValueError, match=r"needs spatial inputs \(N, C, \*spatial\); got \(N, d\)"):
        make_noise(lin, x, None, 3, noise_mask=torch.ones(10))
    with pytest.raises(ValueError, match=r"smooth_sigma needs spatial inputs"):
        make_noise(lin, x, None, 3, smooth_sigma=2.0)
    with pytest.raises(ValueError, match="n_noise"):
        make_noise(lin, x, None, 0)


def test_make_noise_warns_when_the_noise_covers_much_more_than_the_features():
    x = torch.rand(2, 1, 32, 32)
    feats = [Brightness(mask=_disc(5))]
    with pytest.warns(RuntimeWarning, match=r"the noise covers .*x the features' area \(the whole input"):
        make_noise(feats, x, None, 2, noise_mask=None)
    with pytest.warns(RuntimeWarning, match="its mask"):
        make_noise(feats, x, None, 2, noise_mask=_disc(12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_noise(feats, x, None, 2)
        make_noise(feats, x, None, 2, noise_mask=_disc(9))  # 3.2x the area: no warning
        make_noise([Brightness()], x, None, 2, noise_mask=None)  # unmasked features


def test_centred_noise_is_orthogonal_to_the_mask_and_declares_its_centred_direction():
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    mask = _disc(5, size=16).double()
    ns = make_noise([Brightness(mask=mask)], x, None, 3)
    for f in ns.features:
        g = f.gradient(x)
        assert torch.allclose((g * mask).flatten(1).sum(1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
        r, w = f.centred_direction(x), mask * mask  # (r - c) * m, c the mean of r under m^2
        torch.testing.assert_close(g, ((r - (r * w).sum() / w.sum()) * mask).expand_as(x))


def test_table_shows_the_construction_and_concat_keeps_it():
    r = NoiseComparison(torch.rand(3, 1), torch.rand(3, 2), ["f"], construction="2 directions; whole input")
    assert "noise: 2 directions; whole input" in str(r)
    assert NoiseComparison.concat([r, r]).construction == r.construction
    with pytest.raises(ValueError, match="different noise constructions"):
        NoiseComparison.concat([r, NoiseComparison(r.S, r.S_noise, ["f"], construction="other")])




def _verdict(model, test, feats, ns):
    s = FeatureAlignment(model, feats).attribute(test.images, target=test.labels)
    s_noise = FeatureAlignment(model, ns.features).attribute(test.images, target=test.labels)
    return NoiseComparison(s, s_noise, [f.name for f in feats], ns.description)


def test_default_noise_finds_brightness_and_not_the_decoys(brightness_model):
    """Label = brightness: extent and aspect ratio of the same lesions are decoys."""
    model, test = brightness_model
    feats = [Brightness(mask=test.masks), Extent(mask=test.masks), LogAspectRatio(mask=test.masks)]
    default = _verdict(model, test, feats, make_noise(feats, test.images, None, 32))
    assert default.wilcoxon_p[0] < 0.01 and default.mean_ratio[0] > 5
    assert (default.wilcoxon_p[1:] > 0.05).all()
    # Whole-input unsmoothed noise flatters: the decoys come out significant too.
    with pytest.warns(RuntimeWarning, match="covers"):
        whole = make_noise(feats, test.images, None, 32, noise_mask=None, smooth_sigma=None, center_noise=False)
    flattered = _verdict(model, test, feats, whole)
    assert (flattered.wilcoxon_p < 1e-6).all()
    # Uncentred masked noise shares the mask's mean direction: its S follows brightness' S.
    uncentred = _verdict(model, test, feats, make_noise(feats, test.images, None, 32, center_noise=False))
    assert uncentred.mean_S_noise > 5 * default.mean_S_noise
    assert uncentred.mean_ratio[0] < default.mean_ratio[0] / 5


def test_uncentred_make_noise_matches_compare_to_noise(brightness_model):
    model, test = brightness_model
    x, y = test.images[:24], test.labels[:24]
    feats = [Brightness(mask=test.masks[:24])]
    ns = make_noise(feats, x, None, 6, center_noise=False)
    rep = FeatureAlignment(model, feats).compare_to_noise(x, y, n_noise=6, noise_mask=ns.mask,
                                                          smooth_sigma=ns.smooth_sigma[0], center_noise=False)
    mine = _verdict(model, test[:24], feats, ns)
    torch.testing.assert_close(rep.S_noise, mine.S_noise, rtol=1e-4, atol=1e-7)


def test_noise_baseline_on_volumes_end_to_end():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.ELU(), torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 7 * 8, 2)
    ).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 6, 7, 8, generator=gen)
    mask = torch.zeros(4, 1, 6, 7, 8)
    mask[:, :, 1:5, 2:6, 2:7] = 1.0
    feats = [Brightness(mask=mask), Extent(mask=mask), LogAspectRatio(mask=mask)]
    ns = make_noise(feats, x, None, 5)
    assert ns.mask is mask and len(ns.smooth_sigma) == 3
    rep = _verdict(model, _Batch(x, torch.tensor([0, 1, 0, 1])), feats, ns)
    assert rep.S.shape == (4, 3) and rep.S_noise.shape == (4, 5)
    assert torch.isfinite(rep.S).all() and ((rep.S_noise >= 0) & (rep.S_noise <= 1)).all()
    sigma = f"{ns.smooth_sigma[0]:g}"
    assert f"Gaussian sigma {sigma} x {sigma} x {sigma} px per axis" in rep.construction


class _Batch:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels
