"""Adapters to the neighbouring libraries: Zennit attributors as Captum attributions, and
this package's attributions as Quantus ``explain_func``.

zennit and quantus are imported lazily, only when used: importing them pulls torchvision,
which cannot load on every machine.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_gradflow._common import TargetType, TensorOrTuple, check_finite, format_inputs, format_output, select_target


def _one_hot_output(target: TargetType) -> Callable[[Tensor], Tensor]:
    """Zennit ``attr_output``: 1 at ``F(x)[target]`` of each example, 0 elsewhere.

    Built as the gradient of ``sum select_target(output, target)`` with respect to the output,
    so every Captum target form (and its errors) behaves exactly as in ``select_target``.
    """

    def attr_output(output: Tensor) -> Tensor:
        out = output.detach().requires_grad_(True)
        with torch.enable_grad():
            (one_hot,) = torch.autograd.grad(select_target(out, target).sum(), out)
        return one_hot

    return attr_output


class ZennitAttribution(Attribution):
    r"""A Zennit attributor (LRP composites, zennit's SmoothGrad, ...) as a Captum attribution.

    ``forward_func`` is the attributor's model. ``target`` becomes a one-hot output relevance
    (``attr_output``) with every Captum target form. Zennit explains one input tensor, so only
    single-tensor inputs (or a 1-tuple) are accepted. Because it is a Captum ``Attribution``
    built on the model, :class:`~captum_gradflow.GADWrapper` can wrap it: re-binding copies the
    attributor with its model swapped for each support model. zennit itself is imported only
    when an adapter is built.

    Args:
        attributor: A ``zennit.attribution.Attributor`` (e.g. ``Gradient(model, composite)``).

    Examples::

        >>> from zennit.attribution import Gradient  # doctest: +SKIP
        >>> from zennit.composites import EpsilonPlusFlat  # doctest: +SKIP
        >>> lrp = ZennitAttribution(Gradient(model, composite=EpsilonPlusFlat()))  # doctest: +SKIP
        >>> lrp.attribute(x, target=0).shape == x.shape  # doctest: +SKIP
        True
    """

    def __init__(self, attributor: Any) -> None:
        from zennit.attribution import Attributor

        if not isinstance(attributor, Attributor):
            raise TypeError(
                f"ZennitAttribution needs a zennit.attribution.Attributor, got {type(attributor).__name__}"
            )
        if not isinstance(attributor.model, nn.Module):
            raise TypeError(f"the attributor's model must be an nn.Module, got {type(attributor.model).__name__}")
        super().__init__(attributor.model)
        self.attributor = attributor

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTuple:
        r"""Zennit's attribution of ``F(x)[target]``, detached, same shape and form as ``inputs``.

        Args:
            inputs: One tensor ``(N, *S)`` (or a 1-tuple of it).
            target: Captum target: int, tuple, list, tensor, or None for one-output models.
            additional_forward_args: Not supported (zennit calls ``model(x)``); must be None.

        Returns:
            The attribution, a tensor (or a 1-tuple if ``inputs`` was one).
        """
        if additional_forward_args is not None:
            raise ValueError("ZennitAttribution does not support additional_forward_args: zennit calls model(x)")
        xs, was_tuple = format_inputs(inputs)
        if len(xs) != 1:
            raise ValueError(f"ZennitAttribution explains a single input tensor, got a tuple of {len(xs)}")
        if not xs[0].is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got {xs[0].dtype}")
        check_finite(xs)
        # a fresh leaf: zennit sets requires_grad on what it is given, and the caller's flag must stay
        x = xs[0].detach().requires_grad_(True)
        with torch.enable_grad():
            _, attribution = self.attributor(x, attr_output=_one_hot_output(target))
        return format_output(was_tuple, (attribution.detach(),))
