"""The benchmark runner's logic: plan, tables, JSON, ``--check`` exit codes, topic contract.

The heavy benchmarks never run here: the runner is fed small topic functions whose rows come
from real timings of tiny torch operations, so the rendering sees genuine numbers.
"""
from __future__ import annotations

import importlib
import inspect
import json
from typing import Dict, List, Optional

import pytest
import torch

from benchmarks import report
from benchmarks import run as run_module
from benchmarks.common import row, time_side_by_side
from benchmarks.run import (
    CONTRACT,
    MAIN,
    TOPICS,
    build_plan,
    contract_problems,
    main,
    other_cpu_load,
)

PASS_TARGET = 1e9  # no real ratio exceeds this
FAIL_TARGET = 1e-9  # every real ratio exceeds this


def _tiny_timings(n: int) -> List[float]:
    """Median ms of a small and a larger matmul: real, fast (a few ms in all)."""
    a, b = torch.randn(n, n), torch.randn(2 * n, 2 * n)
    return time_side_by_side([lambda: a @ a, lambda: b @ b], repeats=3, warmup=1)


def _row(name: str, ours: float, base: float, target: Optional[float], batch: int = 16,
         size: int = 128, config: str = MAIN, quick: bool = False, note: str = "") -> Dict:
    """A row as the runner stores it: ``common.row`` plus topic, config and settings."""
    r = row(name, ours, base, target, "small_cnn", batch, size, "cpu", note=note)
    return dict(r, topic="t", config=config, quick=quick)


def make_topic(target: float, calls: Optional[List[Dict[str, object]]] = None):
    """A topic ``run`` honouring the contract; its cost grows with batch and size like real ones."""

    def run(quick=False, device="cpu", model_name="small_cnn", batch=16, size=128):
        if calls is not None:
            calls.append(dict(quick=quick, device=device, model_name=model_name, batch=batch,
                              size=size))
        ours, base = _tiny_timings(max(4, batch * size // 64))
        return [row("tiny matmul", ours, base, target, model_name, batch, size, device,
                    note="a|b")]

    return run


def test_contract_problems_accepts_the_contract_and_names_departures():
    def good(quick=False, device="cpu", model_name="small_cnn", batch=16, size=128, extra=3):
        return []

    def bad(quick=False, device="cuda", model_name="small_cnn", size=128, batch=16, must=1):
        return []

    def missing(quick=False, device="cpu"):
        return []

    def needs_arg(quick=False, device="cpu", model_name="small_cnn", batch=16, size=128, *, must):
        return []

    assert contract_problems(good) == []
    problems = contract_problems(bad)
    assert any("'device' should default to 'cpu'" in p for p in problems)
    assert any("parameter 4 should be 'batch'" in p for p in problems)
    assert len(contract_problems(missing)) == 3
    assert contract_problems(needs_arg) == ["extra parameter 'must' has no default"]


@pytest.mark.parametrize("topic", TOPICS)
def test_topic_module_imports_and_exposes_run(topic):
    module = importlib.import_module(f"benchmarks.bench_{topic}")
    assert callable(module.run)
    assert contract_problems(module.run) == []
    params = list(inspect.signature(module.run).parameters.values())
    assert [(p.name, p.default) for p in params[: len(CONTRACT)]] == list(CONTRACT)


def _points(plan):
    return {(c.model, c.batch, c.size, c.label, c.quick) for c in plan}


def test_plan_quick_mode_scales_only_the_small_cnn():
    plan = build_plan(["small_cnn", "resnet18"], quick=True)
    assert _points(plan) == {
        ("small_cnn", 16, 128, MAIN, True), ("resnet18", 16, 128, MAIN, True),
        ("small_cnn", 8, 128, "batch", True), ("small_cnn", 16, 64, "size", True),
    }
    assert all(c.label == MAIN for c in build_plan(["small_cnn"], quick=True, scaling=False))


def test_plan_full_mode_is_full_where_targets_are_read_and_scales_like_with_like():
    plan = build_plan(["small_cnn", "resnet18"], quick=False)
    assert _points(plan) == {
        ("small_cnn", 16, 128, MAIN, False),  # the target-grade point
        ("resnet18", 16, 128, MAIN, True),
        # scaling with quick settings, against a quick main point of its own
        ("small_cnn", 16, 128, MAIN, True), ("small_cnn", 8, 128, "batch", True),
        ("small_cnn", 16, 64, "size", True),
    }
    everything = build_plan(["small_cnn", "resnet18"], quick=False, all_full=True,
                            batch=32, size=224)
    assert _points(everything) == {
        (m, b, s, lab, False) for m in ("small_cnn", "resnet18")
        for b, s, lab in ((32, 224, MAIN), (16, 224, "batch"), (32, 112, "size"))
    }


def test_full_rows_shadow_their_quick_reference_in_the_main_table_and_check():
    full = _row("op", 30.0, 10.0, 2.0)
    ref = _row("op", 10.0, 10.0, 0.5, quick=True)
    # quick settings may rename a row (fewer epochs): shadowed all the same
    renamed = _row("op (3 epochs)", 1.0, 1.0, 2.0, quick=True)
    small = _row("op", 5.0, 5.0, 2.0, batch=8, config="batch", quick=True)
    rows = [full, ref, small, renamed]
    assert report.main_rows(rows) == [full]
    assert report.misses(rows) == [full]  # the quick reference misses too, but is not read
    small_miss = dict(small, ratio=9.0, ok=False)
    assert report.misses([full, ref, small_miss]) == [full]  # scaling points are information
    (axis, s, m), = report.scaling_pairs(rows)
    assert (axis, s, m) == ("batch", small, ref)  # quick against quick
    table = report.render_main_table(rows)
    assert "| full |" in table and "| quick |" not in table


def test_table_marks_each_ratio_against_its_target():
    ours, base = _tiny_timings(16)
    rows = [
        _row("passes", ours, base, PASS_TARGET),
        _row("fails", ours, base, FAIL_TARGET),
        _row("untargeted", ours, base, None, note="x|y"),
    ]
    table = report.render_main_table(rows)
    lines = {line.split("|")[2].strip(): line for line in table.splitlines()[2:]}
    assert set(lines) == {"passes", "fails", "untargeted"}
    assert "✓" in lines["passes"] and "✗" not in lines["passes"]
    assert "✗" in lines["fails"] and "✓" not in lines["fails"]
    assert "—" in lines["untargeted"] and "x\\|y" in lines["untargeted"]  # pipe escaped
    for line in lines.values():  # absolute times are always shown, with the ratio
        assert report.fmt_ms(rows[0]["ours_ms"]) in line
        assert report.fmt_ms(rows[0]["base_ms"]) in line
        assert f"{rows[0]['ratio']:.3f}" in line
    assert report.misses(rows) == [rows[1]]
    assert report.fmt_target(1.15) == "≤ 1.15"


def test_scaling_table_pairs_each_point_with_main_and_shows_growth():
    rows = [
        _row("op", 20.0, 10.0, 3.0),
        _row("op", 10.0, 4.0, 3.0, batch=8, config="batch"),
        _row("op", 5.0, 5.0, 3.0, size=64, config="size"),
        dict(_row("unpaired", 1.0, 1.0, 3.0, batch=8, config="batch"), model="resnet18"),
    ]
    pairs = report.scaling_pairs(rows)
    assert [(axis, s["batch"], s["size"]) for axis, s, _ in pairs] == [
        ("batch", 8, 128), ("size", 16, 64)]
    table = report.render_scaling_table(rows)
    batch_line, size_line = table.splitlines()[2:]
    assert "8 → 16" in batch_line and "×2.00" in batch_line and "×2.50" in batch_line
    assert "2.500 → 2.000" in batch_line
    assert "64 → 128" in size_line and "×4.00" in size_line
    assert report.render_scaling_table(rows[:1]) == ""


def test_run_writes_json_and_markdown_and_passes_the_device_through(tmp_path, capsys, monkeypatch):
    calls: List[Dict[str, object]] = []
    out = tmp_path / "sub" / "results.json"
    monkeypatch.setattr(run_module, "keep_freed_memory", lambda: "kept for the test")
    code = main(["--quick", "--models", "small_cnn", "--out", str(out)],
                topics={"alpha": make_topic(PASS_TARGET, calls)})
    assert code == 0
    assert calls == [  # the plan's points, in order, with the device passed through
        dict(quick=True, device="cpu", model_name="small_cnn", batch=16, size=128),
        dict(quick=True, device="cpu", model_name="small_cnn", batch=8, size=128),
        dict(quick=True, device="cpu", model_name="small_cnn", batch=16, size=64),
    ]
    data = json.loads(out.read_text(encoding="utf-8"))
    meta = data["meta"]
    for key in ("date", "machine", "cpu_count", "device", "device_name", "torch", "captum",
                "quick", "other_cpu_load", "plan"):
        assert key in meta
    assert meta["quick"] is True and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__
    assert meta["allocator"] == "kept for the test"
    assert [(r["topic"], r["config"], r["batch"], r["size"]) for r in data["rows"]] == [
        ("alpha", MAIN, 16, 128), ("alpha", "batch", 8, 128), ("alpha", "size", 16, 64)]
    assert all(r["ours_ms"] > 0 and r["base_ms"] > 0 for r in data["rows"])
    assert [r["status"] for r in data["runs"]] == ["ok"] * 3
    printed = capsys.readouterr().out
    assert "tiny matmul" in printed and "Scaling" in printed
    assert "allocator: kept for the test" in printed
    assert out.with_suffix(".md").read_text(encoding="utf-8") == printed.rstrip("\n") + "\n"


def test_full_mode_passes_each_points_settings_to_the_module(tmp_path, capsys):
    calls: List[Dict[str, object]] = []
    out = tmp_path / "r.json"
    code = main(["--models", "small_cnn", "--default-allocator", "--out", str(out)],
                topics={"alpha": make_topic(PASS_TARGET, calls)})
    assert code == 0
    assert json.loads(out.read_text(encoding="utf-8"))["meta"]["allocator"] == "default"
    assert [(c["quick"], c["batch"], c["size"]) for c in calls] == [
        (False, 16, 128), (True, 16, 128), (True, 8, 128), (True, 16, 64)]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["meta"]["quick"] is False
    assert [r["quick"] for r in data["rows"]] == [False, True, True, True]
    main_table = capsys.readouterr().out.split("### Scaling")[0]
    assert main_table.count("tiny matmul") == 1 and "| full |" in main_table


def test_check_exit_code_follows_the_targets(tmp_path, capsys):
    args = ["--models", "small_cnn", "--no-scaling", "--default-allocator", "--out", str(tmp_path / "r.json")]
    both = {"good": make_topic(PASS_TARGET), "bad": make_topic(FAIL_TARGET)}
    assert main(args + ["--check"], topics={"good": make_topic(PASS_TARGET)}) == 0
    assert main(args, topics={"bad": make_topic(FAIL_TARGET)}) == 0  # without --check: report
    assert main(args + ["--check"], topics=both) == 1
    err = capsys.readouterr().err
    assert "bad: tiny matmul" in err and "good: tiny matmul" not in err
    # --only leaves the failing topic out, so the check passes again.
    assert main(args + ["--check", "--only", "good"], topics=both) == 0


def test_a_crashing_or_malformed_topic_is_reported_not_fatal(tmp_path, capsys):
    def crashes(quick=False, device="cpu", model_name="small_cnn", batch=16, size=128):
        raise RuntimeError("boom")

    def malformed(quick=False, device="cpu", model_name="small_cnn", batch=16, size=128):
        return [{"name": "no timings"}]

    def declines(quick=False, device="cpu", model_name="small_cnn", batch=16, size=128):
        return []  # e.g. its model cannot be built here: a note, not a failure

    out = tmp_path / "r.json"
    topics = {"crash": crashes, "bad_rows": malformed, "good": make_topic(PASS_TARGET)}
    args = ["--models", "small_cnn", "--no-scaling", "--default-allocator", "--out", str(out)]
    assert main(args, topics=topics) == 0
    assert main(args + ["--check"], topics=topics) == 1
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [r["topic"] for r in data["rows"]] == ["good"]
    assert {r["topic"]: r["status"] for r in data["runs"]} == {
        "crash": "error", "bad_rows": "contract", "good": "ok"}
    notes = " ".join(data["notes"])
    assert "RuntimeError: boom" in notes and "lack the keys" in notes
    assert "FAILED crash" in capsys.readouterr().out
    assert main(args + ["--check"], topics={"empty": declines}) == 0
    assert "returned no rows" in " ".join(json.loads(out.read_text(encoding="utf-8"))["notes"])


def test_cuda_request_without_cuda_exits_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the cuda path is exercised by the real runner")
    assert main(["--device", "cuda", "--out", str(tmp_path / "r.json")], topics={}) == 2


def test_report_warns_when_other_processes_competed_for_the_cpu():
    rows = [_row("op", 2.0, 1.0, 3.0, quick=True)]
    meta = {"cpu_count": 2, "device": "cpu", "other_cpu_load": 0.05}
    assert "Warning" not in report.render_markdown(rows, meta)
    meta["other_cpu_load"] = 1.3
    assert "other processes kept 1.3 of 2 CPUs" in report.render_markdown(rows, meta)


def test_other_cpu_load_excludes_our_own_work():
    # (all busy CPU s, own CPU s, wall s): 3 s busy in 2 s of wall, 2 s of it ours -> 0.5 CPUs.
    assert other_cpu_load((100.0, 10.0, 50.0), (103.0, 12.0, 52.0)) == 0.5
    assert other_cpu_load((100.0, 10.0, 50.0), (101.0, 12.0, 52.0)) == 0.0  # tick rounding
    assert other_cpu_load(None, (1.0, 1.0, 1.0)) is None
    start = run_module._cpu_snapshot()
    if start is None:
        pytest.skip("no /proc/stat here")
    torch.randn(256, 256) @ torch.randn(256, 256)  # some work of our own
    assert other_cpu_load(start, run_module._cpu_snapshot()) >= 0.0
