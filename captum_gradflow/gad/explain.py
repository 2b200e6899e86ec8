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
from captum_gradflow.gad.fusion import Reduce, fuse_maps

__all__ = ["GADComponents", "all_maps", "fuse_all", "upsample"]


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


def fuse_all(
    maps: Sequence[TensorOrTuple], q: float = 0.2, agreement: float = 1.0, reduce: Reduce = "sum_abs"
) -> Tuple[TensorOrTuple, GADComponents]:
    """Algorithm 2 on ``[A_0, ..., A_T]`` in the base method's form: each input tensor's maps
    fused on their own (:func:`~captum_gradflow.gad.fuse_maps`), and the record of it.

    Returns:
        ``(A_0 * C, components)``, both in the form (tensor or tuple) of the maps.
    """
    parts, was_tuple = zip(*(format_inputs(m) for m in maps))
    if len(set(was_tuple)) != 1 or len({len(p) for p in parts}) != 1:
        raise ValueError("the wrapped method returned maps of different forms for different models")
    form = lambda tensors: format_output(was_tuple[0], tuple(tensors))  # noqa: E731
    fused = [fuse_maps([p[i] for p in parts], q, agreement, reduce) for i in range(len(parts[0]))]
    components = GADComponents(
        maps=[form(p) for p in parts],
        masks=[form(f.masks[t] for f in fused) for t in range(len(maps))],
        consistency=form(f.consistency for f in fused),
        n_degenerate=int(sum(int(f.degenerate.sum()) for f in fused)),
    )
    return form(f.attribution for f in fused), components
