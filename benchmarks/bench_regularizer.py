"""Cost of a regularized training step against a plain cross-entropy step (docs/definitions.md, section 2.6).

Three steps, each a forward, a backward and an Adam step on its own copy of the model, timed
side by side: plain cross-entropy (the baseline), the exact alignment penalty (shared forward,
double backprop, ``backward(inputs=params)``) and the subset mode (a quarter of the batch
re-run with the penalty). Features: Brightness, Extent and LogAspectRatio with each image's
lesion mask. A straightforward double-backprop step (``loss.backward()``, which also builds
``x.grad``) is shown for reference without a target.

With ``quick=False`` on the small CNN at the main configuration, a short training run on
32-pixel lesions also records what the subset mode costs in alignment: the joint alignment J
and balanced accuracy of a plain, an exact-penalty and a subset-penalty model, beside the
training times.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import make_model, row, time_side_by_side
from captum_gradflow import (
    AlignmentRegularizer,
    Brightness,
    Extent,
    FeatureAlignment,
    LogAspectRatio,
    balanced_accuracy,
    synthetic_lesions,
)

EXACT_TARGET = 3.0
SUBSET_TARGET = 2.5
FRACTION = 0.25


def _step(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor],
          backward_inputs: bool = False) -> Callable[[], None]:
    """One optimisation step of ``model`` on the loss ``loss_fn(model)``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params if backward_inputs else None)
        opt.step()

    return step


def run(quick: bool = False, device: str = "cpu", model_name: str = "small_cnn", batch: int = 16,
        size: int = 128) -> List[Dict[str, object]]:
    base_model = make_model(model_name, num_classes=2, in_channels=1, device=device)
    if base_model is None:
        return []
    data = synthetic_lesions(max(batch, 2), size=size, seed=0, rule="brightness+extent")
    x, y = data.images[:batch].to(device), data.labels[:batch].to(device)
    mask = data.masks[:batch].to(device)
    features = [Brightness(), Extent(), LogAspectRatio()]
    exact = AlignmentRegularizer(features, 1.0)
    subset = AlignmentRegularizer(features, 1.0, seed=0)

    def plain_loss(m: nn.Module) -> Tensor:
        return F.cross_entropy(m(x), y)

    def exact_loss(m: nn.Module) -> Tensor:
        xg = x.detach().requires_grad_()
        out = m(xg)
        return F.cross_entropy(out, y) + exact(out, xg, y, mask=mask)

    def subset_loss(m: nn.Module) -> Tensor:
        return F.cross_entropy(m(x), y) + subset.subset_penalty(m, x, y, FRACTION, mask=mask)

    steps = [
        _step(copy.deepcopy(base_model), plain_loss),
        _step(copy.deepcopy(base_model), exact_loss, backward_inputs=True),
        _step(copy.deepcopy(base_model), subset_loss),
        _step(copy.deepcopy(base_model), exact_loss),
    ]
    plain_ms, exact_ms, subset_ms, naive_ms = time_side_by_side(
        steps, repeats=7 if quick else 9, warmup=1 if quick else 2, device=device
    )
    common = dict(model=model_name, batch=batch, size=size, device=device)
    rows = [
        row("regularizer step, exact (3 features)", exact_ms, plain_ms, EXACT_TARGET, **common,
            note="vs plain CE step; shared forward, backward(inputs=params)"),
        row(f"regularizer step, subset {FRACTION:g} (3 features)", subset_ms, plain_ms,
            SUBSET_TARGET, **common,
            note="vs plain CE step; unbiased estimate on a random quarter of the batch"),
        row("double-backprop step, plain backward()", naive_ms, plain_ms, None, **common,
            note="reference: the exact step when x.grad is built too"),
    ]
    if not quick and model_name == "small_cnn" and (batch, size) == (16, 128):
        # 32-pixel images train fastest on one thread, and a busy machine slows two by far more.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            rows.append(_alignment_effect(device))
        finally:
            torch.set_num_threads(threads)
    return rows


def _fit(model: nn.Module, x: Tensor, y: Tensor, masks: Tensor, reg: Optional[AlignmentRegularizer],
         epochs: int = 20, lr: float = 1e-3, batch: int = 32, seed: int = 0) -> None:
    """Class-balanced cross-entropy, Adam with cosine decay; masks follow each batch."""
    counts = torch.bincount(y, minlength=2).float()
    weight = (counts.sum() / (2 * counts)).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb = x[idx].requires_grad_(reg is not None and reg.requires_input_grad)
            out = model(xb)
            loss = F.cross_entropy(out, y[idx], weight=weight)
            if reg is not None:
                loss = loss + reg(out, xb, y[idx], mask=masks[idx])
            opt.zero_grad()
            loss.backward(inputs=params)
            opt.step()
        sched.step()


def _alignment_effect(device: str, seed: int = 0, n_train: int = 300,
                      n_test: int = 600) -> Dict[str, object]:
    """Training time and resulting J of the subset mode against the exact penalty."""
    data = synthetic_lesions(n_train + n_test, size=32, seed=seed, rule="brightness+extent",
                             positive_fraction=0.13)
    tr, te = data[:n_train], data[n_train:]
    x, y, m = tr.images.to(device), tr.labels.to(device), tr.masks.to(device)
    xt, yt, mt = te.images.to(device), te.labels.to(device), te.masks.to(device)
    feats = [Brightness(), Extent()]
    steps = -(-n_train // 32)
    weights = {"brightness": 10.0, "extent": 1.0}
    results, times = {}, {}
    base = make_model("small_cnn", num_classes=2, in_channels=1, device=device)
    torch.manual_seed(seed)
    for name in ("plain", "exact", f"subset {FRACTION:g}"):
        model = copy.deepcopy(base).train()
        reg = None
        if name != "plain":
            frac = 1.0 if name == "exact" else FRACTION
            reg = AlignmentRegularizer(feats, weights, delay=2 * steps, warmup=3 * steps,
                                       fraction=frac,
                                       forward_func=model if frac < 1 else None, seed=seed)
        t0 = time.perf_counter()
        _fit(model, x, y, m, reg, seed=seed)
        times[name] = (time.perf_counter() - t0) * 1000.0
        joint = FeatureAlignment(model, feats).joint(xt, target=yt, mask=mt)
        results[name] = (joint.nanmean().item(), balanced_accuracy(model, xt, yt))
    note = "; ".join(f"{k}: J {j:.3f}, bal.acc {a:.3f}" for k, (j, a) in results.items())
    subset = f"subset {FRACTION:g}"
    return row(f"lesion training 32px, {subset} vs exact penalty (time, 1 thread)", times[subset],
               times["exact"], None, "small_cnn", 32, 32, device, note=note)


if __name__ == "__main__":
    for r in run():
        print(r)
