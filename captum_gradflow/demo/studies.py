"""The seed paper's further checks on the lesion models: the lambda sweep, the feature
ablation and the paper's one-output model.

Each reuses the train and test split and the λ = 0 and regularized models of
:func:`~captum_gradflow.demo.lesions.lesion_experiment` (same seeds, so a sweep point with the
same weights would be the same model), and trains only the models it adds.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from .config import MAX_ACCURACY_DROP, RunContext
from .formatting import paired_greater
from .lesions import evaluate_lesion_model, lesion_regularizer, train_lesion_model

__all__ = ["choose_lambda", "feature_ablation", "lambda_sweep", "one_output_model"]


def _summary(result: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("balanced_accuracy", "J_mean", "J_median", "noise_S_mean", "S")
    return {k: result[k] for k in keys}


def _train_and_measure(ctx: RunContext, weights: Dict[str, float], desc: str, num_classes: int = 2,
                       flow: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    train, test = ctx.parts["alignment"]["train"], ctx.parts["alignment"]["test"]
    reg = lesion_regularizer(ctx.cfg, weights, len(train))
    model = train_lesion_model(train, ctx.cfg, reg, ctx.progress, num_classes=num_classes, desc=desc)
    return evaluate_lesion_model(model, test, ctx.cfg, flow=flow)


def choose_lambda(rows: Sequence[Dict[str, Any]], max_accuracy_drop: float = MAX_ACCURACY_DROP) -> Optional[float]:
    """The largest λ whose balanced accuracy is within ``max_accuracy_drop`` of λ = 0's.

    Rows with an undefined accuracy (a diverged training, null in JSON) never qualify; None
    when λ = 0's accuracy is itself undefined.

    Examples::

        >>> rows = [{"lambda": 0.0, "balanced_accuracy": 0.95}, {"lambda": 1.0, "balanced_accuracy": 0.94},
        ...         {"lambda": 10.0, "balanced_accuracy": 0.90}]
        >>> choose_lambda(rows, 0.03)
        1.0
    """
    def acc(row: Dict[str, Any]) -> float:
        v = row["balanced_accuracy"]
        return math.nan if v is None else float(v)

    base = [acc(r) for r in rows if r["lambda"] == 0]
    if not base or not math.isfinite(base[0]):
        return None
    ok = [float(r["lambda"]) for r in rows if math.isfinite(acc(r)) and acc(r) >= base[0] - max_accuracy_drop]
    return max(ok)


def lambda_sweep(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Balanced accuracy and J at every ``cfg.lambda_values`` (the accuracy/alignment trade-off)."""
    cfg, les = ctx.cfg, ctx.parts["alignment"]
    reused = {0.0: "plain", float(cfg.reg_brightness): "regularized"}
    base_joint: Tensor = les["plain"]["point"].J
    rows: List[Dict[str, Any]] = []
    joints: Dict[float, Tensor] = {}
    for lam in cfg.lambda_values:
        weights = cfg.lesion_weights(lam)
        row: Dict[str, Any] = {"lambda": lam, "weights": weights, "reused": lam in reused}
        if lam in reused:
            result, joint = ctx.results["alignment"][reused[lam]], les[reused[lam]]["point"].J
        else:
            try:
                result, part = _train_and_measure(ctx, weights, f"train (λ = {lam:g})")
            except FloatingPointError:
                rows.append({**row, "diverged": True, "balanced_accuracy": math.nan, "J_mean": math.nan,
                             "J_median": math.nan, "J_paired_p": math.nan})
                continue
            joint = part["point"].J
        joints[lam] = joint
        row.update(diverged=False, **_summary(result))
        if lam > 0:  # each example's J against its own J at λ = 0
            row["J_paired_p"] = paired_greater(joint, base_joint)
        rows.append(row)
    results = {"rows": rows, "max_accuracy_drop": MAX_ACCURACY_DROP, "chosen_lambda": choose_lambda(rows),
               "extent_fraction": cfg.reg_extent / cfg.reg_brightness}
    return results, {"joints": joints}


def feature_ablation(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Regularized training with each feature's weight removed in turn."""
    les, full = ctx.parts["alignment"], ctx.results["alignment"]
    full_weights: Dict[str, float] = dict(full["weights"])
    results: Dict[str, Any] = {"weights": full_weights, "plain": _summary(full["plain"]),
                               "full": _summary(full["regularized"]), "removed": {}}
    full_point, full_joint = les["regularized"]["point"], les["regularized"]["point"].J
    for removed in full_weights:
        weights = {name: (0.0 if name == removed else w) for name, w in full_weights.items()}
        result, part = _train_and_measure(ctx, weights, f"train (without {removed})")
        j = full_point.feature_names.index(removed)
        results["removed"][removed] = {
            "weights": weights, **_summary(result),
            # Does the weight itself raise the feature's alignment? Full model vs this one.
            "S_drop_p": paired_greater(full_point.S[:, j], part["point"].S[:, j]),
            "J_drop_p": paired_greater(full_joint, part["point"].J),
        }
    return results, {}


def one_output_model(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The paper's one-logit model, λ = 0 and regularized, measured like the two-logit one."""
    weights = ctx.results["alignment"]["weights"]
    results: Dict[str, Any] = {
        "loss": "class-weighted BCE-with-logits on the single logit",
        "trainer": "a short loop in the demo (train_classifier trains with cross-entropy over two or more logits)",
    }
    parts: Dict[str, Any] = {}
    for name, w in (("plain", {}), ("regularized", weights)):
        results[name], parts[name] = _train_and_measure(ctx, w, f"train (one output, {name})", num_classes=1,
                                                        flow=True)
    results["J_ratio"] = results["regularized"]["J_mean"] / results["plain"]["J_mean"]
    results["J_paired_p"] = paired_greater(parts["regularized"]["point"].J, parts["plain"]["point"].J)
    return results, parts
