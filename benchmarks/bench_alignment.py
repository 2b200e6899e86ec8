"""FeatureAlignment.compare_to_noise against captum Saliency (one input gradient).

Target: three interpretable features (Brightness, Extent, LogAspectRatio, lesion masks) and
32 noise features cost at most 1.15x ``Saliency(model).attribute(x, target=...)``: the
model gradient is computed once and shared, feature gradients are in closed form and the 32
noise directions are aligned with one matmul. For a grayscale model the package's model
gradient is also cheaper than Captum's (the data gradient of a one-channel first convolution
is computed as a forward convolution with the flipped kernel, see
``captum_gradflow/_native_conv.py``), so a second row times the same call on a linear model,
whose gradient is nearly free:
the cost of the features, the noise baseline and the alignment alone, as a fraction of Saliency.
The same target holds on volumes: ``SmallCNN3d`` on 8 lesion volumes ``1 x 32^3`` (one row, with
the small CNN).

Run: ``python -m benchmarks.bench_alignment``.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import torch
from captum.attr import Saliency
from torch import nn

from benchmarks.common import lesion_batch, row, time_side_by_side
from captum_gradflow import (
    Brightness,
    Extent,
    FeatureAlignment,
    LogAspectRatio,
    SmallCNN3d,
    synthetic_lesions_3d,
)

TARGET_RATIO = 1.15


def run(
    quick: bool = False,
    device: str = "cpu",
    model_name: str = "small_cnn",
    batch: int = 16,
    size: int = 128,
) -> List[Dict[str, object]]:
    """Time compare_to_noise, attribute and joint next to Saliency on the same batch."""
    setup = lesion_batch(model_name, batch, size, device)
    if setup is None:
        return []
    model, x, masks, target = setup
    saliency = Saliency(model)
    fa = FeatureAlignment(model, [Brightness(), Extent(), LogAspectRatio()])

    def base() -> object:
        return saliency.attribute(x, target=target)

    def noise() -> object:
        return fa.compare_to_noise(x, target=target, mask=masks, n_noise=32, noise_mask=masks, smooth_sigma=2.0)

    linear = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 2)).to(device).eval()
    fa_linear = FeatureAlignment(linear, fa.features)

    def overhead() -> object:
        return fa_linear.compare_to_noise(
            x, target=target, mask=masks, n_noise=32, noise_mask=masks, smooth_sigma=2.0
        )

    def pointwise() -> object:
        return fa.attribute(x, target=target, mask=masks)

    def joint() -> object:
        return fa.joint(x, target=target, mask=masks)

    repeats, warmup = (5, 1) if quick else (15, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN reports on random weights are not the point here
        # The target pair is timed on its own: interleaving other entry points (the joint
        # alignment's float64 SVD) shifted the allocator's state and the pair's ratio by ~0.1.
        times = time_side_by_side([base, noise], repeats=repeats, warmup=warmup, device=device)
        # The same call on a linear model of the same input size, whose gradient is nearly
        # free: the cost of the features, the noise baseline and the alignment alone.
        alone = time_side_by_side([base, overhead], repeats=repeats, warmup=warmup, device=device)
        if not quick:
            others = time_side_by_side([base, pointwise, joint], repeats=repeats, warmup=warmup, device=device)
    common = dict(model=model_name, batch=batch, size=size, device=device)
    rows = [
        row("compare_to_noise (3 features + 32 noise) vs Saliency", times[1], times[0], TARGET_RATIO, **common),
        row(
            "compare_to_noise on a linear model (overhead alone) vs Saliency", alone[1], alone[0], None,
            **common, note="features, noise and alignment without the model's backward pass",
        ),
    ]
    if not quick:
        rows.append(row("attribute (3 features) vs Saliency", others[1], others[0], None, **common))
        rows.append(row("joint (3 features) vs Saliency", others[2], others[0], None, **common))
    if model_name == "small_cnn":
        rows.append(_volume_row(quick, device, repeats, warmup, batch, size))
    return rows


def _volume_row(quick: bool, device: str, repeats: int, warmup: int, batch: int, size: int
                ) -> Dict[str, object]:
    """The target row on volumes: SmallCNN3d on lesion volumes, at the default point a batch
    of 8 volumes ``1 x 32^3`` (half the images' batch, a quarter of their side, so the
    scaling points halve batch and side like the image rows; an eighth in quick mode).

    3-D moments (a 3x3 covariance and its eigenvectors for the aspect ratio) and the noise
    smoothed over three axes, against one Saliency gradient of the same 3-D CNN.
    """
    batch, size = max(1, batch // 2), max(8, size // (8 if quick else 4))
    torch.manual_seed(0)
    model = SmallCNN3d(num_classes=2).to(device).eval()
    data = synthetic_lesions_3d(batch, size=size, seed=0)
    x, masks, target = data.images.to(device), data.masks.to(device), data.labels.to(device)
    saliency = Saliency(model)
    fa = FeatureAlignment(model, [Brightness(), Extent(), LogAspectRatio()])

    def base() -> object:
        return saliency.attribute(x, target=target)

    def ours() -> object:
        return fa.compare_to_noise(x, target=target, mask=masks, n_noise=32)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN reports on random weights are not the point here
        # A call costs a few ms, and the median of a handful swung the ratio by 0.15 between runs.
        times = time_side_by_side([base, ours], repeats=max(repeats, 21), warmup=warmup, device=device)
    return row(
        "FeatureAlignment on a 3-D CNN vs Captum Saliency", times[1], times[0], TARGET_RATIO,
        model="small_cnn_3d", batch=batch, size=size, device=device,
        note="compare_to_noise: 3 features + 32 masked smoothed noise features, volumes 1 x size^3",
    )


if __name__ == "__main__":
    for name in ("small_cnn", "resnet18"):
        for r in run(model_name=name):
            print(
                f"{r['name']:<55} {r['model']:<9} ours {r['ours_ms']:8.1f} ms  "
                f"base {r['base_ms']:8.1f} ms  ratio {r['ratio']:.3f}"
                + (f"  target {r['target']} {'ok' if r['ok'] else 'MISSED'}" if r["target"] else "")
            )
