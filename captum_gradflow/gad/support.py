"""Support models (docs/definitions.md, section 3.2): copies of the user's model regressed
onto distanced logits, and the re-binding of a Captum method to each of them (section 3.4).

The user's model is never called, trained or changed here: everything runs on deep copies.
The original logits are computed once, before training, so a support-model epoch costs what
a plain training epoch costs (forward, MSE, backward, Adam step).
"""
from __future__ import annotations

import copy
import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from captum.attr import Attribution
from torch import Tensor, nn
from tqdm import tqdm

from captum_gradflow.gad.distancing import DistancingPlan
from captum_gradflow.training import _model_device

__all__ = [
    "as_tensors",
    "find_model",
    "frozen_copy",
    "train_support_model",
    "make_support_models",
    "rebind",
]

_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
)


def as_tensors(data: Any) -> Tuple[Tuple[Tensor, ...], Tensor]:
    """``(inputs_tuple, labels)`` from ``(x, y)`` tensors or a DataLoader of ``(x, y)`` batches.

    ``x`` may be a tensor or a tuple of tensors (models with several inputs). A DataLoader is
    read once and concatenated, so the original logits can be computed a single time.
    """
    if isinstance(data, torch.utils.data.DataLoader):
        parts: List[Tuple[Tuple[Tensor, ...], Tensor]] = []
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError("the DataLoader must yield (x, y) batches")
            parts.append(_split_pair(batch))
        if not parts:
            raise ValueError("the DataLoader yielded no batches")
        n_in = len(parts[0][0])
        xs = tuple(torch.cat([p[0][i] for p in parts]) for i in range(n_in))
        return xs, torch.cat([p[1] for p in parts])
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _split_pair(data)
    raise TypeError(
        f"data must be a DataLoader of (x, y) batches or an (x, y) pair of tensors, got {type(data).__name__}"
    )


def _split_pair(pair: Sequence[Any]) -> Tuple[Tuple[Tensor, ...], Tensor]:
    x, y = pair
    xs = (x,) if isinstance(x, Tensor) else tuple(x) if isinstance(x, (tuple, list)) else None
    if not xs or not all(isinstance(t, Tensor) for t in xs):
        raise TypeError(f"x must be a Tensor or a tuple of Tensors, got {type(x).__name__}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or y.is_complex():
        raise TypeError("y must be a 1-D tensor of integer class labels (model output indices)")
    for t in xs:
        if t.dim() == 0 or t.shape[0] != y.shape[0]:
            raise ValueError(f"x has {t.shape[0] if t.dim() else 0} examples but y has {y.shape[0]}")
    return xs, y.long()


def find_model(method: Attribution) -> nn.Module:
    """The ``nn.Module`` a Captum method explains: its ``forward_func`` or that method's owner."""
    fn = method.forward_func
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    raise TypeError(
        "GAD trains copies of the model, so the attribution method must be built on an "
        f"nn.Module or one of its bound methods; its forward_func is {fn!r}. Wrap plain "
        "functions in an nn.Module"
    )


def check_modules_in_model(method: Any, model: nn.Module) -> None:
    """Raise ``ValueError`` if a method refers to a layer outside ``model`` (it would not follow)."""
    inside = {id(m) for m in model.modules()}

    def visit(obj: Any, seen: set) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            if id(obj) not in inside:
                raise ValueError(
                    f"the attribution method refers to the module {type(obj).__name__} which is "
                    "not part of the model it explains; GAD could not re-bind it to support models"
                )
            return
        if isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v, seen)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v, seen)
        elif isinstance(obj, Attribution):
            for v in vars(obj).values():
                visit(v, seen)

    visit(method, set())


def frozen_copy(model: nn.Module) -> nn.Module:
    """Deep copy in eval mode without the user's hooks: the support models' starting point.

    The user's forward, pre-forward and backward hooks (loggers, counters) belong to the
    user's model; a copy that kept them would run them on every training step and every
    support-model attribution.
    """
    copied = copy.deepcopy(model).eval()
    for m in copied.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(m, name, None)
            if hooks is not None:
                hooks.clear()
    return copied


def train_support_model(
    model: nn.Module,
    xs: Tuple[Tensor, ...],
    targets: Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    bar: Optional[Any] = None,
) -> List[float]:
    """Regress ``model``'s logits onto ``targets`` with MSE and ``steps`` Adam steps, in place.

    Batches are drawn from a fresh permutation of the data every pass. The model stays in
    eval mode (the targets are eval-mode logits; BatchNorm statistics and dropout stay
    fixed). Every floating parameter is trained, also ones the user froze; their
    ``requires_grad`` flags are restored afterwards so attribution costs what it did.

    Returns:
        The mean loss of each pass over the data (the last one possibly partial).
    """
    device = _model_device(model) or torch.device("cpu")
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        raise ValueError("the model has no floating-point parameters to train")
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    n = targets.shape[0]
    per_pass = math.ceil(n / batch_size)
    losses: List[float] = []
    try:
        done = 0
        while done < steps:
            order = torch.randperm(n, generator=generator)
            now = min(per_pass, steps - done)
            total = torch.zeros((), device=device, dtype=targets.dtype)
            for i in range(0, now * batch_size, batch_size):
                idx = order[i:i + batch_size]
                out = model(*(x[idx].to(device, non_blocking=True) for x in xs))
                loss = F.mse_loss(out, targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * idx.numel()
            done += now
            losses.append(float(total) / min(n, now * batch_size))  # one sync per pass
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"support-model loss became {losses[-1]}; lower lr")
            if bar is not None:
                bar.update(now)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return losses


def make_support_models(
    reference: nn.Module,
    xs: Tuple[Tensor, ...],
    logits: Tensor,
    labels: Tensor,
    plan: DistancingPlan,
    alphas: Tensor,
    steps: int = 100,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    warm_start: bool = False,
    progress: bool = True,
) -> Tuple[List[nn.Module], List[List[float]]]:
    """Train one support model per ``alpha_t`` (Algorithm 1).

    Args:
        reference: Eval-mode, hook-free copy of the user's model (:func:`frozen_copy`); each
            support model starts from a copy of it, or of model ``t-1`` with ``warm_start``.
        xs, labels: The training images of the plan's classes and their labels.
        logits: The reference's logits on ``xs`` (computed once).
        plan: Which logits are pushed down on which images (:meth:`DistancingPlan.targets`).
        alphas: ``(T,)`` increasing shifts, or ``(T, 2)``: one per group.
        steps, lr, batch_size, seed: Adam steps per model, MSE loss; ``seed`` fixes the
            shuffling.
        warm_start: Start model ``t`` from model ``t-1``.
        progress: Show a tqdm progress bar (in optimizer steps).

    Returns:
        ``(models, losses)``: eval-mode support models and their mean loss per pass.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.to(logits.device)
    models: List[nn.Module] = []
    history: List[List[float]] = []
    with tqdm(total=len(alphas) * steps, desc="GAD support models", disable=not progress, leave=False) as bar:
        for alpha in alphas:
            start = models[-1] if (warm_start and models) else reference
            model = copy.deepcopy(start).eval()
            targets = plan.targets(logits, labels, alpha)
            history.append(train_support_model(model, xs, targets, steps, lr, batch_size, generator, bar))
            models.append(model)
    return models, history


def rebind(method: Attribution, model: nn.Module, support: nn.Module) -> Attribution:
    """Copy of ``method`` that explains ``support`` instead of ``model`` (docs/definitions.md, 3.4).

    The deep copy's memo maps every module, parameter and buffer of ``model`` to its
    counterpart in ``support`` (a deep copy of ``model``), so ``forward_func``, layer
    references (``LayerGradCam(model, model.features[6])``), wrapped methods
    (``NoiseTunnel``) and adapters (a Zennit attributor's model) all follow.
    """
    memo: dict = {}
    pairs = [
        (model.named_modules(), support.named_modules()),
        (model.named_parameters(), support.named_parameters()),
        (model.named_buffers(), support.named_buffers()),
    ]
    for ours, theirs in pairs:
        ours, theirs = list(ours), list(theirs)
        if [n for n, _ in ours] != [n for n, _ in theirs]:
            raise ValueError("the support model does not have the structure of the original model")
        for (_, a), (_, b) in zip(ours, theirs):
            memo[id(a)] = b
    return copy.deepcopy(method, memo)
