"""Input gradients of grayscale CPU models without oneDNN's slow one-channel kernel.

Every method of the package that needs ``d F / d x`` (alignment, flow, regularizer) backpropagates
to the input through the model's first convolution. For a model on one-channel images that
convolution has a single input channel, and on CPU oneDNN's data-gradient kernel for that case
is several times slower than PyTorch's native one, often the most expensive step of the whole
backward pass. Only those graph nodes run without oneDNN; everything else is untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import torch

__all__ = ["conv_backward_nodes", "native_one_channel_conv_grads"]


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


@contextmanager
def native_one_channel_conv_grads(root: Optional[Any]) -> Iterator[None]:
    """Compute input gradients of one-input-channel CPU convolutions without oneDNN.

    oneDNN's data-gradient kernel for a convolution with a single input channel (a grayscale
    model's first layer) is several times slower than PyTorch's native one (about 40 ms
    against 9 ms for the small CNN's first layer, batch 16, 128 px, one thread; the results
    agree to float rounding). oneDNN is switched off only while those nodes of the graph
    run, by node hooks removed on exit; the flag is restored on exit whatever happens. The
    switch is process-wide, like every ``torch.backends`` flag. Nothing changes when oneDNN
    is already off, on GPU, or for convolutions with several input channels or groups.

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
    if torch.backends.mkldnn.enabled:
        for node in conv_backward_nodes(root):
            w = node._saved_weight  # documented access to a node's saved tensors
            one_channel = w.dim() >= 3 and w.shape[1] == 1 and node._saved_groups == 1
            if w.device.type == "cpu" and one_channel and not node._saved_transposed:
                nodes.append(node)
    if not nodes:
        yield
        return

    def off(*_: Any) -> None:
        torch.backends.mkldnn.enabled = False

    def on(*_: Any) -> None:
        torch.backends.mkldnn.enabled = True

    handles = [h for node in nodes for h in (node.register_prehook(off), node.register_hook(on))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        torch.backends.mkldnn.enabled = True
