"""The search part of report.html: every trial on one chart (the front drawn, dominated, over
budget and failed trials faint), the front as a table, every trial, and the advice and
profile that chose what to try."""

from __future__ import annotations

from html import escape
from typing import Any

from slimkit.report.svg import ACCENT, BASE, GRID, INK, MUTED, Frame, text, ticks, value_range
from slimkit.results import RunResults
from slimkit.results_search import SearchInfo, TrialRecord

_X = {"throughput": ("estimated throughput (items/s, higher is better)", "throughput"),
      "latency": ("estimated latency p50 (ms, lower is better)", "latency_ms"),
      "memory": ("estimated peak memory (MB, lower is better)", "peak_rss_mb"),
      "size": ("size (MB, lower is better)", None)}


def _x(t: TrialRecord, objective: str) -> float | None:
    key = _X[objective][1]
    if key is None:
        return t.size_bytes / 1e6 if t.size_bytes else None
    value = (t.estimate or {}).get(key)
    return float(value) if value is not None else None


def _y(t: TrialRecord, cosine: bool) -> float | None:
    fid = t.fidelity or t.slice or {}
    value = fid.get("cosine") if cosine else fid.get("accuracy_drop")
    return float(value) if value is not None else None


def _mark(cls: str, cx: float, cy: float, title: str) -> str:
    colour = {"front": ACCENT, "best": ACCENT, "within": "#64748b", "over": MUTED,
              "pruned": MUTED, "failed": "#ef4444"}[cls]
    opacity = "1" if cls in ("front", "best") else "0.35"
    if cls == "failed":
        return (f'<g class="trial failed" opacity="{opacity}"><title>{escape(title)}</title>'
                f'<path d="M{cx - 4:.1f} {cy - 4:.1f}L{cx + 4:.1f} {cy + 4:.1f}M{cx - 4:.1f} '
                f'{cy + 4:.1f}L{cx + 4:.1f} {cy - 4:.1f}" stroke="{colour}" '
                f'stroke-width="1.5"/></g>')
    r = 7 if cls == "best" else 5
    fill = colour if cls != "pruned" else "none"
    return (f'<circle class="trial {cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{fill}" '
            f'stroke="{colour}" stroke-width="1.5" opacity="{opacity}"><title>'
            f"{escape(title)}</title></circle>")


def _title(t: TrialRecord) -> str:
    chain = " → ".join(next(iter(s)) for s in t.steps) or "as is"
    return f"#{t.number} {t.runtime}: {chain} ({t.state}{', ' + t.error if t.error else ''})"


def trials_chart(s: SearchInfo, width: int = 720, height: int = 420) -> str:
    cosine = s.budget.get("min_cosine") is not None
    on_front = {t.number for t in s.trials if t.candidate in s.front}
    best = {t.number for t in s.trials if t.candidate and t.candidate == s.best}
    placed = [(t, _x(t, s.objective), _y(t, cosine)) for t in s.trials]
    shown = [(t, x, y) for t, x, y in placed if x is not None and y is not None]
    if not shown:
        return ""
    limit = s.budget.get("min_cosine") if cosine else s.budget.get("max_drop")
    ys = [y for _, _, y in shown] + ([float(limit)] if limit is not None else [])
    f = Frame(70, 30, width - 100, height - 90, *value_range([x for _, x, _ in shown]),
              *value_range(ys))
    out = [f'<svg class="chart" id="search-chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="trials">',
           "<title>Every trial: quality against the objective</title>", *_axes(f)]
    out.append(text(f.left + f.width / 2, height - 36, _X[s.objective][0], "middle", "axis"))
    y_label = "mean cosine (higher is better)" if cosine else "accuracy drop (points, lower " \
                                                              "is better)"
    out.append(f'<text class="axis" text-anchor="middle" transform="translate(16 '
               f'{f.top + f.height / 2:.1f}) rotate(-90)">{escape(y_label)}</text>')
    if limit is not None:
        y = f.sy(float(limit))
        out.append(f'<line id="budget-line" x1="{f.left}" y1="{y:.1f}" x2="{f.left + f.width}" '
                   f'y2="{y:.1f}" stroke="{BASE}" stroke-dasharray="5 4"/>')
        out.append(text(f.left + f.width - 4, y - 5, "budget", "end", "legend"))
    front = _staircase([(x, y) for t, x, y in shown if t.number in on_front],
                       x_up=s.objective == "throughput", y_up=cosine)
    if front:
        path = " ".join(f"{'M' if i == 0 else 'L'}{f.sx(x):.1f} {f.sy(y):.1f}"
                        for i, (x, y) in enumerate(front))
        out.append(f'<path id="pareto-front" d="{path}" fill="none" stroke="{ACCENT}" '
                   f'stroke-width="1.5" stroke-dasharray="6 4"/>')
    for t, x, y in sorted(shown, key=lambda p: p[0].number in on_front):
        cls = "best" if t.number in best else "front" if t.number in on_front else \
            "pruned" if t.state == "pruned" else "within" if t.within_budget else "over"
        out.append(_mark(cls, f.sx(x), f.sy(y), _title(t)))
    failed = [t for t in s.trials if t.state in ("failed", "interrupted")]
    for k, t in enumerate(failed):
        out.append(_mark("failed", f.left + 10 + 12 * (k % 50), height - 14, _title(t)))
    if failed:
        out.append(text(f.left + 16 + 12 * min(len(failed), 50), height - 10,
                        f"{len(failed)} failed", cls="legend"))
    out.append("</svg>")
    return "\n".join(out)


def _staircase(points: list[tuple[float, float]], x_up: bool, y_up: bool
               ) -> list[tuple[float, float]]:
    """The front members that no other beats on both plotted axes, in x order: the line the
    eye reads as the trade-off (members kept for size alone are marked, not joined)."""
    sx, sy = (1 if x_up else -1), (1 if y_up else -1)
    kept = [(x, y) for x, y in points
            if not any(sx * a >= sx * x and sy * b >= sy * y and (a, b) != (x, y)
                       for a, b in points)]
    return sorted(kept)


def _axes(f: Frame) -> list[str]:
    out = []
    xs, xd = ticks(f.x_lo, f.x_hi)
    ys, yd = ticks(f.y_lo, f.y_hi)
    bottom = f.top + f.height
    for x in xs:
        out.append(f'<line x1="{f.sx(x):.1f}" y1="{f.top}" x2="{f.sx(x):.1f}" y2="{bottom}" '
                   f'stroke="{GRID}"/>')
        out.append(text(f.sx(x), bottom + 18, f"{x:.{xd}f}", "middle", "tick"))
    for y in ys:
        out.append(f'<line x1="{f.left}" y1="{f.sy(y):.1f}" x2="{f.left + f.width}" '
                   f'y2="{f.sy(y):.1f}" stroke="{GRID}"/>')
        out.append(text(f.left - 8, f.sy(y) + 4, f"{y:.{yd}f}", "end", "tick"))
    out.append(f'<rect x="{f.left}" y="{f.top}" width="{f.width}" height="{f.height}" '
               f'fill="none" stroke="{INK}"/>')
    return out


def _table(headers: list[str], rows: list[list[str]], row_class: list[str] | None = None
           ) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(f'<tr class="{row_class[i] if row_class else ""}">'
                   + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(rows))
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}'
            f"</tbody></table></div>")


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def trials_table(s: SearchInfo) -> str:
    rows, classes = [], []
    for t in s.trials:
        fid = t.fidelity or t.slice or {}
        est = t.estimate or {}
        chain = " → ".join(next(iter(st)) + (f" {st[next(iter(st))]}" if st[next(iter(st))]
                                             else "") for st in t.steps) or "as is"
        rows.append([str(t.number), t.state + (f" (= #{t.repeat_of})" if t.repeat_of is not None
                                               else ""), str(t.runtime), chain,
                     _fmt(fid.get("cosine"), ".4f"), _fmt(fid.get("accuracy_drop"), ".2f"),
                     _fmt(est.get("throughput"), ".1f"), _fmt(est.get("latency_ms"), ".2f"),
                     _fmt((t.size_bytes or 0) / 1e6 if t.size_bytes else None, ".2f"),
                     _fmt(t.seconds, ".0f"), t.node or "", t.error or ""])
        classes.append("failed" if t.state in ("failed", "interrupted", "pruned") else "")
    return _table(["#", "state", "runtime", "steps", "cosine", "drop", "items/s (est.)",
                   "p50 ms (est.)", "MB", "s", "node", "error"], rows, classes)


def advice_html(s: SearchInfo) -> str:
    a = s.advice or {}
    items = [f"<li><b>{escape(i['id'])}</b> on {escape(', '.join(i['runtimes']))}: "
             f"{escape('; '.join(i['reasons']))}</li>" for i in a.get("ideas", [])]
    items += [f"<li>note: {escape(n)}</li>" for n in a.get("notes", [])]
    items += [f"<li>left out: {escape(n)}</li>" for n in a.get("skipped", [])]
    return f"<ul>{''.join(items)}</ul>"


def search_html(results: RunResults) -> str:
    """The search's sections, or nothing for a plain run."""
    from slimkit.optimize.render import front_rows, trial_counts

    s = results.search
    if s is None:
        return ""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(trial_counts(results).items()))
    budget = ", ".join(f"{k}={v}" for k, v in s.budget.items() if v is not None)
    parts = [
        "<h2>Search</h2>",
        f'<p class="note">{len(s.trials)} trials ({escape(counts)}) in '
        f"{_fmt(s.minutes, '.1f')} min over {s.runs} run(s), workers: {escape(s.workers)}. "
        f"Objective: {escape(s.objective)}; budget: {escape(budget)}. Best: "
        f"<b>{escape(s.best or 'none within budget')}</b>. Trial speeds are quick estimates "
        "(one process, one round) that only chose the finalists; the front's figures come from "
        "the side-by-side benchmark above.</p>",
        f"<figure>{trials_chart(s)}<figcaption>Each mark is a trial. Solid: the measured "
        "front; faint: dominated or over budget; hollow: stopped after the first slice of "
        "data; red crosses: failed.</figcaption></figure>",
        "<h2>Pareto front</h2>",
        _table(["candidate", "runtime", "steps", results.primary_metric or "quality",
                s.objective, "size"], front_rows(results)),
        "<h2>Advice</h2>", advice_html(s),
        "<h2>Trials</h2>", trials_table(s),
    ]
    if s.profile:
        from slimkit.optimize.profile import Profile
        from slimkit.optimize.profile_render import profile_html

        parts.append(profile_html(Profile.model_validate(s.profile)))
    return "\n".join(parts)
