"""Region sensitivity (RS): how much the model's score drops when a region is occluded.

RS = (score(x) - score(x with the region filled by the baseline)) / occluded fraction of the
image or volume (docs/definitions.md, section 4). The paper's claim to check is
``RS(GAD regions) > RS(base regions minus GAD regions)``: what GAD kept matters more, per
pixel, than what it dropped;
:func:`compare_region_sensitivity` measures it per example with a one-sided paired test.

Signatures follow :func:`captum.metrics.infidelity`. All occlusions and the clean inputs go
through the model in the same batched forward passes (``max_examples_per_batch`` rows each).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import torch
from torch import Tensor

from captum_gradflow._common import TargetType, TensorOrTuple, format_inputs
from captum_gradflow._checks import check_batch, check_target_dtype
from captum_gradflow._guard import preserved
from captum_gradflow._stats import paired_wilcoxon
from captum_gradflow.metrics._occlusion import (
    BaselineType,
    RegionsLike,
    ScoreType,
    baselines_for,
    masks_for,
    occluded_fraction,
    scores_with_occlusions,
)

__all__ = [
    "RegionSensitivity",
    "RegionSensitivityComparison",
    "compare_region_sensitivity",
    "region_sensitivity",
]

RegionArg = Union[RegionsLike, Sequence[Optional[RegionsLike]]]
BaselineArg = Union[BaselineType, Tuple[BaselineType, ...]]
NO_PAIR = "no example with both regions non-empty"


@dataclass(frozen=True)
class RegionSensitivity:
    """Details of :func:`region_sensitivity`, one entry per example.

    Attributes:
        values: ``(N,)`` RS, NaN where undefined (see ``reasons``).
        score: ``(N,)`` score of the clean inputs.
        occluded_score: ``(N,)`` score with the regions occluded.
        fraction: ``(N,)`` occluded fraction of the image.
        n_undefined: Number of NaN entries of ``values``.
        reasons: Per example, ``""`` or why RS is NaN.
    """

    values: Tensor
    score: Tensor
    occluded_score: Tensor
    fraction: Tensor
    n_undefined: int
    reasons: List[str]


@dataclass(frozen=True)
class RegionSensitivityComparison:
    """Result of :func:`compare_region_sensitivity`.

    Attributes:
        gad: ``(N,)`` RS of the GAD regions.
        rest: ``(N,)`` RS of the base regions minus the GAD regions.
        gad_fraction: ``(N,)`` occluded fraction for ``gad``.
        rest_fraction: ``(N,)`` occluded fraction for ``rest``.
        n_pairs: Examples where both are defined.
        win_rate: Fraction of those where ``gad > rest`` (NaN without pairs); a rate, not a
            yes/no (``gad_wins``, its old name, still reads it with a DeprecationWarning).
        statistic: Wilcoxon signed-rank statistic of ``gad - rest`` (NaN when untestable).
        p_value: Its p-value for ``alternative`` (default: gad greater).
        n_undefined: Examples where ``gad`` or ``rest`` is NaN.
        reasons: Per example, ``""`` or why the pair is undefined.
        test_note: ``""`` or why the test could not be run.
    """

    gad: Tensor
    rest: Tensor
    gad_fraction: Tensor
    rest_fraction: Tensor
    n_pairs: int
    win_rate: float
    statistic: float
    p_value: float
    n_undefined: int
    reasons: List[str]
    test_note: str

    @property
    def gad_wins(self) -> float:
        """Deprecated name of :attr:`win_rate` (a fraction of images, not a yes/no)."""
        warnings.warn("RegionSensitivityComparison.gad_wins is now win_rate", DeprecationWarning, stacklevel=2)
        return self.win_rate


@overload
def region_sensitivity(
    forward_func: Callable[..., Tensor], inputs: TensorOrTuple, regions: RegionArg,
    target: TargetType = ..., baseline: BaselineArg = ..., score: ScoreType = ...,
    additional_forward_args: Any = ..., max_examples_per_batch: Optional[int] = ...,
    region_kwargs: Optional[Dict[str, Any]] = ..., return_details: Literal[False] = ...,
) -> Tensor: ...


@overload
def region_sensitivity(
    forward_func: Callable[..., Tensor], inputs: TensorOrTuple, regions: RegionArg,
    target: TargetType = ..., baseline: BaselineArg = ..., score: ScoreType = ...,
    additional_forward_args: Any = ..., max_examples_per_batch: Optional[int] = ...,
    region_kwargs: Optional[Dict[str, Any]] = ..., *, return_details: Literal[True],
) -> RegionSensitivity: ...


def region_sensitivity(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    regions: RegionArg,
    target: TargetType = None,
    baseline: BaselineArg = "mean",
    score: ScoreType = "margin",
    additional_forward_args: Any = None,
    max_examples_per_batch: Optional[int] = None,
    region_kwargs: Optional[Dict[str, Any]] = None,
    return_details: bool = False,
) -> Union[Tensor, RegionSensitivity]:
    r"""Region sensitivity: score drop per occluded fraction when the regions are occluded.

    The pixels (voxels) inside the regions (all channels) are replaced by the baseline, and

        RS = (score(x) - score(x_occluded)) / (occluded pixels / pixels)

    per example. Where nothing is occluded (an empty region) or the score is not finite, RS
    is NaN; the count and reasons are warned about, and returned with ``return_details``.

    Train mode: with BatchNorm or Dropout in train mode the result depends on the batch; the
    call warns once, naming those modules, and restores their buffers and every flag afterwards
    (docs/definitions.md, section 5). Call ``model.eval()`` first for per-example results.

    Args:
        forward_func: The model or any callable returning ``(N, K)`` or ``(N,)`` outputs.
        inputs: Images ``(N, C, H, W)`` or ``(N, H, W)``, volumes ``(N, C, D, H, W)``, or a
            tuple of them.
        regions: What to occlude: a :class:`Regions` or :class:`VolumeRegions`, a bool mask
            ``(N, *spatial)`` or ``(N, 1, *spatial)``, or attribution maps (turned into regions with
            :func:`attribution_regions` and ``region_kwargs``). For tuple inputs, a tuple
            with one entry per input (``None``: that input is not occluded).
        target: Output index per example, in every Captum form.
        baseline: ``"mean"`` (each example's per-channel mean, the default: filling with 0
            is a no-op on a zero background), a number, or a tensor broadcastable to the
            input (one per example allowed). A tuple gives one per input.
        score: ``"margin"`` (target logit minus the largest other; for one output, the
            output itself), ``"probability"`` (softmax of the target, sigmoid for one
            output), or a callable ``(output, target) -> (N,)``.
        additional_forward_args: Extra arguments of ``forward_func``; tensors with a batch
            dimension are repeated alongside the occluded copies.
        max_examples_per_batch: Most rows per forward pass (clean and occluded rows are
            batched together); ``None`` runs everything in one pass.
        region_kwargs: Arguments of :func:`attribution_regions` when maps are given.
        return_details: Return a :class:`RegionSensitivity` instead of the values.

    Returns:
        ``(N,)`` tensor of RS values, or :class:`RegionSensitivity`.

    Examples::

        >>> import torch
        >>> from captum_gradflow.metrics import region_sensitivity
        >>> model = lambda x: torch.stack([x[:, 0, :4, :4].sum((1, 2)), torch.zeros(len(x))], 1)
        >>> x = torch.zeros(1, 1, 8, 8)
        >>> x[:, :, :4, :4] = 1.0
        >>> mask = torch.zeros(1, 8, 8, dtype=torch.bool)
        >>> mask[:, :4, :4] = True  # a quarter of the image: margin 16 -> 4 with the mean
        >>> region_sensitivity(model, x, mask, target=0).tolist()
        [48.0]
    """
    xs, was_tuple, baselines = _checked_call(forward_func, inputs, target, baseline,
                                             "region_sensitivity")
    masks = masks_for(regions, xs, was_tuple, region_kwargs)
    fraction = occluded_fraction(masks, xs)
    with preserved(forward_func, xs, "region_sensitivity"):
        scores = scores_with_occlusions(
            forward_func, xs, [masks], baselines, target, score,
            additional_forward_args, max_examples_per_batch,
        )
    details = _rs(scores[0], scores[1], fraction)
    if details.n_undefined and not return_details:
        warnings.warn(
            f"region_sensitivity: {details.n_undefined} of {len(details.values)} values are NaN "
            f"({'; '.join(sorted(set(r for r in details.reasons if r)))})",
            RuntimeWarning,
            stacklevel=2,
        )
    return details if return_details else details.values


def compare_region_sensitivity(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    gad_attr: RegionArg,
    base_attr: RegionArg,
    target: TargetType = None,
    baseline: BaselineArg = "mean",
    score: ScoreType = "margin",
    additional_forward_args: Any = None,
    max_examples_per_batch: Optional[int] = None,
    region_kwargs: Optional[Dict[str, Any]] = None,
    alternative: str = "greater",
) -> RegionSensitivityComparison:
    r"""RS of the GAD regions against RS of the base regions minus the GAD regions.

    The paper's claim (docs/definitions.md, section 4) is ``RS(GAD) > RS(base \ GAD)``: per
    occluded pixel, what GAD kept moves the score more than what it dropped. Both occlusions
    and the clean inputs share the batched forward passes. Reported: both RS per example, the
    fraction of examples where GAD wins, and a paired Wilcoxon signed-rank test of ``gad - rest``
    (one-sided, ``alternative="greater"`` by default; scipy).

    Train mode: with BatchNorm or Dropout in train mode the result depends on the batch; the
    call warns once, naming those modules, and restores their buffers and every flag afterwards
    (docs/definitions.md, section 5). Call ``model.eval()`` first for per-example results.

    Args:
        forward_func: The model.
        inputs: Images ``(N, C, H, W)`` or ``(N, H, W)``, volumes ``(N, C, D, H, W)``, or a
            tuple of them.
        gad_attr: GAD attributions (or their :class:`Regions` or bool masks).
        base_attr: The base method's attributions (or regions or masks), same shape.
        target: Output index per example, in every Captum form.
        baseline: As in :func:`region_sensitivity`.
        score: As in :func:`region_sensitivity`.
        additional_forward_args: As in :func:`region_sensitivity`.
        max_examples_per_batch: As in :func:`region_sensitivity`.
        region_kwargs: Arguments of :func:`attribution_regions`, used for both maps.
        alternative: ``"greater"``, ``"less"`` or ``"two-sided"`` for the test.

    Returns:
        :class:`RegionSensitivityComparison`. Examples whose GAD region or remaining base
        region is empty are NaN there, counted in ``n_undefined`` and left out of the test.

    Examples::

        >>> import torch
        >>> from captum_gradflow.metrics import compare_region_sensitivity
        >>> model = lambda x: x[:, 0, :4, :4].sum((1, 2)).unsqueeze(1)  # uses the corner
        >>> x = torch.rand(6, 1, 8, 8)
        >>> x[:, :, :4, :4] += 1.0  # a bright corner: occluding it with the mean lowers F
        >>> base = torch.zeros(6, 1, 8, 8)
        >>> base[:, :, :4] = 1.0  # the top half
        >>> gad = base.clone()
        >>> gad[:, :, :, 4:] = 0.0  # GAD keeps the corner the model uses
        >>> result = compare_region_sensitivity(model, x, gad, base, region_kwargs={"q": 1.0})
        >>> result.win_rate
        1.0
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(
            f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}"
        )
    xs, was_tuple, baselines = _checked_call(forward_func, inputs, target, baseline,
                                             "compare_region_sensitivity")
    gad = masks_for(gad_attr, xs, was_tuple, region_kwargs, name="gad_attr")
    base = masks_for(base_attr, xs, was_tuple, region_kwargs, name="base_attr")
    rest = tuple(
        None if b is None else (b if g is None else b & ~g) for g, b in zip(gad, base)
    )
    with preserved(forward_func, xs, "compare_region_sensitivity"):
        scores = scores_with_occlusions(
            forward_func, xs, [gad, rest], baselines, target, score,
            additional_forward_args, max_examples_per_batch,
        )
    rs_gad = _rs(scores[0], scores[1], occluded_fraction(gad, xs))
    rs_rest = _rs(scores[0], scores[2], occluded_fraction(rest, xs))
    reasons = []
    for rg, rr in zip(rs_gad.reasons, rs_rest.reasons):
        parts = ([f"GAD: {rg}"] if rg else []) + ([f"base minus GAD: {rr}"] if rr else [])
        reasons.append("; ".join(parts))
    both = ~torch.isnan(rs_gad.values) & ~torch.isnan(rs_rest.values)
    diff = (rs_gad.values - rs_rest.values)[both].double().cpu().numpy()
    statistic, p_value, note = paired_wilcoxon(diff, alternative, no_pair=NO_PAIR)
    return RegionSensitivityComparison(
        gad=rs_gad.values,
        rest=rs_rest.values,
        gad_fraction=rs_gad.fraction,
        rest_fraction=rs_rest.fraction,
        n_pairs=int(both.sum()),
        win_rate=float((diff > 0).mean()) if len(diff) else float("nan"),
        statistic=statistic,
        p_value=p_value,
        n_undefined=int((~both).sum()),
        reasons=reasons,
        test_note=note,
    )


def _checked_call(forward_func: Callable[..., Tensor], inputs: TensorOrTuple, target: TargetType,
                  baseline: BaselineArg, what: str) -> Tuple[Tuple[Tensor, ...], bool, Tuple[Tensor, ...]]:
    """The checks both metrics make before any work: ``(inputs, was_tuple, baselines)``."""
    xs, was_tuple = format_inputs(inputs)
    check_batch(xs, forward_func, f"{what} inputs")
    check_target_dtype(target)
    return xs, was_tuple, baselines_for(baseline, xs)


def _rs(clean: Tensor, occluded: Tensor, fraction: Tensor) -> RegionSensitivity:
    values = (clean - occluded) / fraction
    reasons = []
    for f, s0, s1 in zip(fraction.tolist(), clean.tolist(), occluded.tolist()):
        if f == 0:
            reasons.append("empty region: nothing occluded")
        elif not (np.isfinite(s0) and np.isfinite(s1)):
            reasons.append("model score is not finite")
        else:
            reasons.append("")
    bad = torch.tensor([bool(r) for r in reasons], dtype=torch.bool)
    values = torch.where(bad, torch.full_like(values, float("nan")), values)
    return RegionSensitivity(
        values=values,
        score=clean,
        occluded_score=occluded,
        fraction=fraction,
        n_undefined=int(bad.sum()),
        reasons=reasons,
    )
