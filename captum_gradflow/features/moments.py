"""Intensity-weighted coordinate moments of signals, images and volumes (docs/definitions.md, 2.7)."""
from __future__ import annotations

from functools import cached_property

from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["CoordinateMoments"]

# Relative eigenvalue gap below which the 3-D aspect ratio is treated as not differentiable.
_DEGENERATE_GAP = 1e-12


class CoordinateMoments:
    """Intensity-weighted first and second moments of pixel or voxel coordinates in a mask.

    Shared by :class:`~captum_gradflow.Extent` and :class:`~captum_gradflow.LogAspectRatio`
    (and by alignment code, which computes both from one instance). With weights
    ``w = m * mean_c x`` and centred coordinates ``p`` (one component per spatial axis), the
    weighted covariance is ``Sigma = sum_i w_i (p_i - mu)(p_i - mu)^T / sum_i w_i`` and
    ``d Sigma / d w_i = ((p_i - mu)(p_i - mu)^T - Sigma) / sum w``.

    Coordinates are separable, so the moments come from per-axis marginal sums (and, for the
    off-diagonal terms, one contraction per pair of axes) and every gradient is a sum of
    per-axis vectors and pairwise outer products: a few passes over the input instead of
    ``(N, prod(spatial), k)`` intermediates. Coordinates are centred and the moments
    accumulated in float64, which keeps ``E[p^2] - E[p]^2`` free of cancellation in float32.
    Everything is differentiable by autograd too.

    The aspect-ratio gradient uses ``d log(l_max / l_min) = tr(A dSigma)`` with
    ``A = v_max v_max^T / l_max - v_min v_min^T / l_min`` (eigenpairs of ``Sigma``): in closed
    form for 2 axes, by ``torch.linalg.eigh`` for 3. Where the largest or smallest eigenvalue
    is degenerate the aspect ratio is not differentiable and its gradient is NaN.

    Args:
        x: Inputs ``(N, C, *spatial)`` with 1, 2 or 3 spatial axes.
        mask: Normalised mask ``(N or 1, 1, *spatial)`` (see
            :func:`~captum_gradflow.features.normalize_mask`), or None for the whole input.

    Examples::

        >>> import torch
        >>> from captum_gradflow.features import CoordinateMoments
        >>> vol = torch.zeros(1, 1, 9, 9, 9)
        >>> vol[0, 0, 2:7, 4, 4] = 1.0  # a line of five voxels along D
        >>> mom = CoordinateMoments(vol, None)
        >>> round(float(mom.extent()), 4), mom.cov.shape
        (1.4142, torch.Size([1, 3, 3]))
    """

    def __init__(self, x: Tensor, mask: Optional[Tensor]) -> None:
        if x.dim() not in (3, 4, 5):
            raise ValueError(
                f"coordinate moments need spatial inputs (N, C, *spatial) with 1-3 spatial axes; "
                f"got shape {tuple(x.shape)}"
            )
        self.x, self.mask = x, mask
        self.k = x.dim() - 2

    # Computed on first use: Brightness reads only x and the mask from a shared instance.
    @cached_property
    def _moments(self) -> Tuple[Tensor, Tensor, List[Tensor]]:
        x, mask, k = self.x, self.mask, self.k
        xm = x[:, 0] if x.shape[1] == 1 else x.mean(dim=1)
        wt = xm if mask is None else mask[:, 0] * xm  # (N, *spatial) intensity weights
        wide = torch.float64
        coords = [torch.arange(n, dtype=x.dtype, device=x.device) - (n - 1) / 2 for n in x.shape[2:]]
        marginals = [_marginal(wt, a).to(wide) for a in range(k)]  # (N, L_a)
        c64 = [c.to(wide) for c in coords]
        total = marginals[0].sum(1)
        mu = [marginals[a] @ c64[a] / total for a in range(k)]
        cov = torch.zeros(x.shape[0], k, k, dtype=wide, device=x.device)
        for a in range(k):
            cov[:, a, a] = marginals[a] @ (c64[a] * c64[a]) / total - mu[a] * mu[a]
            for b in range(a + 1, k):
                # Contract axis b with its coordinate in the input's dtype (as the 2-D
                # implementation always did), then axis a in float64.
                along_b = torch.movedim(wt, b + 1, -1) @ coords[b]
                pair = _marginal(along_b, a).to(wide) @ c64[a]
                cov[:, a, b] = cov[:, b, a] = pair / total - mu[a] * mu[b]
        d = [c64[a][None] - mu[a][:, None] for a in range(k)]  # (N, L_a)
        return cov, total, d

    @property
    def cov(self) -> Tensor:
        """Weighted coordinate covariance, (N, k, k) float64."""
        return self._moments[0]

    @property
    def total(self) -> Tensor:
        """Sum of the intensity weights, (N,) float64."""
        return self._moments[1]

    @property
    def d(self) -> List[Tensor]:
        """Centred coordinates per axis, each (N, L_a) float64."""
        return self._moments[2]

    # -- values ---------------------------------------------------------------------------
    def extent(self) -> Tensor:
        """Radius of gyration ``sqrt(trace Sigma)``, (N,)."""
        return torch.sqrt(torch.diagonal(self.cov, dim1=1, dim2=2).sum(1)).to(self.x.dtype)

    def log_aspect_ratio(self) -> Tensor:
        """``log(l_max / l_min)`` of ``Sigma``, (N,); needs 2 or 3 spatial axes."""
        self._need_two_axes()
        if self.k == 2:
            t, s = self._ts()
            return torch.log((t + s) / (t - s)).to(self.x.dtype)
        lam = torch.linalg.eigvalsh(self.cov)
        return torch.log(lam[:, -1] / lam[:, 0]).to(self.x.dtype)

    # -- gradients ------------------------------------------------------------------------
    def extent_gradient(self) -> Tensor:
        """Closed-form gradient of :meth:`extent` with respect to ``x``, ``x.shape``."""
        # d trace / d w_i = (|p_i - mu|^2 - trace) / W, then the chain rule through sqrt.
        trace = torch.diagonal(self.cov, dim1=1, dim2=2).sum(1)
        scale = (1.0 / (2 * torch.sqrt(trace) * self.total))[:, None]
        terms = [self.d[a] * self.d[a] * scale for a in range(self.k)]
        terms[0] = (self.d[0] * self.d[0] - trace[:, None]) * scale
        return self._to_input(terms, [])

    def log_aspect_ratio_gradient(self) -> Tensor:
        """Closed-form gradient of :meth:`log_aspect_ratio` with respect to ``x``, ``x.shape``."""
        self._need_two_axes()
        a_mat = self._aspect_contraction()
        inv = 1.0 / self.total
        const = sum(a_mat[:, a, a] * self.cov[:, a, a] for a in range(self.k))
        pairs = [(a, b) for a in range(self.k) for b in range(a + 1, self.k)]
        for a, b in pairs:
            const = const + 2 * a_mat[:, a, b] * self.cov[:, a, b]
        const = const * inv
        terms = [(a_mat[:, a, a] * inv)[:, None] * self.d[a] * self.d[a] for a in range(self.k)]
        terms[0] = terms[0] - const[:, None]
        cross = [(a, b, (2 * a_mat[:, a, b] * inv)[:, None] * self.d[a]) for a, b in pairs]
        return self._to_input(terms, cross)

    # -- internals ------------------------------------------------------------------------
    def _need_two_axes(self) -> None:
        if self.k < 2:
            raise ValueError(
                "log aspect ratio needs 2 or 3 spatial axes (one axis has a single eigenvalue); "
                f"got inputs of shape {tuple(self.x.shape)}"
            )

    def _ts(self) -> Tuple[Tensor, Tensor]:
        a, b, c = self.cov[:, 0, 0], self.cov[:, 0, 1], self.cov[:, 1, 1]
        t = (a + c) / 2
        s = torch.sqrt(((a - c) / 2) ** 2 + b ** 2)
        return t, s

    def _aspect_contraction(self) -> Tensor:
        """``A`` with ``d log(l_max / l_min) = tr(A dSigma)``, (N, k, k)."""
        if self.k == 2:
            # l = t +- s; t = (a+c)/2, s = sqrt(((a-c)/2)^2 + b^2): exact at every anisotropy.
            a, b, c = self.cov[:, 0, 0], self.cov[:, 0, 1], self.cov[:, 1, 1]
            t, s = self._ts()
            dls = 2 * t / (t * t - s * s)
            dlt = -2 * s / (t * t - s * s)
            da = dlt / 2 + dls * (a - c) / (4 * s)
            dc = dlt / 2 - dls * (a - c) / (4 * s)
            half_db = dls * b / s / 2
            return torch.stack([torch.stack([da, half_db], 1), torch.stack([half_db, dc], 1)], 1)
        lam, vec = torch.linalg.eigh(self.cov)
        v_max, v_min = vec[:, :, -1], vec[:, :, 0]
        a_mat = (v_max[:, :, None] * v_max[:, None, :] / lam[:, -1, None, None]
                 - v_min[:, :, None] * v_min[:, None, :] / lam[:, 0, None, None])
        gap = torch.minimum(lam[:, -1] - lam[:, 1], lam[:, 1] - lam[:, 0])
        degenerate = gap <= _DEGENERATE_GAP * lam[:, -1].abs()
        return torch.where(degenerate[:, None, None], torch.full_like(a_mat, float("nan")), a_mat)

    def _to_input(self, terms: List[Tensor], cross: List[Tuple[int, int, Tensor]]) -> Tensor:
        """``dw = sum_a terms[a] (along a) + sum cross coef_a (along a) * d_b (along b)``, to x."""
        n, ch = self.x.shape[:2]
        spatial = tuple(self.x.shape[2:])
        dt = self.x.dtype
        scale = 1.0 / ch  # w = m * mean_c x
        dw = None
        for a, term in enumerate(terms):
            t = _along((term * scale).to(dt), a, self.k)
            dw = t if dw is None else dw + t
        for a, b, coef in cross:
            dw = dw + _along((coef * scale).to(dt), a, self.k) * _along(self.d[b].to(dt), b, self.k)
        if self.mask is not None:
            dw = dw * self.mask[:, 0]
        return dw[:, None].expand(n, ch, *spatial)


def _marginal(t: Tensor, axis: int) -> Tensor:
    """Sum of ``t`` (N, *spatial) over every spatial axis but ``axis``: (N, L_axis)."""
    others = tuple(d for d in range(1, t.dim()) if d != axis + 1)
    return t.sum(others) if others else t


def _along(v: Tensor, axis: int, k: int) -> Tensor:
    """A per-axis vector (N, L) shaped to broadcast along spatial ``axis`` of k axes."""
    shape = [v.shape[0]] + [1] * k
    shape[axis + 1] = v.shape[1]
    return v.reshape(shape)
