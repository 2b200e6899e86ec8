"""Support-model training and the re-binding of Captum methods to support models."""
from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gradflow import GADWrapper, SmallCNN
from captum_gradflow.gad import make_plan, make_support_models, rebind, train_support_model
from captum_gradflow.gad.support import as_tensors, find_model, frozen_copy
from captum_gradflow.training import predict


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, channels=(4, 4, 4), hidden=(16, 8)).eval()
    x = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(24) % 3
    return model, x, y


def test_as_tensors_reads_a_dataloader_once_in_order(tiny):
    _, x, y = tiny
    xs, labels = as_tensors(DataLoader(TensorDataset(x, y), batch_size=5))
    assert torch.equal(xs[0], x) and torch.equal(labels, y)
    xs, labels = as_tensors(((x, x * 2), y))
    assert len(xs) == 2 and torch.equal(xs[1], 2 * x)
    with pytest.raises(TypeError, match="integer class labels"):
        as_tensors((x, y.float()))
    with pytest.raises(ValueError, match="examples"):
        as_tensors((x[:3], y))
    with pytest.raises(TypeError, match="DataLoader"):
        as_tensors([x])


def test_find_model_needs_a_module(tiny):
    model, _, _ = tiny
    assert find_model(Saliency(model)) is model
    assert find_model(Saliency(model.forward)) is model
    with pytest.raises(TypeError, match="nn.Module"):
        find_model(Saliency(lambda t: model(t)))


def test_rebind_follows_layers_wrapped_methods_and_bound_forwards(tiny):
    model, x, _ = tiny
    support = copy.deepcopy(model)
    with torch.no_grad():
        for p in support.parameters():
            p.add_(0.1)
    cam = rebind(LayerGradCam(model, model.features[6]), model, support)
    assert cam.forward_func is support and cam.layer is support.features[6]
    nt = rebind(NoiseTunnel(IntegratedGradients(model.forward)), model, support)
    assert nt.attribution_method.forward_func.__self__ is support and nt.forward_func.__self__ is support
    sal = rebind(Saliency(model), model, support)
    direct = Saliency(support).attribute(x[:4], target=1)
    assert torch.equal(sal.attribute(x[:4], target=1), direct)
    assert not torch.equal(direct, Saliency(model).attribute(x[:4], target=1))


def test_train_support_model_fits_targets_and_restores_flags(tiny):
    model, x, _ = tiny
    support = frozen_copy(model)
    support.features[0].weight.requires_grad_(False)  # frozen by the user: still trained, flag kept
    before = support.features[0].weight.clone()
    targets = predict(support, x) + torch.tensor([1.0, -1.0, 0.0])
    losses = train_support_model(support, (x,), targets, steps=8 * 3, lr=1e-2, batch_size=8,
                                 generator=torch.Generator().manual_seed(0))
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]  # one mean loss per pass of 3 steps
    assert not support.training
    assert support.features[0].weight.requires_grad is False
    assert not torch.equal(before, support.features[0].weight)


class _CountingModel(nn.Module):
    """Counts forward calls, to check that the original logits are not recomputed per epoch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_support_models_cost_one_forward_per_batch_and_are_seeded(tiny):
    model, x, y = tiny
    reference = frozen_copy(_CountingModel(model))
    logits = predict(reference, x)
    plan = make_plan(y, 3, one_vs_all=0)
    alphas = torch.tensor([1.0, 2.0], dtype=torch.float64)
    reference.calls = 0
    kwargs = dict(steps=7, lr=1e-3, batch_size=8, seed=5, progress=False)
    models, history = make_support_models(reference, (x,), logits, y, plan, alphas, warm_start=False, **kwargs)
    assert reference.calls == 0  # every support model trains on its own copy
    assert [m.calls for m in models] == [7, 7]  # one forward per optimizer step, no extra
    again, _ = make_support_models(reference, (x,), logits, y, plan, alphas, warm_start=False, **kwargs)
    for a, b in zip(models, again):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
    warm, _ = make_support_models(reference, (x,), logits, y, plan, alphas, warm_start=True, **kwargs)
    assert warm[1].calls == 2 * 7  # continued from model 1
    assert len(history) == 2 and all(len(h) == 3 for h in history)  # passes of 3, 3 and 1 steps


def test_gad_refuses_layers_outside_the_model(tiny):
    model, _, _ = tiny
    other = SmallCNN(num_classes=3)
    with pytest.raises(ValueError, match="not part of the model"):
        GADWrapper(LayerGradCam(model, other.features[6]))


def test_seed_matters_and_a_dataloader_fits_like_tensors(tiny):
    model, x, y = tiny

    def fitted(data, seed):
        gad = GADWrapper(Saliency(model), n_support=1, steps=6, lr=1e-3, batch_size=8, seed=seed, progress=False)
        return gad.fit(data, pair=(0, 1))

    def weights(gad):
        return torch.cat([p.flatten() for p in gad.support_models[0].parameters()])

    a = fitted((x, y), 0)
    b = fitted(DataLoader(TensorDataset(x, y), batch_size=8), 0)
    c = fitted((x, y), 1)
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))
    assert a.history[0][-1] < a.history[0][0]  # the regression makes progress


def test_support_models_train_on_per_group_targets(tiny):
    model, x, y = tiny
    reference = frozen_copy(model)
    logits = predict(reference, x)
    plan = make_plan(y, 3, pair=(0, 1))
    keep = plan.uses(y)
    alphas = torch.tensor([[1.0, 3.0], [2.0, 6.0]], dtype=torch.float64)  # (alpha_k, alpha_l) per model
    models, _ = make_support_models(reference, (x[keep],), logits[keep], y[keep], plan, alphas,
                                    steps=150, lr=3e-3, batch_size=16, warm_start=True, progress=False)
    after = predict(models[-1], x[keep])
    gap = lambda out, c, o: (out[y[keep] == c, c] - out[y[keep] == c, o]).mean()  # noqa: E731
    grow_k = gap(after, 0, 1) - gap(logits[keep], 0, 1)
    grow_l = gap(after, 1, 0) - gap(logits[keep], 1, 0)
    assert grow_l > 2 * grow_k > 0  # images of l were pushed three times as far as images of k


def test_support_models_do_not_carry_the_users_hooks(tiny):
    model, x, y = tiny
    calls = []
    handles = [model.register_forward_hook(lambda *a: calls.append("fwd")),
               model.features[0].register_forward_pre_hook(lambda *a: calls.append("pre")),
               model.register_full_backward_hook(lambda *a: calls.append("bwd"))]
    try:
        gad = GADWrapper(Saliency(model), n_support=2, steps=4, batch_size=8, progress=False)
        gad.fit((x, y), pair=(0, 1))
        assert calls == []  # fit trains and evaluates hook-free copies only
        for m in gad.support_models:
            assert all(not getattr(mod, d) for mod in m.modules()
                       for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
        gad.attribute(x[:3], target=0)
        assert calls.count("fwd") == 1 and calls.count("pre") == 1  # the base map only
    finally:
        for h in handles:
            h.remove()
