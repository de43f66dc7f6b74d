"""End to end: the bundled `digits` recipe through the real CLI, on three runtimes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimkit.machine import capabilities

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def slimkit(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLIMKIT_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "slimkit.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("digits")
    recipe = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    recipe["benchmark"].update(rounds=2, latency_runs=5, throughput_runs=2)
    recipe["output"] = str(tmp / "run")
    path = tmp / "digits.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cache = tmp / "cache"
    proc = slimkit("run", str(path), cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", path, cache


def test_every_candidate_is_built_measured_and_accurate(digits_run: tuple[Path, Path, Path]):
    run, _, _ = digits_run
    doc = json.loads((run / "results.json").read_text())
    names = [c["name"] for c in doc["candidates"]]
    assert names == ["torch-fp32", "ort-fp32", "openvino-fp32", "torch-bf16", "ort-fp16"]
    base = doc["candidates"][0]
    assert base["quality"]["accuracy"] >= 0.97
    for c in doc["candidates"]:
        assert c["error"] is None, c["error"]
        assert abs(c["quality"]["accuracy_delta"]) <= 1.0
        assert c["ratios"]["throughput"] > 0 and c["ratios"]["latency"] > 0
        assert c["bench"]["latency_ms"]["p50"] <= c["bench"]["latency_ms"]["p99"]
        assert c["bench"]["peak_rss_mb"] > 0
        assert (run / c["artifact"] / "artifact.json").is_file()
    assert base["ratios"]["throughput"] == pytest.approx(1.0)
    half = {c["name"]: c["ratios"]["size"] for c in doc["candidates"]}
    assert half["torch-bf16"] < 0.6 and half["ort-fp16"] < 0.6
    assert doc["machine"]["packages"]["onnxruntime"]
    # the CPU's kernel-deciding features are recorded, and what is known to lose says so
    caps = capabilities()
    assert doc["machine"]["capabilities"]["features"] == caps.to_dict()["features"]
    assert doc["machine"]["capabilities"]["kind"] == caps.kind()
    notes = {c["name"]: c["cpu_notes"] for c in doc["candidates"]}
    assert notes["ort-fp16"] and "fp16" in notes["ort-fp16"][0]
    assert bool(notes["torch-bf16"]) == (not caps.bf16)
    assert not notes["torch-fp32"] and not notes["ort-fp32"]
    assert [s["step"] for s in doc["candidates"][2]["steps"]] == ["export_onnx", "export_openvino"]


def test_reports_are_written(digits_run: tuple[Path, Path, Path]):
    run, _, _ = digits_run
    html = (run / "report.html").read_text()
    assert "<svg" in html and "ort-fp16" in html
    md = (run / "report.md").read_text()
    assert "torch-bf16" in md
    machine = md.split("## Machine")[1]
    assert f"kernel path: {capabilities().kind()}" in machine
    assert "CPU features: " + ", ".join(capabilities().to_dict()["features"]) in machine
    warnings = md.split("## Warnings")[1].split("##")[0]
    assert "* ort-fp16: fp16" in warnings
    assert "ort-fp16" in html.split("Warnings")[1]
    assert not list(run.rglob("*.tmp")), "temporary files left behind"


def test_rerun_reuses_every_step(digits_run: tuple[Path, Path, Path]):
    run, recipe, cache = digits_run
    proc = slimkit("run", str(recipe), cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((run / "results.json").read_text())
    assert all(s["cached"] for c in doc["candidates"] for s in c["steps"])
