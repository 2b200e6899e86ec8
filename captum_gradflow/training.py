"""A small training loop for the demo, tutorials and tests (not a framework).

Users train their own models however they like; the regularizer only needs the output of
their forward pass. This helper exists so the demo and tests share one honest loop.

Training changes the model's parameters and buffers by design; everything else of the
model (each module's train/eval flag, ``requires_grad`` flags, the parameters' ``.grad``,
hooks) and the data are left as they came, also when a call raises (the guard of
:mod:`captum_gradflow._guard`). Bad data is rejected before the first step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor, nn
from tqdm import tqdm

from captum_gradflow._common import check_finite
from captum_gradflow._checks import check_batch
from captum_gradflow._guard import preserved

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
def predict(model: nn.Module, x: Tensor | Tuple[Tensor, ...], batch_size: int = 256) -> Tensor:
    """Logits of ``model`` on ``x`` in batches, with every module in eval mode.

    A model in train mode is evaluated in eval mode (BatchNorm with its running statistics,
    no dropout) and each module's own mode is restored afterwards, so a model with some
    modules frozen in eval mode keeps them so. Nothing of the model changes.

    Args:
        model: Any ``nn.Module`` taking ``x`` (or ``*x`` for a tuple).
        x: Inputs ``(N, ...)``, or a tuple of them for a model with several inputs; floating
            point like the model. They may live on another device than the model: each batch
            is moved to the device of the model's parameters as it is used.
        batch_size: Rows per forward pass (at least 1).

    Returns:
        The concatenated outputs, ``(N, ...)``, on the model's device.

    Examples::

        >>> import torch
        >>> from captum_gradflow import SmallCNN, predict
        >>> predict(SmallCNN(), torch.rand(5, 1, 32, 32), batch_size=2).shape
        torch.Size([5, 2])
    """
    _check_positive_int(batch_size, "batch_size", "predict")
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    device = _model_device(model)
    check_batch_on_model_device(xs, model, "predict: x")
    with preserved(model, xs, "predict", eval_mode=True):
        out = [model(*(t[i:i + batch_size].to(device or t.device) for t in xs))
               for i in range(0, len(xs[0]), batch_size)]
    if not all(isinstance(o, Tensor) for o in out):
        raise TypeError(f"predict: the model must return a Tensor, got {type(out[0]).__name__}")
    return torch.cat(out)


def check_batch_on_model_device(xs: Tuple[Any, ...], model: nn.Module, what: str) -> None:
    """:func:`check_batch` of the first example moved to the model's device: batches are moved
    there as they are used, so the data may live elsewhere (its dtype must still match; a meta
    tensor cannot move and is rejected as it is)."""
    device = _model_device(model)
    check_batch(tuple(t if not isinstance(t, Tensor) or t.dim() == 0 or device is None
                      or t.device.type == "meta" else t[:1].to(device) for t in xs), model, what)


def _model_device(model: nn.Module) -> Optional[torch.device]:
    """Device of the model's first parameter (or buffer); None for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def balanced_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Balanced accuracy (mean per-class recall, scikit-learn) of ``model`` on ``(x, y)``.

    The model is evaluated in eval mode by :func:`predict` and left as it came.

    Examples::

        >>> import torch
        >>> from captum_gradflow import SmallCNN, balanced_accuracy
        >>> acc = balanced_accuracy(SmallCNN(), torch.rand(6, 1, 32, 32), torch.tensor([0, 1] * 3))
        >>> 0.0 <= acc <= 1.0
        True
    """
    _check_labels(y, len(x), "balanced_accuracy: y")
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

    Training changes the parameters and the buffers (BatchNorm running statistics) by
    design: the model is put in train mode for the steps, so BatchNorm normalises with batch
    statistics and Dropout is active, as in any training loop. On return (also when a call
    raises) each module's own train/eval flag, the parameters' ``requires_grad`` and
    ``.grad``, the model's hooks and the data's ``requires_grad`` are as they came; the
    validation accuracy is measured in eval mode (:func:`predict`). Data is checked before
    the first step: lengths, integer labels within the model's outputs, floating-point
    finite inputs of the model's dtype, a non-empty set and a model with parameters to train.

    Args:
        model: Classifier returning logits ``(N, K)`` with trainable parameters.
        x, y: Training inputs ``(N, ...)`` and integer labels ``(N,)`` in ``[0, K)``; they
            may live on another device than the model (batches are moved).
        epochs, lr, batch_size: Usual meaning (positive); batches are shuffled with ``seed``.
        regularizer: ``reg(out, x, y) -> scalar`` added to the loss; the batch ``x`` then
            requires grad so the regularizer can take input gradients from the same forward
            pass (see :class:`~captum_gradflow.AlignmentRegularizer`).
        x_val, y_val: Held-out split (both or neither); balanced accuracy is recorded after
            each epoch.
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

    Raises:
        TypeError: Non-tensor data, float labels, non-floating inputs or a dtype that is
            not the model's.
        ValueError: Empty data, mismatched lengths, a model without trainable parameters,
            NaN/Inf inputs, bad options.
        IndexError: Labels outside ``[0, K)`` for a model with ``K`` outputs.
        FloatingPointError: The loss became NaN or Inf (lower ``lr``).

    Examples::

        >>> from captum_gradflow import SmallCNN, synthetic_lesions, train_classifier
        >>> data = synthetic_lesions(32, size=32)
        >>> hist = train_classifier(SmallCNN(), data.images, data.labels, epochs=1, progress=False)
        >>> len(hist.loss)
        1
    """
    params = _check_training(model, x, y, epochs, lr, batch_size, x_val, y_val, masks)
    device = params[0].device
    weight = _class_weight(class_weight, y, device)
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule must be None or 'cosine', got {lr_schedule!r}")
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if lr_schedule else None
    gen = torch.Generator().manual_seed(seed)
    hist = TrainHistory()
    with preserved(model, (x, y), "train_classifier", training=True):
        model.train()
        for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
            loss, pen = _epoch(model, params, opt, x, y.long(), masks, regularizer, weight,
                               batch_size, torch.randperm(len(x), generator=gen))
            if sched is not None:
                sched.step()
            hist.loss.append(loss)
            hist.penalty.append(pen)
            if x_val is not None and y_val is not None:
                acc = balanced_accuracy(model, x_val.to(device), y_val.to(device))
                hist.val_balanced_accuracy.append(acc)
    return hist


def _epoch(
    model: nn.Module, params: List[Tensor], opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
    masks: Optional[Tensor], regularizer: Optional[Regularizer], weight: Optional[Tensor],
    batch_size: int, order: Tensor,
) -> Tuple[float, float]:
    """One pass over the data; returns the mean cross-entropy and the mean penalty."""
    device = params[0].device
    # A regularizer in subset mode runs its own forward pass and needs no input gradient here.
    input_grad = regularizer is not None and getattr(regularizer, "requires_input_grad", True)
    total, total_pen = 0.0, 0.0
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
    return total / len(x), total_pen / len(x)


def _check_positive_int(value: object, name: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: {name} must be a positive int, got {value!r}")


def _check_labels(y: object, n: int, name: str, k: Optional[int] = None) -> None:
    """Integer class indices, one per example, within ``[0, k)`` when ``k`` is known."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex():
        raise TypeError(
            f"{name} has dtype {y.dtype}; labels are class indices and must be integer "
            "(convert with .long() if the values are whole numbers)"
        )
    if y.dim() != 1 or len(y) != n:
        raise ValueError(
            f"{name} must have shape ({n},), one class index per example, got {tuple(y.shape)}"
        )
    if k is not None and n and (int(y.min()) < 0 or int(y.max()) >= k):
        bad = sorted(set(y[(y < 0) | (y >= k)].tolist()))
        raise IndexError(f"{name}: labels {bad[:10]} are out of range for a model with {k} outputs")


def _check_training(
    model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, batch_size: int,
    x_val: Optional[Tensor], y_val: Optional[Tensor], masks: Optional[Tensor],
) -> List[Tensor]:
    """Check everything before the first step; return the trainable parameters."""
    what = "train_classifier"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: model must be an nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"{what}: the model has no parameters that require grad; there is nothing to train"
        )
    _check_positive_int(epochs, "epochs", what)
    _check_positive_int(batch_size, "batch_size", what)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"{what}: lr must be a positive number, got {lr!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"{what}: x must be a Tensor, got {type(x).__name__}")
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(
            f"{what}: x is empty (shape {tuple(x.shape)}); there is nothing to train on"
        )
    if isinstance(y, Tensor) and y.dim() >= 1 and len(x) != len(y):
        raise ValueError(f"{what}: x has {len(x)} examples but y has {len(y)}")
    if masks is not None and len(masks) != len(x):
        raise ValueError(f"{what}: masks has {len(masks)} entries but x has {len(x)} examples")
    if (x_val is None) != (y_val is None):
        raise ValueError(f"{what}: pass both x_val and y_val, or neither")
    _check_labels(y, len(x), f"{what}: y")
    if x_val is not None:
        _check_labels(y_val, len(x_val), f"{what}: y_val")
    k = _num_outputs(model, x, params[0].device)
    check_finite((x,), f"{what}: x")
    _check_labels(y, len(x), f"{what}: y", k)
    if x_val is not None:
        _check_labels(y_val, len(x_val), f"{what}: y_val", k)
    return params


def _num_outputs(model: nn.Module, x: Tensor, device: torch.device) -> int:
    """``K`` of the model's ``(N, K)`` logits, from one example in eval mode (nothing changes)."""
    first = x[:1]
    if first.device.type != "meta":
        first = first.to(device)
    check_batch((first,), model, "train_classifier: x")
    out = predict(model, first)
    if out.dim() != 2 or out.shape[1] < 2:
        raise ValueError(
            f"train_classifier: the model's output has shape {tuple(out.shape)}; cross-entropy "
            "needs logits (N, K) with K >= 2"
        )
    return int(out.shape[1])


def _class_weight(class_weight: Optional[str], y: Tensor, device: torch.device) -> Optional[Tensor]:
    if class_weight is None:
        return None
    if class_weight != "balanced":
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    counts = torch.bincount(y.long(), minlength=int(y.max()) + 1).clamp(min=1).float()
    return (counts.sum() / (len(counts) * counts)).to(device)
