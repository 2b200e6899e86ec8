"""Interpretable features: differentiable maps ``g: (N, *S) -> (N,)`` (DESIGN 2.7).

A feature reads one input tensor (``input_index``, default 0, for models with tuple inputs),
returns one value per example, and gives its input gradient in closed form where that is
cheap (``Feature.gradient``) or by autograd otherwise. Image features take a soft mask of
shape ``(N, 1, H, W)`` or ``(1, 1, H, W)`` (``(H, W)`` is accepted too), either at
construction or per call; a per-call mask wins.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

__all__ = [
    "Feature",
    "CoordinateMoments",
    "Brightness",
    "Extent",
    "LogAspectRatio",
    "LinearFeature",
    "NoiseFeature",
]


class Feature(ABC):
    """Base class of interpretable features.

    Subclasses implement :meth:`compute` and may override :meth:`closed_form_gradient`.

    Args:
        name: Name shown in tables and figures.
        mask: Optional soft mask used when a call passes none.
        input_index: Which input tensor the feature reads when the model takes a tuple.

    Examples::

        >>> import torch
        >>> from captum_gradflow import Feature
        >>> contrast = Feature.from_callable(lambda x: x.flatten(1).std(dim=1), "contrast")
        >>> contrast(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4])
    """

    def __init__(self, name: str, mask: Optional[Tensor] = None, input_index: int = 0) -> None:
        self.name = name
        self.mask = mask
        self.input_index = input_index

    # -- to override -------------------------------------------------------------------
    @abstractmethod
    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Feature value, shape ``(N,)``."""

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        """Input gradient in closed form, or ``None`` to fall back on autograd."""
        return None

    # -- public ------------------------------------------------------------------------
    def __call__(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        value = self.compute(x, self._mask(x, mask))
        if not isinstance(value, Tensor):
            raise TypeError(f"feature '{self.name}' returned {type(value).__name__}, not a Tensor")
        if value.dim() == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if value.shape != (x.shape[0],):
            raise ValueError(
                f"feature '{self.name}' returned shape {tuple(value.shape)}; a feature must "
                f"return one value per example, shape ({x.shape[0]},)"
            )
        return value

    def gradient(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Input gradient of the feature for every example, shape ``x.shape``.

        Uses the closed form where the feature has one, autograd otherwise. The result is
        detached; ``x`` and its ``requires_grad`` flag are left as they were.
        """
        m = self._mask(x, mask)
        g = self.closed_form_gradient(x.detach(), m)
        if g is not None:
            if (
                not isinstance(g, Tensor) or g.dim() != x.dim() or g.shape[1:] != x.shape[1:]
                or g.shape[0] not in (1, x.shape[0])
            ):
                shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
                raise ValueError(
                    f"closed-form gradient of feature '{self.name}' has shape {shape}; expected "
                    f"the input's shape {tuple(x.shape)} (or a leading 1)"
                )
            return g.expand_as(x)
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self(xg, mask)
            if not value.requires_grad:
                raise ValueError(
                    f"feature '{self.name}' is not differentiable: its output does not depend "
                    "on the input through autograd (provide a differentiable function or a "
                    "closed_form_gradient)"
                )
            (grad,) = torch.autograd.grad(value.sum(), xg, allow_unused=True)
        if grad is None:
            raise ValueError(f"feature '{self.name}' is not differentiable with respect to its input")
        return grad

    @property
    def has_closed_form(self) -> bool:
        return type(self).closed_form_gradient is not Feature.closed_form_gradient

    @staticmethod
    def from_callable(
        fn: Callable[..., Tensor],
        name: str,
        gradient: Optional[Callable[..., Tensor]] = None,
        mask: Optional[Tensor] = None,
        input_index: int = 0,
        uses_mask: Optional[bool] = None,
    ) -> "Feature":
        """Wrap any differentiable function ``fn(x)`` or ``fn(x, mask)`` as a feature.

        Args:
            fn: Maps ``(N, *S)`` to ``(N,)``.
            name: Name shown in tables.
            gradient: Optional closed-form gradient with the same signature as ``fn``.
            mask: Default mask (a per-call mask wins).
            input_index: Which input tensor the feature reads.
            uses_mask: Whether ``fn`` takes the mask as its second argument. By default, it
                does when its second parameter is named ``mask`` (so ``fn(x, eps=1e-3)`` is
                never handed a mask).
        """
        return _CallableFeature(fn, name, gradient, mask, input_index, uses_mask)

    def _mask(self, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        mask = self.mask if mask is None else mask
        return None if mask is None else normalize_mask(mask, x, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _CallableFeature(Feature):
    def __init__(self, fn, name, gradient, mask, input_index, uses_mask) -> None:
        super().__init__(name, mask, input_index)
        self.fn = fn
        self.fn_gradient = gradient
        if uses_mask is None:
            try:
                params = list(inspect.signature(fn).parameters.values())
            except (TypeError, ValueError):
                params = []
            # A second parameter named ``mask``, or a required one, takes the mask; an optional
            # one (``fn(x, eps=1e-3)``) is left alone.
            uses_mask = len(params) >= 2 and (
                params[1].name == "mask" or params[1].default is inspect.Parameter.empty
            )
        self.takes_mask = bool(uses_mask)

    @property
    def has_closed_form(self) -> bool:
        return self.fn_gradient is not None

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return self.fn(x, mask) if self.takes_mask else self.fn(x)

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        if self.fn_gradient is None:
            return None
        return self.fn_gradient(x, mask) if self.takes_mask else self.fn_gradient(x)


def normalize_mask(mask: Tensor, x: Tensor, name: str = "feature") -> Tensor:
    """Bring a mask to shape ``(N or 1, 1, H, W)`` for images ``x`` of shape ``(N, C, H, W)``.

    Raises ``ValueError`` naming the problem for a wrong shape or an empty mask.
    """
    if x.dim() != 4:
        raise ValueError(f"feature '{name}' expects images of shape (N, C, H, W), got {tuple(x.shape)}")
    n, _, h, w = x.shape
    mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != (h, w) or mask.shape[0] not in (1, n):
        raise ValueError(
            f"mask for feature '{name}' has shape {tuple(mask.shape)}; expected (N, 1, H, W) or "
            f"(1, 1, H, W) with N={n}, H={h}, W={w}"
        )
    # Two reductions decide the common valid case; the detailed checks run only on failure.
    per_example = mask.flatten(1).sum(1)
    if bool(torch.isfinite(per_example).all() & (per_example > 0).all() & (mask.amin() >= 0)):
        return mask
    if not torch.isfinite(mask).all() or (mask < 0).any():
        raise ValueError(f"mask for feature '{name}' must be finite and non-negative")
    empty = (per_example <= 0).nonzero().flatten().tolist()
    raise ValueError(f"mask for feature '{name}' is empty (sums to 0) for examples {empty}")


def _require_mask(mask: Optional[Tensor], x: Tensor, name: str) -> Tensor:
    if x.dim() != 4:
        raise ValueError(f"feature '{name}' expects images of shape (N, C, H, W), got {tuple(x.shape)}")
    # Image features without a mask use the whole image.
    return mask if mask is not None else torch.ones_like(x[:1, :1])


class Brightness(Feature):
    """Mean intensity inside the mask: ``sum(m * mean_c x) / sum(m)``.

    Examples::

        >>> import torch
        >>> from captum_gradflow import Brightness
        >>> x = torch.rand(2, 1, 16, 16)
        >>> Brightness()(x).shape
        torch.Size([2])
    """

    def __init__(self, mask: Optional[Tensor] = None, name: str = "brightness", input_index: int = 0) -> None:
        super().__init__(name, mask, input_index)

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        m = _require_mask(mask, x, self.name)
        w = m * x.mean(dim=1, keepdim=True)
        return w.flatten(1).sum(1) / m.flatten(1).sum(1).expand(x.shape[0])

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        m = _require_mask(mask, x, self.name)
        total = m.flatten(1).sum(1).reshape(-1, 1, 1, 1)
        return (m / (total * x.shape[1])).expand(x.shape[0], *x.shape[1:])


class CoordinateMoments:
    """Intensity-weighted first and second moments of pixel coordinates inside a mask.

    Shared by :class:`Extent` and :class:`LogAspectRatio` (and by
    :class:`~captum_gradflow.FeatureAlignment`, which computes both from one instance).
    Pixel coordinates are separable (row ``r_h``, column ``c_w``), so the moments come from
    row and column sums and every gradient is an outer sum of ``(N, H)`` and ``(N, W)``
    terms: a few passes over the image instead of ``(N, HW, 2)`` intermediates. Coordinates
    are centred and the moments accumulated in float64, which keeps ``E[r^2] - E[r]^2``
    free of cancellation in float32. Everything is differentiable by autograd too.

    Args:
        x: Images ``(N, C, H, W)``.
        mask: Normalised mask ``(N or 1, 1, H, W)`` (see :func:`normalize_mask`) or None.
    """

    def __init__(self, x: Tensor, mask: Optional[Tensor]) -> None:
        n, c, h, w = x.shape
        self.x, self.mask = x, mask
        xm = x[:, 0] if c == 1 else x.mean(dim=1)
        wt = xm if mask is None else mask[:, 0] * xm  # (N, H, W) intensity weights
        wide = torch.float64
        r = torch.arange(h, dtype=x.dtype, device=x.device) - (h - 1) / 2
        col = torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2
        rows, cols = wt.sum(2).to(wide), wt.sum(1).to(wide)  # (N, H), (N, W)
        r64, c64 = r.to(wide), col.to(wide)
        total = rows.sum(1)
        mr, mc = rows @ r64 / total, cols @ c64 / total
        self.a = rows @ (r64 * r64) / total - mr * mr  # row variance
        self.c = cols @ (c64 * c64) / total - mc * mc  # column variance
        self.b = ((wt @ col).to(wide) @ r64) / total - mr * mc  # covariance
        self.total = total
        self.dr = r64[None] - mr[:, None]  # (N, H)
        self.dc = c64[None] - mc[:, None]  # (N, W)

    def extent(self) -> Tensor:
        return torch.sqrt(self.a + self.c).to(self.x.dtype)

    def _ts(self) -> Tuple[Tensor, Tensor]:
        t = (self.a + self.c) / 2
        s = torch.sqrt(((self.a - self.c) / 2) ** 2 + self.b ** 2)
        return t, s

    def log_aspect_ratio(self) -> Tensor:
        t, s = self._ts()
        return torch.log((t + s) / (t - s)).to(self.x.dtype)

    def extent_gradient(self) -> Tensor:
        # d trace / d w_i = (|p_i - mu|^2 - trace) / W, then the chain rule through sqrt.
        trace = self.a + self.c
        scale = 1.0 / (2 * torch.sqrt(trace) * self.total)
        row = (self.dr * self.dr - trace[:, None]) * scale[:, None]
        col = self.dc * self.dc * scale[:, None]
        return self._to_input(row, col, None)

    def log_aspect_ratio_gradient(self) -> Tensor:
        # LAR = log((t+s)/(t-s)); t = (a+c)/2, s = sqrt(((a-c)/2)^2 + b^2) and
        # d cov_ab / d w_i = (d_ia d_ib - cov_ab) / W.
        a, b, c = self.a, self.b, self.c
        t, s = self._ts()
        dls = 2 * t / (t * t - s * s)
        dlt = -2 * s / (t * t - s * s)
        da = dlt / 2 + dls * (a - c) / (4 * s)
        dc = dlt / 2 - dls * (a - c) / (4 * s)
        db = dls * b / s
        inv = 1.0 / self.total
        const = (da * a + dc * c + db * b) * inv
        row = (da * inv)[:, None] * self.dr * self.dr - const[:, None]
        col = (dc * inv)[:, None] * self.dc * self.dc
        return self._to_input(row, col, (db * inv)[:, None] * self.dr)

    def _to_input(self, row: Tensor, col: Tensor, cross_row: Optional[Tensor]) -> Tensor:
        """``dw[n, h, w] = row[n, h] + col[n, w] (+ cross_row[n, h] * dc[n, w])`` back to x."""
        n, ch, h, w = self.x.shape
        dt = self.x.dtype
        scale = 1.0 / ch  # w = m * mean_c x
        row, col = (row * scale).to(dt)[:, :, None], (col * scale).to(dt)[:, None, :]
        dw = row + col
        if cross_row is not None:
            dw = dw + (cross_row * scale).to(dt)[:, :, None] * self.dc.to(dt)[:, None, :]
        if self.mask is not None:
            dw = dw * self.mask[:, 0]
        return dw[:, None].expand(n, ch, h, w)


class Extent(Feature):
    """Radius of gyration of the intensity-weighted pixel coordinates inside the mask.

    ``sqrt(trace(cov_w(p)))`` in pixels, with weights ``m * mean_c x`` (intended for
    non-negative intensities).

    Examples::

        >>> import torch
        >>> from captum_gradflow import Extent
        >>> Extent()(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2])
    """

    def __init__(self, mask: Optional[Tensor] = None, name: str = "extent", input_index: int = 0) -> None:
        super().__init__(name, mask, input_index)

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return CoordinateMoments(x, _require_mask(mask, x, self.name)).extent()

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return CoordinateMoments(x, _require_mask(mask, x, self.name)).extent_gradient()


class LogAspectRatio(Feature):
    """``log(lambda_max / lambda_min)`` of the intensity-weighted coordinate covariance.

    0 for an isotropic blob, larger for an elongated one. At exact isotropy the feature is
    not differentiable and its gradient is NaN (so alignments there are reported undefined).

    Examples::

        >>> import torch
        >>> from captum_gradflow import LogAspectRatio
        >>> LogAspectRatio()(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2])
    """

    def __init__(self, mask: Optional[Tensor] = None, name: str = "log_aspect_ratio", input_index: int = 0) -> None:
        super().__init__(name, mask, input_index)

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return CoordinateMoments(x, _require_mask(mask, x, self.name)).log_aspect_ratio()

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return CoordinateMoments(x, _require_mask(mask, x, self.name)).log_aspect_ratio_gradient()


class LinearFeature(Feature):
    """``g(x) = <r, x>`` for a fixed direction ``r`` of the shape of one example.

    Its gradient is ``r`` itself (times the mask, if one is given), with no backward pass.

    Examples::

        >>> import torch
        >>> from captum_gradflow import LinearFeature
        >>> g = LinearFeature(torch.ones(1, 4, 4), name="sum")
        >>> g(torch.ones(3, 1, 4, 4))
        tensor([16., 16., 16.])
    """

    def __init__(
        self,
        direction: Optional[Tensor],
        name: str = "linear",
        mask: Optional[Tensor] = None,
        input_index: int = 0,
    ) -> None:
        super().__init__(name, mask, input_index)
        self._direction = direction

    def direction(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Effective direction, shape ``(1 or N, *S)`` (per example only with a per-example mask)."""
        r = self.base_direction(x)
        if tuple(r.shape) != tuple(x.shape[1:]):
            raise ValueError(
                f"direction of feature '{self.name}' has shape {tuple(r.shape)}; inputs have "
                f"per-example shape {tuple(x.shape[1:])}"
            )
        r = r.to(dtype=x.dtype, device=x.device)[None]
        m = self._mask(x, mask)
        return r if m is None else r * m

    def base_direction(self, x: Tensor) -> Tensor:
        return self._direction

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return (self.direction(x, mask) * x).flatten(1).sum(1)

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return self.direction(x, mask)


class NoiseFeature(LinearFeature):
    """A random linear feature ``<r, x>`` used as the noise baseline (DESIGN 2.3).

    ``r`` is drawn from a seeded standard normal of the example's shape, optionally smoothed
    over the last two (spatial) dimensions with a Gaussian of ``smooth_sigma`` pixels so its
    spatial scale matches the features, and restricted to ``mask``. It is unit-norm before
    masking.

    Examples::

        >>> import torch
        >>> from captum_gradflow import NoiseFeature
        >>> noise = [NoiseFeature(seed=j, smooth_sigma=2.0) for j in range(32)]
        >>> noise[0](torch.rand(4, 1, 16, 16)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        seed: int,
        mask: Optional[Tensor] = None,
        smooth_sigma: Optional[float] = None,
        name: Optional[str] = None,
        input_index: int = 0,
    ) -> None:
        super().__init__(None, name or f"noise_{seed}", mask, input_index)
        self.seed = seed
        self.smooth_sigma = smooth_sigma
        self._cache: Dict[Tuple, Tensor] = {}

    def base_direction(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(int(self.seed))
            r = torch.randn(tuple(x.shape[1:]), generator=gen, dtype=torch.float64)
            if self.smooth_sigma:
                sigma = [0.0] * (r.dim() - 2) + [float(self.smooth_sigma)] * min(2, r.dim())
                r = torch.from_numpy(np.ascontiguousarray(gaussian_filter(r.numpy(), sigma=sigma)))
            r = r / r.norm()
            self._cache[key] = r.to(dtype=x.dtype, device=x.device)
        return self._cache[key]


def as_feature_list(features: Union[Feature, Sequence[Feature]]) -> List[Feature]:
    """A feature or a sequence of them as a list, with errors naming the problem."""
    if isinstance(features, Feature):
        return [features]
    if not isinstance(features, (list, tuple)):
        raise TypeError(f"features must be a Feature or a sequence of Features, got {type(features).__name__}")
    if len(features) == 0:
        raise ValueError("features is empty: give at least one Feature to align with")
    for f in features:
        if not isinstance(f, Feature):
            raise TypeError(
                f"features must be Feature objects (use Feature.from_callable for a function), "
                f"got {type(f).__name__}"
            )
    return list(features)


def noise_features(
    n: int,
    seed: int = 0,
    mask: Optional[Tensor] = None,
    smooth_sigma: Optional[float] = None,
    input_index: int = 0,
) -> list:
    """``n`` seeded :class:`NoiseFeature` objects (seeds ``seed .. seed + n - 1``)."""
    return [
        NoiseFeature(seed + j, mask=mask, smooth_sigma=smooth_sigma, input_index=input_index)
        for j in range(n)
    ]
