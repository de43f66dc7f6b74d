"""What techniques report about themselves (layers kept in float, per-layer sensitivity,
channels and heads removed, sparsity, training history), as sections shared by the Markdown
and HTML reports.

Each technique writes its own JSON; the table's columns come from its per-layer rows, so a new
technique's report shows up without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Row keys that are recorded for rebuilding or plotting, not for reading.
_HIDDEN_COLUMNS = {"heads_kept", "pruned"}


@dataclass
class DetailSection:
    title: str
    facts: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)  # training loss per epoch


def _budget_facts(report: dict[str, Any]) -> list[str]:
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
    if report.get("int8_mode"):
        facts.append(f"int8 operands: {report['int8_mode']} ({report.get('int8_mode_reason')})")
    if isinstance(report.get("calibration"), str):
        facts.append(f"activation ranges: {report['calibration']}")
    if report.get("fused_operators"):
        fused = ", ".join(f"{k} ×{v}" for k, v in report["fused_operators"].items())
        facts.append(f"fused operators: {fused}")
    return facts


def _pruning_facts(report: dict[str, Any]) -> list[str]:
    facts = []
    for before, after, what in (("flops_before", "flops_after", "FLOPs"),
                                ("encoder_flops_before", "encoder_flops_after", "encoder FLOPs"),
                                ("params_before", "params_after", "parameters")):
        if report.get(before) and report.get(after) is not None:
            facts.append(f"{what}: {round(report[before]):,} → {round(report[after]):,} "
                         f"({report[after] / report[before]:.2f}×)")
    for key, label in (("sparsity", "sparsity of the pruned layers"),
                       ("sparsity_all_layers", "sparsity of all layers")):
        if isinstance(report.get(key), float):
            facts.append(f"{label}: {report[key]:.1%}")
    for key in ("importance", "allocation", "method"):
        if isinstance(report.get(key), str):
            facts.append(f"{key}: {report[key]}")
    if report.get("note"):
        facts.append(str(report["note"]))
    return facts


def _training_facts(report: dict[str, Any]) -> list[str]:
    report = {**report, **(report.get("fine_tuning") or {})}  # pruning nests its training
    facts = []
    if report.get("teacher"):
        facts.append(f"teacher: {report['teacher']}, loss: {report.get('loss')}")
    agree = report.get("agreement")
    if isinstance(agree, dict) and agree.get("before") is not None:
        where = f" ({agree['measured_on']})" if agree.get("measured_on") else ""
        facts.append(f"{agree.get('measure', 'agreement')} with the teacher on "
                     f"{agree.get('examples')} examples{where}: {agree['before']:.4f} → "
                     f"{agree['after']:.4f}")
    history = report.get("history") or []
    if history:
        losses = [h.get("loss") for h in history if h.get("loss") is not None]
        stop = (" (stopped early)" if report.get("stopped_early")
                else " (time budget reached)" if report.get("out_of_time") else "")
        span = f", loss {losses[0]:.4g} → {losses[-1]:.4g}" if losses else ""
        facts.append(f"trained {len(history)} epoch(s){stop}{span}")
    return facts


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[bool]]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in _HIDDEN_COLUMNS
                 and not isinstance(r[k], (dict, list))]
    headers = [k.replace("_", " ").capitalize() for k in keys]
    numeric = [all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows)
               and k != "layer" for k in keys]
    return headers, [[_cell(r.get(k)) for k in keys] for r in rows], numeric


def notice_section(results: dict[str, Any]) -> DetailSection | None:
    """Run warnings and what is known to lose on this CPU, marked * beside the figures."""
    cpu = [f"{c.get('name')}: {n}" for c in results.get("candidates") or []
           for n in c.get("cpu_notes") or []]
    said = [w for w in results.get("warnings") or [] if isinstance(w, str)]
    facts = [("* " if w in cpu else "") + w for w in said]
    facts += [f"* {n}" for n in cpu if n not in said]
    return DetailSection("Warnings", facts) if facts else None


def detail_sections(results: dict[str, Any]) -> list[DetailSection]:
    notice = notice_section(results)
    sections = [notice] if notice else []
    for cand in results.get("candidates") or []:
        for step, report in (cand.get("details") or {}).items():
            if not isinstance(report, dict):
                continue
            facts = _budget_facts(report) + _pruning_facts(report) + _training_facts(report)
            layers = [r for r in report.get("layers") or [] if isinstance(r, dict)]
            headers, rows, numeric = _table(layers) if layers else ([], [], [])
            trained = report.get("fine_tuning") or report
            curve = [float(h["loss"]) for h in trained.get("history") or []
                     if isinstance(h, dict) and h.get("loss") is not None]
            sections.append(DetailSection(f"{cand.get('name')}: {step}", facts, headers, rows,
                                          numeric, curve))
    return sections
