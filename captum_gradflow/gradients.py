"""The one path from features to gradient stacks, and the one squared cosine.

Every method of the package that compares a model's gradient with feature gradients
(:class:`~captum_gradflow.FeatureAlignment`, :class:`~captum_gradflow.GradientFlowAlignment`,
:class:`~captum_gradflow.AlignmentRegularizer`) gets the feature gradients from
:class:`GradientPath` and the squared cosine or projection ratio from :func:`measure`
(NaN where undefined) or :func:`differentiable_squared_cosines` (finite stand-ins and a mask
of the undefined entries, for training). The path is driven by what each feature declares
about itself, never by its class:

* ``linear_direction(x)``: a fixed direction ``r`` with gradient ``r * mask``. Features that
  share an input and a mask are stacked into one ``(d, M)`` direction matrix, so aligning
  with them is one matrix product (the noise baseline has 32 of them).
* ``centred_direction(x)``: a direction ``r`` centred inside the mask, gradient
  ``(r - c) * mask``; stacked the same way, the centring done on the stack.
* ``moment_gradient(moments)``: a closed form from the coordinate moments of the input
  inside the mask, computed once for every feature sharing that input and mask.
* otherwise ``Feature.gradient`` (the feature's closed form, or autograd).

Definitions: docs/definitions.md, sections 2.1 (squared cosine), 2.4 (projection ratio).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_gradflow._common import take_rows
from captum_gradflow.features import CoordinateMoments, Feature, normalize_mask
from captum_gradflow.features.feature import checked_direction
from captum_gradflow.features.linear import centred

__all__ = ["FeatureGradients", "GradientPath", "LinearGroup", "differentiable_squared_cosines", "measure",
           "projection_ratio", "unit_basis"]


def projection_ratio(energy: Tensor, norm2: Tensor, defined: Optional[Tensor] = None) -> Tensor:
    """``energy / norm2`` clamped to [0, 1], NaN where undefined (docs/definitions.md, section 2.1).

    The one NaN rule of the package: a zero or non-finite norm, a non-finite ratio, or
    ``defined`` False gives NaN, never a silent 0. ``energy`` is a squared projection
    (``<a, b>^2``, or a sum of them onto an orthonormal basis) and ``norm2`` the product of
    squared norms it is divided by.

    Examples::

        >>> import torch
        >>> projection_ratio(torch.tensor([1.0, 1.0]), torch.tensor([4.0, 0.0]))
        tensor([0.2500,    nan])
    """
    s = energy / norm2
    bad = ~(norm2 > 0) | ~torch.isfinite(norm2) | ~torch.isfinite(s)
    if defined is not None:
        bad = bad | ~defined
    return torch.where(bad, torch.full_like(s, float("nan")), s.clamp(0.0, 1.0))


# ---------------------------------------------------------------- feature declarations
def _declares_moments(feature: Feature, x: Tensor) -> bool:
    """Whether the feature declares a gradient from coordinate moments of spatial ``x``."""
    return type(feature).moment_gradient is not Feature.moment_gradient and 3 <= x.dim() <= 5


# ---------------------------------------------------------------- gradient stacks
MaskTerms = Dict[torch.dtype, Tuple[Tensor, Tensor, Optional[Tensor]]]  # see LinearGroup.mask_terms


@dataclass
class LinearGroup:
    """Linear features reading one input under one mask, as one direction matrix."""

    input_index: int
    columns: List[int]  # which features (columns of the result) the group holds
    directions: Tensor  # (d_i, M): R transposed, the layout the matmuls read fastest
    squares: Tensor  # (d_i, M): R * R, for the masked norms
    mask: Optional[Tensor]  # (n, d_i) per-example mask; a shared mask is folded into R
    # > 0: centred features, gradient (r - c) * m with c the per-channel mean of r under m^2
    # (Feature.centred_direction); the input's channel count. 0: gradient r * m.
    channels: int = 0
    # What depends only on the mask and the directions, by dtype (see mask_terms). The groups a
    # GradientPath hands out for the same rows share one dict: a flow computes it once.
    shared: MaskTerms = field(default_factory=dict, repr=False)

    def mask_terms(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(m, |g_j|^2, c)`` in ``dtype`` for a masked group: the mask ``(n, d_i)``, the
        squared norms ``(n, M)`` and, for a centred group, the channel means ``c`` ``(n, C, M)``."""
        if dtype not in self.shared:
            m, r2t = self.mask.to(dtype), self.squares.to(dtype)
            norms, c = (m * m) @ r2t, None
            if self.channels:
                rt, n, ch = self.directions.to(dtype), m.shape[0], self.channels
                w = (m * m).reshape(n, ch, -1)
                wsum = w.sum(2)  # (n, C)
                c = torch.einsum("ncp,cpm->ncm", w, rt.reshape(ch, -1, rt.shape[1])) / wsum[..., None]
                norms = norms - (c * c * wsum[..., None]).sum(1)
            self.shared[dtype] = (m, norms, c)
        return self.shared[dtype]

    def terms(self, v: Tensor) -> Tuple[Tensor, Tensor]:
        """``(<v, g_j>, |g_j|^2)`` for every feature ``j`` of the group, without forming ``g_j``.

        ``v`` is ``(n, d_i)`` or ``(n, k, d_i)``; returns ``(n, [k,] M)`` and ``(n or 1, M)``.
        Two matrix products for masked directions; a centred group subtracts ``c_j <v, m>``
        per channel (its norms are centred in :meth:`mask_terms`).
        """
        rt = self.directions.to(v.dtype)
        if self.mask is None:
            return v @ rt, self.squares.to(v.dtype).sum(0)[None]
        m, norms, c = self.mask_terms(v.dtype)
        mv = v * (m if v.dim() == 2 else m[:, None])
        dots = mv @ rt
        if c is not None:
            mv_c = mv.reshape(*mv.shape[:-1], self.channels, -1).sum(-1)  # (n, [k,] C)
            dots = dots - (mv_c @ c if v.dim() == 3 else (mv_c[:, None] @ c)[:, 0])
        return dots, norms

    def gradient(self, col: int) -> Tensor:
        """The gradient of the group's ``col``-th feature, ``(1 or n, d_i)``."""
        r = self.directions[:, col][None]
        if self.mask is None:
            return r
        if not self.channels:
            return r * self.mask
        n, ch = self.mask.shape[0], self.channels
        return centred(r.reshape(1, ch, -1), self.mask.reshape(n, ch, -1)).reshape(n, -1) * self.mask


@dataclass
class FeatureGradients:
    """Gradients of ``n_features`` features on one batch.

    ``dense[j] = (input index, (1 or n, d_i))``: one row when the gradient is the same for
    every example. ``linear``: the stacked linear features.
    """

    n_features: int
    dense: Dict[int, Tuple[int, Tensor]] = field(default_factory=dict)
    linear: List[LinearGroup] = field(default_factory=list)

    def rows(self, limit: Optional[int] = None) -> Iterator[Tuple[int, int, Tensor]]:
        """Every feature's gradient as ``(column, input index, (1 or n, d_i))``; with
        ``limit``, only the columns below it (the features before the noise)."""
        for j, (i, g) in self.dense.items():
            if limit is None or j < limit:
                yield j, i, g
        for grp in self.linear:
            for c, j in enumerate(grp.columns):
                if limit is None or j < limit:
                    yield j, grp.input_index, grp.gradient(c)


class GradientPath:
    """Gradients of a fixed list of features on a batch and on subsets of its rows.

    Built once per call: masks are validated once (a mask shared by several features once),
    linear directions are stacked once, and later calls at other points of the same batch
    (the flow's path) or on a subset of its rows reuse them. Per-example masks follow the
    rows asked for.

    Args:
        features: The features; column ``j`` of every result is ``features[j]``.
        xs: The batch (one tensor per input); fixes ``n``, shapes and dtypes.
        masks: Per feature, the mask overriding its own (``None``: the feature's own mask).
        cache: Optional dict kept by the caller across calls for the stacked directions
            (keyed by the features' identities, shape, dtype and device).

    Examples::

        >>> import torch
        >>> from captum_gradflow import Brightness, NoiseFeature
        >>> x = torch.rand(3, 1, 8, 8)
        >>> path = GradientPath([Brightness(), NoiseFeature(0), NoiseFeature(1)], (x,))
        >>> grads = path((x,))
        >>> grads.n_features, len(grads.linear), grads.linear[0].columns
        (3, 1, [1, 2])
    """

    def __init__(
        self,
        features: Sequence[Feature],
        xs: Tuple[Tensor, ...],
        masks: Optional[Sequence[Optional[Tensor]]] = None,
        cache: Optional[Dict[Any, Tuple[Tensor, Tensor]]] = None,
    ) -> None:
        self.features = list(features)
        self.n = xs[0].shape[0]
        masks = [None] * len(self.features) if masks is None else list(masks)
        self._raw = [m if m is not None else f.mask for f, m in zip(self.features, masks)]
        self._normalized: Dict[Tuple[int, int], Tuple[Optional[Tensor], Optional[Tensor]]] = {}
        self._cache = cache
        self.masks: List[Optional[Tensor]] = []
        # (input index, mask identity, centred) -> the linear features sharing them
        self.linear: Dict[Tuple[int, int, bool], List[Tuple[int, Tensor]]] = {}
        self.moments: Dict[Tuple[int, int], List[int]] = {}
        self.other: List[int] = []
        for j, f in enumerate(self.features):
            i = f.input_index
            if not 0 <= i < len(xs):
                raise IndexError(
                    f"feature '{f.name}' reads input {i} but only {len(xs)} input tensors were given"
                )
            x = xs[i].detach()
            self.masks.append(self._normalize(j, x))
            key = (i, id(self._raw[j]))
            r = f.linear_direction(x)
            centred = r is None
            if centred:
                r = f.centred_direction(x)
            if r is not None:
                self.linear.setdefault((*key, centred), []).append((j, checked_direction(r, x, f.name)))
            elif _declares_moments(f, x):
                self.moments.setdefault(key, []).append(j)
            else:
                self.other.append(j)
        self._stacks = {key: self._stack(key, items, xs[key[0]]) for key, items in self.linear.items()}
        self._terms: Dict[Tuple[int, int, bool], Tuple[Optional[Tuple[int, ...]], MaskTerms]] = {}

    def _normalize(self, j: int, x: Tensor) -> Optional[Tensor]:
        raw = self._raw[j]
        if raw is None:
            return None
        key = (id(raw), x.dim())
        if key not in self._normalized:  # the stored raw mask keeps its id from being reused
            self._normalized[key] = (raw, normalize_mask(raw, x, self.features[j].name))
        return self._normalized[key][1]

    def _stack(self, key: Tuple[int, int, bool], items: List[Tuple[int, Tensor]], x: Tensor):
        ids = (tuple(id(self.features[j]) for j, _ in items), tuple(x.shape[1:]), x.dtype, x.device)
        if self._cache is not None and ids in self._cache:
            rt, r2t, _ = self._cache[ids]
        else:
            rt = torch.stack([r.reshape(-1) for _, r in items], dim=1)
            r2t = rt * rt
            if self._cache is not None:
                if len(self._cache) >= 16:
                    self._cache.clear()
                # The entry keeps its features alive, so their ids are not reused while it
                # exists (a new feature at a freed address would read another's directions).
                self._cache[ids] = (rt, r2t, tuple(self.features[j] for j, _ in items))
        m = self.masks[items[0][0]]
        if m is None and key[2]:  # centred over the whole input
            m = torch.ones_like(x[:1, :1])
        if m is not None and m.shape[0] == 1 and not key[2]:
            rt = rt * m.expand(1, *x.shape[1:]).reshape(-1, 1)  # a shared mask folds into R
            return rt, rt * rt, None
        if m is not None:
            m = m.expand(x.shape[0], *x.shape[1:]).reshape(x.shape[0], -1)
        return rt, r2t, m

    def _shared_terms(self, key: Tuple[int, int, bool], rows: Optional[Tensor]) -> MaskTerms:
        """The mask terms of group ``key`` for ``rows``: kept while the rows stay the same."""
        ids = None if rows is None else tuple(rows.tolist())
        held = self._terms.get(key)
        if held is None or held[0] != ids:
            held = self._terms[key] = (ids, {})
        return held[1]

    def __call__(self, xs: Tuple[Tensor, ...], rows: Optional[Tensor] = None) -> FeatureGradients:
        """Gradients at ``xs``, the batch's rows ``rows`` (None: all) at possibly moved points."""
        out = FeatureGradients(len(self.features))
        for key, items in self.linear.items():
            rt, r2t, m = self._stacks[key]
            i, channels = key[0], xs[key[0]].shape[1] if key[2] else 0
            m = take_rows(m, rows, self.n, lists=False)
            out.linear.append(LinearGroup(i, [j for j, _r in items], rt, r2t, m, channels,
                                          self._shared_terms(key, rows)))
        for (i, _), cols in self.moments.items():
            x = xs[i].detach()
            moments = CoordinateMoments(x, take_rows(self.masks[cols[0]], rows, self.n, lists=False))
            for j in cols:
                g = self.features[j].moment_gradient(moments)
                if g is None:
                    mask = take_rows(self.masks[j], rows, self.n, lists=False)
                    g = _generic_gradient(self.features[j], x, mask)
                out.dense[j] = (i, _flat_rows(g, x))
        for j in self.other:
            i = self.features[j].input_index
            x = xs[i].detach()
            mask = take_rows(self.masks[j], rows, self.n, lists=False)
            out.dense[j] = (i, _flat_rows(_generic_gradient(self.features[j], x, mask), x))
        return out


def _generic_gradient(f: Feature, x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``f.gradient`` with clear errors for a gradient that cannot be computed or is misshapen."""
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
    return g


def _flat_rows(g: Tensor, x: Tensor) -> Tensor:
    """``(1 or n, d)``: a gradient expanded over the batch is kept as one row."""
    if g.shape[0] > 1 and g.stride(0) == 0:
        g = g[:1]
    return g.reshape(g.shape[0], -1).to(x.dtype)


# ---------------------------------------------------------------- the squared cosine
def unit_basis(grad: Tensor) -> Tuple[Tensor, Tensor]:
    """``(basis (n, 1, D), defined (n,))``: the unit gradient, zero where it is undefined."""
    norm = torch.linalg.vector_norm(grad, dim=1)
    defined = (norm > 0) & torch.isfinite(norm)
    safe = torch.where(defined, norm, torch.ones_like(norm))
    basis = grad / safe[:, None]
    if not bool(defined.all()):
        basis = torch.where(defined[:, None], basis, torch.zeros_like(basis))
    return basis[:, None], defined


def measure(basis: Tensor, defined: Tensor, grads: FeatureGradients, blocks: Sequence[slice]) -> Tensor:
    """``|B g|^2 / |g|^2`` for every example and feature, ``(n, m)``, NaN where undefined.

    ``basis`` ``(n, k, D)`` has orthonormal rows over all inputs concatenated (zero rows pad);
    with one row, the unit model gradient, this is the squared cosine of section 2.1, with
    several the projection ratio of section 2.4 (docs/definitions.md). ``blocks[i]`` is input
    ``i``'s slice of ``D``; a feature's gradient is zero outside its input's block.
    """
    n, dtype = basis.shape[0], basis.dtype
    s = torch.full((n, grads.n_features), float("nan"), dtype=dtype, device=basis.device)
    for j, (i, g) in grads.dense.items():
        g = g.to(torch.promote_types(dtype, g.dtype))
        b = basis[:, :, blocks[i]].to(g.dtype)
        norm_g = torch.linalg.vector_norm(g, dim=1).square()
        if g.shape[0] == 1:
            dots = b @ g[0]  # (n, k)
            norm_g = norm_g.expand(n)
        else:
            dots = (b * g[:, None, :]).sum(-1)  # several times faster than a (d x 1) bmm
        s[:, j] = projection_ratio((dots * dots).sum(1), norm_g, defined).to(dtype)
    for grp in grads.linear:
        # <b, r * m> = <b * m, r> and |r * m|^2 = m^2 . r^2: matmuls, no (n, M, d).
        dots, norm_g = grp.terms(basis[:, :, blocks[grp.input_index]].to(grp.directions.dtype))
        norm_g = norm_g.expand(n, -1)
        s[:, grp.columns] = projection_ratio((dots * dots).sum(1), norm_g, defined[:, None]).to(dtype)
    return s


def differentiable_squared_cosines(
    grad_f: Dict[int, Tensor], norm_f: Tensor, grads: FeatureGradients
) -> Tuple[Tensor, Tensor, Tensor]:
    """Squared cosines that autograd can differentiate, for training.

    Args:
        grad_f: Model input gradient per input index, ``(n, d_i)`` (part of the graph).
        norm_f: ``|grad f|^2`` over all inputs, ``(n,)``.
        grads: Feature gradients (constants).

    Returns:
        ``(S, undefined, feature_bad)``, each ``(n, m)``: ``S`` with finite stand-ins where
        undefined (a NaN would poison the backward pass even behind ``torch.where``);
        ``undefined`` where the model's or the feature's gradient is zero or not finite;
        ``feature_bad`` where the feature's is.
    """
    n = norm_f.shape[0]
    dots = norm_f.new_zeros(n, grads.n_features)
    norm_g = norm_f.new_zeros(n, grads.n_features)
    by_input: Dict[int, List[Tuple[int, Tensor]]] = {}
    for j, (i, g) in grads.dense.items():
        by_input.setdefault(i, []).append((j, g))
    zero = norm_f.new_zeros(())
    for i, items in by_input.items():
        cols = [j for j, _ in items]
        g = torch.stack([g.expand(n, -1) for _, g in items], dim=1).to(norm_f.dtype)  # (n, m_i, d_i)
        ng = (g * g).sum(-1)  # NaN and Inf reach the norm: one check of (n, m_i) values
        bad = ~torch.isfinite(ng)
        if bool(bad.any()):
            g = torch.where(bad[..., None], zero, g)
            ng = torch.where(bad, zero, ng)
        dots[:, cols] = torch.bmm(g, grad_f[i].unsqueeze(-1)).squeeze(-1)
        norm_g[:, cols] = ng
    for grp in grads.linear:
        finite = torch.isfinite(grp.directions).all(0)
        if not bool(finite.all()):
            grp = replace(grp, directions=torch.where(finite, grp.directions, 0.0),
                          squares=torch.where(finite, grp.squares, 0.0), shared={})
        d, ng = grp.terms(grad_f[grp.input_index].to(norm_f.dtype))
        dots[:, grp.columns], norm_g[:, grp.columns] = d, ng.expand(n, -1)
    feature_bad = ~(norm_g > 0)
    undefined = feature_bad | ~(norm_f.detach() > 0)[:, None]
    denom = torch.where(undefined, torch.ones_like(norm_g), norm_f[:, None] * norm_g)
    return dots * dots / denom, undefined, feature_bad
