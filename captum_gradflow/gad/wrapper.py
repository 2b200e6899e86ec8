"""GADWrapper: Gradient Artificial Distancing around any Captum attribution method (DESIGN 3).

``fit`` trains ``T`` support copies of the model whose class logits are pushed apart
(Algorithm 1); ``attribute`` explains the original and every support model with the same
method and arguments and keeps only what all maps agree on (Algorithm 2).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_gradflow._common import (
    TargetType,
    TensorOrTuple,
    check_finite,
    format_inputs,
    format_output,
    target_indices,
)
from captum_gradflow.gad.distancing import DistancingPlan, default_alphas, make_plan
from captum_gradflow.gad.fusion import Reduce, check_fusion_args, fuse_maps
from captum_gradflow.gad.support import (
    as_tensors,
    check_modules_in_model,
    find_model,
    frozen_copy,
    make_support_models,
    predict_logits,
    rebind,
    warn_if_batchnorm_training,
)

__all__ = ["GADWrapper", "GADComponents"]

_FORMAT = "captum_gradflow.GADWrapper"
_VERSION = 1
_CONFIG_KEYS = ("n_support", "delta", "alphas", "epochs", "lr", "batch_size", "seed", "warm_start")


@dataclass
class GADComponents:
    """Everything behind a GAD map, in the form of the base method's output.

    Attributes:
        maps: ``[A_0, A_1, ..., A_T]``, index 0 from the original model.
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


class GADWrapper(Attribution):
    r"""Gradient Artificial Distancing: a less noisy map from any Captum method.

    Support copies of the model are trained to regress the original logits with the logits
    of the "other" classes lowered by ``alpha_t`` (``t = 1..T``). Each is explained with the
    wrapped method; the GAD attribution is the original map ``A_0`` masked to the locations
    that are in the top ``q`` of all ``T + 1`` maps. Same shape, sign and form as the base
    method's output, so it drops into any Captum consumer (``NoiseTunnel``, metrics).

    The user's model is never modified: support models are deep copies, fitted and explained
    in eval mode. Methods are re-bound to each support model by a deep copy whose memo maps
    every module of the original model to its counterpart (layer methods follow).

    Args:
        attribution_method: A Captum attribution built on an ``nn.Module`` (or its bound
            method): ``Saliency``, ``IntegratedGradients``, ``InputXGradient``, ``DeepLift``,
            ``GuidedBackprop``, ``NoiseTunnel(...)``, ``LayerGradCam(model, layer)``,
            :class:`~captum_gradflow.ZennitAttribution`, ...
        n_support: Number ``T`` of support models (default 3, or ``len(alphas)``).
        delta: Schedule step: ``alpha_t = t * delta * std(margin)`` (DESIGN 3.1).
        alphas: Explicit increasing positive schedule; overrides ``delta``.
        epochs: Training epochs per support model.
        lr: Adam learning rate.
        batch_size: Training batch size (a DataLoader's own batch size is used when given).
        seed: Seed of the shuffling and of the default 2-means split.
        warm_start: Start support model ``t`` from model ``t - 1``.
        progress: Show a tqdm progress bar while fitting.

    Examples::

        >>> import torch
        >>> from captum.attr import Saliency
        >>> from captum_gradflow import GADWrapper, SmallCNN, digits_pair
        >>> d = digits_pair((3, 8), size=16)
        >>> model = SmallCNN(num_classes=2).eval()
        >>> gad = GADWrapper(Saliency(model), n_support=2, epochs=1, progress=False)
        >>> gad = gad.fit((d.x_train, d.y_train), pair=(0, 1))
        >>> gad.attribute(d.x_test[:4], target=d.y_test[:4]).shape
        torch.Size([4, 1, 16, 16])
    """

    def __init__(
        self,
        attribution_method: Attribution,
        n_support: Optional[int] = None,
        delta: float = 0.5,
        alphas: Optional[Sequence[float]] = None,
        epochs: int = 10,
        lr: float = 1e-4,
        batch_size: int = 32,
        seed: int = 0,
        warm_start: bool = False,
        progress: bool = True,
    ) -> None:
        if not isinstance(attribution_method, Attribution):
            raise TypeError(
                f"attribution_method must be a captum.attr.Attribution, got {type(attribution_method).__name__}"
            )
        model = find_model(attribution_method)
        check_modules_in_model(attribution_method, model)
        if alphas is not None:
            try:
                a = torch.as_tensor([float(v) for v in alphas], dtype=torch.float64)
            except (TypeError, ValueError):
                raise ValueError(f"alphas must be a sequence of numbers, got {alphas!r}") from None
            if a.dim() != 1 or a.numel() == 0 or not torch.isfinite(a).all() or (a <= 0).any() or (a.diff() <= 0).any():
                raise ValueError(f"alphas must be a non-empty, increasing sequence of positive numbers, got {alphas!r}")
            if n_support is not None and n_support != a.numel():
                raise ValueError(f"n_support={n_support} but {a.numel()} alphas were given")
            n_support = a.numel()
        n_support = 3 if n_support is None else n_support
        for name, value, low in (("n_support", n_support, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(delta, (int, float)) and delta > 0):
            raise ValueError(f"delta must be positive, got {delta!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be positive, got {lr!r}")
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method
        self.model = model
        self.n_support = n_support
        self.delta = float(delta)
        self.fixed_alphas = None if alphas is None else [float(v) for v in alphas]
        self.epochs, self.lr, self.batch_size = epochs, float(lr), batch_size
        self.seed, self.warm_start, self.progress = int(seed), bool(warm_start), bool(progress)
        # fitted state, set together by fit() or load()
        self.plan: Optional[DistancingPlan] = None
        self.alphas: Optional[Tensor] = None
        self.support_models: List[nn.Module] = []
        self.history: List[List[float]] = []
        self._methods: List[Attribution] = []

    # -- Captum protocol ---------------------------------------------------------------
    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def is_fitted(self) -> bool:
        return self.plan is not None

    # -- Algorithm 1 -------------------------------------------------------------------
    def fit(
        self,
        data: Any,
        pair: Optional[Sequence[int]] = None,
        one_vs_all: Optional[int] = None,
        split: Optional[Sequence[Sequence[int]]] = None,
    ) -> "GADWrapper":
        """Train the support models.

        Classes are output indices of the model (label values). With no strategy, the classes
        present are split in two by 2-means on their mean logits.

        Args:
            data: ``(x, y)`` tensors or a DataLoader of ``(x, y)`` batches (read once).
            pair: ``(k, l)``: push k and l apart using only their images.
            one_vs_all: ``c``: push c away from every other class.
            split: ``(G1, G2)``: push the two groups apart; ``None`` with no other strategy
                means the 2-means default.

        Returns:
            ``self``, fitted. On any error nothing is changed.
        """
        xs, y = as_tensors(data)
        check_finite(xs, "data")
        warn_if_batchnorm_training(self.model)
        batch_size = self.batch_size
        if isinstance(data, torch.utils.data.DataLoader) and data.batch_size:
            batch_size = int(data.batch_size)
        reference = frozen_copy(self.model)
        # The training batch size: larger batches cost more per image here (a 64-image
        # forward of the small CNN took twice four 16-image ones on two CPU cores).
        logits = predict_logits(reference, xs, batch_size=batch_size)
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"GAD needs a classifier with (N, K >= 2) logits, got output shape {tuple(logits.shape)}")
        if not torch.isfinite(logits).all():
            raise ValueError("the model's logits on the data contain NaN or Inf")
        k = logits.shape[1]
        y = y.to(logits.device)
        if ((y < 0) | (y >= k)).any():
            bad = sorted(set(y[(y < 0) | (y >= k)].tolist()))
            raise IndexError(f"labels {bad} are out of range for a model with {k} outputs")
        plan = make_plan(y, k, pair, one_vs_all, split, _class_means(logits, y, k), self.seed)
        keep = plan.uses(y)
        keep_data = keep.to(xs[0].device)
        xs, y, logits = tuple(x[keep_data] for x in xs), y[keep], logits[keep]
        if self.fixed_alphas is not None:
            alphas = torch.tensor(self.fixed_alphas, dtype=torch.float64)
        else:
            alphas = default_alphas(plan.margins(logits, y), self.n_support, self.delta)
        models, history = make_support_models(
            reference, xs, logits, y, plan, alphas, epochs=self.epochs, lr=self.lr,
            batch_size=batch_size, seed=self.seed, warm_start=self.warm_start, progress=self.progress,
        )
        self._set_fitted(plan, alphas, models, history)
        return self

    def _set_fitted(self, plan: DistancingPlan, alphas: Tensor, models: List[nn.Module], history: List[List[float]]) -> None:
        methods = [rebind(self.attribution_method, self.model, m) for m in models]
        self.plan, self.alphas, self.support_models, self.history, self._methods = (
            plan, alphas, models, history, methods,
        )

    def _check_fitted(self) -> DistancingPlan:
        if self.plan is None:
            raise ValueError("this GADWrapper is not fitted: call fit(data, ...) or GADWrapper.load(path, method) first")
        return self.plan

    def _check_target(self, target: TargetType, n: int, device: torch.device) -> None:
        plan = self._check_fitted()
        if target is None:
            raise ValueError(f"GAD needs target= (a class among the fitted classes {list(plan.classes)})")
        idx = target_indices(target, n, device)
        k = plan.num_classes
        if idx.numel() != n:
            raise ValueError(f"target has {idx.numel()} entries for {n} examples")
        if ((idx < -k) | (idx >= k)).any():
            raise IndexError(f"target {target!r} is out of range for a model with {k} outputs")
        outside = sorted(set((idx % k).tolist()) - set(plan.classes))
        if outside:
            raise ValueError(
                f"target class(es) {outside} were not among the fitted classes {list(plan.classes)}; "
                "the support models were not trained to distance them"
            )

    # -- Algorithm 2 -------------------------------------------------------------------
    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        q: float = 0.2,
        agreement: float = 1.0,
        reduce: Reduce = "sum_abs",
        return_components: bool = False,
        **kwargs: Any,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, GADComponents]]:
        r"""GAD attribution ``A_0 * C``.

        Args:
            inputs: As for the wrapped method (a tensor or a tuple of tensors).
            target: Class per example, among the fitted classes (every Captum form of a
                class index: int, list, tensor).
            q: Fraction of locations kept in each binarised map (default: top 20%).
            agreement: Fraction of the ``T + 1`` maps that must keep a location (default
                1.0: all of them, so the kept pixels are a subset of the base map's top q).
            reduce: Channel reduction before binarising: ``"sum_abs"`` (default),
                ``"abs_sum"``, ``"sum"``, ``"max_abs"`` or a callable.
            return_components: Also return a :class:`GADComponents` with every model's map,
                the masks ``B_t`` and ``C``.
            **kwargs: Passed unchanged to every call of the wrapped method
                (``baselines``, ``n_steps``, ``additional_forward_args``, ``nt_samples``, ...).

        Returns:
            The GAD attribution in the form of the base method's output, or
            ``(attribution, components)`` with ``return_components=True``. A map that is
            constant (e.g. a zero gradient) has an empty mask; a warning reports how many.

        Examples::

            >>> attr, parts = gad.attribute(x, target=y, return_components=True)  # doctest: +SKIP
            >>> len(parts.maps) == gad.n_support + 1  # doctest: +SKIP
            True
        """
        check_fusion_args(q, agreement, reduce)
        if kwargs.get("return_convergence_delta"):
            raise ValueError("return_convergence_delta is not supported: a GAD map has no convergence delta")
        xs, _ = format_inputs(inputs)
        check_finite(xs)
        self._check_target(target, xs[0].shape[0], xs[0].device)
        warn_if_batchnorm_training(self.model)
        shared = _SharedRandomness(xs[0].device)
        maps = [self.attribution_method.attribute(inputs, target=target, **kwargs)]
        for method in self._methods:
            shared.replay()
            maps.append(method.attribute(inputs, target=target, **kwargs))

        parts, was_tuple = zip(*(format_inputs(m) for m in maps))
        if len(set(was_tuple)) != 1 or len({len(p) for p in parts}) != 1:
            raise ValueError("the wrapped method returned maps of different forms for different models")
        fused = [fuse_maps([p[i] for p in parts], q, agreement, reduce) for i in range(len(parts[0]))]
        n_degenerate = int(sum(int(f.degenerate.sum()) for f in fused))
        if n_degenerate:
            warnings.warn(
                f"GAD: {n_degenerate} attribution map(s) were constant or not finite (e.g. a zero "
                "gradient); their masks are empty, so GAD keeps nothing where they vote",
                UserWarning,
                stacklevel=3,
            )
        out = format_output(was_tuple[0], tuple(f.attribution for f in fused))
        if not return_components:
            return out
        components = GADComponents(
            maps=list(maps),
            masks=[format_output(was_tuple[0], tuple(f.masks[t] for f in fused)) for t in range(len(maps))],
            consistency=format_output(was_tuple[0], tuple(f.consistency for f in fused)),
            n_degenerate=n_degenerate,
        )
        return out, components

    # -- inspection ----------------------------------------------------------------------
    def margins(self, inputs: TensorOrTuple, labels: Tensor, batch_size: int = 256) -> Tensor:
        """Distancing margin ``a_y - max_{c in other(y)} a_c`` of every model, ``(T + 1, N)``.

        Row 0 is the original model (evaluated on an eval-mode copy, so the user's model is
        not touched), row ``t`` support model ``t``.
        """
        plan = self._check_fitted()
        xs, _ = format_inputs(inputs)
        self._check_target(labels, xs[0].shape[0], xs[0].device)
        models = [frozen_copy(self.model)] + self.support_models
        rows = []
        for m in models:
            logits = predict_logits(m, xs, batch_size)
            rows.append(plan.margins(logits, labels.to(logits.device).long().reshape(-1)))
        return torch.stack(rows)

    # -- persistence -------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Save the support models' state dicts and the configuration with ``torch.save``."""
        plan = self._check_fitted()
        torch.save(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "model_class": type(self.model).__qualname__,
                "model_digest": _digest(self.model),
                "config": {
                    "n_support": self.n_support, "delta": self.delta, "alphas": self.fixed_alphas,
                    "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                    "seed": self.seed, "warm_start": self.warm_start,
                },
                "plan": plan.to_config(),
                "alphas": self.alphas.clone(),
                "history": [list(h) for h in self.history],
                "state_dicts": [m.state_dict() for m in self.support_models],
            },
            path,
        )

    @classmethod
    def load(
        cls, path: Union[str, os.PathLike], attribution_method: Attribution, progress: bool = True
    ) -> "GADWrapper":
        """Rebuild a fitted wrapper around ``attribution_method`` from :meth:`save`'s file.

        The file is read with ``torch.load(..., weights_only=True)``. A file that is not a GAD
        save file, is corrupt, or does not match the method's model raises ``ValueError``.
        """
        if not os.path.exists(path):
            raise FileNotFoundError(f"no GAD save file at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a corrupt file
            raise ValueError(f"could not read GAD save file {path}: {type(err).__name__}: {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a GADWrapper save file (saved by GADWrapper.save)")
        if payload.get("version") != _VERSION:
            raise ValueError(f"{path} has GAD save format version {payload.get('version')}; expected {_VERSION}")
        try:
            config: Dict[str, Any] = {k: payload["config"][k] for k in _CONFIG_KEYS}
            plan = DistancingPlan.from_config(payload["plan"])
            alphas = payload["alphas"].to(torch.float64)
            state_dicts = list(payload["state_dicts"])
            history = [list(h) for h in payload["history"]]
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"GAD save file {path} is incomplete: {err!r}") from None
        if len(state_dicts) != alphas.numel():
            raise ValueError(f"GAD save file {path} has {len(state_dicts)} models for {alphas.numel()} alphas")
        try:
            gad = cls(attribution_method, progress=progress, **config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"GAD save file {path} has an invalid configuration: {err}") from None
        if payload.get("model_class") != type(gad.model).__qualname__:
            raise ValueError(
                f"GAD save file {path} was fitted for a {payload.get('model_class')}, but the method "
                f"explains a {type(gad.model).__qualname__}"
            )
        models = []
        for sd in state_dicts:
            m = frozen_copy(gad.model)
            try:
                m.load_state_dict(sd, strict=True)
            except (RuntimeError, TypeError, AttributeError) as err:
                raise ValueError(f"GAD save file {path} does not match the method's model: {err}") from None
            models.append(m)
        digest = payload.get("model_digest")
        if not isinstance(digest, Tensor) or digest.shape != _digest(gad.model).shape or not torch.allclose(
            digest, _digest(gad.model), rtol=1e-5, atol=1e-6
        ):
            warnings.warn(
                f"the model of the method differs from the one the support models in {path} were "
                "fitted from; GAD maps would compare different models. Refit if this is not intended",
                UserWarning,
                stacklevel=2,
            )
        gad._set_fitted(plan, alphas, models, history)
        return gad


def _digest(model: nn.Module) -> Tensor:
    """Sum and sum of squares of every parameter and buffer: cheap evidence of the same weights."""
    rows = [
        torch.stack([t.detach().double().sum(), t.detach().double().square().sum()]).cpu()
        for t in list(model.parameters()) + list(model.buffers())
        if t.is_floating_point()
    ]
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def _class_means(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """Mean logit vector of each class, ``(K, K)`` (rows of absent classes are 0)."""
    sums = torch.zeros(k, logits.shape[1], dtype=logits.dtype, device=logits.device).index_add_(0, y, logits)
    counts = torch.bincount(y, minlength=k).clamp(min=1).to(logits.dtype)
    return sums / counts[:, None]
