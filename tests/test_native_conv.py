"""_native_conv: faster data gradients of one-input-channel CPU convolutions, same values."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_gradflow import Brightness, FeatureAlignment, SmallCNN
from captum_gradflow._common import prepare_inputs, value_and_input_gradients
from captum_gradflow._native_conv import (
    _FirstLayerDataGradient,
    _graph_nodes,
    _is_conv,
    _native_grads,
    _sole_conv_consumer,
    input_gradients,
)


def conv_nodes(root):
    return [node for node in _graph_nodes(root) if _is_conv(node)]


@pytest.fixture(params=[1, 2])
def threads(request):
    """The flipped kernel depends on the thread count (native in 2-D on one thread)."""
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(1)


def _with_onednn_off(fn):
    torch.backends.mkldnn.enabled = False  # (the flags() context manager warns about TF32)
    try:
        return fn()
    finally:
        torch.backends.mkldnn.enabled = True


def test_only_the_one_channel_convolution_runs_without_onednn():
    first, second = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)
    depthwise = nn.Conv2d(4, 4, 3, groups=4)  # one input channel per group: left alone
    x = torch.rand(2, 1, 12, 12, requires_grad=True)
    y = depthwise(second(first(x))).sum()
    flags = {}

    def record(key):
        def hook(*_):
            flags[key] = torch.backends.mkldnn.enabled

        return hook

    with _native_grads(_graph_nodes(y.grad_fn)):
        for node in conv_nodes(y.grad_fn):
            # Registered after the context's own pre-hook, so it sees the switched flag.
            node.register_prehook(record((node._saved_weight.shape[1], node._saved_groups)))
        torch.autograd.grad(y, x)
    assert flags == {(1, 1): False, (4, 1): True, (1, 4): True}
    assert torch.backends.mkldnn.enabled


def test_flag_is_restored_after_an_error_in_the_backward():
    conv = nn.Conv2d(1, 2, 3)
    x = torch.rand(1, 1, 6, 6, requires_grad=True)
    y = conv(x).sum()

    def boom(*_):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with _native_grads(_graph_nodes(y.grad_fn)):
            conv_nodes(y.grad_fn)[0].register_prehook(boom)
            torch.autograd.grad(y, x)
    assert torch.backends.mkldnn.enabled


def test_no_graph_or_onednn_off_is_a_no_op():
    with _native_grads(_graph_nodes(None)):
        assert torch.backends.mkldnn.enabled
    conv = nn.Conv2d(1, 2, 3)
    x = torch.rand(1, 1, 6, 6, requires_grad=True)

    def grad():
        y = conv(x).sum()
        with _native_grads(_graph_nodes(y.grad_fn)):
            assert not torch.backends.mkldnn.enabled  # the user's setting is kept
            return torch.autograd.grad(y, x)[0]

    _with_onednn_off(grad)
    assert torch.backends.mkldnn.enabled


def test_input_gradients_and_alignment_match_a_run_without_onednn():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x, mask = torch.rand(3, 1, 32, 32), torch.ones(1, 1, 32, 32)
    ours = value_and_input_gradients(model, prepare_inputs((x,)), 1)[0][0]
    reference = _with_onednn_off(lambda: value_and_input_gradients(model, prepare_inputs((x,)), 1)[0][0])
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-9)
    fa = FeatureAlignment(model, Brightness())
    s = fa.attribute(x, target=1, mask=mask)
    assert torch.allclose(s, _with_onednn_off(lambda: fa.attribute(x, target=1, mask=mask)), atol=1e-5)
    assert torch.backends.mkldnn.enabled


def test_subspace_jacobian_matches_a_run_without_onednn():
    torch.manual_seed(0)
    fa = FeatureAlignment(SmallCNN(num_classes=3).eval(), Brightness())
    x = torch.rand(3, 1, 32, 32)
    s = fa.attribute(x, decision="subspace")
    reference = _with_onednn_off(lambda: fa.attribute(x, decision="subspace"))
    assert torch.allclose(s, reference, atol=1e-5)
    assert torch.backends.mkldnn.enabled


def test_two_threads_take_turns_and_leave_the_flag_on():
    import threading

    from captum_gradflow import _native_conv

    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(4, 1, 32, 32)
    reference = _with_onednn_off(lambda: value_and_input_gradients(model, prepare_inputs((x,)), 1)[0][0])
    windows, errors, results = [], [], []
    original = _native_conv._SWITCH

    class Recording:
        """The module lock, recording who holds it: two holders at once would be a bug."""

        def __init__(self):
            self.holders = 0

        def acquire(self):
            original.acquire()
            self.holders += 1
            windows.append(self.holders)

        def release(self):
            self.holders -= 1
            original.release()

    _native_conv._SWITCH = Recording()

    def work():
        try:
            for _ in range(5):
                results.append(value_and_input_gradients(model, prepare_inputs((x,)), 1)[0][0])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    try:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _native_conv._SWITCH = original
    assert not errors
    # Each call holds the lock once, for the first layer's native kernel (one thread); no other
    # convolution of the model has one input channel, so the flag is not read under it again.
    assert len(results) == 10 and len(windows) == 10 and max(windows) == 1
    for g in results:
        torch.testing.assert_close(g, reference, rtol=1e-4, atol=1e-6)
    assert torch.backends.mkldnn.enabled
    assert original.acquire(blocking=False)
    original.release()


def test_a_flag_switched_off_by_the_user_stays_off():
    model = SmallCNN().eval()
    x = torch.rand(2, 1, 32, 32)
    torch.backends.mkldnn.enabled = False
    try:
        value_and_input_gradients(model, prepare_inputs((x,)), 1)
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = True


class _TwoPaths(nn.Module):
    """The input feeds the convolution and a skip connection: two consumers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x):
        return (self.conv(x) * x).flatten(1)


@pytest.mark.parametrize(
    "conv, flipped",
    [
        (nn.Conv2d(1, 4, 5, padding=2), True),
        (nn.Conv2d(1, 4, 3), True),
        (nn.Conv2d(1, 4, 3, padding=(2, 1), dilation=(2, 1)), True),
        (nn.Conv3d(1, 4, 3, padding=1), True),
        (nn.Conv3d(1, 2, (3, 5, 1), padding=(0, 2, 0)), True),
        (nn.Conv2d(1, 4, 3, stride=2, padding=1), False),  # stride: the flipped kernel does not apply
        (nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), False),  # the input is padded first
        (nn.Conv2d(2, 4, 3, padding=1), False),  # two channels: oneDNN is fast there
        (_TwoPaths(), False),
    ],
)
def test_input_gradients_equal_autograds(conv, flipped, threads):
    torch.manual_seed(0)
    channels = 2 if isinstance(conv, nn.Conv2d) and conv.in_channels == 2 else 1
    spatial = (7, 9, 6) if isinstance(conv, nn.Conv3d) else (11, 10)
    x = torch.rand(3, channels, *spatial, requires_grad=True)
    out = nn.functional.elu(conv(x)).square().sum()
    (reference,) = torch.autograd.grad(out, x, retain_graph=True)
    assert (_sole_conv_consumer(list(_graph_nodes(out.grad_fn)), x) is not None) == flipped
    (ours,) = input_gradients(out, [x])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    assert torch.backends.mkldnn.enabled and x.grad is None


_LAYERS = [nn.Conv2d(1, 4, 5, padding=2), nn.Conv2d(1, 3, 3, padding=(2, 1), dilation=(2, 1)),
           nn.Conv3d(1, 2, (3, 5, 1), padding=(1, 2, 0))]


@pytest.mark.parametrize("conv", _LAYERS)
def test_differentiable_input_gradients_give_autograds_second_derivatives(conv, threads):
    """The regularizer's case: a penalty of the input gradient, differentiated to the weights,
    the bias and the input; the first layer runs through _FirstLayerDataGradient."""
    torch.manual_seed(0)
    conv = conv.double()
    head = nn.Linear(conv.out_channels, 2).double()
    spatial = (5, 7, 4) if isinstance(conv, nn.Conv3d) else (9, 8)
    x = torch.rand(3, 1, *spatial, dtype=torch.float64, requires_grad=True)
    direction = torch.rand_like(x)
    leaves = [conv.weight, conv.bias, head.weight, x]

    def penalty(first_layer_path):
        out = head(nn.functional.elu(conv(x)).flatten(2).mean(2))[:, 1].sum()
        if first_layer_path:
            (g,) = input_gradients(out, [x], create_graph=True)
        else:
            (g,) = torch.autograd.grad(out, x, create_graph=True)
        cosine = (g * direction).flatten(1).sum(1) / g.flatten(1).norm(dim=1)
        return torch.autograd.grad(cosine.square().sum(), leaves)

    ours, reference = penalty(True), penalty(False)
    assert _sole_conv_consumer(list(_graph_nodes(conv(x).sum().grad_fn)), x) is not None
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_first_layer_data_gradient_has_correct_higher_derivatives():
    """Its backward is made of differentiable convolutions, so a third derivative is right too."""
    torch.manual_seed(0)
    grad_out = torch.rand(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def fn(g, w):
        return _FirstLayerDataGradient.apply(g, w, [1, 1], [1, 1])

    assert torch.autograd.gradcheck(fn, (grad_out, weight))
    assert torch.autograd.gradgradcheck(fn, (grad_out, weight))


def test_input_gradients_mix_flipped_and_plain_inputs_and_unused_ones():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x, z, unused = (torch.rand(2, 1, 8, 8, requires_grad=True) for _ in range(3))
    out = conv(x).sum() + (z * z).sum()
    ref_x, ref_z = torch.autograd.grad(out, [x, z], retain_graph=True)
    gx, gz, gu = input_gradients(out, [x, z, unused])
    torch.testing.assert_close(gx, ref_x)
    torch.testing.assert_close(gz, ref_z)
    assert gu is None


def test_flipped_gradients_keep_a_flag_the_user_switched_off():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    torch.backends.mkldnn.enabled = False
    try:
        input_gradients(conv(x).sum(), [x])
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = True
