"""Dataset-scale evaluation: one process and torchrun agree, resume after a crash, the API.

Recipes live in tests/recipes (12 synthetic 16x16 lesions, a tiny seeded CNN, n_noise 4).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from captum_gradflow import Brightness, Extent, FeatureAlignment, NoiseComparison, evaluate, make_noise
from captum_gradflow.__main__ import main
from captum_gradflow.evaluate import load_recipe
from captum_gradflow.evaluate.runner import Settings, run_evaluation

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "tests" / "recipes"
LESIONS = str(RECIPES / "lesions.py")
ARGS = ["--n-noise", "4", "--batch-size", "4", "--no-progress"]


def _cli(recipe: str, out: Path, *extra: str) -> int:
    return main(["evaluate", recipe, "--out", str(out), *ARGS, *extra])


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "examples.parquet")


def _assert_same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.to_numpy(dtype=np.float64), b.to_numpy(dtype=np.float64),
                               rtol=0, atol=1e-6, equal_nan=True)


def test_one_process_and_torchrun_with_two_give_the_same_table(tmp_path):
    assert _cli(LESIONS, tmp_path / "one", "--flow") == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "captum_gradflow", "evaluate",
         LESIONS, "--out", str(tmp_path / "two"), *ARGS, "--flow"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _table(tmp_path / "one"), _table(tmp_path / "two")
    assert one["index"].tolist() == list(range(12))
    _assert_same_table(one, two)
    # Both ranks wrote parts: rank 1 holds the odd indices.
    firsts = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "two" / "parts").glob("*.parquet"))
    assert firsts == [0, 1, 8, 9]
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1 == s2
    assert set(s1["F"]) == {"brightness", "extent"} and s1["F"]["extent"]["n"] == 12


def test_resume_after_a_crash_ends_with_one_row_per_index_equal_to_a_full_run(tmp_path, monkeypatch):
    assert _cli(LESIONS, tmp_path / "full", "--batch-size", "2") == 0
    out = tmp_path / "crashed"
    monkeypatch.setenv("EVAL_TEST_FAIL_AT", "6")  # item 6 raises: batches 0-1, 2-3, 4-5 are done
    with pytest.raises(RuntimeError, match="test hook"):
        _cli(LESIONS, out, "--batch-size", "2")
    parts = sorted(p.name for p in (out / "parts").glob("*.parquet"))
    assert parts == ["part-000000000.parquet", "part-000000002.parquet", "part-000000004.parquet"]
    assert not (out / "examples.parquet").exists()
    before = {p: p.read_bytes() for p in (out / "parts").iterdir()}
    monkeypatch.delenv("EVAL_TEST_FAIL_AT")
    # Without --resume the interrupted results are kept, untouched.
    with pytest.raises(FileExistsError, match="--resume"):
        _cli(LESIONS, out, "--batch-size", "2")
    assert {p: p.read_bytes() for p in (out / "parts").iterdir()} == before
    # A leftover of a write killed before its commit is recomputed, not trusted.
    (out / "parts" / "part-000000006.parquet").write_bytes(b"half a file")
    assert _cli(LESIONS, out, "--batch-size", "2", "--resume") == 0
    for p, data in before.items():
        assert p.read_bytes() == data  # finished parts were skipped, not rewritten
    resumed = _table(out)
    assert resumed["index"].tolist() == list(range(12))
    _assert_same_table(resumed, _table(tmp_path / "full"))
    assert json.loads((out / "summary.json").read_text())["S"] == json.loads(
        (tmp_path / "full" / "summary.json").read_text())["S"]


def test_a_corrupted_part_is_an_error_on_resume(tmp_path):
    out = tmp_path / "run"
    assert _cli(LESIONS, out) == 0
    part = out / "parts" / "part-000000004.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    summary = (out / "summary.json").read_bytes()
    with pytest.raises(ValueError, match="part-000000004.parquet is corrupted"):
        _cli(LESIONS, out, "--resume")
    assert part.read_bytes() == bytes(data) and (out / "summary.json").read_bytes() == summary


def _lesion_set(n=12):
    from captum_gradflow import synthetic_lesions

    d = synthetic_lesions(n, size=16, seed=0)
    return d, TensorDataset(d.images, d.labels, d.masks)


def _tiny_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lesions_recipe", LESIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model()


def test_evaluate_call_equals_the_alignment_apis_and_leaves_the_model_as_it_came(tmp_path):
    d, ds = _lesion_set()
    model = _tiny_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    feats = [Brightness(), Extent()]
    table, summary = evaluate(model, ds, feats, tmp_path / "api", batch_size=5, n_noise=4, progress=False)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert table.equals(_table(tmp_path / "api"))
    model.eval()
    fa = FeatureAlignment(model, feats)
    # The runner fixes the "auto" noise width once, from the first item, for every batch.
    sigma = summary["settings"]["noise_options"]["smooth_sigma"]
    assert sigma == pytest.approx(list(make_noise(Brightness(mask=d.masks[:1]), d.images[:1], None, 1).smooth_sigma))
    ref = fa.compare_to_noise(d.images, target=d.labels, mask=d.masks, n_noise=4, seed=0,
                              smooth_sigma=tuple(sigma))
    np.testing.assert_allclose(table[["S_brightness", "S_extent"]].to_numpy(), ref.S.numpy(), atol=1e-6)
    np.testing.assert_allclose(table[[f"noise_{j}" for j in range(4)]].to_numpy(), ref.S_noise.numpy(), atol=1e-6)
    np.testing.assert_allclose(table["p_extent"].to_numpy(), ref.p_value[:, 1].numpy(), atol=1e-12)
    np.testing.assert_allclose(table["J"].to_numpy(), fa.joint(d.images, target=d.labels, mask=d.masks).numpy(),
                               atol=1e-6)
    assert table["label"].tolist() == d.labels.tolist()
    # The dataset statistics are NoiseComparison's, on the whole table.
    pooled = NoiseComparison(torch.tensor(table[["S_brightness", "S_extent"]].to_numpy()),
                             torch.tensor(table[[f"noise_{j}" for j in range(4)]].to_numpy()),
                             ["brightness", "extent"])
    for j, name in enumerate(["brightness", "extent"]):
        st = summary["S"][name]
        assert st["n"] == 12 and st["n_undefined"] == int(pooled.n_skipped[j])
        assert st["mean_ratio"] == pytest.approx(float(pooled.mean_ratio[j]))
        assert st["wilcoxon_p"] == pytest.approx(float(pooled.wilcoxon_p[j]))
    assert "| brightness | 12 |" in (tmp_path / "api" / "summary.md").read_text()


def test_results_agree_across_batch_sizes_and_a_feature_keeps_its_own_mask():
    d, ds = _lesion_set()
    model = _tiny_model().eval()
    own = torch.zeros(1, 1, 16, 16)
    own[..., 4:12, 4:12] = 1.0
    feats = [Brightness(), Extent(mask=own)]
    a, _ = evaluate(model, ds, feats, batch_size=12, n_noise=4, progress=False)
    b, _ = evaluate(model, ds, feats, batch_size=5, n_noise=4, progress=False)
    # Kernels round differently for another batch size: equal up to float32 rounding.
    np.testing.assert_allclose(a.to_numpy(dtype=np.float64), b.to_numpy(dtype=np.float64), rtol=1e-4, atol=1e-6)
    ref = FeatureAlignment(model, [Extent()]).compare_to_noise(d.images, target=d.labels, mask=own, n_noise=4)
    np.testing.assert_allclose(a["S_extent"].to_numpy(), ref.S[:, 0].numpy(), atol=1e-6)


def test_gad_recipe_gives_rc_and_rs_of_kept_and_dropped_regions(tmp_path):
    recipe = load_recipe(RECIPES / "lesions_gad.py")
    result = run_evaluation(recipe, tmp_path / "gad", Settings(batch_size=6, n_noise=4, progress=False))
    assert result is not None
    table, summary = result
    rc = table["RC"].to_numpy()
    assert np.all((rc[~np.isnan(rc)] >= 0) & (rc[~np.isnan(rc)] <= 1))
    kept, dropped = table["RS_kept"].to_numpy(), table["RS_dropped"].to_numpy()
    both = np.isfinite(kept) & np.isfinite(dropped)
    g = summary["GAD"]
    assert g["RS_n_pairs"] == int(both.sum()) > 0
    assert g["RS_win_rate"] == pytest.approx(float(np.mean(kept[both] > dropped[both])))
    assert g["median_RC"] == pytest.approx(float(np.nanmedian(rc)))
    assert g["RS_wilcoxon_p"] is None or 0 < g["RS_wilcoxon_p"] <= 1
    assert "## GAD regions" in (tmp_path / "gad" / "summary.md").read_text()


def test_a_target_function_maps_the_labels():
    from captum_gradflow import FeatureAlignment

    d, ds = _lesion_set(4)
    model = _tiny_model().eval()
    table, _ = evaluate(model, ds, [Brightness()], target=lambda y: 1 - y, batch_size=4, n_noise=2,
                        progress=False)
    ref = FeatureAlignment(model, [Brightness()]).compare_to_noise(
        d.images, target=1 - d.labels, mask=d.masks, n_noise=2)
    np.testing.assert_allclose(table["S_brightness"].to_numpy(), ref.S[:, 0].numpy(), atol=1e-6)
    assert table["label"].tolist() == d.labels.tolist()


def test_recorded_settings_name_a_tensor_option_by_its_digest():
    from captum_gradflow.gad.persistence import tensor_digest

    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1.0
    rec = Settings(noise_options={"noise_mask": mask}).recorded()["noise_options"]["noise_mask"]
    assert rec == f"tensor(1, 1, 4, 4) sha256 {tensor_digest(mask)[:16]}"
    # The same bytes in another shape or dtype are other settings (a bfloat16 one included).
    assert Settings(noise_options={"noise_mask": mask.reshape(1, 1, 2, 8)}).recorded() != \
        Settings(noise_options={"noise_mask": mask}).recorded()
    half = Settings(noise_options={"noise_mask": mask.bfloat16()}).recorded()["noise_options"]["noise_mask"]
    assert half.startswith("tensor(1, 1, 4, 4) sha256 ") and half != rec


def test_gad_base_map_is_gads_own_a0_computed_once_per_batch(tmp_path):
    import dataclasses

    from captum.attr import Saliency

    recipe = load_recipe(RECIPES / "lesions_gad.py")
    method = recipe.gad.attribution_method
    assert recipe.attribution is method
    calls = []
    original = method.attribute

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    method.attribute = counted
    settings = Settings(batch_size=6, n_noise=2, progress=False)
    shared, _ = run_evaluation(recipe, tmp_path / "shared", settings)
    assert len(calls) == 2  # 12 examples in batches of 6: the base method once per batch
    # A separate base method object runs on its own, as before: the same RC and RS.
    separate = dataclasses.replace(recipe, attribution=Saliency(recipe.model))
    table, _ = run_evaluation(separate, tmp_path / "separate", settings)
    assert len(calls) == 4
    cols = ["RC", "RS_kept", "RS_dropped"]
    np.testing.assert_array_equal(shared[cols].to_numpy(), table[cols].to_numpy())
