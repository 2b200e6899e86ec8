"""The decision basis of a model and the joint alignment of features with it.

The model gradient is computed once per call and expressed as an orthonormal *decision basis*
per example: the unit gradient ``grad f / |grad f|`` (``decision="target"``) or an orthonormal
basis of the row space of the centred-logit Jacobian (``decision="subspace"``,
docs/definitions.md, section 2.4). Every alignment is then ``|B g|^2 / |g|^2`` for a feature
gradient ``g`` (:func:`captum_gradflow.gradients.measure`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from captum_gradflow._common import (
    TargetType,
    flat_tuple,
    prepare_inputs,
    run_forward,
    value_and_input_gradients,
)
from captum_gradflow._native_conv import input_gradients
from captum_gradflow.gradients import FeatureGradients, unit_basis

__all__ = ["DecisionBasis", "decision_basis", "input_blocks", "joint_alignment", "flat_grads"]


@dataclass
class DecisionBasis:
    """Orthonormal decision basis of every example, shared by all features of a call."""

    basis: Tensor  # (N, k, D): orthonormal rows over all inputs concatenated; zero rows pad
    defined: Tensor  # (N,) bool: False where the model gradient is zero or not finite
    blocks: List[slice]  # each input's slice of D


def input_blocks(xs: Tuple[Tensor, ...]) -> List[slice]:
    """Each input's slice of the flattened, concatenated per-example vector."""
    sizes = [t[0].numel() for t in xs]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(s, s + k) for s, k in zip(starts, sizes)]


def flat_grads(grads: Tuple[Tensor, ...]) -> Tensor:
    """Per-input gradients as one ``(N, D)`` matrix."""
    # One input needs no concatenation copy: a reshape of a contiguous gradient is a view.
    return grads[0].reshape(grads[0].shape[0], -1) if len(grads) == 1 else flat_tuple(grads)


def _rank_tol(rank_tol: Optional[float], rows: int, cols: int, dtype: torch.dtype) -> float:
    return rank_tol if rank_tol is not None else max(rows, cols) * torch.finfo(dtype).eps


def decision_basis(
    forward_func: Callable[..., Tensor],
    xs: Tuple[Tensor, ...],
    target: TargetType,
    additional_forward_args: Any,
    decision: str,
    rank_tol: Optional[float],
) -> DecisionBasis:
    """The decision basis of ``forward_func`` at ``xs`` (one backward pass, ``K - 1`` for
    ``decision="subspace"``)."""
    leaves = prepare_inputs(xs)
    blocks = input_blocks(xs)
    if decision == "target":
        grads, _, _ = value_and_input_gradients(forward_func, leaves, target, additional_forward_args)
        basis, defined = unit_basis(flat_grads(grads))
        return DecisionBasis(basis, defined, blocks)
    if target is not None:
        raise ValueError("decision='subspace' uses all outputs: pass target=None")
    jac = _logit_difference_jacobian(forward_func, leaves, additional_forward_args)
    _, sv, vh = torch.linalg.svd(jac, full_matrices=False)
    tol = _rank_tol(rank_tol, jac.shape[1], jac.shape[2], jac.dtype)
    finite = torch.isfinite(jac).all(dim=(1, 2))
    keep = (sv > tol * sv[:, :1]) & (sv > 0) & finite[:, None]
    basis = torch.where(keep[..., None], vh, torch.zeros_like(vh))
    return DecisionBasis(basis, keep.any(1), blocks)


def _logit_difference_jacobian(
    forward_func: Callable[..., Tensor], leaves: Tuple[Tensor, ...], additional_forward_args: Any
) -> Tensor:
    """Rows ``grad(F_c - F_0)``, c = 1..K-1: same row space as the centred logits."""
    with torch.enable_grad():
        out = run_forward(forward_func, leaves, additional_forward_args)
        if out.dim() != 2 or out.shape[1] < 2:
            raise ValueError(
                "decision='subspace' needs a model with K > 1 outputs of shape (N, K); got "
                f"output shape {tuple(out.shape)}"
            )
        if not out.requires_grad:
            raise ValueError("the model output does not depend on the inputs (no gradient)")
        k = out.shape[1]
        rows = []
        for c in range(1, k):
            total = (out[:, c] - out[:, 0]).sum()
            grads = input_gradients(total, leaves, retain_graph=c < k - 1)
            grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads))
            rows.append(flat_grads(grads))
    return torch.stack(rows, dim=1)


def joint_alignment(dec: DecisionBasis, grads: FeatureGradients, rank_tol: Optional[float],
                    n_features: Optional[int] = None) -> Tensor:
    """``J = |P_G b|^2`` per example for the unit model gradient ``b`` (section 2.2), ``(N,)``.

    ``n_features``: span only the first columns of ``grads`` (the features, not the noise).

    An SVD of the ``D x m`` matrix of unit-normalised feature gradients gives the span;
    singular values below ``rank_tol`` times the largest are dropped. NaN where the model
    gradient is undefined, a feature gradient is not finite, or no feature gradient is nonzero.
    """
    n, d = dec.basis.shape[0], dec.basis.shape[2]
    dtype = torch.float64  # the SVD's rank decision needs the precision; m is small
    m = grads.n_features if n_features is None else n_features
    g = torch.zeros(n, d, m, dtype=dtype, device=dec.basis.device)
    for j, i, gj in grads.rows(m):
        g[:, dec.blocks[i], j] = gj.to(dtype)
    finite = torch.isfinite(g).all(dim=(1, 2))
    g = torch.where(torch.isfinite(g), g, torch.zeros((), dtype=dtype, device=g.device))
    norms = g.norm(dim=1, keepdim=True)
    g = g / torch.where(norms > 0, norms, torch.ones_like(norms))
    u, sv, _ = torch.linalg.svd(g, full_matrices=False)
    keep = sv > _rank_tol(rank_tol, d, g.shape[2], dtype) * sv[:, :1]  # (N, r)
    coords = torch.einsum("ndr,nd->nr", u, dec.basis[:, 0].to(dtype)) * keep
    jv = (coords * coords).sum(1)
    bad = ~dec.defined | ~finite | ~keep.any(1) | ~(norms.flatten(1) > 0).any(1)
    jv = torch.where(bad, torch.full_like(jv, float("nan")), jv.clamp(0.0, 1.0))
    return jv.to(dec.basis.dtype)
