"""Interpretable features: differentiable maps ``g: (N, *S) -> (N,)`` (docs/definitions.md, 2.7).

A feature reads one input tensor (``input_index``, default 0, for models with tuple inputs),
returns one value per example, and gives its input gradient in closed form where that is
cheap (``Feature.gradient``) or by autograd otherwise. Spatial features read signals
``(N, C, L)``, images ``(N, C, H, W)`` or volumes ``(N, C, D, H, W)`` and take a soft mask of
shape ``(N or 1, 1, *spatial)`` (a bare ``spatial``-shaped mask is accepted too), either at
construction or per call; a per-call mask wins.

Three declarations let alignment code skip per-feature work (the general path,
:meth:`Feature.gradient`, stays correct for every feature):

* :meth:`Feature.linear_direction`: the gradient is ``r * mask`` for a direction ``r``
  that does not depend on ``x`` (linear and noise features);
* :meth:`Feature.centred_direction`: the gradient is ``(r - c) * mask``, ``r`` centred
  inside the mask (centred noise features);
* :meth:`Feature.moment_gradient`: the gradient follows from shared
  :class:`CoordinateMoments` (Brightness, Extent, LogAspectRatio).
"""
from captum_gradflow.features.feature import Feature, as_feature_list, normalize_mask, spatial_rank
from captum_gradflow.features.linear import LinearFeature, NoiseFeature, noise_features, smooth_direction
from captum_gradflow.features.moments import CoordinateMoments
from captum_gradflow.features.spatial import Brightness, Extent, LogAspectRatio

__all__ = [
    "Brightness",
    "CoordinateMoments",
    "Extent",
    "Feature",
    "LinearFeature",
    "LogAspectRatio",
    "NoiseFeature",
    "as_feature_list",
    "noise_features",
    "normalize_mask",
    "smooth_direction",
    "spatial_rank",
]
