"""Small shared helpers: input and target formatting, model input gradients, row subsets.

Captum's own helpers of this kind are underscore-private and change between releases, so the
package keeps its own few (docs/definitions.md, section 5).
"""
from __future__ import annotations

import operator

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_gradflow._checks import check_target_dtype
from captum_gradflow._native_conv import input_gradients

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
TargetType = Union[None, int, Tuple[int, ...], Tensor, List[Any]]


def format_inputs(inputs: TensorOrTuple) -> Tuple[Tuple[Tensor, ...], bool]:
    """Return ``(inputs_as_tuple, was_tuple)``; raise a clear error for anything else."""
    if isinstance(inputs, Tensor):
        return (inputs,), False
    if isinstance(inputs, (tuple, list)) and len(inputs) > 0 and all(
        isinstance(t, Tensor) for t in inputs
    ):
        n = inputs[0].shape[0] if inputs[0].dim() else None
        for t in inputs:
            if t.dim() == 0 or t.shape[0] != n:
                raise ValueError(
                    "inputs: every tensor needs the same leading batch dimension, got shapes "
                    f"{[tuple(t.shape) for t in inputs]}"
                )
        return tuple(inputs), True
    raise TypeError(f"inputs must be a Tensor or a tuple of Tensors, got {type(inputs).__name__}")


def format_output(was_tuple: bool, values: Tuple[Tensor, ...]) -> TensorOrTuple:
    """Return ``values`` in the form the inputs came in (Captum convention)."""
    return values if was_tuple else values[0]


def format_additional_args(additional_forward_args: Any) -> Tuple[Any, ...]:
    """Captum accepts a single object or a tuple of extra forward arguments."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def check_finite(inputs: Tuple[Tensor, ...], name: str = "inputs") -> None:
    """Raise ``ValueError`` naming the tensor that holds NaN or Inf."""
    for i, t in enumerate(inputs):
        # NaN and Inf propagate into a sum, so one reduction clears the common case; the
        # elementwise check runs only when the sum is not finite (or overflowed).
        if t.is_floating_point() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            where = f"{name}[{i}]" if len(inputs) > 1 else name
            raise ValueError(f"{where} contains {bad} NaN or Inf values")


def prepare_inputs(inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Leaf copies that require grad, so the caller's tensors and flags are never touched."""
    return tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)


def run_forward(
    forward_func: Callable[..., Tensor],
    inputs: Tuple[Tensor, ...],
    additional_forward_args: Any = None,
) -> Tensor:
    """Call ``forward_func(*inputs, *additional_forward_args)`` and check it returns a tensor."""
    out = forward_func(*inputs, *format_additional_args(additional_forward_args))
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_func must return a Tensor, got {type(out).__name__}")
    if out.dim() == 0 or out.shape[0] != inputs[0].shape[0]:
        raise ValueError(
            f"forward_func output has shape {tuple(out.shape)}; expected one row per example "
            f"({inputs[0].shape[0]})"
        )
    return out


def _check_index(value: int, size: int, what: str) -> None:
    if not -size <= value < size:
        raise IndexError(f"target {what}{value} is out of range for model output with {size} outputs")


def select_target(output: Tensor, target: TargetType) -> Tensor:
    """Select ``F(x)[target]``, one value per example, with every Captum target form.

    ``None`` (single-output models), an int, a tuple of ints (multi-dimensional outputs), a
    tensor of one element or one per example, a list of ints or of tuples (one per example).
    Out-of-range targets raise ``IndexError`` naming the target.
    """
    n = output.shape[0]
    check_target_dtype(target)
    if target is None:
        if output[0].numel() != 1:
            raise ValueError(
                f"target is None but the model has {output[0].numel()} outputs per example; "
                "pass target= (an int, a tuple, a tensor or a list)"
            )
        return output.reshape(n)
    if isinstance(target, Tensor):
        if target.numel() == 1:
            target = int(target.item())
        elif target.dim() == 1 and target.numel() == n:
            target = [int(t) for t in target.tolist()]
        else:
            raise ValueError(
                f"target tensor has shape {tuple(target.shape)}; expected a single value or one "
                f"per example ({n})"
            )
    if isinstance(target, int):
        if output.dim() != 2:
            raise ValueError(f"an int target needs a 2-D output, got shape {tuple(output.shape)}")
        _check_index(target, output.shape[1], "")
        return output[:, target]
    if isinstance(target, tuple):
        if len(target) != output.dim() - 1:
            raise ValueError(f"tuple target {target} does not index output of shape {tuple(output.shape)}")
        for t, size in zip(target, output.shape[1:]):
            _check_index(int(t), size, "index ")
        return output[(slice(None), *target)]
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"target list has {len(target)} entries for {n} examples")
        if all(isinstance(t, tuple) for t in target):
            for tt in target:
                for t, size in zip(tt, output.shape[1:]):
                    _check_index(int(t), size, "index ")
            return torch.stack([output[(i, *tt)] for i, tt in enumerate(target)])
        idx = torch.as_tensor([int(t) for t in target], device=output.device)
        if output.dim() != 2:
            raise ValueError(f"a list of ints needs a 2-D output, got shape {tuple(output.shape)}")
        k = output.shape[1]
        if ((idx < -k) | (idx >= k)).any():
            raise IndexError(f"target {target} is out of range for model output with {k} outputs")
        return output.gather(1, (idx % k).reshape(-1, 1)).reshape(n)
    raise TypeError(f"unsupported target type {type(target).__name__}")


def target_indices(target: TargetType, n: int, device: torch.device) -> Optional[Tensor]:
    """Class index per example for a 2-D output, or ``None`` when ``target`` is None.

    Needed where a decision margin compares the target logit with the others.
    """
    if target is None:
        return None
    check_target_dtype(target)
    if isinstance(target, tuple):  # Captum's (c,) indexes a 2-D output too
        if len(target) != 1:
            raise ValueError(f"tuple target {target!r} indexes a {len(target) + 1}-D output; "
                             "one class per example needs (N, K) logits")
        target = target[0]
    if isinstance(target, list):
        target = [t[0] if isinstance(t, tuple) and len(t) == 1 else t for t in target]
    if isinstance(target, Tensor):
        t = target.reshape(-1).to(device=device, dtype=torch.long)
    elif isinstance(target, int):
        t = torch.tensor([target], dtype=torch.long, device=device)
    else:
        try:  # a list of ints (NumPy integers and 0-d integer tensors included)
            t = torch.as_tensor([operator.index(c) for c in target], dtype=torch.long, device=device)
        except TypeError:
            raise ValueError(f"target {target!r} does not name one class per example for a 2-D output") from None
    if t.numel() == 1:
        return t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries for {n} examples")
    return t


def decision_margin(output: Tensor, target: TargetType, threshold: float = 0.0) -> Tensor:
    """Decision margin of docs/definitions.md, section 2.5, one value per example.

    One output: ``F - threshold``; K outputs: ``F_target - max_{c != target} F_c`` (for two
    classes this is ``F_t - F_other``).
    """
    n = output.shape[0]
    if output[0].numel() == 1:
        return output.reshape(n) - threshold
    if output.dim() != 2:
        raise ValueError(f"decision margin needs a (N,) or (N, K) output, got {tuple(output.shape)}")
    idx = target_indices(target, n, output.device)
    if idx is None:
        raise ValueError("target is required for a model with several outputs")
    own = select_target(output, target)
    others = output.scatter(1, (idx % output.shape[1]).reshape(-1, 1), float("-inf"))
    # amax, not max(dim): max opens a parallel region even for (N, 2), slow on a busy CPU.
    return own - others.amax(dim=1)


def flat_tuple(ts: Sequence[Tensor]) -> Tensor:
    """Concatenate a tuple of per-input tensors into one ``(N, d)`` matrix."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in ts], dim=1)


def count_nan(t: Tensor) -> int:
    """Number of NaN entries (undefined values) in ``t``."""
    return int(torch.isnan(t).sum())


def value_and_input_gradients(
    forward_func: Callable[..., Tensor],
    inputs: Tuple[Tensor, ...],
    target: TargetType = None,
    additional_forward_args: Any = None,
    create_graph: bool = False,
    reduce: Optional[Callable[[Tensor, TargetType], Tensor]] = None,
) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor]:
    """Gradients of the per-example decision value with respect to ``inputs``, and that value.

    ``inputs`` must be leaves that require grad (see :func:`prepare_inputs`). ``reduce`` maps
    ``(output, target)`` to one scalar per example (the decision value, e.g. a margin); the
    default is :func:`select_target`. Works inside ``torch.no_grad()``. One-channel CPU
    convolutions take the faster data gradients of :mod:`captum_gradflow._native_conv`. Returns
    ``(gradients, value, output)``; value and output are detached unless ``create_graph``.
    """
    reduce = reduce or select_target
    with torch.enable_grad():
        out = run_forward(forward_func, inputs, additional_forward_args)
        value = reduce(out, target)
        if not value.requires_grad:
            raise ValueError(
                "the model output does not depend on the inputs (no gradient): check that "
                "forward_func uses its inputs and that its parameters are not detached"
            )
        total = value.sum()
        grads = input_gradients(total, inputs, create_graph=create_graph)
    grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads))
    if create_graph:
        return grads, value, out
    return grads, value.detach(), out.detach()


def differentiable_input_gradient(out: Tensor, xs: Tuple[Tensor, ...], target: TargetType
                                  ) -> Tuple[Dict[int, Tensor], Tensor]:
    """Input gradient of ``out[target]`` that autograd can differentiate again (training).

    ``out`` is the model's output for ``xs``, computed with gradients enabled; inputs that
    require grad are differentiated. Returns ``(grad_f per input index (n, d_i), |grad f|^2
    over all inputs (n,))``, both part of the graph. Errors name the problem: no input
    requiring grad, an output not depending on the inputs, NaN/Inf in the inputs, output or
    gradient, a gradient that is zero for every example.
    """
    n = xs[0].shape[0]
    if out.dim() == 0 or out.shape[0] != n:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected one row per example ({n})")
    check_finite(xs, "inputs")
    check_finite((out.detach(),), "model output")
    leaves = [i for i, t in enumerate(xs) if t.requires_grad]
    if not leaves:
        raise ValueError(
            "inputs do not require grad: call x.requires_grad_() before the forward pass "
            "out = model(x), so the penalty can take the input gradient from it"
        )
    if not out.requires_grad:
        raise ValueError(
            "the model output does not depend on the inputs through autograd (computed "
            "under torch.no_grad(), detached, or not a function of x)"
        )
    value = select_target(out, target)
    grads = input_gradients(value.sum(), [xs[i] for i in leaves], create_graph=True)
    if all(g is None for g in grads):
        raise ValueError("the model output does not depend on the inputs: its input gradient is empty")
    grad_f = {
        i: (torch.zeros_like(xs[i]) if g is None else g).reshape(n, -1) for i, g in zip(leaves, grads)
    }
    norm_f = sum((g * g).sum(1) for g in grad_f.values())  # over all inputs (section 2.1)
    bad_f = ~torch.isfinite(norm_f.detach())
    if bool(bad_f.any()):
        raise ValueError(
            f"the model's input gradient contains NaN or Inf for {int(bad_f.sum())} of {n} "
            "examples (check the model and the learning rate)"
        )
    if not bool((norm_f.detach() > 0).any()):
        raise ValueError(
            "the model's input gradient is zero for every example: its output does not "
            "depend on the input (or all units are saturated)"
        )
    return grad_f, norm_f


def take_rows(value: Any, rows: Optional[Tensor], n: int, lists: bool = True) -> Any:
    """Rows ``rows`` of anything with one entry per example; anything else as it is.

    The one rule for following a subset of a batch (the flow's active examples, the
    regularizer's random subset): a tensor whose first dimension is the batch size ``n``
    (``n > 1``, so a shared one-row tensor is never mistaken for a batch) and, with
    ``lists``, a list of ``n`` per-example entries (Captum's list targets). ``rows=None``
    means every row.
    """
    if rows is None or n <= 1:
        return value
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value.index_select(0, rows.to(value.device))
    if lists and isinstance(value, list) and len(value) == n:
        return [value[i] for i in rows.tolist()]
    return value


def take_args(additional_forward_args: Any, rows: Optional[Tensor], n: int) -> Tuple[Any, ...]:
    """Additional forward arguments as a tuple, per-example tensors cut to ``rows``."""
    args = format_additional_args(additional_forward_args)
    return tuple(take_rows(a, rows, n, lists=False) for a in args)


MASK_FROM_ARGS = "from_args"


def split_mask(mask: Any, n: int, additional_forward_args: Any) -> Tuple[Optional[Tensor], Any]:
    """``(mask, additional_forward_args)`` with a per-example mask taken out of the arguments.

    ``mask="from_args"`` means: the mask is the last entry of ``additional_forward_args``
    (removed before the model is called). Captum's wrappers (``NoiseTunnel``,
    ``captum.metrics.sensitivity_max``) repeat the inputs and the additional arguments, but
    not keyword arguments, so a per-example mask must travel there. A mask tensor whose rows
    do not match the batch gets an error saying so.
    """
    if isinstance(mask, str):
        if mask != MASK_FROM_ARGS:
            raise ValueError(f"mask must be a tensor, None or {MASK_FROM_ARGS!r}, got {mask!r}")
        args = format_additional_args(additional_forward_args)
        if not args or not isinstance(args[-1], Tensor):
            raise ValueError(
                "mask='from_args' takes the mask from the last entry of additional_forward_args, "
                "but that is not a tensor"
            )
        mask, rest = args[-1], args[:-1]
        additional_forward_args = rest if rest else None
    if isinstance(mask, Tensor) and mask.dim() >= 3 and mask.shape[0] not in (1, n):
        raise ValueError(
            f"mask has {mask.shape[0]} rows (one per example) but the inputs have {n}. Captum "
            "wrappers such as NoiseTunnel and sensitivity_max repeat the inputs but not keyword "
            "arguments: pass the per-example mask as the last entry of additional_forward_args "
            f"and mask={MASK_FROM_ARGS!r}, so it is repeated with the inputs"
        )
    return mask, additional_forward_args
