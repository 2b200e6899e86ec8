"""Adapters: Zennit attributors as Captum attributions (and wrapped by GAD)."""
from __future__ import annotations

import hashlib

import pytest
import torch
from captum.attr import NoiseTunnel
from torch import nn

from captum_gradflow import GADWrapper, SmallCNN, ZennitAttribution

# conftest has made torchvision (hence zennit) importable on this machine
import zennit.attribution as zennit_attribution  # noqa: E402
import zennit.composites as zennit_composites  # noqa: E402


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode() + t.detach().numpy().tobytes() + str(t.requires_grad).encode())
    for name, m in model.named_modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
        h.update(f"{name}:{m.training}:{[len(d) for d in hooks]}".encode())
    return h.hexdigest()


@pytest.fixture
def small():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, channels=(4, 4, 4), hidden=(16, 8)).eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    return model, x


def test_zennit_gradient_equals_the_input_gradient_of_the_target(small):
    model, x = small
    lrp_free = ZennitAttribution(zennit_attribution.Gradient(model))
    attr = lrp_free.attribute(x, target=[0, 2, 1, 2])
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (expected,) = torch.autograd.grad(out[torch.arange(4), torch.tensor([0, 2, 1, 2])].sum(), xg)
    assert torch.allclose(attr, expected, atol=1e-6)
    assert lrp_free.forward_func is model


def test_epsilon_plus_flat_runs_removes_its_hooks_and_keeps_target_forms(small):
    model, x = small
    before = _fingerprint(model)
    lrp = ZennitAttribution(zennit_attribution.Gradient(model, composite=zennit_composites.EpsilonPlusFlat()))
    attr = lrp.attribute(x, target=1)
    plain = ZennitAttribution(zennit_attribution.Gradient(model)).attribute(x, target=1)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and not torch.allclose(attr, plain)
    assert torch.equal(attr, lrp.attribute(x, target=torch.tensor([1, 1, 1, 1])))
    assert torch.equal(attr, lrp.attribute((x,), target=[1, 1, 1, 1])[0])
    with torch.no_grad():
        assert torch.equal(attr, lrp.attribute(x, target=1))
    assert _fingerprint(model) == before and not x.requires_grad


def test_zennit_adapter_rejects_bad_input(small):
    model, x = small
    lrp = ZennitAttribution(zennit_attribution.Gradient(model))
    with pytest.raises(IndexError, match="out of range"):
        lrp.attribute(x, target=3)
    with pytest.raises(ValueError, match="single input tensor"):
        lrp.attribute((x, x), target=0)
    with pytest.raises(ValueError, match="additional_forward_args"):
        lrp.attribute(x, target=0, additional_forward_args=(1,))
    with pytest.raises(ValueError, match="target is None"):
        lrp.attribute(x)
    with pytest.raises(TypeError, match="Attributor"):
        ZennitAttribution(model)


def test_gad_wraps_zennit_and_rebinds_its_model(small):
    model, x = small
    before = _fingerprint(model)
    y = torch.arange(12) % 3
    data = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    lrp = ZennitAttribution(zennit_attribution.Gradient(model, composite=zennit_composites.EpsilonPlusFlat()))
    gad = GADWrapper(lrp, n_support=2, epochs=2, lr=1e-3, progress=False).fit((data, y), one_vs_all=0)
    for method, support in zip(gad._methods, gad.support_models):
        assert method.attributor.model is support and method.forward_func is support
        assert method.attributor.composite is not lrp.attributor.composite
    attr, parts = gad.attribute(x, target=0, return_components=True)
    assert attr.shape == x.shape and torch.equal(parts.maps[0], lrp.attribute(x, target=0))
    assert not torch.equal(parts.maps[1], parts.maps[0])
    kept = attr != 0
    assert kept.flatten(1).any(1).all() and torch.equal(attr[kept], parts.maps[0][kept])
    smooth = NoiseTunnel(lrp).attribute(x, nt_samples=2, stdevs=0.05, target=0)
    assert smooth.shape == x.shape
    assert _fingerprint(model) == before
