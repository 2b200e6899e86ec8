"""Adapters to the neighbouring libraries: Zennit attributors as Captum attributions, and
this package's attributions as Quantus ``explain_func``.

zennit and quantus are imported lazily, only when used: importing them pulls torchvision,
which cannot load on every machine.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_gradflow._common import TargetType, TensorOrTuple, check_finite, format_inputs, format_output, select_target
from captum_gradflow._checks import check_batch
from captum_gradflow._guard import preserved


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

        Train mode: with BatchNorm or Dropout in train mode the result depends on the batch; the
        call warns once, naming those modules, and restores their buffers and every flag
        afterwards (docs/definitions.md, section 5). Call ``model.eval()`` first for per-example
        results.

        Args:
            inputs: One tensor ``(N, *S)`` (or a 1-tuple of it).
            target: Captum target: int, tuple, list, tensor, or None for one-output models.
            additional_forward_args: Not supported (zennit calls ``model(x)``); must be None.

        Returns:
            The attribution, a tensor (or a 1-tuple if ``inputs`` was one). A model in train
            mode (BatchNorm, Dropout) gets one warning and is restored after the call.
        """
        if additional_forward_args is not None:
            raise ValueError("ZennitAttribution does not support additional_forward_args: zennit calls model(x)")
        xs, was_tuple = format_inputs(inputs)
        if len(xs) != 1:
            raise ValueError(f"ZennitAttribution explains a single input tensor, got a tuple of {len(xs)}")
        check_batch(xs, self.forward_func, "ZennitAttribution.attribute")
        check_finite(xs)
        # a fresh leaf: zennit sets requires_grad on what it is given, and the caller's flag must stay
        x = xs[0].detach().requires_grad_(True)
        with preserved(self.forward_func, xs, "ZennitAttribution.attribute"), torch.enable_grad():
            _, attribution = self.attributor(x, attr_output=_one_hot_output(target))
        return format_output(was_tuple, (attribution.detach(),))


def quantus_explain(
    model: nn.Module,
    inputs: Union[np.ndarray, Tensor],
    targets: Union[np.ndarray, Tensor, int, Sequence[int], None],
    method: Union[None, str, type, Attribution, Callable[..., Any]] = None,
    device: Optional[Union[str, torch.device]] = None,
    method_kwargs: Optional[Dict[str, Any]] = None,
    reduce_axes: Optional[Sequence[int]] = None,
    keepdims: bool = True,
    channel_first: bool = True,
    rebind: bool = True,
    **attribute_kwargs: Any,
) -> np.ndarray:
    r"""Any Captum attribution (this package's included) as a Quantus ``explain_func``.

    Quantus metrics call ``explain_func(model=model, inputs=x_batch, targets=y_batch,
    **explain_func_kwargs)`` with numpy arrays (channel first) and add ``device`` to the
    keyword arguments; this function answers with a numpy attribution of the inputs' shape
    (or reduced over ``reduce_axes``). quantus itself is not imported here.

    ``method`` may be:

    * ``None`` (Captum ``Saliency``), the name of a ``captum.attr`` class, or an
      ``Attribution`` class: built on ``model`` with ``method_kwargs`` (a ``"layer"`` given
      as a string is looked up in ``model``, so layer methods follow the model Quantus
      passes);
    * an ``Attribution`` instance, e.g. a fitted ``GADWrapper``: used as it is. When Quantus
      passes another model than the one it explains (randomisation metrics such as MPRT and
      RandomLogit explain randomised copies), a copy re-bound to that model is used
      (``rebind=True``, modules mapped by name) or a ``ValueError`` is raised
      (``rebind=False``). A fitted ``GADWrapper`` is refitted for that model with the data
      it was fitted on (:meth:`~captum_gradflow.GADWrapper.for_model`): support models
      distanced from the original model would carry its structure into the randomised
      model's map; its images are then grouped by that model's predictions, not by the labels
      (see ``for_model``). A GAD fit per randomised model and weights: further batches and
      calls for the same model reuse it, and the model GAD was fitted on needs none
      (RandomLogit);
    * any other callable: ``method(model, inputs, target, **attribute_kwargs)`` with tensors.

    The user's model is not moved or switched to eval mode: inputs go to the device of its
    parameters (``device`` when it has none). A model in train mode (BatchNorm, Dropout)
    gets one warning and its buffers, flags and hooks are restored after the call. Inputs
    with NaN or Inf are a ``ValueError`` (their maps would be NaN), and so is an empty batch.

    Args:
        model: The model Quantus evaluates.
        inputs: ``(N, C, ...)`` array (``(N, ..., C)`` with ``channel_first=False``).
        targets: One class index per example (or one for all).
        method: The attribution, see above.
        device: Passed by Quantus; used only for a model without parameters.
        method_kwargs: Constructor arguments when ``method`` is a class or a name.
        reduce_axes: Axes (not 0) summed in the output, as in ``quantus.explain``; ``None``
            keeps the attribution's shape.
        keepdims: Keep reduced axes with size 1 (Quantus' default).
        channel_first: Layout of ``inputs`` (and of the returned attribution).
        rebind: Re-bind an instance built on another model, see above.
        **attribute_kwargs: Passed to ``attribute`` (e.g. ``n_steps``, ``baselines``).

    Returns:
        The attribution as a float32 numpy array.

    Examples::

        >>> import numpy as np, torch
        >>> from captum.attr import IntegratedGradients
        >>> from captum_gradflow import SmallCNN, quantus_explain
        >>> model = SmallCNN().eval()
        >>> x, y = np.random.rand(2, 1, 16, 16).astype("float32"), np.array([0, 1])
        >>> quantus_explain(model, x, y, method=IntegratedGradients, n_steps=8).shape
        (2, 1, 16, 16)
        >>> # metric = quantus.Complexity(); metric(model=model, x_batch=x, y_batch=y,
        >>> #     explain_func=quantus_explain, explain_func_kwargs={"method": "Saliency"})
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    param = next(iter(model.parameters()), None)
    if param is not None:
        dev = param.device
    else:
        dev = torch.device(device if device is not None else "cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs)
    if x.dim() < 2:
        raise ValueError(f"inputs must be a batch (N, ...), got shape {tuple(x.shape)}")
    # Before the move to the model's device: a meta tensor cannot be copied anywhere.
    check_batch((x,), None, "quantus_explain inputs", floating=False)
    if not channel_first:
        x = x.movedim(-1, 1)
    # a fresh leaf that requires grad: gradient methods need it, and the caller's array is not
    # touched (Captum would otherwise warn and set the flag itself)
    x = x.detach().to(device=dev, dtype=dtype).clone().requires_grad_(True)
    check_batch((x,), model, "quantus_explain")
    check_finite((x,))
    target = _quantus_targets(targets, x.shape[0], dev)
    explain = _quantus_method(model, method, method_kwargs, rebind)
    # this package's attributions guard the model themselves; a second guard would only repeat the work
    guard = nullcontext() if isinstance(explain, _self_guarded()) else preserved(model, (x,), "quantus_explain")
    with guard:
        if isinstance(explain, Attribution):
            attr = explain.attribute(x, target=target, **attribute_kwargs)
        else:
            attr = explain(model, x, target, **attribute_kwargs)
    if isinstance(attr, (tuple, list)):
        attr = attr[0]
    attr = torch.as_tensor(attr.detach() if isinstance(attr, Tensor) else np.asarray(attr))
    if attr.dim() == 0 or attr.shape[0] != x.shape[0]:
        raise ValueError(
            f"the method returned attributions of shape {tuple(attr.shape)} for {x.shape[0]} inputs"
        )
    out = attr.detach().to("cpu", torch.float32)
    if not channel_first and out.dim() == x.dim():
        out = out.movedim(1, -1)
    out = out.numpy()
    if reduce_axes is not None:
        axes = tuple(int(a) for a in reduce_axes)
        if any(a % out.ndim == 0 for a in axes):
            raise ValueError("reduce_axes must not include the batch axis 0")
        out = out.sum(axis=axes, keepdims=keepdims) if axes else out
    return out


def _self_guarded() -> Tuple[type, ...]:
    """This package's attributions: each public call wraps its work in ``preserved`` itself."""
    from captum_gradflow.gad.wrapper import GADWrapper

    return (GADWrapper, ZennitAttribution)


def _quantus_targets(targets: Any, n: int, device: torch.device) -> Optional[Tensor]:
    """Quantus' ``y_batch`` as a Captum target: a long tensor of one index per example."""
    if targets is None:
        return None
    t = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets))
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError("targets must be class indices (integers)")
    t = t.long().reshape(-1).to(device)
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} targets for {n} inputs")
    return t


def _quantus_method(
    model: nn.Module, method: Any, method_kwargs: Optional[Dict[str, Any]], rebind: bool
) -> Union[Attribution, Callable[..., Any]]:
    import captum.attr

    kwargs = dict(method_kwargs or {})
    if method is None:
        method = captum.attr.Saliency
    if isinstance(method, str):
        found = getattr(captum.attr, method, None)
        if not (isinstance(found, type) and issubclass(found, Attribution)):
            raise ValueError(f"method {method!r} is not an attribution class of captum.attr")
        method = found
    if isinstance(method, type):
        if not issubclass(method, Attribution):
            raise TypeError(f"method class {method.__name__} is not a captum Attribution")
        if isinstance(kwargs.get("layer"), str):
            kwargs["layer"] = model.get_submodule(kwargs["layer"])
        return method(model, **kwargs)
    if kwargs:
        raise ValueError("method_kwargs only apply when method is a class or a class name")
    if isinstance(method, Attribution):
        fn = method.forward_func
        own = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        if not isinstance(own, nn.Module) or own is model:
            return method
        if not rebind:
            raise ValueError(
                "the attribution instance explains another model than the one Quantus passed "
                "(randomisation metrics explain randomised copies); pass the class instead, or "
                "rebind=True to re-bind a copy of the instance to the given model"
            )
        from captum_gradflow.gad.support import rebind as rebind_to
        from captum_gradflow.gad.wrapper import GADWrapper

        if isinstance(method, GADWrapper):  # its support models belong to the fitted model
            return method.for_model(model)
        return rebind_to(method, own, model)
    if callable(method):
        return method
    raise TypeError(
        f"method must be None, a captum.attr class or its name, an Attribution or a callable; "
        f"got {type(method).__name__}"
    )

