"""train_classifier, predict and balanced_accuracy: training changes parameters and buffers,
nothing else of the user's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_gradflow import balanced_accuracy, predict, train_classifier


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ELU(), nn.Flatten(), nn.Linear(2 * 64, 2)
    )


def _data(n: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > x.mean()).long()
    return x, y


def test_training_changes_weights_and_statistics_only():
    net = _net().eval()
    net[1].train()  # a mixed mode: the user's own choice per module
    net[0].bias.requires_grad_(False)  # a frozen parameter stays frozen and untouched
    calls = []
    net[4].register_forward_hook(lambda *a: calls.append(1))
    bias, weight = net[0].bias.detach().clone(), net[4].weight.detach().clone()
    modes = [m.training for m in net.modules()]
    x, y = _data()
    x.requires_grad_()
    hist = train_classifier(net, x, y, epochs=2, batch_size=8, progress=False, x_val=x[:8], y_val=y[:8])
    assert len(hist.loss) == 2 and len(hist.val_balanced_accuracy) == 2
    assert not torch.equal(net[4].weight, weight)
    assert torch.equal(net[0].bias, bias) and not net[0].bias.requires_grad
    assert net[1].num_batches_tracked.item() > 0  # running statistics are trained
    assert [m.training for m in net.modules()] == modes
    assert all(p.grad is None for p in net.parameters())
    assert x.requires_grad and x.grad is None
    assert len(net[4]._forward_hooks) == 1 and len(calls) > 0  # the user's hook ran and stays


def test_training_is_restored_when_it_raises():
    net = _net().eval()
    x, y = _data()

    def exploding(out, xb, yb):
        return out.sum() * float("nan")

    with pytest.raises(FloatingPointError, match="lower lr"):
        train_classifier(net, x, y, epochs=1, regularizer=exploding, progress=False)
    assert not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_labels_may_live_on_the_data_device_and_be_any_integer_dtype():
    net = _net()
    x, y = _data()
    hist = train_classifier(net, x, y.to(torch.uint8), epochs=1, progress=False, class_weight="balanced")
    assert torch.isfinite(torch.tensor(hist.loss)).all()
    # the same training as with long labels: uint8 is only another spelling of the classes
    same = _net()
    assert train_classifier(same, x, y, epochs=1, progress=False, class_weight="balanced").loss == hist.loss
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), same.parameters()))


def test_validation_labels_are_checked_before_training():
    net = _net()
    x, y = _data()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(IndexError, match=r"y_val: labels \[7\] are out of range"):
        train_classifier(net, x, y, epochs=1, x_val=x[:2], y_val=torch.tensor([0, 7]), progress=False)
    with pytest.raises(ValueError, match="both x_val and y_val"):
        train_classifier(net, x, y, epochs=1, x_val=x[:2], progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_predict_restores_each_modules_mode():
    net = _net().train()
    net[1].eval()
    out = predict(net, _data()[0], batch_size=5)
    assert out.shape == (16, 2)
    assert [m.training for m in net.modules()] == [True, True, False, True, True, True]
    assert net[1].num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="empty batch"):
        predict(net, torch.rand(0, 1, 8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        predict(net, torch.rand(2, 1, 8, 8), batch_size=0)


def test_balanced_accuracy_checks_labels():
    net = _net().eval()
    x, y = _data()
    assert 0.0 <= balanced_accuracy(net, x, y) <= 1.0
    with pytest.raises(TypeError, match="must be integer"):
        balanced_accuracy(net, x, y.float())
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        balanced_accuracy(net, x, y[:3])
