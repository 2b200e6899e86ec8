"""The model-state guard and the input checks (captum_gradflow._guard)."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from captum_gradflow._checks import check_batch, check_target_dtype
from captum_gradflow._guard import batch_dependent_modules, find_module, preserved, warn_user


class Net(nn.Module):
    """A few-channel conv net with BatchNorm and Dropout, on 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.tanh(self.bn(self.conv(x)))).flatten(1))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_()
        net.bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [
            (name, list(getattr(m, name).items()))
            for m in model.modules() for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
        ],
    }


def _assert_same(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert all(a is b for a, b in zip(after["grads"], before["grads"]))
    assert after["hooks"] == before["hooks"]
    for k, v in before["tensors"].items():
        assert torch.equal(after["tensors"][k], v), k


def test_restores_everything_when_the_body_raises():
    net = _net().train()
    net.bn.eval()  # a mixed mode must come back module by module
    x = torch.rand(4, 1, 8, 8)
    before = _state(net)
    with pytest.raises(KeyError, match="boom"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with preserved(net, (x,), "test"):
                x.requires_grad_()
                net.fc.weight.requires_grad_(False)
                net.eval()
                net.conv.register_forward_hook(lambda *a: None)
                net(x).sum().backward()
                raise KeyError("boom")
    _assert_same(net, before)
    assert not x.requires_grad and x.grad is None


def test_batchnorm_statistics_restored_in_place():
    net = _net().train()
    mean = net.bn.running_mean
    before = _state(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with preserved(net, (), "test"):
            net(torch.rand(5, 1, 8, 8))
            assert not torch.equal(net.bn.running_mean, before["tensors"]["bn.running_mean"])
            assert net.bn.num_batches_tracked.item() == 1
    _assert_same(net, before)
    assert net.bn.running_mean is mean  # restored in place: the user's references stay valid


def test_hooks_added_during_the_call_are_removed_and_the_users_kept():
    net = _net()
    calls = []
    user = net.conv.register_forward_hook(lambda *a: calls.append("user"))
    global_before = dict(nn.modules.module._global_forward_hooks)
    with preserved(net, (), "test"):
        net.conv.register_forward_hook(lambda *a: calls.append("call"))
        net.fc.register_full_backward_hook(lambda *a: None)
        net.bn.register_forward_pre_hook(lambda *a: None)
        net.fc.weight.register_hook(lambda g: g)
        nn.modules.module.register_module_forward_hook(lambda *a: calls.append("global"))
        user.remove()  # a call must not drop the user's hook either
    assert list(net.conv._forward_hooks) == [user.id]
    assert not net.fc._backward_hooks and not net.bn._forward_pre_hooks
    assert not net.fc.weight._backward_hooks
    assert nn.modules.module._global_forward_hooks == global_before
    net(torch.rand(2, 1, 8, 8))
    assert calls == ["user"]


def test_eval_mode_model_copies_nothing(monkeypatch):
    net = _net()
    clones = []
    real_clone = torch.Tensor.clone

    def counting_clone(self, *args, **kwargs):
        clones.append(tuple(self.shape))
        return real_clone(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", counting_clone)
    with preserved(net, (torch.rand(2, 1, 8, 8),), "test"):
        net(torch.rand(2, 1, 8, 8))
    assert clones == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with preserved(net.train(), (), "test"):
            pass
    # In train mode only the BatchNorm buffers are copied (the ones a forward updates).
    assert sorted(clones) == [(), (3,), (3,)]


def test_train_mode_warns_once_per_model_at_the_users_line():
    net = _net().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with preserved(net, (), "FeatureAlignment.attribute"):
                pass
        with preserved(_net(), (), "eval model"):
            pass
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "FeatureAlignment.attribute" in message
    assert "bn (BatchNorm2d)" in message and "drop (Dropout)" in message
    assert caught[0].filename == __file__


def test_warn_user_skips_package_frames():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_user("hello", RuntimeWarning)
    assert caught[0].filename == __file__ and caught[0].category is RuntimeWarning


def test_batch_dependent_modules():
    net = _net()
    assert batch_dependent_modules(net) == []
    net.bn.track_running_stats, net.bn.running_mean, net.bn.running_var = False, None, None
    assert batch_dependent_modules(net) == ["bn (BatchNorm2d)"]  # batch statistics even in eval
    assert batch_dependent_modules(nn.Dropout(0.0).train()) == []


def test_in_place_parameter_write_is_reported_and_data_swap_restored():
    net = _net()
    weight = net.fc.weight.data
    with pytest.warns(RuntimeWarning, match=r"conv\.bias.*written in place"):
        with preserved(net, (), "test"):
            with torch.no_grad():
                net.conv.bias.add_(1.0)
            net.fc.weight.data = torch.zeros_like(weight)
    assert net.fc.weight.data_ptr() == weight.data_ptr()


def test_grad_and_registries_restored():
    net = _net()
    fc = net.fc
    with preserved(net, (), "test"):
        net(torch.rand(2, 1, 8, 8)).sum().backward()
        net.fc = nn.Linear(3 * 8 * 8, 2)
        net.register_buffer("extra", torch.zeros(1))
    assert all(p.grad is None for p in net.parameters())
    assert net.fc is fc and "extra" not in dict(net.named_buffers())


def test_training_keeps_parameter_and_buffer_changes():
    net = _net().eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    w = net.fc.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no train-mode warning, no in-place report
        with preserved(net, (), "train", training=True):
            net.train()
            net(torch.rand(4, 1, 8, 8)).sum().backward()
            opt.step()
    assert not torch.equal(net.fc.weight, w)
    assert net.bn.num_batches_tracked.item() == 1
    assert not net.training and all(p.grad is None for p in net.parameters())


def test_eval_mode_option_and_nesting():
    net = _net().train()
    net.drop.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with preserved(net, (), "predict", eval_mode=True):
            assert not any(m.training for m in net.modules())
            with preserved(net, (), "inner"):  # nested guards restore in turn
                net(torch.rand(2, 1, 8, 8))
    assert [m.training for m in net.modules()] == [True, True, True, False, True]


def test_plain_function_and_partial():
    net = _net()
    x = torch.rand(2, 1, 8, 8)
    with preserved(lambda t: net(t), (x,), "lambda"):
        x.requires_grad_()
    assert not x.requires_grad
    assert find_module(lambda t: net(t)) is None
    assert find_module(functools.partial(net.forward)) is net
    assert find_module(net.forward) is net
    check_batch((torch.rand(2, 3).double(),), lambda t: t, "plain")  # no dtype check without a module


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.rand(0, 1, 8, 8), ValueError, "empty batch"),
        (torch.tensor(1.0), ValueError, "0-d tensor"),
        (torch.rand(2, 1, 8, 8, device="meta"), ValueError, "'meta' device"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), TypeError, "torch.uint8"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.bool), TypeError, "torch.bool"),
        (torch.rand(2, 1, 8, 8).double(), TypeError, "float64 but the model's parameters are torch.float32"),
        (torch.rand(2, 1, 8, 8).half(), TypeError, "float16"),
        ([torch.rand(2, 1, 8, 8), 3.0], TypeError, "float, not a Tensor"),
    ],
    ids=["empty", "0d", "meta", "uint8", "bool", "float64", "float16", "not-a-tensor"],
)
def test_check_batch_rejects(x, error, match):
    with pytest.raises(error, match=match):
        check_batch(x if isinstance(x, list) else (x,), _net(), "attribute")


def test_check_batch_inference_mode_and_model_state():
    net = _net()
    with torch.inference_mode():
        x = torch.rand(2, 1, 8, 8)
        with pytest.raises(RuntimeError, match="inside torch.inference_mode"):
            check_batch((x,), net, "attribute")
    with pytest.raises(RuntimeError, match="created under torch.inference_mode"):
        check_batch((x,), net, "attribute")
    with pytest.raises(ValueError, match="model's parameters are on the 'meta' device"):
        check_batch((torch.rand(2, 1, 8, 8),), _net().to("meta"), "attribute")
    with torch.inference_mode():
        frozen = _net()
    with pytest.raises(RuntimeError, match="parameters were created under torch.inference_mode"):
        check_batch((torch.rand(2, 1, 8, 8),), frozen, "attribute")
    with torch.no_grad():  # no_grad is fine: the methods enable grad themselves
        check_batch((torch.rand(2, 1, 8, 8),), net, "attribute")
    check_batch((torch.zeros(2, 4, dtype=torch.long),), nn.Embedding(5, 2), "layer", floating=False)


@pytest.mark.parametrize(
    "target",
    [torch.tensor([0.7, 1.3]), 1.0, [0, 1.0], (0, 1.5), np.array([0.0, 1.0]), np.float64(1.0),
     [torch.tensor(0.5)]],
    ids=["tensor", "float", "list", "tuple", "numpy", "numpy-scalar", "list-of-tensors"],
)
def test_float_targets_rejected(target):
    with pytest.raises(TypeError, match="a target names classes and must be integer"):
        check_target_dtype(target)


def test_integer_targets_accepted():
    for target in (None, 1, (0, 1), [0, 1], torch.tensor([0, 1]), torch.tensor([True, False]), np.int64(1)):
        check_target_dtype(target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU-only machines have one device)")
def test_check_batch_device_mismatch():
    net = _net()
    with pytest.raises(ValueError, match="is on cuda:0 but the model is on cpu"):
        check_batch((torch.rand(2, 1, 8, 8, device="cuda"),), net, "attribute")
    check_batch((torch.rand(2, 1, 8, 8, device="cuda"),), net.cuda(), "attribute")
