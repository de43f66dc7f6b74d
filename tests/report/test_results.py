"""results.json as a typed document: it survives a round trip, files written before it had a
version still load and render, and every view of a run shows a figure the same way."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from slimkit.errors import ConfigError
from slimkit.report import render_html, render_markdown
from slimkit.report.details import detail_sections, headlines
from slimkit.report.formats import format_size
from slimkit.results import (
    SCHEMA_VERSION,
    Bench,
    BenchSettings,
    Candidate,
    DataInfo,
    Latency,
    LineageStep,
    Machine,
    Ratios,
    RunResults,
    StepReport,
    as_results,
    load_results,
    save_results,
)
from slimkit.summary import print_summary

SIZE = 123_456_789  # 123.5 MB; 117.7 if a megabyte were 2^20 bytes


def lineage(*names: str) -> list[dict[str, Any]]:
    return [{"step": n, "options": {}, "format": "onnx", "key": f"{i}" * 64, "seconds": 0.5,
             "cached": False, "peak_rss_mb": 300.0} for i, n in enumerate(names)]


def v1_candidate(name: str, steps: list[dict[str, Any]], size: int | None,
                 details: dict[str, Any] | None = None, error: str | None = None
                 ) -> dict[str, Any]:
    """A candidate as version 1 (`run._results_doc` before schema_version) wrote it."""
    ok = error is None
    return {
        "name": name, "runtime": "onnxruntime",
        "runtime_info": {"runtime": "onnxruntime", "version": "1.20.0",
                         "device": "cpu (CPUExecutionProvider)", "threads": 2} if ok else None,
        "steps": steps, "key": steps[-1]["key"] if steps else None,
        "artifact": f"candidates/{name}" if steps else None, "size_bytes": size,
        "quality": {"accuracy": 0.97, "accuracy_delta": -0.5, "agreement": 0.99} if ok else None,
        "bench": {"latency_ms": {"p50": 1.5, "p90": 1.7, "p99": 2.25, "mean": 1.6},
                  "throughput": 1234.5, "throughput_rounds": [1230.0, 1239.0],
                  "load_seconds": 0.2, "peak_rss_mb": 150.0} if ok else None,
        "ratios": {"throughput": 1.8, "latency": 1.6, "size": 0.25} if ok else None,
        "error": error, "details": details, "cpu_notes": [], "served": None,
    }


@pytest.fixture
def v1_doc() -> dict[str, Any]:
    quantized = v1_candidate("ort-int8", lineage("export_onnx", "static_int8"), SIZE // 4, {
        "static_int8": {"budget": {"max_drop": 0.3, "min_cosine": None},
                        "kept_float": ["fc2"], "layers_total": 3, "calibration": "percentile",
                        "accuracy_drop": 0.1, "int8_mode": "u8s8", "int8_mode_reason": "VNNI",
                        "layers": [{"layer": "fc1", "sensitivity": 0.01},
                                   {"layer": "fc2", "sensitivity": 0.2}]}})
    pruned = v1_candidate("pruned", lineage("prune_channels", "distill", "export_onnx"),
                          SIZE // 2, {
        "prune_channels": {"flops_before": 2_000_000, "flops_after": 1_000_000,
                           "flops_ratio": 0.5, "importance": "taylor",
                           "fine_tuning": {"history": [{"loss": 2.0}, {"loss": 1.0}]},
                           "layers": [{"layer": "conv1", "channels_before": 32,
                                       "channels_after": 16}]},
        "distill": {"teacher": "source", "loss": "response", "history": [{"loss": 0.5},
                                                                          {"loss": 0.25}]}})
    return {
        "name": "digits", "slimkit_version": "0.1.0", "created": "2026-01-05T09:30:00+00:00",
        "task": "classification", "primary_metric": "accuracy",
        "data": {"name": "digits/test", "examples": 360, "fingerprint": "ab" * 32},
        "machine": {"cpu": "AMD EPYC", "cores": 2, "os": "Linux-6.1", "python": "3.11.7",
                    "capabilities": {"arch": "x86_64", "kind": "x86 AVX2 without VNNI",
                                     "source": "/proc/cpuinfo", "features": ["AVX2", "FMA"],
                                     "int8_dot_product": False, "native_bf16": False,
                                     "native_fp16": False, "cuda": []},
                    "packages": {"onnxruntime": "1.20.0", "numpy": "2.1.0"}},
        "benchmark": {"threads": 2, "batch_size": 32, "rounds": 5, "warmup": 3,
                      "latency_runs": 20, "throughput_runs": 3, "timeout_s": 600},
        "baseline": "ort-fp32",
        "recipe": {"name": "digits", "candidates": [{"name": "ort-fp32"}]},
        "candidates": [v1_candidate("ort-fp32", lineage("export_onnx"), SIZE), quantized, pruned,
                       v1_candidate("ort-bf16", [], None, error="no bf16 kernels")],
        "warnings": ["ort-int8: calibration/training data is the evaluation data itself"],
    }


def typed_results() -> RunResults:
    report = StepReport(technique="static_int8", family="quantization", kept_float=["fc2"],
                        layers=[{"layer": "fc1", "sensitivity": 0.01}])
    cand = Candidate(
        name="int8", runtime="onnxruntime",
        steps=[LineageStep(step="static_int8", options={"per_channel": True}, format="onnx",
                           key="k" * 64, seconds=0.25, cached=True, peak_rss_mb=10.0)],
        key="k" * 64, artifact="candidates/int8", size_bytes=SIZE,
        quality={"mean_cosine": 0.99, "user_score": None},
        bench=Bench(latency_ms=Latency(p50=1.0, p99=2.0), throughput=99.5, peak_rss_mb=12.0,
                    worker="spawn"),
        ratios=Ratios(throughput=2.0, latency=1.5, size=0.25),
        details={"0:static_int8": report}, cpu_notes=["int8 without VNNI"])
    return RunResults(name="run", slimkit_version="0.1.0", created="2026-01-05T09:30:00+00:00",
                      task="embedding", primary_metric="mean_cosine",
                      data=DataInfo(name="d", examples=4, fingerprint="f"),
                      machine=Machine(cpu="cpu", cores=2), benchmark=BenchSettings(threads=2),
                      baseline="int8", recipe={"name": "run"}, warnings=["careful"],
                      candidates=[cand])


def terminal(results: RunResults) -> str:
    console = Console(record=True, width=300, file=io.StringIO())
    print_summary(results, console)
    return console.export_text()


def test_round_trip(tmp_path: Path) -> None:
    results = typed_results()
    save_results(tmp_path / "results.json", results)
    loaded = load_results(tmp_path)
    assert loaded == results
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["candidates"][0]["details"]["0:static_int8"] == {
        "technique": "static_int8", "family": "quantization", "kept_float": ["fc2"],
        "layers": [{"layer": "fc1", "sensitivity": 0.01}]}
    assert doc["candidates"][0]["bench"]["worker"] == "spawn"  # a field this version lacks


def test_version_1_loads_upgraded_and_keeps_its_field_names(tmp_path: Path,
                                                             v1_doc: dict[str, Any]) -> None:
    (tmp_path / "results.json").write_text(json.dumps(v1_doc))
    results = load_results(tmp_path / "results.json")
    assert results.schema_version == 2
    quantized, pruned = results.candidates[1:3]
    assert list(quantized.details or {}) == ["1:static_int8"]
    assert quantized.details["1:static_int8"].technique == "static_int8"
    assert quantized.details["1:static_int8"].family == "quantization"
    assert list(pruned.details or {}) == ["0:prune_channels", "1:distill"]
    assert results.candidates[3].details is None and results.candidates[3].failed
    doc = results.to_document()
    assert set(v1_doc) < set(doc)
    for old, new in zip(v1_doc["candidates"], doc["candidates"], strict=True):
        assert set(old) == set(new)
        assert {k: v for k, v in old.items() if k != "details"} == \
            {k: v for k, v in new.items() if k != "details"}


def test_version_1_renders(v1_doc: dict[str, Any]) -> None:
    results = as_results(v1_doc)
    md = render_markdown(results)
    assert "## ort-int8: 1:static_int8" in md and "kept in float: 1 of 3 layers (fc2)" in md
    assert "FLOPs: 2,000,000 → 1,000,000 (0.50×)" in md and "trained 2 epoch(s)" in md
    assert "| Layer | Channels before | Channels after |" in md
    assert "* " not in md.split("## Warnings")[1].split("##")[0]
    html = render_html(results)
    assert html.count('aria-label="training loss per epoch"') == 2
    text = terminal(results)
    assert "ort-bf16" in text and "failed" in text and "CPU: x86 AVX2 without VNNI" in text
    assert headlines(results) == ["ort-int8 1:static_int8: 1 layer(s) kept in float",
                                  "pruned 0:prune_channels: 0.50× the FLOPs"]


def test_sizes_read_the_same_in_every_view(v1_doc: dict[str, Any]) -> None:
    results = as_results(v1_doc)
    shown = format_size(SIZE)
    assert shown == "123.5"
    md = render_markdown(results).split("## How these were measured")[0]
    html = render_html(results)
    term = terminal(results)
    for view in (md, html, term):
        assert shown in view and "117.7" not in view
        assert format_size(SIZE // 4) in view  # 30.9 MB for the int8 candidate
    md_row = next(line for line in md.splitlines() if line.startswith("| **ort-fp32**"))
    term_row = next(line for line in term.splitlines() if "ort-fp32 (baseline)" in line)
    for cell in ("1.50", "2.25", "1234.5", "97.00%", "-0.50 pt"):
        assert cell in term_row and cell in md_row


def test_reports_dispatch_on_the_family() -> None:
    results = typed_results()
    looks_like_pruning = {"flops_before": 10, "flops_after": 5, "flops_ratio": 0.5,
                          "kept_float": ["x"]}
    assert results.candidates[0].details is not None
    results.candidates[0].details.update({
        "1:my_technique": StepReport(technique="my_technique", **looks_like_pruning),
        "2:prune_magnitude": StepReport(technique="prune_magnitude", family="pruning",
                                        sparsity=0.5),
        "3:prune_magnitude": StepReport(technique="prune_magnitude", family="pruning",
                                        sparsity=0.75)})
    sections = {s.title: s for s in detail_sections(results)}
    mine = sections["int8: 1:my_technique"]
    assert "flops ratio: 0.5" in mine.facts
    assert not any("FLOPs" in f or "kept in float" in f for f in mine.facts)
    assert sections["int8: 2:prune_magnitude"].facts == ["sparsity of the pruned layers: 50.0%"]
    assert sections["int8: 3:prune_magnitude"].facts == ["sparsity of the pruned layers: 75.0%"]
    assert headlines(results) == ["int8 0:static_int8: 1 layer(s) kept in float"]


def test_unreadable_results_are_one_line_errors(tmp_path: Path, v1_doc: dict[str, Any]) -> None:
    path = tmp_path / "results.json"
    with pytest.raises(ConfigError, match="no such file"):
        load_results(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_results(path)
    path.write_text(json.dumps({**v1_doc, "schema_version": 3}))
    with pytest.raises(ConfigError, match="schema_version 3"):
        load_results(path)
    broken = copy.deepcopy(v1_doc)
    broken["candidates"][0]["size_bytes"] = "big"
    path.write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match=r"candidates\.0\.size_bytes") as err:
        load_results(path)
    assert "\n" not in str(err.value)


def test_slimkit_report_rerenders_a_version_1_run(tmp_path: Path,
                                                 v1_doc: dict[str, Any]) -> None:
    from slimkit.cli import app

    (tmp_path / "results.json").write_text(json.dumps(v1_doc))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "123.5" in res.output and "ort-int8" in res.output
    assert "kept in float" in (tmp_path / "report.md").read_text()
    assert "<svg" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "results.json").read_text()) == v1_doc  # left as it was
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2


def test_a_run_writes_the_typed_document(tmp_path: Path) -> None:
    from slimkit.config import parse_recipe
    from slimkit.run import run_recipe

    recipe = parse_recipe({
        "name": "typed", "model": {"source": "tests.models:tiny_mlp"},
        "data": {"source": "factory", "factory": "tests.models:mlp_data", "kwargs": {"n": 8}},
        "benchmark": {"threads": 1, "rounds": 1, "latency_runs": 1, "throughput_runs": 1},
        "candidates": [{"name": "base", "runtime": "onnxruntime", "baseline": True}],
        "output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")})
    doc = run_recipe(recipe)
    loaded = load_results(tmp_path / "run")
    assert loaded == as_results(doc) and doc["schema_version"] == SCHEMA_VERSION
    base = loaded.candidates[0]
    assert base.size_bytes and base.ratios and base.ratios.size == 1.0
    assert base.runtime_info and base.runtime_info.runtime == "onnxruntime"
    assert format_size(base.size_bytes) in (tmp_path / "run" / "report.md").read_text()
