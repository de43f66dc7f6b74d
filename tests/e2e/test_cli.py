"""The CLI's promises: one clear line and exit code 2 for bad input, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def slimkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLIMKIT_CACHE": str(cwd / "cache"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "slimkit.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


# an ONNX model cannot go back to torch, so file tests serve it on ONNX Runtime
ORT_ONLY = [{"name": "ort", "runtime": "onnxruntime"}]


def recipe(tmp: Path, **changes: object) -> Path:
    raw = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    raw["output"] = str(tmp / "run")
    raw.update(changes)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_misspelled_key(tmp_path: Path):
    path = recipe(tmp_path)
    path.write_text(path.read_text().replace("batch_size: 64", "batch_sise: 64", 1))
    proc = slimkit("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, "batch_sise", "unknown field", "batch_size")
    assert not (tmp_path / "run").exists()


def test_misspelled_technique_option(tmp_path: Path):
    path = recipe(tmp_path, candidates=[
        {"name": "a", "runtime": "onnxruntime", "steps": [{"dynamic_int8": {"per_chanel": 1}}]}])
    proc = slimkit("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, "candidates[0].steps[0]", "per_chanel")
    assert not (tmp_path / "run").exists()


def test_missing_model_file(tmp_path: Path):
    path = recipe(tmp_path, model={"source": str(tmp_path / "nope.onnx")}, candidates=ORT_ONLY)
    proc = slimkit("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, "nope.onnx", "no such file")
    assert not (tmp_path / "run").exists()


def test_corrupt_onnx(tmp_path: Path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(os.urandom(4096))
    path = recipe(tmp_path, model={"source": str(bad)}, candidates=ORT_ONLY)
    proc = slimkit("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, "model.onnx", "not a valid ONNX model")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "cache" / "artifacts").exists()


def test_invalid_yaml(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("name: [unclosed\n")
    assert_one_line_error(slimkit("run", str(path), cwd=tmp_path), "not valid YAML")


@pytest.mark.slow
def test_bench_a_model_file_alone(tmp_path: Path):
    exported = tmp_path / "exported"
    proc = slimkit("export", "tests.models:tiny_mlp", "--to", "onnx", "-o", str(exported),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "bench.json"
    proc = slimkit("bench", str(exported / "model.onnx"), "-r", "onnxruntime", "-r", "openvino",
                   "--rounds", "2", "--batch-size", "8", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())["results"]
    assert len(res) == 2
    for r in res.values():
        assert r["ratios"]["throughput"] > 0
        assert r["latency_ms"]["p50"] > 0
    assert "throughput" in proc.stdout


@pytest.mark.slow
def test_quantize_digits_within_an_accuracy_budget(tmp_path: Path):
    out = tmp_path / "q"
    proc = slimkit("quantize", "slimkit.examples.digits:load_model", "--data", "digits",
                   "--runtime", "onnxruntime", "--method", "static_int8", "--max-drop", "0.3",
                   "--task", "classification", "--set", "calibration=percentile",
                   "--rounds", "1", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    base, q = doc["candidates"]
    assert base["name"] == "onnxruntime-float" and q["name"] == "onnxruntime-static_int8"
    assert q["quality"]["accuracy_delta"] >= -0.3
    assert q["ratios"]["size"] < 0.3
    report = step_report(q, "static_int8")
    assert report["budget"]["max_drop"] == 0.3 and "kept_float" in report
    assert "kept in float" in (out / "report.md").read_text()


@pytest.mark.slow
def test_quantize_prepares_a_cnn_with_equalization_and_bias_correction(tmp_path: Path):
    out = tmp_path / "q"
    proc = slimkit("quantize", "slimkit.examples.digits:load_model", "--data", "digits",
                   "--method", "static_int8", "--equalize", "--bias-correct",
                   "--task", "classification", "--rounds", "1", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    q = doc["candidates"][1]
    assert [s["step"] for s in q["steps"] if not s["step"].startswith("export")] == \
        ["equalize", "bias_correct", "static_int8"]
    assert step_report(q, "equalize")["pairs"] > 0
    assert q["quality"]["accuracy_delta"] >= -1.0


def test_quantize_rejects_a_bad_option(tmp_path: Path):
    proc = slimkit("quantize", "slimkit.examples.digits:load_model", "--data", "digits",
                   "--method", "static_int8", "--set", "calibraton=mse", cwd=tmp_path)
    assert_one_line_error(proc, "calibraton", "unknown field")


@pytest.mark.slow
def test_prune_digits_channels_and_recover_by_distillation(tmp_path: Path):
    out = tmp_path / "p"
    proc = slimkit("prune", "slimkit.examples.digits:load_model", "--data", "digits",
                   "--train-data", "digits", "--method", "prune_channels",
                   "--set", "flops_ratio=0.5", "--set", "samples=64", "--epochs", "1",
                   "--task", "classification", "--rounds", "1", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    _, pruned = doc["candidates"]
    assert [s["step"] for s in pruned["steps"]][:2] == ["prune_channels", "distill"]
    assert 0.4 <= step_report(pruned, "prune_channels")["flops_ratio"] <= 0.6
    assert pruned["ratios"]["size"] < 0.7
    assert pruned["quality"]["accuracy"] > 0.8
    assert "the FLOPs" in proc.stdout and "Channels after" in (out / "report.md").read_text()


@pytest.mark.slow
def test_distill_a_small_student_from_the_digits_cnn(tmp_path: Path):
    out = tmp_path / "d"
    proc = slimkit("distill", "slimkit.examples.digits:student", "--teacher",
                   "slimkit.examples.digits:load_model", "--data", "digits",
                   "--set", "epochs=6", "--set", "lr=0.003", "--task", "classification",
                   "--rounds", "1", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    teacher, student = doc["candidates"]
    assert teacher["quality"]["accuracy"] > 0.95
    assert student["quality"]["accuracy"] > 0.5  # untrained, it would be about 0.1
    assert student["size_bytes"] < 0.2 * teacher["size_bytes"]
    assert step_report(student, "distill")["history"]


def test_prune_rejects_an_unknown_method(tmp_path: Path):
    proc = slimkit("prune", "slimkit.examples.digits:load_model", "--data", "digits",
                   "--method", "prune_everything", cwd=tmp_path)
    assert_one_line_error(proc, "prune_everything")


# --- trust: an artifact folder runs no code it names unless --trust-code -------------------

def makedirs_folder(tmp: Path) -> tuple[Path, Path]:
    """An artifact folder whose record names `os:makedirs` as the model's factory."""
    made, folder = tmp / "made", tmp / "evil"
    folder.mkdir()
    (folder / "artifact.json").write_text(json.dumps({
        "format": "torch", "inputs": [{"name": "x", "shape": ["batch", 16]}],
        "ref": {"source": "os:makedirs", "kwargs": {"name": str(made)}}, "steps": []}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder, made


def test_bench_refuses_code_named_by_a_folder(tmp_path: Path):
    folder, made = makedirs_folder(tmp_path)
    proc = slimkit("bench", str(folder), cwd=tmp_path)
    assert_one_line_error(proc, "os:makedirs", "--trust-code")
    assert not made.exists()
    proc = slimkit("bench", str(folder), "--trust-code", cwd=tmp_path)
    assert_one_line_error(proc, "returned NoneType")  # called, then its result is no model
    assert made.is_dir()


@pytest.mark.parametrize("command", [["export", "--to", "onnx", "-o", "out"],
                                     ["prune", "--data", "digits"],
                                     ["quantize", "--data", "digits"]])
def test_other_commands_refuse_code_named_by_a_folder(tmp_path: Path, command: list[str]):
    folder, made = makedirs_folder(tmp_path)
    proc = slimkit(command[0], str(folder), *command[1:], cwd=tmp_path)
    assert_one_line_error(proc)
    assert not made.exists() and not (tmp_path / "out").exists()


def save_torch_artifact(source: str, dest: Path, **kwargs: object) -> Path:
    from slimkit.artifact import save_artifact
    from slimkit.model import ModelRef, load_model

    save_artifact(load_model(ModelRef(source=source, kwargs=kwargs)), dest)
    return dest


def test_bench_a_torch_artifact_of_user_code_needs_trust(tmp_path: Path):
    folder = save_torch_artifact("tests.models:tiny_mlp", tmp_path / "mlp")
    args = ["bench", str(folder), "--rounds", "1", "--batch-size", "4"]
    assert_one_line_error(slimkit(*args, cwd=tmp_path), "tests.models:tiny_mlp", "--trust-code")
    out = tmp_path / "bench.json"
    proc = slimkit(*args, "--trust-code", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(out.read_text())["results"].values()
    assert result["throughput"] > 0 and "error" not in result


def test_a_bundled_example_artifact_needs_no_trust(tmp_path: Path):
    folder = save_torch_artifact("slimkit.examples.digits:student", tmp_path / "s", width=8)
    proc = slimkit("export", str(folder), "--to", "onnx", "-o", str(tmp_path / "out"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()


@pytest.mark.parametrize("text", ["{oops", "[]", '{"inputs": []}', '{"format": "onnx"}'])
def test_a_broken_artifact_json_is_one_line(tmp_path: Path, text: str):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "artifact.json").write_text(text)
    assert_one_line_error(slimkit("bench", str(tmp_path / "a"), cwd=tmp_path), "artifact.json")


# --- output folders: never replace what slimkit did not write ------------------------------

def test_export_keeps_a_users_folder(tmp_path: Path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    proc = slimkit("export", "tests.models:tiny_mlp", "--to", "onnx", "-o", str(mine),
                   cwd=tmp_path)
    assert_one_line_error(proc, "notes.txt", "did not write")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_export_replaces_its_own_export(tmp_path: Path):
    out = tmp_path / "out"
    for _ in range(2):
        proc = slimkit("export", "tests.models:tiny_mlp", "--to", "onnx", "-o", str(out),
                       cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["artifact.json", "model.onnx"]


@pytest.mark.parametrize("command", [["export", "tests.models:tiny_mlp"], ["run", "recipe"]])
def test_output_that_is_a_file(tmp_path: Path, command: list[str]):
    file = tmp_path / "file"
    file.write_text("mine")
    args = [str(recipe(tmp_path)) if a == "recipe" else a for a in command]
    assert_one_line_error(slimkit(*args, "-o", str(file), cwd=tmp_path), "not a directory")
    assert file.read_text() == "mine"


# --- options -------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "option", "value"), [
    ("bench", "--batch-size", "-8"), ("bench", "--batch-size", "0"),
    ("bench", "--rounds", "-1"), ("bench", "--threads", "-2"), ("prune", "--rounds", "0"),
])
def test_counts_must_be_positive(tmp_path: Path, command: str, option: str, value: str):
    extra = ["--data", "digits"] if command == "prune" else []
    proc = slimkit(command, "slimkit.examples.digits:student", *extra, option, value,
                   cwd=tmp_path)
    assert_one_line_error(proc, option, "at least 1")


def test_set_with_invalid_yaml(tmp_path: Path):
    proc = slimkit("prune", "slimkit.examples.digits:student", "--data", "digits",
                   "--set", "key=[unclosed", cwd=tmp_path)
    assert_one_line_error(proc, "--set", "key=[unclosed", "not valid YAML")


def test_set_value_that_the_technique_rejects(tmp_path: Path):
    proc = slimkit("quantize", "slimkit.examples.digits:student", "--data", "digits",
                   "--method", "static_int8", "--set", "calibration=bogus", cwd=tmp_path)
    assert_one_line_error(proc, "calibration", "minmax")


def step_report(candidate: dict, technique: str) -> dict:
    """The one report of `technique` among a candidate's, which are keyed by step."""
    (found,) = [r for r in candidate["details"].values() if r["technique"] == technique]
    return found
