"""The feature base class, callable features and spatial masks (docs/definitions.md, 2.7)."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from captum_gradflow.features.moments import CoordinateMoments

__all__ = ["Feature", "as_feature_list", "checked_direction", "normalize_mask", "overrides", "spatial_rank"]

_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


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
        self._check_input(x, self._floating_values)
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
        self._check_input(x, True)
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

    # -- declarations for alignment code (the general path above is always correct) ----
    def linear_direction(self, x: Tensor) -> Optional[Tensor]:
        """Direction ``r`` of shape ``x.shape[1:]`` with ``gradient(x, m) == r * m``, or None.

        A feature declaring a direction is linear in ``x`` with a gradient that does not
        depend on ``x``: callers may stack many such directions into one matrix. ``m`` is the
        feature's mask broadcast over channels (``r`` itself without a mask). The base class
        declares nothing.
        """
        return None

    def centred_direction(self, x: Tensor) -> Optional[Tensor]:
        """Direction ``r`` (shape ``x.shape[1:]``) with ``gradient(x, m) == (r - c) * m``, or None.

        ``c`` is the mean of ``r`` under the weights ``m^2``, per example and channel: a
        linear feature centred inside a per-example mask (the default noise baseline).
        Alignment code aligns many of them with matrix products, as for
        :meth:`linear_direction`. The base class declares nothing.
        """
        return None

    def moment_gradient(self, moments: "CoordinateMoments") -> Optional[Tensor]:
        """Gradient ``(N, *x.shape[1:])`` from shared coordinate moments, or None.

        ``moments`` holds ``x`` and the normalised mask (:class:`CoordinateMoments`);
        Brightness, Extent and LogAspectRatio answer from them without recomputing the
        moments. The base class declares nothing.
        """
        return None

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

    # A built-in feature's value, like every gradient, is defined on floating-point inputs
    # only; a user's callable may also be evaluated on integer data.
    _floating_values = True

    def _check_input(self, x: Tensor, floating: bool) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"feature '{self.name}' expects a Tensor, got {type(x).__name__}")
        if floating and not x.is_floating_point():
            raise TypeError(
                f"feature '{self.name}' got inputs of dtype {x.dtype}; it needs floating-point "
                "inputs (convert with .float(), scaling integer intensities as you intend)"
            )

    def _mask(self, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        mask = self.mask if mask is None else mask
        return None if mask is None else normalize_mask(mask, x, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _CallableFeature(Feature):
    _floating_values = False

    def __init__(self, fn, name, gradient, mask, input_index, uses_mask) -> None:
        for what, f in (("fn", fn), ("gradient", gradient)):
            if f is not None and not callable(f):
                raise TypeError(
                    f"Feature.from_callable: {what} must be callable (a function of x or of x "
                    f"and mask), got {type(f).__name__}"
                )
        if fn is None:
            raise TypeError("Feature.from_callable: fn must be callable, got None")
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



def overrides(feature: Feature, base: type, names: Sequence[str]) -> bool:
    """Whether ``feature``'s class replaces any of the methods ``names`` of the built-in ``base``.

    A declaration (:meth:`Feature.linear_direction`, :meth:`Feature.moment_gradient`) holds
    only for the built-in implementation; a subclass changing it takes the general path.
    """
    return any(getattr(type(feature), n) is not getattr(base, n) for n in names)


def checked_direction(r: Any, x: Tensor, name: str) -> Tensor:
    """A declared direction (:meth:`Feature.linear_direction`) checked against inputs ``x``.

    Returns ``r`` in ``x``'s dtype and device; a direction that is not a tensor of one
    example's shape ``x.shape[1:]`` raises ``ValueError`` naming the feature.

    Examples::

        >>> import torch
        >>> checked_direction(torch.ones(1, 4, 4), torch.rand(2, 1, 4, 4, dtype=torch.float64), "f").dtype
        torch.float64
    """
    if not isinstance(r, Tensor) or tuple(r.shape) != tuple(x.shape[1:]):
        shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(
            f"direction of feature '{name}' has shape {shape}; inputs have per-example "
            f"shape {tuple(x.shape[1:])}"
        )
    return r.to(dtype=x.dtype, device=x.device)


def spatial_rank(x: Tensor, name: str, what: str = "a mask") -> int:
    """Number of spatial axes (1, 2 or 3) of ``x`` of shape ``(N, C, *spatial)``.

    Raises ``ValueError`` naming the feature and what needed the spatial layout.
    """
    k = x.dim() - 2
    if k < 1:
        raise ValueError(
            f"feature '{name}' expects images of shape (N, C, H, W), volumes (N, C, D, H, W) or "
            f"signals (N, C, L): {what} needs spatial inputs (N, C, *spatial); got "
            f"{'(N, d)' if x.dim() == 2 else 'shape'} {tuple(x.shape)}"
        )
    if k > 3:
        raise ValueError(
            f"feature '{name}' supports at most 3 spatial axes (N, C, D, H, W); got shape {tuple(x.shape)}"
        )
    return k


def normalize_mask(mask: Tensor, x: Tensor, name: str = "feature") -> Tensor:
    """Bring a mask to shape ``(N or 1, 1, *spatial)`` for inputs ``x`` of shape ``(N, C, *spatial)``.

    Accepted forms: ``(N or 1, 1, *spatial)``, ``(N or 1, *spatial)`` and ``spatial``. Raises
    ``ValueError`` naming the problem for non-spatial inputs, a wrong shape or an empty mask.

    Examples::

        >>> import torch
        >>> from captum_gradflow.features import normalize_mask
        >>> normalize_mask(torch.ones(4, 5, 6), torch.rand(2, 1, 4, 5, 6)).shape
        torch.Size([1, 1, 4, 5, 6])
    """
    k = spatial_rank(x, name)
    n, spatial = x.shape[0], tuple(x.shape[2:])
    mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
    if mask.dim() == k:
        mask = mask[None, None]
    elif mask.dim() == k + 1:
        mask = mask[:, None]
    if mask.dim() != k + 2 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != spatial or mask.shape[0] not in (1, n):
        raise ValueError(
            f"mask for feature '{name}' has shape {tuple(mask.shape)}; expected (N, 1, {_AXES[k]}) or "
            f"(1, 1, {_AXES[k]}) with N={n}, spatial shape {spatial}"
        )
    # Two reductions decide the common valid case; the detailed checks run only on failure.
    per_example = mask.flatten(1).sum(1)
    if bool(torch.isfinite(per_example).all() & (per_example > 0).all() & (mask.amin() >= 0)):
        return mask
    if not torch.isfinite(mask).all() or (mask < 0).any():
        raise ValueError(f"mask for feature '{name}' must be finite and non-negative")
    empty = (per_example <= 0).nonzero().flatten().tolist()
    raise ValueError(f"mask for feature '{name}' is empty (sums to 0) for examples {empty}")


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
