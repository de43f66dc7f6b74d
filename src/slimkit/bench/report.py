"""Terminal table for `slimkit bench`."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from slimkit.progress import stdout_console


def print_bench(res: dict[str, Any]) -> None:
    t = Table(title=f"ratios vs {res['baseline']} (inputs: {res['data']})", title_justify="left")
    for col in ["model @ runtime", "throughput ×", "latency ×", "p50 ms", "p90 ms", "p99 ms",
                "items/s", "peak RSS MB"]:
        t.add_column(col, justify="left" if col.startswith("model") else "right")
    for name, r in res["results"].items():
        if "error" in r:
            t.add_row(name, f"[red]failed: {r['error']}[/red]")
            continue
        lat, ratio = r["latency_ms"], r.get("ratios", {})
        t.add_row(name, f"{ratio.get('throughput', float('nan')):.2f}×",
                  f"{ratio.get('latency', float('nan')):.2f}×", f"{lat['p50']:.2f}",
                  f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{r['throughput']:.1f}",
                  f"{r.get('peak_rss_mb', float('nan')):.0f}")
    stdout_console().print(t)
