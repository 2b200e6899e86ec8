"""Pointwise, joint and subspace alignment of a model's gradient with feature gradients.

docs/definitions.md, sections 2.1-2.4. The model gradient is computed once per call as a
decision basis (:mod:`captum_gradflow.decision`) and the features' gradients come from
:class:`captum_gradflow.gradients.GradientPath`; every alignment is
:func:`captum_gradflow.gradients.measure`.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_gradflow import _checks, _guard
from captum_gradflow._common import (
    TargetType,
    TensorOrTuple,
    check_finite,
    count_nan,
    format_inputs,
    split_mask,
)
from captum_gradflow.decision import decision_basis, joint_alignment
from captum_gradflow.features import Feature, as_feature_list
from captum_gradflow.gradients import GradientPath, measure
from captum_gradflow._noise_call import check_noise_arguments, path_with_noise
from captum_gradflow.noise_comparison import NoiseComparison

__all__ = ["FeatureAlignment", "call_inputs", "noise_path"]

_DECISIONS = ("target", "subspace")
MaskArg = Union[Tensor, str, None]


class FeatureAlignment(GradientAttribution):
    r"""Agreement of a model's input gradient with the gradients of interpretable features.

    For the decision function ``f = F(x)[target]`` and a feature ``g`` (docs/definitions.md, section 2.1)::

        S_g(x) = <grad f, grad g>^2 / (|grad f|^2 |grad g|^2)        in [0, 1]

    Gradients are flattened over *all* input tensors concatenated; a feature reads
    ``inputs[feature.input_index]`` and its gradient is zero on the other inputs. The squared
    cosine ignores magnitude and sign. Where a gradient is zero or not finite the value is
    undefined: it is ``NaN`` (never a silent 0) and a ``RuntimeWarning`` says how many entries,
    for which features.

    ``decision="subspace"`` (docs/definitions.md, section 2.4; ``target=None``, ``K > 1`` outputs) instead measures
    ``S = |P_row(J) grad g|^2 / |grad g|^2`` with ``J`` the Jacobian of the centred logits
    ``F_c - mean_c F``. Its row space equals that of the ``K - 1`` logit differences
    ``F_c - F_0``, so ``K - 1`` backward passes suffice (one for a binary model, where the
    result is the squared cosine with ``grad(F_1 - F_0)``). An orthonormal basis is taken per
    example by SVD, dropping singular values below ``rank_tol`` times the largest.

    :meth:`joint` gives the fraction of the gradient that all features explain together
    (section 2.2) and :meth:`compare_to_noise` the noise baseline and its significance
    (section 2.3), reusing a single model gradient for features and noise.

    Args:
        forward_func: The model or any function returning ``(N, K)``, ``(N,)`` or
            multi-dimensional outputs.
        features: One :class:`~captum_gradflow.Feature` or a sequence of them.
        rank_tol: Relative singular-value cut-off for the subspace and joint bases; ``None``
            uses ``max(rows, cols) * eps`` of the working precision (NumPy's ``matrix_rank``).

    Examples::

        >>> import torch
        >>> from captum_gradflow import Brightness, Extent, FeatureAlignment, SmallCNN
        >>> model = SmallCNN().eval()
        >>> x, mask = torch.rand(4, 1, 32, 32), torch.ones(1, 1, 32, 32)
        >>> fa = FeatureAlignment(model, [Brightness(), Extent()])
        >>> fa.attribute(x, target=1, mask=mask).shape
        torch.Size([4, 2])
        >>> fa.joint(x, target=1, mask=mask).shape
        torch.Size([4])
        >>> report = fa.compare_to_noise(x, target=1, mask=mask, n_noise=8, smooth_sigma=2.0)
        >>> report.mean_ratio.shape
        torch.Size([2])
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        features: Union[Feature, Sequence[Feature]],
        rank_tol: Optional[float] = None,
    ) -> None:
        GradientAttribution.__init__(self, forward_func)
        features = as_feature_list(features)
        if rank_tol is not None and not rank_tol >= 0:
            raise ValueError(f"rank_tol must be non-negative, got {rank_tol}")
        self.features: List[Feature] = list(features)
        self.rank_tol = rank_tol
        # Noise features and their stacked directions are reused across calls.
        self._noise_cache: Dict[Tuple, Any] = {}
        self._matrix_cache: Dict[Tuple, Tuple[Tensor, Tensor]] = {}

    @property
    def feature_names(self) -> List[str]:
        return [f.name for f in self.features]

    # ------------------------------------------------------------------ public API
    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        mask: MaskArg = None,
        decision: str = "target",
    ) -> Tensor:
        r"""Pointwise alignment ``S`` of every example with every feature.

        Args:
            inputs: A tensor ``(N, *S)`` or a tuple of tensors with the same ``N``.
            target: Any Captum target form (int, tuple, tensor, list, or ``None`` for a
                single-output model). Must be ``None`` for ``decision="subspace"``.
            additional_forward_args: Extra arguments passed to ``forward_func`` after inputs.
            mask: Soft mask given to every feature, overriding the features' own masks. Under
                Captum wrappers that repeat the inputs (``NoiseTunnel``,
                ``captum.metrics.sensitivity_max``) a per-example mask must be repeated too:
                pass it as the last entry of ``additional_forward_args`` and
                ``mask="from_args"`` (it is not passed to the model).
            decision: ``"target"`` (align with ``grad F[target]``) or ``"subspace"`` (the
                row space of the centred-logit Jacobian, docs/definitions.md, section 2.4).

        Returns:
            Tensor ``(N, m)`` in [0, 1], one column per feature, NaN where undefined.

        A model in train mode with BatchNorm or Dropout gets one warning (its gradients then
        depend on the batch); its buffers, flags and hooks are restored after the call.

        Examples::

            >>> import torch
            >>> from captum_gradflow import Brightness, FeatureAlignment, SmallCNN
            >>> fa = FeatureAlignment(SmallCNN(num_classes=3).eval(), [Brightness()])
            >>> fa.attribute(torch.rand(2, 1, 32, 32), decision="subspace").shape
            torch.Size([2, 1])
        """
        xs, _, mask, additional_forward_args = call_inputs(inputs, mask, additional_forward_args)
        self._check_call(xs, decision)
        with _guard.preserved(self.forward_func, xs, "FeatureAlignment.attribute"):
            path = GradientPath(self.features, xs, [mask] * len(self.features))
            grads = path(xs)
            dec = decision_basis(self.forward_func, xs, target, additional_forward_args, decision,
                                 self.rank_tol)
            s = measure(dec.basis, dec.defined, grads, dec.blocks)
        _warn_nan(s, self.feature_names, "alignment", stacklevel=3)  # under log_usage
        return s

    def joint(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        mask: MaskArg = None,
    ) -> Tensor:
        r"""Fraction of the model gradient in the span of all feature gradients (section 2.2).

        ``J = |P_G grad f|^2 / |grad f|^2`` with ``P_G`` the orthogonal projector onto
        ``span{grad g_1 ... grad g_m}``, computed per example by an SVD of the ``d x m`` matrix
        of unit-normalised feature gradients (normalising does not change the span but keeps
        a feature with small gradients from being cut as rank-deficient). Singular values
        below ``rank_tol`` times the largest are dropped, so collinear features count once.
        A feature whose gradient is zero adds nothing to the span; the value is NaN where the
        model gradient is zero or not finite, where a feature gradient is not finite, or where
        no feature has a nonzero gradient. For one feature ``J`` equals :meth:`attribute`.

        Args:
            inputs, target, additional_forward_args, mask: As in :meth:`attribute`.

        Returns:
            Tensor ``(N,)`` in [0, 1].

        Examples::

            >>> import torch
            >>> from captum_gradflow import Brightness, Extent, FeatureAlignment, SmallCNN
            >>> fa = FeatureAlignment(SmallCNN().eval(), [Brightness(), Extent()])
            >>> fa.joint(torch.rand(3, 1, 32, 32), target=0).shape
            torch.Size([3])
        """
        xs, _, mask, additional_forward_args = call_inputs(inputs, mask, additional_forward_args)
        self._check_call(xs, "target")
        with _guard.preserved(self.forward_func, xs, "FeatureAlignment.joint"):
            grads = GradientPath(self.features, xs, [mask] * len(self.features))(xs)
            dec = decision_basis(self.forward_func, xs, target, additional_forward_args, "target",
                                 self.rank_tol)
            jv = joint_alignment(dec, grads, self.rank_tol)
        _warn_nan(jv[:, None], ["joint"], "joint alignment", stacklevel=2)
        return jv

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
        decision: str = "target",
        noise_input_index: int = 0,
        center_noise: Optional[bool] = None,
        joint: bool = False,
    ) -> NoiseComparison:
        r"""Alignment of every feature next to that of ``n_noise`` random linear features.

        The model gradient is computed once and reused for the features and the noise. The
        noise features ``g_r(x) = <r, x>`` (seeds ``seed .. seed + n_noise - 1``, over
        ``inputs[noise_input_index]``) come from :func:`captum_gradflow.noise.make_noise`,
        which receives ``noise_mask``, ``smooth_sigma`` and ``center_noise`` as given and
        decides the construction (docs/definitions.md, section 2.3); the report states it.

        A fair baseline lives where the features look and varies on their spatial scale: in
        ``d`` dimensions a random direction scores about ``1/d``, so noise over the whole
        image makes any masked feature look significant.

        Args:
            inputs, target, additional_forward_args, mask, decision: As in :meth:`attribute`;
                ``mask`` goes to the features only.
            n_noise: Number of noise features M (at least 1).
            seed: Seed of the first noise feature.
            noise_mask: Mask restricting the noise directions (``(N or 1, 1, H, W)``), None
                for the whole input, or ``"auto"``.
            smooth_sigma: Gaussian smoothing of the noise directions, in pixels, None, or
                ``"auto"``.
            noise_input_index: The input tensor the noise directions live on.
            center_noise: Whether the noise's mean inside its mask is removed (None: the
                default of ``make_noise``).
            joint: Also compute the joint alignment J (:meth:`joint`) from the same model
                and feature gradients, as ``NoiseComparison.J`` (``decision="target"`` only):
                one backward pass for both, against two for separate calls.

        Returns:
            :class:`~captum_gradflow.NoiseComparison` with per-example ``S``, ``S_noise``,
            ``ratio``, ``p_value`` and dataset-level ``mean_ratio``, ``wilcoxon_p``,
            ``n_skipped``.

        Examples::

            >>> import torch
            >>> from captum_gradflow import Brightness, FeatureAlignment, SmallCNN
            >>> fa = FeatureAlignment(SmallCNN().eval(), [Brightness()])
            >>> r = fa.compare_to_noise(torch.rand(6, 1, 32, 32), target=1, n_noise=4)
            >>> r.S.shape, r.S_noise.shape
            (torch.Size([6, 1]), torch.Size([6, 4]))
        """
        xs, _, mask, additional_forward_args = call_inputs(inputs, mask, additional_forward_args)
        self._check_call(xs, decision)
        if joint and decision != "target":
            raise ValueError("joint=True needs decision='target' (J is defined for grad f)")
        with _guard.preserved(self.forward_func, xs, "FeatureAlignment.compare_to_noise"):
            path, construction = noise_path(self, xs, mask, n_noise, seed, noise_mask,
                                            smooth_sigma, center_noise, noise_input_index)
            grads = path(xs)
            dec = decision_basis(self.forward_func, xs, target, additional_forward_args, decision,
                                 self.rank_tol)
            s_all = measure(dec.basis, dec.defined, grads, dec.blocks)
            # J from the same model gradient and the same feature gradients (columns 0..m-1).
            jv = None if not joint else joint_alignment(
                dec, grads, self.rank_tol, n_features=len(self.features))
        m = len(self.features)
        s, s_noise = s_all[:, :m], s_all[:, m:]
        _warn_nan(s, self.feature_names, "alignment", stacklevel=2)
        _warn_nan(s_noise, ["noise"] * n_noise, "noise alignment", stacklevel=2)
        return NoiseComparison(s, s_noise, self.feature_names, construction=construction, J=jv)

    # ------------------------------------------------------------------ internals
    def _check_call(self, xs: Tuple[Tensor, ...], decision: str) -> None:
        if decision not in _DECISIONS:
            raise ValueError(f"decision must be one of {_DECISIONS}, got {decision!r}")
        _checks.check_batch(xs, self.forward_func, "FeatureAlignment inputs")
        check_finite(xs)
        for f in self.features:
            if not 0 <= f.input_index < len(xs):
                raise IndexError(
                    f"feature '{f.name}' reads input {f.input_index} but only {len(xs)} "
                    "input tensors were given"
                )


def call_inputs(inputs: TensorOrTuple, mask: MaskArg, additional_forward_args: Any
                ) -> Tuple[Tuple[Tensor, ...], bool, Optional[Tensor], Any]:
    """``(inputs as a tuple, was_tuple, mask, additional_forward_args)`` of an alignment call.

    Shared by every entry point of :class:`FeatureAlignment` and
    :class:`~captum_gradflow.GradientFlowAlignment`: a per-example mask passed with
    ``mask="from_args"`` is split from the additional arguments (see
    :func:`captum_gradflow._common.split_mask`).
    """
    xs, was_tuple = format_inputs(inputs)
    mask, additional_forward_args = split_mask(mask, xs[0].shape[0], additional_forward_args)
    return xs, was_tuple, mask, additional_forward_args


def noise_path(holder: Any, xs: Tuple[Tensor, ...], mask: Optional[Tensor], n_noise: int,
               seed: int, noise_mask: Union[str, Tensor, None], smooth_sigma: Union[str, float, None],
               center_noise: Optional[bool], noise_input_index: int) -> Tuple[GradientPath, str]:
    """The checked noise arguments of a ``compare_to_noise`` call, and the gradient path of
    ``holder.features`` followed by the noise features; with the construction's description."""
    check_noise_arguments(n_noise, noise_input_index, len(xs))
    return path_with_noise(holder, holder.features, xs, mask, n_noise, seed, noise_mask,
                           smooth_sigma, center_noise, noise_input_index)


def _warn_nan(values: Tensor, names: Sequence[str], what: str, stacklevel: int = 3) -> None:
    """Warn how many values are NaN, per feature; ``stacklevel`` counts from the caller."""
    total = count_nan(values)
    if total == 0:
        return
    per: Dict[str, int] = {}
    for j, name in enumerate(names):
        c = count_nan(values[:, j])
        if c:
            per[name] = per.get(name, 0) + c
    detail = ", ".join(f"{k}: {v}" for k, v in per.items())
    warnings.warn(
        f"{total} of {values.numel()} {what} values are undefined (NaN: a zero or non-finite "
        f"gradient) - {detail}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
