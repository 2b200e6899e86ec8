"""Algorithm 1 targets: which logits are pushed down, by how much, and the default schedule."""
from __future__ import annotations

import pytest
import torch

from captum_gradflow.gad import DistancingPlan, GADConfig, default_alphas, make_plan
from captum_gradflow.gad.distancing import fit_selection


def _logits(n: int = 12, k: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_pair_pushes_only_the_other_class_and_margins_grow_by_alpha():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    plan = make_plan(labels, 3, pair=(0, 1))
    assert plan.classes == (0, 1) and plan.groups == ((0,), (1,))
    assert plan.uses(labels).tolist() == [True, True, False, True, True, False]
    used = labels[plan.uses(labels)]
    logits = _logits(len(used), 3)
    target = plan.targets(logits, used, alpha=2.5)
    diff = logits - target
    expected = torch.zeros_like(diff)
    expected[used == 0, 1] = 2.5
    expected[used == 1, 0] = 2.5
    assert torch.equal(diff, expected)
    assert torch.allclose(plan.margins(target, used), plan.margins(logits, used) + 2.5)


def test_one_vs_all_other_groups():
    labels = torch.tensor([0, 1, 2, 3, 2])
    plan = make_plan(labels, 4, one_vs_all=2)
    other = plan.other()
    assert other[2].tolist() == [True, True, False, True]
    for j in (0, 1, 3):
        assert other[j].tolist() == [c == 2 for c in range(4)]
    assert plan.classes == (0, 1, 2, 3)
    logits = _logits(5, 4)
    target = plan.targets(logits, labels, 1.0)
    assert torch.allclose(plan.margins(target, labels), plan.margins(logits, labels) + 1.0)


def test_split_pushes_groups_apart_but_not_within_a_group():
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    plan = make_plan(labels, 5, split=((0, 1), (2,)))
    assert plan.classes == (0, 1, 2)
    used = labels[plan.uses(labels)]
    logits = _logits(len(used), 5)
    target = plan.targets(logits, used, 3.0)
    # images of class 0 keep the gap to class 1 (same group) and widen the one to class 2
    zero = used == 0
    assert torch.allclose((target[zero, 0] - target[zero, 1]), logits[zero, 0] - logits[zero, 1])
    assert torch.allclose((target[zero, 0] - target[zero, 2]), logits[zero, 0] - logits[zero, 2] + 3.0)


def test_shift_is_constant_within_a_class_so_orders_are_kept():
    labels = torch.tensor([0] * 6 + [1] * 6)
    plan = make_plan(labels, 2, pair=(0, 1))
    logits = _logits(12, 2)
    target = plan.targets(logits, labels, 4.0)
    for c in (0, 1):
        rows = labels == c
        for j in range(2):
            assert torch.equal(logits[rows, j].argsort(), target[rows, j].argsort())


def test_default_split_is_two_means_on_class_mean_logits():
    labels = torch.tensor([0, 1, 2, 3])
    means = torch.tensor([[5.0, 4.8, 0.0, 0.1], [4.9, 5.1, 0.2, 0.0], [0.0, 0.1, 5.0, 5.2], [0.1, 0.0, 4.9, 5.0]])
    plan = make_plan(labels, 4, class_means=means)
    assert plan.strategy == "split" and plan.groups == ((0, 1), (2, 3))
    two = make_plan(torch.tensor([1, 3]), 4, class_means=means)
    assert two.groups == ((1,), (3,))


def test_default_alphas_follow_the_schedule():
    margins = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    alphas = default_alphas(margins, 3, delta=0.5)
    std = float(margins.std())
    assert torch.allclose(alphas, torch.tensor([0.5 * std, std, 1.5 * std], dtype=torch.float64))
    with pytest.raises(ValueError, match="standard deviation"):
        default_alphas(torch.ones(5), 3)
    with pytest.raises(ValueError, match="n_support"):
        default_alphas(margins, 0)
    per_group = default_alphas(margins, 2, delta=(0.5, 2.0))
    assert per_group.shape == (2, 2)
    assert torch.allclose(per_group, torch.tensor([[0.5, 2.0], [1.0, 4.0]], dtype=torch.float64) * std)
    with pytest.raises(ValueError, match="delta"):
        default_alphas(margins, 2, delta=(1.0, -1.0))


def test_per_group_targets_shift_each_group_by_its_own_alpha():
    plan = make_plan(torch.tensor([0, 1, 2]), 3, split=((0,), (1, 2)))
    logits = torch.zeros(3, 3)
    labels = torch.tensor([0, 1, 2])
    t = plan.targets(logits, labels, (1.0, 3.0))
    # an image of G1 = {0} lowers G2's logits by alpha_1; images of G2 lower class 0 by alpha_2
    assert t.tolist() == [[0.0, -1.0, -1.0], [-3.0, 0.0, 0.0], [-3.0, 0.0, 0.0]]
    assert torch.equal(plan.targets(logits, labels, 2.0), plan.targets(logits, labels, (2.0, 2.0)))
    with pytest.raises(ValueError, match="pair"):
        plan.targets(logits, labels, (1.0, 2.0, 3.0))


def test_plan_config_round_trip_and_bad_config():
    plan = make_plan(torch.tensor([0, 1, 2]), 3, split=((0,), (1, 2)))
    assert DistancingPlan.from_config(plan.to_config()) == plan
    with pytest.raises(ValueError, match="plan"):
        DistancingPlan.from_config({"strategy": "pair"})
    with pytest.raises(ValueError, match="strategy"):
        DistancingPlan.from_config({**plan.to_config(), "strategy": "nonsense"})


@pytest.mark.parametrize(
    "kwargs, labels, error, match",
    [
        ({"pair": (0, 1)}, [0, 0, 0], ValueError, "at least 2 classes"),
        ({"pair": (0, 2)}, [0, 1, 1], ValueError, "pair class 2 is absent"),
        ({"pair": (0, 3)}, [0, 1], IndexError, "out of range"),
        ({"pair": (1, 1)}, [0, 1], ValueError, "two different"),
        ({"pair": (0, 1, 2)}, [0, 1], ValueError, "two class indices"),
        ({"pair": (0.0, 1)}, [0, 1], TypeError, "ints"),
        ({"pair": (0, 1), "one_vs_all": 0}, [0, 1], ValueError, "only one"),
        ({"one_vs_all": 2}, [0, 1], ValueError, "absent"),
        ({"split": ((0,), (0, 1))}, [0, 1], ValueError, "overlap"),
        ({"split": ((), (1,))}, [0, 1], ValueError, "non-empty"),
    ],
)
def test_bad_strategies_raise_clear_errors(kwargs, labels, error, match):
    with pytest.raises(error, match=match):
        make_plan(torch.tensor(labels), 3, **kwargs)


def test_predicted_is_the_models_side_of_the_plan():
    plan = make_plan(torch.tensor([0, 1, 2]), 3, pair=(0, 2))
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    assert plan.predicted(logits).tolist() == [2, 0, 2]  # class 1 is not in the plan: never predicted


def test_fit_selection_groups_by_label_or_by_the_models_prediction():
    x = torch.arange(4.0)[:, None]
    labels = torch.tensor([0, 1, 2, 1])
    logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    strategy = dict(pair=(0, 1), one_vs_all=None, split=None)
    plan, xs, y, classes, lg = fit_selection((x,), labels, logits, strategy)
    assert xs[0].flatten().tolist() == [0.0, 1.0, 3.0] and y.tolist() == classes.tolist() == [0, 1, 1]
    assert torch.equal(lg, logits[[0, 1, 3]])
    _, xs, y, classes, _ = fit_selection((x,), labels, logits, strategy, groups="prediction")
    # the same images (their labels are in the pair), grouped by the side of the pair the model puts them on
    assert xs[0].flatten().tolist() == [0.0, 1.0, 3.0] and y.tolist() == [0, 1, 1] and classes.tolist() == [1, 0, 1]
    with pytest.raises(IndexError, match=r"labels \[7\] are out of range for a model with 3 outputs"):
        fit_selection((x,), torch.tensor([0, 1, 7, 1]), logits, strategy)
    with pytest.raises(ValueError, match="groups must be 'label' or 'prediction'"):
        GADConfig(groups="truth")
    assert GADConfig.from_dict(GADConfig(groups="prediction").to_dict()).groups == "prediction"  # saved
