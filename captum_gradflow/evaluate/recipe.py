"""The recipe of a dataset-scale evaluation: what to evaluate, checked before any work.

A recipe file (tutorials/06_dataset_evaluation.ipynb) is a Python file defining ``model()``,
``dataset()`` and ``features()``, and optionally ``target(y)``, ``attribution(model)`` and
``gad(model)``. :class:`Recipe` holds what those functions built; :func:`load_recipe` runs a
file, and :func:`check_item` is the one check of a dataset item's form.
"""
from __future__ import annotations

import hashlib
import importlib.util
import numbers
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from torch import Tensor, nn

from captum_gradflow.features import Feature, as_feature_list

__all__ = ["Recipe", "load_recipe", "check_item", "file_sha256"]

REQUIRED = ("model", "dataset", "features")
OPTIONAL = ("target", "attribution", "gad")


@dataclass
class Recipe:
    """Everything one evaluation needs, built and checked.

    Attributes:
        model: The model (``nn.Module``).
        dataset: A map-style ``torch.utils.data.Dataset`` (``len`` and ``[i]``) whose items are
            ``(x, y)`` or ``(x, y, mask)``.
        features: The features; one without its own mask uses the item's mask.
        target: Maps a batch of labels to the Captum target (default: the labels).
        attribution: The base Captum attribution compared with GAD (default: the one GAD wraps).
        gad: A fitted ``GADWrapper`` for per-example RC and RS, or ``None``.
        identity: What identifies the recipe in the output folder's manifest.
    """

    model: nn.Module
    dataset: Any
    features: List[Feature]
    target: Optional[Callable[[Tensor], Any]] = None
    attribution: Any = None
    gad: Any = None
    identity: Optional[dict] = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"the model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not (hasattr(self.dataset, "__len__") and hasattr(self.dataset, "__getitem__")):
            raise TypeError(
                f"the dataset must be a map-style torch Dataset (with __len__ and __getitem__), got "
                f"{type(self.dataset).__name__}"
            )
        if len(self.dataset) == 0:
            raise ValueError("the dataset is empty: there is nothing to evaluate")
        self.features = as_feature_list(self.features)
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique (they name the table's columns), got {names}")
        if self.target is not None and not callable(self.target):
            raise TypeError("target must be a function of the batch of labels")
        if self.gad is not None:
            from captum_gradflow.gad import GADWrapper

            if not isinstance(self.gad, GADWrapper) or not self.gad.is_fitted:
                raise TypeError("gad(model) must return a fitted GADWrapper (fit it or GADWrapper.load it)")
            if self.attribution is None:
                self.attribution = self.gad.attribution_method
        elif self.attribution is not None:
            raise ValueError(
                "attribution(model) is the base method GAD is compared with: define gad(model) too"
            )
        check_item(self.dataset[0], 0)


def file_sha256(path: "os.PathLike[str] | str") -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_recipe(path: "os.PathLike[str] | str") -> Recipe:
    """Run a recipe file and build its :class:`Recipe`, with an error naming what is wrong.

    Examples::

        >>> from captum_gradflow.evaluate import load_recipe
        >>> recipe = load_recipe("tests/recipes/lesions.py")  # doctest: +SKIP
        >>> len(recipe.dataset), [f.name for f in recipe.features]  # doctest: +SKIP
        (12, ['brightness', 'extent'])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_captum_gradflow_recipe_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python file that can be imported as a recipe")
    module = importlib.util.module_from_spec(spec)
    # The recipe's own folder is importable, so it can share helpers with files beside it.
    folder = os.path.dirname(os.path.abspath(path))
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(folder)
    missing = [name for name in REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        raise ValueError(
            f"recipe {path} does not define {', '.join(f'{m}()' for m in missing)}; a recipe defines "
            "model(), dataset() and features() (optionally target(y), attribution(model), gad(model))"
        )
    model = module.model()
    optional = {name: getattr(module, name, None) for name in OPTIONAL}
    return Recipe(
        model=model,
        dataset=module.dataset(),
        features=module.features(),
        target=optional["target"],
        attribution=optional["attribution"](model) if optional["attribution"] else None,
        gad=optional["gad"](model) if optional["gad"] else None,
        identity={"recipe_sha256": file_sha256(path)},
    )


def check_item(item: Any, index: int) -> Tuple[Tensor, Any, Optional[Tensor]]:
    """Split a dataset item into ``(x, y, mask)``, or raise naming what is wrong with it.

    ``x`` is one example ``(C, *spatial)`` or ``(d,)`` in floating point; ``y`` a scalar label
    (an int or a one-element tensor); ``mask`` (optional) ``(1, *spatial)`` or ``(*spatial)``.
    """
    where = f"dataset item {index}"
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        form = f"a {type(item).__name__}" + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise ValueError(f"{where} must be (x, y) or (x, y, mask), got {form}")
    x, y = item[0], item[1]
    mask = item[2] if len(item) == 3 else None
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0:
        what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{where}: x must be a floating-point tensor of one example, got {what}")
    if not _is_scalar(y):
        raise TypeError(f"{where}: y must be a scalar label (an int or a one-element tensor), got {_describe(y)}")
    if mask is not None:
        spatial = tuple(x.shape[1:])
        ok = isinstance(mask, Tensor) and x.dim() >= 2 and tuple(mask.shape) in (spatial, (1,) + spatial)
        if not ok:
            raise ValueError(
                f"{where}: mask has shape {_describe(mask)}; for x of shape {tuple(x.shape)} it must be "
                f"{(1,) + spatial} or {spatial}"
            )
    return x, y, mask


def _is_scalar(y: Any) -> bool:
    if isinstance(y, Tensor):
        return y.numel() == 1 and y.dim() <= 1
    return isinstance(y, numbers.Number) and not isinstance(y, complex)


def _describe(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"{tuple(v.shape)} ({v.dtype})"
    return type(v).__name__
