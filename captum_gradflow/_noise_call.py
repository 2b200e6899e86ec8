"""How FeatureAlignment and GradientFlowAlignment get their noise features.

One call, :func:`path_with_noise`, used by both ``compare_to_noise`` methods; it forwards the
noise arguments verbatim to :func:`captum_gradflow.noise.make_noise`, which decides the
construction (docs/definitions.md, section 2.3), and remembers the drawn noise across calls.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

from torch import Tensor

from captum_gradflow.features import Feature
from captum_gradflow.gradients import GradientPath
from captum_gradflow.noise import make_noise

__all__ = ["cached_noise", "check_noise_arguments", "path_with_noise"]

NoiseMask = Union[str, Tensor, None]
Sigma = Union[str, float, None]


def check_noise_arguments(n_noise: Any, noise_input_index: int, n_inputs: int) -> None:
    """Errors naming the problem for the arguments every ``compare_to_noise`` shares."""
    if isinstance(n_noise, bool) or not isinstance(n_noise, int) or n_noise < 1:
        raise ValueError(f"n_noise must be a positive int, got {n_noise!r}")
    if not 0 <= noise_input_index < n_inputs:
        raise IndexError(f"noise_input_index {noise_input_index} is out of range for {n_inputs} inputs")


def _key(value: Any) -> Any:
    if isinstance(value, Tensor):
        return ("tensor", id(value))
    return tuple(value) if isinstance(value, list) else value


def cached_noise(cache: dict, features: Sequence[Feature], x: Tensor, mask: Optional[Tensor],
                 n_noise: int, seed: int, noise_mask: NoiseMask, smooth_sigma: Sigma,
                 center_noise: Optional[bool], input_index: int
                 ) -> Tuple[List[Feature], Optional[Tensor], str]:
    """``(noise features, their mask, a description)`` from :func:`make_noise`, remembered in
    ``cache`` across calls of one attribution object.

    Drawing and smoothing 32 directions costs more than aligning with them, and the stacked
    directions of the same noise objects are reused too. Tensors are keyed by identity; the
    cache keeps them alive, so an identity is never reused while its entry exists.
    """
    # make_noise may derive the noise from the call's mask or from the features' own masks.
    own_masks = tuple(f.mask for f in features)
    key = (n_noise, int(seed), _key(noise_mask), _key(smooth_sigma), center_noise, input_index,
           _key(mask), tuple(_key(m) for m in own_masks), tuple(x.shape[1:]), x.dtype, x.device)
    if key not in cache:
        if len(cache) >= 8:
            cache.clear()
        ns = make_noise(features, x, mask, n_noise, seed, noise_mask, smooth_sigma, center_noise,
                        input_index)
        drawn = (list(ns.features), ns.mask, ns.description)
        cache[key] = (drawn, (mask, noise_mask, own_masks))  # alive: their ids stay unique
    return cache[key][0]


def path_with_noise(holder: Any, features: Sequence[Feature], xs: Tuple[Tensor, ...],
                    mask: Optional[Tensor], n_noise: int, seed: int, noise_mask: NoiseMask,
                    smooth_sigma: Sigma, center_noise: Optional[bool], input_index: int
                    ) -> Tuple[GradientPath, str]:
    """One gradient path for the features (columns ``0..m-1``) and the noise after them.

    ``holder`` is the attribution object, whose ``_noise_cache`` and ``_matrix_cache`` keep
    the noise and its stacked directions across calls. Returns the path and the
    construction's description.
    """
    noise, nmask, construction = cached_noise(
        holder._noise_cache, features, xs[input_index], mask, n_noise, seed, noise_mask,
        smooth_sigma, center_noise, input_index)
    masks = [mask] * len(features) + [nmask] * len(noise)
    return GradientPath(list(features) + noise, xs, masks, cache=holder._matrix_cache), construction
