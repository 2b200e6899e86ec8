"""Offline data: synthetic lesions (images and volumes) whose label rule is known, and real
handwritten digits.

Nothing is downloaded: lesions are generated, digits come from scikit-learn's bundled copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Callable, Dict, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import Tensor

__all__ = ["Lesions", "synthetic_lesions", "synthetic_lesions_3d", "DigitsSplit", "digits_pair"]

Rule = Union[str, Callable[[Dict[str, Tensor]], Tensor]]


@dataclass
class Lesions:
    """Synthetic lesion images (or volumes) with their masks, labels and true lesion parameters.

    ``params`` holds, per image, ``brightness`` (lesion intensity), ``extent`` (mean
    semi-axis in pixels), ``aspect`` (log ratio of the largest to the smallest semi-axis) and
    ``score`` (the rule's value, thresholded into ``labels``).
    """

    images: Tensor
    masks: Tensor
    labels: Tensor
    params: Dict[str, Tensor]

    def __len__(self) -> int:
        return self.images.shape[0]

    def split(self, test_fraction: float = 0.3) -> "tuple[Lesions, Lesions]":
        """First ``1 - test_fraction`` of the (already shuffled) images, then the rest."""
        k = int(round(len(self) * (1 - test_fraction)))
        return self[:k], self[k:]

    def __getitem__(self, idx) -> "Lesions":
        return Lesions(self.images[idx], self.masks[idx], self.labels[idx],
                       {k: v[idx] for k, v in self.params.items()})


_RULES = ("brightness", "extent", "aspect", "brightness+extent")


def _rule_score(rule: Rule, params: Dict[str, Tensor]) -> Tensor:
    if callable(rule):
        return torch.as_tensor(rule(params), dtype=torch.float64)
    z = {k: (v - v.mean()) / v.std() for k, v in params.items()}
    if rule == "brightness":
        return z["brightness"]
    if rule == "extent":
        return z["extent"]
    if rule == "aspect":
        return z["aspect"]
    if rule == "brightness+extent":
        return z["brightness"] + z["extent"]
    raise ValueError(f"unknown rule {rule!r}; use one of {_RULES} or a callable on the params")


def synthetic_lesions(
    n: int,
    size: int = 64,
    seed: int = 0,
    rule: Rule = "brightness",
    positive_fraction: float = 0.5,
    noise: float = 0.03,
    texture: float = 0.05,
) -> Lesions:
    """Grayscale images ``(n, 1, size, size)`` in [0, 1] with one elliptical lesion each.

    Lesion brightness, extent, aspect ratio, angle and position are drawn independently, so a
    label decided by one of them is independent of the others. The label is 1 for the top
    ``positive_fraction`` of the rule's score.

    Args:
        n: Number of images.
        size: Image side in pixels.
        seed: Seed of every random draw.
        rule: ``"brightness"``, ``"extent"``, ``"aspect"``, ``"brightness+extent"`` (sum of
            standardised values) or a callable mapping the params dict to a score per image.
        positive_fraction: Fraction of images labelled 1 (the paper's data: about 0.13).
        noise: Standard deviation of per-pixel Gaussian noise.
        texture: Amplitude of the smooth background texture.

    Returns:
        :class:`Lesions` with ``images``, ``masks`` (soft, slightly larger than the lesion),
        ``labels`` (long, 0/1) and ``params``.

    Examples::

        >>> from captum_gradflow import synthetic_lesions
        >>> data = synthetic_lesions(8, size=32, seed=0)
        >>> data.images.shape, data.masks.shape, data.labels.shape
        (torch.Size([8, 1, 32, 32]), torch.Size([8, 1, 32, 32]), torch.Size([8]))
    """
    _check_lesion_args(n, size, positive_fraction, 16)
    rng = np.random.default_rng(seed)
    brightness, extent, aspect = _lesion_draws(rng, n, size)
    angle = rng.uniform(0, np.pi, n)
    center = size / 2 + rng.uniform(-0.12, 0.12, (n, 2)) * size
    a = extent * np.exp(aspect / 2)
    b = extent * np.exp(-aspect / 2)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((n, 1, size, size))
    masks = np.empty((n, 1, size, size))
    for i in range(n):
        dy, dx = yy - center[i, 0], xx - center[i, 1]
        u = dx * np.cos(angle[i]) + dy * np.sin(angle[i])
        v = -dx * np.sin(angle[i]) + dy * np.cos(angle[i])
        r = np.sqrt((u / a[i]) ** 2 + (v / b[i]) ** 2)
        images[i, 0], masks[i, 0] = _render(r, brightness[i], rng, size, noise, texture)

    return _labelled(images, masks, brightness, extent, aspect, rule, positive_fraction)


def _lesion_draws(rng: np.random.Generator, n: int, size: int
                  ) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """Brightness, extent (in pixels) and log aspect ratio of ``n`` lesions, independent draws."""
    brightness = rng.uniform(0.35, 0.85, n)
    extent = rng.uniform(0.12, 0.24, n) * size
    aspect = rng.uniform(0.0, np.log(2.5), n)
    return brightness, extent, aspect


def _render(r: np.ndarray, brightness: float, rng: np.random.Generator, size: int, noise: float,
            texture: float) -> "tuple[np.ndarray, np.ndarray]":
    """Image (or volume) and soft mask of one lesion from its normalised radius ``r``.

    ``r`` is 1 on the lesion's boundary; the background is a smooth texture (one draw), then
    per-pixel noise (a second draw), in this order for every generator.
    """
    lesion = 1.0 / (1.0 + np.exp((r - 1.0) * 8.0))
    background = 0.15 + texture * gaussian_filter(rng.standard_normal(r.shape), size / 16)
    img = background + (brightness - 0.15) * lesion + noise * rng.standard_normal(r.shape)
    return np.clip(img, 0.0, 1.0), 1.0 / (1.0 + np.exp((r - 1.4) * 6.0))


def _labelled(
    images: np.ndarray, masks: np.ndarray, brightness: np.ndarray, extent: np.ndarray,
    aspect: np.ndarray, rule: Rule, positive_fraction: float,
) -> Lesions:
    """Lesions labelled 1 for the top ``positive_fraction`` of the rule's score."""
    n = len(images)
    params = {
        "brightness": torch.as_tensor(brightness),
        "extent": torch.as_tensor(extent),
        "aspect": torch.as_tensor(aspect),
    }
    score = _rule_score(rule, params)
    if score.shape != (n,):
        raise ValueError(f"rule returned shape {tuple(score.shape)}, expected ({n},)")
    cut = torch.quantile(score, 1 - positive_fraction)
    labels = (score > cut).long()
    params["score"] = score
    return Lesions(
        images=torch.as_tensor(images, dtype=torch.float32),
        masks=torch.as_tensor(masks, dtype=torch.float32),
        labels=labels,
        params={k: v.float() for k, v in params.items()},
    )


def _check_lesion_args(n: int, size: int, positive_fraction: float, min_size: int) -> None:
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if not 0 < positive_fraction < 1:
        raise ValueError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    if size < min_size:
        raise ValueError(f"size must be at least {min_size} pixels, got {size}")


def synthetic_lesions_3d(
    n: int,
    size: int = 16,
    seed: int = 0,
    rule: Rule = "brightness",
    positive_fraction: float = 0.5,
    noise: float = 0.03,
    texture: float = 0.05,
) -> Lesions:
    """CT-like volumes ``(n, 1, size, size, size)`` in [0, 1] with one ellipsoidal lesion each.

    The volume counterpart of :func:`synthetic_lesions`, with the same arguments, parameters
    and labels. Each lesion is an ellipsoid with semi-axes ``extent * exp(aspect / 2)``,
    ``extent`` and ``extent * exp(-aspect / 2)`` (so ``aspect`` is the log ratio of the
    largest to the smallest) in a random orientation; brightness, extent, aspect, orientation
    and position are drawn independently. The background is a smooth 3-D texture.

    Args:
        n: Number of volumes.
        size: Volume side in voxels (at least 8).
        seed: Seed of every random draw.
        rule: As in :func:`synthetic_lesions`.
        positive_fraction: Fraction of volumes labelled 1.
        noise: Standard deviation of per-voxel Gaussian noise.
        texture: Amplitude of the smooth background texture.

    Returns:
        :class:`Lesions` with ``images`` and ``masks`` of shape ``(n, 1, size, size, size)``,
        ``labels`` (long, 0/1) and ``params``.

    Examples::

        >>> from captum_gradflow import synthetic_lesions_3d
        >>> data = synthetic_lesions_3d(8, size=16, seed=0)
        >>> data.images.shape, data.masks.shape, data.labels.shape
        (torch.Size([8, 1, 16, 16, 16]), torch.Size([8, 1, 16, 16, 16]), torch.Size([8]))
    """
    _check_lesion_args(n, size, positive_fraction, 8)
    rng = np.random.default_rng(seed)
    brightness, extent, aspect = _lesion_draws(rng, n, size)
    rotation = np.linalg.qr(rng.standard_normal((n, 3, 3)))[0]  # random orthonormal axes
    center = size / 2 + rng.uniform(-0.12, 0.12, (n, 3)) * size
    semi = extent[:, None] * np.exp(np.stack([aspect / 2, 0 * aspect, -aspect / 2], 1))

    coords = np.stack(np.mgrid[0:size, 0:size, 0:size], -1).astype(np.float64)
    images = np.empty((n, 1, size, size, size))
    masks = np.empty((n, 1, size, size, size))
    for i in range(n):
        local = (coords - center[i]) @ rotation[i] / semi[i]
        r = np.sqrt((local ** 2).sum(-1))
        images[i, 0], masks[i, 0] = _render(r, brightness[i], rng, size, noise, texture)
    return _labelled(images, masks, brightness, extent, aspect, rule, positive_fraction)


@dataclass
class DigitsSplit:
    """Train/test split of scikit-learn digits; labels index into ``classes``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple


def digits_pair(
    classes: Sequence[int] = (3, 8),
    size: int = 32,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> DigitsSplit:
    """Real handwritten digits (scikit-learn's bundled 8x8 set), upsampled to ``size``.

    Images are ``(N, 1, size, size)`` in [0, 1] (bilinear upsampling). Labels are the index
    of the digit in ``classes`` (so a model with ``len(classes)`` outputs fits them); two
    classes give the paper's binary pair, more give a multi-class set. The split is
    stratified and seeded.

    Examples::

        >>> from captum_gradflow import digits_pair
        >>> d = digits_pair((3, 8), size=32)
        >>> d.x_train.shape[1:], sorted(set(d.y_train.tolist()))
        (torch.Size([1, 32, 32]), [0, 1])
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
        raise ValueError(f"size must be a positive int (pixels per side), got {size!r}")
    classes = tuple(int(c) for c in classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must name at least 2 distinct digits, got {classes}")
    if any(not 0 <= c <= 9 for c in classes):
        raise ValueError(f"digits are 0..9, got {classes}")
    digits = load_digits()
    keep = np.isin(digits.target, classes)
    x = torch.as_tensor(digits.images[keep] / 16.0, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    lookup = {c: i for i, c in enumerate(classes)}
    y = torch.as_tensor([lookup[int(t)] for t in digits.target[keep]], dtype=torch.long)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return DigitsSplit(x[idx_train], y[idx_train], x[idx_test], y[idx_test], classes)
