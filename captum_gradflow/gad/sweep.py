"""``gad_sweep``: how GAD's settings trade simplicity for faithfulness (docs/definitions.md,
section 3.1).

For every setting of a grid, GAD is fitted once on the given data and model and explained
with each given method on held-out images. Each setting gets one row per method:

* ``kept_fraction``: median over images of (GAD map's kept pixels / base map's top-q pixels);
  with ``agreement=1`` the kept pixels are a subset of the base map's, so 1.0 means GAD
  changed nothing.
* ``rc``: median region complexity of the GAD map against the base map
  (:func:`~captum_gradflow.metrics.region_complexity`).
* ``rs_win_rate`` and ``rs_p``: fraction of images where the regions GAD kept have a larger
  region sensitivity than the base regions it dropped, and the paired one-sided Wilcoxon p
  (:func:`~captum_gradflow.metrics.compare_region_sensitivity`).
* ``fit_s``: seconds to fit the support models.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import fields
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor, nn
from tqdm import tqdm

from captum_gradflow.gad.config import GADConfig
from captum_gradflow.gad.fusion import fuse_maps
from captum_gradflow.gad.wrapper import GADWrapper
from captum_gradflow.metrics import compare_region_sensitivity, region_complexity

__all__ = ["gad_sweep", "evaluate_gad"]

MethodFactory = Callable[[nn.Module], Attribution]
_ATTRIBUTE_KEYS = ("q", "agreement")


def evaluate_gad(
    gad: GADWrapper,
    x: Tensor,
    y: Tensor,
    q: float = 0.2,
    agreement: float = 1.0,
    batch_size: int = 64,
    **attribute_kwargs: Any,
) -> Dict[str, float]:
    """Kept fraction, RC and RS comparison of a fitted GAD on ``(x, y)`` (single-tensor inputs).

    Returns medians over the images where each quantity is defined, the RS win rate and its
    one-sided paired Wilcoxon p, and the number of images.
    """
    reduce = attribute_kwargs.pop("reduce", "sum_abs")
    return _scores(gad, x, y, _all_maps(gad, x, y, batch_size, attribute_kwargs), q, agreement, reduce)


def _all_maps(gad: GADWrapper, x: Tensor, y: Tensor, batch_size: int, kwargs: Dict[str, Any]) -> List[List[Tensor]]:
    """``[A_0, ..., A_T]`` of every batch: what fusion settings (q, agreement) only re-fuse."""
    interpolate = kwargs.pop("interpolate_to_input", True)
    return [[m.detach() for m in gad._maps(x[i:i + batch_size], y[i:i + batch_size], interpolate, kwargs)]
            for i in range(0, len(x), batch_size)]


def _scores(gad: GADWrapper, x: Tensor, y: Tensor, maps: List[List[Tensor]], q: float = 0.2,
            agreement: float = 1.0, reduce: Any = "sum_abs") -> Dict[str, float]:
    """:func:`evaluate_gad`'s figures from the maps of every batch, fused at ``q``, ``agreement``."""
    gad_maps, kept = [], []
    for batch in maps:
        fused = fuse_maps(batch, q, agreement, reduce)
        base_top = fused.masks[0].flatten(1).sum(1).double()
        kept.append(fused.consistency.flatten(1).sum(1).double() / base_top.where(base_top > 0, torch.nan))
        gad_maps.append(fused.attribution)
    gad_attr, base_attr = torch.cat(gad_maps), torch.cat([batch[0] for batch in maps])
    rc = region_complexity(gad_attr, base_attr, q=q).rc
    rs = compare_region_sensitivity(gad.model, x, gad_attr, base_attr, target=y, region_kwargs={"q": q})
    return {
        "kept_fraction": float(np.nanmedian(torch.cat(kept).numpy())),
        "rc": float(np.nanmedian(rc.numpy())) if (~torch.isnan(rc)).any() else float("nan"),
        "rs_win_rate": rs.win_rate,
        "rs_p": rs.p_value,
        "rs_pairs": rs.n_pairs,
        "n_eval": len(x),
    }


def _grid_points(grid: Mapping[str, Iterable[Any]]) -> List[Dict[str, Any]]:
    names = list(grid)
    known = {f.name for f in fields(GADConfig)} | set(_ATTRIBUTE_KEYS)
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"grid keys {unknown} are not GAD settings; known: {sorted(known)}")
    values = [list(grid[n]) for n in names]
    if any(not v for v in values):
        raise ValueError("every grid entry needs at least one value")
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def gad_sweep(
    model: nn.Module,
    method_factory: Union[MethodFactory, Mapping[str, MethodFactory]],
    data: Tuple[Tensor, Tensor],
    grid: Mapping[str, Iterable[Any]],
    eval_data: Optional[Tuple[Tensor, Tensor]] = None,
    pair: Optional[Sequence[int]] = None,
    one_vs_all: Optional[int] = None,
    split: Optional[Sequence[Sequence[int]]] = None,
    config: Optional[GADConfig] = None,
    attribute_kwargs: Optional[Mapping[str, Dict[str, Any]]] = None,
    progress: bool = True,
) -> "pandas.DataFrame":  # noqa: F821
    r"""Fit GAD over a grid of settings and measure how much it removes and whether it should.

    Settings that change the support models (any :class:`GADConfig` field: ``delta`` or
    ``alphas`` (per group too), ``lr``, ``steps``, ``warm_start``, ``n_support``, ...) are
    fitted once per combination; ``q`` and ``agreement`` in the grid only change fusion: the
    ``T + 1`` maps of a fit are computed once per method and fused again for each. Every
    method is explained with the same support models.

    Args:
        model: The trained classifier (not modified).
        method_factory: ``model -> Attribution`` (e.g. ``Saliency``), or a mapping of names to
            such factories.
        data: ``(x, y)`` the support models are fitted on.
        grid: Setting name -> values; the sweep runs their product.
        eval_data: ``(x, y)`` explained with target ``y`` (default: ``data``).
        pair, one_vs_all, split: The distancing strategy, as in :meth:`GADWrapper.fit`.
        config: Settings not in the grid (default: :class:`GADConfig`'s defaults).
        attribute_kwargs: Per method name, keyword arguments of ``attribute`` (e.g.
            ``{"IG": {"n_steps": 16}}``); a factory given alone is named ``"method"``.
        progress: Show a tqdm bar over the settings.

    Returns:
        A pandas DataFrame, one row per setting and method: the grid's columns, ``method``,
        ``kept_fraction``, ``rc``, ``rs_win_rate``, ``rs_p``, ``rs_pairs``, ``n_eval``, ``fit_s``.

    Examples::

        >>> from captum.attr import Saliency
        >>> from captum_gradflow import SmallCNN, digits_pair
        >>> from captum_gradflow.gad import GADConfig, gad_sweep
        >>> d = digits_pair((3, 8), size=16)
        >>> table = gad_sweep(SmallCNN().eval(), Saliency, (d.x_train, d.y_train),
        ...                   {"delta": [1.0, 2.0]}, eval_data=(d.x_test[:8], d.y_test[:8]),
        ...                   pair=(0, 1), config=GADConfig(steps=2), progress=False)
        >>> list(table["delta"])
        [1.0, 2.0]
    """
    import pandas as pd

    factories = dict(method_factory) if isinstance(method_factory, Mapping) else {"method": method_factory}
    if not factories or not all(callable(f) for f in factories.values()):
        raise TypeError("method_factory must be a callable model -> Attribution, or a mapping of names to such")
    kwargs = {name: dict((attribute_kwargs or {}).get(name, {})) for name in factories}
    reduces = {name: kwargs[name].pop("reduce", "sum_abs") for name in factories}  # a fusion setting
    x_eval, y_eval = eval_data if eval_data is not None else data
    points = _grid_points(grid)
    fit_keys = [k for k in grid if k not in _ATTRIBUTE_KEYS]
    base = config or GADConfig()
    rows: List[Dict[str, Any]] = []
    by_fit: Dict[Tuple[Any, ...], List[Dict[str, Any]]] = {}
    for p in points:
        by_fit.setdefault(tuple(repr(p[k]) for k in fit_keys), []).append(p)
    for group in tqdm(list(by_fit.values()), desc="GAD sweep", disable=not progress):
        settings = {k: group[0][k] for k in fit_keys}
        names = list(factories)
        start = time.perf_counter()
        gad = GADWrapper(factories[names[0]](model), base, progress=False, **settings)
        gad.fit(data, pair=pair, one_vs_all=one_vs_all, split=split)
        fit_s = time.perf_counter() - start
        for name in names:
            method_gad = gad if name == names[0] else gad.with_method(factories[name](model))
            maps = _all_maps(method_gad, x_eval, y_eval, 64, kwargs[name])  # once per fit and method
            for p in group:
                fusion = {k: p[k] for k in _ATTRIBUTE_KEYS if k in p}
                scores = _scores(method_gad, x_eval, y_eval, maps, **fusion, reduce=reduces[name])
                rows.append({**p, "method": name, **scores, "fit_s": fit_s})
    return pd.DataFrame(rows)
