"""The model-state guard of every public call that runs the user's model.

One place for the promise of docs/definitions.md, section 5: the user's model (parameters,
buffers, train/eval flags, hooks, ``requires_grad``) and inputs leave every call as they came,
also when it raises (the input checks that come before any work are in ``_checks``). The guard records flags, dictionary snapshots and version counters; it copies values
only for the buffers of train-mode modules, which a forward pass updates by design, and never
for an eval-mode model or for parameters (no call of the package writes them; an in-place
write by the user's own ``forward_func`` is detected by version and reported).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
import weakref
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import captum
import torch
import torch.nn.modules.module as _torch_module
from torch import Tensor, nn

__all__ = [
    "batch_dependent_modules",
    "find_module",
    "preserved",
    "warn_user",
]

# Per-module state a call could change: hook dictionaries and the registries whose entries a
# call could replace (``model.fc = ...``). Restored by identity, never by copying tensors.
_MODULE_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
    "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    "_parameters", "_buffers", "_modules",
)
_TENSOR_HOOKS = ("_backward_hooks", "_post_accumulate_grad_hooks")
_GLOBAL_HOOKS = tuple(
    name for name in sorted(vars(_torch_module))
    if name.startswith("_global_") and isinstance(getattr(_torch_module, name), dict)
)
_warned: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


# ---------------------------------------------------------------------------- warnings
def _package_dirs() -> Tuple[str, ...]:
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = {here, os.path.dirname(captum.__file__), os.path.dirname(torch.__file__)}
    dirs |= {os.path.realpath(d) for d in dirs}
    return tuple(d + os.sep for d in dirs) + (contextlib.__file__, functools.__file__)


_INTERNAL = _package_dirs()


def _user_stacklevel() -> int:
    # Frames from warn_user up to the first one outside this package, Captum, torch and
    # contextlib: call sites differ in depth (decorators, context managers, helpers), so a
    # fixed stacklevel would point into the package from some of them.
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level


def warn_user(message: str, category: type = UserWarning) -> None:
    """``warnings.warn`` pointing at the user's line: the first caller outside this package,
    Captum, torch and ``contextlib`` (the user's code, or a library such as Quantus that
    called in).

    Examples::

        >>> import warnings
        >>> from captum_gradflow._guard import warn_user
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_user("3 values are NaN", RuntimeWarning)
        >>> caught[0].category.__name__
        'RuntimeWarning'
    """
    warnings.warn(message, category, stacklevel=_user_stacklevel())


# ---------------------------------------------------------------------------- the model
def find_module(forward_func: Any) -> Optional[nn.Module]:
    """The ``nn.Module`` behind ``forward_func``: itself, a bound method's owner, a partial's.

    A plain function (a lambda closing over a model) gives ``None``: the guard then restores
    the inputs' flags only.
    """
    for _ in range(8):
        if isinstance(forward_func, nn.Module):
            return forward_func
        if isinstance(forward_func, functools.partial):
            forward_func = forward_func.func
            continue
        owner = getattr(forward_func, "__self__", None)
        return owner if isinstance(owner, nn.Module) else None
    return None


def batch_dependent_modules(model: nn.Module) -> List[str]:
    """Modules whose output depends on the other examples of the batch or on chance, as
    ``"name (Type)"``: BatchNorm in train mode or without running statistics, Dropout with
    ``p > 0`` and RReLU in train mode.

    Examples::

        >>> import torch
        >>> from captum_gradflow._guard import batch_dependent_modules
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
        >>> batch_dependent_modules(net), batch_dependent_modules(net.eval())
        (['1 (BatchNorm2d)'], [])
    """
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            hit = m.training or m.running_mean is None
        elif isinstance(m, nn.modules.dropout._DropoutNd):
            hit = m.training and m.p > 0
        else:
            hit = m.training and isinstance(m, nn.RReLU)
        if hit:
            found.append(f"{name or 'model'} ({type(m).__name__})")
    return found



def _warn_train_mode(model: nn.Module, what: str) -> None:
    if model in _warned:
        return
    names = batch_dependent_modules(model)
    if not names:
        return
    _warned.add(model)
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    warn_user(
        f"{what}: the model has modules whose output depends on the batch or on chance "
        f"({shown}): in train mode (or BatchNorm without running statistics) an example's "
        "gradient depends on the other examples and on dropout. Buffers the call updates are "
        "restored afterwards; call model.eval() for per-example results. Warned once per model",
        UserWarning,
    )


# ---------------------------------------------------------------------------- snapshots
def _same(current: Dict[Any, Any], saved: Dict[Any, Any]) -> bool:
    """Same entries, same order, same objects (``==`` would compare tensors elementwise)."""
    return len(current) == len(saved) and all(
        k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(current.items(), saved.items())
    )


def _restore_dict(current: Dict[Any, Any], saved: Dict[Any, Any]) -> None:
    if not _same(current, saved):
        current.clear()
        current.update(saved)


def _copy_or_none(d: Optional[Dict[Any, Any]]) -> Optional[Dict[Any, Any]]:
    return None if d is None else dict(d)


def _version(t: Tensor) -> Optional[int]:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


class _TensorState:
    """``requires_grad``, ``.grad``, tensor hooks and version of a tensor (no value copied).

    For parameters, also the data itself by reference: ``param.data = other`` swaps the
    storage without touching the version, and the reference restores it.
    """

    __slots__ = ("t", "leaf", "flag", "version", "grad", "grad_version", "hooks", "data", "ptr")

    def __init__(self, t: Tensor, keep_data: bool = False) -> None:
        self.t, self.leaf, self.flag, self.version = t, t.is_leaf, t.requires_grad, _version(t)
        self.grad = t.grad if self.leaf else None
        self.grad_version = None if self.grad is None else _version(self.grad)
        self.hooks = [(name, _copy_or_none(getattr(t, name, None))) for name in _TENSOR_HOOKS]
        self.data = t.data if keep_data else None
        self.ptr = (t.data_ptr(), t.shape) if keep_data else None

    def restore(self) -> bool:
        """Restore what can be; return whether the values were written in place."""
        t = self.t
        for name, saved in self.hooks:
            current = getattr(t, name, None)
            if current is not None:  # a dict created during the call is emptied, not dropped
                _restore_dict(current, saved or {})
        if self.leaf:
            if t.requires_grad != self.flag:
                t.requires_grad_(self.flag)
            if t.grad is not self.grad:
                t.grad = self.grad
        if self.data is not None and (t.data_ptr(), t.shape) != self.ptr:
            t.data = self.data
        written = self.version is not None and _version(t) != self.version
        return written or (self.grad is not None and _version(self.grad) != self.grad_version)


class _ModelState:
    """What a call could change in a model, recorded without copying unchanged tensors."""

    def __init__(self, model: nn.Module, training: bool, eval_mode: bool) -> None:
        self.model, self.training = model, training
        modules = list(model.modules())
        self.flags = [(m, m.training, m.__dict__.get("_is_full_backward_hook")) for m in modules]
        self.dicts = [
            (d, dict(d)) for m in modules for name in _MODULE_DICTS
            if (d := m.__dict__.get(name)) is not None
        ]
        self.params = [_TensorState(p, keep_data=True) for p in model.parameters()]
        # A forward pass updates buffers in train mode only (running statistics): copy those
        # alone. An eval-mode model is not copied at all; its buffers keep only a version.
        self.copied: List[Tuple[Tensor, Tensor]] = []
        self.watched: List[Tuple[Tensor, Optional[int]]] = []
        if training:
            return
        for m in modules:
            for b in m._buffers.values():
                if b is None:
                    continue
                if m.training and not eval_mode:
                    self.copied.append((b, b.detach().clone()))
                else:
                    self.watched.append((b, _version(b)))

    def restore(self) -> List[str]:
        """Restore; return the names of tensors written in place that could not be."""
        for m, flag, full_hook in self.flags:
            m.training = flag
            if m.__dict__.get("_is_full_backward_hook") is not full_hook:
                m._is_full_backward_hook = full_hook
        for current, saved in self.dicts:
            _restore_dict(current, saved)
        written = {id(s.t) for s in self.params if s.restore()}
        with torch.no_grad():
            # Compared by value: BatchNorm's kernel updates running statistics in place
            # without bumping their version counter.
            for b, saved in self.copied:
                if not torch.equal(b, saved):
                    b.copy_(saved)
        written |= {id(b) for b, version in self.watched if _version(b) != version}
        if self.training or not written:
            return []
        named = list(self.model.named_parameters()) + list(self.model.named_buffers())
        return [name for name, t in named if id(t) in written]


@contextmanager
def preserved(
    forward_func: Any,
    inputs: Any = (),
    what: str = "this call",
    *,
    training: bool = False,
    eval_mode: bool = False,
) -> Iterator[None]:
    """Leave the model behind ``forward_func`` and the ``inputs`` exactly as they came.

    On exit, also through an exception: train/eval flags, ``requires_grad`` and ``.grad`` of
    parameters and inputs, every hook added or removed during the call (module, tensor and
    global module hooks), registered parameters, buffers and submodules, and the values of
    the buffers of train-mode modules (BatchNorm running statistics). Values are copied
    only for those train-mode buffers; parameters, eval-mode buffers and inputs written in
    place are detected by their version counters and named in a ``RuntimeWarning``.

    A model with modules whose output depends on the batch or on chance (BatchNorm or
    Dropout in train mode, BatchNorm without running statistics) gets one ``UserWarning``
    per model, naming them, at the user's line. The call still explains the model in the
    mode it is in.

    Args:
        forward_func: The model, one of its bound methods, a ``functools.partial`` of them,
            or any function (then only the inputs are guarded).
        inputs: The user's input tensor or tuple (non-tensors are ignored).
        what: The public call's name, used in messages.
        training: The call trains the model (``train_classifier``): parameters and buffers
            change by design and are kept; flags, hooks and inputs are still restored, and
            no train-mode warning is given.
        eval_mode: Run the body with every module in eval mode (the modes are restored on
            exit, module by module); no train-mode warning then, and nothing is copied.

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
    xs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs or ())
    tensors = [_TensorState(x) for x in xs if isinstance(x, Tensor)]
    global_hooks = [(d, dict(d)) for d in (getattr(_torch_module, n) for n in _GLOBAL_HOOKS)]
    global_full = _torch_module._global_is_full_backward_hook
    state = _ModelState(model, training, eval_mode) if model is not None else None
    if model is not None and eval_mode:
        model.eval()
    elif model is not None and not training:
        _warn_train_mode(model, what)
    try:
        yield
    finally:
        for current, saved in global_hooks:
            _restore_dict(current, saved)
        _torch_module._global_is_full_backward_hook = global_full
        written_inputs = [i for i, s in enumerate(tensors) if s.restore()]
        written = state.restore() if state is not None else []
        if written or written_inputs:
            parts = ([f"parameters/buffers {written}"] if written else []) + (
                [f"inputs {written_inputs}"] if written_inputs else [])
            warn_user(
                f"{what}: {' and '.join(parts)} were written in place during the call (by "
                "forward_func) and could not be restored: the guard keeps no copy of them",
                RuntimeWarning,
            )
