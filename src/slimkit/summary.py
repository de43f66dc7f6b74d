"""The table printed at the end of a run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from slimkit.progress import stdout_console


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}×"


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def _q(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key == "accuracy" or key == "agreement" or key.endswith("_agreement"):
        return f"{100 * v:.2f}%"
    if key.endswith("_db") or key.endswith("delta"):
        return f"{v:+.2f}" if key.endswith("delta") else f"{v:.1f}"
    return f"{v:.4f}"


def quality_columns(doc: dict[str, Any]) -> list[str]:
    primary = doc["primary_metric"]
    keys: list[str] = [primary]
    for c in doc["candidates"]:
        for k in c.get("quality") or {}:
            if k not in keys and k != "max_abs_error":
                keys.append(k)
    return keys[:3]


def summary_table(doc: dict[str, Any]) -> Table:
    qcols = quality_columns(doc)
    t = Table(title=f"{doc['name']}: ratios vs {doc['baseline']} (measured in one run)",
              title_justify="left")
    for col in ["candidate", "runtime", "throughput ×", "latency ×", "p50 ms", "p99 ms",
                "items/s", "size MB", "size ×", *qcols]:
        t.add_column(col, justify="left" if col in ("candidate", "runtime") else "right")
    for c in doc["candidates"]:
        name = c["name"] + (" (baseline)" if c["name"] == doc["baseline"] else "")
        if c.get("error"):
            t.add_row(name, c["runtime"], "[red]failed[/red]")
            continue
        b = c.get("bench") or {}
        r = c.get("ratios") or {}
        lat = b.get("latency_ms") or {}
        q = c.get("quality") or {}
        size = c.get("size_bytes")
        mark = " *" if c.get("cpu_notes") else ""  # known to lose on this CPU: see below
        t.add_row(name, c["runtime"], _x(r.get("throughput")) + mark, _x(r.get("latency")),
                  _ms(lat.get("p50")), _ms(lat.get("p99")),
                  f"{b['throughput']:.1f}" if "throughput" in b else "-",
                  f"{size / 1e6:.1f}" if size else "-", _x(r.get("size")),
                  *[_q(k, q.get(k)) for k in qcols])
    return t


def print_summary(doc: dict[str, Any], console: Console | None = None) -> None:
    console = console or stdout_console()
    console.print(summary_table(doc))
    caps = (doc.get("machine") or {}).get("capabilities") or {}
    for c in doc["candidates"]:
        for note in c.get("cpu_notes") or []:
            console.print(f"[yellow]* {c['name']}:[/yellow] {note}", highlight=False)
    if caps.get("kind"):
        console.print(f"CPU: {caps['kind']}", highlight=False)
    for c in doc["candidates"]:
        if c.get("error"):
            console.print(f"[red]{c['name']} failed:[/red] {c['error']}", highlight=False)
