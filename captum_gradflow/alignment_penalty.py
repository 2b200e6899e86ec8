"""The alignment penalty of one batch, as a function (docs/definitions.md, section 2.6)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor

from captum_gradflow._common import TargetType, TensorOrTuple
from captum_gradflow.features import Feature
from captum_gradflow.regularizer import AlignmentRegularizer, Weights

__all__ = ["alignment_penalty"]


def alignment_penalty(
    out: Tensor,
    inputs: TensorOrTuple,
    target: TargetType,
    features: Union[Feature, Sequence[Feature]],
    weights: Weights = 1.0,
    mask: Optional[Tensor] = None,
    undefined: str = "warn",
) -> Tensor:
    r"""Functional form of :class:`AlignmentRegularizer`: the penalty for one batch.

    ``sum_i weights[i] * mean_x (1 - S_{g_i}(x))``, a differentiable scalar whose gradient
    reaches the model parameters through the input gradient of ``out[target]``.

    Train mode: the penalty runs no forward pass of its own (``out`` is the training step's),
    so it changes no buffer; with BatchNorm in train mode the input gradient mixes the examples
    of the batch (see :class:`AlignmentRegularizer`).

    Args:
        out: The model's output for ``inputs``, computed with ``inputs.requires_grad_()``
            and gradients enabled (the training step's own forward pass).
        inputs: The batch the model saw (a tensor or a tuple of tensors).
        target: Any Captum target form (see :func:`captum_gradflow._common.select_target`).
        features: One feature or a sequence of them.
        weights: One ``lambda`` for all features, one per feature, or a dict by feature name.
        mask: Soft mask given to every feature, overriding the features' own masks.
        undefined: ``"warn"`` (default) leaves examples where ``S`` is undefined out of the
            mean and warns, naming the feature; ``"raise"`` raises ``ValueError`` instead.

    Returns:
        Scalar penalty tensor (0-dim).

    Examples::

        >>> import torch, torch.nn.functional as F
        >>> from captum_gradflow import Brightness, SmallCNN, alignment_penalty
        >>> model = SmallCNN()
        >>> x, y = torch.rand(4, 1, 32, 32).requires_grad_(), torch.tensor([0, 1, 0, 1])
        >>> out = model(x)
        >>> loss = F.cross_entropy(out, y) + alignment_penalty(out, x, y, Brightness(), 0.1)
        >>> loss.backward()
    """
    reg = AlignmentRegularizer(features, weights, undefined=undefined)
    return reg(out, inputs, target, mask=mask)
