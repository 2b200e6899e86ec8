"""Built-in spatial features: Brightness, Extent, LogAspectRatio (docs/definitions.md, 2.7)."""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from captum_gradflow.features.feature import Feature, overrides, spatial_rank
from captum_gradflow.features.moments import CoordinateMoments

__all__ = ["Brightness", "Extent", "LogAspectRatio"]


def _require_mask(mask: Optional[Tensor], x: Tensor, name: str) -> Tensor:
    spatial_rank(x, name, what="this feature")
    # Without a mask, a spatial feature reads the whole input.
    return mask if mask is not None else torch.ones_like(x[:1, :1])


def _warn_undefined(value: Tensor, name: str, why: str) -> None:
    bad = int(torch.isnan(value.detach()).sum())
    if bad:
        warnings.warn(
            f"feature '{name}' is undefined (NaN) for {bad} of {value.shape[0]} examples: {why}",
            RuntimeWarning,
            stacklevel=4,  # the user's call of the feature
        )


_WEIGHTS = (
    "its intensity weights (mask * channel mean) sum to <= 0 or give a negative spread; it "
    "expects non-negative intensities inside the mask (pass a mask, or shift the data)"
)


class Brightness(Feature):
    """Mean intensity inside the mask: ``sum(m * mean_c x) / sum(m)``.

    Works on signals ``(N, C, L)``, images ``(N, C, H, W)`` and volumes ``(N, C, D, H, W)``;
    without a mask it is the mean over the whole input.

    Examples::

        >>> import torch
        >>> from captum_gradflow import Brightness
        >>> x = torch.rand(2, 1, 16, 16)
        >>> Brightness()(x).shape
        torch.Size([2])
        >>> Brightness()(torch.ones(2, 1, 4, 5, 6), torch.rand(4, 5, 6)).tolist()
        [1.0, 1.0]
    """

    def __init__(self, mask: Optional[Tensor] = None, name: str = "brightness", input_index: int = 0) -> None:
        super().__init__(name, mask, input_index)

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        m = _require_mask(mask, x, self.name)
        w = m * x.mean(dim=1, keepdim=True)
        return w.flatten(1).sum(1) / m.flatten(1).sum(1).expand(x.shape[0])

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        m = _require_mask(mask, x, self.name)
        total = m.flatten(1).sum(1).reshape(-1, *([1] * (x.dim() - 1)))
        return (m / (total * x.shape[1])).expand(x.shape[0], *x.shape[1:])

    def moment_gradient(self, moments: CoordinateMoments) -> Optional[Tensor]:
        if overrides(self, Brightness, ("compute", "closed_form_gradient")):
            return None
        return Brightness.closed_form_gradient(self, moments.x, moments.mask)


class _MomentFeature(Feature):
    """A feature whose value and gradient are read from the :class:`CoordinateMoments` of the
    input under the mask (``_value`` and ``_gradient``, methods of the moments); it declares
    :meth:`moment_gradient`, so moments shared by several such features are computed once."""

    _value: Callable[[CoordinateMoments], Tensor]
    _gradient: Callable[[CoordinateMoments], Tensor]

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        value = self._value(CoordinateMoments(x, _require_mask(mask, x, self.name)))
        _warn_undefined(value, self.name, _WEIGHTS)
        return value

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return self._gradient(CoordinateMoments(x, _require_mask(mask, x, self.name)))

    def moment_gradient(self, moments: CoordinateMoments) -> Optional[Tensor]:
        if overrides(self, _MomentFeature, ("compute", "closed_form_gradient")):
            return None
        return self._gradient(moments)


class Extent(_MomentFeature):
    """Radius of gyration of the intensity-weighted pixel or voxel coordinates in the mask.

    ``sqrt(trace(cov_w(p)))`` in pixels (voxels), with weights ``m * mean_c x`` and one
    coordinate per spatial axis (1, 2 or 3). Intended for non-negative intensities: where the
    weights sum to zero or less the value is NaN and a ``RuntimeWarning`` gives the count.
    Without a mask the whole input is the mask.

    Examples::

        >>> import torch
        >>> from captum_gradflow import Extent
        >>> Extent()(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2])
        >>> Extent()(torch.rand(2, 1, 6, 7, 8)).shape
        torch.Size([2])
    """

    _value = staticmethod(CoordinateMoments.extent)
    _gradient = staticmethod(CoordinateMoments.extent_gradient)

    def __init__(self, mask: Optional[Tensor] = None, name: str = "extent", input_index: int = 0) -> None:
        super().__init__(name, mask, input_index)


class LogAspectRatio(_MomentFeature):
    """``log(lambda_max / lambda_min)`` of the intensity-weighted coordinate covariance.

    0 for an isotropic blob (disc or ball), larger for an elongated one; images use the 2x2
    covariance, volumes the 3x3 one (signals have no aspect ratio: an error). Where the largest
    or smallest eigenvalue is degenerate (exact isotropy) the feature is not differentiable
    and its gradient is NaN (so alignments there are reported undefined).

    Examples::

        >>> import torch
        >>> from captum_gradflow import LogAspectRatio
        >>> LogAspectRatio()(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2])
    """

    _value = staticmethod(CoordinateMoments.log_aspect_ratio)
    _gradient = staticmethod(CoordinateMoments.log_aspect_ratio_gradient)

    def __init__(self, mask: Optional[Tensor] = None, name: str = "log_aspect_ratio", input_index: int = 0) -> None:
        super().__init__(name, mask, input_index)

