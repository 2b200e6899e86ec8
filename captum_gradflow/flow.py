"""Gradient flow alignment: feature alignment averaged along the path to the decision boundary.

DESIGN 2.5. From each input the flow follows the unit-speed curve
``gamma'(s) = -sigma grad m / |grad m|`` of the decision margin ``m`` (``sigma = sign m(x)``,
so it moves toward the boundary) and averages the squared cosine between ``grad m`` and every
feature gradient over arc length (trapezoid rule). The flow ends where ``m`` changes sign (the
crossing is located by linear interpolation of ``m`` inside the last step), at ``max_length``,
after ``max_steps`` steps, or where ``|grad m| < eps``.

Cost: one forward and one backward pass per point (two per step for Heun), on the examples
still moving only. The evaluation at a new point serves three purposes at once: its margin
decides whether the step crossed the boundary, and its gradient gives both the alignment
there and the direction of the next step.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_gradflow._common import (
    TargetType,
    TensorOrTuple,
    check_finite,
    count_nan,
    flat,
    flat_tuple,
    format_additional_args,
    format_inputs,
    format_output,
    input_gradients,
    decision_margin,
    prepare_inputs,

    target_indices,
)
from captum_gradflow.features import Feature, LinearFeature, as_feature_list
from captum_gradflow.gradients import projection_ratio

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
            segments touching them (DESIGN 2.1) and is NaN when nothing is left.
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


def _take(t: Tensor, rows: Optional[Tensor]) -> Tensor:
    return t if rows is None else t.index_select(0, rows)


def _put(full: Tensor, rows: Optional[Tensor], values: Tensor) -> Tensor:
    """``full`` with ``rows`` replaced, out of place (the caller's tensors are never written)."""
    return values if rows is None else full.index_copy(0, rows, values.to(full.dtype))


def _per_example_mask(mask: Any, n: int) -> bool:
    """True where a mask has one entry per example (so it must follow the active subset)."""
    return isinstance(mask, Tensor) and mask.dim() in (3, 4) and mask.shape[0] == n and n > 1


class _FeatureGradients:
    """Squared cosines between ``grad m`` and the feature gradients on the active subset.

    Gradients are flattened over all inputs jointly; a feature reads one input, so its
    gradient is zero on the others (only its block enters the dot product). Linear features
    with one direction for all examples are computed once and stacked into a ``(k, d)``
    matrix per input (one matmul per step); the others are evaluated at every point, in
    closed form where the feature has one. A gradient shared by all examples (a broadcast
    closed form, e.g. Brightness) is used as one row, not copied per example.
    """

    def __init__(self, features: Sequence[Feature], inputs: Tuple[Tensor, ...], mask: Any) -> None:
        self.n = inputs[0].shape[0]
        sizes = [t[0].numel() for t in inputs]
        self.blocks = [slice(sum(sizes[:i]), sum(sizes[:i + 1])) for i in range(len(inputs))]
        self.features = list(features)
        self.masks: List[Any] = []
        self.shared: List[Tuple[int, List[int], Tensor, Tensor]] = []  # input, columns, R, |R|^2
        self.other: List[int] = []
        by_input: dict = {}
        for j, feat in enumerate(self.features):
            if not 0 <= feat.input_index < len(inputs):
                raise IndexError(
                    f"feature '{feat.name}' reads input {feat.input_index}, but there are "
                    f"{len(inputs)} input tensors"
                )
            m = mask if mask is not None else feat.mask
            self.masks.append(m)
            if isinstance(feat, LinearFeature):
                r = feat.direction(inputs[feat.input_index], m)
                if r.shape[0] == 1:
                    by_input.setdefault(feat.input_index, []).append((j, flat(r)))
                    continue
            self.other.append(j)
        for i, items in by_input.items():
            mat = torch.cat([r for _, r in items], 0)
            self.shared.append((i, [j for j, _ in items], mat, (mat * mat).sum(1)))

    def gradient(self, j: int, xs: Tuple[Tensor, ...], rows: Optional[Tensor]) -> Tensor:
        """Gradient of feature ``j`` on its input, ``(n or 1, d_i)``."""
        feat, m = self.features[j], self.masks[j]
        if rows is not None and _per_example_mask(m, self.n):
            m = m.index_select(0, rows.to(m.device))
        x = xs[feat.input_index]
        g = feat.direction(x, m) if isinstance(feat, LinearFeature) else feat.gradient(x, m)
        if g.dim() == x.dim() and g.shape[0] == x.shape[0] and g.shape[0] > 1 and g.stride(0) == 0:
            g = g[:1]  # broadcast over examples: keep one row
        return flat(g)

    def alignment(self, grad_m: Tensor, norm2_m: Tensor, xs: Tuple[Tensor, ...],
                  rows: Optional[Tensor]) -> Tensor:
        """Squared cosines ``(n, m)`` between ``grad_m`` ``(n, D)`` and every feature gradient."""
        n = grad_m.shape[0]
        out = grad_m.new_empty(n, len(self.features))
        nm = norm2_m[:, None]
        for i, cols, mat, norm2 in self.shared:
            mat, norm2 = mat.to(grad_m.dtype), norm2.to(grad_m.dtype)
            dot = grad_m[:, self.blocks[i]] @ mat.T
            out[:, cols] = projection_ratio(dot * dot, nm * norm2[None])
        for j in self.other:
            g = self.gradient(j, xs, rows).to(grad_m.dtype)
            gm = grad_m[:, self.blocks[self.features[j].input_index]]
            if g.shape[0] == 1:
                dot = gm @ g[0]
            else:
                dot = torch.bmm(gm.unsqueeze(1), g.unsqueeze(2)).reshape(n)
            out[:, j] = projection_ratio(dot * dot, norm2_m * (g * g).sum(1))
        return out


class GradientFlowAlignment(GradientAttribution):
    r"""Alignment of interpretable features with the model along its gradient flow.

    For each example the flow starts at the input and follows the unit-speed negative (or
    positive) gradient of the decision margin ``m`` toward the decision boundary (DESIGN 2.5):

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

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        mask: Optional[Tensor] = None,
        step_size: Optional[float] = None,
        max_steps: int = 32,
        max_length: Optional[float] = None,
        integrator: str = "euler",
        threshold: float = 0.0,
        eps: float = 1e-8,
        return_details: bool = False,
        return_path: bool = False,
    ) -> Union[Tensor, FlowResult]:
        r"""Average feature alignment along the gradient flow of the decision margin.

        Args:
            inputs: A tensor ``(N, *S)`` or a tuple of tensors sharing the batch dimension;
                all floating point (the flow moves every input).
            target: Captum target: an int, a tensor or list with one class per example, or
                None for one-output models. Required for models with several outputs.
            additional_forward_args: Extra arguments of ``forward_func``, passed after the
                inputs; tensors with one row per example follow the active subset.
            mask: Mask passed to every feature (overrides the features' own masks).
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
        xs, was_tuple = format_inputs(inputs)
        self._check_arguments(xs, step_size, max_steps, max_length, integrator, threshold, eps)
        check_finite(xs)
        return _Flow(self, xs, was_tuple, target, additional_forward_args, mask, threshold).run(
            step_size, int(max_steps), max_length, integrator, eps, return_details or return_path,
            return_path,
        )

    @staticmethod
    def _check_arguments(xs, step_size, max_steps, max_length, integrator, threshold, eps) -> None:
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


class _Flow:
    """State of one ``attribute`` call: full-batch tensors updated on the active rows only."""

    def __init__(self, owner, xs, was_tuple, target, additional_forward_args, mask, threshold):
        self.forward_func = owner.forward_func
        self.names = [f.name for f in owner.features]
        self.xs = tuple(t.detach() for t in xs)
        self.was_tuple = was_tuple
        self.n = xs[0].shape[0]
        self.target = target
        self.args = format_additional_args(additional_forward_args)
        self.threshold = threshold
        self.feats = _FeatureGradients(owner.features, self.xs, mask)
        self.target_idx: Optional[Tensor] = None

    # -- one model evaluation ------------------------------------------------------------
    def _subset_target(self, rows: Optional[Tensor]) -> TargetType:
        if rows is None or self.target_idx is None:
            return self.target
        return self.target_idx.index_select(0, rows)

    def _subset_args(self, rows: Optional[Tensor]) -> Tuple[Any, ...]:
        if rows is None:
            return self.args
        return tuple(
            a.index_select(0, rows.to(a.device))
            if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == self.n else a
            for a in self.args
        )

    def evaluate(
        self, xs: Tuple[Tensor, ...], rows: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Margin ``(n,)``, its gradient flattened over all inputs ``(n, D)``, the gradient's
        norm ``(n,)`` and the model output."""
        kept = {}

        def margin(out: Tensor, target: TargetType) -> Tensor:
            kept["m"] = decision_margin(out, target, self.threshold)
            kept["out"] = out
            return kept["m"]

        grads, _ = input_gradients(
            self.forward_func, prepare_inputs(xs), self._subset_target(rows),
            self._subset_args(rows), reduce=margin,
        )
        g = flat(grads[0]) if len(grads) == 1 else flat_tuple(grads)
        return kept["m"].detach(), g, torch.linalg.vector_norm(g, dim=1), kept["out"]

    # -- the integration -----------------------------------------------------------------
    def run(self, step_size, max_steps, max_length, integrator, eps, details, keep_path):
        n, dev, wide = self.n, self.xs[0].device, torch.float64
        m0, g0, norm0, out0 = self.evaluate(self.xs, None)
        # The first evaluation has validated the target against the output; from here on a
        # per-example class index follows the active subset.
        if out0[0].numel() > 1:
            self.target_idx = target_indices(self.target, n, out0.device)
        ok0 = torch.isfinite(m0) & torch.isfinite(norm0) & (norm0 >= eps) & (norm0 > 0)
        self.eps, self.max_steps, self.heun = eps, max_steps, integrator == "heun"
        self.cap = float("inf") if max_length is None else float(max_length)
        self.sigma = torch.sign(m0)
        if step_size is None:
            self.h = (2 * m0.abs() / (norm0 * max_steps)).to(wide)
        else:
            self.h = torch.full((n,), float(step_size), dtype=wide, device=dev)
        # Full-batch state; rows that stop are frozen in it.
        # A copy: end points and paths must not alias the caller's inputs.
        self.x = flat(self.xs[0]).clone() if len(self.xs) == 1 else flat_tuple(self.xs)
        self.d = -(self.sigma / norm0)[:, None] * g0  # unit direction of the flow
        self.m = m0.to(wide)
        self.s = self.feats.alignment(g0, norm0 * norm0, self.xs, None).to(wide)
        self.length = torch.zeros(n, dtype=wide, device=dev)
        self.integral = torch.zeros_like(self.s)
        self.covered = torch.zeros_like(self.s)  # arc length where S is defined at both ends
        on_boundary = ok0 & (self.m == 0)
        self.active = ok0 & ~on_boundary
        self.skipped = (self.active[:, None] & torch.isnan(self.s)).long()
        self.n_steps = torch.zeros(n, dtype=torch.long, device=dev)
        self.n_evals = torch.ones(n, dtype=torch.long, device=dev)
        self.reached = on_boundary.clone()
        self.path = [[self.x[i]] for i in range(n)] if keep_path else None

        while bool(self.active.any()):
            rows = self.active.nonzero().flatten()
            self.step(None if rows.numel() == n else rows)

        alignment = torch.where(self.covered > 0, self.integral / self.covered, float("nan"))
        # At a point already on the boundary L = 0, and the average's limit is S there.
        alignment = torch.where(on_boundary[:, None], self.s, alignment)
        dtype = torch.promote_types(self.xs[0].dtype, torch.float32)
        alignment = alignment.to(dtype)
        n_nan, n_skipped = count_nan(alignment), int(self.skipped.sum())
        if n_nan or n_skipped:
            n_flat = int(((self.length == 0) & ~on_boundary).sum())
            warnings.warn(
                f"GradientFlowAlignment: {n_nan} of {alignment.numel()} alignment values are "
                f"NaN (undefined), {n_flat} example(s) with flow length L = 0 (|grad m| < eps "
                f"or a non-finite margin at the start); {n_skipped} (point, feature) pairs on "
                "the paths had an undefined squared cosine and were left out of the average",
                RuntimeWarning,
                stacklevel=4,
            )
        if not details:
            return alignment
        paths = None
        if keep_path:
            paths = [format_output(self.was_tuple, self._unflat(torch.stack(p))) for p in self.path]
        return FlowResult(
            alignment=alignment,
            length=self.length.to(dtype),
            reached_boundary=self.reached,
            n_steps=self.n_steps,
            n_evaluations=self.n_evals,
            end_point=format_output(self.was_tuple, self._unflat(self.x)),
            start_margin=m0,
            path=paths,
            n_nan=n_nan,
            n_skipped=self.skipped,
            feature_names=list(self.names),
        )

    def step(self, rows: Optional[Tensor]) -> None:
        """One Euler or Heun step of the active ``rows`` (None: all), with the stopping rules."""
        xa, da, ma, sa, la = (_take(t, rows) for t in (self.x, self.d, self.m, self.s, self.length))
        sig, full_h = _take(self.sigma, rows), _take(self.h, rows)
        ha = torch.minimum(full_h, self.cap - la)
        at_cap = full_h >= self.cap - la  # this step ends exactly at max_length
        hx = ha.to(xa.dtype)[:, None]
        valid = torch.ones_like(ma, dtype=torch.bool)
        if self.heun:
            _, gp, normp, _ = self.evaluate(self._unflat(torch.addcmul(xa, hx, da)), rows)
            valid = torch.isfinite(normp) & (normp >= self.eps) & (normp > 0)
            dp = torch.where(valid[:, None], -(sig / normp)[:, None] * gp, da)
            xn = torch.addcmul(xa, 0.5 * hx, da + dp)
        else:
            xn = torch.addcmul(xa, hx, da)
        mn, gn, normn, _ = self.evaluate(self._unflat(xn), rows)
        self.n_evals = self.n_evals + self._scatter_count(rows, 2 if self.heun else 1)
        ok_new = torch.isfinite(mn) & torch.isfinite(normn) & (normn >= self.eps) & (normn > 0)
        crossed = valid & torch.isfinite(mn) & (sig * mn <= 0)
        # A point where grad m vanishes (or a failed Heun predictor) is rejected: the flow
        # ends at the last point where its direction was defined.
        moving = valid & ~crossed & ok_new
        moved = crossed | moving
        sn = self.feats.alignment(gn, normn * normn, self._unflat(xn), rows).to(sa.dtype)
        d_new = -(sig / normn).to(gn.dtype)[:, None] * gn
        mn = mn.to(ma.dtype)
        if bool(crossed.any()):
            # Inside the crossing step the margin is taken as linear: it is zero at tau.
            tau = torch.where(crossed, ma / (ma - mn), torch.ones_like(ma))
            tau = torch.nan_to_num(tau, nan=1.0).clamp(0.0, 1.0)
            sn = torch.lerp(sa, sn, tau[:, None])
            xn = torch.lerp(xa, xn, tau.to(xa.dtype)[:, None])
            ha = tau * ha
        if not bool(moved.all()):
            sn = torch.where(moved[:, None], sn, sa)
            xn = torch.where(moved[:, None], xn, xa)
            d_new = torch.where(moved[:, None], d_new, da)
            mn = torch.where(moved, mn, ma)
            ha = torch.where(moved, ha, 0.0)
        # Trapezoid over the segments whose ends both have a defined S (DESIGN 2.1: averages
        # skip undefined values and count them).
        seg = moved[:, None] & torch.isfinite(sa) & torch.isfinite(sn)
        area = torch.where(seg, 0.5 * (sa + sn) * ha[:, None], 0.0)

        self.length = _put(self.length, rows, la + ha)
        self.integral = _put(self.integral, rows, _take(self.integral, rows) + area)
        self.covered = _put(self.covered, rows, _take(self.covered, rows) + seg * ha[:, None])
        skipped = moved[:, None] & torch.isnan(sn)
        self.skipped = _put(self.skipped, rows, _take(self.skipped, rows) + skipped)
        self.n_steps = _put(self.n_steps, rows, _take(self.n_steps, rows) + moved.long())
        self.x = _put(self.x, rows, xn)
        self.s = _put(self.s, rows, sn)
        self.m = _put(self.m, rows, mn)
        self.d = _put(self.d, rows, d_new)
        self.reached = _put(self.reached, rows, _take(self.reached, rows) | crossed)
        still = moving & (_take(self.n_steps, rows) < self.max_steps) & ~at_cap
        self.active = _put(self.active, rows, still)
        if self.path is not None:
            ids = torch.arange(self.n, device=xa.device) if rows is None else rows
            for k in moved.nonzero().flatten().tolist():
                self.path[int(ids[k])].append(xn[k])

    def _scatter_count(self, rows: Optional[Tensor], k: int) -> Tensor:
        if rows is None:
            return torch.full((self.n,), k, dtype=torch.long, device=self.xs[0].device)
        out = torch.zeros(self.n, dtype=torch.long, device=rows.device)
        return out.index_fill(0, rows, k)

    def _unflat(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Split a flat ``(n, D)`` state back into the input tuple's shapes and dtypes."""
        parts, start = [], 0
        for t in self.xs:
            size = t[0].numel()
            part = x[:, start:start + size].reshape(x.shape[0], *t.shape[1:])
            parts.append(part.to(t.dtype))
            start += size
        return tuple(parts)
