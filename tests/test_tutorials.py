"""Every tutorial notebook and the README example execute without error, so they never rot.

The kernel is the ``python3`` kernelspec run by this interpreter (jupyter_client swaps a
kernelspec's ``python`` for ``sys.executable``), so a fresh ``.venv`` from ``make test`` needs
no user-level kernel install.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
EXPECTED = [
    "01_feature_alignment.ipynb",
    "02_gradient_flow.ipynb",
    "03_regularized_training.ipynb",
    "04_gad.ipynb",
    "05_region_metrics.ipynb",
    "06_dataset_evaluation.ipynb",
    "07_volumes.ipynb",
]


def test_one_notebook_per_capability_cleared_or_fully_executed():
    """Notebooks ship with the outputs of one clean run (``tools/execute_tutorials.py``), or
    with none: never a partial, out-of-order or failed run."""
    assert [nb.name for nb in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, f"{path.name} has no code"
        counts = [c.execution_count for c in code]
        if any(n is not None or c.outputs for n, c in zip(counts, code)):
            assert counts == list(range(1, len(code) + 1)), f"{path.name} was not run top to bottom: {counts}"
            assert not [o for c in code for o in c.outputs if o.output_type == "error"], f"{path.name} has errors"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def _snapshot(folder: Path) -> dict:
    """Every file below ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch, tmp_path):
    # The kernel inherits the environment: one torch thread, as in the test process, so the
    # kernel does not oversubscribe two shared cores; the checkout first on the path, so its
    # package is the one imported although the kernel runs in a temporary folder.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    before = _snapshot(ROOT / "tutorials")
    # A copy, run in a temporary folder: whatever the notebook writes stays out of the repository.
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    nb = nbformat.read(copy, as_version=4)
    # One extra cell (in memory only) proves the kernel ran this interpreter and this checkout,
    # in the temporary folder.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, sys, captum_gradflow; print(sys.executable); print(captum_gradflow.__file__); "
        "print(os.getcwd())"))
    # Errors are collected, not raised at the first one, so the report names every failing cell.
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [f"cell {k}: {o.ename}: {o.evalue}" for k, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} raised: " + "; ".join(errors)
    # The kernel may send the three printed lines as one stream message or several.
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    executable, package, cwd = printed.split()
    assert Path(executable) == Path(sys.executable)
    assert Path(package).resolve() == ROOT / "captum_gradflow" / "__init__.py"
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert _snapshot(ROOT / "tutorials") == before, f"{path.name} wrote into the repository's tutorials/"
    outputs = [o for c in nb.cells[:-1] if c.cell_type == "code" for o in c.outputs]
    assert outputs, f"{path.name} printed and showed nothing"
    # A notebook that draws a figure must show it inline as an image.
    if any("plot_" in c.source for c in nb.cells if c.cell_type == "code"):
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no figure"


def test_readme_example_runs(capsys):
    """The README's Python example is the first thing a user copies: it must run as written."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    assert "make demo" in text and "make test" in text
    namespace: dict = {}
    exec(compile(blocks[0], str(ROOT / "README.md"), "exec"), namespace)
    assert namespace["S"].shape == (16, 2) and namespace["J"].shape == (16,)
    assert namespace["F"].shape == (16, 2)
    assert namespace["attr"].shape == namespace["xt"].shape
    rc = namespace["rc"]
    assert ((rc[~rc.isnan()] >= 0) & (rc[~rc.isnan()] <= 1)).all()
    assert "Wilcoxon p" in capsys.readouterr().out
