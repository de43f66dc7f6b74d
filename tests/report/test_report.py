from __future__ import annotations

import copy
import math
import re
from html.parser import HTMLParser

import pytest

from slimkit.report import render_html, render_markdown
from slimkit.report.svg import Point, pareto_front

BF16_ERROR = "cast bf16: ONNX Runtime's CPU provider has no bf16 kernels | try fp16"


def step(name: str, options: dict | None = None, fmt: str = "onnx", cached: bool = False) -> dict:
    return {"step": name, "options": options or {}, "format": fmt, "key": "0123456789abcdefXYZ",
            "seconds": 1.234, "cached": cached, "peak_rss_mb": 100.0}


def measured(name: str, runtime: str, steps: list[dict], size: int, quality: dict,
             p50: float, throughput: float, ratios: dict) -> dict:
    return {
        "name": name, "runtime": runtime,
        "runtime_info": {"runtime": runtime, "version": "1", "device": "cpu", "threads": 2},
        "steps": steps, "key": "ffff", "artifact": f"candidates/{name}", "size_bytes": size,
        "quality": quality,
        "bench": {"latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50},
                  "throughput": throughput, "peak_rss_mb": 612.0, "load_seconds": 1.2},
        "ratios": ratios, "error": None,
    }


@pytest.fixture
def results() -> dict:
    return {
        "name": "minilm", "slimkit_version": "0.1.0", "created": "2026-11-22T10:00:00+00:00",
        "task": "embedding", "primary_metric": "mean_cosine",
        "machine": {"cpu": "AMD EPYC", "cores": 2, "os": "Linux-6", "python": "3.11.7",
                    "packages": {"torch": "2.13.0", "onnxruntime": "1.31.1"}},
        "benchmark": {"threads": 2, "batch_size": 32, "rounds": 5, "latency_runs": 20,
                      "throughput_runs": 3, "warmup": 3},
        "baseline": "torch-fp32",
        "candidates": [
            measured("torch-fp32", "torch", [step("save", fmt="torch", cached=True)], 90868376,
                     {"top10_agreement": 1.0, "mean_cosine": 1.0, "min_cosine": 1.0},
                     12.1, 58.3, {"throughput": 1.0, "latency": 1.0, "size": 1.0}),
            measured("ort-int8-dynamic", "onnxruntime",
                     [step("export_onnx"), step("dynamic_int8", {"per_channel": True,
                                                                 "int8_mode": "reduce_range",
                                                                 "op_types": None})],
                     23625777, {"mean_cosine": 0.98765, "min_cosine": 0.9512,
                                "top10_agreement": 0.9, "my_score": 7.5},
                     4.17, 180.7, {"throughput": 3.1, "latency": 2.9, "size": 0.26}),
            {"name": "ort-bf16", "runtime": "onnxruntime", "steps": [], "error": BF16_ERROR,
             "quality": None, "bench": None, "ratios": None, "size_bytes": None},
        ],
    }


class Collector(HTMLParser):
    """Checks tags nest properly, which is the part of well-formedness the report relies on."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(doc: str) -> Collector:
    parser = Collector()
    parser.feed(doc)
    parser.close()
    assert parser.stack == []
    return parser


def table_rows(markdown: str) -> list[str]:
    section = markdown.split("## How these were measured")[0]
    return [line for line in section.splitlines() if line.startswith("| ")][1:]


def test_markdown_table(results: dict) -> None:
    md = render_markdown(results)
    rows = table_rows(md)
    assert len(rows) == 3
    base, int8, failed = rows
    assert "**torch-fp32** (baseline)" in base
    assert "3.10×" in int8 and "2.90×" in int8 and "0.26×" in int8
    assert "export_onnx → dynamic_int8(per_channel, int8_mode=reduce_range)" in int8
    assert "save" not in base
    assert "4.17" in int8 and "5.42" in int8  # p50 under 10 ms: two decimals; p99 = 4.17*1.3
    assert "15.7" in base and "90.9" in base  # p99 above 10 ms: one decimal; size in MB
    assert "0.9877" in int8 and "90.00%" in int8 and "7.5" in int8
    assert "failed:" in failed and "no bf16 kernels" in failed
    assert "\\| try fp16" in failed  # a pipe in the error must not split the row
    assert "\\\\|" not in failed  # escaped exactly once
    cells = re.compile(r"(?<!\\)\|")
    assert len(cells.findall(failed)) == len(cells.findall(base))


def test_markdown_quality_columns_primary_first(results: dict) -> None:
    header = render_markdown(results).split("\n| ")[1].splitlines()[0]
    quality = header.split("Peak RSS MB |")[1]
    assert [c.strip() for c in quality.strip(" |").split("|")] == [
        "mean_cosine", "min_cosine", "top10_agreement", "my_score"]


def test_markdown_measurement_and_lineage(results: dict) -> None:
    md = render_markdown(results)
    note = md.split("## How these were measured")[1].split("##")[0]
    assert "5 interleaved rounds" in note and "median of the per-round ratios" in note
    assert "threads 2" in note and "batch size 32" in note
    assert "serving batch 32" in md and "AMD EPYC, 2 cores" in md
    lineage = md.split("## Lineage")[1]
    assert "0123456789ab |" in lineage and "0123456789abc" not in lineage
    assert "dynamic_int8(per_channel, int8_mode=reduce_range)" in lineage and "| yes |" in lineage
    assert "| no |" in lineage and "1.23" in lineage
    assert "failed: cast bf16" in lineage


def test_markdown_does_not_invent_settings(results: dict) -> None:
    results["benchmark"] = {"threads": 4}
    note = render_markdown(results).split("## How these were measured")[1].split("##")[0]
    assert "rounds" not in note and "threads 4" in note and "batch" not in note


def test_html_is_self_contained_and_well_formed(results: dict) -> None:
    doc = render_html(results)
    parsed = parse(doc)
    assert "<svg" in doc and "<style>" in doc
    assert "http://" not in doc and "https://" not in doc
    assert not any(tag in {"script", "link", "img"} for tag, _ in parsed.tags)
    text = "".join(parsed.text)
    for name in ("torch-fp32", "ort-int8-dynamic", "ort-bf16"):
        assert name in text
    assert "no bf16 kernels" in text and "3.10×" in text


def test_html_escapes_names(results: dict) -> None:
    results["candidates"][1]["name"] = "<b>x</b>"
    results["candidates"][2]["error"] = "boom <script>alert(1)</script>"
    doc = render_html(results)
    assert "<b>x</b>" not in doc and "&lt;b&gt;x&lt;/b&gt;" in doc
    assert "<script>" not in doc
    parse(doc)


def test_html_scatter_and_pareto(results: dict) -> None:
    doc = render_html(results)
    parsed = parse(doc)
    paths = [a for tag, a in parsed.tags if tag == "path" and a.get("id") == "pareto-front"]
    assert len(paths) == 1 and "stroke-dasharray" in paths[0]
    # Both candidates are on the front (one is faster, the other more accurate).
    assert len(re.findall(r"[ML][\d.]+ [\d.]+", paths[0]["d"])) == 2
    circles = [a for tag, a in parsed.tags if tag == "circle" and "cx" in a]
    assert len(circles) == 2 + 1  # two candidates plus the legend marker; failed not plotted
    assert "mean_cosine" in doc


def test_pareto_front_drops_dominated_points() -> None:
    pts = [Point("a", 1.0, 1.0, True), Point("b", 3.0, 0.99), Point("c", 2.0, 0.95),
           Point("d", 3.0, 0.90)]
    assert [p.label for p in pareto_front(pts)] == ["a", "b"]
    assert [p.label for p in pareto_front(pts, lower_is_better=True)] == ["d"]
    errors = [Point("a", 1.0, 0.5), Point("b", 2.0, 0.1), Point("c", 1.5, 0.9)]
    assert [p.label for p in pareto_front(errors, lower_is_better=True)] == ["b"]


@pytest.mark.parametrize("case", ["single", "only_baseline_ok", "identical_x", "identical_y",
                                  "nan_metric", "all_failed", "empty", "sparse"])
def test_edge_cases_render(results: dict, case: str) -> None:
    data = copy.deepcopy(results)
    cands = data["candidates"]
    if case == "single":
        data["candidates"] = cands[:1]
    elif case == "only_baseline_ok":
        cands[1].update(error="killed", quality=None, bench=None, ratios=None)
    elif case == "identical_x":
        cands[1]["ratios"]["throughput"] = 1.0
    elif case == "identical_y":
        cands[1]["quality"]["mean_cosine"] = 1.0
    elif case == "nan_metric":
        cands[1]["quality"]["mean_cosine"] = math.nan
        cands[0]["ratios"]["throughput"] = None
    elif case == "all_failed":
        for cand in cands:
            cand.update(error="nope", quality=None, bench=None, ratios=None)
    elif case == "empty":
        data = {"candidates": []}
    elif case == "sparse":
        data = {"name": "m", "candidates": [{"name": "only", "steps": None, "quality": {}}]}
    doc = render_html(data)
    parse(doc)
    md = render_markdown(data)
    assert "nan" not in md.lower().replace("nanosecond", "")
    for cand in data["candidates"]:
        assert cand["name"] in md and cand["name"] in doc
    assert ("<svg" in doc) == (case not in {"all_failed", "empty", "sparse"})


def test_metric_formats() -> None:
    data = {"task": "classification", "primary_metric": "accuracy", "baseline": "a",
            "candidates": [{"name": "a", "quality": {"accuracy": 0.91234, "accuracy_delta": -0.3,
                                                     "agreement": 0.985},
                            "ratios": {"throughput": 2.314}}]}
    row = table_rows(render_markdown(data))[0]
    assert "91.23%" in row and "-0.30 pt" in row and "98.50%" in row and "2.31×" in row


def test_failed_candidate_is_listed_but_not_plotted(results: dict) -> None:
    failed = results["candidates"][2]
    failed.update(quality={"mean_cosine": 0.5}, ratios={"throughput": 9.0})  # stale leftovers
    parsed = parse(render_html(results))
    circles = [a for tag, a in parsed.tags if tag == "circle" and "cx" in a]
    assert len(circles) == 3  # baseline, int8, legend marker
    assert "ort-bf16" in "".join(parsed.text)


def test_technique_reports_bring_their_own_columns_and_a_loss_curve(results: dict) -> None:
    results["candidates"][1]["details"] = {
        "prune_channels": {"flops_before": 2_000_000, "flops_after": 1_000_000,
                           "importance": "taylor",
                           "layers": [{"layer": "body.0", "channels_before": 128,
                                       "channels_after": 64, "sensitivity": 0.0123}]},
        "distill": {"teacher": "source", "loss": "response",
                    "agreement": {"measure": "accuracy", "examples": 10, "before": 0.5,
                                  "after": 0.9},
                    "history": [{"loss": 1.5}, {"loss": 0.75}, {"loss": 0.5}]},
    }
    md = render_markdown(results)
    assert "| Layer | Channels before | Channels after | Sensitivity |" in md
    assert "| body.0 | 128 | 64 | 0.0123 |" in md
    assert "FLOPs: 2,000,000 → 1,000,000 (0.50×)" in md
    assert "accuracy with the teacher on 10 examples: 0.5000 → 0.9000" in md
    assert "trained 3 epoch(s), loss 1.5 → 0.5" in md
    html = render_html(results)
    assert 'aria-label="training loss per epoch"' in html
    assert html.count("<title>epoch ") == 3
