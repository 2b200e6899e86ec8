"""The state of a gradient flow and its integrator (docs/definitions.md, section 2.5).

:class:`FlowState` holds every per-example quantity of the flow as one typed object; a step
works on the active rows only (``state.take(rows)``), and writes them back
(``state.put(rows, new)``), out of place, so frozen examples cost nothing and the caller's
tensors are never written.

Cost: one forward and one backward pass per point (two per step for Heun), on the examples
still moving only. The evaluation at a new point serves three purposes at once: its margin
decides whether the step crossed the boundary, and its gradient gives both the alignment
there and the direction of the next step.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from captum_gradflow._common import (
    TargetType,
    decision_margin,
    prepare_inputs,
    take_args,
    take_rows,
    target_indices,
    value_and_input_gradients,
)
from captum_gradflow.decision import flat_grads, input_blocks
from captum_gradflow.gradients import GradientPath, measure, unit_basis

__all__ = ["FlowState", "FlowIntegrator", "Point"]


@dataclass
class Point:
    """One evaluation of the flow: margin, its gradient and norm, and the alignment there."""

    margin: Tensor  # (n,)
    grad: Tensor  # (n, D)
    norm: Tensor  # (n,)
    alignment: Optional[Tensor]  # (n, m); None where not asked for (Heun's predictor)


@dataclass
class FlowState:
    """Every per-example quantity of the flow, one row per example."""

    x: Tensor  # (n, D) position, all inputs flattened and concatenated
    d: Tensor  # (n, D) unit direction of the next step
    m: Tensor  # (n,) margin at x (float64)
    s: Tensor  # (n, m) squared cosines at x (float64)
    sigma: Tensor  # (n,) sign of the margin at the start
    h: Tensor  # (n,) step size
    length: Tensor  # (n,) arc length so far
    integral: Tensor  # (n, m) trapezoid sums of S over the defined segments
    covered: Tensor  # (n, m) arc length where S is defined at both ends
    skipped: Tensor  # (n, m) points with an undefined S
    n_steps: Tensor  # (n,)
    n_evals: Tensor  # (n,)
    reached: Tensor  # (n,) bool: the margin changed sign
    active: Tensor  # (n,) bool: still moving

    def take(self, rows: Optional[Tensor]) -> "FlowState":
        """The state of ``rows`` only (None: all rows, the same object)."""
        if rows is None:
            return self
        return FlowState(**{f.name: getattr(self, f.name).index_select(0, rows) for f in fields(self)})

    def put(self, rows: Optional[Tensor], part: "FlowState") -> None:
        """Write ``part``, the state of ``rows``, back into this one (out of place)."""
        for f in fields(self):
            new = getattr(part, f.name)
            if rows is not None:
                full = getattr(self, f.name)
                new = full.index_copy(0, rows, new.to(full.dtype))
            setattr(self, f.name, new)


def _usable(norm: Tensor, eps: float) -> Tensor:
    return torch.isfinite(norm) & (norm >= eps) & (norm > 0)


class FlowIntegrator:
    """Euler or Heun integration of the flow of one ``attribute`` call."""

    def __init__(self, forward_func: Callable[..., Tensor], path: GradientPath, xs: Tuple[Tensor, ...],
                 target: TargetType, additional_forward_args: Any, threshold: float) -> None:
        self.forward_func, self.path = forward_func, path
        self.xs = tuple(t.detach() for t in xs)
        self.n = xs[0].shape[0]
        self.blocks = input_blocks(self.xs)
        self.target, self.args, self.threshold = target, additional_forward_args, threshold
        self.target_idx: Optional[Tensor] = None

    def evaluate(self, xs: Tuple[Tensor, ...], rows: Optional[Tensor], align: bool = True) -> Point:
        """Margin, its gradient and (with ``align``) the alignments at ``xs`` (the batch's ``rows``).

        Heun's predictor needs only the gradient: it skips the feature gradients."""
        target = self.target if self.target_idx is None else take_rows(self.target_idx, rows, self.n)
        grads, margin, out = value_and_input_gradients(
            self.forward_func, prepare_inputs(xs), target, take_args(self.args, rows, self.n),
            reduce=lambda o, t: decision_margin(o, t, self.threshold),
        )
        if self.target_idx is None and out[0].numel() > 1:
            # The first evaluation has validated the target; from here on a per-example class
            # index follows the active subset.
            self.target_idx = target_indices(self.target, self.n, out.device)
        g = flat_grads(grads)
        basis, defined = unit_basis(g)
        s = measure(basis, defined, self.path(xs, rows), self.blocks) if align else None
        return Point(margin, g, torch.linalg.vector_norm(g, dim=1), s)

    def unflat(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Split a flat ``(n, D)`` position back into the inputs' shapes and dtypes."""
        return tuple(
            x[:, blk].reshape(x.shape[0], *t.shape[1:]).to(t.dtype) for blk, t in zip(self.blocks, self.xs)
        )

    def start(self, step_size: Optional[float], max_steps: int, eps: float) -> Tuple[FlowState, Point, Tensor]:
        """The state at the inputs, the first evaluation and which examples start on the boundary."""
        n, wide = self.n, torch.float64
        p = self.evaluate(self.xs, None)
        ok = torch.isfinite(p.margin) & _usable(p.norm, eps)
        sigma = torch.sign(p.margin)
        if step_size is None:
            h = (2 * p.margin.abs() / (p.norm * max_steps)).to(wide)
        else:
            h = torch.full((n,), float(step_size), dtype=wide, device=p.margin.device)
        m = p.margin.to(wide)
        on_boundary = ok & (m == 0)
        active = ok & ~on_boundary
        s = p.alignment.to(wide)
        zeros = torch.zeros_like(s)
        count = torch.zeros(n, dtype=torch.long, device=m.device)
        state = FlowState(
            # A copy: end points and paths must not alias the caller's inputs.
            x=flat_grads(self.xs).clone(), d=-(sigma / p.norm)[:, None] * p.grad, m=m, s=s,
            sigma=sigma, h=h, length=torch.zeros_like(m), integral=zeros, covered=zeros.clone(),
            skipped=(active[:, None] & torch.isnan(s)).long(), n_steps=count, n_evals=count + 1,
            reached=on_boundary.clone(), active=active,
        )
        return state, p, on_boundary

    def step(self, st: FlowState, rows: Optional[Tensor], cap: float, max_steps: int, eps: float,
             heun: bool) -> Tuple[FlowState, Tensor]:
        """One step of the rows ``st`` (the batch's ``rows``); the new state and who moved."""
        h = torch.minimum(st.h, cap - st.length)
        at_cap = st.h >= cap - st.length  # this step ends exactly at max_length
        hx = h.to(st.x.dtype)[:, None]
        valid = torch.ones_like(st.active)
        if heun:
            pred = self.evaluate(self.unflat(torch.addcmul(st.x, hx, st.d)), rows, align=False)
            valid = _usable(pred.norm, eps)
            d_pred = torch.where(valid[:, None], -(st.sigma / pred.norm)[:, None] * pred.grad, st.d)
            x = torch.addcmul(st.x, 0.5 * hx, st.d + d_pred)
        else:
            x = torch.addcmul(st.x, hx, st.d)
        p = self.evaluate(self.unflat(x), rows)
        m = p.margin.to(st.m.dtype)
        crossed = valid & torch.isfinite(m) & (st.sigma * m <= 0)
        # A point where grad m vanishes (or a failed Heun predictor) is rejected: the flow
        # ends at the last point where its direction was defined.
        moving = valid & ~crossed & _usable(p.norm, eps)
        moved = crossed | moving
        s = p.alignment.to(st.s.dtype)
        d = -(st.sigma / p.norm).to(p.grad.dtype)[:, None] * p.grad
        if bool(crossed.any()):
            # Inside the crossing step the margin is taken as linear: it is zero at tau.
            tau = torch.where(crossed, st.m / (st.m - m), torch.ones_like(m))
            tau = torch.nan_to_num(tau, nan=1.0).clamp(0.0, 1.0)
            s, x, h = torch.lerp(st.s, s, tau[:, None]), torch.lerp(st.x, x, tau.to(x.dtype)[:, None]), tau * h
        if not bool(moved.all()):
            keep = moved[:, None]
            s, x, d = torch.where(keep, s, st.s), torch.where(keep, x, st.x), torch.where(keep, d, st.d)
            m, h = torch.where(moved, m, st.m), torch.where(moved, h, 0.0)
        # Trapezoid over the segments whose ends both have a defined S (averages skip
        # undefined values and count them).
        seg = moved[:, None] & torch.isfinite(st.s) & torch.isfinite(s)
        area = torch.where(seg, 0.5 * (st.s + s) * h[:, None], 0.0)
        n_steps = st.n_steps + moved.long()
        new = replace(
            st, x=x, d=d, m=m, s=s, length=st.length + h, integral=st.integral + area,
            covered=st.covered + seg * h[:, None], skipped=st.skipped + (moved[:, None] & torch.isnan(s)),
            n_steps=n_steps, n_evals=st.n_evals + (2 if heun else 1), reached=st.reached | crossed,
            active=moving & (n_steps < max_steps) & ~at_cap,
        )
        return new, moved

    def run(self, step_size: Optional[float], max_steps: int, max_length: Optional[float],
            integrator: str, eps: float, keep_path: bool
            ) -> Tuple[FlowState, Point, Tensor, Optional[List[List[Tensor]]]]:
        """Integrate until every example stops: ``(state, first point, on_boundary, paths)``."""
        state, first, on_boundary = self.start(step_size, max_steps, eps)
        cap = float("inf") if max_length is None else float(max_length)
        paths = [[state.x[i]] for i in range(self.n)] if keep_path else None
        while bool(state.active.any()):
            rows = state.active.nonzero().flatten()
            rows = None if rows.numel() == self.n else rows
            new, moved = self.step(state.take(rows), rows, cap, max_steps, eps, integrator == "heun")
            state.put(rows, new)
            if paths is not None:
                ids = torch.arange(self.n, device=moved.device) if rows is None else rows
                for k in moved.nonzero().flatten().tolist():
                    paths[int(ids[k])].append(new.x[k])
        return state, first, on_boundary, paths
