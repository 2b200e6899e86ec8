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
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

__all__ = [
    "Feature",
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
    ) -> "Feature":
        """Wrap any differentiable function ``fn(x)`` or ``fn(x, mask)`` as a feature.

        Args:
            fn: Maps ``(N, *S)`` to ``(N,)``. If it takes two parameters it receives the mask.
            name: Name shown in tables.
            gradient: Optional closed-form gradient with the same signature as ``fn``.
        """
        return _CallableFeature(fn, name, gradient, mask, input_index)

    def _mask(self, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        mask = self.mask if mask is None else mask
        return None if mask is None else normalize_mask(mask, x, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _CallableFeature(Feature):
    def __init__(self, fn, name, gradient, mask, input_index) -> None:
        super().__init__(name, mask, input_index)
        self.fn = fn
        self.fn_gradient = gradient
        try:
            params = inspect.signature(fn).parameters
            self.takes_mask = len(params) >= 2
        except (TypeError, ValueError):
            self.takes_mask = False

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
    if not torch.isfinite(mask).all() or (mask < 0).any():
        raise ValueError(f"mask for feature '{name}' must be finite and non-negative")
    empty = (mask.flatten(1).sum(1) <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask for feature '{name}' is empty (sums to 0) for examples {empty}")
    return mask


def _require_mask(mask: Optional[Tensor], x: Tensor, name: str) -> Tensor:
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


class _Moments:
    """Intensity-weighted second moments of pixel coordinates, shared by Extent and aspect."""

    def __init__(self, x: Tensor, mask: Tensor) -> None:
        n, c, h, w = x.shape
        self.channels = c
        self.mask = mask
        self.w = (mask * x.mean(dim=1, keepdim=True)).reshape(n, h * w)
        rows = torch.arange(h, dtype=x.dtype, device=x.device).repeat_interleave(w)
        cols = torch.arange(w, dtype=x.dtype, device=x.device).repeat(h)
        self.p = torch.stack([rows, cols], dim=1)  # (HW, 2)
        self.total = self.w.sum(1)  # (N,)
        self.mu = (self.w @ self.p) / self.total[:, None]  # (N, 2)
        self.d = self.p[None] - self.mu[:, None]  # (N, HW, 2)
        wd = self.w[..., None] * self.d
        self.cov = torch.einsum("nka,nkb->nab", wd, self.d) / self.total[:, None, None]

    def to_input(self, dw: Tensor, shape: torch.Size) -> Tensor:
        """Chain rule from the weights ``w = m * mean_c x`` back to ``x``."""
        n, c, h, w = shape
        return (dw.reshape(n, 1, h, w) * self.mask / c).expand(n, c, h, w)


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
        mom = _Moments(x, _require_mask(mask, x, self.name))
        return torch.sqrt(mom.cov.diagonal(dim1=1, dim2=2).sum(-1))

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        mom = _Moments(x, _require_mask(mask, x, self.name))
        trace = mom.cov.diagonal(dim1=1, dim2=2).sum(-1)  # (N,)
        # d trace / d w_i = (|p_i - mu|^2 - trace) / W
        dtrace = ((mom.d ** 2).sum(-1) - trace[:, None]) / mom.total[:, None]
        dw = dtrace / (2 * torch.sqrt(trace))[:, None]
        return mom.to_input(dw, x.shape)


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

    @staticmethod
    def _ts(cov: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
        t = (a + c) / 2
        s = torch.sqrt(((a - c) / 2) ** 2 + b ** 2)
        return a, b, c, t, s

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        mom = _Moments(x, _require_mask(mask, x, self.name))
        _, _, _, t, s = self._ts(mom.cov)
        return torch.log((t + s) / (t - s))

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        mom = _Moments(x, _require_mask(mask, x, self.name))
        a, b, c, t, s = self._ts(mom.cov)
        # LAR = log((t+s)/(t-s)); t = (a+c)/2, s = sqrt(((a-c)/2)^2 + b^2)
        dls = 2 * t / (t * t - s * s)
        dlt = -2 * s / (t * t - s * s)
        da = dlt / 2 + dls * (a - c) / (4 * s)
        dc = dlt / 2 - dls * (a - c) / (4 * s)
        db = dls * b / s
        dr, dcol = mom.d[..., 0], mom.d[..., 1]
        dw = (
            da[:, None] * (dr * dr - a[:, None])
            + dc[:, None] * (dcol * dcol - c[:, None])
            + db[:, None] * (dr * dcol - b[:, None])
        ) / mom.total[:, None]
        return mom.to_input(dw, x.shape)


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
