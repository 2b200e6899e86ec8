"""GADWrapper: ``attribute`` against the base method, ``fit`` against plain training.

Targets:

* ``attribute`` costs at most ``1.1 x (T + 1)`` times the base method alone (the base method
  runs once per model; fusion must be cheap). Rows report ``ours / base`` with ``base`` the
  wrapped method run alone on the original and on each of the T support models in turn, the
  same T + 1 calls GAD makes.
* ``fit`` costs at most ``1.1 x`` a plain training step per support model per optimizer
  step: the original logits are computed once, and each step is a plain forward, MSE,
  backward and Adam step. Rows report ``fit / (T x steps x plain step)``, the one-time logit
  pass and the model copies included.
* Batching (measured, no target): the T + 1 Saliency maps in one ``torch.func.vmap`` pass
  over the stacked weights (``stack_module_state``) against T + 1 separate Saliency calls.
  GAD keeps the separate calls, which work with every Captum method (hooks, layers,
  NoiseTunnel); the row says what batching would reach on this machine.

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


def _plain_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> Callable[[], None]:
    """A user's ordinary training loop (Adam, cross-entropy) of ``steps`` steps on a fresh copy."""

    def train() -> None:
        m = copy.deepcopy(model).train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        done = 0
        while done < steps:
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, min(len(x), (steps - done) * batch), batch):
                idx = order[i:i + batch]
                loss = F.cross_entropy(m(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1

    return train


def _vmapped_saliency(models: List[nn.Module], x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The T + 1 Saliency maps (|d logit_y / dx|) of same-architecture models in one vmap pass."""
    from torch.func import functional_call, stack_module_state, vmap

    params, buffers = stack_module_state(models)  # once, as GAD could after fit
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one(p, b, xx):
        return functional_call(skeleton, (p, b), (xx,))

    def maps() -> torch.Tensor:
        xr = x.detach().unsqueeze(0).expand(len(models), *x.shape).clone().requires_grad_(True)
        out = vmap(one)(params, buffers, xr)
        picked = out.gather(2, y.view(1, -1, 1).expand(len(models), -1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, xr)
        return grad.abs()

    return maps


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
    steps = 6 if quick else 20
    n_fit = batch * (1 if (quick and heavy) else 2 if quick else 4)
    gen = torch.Generator().manual_seed(0)
    x_fit = torch.rand(n_fit, 1, size, size, generator=gen).to(device)
    y_fit = (torch.arange(n_fit) % 2).to(device)
    x, y = x_fit[:batch], y_fit[:batch]
    repeats, warmup = ((2 if heavy else 4), 1) if quick else (8, 1)
    rows: List[Dict[str, object]] = []
    common = dict(model=model_name, batch=batch, size=size, device=device)

    def gad_for(method):
        return GADWrapper(method, n_support=n_support, steps=steps, batch_size=batch, progress=False)

    # fit: T support models x steps against the same number of plain training steps
    fit = lambda: gad_for(Saliency(model)).fit((x_fit, y_fit), pair=(0, 1))  # noqa: E731
    plain = _plain_training(model, x_fit, y_fit, n_support * steps, batch)
    ours_ms, base_ms = time_side_by_side([fit, plain], repeats=repeats, warmup=warmup, device=device)
    rows.append(row(f"GAD fit per support model per step (T={n_support}, {steps} steps)", ours_ms, base_ms,
                    TARGET_RATIO, **common,
                    note=f"base = plain Adam training, {n_support * steps} steps of {batch} images "
                         f"({base_ms / (n_support * steps):.1f} ms per step)"))

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
        if name == "Saliency":
            rows.append(_batching_row(gad, x, y, each, repeats, warmup, common))
    return rows


def _batching_row(gad, x, y, each, repeats, warmup, common) -> Dict[str, object]:
    """One vmapped pass for the T + 1 Saliency maps against T + 1 separate calls."""
    models = [gad.model, *gad.support_models]
    batched = _vmapped_saliency(models, x, y)
    separate = torch.stack([m.attribute(x, target=y) for m in each])
    assert torch.allclose(batched(), separate, rtol=1e-4, atol=1e-6)  # the same maps

    def base() -> object:
        return [m.attribute(x, target=y) for m in each]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_ms, base_ms = time_side_by_side([batched, base], repeats=repeats, warmup=warmup, device=common["device"])
    return row(f"T+1 Saliency maps in one vmap pass (T={len(models) - 1})", ours_ms, base_ms, None, **common,
               note="measured only: GAD keeps the separate calls (every Captum method works with them)")


if __name__ == "__main__":
    import sys

    for r in run(quick="--full" not in sys.argv):
        print(r)
