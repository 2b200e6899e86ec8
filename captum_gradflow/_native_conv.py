"""Input gradients of grayscale CPU models without oneDNN's slow one-channel kernel.

Every method of the package that needs ``d F / d x`` (alignment, flow, regularizer) backpropagates
to the input through the model's first convolution. For a model on one-channel images or volumes
that convolution has a single input channel, and on CPU the data-gradient kernels for that case
are slow, often the most expensive step of the whole backward pass. Two remedies:

* :func:`input_gradients`: when the input's only consumer is such a convolution with stride 1,
  its data gradient is computed as the equivalent forward convolution of the incoming gradient
  with the flipped, transposed kernel, which runs several times faster than the data-gradient
  kernel. With ``create_graph`` (the regularizer) that step is a function autograd
  differentiates with one forward convolution and one weight gradient of the layer
  (:class:`_FirstLayerDataGradient`), instead of PyTorch's double backward of the layer.
* every other one-channel 2-D convolution of the graph runs without oneDNN, only while its
  node runs (:func:`_native_grads`).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.graph import GradientEdge

__all__ = ["input_gradients"]

# Held from the moment a hooked node switches oneDNN off until it switches it back on, so two
# threads of the package never interleave their switches (one turning the flag on while the
# other's node runs, or leaving it off). Hooks run on the thread that called backward (CPU).
_SWITCH = threading.Lock()


def _is_conv(node: Any) -> bool:
    return type(node).__name__ == "ConvolutionBackward0"


def _graph_nodes(root: Optional[Any]) -> Iterator[Any]:
    """Every node of the autograd graph below ``root``, once each."""
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(nxt for nxt, _ in node.next_functions)


def _onednn_enabled() -> bool:
    """The oneDNN flag as the user set it: read under the lock, since another thread of the
    package may hold it off for a moment (and would then look like a user who disabled it)."""
    _SWITCH.acquire()
    try:
        return bool(torch.backends.mkldnn.enabled)
    finally:
        _SWITCH.release()


@contextmanager
def _native_grads(graph: Iterable[Any]) -> Iterator[None]:
    """Run the one-input-channel 2-D CPU convolutions among the nodes ``graph`` of an autograd
    graph without oneDNN (the convolutions :func:`input_gradients` does not bypass).

    oneDNN's data-gradient kernel for a convolution with a single input channel (a grayscale
    model's first layer) is several times slower than PyTorch's native one (about 40 ms
    against 9 ms for the small CNN's first layer, batch 16, 128 px, one thread; the results
    agree to float rounding). Only 2-D convolutions are switched: for a one-channel Conv3d the
    native backward is the slower one (119 ms against 84 ms on a 3-D CNN, batch 8, 32^3).
    oneDNN is switched off only while those nodes run, by node hooks removed on exit; the flag
    is restored on exit whatever happens.

    Threads: the switch is process-wide, like every ``torch.backends`` flag. A module lock is
    held while it is off, so concurrent calls of the package in several threads take turns
    for those nodes and never leave the flag off. A convolution that *another* library runs
    in another thread inside that window (a few milliseconds per backward pass) uses
    PyTorch's native kernel instead of oneDNN: slower, with results equal up to float
    rounding. Nothing changes when oneDNN is already off, on GPU, or for convolutions with
    several input channels or groups.
    """
    nodes = []
    for node in filter(_is_conv, graph):
        w = node._saved_weight  # documented access to a node's saved tensors
        one_channel = w.dim() == 4 and w.shape[1] == 1 and node._saved_groups == 1
        if w.device.type == "cpu" and one_channel and not node._saved_transposed:
            nodes.append(node)
    if not nodes or not _onednn_enabled():
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


# --------------------------------------------------------------- flipped-kernel data gradients
def _sole_conv_consumer(graph: Sequence[Any], x: Tensor) -> Optional[Any]:
    """The convolution node that is the only consumer of the leaf ``x`` among ``graph`` (every
    node of an autograd graph), if it is a CPU one-input-channel, stride-1, ungrouped,
    untransposed 2-D or 3-D convolution whose padding a flipped kernel can undo; else ``None``."""
    consumers = [node for node in graph
                 for nxt, _ in node.next_functions if getattr(nxt, "variable", None) is x]
    if len(consumers) != 1 or not _is_conv(consumers[0]):
        return None
    node = consumers[0]
    w = node._saved_weight  # documented access to a node's saved tensors
    kernel = w.shape[2:]
    ok = (
        w.dim() in (4, 5) and w.shape[1] == 1 and w.device.type == "cpu"
        and node._saved_groups == 1 and not node._saved_transposed
        and all(s == 1 for s in node._saved_stride)
        and all(0 <= p <= d * (k - 1) for p, d, k in zip(node._saved_padding, node._saved_dilation, kernel))
        and node._saved_input is x
    )
    return node if ok else None


def _flipped_data_gradient(weight: Tensor, padding: Sequence[int], dilation: Sequence[int],
                           grad_out: Tensor) -> Tensor:
    """``d L / d input`` of a stride-1 one-input-channel convolution with kernel ``weight``
    from ``d L / d output``: the forward convolution of ``grad_out`` with the spatially flipped
    kernel, channels swapped, whose padding undoes the layer's.

    Which kernel runs it was measured on the first layers of the small CNNs (batch 16 at 128 px,
    batch 8 at 32^3) inside whole gradient computations, where caches are cold:

    * several threads: each channel on its own (a depthwise convolution), then their sum.
      oneDNN runs that 3-4 times faster than the one-output-channel convolution in 3-D (2
      threads: 5.3 against 20 ms at 32^3), and in 2-D it beat PyTorch's native kernel inside
      the regularizer step (exact step 2.82-2.84 plain steps against 3.07-3.43);
    * one thread, 2-D: PyTorch's native kernel (FeatureAlignment 28-29 ms against 31-47 ms).
    """
    spatial = tuple(range(2, weight.dim()))
    kernel = weight.detach().transpose(0, 1).flip(spatial)
    dilation = list(dilation)
    padding = [d * (k - 1) - p for p, d, k in zip(padding, dilation, weight.shape[2:])]
    conv = F.conv2d if weight.dim() == 4 else F.conv3d
    if weight.dim() == 5 or torch.get_num_threads() > 1:
        channels = kernel.shape[1]
        return conv(grad_out, kernel.reshape(channels, 1, *kernel.shape[2:]), None, 1, padding,
                    dilation, channels).sum(1, keepdim=True)
    _SWITCH.acquire()
    user_setting = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = False
        return conv(grad_out, kernel, None, 1, padding, dilation)
    finally:
        torch.backends.mkldnn.enabled = user_setting
        _SWITCH.release()


class _FirstLayerDataGradient(torch.autograd.Function):
    """:func:`_flipped_data_gradient` as a function of ``grad_out`` and ``weight`` that autograd
    can differentiate (the regularizer's double backward).

    Its adjoints are one forward convolution and one weight gradient of the layer itself:
    ``L = <v, conv_transpose(g, W)> = <conv(v, W), g>``. PyTorch's own double backward of the
    layer computes the weight term as a convolution with an image-sized kernel: for the small
    CNN (batch 16, 128 px, 2 threads) 4.4 ms inside the regularizer step, where
    ``torch.nn.grad.conv2d_weight`` takes 1.8 ms on the same shapes on its own.
    """

    @staticmethod
    def forward(ctx: Any, grad_out: Tensor, weight: Tensor, padding: List[int],
                dilation: List[int]) -> Tensor:
        ctx.save_for_backward(grad_out, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return _flipped_data_gradient(weight, padding, dilation, grad_out)

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor) -> Tuple[Optional[Tensor], ...]:
        grad_out, weight = ctx.saved_tensors
        two_d = weight.dim() == 4
        d_grad_out = d_weight = None
        if ctx.needs_input_grad[0]:
            conv = F.conv2d if two_d else F.conv3d
            d_grad_out = conv(grad_x, weight, None, 1, ctx.padding, ctx.dilation)
        if ctx.needs_input_grad[1]:
            weight_grad = torch.nn.grad.conv2d_weight if two_d else torch.nn.grad.conv3d_weight
            d_weight = weight_grad(grad_x, weight.shape, grad_out, 1, ctx.padding, ctx.dilation)
        return d_grad_out, d_weight, None, None


def _data_gradient(node: Any, grad_out: Tensor, create_graph: bool) -> Tensor:
    """The data gradient of the first-layer convolution ``node`` from ``d L / d output``."""
    padding, dilation = list(node._saved_padding), list(node._saved_dilation)
    weight = node._saved_weight  # documented access to a node's saved tensors
    if create_graph:
        return _FirstLayerDataGradient.apply(grad_out, weight, padding, dilation)
    return _flipped_data_gradient(weight, padding, dilation, grad_out)


def input_gradients(
    total: Tensor, inputs: Sequence[Tensor], retain_graph: Optional[bool] = None,
    create_graph: bool = False,
) -> Tuple[Optional[Tensor], ...]:
    """``torch.autograd.grad(total, inputs, allow_unused=True, create_graph=create_graph)``,
    faster for one-channel models.

    An input whose only consumer is a one-input-channel, stride-1 CPU convolution gets its
    gradient from :func:`_flipped_data_gradient` applied to the gradient that reaches the
    convolution's output (asked of autograd as a :class:`~torch.autograd.graph.GradientEdge`);
    with ``create_graph``, through :class:`_FirstLayerDataGradient`, so the result can be
    differentiated again (also more than once). The results agree with autograd's to float
    rounding. Every other one-channel convolution goes through :func:`_native_grads`.

    Examples::

        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        >>> x = torch.rand(2, 1, 8, 8, requires_grad=True)
        >>> (g,) = input_gradients(conv(x).square().sum(), [x])
        >>> g.shape
        torch.Size([2, 1, 8, 8])
    """
    graph = list(_graph_nodes(total.grad_fn))  # one walk for every input and the hooks
    nodes = [_sole_conv_consumer(graph, x) if x.is_leaf else None for x in inputs]
    wanted = [GradientEdge(node, 0) if node is not None else x for node, x in zip(nodes, inputs)]
    # The bypassed first layers never run: autograd stops at their outputs.
    with _native_grads(node for node in graph if node not in nodes):
        grads = torch.autograd.grad(total, wanted, retain_graph=retain_graph,
                                    create_graph=create_graph, allow_unused=True)
    return tuple(
        g if node is None or g is None else _data_gradient(node, g, create_graph).to(x.dtype)
        for node, g, x in zip(nodes, grads, inputs)
    )
