"""Pointwise, joint and subspace alignment of a model's gradient with feature gradients.

DESIGN 2.1-2.4. The model gradient is computed once per call and expressed as an orthonormal
*decision basis* per example: the unit gradient ``grad f / |grad f|`` (``decision="target"``)
or an orthonormal basis of the row space of the centred-logit Jacobian
(``decision="subspace"``). Every alignment is then ``|B g|^2 / |g|^2`` for a feature
gradient ``g``, which is the squared cosine of DESIGN 2.1 in the first case and the
projection ratio of DESIGN 2.4 in the second. Linear features (the noise baseline) share one
direction across examples, so they are stacked into one ``(M, d)`` matrix and aligned with a
single matmul.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_gradflow._common import (
    TargetType,
    TensorOrTuple,
    check_finite,
    count_nan,
    flat_tuple,
    format_inputs,
    input_gradients,
    prepare_inputs,
    projection_ratio,
    run_forward,
)
from captum_gradflow._native_conv import native_one_channel_conv_grads
from captum_gradflow.features import (
    Brightness,
    as_feature_list,
    CoordinateMoments,
    Extent,
    Feature,
    LinearFeature,
    LogAspectRatio,
    noise_features,
    normalize_mask,
)
from captum_gradflow.noise import NoiseComparison

__all__ = ["FeatureAlignment"]

_DECISIONS = ("target", "subspace")


@dataclass
class _Decision:
    """Orthonormal decision basis of every example, shared by all features of a call."""

    basis: Tensor  # (N, k, d): orthonormal rows over all inputs concatenated; zero rows pad
    defined: Tensor  # (N,) bool: False where the model gradient is zero or not finite
    offsets: List[int]  # start of each input's block in the flattened d
    sizes: List[int]  # per-example size of each input

    def block(self, i: int) -> Tensor:
        """Basis restricted to input ``i``: ``(N, k, d_i)`` (a view)."""
        return self.basis[:, :, self.offsets[i]:self.offsets[i] + self.sizes[i]]


class FeatureAlignment(GradientAttribution):
    r"""Agreement of a model's input gradient with the gradients of interpretable features.

    For the decision function ``f = F(x)[target]`` and a feature ``g`` (DESIGN 2.1)::

        S_g(x) = <grad f, grad g>^2 / (|grad f|^2 |grad g|^2)        in [0, 1]

    Gradients are flattened over *all* input tensors concatenated; a feature reads
    ``inputs[feature.input_index]`` and its gradient is zero on the other inputs. The squared
    cosine ignores magnitude and sign. Where a gradient is zero or not finite the value is
    undefined: it is ``NaN`` (never a silent 0) and a ``RuntimeWarning`` says how many entries,
    for which features.

    ``decision="subspace"`` (DESIGN 2.4; ``target=None``, ``K > 1`` outputs) instead measures
    ``S = |P_row(J) grad g|^2 / |grad g|^2`` with ``J`` the Jacobian of the centred logits
    ``F_c - mean_c F``. Its row space equals that of the ``K - 1`` logit differences
    ``F_c - F_0``, so ``K - 1`` backward passes suffice (one for a binary model, where the
    result is the squared cosine with ``grad(F_1 - F_0)``). An orthonormal basis is taken per
    example by SVD, dropping singular values below ``rank_tol`` times the largest.

    :meth:`joint` gives the fraction of the gradient that all features explain together
    (DESIGN 2.2) and :meth:`compare_to_noise` the noise baseline and its significance
    (DESIGN 2.3), reusing a single model gradient for features and noise.

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
        # Noise features and their stacked directions are reused across calls: drawing and
        # smoothing 32 directions costs more than aligning with them.
        self._noise_cache: Dict[Tuple, List[Feature]] = {}
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
        mask: Optional[Tensor] = None,
        decision: str = "target",
    ) -> Tensor:
        r"""Pointwise alignment ``S`` of every example with every feature.

        Args:
            inputs: A tensor ``(N, *S)`` or a tuple of tensors with the same ``N``.
            target: Any Captum target form (int, tuple, tensor, list, or ``None`` for a
                single-output model). Must be ``None`` for ``decision="subspace"``.
            additional_forward_args: Extra arguments passed to ``forward_func`` after inputs.
            mask: Soft mask given to every feature, overriding the features' own masks.
            decision: ``"target"`` (align with ``grad F[target]``) or ``"subspace"`` (the
                row space of the centred-logit Jacobian, DESIGN 2.4).

        Returns:
            Tensor ``(N, m)`` in [0, 1], one column per feature, NaN where undefined.

        Examples::

            >>> import torch
            >>> from captum_gradflow import Brightness, FeatureAlignment, SmallCNN
            >>> fa = FeatureAlignment(SmallCNN(num_classes=3).eval(), [Brightness()])
            >>> fa.attribute(torch.rand(2, 1, 32, 32), decision="subspace").shape
            torch.Size([2, 1])
        """
        xs, _ = format_inputs(inputs)
        self._check_call(xs, decision)
        feature_grads = self._feature_gradients(self.features, xs, mask)
        dec = self._decision(xs, target, additional_forward_args, decision)
        s = self._align(dec, feature_grads, len(self.features))
        _warn_nan(s, self.feature_names, "alignment")
        return s

    def joint(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        r"""Fraction of the model gradient in the span of all feature gradients (DESIGN 2.2).

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
        xs, _ = format_inputs(inputs)
        self._check_call(xs, "target")
        grads = self._feature_gradients(self.features, xs, mask)
        dec = self._decision(xs, target, additional_forward_args, "target")
        n, d = dec.basis.shape[0], dec.basis.shape[2]
        dtype = torch.float64  # the SVD's rank decision needs the precision; m is small
        # Build the (N, d, m) matrix of feature gradients (zero outside each feature's input).
        g = torch.zeros(n, d, len(self.features), dtype=dtype, device=dec.basis.device)
        for j, (i, gj) in _dense_items(grads):
            o = dec.offsets[i]
            g[:, o:o + dec.sizes[i], j] = gj.to(dtype)
        finite = torch.isfinite(g).all(dim=(1, 2))
        g = torch.where(torch.isfinite(g), g, torch.zeros((), dtype=dtype, device=g.device))
        norms = g.norm(dim=1, keepdim=True)
        g = g / torch.where(norms > 0, norms, torch.ones_like(norms))
        u, sv, _ = torch.linalg.svd(g, full_matrices=False)
        tol = self.rank_tol if self.rank_tol is not None else max(d, g.shape[2]) * torch.finfo(dtype).eps
        keep = sv > tol * sv[:, :1]  # (N, r)
        coords = torch.einsum("ndr,nd->nr", u, dec.basis[:, 0].to(dtype)) * keep
        jv = (coords * coords).sum(1)
        bad = ~dec.defined | ~finite | ~keep.any(1) | ~(norms.flatten(1) > 0).any(1)
        jv = torch.where(bad, torch.full_like(jv, float("nan")), jv.clamp(0.0, 1.0))
        jv = jv.to(dec.basis.dtype)
        _warn_nan(jv[:, None], ["joint"], "joint alignment")
        return jv

    def compare_to_noise(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        mask: Optional[Tensor] = None,
        n_noise: int = 32,
        seed: int = 0,
        noise_mask: Optional[Tensor] = None,
        smooth_sigma: Optional[float] = None,
        decision: str = "target",
        noise_input_index: int = 0,
    ) -> NoiseComparison:
        r"""Alignment of every feature next to that of ``n_noise`` random linear features.

        The model gradient is computed once and reused for the features and the noise. Noise
        features are :class:`~captum_gradflow.NoiseFeature` ``g_r(x) = <r, x>`` with seeds
        ``seed .. seed + n_noise - 1``, drawn over ``inputs[noise_input_index]``.

        For a fair baseline the noise should live where the features look and vary on their
        spatial scale: in ``d`` dimensions a random direction scores about ``1/d``, so noise
        over the whole image makes any masked feature look significant. Pass the features'
        mask as ``noise_mask`` (noise then ranges over the same pixels) and a ``smooth_sigma``
        of a few pixels (smaller than the masked structures; 2 px for lesions of radius 4-8
        px on 32x32 images, the choice of the package's ground-truth test).

        Args:
            inputs, target, additional_forward_args, mask, decision: As in :meth:`attribute`;
                ``mask`` goes to the features only.
            n_noise: Number of noise features M (at least 1).
            seed: Seed of the first noise feature.
            noise_mask: Mask restricting the noise directions (``(N or 1, 1, H, W)``).
            smooth_sigma: Gaussian smoothing of the noise directions, in pixels.
            noise_input_index: The input tensor the noise directions live on.

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
        xs, _ = format_inputs(inputs)
        self._check_call(xs, decision)
        if isinstance(n_noise, bool) or not isinstance(n_noise, int) or n_noise < 1:
            raise ValueError(f"n_noise must be a positive int, got {n_noise!r}")
        if smooth_sigma is not None and not smooth_sigma >= 0:
            raise ValueError(f"smooth_sigma must be non-negative, got {smooth_sigma}")
        if not 0 <= noise_input_index < len(xs):
            raise IndexError(f"noise_input_index {noise_input_index} is out of range for {len(xs)} inputs")
        noise = self._noise(n_noise, seed, smooth_sigma, noise_input_index)
        checked: Dict[Tuple, Tuple[Tensor, Tensor]] = {}
        feature_grads = self._feature_gradients(self.features, xs, mask, checked=checked)
        noise_grads = self._feature_gradients(noise, xs, noise_mask, cache=True, checked=checked)
        dec = self._decision(xs, target, additional_forward_args, decision)
        s = self._align(dec, feature_grads, len(self.features))
        s_noise = self._align(dec, noise_grads, len(noise))
        _warn_nan(s, self.feature_names, "alignment")
        _warn_nan(s_noise, ["noise"] * len(noise), "noise alignment")
        return NoiseComparison(s.detach().cpu(), s_noise.detach().cpu(), self.feature_names)

    # ------------------------------------------------------------------ internals
    def _check_call(self, xs: Tuple[Tensor, ...], decision: str) -> None:
        if decision not in _DECISIONS:
            raise ValueError(f"decision must be one of {_DECISIONS}, got {decision!r}")
        check_finite(xs)
        for f in self.features:
            if not 0 <= f.input_index < len(xs):
                raise IndexError(
                    f"feature '{f.name}' reads input {f.input_index} but only {len(xs)} "
                    "input tensors were given"
                )

    def _noise(self, n: int, seed: int, sigma: Optional[float], index: int) -> List[Feature]:
        key = (n, int(seed), sigma, index)
        if key not in self._noise_cache:
            if len(self._noise_cache) >= 8:
                self._noise_cache.clear()
                self._matrix_cache.clear()
            self._noise_cache[key] = noise_features(n, seed=seed, smooth_sigma=sigma, input_index=index)
        return self._noise_cache[key]

    def _decision(
        self,
        xs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        decision: str,
    ) -> _Decision:
        leaves = prepare_inputs(xs)
        sizes = [t[0].numel() for t in xs]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        if decision == "target":
            grads, _ = input_gradients(self.forward_func, leaves, target, additional_forward_args)
            a = _flat(grads)
            norm = torch.linalg.vector_norm(a, dim=1)
            defined = (norm > 0) & torch.isfinite(norm)
            inv = torch.where(defined, 1.0 / torch.where(defined, norm, torch.ones_like(norm)), torch.zeros_like(norm))
            basis = a * inv[:, None]
            if not bool(defined.all()):
                basis = torch.where(defined[:, None], basis, torch.zeros_like(basis))  # no NaN rows
            return _Decision(basis[:, None], defined, offsets, sizes)
        if target is not None:
            raise ValueError("decision='subspace' uses all outputs: pass target=None")
        jac = self._logit_difference_jacobian(leaves, additional_forward_args)
        _, sv, vh = torch.linalg.svd(jac, full_matrices=False)
        tol = (
            self.rank_tol if self.rank_tol is not None
            else max(jac.shape[1], jac.shape[2]) * torch.finfo(jac.dtype).eps
        )
        finite = torch.isfinite(jac).all(dim=(1, 2))
        keep = (sv > tol * sv[:, :1]) & (sv > 0) & finite[:, None]
        basis = torch.where(keep[..., None], vh, torch.zeros_like(vh))
        return _Decision(basis, keep.any(1), offsets, sizes)

    def _logit_difference_jacobian(self, leaves: Tuple[Tensor, ...], additional_forward_args: Any) -> Tensor:
        """Rows ``grad(F_c - F_0)``, c = 1..K-1: same row space as the centred logits."""
        with torch.enable_grad():
            out = run_forward(self.forward_func, leaves, additional_forward_args)
            if out.dim() != 2 or out.shape[1] < 2:
                raise ValueError(
                    "decision='subspace' needs a model with K > 1 outputs of shape (N, K); got "
                    f"output shape {tuple(out.shape)}"
                )
            if not out.requires_grad:
                raise ValueError("the model output does not depend on the inputs (no gradient)")
            k = out.shape[1]
            rows = []
            # One graph walk for all K - 1 backward passes: they share the model's graph.
            with native_one_channel_conv_grads(out.grad_fn):
                for c in range(1, k):
                    total = (out[:, c] - out[:, 0]).sum()
                    grads = torch.autograd.grad(total, leaves, retain_graph=c < k - 1, allow_unused=True)
                    grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads))
                    rows.append(_flat(grads))
        return torch.stack(rows, dim=1)

    def _feature_gradients(
        self,
        features: Sequence[Feature],
        xs: Tuple[Tensor, ...],
        mask: Optional[Tensor],
        cache: bool = False,
        checked: Optional[Dict[Tuple, Tuple[Tensor, Tensor]]] = None,
    ) -> "_FeatureGradients":
        """Gradients of all features.

        Built-in features sharing a mask are grouped so the mask is validated once and the
        coordinate moments are shared by Extent and LogAspectRatio; linear features sharing a
        mask are stacked into one direction matrix. Everything else uses ``Feature.gradient``.
        ``checked`` memoises validated masks by identity within one call (features and noise
        often share the lesion masks, and validating a mask costs several passes over it).
        """
        checked = {} if checked is None else checked
        dense: Dict[int, Tuple[int, Tensor]] = {}
        groups: Dict[Tuple[str, int, int], List[Tuple[int, Feature]]] = {}
        raw_masks: Dict[Tuple[str, int, int], Optional[Tensor]] = {}
        for j, f in enumerate(features):
            i = f.input_index
            if not 0 <= i < len(xs):
                raise IndexError(f"feature '{f.name}' reads input {i} but only {len(xs)} inputs were given")
            kind = None
            if _is_plain_linear(f):
                kind = "linear"
            elif type(f) in _MOMENT_FEATURES and xs[i].dim() == 4:
                kind = "moment"
            if kind is not None:
                raw = mask if mask is not None else f.mask
                key = (kind, i, id(raw))
                groups.setdefault(key, []).append((j, f))
                raw_masks[key] = raw
            else:
                dense[j] = (i, _generic_gradient(f, xs[i].detach(), mask))
        linear = []
        for key, members in groups.items():
            kind, i = key[0], key[1]
            x = xs[i].detach()
            raw = raw_masks[key]
            m = None
            if raw is not None:
                memo = (id(raw), tuple(x.shape), x.dtype, x.device)
                if memo not in checked:  # the stored raw mask keeps its id from being reused
                    checked[memo] = (raw, normalize_mask(raw, x, members[0][1].name))
                m = checked[memo][1]
            if kind == "moment":
                moments = CoordinateMoments(x, m)
                for j, f in members:
                    dense[j] = (i, _moment_gradient(moments, f, x).reshape(x.shape[0], -1))
                continue
            rt, r2t = self._stack_directions([f for _, f in members], x, cache)
            if m is not None and m.shape[0] == 1:
                # A shared mask folds into the directions themselves.
                rt = rt * m.expand(1, *x.shape[1:]).reshape(-1, 1)
                r2t, m = rt * rt, None
            elif m is not None:
                m = m.expand(x.shape[0], *x.shape[1:]).reshape(x.shape[0], -1)
            linear.append((i, [j for j, _ in members], rt, r2t, m))
        return _FeatureGradients(dense, linear)

    def _stack_directions(self, feats: List[Feature], x: Tensor, cache: bool) -> Tuple[Tensor, Tensor]:
        """Directions of linear features as columns ``R^T`` (d, M) and their squares."""
        key = (tuple(id(f) for f in feats), tuple(x.shape[1:]), x.dtype, x.device)
        if cache and key in self._matrix_cache:
            return self._matrix_cache[key]
        rows = []
        for f in feats:
            r = f.base_direction(x)
            if not isinstance(r, Tensor) or tuple(r.shape) != tuple(x.shape[1:]):
                shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
                raise ValueError(
                    f"direction of feature '{f.name}' has shape {shape}; inputs have per-example "
                    f"shape {tuple(x.shape[1:])}"
                )
            rows.append(r.to(dtype=x.dtype, device=x.device).reshape(-1))
        # Stored transposed and contiguous, (d, M): the layout the matmuls read fastest.
        mat = torch.stack(rows, dim=1)
        out = (mat, mat * mat)
        if cache:
            if len(self._matrix_cache) >= 16:
                self._matrix_cache.clear()
            self._matrix_cache[key] = out
        return out

    @staticmethod
    def _align(dec: _Decision, grads: "_FeatureGradients", m: int) -> Tensor:
        n = dec.basis.shape[0]
        dtype = dec.basis.dtype
        s = torch.full((n, m), float("nan"), dtype=dtype, device=dec.basis.device)
        for j, (i, g) in grads.dense.items():
            b = dec.block(i)
            g = g.to(torch.promote_types(dtype, g.dtype))
            b = b.to(g.dtype)
            norm_g = torch.linalg.vector_norm(g, dim=1).square()
            if g.shape[0] == 1:
                dots = b @ g[0]  # (N, k)
                norm_g = norm_g.expand(n)
            else:
                dots = (b * g[:, None, :]).sum(-1)  # several times faster than a (d x 1) bmm
            s[:, j] = projection_ratio((dots * dots).sum(1), norm_g, dec.defined).to(dtype)
        for i, cols, rt, r2t, msk in grads.linear:
            b = dec.block(i).to(rt.dtype)
            if msk is None:
                dots = b @ rt  # (N, k, M)
                norm_g = r2t.sum(0).expand(n, -1)
            else:
                # <b, r * m> = <b * m, r> and |r * m|^2 = m^2 . r^2: two matmuls, no (N, M, d).
                dots = (b * msk[:, None]) @ rt
                norm_g = (msk * msk) @ r2t
            s[:, cols] = projection_ratio((dots * dots).sum(1), norm_g, dec.defined[:, None]).to(dtype)
        return s


@dataclass
class _FeatureGradients:
    dense: Dict[int, Tuple[int, Tensor]]  # feature -> (input index, (1 or N, d_i))
    linear: List[Tuple[int, List[int], Tensor, Tensor, Optional[Tensor]]]  # (input, cols, R^T, (R^2)^T, mask)


def _flat(grads: Tuple[Tensor, ...]) -> Tensor:
    # One input needs no concatenation copy: a reshape of a contiguous gradient is a view.
    return grads[0].reshape(grads[0].shape[0], -1) if len(grads) == 1 else flat_tuple(grads)


def _generic_gradient(f: Feature, x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``f.gradient`` flattened to ``(1 or N, d_i)``, with clear errors for a bad gradient."""
    try:
        g = f.gradient(x, mask)
    except RuntimeError as err:
        raise ValueError(
            f"feature '{f.name}': could not compute its gradient for an input of shape "
            f"{tuple(x.shape)} ({err})"
        ) from err
    if not isinstance(g, Tensor) or tuple(g.shape[1:]) != tuple(x.shape[1:]) or g.shape[0] not in (1, x.shape[0]):
        shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
        raise ValueError(
            f"gradient of feature '{f.name}' has shape {shape}; expected the input's shape {tuple(x.shape)}"
        )
    if g.shape[0] > 1 and g.stride(0) == 0:
        g = g[:1]  # one gradient expanded over the batch: align it with one matmul
    return g.reshape(g.shape[0], -1)


def _moment_gradient(moments: CoordinateMoments, f: Feature, x: Tensor) -> Tensor:
    """One built-in moment feature's closed-form gradient from shared moments."""
    if isinstance(f, Brightness):
        m = moments.mask if moments.mask is not None else torch.ones_like(x[:1, :1])
        return f.closed_form_gradient(x, m).expand_as(x)
    if isinstance(f, Extent):
        return moments.extent_gradient()
    return moments.log_aspect_ratio_gradient()


_MOMENT_FEATURES = (Brightness, Extent, LogAspectRatio)


def _dense_items(grads: _FeatureGradients) -> Iterator[Tuple[int, Tuple[int, Tensor]]]:
    """Every feature's gradient as ``(j, (input, (1 or N, d_i)))``, linear groups expanded."""
    for j, item in grads.dense.items():
        yield j, item
    for i, cols, rt, _, msk in grads.linear:
        for c, j in enumerate(cols):
            row = rt[:, c][None]
            yield j, (i, row if msk is None else row * msk)


def _is_plain_linear(f: Feature) -> bool:
    # Only the built-in linear features are known to have gradient = direction * mask;
    # a subclass overriding either method takes the general path.
    return (
        isinstance(f, LinearFeature)
        and type(f).direction is LinearFeature.direction
        and type(f).closed_form_gradient is LinearFeature.closed_form_gradient
        and type(f).compute is LinearFeature.compute
    )


def _warn_nan(values: Tensor, names: Sequence[str], what: str) -> None:
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
        stacklevel=3,
    )

