"""FeatureAlignment: closed forms, ground truth, Captum conformance, bad input (docs/definitions.md, sections 2.1-2.4, 5)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import GradientAttribution
from torch import nn

from captum_gradflow import (
    Brightness,
    Extent,
    Feature,
    FeatureAlignment,
    LinearFeature,
    LogAspectRatio,
    NoiseComparison,
    SmallCNN,
    noise_features,
    synthetic_lesions,
)

SHAPE = (1, 6, 6)
D = 36


class LinearModel(nn.Module):
    """F(x) = W x + b in double precision, output reshaped to ``out_shape`` per example."""

    def __init__(self, k: int = 3, out_shape=None, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(k, D, generator=gen, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(k, generator=gen, dtype=torch.float64))
        self.out_shape = out_shape or (k,)

    def forward(self, x, scale=1.0):
        return ((x.flatten(1) @ self.W.T + self.b) * scale).reshape(x.shape[0], *self.out_shape)


def cos2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) ** 2 / (np.dot(a, a) * np.dot(b, b)))


def projection_ratio(g: np.ndarray, a: np.ndarray) -> float:
    """|P_G a|^2 / |a|^2 by an independent numpy least-squares solve (G is d x m)."""
    coef, *_ = np.linalg.lstsq(g, a, rcond=None)
    p = g @ coef
    return float(p @ p / (a @ a))


@pytest.fixture
def x64():
    return torch.rand(4, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1


@pytest.fixture
def directions():
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(*SHAPE, generator=gen, dtype=torch.float64) for _ in range(3)]


# ---------------------------------------------------------------- closed forms
def test_pointwise_equals_cosine_of_directions_for_linear_model(x64, directions):
    model = LinearModel()
    feats = [LinearFeature(r, name=f"r{j}") for j, r in enumerate(directions)]
    s = FeatureAlignment(model, feats).attribute(x64, target=2)
    assert s.shape == (4, 3)
    w = model.W.detach().numpy()
    for j, r in enumerate(directions):
        expected = cos2(w[2], r.numpy().ravel())
        assert torch.allclose(s[:, j], torch.full((4,), expected, dtype=s.dtype), atol=1e-5)


def test_joint_equals_numpy_least_squares(x64, directions):
    model = LinearModel()
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    mask[..., 1:5, 1:5] = 1.0
    # One linear and one nonlinear feature: the second gradient differs per example.
    feats = [LinearFeature(directions[0]), Extent(mask=mask)]
    fa = FeatureAlignment(model, feats)
    j = fa.joint(x64, target=1)
    a = model.W.detach().numpy()[1]
    for n in range(4):
        g = np.stack([directions[0].numpy().ravel(), Extent(mask=mask).gradient(x64)[n].numpy().ravel()], 1)
        assert abs(float(j[n]) - projection_ratio(g, a)) < 1e-6
    s = fa.attribute(x64, target=1)
    # The span explains at least what each feature does alone.
    assert (j >= s.max(dim=1).values - 1e-9).all()


def test_joint_equals_pointwise_for_one_feature_and_collinear_features(x64, directions):
    model = LinearModel()
    s = FeatureAlignment(model, [Brightness()]).attribute(x64, target=0)[:, 0]
    j = FeatureAlignment(model, [Brightness()]).joint(x64, target=0)
    assert torch.allclose(s, j, atol=1e-9)
    # A duplicated direction must count once (rank-deficient feature matrix).
    r = directions[0]
    twice = FeatureAlignment(model, [LinearFeature(r), LinearFeature(2.0 * r)]).joint(x64, target=0)
    once = FeatureAlignment(model, [LinearFeature(r)]).attribute(x64, target=0)[:, 0]
    assert torch.allclose(twice, once, atol=1e-9)


def test_subspace_binary_is_cosine_with_logit_difference(x64, directions):
    model = LinearModel(k=2)
    s = FeatureAlignment(model, [LinearFeature(directions[0])]).attribute(x64, decision="subspace")
    w = model.W.detach().numpy()
    expected = cos2(w[1] - w[0], directions[0].numpy().ravel())
    assert torch.allclose(s[:, 0], torch.full((4,), expected, dtype=s.dtype), atol=1e-6)


def test_subspace_multiclass_is_projection_on_centred_jacobian_rows(x64, directions):
    model = LinearModel(k=4)
    feats = [LinearFeature(r) for r in directions]
    s = FeatureAlignment(model, feats).attribute(x64, decision="subspace")
    w = model.W.detach().numpy()
    centred = (w - w.mean(0)).T  # d x K, rank K - 1
    for j, r in enumerate(directions):
        expected = projection_ratio(centred, r.numpy().ravel())
        assert torch.allclose(s[:, j], torch.full((4,), expected, dtype=s.dtype), atol=1e-6)


def test_subspace_errors(x64, directions):
    fa = FeatureAlignment(LinearModel(k=3), [LinearFeature(directions[0])])
    with pytest.raises(ValueError, match="target=None"):
        fa.attribute(x64, target=0, decision="subspace")
    with pytest.raises(ValueError, match="K > 1"):
        FeatureAlignment(LinearModel(k=1), [LinearFeature(directions[0])]).attribute(x64, decision="subspace")
    with pytest.raises(ValueError, match="decision"):
        fa.attribute(x64, target=0, decision="margin")


def test_joint_with_subspace_is_refused_before_the_model_runs(x64, directions):
    calls = []
    model = LinearModel(k=3)

    def forward(x):
        calls.append(1)
        return model(x)

    fa = FeatureAlignment(forward, [LinearFeature(directions[0])])
    with pytest.raises(ValueError, match="joint=True needs decision='target'"):
        fa.compare_to_noise(x64, decision="subspace", n_noise=2, joint=True)
    assert calls == []


# ---------------------------------------------------------------- noise baseline
def test_compare_to_noise_reuses_one_model_gradient_and_matches_direct_alignment(x64):
    calls = []
    model = LinearModel()

    def forward(x):
        calls.append(1)
        return model(x)

    gen = torch.Generator().manual_seed(3)
    # Soft masks with holes: m^2 != m, so the masked-noise norms are really tested.
    masks = torch.rand(4, 1, 6, 6, dtype=torch.float64, generator=gen) * (torch.rand(4, 1, 6, 6, generator=gen) > 0.3)
    fa = FeatureAlignment(forward, [Brightness(), Extent()])
    rep = fa.compare_to_noise(x64, target=[0, 1, 2, 0], mask=masks, n_noise=5, seed=7,
                              noise_mask=masks, smooth_sigma=1.0, center_noise=False, joint=True)
    assert len(calls) == 1
    assert isinstance(rep, NoiseComparison)
    # J comes from the same single model gradient and equals joint().
    torch.testing.assert_close(rep.J, fa.joint(x64, target=[0, 1, 2, 0], mask=masks).double())
    assert NoiseComparison.concat([rep, rep]).J.shape == (8,)
    assert fa.compare_to_noise(x64, target=[0, 1, 2, 0], mask=masks, n_noise=2).J is None  # on request only
    assert rep.S.shape == (4, 2) and rep.S_noise.shape == (4, 5)
    assert torch.allclose(rep.S, fa.attribute(x64, target=[0, 1, 2, 0], mask=masks).double())
    # The matmul path for noise equals the squared cosine with each masked direction.
    w = model.W.detach().numpy()
    for j, nf in enumerate(noise_features(5, seed=7, smooth_sigma=1.0)):
        for n, t in enumerate([0, 1, 2, 0]):
            r = (nf.gradient(x64[n:n + 1], masks[n:n + 1]))[0].numpy().ravel()
            assert abs(float(rep.S_noise[n, j]) - cos2(w[t], r)) < 1e-9
    # Cached noise is reused and identical on a second call.
    again = fa.compare_to_noise(x64, target=[0, 1, 2, 0], mask=masks, n_noise=5, seed=7,
                                noise_mask=masks, smooth_sigma=1.0, center_noise=False)
    assert torch.equal(again.S_noise, rep.S_noise)


def test_compare_to_noise_subspace_and_shared_mask(x64):
    model = LinearModel(k=2)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    mask[..., :2, :] = 0.0
    fa = FeatureAlignment(model, [Brightness(mask=mask)])
    rep = fa.compare_to_noise(x64, decision="subspace", n_noise=3, noise_mask=mask,
                              smooth_sigma=None, center_noise=False)
    w = model.W.detach().numpy()
    for j, nf in enumerate(noise_features(3)):
        r = nf.gradient(x64, mask)[0].numpy().ravel()
        assert torch.allclose(rep.S_noise[:, j], torch.tensor(cos2(w[1] - w[0], r), dtype=torch.float64))




def test_ground_truth_brightness_beats_noise_and_other_features_do_not(brightness_model):
    model, test = brightness_model
    fa = FeatureAlignment(model, [Brightness(), Extent(), LogAspectRatio()])
    # The default noise: over the features' lesion masks, smoothed on their scale, centred.
    rep = fa.compare_to_noise(test.images, target=test.labels, mask=test.masks, n_noise=32)
    bright, extent, aspect = 0, 1, 2
    assert rep.wilcoxon_p[bright] < 1e-6
    assert rep.mean_ratio[bright] > 2.0
    for other in (extent, aspect):
        assert rep.wilcoxon_p[other] > 0.05
        assert rep.mean_ratio[other] < 0.75 * rep.mean_ratio[bright]
    assert int(rep.n_skipped.sum()) == 0
    assert "brightness" in rep.table()


# ---------------------------------------------------------------- Captum conformance
def test_is_a_captum_gradient_attribution_with_logged_attribute(directions):
    fa = FeatureAlignment(LinearModel(), LinearFeature(directions[0]))
    assert isinstance(fa, GradientAttribution)
    assert hasattr(FeatureAlignment.attribute, "__wrapped__")
    assert fa.feature_names == ["linear"]


def test_tuple_inputs_and_additional_forward_args(directions):
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(3, *SHAPE, dtype=torch.float64, generator=gen)
    b = torch.rand(3, 5, dtype=torch.float64, generator=gen)
    lin = LinearModel(k=2)
    v = torch.randn(2, 5, dtype=torch.float64, generator=gen)

    def forward(x1, x2, scale):
        return lin(x1) * scale + x2 @ v.T

    u = torch.randn(5, dtype=torch.float64, generator=gen)
    feats = [LinearFeature(directions[0], name="on_a"), LinearFeature(u, name="on_b", input_index=1)]
    s = FeatureAlignment(forward, feats).attribute((a, b), target=1, additional_forward_args=(3.0,))
    grad = np.concatenate([3.0 * lin.W.detach().numpy()[1], v.numpy()[1]])
    ra = np.concatenate([directions[0].numpy().ravel(), np.zeros(5)])
    rb = np.concatenate([np.zeros(D), u.numpy()])
    assert abs(float(s[0, 0]) - cos2(grad, ra)) < 1e-9
    assert abs(float(s[0, 1]) - cos2(grad, rb)) < 1e-9
    j = FeatureAlignment(forward, feats).joint((a, b), target=1, additional_forward_args=(3.0,))
    assert abs(float(j[0]) - projection_ratio(np.stack([ra, rb], 1), grad)) < 1e-9
    # The extra argument matters: without it the scale differs and so does S.
    s1 = FeatureAlignment(forward, feats).attribute((a, b), target=1, additional_forward_args=1.0)
    assert not torch.allclose(s, s1)
    with pytest.raises(IndexError, match="reads input 1"):
        FeatureAlignment(lin, feats).attribute(a, target=1)


@pytest.mark.parametrize(
    "out_shape,target,rows",
    [
        ((3,), 2, [2, 2, 2, 2]),
        ((3,), torch.tensor(1), [1, 1, 1, 1]),
        ((3,), torch.tensor([0, 1, 2, 1]), [0, 1, 2, 1]),
        ((3,), [2, 0, 0, 1], [2, 0, 0, 1]),
        ((2, 3), (1, 2), [5, 5, 5, 5]),
        ((2, 3), [(0, 1), (1, 0), (1, 2), (0, 0)], [1, 3, 5, 0]),
        ((1,), None, [0, 0, 0, 0]),
    ],
)
def test_every_captum_target_form(x64, directions, out_shape, target, rows):
    k = int(np.prod(out_shape))
    model = LinearModel(k=k, out_shape=out_shape)
    s = FeatureAlignment(model, [LinearFeature(directions[1])]).attribute(x64, target=target)
    w = model.W.detach().numpy()
    expected = torch.tensor([cos2(w[r], directions[1].numpy().ravel()) for r in rows], dtype=s.dtype)
    assert torch.allclose(s[:, 0], expected, atol=1e-9)


def test_one_dimensional_output_with_target_none(x64, directions):
    model = LinearModel(k=1)
    s = FeatureAlignment(lambda x: model(x)[:, 0], [LinearFeature(directions[0])]).attribute(x64)
    expected = cos2(model.W.detach().numpy()[0], directions[0].numpy().ravel())
    assert torch.allclose(s[:, 0], torch.full((4,), expected, dtype=s.dtype), atol=1e-9)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_no_grad_context_flags_model_and_hooks_unchanged(requires_grad):
    model = SmallCNN(num_classes=3)
    model.train()  # an unusual mode must survive too
    hook = model.features[0].register_forward_hook(lambda *args: None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(5)).requires_grad_(requires_grad)
    x_before = x.detach().clone()
    fa = FeatureAlignment(model, [Brightness(), Extent()])
    with torch.no_grad():
        s = fa.attribute(x, target=[0, 2])
        j = fa.joint(x, target=1)
        rep = fa.compare_to_noise(x, target=0, n_noise=4)
        sub = fa.attribute(x, decision="subspace")
    assert s.shape == (2, 2) and j.shape == (2,) and rep.S.shape == (2, 2) and sub.shape == (2, 2)
    assert torch.isfinite(s).all() and torch.isfinite(sub).all()
    assert x.requires_grad is requires_grad and x.grad is None
    assert torch.equal(x.detach(), x_before)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert list(model.features[0]._forward_hooks) == [hook.id]
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == 1
    hook.remove()


# ---------------------------------------------------------------- bad input
def _assert_unchanged(model, state, x, x_before):
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, x_before) and not x.requires_grad


def test_bad_input_gives_clear_errors_and_changes_nothing():
    model = SmallCNN().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 16, 16)
    x_before = x.clone()
    fa = FeatureAlignment(model, [Brightness()])
    bad = x.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fa.attribute(bad, target=0)
    bad[0, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fa.compare_to_noise(bad, target=0)
    with pytest.raises(ValueError, match="mask for feature 'brightness' has shape"):
        fa.attribute(x, target=0, mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        fa.attribute(x, target=0, mask=torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="mask for feature 'noise"):
        fa.compare_to_noise(x, target=0, noise_mask=torch.ones(3, 1, 16, 16))
    with pytest.raises(IndexError, match="out of range"):
        fa.attribute(x, target=5)
    with pytest.raises(IndexError, match="out of range"):
        fa.joint(x, target=[0, 2])
    wrong = Feature.from_callable(lambda t: t.flatten(1)[:, :2], "two_values")
    with pytest.raises(ValueError, match="two_values.*shape"):
        FeatureAlignment(model, [wrong]).attribute(x, target=0)
    bad_grad = Feature.from_callable(lambda t: t.sum((1, 2, 3)), "bad_grad",
                                     gradient=lambda t: torch.ones(3, 3))
    with pytest.raises(ValueError, match="bad_grad"):
        FeatureAlignment(model, [bad_grad]).attribute(x, target=0)
    step = Feature.from_callable(lambda t: (t > 0.5).float().sum((1, 2, 3)), "count_bright")
    with pytest.raises(ValueError, match="count_bright.*not differentiable"):
        FeatureAlignment(model, [step]).attribute(x, target=0)
    with pytest.raises(TypeError, match="Feature"):
        FeatureAlignment(model, [lambda t: t.sum()])
    with pytest.raises(ValueError, match="features is empty"):
        FeatureAlignment(model, [])
    with pytest.raises(ValueError, match="n_noise"):
        fa.compare_to_noise(x, target=0, n_noise=0)
    with pytest.raises(TypeError, match="inputs"):
        fa.attribute(x.numpy(), target=0)
    _assert_unchanged(model, state, x, x_before)


def test_zero_feature_gradient_gives_nan_with_warning(x64, directions):
    model = LinearModel()
    feats = [LinearFeature(directions[0], name="real"), LinearFeature(torch.zeros(*SHAPE, dtype=torch.float64), name="zero")]
    fa = FeatureAlignment(model, feats)
    with pytest.warns(RuntimeWarning, match=r"4 of 8 .*zero: 4"):
        s = fa.attribute(x64, target=0)
    assert torch.isnan(s[:, 1]).all() and torch.isfinite(s[:, 0]).all()
    with pytest.warns(RuntimeWarning, match="undefined"):
        j = FeatureAlignment(model, feats[1:]).joint(x64, target=0)
    assert torch.isnan(j).all()
    # A zero feature adds nothing to the span but does not make J undefined.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        j2 = fa.joint(x64, target=0)
    assert torch.allclose(j2, s[:, 0], atol=1e-9)


def test_flat_model_gives_nan_with_count_never_zero():
    # A dead ReLU: the model depends on x through autograd, but its gradient is exactly zero.
    def flat_model(x):
        return torch.relu(-x.flatten(1).sum(1, keepdim=True) - 1.0)

    x = torch.rand(3, 1, 8, 8)
    fa = FeatureAlignment(flat_model, [Brightness(), Extent()])
    with pytest.warns(RuntimeWarning, match="6 of 6"):
        s = fa.attribute(x)
    assert torch.isnan(s).all()
    with pytest.warns(RuntimeWarning):
        rep = fa.compare_to_noise(x, n_noise=4)
    assert rep.n_skipped.tolist() == [3, 3]
    assert torch.isnan(rep.wilcoxon_p).all() and torch.isnan(rep.mean_ratio).all()


def test_shared_moment_fast_path_equals_feature_gradients():
    # Subclasses take the general path through Feature.gradient: both must agree.
    class SlowBrightness(Brightness):
        pass

    class SlowExtent(Extent):
        pass

    class SlowAspect(LogAspectRatio):
        pass

    data = synthetic_lesions(6, size=24, seed=5)
    model = SmallCNN(in_channels=3).eval()
    x = torch.cat([data.images, data.images ** 2, 1 - data.images], dim=1)
    fast = FeatureAlignment(model, [Brightness(), Extent(), LogAspectRatio()])
    slow = FeatureAlignment(model, [SlowBrightness(), SlowExtent(), SlowAspect()])
    for mask in (data.masks, data.masks[:1], None):
        a = fast.attribute(x, target=1, mask=mask)
        b = slow.attribute(x, target=1, mask=mask)
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_isotropic_blob_makes_aspect_ratio_undefined_not_zero():
    x = torch.ones(2, *SHAPE, dtype=torch.float64)  # perfectly round: LogAspectRatio has no gradient
    fa = FeatureAlignment(LinearModel(k=1), [Brightness(), LogAspectRatio()])
    with pytest.warns(RuntimeWarning, match="log_aspect_ratio: 2"):
        s = fa.attribute(x)
    assert torch.isfinite(s[:, 0]).all() and torch.isnan(s[:, 1]).all()



# ---------------------------------------------------------------- Captum wrappers
def test_per_example_masks_under_noise_tunnel_and_sensitivity_max():
    from captum.attr import NoiseTunnel
    from captum.metrics import sensitivity_max

    torch.manual_seed(0)
    model = SmallCNN().eval()
    data = synthetic_lesions(3, size=16, seed=1)
    x, masks = data.images, data.masks
    fa = FeatureAlignment(model, [Brightness(), Extent()])
    # Keyword masks are not repeated by the wrappers: the error says why and what to do.
    with pytest.raises(ValueError, match=r"mask has 3 rows.*inputs have 6.*from_args"):
        NoiseTunnel(fa).attribute(x, nt_type="smoothgrad", nt_samples=2, target=1, mask=masks)
    nt = NoiseTunnel(fa).attribute(x, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=1,
                                   additional_forward_args=(masks,), mask="from_args")
    # Without noise every repeat is the example itself: the mean is S with each own mask.
    torch.testing.assert_close(nt, fa.attribute(x, target=1, mask=masks))

    def explain(inputs, **kwargs):  # sensitivity_max wants a tuple for tuple inputs
        return (fa.attribute(inputs, **kwargs),)

    with pytest.raises(ValueError, match=r"mask has 3 rows.*inputs have 6.*from_args"):
        sensitivity_max(explain, x, target=1, n_perturb_samples=2, mask=masks)
    sens = sensitivity_max(explain, x, target=1, n_perturb_samples=2, perturb_radius=1e-12,
                           additional_forward_args=(masks,), mask="from_args")
    assert sens.shape == (3,) and float(sens.max()) < 1e-4
