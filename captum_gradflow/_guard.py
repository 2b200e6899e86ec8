"""The model-state guard and the input checks of every public call that runs the user's model.

One place for the promise of the definitions (docs/definitions.md, "Captum conformance"): the
user's model leaves every call as it came (parameters, buffers, train/eval flags, hooks,
``requires_grad`` flags) and so do the user's inputs, also when the call raises. Bad input is
rejected before any work, with a message naming the problem.
"""
from __future__ import annotations

import functools
import warnings
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["find_module", "preserved", "check_batch", "check_target_dtype", "train_mode_modules"]

# Modules whose output depends on the batch or on chance while in train mode.
_BATCH_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.GroupNorm)
_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
)
_warned: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def find_module(forward_func: Any) -> Optional[nn.Module]:
    """The ``nn.Module`` behind ``forward_func``: itself, a bound method's owner, a partial's."""
    seen = 0
    while seen < 8:
        seen += 1
        if isinstance(forward_func, nn.Module):
            return forward_func
        if isinstance(forward_func, functools.partial):
            forward_func = forward_func.func
            continue
        owner = getattr(forward_func, "__self__", None)
        if isinstance(owner, nn.Module):
            return owner
        return None
    return None


def train_mode_modules(model: nn.Module) -> List[str]:
    """Names of the modules whose output depends on the batch in the model's current mode."""
    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if m.training and isinstance(m, _BATCH_DEPENDENT)
    ]


def _warn_train_mode(model: nn.Module, what: str) -> None:
    names = train_mode_modules(model)
    if not names or model in _warned:
        return
    _warned.add(model)
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    warnings.warn(
        f"{what}: the model is in train mode with batch-dependent modules ({shown}); gradients "
        "then depend on the batch and on dropout. Their buffers are restored after the call; "
        "call model.eval() for per-example results",
        UserWarning,
        stacklevel=4,
    )


class _ModelState:
    """What a call could change in a model, recorded cheaply (no copy of unchanged tensors)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]
        self.grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        self.hooks = [
            (m, name, dict(getattr(m, name))) for m in model.modules() for name in _HOOK_DICTS
            if getattr(m, name, None) is not None
        ]
        # Buffers change in place only in train mode (running statistics): copy those alone.
        self.buffers = [
            (b, b.detach().clone()) for m, training in self.modes if training
            for b in m.buffers(recurse=False)
        ]

    def restore(self) -> None:
        with torch.no_grad():
            for b, saved in self.buffers:
                if not torch.equal(b, saved):
                    b.copy_(saved)
        for m, training in self.modes:
            m.training = training
        for p, flag in self.grad_flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, name, saved in self.hooks:
            current = getattr(m, name)
            for key in [k for k in current if k not in saved]:
                del current[key]


@contextmanager
def preserved(forward_func: Any, inputs: Sequence[Any] = (), what: str = "this call") -> Iterator[None]:
    """Leave the model behind ``forward_func`` and the ``inputs`` exactly as they came.

    On exit, also through an exception: train/eval flags, ``requires_grad`` of parameters and
    inputs, hooks added during the call removed, buffers changed in train mode restored. A model
    in train mode with batch-dependent modules gets one warning naming them.

    Examples::

        >>> import torch
        >>> from captum_gradflow._guard import preserved
        >>> model = torch.nn.Linear(3, 2)
        >>> x = torch.rand(4, 3)
        >>> with preserved(model, (x,), "example"):
        ...     _ = model(x.requires_grad_())
        >>> x.requires_grad
        False
    """
    model = find_module(forward_func)
    flags = [(t, t.requires_grad) for t in inputs if isinstance(t, Tensor) and t.is_leaf]
    state = _ModelState(model) if model is not None else None
    if model is not None:
        _warn_train_mode(model, what)
    try:
        yield
    finally:
        for t, flag in flags:
            if t.requires_grad != flag:
                t.requires_grad_(flag)
        if state is not None:
            state.restore()


def _model_dtype_device(model: Optional[nn.Module]) -> Tuple[Optional[torch.dtype], Optional[torch.device]]:
    if model is None:
        return None, None
    for t in model.parameters():
        return t.dtype, t.device
    return None, None


def check_batch(inputs: Tuple[Tensor, ...], forward_func: Any = None, what: str = "inputs") -> None:
    """Reject inputs no gradient method can use, with a message naming the problem.

    Empty batches, integer or bool dtypes, floating dtypes that differ from the model's, inputs
    on the ``meta`` device or on another device than the model, and calls under
    ``torch.inference_mode()`` (whose tensors cannot take part in autograd).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{what}: called inside torch.inference_mode(), where no gradient can be taken; call "
            "it under torch.no_grad() or without a context manager"
        )
    dtype, device = _model_dtype_device(find_module(forward_func))
    for i, x in enumerate(inputs):
        where = f"{what}[{i}]" if len(inputs) > 1 else what
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"{where}: empty batch (shape {tuple(x.shape)}); pass at least one example")
        if x.device.type == "meta":
            raise ValueError(f"{where}: tensors on the 'meta' device hold no data; move them to a real device")
        if x.is_inference():
            raise RuntimeError(
                f"{where} was created under torch.inference_mode() and cannot take part in autograd; "
                "clone it outside inference mode first"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"{where} has dtype {x.dtype}; gradients need floating-point inputs (convert with "
                f".to({dtype or torch.float32}))"
            )
        if dtype is not None and x.dtype != dtype and i == 0:
            raise TypeError(f"{where} has dtype {x.dtype} but the model's parameters are {dtype}; convert one of them")
        if device is not None and x.device != device and i == 0:
            raise ValueError(f"{where} is on {x.device} but the model is on {device}; move one of them")


def check_target_dtype(target: Any) -> None:
    """A target names classes: a floating-point target is an error, never truncated."""
    if isinstance(target, Tensor) and (target.is_floating_point() or target.is_complex()):
        raise TypeError(
            f"target has dtype {target.dtype}; a target names classes and must be integer "
            "(convert with .long() if the values are whole numbers)"
        )
    if isinstance(target, float) or (
        isinstance(target, (list, tuple)) and any(isinstance(t, float) for t in target)
    ):
        raise TypeError(f"target {target!r} holds floats; a target names classes and must be integer")
