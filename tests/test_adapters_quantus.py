"""quantus_explain: this package's and Captum's attributions as a Quantus explain_func."""
import copy

import numpy as np
import pytest
import quantus  # importable thanks to tests/conftest.py's torchvision workaround
import torch
from captum.attr import InputXGradient, IntegratedGradients, LayerGradCam, Saliency

from captum_gradflow import SmallCNN, quantus_explain

# the reference maps below come from Captum on inputs that do not require grad
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=2).eval()
    x = torch.rand(6, 1, 16, 16)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    return model, x, y


def test_quantus_complexity_runs_with_quantus_explain(setup):
    model, x, y = setup
    x_np, y_np = x.numpy(), y.numpy()
    metric = quantus.Complexity(disable_warnings=True, display_progressbar=False)
    scores = metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=None, device="cpu",
                    explain_func=quantus_explain, explain_func_kwargs={"method": Saliency})
    assert len(scores) == 6 and np.isfinite(scores).all()
    # the same as handing Quantus the Captum maps directly: the adapter changes nothing
    a = Saliency(model).attribute(x, target=y).detach().numpy()
    direct = quantus.Complexity(disable_warnings=True, display_progressbar=False)(
        model=model, x_batch=x_np, y_batch=y_np, a_batch=a, device="cpu")
    assert np.allclose(scores, direct)


def test_quantus_sparseness_with_a_built_instance(setup):
    model, x, y = setup
    metric = quantus.Sparseness(disable_warnings=True, display_progressbar=False)
    scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, device="cpu",
                    explain_func=quantus_explain,
                    explain_func_kwargs={"method": IntegratedGradients(model), "n_steps": 8})
    assert len(scores) == 6 and all(0 <= s <= 1 for s in scores)


def test_output_is_numpy_like_captum(setup):
    model, x, y = setup
    out = quantus_explain(model, x.numpy(), y.numpy(), method="InputXGradient")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (6, 1, 16, 16)
    assert np.allclose(out, InputXGradient(model).attribute(x, target=y).detach().numpy())
    summed = quantus_explain(model, x.numpy(), y.numpy(), reduce_axes=(1,))
    assert summed.shape == (6, 1, 16, 16)
    flat = quantus_explain(model, x.numpy(), y.numpy(), reduce_axes=(1,), keepdims=False)
    assert flat.shape == (6, 16, 16)
    last = quantus_explain(model, x.permute(0, 2, 3, 1).numpy(), y.numpy(), channel_first=False)
    assert last.shape == (6, 16, 16, 1)
    assert np.allclose(last[..., 0], quantus_explain(model, x.numpy(), y.numpy())[:, 0])
    one_target = quantus_explain(model, x.numpy(), 1)
    assert np.allclose(one_target, Saliency(model).attribute(x, target=1).numpy())


def test_layer_method_by_name_and_plain_callable(setup):
    model, x, y = setup
    cam = quantus_explain(model, x.numpy(), y.numpy(), method=LayerGradCam,
                          method_kwargs={"layer": "features.6"})
    expected = LayerGradCam(model, model.features[6]).attribute(x, target=y).detach().numpy()
    assert np.allclose(cam, expected)

    def doubled(m, inputs, target):
        return 2 * Saliency(m).attribute(inputs, target=target)

    out = quantus_explain(model, x.numpy(), y.numpy(), method=doubled)
    assert np.allclose(out, 2 * quantus_explain(model, x.numpy(), y.numpy()))


def test_instance_follows_the_model_quantus_passes(setup):
    model, x, y = setup
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    method = Saliency(model)
    out = quantus_explain(other, x.numpy(), y.numpy(), method=method)
    assert np.allclose(out, Saliency(other).attribute(x, target=y).numpy())
    assert method.forward_func is model  # the user's instance is not changed
    with pytest.raises(ValueError, match="another model"):
        quantus_explain(other, x.numpy(), y.numpy(), method=method, rebind=False)


def test_model_and_inputs_are_untouched(setup):
    model, x, y = setup
    model.train()
    try:
        x_np = x.numpy().copy()
        with torch.no_grad():
            out = quantus_explain(model, x_np, y.numpy())
        assert np.isfinite(out).all()
        assert model.training and np.array_equal(x_np, x.numpy())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_bad_arguments_raise_clear_errors(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="not an attribution class"):
        quantus_explain(model, x.numpy(), y.numpy(), method="NoSuchMethod")
    with pytest.raises(TypeError, match="not a captum Attribution"):
        quantus_explain(model, x.numpy(), y.numpy(), method=dict)
    with pytest.raises(TypeError, match="method must be"):
        quantus_explain(model, x.numpy(), y.numpy(), method=3)
    with pytest.raises(ValueError, match="targets"):
        quantus_explain(model, x.numpy(), y.numpy()[:4])
    with pytest.raises(ValueError, match="batch axis"):
        quantus_explain(model, x.numpy(), y.numpy(), reduce_axes=(0,))
    with pytest.raises(TypeError, match="nn.Module"):
        quantus_explain(lambda t: t, x.numpy(), y.numpy())
