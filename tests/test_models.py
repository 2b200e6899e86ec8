"""The paper's small CNN in 2-D and 3-D: shapes, layers, smooth gradients, argument checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_gradflow import SmallCNN, SmallCNN3d


def test_small_cnn_3d_mirrors_the_2d_layers():
    two, three = SmallCNN(), SmallCNN3d()
    assert list(two.state_dict()) == list(three.state_dict())
    kinds = [type(m).__name__ for m in three.features]
    assert kinds == ["Conv3d", "ELU", "AvgPool3d", "Conv3d", "ELU", "AvgPool3d", "Conv3d", "ELU",
                     "AdaptiveAvgPool3d"]
    assert three.features[0].kernel_size == (5, 5, 5)
    assert three.classifier[1].in_features == 16 * 4 ** 3


@pytest.mark.parametrize("size", [8, 16, 20])
def test_small_cnn_3d_any_volume_size_and_gradients(size):
    torch.manual_seed(0)
    model = SmallCNN3d(in_channels=2, num_classes=3, channels=(2, 4, 4), hidden=(8, 8), pool_size=2)
    x = torch.rand(2, 2, size, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [SmallCNN, SmallCNN3d])
def test_bad_sizes_are_rejected(cls):
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        cls(num_classes=0)
    with pytest.raises(ValueError, match="in_channels"):
        cls(in_channels=0)
    with pytest.raises(ValueError, match="channels must be 3 positive ints"):
        cls(channels=(8, 16))
    with pytest.raises(ValueError, match="hidden must be 2 positive ints"):
        cls(hidden=(8, 0))
    assert isinstance(cls(num_classes=1), nn.Module)
