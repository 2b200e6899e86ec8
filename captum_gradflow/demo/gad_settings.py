"""GAD's settings at demo time: a small :func:`~captum_gradflow.gad.gad_sweep` around the defaults.

The defaults of :class:`~captum_gradflow.gad.GADConfig` were chosen from a sweep over three
digit pairs, the synthetic lesions and three methods (``docs/gad_sweep.md``). Here the same
trade-off is measured on the demo's digit pair and model: the defaults and the same fit with
a stronger push (larger ``delta``), for Saliency and Input x Gradient, on the test split.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Dict, Tuple

from captum.attr import InputXGradient, Saliency

from captum_gradflow.gad import GADConfig, gad_sweep
from captum_gradflow.gad.sweep import evaluate_gad

from .config import RunContext

__all__ = ["KEPT_MAX", "WIN_MIN", "WIN_ALPHA", "default_settings", "gad_sweep_experiment"]

#: Issue 13's targets: GAD keeps at most this fraction of the base map's top-q pixels ...
KEPT_MAX = 0.75
#: ... and the regions it keeps win RS against the ones it drops this often, at this p.
WIN_MIN, WIN_ALPHA = 0.65, 0.01


def default_settings(n_fit: int) -> Dict[str, Any]:
    """GADConfig's defaults, read from the class (the budget for ``n_fit`` fit images)."""
    d = GADConfig()
    return {"n_support": d.n_models, "delta": d.delta, "lr": d.lr, "steps": d.budget(n_fit),
            "warm_start": d.warm_start, "batch_size": d.batch_size}


def gad_sweep_experiment(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The sweep on the GAD experiment's digit pair and model: ``delta`` at the default and at
    ``cfg.gad_sweep_scales`` times it, every other setting at its default (or the quick size)."""
    cfg, gad = ctx.cfg, ctx.parts["gad"]
    data, model = gad["data"], gad["model"]
    defaults = default_settings(len(data.y_train))
    deltas = [float(defaults["delta"]) * s for s in cfg.gad_sweep_scales]
    config = GADConfig(n_support=cfg.gad_sweep_support, steps=cfg.gad_sweep_steps, seed=cfg.seed)
    x, y = data.x_test[:cfg.gad_sweep_eval], data.y_test[:cfg.gad_sweep_eval]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
        table = gad_sweep(model, {"Saliency": Saliency, "InputXGradient": InputXGradient}, (data.x_train, data.y_train),
                          {"delta": deltas}, eval_data=(x, y), pair=(0, 1), config=config, progress=ctx.progress)
    used = {"n_support": config.n_models, "steps": config.budget(len(data.y_train))}
    results = {
        "classes": list(cfg.digits_classes), "n_fit": len(data.y_train), "n_eval": len(y),
        "defaults": defaults, "swept": {"delta": deltas}, "fixed": used,
        "at_defaults": all(used[k] == defaults[k] for k in used),
        "kept_max": KEPT_MAX, "win_min": WIN_MIN, "win_alpha": WIN_ALPHA,
        "q": inspect.signature(evaluate_gad).parameters["q"].default,
        "rows": [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                 for row in table.to_dict("records")],
    }
    return results, {"table": table}
