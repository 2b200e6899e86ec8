"""How the noise baseline's construction moves the verdicts (docs/definitions.md, section 2.3).

The same two lesion models, the same test images and features, and three ways of drawing the
noise directions with :func:`~captum_gradflow.noise.make_noise`: over the whole image without
smoothing (what a new user tries first), inside the lesion mask smoothed on its scale but not
centred, and the library's default (inside the mask, smoothed on its scale, centred). The
label's rule uses brightness and extent only, so log aspect ratio is a decoy: a construction
under which the decoy "beats noise" flatters every feature.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

from torch import nn

from captum_gradflow.alignment import FeatureAlignment
from captum_gradflow.datasets import Lesions
from captum_gradflow.noise import NoiseComparison

from .config import DemoConfig, RunContext
from .lesions import feature_rows, features

__all__ = ["CONSTRUCTIONS", "DECOY", "noise_constructions"]

#: The feature the lesion label does not depend on.
DECOY = "log_aspect_ratio"

#: (short name, arguments of ``compare_to_noise``); the library's default comes last and
#: passes nothing, so it is whatever :func:`~captum_gradflow.noise.make_noise` defaults to.
CONSTRUCTIONS: List[Tuple[str, Dict[str, Any]]] = [
    ("whole image, unsmoothed", {"noise_mask": None, "smooth_sigma": None, "center_noise": False}),
    ("lesion mask, smoothed, not centred", {"center_noise": False}),
    ("the library's default", {}),
]


def _arguments(kwargs: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "(none: the defaults)"


def _compare(model: nn.Module, test: Lesions, cfg: DemoConfig, kwargs: Dict[str, Any]) -> NoiseComparison:
    fa = FeatureAlignment(model, features())
    with warnings.catch_warnings():
        # Whole-image noise warns that it covers more than the features: that is the point here.
        warnings.filterwarnings("ignore", message="the noise covers", category=RuntimeWarning)
        return fa.compare_to_noise(test.images, target=test.labels, mask=test.masks, n_noise=cfg.n_noise,
                                   seed=cfg.seed, **kwargs)


def noise_constructions(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """S against noise of every feature, for both lesion models, under each construction."""
    cfg, les = ctx.cfg, ctx.parts["alignment"]
    test = les["test"]
    rows = []
    for name, kwargs in CONSTRUCTIONS:
        row: Dict[str, Any] = {"construction": name, "arguments": _arguments(kwargs), "default": not kwargs,
                               "models": {}}
        for model_name in ("plain", "regularized"):
            # The default is the comparison section 1 already ran on the same model and images.
            model = les[model_name]["model"]
            report = les[model_name]["point"] if not kwargs else _compare(model, test, cfg, kwargs)
            row["description"] = report.construction
            row["models"][model_name] = {"noise_S_mean": report.mean_S_noise, "S": feature_rows(report)}
        rows.append(row)
    label_features = list(ctx.results["alignment"]["regularized_features"])
    return {"rows": rows, "decoy": DECOY, "label_features": label_features, "n_noise": cfg.n_noise}, {}
