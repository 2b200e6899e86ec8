"""``captum_gradflow.evaluate``: a whole data set in one call, the in-process form of the CLI."""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from captum_gradflow.evaluate.recipe import Recipe
from captum_gradflow.evaluate.runner import Settings, run_evaluation
from captum_gradflow.features import Feature
from captum_gradflow.gad.persistence import tensor_digest

__all__ = ["evaluate"]


def _model_sha256(model: nn.Module) -> str:
    """Digest of the weights and buffers: the in-process stand-in for a recipe file's hash."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in list(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_digest(t).encode())
    return digest.hexdigest()


def evaluate(
    model: nn.Module,
    dataset: Any,
    features: Union[Feature, Sequence[Feature]],
    out: Optional[Union[str, "os.PathLike[str]"]] = None,
    *,
    batch_size: int = 16,
    n_noise: int = 32,
    flow: bool = False,
    resume: bool = False,
    target: Optional[Callable[[Tensor], Any]] = None,
    attribution: Any = None,
    gad: Any = None,
    noise_options: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
) -> Tuple[Any, Dict[str, Any]]:
    r"""Evaluate feature alignment (and optionally the flow and GAD) over a whole data set.

    The in-process form of ``python -m captum_gradflow evaluate RECIPE.py --out DIR``: the
    same table, statistics and output files. Per example (one row per dataset index):
    ``index``, ``label``, per feature ``S_<name>``, ``ratio_<name>`` and the empirical
    ``p_<name>`` against ``n_noise`` noise features (``noise_0`` ... and ``noise_mean``), the
    joint alignment ``J``; with ``flow=True`` the same for the flow alignment (``F_<name>``,
    ``F_ratio_<name>``, ``F_p_<name>``, ``F_noise_*``), ``reached_boundary`` and
    ``flow_length``; with ``gad``, ``RC``, ``RS_kept`` and ``RS_dropped``. The summary has,
    per feature, ``n``, ``n_undefined``, the mean, the mean ratio and the one-sided Wilcoxon
    p-value of ``S - noise_mean`` (docs/definitions.md section 2.3), the same for ``F``, and
    for GAD the median RC, the RS win rate and its p-value.

    The model is evaluated in eval mode and left in the mode it came in. Batches are
    streamed from the dataset and written to ``out`` as they finish; ``resume=True`` skips
    the examples already written by an interrupted run of the same model and settings.
    Inside a ``torchrun`` job every process takes its share of the indices and rank 0
    returns the result (the others return ``(None, None)``).

    Args:
        model: The classifier (an ``nn.Module``); inputs are moved to its device.
        dataset: A map-style ``torch.utils.data.Dataset`` of ``(x, y)`` or ``(x, y, mask)``.
        features: The features; one without its own mask uses each item's mask.
        out: Output folder; ``None`` uses a temporary folder removed afterwards (one process only).
        batch_size: Examples per batch (results do not depend on it).
        n_noise: Noise features M of the baseline.
        flow: Also measure the gradient flow alignment F (slower).
        resume: Continue an interrupted run in ``out``.
        target: Maps a batch of labels to the Captum target (default: the labels).
        attribution: Base Captum method compared with GAD (default: the one GAD wraps).
        gad: A fitted :class:`~captum_gradflow.GADWrapper` for per-example RC and RS.
        noise_options: Noise settings passed by keyword to ``compare_to_noise``
            (e.g. ``{"smooth_sigma": 2.0}``).
        progress: Show a tqdm bar (rank 0 only).

    Returns:
        ``(table, summary)``: a pandas DataFrame and a dict (also written to
        ``out/examples.parquet``, ``out/summary.json`` and ``out/summary.md``).

    Examples::

        >>> from captum_gradflow import Brightness, SmallCNN, evaluate, synthetic_lesions
        >>> from torch.utils.data import TensorDataset
        >>> data = synthetic_lesions(8, size=16)
        >>> ds = TensorDataset(data.images, data.labels, data.masks)
        >>> table, summary = evaluate(SmallCNN().eval(), ds, [Brightness()], n_noise=4,
        ...                           progress=False)
        >>> len(table), sorted(summary["S"])
        (8, ['brightness'])
    """
    recipe = Recipe(model=model, dataset=dataset, features=features, target=target,
                    attribution=attribution, gad=gad)
    recipe.identity = {"model_sha256": _model_sha256(model), "dataset": type(dataset).__qualname__}
    settings = Settings(batch_size=batch_size, n_noise=n_noise, flow=flow, resume=resume,
                        progress=progress, noise_options=dict(noise_options or {}))
    if out is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("under torchrun every process writes to one folder: pass out=")
        with tempfile.TemporaryDirectory(prefix="captum_gradflow_evaluate_") as tmp:
            result = run_evaluation(recipe, os.path.join(tmp, "run"), settings)
    else:
        result = run_evaluation(recipe, out, settings)
    return result if result is not None else (None, None)
