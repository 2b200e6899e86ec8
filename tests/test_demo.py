"""The demo in --quick mode: every table, figure and number exists and is finite; the CLI parses."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from captum_gradflow.demo import DemoConfig, evaluate_claims, run_demo

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _numbers(obj, path="results"):
    """Every number in a JSON tree, with its path."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    results = run_demo(out, quick=True, progress=False)
    return out, results


def test_quick_demo_writes_report_tables_figures_and_json(demo):
    out, results = demo
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    for name in ("report.md", "table_alignment.md", "table_gad.md"):
        assert (out / name).stat().st_size > 200
    assert len(results["figures"]) == 5  # alignment, flow, and GAD for three methods
    report = (out / "report.md").read_text()
    for fig in results["figures"]:
        data = (out / fig).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert f"]({fig})" in report  # embedded in the report
    for table in results["tables"]:
        assert (out / table).read_text().strip() in report


def test_every_number_is_finite_and_in_range(demo):
    _, results = demo
    nulls = [k for k, v in _walk_all(results) if v is None]
    assert nulls == [], f"undefined values in results.json: {nulls}"
    for path, value in _numbers(results):
        assert math.isfinite(value), path
    for model in ("plain", "regularized"):
        r = results["alignment"][model]
        assert 0.5 <= r["balanced_accuracy"] <= 1.0
        assert 0.0 <= r["J_median"] <= 1.0 and 0.0 <= r["J_mean"] <= 1.0
        for kind in ("S", "F"):
            assert set(r[kind]) == {"brightness", "extent", "log_aspect_ratio"}
            for row in r[kind].values():
                assert 0.0 <= row["mean"] <= 1.0 and row["ratio"] >= 0.0 and 0.0 < row["p"] <= 1.0
    gad = results["gad"]
    assert set(gad["methods"]) == {"IntegratedGradients", "Saliency", "InputXGradient"}
    for m in gad["methods"].values():
        assert 0.0 < m["median_rc"] <= 1.0  # GAD keeps a subset of the base map's top pixels
        assert 0.0 <= m["frac_rs_gad_greater"] <= 1.0
        assert m["median_regions_base"] >= 1 and m["median_regions_gad"] >= 1


def _walk_all(obj, path="results"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_all(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_all(v, f"{path}[{i}]")
    else:
        yield path, obj


def test_tables_hold_the_measured_numbers(demo):
    out, results = demo
    table = (out / "table_alignment.md").read_text()
    j = results["alignment"]["regularized"]["J_mean"]
    assert f"{100 * j:.1f}%" in table
    rows = [ln for ln in table.splitlines() if ln.startswith("| λ")]
    assert len(rows) == 2
    gad_table = (out / "table_gad.md").read_text()
    for name, m in results["gad"]["methods"].items():
        assert re.search(rf"\| {name} \| {m['median_rc']:.3f} \|", gad_table)


def test_claims_are_decided_from_the_numbers(demo):
    out, results = demo
    claims = results["claims"]
    assert len(claims) == 2 + 2 + 2 * 3  # two features used, J, accuracy; RC and RS per method
    assert all(isinstance(c["held"], bool) for c in claims)
    report = (out / "report.md").read_text()
    for c in claims:
        verdict = "claim held" if c["held"] else "did not hold"
        assert f"| {c['claim']} | {c['evidence']} | **{verdict}** |" in report
    # Flipping the numbers flips the verdicts: nothing is hard-coded.
    flipped = json.loads(json.dumps(results))
    plain, reg = flipped["alignment"]["plain"], flipped["alignment"]["regularized"]
    plain["J_mean"], reg["J_mean"] = 0.5, 0.1
    reg["balanced_accuracy"] = plain["balanced_accuracy"] - 0.2
    for m in flipped["gad"]["methods"].values():
        m["median_rc"], m["frac_rs_gad_greater"], m["rs_paired_p"] = 1.0, 0.2, 0.9
    for row in plain["S"].values():
        row["p"] = 0.5
    again = evaluate_claims(flipped)
    assert [c["held"] for c in again] == [False] * len(claims)
    assert "J went from 50.0% to 10.0%" in again[2]["evidence"]
    plain["J_mean"] = None  # undefined in JSON: the claim is undecided, not decided
    assert evaluate_claims(flipped)[2]["held"] is None


def test_quick_config_is_smaller_and_validated(tmp_path):
    full, quick = DemoConfig(), DemoConfig.quick()
    assert quick.lesion_n < full.lesion_n and quick.gad_eval < full.gad_eval
    assert DemoConfig.quick(seed=3).seed == 3
    with pytest.raises(TypeError, match="DemoConfig"):
        run_demo(tmp_path, config={"quick": True})
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_help_lists_the_demo_options():
    proc = subprocess.run([sys.executable, "-m", "captum_gradflow", "demo", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--out", "--quick", "--seed"):
        assert flag in proc.stdout



def test_cli_rejects_unknown_commands(capsys):
    from captum_gradflow.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["nonsense"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_runs_the_demo_with_its_arguments(demo, monkeypatch, capsys, tmp_path):
    import captum_gradflow.demo as demo_module
    from captum_gradflow.__main__ import main

    _, results = demo
    calls = []

    def fake_run_demo(out, quick, config, progress):
        calls.append((out, quick, config, progress))
        return results

    monkeypatch.setattr(demo_module, "run_demo", fake_run_demo)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seed", "4", "--no-progress"]) == 0
    (out, quick, config, progress), = calls
    assert out == str(tmp_path) and quick and not progress
    assert config == DemoConfig.quick(seed=4)
    printed = capsys.readouterr().out
    assert printed.count("[held]") + printed.count("[did NOT hold]") == len(results["claims"])
