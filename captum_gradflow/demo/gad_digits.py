"""Part 2 of the demo: GAD around three Captum methods on a real pair of handwritten digits.

The small CNN is trained on the pair; GAD's support models are fitted once (they do not
depend on the method) and wrap Integrated Gradients, Saliency and Input x Gradient. Region
complexity (RC) and region sensitivity (RS) compare each GAD map with its base map.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Tuple

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import Tensor, nn

from captum_gradflow.datasets import digits_pair
from captum_gradflow.gad import GADWrapper
from captum_gradflow.metrics import attribution_regions, compare_region_sensitivity, region_complexity
from captum_gradflow.models import SmallCNN
from captum_gradflow.training import balanced_accuracy, train_classifier

from .config import RunContext
from .formatting import nanmedian

__all__ = ["gad_experiment", "region_metrics"]


def gad_experiment(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train on the digits pair, fit GAD once, and measure RC and RS for three methods."""
    cfg, progress = ctx.cfg, ctx.progress
    data = digits_pair(cfg.digits_classes, size=cfg.digits_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = SmallCNN(num_classes=len(cfg.digits_classes))
    train_classifier(model, data.x_train, data.y_train, epochs=cfg.digits_epochs, seed=cfg.seed, progress=progress)
    model.eval()
    x, y = data.x_test[:cfg.gad_eval], data.y_test[:cfg.gad_eval]
    methods = {
        "IntegratedGradients": (IntegratedGradients(model), {"n_steps": cfg.ig_steps}),
        "Saliency": (Saliency(model), {}),
        "InputXGradient": (InputXGradient(model), {}),
    }
    # The support models do not depend on the method: fit them once, then re-wrap the saved
    # models around every other method.
    ig = GADWrapper(methods["IntegratedGradients"][0], n_support=cfg.gad_support, epochs=cfg.gad_epochs,
                    lr=cfg.gad_lr, seed=cfg.seed, progress=progress)
    ig.fit((data.x_train, data.y_train), pair=(0, 1))
    saved = ctx.workdir / "gad_support_models.pt"
    ig.save(saved)
    results: Dict[str, Any] = {
        "classes": list(cfg.digits_classes), "n_train": len(data.y_train), "n_eval": len(y),
        "balanced_accuracy": balanced_accuracy(model, data.x_test, data.y_test),
        "alphas": [float(a) for a in ig.alphas],
        "support_final_loss": [float(h[-1]) for h in ig.history], "methods": {},
    }
    parts: Dict[str, Any] = {"x": x, "y": y, "classes": list(cfg.digits_classes), "methods": {},
                             "model": model, "data": data}
    for name, (method, kwargs) in methods.items():
        gad = ig if name == "IntegratedGradients" else GADWrapper.load(saved, method, progress=False)
        with warnings.catch_warnings():
            # Captum warns each time it switches on requires_grad of the inputs (and back off).
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            attr, comp = gad.attribute(x, target=y, return_components=True, **kwargs)
        results["methods"][name], parts["methods"][name] = region_metrics(model, x, y, comp.maps[0], attr)
    return results, parts


def region_metrics(model: nn.Module, x: Tensor, y: Tensor, base: Tensor, gad: Tensor,
                   q: float = 0.2) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """RC and the paired RS comparison of one method's base and GAD maps."""
    base_regions, gad_regions = attribution_regions(base, q=q), attribution_regions(gad, q=q)
    rc = region_complexity(gad_regions, base_regions)
    rs = compare_region_sensitivity(model, x, gad_regions, base_regions, target=y)
    result = {
        "median_rc": nanmedian(rc.rc),
        "rc_n_undefined": int(rc.n_undefined),
        "median_regions_base": float(base_regions.n_regions.double().median()),
        "median_regions_gad": float(gad_regions.n_regions.double().median()),
        "frac_rs_gad_greater": rs.win_rate,
        "median_rs_gad": nanmedian(rs.gad),
        "median_rs_rest": nanmedian(rs.rest),
        "rs_paired_p": rs.p_value,
        "rs_n_pairs": rs.n_pairs,
        "rs_n_undefined": rs.n_undefined,
    }
    return result, {"base": base, "gad": gad, "base_regions": base_regions, "gad_regions": gad_regions}
