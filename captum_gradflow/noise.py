"""The noise baseline of feature alignment: random directions where the features look
(docs/definitions.md, 2.3).

A feature "is used by the model" when its alignment beats that of random directions, not
when its alignment looks large or small in absolute terms: in ``d`` dimensions a random
direction scores about ``1/d``. :func:`make_noise` draws the random directions (where the
features look, on their spatial scale) and says how in a :class:`NoiseSet`;
:class:`~captum_gradflow.NoiseComparison` (:mod:`captum_gradflow.noise_comparison`, also
importable from here) holds both alignments and the statistics derived from them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_gradflow.features import (
    CoordinateMoments,
    Feature,
    as_feature_list,
    normalize_mask,
    noise_features,
)
from captum_gradflow.features.linear import sigma_per_axis
from captum_gradflow.noise_comparison import NoiseComparison

__all__ = ["NoiseComparison", "NoiseSet", "make_noise"]

_AUTO = "auto"
# Noise covering more than this many times the features' area gets a warning.
_COVERAGE_LIMIT = 4.0
# The chosen default construction (docs/noise_baseline.md has the measurements).
DEFAULT_CENTER = True


@dataclass
class NoiseSet:
    """Noise features drawn for one comparison and how they were drawn.

    Attributes:
        features: ``M`` :class:`~captum_gradflow.NoiseFeature` objects, each carrying
            ``mask`` (so their gradient is right without a per-call mask).
        mask: The noise mask (the same object the features carry), or None for the whole input.
        description: Mask, smoothing per axis and centring in words, for reports
            (:attr:`NoiseComparison.construction`).
        smooth_sigma: Gaussian width per spatial axis, or None for unsmoothed noise.
        center: Whether the in-mask mean of each direction was removed.
    """

    features: List[Feature]
    mask: Optional[Tensor]
    description: str
    smooth_sigma: Optional[Tuple[float, ...]] = None
    center: bool = False


def make_noise(
    features: Union[Feature, Sequence[Feature]],
    x: Union[Tensor, Tuple[Tensor, ...]],
    mask: Optional[Tensor],
    n_noise: int,
    seed: int = 0,
    noise_mask: Union[str, Tensor, None] = _AUTO,
    smooth_sigma: Union[str, float, Sequence[float], None] = _AUTO,
    center_noise: Optional[bool] = None,
    input_index: int = 0,
) -> NoiseSet:
    r"""Noise features that do not flatter: where the features look, on their scale.

    Rules (docs/definitions.md, 2.3; the measurements behind the defaults are in
    ``docs/noise_baseline.md``):

    * ``noise_mask="auto"``: the call's ``mask`` if given, else the common mask of the
      features reading ``inputs[input_index]`` (all share one ``mask`` object or equal
      tensors), else None (the whole input). ``None`` asks for the whole input explicitly.
    * ``smooth_sigma="auto"``: the noise mask's radius of gyration (median over examples;
      the whole input's when there is no mask), the same width on every spatial axis; None
      for non-spatial inputs ``(N, d)``. The built-in features' gradients are low-order
      patterns over the whole mask (constant, quadratic), so noise on that scale has no
      finer structure than they do. One number or one per axis is used as given; None
      leaves the noise unsmoothed.
    * ``center_noise=None``: the default, centred. Smoothed noise restricted to a mask shares
      the mask's mean direction (it has a nonzero in-mask mean), which is brightness'
      gradient: the baseline then rises with the model's use of brightness and hides it.
      Centred noise is ``(r - c) * m``, orthogonal to ``m`` (see
      :class:`~captum_gradflow.NoiseFeature`).
    * A ``RuntimeWarning`` when the noise covers much more of the input than the features
      (no noise mask while the features are masked, or a noise mask more than 4 times the
      features' area): such noise makes any masked feature look significant.

    Args:
        features: The features to be compared with the noise.
        x: Inputs (a tensor, or a tuple whose ``input_index`` entry the noise lives on).
        mask: The call's feature mask (overrides the features' own), or None.
        n_noise: Number of noise features M (at least 1).
        seed: Seed of the first noise feature (seeds ``seed .. seed + M - 1``).
        noise_mask: ``"auto"``, None (whole input) or a mask ``(N or 1, 1, *spatial)``.
        smooth_sigma: ``"auto"``, None, one width in pixels (voxels) or one per spatial axis.
        center_noise: Remove each direction's in-mask mean; None for the default (True).
        input_index: The input tensor the noise lives on.

    Returns:
        :class:`NoiseSet`.

    Examples::

        >>> import torch
        >>> from captum_gradflow import Brightness, synthetic_lesions
        >>> from captum_gradflow.noise import make_noise
        >>> data = synthetic_lesions(8, size=32, seed=0)
        >>> ns = make_noise([Brightness()], data.images, data.masks, n_noise=4)
        >>> len(ns.features), ns.mask is data.masks, ns.center
        (4, True, True)
    """
    feats = as_feature_list(features)
    xs = x if isinstance(x, (tuple, list)) else (x,)
    if not 0 <= input_index < len(xs):
        raise IndexError(f"input_index {input_index} is out of range for {len(xs)} inputs")
    x = xs[input_index]
    if isinstance(n_noise, bool) or not isinstance(n_noise, int) or n_noise < 1:
        raise ValueError(f"n_noise must be a positive int, got {n_noise!r}")
    center = DEFAULT_CENTER if center_noise is None else bool(center_noise)
    own = [f for f in feats if f.input_index == input_index]
    feature_mask, source = _feature_mask(own, mask)
    if isinstance(noise_mask, str):
        if noise_mask != _AUTO:
            raise ValueError(f"noise_mask must be 'auto', None or a mask tensor, got {noise_mask!r}")
        noise_mask = feature_mask
    else:
        source = "given mask" if noise_mask is not None else "whole input"
    m = None if noise_mask is None else normalize_mask(noise_mask, x, "noise")
    sigma = _sigma(smooth_sigma, x, m)
    _warn_coverage(own, mask, x, m)
    noise = noise_features(n_noise, seed=seed, mask=noise_mask, smooth_sigma=sigma,
                           input_index=input_index, center=center)
    return NoiseSet(noise, noise_mask, _describe(n_noise, source, m, sigma, smooth_sigma, center), sigma, center)


def _feature_mask(own: List[Feature], mask: Optional[Tensor]) -> Tuple[Optional[Tensor], str]:
    """The mask shared by the features (the call's mask wins) and its description."""
    if mask is not None:
        return mask, "the call's feature mask"
    masks = [f.mask for f in own]
    if not masks or any(m is None for m in masks):
        return None, "whole input (the features have no common mask)"
    first = masks[0]
    for m in masks[1:]:
        if m is not first and not (isinstance(m, Tensor) and isinstance(first, Tensor)
                                   and m.shape == first.shape and torch.equal(m, first)):
            return None, "whole input (the features have no common mask)"
    return first, "the features' common mask"


def _sigma(smooth_sigma, x: Tensor, m: Optional[Tensor]) -> Optional[Tuple[float, ...]]:
    k = x.dim() - 2
    if not (isinstance(smooth_sigma, str)):
        return sigma_per_axis(smooth_sigma, k, tuple(x.shape[1:]))
    if smooth_sigma != _AUTO:
        raise ValueError(f"smooth_sigma must be 'auto', None or widths in pixels, got {smooth_sigma!r}")
    if k < 1:
        return None
    weights = m if m is not None else torch.ones_like(x[:1, :1])
    # Radius of gyration of the mask itself (a uniform image inside it).
    rg = CoordinateMoments(torch.ones_like(weights), weights).extent()
    return (round(float(rg.double().median()), 3),) * k


def _area(m: Optional[Tensor], x: Tensor) -> float:
    """Mean mask sum per example (the whole spatial size without a mask)."""
    whole = float(np.prod(x.shape[2:])) if x.dim() > 2 else float(x[0].numel())
    return whole if m is None else float(m.flatten(1).sum(1).double().mean())


def _warn_coverage(own: List[Feature], mask: Optional[Tensor], x: Tensor, m: Optional[Tensor]) -> None:
    raws = [(own[0].name if own else "feature", mask)] if mask is not None else [(f.name, f.mask) for f in own]
    if not raws or any(r is None for _, r in raws):
        return  # some feature reads the whole input: any noise mask is narrower
    area = max(_area(normalize_mask(r, x, name), x) for name, r in raws)
    noise_area = _area(m, x)
    if noise_area > _COVERAGE_LIMIT * area:
        where = "the whole input" if m is None else "its mask"
        warnings.warn(
            f"the noise covers {noise_area / area:.1f}x the features' area ({where}: {noise_area:.0f} vs "
            f"{area:.0f} pixels per example): random directions outside the features' mask lower "
            "the baseline and make any masked feature look significant; pass noise_mask='auto'",
            RuntimeWarning,
            stacklevel=3,
        )


def _describe(n: int, source: str, m: Optional[Tensor], sigma, requested, center: bool) -> str:
    if m is None:
        where = source if source.startswith("whole") else "whole input"
    else:
        kind = "per-example" if m.shape[0] > 1 else "shared"
        where = f"{source} ({kind})"
    if sigma is None:
        smooth = "unsmoothed"
    else:
        how = " (auto: the mask's radius of gyration)" if requested == _AUTO else ""
        smooth = "Gaussian sigma " + " x ".join(f"{s:g}" for s in sigma) + f" px per axis{how}"
    centred = "centred (in-mask mean removed)" if center else "not centred"
    return f"{n} directions; mask: {where}; {smooth}; {centred}"
