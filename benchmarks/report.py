"""Rendering of benchmark rows: the markdown tables, the list of misses, and the JSON file.

Kept apart from :mod:`benchmarks.run` so the table logic can be tested on hand-made rows
without importing or running any benchmark module.

Rows are the dicts of :func:`benchmarks.common.row`, to which the runner adds ``topic``,
``config`` (``"main"``, ``"batch"`` or ``"size"``: which point of the plan produced it) and
``quick`` (whether the module ran with its quick settings).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

Row = Mapping[str, object]

__all__ = [
    "MAIN",
    "fmt_ms",
    "fmt_target",
    "render_markdown",
    "main_rows",
    "render_main_table",
    "render_scaling_table",
    "scaling_pairs",
    "checked_rows",
    "misses",
    "describe",
    "write_json",
]

MAIN = "main"
"""Config label of the rows measured at the default batch and image size."""

PASS, FAIL, NONE = "✓", "✗", "—"

BUSY_CPUS = 0.25
"""Mean CPUs used by other processes above which the report warns that timings are noisy."""


def fmt_ms(ms: float) -> str:
    """Milliseconds with about three significant digits, wide enough for GPU and CPU alike."""
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_target(target: Optional[float]) -> str:
    return NONE if target is None else f"≤ {target:g}"


def _mark(row: Row) -> str:
    ok = row.get("ok")
    return NONE if ok is None else (PASS if ok else FAIL)


def _cell(text: object) -> str:
    # A "|" inside a note would split the markdown cell.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _identity(row: Row) -> Tuple[str, str, str]:
    return (str(row.get("topic", "")), str(row.get("model", "")), str(row.get("name", "")))


def main_rows(rows: Sequence[Row]) -> List[Row]:
    """Rows of the main point, in run order. Where a topic ran a model's main point with full
    and with quick settings (the quick run is the scaling reference), only the full rows:
    quick settings may change a row's workload and name (fewer epochs or steps)."""
    def topic_model(r: Row) -> Tuple[str, str]:
        return (str(r.get("topic", "")), str(r.get("model", "")))

    full = {topic_model(r) for r in rows if r.get("config", MAIN) == MAIN and not r.get("quick")}
    # Run order (topic list, then model) reads better than alphabetical order.
    return [r for r in rows if r.get("config", MAIN) == MAIN
            and not (r.get("quick") and topic_model(r) in full)]


def render_main_table(rows: Sequence[Row]) -> str:
    """One line per benchmark at the default batch and size: absolute times, ratio vs target."""
    lines = [
        "| topic | benchmark | model | settings | batch | px | ours ms | base ms | ratio | target "
        "| ok | note |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|:-:|---|",
    ]
    for r in main_rows(rows):
        lines.append(
            f"| {_cell(r.get('topic', ''))} | {_cell(r['name'])} | {_cell(r['model'])} "
            f"| {'quick' if r.get('quick') else 'full'} | {r['batch']} "
            f"| {r['size']} | {fmt_ms(float(r['ours_ms']))} | {fmt_ms(float(r['base_ms']))} "
            f"| {float(r['ratio']):.3f} | {fmt_target(r['target'])} | {_mark(r)} "
            f"| {_cell(r.get('note', ''))} |"
        )
    return "\n".join(lines)


def scaling_pairs(rows: Sequence[Row]) -> List[Tuple[str, Row, Row]]:
    """``(axis, smaller, main)`` for every benchmark measured both at a scaling point and at main.

    Rows are matched on (topic, model, name, quick settings or not) and, when a module reports
    several rows of one name, on their order within the run.
    """
    def index(config: str) -> Dict[Tuple[object, ...], Row]:
        seen: Dict[Tuple[object, ...], int] = {}
        out: Dict[Tuple[object, ...], Row] = {}
        for r in rows:
            if r.get("config", MAIN) != config:
                continue
            key = _identity(r) + (bool(r.get("quick")),)
            k = seen.get(key, 0)
            seen[key] = k + 1
            out[key + (k,)] = r
        return out

    main = index(MAIN)
    points = {axis: index(axis) for axis in ("batch", "size")}
    # In the main table's order, each benchmark's batch point then its size point.
    return [(axis, points[axis][key], m)
            for key, m in main.items() for axis in points if key in points[axis]]


def _growth(a: float, b: float) -> str:
    return f"×{b / a:.2f}" if a > 0 else NONE


def render_scaling_table(rows: Sequence[Row]) -> str:
    """How ours, base and their ratio change from the smaller batch (or image) to the main one."""
    pairs = scaling_pairs(rows)
    if not pairs:
        return ""
    lines = [
        "| topic | benchmark | model | grows | from → to | ours ms | base ms | ours growth "
        "| base growth | ratio | target | ok |",
        "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for axis, s, m in pairs:
        # The module may ignore batch/size for a row (e.g. a fixed 224 px map): the row's own
        # fields say what was measured, so show them rather than the plan's.
        span = f"{s[axis]} → {m[axis]}"
        ok = NONE if s.get("ok") is None and m.get("ok") is None else (
            PASS if s.get("ok") is not False and m.get("ok") is not False else FAIL)
        lines.append(
            f"| {_cell(s.get('topic', ''))} | {_cell(s['name'])} | {_cell(s['model'])} "
            f"| {axis} | {span} "
            f"| {fmt_ms(float(s['ours_ms']))} → {fmt_ms(float(m['ours_ms']))} "
            f"| {fmt_ms(float(s['base_ms']))} → {fmt_ms(float(m['base_ms']))} "
            f"| {_growth(float(s['ours_ms']), float(m['ours_ms']))} "
            f"| {_growth(float(s['base_ms']), float(m['base_ms']))} "
            f"| {float(s['ratio']):.3f} → {float(m['ratio']):.3f} "
            f"| {fmt_target(s['target'])} | {ok} |"
        )
    return "\n".join(lines)


def checked_rows(rows: Sequence[Row]) -> List[Row]:
    """The rows ``--check`` reads: the main table's, where the targets are stated (batch 16,
    128 px). Scaling points show their ratio against the target for information only: they
    run with quick settings and measure how costs grow, not the target configuration."""
    return main_rows(rows)


def misses(rows: Sequence[Row]) -> List[Row]:
    """Checked rows whose ratio is above their target (rows without a target never miss)."""
    return [r for r in checked_rows(rows) if r.get("ok") is False]


def describe(row: Row) -> str:
    """One line naming a row and how far it is from its target."""
    return (f"{row.get('topic', '?')}: {row['name']} [{row['model']}, batch {row['batch']}, "
            f"{row['size']} px, {row.get('config', MAIN)}] ratio {float(row['ratio']):.3f} "
            f"> target {row['target']}")


def _busy_warning(meta: Mapping[str, object]) -> List[str]:
    """A warning line when other processes competed for the CPU during the run.

    On a few cores, a second busy process makes torch's worker threads wait on each other:
    single calls then take several times longer, often by a near-constant amount, which
    distorts ratios. ``other_cpu_load`` is the mean number of CPUs other processes (and, on a
    virtual machine, its neighbours) kept busy during the run.
    """
    other = meta.get("other_cpu_load")
    if other is None or float(other) < BUSY_CPUS:
        return []
    return ["", f"**Warning: other processes kept {other} of {meta.get('cpu_count', '?')} CPUs "
                "busy on average during this run: timings are unreliable; re-run on a quiet "
                "machine.**"]


def render_markdown(
    rows: Sequence[Row],
    meta: Mapping[str, object],
    notes: Sequence[str] = (),
) -> str:
    """The whole report: header with date and machine, main table, scaling table, notes, misses."""
    mode = "quick" if meta.get("quick") else "full"
    header = [
        f"## Benchmarks ({mode}, {meta.get('date', '?')})",
        "",
        f"Machine: {meta.get('machine', '?')}; "
        f"device: {meta.get('device', '?')} ({meta.get('device_name', '?')}); "
        f"torch {meta.get('torch', '?')}, captum {meta.get('captum', '?')}; "
        f"other processes' mean CPU use during the run {meta.get('other_cpu_load', '?')}; "
        f"load average at start {meta.get('loadavg_start', '?')}, "
        f"at end {meta.get('loadavg_end', '?')}; allocator: {meta.get('allocator', 'default')}.",
        *_busy_warning(meta),
        "",
        "Ratio = ours / base (lower is better), medians after warm-up; times in ms. Settings: "
        "`full` = the module's full repeats and workload, `quick` = its quick ones.",
        "",
        render_main_table(rows),
    ]
    scaling = render_scaling_table(rows)
    if scaling:
        header += ["", "### Scaling (smaller batch or image → main)", "",
                   "Ours, base and ratio at the smaller point → the main point, with the same "
                   "settings; the ok column is for information (`--check` reads the main table).",
                   "", scaling]
    if notes:
        header += ["", "### Notes", ""] + [f"- {_cell(n)}" for n in notes]
    missed = misses(rows)
    n_checked = sum(r.get("ok") is not None for r in checked_rows(rows))
    header += ["", f"{len(missed)} of {n_checked} ratios of the main table miss their target."]
    header += [f"- {describe(r)}" for r in missed]
    return "\n".join(header) + "\n"


def write_json(path: Path, rows: Sequence[Row], meta: Mapping[str, object],
               notes: Sequence[str] = (), runs: Sequence[Row] = ()) -> None:
    """``{"meta", "rows", "runs", "notes"}`` as indented JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "rows": [dict(r) for r in rows],
               "runs": [dict(r) for r in runs], "notes": list(notes)}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
