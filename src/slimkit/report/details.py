"""What techniques report about themselves (layers kept in float, per-layer sensitivity,
fused operators), as sections shared by the Markdown and HTML reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LAYER_HEADERS = ["Layer", "Sensitivity", "Precision"]


@dataclass
class DetailSection:
    title: str
    facts: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _fact_lines(report: dict[str, Any]) -> list[str]:
    facts = []
    if "budget" in report:
        budget = ", ".join(f"{k} {v}" for k, v in (report["budget"] or {}).items()
                           if v is not None)
        facts.append(f"budget: {budget}")
    if "kept_float" in report:
        kept = report["kept_float"] or []
        total = report.get("layers_total") or len(report.get("layers") or [])
        of = f" of {total}" if total else ""
        facts.append(f"kept in float: {len(kept)}{of} layers"
                     + (f" ({', '.join(kept)})" if kept else ""))
    for key in ("cosine", "accuracy_drop"):
        if report.get(key) is not None:
            facts.append(f"{key.replace('_', ' ')} on calibration data: {report[key]:.4f}")
    if report.get("trials"):
        facts.append(f"quantized and scored {report['trials']} times")
    if report.get("calibration"):
        facts.append(f"activation ranges: {report['calibration']}")
    if report.get("fused_operators"):
        fused = ", ".join(f"{k} ×{v}" for k, v in report["fused_operators"].items())
        facts.append(f"fused operators: {fused}")
    return facts


def detail_sections(results: dict[str, Any]) -> list[DetailSection]:
    sections = []
    for cand in results.get("candidates") or []:
        for step, report in (cand.get("details") or {}).items():
            if not isinstance(report, dict):
                continue
            rows = [[str(r.get("layer", "")),
                     "—" if r.get("sensitivity") is None else f"{r['sensitivity']:.4g}",
                     str(r.get("precision", ""))]
                    for r in report.get("layers") or []]
            sections.append(DetailSection(f"{cand.get('name')}: {step}", _fact_lines(report),
                                          rows))
    return sections
