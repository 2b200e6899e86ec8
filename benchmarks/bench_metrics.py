"""Region metrics: speed of RC, overhead of RS over its own forward passes, and RS against
Quantus' RegionPerturbation.

Rows (``ratio = ours_ms / base_ms``, lower is better):

* ``region_complexity_ms_per_map``: RC of 64 GAD-like maps against their 64 base maps, all
  224 x 224 (``attribution_regions`` on both, exact union areas). ``ours_ms`` is the time per
  map pair, ``base_ms`` is fixed at 1.0, so the ratio reads as milliseconds; target 3.
  The base maps are ``|Saliency|`` of the model on synthetic lesions; the GAD-like maps keep
  the base map where its top 20% agrees with that of a perturbed copy of the model (a
  stand-in for a support model). Saliency of a random-weight ResNet-18 is close to pixel
  noise (thousands of regions per map): the hard case.
* ``region_sensitivity_vs_forward``: ``region_sensitivity`` with precomputed regions against
  the same batched forward passes alone (clean + occluded rows); target 1.1.
* ``compare_region_sensitivity_vs_forward``: the paired comparison (clean + two occlusions)
  against its forward passes alone; target 1.1.
* ``region_sensitivity_vs_quantus_region_perturbation``: our RS against
  ``quantus.RegionPerturbation`` (one most-relevant 8 x 8 patch occluded with the mean: the
  same two forward passes per example) on the same model, inputs and maps; no target.

Run: ``python -m benchmarks.bench_metrics``.
"""
from __future__ import annotations

import copy
from typing import Dict, List

import torch
from captum.attr import Saliency

from benchmarks.common import import_torchvision, make_model, row, time_side_by_side
from captum_gradflow.datasets import synthetic_lesions
from captum_gradflow.metrics import (
    attribution_regions,
    compare_region_sensitivity,
    region_complexity,
    region_sensitivity,
)

RC_MAPS, RC_SIZE = 64, 224


def _saliency(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, chunk: int = 16
) -> torch.Tensor:
    sal = Saliency(model)
    return torch.cat([
        sal.attribute(x[i:i + chunk].detach().requires_grad_(), target=target[i:i + chunk]).detach()
        for i in range(0, len(x), chunk)
    ])


def _gad_like(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, q: float = 0.2):
    """Base map and a GAD-like map: the base kept where its top-q agrees with a support's."""
    torch.manual_seed(1)
    support = copy.deepcopy(model)
    with torch.no_grad():
        for p in support.parameters():
            p.add_(0.05 * p.std().nan_to_num() * torch.randn_like(p))
    base, other = _saliency(model, x, target), _saliency(support, x, target)

    def top(a: torch.Tensor) -> torch.Tensor:
        flat = a.abs().sum(1).flatten(1)
        cut = flat.quantile(1 - q, dim=1, keepdim=True)
        return (flat >= cut).reshape(a.shape[0], 1, *a.shape[2:])

    return base, base * (top(base) & top(other))


def run(
    quick: bool = False,
    device: str = "cpu",
    model_name: str = "small_cnn",
    batch: int = 16,
    size: int = 128,
) -> List[Dict[str, object]]:
    model = make_model(model_name, device=device)
    if model is None:
        return []
    repeats, warmup = (3, 1) if quick else (7, 2)
    rows: List[Dict[str, object]] = []

    # RC: 64 maps of 224 x 224. Quick mode explains 16 images and tiles them to 64 maps
    # (the per-map work is the same; it saves three quarters of the Saliency passes).
    n_img = 16 if quick else RC_MAPS
    data = synthetic_lesions(n_img, size=RC_SIZE, seed=0)
    x, y = data.images.to(device), data.labels.to(device)
    base, gad = _gad_like(model, x, y)
    base = base.repeat(RC_MAPS // n_img, 1, 1, 1).cpu()
    gad = gad.repeat(RC_MAPS // n_img, 1, 1, 1).cpu()
    (rc_ms,) = time_side_by_side([lambda: region_complexity(gad, base)], repeats=repeats, warmup=1)
    rc = region_complexity(gad, base)
    rows.append(row(
        "region_complexity_ms_per_map", rc_ms / RC_MAPS, 1.0, 3.0, model_name, RC_MAPS, RC_SIZE,
        device, note=(
            f"ms per map pair; mean regions base {rc.reference_n_regions.float().mean():.0f}, "
            f"GAD {rc.n_regions.float().mean():.0f}; mean RC {rc.mean():.3f}"
            + ("; quick: 16 maps tiled x4" if quick else "")
        ),
    ))

    # RS against its own forward passes.
    data = synthetic_lesions(max(batch, 2), size=size, seed=1)
    x, y = data.images[:batch].to(device), data.labels[:batch].to(device)
    base, gad = _gad_like(model, x, y)
    base_regions, gad_regions = attribution_regions(base), attribution_regions(gad)
    mask = base_regions.mask.to(device).unsqueeze(1)
    occluded = torch.where(mask, x.mean(dim=(-2, -1), keepdim=True), x)
    gad_mask = gad_regions.mask.to(device).unsqueeze(1)
    rest = torch.where(mask & ~gad_mask, x.mean(dim=(-2, -1), keepdim=True), x)
    occluded_gad = torch.where(gad_mask, x.mean(dim=(-2, -1), keepdim=True), x)
    two, three = torch.cat([x, occluded]), torch.cat([x, occluded_gad, rest])

    def forward(batch_x: torch.Tensor):
        with torch.no_grad():
            return model(batch_x)

    ours, alone = time_side_by_side(
        [lambda: region_sensitivity(model, x, base_regions, target=y), lambda: forward(two)],
        repeats=repeats, warmup=warmup, device=device,
    )
    rows.append(row(
        "region_sensitivity_vs_forward", ours, alone, 1.1, model_name, batch, size, device,
        note="regions precomputed; base: the same 2N-row forward pass",
    ))
    ours, alone = time_side_by_side(
        [lambda: compare_region_sensitivity(model, x, gad_regions, base_regions, target=y),
         lambda: forward(three)],
        repeats=repeats, warmup=warmup, device=device,
    )
    rows.append(row(
        "compare_region_sensitivity_vs_forward", ours, alone, 1.1, model_name, batch, size, device,
        note="regions precomputed; base: the same 3N-row forward pass",
    ))

    quantus = _import_quantus()
    if quantus is not None:
        metric = quantus.RegionPerturbation(
            patch_size=8, regions_evaluation=1, perturb_baseline="mean", normalise=False,
            abs=True, disable_warnings=True, display_progressbar=False,
        )
        x_np, y_np, a_np = x.cpu().numpy(), y.cpu().numpy(), base.cpu().numpy()
        ours, theirs = time_side_by_side(
            [lambda: region_sensitivity(model, x, base_regions, target=y),
             lambda: metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                            device=device, batch_size=batch, softmax=False)],
            repeats=repeats, warmup=warmup, device=device,
        )
        rows.append(row(
            "region_sensitivity_vs_quantus_region_perturbation", ours, theirs, None,
            model_name, batch, size, device,
            note="Quantus: 1 patch of 8x8, mean baseline, 2 forward passes per example",
        ))
    return rows


def _import_quantus():
    if import_torchvision() is None:
        return None
    try:
        import quantus

        return quantus
    except Exception:  # quantus missing or broken here: no Quantus row, not a crash
        return None


if __name__ == "__main__":
    for r in run(quick=True) + run(quick=True, model_name="resnet18"):
        print(r)
