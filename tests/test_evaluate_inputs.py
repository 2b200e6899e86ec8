"""Bad input to the evaluation: a clear error before any work, and nothing written is lost."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
from torch.utils.data import TensorDataset

from captum_gradflow import Brightness, SmallCNN, evaluate
from captum_gradflow.__main__ import main
from captum_gradflow.evaluate.storage import OutputFolder

RECIPES = Path(__file__).resolve().parent / "recipes"
LESIONS = str(RECIPES / "lesions.py")


def _cli(recipe: str, out: Path, *extra: str) -> int:
    return main(["evaluate", recipe, "--out", str(out), "--n-noise", "4", "--batch-size", "4",
                 "--no-progress", *extra])


def _snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of the lesions recipe (read only by the tests)."""
    out = tmp_path_factory.mktemp("evaluate") / "done"
    assert _cli(LESIONS, out) == 0
    return out


@pytest.mark.parametrize("recipe, error, message", [
    ("missing_features.py", ValueError, r"does not define features\(\)"),
    ("bad_item.py", ValueError, r"dataset item 0 must be \(x, y\) or \(x, y, mask\), got a Tensor"),
    ("bad_mask.py", ValueError, r"dataset item 0: mask has shape \(1, 8, 8\).*\(1, 16, 16\) or \(16, 16\)"),
])
def test_a_bad_recipe_fails_before_anything_is_written(tmp_path, recipe, error, message):
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        _cli(str(RECIPES / recipe), out)
    assert not out.exists()


def test_a_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py does not exist"):
        _cli(str(tmp_path / "nope.py"), tmp_path / "out")


@pytest.mark.parametrize("extra, error, message", [
    ((), FileExistsError, "already holds results of this recipe and settings; pass --resume"),
    (("--n-noise", "5"), ValueError, "holds results of a different settings"),
    (("--flow", "--resume"), ValueError, "holds results of a different settings"),
    (("--batch-size", "3", "--resume"), ValueError, "holds results of a different settings"),
])
def test_an_existing_out_is_never_overwritten(finished, extra, error, message):
    before = _snapshot(finished)
    with pytest.raises(error, match=message):
        _cli(LESIONS, finished, *extra)
    assert _snapshot(finished) == before


def test_results_of_a_different_recipe_are_an_error_even_with_resume(finished, tmp_path):
    other = tmp_path / "other_recipe.py"
    other.write_text(Path(LESIONS).read_text() + "\n# a different recipe\n")
    before = _snapshot(finished)
    with pytest.raises(ValueError, match="holds results of a different recipe"):
        _cli(str(other), finished, "--resume")
    assert _snapshot(finished) == before


def test_a_folder_with_other_files_is_not_taken(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no evaluation manifest"):
        _cli(LESIONS, out)
    assert _snapshot(out) == {"notes.txt": b"keep me"}


def test_resume_of_a_finished_run_recomputes_nothing_and_rewrites_the_same_results(finished, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    parts = {p: p.read_bytes() for p in (copy / "parts").iterdir()}
    assert _cli(LESIONS, copy, "--resume") == 0
    assert {p: p.read_bytes() for p in (copy / "parts").iterdir()} == parts
    assert (copy / "summary.json").read_bytes() == (finished / "summary.json").read_bytes()


def test_a_checksum_without_its_part_is_an_error(finished, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "parts" / "part-000000004.parquet").unlink()
    with pytest.raises(ValueError, match="part-000000004.sha256 has no part file"):
        _cli(LESIONS, copy, "--resume")


def test_python_call_checks_its_arguments():
    data = TensorDataset(torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1]))
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match="n_noise must be a positive int"):
        evaluate(model, data, [Brightness()], n_noise=0)
    with pytest.raises(ValueError, match="feature names must be unique"):
        evaluate(model, data, [Brightness(), Brightness()])
    with pytest.raises(ValueError, match="define gad"):
        evaluate(model, data, [Brightness()], attribution=object())
    with pytest.raises(TypeError, match="y must be a scalar label"):
        evaluate(model, TensorDataset(torch.rand(4, 1, 16, 16), torch.rand(4, 2)), [Brightness()])
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        evaluate(model, TensorDataset(torch.zeros(4, 1, 16, 16, dtype=torch.long), torch.zeros(4)), [Brightness()])
    with pytest.raises(ValueError, match="the dataset is empty"):
        evaluate(model, TensorDataset(torch.rand(0, 1, 16, 16), torch.zeros(0)), [Brightness()])


def test_a_later_item_of_another_form_names_its_index(tmp_path):
    class Mixed(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            x = torch.rand(1, 16, 16) if i != 4 else torch.rand(1, 8, 8)
            return x, i % 2

    with pytest.raises(ValueError, match="dataset item 4 does not match item 3"):
        evaluate(SmallCNN().eval(), Mixed(), [Brightness()], tmp_path / "o", batch_size=3, n_noise=2,
                 progress=False)
    # The finished first batch stays committed for --resume.
    assert [p.name for p in (tmp_path / "o" / "parts").glob("*.parquet")] == ["part-000000000.parquet"]


def test_output_folder_claims_a_new_folder():
    import tempfile

    root = Path(tempfile.mkdtemp()) / "new"
    folder = OutputFolder(root)
    folder.claim({"recipe_sha256": "x"}, {"n_noise": 4}, resume=True)  # nothing to resume: a fresh run
    assert (root / "manifest.json").exists() and folder.done_indices() == set()


def test_under_torchrun_the_python_call_needs_an_output_folder(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = TensorDataset(torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="pass out="):
        evaluate(SmallCNN().eval(), data, [Brightness()], n_noise=2, progress=False)
