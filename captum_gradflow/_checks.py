"""The input checks at the public boundary: bad input is rejected before any work.

Every public call that runs the user's model calls :func:`check_batch` on its inputs, and
target handling calls :func:`check_target_dtype`, so each problem gets one message naming it
(docs/definitions.md, section 5).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from captum_gradflow._guard import find_module

__all__ = ["check_batch", "check_target_dtype"]


def _model_facts(
    model: Optional[nn.Module], what: str
) -> Tuple[Optional[torch.dtype], Optional[torch.device]]:
    """The model's one floating dtype and one device (None when mixed), after checking that
    its parameters can take part in autograd."""
    if model is None:
        return None, None
    dtypes, devices = set(), set()
    for p in model.parameters():
        if p.device.type == "meta":
            raise ValueError(
                f"{what}: the model's parameters are on the 'meta' device (not materialised); "
                "load real weights first (model.to_empty(device=...) then load_state_dict)"
            )
        if p.is_inference():
            raise RuntimeError(
                f"{what}: the model's parameters were created under torch.inference_mode() and "
                "cannot take part in autograd; build or load the model outside inference mode"
            )
        if p.is_floating_point():
            dtypes.add(p.dtype)
        devices.add(p.device)
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    return dtype, (devices.pop() if len(devices) == 1 else None)


def check_batch(
    inputs: Any, forward_func: Any = None, what: str = "inputs", *, floating: bool = True
) -> None:
    """Reject inputs no gradient method can use, with a message naming the problem.

    Raised before any work: a call under ``torch.inference_mode()`` or on inference tensors
    (no autograd there; ``torch.no_grad()`` is fine), a model whose parameters are on the
    ``meta`` device or inference tensors, non-tensor entries, 0-d tensors, empty batches
    (``N = 0``), inputs on the ``meta`` device, non-floating inputs (``uint8``, ``bool``,
    integers; ``floating=False`` allows them for methods that take indices, such as layer
    methods on embeddings), and a first input whose floating dtype or device differs from
    the model's (further inputs may legitimately differ, e.g. CPU sequence lengths). The
    dtype and device checks need a module behind ``forward_func``; a plain function skips
    them. Train mode is not an error here (see :func:`preserved`).

    Examples::

        >>> import torch
        >>> from captum_gradflow._checks import check_batch
        >>> check_batch((torch.rand(0, 3),), torch.nn.Linear(3, 2), "attribute")
        Traceback (most recent call last):
        ...
        ValueError: attribute: empty batch (shape (0, 3)); pass at least one example
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{what}: called inside torch.inference_mode(), where no gradient can be taken; call "
            "it under torch.no_grad() or without a context manager"
        )
    xs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if not xs:
        raise ValueError(f"{what}: no input tensor was given")
    dtype, device = _model_facts(find_module(forward_func), what)
    for i, x in enumerate(xs):
        where = f"{what}[{i}]" if len(xs) > 1 else what
        if not isinstance(x, Tensor):
            raise TypeError(f"{where} is a {type(x).__name__}, not a Tensor")
        if x.dim() == 0:
            raise ValueError(
                f"{where} is a 0-d tensor; inputs need a leading batch dimension (N, ...)"
            )
        if x.shape[0] == 0:
            raise ValueError(
                f"{where}: empty batch (shape {tuple(x.shape)}); pass at least one example"
            )
        if x.device.type == "meta":
            raise ValueError(
                f"{where} is on the 'meta' device and holds no data; move it to a real device"
            )
        if x.is_inference():
            raise RuntimeError(
                f"{where} was created under torch.inference_mode() and cannot take part in "
                "autograd; clone it outside inference mode first"
            )
        if floating and not x.is_floating_point():
            raise TypeError(
                f"{where} has dtype {x.dtype}; gradients need floating-point inputs (convert with "
                f".to({dtype or torch.float32}))"
            )
        if i == 0 and dtype is not None and x.is_floating_point() and x.dtype != dtype:
            raise TypeError(
                f"{where} has dtype {x.dtype} but the model's parameters are {dtype}; convert "
                f"the inputs with .to({dtype}) or the model with .to({x.dtype})"
            )
        if i == 0 and device is not None and x.device != device:
            raise ValueError(
                f"{where} is on {x.device} but the model is on {device}; move one of them"
            )


def _holds_float(target: Any) -> bool:
    if isinstance(target, Tensor):
        return target.is_floating_point() or target.is_complex()
    if isinstance(target, (np.ndarray, np.generic)):
        return target.dtype.kind in "fc"
    if isinstance(target, (float, complex)):
        return True
    if isinstance(target, (list, tuple)):
        return any(_holds_float(t) for t in target)
    return False


def check_target_dtype(target: Any) -> None:
    """A target names classes: a floating-point target is an error, never truncated.

    Floats anywhere in the target count: a float tensor or array, a Python or NumPy float,
    or a list or tuple holding any of them.

    Examples::

        >>> import torch
        >>> from captum_gradflow._checks import check_target_dtype
        >>> check_target_dtype(torch.tensor([0, 1]))
        >>> check_target_dtype([0, 1.0])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: target [0, 1.0] holds floats; a target names classes and must be integer ...
    """
    if not _holds_float(target):
        return
    if isinstance(target, (Tensor, np.ndarray)):
        shown = f"has dtype {target.dtype}"
    else:
        shown = f"{target!r} holds floats"
    raise TypeError(
        f"target {shown}; a target names classes and must be integer (convert with .long() or "
        "int() if the values are whole numbers)"
    )
