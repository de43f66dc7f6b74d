"""A profile as a terminal table and as an HTML section a report page embeds.

Both views take their rows from one function, so the terminal and the report never round a
figure two ways; units follow the run reports (a megabyte is 10^6 bytes).
"""

from __future__ import annotations

import re
from html import escape

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from slimkit.optimize.profile import LayerProfile, Profile
from slimkit.report.formats import DASH, format_latency, format_rate, format_size, number
from slimkit.report.svg import bars

SHOWN_LAYERS = 15
LARGE_SHARE = 0.1  # a layer this large in bytes or FLOPs is shown whatever its time
SHOWN_OPS = 8
KINDS_SHOWN = 3
HEADERS = ("Layer", "Kinds", "Params", "Size MB", "MFLOPs", "Time ms", "Share")
NUMERIC = (False, False, True, True, True, True, True)


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def _row(name: str, kinds: list[str], params: int, nbytes: int, flops: float, ms: float,
         share: float) -> list[str]:
    shown = ", ".join(kinds[:KINDS_SHOWN]) + (", …" if len(kinds) > KINDS_SHOWN else "")
    return [name, shown or DASH, _count(params), format_size(nbytes),
            format_latency(flops / 1e6), format_latency(ms), _percent(share)]


def profile_rows(p: Profile) -> list[list[str]]:
    """The top layers by time, then any other layer that holds a large share of the bytes or
    FLOPs (an embedding table costs little time and much memory), then one row for all the
    rest, so the table stays readable on a model with hundreds of modules and still adds up."""
    def large(lp: LayerProfile) -> bool:
        return (p.bytes > 0 and lp.bytes >= LARGE_SHARE * p.bytes) or (
            p.flops > 0 and lp.flops >= LARGE_SHARE * p.flops)

    top = p.layers[:SHOWN_LAYERS] + [lp for lp in p.layers[SHOWN_LAYERS:] if large(lp)]
    rest = [lp for lp in p.layers[SHOWN_LAYERS:] if not large(lp)]
    rows = [_row(lp.name, lp.kinds, lp.params, lp.bytes, lp.flops, lp.time_ms, lp.time_share)
            for lp in top]
    if rest:
        rows.append(_row(f"rest ({len(rest)} layers)", [], sum(lp.params for lp in rest),
                         sum(lp.bytes for lp in rest), sum(lp.flops for lp in rest),
                         sum(lp.time_ms for lp in rest), sum(lp.time_share for lp in rest)))
    return rows


def _machine_kind(p: Profile) -> str:
    """Where it was measured, as recorded; a profile read back elsewhere keeps its own CPU."""
    caps = p.machine.get("capabilities") if isinstance(p.machine, dict) else None
    if isinstance(caps, dict) and caps.get("kind"):
        return str(caps["kind"])
    from slimkit.machine import capabilities

    return capabilities().kind()


def header_line(p: Profile) -> str:
    """What a reader needs before the table to judge it: the kind of model, where it ran, and
    how fast the whole model is, against which a layer's milliseconds are read."""
    latency = p.baseline.get("latency_ms") or {}
    p50 = number(latency.get("p50")) if isinstance(latency, dict) else None
    speed = (f"baseline p50 {format_latency(p50)} ms (batch 1), "
             f"{format_rate(p.baseline.get('throughput'))} items/s (batch {p.batch_size})")
    return (f"{p.model}: {p.family.replace('_', ' ')} on {p.runtime}, {p.threads} threads · "
            f"{_machine_kind(p)} · {speed}")


def _shares_text(shares: dict[str, float], limit: int) -> str:
    items = sorted(shares.items(), key=lambda kv: -kv[1])
    shown = [f"{k} {_percent(v)}" for k, v in items[:limit] if v > 0]
    rest = sum(v for _, v in items[limit:])
    if rest > 0:
        shown.append(f"others {_percent(rest)}")
    return " · ".join(shown) or DASH


def facts(p: Profile) -> list[str]:
    """The lines around the table: operator types by time, weights and FLOPs by role, and
    how much of the wall time the runtime's operator counters account for."""
    return [
        f"operators by time: {_shares_text(p.op_time_share, SHOWN_OPS)}",
        f"weights by role: {_shares_text(p.kind_bytes_share, 5)}; "
        f"FLOPs by role: {_shares_text(p.kind_flops_share, 5)}",
        f"{_count(p.params)} parameters, {format_size(p.bytes)} MB stored, "
        f"{format_latency(p.flops / 1e6)} MFLOPs per example; operator time "
        f"{format_latency(p.measured_ms)} ms of {format_latency(p.wall_ms)} ms wall per batch "
        f"of {p.batch_size}",
    ]


def print_profile(p: Profile, console: Console | None = None) -> None:
    """Header, table and facts to the terminal; stdout by default, as the run summary."""
    from slimkit.progress import stdout_console

    console = console or stdout_console()
    console.print(rich_escape(header_line(p)), highlight=False)
    table = Table(title=f"where the time goes on {p.runtime} (per batch of {p.batch_size})",
                  title_justify="left")
    for head, numeric in zip(HEADERS, NUMERIC, strict=True):
        table.add_column(head, justify="right" if numeric else "left")
    for row in profile_rows(p):
        table.add_row(*(rich_escape(c) for c in row))
    console.print(table)
    for line in facts(p):
        console.print(rich_escape(line), highlight=False)


_REFERENCE_LINE = re.compile(r'<line [^>]*stroke-dasharray="3 3"/>\n?')
_REFERENCE_LABEL = re.compile(r"<text [^>]*>1× \(baseline\)</text>\n?")
_TIMES_VALUE = re.compile(r"(\d+(?:\.\d+)?)×")


def share_chart(p: Profile) -> str:
    """`svg.bars` draws speed-ups: values with a × and a dashed 1× baseline line. Shares are
    drawn in percent so the bars use the width, and the baseline line and the × go, since a
    share has no baseline."""
    items = [(lp.name, lp.time_share * 100, False) for lp in p.layers[:SHOWN_LAYERS]]
    svg = bars(items, "share of measured operator time (%)")
    svg = _REFERENCE_LABEL.sub("", _REFERENCE_LINE.sub("", svg))
    return _TIMES_VALUE.sub(lambda m: f"{float(m.group(1)):.1f}%", svg)


def profile_html(p: Profile) -> str:
    """A `<section id="profile">` for a report page: it relies on the page's styles and
    needs no script or stylesheet of its own."""
    head = "".join(f'<th class="{"num" if num else ""}">{escape(h)}</th>'
                   for h, num in zip(HEADERS, NUMERIC, strict=True))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if num else "mono" if i == 0 else ""}">'
                         f"{escape(cell)}</td>"
                         for i, (cell, num) in enumerate(zip(row, NUMERIC, strict=True)))
        + "</tr>" for row in profile_rows(p))
    items = "".join(f"<li>{escape(line)}</li>" for line in facts(p))
    return "\n".join([
        '<section id="profile">',
        f"<h2>Profile: {escape(p.model)} on {escape(p.runtime)}</h2>",
        f'<p class="context">{escape(header_line(p))}</p>',
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>",
        f"<ul>{items}</ul>",
        f"<figure>{share_chart(p)}<figcaption>Share of the operator time the runtime "
        f"measured, by layer (top {SHOWN_LAYERS}).</figcaption></figure>",
        "</section>",
    ])
