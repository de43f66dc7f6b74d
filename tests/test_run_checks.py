"""What `slimkit run` checks and says around the work: a slimkit bug reads as an internal
error with its log, calibrating on the evaluation data is warned about, and a run folder
holding the user's own files is refused before anything is built."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from slimkit.config import parse_recipe
from slimkit.errors import ConfigError
from slimkit.run import run_recipe

DATA = {"source": "factory", "factory": "tests.models:mlp_data", "kwargs": {"n": 16}}
QUICK = {"threads": 1, "rounds": 1, "latency_runs": 1, "throughput_runs": 1}


def recipe(tmp_path: Path, candidates: list[dict], **extra: Any) -> Any:
    return parse_recipe({
        "name": "checks", "model": {"source": "tests.models:tiny_mlp"}, "data": DATA,
        "benchmark": QUICK,
        "candidates": [{"name": "base", "runtime": "onnxruntime", "baseline": True},
                       *candidates],
        "output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), **extra})


def test_an_exception_in_the_users_code_names_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import slimkit.techniques.quantize.ort_static as ort_static

    def divide(*_: Any, **__: Any) -> Any:
        return 1.0 / 0.0  # as a user's own range function might

    monkeypatch.setattr(ort_static, "compute_range", divide)
    doc = run_recipe(recipe(tmp_path, [{"name": "static", "runtime": "onnxruntime",
                                        "steps": [{"static_int8": {}}]},
                                       {"name": "dynamic", "runtime": "onnxruntime",
                                        "steps": [{"dynamic_int8": {}}]}],
                            calibration=DATA))
    by_name = {c["name"]: c for c in doc["candidates"]}
    error = by_name["static"]["error"]
    assert error.startswith("error in your code: ZeroDivisionError: float division by zero "
                            "at test_run_checks.py:"), error
    assert error.endswith(f"(traceback in {tmp_path / 'run' / 'errors.log'})")
    assert by_name["dynamic"]["error"] is None and by_name["dynamic"]["quality"]
    log = (tmp_path / "run" / "errors.log").read_text()
    assert "Traceback" in log and "ZeroDivisionError" in log


def test_a_bug_inside_slimkit_reads_as_internal(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import slimkit.techniques.quantize.ort_static as ort_static
    from slimkit.io import sha256_json

    # a slimkit call with the wrong arguments: raised in slimkit's own frame, no user code
    monkeypatch.setattr(ort_static, "compute_range", functools.partial(sha256_json))
    doc = run_recipe(recipe(tmp_path, [{"name": "static", "runtime": "onnxruntime",
                                        "steps": [{"static_int8": {}}]}], calibration=DATA))
    error = doc["candidates"][1]["error"]
    assert error.startswith("internal error: TypeError at ort_static.py:"), error
    assert "unexpected keyword" not in error  # the message stays in the log
    assert "TypeError" in (tmp_path / "run" / "errors.log").read_text()


def test_calibrating_on_the_evaluation_data_is_warned(tmp_path: Path) -> None:
    doc = run_recipe(recipe(tmp_path, [{"name": "static", "runtime": "onnxruntime",
                                        "steps": [{"static_int8": {}}]},
                                       {"name": "dynamic", "runtime": "onnxruntime",
                                        "steps": [{"dynamic_int8": {}}]}],
                            calibration=DATA))
    warned = [w for w in doc["warnings"] if "same fingerprint" in w]
    assert len(warned) == 1 and warned[0].startswith("static:")  # dynamic reads no data
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Warnings" in report and "static: calibration/training data is the evaluation" \
        in report
    held_out = run_recipe(recipe(tmp_path, [{"name": "static", "runtime": "onnxruntime",
                                             "steps": [{"static_int8": {}}]}],
                                 calibration={**DATA, "kwargs": {"n": 16, "seed": 1}}))
    assert not [w for w in held_out["warnings"] if "same fingerprint" in w]


def test_a_run_folder_with_the_users_files_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files slimkit did not write \(notes.txt\)"):
        run_recipe(recipe(tmp_path, []))
    assert (out / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "cache").exists(), "refused before any work"
    (out / "notes.txt").unlink()
    (out / "candidates" / "mine").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not slimkit artifacts"):
        run_recipe(recipe(tmp_path, []))
    (out / "candidates" / "mine").rmdir()
    doc = run_recipe(recipe(tmp_path, []))  # an emptied folder is fine, and so is a rerun
    run_recipe(recipe(tmp_path, []))
    assert json.loads((out / "results.json").read_text())["name"] == doc["name"]


def test_a_run_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        run_recipe(recipe(tmp_path, []))
