"""Gradient flow alignment: feature alignment averaged along the path to the decision boundary.

docs/definitions.md, section 2.5. From each input the flow follows the unit-speed curve
``gamma'(s) = -sigma grad m / |grad m|`` of the decision margin ``m`` (``sigma = sign m(x)``,
so it moves toward the boundary) and averages the squared cosine between ``grad m`` and every
feature gradient over arc length (trapezoid rule). The flow ends where ``m`` changes sign (the
crossing is located by linear interpolation of ``m`` inside the last step), at ``max_length``,
after ``max_steps`` steps, or where ``|grad m| < eps``. The integration itself lives in
:mod:`captum_gradflow.flow_state`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Literal, Optional, Sequence, Tuple, Union, overload

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_gradflow import _checks, _guard
from captum_gradflow._common import (
    TargetType,
    TensorOrTuple,
    check_finite,
    count_nan,
    format_output,
)
from captum_gradflow.alignment import MaskArg, call_inputs, noise_path
from captum_gradflow.features import Feature, as_feature_list
from captum_gradflow.flow_state import FlowIntegrator
from captum_gradflow.gradients import GradientPath
from captum_gradflow.noise_comparison import NoiseComparison

__all__ = ["GradientFlowAlignment", "FlowResult"]

_INTEGRATORS = ("euler", "heun")


@dataclass
class FlowResult:
    """Everything :meth:`GradientFlowAlignment.attribute` computes with ``return_details=True``.

    Attributes:
        alignment: ``(N, m)`` arc-length average of the squared cosine between ``grad m`` and
            each feature gradient along the flow; NaN where undefined.
        length: ``(N,)`` arc length ``L`` of the flow (0 where it could not start).
        reached_boundary: ``(N,)`` bool, True where the margin changed sign (or was 0 at ``x``).
        n_steps: ``(N,)`` steps taken (the last one possibly partial, cut at the crossing).
        n_evaluations: ``(N,)`` forward-and-backward passes each example cost.
        end_point: The end of the flow, in the form of the inputs; on the boundary where
            ``reached_boundary`` (a counterfactual input with margin ~0).
        start_margin: ``(N,)`` decision margin ``m(x)`` at the inputs.
        path: With ``return_path=True``, one entry per example: the points of its flow, a tensor
            ``(n_steps + 1, *S)`` (or a tuple of such for tuple inputs), starting at ``x`` and
            ending at ``end_point``. Otherwise None.
        n_nan: Number of NaN entries in ``alignment``.
        n_skipped: ``(N, m)`` points of each path where the squared cosine was undefined
            (a zero or non-finite feature or margin gradient); the average leaves out the
            segments touching them (docs/definitions.md, section 2.1) and is NaN when nothing is left.
        feature_names: Name of the feature of each column of ``alignment``.
    """

    alignment: Tensor
    length: Tensor
    reached_boundary: Tensor
    n_steps: Tensor
    n_evaluations: Tensor
    end_point: TensorOrTuple = field(repr=False)
    start_margin: Tensor
    path: Optional[List[TensorOrTuple]] = field(default=None, repr=False)
    n_nan: int = 0
    n_skipped: Optional[Tensor] = None
    feature_names: List[str] = field(default_factory=list)


class GradientFlowAlignment(GradientAttribution):
    r"""Alignment of interpretable features with the model along its gradient flow.

    For each example the flow starts at the input and follows the unit-speed negative (or
    positive) gradient of the decision margin ``m`` toward the decision boundary (docs/definitions.md, section 2.5):

    .. math::
        \gamma'(s) = -\sigma \nabla m(\gamma(s)) / \|\nabla m(\gamma(s))\|,\quad
        F_g(x) = \frac{1}{L}\int_0^L S^m_g(\gamma(s))\, ds

    where ``S^m_g`` is the squared cosine between ``grad g`` and ``grad m`` (for a two-logit
    model and target t, ``m = F_t - F_other``, so this is *not* the alignment with
    ``grad F_t``). The margin is ``F - threshold`` for one-output models and
    ``F_target - max_{c != target} F_c`` otherwise. Tuple inputs move jointly (the state is
    the tuple); the feature reads its ``input_index`` and has zero gradient on the others.

    Examples that stop (boundary crossed, ``max_length``, ``max_steps``, vanishing gradient)
    are frozen: the model is only evaluated on the examples still moving.

    Args:
        forward_func: The model or any function returning ``(N, K)`` or ``(N,)`` outputs.
        features: The interpretable features (:class:`~captum_gradflow.Feature`) to align.

    Examples::

        >>> import torch
        >>> from captum_gradflow import Brightness, Extent, GradientFlowAlignment, SmallCNN
        >>> model = SmallCNN(num_classes=2).eval()
        >>> flow = GradientFlowAlignment(model, [Brightness(), Extent()])
        >>> x = torch.rand(4, 1, 32, 32)
        >>> flow.attribute(x, target=1).shape
        torch.Size([4, 2])
        >>> res = flow.attribute(x, target=1, integrator="heun", return_details=True)
        >>> res.end_point.shape, res.reached_boundary.dtype
        (torch.Size([4, 1, 32, 32]), torch.bool)
    """

    def __init__(self, forward_func: Callable[..., Tensor], features: Sequence[Feature]) -> None:
        super().__init__(forward_func)
        self.features = as_feature_list(features)
        self._noise_cache: dict = {}
        self._matrix_cache: dict = {}

    @overload
    def attribute(self, inputs: TensorOrTuple, target: TargetType = ..., additional_forward_args: Any = ...,
                  mask: MaskArg = ..., step_size: Optional[float] = ..., max_steps: int = ...,
                  max_length: Optional[float] = ..., integrator: str = ..., threshold: float = ...,
                  eps: float = ..., return_details: Literal[False] = ...,
                  return_path: Literal[False] = ...) -> Tensor: ...

    @overload
    def attribute(self, inputs: TensorOrTuple, target: TargetType = ..., additional_forward_args: Any = ...,
                  mask: MaskArg = ..., step_size: Optional[float] = ..., max_steps: int = ...,
                  max_length: Optional[float] = ..., integrator: str = ..., threshold: float = ...,
                  eps: float = ..., *, return_details: Literal[True],
                  return_path: bool = ...) -> "FlowResult": ...

    @overload
    def attribute(self, inputs: TensorOrTuple, target: TargetType = ..., additional_forward_args: Any = ...,
                  mask: MaskArg = ..., step_size: Optional[float] = ..., max_steps: int = ...,
                  max_length: Optional[float] = ..., integrator: str = ..., threshold: float = ...,
                  eps: float = ..., return_details: bool = ..., *,
                  return_path: Literal[True]) -> "FlowResult": ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        mask: MaskArg = None,
        step_size: Optional[float] = None,
        max_steps: int = 32,
        max_length: Optional[float] = None,
        integrator: str = "euler",
        threshold: float = 0.0,
        eps: float = 1e-8,
        return_details: bool = False,
        return_path: bool = False,
    ) -> Union[Tensor, "FlowResult"]:
        r"""Average feature alignment along the gradient flow of the decision margin.

        Train mode: with BatchNorm or Dropout in train mode the result depends on the batch; the
        call warns once, naming those modules, and restores their buffers and every flag
        afterwards (docs/definitions.md, section 5). Call ``model.eval()`` first for per-example
        results.

        Args:
            inputs: A tensor ``(N, *S)`` or a tuple of tensors sharing the batch dimension;
                all floating point (the flow moves every input).
            target: Captum target: an int, a tensor or list with one class per example, or
                None for one-output models. Required for models with several outputs.
            additional_forward_args: Extra arguments of ``forward_func``, passed after the
                inputs; tensors with one row per example follow the active subset.
            mask: Mask passed to every feature (overrides the features' own masks); under
                Captum wrappers that repeat the inputs, pass a per-example mask as the last
                entry of ``additional_forward_args`` with ``mask="from_args"``.
            step_size: Arc length of one step. Default ``None``: chosen per example as
                ``2 |m(x)| / (|grad m(x)| max_steps)``, so the flow reaches the boundary of
                the margin's linearisation at ``x`` in ``max_steps / 2`` steps and keeps the
                other half of the budget for curvature; scale-free in the input units.
            max_steps: Most steps per example (each step costs one model evaluation with
                ``euler``, two with ``heun``, plus one at the start).
            max_length: Optional cap on the arc length; the last step is shortened to end
                exactly there.
            integrator: ``"euler"`` (first order) or ``"heun"`` (second order, RK2).
            threshold: Decision threshold of one-output models (``m = F - threshold``).
            eps: The flow stops where ``|grad m| < eps``: at such a point the direction is
                undefined, so the flow ends at the last point before it.
            return_details: Return a :class:`FlowResult` instead of the alignment tensor.
            return_path: Record the path of every example (implies ``return_details``).

        Returns:
            ``(N, m)`` alignments, one column per feature, in ``[0, 1]``. Points of the
            path where a squared cosine is undefined (zero or non-finite feature gradient)
            are left out of that feature's average; the value is NaN where nothing is left,
            in particular where the margin gradient vanishes at the start (``L = 0``). A
            ``RuntimeWarning`` gives the counts of both. With ``return_details`` (or
            ``return_path``), a :class:`FlowResult`.

        Raises:
            TypeError: Inputs not tensors, or not floating point.
            ValueError: NaN/Inf inputs, unknown integrator, non-positive ``step_size``,
                ``max_steps``, ``max_length``, negative ``eps``, or a bad target form.
            IndexError: Target out of range, or a feature reading a missing input.
        """
        xs, was_tuple, mask, additional_forward_args = call_inputs(inputs, mask, additional_forward_args)
        self._check_arguments(xs, step_size, max_steps, max_length, integrator, threshold, eps)
        with _guard.preserved(self.forward_func, xs, "GradientFlowAlignment.attribute"):
            path = GradientPath(self.features, xs, [mask] * len(self.features))
            res = self._flow(path, xs, was_tuple, target, additional_forward_args, threshold,
                             step_size, int(max_steps), max_length, integrator, eps, return_path)
        _warn_flow(res, stacklevel=3)
        return res if (return_details or return_path) else res.alignment

    @overload
    def compare_to_noise(self, inputs: TensorOrTuple, target: TargetType = ..., additional_forward_args: Any = ...,
                         mask: MaskArg = ..., n_noise: int = ..., seed: int = ...,
                         noise_mask: Union[str, Tensor, None] = ..., smooth_sigma: Union[str, float, None] = ...,
                         noise_input_index: int = ..., center_noise: Optional[bool] = ...,
                         step_size: Optional[float] = ..., max_steps: int = ..., max_length: Optional[float] = ...,
                         integrator: str = ..., threshold: float = ..., eps: float = ...,
                         return_details: Literal[False] = ...) -> NoiseComparison: ...

    @overload
    def compare_to_noise(self, inputs: TensorOrTuple, target: TargetType = ..., additional_forward_args: Any = ...,
                         mask: MaskArg = ..., n_noise: int = ..., seed: int = ...,
                         noise_mask: Union[str, Tensor, None] = ..., smooth_sigma: Union[str, float, None] = ...,
                         noise_input_index: int = ..., center_noise: Optional[bool] = ...,
                         step_size: Optional[float] = ..., max_steps: int = ..., max_length: Optional[float] = ...,
                         integrator: str = ..., threshold: float = ..., eps: float = ..., *,
                         return_details: Literal[True]) -> Tuple[NoiseComparison, "FlowResult"]: ...

    def compare_to_noise(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        mask: MaskArg = None,
        n_noise: int = 32,
        seed: int = 0,
        noise_mask: Union[str, Tensor, None] = "auto",
        smooth_sigma: Union[str, float, None] = "auto",
        noise_input_index: int = 0,
        center_noise: Optional[bool] = None,
        step_size: Optional[float] = None,
        max_steps: int = 32,
        max_length: Optional[float] = None,
        integrator: str = "euler",
        threshold: float = 0.0,
        eps: float = 1e-8,
        return_details: bool = False,
    ) -> Union[NoiseComparison, Tuple[NoiseComparison, "FlowResult"]]:
        r"""Flow alignment ``F`` of every feature next to that of ``n_noise`` noise features.

        The comparison of docs/definitions.md, section 2.3 made on the flow measure, as the
        source paper does. The noise features are extra features of the same flow: one path
        per example serves features and noise. The noise comes from
        :func:`captum_gradflow.noise.make_noise`, as in
        :meth:`FeatureAlignment.compare_to_noise`, with the same noise arguments.

        Args:
            inputs, target, additional_forward_args, mask, step_size, max_steps, max_length,
                integrator, threshold, eps: As in :meth:`attribute`.
            n_noise, seed, noise_mask, smooth_sigma, noise_input_index, center_noise: As in
                :meth:`FeatureAlignment.compare_to_noise`.
            return_details: Also return the flow's :class:`FlowResult` (see Returns).

        Returns:
            :class:`~captum_gradflow.NoiseComparison` whose ``S`` holds the features' ``F``
            ``(N, m)`` and ``S_noise`` the noise features' ``F`` ``(N, M)``.
            With ``return_details``, also the :class:`FlowResult` of the one flow that served
            features and noise (boundary reached, lengths, end points; its ``alignment`` has the
            ``m`` feature columns followed by the ``M`` noise columns).

        Examples::

            >>> import torch
            >>> from captum_gradflow import Brightness, GradientFlowAlignment, SmallCNN
            >>> flow = GradientFlowAlignment(SmallCNN().eval(), [Brightness()])
            >>> r = flow.compare_to_noise(torch.rand(4, 1, 32, 32), target=1, n_noise=4, max_steps=4)
            >>> r.S.shape, r.S_noise.shape
            (torch.Size([4, 1]), torch.Size([4, 4]))
        """
        xs, was_tuple, mask, additional_forward_args = call_inputs(inputs, mask, additional_forward_args)
        self._check_arguments(xs, step_size, max_steps, max_length, integrator, threshold, eps)
        with _guard.preserved(self.forward_func, xs, "GradientFlowAlignment.compare_to_noise"):
            path, construction = noise_path(self, xs, mask, n_noise, seed, noise_mask,
                                            smooth_sigma, center_noise, noise_input_index)
            res = self._flow(path, xs, was_tuple, target, additional_forward_args, threshold,
                             step_size, int(max_steps), max_length, integrator, eps, False)
        _warn_flow(res, stacklevel=2)
        f, m = res.alignment.detach().cpu(), len(self.features)
        report = NoiseComparison(f[:, :m], f[:, m:], [ft.name for ft in self.features],
                                 construction=construction)
        return (report, res) if return_details else report

    def _flow(self, path: GradientPath, xs: Tuple[Tensor, ...], was_tuple: bool, target: TargetType,
              additional_forward_args: Any, threshold: float, step_size: Optional[float], max_steps: int,
              max_length: Optional[float], integrator: str, eps: float, keep_path: bool) -> "FlowResult":
        flow = FlowIntegrator(self.forward_func, path, xs, target, additional_forward_args, threshold)
        st, first, on_boundary, paths = flow.run(step_size, max_steps, max_length, integrator, eps, keep_path)
        alignment = torch.where(st.covered > 0, st.integral / st.covered, float("nan"))
        # At a point already on the boundary L = 0, and the average's limit is S there.
        alignment = torch.where(on_boundary[:, None], st.s, alignment)
        dtype = torch.promote_types(xs[0].dtype, torch.float32)
        alignment = alignment.to(dtype)
        return FlowResult(
            alignment=alignment,
            length=st.length.to(dtype),
            reached_boundary=st.reached,
            n_steps=st.n_steps,
            n_evaluations=st.n_evals,
            end_point=format_output(was_tuple, flow.unflat(st.x)),
            start_margin=first.margin,
            path=None if paths is None else [
                format_output(was_tuple, flow.unflat(torch.stack(p))) for p in paths
            ],
            n_nan=count_nan(alignment),
            n_skipped=st.skipped,
            feature_names=[f.name for f in path.features],
        )

    def _check_arguments(self, xs, step_size, max_steps, max_length, integrator, threshold, eps) -> None:
        for i, t in enumerate(xs):
            if not t.is_floating_point():
                raise TypeError(
                    f"inputs[{i}] has dtype {t.dtype}: the flow moves every input, so all must be "
                    "floating point (pass other data through additional_forward_args)"
                )
        if integrator not in _INTEGRATORS:
            raise ValueError(f"unknown integrator {integrator!r}; use one of {_INTEGRATORS}")
        if step_size is not None and not (float(step_size) > 0 and float(step_size) < float("inf")):
            raise ValueError(f"step_size must be a positive finite number or None, got {step_size}")
        if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
        if max_length is not None and not float(max_length) > 0:
            raise ValueError(f"max_length must be positive or None, got {max_length}")
        if not float(eps) >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        if not torch.isfinite(torch.tensor(float(threshold))):
            raise ValueError(f"threshold must be finite, got {threshold}")
        _checks.check_batch(xs, self.forward_func, "GradientFlowAlignment inputs")
        check_finite(xs)




def _warn_flow(res: FlowResult, stacklevel: int) -> None:
    n_nan, n_skipped = res.n_nan, int(res.n_skipped.sum())
    if not (n_nan or n_skipped):
        return
    n_flat = int(((res.length == 0) & ~res.reached_boundary).sum())
    warnings.warn(
        f"GradientFlowAlignment: {n_nan} of {res.alignment.numel()} alignment values are "
        f"NaN (undefined), {n_flat} example(s) with flow length L = 0 (|grad m| < eps "
        f"or a non-finite margin at the start); {n_skipped} (point, feature) pairs on "
        "the paths had an undefined squared cosine and were left out of the average",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
