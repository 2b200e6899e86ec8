"""A small training loop for the demo, tutorials and tests (not a framework).

Users train their own models however they like; the regularizer only needs the output of
their forward pass. This helper exists so the demo and tests share one honest loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["TrainHistory", "train_classifier", "predict", "balanced_accuracy"]

Regularizer = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class TrainHistory:
    """Per-epoch mean losses and, with a validation split, balanced accuracy."""

    loss: List[float] = field(default_factory=list)
    penalty: List[float] = field(default_factory=list)
    val_balanced_accuracy: List[float] = field(default_factory=list)

    def as_dict(self) -> Dict[str, List[float]]:
        return {"loss": self.loss, "penalty": self.penalty,
                "val_balanced_accuracy": self.val_balanced_accuracy}


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Logits of ``model`` on ``x`` in batches, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def balanced_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Balanced accuracy (mean per-class recall, scikit-learn) of ``model`` on ``(x, y)``."""
    pred = predict(model, x, batch_size).argmax(dim=1).cpu().numpy()
    return float(balanced_accuracy_score(y.cpu().numpy(), pred))


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 32,
    regularizer: Optional[Regularizer] = None,
    x_val: Optional[Tensor] = None,
    y_val: Optional[Tensor] = None,
    class_weight: Optional[str] = None,
    seed: int = 0,
    progress: bool = True,
    masks: Optional[Tensor] = None,
    desc: str = "train",
    lr_schedule: Optional[str] = None,
) -> TrainHistory:
    """Train ``model`` in place with Adam and cross-entropy, optionally with a regularizer.

    Args:
        model: Classifier returning logits ``(N, K)``; trained in place, its train/eval mode
            restored at the end.
        x, y: Training images and integer labels.
        epochs, lr, batch_size: Usual meaning; batches are shuffled with ``seed``.
        regularizer: ``reg(out, x, y) -> scalar`` added to the loss; the batch ``x`` then
            requires grad so the regularizer can take input gradients from the same forward
            pass (see :class:`~captum_gradflow.AlignmentRegularizer`).
        x_val, y_val: Held-out split; balanced accuracy is recorded after each epoch.
        class_weight: ``"balanced"`` weights the loss by inverse class frequency.
        seed: Seed of the shuffling.
        progress: Show a tqdm progress bar.
        masks: Per-example feature masks, handed to the regularizer of each batch as
            ``regularizer(out, x, y, mask=masks[idx])``.
        desc: Label of the progress bar.
        lr_schedule: ``"cosine"`` anneals the learning rate to 0 over ``epochs`` (steadier
            final accuracy with a regularizer); ``None`` keeps it constant.

    Returns:
        :class:`TrainHistory`.

    Examples::

        >>> from captum_gradflow import SmallCNN, synthetic_lesions, train_classifier
        >>> data = synthetic_lesions(32, size=32)
        >>> hist = train_classifier(SmallCNN(), data.images, data.labels, epochs=1, progress=False)
        >>> len(hist.loss)
        1
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if masks is not None and len(masks) != len(x):
        raise ValueError(f"masks has {len(masks)} entries but x has {len(x)} examples")
    device = next(model.parameters()).device
    weight = None
    if class_weight == "balanced":
        counts = torch.bincount(y, minlength=int(y.max()) + 1).clamp(min=1).float()
        weight = (counts.sum() / (len(counts) * counts)).to(device)
    elif class_weight is not None:
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule must be None or 'cosine', got {lr_schedule!r}")
    # A regularizer in subset mode runs its own forward pass and needs no input gradient here.
    input_grad = regularizer is not None and getattr(regularizer, "requires_input_grad", True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if lr_schedule else None
    gen = torch.Generator().manual_seed(seed)
    hist = TrainHistory()
    was_training = model.training
    model.train()
    try:
        for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
            order = torch.randperm(len(x), generator=gen)
            total, total_pen, seen = 0.0, 0.0, 0
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)
                if input_grad:
                    xb = xb.detach().requires_grad_(True)
                out = model(xb)
                loss = F.cross_entropy(out, yb, weight=weight)
                pen = None
                if regularizer is not None:
                    pen = (regularizer(out, xb, yb) if masks is None
                           else regularizer(out, xb, yb, mask=masks[idx].to(device)))
                full = loss if pen is None else loss + pen
                if not torch.isfinite(full):
                    raise FloatingPointError(
                        f"training loss became {full.item()} (cross-entropy {loss.item()}"
                        + ("" if pen is None else f", penalty {pen.item()}") + "); lower lr"
                    )
                opt.zero_grad(set_to_none=True)
                full.backward(inputs=params)  # the batch's input gradient is not needed
                opt.step()
                total += loss.item() * len(idx)
                total_pen += (0.0 if pen is None else pen.item()) * len(idx)
                seen += len(idx)
            if sched is not None:
                sched.step()
            hist.loss.append(total / seen)
            hist.penalty.append(total_pen / seen)
            if x_val is not None and y_val is not None:
                hist.val_balanced_accuracy.append(balanced_accuracy(model, x_val.to(device), y_val.to(device)))
    finally:
        model.train(was_training)
    return hist
