"""The map toolkit: channel reduction, per-example normalisation and top-q selection.

One home for what GAD's fusion (docs/definitions.md, section 3.3) and the region metrics
(section 4) do to an attribution map before they compare or measure it. Maps are
``(N, C, *spatial)`` with one, two or three spatial axes (signals, images, volumes); a 2-D
``(N, D)`` map has no channel axis and each entry is its own location. Because fusion and the
region metrics select pixels with the same function, a GAD map's kept pixels are a subset of
its base map's, and "RC <= 1" holds by construction.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "Reduce",
    "TopQ",
    "check_q",
    "check_reduce",
    "normalize_per_example",
    "reduce_channels",
    "reduce_channels_numpy",
    "top_k_count",
    "top_k_numpy",
    "top_q_mask",
]

Reduce = Union[str, Callable[[Tensor], Tensor]]

#: Names of the built-in channel reductions.
REDUCTIONS = ("sum_abs", "abs_sum", "sum", "max_abs", "none")


class TopQ(NamedTuple):
    """Result of :func:`top_q_mask`: the kept locations and the degenerate maps.

    ``mask`` has the shape of the maps; ``degenerate`` is ``(N,)`` bool, the maps that are
    constant or not finite (a finite constant positive map keeps every location, since all
    tie with the cut; a non-finite map keeps none).
    """

    mask: Tensor
    degenerate: Tensor


def check_reduce(reduce: Reduce) -> None:
    """Raise a clear error for a ``reduce`` that is neither a built-in name nor a callable."""
    if not callable(reduce) and reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {list(REDUCTIONS)} or a callable, got {reduce!r}")


def check_q(q: float, what: str = "q is the fraction of locations kept per map") -> None:
    """Raise a clear error for a ``q`` outside ``(0, 1]``."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise ValueError(f"{what} and must be in (0, 1], got {q!r}")


def reduce_channels(attr: Tensor, reduce: Reduce = "sum_abs", keepdim: bool = False) -> Tensor:
    """One importance value per location: ``(N, C, *spatial) -> (N, *spatial)``.

    Args:
        attr: Maps ``(N, C, *spatial)``; a 2-D ``(N, D)`` map has no channel axis (each
            entry is its own location, so ``"sum_abs"`` is then ``abs``).
        reduce: ``"sum_abs"`` (sum of absolute values over channels, the default),
            ``"abs_sum"`` (absolute value of the signed sum), ``"sum"`` (signed sum),
            ``"max_abs"``, ``"none"`` (the map must have one channel), or a callable that
            receives ``(N, C, *spatial)`` and returns ``(N, *spatial)`` or
            ``(N, 1, *spatial)``.
        keepdim: Keep a channel axis of size one: ``(N, 1, *spatial)``.

    Returns:
        The reduced maps, ``(N, *spatial)`` (``(N, 1, *spatial)`` with ``keepdim``; ``(N, D)``
        for ``(N, D)`` maps).

    Examples::

        >>> import torch
        >>> from captum_gradflow.maps import reduce_channels
        >>> reduce_channels(torch.tensor([[[[1.0]], [[-2.0]]]])).tolist()
        [[[3.0]]]
        >>> reduce_channels(torch.tensor([[[[1.0]], [[-2.0]]]]), "abs_sum").tolist()
        [[[1.0]]]
    """
    check_reduce(reduce)
    if attr.dim() < 2:
        raise ValueError(
            "an attribution map needs a batch and at least one more dimension, got "
            f"{tuple(attr.shape)}"
        )
    flat = attr.dim() == 2
    a = attr.unsqueeze(1) if flat else attr
    if callable(reduce):
        out = _call_reduce(reduce, a)
    elif reduce == "sum_abs":
        out = a.abs().sum(1)
    elif reduce == "abs_sum":
        out = a.sum(1).abs()
    elif reduce == "sum":
        out = a.sum(1)
    elif reduce == "max_abs":
        out = a.abs().amax(1)
    else:
        if a.shape[1] != 1:
            raise ValueError(f'reduce="none" needs one channel, got {a.shape[1]}')
        out = a[:, 0]
    return out.unsqueeze(1) if keepdim and not flat else out


def _call_reduce(reduce: Callable[[Tensor], Tensor], a: Tensor) -> Tensor:
    out = reduce(a)
    expected = (a.shape[0], *a.shape[2:])
    if isinstance(out, Tensor) and tuple(out.shape) == (a.shape[0], 1, *a.shape[2:]):
        out = out[:, 0]
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"reduce returned {got}; a reduce callable must return a tensor of shape {expected} "
            f"or {(a.shape[0], 1, *a.shape[2:])}"
        )
    return out


def normalize_per_example(r: Tensor) -> "tuple[Tensor, Tensor]":
    """Min-max normalise each example to [0, 1].

    Returns ``(normalised, degenerate)``; ``degenerate`` marks examples whose map is constant
    or not finite (their normalisation is undefined: rows of NaN).

    Examples::

        >>> import torch
        >>> from captum_gradflow.maps import normalize_per_example
        >>> normalize_per_example(torch.tensor([[1.0, 3.0, 2.0]]))[0].tolist()
        [[0.0, 1.0, 0.5]]
    """
    flat = r.reshape(r.shape[0], -1)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = hi - lo
    degenerate = ~torch.isfinite(flat).all(dim=1) | ~(span.reshape(-1) > 0)
    out = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(degenerate[:, None], torch.full_like(out, float("nan")), out)
    return out.reshape(r.shape), degenerate


def top_q_mask(r: Tensor, q: float = 0.2, threshold: Optional[float] = None) -> TopQ:
    """Keep each example's top ``q`` fraction of locations (or those above ``threshold``).

    With ``k = ceil(q * P)`` for ``P`` locations per example, a location is kept when its value
    is at least the ``k``-th largest value and strictly positive: ties with the cut are all
    kept (deterministic, translation invariant), and a location whose value is exactly 0 (or
    negative) is never kept, so an already sparse map keeps only its support. A map with NaN
    or Inf keeps nothing. Fusion applies this to maps shifted by their minimum, which becomes 0
    and is therefore never kept.

    Args:
        r: Reduced maps ``(N, ...)``; the selection runs over all non-batch entries.
        q: Fraction kept, in ``(0, 1]``; ignored with ``threshold``.
        threshold: Keep the locations whose value is above this non-negative number.

    Returns:
        :class:`TopQ` ``(mask, degenerate)``.

    Examples::

        >>> import torch
        >>> from captum_gradflow.maps import top_q_mask
        >>> top_q_mask(torch.tensor([[0.0, 1.0, 1.0, 0.5]]), q=0.25).mask.tolist()
        [[False, True, True, False]]
    """
    flat = r.detach().reshape(r.shape[0], -1)
    p = flat.shape[1]
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    finite = torch.isfinite(lo) & torch.isfinite(hi)  # NaN and Inf reach the extremes
    degenerate = ~finite | ~(hi > lo)
    k = top_k_count(q, p)
    if threshold is not None:
        mask = flat > threshold
    elif flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        mask = torch.from_numpy(top_k_numpy(flat.numpy(), k))
    else:
        ranked = torch.nan_to_num(flat, nan=-math.inf)
        cut = torch.kthvalue(ranked, p - k + 1, dim=1, keepdim=True).values
        mask = (flat >= cut) & (flat > 0)
    if not bool(finite.all()):
        mask &= finite[:, None]
    return TopQ(mask.reshape(r.shape), degenerate)


def top_k_count(q: float, p: int) -> int:
    """``k = ceil(q * p)``, at least 1: how many of ``p`` locations the top ``q`` keeps
    (before ties); the ``1e-9`` keeps ``q * p`` that floating point puts just above an
    integer on that integer."""
    return max(1, math.ceil(q * p - 1e-9))


def top_k_numpy(flat: np.ndarray, k: int) -> np.ndarray:
    """``(N, P)`` bool: per row, the values at least the ``k``-th largest and positive.

    NumPy's introselect beats ``torch.kthvalue`` on CPU on 64 uniform 224 x 224 maps with ``k``
    a fifth (measured on a shared 2-core machine): 7 to 12 times faster on one torch thread,
    4 to 5.5 times on two. Locations
    that can never be kept get distinct negative values first: a sparse map's many equal zeros
    would otherwise make the selection crawl.
    """
    n, p = flat.shape
    positive = flat > 0
    if n == 0:
        return positive
    distinct = np.where(positive, flat, -1.0 - np.arange(p, dtype=flat.dtype))
    distinct.partition(p - k, axis=1)
    cut = distinct[:, p - k]
    with np.errstate(invalid="ignore"):
        return (flat >= cut[:, None]) & positive


def reduce_channels_numpy(
    attr: Tensor, reduce: Reduce = "sum_abs", out: Optional[np.ndarray] = None
) -> np.ndarray:
    """:func:`reduce_channels` of ``(N, C, *spatial)`` maps as a NumPy array (into ``out``).

    The region metrics measure on the CPU in NumPy; the built-in reductions run there too:
    these passes are short, and NumPy's single thread beats torch's thread pool on a busy CPU.
    float64 maps stay float64, everything else becomes float32.
    """
    check_reduce(reduce)
    if callable(reduce) or attr.dim() < 3:
        maps = reduce_channels(attr, reduce).to(device="cpu", dtype=torch.float64).numpy()
        if out is None:
            return maps
        np.copyto(out, maps)
        return out
    dtype = torch.float64 if attr.dtype == torch.float64 else torch.float32
    a = attr.detach().to(device="cpu", dtype=dtype).numpy()
    if reduce == "none" and a.shape[1] != 1:
        raise ValueError(f'reduce="none" needs one channel, got {a.shape[1]}')
    if reduce in ("sum_abs", "max_abs", "abs_sum") and a.shape[1] == 1:
        return np.abs(a[:, 0], out=out)
    if reduce == "sum_abs":
        return np.abs(a).sum(1, out=out)
    if reduce == "max_abs":
        return np.abs(a).max(1, out=out)
    if reduce == "abs_sum":
        return np.abs(a.sum(1), out=out)
    maps = a[:, 0] if a.shape[1] == 1 else a.sum(1)
    if out is None:
        return maps
    np.copyto(out, maps)
    return out
