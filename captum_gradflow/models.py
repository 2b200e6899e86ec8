"""The seed paper's small classifier: three convolutions, average pooling, ELU (2-D and 3-D)."""
from __future__ import annotations

from numbers import Integral
from typing import Sequence, Type

from torch import Tensor, nn

__all__ = ["SmallCNN", "SmallCNN3d"]


def _check_sizes(
    in_channels: int, num_classes: int, channels: Sequence[int], hidden: Sequence[int],
    pool_size: int,
) -> None:
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                        ("pool_size", pool_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, values, n in (("channels", channels, 3), ("hidden", hidden, 2)):
        values = tuple(values)
        if len(values) != n or any(isinstance(v, bool) or not isinstance(v, Integral) or v < 1
                                   for v in values):
            raise ValueError(f"{name} must be {n} positive ints, got {values!r}")


class _SmallCNN(nn.Module):
    """The architecture for any number of spatial axes (the convolution types say which)."""

    _conv: Type[nn.Module]
    _pool: Type[nn.Module]
    _adaptive: Type[nn.Module]
    _axes: int

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (8, 16, 16),
        hidden: Sequence[int] = (256, 128),
        pool_size: int = 4,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, num_classes, channels, hidden, pool_size)
        c1, c2, c3 = (int(c) for c in channels)
        in_channels, num_classes, pool_size = int(in_channels), int(num_classes), int(pool_size)
        conv, pool = self._conv, self._pool
        self.features = nn.Sequential(
            conv(in_channels, c1, 5, padding=2), nn.ELU(), pool(2),
            conv(c1, c2, 3, padding=1), nn.ELU(), pool(2),
            conv(c2, c3, 3, padding=1), nn.ELU(), self._adaptive(pool_size),
        )
        h1, h2 = (int(h) for h in hidden)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * pool_size ** self._axes, h1), nn.ELU(),
            nn.Linear(h1, h2), nn.ELU(),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallCNN(_SmallCNN):
    """Conv 5x5 -> conv 3x3 -> conv 3x3, each with ELU and 2x2 average pooling, then dense
    256 -> 128 -> ``num_classes``.

    ELU and average pooling (not ReLU and max pooling) keep the input gradient smooth, which
    the alignment regularizer and the gradient flow need: a ReLU network's input gradient is
    piecewise constant. Any image size works: an adaptive average pool brings the last feature
    map to ``pool_size x pool_size``.

    Args:
        in_channels: Image channels.
        num_classes: Number of logits (at least 1); 1 gives a single-output model of shape
            ``(N, 1)``.
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

    _conv, _pool, _adaptive, _axes = nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, 2


class SmallCNN3d(_SmallCNN):
    """:class:`SmallCNN` for volumes ``(N, C, D, H, W)``: the same layers with ``Conv3d``,
    ``AvgPool3d`` and an adaptive pool to ``pool_size^3``.

    Args:
        As :class:`SmallCNN`'s, with ``in_channels`` the volume's channels and ``pool_size``
        the side of the cubic feature volume fed to the dense layers.

    Examples::

        >>> import torch
        >>> from captum_gradflow import SmallCNN3d
        >>> model = SmallCNN3d(in_channels=1, num_classes=2, pool_size=2)
        >>> model(torch.rand(4, 1, 16, 16, 16)).shape
        torch.Size([4, 2])
    """

    _conv, _pool, _adaptive, _axes = nn.Conv3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, 3
