"""The ``T + 1`` maps behind a GAD attribution (docs/definitions.md, section 3.3): the same
method with the same arguments and the same random draws on the original and on every
support model, optionally upsampled to the input, and the record of what fusion did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
from captum.attr import Attribution, LayerAttribution
from torch import Tensor

from captum_gradflow._common import TargetType, TensorOrTuple, format_inputs, format_output

__all__ = ["GADComponents", "all_maps", "upsample"]


@dataclass
class GADComponents:
    """Everything behind a GAD map, in the form of the base method's output.

    Attributes:
        maps: ``[A_0, A_1, ..., A_T]``, index 0 from the original model (upsampled to the
            input size with ``interpolate_to_input``).
        masks: The binarised top-q masks ``[B_0, ..., B_T]`` (channels reduced).
        consistency: ``C``, True where enough maps agree.
        n_degenerate: Number of maps (over models and examples) that were constant or not
            finite, hence have an empty mask.
    """

    maps: List[TensorOrTuple]
    masks: List[TensorOrTuple]
    consistency: TensorOrTuple
    n_degenerate: int


class _SharedRandomness:
    """Replays one random state for every model, so stochastic methods (``NoiseTunnel``) draw
    the same noise for the original and each support model: "same method, same arguments"."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def replay(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def all_maps(
    methods: Sequence[Attribution], inputs: TensorOrTuple, target: TargetType, kwargs: Dict[str, Any]
) -> List[TensorOrTuple]:
    """``[A_0, ..., A_T]``: each method (original first) on the same inputs and arguments.

    Every call starts from the same random state, so stochastic methods (``NoiseTunnel``)
    draw the same noise for every model: "same method, same arguments".
    """
    xs, _ = format_inputs(inputs)
    shared = _SharedRandomness(xs[0].device)
    maps = []
    for i, method in enumerate(methods):
        if i:
            shared.replay()
        maps.append(method.attribute(inputs, target=target, **kwargs))
    return maps


def upsample(attr: TensorOrTuple, xs: Tuple[Tensor, ...]) -> TensorOrTuple:
    """Each map resized to its input's spatial size with Captum's ``LayerAttribution.interpolate``."""
    parts, was_tuple = format_inputs(attr)
    out = []
    for i, a in enumerate(parts):
        size = tuple(xs[min(i, len(xs) - 1)].shape[2:])
        if a.dim() < 3 or a.dim() - 2 != len(size):
            raise ValueError(
                f"interpolate_to_input: a map of shape {tuple(a.shape)} cannot be resized to the "
                f"input's spatial size {size}"
            )
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size), "nearest")
        out.append(a if tuple(a.shape[2:]) == size else LayerAttribution.interpolate(a, size, mode))
    return format_output(was_tuple, tuple(out))
