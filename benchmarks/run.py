"""Run every speed benchmark side by side and report each ratio next to its target.

Usage::

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--check] [--only TOPIC ...] [--out PATH]

Each topic module ``benchmarks/bench_<topic>.py`` (fixed list :data:`TOPICS`) is imported; one
that fails to import is skipped with a note. Each is run on the paper's small CNN and on the
ResNet-18-shaped model (skipped with a note where torchvision cannot import) at the main batch
and image size (16, 128 px), and, to show how costs grow, at half the batch and half the image
side, on the small CNN (see :func:`build_plan` for which points use the modules' quick
settings). Warm-up and medians happen inside the modules
(:func:`benchmarks.common.time_side_by_side`).

Writes the rows and the machine's description to ``--out`` (default ``benchmarks/results.json``)
and the markdown report beside it (``.md``), prints the report, and with ``--check`` exits 1
when a ratio of the main table misses its target or a module failed (0 otherwise, and always
0 without ``--check``; 2 when CUDA is asked for and absent).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import inspect
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

import torch

from benchmarks.common import keep_freed_memory
from benchmarks.report import MAIN, describe, misses, render_markdown, write_json

__all__ = ["TOPICS", "MODELS", "CONTRACT", "Config", "build_plan", "contract_problems",
           "load_topics", "run_all", "machine_info", "other_cpu_load", "main"]

TOPICS: Tuple[str, ...] = ("alignment", "flow", "regularizer", "gad", "metrics", "evaluate")
"""The topic modules, in report order: ``benchmarks.bench_<topic>``."""

MODELS: Tuple[str, ...] = ("small_cnn", "resnet18")

CONTRACT: Tuple[Tuple[str, object], ...] = (
    ("quick", False), ("device", "cpu"), ("model_name", "small_cnn"), ("batch", 16), ("size", 128),
)
"""Parameters (name, default), in order, that every topic module's ``run`` must take."""

ROW_KEYS = ("name", "model", "batch", "size", "device", "ours_ms", "base_ms", "ratio", "target",
            "ok", "note")

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"

RunFn = Callable[..., List[Dict[str, object]]]


@dataclass(frozen=True)
class Config:
    """One point of the plan: which model, batch and image size, why, and with which settings."""

    model: str
    batch: int
    size: int
    label: str  # MAIN, or the scaling axis that was halved: "batch" / "size"
    quick: bool  # passed to the module: few repeats and lighter settings


def build_plan(models: Sequence[str], quick: bool, batch: int = 16, size: int = 128,
               scaling: bool = True, all_full: bool = False) -> List[Config]:
    """Main point for every model, then the scaling points (half batch, half image side).

    ``quick``: every point with the modules' quick settings, scaling on the small CNN only,
    so ``make bench`` stays within a few minutes on two cores.

    Full mode spends its time where the targets are read: the small CNN's main point runs the
    modules' full settings; its scaling points (growth factors, not target-grade medians) and
    ResNet-18 (several times the small CNN's cost per pass on CPU) run the quick settings,
    and ResNet-18 is not scaled. ``all_full`` (the default on CUDA, where ResNet-18 is cheap)
    runs every point with full settings and scales ResNet-18 too: about half an hour on two
    CPU cores.
    """
    def point_quick(model: str, label: str) -> bool:
        if quick:
            return True
        return not (all_full or (model == "small_cnn" and label == MAIN))

    plan = [Config(m, batch, size, MAIN, point_quick(m, MAIN)) for m in models]
    if scaling:
        for m in models:
            if m != "small_cnn" and (quick or not all_full):
                continue
            q = point_quick(m, "batch")
            if q != point_quick(m, MAIN):
                # Growth factors must compare like with like (quick settings change repeats
                # and, in some modules, the workload): a main point with the scaling settings.
                plan.append(Config(m, batch, size, MAIN, q))
            plan.append(Config(m, max(1, batch // 2), size, "batch", q))
            plan.append(Config(m, batch, max(8, size // 2), "size", q))
    return plan


def contract_problems(fn: object) -> List[str]:
    """Ways ``fn`` departs from ``run(quick=False, device="cpu", model_name="small_cnn", batch=16,
    size=128)``; empty when it conforms. Extra parameters are allowed if they have defaults."""
    if not callable(fn):
        return ["run is not callable"]
    params = list(inspect.signature(fn).parameters.values())
    problems = []
    for k, (name, default) in enumerate(CONTRACT):
        if k >= len(params) or params[k].name != name:
            got = params[k].name if k < len(params) else "nothing"
            problems.append(f"parameter {k + 1} should be {name!r}, got {got}")
        elif params[k].default is inspect.Parameter.empty or params[k].default != default:
            problems.append(f"{name!r} should default to {default!r}")
    for p in params[len(CONTRACT):]:
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            problems.append(f"extra parameter {p.name!r} has no default")
    return problems


def load_topics(names: Sequence[str]) -> Tuple[Dict[str, RunFn], List[str]]:
    """``{topic: run}`` for the modules that import and expose ``run``; failures as messages."""
    topics: Dict[str, RunFn] = {}
    failures: List[str] = []
    for name in names:
        module_name = f"benchmarks.bench_{name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken module must not stop the others
            failures.append(f"{name}: skipped, {module_name} failed to import: "
                            f"{type(exc).__name__}: {exc}")
            continue
        fn = getattr(module, "run", None)
        problems = contract_problems(fn) if fn is not None else ["no run()"]
        if fn is None:
            failures.append(f"{name}: skipped, {module_name} has no run()")
            continue
        if problems:
            # Still run it: the call passes keywords only, so a reordering alone does no harm.
            failures.append(f"{name}: run() departs from the contract: {'; '.join(problems)}")
        topics[name] = fn
    return topics, failures


def _valid_rows(out: object) -> Tuple[List[Dict[str, object]], Optional[str]]:
    if not isinstance(out, list):
        return [], f"returned {type(out).__name__}, not a list of rows"
    good, bad = [], 0
    for r in out:
        if isinstance(r, dict) and all(k in r for k in ROW_KEYS):
            good.append(dict(r))
        else:
            bad += 1
    if bad:
        return good, f"{bad} row(s) lack the keys of common.row"
    return good, None


def run_all(
    topics: Mapping[str, RunFn],
    plan: Sequence[Config],
    device: str,
    log: TextIO = sys.stderr,
) -> Tuple[List[Dict[str, object]], List[Dict[str, object]], List[str], List[str]]:
    """Run every topic at every plan point. Returns ``(rows, runs, failures, notes)``.

    ``runs`` says per (topic, point) how long it took and whether it worked; a run that raises
    becomes a failure message and the next one starts.
    """
    rows: List[Dict[str, object]] = []
    runs: List[Dict[str, object]] = []
    failures: List[str] = []
    notes: List[str] = []
    for topic, fn in topics.items():
        for cfg in plan:
            settings = ", quick" if cfg.quick else ""
            where = f"{topic} [{cfg.model}, batch {cfg.batch}, {cfg.size} px{settings}]"
            print(f"{where} ...", end="", file=log, flush=True)
            torch.manual_seed(0)  # each run starts from the same state, whatever ran before
            t0 = time.perf_counter()
            status = "ok"
            try:
                out = fn(quick=cfg.quick, device=device, model_name=cfg.model, batch=cfg.batch,
                         size=cfg.size)
                got, problem = _valid_rows(out)
                if problem:
                    status = "contract"
                    failures.append(f"{where}: {problem}")
                elif not got:
                    # A module may decline a point (its model cannot be built): a note only.
                    status = "empty"
                    notes.append(f"{where}: returned no rows")
            except Exception as exc:  # report and go on with the other runs
                got, status = [], "error"
                last = traceback.extract_tb(exc.__traceback__)[-1]
                failures.append(f"{where}: failed: {type(exc).__name__}: {exc} "
                                f"({Path(last.filename).name}:{last.lineno})")
            seconds = time.perf_counter() - t0
            print(f" {seconds:.1f} s, {len(got)} rows{'' if status == 'ok' else ', ' + status}",
                  file=log, flush=True)
            for r in got:
                r["topic"], r["config"], r["quick"] = topic, cfg.label, cfg.quick
                rows.append(r)
            runs.append({**asdict(cfg), "topic": topic, "seconds": round(seconds, 2),
                         "status": status, "rows": len(got)})
    return rows, runs, failures, notes


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _cpu_snapshot() -> Optional[Tuple[float, float, float]]:
    """(CPU seconds all processes spent busy, of which this process, wall time); Linux only.

    Busy includes steal: time a virtual machine's neighbours took from its CPUs.
    """
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
    busy = sum(fields[:3]) + sum(fields[5:8])
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()


def other_cpu_load(start: Optional[Tuple[float, float, float]],
                   end: Optional[Tuple[float, float, float]]) -> Optional[float]:
    """Mean number of CPUs kept busy by other processes between two snapshots.

    The load average cannot say this: it counts the benchmark's own threads.
    """
    if start is None or end is None or end[2] <= start[2]:
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return round(max(0.0, others) / (end[2] - start[2]), 2)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str) -> Dict[str, object]:
    """Date, machine, device and library versions: what a reader needs to compare two tables."""
    import captum

    import captum_gradflow

    if str(device).startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = _cpu_name()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {_cpu_name()}, "
                   f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "captum": captum.__version__,
        "captum_gradflow": captum_gradflow.__version__,
        "git_commit": _git_commit(),
        "loadavg_start": _loadavg(),
    }


def _parse(argv: Optional[Sequence[str]], choices: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="the modules' quick settings; scaling on the small CNN only")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a ratio of the main table misses its target or a module fails")
    p.add_argument("--only", nargs="+", choices=list(choices), metavar="TOPIC",
                   help=f"run only these topics ({', '.join(choices)})")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                   help="models to run (default both)")
    p.add_argument("--batch", type=int, default=16, help="main batch size (scaling uses half)")
    p.add_argument("--size", type=int, default=128,
                   help="main image side in px (scaling uses half)")
    p.add_argument("--no-scaling", action="store_true", help="only the main batch and size")
    p.add_argument("--all-full", action="store_true",
                   help="without --quick: full settings at every point, ResNet-18 scaled too "
                        "(default on CUDA)")
    p.add_argument("--default-allocator", action="store_true",
                   help="leave glibc's allocator at its defaults (by default freed memory is "
                        "kept: see benchmarks.common.keep_freed_memory)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="JSON file to write (default benchmarks/results.json); the markdown "
                        "report goes beside it")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, topics: Optional[Mapping[str, RunFn]] = None) -> int:
    """Command-line entry point; ``topics`` replaces the imported modules (used by the tests)."""
    args = _parse(argv, list(topics) if topics is not None else TOPICS)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    allocator = "default" if args.default_allocator else keep_freed_memory()
    t_start = time.perf_counter()
    cpu_start = _cpu_snapshot()
    meta = machine_info(args.device)
    meta["allocator"] = allocator
    meta.update(quick=args.quick, check=args.check,
                argv=list(sys.argv[1:] if argv is None else argv))

    failures: List[str] = []
    notes: List[str] = []
    if topics is None:
        loaded, failures = load_topics(args.only or TOPICS)
    else:
        loaded = {k: v for k, v in topics.items() if not args.only or k in args.only}

    models = list(args.models)
    if "resnet18" in models:
        from benchmarks.common import import_torchvision

        if import_torchvision() is None:
            models.remove("resnet18")
            notes.append("resnet18: skipped, torchvision cannot be imported here")
    all_full = args.all_full or str(args.device).startswith("cuda")
    plan = build_plan(models, args.quick, args.batch, args.size, scaling=not args.no_scaling,
                      all_full=all_full)

    meta["plan"] = [asdict(c) for c in plan]
    rows, runs, run_failures, run_notes = run_all(loaded, plan, args.device)
    failures += run_failures
    notes += run_notes
    meta["loadavg_end"] = _loadavg()
    meta["other_cpu_load"] = other_cpu_load(cpu_start, _cpu_snapshot())
    meta["seconds"] = round(time.perf_counter() - t_start, 1)

    all_notes = [f"FAILED {f}" for f in failures] + notes + [f"total time {meta['seconds']} s"]
    text = render_markdown(rows, meta, all_notes)
    write_json(args.out, rows, meta, all_notes, runs)
    Path(args.out).with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)

    if not args.check:
        return 0
    missed = misses(rows)
    if missed or failures:
        print(f"--check: {len(missed)} ratio(s) missed their target, "
              f"{len(failures)} failure(s):", file=sys.stderr)
        for r in missed:
            print(f"  {describe(r)}", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
