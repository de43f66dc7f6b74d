"""Single-file HTML report: no external CSS, JS, fonts or images, so it opens offline,
survives being mailed around, and cannot leak that someone looked at it."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from slimkit.report.details import detail_sections
from slimkit.report.formats import number
from slimkit.report.search import search_html
from slimkit.report.svg import Point, bars, curve, scatter
from slimkit.report.table import (
    LEAD,
    LINEAGE_HEADERS,
    LOWER_IS_BETTER,
    Column,
    columns,
    context_items,
    lineage_rows,
    machine_items,
    measurement_note,
    primary_metric,
    provenance,
    quality,
    ratio,
)
from slimkit.results import Candidate, RunResults, as_results

STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color: #1e293b; background: #f8fafc; margin: 0; line-height: 1.45; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.15rem; margin: 32px 0 10px; border-bottom: 1px solid #e2e8f0;
  padding-bottom: 4px; }
.context { color: #475569; margin: 0 0 20px; }
.scroll { overflow-x: auto; background: #fff; border: 1px solid #e2e8f0; border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.86rem; width: 100%; }
th, td { padding: 6px 10px; border-bottom: 1px solid #f1f5f9; text-align: left;
  vertical-align: top; }
th { background: #f1f5f9; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td { background: #fffbeb; }
tr.failed td { color: #64748b; }
td.error { color: #b91c1c; white-space: normal; }
td.good { color: #15803d; font-weight: 600; }
td.bad { color: #b45309; }
.badge { display: inline-block; font-size: 0.7rem; padding: 0 6px; margin-left: 6px;
  border-radius: 9px; background: #fde68a; color: #78350f; vertical-align: middle; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.82rem; }
.charts { display: flex; flex-wrap: wrap; gap: 20px; }
figure { margin: 0; background: #fff; border: 1px solid #e2e8f0; border-radius: 6px;
  padding: 10px; }
figcaption { font-size: 0.85rem; color: #475569; margin-top: 4px; max-width: 680px; }
svg.chart { max-width: 100%; height: auto; font-size: 12px; font-family: inherit; }
svg .tick { fill: #64748b; font-size: 11px; }
svg .axis { fill: #334155; font-size: 12px; font-weight: 600; }
svg .point-label, svg .bar-label { fill: #1e293b; font-size: 11.5px; }
svg .point-label { paint-order: stroke; stroke: #fff; stroke-width: 3px;
  stroke-linejoin: round; }
svg .legend { fill: #475569; font-size: 11px; }
.note { max-width: 860px; color: #334155; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 0.9rem; }
dt { color: #64748b; }
dd { margin: 0; }
footer { margin-top: 32px; color: #94a3b8; font-size: 0.8rem; }
"""


def tone(col: Column, cand: Candidate) -> str:
    """Tint only clear wins or losses against baseline; small differences are noise."""
    value = number(col.value(cand))
    if not col.better or value is None:
        return ""
    gain = value if col.better == "higher" else (1 / value if value > 0 else None)
    if gain is None:
        return ""
    return " good" if gain >= 1.05 else " bad" if gain <= 0.95 else ""


def results_table(results: RunResults) -> str:
    cols = columns(results)
    head = "".join(
        f'<th{" class=num" if col.numeric and i >= LEAD else ""}>{escape(col.title)}</th>'
        for i, col in enumerate(cols)
    )
    rows = []
    for cand in results.candidates:
        is_base = cand.name == results.baseline
        classes = " ".join(c for c in ("baseline" if is_base else "",
                                       "failed" if cand.failed else "") if c)
        cells = []
        for i, col in enumerate(cols[:LEAD] if cand.failed else cols):
            body = escape(col.cell(cand))
            if i == 0 and is_base:
                body += '<span class="badge">baseline</span>'
            if i == 2:
                body = f'<span class="mono">{body}</span>'
            klass = f"num{tone(col, cand)}" if col.numeric and i >= LEAD else ""
            cells.append(f'<td class="{klass}">{body}</td>' if klass else f"<td>{body}</td>")
        if cand.failed:
            cells.append(f'<td class="error" colspan="{len(cols) - LEAD}">failed: '
                         f"{escape(str(cand.error))}</td>")
        row_class = f' class="{classes}"' if classes else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def charts(results: RunResults) -> str:
    metric = primary_metric(results)
    points, speed = [], []
    for cand in results.candidates:
        if cand.failed:
            continue
        is_base = cand.name == results.baseline
        x = number(ratio(cand, "throughput"))
        y = number(quality(cand, metric)) if metric else None
        if x is not None:
            speed.append((cand.name, x, is_base))
            if y is not None:
                points.append(Point(cand.name, x, y, is_base))
    lower = (metric or "") in LOWER_IS_BETTER
    y_label = f"{metric} ({'lower' if lower else 'higher'} is better)" if metric else "quality"
    plot = scatter(points, "throughput vs baseline (×, higher is faster)", y_label, lower)
    bar = bars(speed, "throughput vs baseline (×)")
    figures = []
    if plot:
        figures.append(
            f"<figure>{plot}<figcaption>Each point is a candidate that ran. The dashed line "
            "joins the Pareto front: candidates that no other candidate beats on both "
            "throughput and quality.</figcaption></figure>"
        )
    if bar:
        figures.append(f"<figure>{bar}<figcaption>Throughput ratio per candidate; the "
                       "dashed line marks the baseline.</figcaption></figure>")
    if not figures:
        return '<p class="note">No successful candidate with measurements to plot.</p>'
    return f'<div class="charts">{"".join(figures)}</div>'


def lineage_table(results: RunResults) -> str:
    head = "".join(
        f'<th{" class=num" if h == "Seconds" else ""}>{escape(h)}</th>' for h in LINEAGE_HEADERS
    )
    rows = []
    for row in lineage_rows(results):
        name, step, fmt, secs, cached, key = (escape(c) for c in row)
        step_cell = (f'<td class="error">{step}</td>' if step.startswith("failed:")
                     else f'<td class="mono">{step}</td>')
        rows.append(f"<tr><td>{name}</td>{step_cell}<td>{fmt}</td><td class=num>{secs}</td>"
                    f'<td>{cached}</td><td class="mono">{key}</td></tr>')
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def details_html(results: RunResults) -> str:
    parts = []
    for sec in detail_sections(results):
        parts.append(f"<h2>{escape(sec.title)}</h2>")
        if sec.facts:
            parts.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in sec.facts) + "</ul>")
        if sec.curve:
            parts.append(curve(sec.curve, "training loss per epoch"))
        if sec.rows:
            head = "".join(f"<th>{escape(h)}</th>" for h in sec.headers)
            body = "".join(
                "<tr>" + "".join(f'<td class="{"num" if num else "mono" if i == 0 else ""}">'
                                 f"{escape(cell)}</td>"
                                 for i, (cell, num) in enumerate(zip(row, sec.numeric,
                                                                     strict=True)))
                + "</tr>" for row in sec.rows)
            parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                         f"<tbody>{body}</tbody></table></div>")
    return "\n".join(parts)


def render_html(results: RunResults | Mapping[str, Any]) -> str:
    """The same facts as the Markdown report, plus the trade-off drawn as a picture."""
    results = as_results(results)
    name = results.name or "run"
    context = " · ".join(escape(item) for item in context_items(results))
    machine = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in machine_items(results)
    )
    made = escape(provenance(results))
    metric = primary_metric(results)
    metric_note = (f'<p class="note">Primary quality metric: <code>{escape(metric)}</code>.</p>'
                   if metric else "")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>slimkit report: {escape(name)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body><main>",
        f"<h1>slimkit report: {escape(name)}</h1>",
        f'<p class="context">{context}</p>',
        results_table(results),
        metric_note,
        "<h2>Quality versus speed</h2>",
        charts(results),
        "<h2>How these were measured</h2>",
        f'<p class="note">{escape(" ".join(measurement_note(results)))}</p>',
        search_html(results),
        details_html(results),
        "<h2>Lineage</h2>",
        lineage_table(results),
        "<h2>Machine</h2>",
        f"<dl>{machine}</dl>" if machine else "<p>unknown</p>",
        f"<footer>Generated by {made}.</footer>" if made else "",
        "</main></body>",
        "</html>",
        "",
    ])
