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
* ``region_complexity_3d_vs_naive`` (small CNN rows only): RC of 8 GAD-like volume maps (2 quick)
  against their 8 base maps, 64 x 64 x 64 (``|Saliency|`` of a random-weight
  :class:`SmallCNN3d` on synthetic lesion volumes: about a thousand regions per map, one of
  them spanning most of the volume), against a naive implementation on the same kept voxels
  (scikit-image labels, then ``scipy.spatial.ConvexHull`` of all 8 corners of every voxel
  of each component, volumes summed); target 0.1. Ours also measures the union of
  overlapping hulls, which the naive one does not. The note gives the time of the part
  both share (top-q selection and labelling) as a fraction of the naive time: no
  implementation that labels can go below it.
* ``region_complexity_2d_tiny_regions_ms_per_map``: like the first row, on maps of pixel
  noise (``|N(0, 1)|``, about 3,600 regions per 224 x 224 map, two thirds of one or two pixels);
  milliseconds per map pair, target 3.
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
import itertools
from typing import Dict, List

import numpy as np
import torch
from captum.attr import Saliency
from scipy.spatial import ConvexHull
from skimage.measure import label

from benchmarks.common import import_torchvision, make_model, row, time_side_by_side
from captum_gradflow.datasets import synthetic_lesions, synthetic_lesions_3d
from captum_gradflow.maps import reduce_channels, top_q_mask
from captum_gradflow.metrics import (
    attribution_regions,
    compare_region_sensitivity,
    region_complexity,
    region_sensitivity,
)

RC_MAPS, RC_SIZE = 64, 224
RC3_MAPS, RC3_SIZE = 8, 64
_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)))


def naive_hull_volumes(attr: torch.Tensor, q: float = 0.2) -> List[float]:
    """Per map, the summed volumes of the hulls of its components: label, then Qhull of all
    8 corners of every voxel of each component (the same kept voxels as ours)."""
    kept = top_q_mask(reduce_channels(attr), q).mask.numpy()
    totals = []
    for k in kept:
        labels, n = label(k, connectivity=3, return_num=True)
        idx = np.argwhere(labels)
        lab = labels[tuple(idx.T)]
        order = np.argsort(lab, kind="stable")
        idx, lab = idx[order], lab[order]
        bounds = np.r_[0, np.flatnonzero(np.diff(lab)) + 1, len(lab)]
        total = 0.0
        for i in range(n):
            voxels = idx[bounds[i]:bounds[i + 1]]
            corners = (voxels[:, None, :] + _CORNERS[None]).reshape(-1, 3).astype(np.float64)
            total += ConvexHull(corners).volume
        totals.append(total)
    return totals


def label_only(attr: torch.Tensor, q: float = 0.2) -> int:
    """The work ours and the naive one share: top-q selection and labelling of each map."""
    kept = top_q_mask(reduce_channels(attr), q).mask.numpy()
    return sum(label(k, connectivity=3, return_num=True)[1] for k in kept)


def _rc_rows(quick: bool, device: str, model_name: str) -> List[Dict[str, object]]:
    """RC on volumes against the naive implementation, and 2-D RC on pixel-noise maps."""
    from captum_gradflow.models import SmallCNN3d

    torch.manual_seed(0)
    model = SmallCNN3d().to(device).eval()
    n = 2 if quick else RC3_MAPS
    data = synthetic_lesions_3d(n, size=RC3_SIZE, seed=0)
    base, gad = _gad_like(model, data.images.to(device), data.labels.to(device), chunk=2)
    base, gad = base.cpu(), gad.cpu()
    both = torch.cat([gad, base])
    ours, naive, shared = time_side_by_side(
        [lambda: region_complexity(gad, base), lambda: naive_hull_volumes(both),
         lambda: label_only(both)],
        repeats=3, warmup=1,
    )
    rc = region_complexity(gad, base)
    rows = [row(
        "region_complexity_3d_vs_naive", ours, naive, 0.1, model_name, n, RC3_SIZE, device,
        note=(f"{n} map pairs of {RC3_SIZE}^3; mean regions base "
              f"{rc.reference_n_regions.float().mean():.0f}, "
              f"GAD {rc.n_regions.float().mean():.0f}; mean RC {rc.mean():.3f}; top-q and "
              f"labelling alone (both do them) {shared / naive:.3f} of naive"),
    )]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(RC_MAPS, 1, RC_SIZE, RC_SIZE, generator=g).abs()
    other = torch.randn(RC_MAPS, 1, RC_SIZE, RC_SIZE, generator=g).abs()
    keep = top_q_mask(noise[:, 0], 0.2).mask & top_q_mask(other[:, 0], 0.2).mask
    sparse = noise * keep[:, None]
    (ms,) = time_side_by_side([lambda: region_complexity(sparse, noise)], repeats=3, warmup=1)
    rc = region_complexity(sparse, noise)
    rows.append(row(
        "region_complexity_2d_tiny_regions_ms_per_map", ms / RC_MAPS, 1.0, 3.0, model_name,
        RC_MAPS, RC_SIZE, device,
        note=f"ms per map pair; mean regions base {rc.reference_n_regions.float().mean():.0f}",
    ))
    return rows


def _saliency(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, chunk: int = 16
) -> torch.Tensor:
    """|Saliency| maps, ``chunk`` examples per pass."""
    sal = Saliency(model)
    return torch.cat([
        sal.attribute(x[i:i + chunk].detach().requires_grad_(), target=target[i:i + chunk]).detach()
        for i in range(0, len(x), chunk)
    ])


def _gad_like(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, q: float = 0.2, chunk: int = 16
):
    """Base map and a GAD-like map: the base kept where its top-q agrees with a support's."""
    torch.manual_seed(1)
    support = copy.deepcopy(model)
    with torch.no_grad():
        for p in support.parameters():
            p.add_(0.05 * p.std().nan_to_num() * torch.randn_like(p))
    base, other = _saliency(model, x, target, chunk), _saliency(support, x, target, chunk)

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
    repeats = 3 if quick else 7
    rows = [_rc_row(model, quick, device, model_name, repeats)]
    if model_name == "small_cnn":
        rows.extend(_rc_rows(quick, device, model_name))
    return rows + _rs_rows(model, device, model_name, batch, size, quick)


def _rc_row(
    model: torch.nn.Module, quick: bool, device: str, model_name: str, repeats: int
) -> Dict[str, object]:
    """RC of 64 GAD-like maps of 224 x 224 against their base maps, ms per map pair."""
    # Quick mode explains 16 images and tiles them to 64 maps (the per-map work is the same;
    # it saves three quarters of the Saliency passes).
    n_img = 16 if quick else RC_MAPS
    data = synthetic_lesions(n_img, size=RC_SIZE, seed=0)
    x, y = data.images.to(device), data.labels.to(device)
    base, gad = _gad_like(model, x, y)
    base = base.repeat(RC_MAPS // n_img, 1, 1, 1).cpu()
    gad = gad.repeat(RC_MAPS // n_img, 1, 1, 1).cpu()
    (rc_ms,) = time_side_by_side([lambda: region_complexity(gad, base)], repeats=repeats, warmup=1)
    rc = region_complexity(gad, base)
    return row(
        "region_complexity_ms_per_map", rc_ms / RC_MAPS, 1.0, 3.0, model_name, RC_MAPS, RC_SIZE,
        device, note=(
            f"ms per map pair; mean regions base {rc.reference_n_regions.float().mean():.0f}, "
            f"GAD {rc.n_regions.float().mean():.0f}; mean RC {rc.mean():.3f}"
            + ("; quick: 16 maps tiled x4" if quick else "")
        ),
    )


def _rs_rows(
    model: torch.nn.Module, device: str, model_name: str, batch: int, size: int, quick: bool
) -> List[Dict[str, object]]:
    """RS against its own forward passes, and against Quantus' RegionPerturbation."""
    # A pass costs 10-30 ms: three repeats left a ratio 0.1 off between runs.
    repeats, warmup = (11, 2) if quick else (15, 2)
    rows: List[Dict[str, object]] = []
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
