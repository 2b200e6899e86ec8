"""``report.md``: the verdicts first, then one numbered section per experiment that ran."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from .sections import SECTIONS, Section, verdict_table

__all__ = ["build_sections", "report_markdown"]


def build_sections(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> List[Section]:
    """Run every section function of :data:`~captum_gradflow.demo.sections.SECTIONS` whose
    results key is present; each writes its figures under ``out / "figures"``."""
    return [section(results, parts, out) for key, section in SECTIONS if key in results]


def report_markdown(results: Dict[str, Any], sections: List[Section]) -> str:
    """The report: mode and run time, every claim with its verdict, then the sections."""
    cfg = results["config"]
    lines = [
        "# captum_gradflow demo report", "",
        f"Mode: {'quick' if results['quick'] else 'full'}; seed {cfg['seed']}; "
        f"ran in {results['runtime_s']:.0f} s. Every number below is computed by this run.", "",
        "## Did the seed papers' claims hold on this data?", "",
        verdict_table(results["claims"]), "",
    ]
    for k, section in enumerate(sections, start=1):
        lines += [f"## {k}. {section.title}", "", section.body]
    return "\n".join(lines)
