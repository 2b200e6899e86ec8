"""The evaluation loop: one process or many (``torchrun``), streamed to checksummed parts.

Rank ``r`` of ``W`` takes the dataset indices ``i`` with ``i % W == r`` that no committed part
holds yet, reads them in batches through a ``DataLoader`` over a ``Subset`` (never the whole
data set at once), measures each batch with the package's public APIs and writes its rows to
a part file at once. After a barrier rank 0 merges the parts and computes the dataset-level
statistics. Every per-example value depends on that example alone (the model is in eval
mode, the noise directions are seeded by their number), so the table does not depend on the
number of processes or the batch size.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from captum_gradflow._checks import check_batch, check_target_dtype
from captum_gradflow._guard import preserved
from captum_gradflow.alignment import FeatureAlignment
from captum_gradflow.evaluate.recipe import Recipe, check_item
from captum_gradflow.evaluate.storage import OutputFolder
from captum_gradflow.evaluate.summary import comparison_columns, render_markdown, summarize
from captum_gradflow.features import Feature
from captum_gradflow.gad.persistence import tensor_digest
from captum_gradflow.flow import GradientFlowAlignment
from captum_gradflow.metrics import compare_region_sensitivity, region_complexity
from captum_gradflow.noise import make_noise
from captum_gradflow.noise_comparison import NoiseComparison

__all__ = ["Settings", "run_evaluation", "NOISE_SEED"]

NOISE_SEED = 0
"""Noise direction ``j`` has seed ``NOISE_SEED + j`` for every example, batch and rank."""


@dataclass
class Settings:
    """How to evaluate. ``noise_options`` go by keyword to the noise comparisons."""

    batch_size: int = 16
    n_noise: int = 32
    flow: bool = False
    resume: bool = False
    progress: bool = True
    noise_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_noise"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def recorded(self) -> Dict[str, Any]:
        """What the results depend on (the manifest's settings). The batch size is one: every
        batch has that many rows, and kernels may round differently for another size."""
        return {"batch_size": self.batch_size, "n_noise": self.n_noise, "flow": bool(self.flow),
                "noise_seed": NOISE_SEED,
                "noise_options": {k: _describe(v) for k, v in sorted(self.noise_options.items())}}


def _describe(v: Any) -> Any:
    if isinstance(v, Tensor):
        return f"tensor{tuple(v.shape)} sha256 {tensor_digest(v)[:16]}"
    if isinstance(v, (list, tuple)) and all(isinstance(e, (int, float)) for e in v):
        return [float(e) for e in v]
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


class Measures:
    """The per-batch measurements, built once per run (noise directions are reused).

    Features without their own mask are copied once, and each batch gives the copies the
    items' masks, so a feature that has its own mask keeps it.
    """

    def __init__(self, model: nn.Module, features: List[Feature], settings: Settings) -> None:
        self.model, self.settings = model, settings
        self.features = [copy.copy(f) if f.mask is None else f for f in features]
        self.item_masked = [f for f, orig in zip(self.features, features) if f is not orig]
        self.names = [f.name for f in features]
        self.alignment = FeatureAlignment(model, self.features)
        self.flow = GradientFlowAlignment(model, self.features) if settings.flow else None

    def set_mask(self, mask: Optional[Tensor]) -> None:
        for f in self.item_masked:
            f.mask = mask

    def align(self, x: Tensor, target: Any) -> Tuple[NoiseComparison, Optional[NoiseComparison], Any]:
        """S with its noise baseline and J (``.J``, from the same model gradient as S: one
        backward pass, not two), and with ``flow`` F with its baseline and details.

        The one place that calls the alignment APIs: noise settings go by keyword.
        """
        s = self.settings
        point = self.alignment.compare_to_noise(
            x, target=target, n_noise=s.n_noise, seed=NOISE_SEED, joint=True, **s.noise_options)
        if self.flow is None:
            return point, None, None
        flow, res = self.flow.compare_to_noise(x, target=target, n_noise=s.n_noise, seed=NOISE_SEED,
                                               return_details=True, **s.noise_options)
        return point, flow, res

    def gad(self, recipe: Recipe, x: Tensor, target: Any) -> Dict[str, np.ndarray]:
        """RC of the GAD regions against the base method's, and RS of kept and dropped regions.

        When the base method is the one GAD wraps, its map is GAD's own ``A_0``: the method
        runs once per batch, not twice.
        """
        xg = x.detach().requires_grad_()  # Captum's methods would warn and set it themselves
        own = recipe.attribution is recipe.gad.attribution_method
        kept, parts = recipe.gad.attribute(xg, target=target, return_components=True)
        base = parts.maps[0] if own else recipe.attribution.attribute(xg, target=target)
        rc = region_complexity(kept, base)
        rs = compare_region_sensitivity(self.model, x, kept, base, target=target)
        return {"RC": rc.rc.double().cpu().numpy(), "RS_kept": rs.gad.detach().double().cpu().numpy(),
                "RS_dropped": rs.rest.detach().double().cpu().numpy()}

    def frame(self, recipe: Recipe, indices: List[int], batch: Any, device: torch.device) -> Dict[str, np.ndarray]:
        """The table rows of one batch, as arrays by column name.

        A short last batch is padded to the batch size with copies of its first item, whose
        rows are dropped: kernels can round differently for another batch size, and the
        table must not depend on how the indices were split.
        """
        pad = self.settings.batch_size - len(indices)
        batch = [_pad(t, pad) for t in batch]
        x, y = batch[0].to(device), batch[1]
        mask = batch[2].to(device) if len(batch) == 3 else None
        target = recipe.target(y) if recipe.target is not None else y
        target = target.to(device) if isinstance(target, Tensor) else target
        check_batch((x,), self.model, "evaluate")
        check_target_dtype(target)
        self.set_mask(mask)
        point, flow, res = self.align(x, target)
        cols: Dict[str, Any] = {"index": np.asarray(indices + [-1] * pad, dtype=np.int64),
                                "label": y.reshape(-1).cpu().numpy()}
        cols.update(comparison_columns(point, ""))
        cols["J"] = point.J.detach().double().cpu().numpy()
        if flow is not None:
            cols.update(comparison_columns(flow, "F_"))
            cols["reached_boundary"] = res.reached_boundary.cpu().numpy().astype(bool)
            cols["flow_length"] = res.length.detach().double().cpu().numpy()
        if recipe.gad is not None:
            cols.update(self.gad(recipe, x, target))
        return {k: v[:len(indices)] for k, v in cols.items()}


def _pad(t: Tensor, pad: int) -> Tensor:
    if pad <= 0:
        return t
    return torch.cat([t, t[:1].expand(pad, *t.shape[1:])])


class _Group:
    """This process's place among the workers: ``torch.distributed`` when ``WORLD_SIZE > 1``."""

    def __init__(self) -> None:
        self.owned = False
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            return
        self.rank, self.world = 0, int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
            self.owned = True
            self.rank = dist.get_rank()

    def from_rank0(self, fn) -> Any:
        """``fn()`` on rank 0, its result (or exception) on every rank."""
        result: List[Any] = [None]
        if self.rank == 0:
            try:
                result[0] = fn()
            except Exception as err:  # every rank must raise the same error, not hang
                result[0] = err
        if self.world > 1:
            dist.broadcast_object_list(result, src=0)
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned:
            dist.destroy_process_group()


def _prepare(folder: OutputFolder, recipe: Recipe, settings: Settings) -> set:
    identity = dict(recipe.identity or {}, features=[f.name for f in recipe.features],
                    n_examples=len(recipe.dataset), gad=recipe.gad is not None)
    folder.claim(identity, settings.recorded(), settings.resume)
    done = folder.done_indices()  # verifies every committed part's checksum
    folder.remove_uncommitted()
    return done


def resolve_noise_scale(recipe: Recipe, settings: Settings) -> Settings:
    """``settings`` with an ``"auto"`` noise smoothing fixed once for the whole data set.

    make_noise's ``"auto"`` width is a statistic of the batch's masks; fixed from the first
    item, every example's noise is the same whatever batch or rank it lands in.
    """
    if settings.noise_options.get("smooth_sigma", "auto") != "auto":
        return settings
    x, _, mask = check_item(recipe.dataset[0], 0)
    feats = [copy.copy(f) for f in recipe.features]
    for f in feats:
        if f.mask is None and mask is not None:
            f.mask = mask.reshape(1, 1, *x.shape[1:])
    opts = {k: v for k, v in settings.noise_options.items() if k != "smooth_sigma"}
    sigma = make_noise(feats, x[None], None, 1, **opts).smooth_sigma
    sigma = None if sigma is None else [float(v) for v in sigma]
    return replace(settings, noise_options=dict(settings.noise_options, smooth_sigma=sigma))


def run_evaluation(recipe: Recipe, out: "os.PathLike[str] | str", settings: Settings,
                   device: Optional[torch.device] = None) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """Evaluate ``recipe`` into ``out``; rank 0 returns ``(table, summary)``, others ``None``."""
    settings = resolve_noise_scale(recipe, settings)
    group = _Group()
    try:
        folder = OutputFolder(out)
        done = group.from_rank0(lambda: _prepare(folder, recipe, settings))
        n = len(recipe.dataset)
        mine = [i for i in range(group.rank, n, group.world) if i not in done]
        device = device or next((p.device for p in recipe.model.parameters()), torch.device("cpu"))
        _measure_shard(recipe, folder, settings, mine, group, device)
        group.barrier()
        if group.rank != 0:
            return None
        table = folder.merge(n)
        names = [f.name for f in recipe.features]
        summary = summarize(table, names, settings.n_noise, settings.flow, recipe.gad is not None,
                            settings.recorded())
        folder.write_results(table, summary, render_markdown(summary))
        return table, summary
    finally:
        group.close()


def _measure_shard(recipe: Recipe, folder: OutputFolder, settings: Settings, mine: List[int],
                   group: _Group, device: torch.device) -> None:
    b = settings.batch_size
    loader = DataLoader(Subset(recipe.dataset, mine), batch_size=b, shuffle=False,
                        collate_fn=_collate(mine, b))
    bar = tqdm(total=len(mine), unit="ex", unit_scale=group.world if group.world > 1 else False,
               disable=not settings.progress or group.rank != 0, desc="evaluate", dynamic_ncols=True)
    seen: Dict[Tuple[Any, str, int], List[Any]] = {}
    try:
        # Eval mode for the run (per-example results); the caller's modes come back after it.
        with preserved(recipe.model, (), "evaluate", eval_mode=True):
            measures = Measures(recipe.model, recipe.features, settings)
            for k, batch in enumerate(loader):
                ids = mine[k * b:(k + 1) * b]
                # The APIs warn about undefined values batch by batch; one line each at the end.
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    frame = measures.frame(recipe, ids, batch, device)
                for w in caught:
                    seen.setdefault((w.category, w.filename, w.lineno), [0, str(w.message)])[0] += 1
                folder.write_part(frame)
                bar.update(len(ids))
    finally:
        bar.close()
        for (category, _, _), (count, message) in seen.items():
            warnings.warn(f"evaluate (rank {group.rank}): this warning came {count} time(s), the first: "
                          f"{message}", category, stacklevel=4)


def _collate(indices: List[int], batch_size: int):
    """Default collation after checking every item's form (errors name the dataset index)."""
    from torch.utils.data import default_collate

    counter = {"batch": 0}

    def collate(items: List[Any]) -> Any:
        start = counter["batch"] * batch_size
        counter["batch"] += 1
        first = items[0]
        for k, item in enumerate(items):
            check_item(item, indices[start + k])
            if len(item) != len(first) or tuple(item[0].shape) != tuple(first[0].shape):
                raise ValueError(
                    f"dataset item {indices[start + k]} does not match item {indices[start]}: every "
                    "item must have the same form and shape"
                )
        return default_collate(items)

    return collate
