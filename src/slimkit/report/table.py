"""The results table and the facts around it, shared by the terminal summary, the Markdown
and the HTML reports.

The table is defined once (as a list of columns) so that no two views of a run can disagree
about which figures they show or how they are rounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimkit.report.formats import (
    DASH,
    format_latency,
    format_megabytes,
    format_quality,
    format_rate,
    format_ratio,
    format_seconds,
    format_size,
)
from slimkit.results import Candidate, LineageStep, RunResults

KNOWN_METRICS: dict[str, list[str]] = {
    "embedding": ["mean_cosine", "min_cosine", "top10_agreement"],
    "classification": ["accuracy", "accuracy_delta", "agreement"],
    "generic": ["sqnr_db", "cosine", "max_abs_error"],
}
# Error-like metrics: for these a smaller value means a better candidate.
LOWER_IS_BETTER = frozenset({"max_abs_error", "mean_abs_error", "mae", "mse", "rmse", "loss"})
BENCH_LABELS = {"batch_size": "batch size", "warmup": "warm-up calls"}


def ratio(cand: Candidate, name: str) -> float | None:
    return getattr(cand.ratios, name, None) if cand.ratios else None


def latency(cand: Candidate, percentile: str) -> float | None:
    lat = cand.bench.latency_ms if cand.bench else None
    return getattr(lat, percentile, None) if lat else None


def quality(cand: Candidate, key: str) -> float | None:
    return (cand.quality or {}).get(key)


def quality_keys(results: RunResults) -> list[str]:
    """Primary first, then the task's usual order, then user metrics as first seen: stable."""
    seen: list[str] = []
    for cand in results.candidates:
        seen.extend(k for k in cand.quality or {} if k not in seen)
    preferred = [results.primary_metric, *KNOWN_METRICS.get(results.task or "", [])]
    ordered = [k for k in preferred if k in seen]
    return list(dict.fromkeys(ordered + seen))


def primary_metric(results: RunResults) -> str | None:
    keys = quality_keys(results)
    return results.primary_metric or (keys[0] if keys else None)


def step_text(step: LineageStep) -> str:
    """Options switched on read as flags; off/unset ones are noise in a one-line recipe."""
    on = {k: v for k, v in step.options.items() if v is not None and v is not False}
    shown = [k if v is True else f"{k}={v}" for k, v in on.items()]
    return f"{step.step}({', '.join(shown)})" if shown else step.step


def step_summary(steps: list[LineageStep]) -> str:
    """A one-line recipe; `save` is bookkeeping, not a transformation, so it is left out."""
    return " → ".join(step_text(s) for s in steps if s.step != "save") or DASH


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[Candidate], Any]
    fmt: Callable[[Any], str] = str
    numeric: bool = True
    better: str = ""  # "higher" or "lower": lets the HTML tint ratios relative to baseline
    mark: Callable[[Candidate], str] | None = None  # a footnote sign after the figure

    def cell(self, candidate: Candidate) -> str:
        value = self.value(candidate)
        text = DASH if value is None else self.fmt(value)
        return text + (self.mark(candidate) if self.mark and value is not None else "")


def cpu_mark(candidate: Candidate) -> str:
    """Known to lose on this CPU; the Warnings section says why."""
    return " *" if candidate.cpu_notes else ""


# Columns shown for every candidate, even a failed one; the error takes the rest of the row.
LEAD = 3


def columns(results: RunResults) -> list[Column]:
    cols = [
        Column("Candidate", lambda c: c.name, numeric=False),
        Column("Runtime", lambda c: c.runtime, numeric=False),
        Column("Steps", lambda c: step_summary(c.steps), numeric=False),
        Column("Throughput ×", lambda c: ratio(c, "throughput"), format_ratio, True, "higher",
               cpu_mark),
        Column("Latency ×", lambda c: ratio(c, "latency"), format_ratio, True, "higher"),
        Column("p50 ms", lambda c: latency(c, "p50"), format_latency),
        Column("p99 ms", lambda c: latency(c, "p99"), format_latency),
        Column("Items/s", lambda c: c.bench.throughput if c.bench else None, format_rate),
        Column("Size MB", lambda c: c.size_bytes, format_size),
        Column("Size ×", lambda c: ratio(c, "size"), format_ratio, True, "lower"),
        Column("Peak RSS MB", lambda c: c.bench.peak_rss_mb if c.bench else None,
               format_megabytes),
    ]
    return cols + [
        Column(k, lambda c, k=k: quality(c, k), lambda v, k=k: format_quality(k, v))
        for k in quality_keys(results)
    ]


def context_items(results: RunResults) -> list[str]:
    """The facts a reader needs before trusting any number: what, where, how parallel."""
    machine, bench = results.machine, results.benchmark
    items = []
    if results.name:
        items.append(f"model {results.name}")
    if results.task:
        items.append(f"task {results.task}")
    if machine:
        cores = machine.cores and f"{machine.cores} cores"
        if cpu := ", ".join(str(part) for part in (machine.cpu, cores) if part):
            items.append(cpu)
    if bench and bench.threads is not None:
        items.append(f"{bench.threads} threads")
    if bench and bench.batch_size is not None:
        items.append(f"serving batch {bench.batch_size}")
    if results.baseline:
        items.append(f"baseline {results.baseline}")
    return items


def measurement_note(results: RunResults) -> list[str]:
    """Sentences built only from the benchmark block, so the report never claims more than ran."""
    bench = results.benchmark.model_dump() if results.benchmark else {}
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


LINEAGE_HEADERS = ["Candidate", "Step", "Format", "Seconds", "Cached", "Key"]


def lineage_rows(results: RunResults) -> list[list[str]]:
    """One row per step so a reader can see what was cached and which artifact key it hit."""
    rows = []
    for cand in results.candidates:
        for i, step in enumerate(cand.steps):
            rows.append([
                cand.name if i == 0 else "",
                step_text(step),
                step.format or DASH,
                format_seconds(step.seconds),
                DASH if step.cached is None else ("yes" if step.cached else "no"),
                (step.key or DASH)[:12],
            ])
        if not cand.steps or cand.failed:
            error = f"failed: {cand.error}" if cand.failed else "no steps recorded"
            rows.append([cand.name if not cand.steps else "", error, DASH, DASH, DASH, DASH])
    return rows


def machine_items(results: RunResults) -> list[tuple[str, str]]:
    machine = results.machine
    if machine is None:
        return []
    items = [(k, str(v)) for k in ("cpu", "cores", "os", "python")
             if (v := getattr(machine, k))]
    caps = machine.capabilities
    if caps and caps.kind:
        items.append(("kernel path", caps.kind))
    if caps and caps.features is not None:
        items.append(("CPU features", ", ".join(caps.features) or "none of note"))
    for dev in caps.cuda if caps else []:
        items.append(("CUDA", f"{dev.name} (compute {dev.compute_capability})"))
    if machine.packages:
        items.append(("packages", ", ".join(f"{k} {v}" for k, v in machine.packages.items())))
    return items


def provenance(results: RunResults) -> str:
    """Which slimkit wrote the results and when: needed to reproduce or compare runs."""
    version, created = results.slimkit_version, results.created
    parts = [version and f"slimkit {version}", created and f"results created {created}"]
    return " · ".join(str(part) for part in parts if part)
