"""The noise baseline of feature alignment and its significance (docs/definitions.md, 2.3).

A feature "is used by the model" when its alignment beats that of random directions, not
when its alignment looks large or small in absolute terms: in ``d`` dimensions a random
direction scores about ``1/d``. :func:`make_noise` draws the random directions (where the
features look, on their spatial scale), and :class:`NoiseComparison` holds both alignments
and derives the per-example ratios and empirical p-values and the dataset-level paired test.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_gradflow._stats import paired_wilcoxon
from captum_gradflow.features import (
    CoordinateMoments,
    Feature,
    as_feature_list,
    normalize_mask,
    noise_features,
)
from captum_gradflow.features.linear import sigma_per_axis

__all__ = ["NoiseComparison", "NoiseSet", "make_noise"]


@dataclass(eq=False)
class NoiseComparison:
    r"""Alignment of ``m`` features and ``M`` noise features on ``N`` examples.

    Built by :meth:`FeatureAlignment.compare_to_noise`; batches from a data loader are pooled
    with :meth:`concat`. Only ``S``, ``S_noise`` and ``feature_names`` are stored; everything
    else is derived from them (so pooled reports are recomputed on all examples).

    Per example and feature (``noise_mean = nanmean_j S_noise_j``):

    * ``ratio = S / noise_mean`` (N, m);
    * ``p_value = (1 + #{j : S_noise_j >= S}) / (M + 1)`` (N, m), at least ``1/(M+1)``;
      ``M`` counts the defined noise values of that example.

    Per feature, over examples where both ``S`` and ``noise_mean`` are defined:

    * ``mean_ratio`` (m,): mean of the per-example ratios;
    * ``wilcoxon_p`` (m,): one-sided Wilcoxon signed-rank p-value of ``S - noise_mean > 0``
      (``scipy.stats.wilcoxon``, ``alternative="greater"``); it can be small with few noise
      features because it pools examples. NaN when no example has a nonzero difference;
    * ``n_skipped`` (m,): examples left out because a value was NaN (undefined).

    Args:
        S: Feature alignments ``(N, m)``.
        S_noise: Noise alignments ``(N, M)``.
        feature_names: ``m`` names.
        construction: How the noise was drawn (:attr:`NoiseSet.description`), shown in
            :meth:`table`; the verdict depends on it.
        J: Joint alignment of the features ``(N,)`` from the same model gradient, where the
            comparison computed it (:meth:`FeatureAlignment.compare_to_noise`), else None.

    Examples::

        >>> import torch
        >>> from captum_gradflow import NoiseComparison
        >>> r = NoiseComparison(torch.tensor([[0.5], [0.25], [0.75]]), torch.full((3, 4), 0.125), ["f"])
        >>> r.mean_ratio
        tensor([4.], dtype=torch.float64)
        >>> r.p_value[:, 0]
        tensor([0.2000, 0.2000, 0.2000], dtype=torch.float64)
    """

    S: Tensor
    S_noise: Tensor
    feature_names: List[str]
    construction: str = ""
    J: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if not isinstance(self.S, Tensor) or not isinstance(self.S_noise, Tensor):
            raise TypeError("S and S_noise must be tensors")
        if self.S.dim() != 2 or self.S_noise.dim() != 2 or self.S.shape[0] != self.S_noise.shape[0]:
            raise ValueError(
                f"S must be (N, m) and S_noise (N, M) with the same N; got {tuple(self.S.shape)} "
                f"and {tuple(self.S_noise.shape)}"
            )
        if self.S_noise.shape[1] < 1:
            raise ValueError("S_noise needs at least one noise feature")
        self.feature_names = list(self.feature_names)
        if len(self.feature_names) != self.S.shape[1]:
            raise ValueError(f"{len(self.feature_names)} feature names for {self.S.shape[1]} columns of S")
        self.S = self.S.detach().cpu().double()
        self.S_noise = self.S_noise.detach().cpu().double()
        if self.J is not None:
            self.J = self.J.detach().cpu().double().reshape(self.S.shape[0])

    # Everything below is derived lazily: batches pooled with concat never pay for their own
    # statistical tests.
    @cached_property
    def noise_mean(self) -> Tensor:
        """Mean alignment of the defined noise features of each example, (N,)."""
        noise = self.S_noise
        n_valid = (~torch.isnan(noise)).sum(1)
        mean = torch.nan_to_num(noise, nan=0.0).sum(1) / n_valid
        return torch.where(n_valid > 0, mean, torch.full_like(mean, math.nan))

    @cached_property
    def ratio(self) -> Tensor:
        """``S / noise_mean`` per example and feature, (N, m); NaN where undefined."""
        positive = self.noise_mean > 0
        ratio = self.S / torch.where(positive, self.noise_mean, torch.ones_like(self.noise_mean))[:, None]
        return torch.where(positive[:, None] & ~torch.isnan(self.S), ratio, torch.full_like(ratio, math.nan))

    @cached_property
    def p_value(self) -> Tensor:
        """Empirical p-value ``(1 + #{j: S_noise_j >= S}) / (M + 1)``, (N, m)."""
        n_valid = (~torch.isnan(self.S_noise)).sum(1)[:, None]
        # NaN compares False, so undefined noise values never count as beating S.
        beats = (self.S_noise[:, None, :] >= self.S[:, :, None]).sum(2).double()
        p = (1.0 + beats) / (n_valid + 1.0)
        return torch.where(~torch.isnan(self.S) & (n_valid > 0), p, torch.full_like(p, math.nan))

    @cached_property
    def _valid(self) -> Tensor:
        return torch.isfinite(self.S - self.noise_mean[:, None]) & torch.isfinite(self.ratio)

    @cached_property
    def n_skipped(self) -> Tensor:
        """Examples left out of the dataset-level statistics of each feature, (m,)."""
        return (~self._valid).sum(0)

    @cached_property
    def mean_ratio(self) -> Tensor:
        """Mean of the per-example ratios over defined examples, (m,)."""
        valid = self._valid
        total = torch.where(valid, self.ratio, torch.zeros_like(self.ratio)).sum(0)
        count = valid.sum(0)
        return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))

    @cached_property
    def wilcoxon_p(self) -> Tensor:
        """One-sided Wilcoxon signed-rank p-value of ``S - noise_mean > 0``, (m,)."""
        diff = self.S - self.noise_mean[:, None]
        p = [paired_wilcoxon(diff[self._valid[:, j], j].numpy()).p_value for j in range(self.S.shape[1])]
        return torch.tensor(p, dtype=torch.float64)

    # ------------------------------------------------------------------ summaries
    @property
    def n_examples(self) -> int:
        return self.S.shape[0]

    @property
    def n_noise(self) -> int:
        return self.S_noise.shape[1]

    @property
    def mean_S(self) -> Tensor:
        """Mean alignment of each feature over the examples where it is defined, (m,)."""
        return torch.nanmean(self.S, dim=0)

    @property
    def mean_S_noise(self) -> float:
        """Mean alignment of the noise features over all defined values."""
        return float(torch.nanmean(self.S_noise))

    def beats_noise(self, alpha: float = 0.01) -> Tensor:
        """Boolean (m,): the feature's Wilcoxon p-value is below ``alpha`` (NaN gives False)."""
        return self.wilcoxon_p < alpha

    @classmethod
    def concat(cls, reports: Sequence["NoiseComparison"]) -> "NoiseComparison":
        """Pool reports from several batches (same features, same number of noise features).

        Examples::

            >>> import torch
            >>> from captum_gradflow import NoiseComparison
            >>> a = NoiseComparison(torch.rand(4, 1), torch.rand(4, 3) * 0.1, ["f"])
            >>> NoiseComparison.concat([a, a]).n_examples
            8
        """
        reports = list(reports)
        if not reports:
            raise ValueError("concat needs at least one NoiseComparison")
        names, n_noise = reports[0].feature_names, reports[0].n_noise
        construction = reports[0].construction
        for r in reports[1:]:
            if r.feature_names != names or r.n_noise != n_noise:
                raise ValueError(
                    "cannot pool reports with different features or noise counts: "
                    f"{names}/{n_noise} vs {r.feature_names}/{r.n_noise}"
                )
            if r.construction != construction:
                raise ValueError(
                    f"cannot pool reports with different noise constructions: {construction!r} vs "
                    f"{r.construction!r}"
                )
        joint = None if any(r.J is None for r in reports) else torch.cat([r.J for r in reports])
        return cls(torch.cat([r.S for r in reports]), torch.cat([r.S_noise for r in reports]), names,
                   construction, joint)

    def table(self) -> str:
        """A readable table, one row per feature."""
        width = max(8, *(len(n) for n in self.feature_names))
        head = (
            f"{'feature':<{width}}  {'mean S':>10}  {'mean ratio':>10}  {'median p':>9}  "
            f"{'Wilcoxon p':>10}  {'skipped':>7}"
        )
        lines = [
            f"Alignment vs {self.n_noise} noise features on {self.n_examples} examples "
            f"(mean noise S = {self.mean_S_noise:.3g})",
        ]
        if self.construction:
            lines.append(f"noise: {self.construction}")
        lines += [head, "-" * len(head)]
        median_p = torch.nanmedian(self.p_value, dim=0).values if self.n_examples else self.mean_ratio
        for j, name in enumerate(self.feature_names):
            lines.append(
                f"{name:<{width}}  {float(self.mean_S[j]):>10.4g}  {float(self.mean_ratio[j]):>10.4g}  "
                f"{float(median_p[j]):>9.3g}  {float(self.wilcoxon_p[j]):>10.3g}  "
                f"{int(self.n_skipped[j]):>7d}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------------- constructing the noise
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
