"""Shared fixtures, and the torchvision workaround that lets zennit and quantus import here.

The only torchvision for torch 2.13 on these machines is a CUDA build whose C extension
cannot load on CPU torch; torchvision then fails at import with "operator torchvision::nms
does not exist". Defining the two op schemas it registers fake kernels for lets the pure
Python parts (all zennit and quantus need) import. Where the extension loads, nothing is done.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch


def define_missing_torchvision_ops() -> None:
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        torch.ops.load_library  # noqa: B018 - torch present
        import torchvision  # noqa: F401
        return
    except (RuntimeError, OSError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        try:
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass  # already defined
    define_missing_torchvision_ops.lib = lib  # keep the registration alive


define_missing_torchvision_ops()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread per test process: deterministic, and no oversubscription when the
    two cores are shared (pytest-xdist workers, notebooks' kernels, other jobs), which made
    some tests 10-25x slower with torch's default."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def lesions_small():
    """64 synthetic lesions of 32x32 whose label depends only on brightness."""
    from captum_gradflow import synthetic_lesions

    return synthetic_lesions(64, size=32, seed=0, rule="brightness")


@pytest.fixture(scope="session")
def brightness_model():
    """A SmallCNN trained on 360 lesions labelled by brightness alone, and 120 held-out ones.

    The ground truth of the noise-baseline tests (alignment, flow, noise): trained once.
    """
    from captum_gradflow import SmallCNN, synthetic_lesions, train_classifier

    data = synthetic_lesions(480, size=32, seed=3, rule="brightness")
    train, test = data.split(0.25)
    torch.manual_seed(3)
    model = SmallCNN()
    train_classifier(model, train.images, train.labels, epochs=4, lr=2e-3, seed=3, progress=False)
    return model.eval(), test


@pytest.fixture(scope="session")
def digits_38():
    """Digits 3 and 8 (16x16) and a SmallCNN trained on them: the GAD tests' real data, trained once.

    Shared by the GAD, sweep and Quantus tests; a test must leave the model as it found it.
    """
    from captum_gradflow import SmallCNN, digits_pair, train_classifier

    d = digits_pair((3, 8), size=16, seed=0)
    torch.manual_seed(0)
    model = SmallCNN(num_classes=2)
    train_classifier(model, d.x_train, d.y_train, epochs=8, lr=3e-3, progress=False)
    return d, model.eval()
