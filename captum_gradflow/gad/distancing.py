"""Artificial distancing (docs/definitions.md, section 3.1, Algorithm 1): which logits each image pushes down.

A :class:`DistancingPlan` records, for every class ``y``, the "other group" of classes whose
logits the support models learn to lower by ``alpha_t`` on images of class ``y``. Every image
of a class is shifted by the same constant, so the order of activations within a class is
kept while the gap between the groups grows by ``alpha_t``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_gradflow._common import target_indices
from captum_gradflow.training import _check_labels

__all__ = ["AlphaType", "DistancingPlan", "class_means", "make_plan", "default_alphas", "fit_selection"]

# One shift for both groups, or a pair (alpha_1 for images of G1, alpha_2 for images of G2).
AlphaType = Union[float, Tuple[float, float], Tensor]


@dataclass(frozen=True)
class DistancingPlan:
    """Which classes are pushed apart, and from which.

    Args:
        strategy: ``"pair"``, ``"one_vs_all"`` or ``"split"``.
        groups: The two groups ``(G1, G2)`` of output indices (for ``pair=(k, l)``:
            ``((k,), (l,))``; for ``one_vs_all=c``: ``((c,), every other output)``).
        classes: Classes whose images were used to fit (and which may be explained).
        num_classes: Number of model outputs ``K``.

    Examples::

        >>> import torch
        >>> from captum_gradflow.gad import make_plan
        >>> plan = make_plan(torch.tensor([0, 1, 1, 2]), 3, pair=(0, 1))
        >>> plan.other_mask(torch.tensor([0, 1]))
        tensor([[False,  True, False],
                [ True, False, False]])
    """

    strategy: str
    groups: Tuple[Tuple[int, ...], Tuple[int, ...]]
    classes: Tuple[int, ...]
    num_classes: int

    def other(self) -> Tensor:
        """``(K, K)`` bool matrix: ``other[y, c]`` when class ``c`` is in the other group of ``y``."""
        k = self.num_classes
        m = torch.zeros(k, k, dtype=torch.bool)
        g1, g2 = (list(g) for g in self.groups)
        if self.strategy == "one_vs_all":
            (c,) = g1
            m[c, :] = True
            m[:, c] = True
            m[c, c] = False
        else:
            m[torch.tensor(g1)[:, None], torch.tensor(g2)[None, :]] = True
            m[torch.tensor(g2)[:, None], torch.tensor(g1)[None, :]] = True
        return m

    def uses(self, labels: Tensor) -> Tensor:
        """Bool per image: is its class one of the fitted classes."""
        return torch.isin(labels, torch.tensor(self.classes, device=labels.device))

    def target_classes(self, target: Any, n: int) -> Tensor:
        """``(n,)`` class indices of a Captum ``target`` (every form Captum accepts; negative
        indices wrap), checked to be among the fitted classes."""
        if target is None:
            raise ValueError(f"GAD needs target= (a class among the fitted classes {list(self.classes)})")
        k = self.num_classes
        idx = target_indices(target, n, torch.device("cpu"))
        if ((idx < -k) | (idx >= k)).any():
            raise IndexError(f"target {target!r} is out of range for a model with {k} outputs")
        idx = idx % k
        outside = sorted(set(idx.tolist()) - set(self.classes))
        if outside:
            raise ValueError(
                f"target class(es) {outside} were not among the fitted classes {list(self.classes)}; "
                "the support models were not trained to distance them"
            )
        return idx

    def predicted(self, logits: Tensor) -> Tensor:
        """The model's class of each image among the fitted classes: the argmax of its logits
        restricted to :attr:`classes` (``pair=(k, l)``: the side of the pair it is on)."""
        classes = torch.tensor(self.classes, device=logits.device)
        return classes[logits[:, classes].argmax(dim=1)]

    def other_mask(self, labels: Tensor) -> Tensor:
        """``(N, K)`` bool: the logits pushed down on each image."""
        return self.other().to(labels.device)[labels]

    def in_first_group(self, labels: Tensor) -> Tensor:
        """Bool per image: is its class in ``G1`` (its other group is then ``G2``)."""
        return torch.isin(labels, torch.tensor(self.groups[0], device=labels.device))

    def targets(self, logits: Tensor, labels: Tensor, alpha: AlphaType) -> Tensor:
        """Regression targets ``a'(x)`` of a support model: ``a_c(x) - alpha`` on the other group.

        ``alpha`` is one shift for every image, or a pair ``(alpha_1, alpha_2)``: images of
        ``G1`` lower their ``G2`` logits by ``alpha_1``, images of ``G2`` their ``G1`` logits by
        ``alpha_2`` (the paper's ``alpha_k``, ``alpha_l`` for ``pair=(k, l)``).
        """
        a = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device).reshape(-1)
        if a.numel() == 2:
            a = torch.where(self.in_first_group(labels), a[0], a[1])[:, None]
        elif a.numel() != 1:
            raise ValueError(f"alpha must be one number or a pair (alpha_1, alpha_2), got {alpha!r}")
        return logits - a * self.other_mask(labels).to(logits.dtype)

    def margins(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``a_y(x) - max_{c in other(y)} a_c(x)``, the gap the support models widen."""
        own = logits.gather(1, labels.reshape(-1, 1)).reshape(-1)
        others = logits.masked_fill(~self.other_mask(labels), float("-inf"))
        return own - others.max(dim=1).values

    def to_config(self) -> Dict[str, Any]:
        """Plain-Python description (saved with ``torch.save`` and loaded with ``weights_only``)."""
        return {
            "strategy": self.strategy,
            "groups": [list(self.groups[0]), list(self.groups[1])],
            "classes": list(self.classes),
            "num_classes": self.num_classes,
        }

    @staticmethod
    def from_config(config: Dict[str, Any]) -> "DistancingPlan":
        try:
            g1, g2 = config["groups"]
            plan = DistancingPlan(
                strategy=str(config["strategy"]),
                groups=(tuple(int(c) for c in g1), tuple(int(c) for c in g2)),
                classes=tuple(int(c) for c in config["classes"]),
                num_classes=int(config["num_classes"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"invalid distancing plan in save file: {err!r}") from None
        if plan.strategy not in ("pair", "one_vs_all", "split"):
            raise ValueError(f"invalid distancing strategy in save file: {plan.strategy!r}")
        return plan


def _class_index(c: Any, num_classes: int, what: str) -> int:
    if isinstance(c, bool) or not isinstance(c, (int, Tensor)) or (
        isinstance(c, Tensor) and (c.numel() != 1 or c.is_floating_point())
    ):
        raise TypeError(f"{what} must name output indices as ints, got {c!r}")
    c = int(c)
    if not 0 <= c < num_classes:
        raise IndexError(
            f"{what} class {c} is out of range for a model with {num_classes} outputs (classes are "
            "output indices, i.e. label values: digits_pair((3, 8)) labels 3 as 0 and 8 as 1)"
        )
    return c


def _require_present(classes: Sequence[int], present: Sequence[int], what: str) -> None:
    for c in classes:
        if c not in present:
            raise ValueError(
                f"{what} class {c} is absent from the data (classes present: {list(present)}); "
                "note that classes are output indices of the model, i.e. label values"
            )


def make_plan(
    labels: Tensor,
    num_classes: int,
    pair: Optional[Sequence[int]] = None,
    one_vs_all: Optional[int] = None,
    split: Optional[Sequence[Sequence[int]]] = None,
    class_means: Optional[Tensor] = None,
    seed: int = 0,
) -> DistancingPlan:
    """Check a distancing strategy against the data and build its plan.

    Give at most one of ``pair``, ``one_vs_all`` and ``split``; with none, the classes
    present are split in two by 2-means on their mean logit vectors (``class_means``,
    ``(K, K)``, rows of absent classes ignored).

    Args:
        labels: Integer label (model output index) of every training image.
        num_classes: Number of model outputs ``K``.
        pair: ``(k, l)``: only images of k and l are used, each pushed away from the other.
        one_vs_all: ``c``: images of c are pushed away from every other class, images of
            any other class away from c.
        split: ``(G1, G2)``: images of G1 are pushed away from G2, and vice versa; only
            images of ``G1 ∪ G2`` are used.
        class_means: Mean original logits per class, needed for the 2-means default.
        seed: Seed of the 2-means initialisation.

    Returns:
        :class:`DistancingPlan`.

    Raises:
        ValueError: fewer than two classes present, a named class absent, overlapping or
            empty groups, several strategies at once. IndexError: a class out of range.
    """
    given = [name for name, v in (("pair", pair), ("one_vs_all", one_vs_all), ("split", split)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give only one distancing strategy, got {given}")
    present = sorted(int(c) for c in torch.unique(labels).tolist())
    if len(present) < 2:
        raise ValueError(
            f"GAD needs images of at least 2 classes to push apart; the data has only class(es) {present}"
        )
    _check_labels(labels, len(labels), "make_plan", num_classes)

    if pair is not None:
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ValueError(f"pair must be two class indices (k, l), got {pair!r}")
        k, l = (_class_index(c, num_classes, "pair") for c in pair)
        if k == l:
            raise ValueError(f"pair must name two different classes, got {pair!r}")
        _require_present((k, l), present, "pair")
        return DistancingPlan("pair", ((k,), (l,)), tuple(sorted((k, l))), num_classes)

    if one_vs_all is not None:
        c = _class_index(one_vs_all, num_classes, "one_vs_all")
        _require_present((c,), present, "one_vs_all")
        rest = tuple(j for j in range(num_classes) if j != c)
        return DistancingPlan("one_vs_all", ((c,), rest), tuple(present), num_classes)

    if split is not None:
        if isinstance(split, (str, bytes)) or len(split) != 2:
            raise ValueError(f"split must be two groups of class indices (G1, G2), got {split!r}")
        g1, g2 = (tuple(_class_index(c, num_classes, "split") for c in g) for g in split)
        if not g1 or not g2:
            raise ValueError(f"split groups must both be non-empty, got {split!r}")
        if set(g1) & set(g2):
            raise ValueError(f"split groups overlap on classes {sorted(set(g1) & set(g2))}")
        _require_present(g1 + g2, present, "split")
        return DistancingPlan("split", (g1, g2), tuple(sorted(g1 + g2)), num_classes)

    if class_means is None:
        raise ValueError("the default split needs class_means (the mean logits of each class)")
    g1, g2 = two_means_split(class_means[present], present, seed)
    return DistancingPlan("split", (g1, g2), tuple(present), num_classes)


def fit_selection(
    xs: Tuple[Tensor, ...],
    labels: Tensor,
    logits: Tensor,
    strategy: Dict[str, Any],
    groups: Literal["label", "prediction"] = "label",
    seed: int = 0,
) -> Tuple[DistancingPlan, Tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """The plan of ``strategy`` and the fit data of its classes.

    Args:
        xs: The fit images (a tuple: one tensor per model input).
        labels: Their labels (model output indices).
        logits: The model's ``(N, K)`` logits on them.
        strategy: ``pair``, ``one_vs_all`` and ``split`` as in :func:`make_plan`.
        groups: What puts an image in a class: ``"label"`` (its label, the paper's rule) or
            ``"prediction"`` (the model's class among the plan's classes,
            :meth:`DistancingPlan.predicted`). The images used are those whose label is among
            the plan's classes either way.
        seed: Seed of the 2-means default split.

    Returns:
        ``(plan, xs, labels, classes, logits)`` restricted to the images used; ``classes``
        is what :meth:`DistancingPlan.targets` groups them by.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"GAD needs a classifier with (N, K >= 2) logits, got output shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("the model's logits on the data contain NaN or Inf")
    k = logits.shape[1]
    labels = labels.to(logits.device)
    _check_labels(labels, len(labels), "GADWrapper.fit: y", k)  # before class_means indexes by them
    plan = make_plan(labels, k, class_means=class_means(logits, labels, k), seed=seed, **strategy)
    keep = plan.uses(labels)
    classes = plan.predicted(logits) if groups == "prediction" else labels
    keep_data = keep.to(xs[0].device)
    return plan, tuple(x[keep_data] for x in xs), labels[keep], classes[keep], logits[keep]


def class_means(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Mean logit vector of each class, ``(K, K)`` (rows of absent classes are 0): what the
    default 2-means split clusters."""
    sums = torch.zeros(k, logits.shape[1], dtype=logits.dtype, device=logits.device).index_add_(0, labels, logits)
    counts = torch.bincount(labels, minlength=k).clamp(min=1).to(logits.dtype)
    return sums / counts[:, None]


def two_means_split(
    means: Tensor, classes: Sequence[int], seed: int = 0
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Split ``classes`` in two by 2-means (scikit-learn) on their mean logit vectors.

    The group holding the smallest class index comes first, so the result does not depend on
    the cluster numbering.
    """
    from sklearn.cluster import KMeans

    if len(classes) == 2:
        return (int(classes[0]),), (int(classes[1]),)
    x = means.detach().double().cpu().numpy()
    assign = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(x).labels_
    g1 = tuple(int(c) for c, a in zip(classes, assign) if a == assign[0])
    g2 = tuple(int(c) for c, a in zip(classes, assign) if a != assign[0])
    if not g2:
        raise ValueError(
            f"2-means could not split classes {list(classes)}: their mean logits are identical; "
            "pass split=(G1, G2) explicitly"
        )
    return g1, g2


def default_alphas(
    margins: Tensor, n_support: int, delta: Union[float, Tuple[float, float]] = 0.5
) -> Tensor:
    """Schedule ``alpha_t = t * delta * std(margin)``, ``t = 1 .. n_support`` (docs/definitions.md, 3.1).

    ``delta`` may be a pair ``(delta_1, delta_2)``, one per group: the schedule is then
    ``(n_support, 2)``, column ``g`` the shift of the images of group ``g`` (the paper's
    ``alpha_k``, ``alpha_l``); with one ``delta`` it is ``(n_support,)``.

    Raises ``ValueError`` when the margins have no spread (the scale is then undefined).
    """
    if n_support < 1:
        raise ValueError(f"n_support must be at least 1, got {n_support}")
    d = torch.as_tensor(delta, dtype=torch.float64).reshape(-1)
    if d.numel() not in (1, 2) or not (d > 0).all():
        raise ValueError(f"delta must be positive (one number or one per group), got {delta}")
    if margins.numel() < 2:
        raise ValueError("the schedule needs the margins of at least 2 images")
    std = float(margins.double().std())
    if not (std > 0 and torch.isfinite(torch.tensor(std))):
        raise ValueError(
            f"the logit margins have standard deviation {std}, so the default schedule is "
            "undefined; pass alphas= explicitly"
        )
    steps = torch.arange(1, n_support + 1, dtype=torch.float64) * std
    return steps * d[0] if d.numel() == 1 else steps[:, None] * d[None, :]
