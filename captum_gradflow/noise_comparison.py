"""How a feature's alignment compares with that of random directions (docs/definitions.md, 2.3).

:class:`NoiseComparison` stores the alignments of the features and of the noise features
(drawn by :func:`~captum_gradflow.noise.make_noise`) and derives the per-example ratios and
empirical p-values and the dataset-level paired test (:func:`~captum_gradflow._stats.paired_wilcoxon`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from captum_gradflow._stats import paired_wilcoxon

__all__ = ["NoiseComparison"]


@dataclass(eq=False)
class NoiseComparison:
    r"""Alignment of ``m`` features and ``M`` noise features on ``N`` examples.

    Built by :meth:`FeatureAlignment.compare_to_noise`; batches from a data loader are pooled
    with :meth:`concat`. Only ``S``, ``S_noise``, ``feature_names``, ``construction`` and
    ``J`` are stored; everything else is derived from them (so pooled reports are recomputed
    on all examples).

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
