"""Linear features ``<r, x>`` and the seeded noise directions of the baseline (docs/definitions.md, 2.3)."""
from __future__ import annotations

from numbers import Integral
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from captum_gradflow.features.feature import Feature, checked_direction, overrides

__all__ = ["LinearFeature", "NoiseFeature", "centred", "noise_features", "smooth_direction"]

Sigma = Union[float, Sequence[float]]

_LINEAR_METHODS = ("compute", "closed_form_gradient", "direction")


def smooth_direction(r: Tensor, sigma: Optional[Sigma]) -> Tensor:
    """Gaussian smoothing of one example's direction ``(C, *spatial)`` over every spatial axis.

    Never across channels. ``sigma`` is one width in pixels (voxels) for every spatial axis
    or one per axis; ``None`` or 0 leaves ``r`` as it is. A non-spatial direction ``(d,)``
    cannot be smoothed: ``ValueError``.

    Examples::

        >>> import torch
        >>> from captum_gradflow.features import smooth_direction
        >>> smooth_direction(torch.randn(1, 6, 7, 8, dtype=torch.float64), 1.5).shape
        torch.Size([1, 6, 7, 8])
    """
    sig = sigma_per_axis(sigma, r.dim() - 1, tuple(r.shape))
    if sig is None:
        return r
    out = gaussian_filter(r.detach().cpu().double().numpy(), sigma=[0.0, *sig])
    return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=r.dtype, device=r.device)


def sigma_per_axis(sigma: Optional[Sigma], k: int, shape: Tuple[int, ...]) -> Optional[Tuple[float, ...]]:
    """``sigma`` as one non-negative width per spatial axis (None for no smoothing)."""
    if sigma is None or (not isinstance(sigma, (list, tuple)) and float(sigma) == 0.0):
        return None
    if k < 1:
        raise ValueError(
            f"smooth_sigma needs spatial inputs (N, C, *spatial); got (N, d) with per-example shape {shape}"
        )
    values = [float(s) for s in sigma] if isinstance(sigma, (list, tuple)) else [float(sigma)] * k
    if len(values) != k or not all(v >= 0 for v in values):
        raise ValueError(f"smooth_sigma must be one non-negative width or {k} (one per spatial axis), got {sigma!r}")
    return None if not any(values) else tuple(values)


class LinearFeature(Feature):
    """``g(x) = <r, x>`` for a fixed direction ``r`` of the shape of one example.

    Its gradient is ``r`` itself (times the mask, if one is given), with no backward pass;
    :meth:`linear_direction` declares ``r`` so alignment code can stack many of them.

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
        r = self._checked_direction(x)
        m = self._mask(x, mask)
        return r if m is None else r * m

    def base_direction(self, x: Tensor) -> Tensor:
        return self._direction

    def linear_direction(self, x: Tensor) -> Optional[Tensor]:
        if overrides(self, LinearFeature, _LINEAR_METHODS):
            return None
        return self._checked_direction(x)[0]

    def compute(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return (self.direction(x, mask) * x).flatten(1).sum(1)

    def closed_form_gradient(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return self.direction(x, mask)

    def _checked_direction(self, x: Tensor) -> Tensor:
        """``base_direction(x)`` checked against the input and shaped ``(1, *S)``."""
        return checked_direction(self.base_direction(x), x, self.name)[None]


class NoiseFeature(LinearFeature):
    """A random linear feature ``<r, x>`` used as the noise baseline (docs/definitions.md, 2.3).

    ``r`` is drawn from a seeded standard normal of the example's shape, optionally smoothed
    with a Gaussian of ``smooth_sigma`` pixels (voxels) over every spatial axis (never across
    channels; one width or one per axis) so its spatial scale matches the features, and
    restricted to ``mask``. It is unit-norm before masking.

    With ``center=True`` the in-mask mean of every channel is removed before masking:
    ``(r - c) * m`` with ``c = sum(r m^2) / sum(m^2)`` per channel (the mask's own mean for a
    binary mask). The centred direction is orthogonal to ``m`` itself, the direction that
    smoothed masked noise otherwise shares with every mask-wide feature (brightness). The
    centring follows the mask in effect (a per-call mask wins), so
    :meth:`linear_direction` declares a direction only for no mask or one mask shared by
    the batch, and None for per-example masks.

    Examples::

        >>> import torch
        >>> from captum_gradflow import NoiseFeature
        >>> noise = [NoiseFeature(seed=j, smooth_sigma=2.0) for j in range(32)]
        >>> noise[0](torch.rand(4, 1, 16, 16)).shape
        torch.Size([4])
        >>> mask = torch.zeros(1, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> g = NoiseFeature(0, mask=mask, smooth_sigma=2.0, center=True).gradient(torch.rand(1, 1, 16, 16))
        >>> abs(float((g * mask).sum())) < 1e-6
        True
    """

    def __init__(
        self,
        seed: int,
        mask: Optional[Tensor] = None,
        smooth_sigma: Optional[Sigma] = None,
        name: Optional[str] = None,
        input_index: int = 0,
        center: bool = False,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise TypeError(f"NoiseFeature seed must be an int, got {seed!r}")
        super().__init__(None, name or f"noise_{seed}", mask, input_index)
        self.seed = int(seed)
        self.smooth_sigma = smooth_sigma
        self.center = bool(center)
        self._cache: Dict[Tuple, Tensor] = {}

    def base_direction(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(int(self.seed))
            r = torch.randn(tuple(x.shape[1:]), generator=gen, dtype=torch.float64)
            r = smooth_direction(r, self.smooth_sigma) if self.smooth_sigma is not None else r
            r = r / r.norm()
            self._cache[key] = r.to(dtype=x.dtype, device=x.device)
        return self._cache[key]

    def direction(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        r = self._checked_direction(x)
        m = self._mask(x, mask)
        if self.center:
            r = centred(r, m)
        return r if m is None else r * m

    def linear_direction(self, x: Tensor) -> Optional[Tensor]:
        # A centred direction depends on the mask in effect, which a per-call mask may
        # replace: it is declared by centred_direction instead.
        if self.center or overrides(self, NoiseFeature, _LINEAR_METHODS):
            return None
        return self._checked_direction(x)[0]

    def centred_direction(self, x: Tensor) -> Optional[Tensor]:
        if not self.center or overrides(self, NoiseFeature, _LINEAR_METHODS + ("centred_direction",)):
            return None
        return self._checked_direction(x)[0]


def centred(r: Tensor, m: Optional[Tensor]) -> Tensor:
    """``r - c`` with ``c`` the per-channel mean of ``r`` under weights ``m^2`` (all ones if None).

    The centring of :meth:`Feature.centred_direction`, shared by :class:`NoiseFeature` and
    the stacked noise of :class:`captum_gradflow.gradients.LinearGroup`.

    Examples::

        >>> import torch
        >>> centred(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[1.0, 0.0]]]))
        tensor([[[0., 2.]]])
    """
    dims = tuple(range(2, r.dim()))
    if m is None:
        return r - r.mean(dim=dims, keepdim=True) if dims else r - r.mean()
    w = m * m
    c = (r * w).sum(dim=dims, keepdim=True) / w.sum(dim=dims, keepdim=True)
    return r - c


def noise_features(
    n: int,
    seed: int = 0,
    mask: Optional[Tensor] = None,
    smooth_sigma: Optional[Sigma] = None,
    input_index: int = 0,
    center: bool = False,
) -> List[NoiseFeature]:
    """``n`` seeded :class:`NoiseFeature` objects (seeds ``seed .. seed + n - 1``).

    Examples::

        >>> from captum_gradflow import noise_features
        >>> [f.name for f in noise_features(2, seed=5)]
        ['noise_5', 'noise_6']
    """
    return [
        NoiseFeature(seed + j, mask=mask, smooth_sigma=smooth_sigma, input_index=input_index, center=center)
        for j in range(n)
    ]
