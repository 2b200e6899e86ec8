"""Dataset-scale evaluation: scaling over processes, memory over data set size, runner overhead.

Rows (``ratio = ours / base``, lower is better):

* ``evaluate_2_processes_vs_1``: seconds per example of ``torchrun --nproc_per_node=2 -m
  captum_gradflow evaluate`` against one process, one torch thread each
  (``OMP_NUM_THREADS=1``). Each is timed on ``n`` and ``2n`` examples (``n`` = 64 batches,
  16 quick) and the difference is used, so process start-up (importing torch, building the
  model) does not count; median of 3 interleaved repeats (1 quick). Target 0.625 (two
  processes at least 1.6x faster). Two processes need two idle cores: other jobs on the
  machine lower the speed-up.
* ``evaluate_peak_memory_10x_examples``: peak resident memory (MiB, whole process, from
  ``getrusage(RUSAGE_CHILDREN)`` of a wrapper that runs the command) for 80 batches of
  examples against 8; target 1.3. Items are generated on demand, so only the runner could
  make memory grow with the data set.
* ``evaluate_runner_vs_by_hand``: :func:`captum_gradflow.evaluate` (streaming, parquet parts,
  merge, summary) against calling ``FeatureAlignment.compare_to_noise`` and ``joint`` by
  hand on the same batches (8, 2 quick; one torch thread); target 1.1.

The recipe (written to a temporary folder) builds the benchmark's model and a lazily
generated synthetic-lesion data set of the benchmark's image size.

Run: ``python -m benchmarks.bench_evaluate [--quick]``.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from benchmarks.common import make_model, row, time_side_by_side

ROOT = Path(__file__).resolve().parents[1]
N_NOISE = 32

RECIPE = '''
import os
import torch
from benchmarks.common import make_model
from captum_gradflow import Brightness, Extent, LogAspectRatio, synthetic_lesions

SIZE = int(os.environ["BENCH_SIZE"])


class LazyLesions(torch.utils.data.Dataset):
    """Item i is generated from seed i when read: memory does not grow with the length."""

    def __init__(self, n, channels):
        self.n, self.channels = n, channels

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        d = synthetic_lesions(2, size=SIZE, seed=i)
        return d.images[0].expand(self.channels, -1, -1).contiguous(), d.labels[0], d.masks[0]


def model():
    return make_model(os.environ["BENCH_MODEL"], in_channels=int(os.environ["BENCH_CHANNELS"]))


def dataset():
    return LazyLesions(int(os.environ["BENCH_N"]), int(os.environ["BENCH_CHANNELS"]))


def features():
    return [Brightness(), Extent(), LogAspectRatio()]
'''


def _command(recipe: Path, out: Path, procs: int, batch: int) -> List[str]:
    args = ["-m", "captum_gradflow", "evaluate", str(recipe), "--out", str(out), "--batch-size",
            str(batch), "--n-noise", str(N_NOISE), "--no-progress"]
    if procs == 1:
        return [sys.executable, *args]
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={procs}", *args]


def _env(model_name: str, n: int, size: int) -> Dict[str, str]:
    channels = 3 if model_name == "resnet18" else 1
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore",
                BENCH_MODEL=model_name, BENCH_N=str(n), BENCH_SIZE=str(size), BENCH_CHANNELS=str(channels))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # torchrun's workers included
    return usage.ru_utime + usage.ru_stime


def _run(cmd: Sequence[str], env: Dict[str, str]) -> Tuple[float, float]:
    """Wall and CPU seconds of one command (which must succeed)."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    proc = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, _cpu_seconds() - c0


def _peak_mib(cmd: Sequence[str], env: Dict[str, str]) -> float:
    """Peak resident memory of ``cmd`` (its largest process), in MiB."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)
    return int(proc.stdout.strip()) / 1024.0  # ru_maxrss is in KiB on Linux


def _per_example_seconds(recipe: Path, tmp: Path, n: int, model_name: str, size: int, batch: int,
                         repeats: int) -> Dict[Tuple[int, int], float]:
    """Wall and CPU seconds per example of 1 and 2 processes, keyed ``(procs, 0 wall | 1 cpu)``:
    the median over ``repeats`` of the difference between runs on 2n and n examples (start-up
    cancels out). Runs are interleaved so load from other jobs hits both alike."""
    samples: Dict[Tuple[int, int], List[float]] = {(p, k): [] for p in (1, 2) for k in (0, 1)}
    for r in range(repeats):
        for procs in ((1, 2) if r % 2 == 0 else (2, 1)):
            t = [_run(_command(recipe, tmp / f"scale_{r}_{procs}_{k}", procs, batch), _env(model_name, k, size))
                 for k in (n, 2 * n)]
            for k in (0, 1):
                samples[(procs, k)].append((t[1][k] - t[0][k]) / n)
    return {key: statistics.median(v) for key, v in samples.items()}


def _by_hand_vs_runner(model_name: str, batch: int, size: int, n_batches: int, repeats: int,
                       tmp: Path) -> List[float]:
    from captum_gradflow import Brightness, Extent, FeatureAlignment, LogAspectRatio, evaluate, synthetic_lesions

    channels = 3 if model_name == "resnet18" else 1
    model = make_model(model_name, in_channels=channels)
    data = synthetic_lesions(max(2, batch * n_batches), size=size, seed=0)
    x = data.images.expand(-1, channels, -1, -1).contiguous()
    ds = torch.utils.data.TensorDataset(x, data.labels, data.masks)
    feats = [Brightness(), Extent(), LogAspectRatio()]
    batches = [(x[i:i + batch], data.labels[i:i + batch], data.masks[i:i + batch])
               for i in range(0, len(ds), batch)]
    runs = iter(range(10 ** 6))

    def by_hand() -> None:
        fa = FeatureAlignment(model, feats)  # one per evaluation, as the runner builds one
        for xb, yb, mb in batches:
            fa.compare_to_noise(xb, target=yb, mask=mb, n_noise=N_NOISE, seed=0, joint=True)  # S, noise, J

    def runner() -> None:
        evaluate(model, ds, feats, tmp / f"runner_{next(runs)}", batch_size=batch, n_noise=N_NOISE,
                 progress=False)

    # One thread, as in the process runs: two threads on two shared cores made single timings
    # swing by 3x either way.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return time_side_by_side([runner, by_hand], repeats=repeats, warmup=1)
    finally:
        torch.set_num_threads(threads)


def run(quick: bool = False, device: str = "cpu", model_name: str = "small_cnn", batch: int = 16,
        size: int = 128) -> List[Dict[str, object]]:
    if device != "cpu" or model_name != "small_cnn":
        return []  # a CPU-process topic: torchrun on CUDA needs one GPU per process
    # Enough examples that the computation, not the start-up, dominates each run.
    n = 16 * batch if quick else 64 * batch
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp_name:
        tmp = Path(tmp_name)
        recipe = tmp / "recipe.py"
        recipe.write_text(RECIPE)
        sec = _per_example_seconds(recipe, tmp, n, model_name, size, batch, 1 if quick else 3)
        one, two = sec[(1, 0)], sec[(2, 0)]
        rows.append(row("evaluate_2_processes_vs_1", two * 1000.0, one * 1000.0, 1 / 1.6, model_name,
                        batch, size, device, note=f"ms per example from {n} and {2 * n} examples, "
                        f"OMP_NUM_THREADS=1; speed-up {one / two:.2f}x; CPU ms per example "
                        f"{sec[(1, 1)] * 1000:.2f} (1 process) vs {sec[(2, 1)] * 1000:.2f} (2); "
                        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"))
        n = 8 * batch
        small = _peak_mib(_command(recipe, tmp / "mem_1", 1, batch), _env(model_name, n, size))
        large = _peak_mib(_command(recipe, tmp / "mem_10", 1, batch), _env(model_name, 10 * n, size))
        rows.append(row("evaluate_peak_memory_10x_examples", large, small, 1.3, model_name, batch, size,
                        device, note=f"peak RSS MiB, {10 * n} vs {n} examples (ours_ms/base_ms hold MiB)"))
        runner, hand = _by_hand_vs_runner(model_name, batch, size, 2 if quick else 8,
                                          3 if quick else 7, tmp)
        rows.append(row("evaluate_runner_vs_by_hand", runner, hand, 1.1, model_name, batch, size, device,
                        note="evaluate() with parquet parts, merge and summary vs compare_to_noise + "
                        "joint on the same batches"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
