"""Region sensitivity (RS): how much the model's score drops when a region is occluded.

RS = (score(x) - score(x with the region filled by the baseline)) / occluded fraction of the
image (DESIGN 4). The paper's claim to check is ``RS(GAD regions) > RS(base regions minus
GAD regions)``: what GAD kept matters more, per pixel, than what it dropped;
:func:`compare_region_sensitivity` measures it per example with a one-sided paired test.

Signatures follow :func:`captum.metrics.infidelity`. All occlusions and the clean inputs go
through the model in the same batched forward passes (``max_examples_per_batch`` rows each).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.stats import wilcoxon
from torch import Tensor

from captum_gradflow._common import (
    TargetType,
    TensorOrTuple,
    check_finite,
    decision_margin,
    format_additional_args,
    format_inputs,
    run_forward,
    select_target,
)
from captum_gradflow.metrics.regions import Regions, attribution_regions

__all__ = [
    "RegionSensitivity",
    "RegionSensitivityComparison",
    "compare_region_sensitivity",
    "region_sensitivity",
]

RegionsLike = Union[Regions, Tensor, np.ndarray]
ScoreType = Union[str, Callable[[Tensor, TargetType], Tensor]]
BaselineType = Union[str, int, float, Tensor]


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
        gad_wins: Fraction of those where ``gad > rest`` (NaN without pairs).
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
    gad_wins: float
    statistic: float
    p_value: float
    n_undefined: int
    reasons: List[str]
    test_note: str


def region_sensitivity(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    regions: Union[RegionsLike, Sequence[Optional[RegionsLike]]],
    target: TargetType = None,
    baseline: Union[BaselineType, Tuple[BaselineType, ...]] = "mean",
    score: ScoreType = "margin",
    additional_forward_args: Any = None,
    max_examples_per_batch: Optional[int] = None,
    region_kwargs: Optional[Dict[str, Any]] = None,
    return_details: bool = False,
) -> Union[Tensor, RegionSensitivity]:
    r"""Region sensitivity: score drop per occluded fraction when the regions are occluded.

    The pixels inside the regions (all channels) are replaced by the baseline, and

        RS = (score(x) - score(x_occluded)) / (occluded pixels / pixels)

    per example. Where nothing is occluded (an empty region) or the score is not finite, RS
    is NaN; the count and reasons are warned about, and returned with ``return_details``.

    Args:
        forward_func: The model or any callable returning ``(N, K)`` or ``(N,)`` outputs.
        inputs: Images ``(N, C, H, W)`` or ``(N, H, W)``, or a tuple of them.
        regions: What to occlude: a :class:`Regions`, a bool mask ``(N, H, W)`` or
            ``(N, 1, H, W)``, or attribution maps (turned into regions with
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
    xs, was_tuple = format_inputs(inputs)
    baselines = _baselines(baseline, xs)
    masks = _masks_for(regions, xs, was_tuple, region_kwargs)
    fraction = _fraction(masks, xs)
    scores = _scores_with_occlusions(
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
    gad_attr: Union[RegionsLike, Sequence[Optional[RegionsLike]]],
    base_attr: Union[RegionsLike, Sequence[Optional[RegionsLike]]],
    target: TargetType = None,
    baseline: Union[BaselineType, Tuple[BaselineType, ...]] = "mean",
    score: ScoreType = "margin",
    additional_forward_args: Any = None,
    max_examples_per_batch: Optional[int] = None,
    region_kwargs: Optional[Dict[str, Any]] = None,
    alternative: str = "greater",
) -> RegionSensitivityComparison:
    r"""RS of the GAD regions against RS of the base regions minus the GAD regions.

    The paper's claim (DESIGN 4) is ``RS(GAD) > RS(base \ GAD)``: per occluded pixel, what
    GAD kept moves the score more than what it dropped. Both occlusions and the clean
    inputs share the batched forward passes. Reported: both RS per example, the fraction of
    examples where GAD wins, and a paired Wilcoxon signed-rank test of ``gad - rest``
    (one-sided, ``alternative="greater"`` by default; scipy).

    Args:
        forward_func: The model.
        inputs: Images ``(N, C, H, W)`` or ``(N, H, W)``, or a tuple of them.
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
        >>> result.gad_wins
        1.0
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(
            f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}"
        )
    xs, was_tuple = format_inputs(inputs)
    baselines = _baselines(baseline, xs)
    gad = _masks_for(gad_attr, xs, was_tuple, region_kwargs, name="gad_attr")
    base = _masks_for(base_attr, xs, was_tuple, region_kwargs, name="base_attr")
    rest = tuple(
        None if b is None else (b if g is None else b & ~g) for g, b in zip(gad, base)
    )
    scores = _scores_with_occlusions(
        forward_func, xs, [gad, rest], baselines, target, score,
        additional_forward_args, max_examples_per_batch,
    )
    rs_gad = _rs(scores[0], scores[1], _fraction(gad, xs))
    rs_rest = _rs(scores[0], scores[2], _fraction(rest, xs))
    reasons = []
    for rg, rr in zip(rs_gad.reasons, rs_rest.reasons):
        parts = ([f"GAD: {rg}"] if rg else []) + ([f"base minus GAD: {rr}"] if rr else [])
        reasons.append("; ".join(parts))
    both = ~torch.isnan(rs_gad.values) & ~torch.isnan(rs_rest.values)
    diff = (rs_gad.values - rs_rest.values)[both].double().cpu().numpy()
    statistic, p_value, note = _paired_test(diff, alternative)
    return RegionSensitivityComparison(
        gad=rs_gad.values,
        rest=rs_rest.values,
        gad_fraction=rs_gad.fraction,
        rest_fraction=rs_rest.fraction,
        n_pairs=int(both.sum()),
        gad_wins=float((diff > 0).mean()) if len(diff) else float("nan"),
        statistic=statistic,
        p_value=p_value,
        n_undefined=int((~both).sum()),
        reasons=reasons,
        test_note=note,
    )


def _paired_test(diff: np.ndarray, alternative: str) -> Tuple[float, float, str]:
    if len(diff) == 0:
        return float("nan"), float("nan"), "no example with both regions non-empty"
    if np.all(diff == 0):
        return float("nan"), float("nan"), "all paired differences are zero"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-sample notes; the p-value stands
        res = wilcoxon(diff, alternative=alternative)
    return float(res.statistic), float(res.pvalue), ""


def _masks_for(
    regions: Any,
    xs: Tuple[Tensor, ...],
    was_tuple: bool,
    region_kwargs: Optional[Dict[str, Any]],
    name: str = "regions",
) -> Tuple[Optional[Tensor], ...]:
    """One bool mask ``(N, H, W)`` (or None) per input, on the input's device."""
    if was_tuple:
        if not isinstance(regions, (tuple, list)) or len(regions) != len(xs):
            raise ValueError(
                f"{name}: tuple inputs need a tuple with one entry per input ({len(xs)})"
            )
        entries = list(regions)
    else:
        if isinstance(regions, (tuple, list)) and len(regions) == 1:
            regions = regions[0]  # Captum returns one-element tuples for single inputs
        entries = [regions]
    if all(e is None for e in entries):
        raise ValueError(f"{name}: no regions given (every entry is None)")
    return tuple(
        None if e is None else _mask(e, x, region_kwargs, f"{name}[{i}]" if was_tuple else name)
        for i, (e, x) in enumerate(zip(entries, xs))
    )


def _mask(
    entry: RegionsLike, x: Tensor, region_kwargs: Optional[Dict[str, Any]], name: str
) -> Tensor:
    if isinstance(entry, np.ndarray):
        entry = torch.from_numpy(entry)
    if isinstance(entry, Regions):
        mask = entry.mask
    elif isinstance(entry, Tensor) and entry.dtype == torch.bool:
        mask = entry[:, 0] if entry.dim() == 4 and entry.shape[1] == 1 else entry
        if mask.dim() != 3:
            raise ValueError(
                f"{name}: a bool mask must be (N, H, W) or (N, 1, H, W), got {tuple(entry.shape)}"
            )
    elif isinstance(entry, Tensor):
        if entry.dim() in (3, 4) and entry.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"{name}: attribution maps of shape {tuple(entry.shape)} do not match inputs of "
                f"shape {tuple(x.shape)}"
            )
        mask = attribution_regions(entry, **(region_kwargs or {})).mask
    else:
        raise TypeError(
            f"{name} must be Regions, a bool mask or attribution maps, got {type(entry).__name__}"
        )
    if mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"{name}: regions of shape {tuple(mask.shape)} do not match inputs of shape "
            f"{tuple(x.shape)} (need (N, H, W) = ({x.shape[0]}, {x.shape[-2]}, {x.shape[-1]}))"
        )
    return mask.to(x.device)


def _fraction(masks: Tuple[Optional[Tensor], ...], xs: Tuple[Tensor, ...]) -> Tensor:
    occluded = sum(m.flatten(1).sum(1).double() for m in masks if m is not None)
    pixels = sum(x.shape[-2] * x.shape[-1] for x in xs)
    return (occluded / pixels).cpu()


def _baselines(baseline: Any, xs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    if isinstance(baseline, tuple):
        if len(baseline) != len(xs):
            raise ValueError(f"baseline tuple has {len(baseline)} entries for {len(xs)} inputs")
        return tuple(_baseline(b, x, i, len(xs)) for i, (b, x) in enumerate(zip(baseline, xs)))
    return tuple(_baseline(baseline, x, i, len(xs)) for i, x in enumerate(xs))


def _baseline(b: BaselineType, x: Tensor, index: int, n_inputs: int) -> Tensor:
    """A tensor broadcastable to ``x`` (per-example when its leading dim is N); checks ``x``.

    The per-example means double as the finiteness check of the inputs: NaN or Inf shows in
    them, so the inputs are read once more only to name the problem.
    """
    if x.dim() < 3:
        raise ValueError(
            f"inputs must be images (N, H, W) or (N, C, H, W), got shape {tuple(x.shape)}"
        )
    x = x.detach()
    means = x.mean(dim=(-2, -1), keepdim=True) if x.is_floating_point() else None
    if means is not None and not torch.isfinite(means).all():
        check_finite((x,), "inputs" if n_inputs == 1 else f"inputs[{index}]")
    if isinstance(b, str):
        if b != "mean":
            raise ValueError(f'baseline must be "mean", a number or a tensor, got {b!r}')
        return means if means is not None else x.double().mean(dim=(-2, -1), keepdim=True)
    if isinstance(b, bool) or not isinstance(b, (int, float, Tensor)):
        raise TypeError(f'baseline must be "mean", a number or a tensor, got {type(b).__name__}')
    t = torch.as_tensor(b, dtype=x.dtype, device=x.device).detach()
    try:
        shape = torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"baseline of shape {tuple(t.shape)} does not broadcast to inputs {tuple(x.shape)}"
        )
    if not torch.isfinite(t).all():
        raise ValueError("baseline contains NaN or Inf values")
    return t


def _per_example(t: Tensor, x: Tensor) -> bool:
    return t.dim() == x.dim() and t.shape[0] == x.shape[0] and x.shape[0] > 1


def _take_target(target: TargetType, e: Tensor, n: int) -> TargetType:
    """The targets of rows ``e`` (example indices) of an expanded batch."""
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.reshape(-1)[e.to(target.device)]
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"target list has {len(target)} entries for {n} examples")
        return [target[i] for i in e.tolist()]
    return target


def _score(out: Tensor, target: TargetType, score: ScoreType) -> Tensor:
    n = out.shape[0]
    if callable(score):
        s = score(out, target)
        if not isinstance(s, Tensor) or s.shape != (n,):
            raise ValueError(f"score callable must return a tensor of shape ({n},)")
        return s
    if score == "margin":
        return decision_margin(out, target)
    if score == "probability":
        if out[0].numel() == 1:
            return torch.sigmoid(out.reshape(n))
        if out.dim() != 2:
            raise ValueError(f'score="probability" needs (N, K) outputs, got {tuple(out.shape)}')
        return select_target(torch.softmax(out, dim=1), target)
    raise ValueError(f'score must be "margin", "probability" or a callable, got {score!r}')


def _scores_with_occlusions(
    forward_func: Callable[..., Tensor],
    xs: Tuple[Tensor, ...],
    mask_sets: List[Tuple[Optional[Tensor], ...]],
    baselines: Tuple[Tensor, ...],
    target: TargetType,
    score: ScoreType,
    additional_forward_args: Any,
    max_examples_per_batch: Optional[int],
) -> Tensor:
    """Scores ``(1 + M, N)``: row 0 the clean inputs, row m the m-th occlusion set.

    The rows of all copies are laid end to end (copy-major) and cut into forward passes of
    at most ``max_examples_per_batch`` rows; each pass is assembled from contiguous slices
    (views for the clean copy, one ``torch.where`` per occluded piece), so the only work
    besides the forward passes is writing the occluded pixels once.
    """
    if isinstance(score, str) and score not in ("margin", "probability"):
        raise ValueError(f'score must be "margin", "probability" or a callable, got {score!r}')
    if max_examples_per_batch is not None and (
        isinstance(max_examples_per_batch, bool)
        or not isinstance(max_examples_per_batch, int)
        or max_examples_per_batch < 1
    ):
        raise ValueError(
            f"max_examples_per_batch must be a positive int, got {max_examples_per_batch!r}"
        )
    n = xs[0].shape[0]
    rows = (1 + len(mask_sets)) * n
    step = rows if max_examples_per_batch is None else max_examples_per_batch
    extra = format_additional_args(additional_forward_args)
    out_scores = []
    with torch.no_grad():
        for a in range(0, rows, step):
            b = min(a + step, rows)
            # (copy, first example, end example) of each contiguous piece of this pass
            pieces = [(c, max(a, c * n) - c * n, min(b, (c + 1) * n) - c * n)
                      for c in range(a // n, (b - 1) // n + 1)]
            chunk = tuple(
                _assemble(x, base, [(None if c == 0 else mask_sets[c - 1][j], lo, hi)
                                    for c, lo, hi in pieces])
                for j, (x, base) in enumerate(zip(xs, baselines))
            )
            e = torch.cat([torch.arange(lo, hi) for _, lo, hi in pieces])
            args = tuple(
                torch.cat([t[lo:hi] for _, lo, hi in pieces])
                if isinstance(t, Tensor) and t.dim() and t.shape[0] == n else t
                for t in extra
            )
            out = run_forward(forward_func, chunk, args if extra else None)
            scores = _score(out, _take_target(target, e, n), score)
            out_scores.append(scores.detach().double().cpu())
    return torch.cat(out_scores).reshape(-1, n)


def _assemble(x: Tensor, base: Tensor, pieces: List[Tuple[Optional[Tensor], int, int]]) -> Tensor:
    """One forward batch: examples ``lo:hi`` of ``x`` per piece, masked pixels set to ``base``.

    A lone clean piece is a view; otherwise every piece is written once into one buffer.
    """
    if len(pieces) == 1 and pieces[0][0] is None:
        return x[pieces[0][1]:pieces[0][2]]
    size = sum(hi - lo for _, lo, hi in pieces)
    out = torch.empty((size, *x.shape[1:]), dtype=torch.promote_types(x.dtype, base.dtype),
                      device=x.device)
    at = 0
    for mask, lo, hi in pieces:
        dest = out[at:at + hi - lo]
        if mask is None:
            dest.copy_(x[lo:hi])
        else:
            m = mask[lo:hi].reshape(hi - lo, *([1] * (x.dim() - 3)), *x.shape[-2:])
            torch.where(m, base[lo:hi] if _per_example(base, x) else base, x[lo:hi], out=dest)
        at += hi - lo
    return out


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
