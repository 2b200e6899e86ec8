"""End to end on volumes (N, 1, D, H, W): ground truth in 3-D and GAD on a 3-D CNN.

A SmallCNN3d is trained on synthetic CT-like volumes whose label depends on the lesion's
brightness alone (docs/definitions.md, sections 2.3, 2.5 and 3). Extent and aspect ratio of
the same lesions are drawn independently of the label: decoys.
"""
from __future__ import annotations

import math

import pytest
import torch
from captum.attr import Saliency

from captum_gradflow import (
    Brightness,
    Extent,
    FeatureAlignment,
    GADWrapper,
    GradientFlowAlignment,
    LogAspectRatio,
    SmallCNN3d,
    balanced_accuracy,
    predict,
    synthetic_lesions_3d,
    train_classifier,
)


@pytest.fixture(scope="module")
def brightness_volumes():
    """SmallCNN3d trained on 16^3 volumes labelled by lesion brightness, and held-out volumes."""
    data = synthetic_lesions_3d(320, size=16, seed=0, rule="brightness")
    train, test = data.split(0.25)
    torch.manual_seed(0)
    model = SmallCNN3d(num_classes=2, pool_size=2)
    train_classifier(model, train.images, train.labels, epochs=15, lr=3e-3, batch_size=16,
                     progress=False)
    return model.eval(), train, test


def test_brightness_beats_masked_noise_and_the_decoys_do_not(brightness_volumes):
    model, _, test = brightness_volumes
    x, y, masks = test.images, test.labels, test.masks
    assert balanced_accuracy(model, x, y) > 0.6  # the model learned something of the rule
    feats = [Brightness(), Extent(), LogAspectRatio()]
    report = FeatureAlignment(model, feats).compare_to_noise(x, target=y, mask=masks, n_noise=32)
    # the default baseline: masked, smoothed, centred noise over every spatial axis
    assert "per-example" in report.construction and "centred" in report.construction
    assert report.construction.count(" x ") == 2  # one smoothing width per spatial axis (3)
    ratio, p = report.mean_ratio, report.wilcoxon_p
    assert p[0] < 0.01 and ratio[0] > 5
    # neither decoy comes close: a far smaller ratio, and no significance at the 1% level
    assert (ratio[1:] < ratio[0] / 4).all(), ratio
    assert (p[1:] > 0.01).all(), p


def test_the_flow_reaches_the_boundary_on_volumes(brightness_volumes):
    model, _, test = brightness_volumes
    x, y, masks = test.images[:24], test.labels[:24], test.masks[:24]
    flow = GradientFlowAlignment(model, [Brightness(), Extent()])
    res = flow.attribute(x, target=y, mask=masks, return_details=True)
    assert res.reached_boundary.float().mean() >= 0.9
    assert res.end_point.shape == x.shape
    # where the boundary was reached the end point lies on it: the margin is (close to) zero
    end = predict(model, res.end_point)
    margin = end.gather(1, y[:, None])[:, 0] - end.gather(1, (1 - y)[:, None])[:, 0]
    reached = res.reached_boundary
    assert (margin[reached].abs() < 1e-2 * res.start_margin[reached].abs()).all()
    assert torch.isfinite(res.alignment).all() and ((res.alignment >= 0) & (res.alignment <= 1)).all()


def test_gad_on_volumes_keeps_a_subset_of_the_base_top_q(brightness_volumes):
    model, train, test = brightness_volumes
    gad = GADWrapper(Saliency(model), n_support=2, steps=5, batch_size=32, progress=False)
    gad.fit((train.images, train.labels), pair=(0, 1))
    x, y = test.images[:6], test.labels[:6]
    attr, parts = gad.attribute(x, target=y, q=0.2, return_components=True)
    assert attr.shape == x.shape and len(parts.maps) == 3
    kept, base = parts.consistency.flatten(1), parts.masks[0].flatten(1)
    assert parts.masks[0].shape == (6, 1, 16, 16, 16)
    assert kept.any(1).all() and not (kept & ~base).any()
    assert (base.sum(1) >= math.ceil(0.2 * 16 ** 3)).all()  # the top 20% of the voxels (ties kept)
    nonzero = attr != 0
    assert nonzero.any() and torch.equal(attr[nonzero], parts.maps[0][nonzero])
    assert torch.equal(attr, gad.attribute(x, target=y, q=0.2))  # deterministic
