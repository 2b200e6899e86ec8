"""The seed paper's small image classifier: three convolutions, average pooling, ELU."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Conv 5x5 -> conv 3x3 -> conv 3x3, each with ELU and 2x2 average pooling, then dense
    256 -> 128 -> ``num_classes``.

    ELU and average pooling (not ReLU and max pooling) keep the input gradient smooth, which
    the alignment regularizer and the gradient flow need: a ReLU network's input gradient is
    piecewise constant. Any image size works: an adaptive average pool brings the last feature
    map to ``pool_size x pool_size``.

    Args:
        in_channels: Image channels.
        num_classes: Number of logits; 1 gives a single-output model of shape ``(N, 1)``.
        channels: Output channels of the three convolutions.
        hidden: Widths of the two dense hidden layers.
        pool_size: Side of the feature map fed to the dense layers.

    Examples::

        >>> import torch
        >>> from captum_gradflow import SmallCNN
        >>> model = SmallCNN(in_channels=1, num_classes=2)
        >>> model(torch.rand(4, 1, 64, 64)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (8, 16, 16),
        hidden: Sequence[int] = (256, 128),
        pool_size: int = 4,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ELU(), nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ELU(), nn.AvgPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ELU(), nn.AdaptiveAvgPool2d(pool_size),
        )
        h1, h2 = hidden
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * pool_size * pool_size, h1), nn.ELU(),
            nn.Linear(h1, h2), nn.ELU(),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
