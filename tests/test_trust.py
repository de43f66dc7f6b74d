"""An artifact folder runs no code it names unless trusted, a broken record is one line, and no
output folder of the user's is ever replaced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit import api
from slimkit.artifact import (
    ARTIFACT_JSON,
    BUNDLED_FACTORIES,
    copy_tree,
    load_artifact,
    named_factories,
    read_record,
    save_artifact,
)
from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.data import DataSpec, synthetic
from slimkit.errors import ConfigError, ModelLoadError
from slimkit.io import atomic_dir
from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from tests.models import MLP_INPUTS, batch, eager

INPUTS = [i.model_dump() for i in MLP_INPUTS]


def record(folder: Path, **fields: Any) -> Path:
    """A torch artifact folder whose record is `fields` over a minimal valid one."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "torch", "inputs": INPUTS, "steps": [], **fields}
    (folder / ARTIFACT_JSON).write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(b"")  # never read: loading stops before
    return folder


def makedirs_record(tmp_path: Path) -> tuple[Path, Path]:
    made = tmp_path / "made"
    ref = {"source": "os:makedirs", "kwargs": {"name": str(made)}}
    return record(tmp_path / "evil", ref=ref), made


def one_line(e: pytest.ExceptionInfo[Exception]) -> str:
    text = str(e.value)
    assert "\n" not in text and len(text) < 600, text
    return text


# --- trust --------------------------------------------------------------------------------

def test_a_named_factory_is_refused_before_it_runs(tmp_path: Path) -> None:
    folder, made = makedirs_record(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_artifact(folder)
    text = one_line(info)
    assert "os:makedirs" in text and "--trust-code" in text
    assert not made.exists()


def test_trust_lifts_the_refusal(tmp_path: Path) -> None:
    folder, made = makedirs_record(tmp_path)
    with pytest.raises(ModelLoadError, match="returned NoneType"):
        load_artifact(folder, trust_code=True)
    assert made.is_dir()  # the call happened


def test_the_refusal_names_every_factory(tmp_path: Path) -> None:
    steps = [{"distill": {"teacher": "tests.models:tiny_cnn"}},
             {"distill": {"teacher": "source"}},  # the ref itself, named once
             {"distill": {"teacher": "slimkit.examples.digits:load_model"}}]
    folder = record(tmp_path / "a", ref={"source": "tests.models:tiny_mlp"}, steps=steps)
    assert named_factories(folder, read_record(folder)) == [
        "tests.models:tiny_mlp", "tests.models:tiny_cnn", "slimkit.examples.digits:load_model"]
    with pytest.raises(ModelLoadError) as info:
        load_artifact(folder)
    text = one_line(info)
    assert "tests.models:tiny_mlp, tests.models:tiny_cnn" in text
    assert "slimkit.examples.digits" not in text  # bundled: allowed, so not in question


def test_a_bundled_source_with_a_foreign_teacher_is_refused(tmp_path: Path) -> None:
    folder = record(tmp_path / "a", ref={"source": "slimkit.examples.digits:student"},
                    steps=[{"distill": {"teacher": "os:getcwd"}}])
    with pytest.raises(ModelLoadError, match=r"\(os:getcwd\)"):
        load_artifact(folder)


def test_only_listed_slimkit_functions_are_allowed(tmp_path: Path) -> None:
    target = tmp_path / "written"
    folder = record(tmp_path / "a", ref={"source": "slimkit.io:atomic_write_text",
                                         "kwargs": {"path": str(target), "text": "x"}})
    with pytest.raises(ModelLoadError, match=r"slimkit\.io:atomic_write_text"):
        load_artifact(folder)
    assert not target.exists()
    assert all(f.startswith("slimkit.examples.") for f in BUNDLED_FACTORIES)


def test_every_bundled_example_model_is_trusted() -> None:
    from slimkit.examples import EXAMPLES

    for module in EXAMPLES.values():
        assert f"{module}:load_model" in BUNDLED_FACTORIES


def test_a_bundled_example_loads_untrusted(tmp_path: Path) -> None:
    model = load_model(ModelRef(source="slimkit.examples.digits:student", kwargs={"width": 8}))
    assert isinstance(model, TorchModel)
    save_artifact(model, tmp_path / "a")
    loaded = load_artifact(tmp_path / "a")
    assert isinstance(loaded, TorchModel)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(eager(loaded, x), eager(model, x))


def test_a_torch_artifact_of_user_code_needs_trust(tmp_path: Path) -> None:
    model = load_model("tests.models:tiny_mlp")
    assert isinstance(model, TorchModel)
    save_artifact(model, tmp_path / "a")
    with pytest.raises(ModelLoadError, match=r"tests\.models:tiny_mlp"):
        load_artifact(tmp_path / "a")
    loaded = load_artifact(tmp_path / "a", trust_code=True)
    x = batch(MLP_INPUTS, 3)["x"]
    np.testing.assert_array_equal(eager(loaded, x), eager(model, x))  # type: ignore[arg-type]


def test_a_hugging_face_ref_runs_no_code(tmp_path: Path) -> None:
    """A Hugging Face directory is weights and configuration; code it ships (auto_map) is not
    run, because slimkit never passes trust_remote_code."""
    import transformers

    hf = tmp_path / "hf"
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(hf)
    meta = json.loads((hf / "config.json").read_text())
    meta["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (hf / "config.json").write_text(json.dumps(meta))
    ran = tmp_path / "ran"
    (hf / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('x')\n"
        "from transformers import BertModel as EvilModel\n")
    model = load_model(str(hf))
    assert isinstance(model, TorchModel)
    save_artifact(model, tmp_path / "a")
    assert isinstance(load_artifact(tmp_path / "a"), TorchModel)
    assert not ran.exists()
    for module in ("hf", "data", "model"):
        source = (Path(api.__file__).parent / f"{module}.py").read_text()
        assert "trust_remote_code=True" not in source


def test_api_functions_take_the_trust_decision(tmp_path: Path) -> None:
    folder, made = makedirs_record(tmp_path)
    with pytest.raises(ModelLoadError, match="os:makedirs"):
        api.export(str(folder), "onnx", tmp_path / "out")
    with pytest.raises(ModelLoadError, match="os:makedirs"):
        api.compress(str(folder), [], "onnxruntime")
    with pytest.raises(ModelLoadError, match="returned NoneType"):
        api.export(str(folder), "onnx", tmp_path / "out", trust_code=True)
    assert made.is_dir() and not (tmp_path / "out").exists()


def test_commands_over_a_recipe_refuse_an_artifact_folder(tmp_path: Path) -> None:
    folder, made = makedirs_record(tmp_path)
    data = DataSpec(source="example", name="digits")
    with pytest.raises(ConfigError, match="artifact folder"):
        api.prune(str(folder), data)
    with pytest.raises(ConfigError, match="artifact folder"):
        api.distill("slimkit.examples.digits:student", data,
                    options=api.DistillOptions(teacher=str(folder)))
    assert not made.exists()


def test_the_worker_gets_the_trust_decision(tmp_path: Path) -> None:
    model = load_model("tests.models:tiny_mlp")
    built = build(model, model_key(model), [], "torch", Cache(tmp_path))
    opts = BenchOptions(rounds=1, warmup=0, latency_runs=2, throughput_runs=1, batch_size=4)
    targets = [Target("refused", built.path, "torch"),
               Target("trusted", built.path, "torch", trust_code=True)]
    res = run_benchmark(targets, synthetic(model.inputs, 8), opts, baseline="trusted")
    assert "tests.models:tiny_mlp" in res["refused"]["error"]
    assert res["trusted"]["throughput"] > 0


# --- broken records ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "words"), [
    ("{not json", "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"inputs": []}', "format: Field required"),
    ('{"format": "onnx"}', "inputs: Field required"),
    ('{"format": "pickle", "inputs": []}', "format: Input should be"),
    ('{"format": "onnx", "inputs": [{"name": "x"}]}', "inputs.0.shape"),
    ('{"format": "torch", "inputs": []}', "ref:"),
    ('{"format": "torch", "inputs": [], "ref": {"source": "a:b"}, "steps": [{"nope": {}}]}',
     "steps[0]"),
    ('{"format": "onnx", "inputs": []}', "model.onnx is missing"),
])
def test_a_broken_record_is_one_line(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / ARTIFACT_JSON).write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelLoadError) as info:
        load_artifact(tmp_path)
    message = one_line(info)
    assert words in message and str(tmp_path) in message


# --- output folders ------------------------------------------------------------------------

@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / ARTIFACT_JSON).write_text("{}")
    (src / "model.onnx").write_bytes(b"new")
    return src


def test_copy_tree_keeps_a_users_folder(tmp_path: Path, artifact: Path) -> None:
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        copy_tree(artifact, dst)
    (dst / ARTIFACT_JSON).write_text("{}")  # an artifact folder with a note in it is the user's
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        copy_tree(artifact, dst)
    assert (dst / "notes.txt").read_text() == "mine"


def test_copy_tree_refuses_a_file_and_a_link(tmp_path: Path, artifact: Path) -> None:
    file = tmp_path / "file"
    file.write_text("mine")
    with pytest.raises(ConfigError, match="not a directory"):
        copy_tree(artifact, file)
    assert file.read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(artifact)
    with pytest.raises(ConfigError, match="symbolic link"):
        copy_tree(artifact, link)


def test_copy_tree_replaces_an_earlier_artifact_or_fills_an_empty_folder(
        tmp_path: Path, artifact: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for name in (ARTIFACT_JSON, "model.xml", "model.bin", "report.json"):
        (old / name).write_text("old")
    copy_tree(artifact, old)
    assert sorted(p.name for p in old.iterdir()) == [ARTIFACT_JSON, "model.onnx"]
    empty = tmp_path / "empty"
    empty.mkdir()
    copy_tree(artifact, empty)
    assert (empty / "model.onnx").read_bytes() == b"new"


def test_atomic_dir_spares_its_siblings(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    sibling = tmp_path / ".out.old"  # the name the old tree once took
    sibling.mkdir()
    (sibling / "keep").write_text("mine")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("new")
    assert (sibling / "keep").read_text() == "mine"
    assert (tmp_path / "out" / "x").read_text() == "new"


def test_export_refuses_a_users_folder_before_any_work(tmp_path: Path) -> None:
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files slimkit did not write"):
        api.export("tests.models:no_such_factory", "onnx", dst)  # checked before loading
    assert (dst / "notes.txt").read_text() == "mine"
