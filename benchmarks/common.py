"""Shared timing and model construction for the benchmark modules.

Each benchmark module ``benchmarks/bench_<topic>.py`` exposes
``run(quick=False, device="cpu", model_name="small_cnn", batch=16, size=128) -> list[dict]``
returning rows made with :func:`row`, and prints them when run as a script.
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from captum_gradflow.models import SmallCNN


def keep_freed_memory() -> str:
    """Make glibc's allocator keep freed memory in this process; returns what was done.

    glibc's defaults hand a CNN's large buffers back to the operating system after every pass;
    the page faults that follow cost more than the arithmetic on a virtual machine, and how
    many there are depends on what ran before, so ratios swung from run to run (figures in
    benchmarks/README.md). The README's "Speed on CPU" section recommends the same kind of
    setting to users, through environment variables; ``mallopt`` changes only this process,
    so the evaluation rows' worker processes keep glibc's defaults.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.libc_ver()[0] != "glibc" or not name:
        return "unchanged (not glibc)"
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    trim_ok = libc.mallopt(m_trim_threshold, 2 ** 31 - 1)
    mmap_ok = libc.mallopt(m_mmap_threshold, 32 * 2 ** 20)  # fixed; the default adapts from 128 KiB
    if not (trim_ok and mmap_ok):
        return "unchanged (mallopt refused)"
    return "glibc, freed memory kept (M_TRIM_THRESHOLD 2 GiB, M_MMAP_THRESHOLD 32 MiB)"


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_side_by_side(
    fns: Sequence[Callable[[], object]],
    repeats: int = 7,
    warmup: int = 2,
    device: str = "cpu",
) -> List[float]:
    """Median wall time in ms of each function, interleaved so drift hits all alike.

    Odd repeats run the functions in reverse order: what runs just before a function (the
    allocator's free lists, caches) shifted a pair's ratio by up to 0.1 on two CPU cores,
    and alternating the order gives each function each neighbour equally often.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
            sync(device)
    samples: List[List[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(repeats):
        for k in (order if r % 2 == 0 else order[::-1]):
            sync(device)
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            samples[k].append((time.perf_counter() - t0) * 1000.0)
    return [statistics.median(s) for s in samples]


def row(
    name: str,
    ours_ms: float,
    base_ms: float,
    target: Optional[float],
    model: str,
    batch: int,
    size: int,
    device: str,
    note: str = "",
) -> Dict[str, object]:
    """One result row; ``ratio = ours_ms / base_ms`` is compared with ``target`` (lower is better)."""
    ratio = ours_ms / base_ms
    return {
        "name": name, "model": model, "batch": batch, "size": size, "device": device,
        "ours_ms": round(ours_ms, 3), "base_ms": round(base_ms, 3), "ratio": round(ratio, 4),
        "target": target, "ok": None if target is None else bool(ratio <= target), "note": note,
    }


def import_torchvision():
    """torchvision, with the CPU workaround of tests/conftest.py, or ``None``."""
    try:
        from tests.conftest import define_missing_torchvision_ops

        define_missing_torchvision_ops()
        import torchvision

        return torchvision
    except Exception:  # any failure means: no ResNet-18 rows, not a crash
        return None


def make_model(name: str, num_classes: int = 2, in_channels: int = 1, device: str = "cpu") -> Optional[nn.Module]:
    """``"small_cnn"`` (the paper's model) or ``"resnet18"`` (random weights, torchvision)."""
    torch.manual_seed(0)
    if name == "small_cnn":
        model = SmallCNN(in_channels=in_channels, num_classes=num_classes)
    elif name == "resnet18":
        tv = import_torchvision()
        if tv is None:
            return None
        model = tv.models.resnet18(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    else:
        raise ValueError(f"unknown model {name!r}")
    return model.to(device).eval()


def lesion_batch(model_name: str, batch: int, size: int, device: str = "cpu"):
    """``(model, x, masks, target)`` for one batch of synthetic lesions, or ``None``.

    ResNet-18 takes three channels, so the grey images are repeated across them.
    """
    from captum_gradflow.datasets import synthetic_lesions

    channels = 3 if model_name == "resnet18" else 1
    model = make_model(model_name, num_classes=2, in_channels=channels, device=device)
    if model is None:
        return None
    data = synthetic_lesions(batch, size=size, seed=0)
    x = data.images.expand(-1, channels, -1, -1).contiguous().to(device)
    return model, x, data.masks.to(device), data.labels.to(device)
