"""What techniques report about themselves (layers kept in float, per-layer sensitivity,
channels and heads removed, sparsity, training history), as sections shared by the Markdown
and HTML reports and one-line headlines for the terminal.

A report names its technique, and the technique decides which facts are read from it. The
table's columns come from the report's per-layer rows, and a technique this module does not
know still shows its plain fields, so a new technique's report shows up without a change here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slimkit.report.formats import format_cell
from slimkit.report.section import DetailSection
from slimkit.report.served import served_section
from slimkit.results import RunResults, StepReport

# Row keys that are recorded for rebuilding or plotting, not for reading.
_HIDDEN_COLUMNS = {"heads_kept", "pruned"}

Fields = dict[str, Any]


def _quantization_facts(report: Fields) -> list[str]:
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
    facts += _budget_check_facts(report)
    if report.get("layer_costs"):
        facts.append(f"layers kept in float by {report.get('fallback', 'sensitivity')}; "
                     f"costs: {report['layer_costs']}")
    if report.get("trials"):
        facts.append(f"quantized and scored {report['trials']} times")
    if report.get("int8_mode"):
        facts.append(f"int8 operands: {report['int8_mode']} ({report.get('int8_mode_reason')})")
    if isinstance(report.get("calibration"), str):
        facts.append(f"activation ranges: {report['calibration']}")
    return facts


def _budget_check_facts(report: Fields) -> list[str]:
    """Quality on the calibration rows the search chose layers with, and on the rows held
    out from it, side by side: a budget that holds only on the first was fitted to them."""
    facts = []
    rows = report.get("search_rows")
    for key in ("cosine", "accuracy_drop"):
        if report.get(key) is None:
            continue
        name = key.replace("_", " ")
        if rows is None:  # a report from before the held-out check
            facts.append(f"{name} on calibration data: {report[key]:.4f}")
            continue
        line = f"{name} on calibration data: {report[key]:.4f} on {rows} search rows"
        if report.get(f"heldout_{key}") is not None:
            line += f", {report[f'heldout_{key}']:.4f} on {report.get('heldout_rows')} held out"
        facts.append(line)
    verdicts = {"search rows": report.get("within_budget"),
                "held-out rows": report.get("within_budget_heldout")}
    failed = [where for where, ok in verdicts.items() if ok is False]
    if failed:
        facts.append(f"budget not met on the {' and '.join(failed)}")
    if report.get("all_float"):
        facts.append("every layer is kept in float: nothing is quantized")
    if report.get("heldout_note"):
        facts.append(str(report["heldout_note"]))
    return facts


def _fusion_facts(report: Fields) -> list[str]:
    fused = report.get("fused_operators") or {}
    return [f"fused operators: {', '.join(f'{k} ×{v}' for k, v in fused.items())}"] if fused \
        else []


def _pruning_facts(report: Fields) -> list[str]:
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
    return facts + _training_facts(_fine_tuning(report))


def _training_facts(report: Fields) -> list[str]:
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


def _fine_tuning(report: Fields) -> Fields:
    """Pruning nests the training that recovers quality."""
    nested = report.get("fine_tuning")
    return nested if isinstance(nested, dict) else {}


def _plain_facts(report: Fields) -> list[str]:
    """An unknown technique's scalar fields, as they are."""
    return [f"{key.replace('_', ' ')}: {format_cell(value)}" for key, value in report.items()
            if isinstance(value, str | int | float | bool)]


def _facts_of(family: str) -> Callable[[Fields], list[str]]:
    return {"quantization": _quantization_facts, "pruning": _pruning_facts,
            "distillation": _training_facts, "fusion": _fusion_facts,
            "smoothing": lambda _: []}.get(family, _plain_facts)


def _training_of(family: str, report: Fields) -> Fields:
    """The part of a report that holds a training history, if the technique trains."""
    if family == "pruning":
        return _fine_tuning(report)
    return report if family == "distillation" else {}


def _table(rows: list[Fields]) -> tuple[list[str], list[list[str]], list[bool]]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in _HIDDEN_COLUMNS
                 and not isinstance(r[k], (dict, list))]
    headers = [k.replace("_", " ").capitalize() for k in keys]
    numeric = [all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows)
               and k != "layer" for k in keys]
    return headers, [[format_cell(r.get(k)) for k in keys] for r in rows], numeric


def step_section(title: str, report: StepReport) -> DetailSection:
    fields = report.fields
    facts = _facts_of(report.family)(fields)
    layers = [r for r in fields.get("layers") or [] if isinstance(r, dict)]
    headers, rows, numeric = _table(layers) if layers else ([], [], [])
    history = _training_of(report.family, fields).get("history") or []
    curve = [float(h["loss"]) for h in history
             if isinstance(h, dict) and isinstance(h.get("loss"), int | float)]
    return DetailSection(title, facts, headers, rows, numeric, curve)


def notice_section(results: RunResults) -> DetailSection | None:
    """Run warnings and what is known to lose on this CPU, marked * beside the figures."""
    cpu = [f"{c.name}: {n}" for c in results.candidates for n in c.cpu_notes]
    facts = [("* " if w in cpu else "") + w for w in results.warnings]
    facts += [f"* {n}" for n in cpu if n not in results.warnings]
    return DetailSection("Warnings", facts) if facts else None


def detail_sections(results: RunResults) -> list[DetailSection]:
    notice = notice_section(results)
    served = served_section(results)
    sections = [s for s in (notice, served) if s is not None]
    for cand in results.candidates:
        for label, report in (cand.details or {}).items():
            sections.append(step_section(f"{cand.name}: {label}", report))
    return sections


def headline(report: StepReport) -> str | None:
    """The one fact about a step worth a line in the terminal after a one-technique command."""
    fields = report.fields
    if report.family == "quantization" and fields.get("kept_float") is not None:
        return f"{len(fields['kept_float'])} layer(s) kept in float"
    if report.family == "pruning" and fields.get("flops_ratio") is not None:
        return f"{fields['flops_ratio']:.2f}× the FLOPs"
    return None


def headlines(results: RunResults) -> list[str]:
    return [f"{cand.name} {label}: {line}" for cand in results.candidates
            for label, report in (cand.details or {}).items()
            if (line := headline(report)) is not None]
