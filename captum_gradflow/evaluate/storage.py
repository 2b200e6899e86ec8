"""The output folder of an evaluation: manifest, checksummed part files, the merged table.

Layout of ``DIR``::

    manifest.json                 recipe identity and settings (written before any work)
    parts/part-000000012.parquet  rows of one finished batch, named by its first index
    parts/part-000000012.sha256   SHA-256 of that part: written last, it commits the part
    examples.parquet              the merged table, one row per dataset index
    summary.json, summary.md      dataset-level statistics

Every file is written to a temporary name and renamed, so a process killed at any moment
leaves whole files only. A part whose checksum file is missing was never committed and is
recomputed on ``--resume``; a part whose bytes do not match its checksum is an error.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

__all__ = ["OutputFolder", "CorruptPartError"]

_FORMAT = "captum_gradflow.evaluate"
_VERSION = 1


class CorruptPartError(ValueError):
    """A part file's bytes do not match its recorded checksum (or its checksum has no part)."""


def _atomic_write(path: Path, data: bytes) -> None:
    # Write then rename: a process killed at any point leaves the old file or the new one,
    # never half of one. (No fsync: it guards against power loss, not a killed run, and it
    # cost more than the measurements of a small batch on a busy disk.)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OutputFolder:
    """One evaluation's output folder.

    Args:
        root: The folder (created on :meth:`claim`).

    Examples::

        >>> import tempfile
        >>> from captum_gradflow.evaluate.storage import OutputFolder
        >>> out = OutputFolder(tempfile.mkdtemp() + "/run")
        >>> out.claim({"recipe_sha256": "ab"}, {"n_noise": 4}, resume=False)
        >>> sorted(out.done_indices())
        []
    """

    def __init__(self, root: "os.PathLike[str] | str") -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.manifest_path = self.root / "manifest.json"

    # -- manifest ----------------------------------------------------------------------
    def claim(self, identity: Dict[str, Any], settings: Dict[str, Any], resume: bool) -> None:
        """Check the folder is free for this run (or resumable) and write the manifest.

        Raises ``FileExistsError`` when the folder holds results and ``resume`` is False, and
        ``ValueError`` when it holds results of another recipe or other settings. Nothing is
        written or removed before these checks pass.
        """
        wanted = {"format": _FORMAT, "version": _VERSION, "recipe": identity, "settings": settings}
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"--out {self.root} exists and is not a folder")
        existing = self._read_manifest()
        if existing is None and self.root.is_dir() and any(self.root.iterdir()):
            raise FileExistsError(
                f"--out {self.root} is not empty and holds no evaluation manifest; choose an empty "
                "or new folder (nothing was written)"
            )
        if existing is not None:
            for key in ("recipe", "settings"):
                if existing.get(key) != wanted[key]:
                    raise ValueError(
                        f"--out {self.root} holds results of a different {key}: {existing.get(key)} "
                        f"there, {wanted[key]} now; choose another folder (nothing was written)"
                    )
            if not resume:
                raise FileExistsError(
                    f"--out {self.root} already holds results of this recipe and settings; pass "
                    "--resume to continue them or choose another folder (nothing was written)"
                )
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.manifest_path, json.dumps(wanted, indent=2, sort_keys=True).encode())

    def _read_manifest(self) -> Optional[Dict[str, Any]]:
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.manifest_path} is not a readable manifest ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise ValueError(f"{self.manifest_path} is not an evaluation manifest of captum_gradflow")
        return manifest

    # -- parts -------------------------------------------------------------------------
    def part_path(self, first_index: int) -> Path:
        return self.parts / f"part-{first_index:09d}.parquet"

    def write_part(self, columns: Dict[str, Any]) -> Path:
        """Write one batch's rows (equal-length arrays by column name); the checksum file,
        written last, commits the part."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.part_path(int(columns["index"][0]))
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), sink, compression="none")  # short-lived: speed over size
        data = sink.getvalue().to_pybytes()
        _atomic_write(path, data)
        _atomic_write(path.with_suffix(".sha256"), (_sha256(data) + "\n").encode())
        return path

    def committed_parts(self) -> List[Path]:
        """The committed part files, checked against their checksums, in index order."""
        if not self.parts.is_dir():
            return []
        for orphan in sorted(self.parts.glob("part-*.sha256")):
            if not orphan.with_suffix(".parquet").exists():
                raise CorruptPartError(
                    f"{orphan} has no part file {orphan.with_suffix('.parquet').name}; delete the "
                    "checksum file to recompute those examples with --resume"
                )
        return [p for p in sorted(self.parts.glob("part-*.parquet")) if p.with_suffix(".sha256").exists()]

    def read_part(self, path: Path, columns: Optional[Iterable[str]] = None) -> Any:
        """A committed part as a pyarrow Table, after checking its bytes against the checksum."""
        import io

        import pyarrow.parquet as pq

        data = path.read_bytes()
        recorded = path.with_suffix(".sha256").read_text().strip()
        if _sha256(data) != recorded:
            raise CorruptPartError(
                f"part file {path} is corrupted (its SHA-256 does not match {path.with_suffix('.sha256').name}); "
                "delete both files to recompute those examples with --resume"
            )
        cols = None if columns is None else list(columns)
        return pq.read_table(io.BytesIO(data), columns=cols)

    def done_indices(self) -> Set[int]:
        """Indices already in committed parts (every part's checksum is verified)."""
        done: Set[int] = set()
        for path in self.committed_parts():
            idx = self.read_part(path, ["index"]).column("index").to_pylist()
            repeated = done.intersection(idx)
            if repeated:
                raise CorruptPartError(f"part file {path} repeats indices {sorted(repeated)[:5]} of other parts")
            done.update(idx)
        return done

    def remove_uncommitted(self) -> None:
        """Delete leftovers of killed writes: temporary files and parts never committed."""
        if not self.parts.is_dir():
            return
        for path in self.parts.iterdir():
            uncommitted = path.suffix == ".parquet" and not path.with_suffix(".sha256").exists()
            if ".tmp" in path.name or uncommitted:
                path.unlink()

    # -- merged outputs ----------------------------------------------------------------
    def merge(self, n_examples: int) -> Any:
        """All committed parts as one table sorted by index; exactly one row per index."""
        import pandas as pd
        import pyarrow as pa

        parts = [self.read_part(p) for p in self.committed_parts()]
        if not parts:
            raise ValueError(f"{self.parts} holds no finished part to merge")
        table = pa.concat_tables(parts).to_pandas().sort_values("index", kind="stable")
        table = table.reset_index(drop=True)
        expected = pd.RangeIndex(n_examples)
        if len(table) != n_examples or not table["index"].astype("int64").equals(pd.Series(expected)):
            have = set(table["index"].tolist())
            missing = sorted(set(range(n_examples)) - have)[:10]
            raise ValueError(
                f"the parts in {self.parts} do not hold exactly one row per index 0..{n_examples - 1}: "
                f"{len(table)} rows, missing for example {missing}"
            )
        return table

    def write_results(self, table: Any, summary: Dict[str, Any], markdown: str) -> None:
        """Write examples.parquet, summary.json and summary.md (each atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), sink)
        _atomic_write(self.root / "examples.parquet", sink.getvalue().to_pybytes())
        _atomic_write(self.root / "summary.json", json.dumps(summary, indent=2, allow_nan=False).encode())
        _atomic_write(self.root / "summary.md", markdown.encode())
