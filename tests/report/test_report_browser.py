"""report.html as a reader sees it: opened in headless Chromium, not parsed as text.

The parser tests in test_report.py check the markup; these check that the page runs without
an error, fetches nothing, and that every chart is laid out with its marks at a visible size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from slimkit.report import write_reports
from slimkit.results import (
    Bench,
    BenchSettings,
    Candidate,
    Latency,
    LineageStep,
    Machine,
    Ratios,
    RunResults,
    RuntimeInfo,
    StepReport,
)
from tests.browser import chromium, inspect_html, open_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser

RUN_NAME = "minilm-serving"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One browser for the module: launching costs about a second, a page a few ms."""
    with chromium() as b:
        yield b


def step(name: str, key: str, fmt: str = "onnx", **options: Any) -> LineageStep:
    return LineageStep(step=name, options=options, format=fmt, key=key * 64, seconds=2.5,
                       cached=False, peak_rss_mb=480.0)


def ran(name: str, runtime: str, steps: list[LineageStep], size: int, cosine: float,
        items_per_s: float, speed: float, details: dict[str, StepReport] | None = None
        ) -> Candidate:
    """A candidate that built and was measured, as a run records it."""
    return Candidate(
        name=name, runtime=runtime,
        runtime_info=RuntimeInfo(runtime=runtime, version="1.0", device="cpu", threads=4),
        steps=steps, key=steps[-1].key, artifact=f"candidates/{name}", size_bytes=size,
        quality={"mean_cosine": cosine, "min_cosine": cosine - 0.03,
                 "top10_agreement": min(1.0, cosine + 0.01)},
        bench=Bench(latency_ms=Latency(p50=320 / items_per_s, p99=400 / items_per_s),
                    throughput=items_per_s, peak_rss_mb=600.0, load_seconds=1.1),
        ratios=Ratios(throughput=speed, latency=speed * 0.95, size=size / 90_868_376),
        details=details)


def run_results() -> RunResults:
    """Four measured candidates, one trade-off each way, and one that failed to build."""
    distill = StepReport(technique="distill", family="distillation", teacher="source",
                         loss="response", history=[{"loss": 0.9}, {"loss": 0.4}, {"loss": 0.3}])
    candidates = [
        ran("torch-fp32", "torch", [step("save", "0", fmt="torch")], 90_868_376, 1.0, 58.3, 1.0),
        ran("ort-fp32", "onnxruntime", [step("export_onnx", "1")], 90_800_000, 1.0, 71.0, 1.22),
        ran("ort-int8-dynamic", "onnxruntime",
            [step("export_onnx", "1"), step("dynamic_int8", "2", per_channel=True)],
            23_625_777, 0.987, 180.7, 3.1),
        ran("pruned-distilled", "onnxruntime",
            [step("prune_channels", "3", fmt="torch", ratio=0.5),
             step("distill", "4", fmt="torch"), step("export_onnx", "5")],
            45_000_000, 0.962, 120.0, 2.05, details={"1:distill": distill}),
        Candidate(name="ort-bf16", runtime="onnxruntime", steps=[],
                  error="cast bf16: ONNX Runtime's CPU provider has no bf16 kernels"),
    ]
    return RunResults(name=RUN_NAME, slimkit_version="0.1.0",
                      created="2026-11-22T10:00:00+00:00", task="embedding",
                      primary_metric="mean_cosine",
                      machine=Machine(cpu="AMD EPYC", cores=4, os="Linux-6", python="3.11.7"),
                      benchmark=BenchSettings(threads=4, batch_size=32, rounds=5),
                      baseline="torch-fp32", candidates=candidates)


# Everything the assertions need, read from the laid-out page in one round trip.
PAGE_FACTS = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const marks = svg => [...svg.querySelectorAll('circle')].filter(c => c.querySelector('title'));
  const charts = [...document.querySelectorAll('svg.chart')];
  const scatter = charts.find(s => s.querySelector('#pareto-front'));
  const bars = charts.find(s => s.querySelector('rect.bar'));
  const inside = (svg, e) => {
    const o = svg.getBoundingClientRect(), r = e.getBoundingClientRect();
    return r.left >= o.left && r.right <= o.right && r.top >= o.top && r.bottom <= o.bottom;
  };
  return {
    title: document.title,
    charts: charts.map(s => ({label: s.getAttribute('aria-label'), box: box(s)})),
    points: scatter ? marks(scatter).map(c => ({box: box(c), inside: inside(scatter, c)})) : [],
    front: scatter ? scatter.querySelector('#pareto-front').getTotalLength() : 0,
    bars: bars ? [...bars.querySelectorAll('rect.bar')].map(box) : [],
    epochs: [...document.querySelectorAll('svg.curve circle')].length,
    rows: document.querySelector('.scroll table').tBodies[0].rows.length,
  };
}"""


def test_report_renders_in_a_browser(browser: Browser, tmp_path: Path) -> None:
    write_reports(tmp_path, run_results())
    facts, errors = inspect_html(browser, tmp_path / "report.html", PAGE_FACTS)
    assert errors == []
    assert facts["title"] == f"slimkit report: {RUN_NAME}"
    # Scatter, bars, and the distillation loss curve, each laid out at a visible size.
    assert len(facts["charts"]) == 3
    for chart in facts["charts"]:
        assert min(chart["box"]) > 0, chart
    # One mark per candidate with throughput and quality figures; the failed one is not drawn.
    assert len(facts["points"]) == 4
    assert all(min(p["box"]) > 0 and p["inside"] for p in facts["points"]), facts["points"]
    assert facts["front"] > 0  # int8 and fp32 both on the front: a line, not a dot
    assert len(facts["bars"]) == 4
    assert all(w > 0 and h > 0 for w, h in facts["bars"])
    assert facts["epochs"] == 3
    assert facts["rows"] == 5  # every candidate, the failed one too


def test_report_fetches_nothing(browser: Browser, tmp_path: Path) -> None:
    write_reports(tmp_path, run_results())
    with open_page(browser, tmp_path / "report.html") as opened:
        opened.page.evaluate("1")  # a round trip, so every event so far has arrived
        assert opened.requests == [] and opened.errors == []


def test_the_check_sees_broken_pages(browser: Browser, tmp_path: Path) -> None:
    """Without this, a listener that never fires would pass every page."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><title>t</title><img src='missing.png'>"
                    "<script>console.error('drawn wrong'); undefined_function();</script>")
    with open_page(browser, page) as opened:
        assert opened.page.evaluate("document.title") == "t"
        errors = opened.errors
        assert any("drawn wrong" in e for e in errors), errors
        assert any(e.startswith("pageerror:") and "undefined_function" in e for e in errors)
        assert any("missing.png" in e for e in errors), errors
        assert [url.rsplit("/", 1)[-1] for url in opened.requests] == ["missing.png"]
