"""Built-in features: closed-form gradients, sensible values, noise features, masks (DESIGN 2.7)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from captum_gradflow import (
    Brightness,
    Extent,
    Feature,
    LinearFeature,
    LogAspectRatio,
    NoiseFeature,
    noise_features,
    synthetic_lesions,
)


def ellipse(a: float, b: float, size: int = 32, value: float = 1.0, angle: float = 0.0) -> torch.Tensor:
    """A soft ellipse with semi-axes ``a``, ``b`` on a zero background, ``(1, 1, size, size)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return torch.as_tensor(value / (1.0 + np.exp((r - 1.0) * 8.0)))[None, None]


def autograd_gradient(feature: Feature, x: torch.Tensor, mask=None) -> torch.Tensor:
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(feature(xg, mask).sum(), xg)
    return g


@pytest.fixture(scope="module")
def lesions64():
    data = synthetic_lesions(12, size=24, seed=1, rule="brightness")
    return data.images.double(), data.masks.double()


@pytest.mark.parametrize("feature_cls", [Brightness, Extent, LogAspectRatio])
@pytest.mark.parametrize("mask_kind", ["per_example", "shared", "none"])
def test_closed_form_gradient_equals_autograd(lesions64, feature_cls, mask_kind):
    x, masks = lesions64
    mask = {"per_example": masks, "shared": masks[:1], "none": None}[mask_kind]
    f = feature_cls()
    assert f.has_closed_form
    closed = f.gradient(x, mask)
    auto = autograd_gradient(f, x, mask)
    assert closed.shape == x.shape
    assert torch.allclose(closed, auto, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("feature_cls", [Brightness, Extent, LogAspectRatio])
def test_closed_form_gradient_equals_autograd_on_colour_images(feature_cls):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64, generator=gen)
    mask = torch.rand(3, 1, 12, 12, dtype=torch.float64, generator=gen)
    f = feature_cls(mask=mask)
    assert torch.allclose(f.gradient(x), autograd_gradient(f, x), rtol=1e-7, atol=1e-10)


def test_brightness_tracks_lesion_intensity():
    dim, bright = ellipse(5, 5, value=0.3), ellipse(5, 5, value=0.8)
    mask = (ellipse(7, 7) > 0.5).double()
    assert Brightness()(bright, mask) > Brightness()(dim, mask)
    assert abs(float(Brightness()(bright, mask)) - float((bright * mask).sum() / mask.sum())) < 1e-12
    data = synthetic_lesions(60, size=32, seed=2)
    values = Brightness()(data.images, data.masks)
    assert spearmanr(values.numpy(), data.params["brightness"].numpy()).statistic > 0.95


def test_extent_tracks_lesion_size():
    small, large = ellipse(4, 4), ellipse(9, 9)
    assert Extent()(large) > Extent()(small) * 1.8
    data = synthetic_lesions(60, size=32, seed=3)
    values = Extent()(data.images, data.masks)
    assert spearmanr(values.numpy(), data.params["extent"].numpy()).statistic > 0.8


def test_log_aspect_ratio_zero_for_round_and_positive_for_elongated():
    round_value = float(LogAspectRatio()(ellipse(6, 6)))
    assert abs(round_value) < 1e-6
    long_value = float(LogAspectRatio()(ellipse(10, 4, angle=0.7)))
    assert long_value > 1.0
    # Rotation does not change it.
    assert abs(float(LogAspectRatio()(ellipse(10, 4, angle=0.0))) - long_value) < 0.05
    data = synthetic_lesions(60, size=32, seed=4)
    values = LogAspectRatio()(data.images, data.masks)
    assert spearmanr(values.numpy(), data.params["aspect"].numpy()).statistic > 0.8


def test_noise_feature_deterministic_unit_norm_and_distinct():
    x = torch.rand(2, 1, 16, 16)
    a, b, c = NoiseFeature(5), NoiseFeature(5), NoiseFeature(6)
    ra, rb, rc = a.base_direction(x), b.base_direction(x), c.base_direction(x)
    assert torch.equal(ra, rb) and not torch.allclose(ra, rc)
    assert abs(float(ra.norm()) - 1.0) < 1e-5
    assert torch.allclose(a(x), (ra[None] * x).flatten(1).sum(1))
    assert [f.seed for f in noise_features(3, seed=10)] == [10, 11, 12]
    assert [f.name for f in noise_features(2)] == ["noise_0", "noise_1"]


def test_noise_feature_respects_mask():
    x = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, :8] = 1.0
    mask[1, :, 8:] = 1.0
    f = NoiseFeature(1, mask=mask)
    g = f.gradient(x)
    assert torch.equal(g[mask.expand_as(g) == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.allclose(g, f.base_direction(x)[None] * mask)
    assert torch.allclose(f(x), (g * x).flatten(1).sum(1))


def test_noise_feature_smoothing_matches_scipy_and_is_smoother():
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    raw = NoiseFeature(3).base_direction(x)[0].numpy()
    smooth = NoiseFeature(3, smooth_sigma=2.0).base_direction(x)[0].numpy()
    expected = gaussian_filter(raw, sigma=2.0)
    assert np.allclose(smooth, expected / np.linalg.norm(expected))

    def lag1(r):
        return np.corrcoef(r[:, 1:].ravel(), r[:, :-1].ravel())[0, 1]

    assert lag1(raw) < 0.2 < 0.8 < lag1(smooth)


def test_from_callable_without_and_with_mask_and_custom_gradient():
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1.0
    energy = Feature.from_callable(lambda t: (t ** 2).flatten(1).sum(1), "energy")
    assert torch.allclose(energy.gradient(x), 2 * x)
    masked = Feature.from_callable(lambda t, m: (t * m).flatten(1).sum(1), "masked_sum", mask=mask)
    assert torch.allclose(masked(x), (x * mask).flatten(1).sum(1))
    assert torch.allclose(masked.gradient(x), mask.expand_as(x))
    other = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(masked.gradient(x, other), other.expand_as(x))  # a per-call mask wins
    calls = []

    def custom(t):
        calls.append(1)
        return 2 * t

    fast = Feature.from_callable(lambda t: (t ** 2).flatten(1).sum(1), "energy", gradient=custom)
    assert fast.has_closed_form
    assert torch.allclose(fast.gradient(x), 2 * x) and calls == [1]


def test_from_callable_without_gradient_has_no_closed_form():
    energy = Feature.from_callable(lambda t: (t ** 2).flatten(1).sum(1), "energy")
    assert not energy.has_closed_form


def test_feature_errors_name_the_problem():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="mask for feature 'brightness' has shape"):
        Brightness()(x, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="mask for feature 'extent' has shape"):
        Extent()(x, torch.ones(3, 1, 8, 8))
    with pytest.raises(ValueError, match="empty .* examples \\[1\\]"):
        Brightness()(x, torch.cat([torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)]))
    with pytest.raises(ValueError, match="finite and non-negative"):
        Brightness()(x, -torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="finite and non-negative"):
        Brightness()(x, torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="expects images"):
        Brightness()(torch.rand(2, 8), torch.ones(8, 8))
    with pytest.raises(ValueError, match="one value per example"):
        Feature.from_callable(lambda t: t.flatten(1), "wide")(x)
    with pytest.raises(TypeError, match="not a Tensor"):
        Feature.from_callable(lambda t: 1.0, "scalar")(x)
    with pytest.raises(ValueError, match="not differentiable"):
        Feature.from_callable(lambda t: (t > 0.5).float().flatten(1).sum(1), "count").gradient(x)
    with pytest.raises(ValueError, match="direction of feature 'line' has shape"):
        LinearFeature(torch.ones(1, 4, 4), name="line")(x)


def test_masks_accept_two_and_three_dimensional_forms():
    x = torch.rand(2, 1, 8, 8)
    m2 = torch.rand(8, 8) + 0.1
    assert torch.allclose(Brightness()(x, m2), Brightness()(x, m2[None, None]))
    assert torch.allclose(Brightness()(x, m2.expand(2, 8, 8)), Brightness()(x, m2[None, None]))


def test_from_callable_optional_second_parameter_is_not_the_mask():
    x = torch.rand(2, 1, 8, 8)
    feat = Feature.from_callable(lambda t, eps=1e-3: t.flatten(1).sum(1) + eps, "shifted")
    assert not feat.takes_mask
    torch.testing.assert_close(feat(x, torch.ones(1, 1, 8, 8)), x.flatten(1).sum(1) + 1e-3)


def test_closed_form_gradient_of_wrong_shape_is_named():
    bad = Feature.from_callable(lambda t: t.flatten(1).sum(1), "bad", gradient=lambda t: torch.ones(3))
    with pytest.raises(ValueError, match="closed-form gradient of feature 'bad' has shape"):
        bad.gradient(torch.rand(2, 1, 8, 8))


def test_image_feature_on_non_image_input_is_named():
    with pytest.raises(ValueError, match="feature 'brightness' expects images of shape"):
        Brightness()(torch.rand(4, 10))
