"""Markdown report, plus the table model that the HTML report shares.

The table is defined once (as a list of columns) so that the Markdown and the HTML
reports can never disagree about which figures they show or how they are rounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimkit.report.details import detail_sections

DASH = "—"
KNOWN_METRICS: dict[str, list[str]] = {
    "embedding": ["mean_cosine", "min_cosine", "top10_agreement"],
    "classification": ["accuracy", "accuracy_delta", "agreement"],
    "generic": ["sqnr_db", "cosine", "max_abs_error"],
}
# Error-like metrics: for these a smaller value means a better candidate.
LOWER_IS_BETTER = frozenset({"max_abs_error", "mean_abs_error", "mae", "mse", "rmse", "loss"})
BENCH_LABELS = {"batch_size": "batch size", "warmup": "warm-up calls"}


def number(value: Any) -> float | None:
    """Failed or partial measurements arrive as None/NaN/strings; treat them all as missing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def dig(data: Any, *keys: str) -> Any:
    """Candidates may lack whole blocks (bench, quality) when they failed."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def fmt_ratio(value: Any) -> str:
    x = number(value)
    return DASH if x is None else f"{x:.2f}×"


def fmt_ms(value: Any) -> str:
    x = number(value)
    return DASH if x is None else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def fmt_mb(value: Any) -> str:
    x = number(value)
    return DASH if x is None else f"{x:.1f}"


def fmt_bytes_mb(value: Any) -> str:
    x = number(value)
    return DASH if x is None else f"{x / 1e6:.1f}"


def fmt_metric(key: str, value: Any) -> str:
    """Each metric family is read differently, so each gets the precision people expect."""
    x = number(value)
    if x is None:
        return DASH
    name = key.lower()
    if name.endswith("_delta"):
        return f"{x:+.2f} pt"
    if "accuracy" in name or "agreement" in name:
        # Fractions (0..1) are shown as percentages; values already in percent pass through.
        return f"{x * 100 if abs(x) <= 1 else x:.2f}%"
    if "cosine" in name:
        return f"{x:.4f}"
    if name.endswith("_db"):
        return f"{x:.1f} dB"
    return f"{x:.4g}"


def is_failed(candidate: dict) -> bool:
    return bool(candidate.get("error"))


def candidates(results: dict) -> list[dict]:
    return [c for c in results.get("candidates") or [] if isinstance(c, dict)]


def primary_metric(results: dict) -> str | None:
    keys = quality_keys(results)
    return results.get("primary_metric") or (keys[0] if keys else None)


def quality_keys(results: dict) -> list[str]:
    """Primary first, then the task's usual order, then user metrics as first seen: stable."""
    seen: list[str] = []
    for cand in candidates(results):
        quality = cand.get("quality")
        if isinstance(quality, dict):
            seen.extend(k for k in quality if k not in seen)
    preferred = [results.get("primary_metric"), *KNOWN_METRICS.get(results.get("task") or "", [])]
    ordered = [k for k in preferred if k in seen]
    return list(dict.fromkeys(ordered + seen))


def step_summary(steps: Any) -> str:
    """A one-line recipe; `save` is bookkeeping, not a transformation, so it is left out."""
    parts = [
        step_label(s) for s in steps or [] if isinstance(s, dict) and s.get("step") != "save"
    ]
    return " → ".join(parts) or DASH


def step_label(step: dict) -> str:
    """Options switched on read as flags; off/unset ones are noise in a one-line recipe."""
    opts = step.get("options") if isinstance(step.get("options"), dict) else {}
    on = {k: v for k, v in opts.items() if v is not None and v is not False}
    shown = [k if v is True else f"{k}={v}" for k, v in on.items()]
    name = str(step.get("step", "?"))
    return f"{name}({', '.join(shown)})" if shown else name


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[dict], Any]
    fmt: Callable[[Any], str] = str
    numeric: bool = True
    better: str = ""  # "higher" or "lower": lets the HTML tint ratios relative to baseline
    mark: Callable[[dict], str] | None = None  # a footnote sign after the figure

    def cell(self, candidate: dict) -> str:
        value = self.value(candidate)
        text = DASH if value is None else self.fmt(value)
        return text + (self.mark(candidate) if self.mark and value is not None else "")


def cpu_mark(candidate: dict) -> str:
    """Known to lose on this CPU; the Warnings section says why."""
    return " *" if candidate.get("cpu_notes") else ""


# Columns shown for every candidate, even a failed one; the error takes the rest of the row.
LEAD = 3


def columns(results: dict) -> list[Column]:
    cols = [
        Column("Candidate", lambda c: c.get("name"), numeric=False),
        Column("Runtime", lambda c: c.get("runtime"), numeric=False),
        Column("Steps", lambda c: step_summary(c.get("steps")), numeric=False),
        Column("Throughput ×", lambda c: dig(c, "ratios", "throughput"), fmt_ratio, True, "higher",
               cpu_mark),
        Column("Latency ×", lambda c: dig(c, "ratios", "latency"), fmt_ratio, True, "higher"),
        Column("p50 ms", lambda c: dig(c, "bench", "latency_ms", "p50"), fmt_ms),
        Column("p99 ms", lambda c: dig(c, "bench", "latency_ms", "p99"), fmt_ms),
        Column("Items/s", lambda c: dig(c, "bench", "throughput"), fmt_ms),
        Column("Size MB", lambda c: c.get("size_bytes"), fmt_bytes_mb),
        Column("Size ×", lambda c: dig(c, "ratios", "size"), fmt_ratio, True, "lower"),
        Column("Peak RSS MB", lambda c: dig(c, "bench", "peak_rss_mb"), fmt_mb),
    ]
    return cols + [
        Column(k, lambda c, k=k: dig(c, "quality", k), lambda v, k=k: fmt_metric(k, v))
        for k in quality_keys(results)
    ]


def context_items(results: dict) -> list[str]:
    """The facts a reader needs before trusting any number: what, where, how parallel."""
    machine = results.get("machine") or {}
    bench = results.get("benchmark") or {}
    items = []
    if results.get("name"):
        items.append(f"model {results['name']}")
    if results.get("task"):
        items.append(f"task {results['task']}")
    cores = machine.get("cores") and f"{machine['cores']} cores"
    if cpu := ", ".join(str(part) for part in (machine.get("cpu"), cores) if part):
        items.append(cpu)
    if bench.get("threads") is not None:
        items.append(f"{bench['threads']} threads")
    if bench.get("batch_size") is not None:
        items.append(f"serving batch {bench['batch_size']}")
    if results.get("baseline"):
        items.append(f"baseline {results['baseline']}")
    return items


def measurement_note(results: dict) -> list[str]:
    """Sentences built only from the benchmark block, so the report never claims more than ran."""
    bench = results.get("benchmark") or {}
    sentences = [
        "All candidates were measured in the same run on the same machine, "
        "so the ratios compare like with like."
    ]
    if bench.get("rounds") is not None:
        sentences.append(
            f"Measurements ran in {bench['rounds']} interleaved rounds (every candidate once "
            "per round, each turn in a fresh process that loads, warms up, measures and exits), "
            "so slow drift in machine load touches all candidates alike and no candidate's "
            "process shares the machine with another's."
        )
    sentences.append(
        "Throughput × is the median of the per-round ratios of candidate to baseline throughput "
        "(above 1 is faster); latency × is the baseline p50 latency divided by the candidate's "
        "(above 1 is faster); size × is candidate bytes over baseline bytes (below 1 is smaller)."
    )
    settings = [
        f"{BENCH_LABELS.get(k, k.replace('_', ' '))} {v}"
        for k, v in bench.items()
        if v is not None and not isinstance(v, dict | list)
    ]
    return [*sentences, "Settings: " + ", ".join(settings) + "."] if settings else sentences


def lineage_rows(results: dict) -> list[list[str]]:
    """One row per step so a reader can see what was cached and which artifact key it hit."""
    rows = []
    for cand in candidates(results):
        name = str(cand.get("name", "?"))
        steps = [s for s in cand.get("steps") or [] if isinstance(s, dict)]
        for i, step in enumerate(steps):
            cached = step.get("cached")
            secs = number(step.get("seconds"))
            rows.append([
                name if i == 0 else "",
                step_label(step),
                str(step.get("format") or DASH),
                DASH if secs is None else f"{secs:.2f}",
                DASH if cached is None else ("yes" if cached else "no"),
                str(step.get("key") or DASH)[:12],
            ])
        if not steps or is_failed(cand):
            error = f"failed: {cand['error']}" if is_failed(cand) else "no steps recorded"
            rows.append([name if not steps else "", error, DASH, DASH, DASH, DASH])
    return rows


LINEAGE_HEADERS = ["Candidate", "Step", "Format", "Seconds", "Cached", "Key"]


def shorten(text: Any, limit: int) -> str:
    """Tracebacks would wreck a table row; the lineage section keeps the full message."""
    text = " ".join(str(text).split())
    return text[: limit - 1] + "…" if len(text) > limit else text


def md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def md_table(headers: list[str], rows: list[list[str]], numeric: list[bool]) -> list[str]:
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(results: dict) -> str:
    """A report that reads well in a terminal, a PR comment or a README."""
    cols = columns(results)
    baseline = results.get("baseline")
    rows = []
    for cand in candidates(results):
        row = [col.cell(cand) for col in cols]
        if cand.get("name") == baseline:
            row[0] = f"**{row[0]}** (baseline)"
        if is_failed(cand):
            tail = len(cols) - LEAD
            row[LEAD:] = [f"**failed:** {shorten(cand['error'], 160)}"] + [DASH] * (tail - 1)
        rows.append(row)
    title = results.get("name") or "run"
    out = [f"# slimkit report: {title}", "", " · ".join(context_items(results)), ""]
    numeric = [col.numeric and i >= LEAD for i, col in enumerate(cols)]
    out += md_table([col.title for col in cols], rows, numeric)
    metric = primary_metric(results)
    if metric:
        out += ["", f"Primary quality metric: `{metric}`."]
    out += ["", "## How these were measured", "", " ".join(measurement_note(results))]
    for sec in detail_sections(results):
        out += ["", f"## {sec.title}", "", *[f"- {f}" for f in sec.facts]]
        if sec.rows:
            out += ["", *md_table(sec.headers, sec.rows, sec.numeric)]
    out += ["", "## Lineage", ""]
    lineage_numeric = [h == "Seconds" for h in LINEAGE_HEADERS]
    out += md_table(LINEAGE_HEADERS, lineage_rows(results), lineage_numeric)
    out += ["", *footer_lines(results)]
    return "\n".join(out) + "\n"


def machine_items(results: dict) -> list[tuple[str, str]]:
    machine = results.get("machine") or {}
    items = [(k, str(machine[k])) for k in ("cpu", "cores", "os", "python") if machine.get(k)]
    caps = machine.get("capabilities") or {}
    if caps.get("kind"):
        items.append(("kernel path", str(caps["kind"])))
    if caps.get("features") is not None:
        items.append(("CPU features", ", ".join(caps["features"]) or "none of note"))
    for dev in caps.get("cuda") or []:
        items.append(("CUDA", f"{dev.get('name')} (compute {dev.get('compute_capability')})"))
    packages = machine.get("packages") or {}
    if packages:
        items.append(("packages", ", ".join(f"{k} {v}" for k, v in packages.items())))
    return items


def provenance(results: dict) -> str:
    """Which slimkit wrote the results and when: needed to reproduce or compare runs."""
    version, created = results.get("slimkit_version"), results.get("created")
    parts = [version and f"slimkit {version}", created and f"results created {created}"]
    return " · ".join(str(part) for part in parts if part)


def footer_lines(results: dict) -> list[str]:
    lines = ["## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine_items(results)] or ["- unknown"]
    made = provenance(results)
    return [*lines, "", f"_Generated by {made}._"] if made else lines
