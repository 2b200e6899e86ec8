"""GADWrapper: Gradient Artificial Distancing around any Captum attribution method
(docs/definitions.md, section 3).

``fit`` trains ``T`` support copies of the model whose class logits are pushed apart
(Algorithm 1); ``attribute`` explains the original and every support model with the same
method and arguments and keeps only what all maps agree on (Algorithm 2).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_gradflow._common import TargetType, TensorOrTuple, check_finite, format_inputs
from captum_gradflow._checks import check_batch
from captum_gradflow._guard import preserved
from captum_gradflow.gad import persistence
from captum_gradflow.gad.persistence import model_digest
from captum_gradflow.gad.config import GADConfig
from captum_gradflow.gad.distancing import DistancingPlan, fit_selection
from captum_gradflow.gad.explain import GADComponents, all_maps, fuse_all, upsample
from captum_gradflow.gad.fusion import Reduce, check_fusion_args
from captum_gradflow.gad.support import (
    as_tensors,
    check_modules_in_model,
    find_model,
    frozen_copy,
    make_support_models,
    rebind,
)
from captum_gradflow.training import check_batch_on_model_device, predict

__all__ = ["GADWrapper", "GADComponents"]


class GADWrapper(Attribution):
    r"""Gradient Artificial Distancing: a simpler map from any Captum method.

    Support copies of the model are trained to regress the original logits with the logits
    of the "other" classes lowered by ``alpha_t`` (``t = 1..T``). Each is explained with the
    wrapped method; the GAD attribution is the original map ``A_0`` masked to the locations
    that are in the top ``q`` of all ``T + 1`` maps. Same shape, sign and form as the base
    method's output, so it drops into any Captum consumer (``NoiseTunnel``, metrics).

    The user's model is never modified: support models are deep copies without the user's
    hooks, fitted and explained in eval mode. A model in train mode (BatchNorm, Dropout) gets
    one warning; ``fit`` and ``attribute`` restore its buffers, flags and hooks and the
    inputs' ``requires_grad``, also when they raise. Methods are re-bound to each support
    model by a deep copy whose memo maps every module of the original model to its
    counterpart (layer methods follow).

    Defaults (T = 5, ``delta`` 0.5, ``lr`` 3e-3, 100 ``steps``, cold start) come from the
    sweep in docs/gad_sweep.md (:func:`~captum_gradflow.gad.gad_sweep`): the best worst case
    over three digit pairs and the synthetic lesions. Median kept fraction of the base map's
    top 20% / RS win rate of kept over dropped regions (paired one-sided Wilcoxon p):

    ==========  ===================  ===================  ===================
    data        IG                   Saliency             Input x Gradient
    ==========  ===================  ===================  ===================
    digits 3/8  0.88 / 0.72 (8e-8)   0.84 / 0.74 (1e-8)   0.86 / 0.69 (8e-5)
    digits 1/7  0.88 / 0.83 (1e-14)  0.87 / 0.69 (3e-6)   0.88 / 0.78 (6e-12)
    digits 4/9  0.88 / 0.81 (1e-12)  0.85 / 0.54 (0.55)   0.87 / 0.75 (2e-10)
    lesions     0.77 / 0.49 (9e-4)   0.73 / 0.49 (3e-3)   0.79 / 0.49 (1e-3)
    ==========  ===================  ===================  ===================

    No setting swept kept <= 75% with an RS win rate >= 0.65: removing more also removed
    what matters (the frontier is in docs/gad_sweep.md).

    Support models belong to the model they were fitted from: :meth:`for_model` (used by
    :func:`~captum_gradflow.quantus_explain` for Quantus' randomisation metrics) refits for
    another model, grouping the fit images by that model's predictions, so that randomising
    the model drops the GAD map's rank correlation with the original as much as the base
    map's (mean Spearman 0.11 vs 0.13 over eight randomised CNNs; 0.27 when grouped by label).

    Args:
        attribution_method: A Captum attribution built on an ``nn.Module`` (or its bound
            method): ``Saliency``, ``IntegratedGradients``, ``InputXGradient``, ``DeepLift``,
            ``GuidedBackprop``, ``NoiseTunnel(...)``, ``LayerGradCam(model, layer)``,
            :class:`~captum_gradflow.ZennitAttribution`, ...
        config: A :class:`~captum_gradflow.gad.GADConfig`; keyword ``settings`` override
            its fields.
        progress: Show a tqdm progress bar while fitting.
        **settings: Fields of :class:`~captum_gradflow.gad.GADConfig`: ``n_support``,
            ``delta`` (one or one per group), ``alphas`` (numbers or per-group pairs),
            ``steps`` (Adam steps per support model) or ``epochs`` (a convenience, converted
            to steps), ``lr``, ``batch_size``, ``seed``, ``warm_start``, ``groups``.

    Examples::

        >>> import torch
        >>> from captum.attr import Saliency
        >>> from captum_gradflow import GADWrapper, SmallCNN, digits_pair
        >>> d = digits_pair((3, 8), size=16)
        >>> model = SmallCNN(num_classes=2).eval()
        >>> gad = GADWrapper(Saliency(model), n_support=2, steps=5, progress=False)
        >>> gad = gad.fit((d.x_train, d.y_train), pair=(0, 1))
        >>> gad.attribute(d.x_test[:4], target=d.y_test[:4]).shape
        torch.Size([4, 1, 16, 16])
    """

    def __init__(
        self,
        attribution_method: Attribution,
        config: Optional[GADConfig] = None,
        progress: bool = True,
        **settings: Any,
    ) -> None:
        if not isinstance(attribution_method, Attribution):
            raise TypeError(
                f"attribution_method must be a captum.attr.Attribution, got {type(attribution_method).__name__}"
            )
        if config is not None and not isinstance(config, GADConfig):
            raise TypeError(f"config must be a GADConfig, got {type(config).__name__}")
        try:
            config = replace(config, **settings) if config is not None else GADConfig(**settings)
        except TypeError as err:
            raise TypeError(f"GADWrapper: {err}; settings are the fields of GADConfig") from None
        model = find_model(attribution_method)
        check_modules_in_model(attribution_method, model)
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method
        self.model = model
        self.config = config
        self.progress = bool(progress)
        # fitted state, set together by fit() or load()
        self.plan: Optional[DistancingPlan] = None
        self.alphas: Optional[Tensor] = None
        self.support_models: List[nn.Module] = []
        self.history: List[List[float]] = []
        self._methods: List[Attribution] = []
        self._fit_data: Optional[Tuple[Tuple[Tensor, ...], Tensor, dict]] = None
        self._refit: Optional[Tuple["GADWrapper", Tuple[Tensor, str]]] = None

    # -- Captum protocol ---------------------------------------------------------------
    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def is_fitted(self) -> bool:
        return self.plan is not None

    @property
    def n_support(self) -> int:
        """``T``: the number of support models."""
        return self.config.n_models

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
        present are split in two by 2-means on their mean logits. The images of the fitted
        classes are kept in memory: :meth:`for_model` refits on them for another model.

        Train mode: the user's model is never run; the support models start from an eval-mode
        copy of it, so its own mode does not matter and nothing of it changes. The data may live
        on another device than the model: batches are moved as they are used.

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
        check_batch_on_model_device(xs, self.model, "GADWrapper.fit")
        check_finite(xs, "data")
        batch_size = self.config.batch_size
        if isinstance(data, torch.utils.data.DataLoader) and data.batch_size:
            batch_size = int(data.batch_size)
        strategy = dict(pair=pair, one_vs_all=one_vs_all, split=split)
        reference = frozen_copy(self.model)
        logits = predict(reference, xs, batch_size=batch_size)
        plan, xs, y, groups, logits = fit_selection(xs, y, logits, strategy, self.config.groups, self.config.seed)
        alphas = self.config.schedule(plan.margins(logits, groups))
        models, history = make_support_models(
            reference, xs, logits, groups, plan, alphas, steps=self.config.budget(len(y), batch_size),
            lr=self.config.lr, batch_size=batch_size, seed=self.config.seed,
            warm_start=self.config.warm_start, progress=self.progress,
        )
        self._set_fitted(plan, alphas, models, history)
        self._fit_data = (xs, y.cpu(), strategy)
        return self

    def _set_fitted(self, plan: DistancingPlan, alphas: Tensor, models: List[nn.Module], history: List[List[float]]) -> None:
        methods = [rebind(self.attribution_method, self.model, m) for m in models]
        self._refit = None  # refits belong to the previous fit
        self.plan, self.alphas, self.support_models, self.history, self._methods = (
            plan, alphas, models, history, methods,
        )

    def with_method(self, attribution_method: Attribution) -> "GADWrapper":
        """The same fitted support models around another method built on the same model."""
        self._check_fitted()
        other = GADWrapper(attribution_method, self.config, progress=self.progress)
        if other.model is not self.model:
            raise ValueError("with_method needs a method built on the model GAD was fitted for; use for_model")
        other._set_fitted(self.plan, self.alphas, self.support_models, self.history)
        other._fit_data = self._fit_data
        return other

    def for_model(self, model: nn.Module, groups: Literal["label", "prediction"] = "prediction") -> "GADWrapper":
        """A GAD for another model of the same architecture, refitted on the kept fit data.

        Support models belong to the model they were fitted from: explaining a different
        model (Quantus' MPRT and RandomLogit pass randomised copies) with them would keep the
        old model's structure in the map. The wrapped method is re-bound to ``model`` (module
        by module) and the support models are fitted anew with the same settings, strategy
        and data, except that images are grouped by ``model``'s own predictions
        (``groups="prediction"``, see :class:`GADConfig`): the labels say how the data is
        split, not how ``model`` splits it, and support models of a randomised model trained
        to separate the labels would learn the data's structure from scratch and carry it into
        the map (docs/gad_sweep.md, "Randomisation sanity"). ``groups="label"`` keeps the
        labels. A wrapper loaded from a file keeps no fit data and raises ``ValueError``.

        The latest refit is kept: asking again for the same model with the same weights
        (Quantus explains one randomised copy batch after batch, and randomises it in place
        layer after layer) returns it without fitting; ``model`` itself returns ``self``.
        """
        self._check_fitted()
        if model is self.model:
            return self
        if self._fit_data is None:
            raise ValueError(
                "this GADWrapper was loaded from a file and keeps no fit data, so it cannot refit "
                "for another model; fit it on data first (GAD's support models belong to the model "
                "they were fitted from)"
            )
        digest = (model_digest(model), groups)
        if self._refit is not None:
            other, seen = self._refit
            if other.model is model and seen[1] == groups and torch.equal(seen[0], digest[0]):
                return other
        xs, y, strategy = self._fit_data
        method = rebind(self.attribution_method, self.model, model)
        other = GADWrapper(method, replace(self.config, groups=groups), progress=self.progress)
        other.fit((xs if len(xs) > 1 else xs[0], y), **strategy)
        self._refit = (other, digest)  # only the latest: a randomisation metric makes many models
        return other

    def _check_fitted(self) -> DistancingPlan:
        if self.plan is None:
            raise ValueError("this GADWrapper is not fitted: call fit(data, ...) or GADWrapper.load(path, method) first")
        return self.plan

    # -- Algorithm 2 -------------------------------------------------------------------
    @overload
    def attribute(self, inputs: TensorOrTuple, target: TargetType = ..., q: float = ..., agreement: float = ...,
                  reduce: Reduce = ..., return_components: Literal[False] = ...,
                  interpolate_to_input: bool = ..., **kwargs: Any) -> TensorOrTuple: ...

    @overload
    def attribute(self, inputs: TensorOrTuple, target: TargetType = ..., q: float = ..., agreement: float = ...,
                  reduce: Reduce = ..., *, return_components: Literal[True],
                  interpolate_to_input: bool = ..., **kwargs: Any) -> Tuple[TensorOrTuple, GADComponents]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        q: float = 0.2,
        agreement: float = 1.0,
        reduce: Reduce = "sum_abs",
        return_components: bool = False,
        interpolate_to_input: bool = False,
        **kwargs: Any,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, GADComponents]]:
        r"""GAD attribution ``A_0 * C``.

        Train mode: with BatchNorm or Dropout in train mode the result depends on the batch; the
        call warns once, naming those modules, and restores their buffers and every flag
        afterwards (docs/definitions.md, section 5). Call ``model.eval()`` first for per-example
        results.

        Args:
            inputs: As for the wrapped method (a tensor or a tuple of tensors).
            target: Class per example, among the fitted classes, in every form Captum's own
                methods accept on a classifier: int, 1-tuple ``(3,)``, list of ints or of
                1-tuples, tensor of one or ``N`` entries.
            q: Fraction of locations kept in each binarised map (default: top 20%).
            agreement: Fraction of the ``T + 1`` maps that must keep a location (default
                1.0: all of them, so the kept pixels are a subset of the base map's top q).
            reduce: Channel reduction before binarising: ``"sum_abs"`` (default),
                ``"abs_sum"``, ``"sum"``, ``"max_abs"`` or a callable.
            return_components: Also return a :class:`GADComponents` with every model's map,
                the masks ``B_t`` and ``C``.
            interpolate_to_input: Upsample every map to its input's spatial size with
                Captum's ``LayerAttribution.interpolate`` (linear, bilinear or trilinear)
                before fusion: for layer methods, whose maps (``LayerGradCam``: 8x8 on a
                32x32 input) are too coarse to select a top ``q`` from.
            **kwargs: Passed unchanged to every call of the wrapped method
                (``baselines``, ``n_steps``, ``additional_forward_args``, ``nt_samples``, ...).

        Returns:
            The GAD attribution in the form of the base method's output (upsampled to the
            inputs' size with ``interpolate_to_input``), or ``(attribution, components)``
            with ``return_components=True``. A map that is constant (e.g. a zero gradient)
            has an empty mask; a warning reports how many.

        Examples::

            >>> attr, parts = gad.attribute(x, target=y, return_components=True)  # doctest: +SKIP
            >>> len(parts.maps) == gad.n_support + 1  # doctest: +SKIP
            True
        """
        check_fusion_args(q, agreement, reduce)
        maps = self._maps(inputs, target, interpolate_to_input, kwargs)
        out, components = fuse_all(maps, q, agreement, reduce)
        if components.n_degenerate:
            warnings.warn(
                f"GAD: {components.n_degenerate} attribution map(s) were constant or not finite (e.g. "
                "a zero gradient); their masks are empty, so GAD keeps nothing where they vote",
                UserWarning,
                stacklevel=3,
            )
        return (out, components) if return_components else out

    def _maps(self, inputs: TensorOrTuple, target: TargetType, interpolate_to_input: bool,
              kwargs: Dict[str, Any]) -> List[Tensor]:
        """``[A_0, ..., A_T]`` of a batch, before fusion (the sweep re-fuses them per setting)."""
        if kwargs.get("return_convergence_delta"):
            raise ValueError("return_convergence_delta is not supported: a GAD map has no convergence delta")
        xs, _ = format_inputs(inputs)
        check_batch(xs, self.model, "GADWrapper.attribute")
        check_finite(xs)
        self._check_fitted().target_classes(target, xs[0].shape[0])
        with preserved(self.model, xs, "GADWrapper.attribute"):
            maps = all_maps([self.attribution_method, *self._methods], inputs, target, kwargs)
            if interpolate_to_input:
                maps = [upsample(m, xs) for m in maps]
        return maps

    # -- inspection ----------------------------------------------------------------------
    def margins(self, inputs: TensorOrTuple, labels: Tensor, batch_size: int = 256) -> Tensor:
        """Distancing margin ``a_y - max_{c in other(y)} a_c`` of every model, ``(T + 1, N)``:
        row 0 the original model (on an eval-mode copy), row ``t`` support model ``t``."""
        plan = self._check_fitted()
        xs, _ = format_inputs(inputs)
        labels = plan.target_classes(labels, xs[0].shape[0])
        rows = []
        for m in [frozen_copy(self.model)] + self.support_models:
            logits = predict(m, xs, batch_size)
            rows.append(plan.margins(logits, labels.to(logits.device)))
        return torch.stack(rows)

    # -- persistence -------------------------------------------------------------------
    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Save support models, config and plan with a checksum of every tensor (not the fit data)."""
        plan = self._check_fitted()
        persistence.write_save(path, self.model, self.config, plan, self.alphas, self.history, self.support_models)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], attribution_method: Attribution, progress: bool = True) -> "GADWrapper":
        """Rebuild a fitted wrapper around ``attribution_method`` from :meth:`save`'s file.

        The file is read with ``torch.load(..., weights_only=True)`` and every checksum is
        verified. A file that is not a GAD save file, is corrupt (a flipped byte included),
        or does not match the method's model raises ``ValueError``; a model whose weights
        differ from the ones the file was fitted from gets a warning.
        """
        gad = cls(attribution_method, progress=progress)
        saved = persistence.read_save(path, gad.model)
        gad.config = saved["config"]
        models = []
        for sd in saved["state_dicts"]:
            m = frozen_copy(gad.model)
            try:
                m.load_state_dict(sd, strict=True)
            except (RuntimeError, TypeError, AttributeError) as err:
                raise ValueError(f"GAD save file {path} does not match the method's model: {err}") from None
            models.append(m)
        gad._set_fitted(saved["plan"], saved["alphas"], models, saved["history"])
        return gad
