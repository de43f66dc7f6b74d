from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.artifact import load_artifact
from slimkit.data import DataSpec, load_data
from slimkit.errors import ModelLoadError
from slimkit.model import FileModel, InputSpec, ModelRef, TorchModel, infer_format, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.runtimes import get_runtime
from tests.models import MLP_INPUTS, batch, cosine_min, eager

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


@pytest.fixture(scope="module")
def mlp() -> TorchModel:
    model = load_model("tests.models:tiny_mlp")
    assert isinstance(model, TorchModel)
    return model


@pytest.fixture(scope="module")
def onnx_file(mlp: TorchModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build(mlp, model_key(mlp), [], "onnx", Cache(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    shutil.copy(built.path / "model.onnx", out)
    return out


@pytest.fixture(scope="module")
def ov_file(mlp: TorchModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build(mlp, model_key(mlp), [], "openvino", Cache(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("ov") / "tiny.xml"
    shutil.copy(built.path / "model.xml", out)
    shutil.copy(built.path / "model.bin", out.with_suffix(".bin"))
    return out


# --- factories ----------------------------------------------------------------------------

def test_factory(mlp: TorchModel) -> None:
    assert isinstance(mlp.module, torch.nn.Module) and not mlp.module.training
    assert mlp.inputs == MLP_INPUTS
    assert mlp.ref == ModelRef(source="tests.models:tiny_mlp")
    assert mlp.format == "torch" and mlp.steps == []


def test_factory_kwargs() -> None:
    model = load_model(ModelRef(source="tests.models:tiny_mlp", kwargs={"width": 24}))
    assert isinstance(model, TorchModel)
    assert model.module.net[0].out_features == 24  # type: ignore[index,union-attr]
    assert model.ref is not None and model.ref.kwargs == {"width": 24}


def test_factory_rejecting_its_arguments() -> None:
    with pytest.raises(ModelLoadError, match="rejected its arguments"):
        load_model(ModelRef(source="tests.models:tiny_mlp", kwargs={"depth": 3}))


def test_bare_module_needs_inputs() -> None:
    with pytest.raises(ModelLoadError, match=r"bare nn\.Module; give model\.inputs"):
        load_model("tests.models:bare_mlp")


def test_bare_module_with_inputs() -> None:
    model = load_model(ModelRef(source="tests.models:bare_mlp", inputs=MLP_INPUTS))
    assert isinstance(model, TorchModel)
    assert model.inputs == MLP_INPUTS
    x = batch(MLP_INPUTS, 2)["x"]
    assert eager(model, x).shape == (2, 8)


@pytest.mark.parametrize(("source", "message"), [
    ("tests.models:not_a_model", "returned str, not a torch module"),
    ("tests.models:no_such_factory", "has no attribute 'no_such_factory'"),
    ("no_such_package_xyz.models:f", "cannot import module 'no_such_package_xyz.models'"),
])
def test_bad_factories(source: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(source)


# --- ONNX and OpenVINO files ----------------------------------------------------------------

def test_onnx_file(onnx_file: Path, mlp: TorchModel) -> None:
    model = load_model(str(onnx_file))
    assert isinstance(model, FileModel)
    assert model.format == "onnx" and model.path == onnx_file
    assert model.inputs == [InputSpec(name="x", dtype="float32", shape=["batch", 16])]
    x = batch(model.inputs, 3)["x"]
    out = get_runtime("onnxruntime").load(model).run({"x": x})[0]
    assert cosine_min(out, eager(mlp, x)) > 0.9999


def test_onnx_file_builds_to_openvino(onnx_file: Path, mlp: TorchModel, tmp_path: Path) -> None:
    model = load_model(str(onnx_file))
    built = build(model, model_key(model), [], "openvino", Cache(tmp_path))
    assert [s.step for s in built.steps] == ["export_openvino"]
    x = batch(model.inputs, 4)["x"]
    out = get_runtime("openvino").load(load_artifact(built.path)).run({"x": x})[0]
    assert cosine_min(out, eager(mlp, x)) > 0.9999


def test_corrupt_onnx(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(ModelLoadError, match="not a valid ONNX model") as info:
        load_model(str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["absent.onnx", "absent.xml", "absent"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / name))


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        load_model(str(path))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        infer_format(str(tmp_path))


def test_openvino_file(ov_file: Path, mlp: TorchModel) -> None:
    model = load_model(str(ov_file))
    assert isinstance(model, FileModel)
    assert model.format == "openvino"
    assert [(i.name, i.dtype) for i in model.inputs] == [("x", "float32")]
    assert isinstance(model.inputs[0].shape[0], str) and model.inputs[0].shape[1] == 16
    x = batch(model.inputs, 5)["x"]
    out = get_runtime("openvino").load(model).run({"x": x})[0]
    assert cosine_min(out, eager(mlp, x)) > 0.9999


def test_openvino_missing_bin(ov_file: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.xml"
    shutil.copy(ov_file, lonely)
    with pytest.raises(ModelLoadError, match=r"weights file lonely\.bin is missing"):
        load_model(str(lonely))


def test_openvino_corrupt_xml(tmp_path: Path) -> None:
    (tmp_path / "bad.xml").write_text("<net><oops")
    (tmp_path / "bad.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="not a valid OpenVINO IR"):
        load_model(str(tmp_path / "bad.xml"))


def test_model_ref_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        ModelRef(source="a:b", kwarg={})  # type: ignore[call-arg]
    assert ModelRef(source="x.onnx").resolved_format() == "onnx"
    assert ModelRef(source="pkg.mod:fn").resolved_format() == "torch"
    assert ModelRef(source="x.onnx", format="openvino").resolved_format() == "openvino"


# --- Hugging Face -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, vocab_size=30522)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).eval().save_pretrained(path)
    for name in TOKENIZER_FILES:
        if (minilm_path / name).exists():
            shutil.copy(minilm_path / name, path / name)
    return path


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path) -> TorchModel:
    model = load_model(ModelRef(source=str(hf_dir)))
    assert isinstance(model, TorchModel)
    return model


def _texts(model: TorchModel, tmp_path: Path) -> dict[str, np.ndarray]:
    path = tmp_path / "t.txt"
    path.write_text("a cat sat on the mat\nslimkit makes models small\nhi\n")
    return load_data(DataSpec(source="text", path=str(path), max_length=16), model).inputs


def _run(model: TorchModel, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model.module(*(torch.from_numpy(feeds[i.name]) for i in model.inputs)).numpy()


def test_hf_directory_gives_normalised_embeddings(hf_model: TorchModel, hf_dir: Path,
                                                  tmp_path: Path) -> None:
    assert [i.name for i in hf_model.inputs] == ["input_ids", "attention_mask"]
    assert hf_model.tokenizer == str(hf_dir)
    assert hf_model.ref == ModelRef(source=str(hf_dir))
    feeds = _texts(hf_model, tmp_path)
    emb = _run(hf_model, feeds)
    assert emb.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert cosine_min(emb[:1], emb[1:2]) < 0.9999  # different texts, different embeddings


def test_hf_embedding_is_the_masked_mean(hf_model: TorchModel, hf_dir: Path,
                                         tmp_path: Path) -> None:
    from transformers import BertModel

    feeds = _texts(hf_model, tmp_path)
    emb = _run(hf_model, feeds)
    encoder = BertModel.from_pretrained(hf_dir).eval()
    ids, mask = (torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
    with torch.inference_mode():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    m = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / m.sum(1)
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    # the padded positions do not count
    padded = dict(feeds)
    padded["input_ids"] = np.where(feeds["attention_mask"] == 1, feeds["input_ids"], 1999)
    np.testing.assert_allclose(_run(hf_model, padded), emb, atol=1e-5)


def test_hf_heads(hf_dir: Path, tmp_path: Path) -> None:
    base = load_model(ModelRef(source=str(hf_dir), head="base"))
    assert isinstance(base, TorchModel)
    with torch.inference_mode():
        out = base.module(input_ids=torch.ones(2, 5, dtype=torch.long),
                          attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert out.last_hidden_state.shape == (2, 5, 32)
    clf = load_model(ModelRef(source=str(hf_dir), head="classification"))
    assert isinstance(clf, TorchModel)
    assert _run(clf, _texts(clf, tmp_path)).shape == (3, 2)


def test_hf_export_to_onnxruntime(hf_model: TorchModel, tmp_path: Path) -> None:
    built = build(hf_model, model_key(hf_model), [], "onnx", Cache(tmp_path / "cache"))
    session = get_runtime("onnxruntime").load(load_artifact(built.path))
    feeds = _texts(hf_model, tmp_path)  # another sequence length than the export's sample
    assert cosine_min(session.run(feeds)[0], _run(hf_model, feeds)) > 0.9999


def test_hf_directory_that_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}')
    with pytest.raises(ModelLoadError, match="cannot load as a Hugging Face model"):
        load_model(str(tmp_path))
