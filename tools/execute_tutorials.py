"""Execute every tutorial notebook in place and save it with its outputs (figures included).

Run from anywhere with the project's interpreter::

    python tools/execute_tutorials.py            # every tutorials/*.ipynb
    python tools/execute_tutorials.py 03_regularized_training.ipynb

The kernel is the ``python3`` kernelspec run by this interpreter (jupyter_client swaps the
kernelspec's ``python`` for ``sys.executable``), started in the repository root with the
repository first on ``PYTHONPATH``, so the notebooks import this checkout's package, and with
one torch thread (``OMP_NUM_THREADS=1``), as in the tests. A notebook is written back only
when every cell ran without error; a failing notebook is left as it was and the script exits
with status 1 after trying the others.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` and return it with its outputs (the file is untouched)."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, record_timing=False,
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()
    return nb


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names in tutorials/ (default: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default: 600)")
    args = parser.parse_args(argv)
    paths = [TUTORIALS / n for n in args.notebooks] if args.notebooks else sorted(TUTORIALS.glob("*.ipynb"))
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook in {TUTORIALS}: {', '.join(missing)}")
    # The kernel inherits this environment.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # Captum imports tqdm.auto, which warns in a kernel without ipywidgets; the warning (with
    # this machine's paths) would otherwise ship in every notebook's first output.
    os.environ["PYTHONWARNINGS"] = ",".join(
        [w for w in [os.environ.get("PYTHONWARNINGS")] if w] + ["ignore:IProgress not found"])
    failed = []
    for path in paths:
        start = time.perf_counter()
        try:
            nb = execute(path, args.timeout)
        except nbclient.exceptions.CellExecutionError as err:
            failed.append(path.name)
            print(f"FAILED {path.name}: {str(err).strip().splitlines()[-1]}", file=sys.stderr)
            continue
        nbformat.validate(nb)
        nbformat.write(nb, path)
        images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s, {images} figure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
