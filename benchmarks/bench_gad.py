"""GADWrapper: ``attribute`` against the base method, ``fit`` against plain training.

Targets:

* ``attribute`` costs at most ``1.1 x (T + 1)`` times the base method alone (the base method
  runs once per model; fusion must be cheap). Rows report ``ours / base`` with ``base`` the
  wrapped method run alone on the original and on each of the T support models in turn, the
  same T + 1 calls GAD makes.
* ``fit`` costs at most ``1.1 x`` plain training per support model per epoch: the original
  logits are computed once, and each step is a plain forward, MSE, backward and Adam step.
  Rows report ``fit / (T x epochs x plain epoch)``, the one-time logit pass included.

Run: ``python -m benchmarks.bench_gad`` (quick) or ``python -m benchmarks.bench_gad --full``.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, Saliency
from torch import nn

from benchmarks.common import make_model, row, time_side_by_side
from captum_gradflow import GADWrapper

TARGET_RATIO = 1.1


def _plain_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int) -> Callable[[], None]:
    """A user's ordinary training loop (Adam, cross-entropy) on a fresh copy of the model."""

    def train() -> None:
        m = copy.deepcopy(model).train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch):
                idx = order[i:i + batch]
                loss = F.cross_entropy(m(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    return train


def run(
    quick: bool = False,
    device: str = "cpu",
    model_name: str = "small_cnn",
    batch: int = 16,
    size: int = 128,
) -> List[Dict[str, object]]:
    """Time GAD's ``attribute`` (Saliency, IG) and ``fit`` next to their plain counterparts."""
    model = make_model(model_name, num_classes=2, in_channels=1, device=device)
    if model is None:
        return []
    heavy = model_name != "small_cnn"
    n_support = 2 if (quick and heavy) else 3
    epochs = 3 if quick else 10
    n_fit = batch * (1 if (quick and heavy) else 2 if quick else 4)
    gen = torch.Generator().manual_seed(0)
    x_fit = torch.rand(n_fit, 1, size, size, generator=gen).to(device)
    y_fit = (torch.arange(n_fit) % 2).to(device)
    x, y = x_fit[:batch], y_fit[:batch]
    repeats, warmup = ((2 if heavy else 4), 1) if quick else (8, 1)
    rows: List[Dict[str, object]] = []
    common = dict(model=model_name, batch=batch, size=size, device=device)

    def gad_for(method):
        return GADWrapper(method, n_support=n_support, epochs=epochs, lr=1e-4, batch_size=batch, progress=False)

    # fit: T support models x epochs against the same number of plain training epochs
    fit = lambda: gad_for(Saliency(model)).fit((x_fit, y_fit), pair=(0, 1))  # noqa: E731
    plain = _plain_training(model, x_fit, y_fit, n_support * epochs, batch)
    ours_ms, base_ms = time_side_by_side([fit, plain], repeats=repeats, warmup=warmup, device=device)
    rows.append(row(f"GAD fit (T={n_support}, {epochs} epochs)", ours_ms, base_ms, TARGET_RATIO, **common,
                    note=f"base = plain Adam training, {n_support * epochs} epochs of {n_fit} images"))

    # attribute: one call of the base method per model, plus fusion. The base runs the same
    # method on the original and on each support model in turn: GAD's own calls, without GAD.
    methods = [("Saliency", Saliency, {})]
    if not (quick and heavy):
        # 16 steps, not more: GAD's own cost (fusion) does not grow with the steps, so fewer
        # steps are the stricter test, and shorter calls allow more repeats (one call of a
        # 32-step IG varied by +-15% on two shared cores).
        steps = 4 if quick else 16
        methods.append((f"IG {steps} steps", IntegratedGradients, dict(n_steps=steps, internal_batch_size=batch)))
    with tempfile.TemporaryDirectory() as tmp:  # one set of support models for every method
        path = os.path.join(tmp, "gad.pt")
        gad_for(Saliency(model)).fit((x_fit, y_fit), pair=(0, 1)).save(path)
        gads = [GADWrapper.load(path, make(model), progress=False) for _, make, _ in methods]
    for gad, (name, make, kwargs) in zip(gads, methods):
        each = [make(m) for m in [model, *gad.support_models]]

        def ours(gad=gad, kwargs=kwargs) -> object:
            return gad.attribute(x, target=y, **kwargs)

        def base(each=each, kwargs=kwargs) -> object:
            return [method.attribute(x, target=y, **kwargs) for method in each]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum's "required_grads has been set" notes
            ours_ms, base_ms = time_side_by_side([ours, base], repeats=repeats, warmup=warmup, device=device)
        rows.append(row(f"GAD attribute over {name} (T={n_support})", ours_ms, base_ms, TARGET_RATIO, **common,
                        note=f"base = {name} alone on each of the T+1 models ({base_ms / (n_support + 1):.1f} ms per model)"))
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--full" not in sys.argv):
        print(r)
