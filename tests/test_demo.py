"""The demo in --quick mode: every table, figure and number exists and is finite; the CLI parses."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = run_demo(out, quick=True, progress=False)  # one thread while it runs
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    return out, results


def test_quick_demo_writes_report_tables_figures_and_json(demo):
    out, results = demo
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    for name in ("report.md", "table_alignment.md", "table_gad.md"):
        assert (out / name).stat().st_size > 200
    assert results["figures"] == sorted(f"figures/{name}.png" for name in (
        "alignment_vs_noise", "gradient_flow", "lambda_sweep", "feature_ablation", "one_output", "noise_constructions",
        "gad_IntegratedGradients", "gad_Saliency", "gad_InputXGradient", "gad_sweep", "volume_alignment",
        "volume_gad_saliency"))
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
    for r in (results["alignment"]["plain"], results["alignment"]["regularized"],
              results["one_output"]["plain"], results["one_output"]["regularized"]):
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
    sections = [c["section"] for c in claims]
    # Two features used, J, accuracy, the decoy unused; the sweep's two; one per ablated
    # feature; the one-output model's four; the decoy under three noise constructions and
    # brightness under all; RC and RS per GAD method; the GAD sweep's two per method; the
    # volumes' brightness, two decoys, flow boundary and RC.
    assert sections == (["alignment"] * 5 + ["lambda_sweep"] * 2 + ["ablation"] * 2 + ["one_output"] * 4
                        + ["noise"] * 4 + ["gad"] * 6 + ["gad_sweep"] * 4 + ["volumes"] * 5)
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
    plain["F"]["log_aspect_ratio"]["p"] = 0.5
    again = [c for c in evaluate_claims(flipped) if c["section"] in ("alignment", "gad")]
    # The decoy (fifth) claim holds: its p-values, now 0.5, do not beat noise.
    assert [c["held"] for c in again] == [False] * 4 + [True] + [False] * 6
    plain["F"]["log_aspect_ratio"]["p"] = 1e-6  # the decoy beats noise along the flow
    assert evaluate_claims(flipped)[4]["held"] is False
    assert "J went from 50.0% to 10.0%" in again[2]["evidence"]
    plain["J_mean"] = None  # undefined in JSON: the claim is undecided, not decided
    assert evaluate_claims(flipped)[2]["held"] is None


def test_quick_config_is_smaller_and_validated(tmp_path):
    full, quick = DemoConfig(), DemoConfig.quick()
    assert quick.lesion_n < full.lesion_n and quick.gad_eval < full.gad_eval
    assert DemoConfig.quick(seed=3).seed == 3
    with pytest.raises(TypeError, match="DemoConfig"):
        run_demo(tmp_path, config={"quick": True})
    with pytest.raises(ValueError, match="num_threads"):
        run_demo(tmp_path, quick=True, num_threads=0)
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


NEW_SECTIONS = {  # section title -> (figure, table, claims section key)
    "The λ sweep: accuracy against alignment": ("figures/lambda_sweep.png", "table_lambda_sweep.md", "lambda_sweep"),
    "Feature ablation": ("figures/feature_ablation.png", "table_ablation.md", "ablation"),
    "The paper's one-output model": ("figures/one_output.png", "table_one_output.md", "one_output"),
    "How the noise baseline moves the verdicts": ("figures/noise_constructions.png", "table_noise.md", "noise"),
    "GAD's settings: a sweep around the defaults": ("figures/gad_sweep.png", "table_gad_sweep.md", "gad_sweep"),
    "Volumes: a 3-D CNN on CT-like lesions": ("figures/volume_gad_saliency.png", "table_volumes.md", "volumes"),
}


def _section_text(report: str, title: str) -> str:
    match = re.search(rf"^## \d+\. {re.escape(title)}\n(.*?)(?=^## |\Z)", report, re.S | re.M)
    assert match, f"no section {title!r} in the report"
    return match.group(1)


def test_new_sections_each_have_their_figure_table_and_verdicts(demo):
    out, results = demo
    report = (out / "report.md").read_text()
    for title, (figure, table, key) in NEW_SECTIONS.items():
        text = _section_text(report, title)
        assert f"]({figure})" in text and figure in results["figures"]
        data = (out / figure).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert table in results["tables"] and (out / table).read_text().strip() in text
        mine = [c for c in results["claims"] if c["section"] == key]
        assert mine
        for c in mine:
            verdict = "claim held" if c["held"] else "did not hold"
            assert f"| {c['claim']} | {c['evidence']} | **{verdict}** |" in text


def test_lambda_sweep_rows_reuse_the_two_models_and_choose_from_accuracy(demo):
    _, results = demo
    from captum_gradflow.demo.studies import choose_lambda

    sweep, les = results["lambda_sweep"], results["alignment"]
    cfg = DemoConfig.quick()
    rows = {r["lambda"]: r for r in sweep["rows"]}
    assert sorted(rows) == list(cfg.lambda_values) and len(rows) >= 5 and 0.0 in rows
    assert rows[0.0]["J_mean"] == les["plain"]["J_mean"]
    assert rows[cfg.reg_brightness]["J_mean"] == les["regularized"]["J_mean"]
    assert rows[cfg.reg_brightness]["weights"] == les["weights"]
    floor = rows[0.0]["balanced_accuracy"] - sweep["max_accuracy_drop"]
    within = [lam for lam, r in rows.items() if r["balanced_accuracy"] >= floor]
    assert sweep["chosen_lambda"] == max(within) == choose_lambda(sweep["rows"], sweep["max_accuracy_drop"])


def _sweep_claims(results):
    return [c for c in evaluate_claims(results) if c["section"] == "lambda_sweep"]


def test_lambda_sweep_verdicts_follow_the_numbers(demo):
    _, results = demo
    edited = json.loads(json.dumps(results))
    rows = edited["lambda_sweep"]["rows"]
    base = rows[0]
    assert base["lambda"] == 0.0
    for r in rows[1:]:  # every λ > 0 costs accuracy: the choice falls back to 0, no J gain
        r["balanced_accuracy"] = base["balanced_accuracy"] - 0.2
    tuned, tradeoff = _sweep_claims(edited)
    assert tuned["held"] is False and "chosen λ = 0" in tuned["evidence"]
    assert tradeoff["held"] is True
    for r in rows[1:]:  # no λ costs accuracy, and the largest raises J significantly
        r["balanced_accuracy"] = base["balanced_accuracy"]
    top = rows[-1]
    top["J_mean"], top["J_paired_p"] = base["J_mean"] + 0.2, 1e-5
    tuned, tradeoff = _sweep_claims(edited)
    assert tuned["held"] is True and f"chosen λ = {top['lambda']:g}" in tuned["evidence"]
    assert tradeoff["held"] is False
    top["J_paired_p"] = 0.4  # the same gain, not significant
    assert _sweep_claims(edited)[0]["held"] is False
    top["J_mean"] = None
    assert _sweep_claims(edited)[0]["held"] is None


def test_ablation_and_one_output_verdicts_follow_the_numbers(demo):
    _, results = demo
    edited = json.loads(json.dumps(results))
    abl = edited["ablation"]
    for f, row in abl["removed"].items():
        abl["full"]["S"][f]["mean"], row["S"][f]["mean"], row["S_drop_p"] = 0.9, 0.1, 1e-6
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "ablation"] == [True, True]
    abl["removed"]["extent"]["S_drop_p"] = 0.5
    abl["removed"]["brightness"]["S"]["brightness"]["mean"] = 0.95
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "ablation"] == [False, False]

    one = edited["one_output"]
    for row in one["plain"]["S"].values():
        row["p"] = 1e-6
    for row in one["plain"]["F"].values():
        row["p"] = 1e-6
    one["plain"]["J_mean"], one["regularized"]["J_mean"], one["J_paired_p"] = 0.2, 0.8, 1e-6
    one["regularized"]["balanced_accuracy"] = one["plain"]["balanced_accuracy"]
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "one_output"] == [True] * 4
    one["plain"]["F"]["brightness"]["p"] = 0.3
    one["J_paired_p"] = 0.3
    one["regularized"]["balanced_accuracy"] = one["plain"]["balanced_accuracy"] - 0.1
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "one_output"] == [False, True, False, False]


def test_ablation_removes_one_weight_at_a_time(demo):
    _, results = demo
    abl = results["ablation"]
    assert abl["full"] == {k: results["alignment"]["regularized"][k] for k in abl["full"]}
    assert set(abl["removed"]) == set(abl["weights"]) == {"brightness", "extent"}
    for f, row in abl["removed"].items():
        assert row["weights"][f] == 0.0
        assert all(row["weights"][g] == w for g, w in abl["weights"].items() if g != f)
        assert 0.0 < row["S_drop_p"] <= 1.0 and 0.0 <= row["J_mean"] <= 1.0


def test_one_output_model_is_measured_like_the_two_output_one(demo):
    _, results = demo
    one, two = results["one_output"], results["alignment"]
    for model in ("plain", "regularized"):
        assert set(one[model]) == set(two[model])  # S, F, J, noise, flow: the same entries
    assert "BCE" in one["loss"]


def test_flow_vs_noise_keeps_its_result_keys(demo):
    _, results = demo
    keys = {"F", "noise_F_mean", "flow_examples", "flow_reached_boundary", "flow_median_length"}
    for model in ("plain", "regularized"):
        assert keys <= set(results["alignment"][model])
        assert results["alignment"][model]["flow_examples"] == DemoConfig.quick().flow_examples


def test_flow_vs_noise_compares_features_with_noise_on_the_same_flows(lesions_small):
    from captum_gradflow import SmallCNN
    from captum_gradflow.demo.lesions import _flow_vs_noise

    cfg = DemoConfig.quick(n_noise=5, flow_max_steps=10)
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x, y, m = lesions_small.images[:6], lesions_small.labels[:6], lesions_small.masks[:6]
    report, details = _flow_vs_noise(model, x, y, m, cfg)
    assert details.alignment.shape == (6, 8) and details.reached_boundary.shape == (6,)
    torch.testing.assert_close(details.alignment[:, :3].double(), report.S)
    assert report.feature_names == ["brightness", "extent", "log_aspect_ratio"]
    assert report.S.shape == (6, 3) and report.S_noise.shape == (6, 5)
    assert ((report.S_noise >= 0) & (report.S_noise <= 1)).all()


def test_config_rejects_a_sweep_without_its_baseline():
    with pytest.raises(ValueError, match="contain 0"):
        DemoConfig(lambda_values=(1.0, 10.0))
    with pytest.raises(ValueError, match="distinct"):
        DemoConfig(lambda_values=(0.0, 1.0, 1.0))
    assert DemoConfig(lambda_values=(10, 0, 1)).lambda_values == (0.0, 1.0, 10.0)


def test_noise_constructions_state_how_noise_was_drawn_and_decide_from_p(demo):
    out, results = demo
    study = results["noise"]
    assert [r["default"] for r in study["rows"]] == [False, False, True]
    # The library's default is the last construction: its numbers are those of section 1,
    # and its description is the one NoiseComparison.construction gives there.
    default = study["rows"][-1]
    assert default["models"]["plain"]["S"] == results["alignment"]["plain"]["S"]
    assert default["description"] == results["alignment"]["noise"]["text"]
    descriptions = [r["description"] for r in study["rows"]]
    assert "whole input" in descriptions[0] and "unsmoothed" in descriptions[0] and "not centred" in descriptions[0]
    for d, centred in zip(descriptions[1:], ("not centred", "centred (in-mask")):
        assert "feature mask" in d and "Gaussian sigma" in d and centred in d
    report = (out / "report.md").read_text()
    for d in descriptions:
        assert d in report
    edited = json.loads(json.dumps(results))
    for row in edited["noise"]["rows"]:
        row["models"]["plain"]["S"]["log_aspect_ratio"]["p"] = 0.5
        row["models"]["plain"]["S"]["brightness"]["p"] = 1e-5
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "noise"] == [True] * 4
    first = edited["noise"]["rows"][0]["models"]["plain"]["S"]
    first["log_aspect_ratio"]["p"], first["brightness"]["p"] = 1e-7, 0.2
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "noise"] == [False, True, True, False]


def test_noise_constructions_move_the_baseline(demo):
    _, results = demo
    rows = results["noise"]["rows"]
    # Three different constructions give three different baselines on the same model.
    means = [r["models"]["plain"]["noise_S_mean"] for r in rows]
    assert len(set(means)) == 3


def test_lesion_sections_state_the_default_noise_from_the_library(demo, lesions_small):
    from captum_gradflow import FeatureAlignment, GradientFlowAlignment, SmallCNN
    from captum_gradflow.demo.lesions import features

    out, results = demo
    noise = results["alignment"]["noise"]
    x, m = lesions_small.images[:4], lesions_small.masks[:4]
    torch.manual_seed(0)
    model = SmallCNN().eval()
    # The same words the library gives for a default comparison (only the auto width differs).
    own = FeatureAlignment(model, features()).compare_to_noise(x, target=1, mask=m,
                                                               n_noise=results["alignment"]["n_noise"])
    width = r"sigma [\d. x]+ px"
    assert re.sub(width, "", own.construction) == re.sub(width, "", noise["text"])
    flow = GradientFlowAlignment(model, features()).compare_to_noise(x, target=1, mask=m, n_noise=2, max_steps=2)
    centred = "centred (in-mask mean removed)"
    assert centred in flow.construction and centred in noise["flow_text"]
    section = _section_text((out / "report.md").read_text(), "Feature gradient flow on synthetic lesions")
    assert noise["text"] in section and noise["flow_text"] in section


def test_gad_sweep_section_runs_the_defaults_and_decides_from_the_rows(demo):
    out, results = demo
    from captum_gradflow.demo.claims import default_rows
    from captum_gradflow.gad import GADConfig

    sweep = results["gad_sweep"]
    d = GADConfig()
    assert sweep["defaults"]["delta"] == d.delta and sweep["defaults"]["n_support"] == d.n_models
    assert sweep["defaults"]["lr"] == d.lr and sweep["defaults"]["warm_start"] == d.warm_start
    assert not sweep["at_defaults"]  # quick shrinks the budget, and says so
    deltas = sorted({r["delta"] for r in sweep["rows"]})
    assert 3 <= len(deltas) <= 4 and d.delta in deltas
    assert {r["method"] for r in sweep["rows"]} == {"Saliency", "InputXGradient"}
    for r in sweep["rows"]:
        assert 0.0 < r["kept_fraction"] <= 1.0 and 0.0 <= r["rs_win_rate"] <= 1.0 and 0.0 < r["rs_p"] <= 1.0
    section = _section_text((out / "report.md").read_text(), "GAD's settings: a sweep around the defaults")
    assert "docs/gad_sweep.md" in section and f"δ = {d.delta:g}" in section
    edited = json.loads(json.dumps(results))
    rows = default_rows(edited["gad_sweep"])
    assert set(rows) == {"Saliency", "InputXGradient"}
    for r in rows.values():
        r["kept_fraction"], r["rs_win_rate"], r["rs_p"] = 0.6, 0.8, 1e-4
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "gad_sweep"] == [True] * 4
    rows["Saliency"]["kept_fraction"] = 0.9
    rows["InputXGradient"]["rs_p"] = 0.02
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "gad_sweep"] == [False, True, True, False]


def test_volume_section_measures_a_3d_model_and_decides_from_its_numbers(demo):
    out, results = demo
    vol = results["volumes"]
    assert vol["rule"] == "brightness" and vol["decoys"] == ["extent", "log_aspect_ratio"]
    assert vol["size"] == 16 and vol["n_train"] + vol["n_test"] == DemoConfig.quick().volume_n
    assert 0.0 <= vol["balanced_accuracy"] <= 1.0 and 0.0 <= vol["flow_reached_boundary"] <= 1.0
    assert vol["noise"]["text"].split("Gaussian sigma")[1].split("px")[0].count(" x ") == 2  # all 3 axes
    assert 0.0 < vol["gad"]["median_rc"] <= 1.0
    section = _section_text((out / "report.md").read_text(), "Volumes: a 3-D CNN on CT-like lesions")
    assert "](figures/volume_alignment.png)" in section
    edited = json.loads(json.dumps(results))
    v = edited["volumes"]
    v["S"]["brightness"]["p"], v["S"]["extent"]["p"], v["S"]["log_aspect_ratio"]["p"] = 1e-5, 0.5, 0.2
    v["flow_reached_boundary"], v["gad"]["median_rc"] = 0.75, 0.6
    v["gad"]["median_regions_base"], v["gad"]["median_regions_gad"] = 3.0, 2.0
    assert [c["held"] for c in evaluate_claims(edited) if c["section"] == "volumes"] == [True] * 5
    v["S"]["brightness"]["p"], v["S"]["extent"]["p"] = 0.02, 1e-3
    v["flow_reached_boundary"], v["gad"]["median_rc"] = 0.25, 1.0
    held = [c["held"] for c in evaluate_claims(edited) if c["section"] == "volumes"]
    assert held == [False, False, True, False, False]
