"""The alignment regularizer: train models whose input gradients agree with features.

docs/definitions.md, section 2.6.

The penalty is ``sum_i lambda_i * mean_x (1 - S_{g_i}(x))`` with ``S`` the squared cosine of
section 2.1 between the input gradient of the decision function ``f = F(x)[target]`` and the
gradient of the feature ``g_i``. Its gradient with respect to the model parameters goes
through the input gradient, so the input gradient is built with ``create_graph=True``
(double backpropagation). Feature gradients are constants (closed form where the feature has
one, autograd otherwise) and are detached.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_gradflow import _checks, _guard
from captum_gradflow._common import (
    TargetType,
    TensorOrTuple,
    differentiable_input_gradient,
    format_inputs,
    prepare_inputs,
    run_forward,
    take_args,
    take_rows,
)
from captum_gradflow.features import Feature, as_feature_list
from captum_gradflow.gradients import FeatureGradients, GradientPath, differentiable_squared_cosines

__all__ = ["AlignmentRegularizer"]

Weights = Union[float, Sequence[float], Mapping[str, float]]
_UNDEFINED = ("warn", "raise")


class AlignmentRegularizer:
    r"""Penalty that rewards a model for input gradients aligned with interpretable features.

    For a batch of ``N`` examples (docs/definitions.md, section 2.6)::

        L = CE + sum_i lambda_i * (1/N) sum_x (1 - S_{g_i}(x))

    ``S_g(x) = <grad f, grad g>^2 / (|grad f|^2 |grad g|^2)`` with ``f = F(x)[target]``
    (every Captum target form; usually the true label). The penalty is the **mean over the
    batch**, like ``F.cross_entropy``'s default, so ``lambda`` does not depend on the batch
    size; each term lies in [0, 1]. It has the gradient of the paper's reward ``-lambda S``.

    **Exact mode** (default) shares the training step's forward pass: run ``out = model(x)``
    once on an ``x`` that requires grad and add ``reg(out, x, y)`` to the loss; one backward
    then carries both terms. The input gradient is built by double backpropagation
    (``torch.autograd.grad(..., create_graph=True)``). Call ``loss.backward(inputs=params)``:
    nothing needs ``x.grad``, and building it is the most expensive backward of a grayscale
    CNN's first convolution. The input gradient of one-input-channel CPU convolutions is
    computed without oneDNN, whose kernel for that case is several times slower. Measured on
    2 CPU cores (SmallCNN, batch 16, 1x128x128, 3 features) a step costs 2.8-3.1 plain
    cross-entropy steps, against 3.3-3.6 for a straightforward double-backprop step
    (``benchmarks/bench_regularizer.py``).

    **Subset mode** (cheaper, 1.8-2.0 plain steps at ``fraction=0.25``):
    ``AlignmentRegularizer(..., fraction=0.25, forward_func=model)`` or
    :meth:`subset_penalty` re-runs the model on a random ``fraction`` of the batch and
    penalises only those examples. The subset mean is an unbiased estimate of the batch
    mean, so the expected gradient is the exact one, with more variance; in a short training
    run it reached a lower alignment than the exact mode (joint alignment 0.83-0.87 against
    0.92-0.93 on the lesions below). The re-run is needed because, with a shared forward,
    backpropagating a subset of the outputs still runs through the whole batch. In this
    mode ``x`` need not require grad (:attr:`requires_input_grad` is False) and ``out`` is
    not used.

    **Schedule.** On an untrained model the penalty can pull harder than the cross-entropy
    and stall learning for good (every example predicted alike): ``delay`` the penalty for a
    couple of epochs, then ``warmup`` its weights. On 32-pixel synthetic lesions labelled by
    brightness + extent (300 training images, batch 32, 20 epochs, Adam 1e-3 with cosine
    decay, class-balanced cross-entropy) ``weights={"brightness": 10, "extent": 1}`` with a
    2-epoch delay and a 3-epoch warm-up raised the joint alignment from 0.54-0.66 to
    0.90-0.94 without losing balanced accuracy.

    Caveats:

    * **BatchNorm in train mode** mixes the examples of a batch: ``f`` of one example then
      depends on the others, and the input gradient of ``sum_x f(x)`` is no longer each
      example's own gradient. Use eval-mode BatchNorm, a per-example normalisation
      (GroupNorm, LayerNorm) or none. In subset mode a train-mode BatchNorm also updates its
      running statistics a second time per step.
    * **ReLU networks** have piecewise-constant input gradients whose derivative with
      respect to the input is zero almost everywhere, which makes the double-backprop
      signal poor; the paper used ELU (see :class:`captum_gradflow.models.SmallCNN`).

    Where ``S`` is undefined for an example (the model's or the feature's input gradient is
    zero or not finite) that example is left out of the feature's mean with a
    ``RuntimeWarning`` naming the feature and the count (``undefined="raise"`` raises
    instead). A feature whose gradient vanishes for the whole batch, a model whose output
    does not depend on the input, and NaN or Inf in the output, the input gradient or the
    penalty raise ``ValueError``. The last call's alignments are kept in
    :attr:`last_alignment` (NaN where undefined) and the counts in :attr:`last_undefined`.

    Args:
        features: One :class:`~captum_gradflow.Feature` or a sequence of them.
        weights: ``lambda``: one float for all features, one per feature, or a dict from
            feature name to weight (features not named get 0). Non-negative.
        undefined: ``"warn"`` or ``"raise"``, see above.
        fraction: Fraction of each batch penalised in subset mode; ``1.0`` (default) is the
            exact, shared-forward mode.
        forward_func: The model, needed when ``fraction < 1``.
        seed: Seed of the subset draws.
        delay: Number of first calls (training steps) that return a zero penalty without
            computing it (see "Schedule").
        warmup: Number of calls after the delay over which the weights ramp linearly up to
            their full value; 0 (default) applies them at once.

    Examples::

        >>> import torch, torch.nn.functional as F
        >>> from captum_gradflow import (AlignmentRegularizer, Brightness, Extent, SmallCNN,
        ...                              synthetic_lesions)
        >>> data = synthetic_lesions(64, size=32, rule="brightness+extent")
        >>> model = SmallCNN()  # ELU + average pooling: smooth input gradients
        >>> reg = AlignmentRegularizer([Brightness(), Extent()],
        ...                            weights={"brightness": 10, "extent": 1},
        ...                            delay=4, warmup=4)  # steps: 1 epoch each here
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> for epoch in range(3):
        ...     for i in range(0, 64, 16):
        ...         x = data.images[i:i + 16].requires_grad_()  # the penalty needs grad f
        ...         y, mask = data.labels[i:i + 16], data.masks[i:i + 16]
        ...         out = model(x)  # one forward, shared by both terms
        ...         loss = F.cross_entropy(out, y) + reg(out, x, y, mask=mask)
        ...         opt.zero_grad()
        ...         loss.backward(inputs=list(model.parameters()))  # skips x.grad
        ...         opt.step()
        >>> sorted(reg.last_alignment)
        ['brightness', 'extent']
        >>> cheap = AlignmentRegularizer([Brightness(), Extent()], 0.5, fraction=0.25,
        ...                              forward_func=model)
        >>> x = data.images[:16]  # no requires_grad needed in subset mode
        >>> loss = F.cross_entropy(model(x), data.labels[:16]) + cheap(None, x, data.labels[:16],
        ...                                                            mask=data.masks[:16])
    """

    def __init__(
        self,
        features: Union[Feature, Sequence[Feature]],
        weights: Weights = 1.0,
        undefined: str = "warn",
        fraction: float = 1.0,
        forward_func: Optional[Callable[..., Tensor]] = None,
        seed: int = 0,
        delay: int = 0,
        warmup: int = 0,
    ) -> None:
        self.features: List[Feature] = as_feature_list(features)
        self.weights = weights
        if undefined not in _UNDEFINED:
            raise ValueError(f"undefined must be one of {_UNDEFINED}, got {undefined!r}")
        _check_fraction(fraction)
        if fraction < 1.0 and forward_func is None:
            raise ValueError(
                "subset mode (fraction < 1) re-runs the model: pass forward_func=model"
            )
        if forward_func is not None and not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.undefined = undefined
        self.fraction = float(fraction)
        self.forward_func = forward_func
        for name, value in (("delay", delay), ("warmup", warmup)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"{name} must be a non-negative int (number of calls), got {value!r}"
                )
        self.delay, self.warmup = delay, warmup
        self.calls = 0
        # Linear features' stacked directions, reused across training steps (keyed by the
        # features, which this object keeps alive).
        self._matrix_cache: dict = {}
        self._generator = torch.Generator().manual_seed(int(seed))
        self.last_alignment: Dict[str, Tensor] = {}
        self.last_undefined: Dict[str, int] = {}

    @property
    def weights(self) -> List[float]:
        """Full weight ``lambda_i`` of each feature (settable, e.g. for a schedule)."""
        return list(self._weights)

    @weights.setter
    def weights(self, weights: Weights) -> None:
        self._weights = _check_weights(weights, self.features)

    @property
    def scale(self) -> float:
        """Factor applied to the weights at the next call: 0 during the delay, then the ramp."""
        step = self.calls - self.delay
        if step < 0:
            return 0.0
        return 1.0 if self.warmup == 0 else min(1.0, (step + 1) / self.warmup)

    @property
    def requires_input_grad(self) -> bool:
        """Whether the caller's ``x`` must require grad (exact, shared-forward mode)."""
        return self.fraction >= 1.0

    def __call__(
        self,
        out: Optional[Tensor],
        inputs: TensorOrTuple,
        target: TargetType = None,
        mask: Optional[Tensor] = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """Penalty for the batch ``inputs`` whose model output is ``out``.

        Args:
            out: Output of the training step's forward pass on ``inputs`` (ignored in subset
                mode, where it may be ``None``).
            inputs: The batch (tensor or tuple); in exact mode it must require grad.
            target: Any Captum target form, usually the labels.
            mask: Soft mask for every feature, overriding their own masks.
            additional_forward_args: Extra model arguments, used in subset mode only.

        Returns:
            Scalar penalty (mean over the batch, weighted sum over features).
        """
        if self.scale == 0.0:
            return self._skip(inputs)
        if self.fraction < 1.0:
            return self.subset_penalty(
                self.forward_func, inputs, target, self.fraction, mask, additional_forward_args
            )
        xs, _ = format_inputs(inputs)
        if not isinstance(out, Tensor):
            raise TypeError(f"out must be the model's output Tensor, got {type(out).__name__}")
        _checks.check_batch(xs, None, "AlignmentRegularizer inputs")
        with _guard.preserved(None, xs, "AlignmentRegularizer"):
            if any(t.requires_grad for t in xs):  # else the input gradient's error says why
                _check_feature_inputs(self.features, xs)
            grads = GradientPath(self.features, xs, [mask] * len(self.features), cache=self._matrix_cache)(xs)
            return self._penalty(out, xs, target, grads)

    def subset_penalty(
        self,
        forward_func: Callable[..., Tensor],
        inputs: TensorOrTuple,
        target: TargetType = None,
        fraction: float = 0.25,
        mask: Optional[Tensor] = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """Unbiased estimate of the penalty from a random ``fraction`` of the batch.

        The chosen examples are copied, made to require grad and run through
        ``forward_func`` again, so the caller's tensors and flags are untouched and the
        training step's own forward needs no input gradient. Per-example targets, masks and
        additional arguments (tensors with one row per example) follow the subset.

        Args:
            forward_func: The model.
            inputs, target, mask, additional_forward_args: As in :meth:`__call__`.
            fraction: In (0, 1]; at least one example is used.

        Returns:
            Scalar penalty: mean over the subset, weighted sum over features.
        """
        _check_fraction(fraction)
        if self.scale == 0.0:
            return self._skip(inputs)
        xs, _ = format_inputs(inputs)
        _checks.check_batch(xs, forward_func, "AlignmentRegularizer inputs")
        n = xs[0].shape[0]
        k = max(1, math.ceil(fraction * n))
        idx = torch.randperm(n, generator=self._generator)[:k].to(xs[0].device)
        sub = prepare_inputs(tuple(t.detach().index_select(0, idx) for t in xs))
        with _guard.preserved(forward_func, xs, "AlignmentRegularizer.subset_penalty"), torch.enable_grad():
            out = run_forward(forward_func, sub, take_args(additional_forward_args, idx, n))
            _check_feature_inputs(self.features, sub)
            # Per-example masks, the features' own ones too, follow the subset.
            grads = GradientPath(self.features, xs, [mask] * len(self.features),
                                 cache=self._matrix_cache)(sub, idx)
            return self._penalty(out, sub, take_rows(target, idx, n), grads)

    # ------------------------------------------------------------------ internals
    def _penalty(self, out: Tensor, xs: Tuple[Tensor, ...], target: TargetType,
                 grads: FeatureGradients) -> Tensor:
        """Model input gradient, squared cosines, weighted mean: the penalty of one batch."""
        grad_f, norm_f = differentiable_input_gradient(out, xs, target)
        s, undefined, feature_bad = differentiable_squared_cosines(grad_f, norm_f, grads)
        total = self._weighted_mean(s, undefined, feature_bad, ~(norm_f.detach() > 0))
        self.calls += 1
        return total

    def _weighted_mean(self, s: Tensor, undefined: Tensor, feature_bad: Tensor, zero_f: Tensor) -> Tensor:
        """``sum_i scale lambda_i mean_x (1 - S_i)`` over defined examples, with bookkeeping."""
        n = s.shape[0]
        for j, feature in enumerate(self.features):
            if bool(feature_bad[:, j].all()):
                raise ValueError(
                    f"feature '{feature.name}' has a zero or non-finite input gradient for every "
                    "example of the batch: its alignment, and so its penalty, is undefined"
                )
        s_detached = s.detach()
        shown = torch.where(undefined, torch.full_like(s_detached, float("nan")), s_detached.clamp(0.0, 1.0))
        counts = undefined.sum(0).tolist()
        self.last_alignment = {f.name: shown[:, j] for j, f in enumerate(self.features)}
        self.last_undefined = {f.name: int(c) for f, c in zip(self.features, counts)}
        for j, (feature, count) in enumerate(zip(self.features, counts)):
            if count:
                from_model = int((zero_f & ~feature_bad[:, j]).sum())
                self._report_undefined(feature.name, int(count), n, from_model)
        keep = (~undefined).to(s.dtype)
        lam = torch.tensor(self._weights, dtype=s.dtype, device=s.device) * self.scale
        per_feature = ((1.0 - s) * keep).sum(0) / keep.sum(0)
        total = (lam * per_feature)[lam > 0].sum() if bool((lam > 0).any()) else s.new_zeros(())
        if not torch.isfinite(total.detach()):
            raise ValueError(f"the alignment penalty is {total.item()} (not finite)")
        return total

    def _skip(self, inputs: TensorOrTuple) -> Tensor:
        # During the delay nothing is computed: the step costs what a plain step costs.
        xs, _ = format_inputs(inputs)
        self.calls += 1
        self.last_alignment, self.last_undefined = {}, {}
        return xs[0].new_zeros(())

    def _report_undefined(self, name: str, count: int, n: int, from_model: int) -> None:
        why = (
            f"the model's input gradient is zero for {from_model} of them"
            if from_model == count
            else "the feature's gradient or the model's is zero or not finite there"
        )
        msg = (
            f"alignment with feature '{name}' is undefined for {count} of {n} examples ({why}); "
            "they are left out of the penalty's mean"
        )
        if self.undefined == "raise":
            raise ValueError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def __repr__(self) -> str:
        terms = ", ".join(f"{f.name}: {w:g}" for f, w in zip(self.features, self._weights))
        mode = "exact" if self.fraction >= 1.0 else f"subset fraction={self.fraction:g}"
        return f"AlignmentRegularizer({{{terms}}}, {mode})"


def _check_feature_inputs(features: List[Feature], xs: Tuple[Tensor, ...]) -> None:
    for f in features:
        if f.input_index >= len(xs) or not xs[f.input_index].requires_grad:
            raise ValueError(
                f"feature '{f.name}' reads input {f.input_index}, which "
                + ("does not exist" if f.input_index >= len(xs) else "does not require grad")
            )


def _check_weights(weights: Weights, features: List[Feature]) -> List[float]:
    names = [f.name for f in features]
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"weights name unknown features {unknown}; features are {names}")
        values = [weights.get(name, 0.0) for name in names]
    elif isinstance(weights, (int, float)):
        values = [weights] * len(features)
    elif isinstance(weights, (list, tuple)):
        if len(weights) != len(features):
            raise ValueError(f"got {len(weights)} weights for {len(features)} features {names}")
        values = list(weights)
    else:
        raise TypeError(
            f"weights must be a float, a sequence or a dict, got {type(weights).__name__}"
        )
    out = []
    for name, w in zip(names, values):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of feature '{name}' must be a finite number >= 0, got {w!r}")
        out.append(float(w))
    return out


def _check_fraction(fraction: float) -> None:
    number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not number or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
