"""GradientFlowAlignment against Captum IntegratedGradients with the same number of steps.

Target: 32 Euler steps cost at most 1.0x ``IntegratedGradients(model).attribute(x,
target=..., n_steps=32)`` at IG's fastest ``internal_batch_size``; Heun counts two model
evaluations per step, so 16 Heun steps are compared with the same IG. The target rows align
Brightness (whole image) and 8 smoothed noise features (the baseline of docs/definitions.md, section 2.3), whose
gradients are closed-form and shared by all examples, so they measure the flow itself. A row
without target uses the paper's three lesion features with lesion masks instead (their
gradients are recomputed per example at every point: that cost belongs to the features).

The "N steps" rows force every example through all steps (a step so short that no example
reaches the boundary), the flow's worst case: 33 evaluations (the start point plus one per
step) against IG's 32. The "default step" row is a typical call: the step is chosen so the
boundary is reached in about half the steps, and examples that reach it stop.

``quick=True`` times fewer repeats, two IG ``internal_batch_size`` candidates and only the
target rows; on ResNet-18 it also cuts both sides to 8 steps (rows without target), since 32
steps of ResNet-18 take minutes on two cores.

Run: ``python -m benchmarks.bench_flow``.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Tuple

import torch
from captum.attr import IntegratedGradients

from benchmarks.common import lesion_batch, row, time_side_by_side
from captum_gradflow import (
    Brightness,
    Extent,
    GradientFlowAlignment,
    LogAspectRatio,
    noise_features,
)

TARGET_RATIO = 1.0
STEPS = 32


def _distance_to_boundary(model, x, target) -> torch.Tensor:
    """First-order distance ``|m| / |grad m|`` of each example to the decision boundary."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        own = out.gather(1, target[:, None])[:, 0]
        other = out.scatter(1, target[:, None], float("-inf")).amax(1)
        margin = own - other
        (grad,) = torch.autograd.grad(margin.sum(), xg)
    return margin.detach().abs() / grad.flatten(1).norm(dim=1)


def _best_ig(ig, x, target, steps, candidates, repeats, device) -> Tuple[int, Callable[[], object]]:
    """IG's fastest ``internal_batch_size`` among ``candidates``."""
    fns = [
        (lambda b=b: ig.attribute(x, target=target, n_steps=steps, internal_batch_size=b))
        for b in candidates
    ]
    times = time_side_by_side(fns, repeats=repeats, warmup=0, device=device)
    k = min(range(len(times)), key=times.__getitem__)
    return candidates[k], fns[k]


def run(
    quick: bool = False,
    device: str = "cpu",
    model_name: str = "small_cnn",
    batch: int = 16,
    size: int = 128,
) -> List[Dict[str, object]]:
    """Time the flow (Euler, Heun, default step) next to the fastest IG with as many steps."""
    setup = lesion_batch(model_name, batch, size, device)
    if setup is None:
        return []
    model, x, masks, target = setup
    noise = noise_features(8, smooth_sigma=2.0)
    cheap = GradientFlowAlignment(model, [Brightness()] + noise)
    lesion = GradientFlowAlignment(model, [Brightness(), Extent(), LogAspectRatio()])
    ig = IntegratedGradients(model)

    steps = 8 if quick and model_name != "small_cnn" else STEPS
    # A step that keeps every example 4x short of its (first-order) boundary after all steps.
    h = float(_distance_to_boundary(model, x, target).min()) / (4 * steps)
    candidates: List[int] = [batch, 4 * batch]
    if not quick:
        candidates = [batch, 2 * batch, 4 * batch, steps * batch]
    best_ibs, ig_fn = _best_ig(ig, x, target, steps, candidates, 1 if quick else 2, device)

    last: Dict[str, object] = {}  # the details of the latest timed call (no extra cost)

    def euler() -> None:
        last["euler"] = cheap.attribute(
            x, target=target, step_size=h, max_steps=steps, return_details=True
        )

    def default() -> None:
        last["default"] = cheap.attribute(x, target=target, max_steps=steps, return_details=True)

    fns: Dict[str, Callable[[], object]] = {
        "ig": ig_fn,
        "euler": euler,
        "heun": lambda: cheap.attribute(
            x, target=target, step_size=2 * h, max_steps=steps // 2, integrator="heun"
        ),
    }
    if not quick:
        fns["lesion"] = lambda: lesion.attribute(
            x, target=target, mask=masks, step_size=h, max_steps=steps
        )
        fns["default"] = default
    repeats, warmup = (2, 1) if quick else (7, 2)
    with warnings.catch_warnings():
        # Extent is undefined where the flow makes a lesion's weights negative: reported by
        # a warning, not the point here.
        warnings.simplefilter("ignore", RuntimeWarning)
        times = dict(zip(fns, time_side_by_side(list(fns.values()), repeats=repeats,
                                                warmup=warmup, device=device)))
    forced, typical = last["euler"], last.get("default")

    common = dict(model=model_name, batch=batch, size=size, device=device)
    target_ratio = TARGET_RATIO if steps == STEPS else None
    ig_note = f"IG internal_batch_size={best_ibs} (fastest of {candidates}); "
    n_forced = int((forced.n_steps == steps).sum())
    rows = [
        row(f"GradientFlowAlignment euler {steps} steps vs IG {steps} steps", times["euler"],
            times["ig"], target_ratio, **common,
            note=ig_note + f"Brightness + 8 noise features; {n_forced}/{batch} examples took all "
            f"{steps} steps ({steps + 1} evaluations)"),
        row(f"GradientFlowAlignment heun {steps // 2} steps vs IG {steps} steps", times["heun"],
            times["ig"], target_ratio, **common,
            note=ig_note + "Brightness + 8 noise features; 2 evaluations per step"),
    ]
    if typical is not None:
        rows.append(row(
            f"GradientFlowAlignment euler {steps} steps, 3 lesion features vs IG {steps} steps",
            times["lesion"], times["ig"], None, **common,
            note=ig_note + "Brightness, Extent, LogAspectRatio with lesion masks"))
        rows.append(row(
            f"GradientFlowAlignment euler default step, max_steps={steps} vs IG {steps} steps",
            times["default"], times["ig"], None, **common,
            note=ig_note + f"mean {typical.n_steps.float().mean():.1f} steps, "
            f"{int(typical.reached_boundary.sum())}/{batch} reached the boundary"))
    return rows


if __name__ == "__main__":
    for name in ("small_cnn", "resnet18"):
        for r in run(model_name=name):
            print(
                f"{r['name']:<72} {r['model']:<9} ours {r['ours_ms']:9.1f} ms  "
                f"base {r['base_ms']:9.1f} ms  ratio {r['ratio']:.3f}"
                + (f"  target {r['target']} {'ok' if r['ok'] else 'MISSED'}" if r["target"] else "")
                + f"  [{r['note']}]"
            )
