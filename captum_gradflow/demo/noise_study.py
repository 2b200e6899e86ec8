"""How the noise baseline's construction moves the verdicts (docs/definitions.md, section 2.3).

The same two lesion models, the same test images and features, and three ways of drawing the
noise directions: over the whole image without smoothing, over the whole image smoothed on the
features' scale, and smoothed inside the lesion mask (the demo's construction). The label's
rule uses brightness and extent only, so log aspect ratio is a decoy: a construction under
which the decoy "beats noise" flatters every feature.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from captum_gradflow.alignment import FeatureAlignment

from .config import RunContext
from .lesions import feature_rows, features

__all__ = ["DECOY", "noise_constructions"]

#: The feature the lesion label does not depend on.
DECOY = "log_aspect_ratio"


def _constructions(sigma: float) -> List[Tuple[str, bool, float]]:
    """(description, noise inside the lesion mask, smoothing in px); the demo's comes last."""
    return [("whole image, unsmoothed", False, 0.0),
            (f"whole image, smoothed σ = {sigma:g} px", False, sigma),
            (f"lesion mask, smoothed σ = {sigma:g} px (the demo's)", True, sigma)]


def noise_constructions(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """S against noise of every feature, for both lesion models, under each construction."""
    cfg, les = ctx.cfg, ctx.parts["alignment"]
    test = les["test"]
    x, y, masks = test.images, test.labels, test.masks
    # An explicit all-ones mask, not None: "whole image" must not depend on a default.
    everywhere = torch.ones_like(masks)
    rows = []
    for name, in_mask, sigma in _constructions(cfg.smooth_sigma):
        row: Dict[str, Any] = {"construction": name, "in_mask": in_mask, "smooth_sigma": sigma, "models": {}}
        for model_name in ("plain", "regularized"):
            fa = FeatureAlignment(les[model_name]["model"], features())
            report = fa.compare_to_noise(x, target=y, mask=masks, n_noise=cfg.n_noise, seed=cfg.seed,
                                         noise_mask=masks if in_mask else everywhere, smooth_sigma=sigma)
            row["models"][model_name] = {"noise_S_mean": report.mean_S_noise, "S": feature_rows(report)}
        rows.append(row)
    label_features = list(ctx.results["alignment"]["regularized_features"])
    return {"rows": rows, "decoy": DECOY, "label_features": label_features, "n_noise": cfg.n_noise}, {}
