"""Part 1 of the demo: the small CNN on synthetic lesions, trained with and without the
alignment regularizer, and the measurements every lesion experiment shares.

Every model of the lesion experiments starts from the same initial weights (``cfg.seed``)
and sees the same batches in the same order; only the loss differs. A model is measured on
the test split by :func:`evaluate_lesion_model`: balanced accuracy, the joint alignment J,
each feature's pointwise alignment S against noise and, optionally, its flow alignment F
against noise (:func:`_flow_vs_noise`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor, nn
from tqdm import tqdm

from captum_gradflow.alignment import FeatureAlignment
from captum_gradflow.datasets import Lesions, synthetic_lesions
from captum_gradflow.features import Brightness, Extent, Feature, LogAspectRatio
from captum_gradflow.flow import FlowResult, GradientFlowAlignment
from captum_gradflow.models import SmallCNN
from captum_gradflow.noise import NoiseComparison
from captum_gradflow.regularizer import AlignmentRegularizer
from captum_gradflow.training import predict, train_classifier

from .config import DemoConfig, RunContext
from .formatting import nanmean, nanmedian, paired_greater

__all__ = [
    "accuracy", "evaluate_lesion_model", "feature_rows", "features", "flow_summary",
    "lesion_data", "lesion_experiment", "lesion_regularizer", "noise_construction", "train_lesion_model",
]

BATCH = 32


def features() -> List[Feature]:
    """The three interpretable features measured on every lesion model."""
    return [Brightness(), Extent(), LogAspectRatio()]


def noise_construction(point: NoiseComparison, flow: Optional[NoiseComparison] = None) -> Dict[str, Any]:
    """How the noise baseline was drawn, as the library states it
    (:attr:`~captum_gradflow.NoiseComparison.construction` of the comparisons that ran)."""
    out: Dict[str, Any] = {"n_noise": point.n_noise, "text": point.construction}
    if flow is not None:
        out["flow_text"] = flow.construction
    return out


def lesion_regularizer(cfg: DemoConfig, weights: Dict[str, float], n_train: int) -> Optional[AlignmentRegularizer]:
    """The tuned recipe (delay, then warm-up) with the given weights; None when all are 0."""
    kept = {name: w for name, w in weights.items() if w > 0}
    if not kept:
        return None
    by_name = {f.name: f for f in (Brightness(), Extent())}
    steps = math.ceil(n_train / BATCH)
    return AlignmentRegularizer([by_name[n] for n in kept], weights=list(kept.values()),
                                delay=cfg.reg_delay_epochs * steps, warmup=cfg.reg_warmup_epochs * steps)


def train_lesion_model(train: Lesions, cfg: DemoConfig, reg: Optional[AlignmentRegularizer], progress: bool,
                       num_classes: int = 2, desc: str = "train") -> nn.Module:
    """Class-balanced Adam training with cosine decay; one initial state and batch order for all.

    ``num_classes=1`` is the paper's one-logit model, trained with class-weighted
    BCE-with-logits by :func:`_train_one_output`, because :func:`train_classifier` trains
    with cross-entropy over at least two logits.
    """
    torch.manual_seed(cfg.seed)
    model = SmallCNN(num_classes=num_classes)
    if num_classes == 1:
        _train_one_output(model, train, cfg, reg, progress, desc)
    else:
        train_classifier(
            model, train.images, train.labels, epochs=cfg.lesion_epochs, lr=1e-3, batch_size=BATCH,
            regularizer=reg, masks=train.masks if reg is not None else None,
            class_weight="balanced", lr_schedule="cosine", seed=cfg.seed, progress=progress, desc=desc,
        )
    return model.eval()


def _train_one_output(model: nn.Module, train: Lesions, cfg: DemoConfig, reg: Optional[AlignmentRegularizer],
                      progress: bool, desc: str) -> None:
    """:func:`train_classifier`'s loop with BCE-with-logits on one logit (same schedule,
    seeds and class weights: the weighted mean over the batch, as cross-entropy's)."""
    x, y = train.images, train.labels
    counts = torch.bincount(y, minlength=2).clamp(min=1).double()
    class_w = (counts.sum() / (2 * counts)).float()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.lesion_epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in tqdm(range(cfg.lesion_epochs), desc=desc, disable=not progress, leave=False):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            xb, yb = x[idx], y[idx]
            if reg is not None:
                xb = xb.detach().requires_grad_(True)
            out = model(xb)
            w = class_w[yb]
            loss = (w * F.binary_cross_entropy_with_logits(out[:, 0], yb.float(), reduction="none")).sum() / w.sum()
            if reg is not None:
                # The decision function is the single logit: Captum's target None.
                loss = loss + reg(out, xb, None, mask=train.masks[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
            opt.step()
        sched.step()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Balanced accuracy; a one-logit model predicts class 1 where its logit is positive."""
    out = predict(model, x)
    pred = out.argmax(dim=1) if out.shape[1] > 1 else (out[:, 0] > 0).long()
    return float(balanced_accuracy_score(y.numpy(), pred.cpu().numpy()))


def feature_rows(report: NoiseComparison) -> Dict[str, Dict[str, float]]:
    """Per feature: mean alignment, mean ratio to noise, Wilcoxon p, examples left out."""
    return {
        name: {"mean": float(report.mean_S[j]), "ratio": float(report.mean_ratio[j]),
               "p": float(report.wilcoxon_p[j]), "n_undefined": int(report.n_skipped[j])}
        for j, name in enumerate(report.feature_names)
    }


def _target(model: nn.Module, x: Tensor, y: Tensor) -> Optional[Tensor]:
    # Two logits: the true class's; one logit: the logit itself (Captum's target None).
    with torch.no_grad():
        return None if model(x[:1]).shape[1] == 1 else y


def evaluate_lesion_model(model: nn.Module, test: Lesions, cfg: DemoConfig,
                          flow: bool = True) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Balanced accuracy, J, S against noise and (with ``flow``) F against noise on ``test``."""
    x, y, masks = test.images, test.labels, test.masks
    target = _target(model, x, y)
    fa = FeatureAlignment(model, features())
    # The library's default noise (make_noise): on the features' mask, smoothed on its scale, centred.
    point = fa.compare_to_noise(x, target=target, mask=masks, n_noise=cfg.n_noise, seed=cfg.seed, joint=True)
    joint = point.J  # from the comparison's own model gradient
    result = {
        "balanced_accuracy": accuracy(model, x, y),
        "J_mean": nanmean(joint), "J_median": nanmedian(joint), "J_n_undefined": int(torch.isnan(joint).sum()),
        "noise_S_mean": point.mean_S_noise, "S": feature_rows(point),
    }
    parts: Dict[str, Any] = {"model": model, "point": point}
    if flow:
        n = min(cfg.flow_examples, len(test))
        xf, mf = x[:n], masks[:n]
        tf = None if target is None else target[:n]
        report, details = _flow_vs_noise(model, xf, tf, mf, cfg)
        result.update(flow_summary(report, details))
        parts["flow"] = report
        if target is not None:
            parts["flow_example"] = _flow_example(model, details, xf, tf, mf, cfg)
    return result, parts


def _flow_vs_noise(model: nn.Module, x: Tensor, target: Optional[Tensor], masks: Tensor,
                   cfg: DemoConfig) -> Tuple[NoiseComparison, FlowResult]:
    """Flow alignment F of the features and of ``cfg.n_noise`` noise directions, through
    :meth:`GradientFlowAlignment.compare_to_noise` with the library's default noise (as for
    S); features and noise are measured along the same flows, whose details come back too."""
    return GradientFlowAlignment(model, features()).compare_to_noise(
        x, target=target, mask=masks, n_noise=cfg.n_noise, seed=cfg.seed, max_steps=cfg.flow_max_steps,
        return_details=True)


def flow_summary(report: NoiseComparison, details: FlowResult) -> Dict[str, Any]:
    """The flow's entries of a model's results (their keys are part of ``results.json``)."""
    return {
        "F": feature_rows(report), "noise_F_mean": report.mean_S_noise, "flow_examples": report.n_examples,
        "flow_reached_boundary": float(details.reached_boundary.float().mean()),
        "flow_median_length": float(details.length.median()),
    }


def _flow_example(model: nn.Module, res: FlowResult, x: Tensor, y: Tensor, masks: Tensor,
                  cfg: DemoConfig) -> Dict[str, Any]:
    """Arguments of :func:`~captum_gradflow.visualization.plot_flow` for the longest flow
    that reached the boundary; only that example's flow is run again, to keep its path."""
    reached = res.reached_boundary.nonzero().flatten()
    pool = reached if reached.numel() else torch.arange(len(x))
    i = int(pool[res.length[pool].argmax()])
    one = GradientFlowAlignment(model, features()).attribute(
        x[i:i + 1], target=y[i:i + 1], mask=masks[i:i + 1], max_steps=cfg.flow_max_steps, return_path=True)
    path = one.path[0]
    steps = (path[1:] - path[:-1]).flatten(1).norm(dim=1)
    arc = torch.cat([torch.zeros(1), torch.cumsum(steps, 0)])
    t = int(y[i])

    def margin(z: Tensor) -> Tensor:  # the flow's margin F_t - F_other (a two-class model)
        out = model(z)
        return out[:, t] - out[:, 1 - t]

    feats = features()
    s = FeatureAlignment(margin, feats).attribute(path, mask=masks[i:i + 1])
    with torch.no_grad():
        m = margin(path)
    return {"path": path, "arc_length": arc, "alignment": {f.name: s[:, j] for j, f in enumerate(feats)},
            "margin": m, "reached_boundary": bool(one.reached_boundary[0]),
            "title": f"gradient flow of a test image (label {t}) to the decision boundary"}


def lesion_data(cfg: DemoConfig) -> Tuple[Lesions, Lesions]:
    """The train and test splits every lesion experiment uses."""
    data = synthetic_lesions(cfg.lesion_n, size=cfg.lesion_size, seed=cfg.seed, rule=cfg.lesion_rule,
                             positive_fraction=cfg.positive_fraction)
    return data.split(0.3)


def lesion_experiment(ctx: RunContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The seed paper's baseline and regularized training (λ = 0 and the tuned weights)."""
    cfg, progress = ctx.cfg, ctx.progress
    train, test = lesion_data(cfg)
    weights = cfg.lesion_weights(cfg.reg_brightness)
    results: Dict[str, Any] = {"n_train": len(train), "n_test": len(test), "rule": cfg.lesion_rule,
                               "weights": weights, "n_noise": cfg.n_noise, "regularized_features": list(weights),
                               "decoys": [f.name for f in features() if f.name not in weights]}
    parts: Dict[str, Any] = {"train": train, "test": test}
    for name, w in (("plain", {}), ("regularized", weights)):
        model = train_lesion_model(train, cfg, lesion_regularizer(cfg, w, len(train)), progress,
                                   desc=f"train ({name})")
        results[name], parts[name] = evaluate_lesion_model(model, test, cfg)
    results["noise"] = noise_construction(parts["plain"]["point"], parts["plain"]["flow"])
    results["J_ratio"] = results["regularized"]["J_mean"] / results["plain"]["J_mean"]
    results["J_paired_p"] = paired_greater(parts["regularized"]["point"].J, parts["plain"]["point"].J)
    return results, parts
