"""The one feature-gradient path and the one squared cosine (docs/definitions.md, 2.1-2.6)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_gradflow import (
    AlignmentRegularizer,
    Brightness,
    Extent,
    Feature,
    FeatureAlignment,
    GradientFlowAlignment,
    LinearFeature,
    LogAspectRatio,
    NoiseFeature,
)
from captum_gradflow.gradients import (
    GradientPath,
    differentiable_squared_cosines,
    measure,
    projection_ratio,
    unit_basis,
)

D = torch.float64
SHAPE = (1, 6, 6)


class Squared(LinearFeature):
    """A LinearFeature subclass that overrides its value and gradient: ``<r, x^2>``."""

    def compute(self, x, mask):
        return (self.direction(x, mask) * x * x).flatten(1).sum(1)

    def closed_form_gradient(self, x, mask):
        return 2 * x * self.direction(x, mask)


def _direction(seed: int) -> torch.Tensor:
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(seed), dtype=D)


def _features():
    return {
        "brightness": Brightness(),
        "extent": Extent(),
        "log_aspect_ratio": LogAspectRatio(),
        "linear": LinearFeature(_direction(1)),
        "overriding_subclass": Squared(_direction(2), name="squared"),
        "noise": NoiseFeature(seed=3, smooth_sigma=1.0),
        "callable": Feature.from_callable(lambda x: (x ** 3).flatten(1).sum(1), "cubic"),
    }


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, *SHAPE, generator=gen, dtype=D) + 0.1
    masks = torch.rand(5, 1, 6, 6, generator=gen, dtype=D) + 0.2
    masks[:, :, 0, :] = 0.0
    return x, masks


@pytest.mark.parametrize("kind", list(_features()))
@pytest.mark.parametrize("per_example_mask", [False, True])
def test_alignment_flow_and_regularizer_agree_for_every_feature_kind(batch, kind, per_example_mask):
    x, masks = batch
    mask = masks if per_example_mask else masks[:1]
    feature = _features()[kind]
    torch.manual_seed(4)
    model = nn.Linear(36, 1).double()
    forward = lambda z: model(z.flatten(1))  # noqa: E731  one output: grad m = grad f
    s = FeatureAlignment(forward, [feature]).attribute(x, mask=mask)[:, 0]
    # The flow of a linear model is a straight line; a flow this short stays at x, where
    # the arc-length average is S itself (the features' gradients change along the line).
    f = GradientFlowAlignment(forward, [feature]).attribute(x, mask=mask, max_length=1e-9)[:, 0]
    reg = AlignmentRegularizer([feature], 1.0)
    xg = x.clone().requires_grad_()
    penalty = reg(forward(xg), xg, None, mask=mask)
    assert torch.isfinite(s).all() and float(s.max()) > 1e-4
    torch.testing.assert_close(f, s, rtol=0, atol=1e-6)
    torch.testing.assert_close(reg.last_alignment[feature.name], s, rtol=0, atol=1e-6)
    assert abs(float(1 - penalty.detach()) - float(s.mean())) < 1e-6
    # And all three equal the squared cosine with the feature's own declared gradient.
    g = feature.gradient(x, mask).expand_as(x).flatten(1)
    w = model.weight.detach()[0]
    expected = (g @ w) ** 2 / ((g * g).sum(1) * (w @ w))
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-9)


def test_an_overriding_subclass_is_taken_by_its_override_not_its_direction(batch):
    x, _ = batch
    r = _direction(2)
    path = GradientPath([Squared(r), LinearFeature(r)], (x,))
    assert path.other == [0] and list(path.linear.values())[0][0][0] == 1
    grads = path((x,))
    torch.testing.assert_close(grads.dense[0][1], (2 * x * r).flatten(1))


def test_linear_features_sharing_an_input_and_mask_form_one_direction_matrix(batch):
    x, masks = batch
    noise = [NoiseFeature(seed=j) for j in range(4)]
    grads = GradientPath([Brightness(), *noise], (x,), [masks] * 5)((x,))
    assert len(grads.linear) == 1 and grads.linear[0].columns == [1, 2, 3, 4]
    assert grads.linear[0].directions.shape == (36, 4) and grads.linear[0].mask.shape == (5, 36)
    for j, i, g in grads.rows():
        feature = ([Brightness()] + noise)[j]
        torch.testing.assert_close(g.expand(5, -1), feature.gradient(x, masks).expand_as(x).flatten(1))


def test_rows_follow_per_example_masks(batch):
    x, masks = batch
    path = GradientPath([Brightness(), NoiseFeature(0), Extent()], (x,), [masks] * 3)
    rows = torch.tensor([3, 1])
    sub = path((x[rows],), rows)
    whole = path((x,))
    for (j, _, a), (_, _, b) in zip(sorted(sub.rows(), key=lambda t: t[0]), sorted(whole.rows(), key=lambda t: t[0])):
        torch.testing.assert_close(a.expand(2, -1), b.expand(5, -1)[rows])


def test_a_declared_direction_of_the_wrong_shape_is_named_by_the_path(batch):
    x, _ = batch

    class Declares(Feature):
        def compute(self, x, mask):
            return x.flatten(1).sum(1)

        def linear_direction(self, x):
            return torch.ones(3, 3)

    message = r"direction of feature 'declares' has shape \(3, 3\); inputs have per-example shape \(1, 6, 6\)"
    with pytest.raises(ValueError, match=message):
        GradientPath([Declares("declares")], (x,))


def test_mask_terms_are_computed_once_while_the_rows_stay_the_same(batch):
    x, masks = batch
    noise = [NoiseFeature(seed=j, smooth_sigma=1.0, center=True) for j in range(3)]
    path = GradientPath(noise, (x,), [masks] * 3)
    a, b = path((x,)), path((x + 1.0,))  # another point of the flow, the same rows
    assert a.linear[0].channels == 1 and a.linear[0].shared is b.linear[0].shared
    rows = torch.tensor([0, 2])
    c, d = path((x[rows],), rows), path((x[rows],), rows.clone())
    assert c.linear[0].shared is d.linear[0].shared and c.linear[0].shared is not a.linear[0].shared
    v = torch.randn(5, 36, generator=torch.Generator().manual_seed(1), dtype=D)
    dots, norms = a.linear[0].terms(v)
    assert len(a.linear[0].shared) == 1  # filled once, then reused
    again = b.linear[0].terms(v)
    assert torch.equal(again[0], dots) and torch.equal(again[1], norms)
    for col, f in enumerate(noise):  # the terms are those of the centred gradients
        g = f.gradient(x, masks).flatten(1)
        torch.testing.assert_close(dots[:, col], (v * g).sum(1))
        torch.testing.assert_close(norms[:, col], (g * g).sum(1))
    for j, _, g in a.rows():  # and the group hands out those gradients
        torch.testing.assert_close(g, noise[j].gradient(x, masks).flatten(1))


def test_projection_ratio_is_nan_where_undefined_never_zero():
    s = projection_ratio(torch.tensor([1.0, 0.0, 1.0, 4.0]), torch.tensor([4.0, 0.0, float("inf"), 2.0]))
    assert s[0] == 0.25 and torch.isnan(s[1]) and torch.isnan(s[2]) and s[3] == 1.0
    basis, defined = unit_basis(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert defined.tolist() == [True, False] and torch.equal(basis[1], torch.zeros(1, 2))


def test_measure_and_differentiable_forms_agree_and_the_latter_backpropagates(batch):
    x, masks = batch
    feats = [Brightness(), LinearFeature(torch.zeros(*SHAPE, dtype=D), name="zero"), NoiseFeature(1)]
    grads = GradientPath(feats, (x,), [masks] * 3)((x,))
    grad_f = torch.randn(5, 36, dtype=D, generator=torch.Generator().manual_seed(9))
    grad_f[2] = 0.0
    leaf = grad_f.clone().requires_grad_()
    s, undefined, feature_bad = differentiable_squared_cosines({0: leaf}, (leaf * leaf).sum(1), grads)
    basis, defined = unit_basis(grad_f)
    measured = measure(basis, defined, grads, [slice(0, 36)])
    assert torch.equal(torch.isnan(measured), undefined)
    assert feature_bad[:, 1].all() and not feature_bad[:, [0, 2]].any()
    torch.testing.assert_close(s.detach()[~undefined], measured[~undefined])
    (s * (~undefined)).sum().backward()
    assert torch.isfinite(leaf.grad).all()


def test_direction_cache_keeps_its_features_alive():
    """Entries are keyed by feature ids: an entry must hold its features, or a new feature
    created at a freed address would read another feature's directions."""
    import gc

    from captum_gradflow import noise_features
    from captum_gradflow.gradients import GradientPath

    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    cache: dict = {}
    GradientPath(noise_features(3, seed=0), (x,), cache=cache)
    gc.collect()
    (entry,) = cache.values()
    assert [f.seed for f in entry[2]] == [0, 1, 2]
    # A later path with other seeds gets its own directions, never a cached entry's.
    fresh = noise_features(3, seed=10)
    cached = GradientPath(fresh, (x,), cache=cache)((x,))
    direct = GradientPath(fresh, (x,))((x,))
    for (j, _, a), (_, _, b) in zip(cached.rows(), direct.rows()):
        torch.testing.assert_close(a, b)
