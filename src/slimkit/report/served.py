"""A recipe's load test in the reports: each candidate behind `slimkit serve`, per level of
concurrency, with what a million requests cost against the baseline's at the same level."""

from __future__ import annotations

from slimkit.report.formats import DASH
from slimkit.report.section import DetailSection
from slimkit.results import RunResults, ServedLevel

HEADERS = ["Candidate", "Runtime", "Clients", "Requests", "Req/s", "p50 ms", "p99 ms",
           "Errors", "$/1M req", "Cost ×"]
NUMERIC = [False, False, True, True, True, True, True, True, True, True]


def _num(v: float | None, fmt: str) -> str:
    return DASH if v is None else format(v, fmt)


def served_section(results: RunResults) -> DetailSection | None:
    spec = results.loadtest
    served = [c for c in results.candidates if c.served]
    if spec is None or not served:
        return None
    base = next((c for c in served if c.name == results.baseline), None)
    base_cost = {lv.concurrency: lv.dollars_per_million for lv in (base.served or [])} \
        if base else {}
    rows = []
    for c in served:
        for lv in c.served or []:
            rows.append([c.name, c.runtime, str(lv.concurrency), str(lv.requests),
                         f"{lv.throughput:.1f}", _num(lv.p50_ms, ".2f"), _num(lv.p99_ms, ".2f"),
                         str(lv.errors), _num(lv.dollars_per_million, ".4f"),
                         _cost_ratio(lv, base_cost.get(lv.concurrency))])
    threads = results.benchmark.threads if results.benchmark else None
    facts = [f"`slimkit serve` on 127.0.0.1, one candidate at a time: max batch "
             f"{spec.get('max_batch')}, max delay {spec.get('max_delay_ms')} ms, "
             f"{threads} runtime threads; each request one row of the evaluation data, clients "
             f"on the same machine; at most {spec.get('requests')} requests or "
             f"{spec.get('duration')} s per level; cost at ${spec.get('dollars_per_hour')}/hour. "
             f"Cost × is the candidate's cost per request over the baseline's at the same "
             f"number of clients."]
    facts += [f"{c.name}, {lv.concurrency} clients, first error: {lv.first_error}"
              for c in served for lv in c.served or [] if lv.first_error]
    return DetailSection("Served", facts, HEADERS, rows, NUMERIC)


def _cost_ratio(lv: ServedLevel, base: float | None) -> str:
    if lv.dollars_per_million is None or not base:
        return DASH
    return f"{lv.dollars_per_million / base:.2f}×"
