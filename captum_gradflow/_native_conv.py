"""Input gradients of grayscale CPU models without oneDNN's slow one-channel kernel.

Every method of the package that needs ``d F / d x`` (alignment, flow, regularizer) backpropagates
to the input through the model's first convolution. For a model on one-channel images that
convolution has a single input channel, and on CPU oneDNN's data-gradient kernel for that case
is several times slower than PyTorch's native one, often the most expensive step of the whole
backward pass. Only those graph nodes run without oneDNN; everything else is untouched.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import torch

__all__ = ["conv_backward_nodes", "native_one_channel_conv_grads"]

# Held from the moment a hooked node switches oneDNN off until it switches it back on, so two
# threads of the package never interleave their switches (one turning the flag on while the
# other's node runs, or leaving it off). Hooks run on the thread that called backward (CPU).
_SWITCH = threading.Lock()


def conv_backward_nodes(root: Optional[Any]) -> List[Any]:
    """Every convolution node (``ConvolutionBackward0``) of the graph below ``root``.

    Examples::

        >>> import torch
        >>> y = torch.nn.Conv2d(1, 2, 3)(torch.rand(1, 1, 5, 5, requires_grad=True)).sum()
        >>> len(conv_backward_nodes(y.grad_fn))
        1
    """
    seen, stack, found = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
        if type(node).__name__ == "ConvolutionBackward0":
            found.append(node)
    return found


def _onednn_enabled() -> bool:
    """The oneDNN flag as the user set it: read under the lock, since another thread of the
    package may hold it off for a moment (and would then look like a user who disabled it)."""
    _SWITCH.acquire()
    try:
        return bool(torch.backends.mkldnn.enabled)
    finally:
        _SWITCH.release()


@contextmanager
def native_one_channel_conv_grads(root: Optional[Any]) -> Iterator[None]:
    """Compute input gradients of one-input-channel CPU convolutions without oneDNN.

    oneDNN's data-gradient kernel for a convolution with a single input channel (a grayscale
    model's first layer) is several times slower than PyTorch's native one (about 40 ms
    against 9 ms for the small CNN's first layer, batch 16, 128 px, one thread; the results
    agree to float rounding). Only 2-D convolutions are switched: for a one-channel Conv3d the
    native backward is the slower one (119 ms against 84 ms on a 3-D CNN, batch 8, 32^3).
    oneDNN is switched off only while those nodes of the graph run, by node hooks removed on exit; the flag is restored on exit whatever happens.

    Threads: the switch is process-wide, like every ``torch.backends`` flag. A module lock is
    held while it is off, so concurrent calls of the package in several threads take turns
    for those nodes and never leave the flag off. A convolution that *another* library runs
    in another thread inside that window (a few milliseconds per backward pass) uses
    PyTorch's native kernel instead of oneDNN: slower, with results equal up to float
    rounding. Nothing changes when oneDNN is already off, on GPU, or for convolutions with
    several input channels or groups.

    Args:
        root: ``grad_fn`` of the tensor about to be differentiated (``None``: no-op).

    Examples::

        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 4, 3)
        >>> x = torch.rand(2, 1, 8, 8, requires_grad=True)
        >>> y = conv(x).sum()
        >>> with native_one_channel_conv_grads(y.grad_fn):
        ...     (g,) = torch.autograd.grad(y, x)
        >>> g.shape
        torch.Size([2, 1, 8, 8])
    """
    nodes = []
    if _onednn_enabled():
        for node in conv_backward_nodes(root):
            w = node._saved_weight  # documented access to a node's saved tensors
            one_channel = w.dim() == 4 and w.shape[1] == 1 and node._saved_groups == 1
            if w.device.type == "cpu" and one_channel and not node._saved_transposed:
                nodes.append(node)
    if not nodes:
        yield
        return

    held = threading.local()

    def off(*_: Any) -> None:
        if not getattr(held, "lock", False):
            _SWITCH.acquire()
            held.lock = True
        torch.backends.mkldnn.enabled = False

    def on(*_: Any) -> None:
        torch.backends.mkldnn.enabled = True
        if getattr(held, "lock", False):
            held.lock = False
            _SWITCH.release()

    handles = [h for node in nodes for h in (node.register_prehook(off), node.register_hook(on))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        on()  # also when a node raised between its two hooks
