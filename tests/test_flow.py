"""GradientFlowAlignment (docs/definitions.md, section 2.5): exact flows of linear and quadratic models, stopping
rules, Captum conformance and input validation."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from captum_gradflow import (
    Brightness,
    Extent,
    Feature,
    FlowResult,
    GradientFlowAlignment,
    LinearFeature,
    SmallCNN,
)

D = torch.float64


def sq_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) ** 2 / ((a @ a) * (b @ b)))


@pytest.fixture
def linear2():
    """Two-logit linear model F(x) = Wx + b on R^6, in double precision."""
    torch.manual_seed(1)
    return nn.Linear(6, 2).double()


@pytest.fixture
def directions():
    g = torch.Generator().manual_seed(2)
    return torch.randn(6, generator=g, dtype=D), torch.randn(6, generator=g, dtype=D)


# -- linear models: straight flows with a closed form -----------------------------------------


def test_linear_two_logit_flow_is_straight_and_equals_margin_alignment(linear2, directions):
    r, q = directions
    x = torch.randn(5, 6, dtype=D)
    flow = GradientFlowAlignment(linear2, [LinearFeature(r, "r"), LinearFeature(q, "q")])
    res = flow.attribute(x, target=1, return_path=True)
    assert isinstance(res, FlowResult)
    w = linear2.weight.detach()
    dm = w[1] - w[0]  # the margin direction W_t - W_other
    expected = torch.tensor([sq_cos(dm, r), sq_cos(dm, q)], dtype=D)
    torch.testing.assert_close(res.alignment, expected.expand(5, 2), rtol=1e-10, atol=1e-12)
    # The flow's direction is the margin's, not the target logit's.
    assert abs(sq_cos(w[1], r) - expected[0]) > 0.01
    margin = lambda z: (linear2(z)[:, 1] - linear2(z)[:, 0]).detach()  # noqa: E731
    m0 = margin(x)
    torch.testing.assert_close(res.length, m0.abs() / dm.norm(), rtol=1e-10, atol=1e-12)
    assert res.reached_boundary.all()
    assert margin(res.end_point).abs().max() < 1e-10
    for i, p in enumerate(res.path):
        assert p.shape == (int(res.n_steps[i]) + 1, 6)
        torch.testing.assert_close(p[0], x[i])
        torch.testing.assert_close(p[-1], res.end_point[i])
        steps = p[1:] - p[0]
        # Every point lies on the line through x along the margin direction.
        cos = steps @ dm / (steps.norm(dim=1) * dm.norm())
        torch.testing.assert_close(cos.abs(), torch.ones_like(cos), rtol=0, atol=1e-10)


def test_linear_one_output_flow_equals_pointwise_alignment(directions):
    r, _ = directions
    torch.manual_seed(3)
    model = nn.Linear(6, 1).double()
    x = torch.randn(4, 6, dtype=D)
    res = GradientFlowAlignment(model, [LinearFeature(r)]).attribute(
        x, threshold=0.3, integrator="heun", return_details=True
    )
    w = model.weight.detach()[0]
    # Section 2.1: S = squared cosine of grad F (= w) and grad g (= r).
    torch.testing.assert_close(res.alignment[:, 0], torch.full((4,), sq_cos(w, r), dtype=D))
    m0 = model(x).detach()[:, 0] - 0.3
    torch.testing.assert_close(res.start_margin, m0)
    torch.testing.assert_close(res.length, m0.abs() / w.norm())
    torch.testing.assert_close(model(res.end_point).detach()[:, 0], torch.full((4,), 0.3, dtype=D))


def test_point_on_the_boundary_has_zero_length_and_pointwise_alignment(directions):
    r, _ = directions
    torch.manual_seed(6)
    model = nn.Linear(6, 2, bias=False).double()
    x = torch.cat([torch.zeros(1, 6, dtype=D), torch.randn(1, 6, dtype=D)])  # m(0) = 0 exactly
    flow = GradientFlowAlignment(model, [LinearFeature(r)])
    res = flow.attribute(x, target=1, return_details=True)
    dm = (model.weight[1] - model.weight[0]).detach()
    assert res.start_margin[0] == 0 and res.length[0] == 0 and res.n_steps[0] == 0
    assert res.reached_boundary.tolist() == [True, True]
    # L -> 0 limit of the average: S at the point itself.
    torch.testing.assert_close(res.alignment[:, 0], torch.full((2,), sq_cos(dm, r), dtype=D))
    assert res.length[1] > 0 and res.n_nan == 0


# -- quadratic model: a curved flow with an exact solution ------------------------------------


def _quadratic_exact(x0: torch.Tensor, thr: float):
    """m = x1^2 + 2 x2^2 - thr. The flow follows x2 = x1^2 / C^2 (C^2 = x1(0)^2 / x2(0)), a
    parabola with slope a x1, a = 2 / C^2; along it S_e1 = 1 / (1 + a^2 x1^2)."""
    c2 = x0[:, 0] ** 2 / x0[:, 1]
    a = 2 / c2
    u = (-1 + torch.sqrt(1 + 8 * thr / c2 ** 2)) / (4 / c2 ** 2)  # x1^2 on the boundary
    end = torch.stack([u.sqrt(), u / c2], 1)
    def prim(z):  # antiderivative of sqrt(1 + a^2 z^2)
        return z * torch.sqrt(1 + a ** 2 * z ** 2) / 2 + torch.asinh(a * z) / (2 * a)

    length = prim(x0[:, 0]) - prim(end[:, 0])
    align_e1 = (torch.asinh(a * x0[:, 0]) - torch.asinh(a * end[:, 0])) / (a * length)
    return end, length, align_e1


def test_heun_beats_euler_on_a_curved_quadratic_flow():
    x0 = torch.tensor([[2.0, 1.0], [1.5, 0.8], [1.0, 1.2], [2.5, 0.3]], dtype=D)
    thr = 1.5
    end, length, align_e1 = _quadratic_exact(x0, thr)
    e = torch.eye(2, dtype=D)
    flow = GradientFlowAlignment(
        lambda z: z[:, 0] ** 2 + 2 * z[:, 1] ** 2,
        [LinearFeature(e[0], "e1"), LinearFeature(e[1], "e2")],
    )
    errors = {}
    for integrator in ("euler", "heun"):
        for h in (0.05, 0.025):
            res = flow.attribute(
                x0, threshold=thr, step_size=h, max_steps=400, integrator=integrator,
                return_path=True,
            )
            assert res.reached_boundary.all()
            errors[integrator, h] = float((res.end_point - end).norm(dim=1).max())
            # In 2-D the two axes share the squared cosine: S_e1 + S_e2 = 1 everywhere.
            torch.testing.assert_close(res.alignment.sum(1), torch.ones(4, dtype=D))
            tol = 0.005 if integrator == "euler" else 5e-4
            assert (res.length - length).abs().max() < tol
            assert (res.alignment[:, 0] - align_e1).abs().max() < tol
            # The path is curved: it does not stay on the straight line through x0.
            chord = (res.end_point - x0) / (res.end_point - x0).norm(dim=1, keepdim=True)
            first = (res.path[0][1] - x0[0]) / (res.path[0][1] - x0[0]).norm()
            assert float(chord[0] @ first) < 0.999
    assert errors["heun", 0.05] * 5 < errors["euler", 0.05]
    # First order: halving h halves the error; second order: at least 3.5x smaller.
    assert 1.6 < errors["euler", 0.05] / errors["euler", 0.025] < 2.5
    assert errors["heun", 0.05] / errors["heun", 0.025] > 3.5


# -- stopping rules --------------------------------------------------------------------------


class _Recorder(nn.Module):
    """One-output linear model that records the batch size of every call."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.sizes = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return x @ self.w


@pytest.mark.parametrize("integrator", ["euler", "heun"])
def test_per_example_stopping_freezes_finished_examples(integrator):
    w = torch.tensor([0.6, 0.8, 0.0], dtype=D)  # unit norm: the margin is the signed distance
    model = _Recorder(w)
    c = torch.tensor([0.25, 0.55, 0.95, 1.5, -0.35], dtype=D)
    x = c[:, None] * w + torch.tensor([0.0, 0.0, 1.0], dtype=D)
    flow = GradientFlowAlignment(model, [LinearFeature(torch.tensor([1.0, 0, 0], dtype=D))])
    res = flow.attribute(x, step_size=0.1, max_steps=10, integrator=integrator, return_details=True)
    assert res.n_steps.tolist() == [3, 6, 10, 10, 4]
    assert res.reached_boundary.tolist() == [True, True, True, False, True]
    torch.testing.assert_close(res.length, torch.tensor([0.25, 0.55, 0.95, 1.0, 0.35], dtype=D))
    torch.testing.assert_close(res.alignment[:, 0], torch.full((5,), 0.36, dtype=D))
    per_step = 2 if integrator == "heun" else 1
    torch.testing.assert_close(res.n_evaluations, 1 + per_step * res.n_steps)
    # Frozen examples cost nothing: the model saw exactly the rows still moving.
    assert sum(model.sizes) == int(res.n_evaluations.sum())
    assert model.sizes[0] == 5 and model.sizes[-1] == 2
    assert model.sizes == sorted(model.sizes, reverse=True)
    assert float((res.end_point[3] - x[3]) @ w) == pytest.approx(-1.0)


def test_max_length_shortens_the_last_step():
    w = torch.tensor([1.0, 0.0], dtype=D)
    x = torch.tensor([[5.0, 1.0], [-5.0, 2.0]], dtype=D)
    diagonal = LinearFeature(torch.tensor([1.0, 1.0], dtype=D))
    flow = GradientFlowAlignment(lambda z: z @ w, [diagonal])
    res = flow.attribute(x, step_size=0.3, max_length=1.0, return_details=True)
    assert res.n_steps.tolist() == [4, 4]
    assert not res.reached_boundary.any()
    torch.testing.assert_close(res.length, torch.ones(2, dtype=D))
    torch.testing.assert_close(res.end_point, torch.tensor([[4.0, 1.0], [-4.0, 2.0]], dtype=D))
    torch.testing.assert_close(res.alignment[:, 0], torch.full((2,), 0.5, dtype=D))


def test_zero_gradient_at_the_start_gives_nan_and_a_counted_warning():
    w = torch.tensor([1.0, 2.0, 0.0], dtype=D)
    model = lambda z: (z @ w) ** 2 - 1.0  # noqa: E731 - gradient 2 (w.z) w vanishes where w.z = 0
    x = torch.tensor([[2.0, -1.0, 3.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]], dtype=D)
    feats = [
        LinearFeature(torch.tensor([1.0, 0, 0], dtype=D), "a"),
        LinearFeature(torch.ones(3, dtype=D), "b"),
    ]
    with pytest.warns(RuntimeWarning, match=r"4 of 8 alignment values are NaN.*2 example\(s\)"):
        res = GradientFlowAlignment(model, feats).attribute(x, return_details=True)
    assert res.n_nan == 4
    assert torch.isnan(res.alignment[[0, 2]]).all()
    assert not torch.isnan(res.alignment[[1, 3]]).any()
    assert res.length[[0, 2]].tolist() == [0.0, 0.0]
    assert not res.reached_boundary[[0, 2]].any() and res.reached_boundary[[1, 3]].all()
    torch.testing.assert_close(res.end_point[[0, 2]], x[[0, 2]])
    assert res.end_point.data_ptr() != x.data_ptr()  # a copy, never a view of the inputs
    assert res.n_steps[[0, 2]].tolist() == [0, 0]


def test_per_example_masks_follow_the_active_subset():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(1, 4, 4, generator=g, dtype=D)
    x = torch.randn(5, 1, 4, 4, generator=g, dtype=D)
    masks = torch.rand(5, 1, 4, 4, generator=g, dtype=D) + 0.05
    model = lambda z: (z * w).sum((1, 2, 3))  # noqa: E731
    res = GradientFlowAlignment(model, [Brightness()]).attribute(
        x, mask=masks, step_size=0.2, max_steps=100, return_details=True
    )
    assert len(set(res.n_steps.tolist())) > 2 and res.reached_boundary.all()
    # Brightness's gradient is the example's own mask (scaled), constant on the straight path.
    expected = torch.tensor([sq_cos(w.flatten(), m.flatten()) for m in masks], dtype=D)
    torch.testing.assert_close(res.alignment[:, 0], expected)


def test_undefined_feature_gradients_are_skipped_and_counted():
    w = torch.tensor([1.0, 0.0], dtype=D)
    half_plane = Feature.from_callable(
        lambda z: z.sum(1), "right_half",
        gradient=lambda z: torch.where(z[:, :1] >= 0, 1.0, float("nan")).expand_as(z),
    )
    vertical = LinearFeature(torch.tensor([0.0, 1.0], dtype=D), "vertical")
    x = torch.tensor([[2.05, 1.0], [-0.2, 0.0]], dtype=D)
    expected_warning = r"1 of 4 alignment values are NaN.*10 \(point, feature\)"
    with pytest.warns(RuntimeWarning, match=expected_warning):
        res = GradientFlowAlignment(lambda z: z @ w, [half_plane, vertical]).attribute(
            x, threshold=-0.5, step_size=0.1, max_steps=100, return_details=True
        )
    assert res.reached_boundary.all()
    torch.testing.assert_close(res.length, torch.tensor([2.55, 0.3], dtype=D))
    # Defined part of the first path: x1 from 2.05 to 0.05, where S = cos^2(e1, (1, 1)) = 0.5.
    assert float(res.alignment[0, 0]) == pytest.approx(0.5)
    assert math.isnan(float(res.alignment[1, 0]))
    # Orthogonal gradients give a defined 0, not NaN.
    assert res.alignment[:, 1].tolist() == [0.0, 0.0]
    # Skipped: x1 = -0.05 ... -0.45 and the end point -0.5; all 4 points of the second path.
    assert res.n_skipped.tolist() == [[6, 0], [4, 0]]
    assert res.n_nan == 1


# -- Captum conformance ------------------------------------------------------------------------


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a = nn.Linear(4, 2).double()
        self.b = nn.Linear(3, 2, bias=False).double()

    def forward(self, x1, x2, shift=None):
        out = self.a(x1) + self.b(x2)
        return out if shift is None else out + shift


def test_tuple_inputs_move_jointly_and_features_read_their_input():
    model = _TwoInputs()
    x1, x2 = torch.randn(3, 4, dtype=D), torch.randn(3, 3, dtype=D)
    r1, r2 = torch.randn(4, dtype=D), torch.randn(3, dtype=D)
    feats = [LinearFeature(r1, "on_x1"), LinearFeature(r2, "on_x2", input_index=1)]
    res = GradientFlowAlignment(model, feats).attribute((x1, x2), target=0, return_path=True)
    wa, wb = model.a.weight.detach(), model.b.weight.detach()
    dm = torch.cat([wa[0] - wa[1], wb[0] - wb[1]])
    on_x1 = torch.cat([r1, torch.zeros(3, dtype=D)])
    on_x2 = torch.cat([torch.zeros(4, dtype=D), r2])
    expected = torch.tensor([sq_cos(dm, on_x1), sq_cos(dm, on_x2)], dtype=D)
    torch.testing.assert_close(res.alignment, expected.expand(3, 2))
    e1, e2 = res.end_point
    assert e1.shape == x1.shape and e2.shape == x2.shape
    out = model(e1, e2).detach()
    assert (out[:, 0] - out[:, 1]).abs().max() < 1e-10
    assert not torch.equal(e2, x2)  # the second input moved too
    assert isinstance(res.path[0], tuple) and res.path[0][1].shape == (int(res.n_steps[0]) + 1, 3)


def test_additional_forward_args_follow_the_active_subset():
    model = _TwoInputs()
    x1, x2 = torch.randn(4, 4, dtype=D), torch.randn(4, 3, dtype=D)
    shift = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=D)
    flow = GradientFlowAlignment(model, [LinearFeature(torch.ones(4, dtype=D))])
    res = flow.attribute(
        (x1, x2), target=1, additional_forward_args=(shift,), step_size=0.05, max_steps=500,
        return_details=True,
    )
    out = model(x1, x2, shift).detach()
    m0 = out[:, 1] - out[:, 0]
    wa, wb = model.a.weight.detach(), model.b.weight.detach()
    dm = torch.cat([wa[1] - wa[0], wb[1] - wb[0]])
    torch.testing.assert_close(res.length, m0.abs() / dm.norm())
    assert len(set(res.n_steps.tolist())) > 1  # examples stopped at different steps
    e1, e2 = res.end_point
    end = model(e1, e2, shift).detach()
    assert (end[:, 1] - end[:, 0]).abs().max() < 1e-10


def test_target_forms_agree(linear2, directions):
    r, q = directions
    x = torch.randn(4, 6, dtype=D)
    flow = GradientFlowAlignment(linear2, [LinearFeature(r), LinearFeature(q)])
    t = torch.tensor([0, 1, 1, 0])
    by_tensor = flow.attribute(x, target=t, return_details=True)
    by_list = flow.attribute(x, target=t.tolist(), return_details=True)
    torch.testing.assert_close(by_tensor.alignment, by_list.alignment)
    torch.testing.assert_close(by_tensor.end_point, by_list.end_point)
    by_int = flow.attribute(x, target=1)
    torch.testing.assert_close(by_int, flow.attribute(x, target=[1, 1, 1, 1]))
    torch.testing.assert_close(by_int, flow.attribute(x, target=torch.tensor(1)))
    # The margin of target 0 is minus that of target 1: same boundary, same straight flow.
    torch.testing.assert_close(flow.attribute(x, target=0), by_int)
    one_output = nn.Linear(6, 1).double()
    res = GradientFlowAlignment(one_output, [LinearFeature(r)]).attribute(x, target=None)
    assert res.shape == (4, 1) and not torch.isnan(res).any()


def test_no_grad_flags_model_and_inputs_are_left_unchanged(directions):
    r, _ = directions
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.ELU(), nn.Linear(8, 2)).double().train()
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 6, dtype=D, requires_grad=True)
    x_copy = x.detach().clone()
    flow = GradientFlowAlignment(model, [LinearFeature(r)])
    free = flow.attribute(x, target=1)
    with torch.no_grad():
        inside = flow.attribute(x, target=1)
    torch.testing.assert_close(inside, free)
    assert not inside.requires_grad
    assert x.requires_grad and x.grad is None and torch.equal(x.detach(), x_copy)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert len(model._forward_hooks) == 1 and len(calls) > 2
    handle.remove()
    assert hasattr(GradientFlowAlignment.attribute, "__wrapped__")  # captum.log.log_usage


def test_small_cnn_flows_reach_the_boundary(lesions_small):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=2).eval()
    x = lesions_small.images[:6, :, 8:24, 8:24].contiguous()
    contrast = Feature.from_callable(lambda z: z.flatten(1).std(1), "std")
    flow = GradientFlowAlignment(model, [Brightness(), Extent(), contrast])
    for integrator in ("euler", "heun"):
        with warnings.catch_warnings():
            # Extent may be undefined where the flow makes the weighted variance negative.
            warnings.simplefilter("ignore", RuntimeWarning)
            res = flow.attribute(x, target=1, integrator=integrator, max_steps=24, return_path=True)
        assert res.alignment.shape == (6, 3) and res.n_nan == 0
        assert res.n_skipped[:, [0, 2]].sum() == 0
        assert ((res.alignment >= 0) & (res.alignment <= 1)).all()
        assert res.reached_boundary.all()
        out = model(res.end_point).detach()
        assert ((out[:, 1] - out[:, 0]).abs() < 0.05 * res.start_margin.abs()).all()
        torch.testing.assert_close(res.path[2][0], x[2])
        torch.testing.assert_close(res.path[2][-1], res.end_point[2])
    # Per-example masks follow the active subset.
    masks = lesions_small.masks[:6, :, 8:24, 8:24] + 0.1
    res = flow.attribute(x, target=1, mask=masks, step_size=0.02, max_steps=6, return_details=True)
    assert res.alignment.shape == (6, 3) and res.n_nan == 0


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors(linear2, directions):
    r, _ = directions
    flow = GradientFlowAlignment(linear2, [LinearFeature(r)])
    x = torch.randn(3, 6, dtype=D)
    x_copy = x.clone()
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        flow.attribute(bad, target=0)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        flow.attribute(bad, target=0)
    with pytest.raises(IndexError, match="out of range"):
        flow.attribute(x, target=2)
    with pytest.raises(IndexError, match="out of range"):
        flow.attribute(x, target=[0, 1, 5])
    with pytest.raises(ValueError, match="target is required"):
        flow.attribute(x)
    with pytest.raises(ValueError, match="unknown integrator 'rk4'"):
        flow.attribute(x, target=0, integrator="rk4")
    for h in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="step_size"):
            flow.attribute(x, target=0, step_size=h)
    with pytest.raises(ValueError, match="max_steps"):
        flow.attribute(x, target=0, max_steps=0)
    with pytest.raises(ValueError, match="max_length"):
        flow.attribute(x, target=0, max_length=0.0)
    with pytest.raises(TypeError, match="floating point"):
        flow.attribute(torch.ones(3, 6, dtype=torch.long), target=0)
    with pytest.raises(TypeError, match="Tensor or a tuple"):
        flow.attribute([[1.0] * 6], target=0)
    with pytest.raises(IndexError, match="reads input 1"):
        GradientFlowAlignment(linear2, [LinearFeature(r, input_index=1)]).attribute(x, target=0)
    with pytest.raises(ValueError, match="features is empty"):
        GradientFlowAlignment(linear2, [])
    with pytest.raises(TypeError, match="Feature objects"):
        GradientFlowAlignment(linear2, [r])
    assert torch.equal(x, x_copy)


# -- noise baseline on the flow measure (docs/definitions.md, section 2.3) ---------------------




def test_flow_compare_to_noise_finds_brightness_and_not_the_decoy(brightness_model):
    from captum_gradflow import LogAspectRatio, NoiseComparison

    model, test = brightness_model
    flow = GradientFlowAlignment(model, [Brightness(), LogAspectRatio()])
    x, y, masks = test.images[:60], test.labels[:60], test.masks[:60]
    rep = flow.compare_to_noise(x, target=y, mask=masks, n_noise=16, max_steps=6)
    assert isinstance(rep, NoiseComparison)
    assert rep.S.shape == (60, 2) and rep.S_noise.shape == (60, 16)
    assert rep.wilcoxon_p[0] < 0.01 and rep.mean_ratio[0] > 2.0
    assert rep.wilcoxon_p[1] > 0.01
    # The features' columns are the flow's own F: one flow serves features and noise.
    alone = flow.attribute(x, target=y, mask=masks, max_steps=6)
    torch.testing.assert_close(rep.S, alone.double(), rtol=1e-5, atol=1e-6)


def test_a_per_example_mask_can_travel_in_additional_forward_args():
    g = torch.Generator().manual_seed(8)
    w = torch.randn(1, 4, 4, generator=g, dtype=D)
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=D)
    masks = torch.rand(3, 1, 4, 4, generator=g, dtype=D) + 0.05
    model = lambda z: (z * w).sum((1, 2, 3))  # noqa: E731  the mask never reaches the model
    flow = GradientFlowAlignment(model, [Brightness()])
    keyword = flow.attribute(x, mask=masks, step_size=0.3, max_steps=20)
    from_args = flow.attribute(x, additional_forward_args=(masks,), mask="from_args",
                               step_size=0.3, max_steps=20)
    torch.testing.assert_close(from_args, keyword)
    with pytest.raises(ValueError, match="last entry of additional_forward_args"):
        flow.attribute(x, mask="from_args")
    with pytest.raises(ValueError, match="mask must be a tensor, None or 'from_args'"):
        flow.attribute(x, mask="auto")
