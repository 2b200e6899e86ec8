"""Synthetic lesion volumes: shapes, determinism, the rule-based labels and the geometry."""
from __future__ import annotations

import math

import pytest
import torch

from captum_gradflow import Lesions, synthetic_lesions, synthetic_lesions_3d


def test_volumes_shapes_ranges_and_determinism():
    data = synthetic_lesions_3d(12, size=16, seed=3)
    assert isinstance(data, Lesions) and len(data) == 12
    assert data.images.shape == data.masks.shape == (12, 1, 16, 16, 16)
    assert data.images.dtype == torch.float32 and data.labels.dtype == torch.long
    assert 0 <= data.images.min() and data.images.max() <= 1
    again = synthetic_lesions_3d(12, size=16, seed=3)
    assert torch.equal(data.images, again.images) and torch.equal(data.labels, again.labels)
    assert not torch.equal(data.images, synthetic_lesions_3d(12, size=16, seed=4).images)
    train, test = data.split(0.25)
    assert len(train) == 9 and test.images.shape[1:] == (1, 16, 16, 16)


def test_labels_follow_the_rule():
    data = synthetic_lesions_3d(40, seed=0, rule="brightness")
    b = data.params["brightness"]
    assert b[data.labels == 1].min() > b[data.labels == 0].max()
    by_extent = synthetic_lesions_3d(40, seed=0, rule="extent", positive_fraction=0.25)
    assert by_extent.labels.sum() == 10
    e = by_extent.params["extent"]
    assert e[by_extent.labels == 1].min() > e[by_extent.labels == 0].max()
    custom = synthetic_lesions_3d(10, seed=0, rule=lambda p: -p["aspect"])
    a = custom.params["aspect"]
    assert a[custom.labels == 1].max() < a[custom.labels == 0].min()


def test_lesion_is_a_bright_ellipsoid_of_the_drawn_size():
    data = synthetic_lesions_3d(6, size=32, seed=1, noise=0.0, texture=0.0)
    for i in range(6):
        img, mask = data.images[i, 0], data.masks[i, 0]
        inside = img > (0.15 + data.params["brightness"][i]) / 2  # half-way: r < 1
        # the ellipsoid's volume is 4/3 pi a b c = 4/3 pi extent^3
        expected = 4 / 3 * math.pi * float(data.params["extent"][i]) ** 3
        assert inside.sum().item() == pytest.approx(expected, rel=0.15)
        assert mask[inside].min() > 0.5  # the mask covers the lesion, slightly larger
        assert (mask > 0.5).sum() > inside.sum()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="n must be"):
        synthetic_lesions_3d(1)
    with pytest.raises(ValueError, match="size must be at least 8"):
        synthetic_lesions_3d(4, size=4)
    with pytest.raises(ValueError, match="positive_fraction"):
        synthetic_lesions_3d(4, positive_fraction=1.0)
    with pytest.raises(ValueError, match="unknown rule"):
        synthetic_lesions_3d(4, rule="colour")


def test_two_dimensional_generator_is_unchanged_in_shape_and_labels():
    data = synthetic_lesions(16, size=32, seed=0)
    assert data.images.shape == (16, 1, 32, 32) and int(data.labels.sum()) == 8
    # Values of the previous release's generator (10eecf7): the refactor kept every random draw.
    assert float(data.images.double().sum()) == pytest.approx(3339.408222931437, rel=1e-6)
    assert float(data.masks.double().sum()) == pytest.approx(3785.968232482839, rel=1e-6)
    assert data.labels.tolist() == [1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="size must be at least 16"):
        synthetic_lesions(4, size=8)
