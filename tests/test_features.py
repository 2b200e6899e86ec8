"""Built-in features: closed-form gradients, sensible values, noise features, masks (docs/definitions.md, 2.7)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from captum_gradflow.features import CoordinateMoments
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


# ---------------------------------------------------------------- volumes and signals
def _volume_data(shape=(3, 1, 6, 7, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, dtype=torch.float64, generator=gen) + 0.1
    masks = torch.rand(shape[0], 1, *shape[2:], dtype=torch.float64, generator=gen)
    return x, masks


@pytest.mark.parametrize("feature_cls", [Brightness, Extent, LogAspectRatio])
@pytest.mark.parametrize("mask_kind", ["per_example", "shared", "none"])
@pytest.mark.parametrize("channels", [1, 2])
def test_closed_form_gradient_equals_autograd_on_volumes(feature_cls, mask_kind, channels):
    x, masks = _volume_data((3, channels, 6, 7, 8))
    mask = {"per_example": masks, "shared": masks[:1], "none": None}[mask_kind]
    f = feature_cls()
    closed = f.gradient(x, mask)
    assert closed.shape == x.shape and torch.isfinite(closed).all()
    torch.testing.assert_close(closed, autograd_gradient(f, x, mask), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("feature_cls", [Brightness, Extent])
def test_closed_form_gradient_equals_autograd_on_signals(feature_cls):
    x, masks = _volume_data((3, 2, 11))
    f = feature_cls()
    torch.testing.assert_close(f.gradient(x, masks), autograd_gradient(f, x, masks), rtol=1e-7, atol=1e-10)


def test_log_aspect_ratio_of_a_signal_is_named():
    with pytest.raises(ValueError, match="needs 2 or 3 spatial axes"):
        LogAspectRatio()(torch.rand(2, 1, 10))


def _ellipsoid(a, b, c, size=17):
    zz, yy, xx = np.mgrid[0:size, 0:size, 0:size].astype(np.float64) - (size - 1) / 2
    return torch.as_tensor(((zz / a) ** 2 + (yy / b) ** 2 + (xx / c) ** 2 <= 1.0).astype(np.float64))[None, None]


def test_volume_features_measure_the_ellipsoid():
    ball, rod = _ellipsoid(6, 6, 6), _ellipsoid(7, 2.5, 2.5)
    # A uniform ball of radius R has radius of gyration sqrt(3/5) R; voxelisation is close.
    assert float(Extent()(ball)) == pytest.approx(np.sqrt(0.6) * 6, rel=0.05)
    assert abs(float(LogAspectRatio()(ball))) < 1e-9
    # A uniform ellipsoid's variances are a^2 / 5: log ratio 2 log(7 / 2.5).
    assert float(LogAspectRatio()(rod)) == pytest.approx(2 * np.log(7 / 2.5), rel=0.1)
    assert float(Brightness()(ball * 0.7, ball)) == pytest.approx(0.7)
    # The exact isotropy of the ball makes the aspect ratio not differentiable: NaN.
    assert torch.isnan(LogAspectRatio().gradient(ball)).all()
    # The 3x3 covariance matches numpy's weighted covariance of voxel coordinates.
    x, masks = _volume_data((2, 1, 6, 7, 8), seed=4)
    mom = CoordinateMoments(x, masks)
    w = (x * masks)[:, 0]
    pts = np.stack(np.meshgrid(*[np.arange(n) for n in (6, 7, 8)], indexing="ij"), -1).reshape(-1, 3)
    for i in range(2):
        expected = np.cov(pts.T, aweights=w[i].numpy().ravel(), bias=True)
        assert np.allclose(mom.cov[i].numpy(), expected, atol=1e-10)


def test_two_dimensional_moments_are_unchanged_by_the_generalisation():
    x, masks = _volume_data((4, 1, 9, 12), seed=5)
    mom = CoordinateMoments(x, masks)
    w = (x * masks)[:, 0]
    r = torch.arange(9, dtype=torch.float64) - 4
    c = torch.arange(12, dtype=torch.float64) - 5.5
    total = w.sum((1, 2))
    mr, mc = (w.sum(2) @ r) / total, (w.sum(1) @ c) / total
    a = (w.sum(2) @ (r * r)) / total - mr * mr
    cc = (w.sum(1) @ (c * c)) / total - mc * mc
    b = ((w @ c) @ r) / total - mr * mc
    t, s = (a + cc) / 2, torch.sqrt(((a - cc) / 2) ** 2 + b ** 2)
    torch.testing.assert_close(mom.extent(), torch.sqrt(a + cc), rtol=1e-14, atol=0)
    torch.testing.assert_close(mom.log_aspect_ratio(), torch.log((t + s) / (t - s)), rtol=1e-13, atol=0)


def test_extent_without_mask_on_signed_data_warns_with_the_count():
    # Zero-mean data (normalised scans) without a mask: weights summing to zero.
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x[0] = 0.0
    x[3] = (torch.arange(64).reshape(8, 8) % 2 * 2 - 1).float()  # +-1 stripes
    with pytest.warns(RuntimeWarning, match=r"'extent' is undefined \(NaN\) for 2 of 4 examples"):
        value = Extent()(x)
    assert not torch.isnan(value[1:3]).any() and torch.isnan(value[[0, 3]]).all()


@pytest.mark.parametrize("feature", [Brightness(), Extent(), NoiseFeature(0)])
def test_mask_on_non_spatial_inputs_is_an_error(feature):
    with pytest.raises(ValueError, match=r"needs spatial inputs \(N, C, \*spatial\); got \(N, d\)"):
        feature(torch.rand(4, 10), torch.ones(10))


def test_smoothing_non_spatial_inputs_is_an_error_and_plain_noise_still_works():
    x = torch.rand(4, 10)
    with pytest.raises(ValueError, match=r"smooth_sigma needs spatial inputs .* got \(N, d\)"):
        NoiseFeature(0, smooth_sigma=2.0)(x)
    assert NoiseFeature(0)(x).shape == (4,)
    assert NoiseFeature(0, smooth_sigma=0.0)(x).shape == (4,)


def test_volume_masks_accept_bare_and_batched_forms():
    x, masks = _volume_data((2, 1, 6, 7, 8))
    ref = Brightness()(x, masks[:1])
    assert torch.allclose(Brightness()(x, masks[0, 0]), ref)
    assert torch.allclose(Brightness()(x, masks[:1, 0]), ref)
    with pytest.raises(ValueError, match=r"expected \(N, 1, D, H, W\)"):
        Brightness()(x, torch.ones(2, 1, 6, 7, 9))


def _lag_correlation(r: np.ndarray, axis: int) -> float:
    a = np.take(r, range(1, r.shape[axis]), axis=axis).ravel()
    b = np.take(r, range(0, r.shape[axis] - 1), axis=axis).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_noise_smoothing_covers_every_spatial_axis_never_channels():
    x = torch.rand(1, 3, 12, 12, 12, dtype=torch.float64)
    raw = NoiseFeature(2).base_direction(x).numpy()
    smooth = NoiseFeature(2, smooth_sigma=2.0).base_direction(x).numpy()
    for axis in (1, 2, 3):  # D, H, W
        assert _lag_correlation(raw, axis) < 0.2 < 0.8 < _lag_correlation(smooth, axis)
    assert abs(_lag_correlation(smooth, 0)) < 0.2  # channels stay independent
    expected = np.stack([gaussian_filter(raw[c], sigma=2.0) for c in range(3)])
    assert np.allclose(smooth, expected / np.linalg.norm(expected))
    per_axis = NoiseFeature(2, smooth_sigma=(0.0, 0.0, 2.0)).base_direction(x).numpy()
    assert _lag_correlation(per_axis, 1) < 0.2 < 0.8 < _lag_correlation(per_axis, 3)


# ---------------------------------------------------------------- declarations
def test_linear_direction_declared_by_plain_linear_and_noise_features():
    x, masks = _volume_data((3, 2, 5, 6, 7))
    lin = LinearFeature(torch.randn(2, 5, 6, 7, dtype=torch.float64))
    noise = NoiseFeature(1, smooth_sigma=1.0)
    for f in (lin, noise):
        r = f.linear_direction(x)
        assert r.shape == x.shape[1:]
        torch.testing.assert_close(f.gradient(x, masks), (r * masks).expand_as(x))
        torch.testing.assert_close(f.gradient(x), r.expand_as(x))
    assert Brightness().linear_direction(x) is None


def test_linear_direction_is_none_for_a_subclass_overriding_the_gradient():
    class Doubled(LinearFeature):
        def closed_form_gradient(self, x, mask):
            return 2 * super().closed_form_gradient(x, mask)

    class Squared(NoiseFeature):
        def compute(self, x, mask):
            return super().compute(x, mask) ** 2

    class OwnDirection(NoiseFeature):
        def direction(self, x, mask=None):
            return -super().direction(x, mask)

    class OwnBase(NoiseFeature):  # a new base direction keeps the declaration
        def base_direction(self, x):
            return torch.ones(x.shape[1:], dtype=x.dtype)

    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert Doubled(torch.ones(1, 8, 8)).linear_direction(x) is None
    assert Squared(0).linear_direction(x) is None
    assert OwnDirection(0).linear_direction(x) is None
    assert torch.equal(OwnBase(0).linear_direction(x), torch.ones(1, 8, 8, dtype=torch.float64))


def test_centred_noise_declares_its_direction_for_the_mask_in_effect():
    """Centred noise is ``(r - c) * m`` with ``c`` the mean of ``r`` under ``m^2``: it declares
    ``r`` as a centred direction (valid for whatever mask a call passes), never as a plain
    linear direction ``r * m`` (which a per-call mask would break)."""
    x, masks = _volume_data((3, 1, 6, 7, 8))
    for own in (masks[:1], masks, None):
        f = NoiseFeature(3, mask=own, smooth_sigma=1.5, center=True)
        assert f.linear_direction(x) is None
        r = f.centred_direction(x)
        for m in (own, masks, masks[:1]):
            g = f.gradient(x, m)
            mm = torch.ones_like(x[:1]) if m is None else m
            w = mm * mm
            c = (r * w).flatten(1).sum(1) / w.flatten(1).sum(1)
            torch.testing.assert_close(g, ((r - c.reshape(-1, 1, 1, 1, 1)) * mm).expand_as(x))
            # orthogonal to the mask's own direction (brightness' gradient) in every example
            assert torch.allclose((g * mm).flatten(1).sum(1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
            torch.testing.assert_close(f(x, m), (g * x).flatten(1).sum(1))
    assert NoiseFeature(3).centred_direction(x) is None
    assert NoiseFeature(3).linear_direction(x) is not None


@pytest.mark.parametrize("shape", [(3, 1, 6, 7, 8), (3, 2, 9, 10), (3, 1, 11)])
def test_moment_gradient_equals_autograd(shape):
    x, masks = _volume_data(shape)
    features = [Brightness(), Extent()] + ([LogAspectRatio()] if len(shape) > 3 else [])
    for mask in (masks, masks[:1], None):
        mom = CoordinateMoments(x, mask)
        assert mom.x is x and mom.mask is mask
        for f in features:
            g = f.moment_gradient(mom)
            assert g.shape == x.shape
            # Against autograd of the feature's value, not its own closed form (an independent check).
            torch.testing.assert_close(g, autograd_gradient(f, x, mask), rtol=1e-7, atol=1e-9)


def test_moment_gradient_is_none_for_a_subclass_overriding_the_feature():
    class Darker(Brightness):
        def compute(self, x, mask):
            return -super().compute(x, mask)

    class OwnGradient(Extent):
        def closed_form_gradient(self, x, mask):
            return torch.zeros_like(x)

    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    mom = CoordinateMoments(x, None)
    assert Darker().moment_gradient(mom) is None and OwnGradient().moment_gradient(mom) is None
    assert Feature.from_callable(lambda t: t.sum((1, 2, 3)), "sum").moment_gradient(mom) is None
    assert LogAspectRatio().moment_gradient(mom) is not None
