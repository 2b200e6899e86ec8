"""GADWrapper on real digits: distancing works, maps narrow, Captum clients accept it."""
from __future__ import annotations

import hashlib

import warnings

import pytest
import torch
from captum.attr import (
    DeepLift,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from captum_gradflow import GADWrapper, SmallCNN, digits_pair, train_classifier
from captum_gradflow.gad import GADConfig

N_TEST = 48  # test images explained (enough for the "most images" claims, fast with IG)


def fingerprint(model: nn.Module) -> str:
    """Hash of everything GAD promises not to touch: values, flags, modes, hooks."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
        h.update(str(t.requires_grad).encode())
    for name, m in model.named_modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
        h.update(f"{name}:{m.training}:{[len(d) for d in hooks]}".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def digits(digits_38):
    return digits_38[0]


@pytest.fixture(scope="module")
def model(digits_38):
    return digits_38[1]


@pytest.fixture(scope="module")
def fitted(digits, model, tmp_path_factory):
    """GAD over Saliency with the default options, and its save file."""
    before = fingerprint(model)
    gad = GADWrapper(Saliency(model), progress=False).fit((digits.x_train, digits.y_train), pair=(0, 1))
    assert fingerprint(model) == before
    path = tmp_path_factory.mktemp("gad") / "support.pt"
    gad.save(path)
    return gad, path


@pytest.fixture(scope="module")
def three_classes():
    d = digits_pair((0, 1, 7), size=16, seed=0)
    torch.manual_seed(0)
    net = SmallCNN(num_classes=3)
    train_classifier(net, d.x_train, d.y_train, epochs=5, lr=3e-3, progress=False)
    return d, net.eval()


def _check_gad_narrows(gad, model, digits, **kwargs):
    x, y = digits.x_test[:N_TEST], digits.y_test[:N_TEST]
    pred = model(x).argmax(1)
    for support in gad.support_models:
        assert (support(x).argmax(1) == pred).float().mean() >= 0.95
    margins = gad.margins(digits.x_test, digits.y_test)  # (T + 1, N)
    means = margins.mean(1)
    assert (means.diff() > 0.3 * gad.alphas[0]).all(), means
    assert ((margins.diff(dim=0) > 0).all(0)).float().mean() > 0.8  # per image too, over T = 5 small steps
    attr, parts = gad.attribute(x, target=y, return_components=True, **kwargs)
    assert attr.shape == x.shape and len(parts.maps) == gad.n_support + 1
    kept = parts.consistency.flatten(1)
    base = parts.masks[0].flatten(1)
    assert kept.any(1).all()  # non-empty on every test image
    assert not (kept & ~base).any()  # a subset of the base method's top-q mask ...
    assert (kept.sum(1) < base.sum(1)).float().mean() > 0.5  # ... strictly so on most images
    nonzero = attr != 0
    assert torch.equal(attr[nonzero], parts.maps[0][nonzero])


def test_gad_over_saliency_narrows_the_map_on_real_digits(fitted, model, digits):
    gad, _ = fitted
    _check_gad_narrows(gad, model, digits)


def test_gad_over_integrated_gradients_same_seed_same_support_models(fitted, model, digits):
    gad_s, _ = fitted
    gad = GADWrapper(IntegratedGradients(model), progress=False).fit((digits.x_train, digits.y_train), pair=(0, 1))
    for a, b in zip(gad.support_models, gad_s.support_models):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    _check_gad_narrows(gad, model, digits, n_steps=16, internal_batch_size=N_TEST)


def test_user_model_and_inputs_are_untouched(fitted, model, digits):
    gad, _ = fitted
    x = digits.x_test[:6].clone()
    before, x_before = fingerprint(model), x.clone()
    gad.attribute(x, target=digits.y_test[:6])
    with torch.no_grad():
        out = gad.attribute(x, target=0)
    assert fingerprint(model) == before
    assert torch.equal(x, x_before) and not x.requires_grad and not out.requires_grad
    xg = x.clone().requires_grad_(True)
    gad.attribute(xg, target=1)
    assert xg.requires_grad and xg.grad is None


def test_save_load_gives_identical_maps_and_same_seed_same_maps(fitted, model, digits):
    gad, path = fitted
    x, y = digits.x_test[:8], digits.y_test[:8]
    loaded = GADWrapper.load(path, Saliency(model), progress=False)
    assert loaded.plan == gad.plan and torch.equal(loaded.alphas, gad.alphas)
    assert torch.equal(loaded.attribute(x, target=y), gad.attribute(x, target=y))
    assert torch.equal(gad.attribute(x, target=y), gad.attribute(x, target=y))


def test_target_forms_agree(fitted, digits):
    gad, _ = fitted
    x = digits.x_test[:4]
    as_int = gad.attribute(x, target=1)
    assert torch.equal(as_int, gad.attribute(x, target=[1, 1, 1, 1]))
    assert torch.equal(as_int, gad.attribute(x, target=torch.tensor([1, 1, 1, 1])))
    assert torch.equal(as_int, gad.attribute(x, target=torch.tensor(1)))


def test_every_target_form_captum_accepts_is_accepted(fitted, model, digits):
    gad, _ = fitted
    x = digits.x_test[:4]
    forms = [3 - 2, (1,), [1, 1, 1, 1], [(1,), (1,), (1,), (1,)], torch.tensor(1), torch.tensor([1, 1, 1, 1])]
    base = Saliency(model)
    for form in forms:
        base.attribute(x, target=form)  # Captum's own method accepts the form on this model
        assert torch.equal(gad.attribute(x, target=form), gad.attribute(x, target=1)), form
    with pytest.raises(TypeError, match="integer"):
        gad.attribute(x, target=torch.tensor([0.7, 1.3, 0.2, 1.0]))
    with pytest.raises(ValueError, match="indexes a 3-D output"):
        gad.attribute(x, target=(1, 0))


def test_layer_maps_are_upsampled_to_the_input_before_fusion(fitted, model, digits):
    _, path = fitted
    x, y = digits.x_test[:6], digits.y_test[:6]
    cam = LayerGradCam(model, model.features[6])
    gad = GADWrapper.load(path, cam, progress=False)
    coarse = gad.attribute(x, target=y)
    assert coarse.shape[-2:] == (4, 4)  # the layer's own resolution: off by default
    attr, parts = gad.attribute(x, target=y, interpolate_to_input=True, return_components=True)
    up = cam.interpolate(cam.attribute(x, target=y), x.shape[2:], "bilinear")
    assert attr.shape == (6, 1, 16, 16) and torch.allclose(parts.maps[0], up)
    kept = attr != 0
    assert kept.flatten(1).any(1).sum() >= 4 and torch.equal(attr[kept], up[kept])
    assert (kept.flatten(1).sum(1) < parts.masks[0].flatten(1).sum(1)).all()
    assert all(not torch.equal(m, up) for m in parts.maps[1:])  # support models differ


def test_one_vs_all_and_split_push_the_right_logits_apart(three_classes):
    d, net = three_classes
    x, y = d.x_test, d.y_test
    gad = GADWrapper(Saliency(net), n_support=2, epochs=2, lr=1e-3, progress=False)
    gad.fit((d.x_train, d.y_train), one_vs_all=0)
    before, after = net(x).detach(), gad.support_models[-1](x).detach()
    alpha = float(gad.alphas[-1])
    zero, rest = y == 0, y != 0
    # class-0 images: class 0 rises against both others; other images: they rise against 0
    for c in (1, 2):
        grow = (after[zero, 0] - after[zero, c]) - (before[zero, 0] - before[zero, c])
        assert grow.mean() > 0.8 * alpha
    grow_rest = (after[rest].gather(1, y[rest, None]) - after[rest, :1]) - (
        before[rest].gather(1, y[rest, None]) - before[rest, :1])
    assert grow_rest.mean() > 0.8 * alpha
    assert gad.attribute(x[:4], target=y[:4]).shape == x[:4].shape

    gad.fit((d.x_train, d.y_train), split=((0,), (1, 2)))
    after = gad.support_models[-1](x).detach()
    alpha = float(gad.alphas[-1])
    one = y == 1
    across = ((after[one, 1] - after[one, 0]) - (before[one, 1] - before[one, 0])).mean()
    within = ((after[one, 1] - after[one, 2]) - (before[one, 1] - before[one, 2])).mean()
    assert across > 0.8 * alpha and abs(within) < 0.3 * alpha  # the gap within a group is kept

    gad.fit((d.x_train, d.y_train))  # default split by 2-means on the class-mean logits
    assert gad.plan.strategy == "split" and sorted(gad.plan.groups[0] + gad.plan.groups[1]) == [0, 1, 2]
    margins = gad.margins(x, y).mean(1)
    assert (margins.diff() > 0).all()


def test_captum_clients_accept_gad(fitted, model, digits):
    gad, _ = fitted
    x, y = digits.x_test[:4], digits.y_test[:4]
    sens = sensitivity_max(gad.attribute, x, target=y, n_perturb_samples=2)
    assert sens.shape == (4,) and torch.isfinite(sens).all()
    attr = gad.attribute(x, target=y)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.05
        return noise, inputs - noise

    inf = infidelity(model, perturb, x, attr, target=y, n_perturb_samples=3)
    assert inf.shape == (4,) and torch.isfinite(inf).all()
    smooth = NoiseTunnel(gad).attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.05, target=y)
    assert smooth.shape == x.shape and smooth.abs().sum() > 0


@pytest.mark.parametrize(
    "make, kwargs",
    [
        (lambda m: DeepLift(m), {}),
        (lambda m: GuidedBackprop(m), {}),
        (lambda m: InputXGradient(m), {}),
        (lambda m: NoiseTunnel(IntegratedGradients(m)), dict(nt_samples=2, stdevs=0.05, n_steps=4)),
    ],
    ids=["DeepLift", "GuidedBackprop", "InputXGradient", "NoiseTunnel(IG)"],
)
def test_gad_wraps_other_methods(fitted, model, digits, make, kwargs):
    _, path = fitted
    x, y = digits.x_test[:4], digits.y_test[:4]
    method = make(model)
    gad = GADWrapper.load(path, method, progress=False)
    torch.manual_seed(1)
    base = method.attribute(x, target=y, **kwargs)
    torch.manual_seed(1)
    attr, parts = gad.attribute(x, target=y, return_components=True, **kwargs)
    assert attr.shape == base.shape
    assert torch.allclose(parts.maps[0], base)  # same noise for NoiseTunnel under the same seed
    kept = attr != 0
    assert kept.flatten(1).any(1).all() and torch.equal(attr[kept], base[kept])
    assert all(not torch.equal(m, base) for m in parts.maps[1:])  # support models differ


class TwoInputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(in_channels=2, num_classes=2, channels=(4, 4, 4), hidden=(16, 8))

    def forward(self, x, z, scale=1.0):
        return self.net(torch.cat([x, z], dim=1)) * scale


def test_tuple_inputs_and_additional_forward_args(digits):
    torch.manual_seed(0)
    net = TwoInputNet().eval()
    x, z, y = digits.x_train[:32], digits.x_train[:32].flip(-1), digits.y_train[:32]
    gad = GADWrapper(Saliency(net), n_support=2, epochs=2, lr=1e-3, progress=False)
    gad.fit(((x, z), y), pair=(0, 1))
    out = gad.attribute((x[:3], z[:3]), target=y[:3], additional_forward_args=(2.0,))
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == x[:3].shape
    base = Saliency(net).attribute((x[:3], z[:3]), target=y[:3], additional_forward_args=(2.0,))
    for a, b in zip(out, base):
        kept = a != 0
        assert torch.equal(a[kept], b[kept])


def test_bad_input_gives_clear_errors_and_changes_nothing(fitted, model, digits, tmp_path):
    gad, path = fitted
    x, y = digits.x_train, digits.y_train
    state = [m.state_dict()["classifier.5.bias"].clone() for m in gad.support_models]
    plan = gad.plan
    with pytest.raises(ValueError, match="at least 2 classes"):
        gad.fit((x[y == 0], y[y == 0]), pair=(0, 1))
    with pytest.raises(IndexError, match="pair class 3 is out of range"):
        gad.fit((x, y), pair=(3, 8))
    with pytest.raises(IndexError, match=r"labels \[5\] are out of range"):
        gad.fit((x, torch.where(y == 1, 5, y)), pair=(0, 1))
    with pytest.raises(ValueError, match="only one"):
        gad.fit((x, y), pair=(0, 1), one_vs_all=0)
    with pytest.raises(IndexError, match="out of range"):
        gad.attribute(x[:2], target=5)
    with pytest.raises(ValueError, match="needs target"):
        gad.attribute(x[:2])
    with pytest.raises(ValueError, match="q is the fraction"):
        gad.attribute(x[:2], target=0, q=2.0)
    with pytest.raises(ValueError, match="NaN"):
        gad.attribute(torch.full_like(x[:2], float("nan")), target=0)
    assert gad.plan == plan
    assert all(torch.equal(s, m.state_dict()["classifier.5.bias"]) for s, m in zip(state, gad.support_models))

    with pytest.raises(ValueError, match="not fitted"):
        GADWrapper(Saliency(model)).attribute(x[:2], target=0)
    with pytest.raises(TypeError, match="captum.attr.Attribution"):
        GADWrapper(model)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(ValueError, match="could not read"):
        GADWrapper.load(corrupt, Saliency(model))
    foreign = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), foreign)
    with pytest.raises(ValueError, match="not a GADWrapper save file"):
        GADWrapper.load(foreign, Saliency(model))
    other = SmallCNN(num_classes=3)
    with pytest.raises(ValueError, match="does not match"):
        GADWrapper.load(path, Saliency(other))
    with pytest.warns(UserWarning, match="differs from the one the support models"):
        GADWrapper.load(path, Saliency(SmallCNN(num_classes=2)))


def test_target_outside_the_fitted_classes(three_classes):
    d, net = three_classes
    gad = GADWrapper(Saliency(net), n_support=1, epochs=1, progress=False)
    gad.fit((d.x_train, d.y_train), pair=(0, 1))
    assert gad.attribute(d.x_test[:2], target=1).shape == d.x_test[:2].shape
    two = d.y_train < 2
    with pytest.raises(ValueError, match="pair class 2 is absent from the data"):
        gad.fit((d.x_train[two], d.y_train[two]), pair=(0, 2))
    with pytest.raises(ValueError, match=r"target class\(es\) \[2\] were not among the fitted classes \[0, 1\]"):
        gad.attribute(d.x_test[:2], target=[0, 2])


def test_failed_calls_leave_inputs_and_model_as_they_were(fitted, model, digits):
    gad, _ = fitted
    x = digits.x_test[:4].clone()
    before = fingerprint(model)
    for bad in (dict(target=torch.tensor([0.5, 1.0, 0.0, 1.0])), dict(target=7)):
        with pytest.raises((TypeError, IndexError)):
            gad.attribute(x, **bad)
        assert not x.requires_grad
    with pytest.raises(Exception):  # a 3-D input for a 2-D model fails inside the model
        gad.attribute(x[:, 0], target=0)
    assert not x.requires_grad and fingerprint(model) == before
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            gad.attribute(x, target=0)
    assert not x.requires_grad
    with pytest.raises(ValueError, match="empty batch"):
        gad.attribute(x[:0], target=0)
    with pytest.raises(ValueError, match="empty batch"):
        GADWrapper(Saliency(model), steps=1).fit((x[:0], torch.zeros(0, dtype=torch.long)), pair=(0, 1))
    assert fingerprint(model) == before


def test_config_is_validated_and_epochs_convert_to_steps(model):
    cfg = GADConfig(epochs=3, batch_size=50)
    assert cfg.budget(n_examples=249) == 3 * 5
    assert GADConfig(steps=7).budget(n_examples=249) == 7
    gad = GADWrapper(Saliency(model), cfg, lr=3e-3, progress=False)
    assert gad.config == GADConfig(epochs=3, batch_size=50, lr=3e-3) and gad.n_support == 5
    assert GADConfig.from_dict(GADConfig(delta=(1.0, 2.0), alphas=None).to_dict()).delta == (1.0, 2.0)
    for bad, match in [
        (dict(steps=10, epochs=2), "not both"), (dict(lr=0.0), "lr"), (dict(delta=(1.0,)), "delta"),
        (dict(alphas=[2.0, 1.0]), "increasing"), (dict(alphas=[1.0], n_support=2), "n_support=2"),
        (dict(steps=2.5), "steps"), (dict(warm_start="yes"), "warm_start"),
        (dict(alphas=[(1.0, 2.0), (2.0, 1.5)]), "increasing"),
    ]:
        with pytest.raises(ValueError, match=match):
            GADConfig(**bad)
    with pytest.raises(TypeError, match="GADConfig"):
        GADWrapper(Saliency(model), n_steps=3)
    with pytest.raises(ValueError, match="unknown GAD settings"):
        GADConfig.from_dict({"delta": 1.0, "epoch": 3})


def test_batchnorm_in_train_mode_warns_and_is_left_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    net.train()
    x = torch.rand(16, 1, 8, 8)
    y = torch.arange(16) % 2
    before = fingerprint(net)
    gad = GADWrapper(Saliency(net), n_support=1, epochs=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fit never runs the user's model: nothing to warn about
        gad.fit((x, y), pair=(0, 1))
    assert fingerprint(net) == before and net.training
    assert not gad.support_models[0].training
    with pytest.warns(UserWarning, match="train mode"):  # the base map runs the user's model
        gad.attribute(x[:4], target=0)
    assert fingerprint(net) == before and net.training
