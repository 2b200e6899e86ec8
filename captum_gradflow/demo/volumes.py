"""The demo on volumes: a 3-D CNN on synthetic CT-like lesions labelled by brightness only.

``synthetic_lesions_3d`` with the brightness rule, ``SmallCNN3d`` trained briefly, then the
2-D measurements on volumes: S of brightness and of the two decoys (extent and log aspect
ratio, which the label does not depend on) against the library's default noise, F along the
gradient flow, how many flows reach the decision boundary, and GAD(Saliency) against
Saliency (RC of region hulls, the convex hulls of 26-connected voxel components).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Tuple

import torch
from captum.attr import Saliency

from captum_gradflow.alignment import FeatureAlignment
from captum_gradflow.datasets import synthetic_lesions_3d
from captum_gradflow.flow import GradientFlowAlignment
from captum_gradflow.gad import GADWrapper
from captum_gradflow.metrics import attribution_regions, region_complexity
from captum_gradflow.models import SmallCNN3d
from captum_gradflow.training import balanced_accuracy, train_classifier

from .config import RunContext
from .formatting import nanmedian
from .lesions import feature_rows, features

__all__ = ["VOLUME_RULE", "volume_experiment"]

#: The volumes' label: the top half by lesion brightness; extent and aspect are decoys.
VOLUME_RULE = "brightness"


def volume_experiment(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train the 3-D CNN, compare S and F with noise, fit GAD(Saliency) and measure RC."""
    cfg = ctx.cfg
    data = synthetic_lesions_3d(cfg.volume_n, size=cfg.volume_size, seed=cfg.seed, rule=VOLUME_RULE)
    train, test = data.split(0.3)
    torch.manual_seed(cfg.seed)
    model = SmallCNN3d(num_classes=2, channels=(4, 8, 8), hidden=(32, 16), pool_size=2)
    train_classifier(model, train.images, train.labels, epochs=cfg.volume_epochs, lr=3e-3, batch_size=16,
                     class_weight="balanced", seed=cfg.seed, progress=ctx.progress, desc="train (volumes)")
    model.eval()
    x, y, masks = test.images, test.labels, test.masks
    point = FeatureAlignment(model, features()).compare_to_noise(x, target=y, mask=masks, n_noise=cfg.n_noise,
                                                                 seed=cfg.seed)
    n = min(cfg.volume_flow_examples, len(test))
    flow_noise, paths = GradientFlowAlignment(model, features()).compare_to_noise(
        x[:n], target=y[:n], mask=masks[:n], n_noise=cfg.n_noise, seed=cfg.seed, max_steps=cfg.flow_max_steps,
        return_details=True)  # one flow gives F, its noise baseline and the boundary flags
    results: Dict[str, Any] = {
        "n_train": len(train), "n_test": len(test), "size": cfg.volume_size, "rule": VOLUME_RULE,
        "decoys": [f.name for f in features() if f.name != VOLUME_RULE],
        "balanced_accuracy": balanced_accuracy(model, x, y), "n_noise": cfg.n_noise,
        "noise": {"text": point.construction, "flow_text": flow_noise.construction},
        "noise_S_mean": point.mean_S_noise, "S": feature_rows(point),
        "noise_F_mean": flow_noise.mean_S_noise, "F": feature_rows(flow_noise), "flow_examples": n,
        "flow_reached_boundary": float(paths.reached_boundary.float().mean()),
    }
    gad_result, gad_parts = _gad_on_volumes(ctx, model, train, x, y)
    results["gad"] = gad_result
    return results, {"model": model, "x": x, "y": y, "point": point, "flow": flow_noise, **gad_parts}


def _gad_on_volumes(ctx: RunContext, model: torch.nn.Module, train: Any, x: torch.Tensor,
                    y: torch.Tensor) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """GAD(Saliency) fitted on the training volumes; RC of its regions against Saliency's."""
    cfg = ctx.cfg
    gad = GADWrapper(Saliency(model), n_support=cfg.volume_gad_support, steps=cfg.volume_gad_steps, seed=cfg.seed,
                     progress=False)
    gad.fit((train.images, train.labels), pair=(0, 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
        attr, comp = gad.attribute(x, target=y, return_components=True)
    base = comp.maps[0]
    base_regions, gad_regions = attribution_regions(base), attribution_regions(attr)
    rc = region_complexity(gad_regions, base_regions)
    result = {
        "n_support": len(gad.alphas), "steps": cfg.volume_gad_steps, "median_rc": nanmedian(rc.rc),
        "rc_n_undefined": int(rc.n_undefined),
        "median_regions_base": float(base_regions.n_regions.double().median()),
        "median_regions_gad": float(gad_regions.n_regions.double().median()),
        "median_volume_base": float(base_regions.area.double().median()),
        "median_volume_gad": float(gad_regions.area.double().median()),
    }
    return result, {"base": base, "gad": attr, "base_regions": base_regions, "gad_regions": gad_regions}
